"""Prepare against a plain pyarrow read + write of the same input, side by side.

    python benchmarks/prepare_side_by_side.py --pairs 10000000 --repeats 3 \
        --out benchmarks/results/prepare_side_by_side.json

Writes case 8's query-grouped input (short passages, 100 candidates per query) once, starts
local Ray once, then alternates: one plain pyarrow pass (read the whole input, write it with
zstd), one ``prepare`` into a fresh output folder; ``--repeats`` times. Prints (and saves) the
medians and their ratio. Ray's start-up is outside both timings: it is paid once per job, and
case 8 reports it within the job's wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rank1_batch.job.record import claim_output, job_record

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)

    import common as c
    import pyarrow.parquet as pq
    from scale_cases import write_scale_pairs

    from rank1_batch.io.store import Store
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.load import load_job
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.pool import init_ray

    work = Path(tempfile.mkdtemp(prefix="r1prep-"))
    try:
        data = write_scale_pairs(work / "pairs.parquet", args.pairs)
        job = c.write_job(
            work / "job.yaml", data, work / "out0", shard_size=args.shard_size, workers=1,
            torch_threads=1,
        )  # fmt: skip
        spec0 = load_job(str(job))
        init_ray(spec0)
        arrow_s, prepare_s, shards = [], [], 0
        for i in range(args.repeats):
            target = work / "pyarrow-pass.parquet"
            start = time.perf_counter()
            pq.write_table(pq.read_table(data), target, compression="zstd")
            arrow_s.append(time.perf_counter() - start)
            target.unlink()
            out = work / f"out{i}"
            spec = spec0.model_copy(
                update={"output": spec0.output.model_copy(update={"path": str(out)})}
            )
            store = Store(str(out))
            files = scan_inputs(spec.input, spec.storage)
            claim_output(store, job_record(spec, listing(files)))
            start = time.perf_counter()
            manifest = prepare(spec, store, files)
            prepare_s.append(time.perf_counter() - start)
            shards = len(manifest["shards"])
            shutil.rmtree(out)
        result = {
            "command": " ".join(["python benchmarks/prepare_side_by_side.py", *sys.argv[1:]]),
            "pairs": args.pairs,
            "input_mib": round(os.path.getsize(data) / c.MiB, 1),
            "shards": shards,
            "pyarrow_read_write_s": [round(x, 2) for x in arrow_s],
            "prepare_s": [round(x, 2) for x in prepare_s],
            "median_ratio": round(statistics.median(prepare_s) / statistics.median(arrow_s), 2),
            "load_avg_at_end": list(os.getloadavg()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    c.emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
