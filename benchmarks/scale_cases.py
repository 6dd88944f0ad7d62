"""Case 8: one synthetic job end to end at 1M and larger sizes, against plain pyarrow.

Each size: a query-grouped Parquet input of short passages (100 candidates per query), run by
``scale_child.py``: one process runs the job (prepare -> score with the instant test-double
engine on the local executor -> finalize), then status, export trec and eval each run in a
process of their own, as a user runs those commands. The parent samples the child's process
tree RSS per stage and times a plain pyarrow pass over the same input (read all + write all,
zstd) for the ratios. Sizes are a parameter (``--scale-pairs``): 10M pairs on two shared cores
takes a long time, so the default run does 1M and what fits.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as c
from children import run_phased

CANDIDATES = 100


def write_scale_pairs(path: Path, n_pairs: int, chunk: int = 500_000) -> Path:
    """Query-grouped pairs with short passages (a few words), written chunk by chunk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    words = np.array(
        ["cat", "dog", "bird", "fish", "tree", "river", "stone", "cloud", "rain", "wind"]
    )
    schema = pa.schema([(n, pa.string()) for n in ("query_id", "query", "doc_id", "passage")])
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, n_pairs, chunk):
            idx = np.arange(start, min(start + chunk, n_pairs))
            q = idx // CANDIDATES
            qid = pc.binary_join_element_wise("q", pa.array(q.astype(str)), "")
            did = pc.binary_join_element_wise(
                "d", pa.array((idx * 7919 % (n_pairs * 3)).astype(str)), ""
            )
            a, b, d = words[idx % 10], words[(idx // 10) % 10], words[q % 10]
            passage = pc.binary_join_element_wise(
                pa.array(a), pa.array(b), pa.array(d), "passage about", " "
            )
            query = pc.binary_join_element_wise("what about", pa.array(d), " ")
            writer.write_table(
                pa.table([qid, query, did, passage], schema=schema), row_group_size=100_000
            )
    return path


def write_qrels(path: Path, n_pairs: int) -> Path:
    """Two relevant documents per query: the ones whose passage words match the query word."""
    import numpy as np

    lines = []
    for q in range(0, max(1, n_pairs // CANDIDATES)):
        for j in (q % 10, (q % 10) + 10):
            idx = q * CANDIDATES + j
            if idx < n_pairs:
                lines.append(f"q{q} 0 d{idx * 7919 % (n_pairs * 3)} 1")
    del np
    path.write_text("\n".join(lines) + "\n")
    return path


def pyarrow_pass(data: Path, work: Path, repeats: int = 3) -> float:
    """Median of ``repeats`` plain pyarrow passes: read the whole input, write it (zstd)."""
    import pyarrow.parquet as pq

    target = work / "pyarrow-pass.parquet"

    def once() -> None:
        pq.write_table(pq.read_table(data), target, compression="zstd")

    walls, _ = c.timed(once, repeats)
    target.unlink(missing_ok=True)
    return float(c.summary(walls)["median_s"])


def pyarrow_scores_pass(out: Path, work: Path) -> float:
    """The plain pyarrow pass export and eval are compared with: read ``query_id, doc_id,
    score`` of every scores file and write them as one CSV file."""
    import pyarrow as pa
    import pyarrow.csv as pv
    import pyarrow.parquet as pq

    target = work / "scores-pass.csv"
    start = time.perf_counter()
    files = sorted((out / "scores").glob("*.parquet"))
    with pv.CSVWriter(target, pa.schema([("query_id", pa.string()), ("doc_id", pa.string()),
                                         ("score", pa.float64())])) as writer:  # fmt: skip
        for f in files:
            writer.write_table(pq.read_table(f, columns=["query_id", "doc_id", "score"]))
    wall = time.perf_counter() - start
    target.unlink(missing_ok=True)
    return round(wall, 3)


def one_size(work: Path, n_pairs: int) -> dict[str, Any]:
    data = write_scale_pairs(work / f"scale-{n_pairs}.parquet", n_pairs)
    qrels = write_qrels(work / f"scale-{n_pairs}.qrels", n_pairs)
    out = work / f"out-scale-{n_pairs}"
    shutil.rmtree(out, ignore_errors=True)
    job = c.write_job(
        work / f"scale-{n_pairs}.yaml", data, out, shard_size=2000, workers=1, torch_threads=1
    )
    baseline = pyarrow_pass(data, work)
    child = [sys.executable, str(Path(__file__).with_name("scale_child.py")), str(job), str(qrels)]
    result, peaks, wall = run_phased(child, "scale_child")
    process_peak = {"run": result.pop("process_peak_mib", None)}
    for command in ("status", "export_trec", "eval"):  # each in its own process, as users do
        one, one_peaks, one_wall = run_phased([*child, command], f"scale_child {command}")
        result["times"].update(one["times"])
        one["hwm_mib"].pop("startup", None)
        result["hwm_mib"].update(one["hwm_mib"])
        process_peak[command] = one["process_peak_mib"]
        peaks[command] = one_peaks.get(command, {})
        wall += one_wall
    scores_pass = pyarrow_scores_pass(out, work)
    times = result.get("times", {})
    return {
        "pairs": n_pairs,
        "input_mib": round(os.path.getsize(data) / c.MiB, 1),
        "pyarrow_read_write_s": baseline,
        "stage_s": times,
        "stage_over_pyarrow": {k: c.ratio(v, baseline) for k, v in times.items()},
        "pyarrow_scores_to_csv_s": scores_pass,
        "export_eval_over_scores_pass": {
            k: c.ratio(times[k], scores_pass) for k in ("export_trec", "eval") if k in times
        },
        # VmHWM of the driver, reset at each stage's start (exact, not sampled)
        "driver_hwm_mib": result.get("hwm_mib", {}),
        # ru_maxrss of each command's process (run = prepare + score + finalize), imports included
        "process_peak_mib": process_peak,
        "driver_rss_peak_mib": {p: r.get("driver") for p, r in peaks.items()},
        "worker_rss_peak_mib": {p: r.get("ray_worker") for p, r in peaks.items()},
        "output_files": sum(len(f) for _, _, f in os.walk(out)),
        "child_wall_s": round(wall, 1),
        **{k: result.get(k) for k in ("shards", "plan")},
    }


def scale(work: Path, sizes: list[int]) -> dict[str, Any]:
    runs = [one_size(work, n) for n in sizes]
    small, large = runs[0], runs[-1]
    growth = {
        stage: c.ratio(
            large["driver_rss_peak_mib"].get(stage) or 0,
            small["driver_rss_peak_mib"].get(stage) or 0,
        )
        for stage in small["driver_rss_peak_mib"]
    }
    process_growth = {
        command: c.ratio(large["process_peak_mib"].get(command) or 0, value)
        for command, value in small["process_peak_mib"].items()
    }
    hwm_growth = {
        stage: c.ratio(large["driver_hwm_mib"].get(stage) or 0, value)
        for stage, value in small["driver_hwm_mib"].items()
    }
    return {
        "by_pairs": {str(r["pairs"]): r for r in runs},
        "driver_rss_growth_large_over_small": growth,
        "driver_hwm_growth_large_over_small": hwm_growth,
        "process_peak_growth_large_over_small": process_growth,
        "note": (
            "score uses an instant test-double engine in the driver process (local executor), so "
            "the score stage measures the pipeline around an engine; status, export_trec and eval "
            "each run in a fresh process (process_peak_mib: its ru_maxrss, imports included); "
            "prepare runs as Ray tasks "
            "(ray_worker RSS). Ratios are stage wall time over one plain pyarrow read + write of "
            "the input; export and eval also over a pyarrow pass reading query_id, doc_id, score "
            "of every scores file and writing them as CSV. driver_hwm_mib: the driver's VmHWM, "
            "reset (/proc/self/clear_refs) as each stage starts: its exact peak in that stage; "
            "driver_rss_peak_mib: RSS sampled every 0.2 s."
        ),
        "target": "driver RSS at the largest size within 10% of the smallest; prepare <= 3x",
    }


if __name__ == "__main__":
    sizes = [int(x) for x in sys.argv[1:]] or [1_000_000]
    work = Path(tempfile.mkdtemp(prefix="rank1-scale-"))
    try:
        print(json.dumps(scale(work, sizes), indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
