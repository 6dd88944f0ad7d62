"""The shuffle plan of prepare: peak object-store use, spilled bytes and wall time, two trees.

    python benchmarks/shuffle_cases.py --pairs 10000000 --before /tmp/before \
        --out benchmarks/results/shuffle.json

Writes case 8's input (short passages, 100 candidates per query), its rows permuted (fixed
seed) so no query is contiguous and prepare takes the shuffle plan. Then, for each tree
(``--before DIR``: a copy of the package before a change, e.g. ``git archive main``; and
``--after DIR``, by default this one), one child process starts a local Ray with the object
store capped (``--store-gib``) and runs ``prepare``; a thread polls the raylet's store stats
(``FormatGlobalMemoryInfo``, what ``ray memory --stats-only`` prints) every 0.2 s for the peak
bytes in use, and reads the spill totals at the end. The children alternate (``--repeats``);
each reports the sha256 of its manifest's shard list, which must be equal across trees (the
same shard bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GiB = 1 << 30


def write_ungrouped(path: Path, n_pairs: int) -> Path:
    import numpy as np
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    from scale_cases import write_scale_pairs

    grouped = write_scale_pairs(path.with_name("grouped.parquet"), n_pairs)
    table = pq.read_table(grouped)
    order = np.random.default_rng(8).permutation(table.num_rows)
    pq.write_table(table.take(order), path, compression="zstd", row_group_size=100_000)
    grouped.unlink()
    return path


def store_stats(state: Any) -> Any:
    from ray._private import internal_api

    return internal_api.get_memory_info_reply(state).store_stats


def child(job: str, store_gib: float) -> dict[str, Any]:
    import ray

    from rank1_batch.io.store import Store
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.load import load_job
    from rank1_batch.job.prepare import prepare
    from rank1_batch.job.record import claim_output, job_record

    spec = load_job(job)
    store = Store(spec.output.path)
    files = scan_inputs(spec.input, spec.storage)
    claim_output(store, job_record(spec, listing(files)))
    from ray._private import internal_api

    ctx = ray.init(
        num_cpus=2,
        object_store_memory=int(store_gib * GiB),
        include_dashboard=False,
        configure_logging=False,
    )
    state = internal_api.get_state_from_address(ctx.address_info["gcs_address"])
    peak = {"used": 0, "fallback": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            s = store_stats(state)
            peak["used"] = max(peak["used"], s.object_store_bytes_used)
            peak["fallback"] = max(peak["fallback"], s.object_store_bytes_fallback)
            done.wait(0.2)

    base = store_stats(state)
    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    start = time.perf_counter()
    manifest = prepare(spec, store, files)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    end = store_stats(state)
    ray.shutdown()
    shards = json.dumps(manifest["shards"], sort_keys=True).encode()
    return {
        "plan": manifest["plan"],
        "wall_s": round(wall, 2),
        "peak_store_mib": round(peak["used"] / (1 << 20), 1),
        "peak_fallback_mib": round(peak["fallback"] / (1 << 20), 1),
        "spilled_mib": round((end.spilled_bytes_total - base.spilled_bytes_total) / (1 << 20), 1),
        "restored_mib": round(
            (end.restored_bytes_total - base.restored_bytes_total) / (1 << 20), 1
        ),
        "created_mib": round(
            (end.cumulative_created_bytes - base.cumulative_created_bytes) / (1 << 20), 1
        ),
        "shards": len(manifest["shards"]),
        "shards_sha256": hashlib.sha256(shards).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=10_000_000)
    p.add_argument("--shard-size", type=int, default=2000)
    p.add_argument("--store-gib", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--before", help="a copy of the package tree before the change")
    p.add_argument("--after", help="a copy of the package tree after it (default: this one)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.store_gib)))
        return 0

    sys.path.insert(0, str(HERE))
    import common as c

    work = Path(tempfile.mkdtemp(prefix="r1shuf-"))
    trees = {"after": args.after or str(HERE.parent)}
    if args.before:
        trees = {"before": args.before, **trees}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    try:
        data = write_ungrouped(work / "pairs.parquet", args.pairs)
        for i in range(args.repeats):
            for label, tree in trees.items():
                out = work / f"out-{label}-{i}"
                job = c.write_job(work / f"{label}.yaml", data, out, shard_size=args.shard_size)
                env = {**os.environ, "PYTHONPATH": tree, "RAY_AUTH_MODE": "token"}
                cmd = [sys.executable, __file__, "--child", str(job)]
                proc = subprocess.run(
                    [*cmd, "--store-gib", str(args.store_gib)],
                    env=env, capture_output=True, text=True,
                )  # fmt: skip
                if proc.returncode:
                    raise RuntimeError(f"{label} child failed:\n{proc.stderr[-3000:]}")
                runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(label, runs[label][-1], file=sys.stderr, flush=True)
                shutil.rmtree(out)
        result: dict[str, Any] = {
            "command": " ".join(["python benchmarks/shuffle_cases.py", *sys.argv[1:]]),
            "pairs": args.pairs,
            "input_mib": round(os.path.getsize(data) / c.MiB, 1),
            "object_store_cap_gib": args.store_gib,
            "runs": runs,
            "median_wall_s": {
                k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()
            },
            "same_shards": len({r["shards_sha256"] for v in runs.values() for r in v}) == 1,
            "load_avg_at_end": list(os.getloadavg()),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    c.emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
