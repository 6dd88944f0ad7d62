"""Case 9, the drain: how much of a continuous-batching engine's slot-time each scoring policy
keeps busy, and the scoring process's peak memory as shards grow.

The engine is :class:`sim_engine.SimulatedContinuousBatchingEngine`, a TEST DOUBLE (no model):
N slots, a step time growing with the batch, lognormal reasoning lengths with a cap. Everything
around it is the project's real code, on a local Store holding synthetic prepared shards:

- ``old_policy``: ``process_shard``'s steps with the batch protocol ``Rank1Engine.judge``, shard
  after shard, through the stream engine's synchronous ``generate``/``answer`` adapters: every
  pass-1 request of the shard submitted and awaited together, then the forced requests of the
  incomplete ones together, then the commit, then the next shard (what one blocking
  ``LLM.generate`` per pass per shard did before the stream engine);
- ``stream``: ``score_shards(ShardStreamer(engine, store, spec), shards, shards_in_flight)``,
  the scheduling and commit code the Ray actors run, for several ``shards_in_flight``;
- ``never_draining``: every pair of the job in one queue (``judge_one`` each, no commits), so the
  engine drains once, at the end of the job: the reference the other two are divided by.

Each policy gets a fresh copy of the same prepared shards and a fresh engine, on the engine's
virtual clock (see :mod:`sim_engine`): host work, storage I/O included, costs no engine time,
which flatters the old policy (its commits between shards are free) and makes the figures
independent of how busy this machine is. Peak RSS is read in a fresh subprocess per shard size
(the kernel's ``VmHWM``; not ``ru_maxrss``, which a child inherits from its parent across
``exec``), the stream scoring every shard, three times per size (the median is reported).
``--baseline DIR`` measures the code of another source tree (``DIR/rank1_batch``, e.g. from
``git archive COMMIT rank1_batch benchmarks``) on the same shards in the same run: its stream
policy (in a child process importing DIR's package, with this tree's simulated engine) beside
this tree's, and its peak RSS alternating with this tree's.

    python benchmarks/drain_cases.py            # this case alone, full sizes (JSON on stdout)
    python benchmarks/drain_cases.py --quick
    python benchmarks/drain_cases.py --out benchmarks/results/drain.json
    python benchmarks/drain_cases.py --rss-only                    # peak RSS only (~1 min)
    python benchmarks/drain_cases.py --rss-only --baseline DIR     # ... and DIR's code beside it
    python benchmarks/drain_cases.py --baseline DIR                # everything, DIR's code beside
    python benchmarks/drain_cases.py --slots 128,256,1024 --requests-per-pair single,stepped \
        --out benchmarks/results/drain-slots.json   # the slots part (drain_slots.py) alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_engine import SimParams, SimulatedContinuousBatchingEngine, inline_executor

from rank1_batch.engines.factory import engine_options
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import parquet_bytes, sha256
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.spec import JobSpec

TARGET = 0.95
RSS_REPEATS = 3
ENGINE = "SimulatedContinuousBatchingEngine: a test double (no model, simulated steps)"
# The engine this case was published with (docs/performance.md): one request per pair, free
# requests, no KV limit. The slots part (drain_slots.py) runs the fuller model.
CASE9_SIM = SimParams(
    requests_per_pair="single", request_overhead_s=0.0, prefill_token_s=0.0, kv_tokens=None
)


@dataclass(frozen=True)
class DrainSettings:
    """The case's sizes (printed in the JSON with the engine's :class:`SimParams`)."""

    shard_sizes: tuple[int, ...] = (500, 2000, 8000)
    total_pairs: int = 24_000
    shards_in_flight: tuple[int, ...] = (2, 3, 4, 8)
    candidates_per_query: int = 20
    passage_chars: int = 600
    sim: SimParams = CASE9_SIM
    rss: bool = True
    rss_shards_in_flight: int | None = None  # None: the job default, compute.shards_in_flight

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sim": self.sim.as_dict()}


FULL = DrainSettings()
QUICK = DrainSettings(total_pairs=8000, shards_in_flight=(2, 8))
# For the test that runs every case (tests/test_benchmarks.py): the code paths, not the figures.
TINY = DrainSettings(shard_sizes=(100, 200), total_pairs=400, shards_in_flight=(2,), rss=False)


# -- synthetic prepared shards ------------------------------------------------------------
def job_spec(out: str, sim: SimParams) -> JobSpec:
    return spec_from_mapping(
        {
            "name": "drain-bench",
            "input": {"path": "unused.parquet"},
            "output": {"path": out},
            "model": {"name": "simulated", "max_model_len": 16000},
            "reasoning": {"max_tokens": sim.cap_tokens, "min_reserve": sim.cap_tokens},
        }
    )


def write_shards(store: Store, settings: DrainSettings, shard_size: int) -> list[str]:
    """Pairs shards and manifest as prepare writes them: whole queries per shard, built by
    prepare's own ``build_shard``; the same pairs for every shard size."""
    import pyarrow as pa

    from rank1_batch.job.inputs import NORMALISED
    from rank1_batch.job.prepare import build_shard
    from rank1_batch.toy.data import make_ir_collection

    per_query = settings.candidates_per_query
    coll = make_ir_collection(11, math.ceil(settings.total_pairs / per_query), per_query)
    cands = coll.candidates[: settings.total_pairs]
    queries = max(1, shard_size // per_query)
    shards = []
    starts = range(0, len(cands), queries * per_query)
    for k, start in enumerate(starts):
        part = cands[start : start + queries * per_query]
        passages = [c.passage for c in part]
        passages = [(p + " ") * max(1, settings.passage_chars // max(1, len(p))) for p in passages]
        n = len(part)
        rows = pa.table(
            {
                "query_id": [c.query_id for c in part],
                "doc_id": [c.doc_id for c in part],
                "query": [c.query for c in part],
                "passage": passages,
                "title": [None] * n,
                "instruction": [None] * n,
                "input_order": list(range(start, start + n)),
                "reason": [None] * n,
                "source_row": list(range(start, start + n)),  # a Parquet input's own row
                "source_line": [None] * n,
                "candidate": [None] * n,
            },
            schema=NORMALISED,
        )
        pairs, _, _ = build_shard(rows)
        name = layout.shard_name(k, len(starts))
        data = parquet_bytes(pairs)
        store.write_atomic(layout.pairs_path(name), data)
        shards.append({"id": name, "rows": pairs.num_rows, "sha256": sha256(data)})
    manifest = {"n_buckets": len(shards), "pairs": len(cands), "shards": shards}
    store.write_json(layout.MANIFEST, manifest)
    return [s["id"] for s in shards]


def fresh_copy(prepared: Path, dest: Path) -> Store:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(prepared, dest)
    return Store(str(dest))


# -- the three policies ---------------------------------------------------------------------
def old_policy(
    engine: SimulatedContinuousBatchingEngine, store: Store, spec: JobSpec, shards: list[str]
) -> None:
    """``process_shard``'s steps with the batch protocol (``Rank1Engine.judge``): pass 1 of the
    whole shard through one ``generate`` call, the forced pass of its incomplete pairs through
    one ``answer`` call (each a gather over the stream engine's primitives, awaited whole),
    then the commit, then the next shard."""
    from rank1_batch.core.rows import requests_for
    from rank1_batch.engines.base import Rank1Engine
    from rank1_batch.pipeline.score import commit_shard, committed_marker, read_work

    for shard in shards:
        if committed_marker(shard, store) is not None:
            continue
        start = time.perf_counter()
        work = read_work(shard, store, spec, engine)
        judgements = Rank1Engine.judge(engine, requests_for(work.to_judge, spec.reasoning))
        commit_shard(shard, work, judgements, engine, store, spec, time.perf_counter() - start)


async def stream(
    engine: SimulatedContinuousBatchingEngine,
    store: Store,
    spec: JobSpec,
    shards: list[str],
    shards_in_flight: int,
) -> dict[str, Any]:
    from rank1_batch.pipeline.stream import ShardStreamer, score_shards

    asyncio.get_running_loop().set_default_executor(inline_executor())
    streamer = ShardStreamer(engine, store, spec)
    await score_shards(streamer, shards, shards_in_flight)
    return {
        "max_requests": streamer.max_requests,
        "peak_requests": streamer.peak_in_flight,
        "peak_open_shards": streamer.peak_open_shards,
    }


async def never_draining(
    engine: SimulatedContinuousBatchingEngine, store: Store, spec: JobSpec, shards: list[str]
) -> None:
    from rank1_batch.core.rows import requests_for

    asyncio.get_running_loop().set_default_executor(inline_executor())
    requests = [
        r
        for s in shards
        for r in requests_for(store.read_parquet(layout.pairs_path(s)), spec.reasoning)
    ]
    await asyncio.gather(*(engine.judge_one(r) for r in requests))


def measure(
    policy: str,
    prepared: Path,
    scratch: Path,
    settings: DrainSettings,
    shards: list[str],
    shards_in_flight: int = 0,
) -> dict[str, Any]:
    """One run of ``policy`` on a fresh copy of the shards; the engine's occupancy figures."""
    store = fresh_copy(prepared, scratch)
    spec = job_spec(str(scratch), settings.sim)
    engine = SimulatedContinuousBatchingEngine(settings.sim, engine_options(spec))
    extra: dict[str, Any] = {}
    start = time.perf_counter()
    if policy == "old_policy":
        old_policy(engine, store, spec, shards)
    elif policy == "stream":
        extra = asyncio.run(stream(engine, store, spec, shards, shards_in_flight))
        extra["shards_in_flight"] = shards_in_flight
    else:
        asyncio.run(never_draining(engine, store, spec, shards))
    run_s = time.perf_counter() - start
    engine.close()
    result = {**engine.stats.as_dict(), **extra, "run_s": round(run_s, 2)}
    if policy != "never_draining":
        result["committed_shards"] = len(commit.committed_shards(store))
        if result["committed_shards"] != len(shards):
            raise RuntimeError(f"{policy}: {result['committed_shards']}/{len(shards)} committed")
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def measure_in_tree(
    code: Path,
    prepared: Path,
    scratch: Path,
    settings: DrainSettings,
    shards_in_flight: int,
) -> dict[str, Any]:
    """:func:`measure` of the stream policy with the package of the source tree ``code`` (a
    child process: ``PYTHONPATH=code``, this script and its simulated engine)."""
    env = {**os.environ, "PYTHONPATH": str(code.resolve())}
    script = Path(__file__).resolve()
    sent = settings.as_dict()
    return _child(script, "--stream-child", prepared, scratch, sent, shards_in_flight, env)


def _child(
    script: Path,
    mode: str,
    prepared: Path,
    scratch: Path,
    settings: dict[str, Any],
    shards_in_flight: int,
    env: dict[str, str] | None,
) -> dict[str, Any]:
    """Run ``script mode …`` in a child process (``settings``: a :class:`DrainSettings` as
    that script reads it); its last stdout line is its JSON result."""
    cmd = [
        sys.executable,
        str(script),
        mode,
        str(prepared),
        "--scratch",
        str(scratch),
        "--settings",
        json.dumps(settings),
        "--shards-in-flight",
        str(shards_in_flight),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- memory: a fresh process per shard size ---------------------------------------------------
def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM`` of ``/proc/self/status`` (Linux), which belongs to
    this program's address space. ``ru_maxrss`` is the fallback elsewhere; on Linux it keeps
    the parent's high-water mark across fork and exec, so it would read the benchmark's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_child(
    prepared: Path, scratch: Path, settings: DrainSettings, shards_in_flight: int
) -> dict[str, Any]:
    import psutil
    import pyarrow as pa

    shards = shard_names(prepared)
    store = fresh_copy(prepared, scratch)
    spec = job_spec(str(scratch), settings.sim)
    engine = SimulatedContinuousBatchingEngine(settings.sim, engine_options(spec))
    from rank1_batch.pipeline.stream import ShardStreamer, score_shards  # noqa: F401

    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    counts = asyncio.run(stream(engine, store, spec, shards, shards_in_flight))
    peak = peak_rss_bytes()
    rows = max(s["rows"] for s in store.read_json(layout.MANIFEST)["shards"])
    shutil.rmtree(scratch, ignore_errors=True)
    mib = 1024 * 1024
    return {
        "shards": len(shards),
        "shards_in_flight": shards_in_flight,
        "peak_open_shards": counts["peak_open_shards"],
        "peak_pairs_open": counts["peak_open_shards"] * rows,
        "rss_before_scoring_mib": round(before / mib, 1),
        "peak_rss_mib": round(peak / mib, 1),
        # Arrow's allocator (Parquet reads and writes), outside Python's heap
        "arrow_pool_peak_mib": round(pa.default_memory_pool().max_memory() / mib, 1),
        "arrow_pool": pa.default_memory_pool().backend_name,
        "run_s": round(time.perf_counter() - start, 2),
    }


def rss_in_subprocess(
    prepared: Path,
    scratch: Path,
    settings: DrainSettings,
    shards_in_flight: int,
    code: Path | None = None,
) -> dict[str, Any]:
    """Peak RSS of a fresh child scoring every shard; ``code``: a source tree (its
    ``rank1_batch`` and ``benchmarks``) to measure instead of this one, e.g. an older commit."""
    env = None
    script = Path(__file__).resolve()
    sent = settings.as_dict()
    if code is not None:
        env = {**os.environ, "PYTHONPATH": str(code.resolve())}
        script = code.resolve() / "benchmarks" / "drain_cases.py"
        sent = _for_tree(settings, script.with_name("sim_engine.py"))
    return _child(script, "--rss-child", prepared, scratch, sent, shards_in_flight, env)


def _for_tree(settings: DrainSettings, sim_engine: Path) -> dict[str, Any]:
    """``settings`` as the source tree of ``sim_engine`` (its simulated engine) reads them:
    without the :class:`SimParams` fields it lacks, which an older tree models as
    :data:`CASE9_SIM` does (one free request per pair, no KV limit)."""
    source = sim_engine.read_text()
    sim = settings.sim.as_dict()
    legacy = CASE9_SIM.as_dict()
    for key in [k for k in sim if f"\n    {k}:" not in source]:
        if sim.pop(key) != legacy[key]:
            raise ValueError(f"{sim_engine} has no SimParams.{key}; it cannot simulate {key}")
    return {**settings.as_dict(), "sim": sim}


# -- the case -------------------------------------------------------------------------------
def drain(
    work: Path,
    settings: DrainSettings = FULL,
    rss_repeats: int = RSS_REPEATS,
    baseline: Path | None = None,
) -> dict[str, Any]:
    """Busy-slot fractions of the three policies at each shard size, and peak RSS; with
    ``baseline`` (a source tree) its stream policy and peak RSS beside this tree's."""
    prepared = prepare_all(work, settings)
    names = {size: shard_names(path) for size, path in prepared.items()}
    # Every size holds the same pairs in the same order, so the one-queue reference is one run.
    first = settings.shard_sizes[0]
    ref = measure("never_draining", prepared[first], work / "drain-run", settings, names[first])
    base = ref["busy_fraction"]
    sizes: dict[str, Any] = {}
    for size in settings.shard_sizes:
        scratch = work / f"drain-run-{size}"
        old = measure("old_policy", prepared[size], scratch, settings, names[size])
        # Beyond the shard count every shard is in flight at once: the same run, measured once.
        runs: dict[int, dict[str, Any]] = {}
        for k in sorted({min(k, len(names[size])) for k in settings.shards_in_flight}):
            runs[k] = measure("stream", prepared[size], scratch, settings, names[size], k)
        streams = {str(k): runs[min(k, len(names[size]))] for k in settings.shards_in_flight}
        ratios = {k: round(v["busy_fraction"] / base, 3) for k, v in streams.items()}
        meeting = [int(k) for k, r in ratios.items() if r >= TARGET]
        sizes[str(size)] = {
            "shards": len(names[size]),
            "old_policy": old,
            "stream": streams,
            "old_over_never_draining": round(old["busy_fraction"] / base, 3),
            "stream_over_never_draining": ratios,
            "smallest_shards_in_flight_meeting_target": min(meeting) if meeting else None,
        }
        print(
            f"[drain] {size}-pair shards: old/ref {sizes[str(size)]['old_over_never_draining']}, "
            f"stream/ref by shards_in_flight {ratios}",
            file=sys.stderr,
            flush=True,
        )
        if baseline is not None:
            theirs = {
                k: measure_in_tree(baseline, prepared[size], scratch, settings, k) for k in runs
            }
            by_k = {str(k): theirs[min(k, len(names[size]))] for k in settings.shards_in_flight}
            their_ratios = {k: round(v["busy_fraction"] / base, 3) for k, v in by_k.items()}
            sizes[str(size)]["baseline_stream"] = by_k
            sizes[str(size)]["baseline_stream_over_never_draining"] = their_ratios
            print(
                f"[drain] {size}-pair shards, baseline: stream/ref by shards_in_flight "
                f"{their_ratios}",
                file=sys.stderr,
                flush=True,
            )
    result: dict[str, Any] = {
        "engine": ENGINE,
        "settings": settings.as_dict(),
        "pairs": settings.total_pairs,
        "target_stream_over_never_draining": TARGET,
        "default_shards_in_flight": default_shards_in_flight(),
        "never_draining": ref,
        "sizes": sizes,
    }
    if baseline is not None:
        result["baseline_code"] = str(baseline)
    if settings.rss:
        result["peak_rss"] = peak_rss(work, settings, prepared, baseline, repeats=rss_repeats)
    return result


def prepare_all(work: Path, settings: DrainSettings) -> dict[int, Path]:
    prepared = {}
    for size in settings.shard_sizes:
        prepared[size] = work / f"drain-prepared-{size}"
        write_shards(Store(str(prepared[size])), settings, size)
    return prepared


def peak_rss(
    work: Path,
    settings: DrainSettings,
    prepared: dict[int, Path],
    baseline: Path | None = None,
    repeats: int = RSS_REPEATS,
) -> dict[str, Any]:
    """Peak RSS of the stream at each shard size, a fresh process each, ``repeats`` times
    (the run with the median peak is reported, every peak listed: a process's high-water mark
    varies by ±10 MiB from run to run with allocator and thread timing); with ``baseline`` (a
    source tree of other code) that code too, on the same shards, the trees alternating."""
    k = settings.rss_shards_in_flight or default_shards_in_flight()
    trees: dict[str, Path | None] = {"stream_per_shard_size": None}
    if baseline is not None:
        trees["baseline_per_shard_size"] = baseline
    runs: dict[str, dict[str, Any]] = {name: {} for name in trees}
    for size in settings.shard_sizes:
        tries: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for _ in range(repeats):
            for name, code in trees.items():
                scratch = work / f"drain-rss-{size}"
                run = rss_in_subprocess(prepared[size], scratch, settings, k, code)
                tries[name].append(run)
                print(f"[drain] rss {name} {size}: {run}", file=sys.stderr, flush=True)
        for name, found in tries.items():
            found.sort(key=lambda r: r["peak_rss_mib"])
            median = dict(found[len(found) // 2])
            median["peak_rss_mib_runs"] = [r["peak_rss_mib"] for r in found]
            runs[name][str(size)] = median
    out: dict[str, Any] = {"target_growth": 0.10, "repeats": repeats}
    if baseline is not None:
        out["baseline_code"] = str(baseline)
    for name, rss in runs.items():
        first, last = rss[str(settings.shard_sizes[0])], rss[str(settings.shard_sizes[-1])]
        # more pairs held (open shards: read, judged or queued, not yet committed)
        held = last["peak_pairs_open"] - first["peak_pairs_open"]
        growth = round(last["peak_rss_mib"] / first["peak_rss_mib"] - 1, 3)
        extra = (last["peak_rss_mib"] - first["peak_rss_mib"]) * 1024 / held if held else None
        prefix = name.removesuffix("_per_shard_size")
        out[name] = rss
        if prefix == "stream":
            out["growth_smallest_to_largest"] = growth
            out["kib_per_extra_pair_open"] = round(extra, 2) if extra is not None else None
        else:
            out[f"{prefix}_growth_smallest_to_largest"] = growth
            out[f"{prefix}_kib_per_extra_pair_open"] = (
                round(extra, 2) if extra is not None else None
            )
    return out


def default_shards_in_flight() -> int:
    from rank1_batch.job.spec import ComputeSpec

    return ComputeSpec().shards_in_flight


def shard_names(prepared: Path) -> list[str]:
    return [s["id"] for s in Store(str(prepared)).read_json(layout.MANIFEST)["shards"]]


def settings_from_dict(data: dict[str, Any]) -> DrainSettings:
    data = dict(data)
    sim = SimParams(**data.pop("sim"))
    for key in ("shard_sizes", "shards_in_flight"):
        data[key] = tuple(data[key])
    return DrainSettings(**data, sim=sim)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8,000 pairs, shards_in_flight 2 and 8")
    p.add_argument("--out", help="also write the JSON document here")
    p.add_argument(
        "--rss-only", action="store_true", help="only the peak-RSS part (a fresh process a size)"
    )
    p.add_argument(
        "--rss-repeats",
        type=int,
        default=RSS_REPEATS,
        help="fresh processes per shard size (the median peak is reported)",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="also measure the code of this source tree (e.g. an older commit:\n"
        "git archive COMMIT rank1_batch benchmarks | tar -x -C DIR)",
    )
    p.add_argument(
        "--slots", help="the slots part alone (drain_slots.py): slot counts, e.g. 128,256,1024"
    )
    p.add_argument(
        "--requests-per-pair",
        default="single,stepped",
        help="the slots part's request models (default: single,stepped)",
    )
    p.add_argument(
        "--pairs-per-slot", type=int, help="the slots part's job size (default 96; --quick 24)"
    )
    p.add_argument(
        "--slots-shards-in-flight",
        type=int,
        help="the slots part's shards in flight (default: the job default)",
    )
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    p.add_argument("--stream-child", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--shards-in-flight", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stream_child:
        settings = settings_from_dict(json.loads(args.settings))
        prepared = Path(args.stream_child)
        out = measure(
            "stream", prepared, Path(args.scratch), settings, shard_names(prepared),
            args.shards_in_flight,
        )  # fmt: skip
        print(json.dumps(out))
        return 0
    if args.rss_child:
        settings = settings_from_dict(json.loads(args.settings))
        out = rss_child(Path(args.rss_child), Path(args.scratch), settings, args.shards_in_flight)
        print(json.dumps(out))
        return 0
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="rank1-drain-"))
    start = time.perf_counter()
    try:
        doc: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/drain_cases.py", *(argv or sys.argv[1:])]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        settings = QUICK if args.quick else FULL
        if args.slots:
            import drain_slots

            per_slot = args.pairs_per_slot or (24 if args.quick else 96)
            doc["case"] = drain_slots.slots_case(
                work,
                drain_slots.SlotsSettings(
                    slots=tuple(int(x) for x in args.slots.split(",")),
                    requests_per_pair=tuple(args.requests_per_pair.split(",")),
                    pairs_per_slot=per_slot,
                    shards_in_flight=args.slots_shards_in_flight,
                ),
            )
        elif args.rss_only:
            doc["case"] = {
                "engine": ENGINE,
                "settings": settings.as_dict(),
                "peak_rss": peak_rss(
                    work, settings, prepare_all(work, settings), args.baseline, args.rss_repeats
                ),
            }
        else:
            doc["case"] = drain(work, settings, args.rss_repeats, args.baseline)
        doc["total_wall_s"] = round(time.perf_counter() - start, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
