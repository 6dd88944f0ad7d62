"""Case 8: one synthetic job end to end at 1M and larger sizes, against plain pyarrow.

Each size: a query-grouped Parquet input of short passages (100 candidates per query), run by
``scale_child.py`` in its own process: prepare -> score (instant test-double engine, local
executor) -> finalize -> status -> export trec -> eval. The parent samples the child's process
tree RSS per stage and times a plain pyarrow pass over the same input (read all + write all,
zstd) for the ratios. Sizes are a parameter (``--scale-pairs``): 10M pairs on two shared cores
takes a long time, so the default run does 1M and what fits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as c

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
    result: dict[str, Any] = {}
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            child, cwd=c.ROOT, env=c.bench_env(), stdout=subprocess.PIPE, stderr=log, text=True,
            start_new_session=True,
        )  # fmt: skip
        sampler = c.RssSampler(proc.pid)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                msg = json.loads(line)
                sampler.phase = msg.pop("phase", sampler.phase)
                result.update(msg)
        proc.wait()
        wall = time.perf_counter() - start
        peaks = sampler.stop()
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"scale_child exited {proc.returncode}: {log.read()[-3000:]}")
    times = result.get("times", {})
    return {
        "pairs": n_pairs,
        "input_mib": round(os.path.getsize(data) / c.MiB, 1),
        "pyarrow_read_write_s": baseline,
        "stage_s": times,
        "stage_over_pyarrow": {k: c.ratio(v, baseline) for k, v in times.items()},
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
    return {
        "by_pairs": {str(r["pairs"]): r for r in runs},
        "driver_rss_growth_large_over_small": growth,
        "note": (
            "score uses an instant test-double engine in the driver process (local executor), so "
            "the score stage measures the pipeline around an engine; prepare runs as Ray tasks "
            "(ray_worker RSS). Ratios are stage wall time over one plain pyarrow read + write of "
            "the input."
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
