"""The project side of the vLLM wall-clock benchmark (``vllm_wall_cases.py``): rank1-batch's
:class:`~rank1_batch.engines.vllm_engine.VLLMEngine` driven as the scoring actor drives it,
through the streaming executor (:class:`~rank1_batch.pipeline.stream.ShardStreamer` and
:func:`~rank1_batch.pipeline.stream.score_shards`, the actor's concurrency without Ray):
the pairs as shards in a local store, ``shards_in_flight`` of them at once, each committed
when its last pair is judged; one event loop for the engine's life.

Run with ``PYTHONPATH`` at the tree whose code is measured (the benchmark's "before" and
"after"); it uses only what both have, and ``--request-mode`` where the engine has it.
Requests are counted by the engine's ``requests_submitted`` where it has one, else by
wrapping its ``_request``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_wall_proto as proto


def build_engine(s: dict[str, Any], request_mode: str) -> tuple[Any, str]:
    """The engine with the benchmark's settings; and how its requests are counted."""
    from rank1_batch.engines.base import EngineOptions
    from rank1_batch.engines.vllm_engine import VLLMEngine

    options: dict[str, Any] = {
        "max_model_len": s["max_model_len"],
        "max_tokens": max(s["budgets"]),
        "min_reserve": s["min_reserve"],
    }
    if "request_mode" in {f.name for f in dataclasses.fields(EngineOptions)}:
        options["request_mode"] = request_mode
    elif request_mode != "stepped":
        raise SystemExit(f"this tree's engine has no request_mode; cannot run {request_mode!r}")
    engine = VLLMEngine(
        s["model"],
        EngineOptions(**options),
        dtype="float32",
        enforce_eager=True,
        engine_args={
            "max_num_seqs": s["max_num_seqs"],
            "max_num_batched_tokens": s["max_num_batched_tokens"],
        },
        device="cpu",
        cpu_kv_cache_gib=s["kv_cache_gib"],
        exit_on_fatal=False,
    )
    if hasattr(engine, "requests_submitted"):
        return engine, "engine.requests_submitted"
    inner = engine._request

    async def counted(prompt: list[int], sampling: dict[str, Any]) -> Any:
        engine.requests_submitted = getattr(engine, "requests_submitted", 0) + 1
        return await inner(prompt, sampling)

    engine._request = counted
    engine.requests_submitted = 0
    return engine, "wrapped engine._request"


@dataclasses.dataclass
class Job:
    store: Any
    spec: Any
    shards: list[str]


def prepare(
    engine: Any, s: dict[str, Any], pairs: list[dict[str, str]], budget: int, folder: Path
) -> Job:
    """The pairs as shards of ``s["shard_size"]`` in a fresh local store (what ``prepare``
    would have written), and the job spec; the engine set to this budget. ``folder`` must
    not exist (a store with committed shards would be read back, not scored)."""
    import pyarrow as pa

    from rank1_batch.io import layout
    from rank1_batch.io.fs import parquet_bytes
    from rank1_batch.io.store import Store
    from rank1_batch.job.load import spec_from_mapping

    model: dict[str, Any] = {
        "name": "toy",
        "engine": "vllm",
        "device": "cpu",
        "max_model_len": s["max_model_len"],
    }
    if hasattr(engine.options, "request_mode"):
        model["request_mode"] = engine.options.request_mode
    spec = spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": str(folder), "shard_size": s["shard_size"]},
            "model": model,
            "reasoning": {"max_tokens": budget, "min_reserve": s["min_reserve"]},
        }
    )
    # The engine's options are what it judges by (fit, budget); the spec's are the job's.
    engine.options = dataclasses.replace(engine.options, max_tokens=budget)
    folder.mkdir(parents=True)
    store = Store(spec.output.path, spec.storage)
    shards = []
    size = s["shard_size"]
    for k in range(math.ceil(len(pairs) / size)):
        part = pairs[k * size : (k + 1) * size]
        table = pa.table(
            {
                "query_id": [p["query_id"] for p in part],
                "doc_id": [p["doc_id"] for p in part],
                "query": [p["query"] for p in part],
                "passage": [p["passage"] for p in part],
                "title": pa.nulls(len(part), pa.string()),
                "instruction": pa.nulls(len(part), pa.string()),
            }
        )
        shard = f"shard-{k:05d}"
        store.create_exclusive(layout.pairs_path(shard), parquet_bytes(table))
        shards.append(shard)
    return Job(store, spec, shards)


async def score(engine: Any, s: dict[str, Any], job: Job) -> tuple[int, dict[str, Any]]:
    from rank1_batch.pipeline.stream import ShardStreamer, score_shards

    before = engine.requests_submitted
    streamer = ShardStreamer(engine, job.store, job.spec)
    await score_shards(streamer, job.shards, s["shards_in_flight"])
    return engine.requests_submitted - before, {
        "max_requests": streamer.max_requests,
        "peak_requests": streamer.peak_in_flight,
    }


def collect(job: Job) -> list[dict[str, Any]]:
    """The committed rows, in pair order, read through each shard's marker."""
    from rank1_batch.io import commit

    rows = []
    for shard in job.shards:
        table = commit.committed_table(job.store, shard, "scores")
        cols = ("status", "score", "prompt_tokens", "reasoning_tokens")
        for values in zip(*(table.column(c).to_pylist() for c in cols), strict=True):
            rows.append(dict(zip(cols, values, strict=True)))
    return rows


async def main_async(s: dict[str, Any], request_mode: str, engines: list[Any]) -> None:
    start = time.perf_counter()
    engine, counted_by = build_engine(s, request_mode)
    engines.append(engine)
    startup = time.perf_counter() - start
    await proto.serve_async(
        startup_s=startup,
        config=proto.engine_config(engine.llm.vllm_config),
        extra={
            "request_mode": getattr(engine.options, "request_mode", "stepped (no option)"),
            "requests_counted_by": counted_by,
            "driver": "pipeline.stream.score_shards(ShardStreamer(engine, store, spec))",
        },
        reset=engine.llm.reset_prefix_cache,
        prepare=lambda pairs, budget, folder: prepare(engine, s, pairs, budget, folder),
        score=lambda job: score(engine, s, job),
        collect=collect,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--settings", required=True, help="JSON file of the engine settings")
    p.add_argument("--request-mode", default="stepped", choices=["stepped", "single"])
    args = p.parse_args()
    engines: list[Any] = []
    try:
        settings = json.loads(Path(args.settings).read_text())
        asyncio.run(main_async(settings, args.request_mode, engines))
    finally:
        for engine in engines:  # after the loop: close() waits on the engine's shutdown
            engine.close()


if __name__ == "__main__":
    main()
