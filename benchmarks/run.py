"""Reproducible performance run of rank1-batch on this machine: one JSON document out.

    python benchmarks/run.py --quick                 # minutes: small sizes, every case
    python benchmarks/run.py --tiny                  # every case's code path (tests run this)
    python benchmarks/run.py                         # full sizes (20k pairs scored, 2M prepared)
    python benchmarks/run.py --out results/x.json    # default: benchmarks/results/latest.json

Cases (see README "Performance"): 1 pipeline overhead, 2 scaling, 3 resume cost,
4 prepare throughput, 5 memory, 6 engine efficiency, 7 token economics, 8 scale (end to end
with an instant test-double engine at 1M+ pairs: ``--only 8_scale --scale-pairs 1000000
10000000``), 9 drain (busy-slot fraction of a simulated continuous-batching engine under the
old and the streaming policy), 10 reasoning modes (think / direct / cascade: tokens vs
nDCG@10; alone: benchmarks/adaptive_cases.py). Every case records its figures and settings;
the document records the machine. Timings use the toy model on CPU: they measure the pipeline
around the engine, not Rank1's quality or GPU speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adaptive_cases
import common as c
import data_cases
import drain_cases
import engine_cases
import pipeline_cases
import scale_cases

SIZES = {
    "quick": {
        "score_pairs": 2000,
        "shard_size": 200,
        "cli_repeats": 1,
        "prepare_pairs": [20_000, 100_000],
        "score_shards": 2,
        "engine_queries": 20,
        "repeats": 3,
        "scale_pairs": [100_000, 300_000],
        "drain": "quick",
        "mode_queries": 20,
    },
    # Every case's code path in a few minutes (tests/test_benchmarks.py runs it); the figures
    # mean nothing at this size.
    "tiny": {
        "score_pairs": 60,
        "shard_size": 20,
        "cli_repeats": 1,
        "prepare_pairs": [2_000],
        "score_shards": 1,
        "engine_queries": 2,
        "repeats": 1,
        "scale_pairs": [2_000, 4_000],
        "drain": "tiny",
        "mode_queries": 2,
        "mode_settings": 3,  # think, direct, cascade: each mode once
    },
    "full": {
        "score_pairs": 20_000,
        "shard_size": 1000,
        "cli_repeats": 1,
        "prepare_pairs": [100_000, 2_000_000],
        "score_shards": 2,
        "engine_queries": 100,
        "repeats": 3,
        "scale_pairs": [1_000_000, 3_000_000],
        "drain": "full",
        "mode_queries": 100,
    },
}
CANDIDATES = 30


def guarded(cases: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one case; a failure is recorded in its place and the others still run."""
    start = time.perf_counter()
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    try:
        result = fn()
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result = {**result, "case_wall_s": round(time.perf_counter() - start, 1)}
    cases[name] = result
    print(f"[bench] {name} done in {result['case_wall_s']} s", file=sys.stderr, flush=True)
    return result


def run_all(work: Path, size: dict[str, Any]) -> dict[str, Any]:
    cases: dict[str, Any] = {}
    n, shard = size["score_pairs"], size["shard_size"]
    one = guarded(
        cases,
        "1_pipeline_overhead",
        lambda: pipeline_cases.overhead(work, n, shard, size["cli_repeats"]),
    )
    if "error" not in one:
        data, e2e = Path(one["data"]), one["rank1_batch_run"]
        boot = one["startup_one_pair_run"]["median_s"]
        guarded(cases, "2_scaling", lambda: pipeline_cases.scaling(work, data, e2e, boot, shard))
        guarded(cases, "3_resume", lambda: pipeline_cases.resume(work, data, e2e, boot, shard))
    prep: list[dict[str, Any]] = []

    def prepare_runs() -> dict[str, Any]:
        for pairs in size["prepare_pairs"]:
            prep.append(data_cases.prepare_and_score(work, pairs, size["score_shards"]))
        return data_cases.throughput(prep[-1], work, size["repeats"])

    guarded(cases, "4_prepare_throughput", prepare_runs)
    if prep and "error" not in one:
        guarded(
            cases,
            "5_memory",
            lambda: data_cases.memory(prep, one["rank1_batch_run"]),
        )
    guarded(
        cases,
        "6_engine_efficiency",
        lambda: engine_cases.efficiency(size["engine_queries"], CANDIDATES, size["repeats"]),
    )
    if "error" not in one:
        out = Path(one["rank1_batch_run"]["out"])
        guarded(cases, "7_token_economics", lambda: engine_cases.token_economics(out))
    guarded(cases, "8_scale", lambda: scale_cases.scale(work, size["scale_pairs"]))
    drain = {"tiny": drain_cases.TINY, "quick": drain_cases.QUICK}.get(
        size["drain"], drain_cases.FULL
    )
    guarded(cases, "9_drain", lambda: drain_cases.drain(work, drain))
    modes = work / "modes"
    modes.mkdir()
    guarded(
        cases,
        "10_reasoning_modes",
        lambda: adaptive_cases.demo(size["mode_queries"], modes, size.get("mode_settings")),
    )
    return cases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.add_argument(
        "--tiny", action="store_true", help="every case at a toy size (a smoke test, no figures)"
    )
    p.add_argument(
        "--out",
        default=str(c.ROOT / "benchmarks" / "results" / "latest.json"),
        help="where to write the JSON document too",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--scale-pairs",
        type=int,
        nargs="+",
        help="sizes of case 8 (end to end with an instant test-double engine), e.g. 1000000 "
        "10000000",
    )
    p.add_argument("--only", help="run just this case (8_scale)")
    args = p.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.scale_pairs:
        SIZES[mode]["scale_pairs"] = args.scale_pairs
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="rank1-bench-"))
    try:
        doc: dict[str, Any] = {
            "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
            "mode": mode,
            "sizes": SIZES[mode],
            "machine": c.machine(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        }
        if args.only == "8_scale":
            doc["cases"] = {}
            guarded(
                doc["cases"], "8_scale", lambda: scale_cases.scale(work, SIZES[mode]["scale_pairs"])
            )
        else:
            doc["cases"] = run_all(work, SIZES[mode])
        doc["total_wall_s"] = round(time.time() - started, 1)
    finally:
        if args.keep:
            print(f"[bench] scratch kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(doc, indent=2, default=str)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
