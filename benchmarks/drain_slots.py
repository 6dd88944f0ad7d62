"""Case 9's slots part: does the stream keep the engine as busy as a never-draining one at
128, 256 and 1,024 slots, for each requests-per-pair model?

128 is vLLM's server default ``max_num_seqs`` (what an ``AsyncLLM`` gets with the engine
usage context), 256 the simulation's default, 1,024 the offline default on an H100/H200. For
each slot count and each request model (``single``/``stepped``, see :mod:`sim_engine`) it
runs, on the same prepared shards, the stream with the job defaults (``score_shards`` of
``ShardStreamer``, the Ray actors' scheduling and commit code, ``compute.shards_in_flight``'s
default, the request cap derived from the engine's ``max_in_flight`` as in production:
``HEADROOM`` × slots) and the never-draining reference (every pair in one queue), both on the
simulated engine with its full model: requests per pair and what each costs, and the KV
capacity of one H200 (:class:`sim_engine.SimParams`). The job has ``pairs_per_slot`` pairs a
slot, so the one drain at the end of the reference weighs the same at every size.

    python benchmarks/drain_cases.py --slots 128,256,1024 --requests-per-pair single,stepped \\
        --out benchmarks/results/drain-slots.json
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from drain_cases import (
    ENGINE,
    TARGET,
    DrainSettings,
    default_shards_in_flight,
    measure,
    shard_names,
    write_shards,
)
from sim_engine import REQUEST_MODELS, SimParams

from rank1_batch.io.store import Store

SLOTS = (128, 256, 1024)


@dataclass(frozen=True)
class SlotsSettings:
    """The slots part's sizes (printed in the JSON)."""

    slots: tuple[int, ...] = SLOTS
    requests_per_pair: tuple[str, ...] = REQUEST_MODELS
    pairs_per_slot: int = 96
    shard_size: int | None = None  # None: the job default, output.shard_size
    shards_in_flight: int | None = None  # None: the job default, compute.shards_in_flight
    candidates_per_query: int = 20
    passage_chars: int = 600
    sim: SimParams = field(default_factory=SimParams)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sim": self.sim.as_dict()}


def default_shard_size() -> int:
    from rank1_batch.job.spec import OutputSpec

    return int(OutputSpec.model_fields["shard_size"].default)


def shards_needed(slots: int, cap_tokens: int, shard_size: int, mean_tokens: float) -> float:
    """docs/performance.md's estimate of the shards in flight that cover one shard's slowest
    pair: ``1 + slots × cap ÷ (shard size × mean reasoning tokens)``."""
    return 1 + slots * cap_tokens / (shard_size * mean_tokens)


def slots_case(work: Path, settings: SlotsSettings = SlotsSettings()) -> dict[str, Any]:
    """Busy fractions of the stream and of the never-draining reference, and their ratio, for
    each slot count and request model."""
    k = settings.shards_in_flight or default_shards_in_flight()
    size = settings.shard_size or default_shard_size()
    cases: dict[str, Any] = {}
    for slots in settings.slots:
        pairs = slots * settings.pairs_per_slot
        base = DrainSettings(
            shard_sizes=(size,),
            total_pairs=pairs,
            shards_in_flight=(k,),
            candidates_per_query=settings.candidates_per_query,
            passage_chars=settings.passage_chars,
            sim=replace(settings.sim, slots=slots),
            rss=False,
        )
        prepared = work / f"slots-prepared-{slots}"
        write_shards(Store(str(prepared)), base, size)
        names = shard_names(prepared)
        models: dict[str, Any] = {}
        for model in settings.requests_per_pair:
            run = replace(base, sim=replace(base.sim, requests_per_pair=model))  # type: ignore[arg-type]
            ref = measure("never_draining", prepared, work / "slots-run", run, names)
            stream = measure("stream", prepared, work / "slots-run", run, names, k)
            ratio = round(stream["busy_fraction"] / ref["busy_fraction"], 3)
            models[model] = {
                "stream": stream,
                "never_draining": ref,
                "stream_over_never_draining": ratio,
                "meets_target": ratio >= TARGET,
                "requests_per_pair": round(stream["requests"] / pairs, 3),
                "stream_pairs_per_engine_s": round(pairs / stream["engine_wall_s"], 1),
            }
            print(
                f"[drain-slots] {slots} slots, {model}: stream {stream['busy_fraction']}, "
                f"never-draining {ref['busy_fraction']}, ratio {ratio}",
                file=sys.stderr,
                flush=True,
            )
        first = next(iter(models.values()))
        mean = first["never_draining"]["reasoning_tokens"] / pairs
        needed = shards_needed(slots, settings.sim.cap_tokens, size, mean)
        case: dict[str, Any] = {
            "pairs": pairs,
            "shards": len(names),
            "shard_size": size,
            "shards_in_flight": k,
            "max_requests": first["stream"]["max_requests"],
            "mean_reasoning_tokens": round(mean, 1),
            "shards_in_flight_needed_estimate": round(needed, 2),
            "default_shards_in_flight_enough_by_estimate": k >= math.ceil(needed),
            "models": models,
        }
        if {"single", "stepped"} <= models.keys():
            case["stepped_over_single_engine_wall"] = round(
                models["stepped"]["stream"]["engine_wall_s"]
                / models["single"]["stream"]["engine_wall_s"],
                4,
            )
        cases[str(slots)] = case
    return {
        "engine": ENGINE,
        "settings": settings.as_dict(),
        "target_stream_over_never_draining": TARGET,
        "slots": cases,
        "meets_target_at_every_slot_count": {
            m: all(c["models"][m]["meets_target"] for c in cases.values())
            for m in settings.requests_per_pair
        },
    }
