"""The demo job under both executors, side by side: ``compute.executor: ray`` (local Ray,
one scoring actor) and ``local`` (the engine in the driver process, no Ray), on the whole
demo (3,000 pairs, 6 shards) and on its first query alone (30 pairs, a quick experiment).

    python benchmarks/executor_cases.py [--repeats 3] [--out benchmarks/results/executor.json]

Runs alternate (ray, local, ray, local, ...) so the shared machine's load falls on both alike;
each records the wall time to its first committed shard (a marker under ``_commits/``) and to
the end of the process. Prints one JSON document: per input, medians per executor, their
ratio, every run, and whether both executors' scores are identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c

DEMO = c.ROOT / "jobs" / "demo.yaml"
DEMO_PAIRS = c.ROOT / "jobs" / "data" / "demo-pairs.parquet"
EXECUTORS = ("ray", "local")
INPUTS = ("demo_3000_pairs", "one_query_30_pairs")


def first_query(work: Path) -> Path:
    """The demo's first query and its 30 candidates."""
    import pyarrow.parquet as pq

    path = work / "demo-1q.parquet"
    pq.write_table(pq.read_table(DEMO_PAIRS).slice(0, 30), path)
    return path


def one_run(executor: str, out: Path, pairs: Path | None = None) -> dict[str, Any]:
    """One demo run into ``out``: seconds to the first commit marker and to the end."""
    commits = out / "_commits"
    start = time.perf_counter()
    first: list[float] = []

    def watch() -> bool:
        if not first and commits.is_dir() and any(commits.glob("shard-*.json")):
            first.append(time.perf_counter() - start)
        return False  # never stop the run: only watch it

    args = ["run", str(DEMO), "--output", str(out), "--set", f"compute.executor={executor}"]
    if pairs is not None:
        args += ["--set", f"input.path={pairs}"]
    result = c.run_cli(args, stop_when=watch)
    return {
        "executor": executor,
        "first_commit_s": round(first[0], 2) if first else None,
        "wall_s": result["wall_s"],
        "rss_peak_mib": result["rss_peak_mib"],
    }


def scores(out: Path) -> list[tuple[str, str, float]]:
    from rank1_batch.io import commit
    from rank1_batch.io.store import Store

    store = Store(str(out))
    got = []
    for shard in sorted(commit.committed_shards(store)):
        t = commit.committed_table(store, shard, "scores", ["query_id", "doc_id", "score"])
        got += list(zip(*(t.column(k).to_pylist() for k in t.column_names), strict=True))
    return sorted(got)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs per executor (alternating)")
    p.add_argument("--out", help="also write the JSON document here")
    p.add_argument("--only", choices=INPUTS, help="one input only (default: both)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rank1-executors-"))
    inputs = {"demo_3000_pairs": None, "one_query_30_pairs": first_query(work)}
    if args.only:
        inputs = {args.only: inputs[args.only]}
    doc: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/executor_cases.py", *(argv or sys.argv[1:])]),
        "machine": c.machine(),
        "job": "jobs/demo.yaml (toy model, transformers engine on CPU)",
    }
    for label, pairs in inputs.items():
        runs = []
        for i in range(args.repeats):
            for executor in EXECUTORS:
                runs.append(one_run(executor, work / f"{label}-{executor}-{i}", pairs))
                print(f"[executors] {label} {runs[-1]}", file=sys.stderr, flush=True)
        medians = {
            e: {
                k: statistics.median(r[k] for r in runs if r["executor"] == e)
                for k in ("first_commit_s", "wall_s")
            }
            for e in EXECUTORS
        }
        doc[label] = {
            "medians": medians,
            "local_over_ray": {
                k: c.ratio(medians["local"][k], medians["ray"][k])
                for k in ("first_commit_s", "wall_s")
            },
            "identical_scores": scores(work / f"{label}-ray-0")
            == scores(work / f"{label}-local-0"),
            "runs": runs,
        }
    c.emit(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
