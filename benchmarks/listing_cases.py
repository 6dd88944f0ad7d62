"""S3 requests of the driver's rounds, and `status` seconds, at 1,000 and 50,000 shards on the
test S3 server (moto, counting the requests it serves: tests/s3_server.py).

    python benchmarks/listing_cases.py [--before /path/to/worktree-of-main]
        [--out benchmarks/results/listing.json]

Rounds: ``pool.score_pending`` over N pending shards with no attempt records, its actor pool
pass replaced by one that commits nothing (the driver's bookkeeping alone: quarantine, blame,
isolation); ``max_shard_attempts: 3``, so 5 rounds end it. Each implementation runs in a
child process with its own package on ``PYTHONPATH`` (this checkout; ``--before``: a
worktree of the code before, run at the sizes in ``BEFORE_SHARDS`` only: it lists per shard).
Status: ``read_status`` on N shards, all but one committed, with a digest an earlier reader
wrote of all but the 200 newest: those 200 as marker objects (the shape
``tests/test_status_scale.py`` uses), median of 3; then with every committed marker an object
as well (``status_all_objects``: what a run leaves), this checkout and ``--before`` side by side,
each in its own process. ``--status-only`` measures status alone and keeps the rounds already
in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHARDS = (1000, 50_000)
BEFORE_SHARDS = (100, 1000)


def _server() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from s3_server import MotoServer, s3_env

    os.environ.update({k: v for k, v in s3_env("x").items() if k.startswith("AWS_")})
    server = MotoServer(counting=True)
    server.start()
    return server


def _bucket(server: Any) -> str:
    import boto3

    name = f"rank1-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def rounds_child(shards: int) -> dict[str, Any]:
    """In the child: the requests of score_pending's rounds over ``shards`` pending shards."""
    from rank1_batch.io import layout
    from rank1_batch.io.fs import StorageSpec
    from rank1_batch.io.store import Store
    from rank1_batch.job.load import spec_from_mapping
    from rank1_batch.pipeline import pool

    server = _server()
    try:
        uri = f"s3://{_bucket(server)}/out"
        spec = spec_from_mapping(
            {
                "input": {"path": "unused.parquet"},
                "output": {"path": uri},
                "model": {"name": "toy", "engine": "transformers", "device": "cpu"},
                "storage": {"endpoint_url": server.url},
                "compute": {"retry_backoff": 0, "max_shard_attempts": 3},
            }
        )
        store = Store(uri, StorageSpec(endpoint_url=server.url))
        pending = [{"id": layout.shard_name(i, shards), "rows": 10} for i in range(shards)]
        rounds: list[int] = []
        pool._score_round = lambda spec, store, group, *a, **k: rounds.append(len(group))  # type: ignore[assignment]
        pool._ensure_gpus = lambda spec: None  # type: ignore[assignment]
        pool.model_cache.fetch_on_nodes = lambda *a, **k: None  # type: ignore[assignment]
        pool.torch_threads = lambda spec, cluster_cpus=None: 1  # type: ignore[assignment]
        server.requests(reset=True)
        start = time.perf_counter()
        pool.score_pending(spec, store, pending, "run-1")
        took = time.perf_counter() - start
        counts = server.requests()
    finally:
        server.stop()
    total = sum(counts.values())
    return {
        "shards": shards,
        "rounds": len(rounds),
        "requests": counts,
        "requests_per_round": round(total / len(rounds), 1),
        "seconds_per_round": round(took / len(rounds), 2),
    }


def status_case(shards: int, all_objects: bool = False, repeats: int = 3) -> dict[str, Any]:
    """``read_status`` over ``shards`` shards, all but one committed: a digest of all but the
    200 newest, which are marker objects; ``all_objects``: every committed marker is also an
    object (a job whose markers were folded by a reader, as the driver's run leaves them)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_status_scale as t

    from rank1_batch.io import commit, layout
    from rank1_batch.io.fs import StorageSpec
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.status import read_status

    server = _server()
    try:
        bucket = _bucket(server)
        store = Store(f"s3://{bucket}/big", StorageSpec(endpoint_url=server.url))
        t.SHARDS = shards
        t.planned(store, shards)
        markers = [t.marker(i) for i in range(shards - 1)]
        commit.write_digest(store, {m.shard: m for m in markers[:-200]})
        server.seed(
            bucket,
            {f"big/{layout.marker_path(m.shard)}": json.dumps(m.to_dict()).encode()
             for m in (markers if all_objects else markers[-200:])},
        )  # fmt: skip
        times, counts = [], {}
        for _ in range(repeats):
            # The digest as the first reader left it: this reader is not the first.
            commit.write_digest(store, {m.shard: m for m in markers[:-200]})
            server.requests(reset=True)
            start = time.perf_counter()
            got = read_status(store)
            times.append(time.perf_counter() - start)
            counts = server.requests()
            assert got["shards_committed"] == shards - 1, got["shards_committed"]
    finally:
        server.stop()
    return {
        "shards": shards,
        "marker_objects": shards - 1 if all_objects else 200,
        "median_s": round(statistics.median(times), 2),
        "seconds": [round(x, 2) for x in times],
        "requests": counts,
    }


def child(pythonpath: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", help="a worktree of the code before (its rounds are measured too)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "listing.json"))
    p.add_argument("--status-only", action="store_true", help="measure status alone")
    p.add_argument("--child-rounds", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-status", type=int, help=argparse.SUPPRESS)
    p.add_argument("--all-objects", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_rounds:
        print(json.dumps(rounds_child(args.child_rounds)))
        return 0
    if args.child_status:
        print(json.dumps(status_case(args.child_status, args.all_objects, args.repeats)))
        return 0
    import common as c

    started = time.time()
    doc: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/listing_cases.py", *(argv or sys.argv[1:])]),
        "machine": c.machine(),
    }
    if not args.status_only:
        doc["rounds_after"] = [child(str(ROOT), "--child-rounds", str(n)) for n in SHARDS]
    if args.before and not args.status_only:
        doc["rounds_before"] = [child(args.before, "--child-rounds", str(n)) for n in BEFORE_SHARDS]
    doc["status"] = [child(str(ROOT), "--child-status", str(n)) for n in SHARDS]
    # Every marker an object, each implementation in its own process: the before lists them.
    shapes = [(n, impl) for n in SHARDS for impl in (["after"] + ["before"] * bool(args.before))]
    doc["status_all_objects"] = []
    for n, impl in shapes:
        where = str(ROOT) if impl == "after" else args.before
        # The before lists every marker (about 2 s a page on moto at 50,000): one run of it.
        runs = "3" if impl == "after" else "1"
        got = child(where, "--child-status", str(n), "--all-objects", "--repeats", runs)
        doc["status_all_objects"].append({"code": impl, **got})
    if args.status_only and Path(args.out).exists():  # the rounds measured before stay
        kept = json.loads(Path(args.out).read_text())
        doc = {
            **kept,
            "status_command": doc.pop("command"),
            "status_machine": doc.pop("machine"),
            **doc,
        }
    doc["total_wall_s"] = round(time.time() - started, 1)
    c.emit(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
