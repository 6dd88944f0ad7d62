"""Cases 1-3: pipeline overhead, worker scaling and resume cost (toy model, CPU).

All three score the same Parquet input with the same job (toy model, transformers engine);
the end-to-end runs are ``rank1-batch run`` subprocesses. Fixed start-up (interpreter, Ray,
actor, engine load, prepare and finalize of a one-pair input) is measured on its own and
reported next to every ratio, raw and with start-up taken out.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import common as c


def direct_engine(data: Path, shard_size: int, threads: int, repeats: int) -> dict[str, Any]:
    """The engine-bound limit: one process, requests built before the clock starts, one
    ``judge`` call per ``shard_size`` pairs of the (query-grouped) input, as an actor does."""
    import pyarrow.parquet as pq
    import torch

    from rank1_batch.core import rank1
    from rank1_batch.engines.base import JudgeRequest
    from rank1_batch.engines.factory import build_engine, model_path
    from rank1_batch.job.load import load_job

    torch.set_num_threads(threads)
    table = pq.read_table(data)
    requests = [
        JudgeRequest(
            rank1.compose_query(q, instruction=None, template=None),
            rank1.compose_passage(p, title=None),
        )
        for q, p in zip(table["query"].to_pylist(), table["passage"].to_pylist(), strict=True)
    ]
    spec = load_job(c.ROOT / "jobs" / "demo.yaml", overrides=["compute.batch_size=32"])
    engine = build_engine(spec, model_path(spec))
    parts = [requests[k : k + shard_size] for k in range(0, len(requests), shard_size)]

    def score_all() -> int:
        return sum(len(engine.judge(part)) for part in parts)

    walls, _ = c.timed(score_all, repeats)
    engine.close()
    return {**c.summary(walls), "pairs": len(requests), "torch_threads": threads}


def startup(work: Path, repeats: int, **compute: Any) -> dict[str, Any]:
    """Wall of ``rank1-batch run`` on a one-pair input: the fixed cost of any run."""
    data = c.write_pairs(work / "pairs-1.parquet", 1)
    walls = []
    for i in range(repeats):
        out = work / f"out-startup-{i}"
        shutil.rmtree(out, ignore_errors=True)
        job = c.write_job(work / f"startup-{i}.yaml", data, out, **compute)
        walls.append(c.run_cli(["run", str(job)])["wall_s"])
    return c.summary(walls)


def end_to_end(
    work: Path,
    name: str,
    data: Path,
    repeats: int,
    niceness: str | None = c.WORKER_NICENESS,
    **compute: Any,
) -> dict[str, Any]:
    walls, last = [], {}
    for i in range(repeats):
        out = work / f"out-{name}-{i}"
        shutil.rmtree(out, ignore_errors=True)
        job = c.write_job(work / f"{name}.yaml", data, out, **compute)
        last = c.run_cli(["run", str(job)], niceness=niceness)
        walls.append(last["wall_s"])
    success = c.read_success(out)
    return {
        **c.summary(walls),
        "out": str(out),
        "job": str(job),
        "settings": c.job_settings(job),
        "success": {k: success[k] for k in ("scored", "shards", "score_seconds", "statuses")},
        "rss_peak_mib": last["rss_peak_mib"],
        "ray_worker_niceness": niceness or "ray default (15)",
    }


def overhead(work: Path, n_pairs: int, shard_size: int, repeats: int) -> dict[str, Any]:
    """Case 1: engine called directly vs ``rank1-batch run`` end to end, same pairs.

    One torch thread on both sides: on a shared two-core box two OpenMP threads are slower
    than one whenever a neighbour holds a core (case 2 shows the 2-thread run).
    """
    threads = 1
    data = c.write_pairs(work / f"pairs-{n_pairs}.parquet", n_pairs)
    direct = direct_engine(data, shard_size, threads, max(3, repeats))
    boot = startup(work, 3, shard_size=shard_size, torch_threads=threads)
    run = end_to_end(
        work, "w1t1", data, repeats, shard_size=shard_size, workers=1, torch_threads=threads
    )
    default_nice = end_to_end(
        work,
        "w1t1-default-nice",
        data,
        1,
        niceness=None,
        shard_size=shard_size,
        workers=1,
        torch_threads=threads,
    )
    a, b, s = direct["median_s"], run["median_s"], boot["median_s"]
    return {
        "pairs": n_pairs,
        "direct_engine": direct,
        "rank1_batch_run": run,
        "startup_one_pair_run": boot,
        "ratio_b_over_a": c.ratio(b, a),
        "ratio_b_minus_startup_over_a": c.ratio(b - s, a),
        # Sum of the actor's per-shard seconds (read, judge, write, commit) over the limit.
        "ratio_actor_shard_seconds_over_a": c.ratio(run["success"]["score_seconds"], a),
        "rank1_batch_run_ray_default_niceness": {
            k: default_nice[k] for k in ("median_s", "success", "ray_worker_niceness")
        },
        "ratio_ray_default_niceness_over_a": c.ratio(default_nice["median_s"], a),
        "target": "ratio <= 1.15",
        "data": str(data),
    }


def scaling(
    work: Path, data: Path, one_worker_1t: dict[str, Any], startup_s: float, shard_size: int
) -> dict[str, Any]:
    """Case 2: 2 workers x 1 thread against 1 worker x 2 threads (same cores, the fair
    pair) and against 1 worker x 1 thread (case 1's run)."""
    two = end_to_end(work, "w2t1", data, 1, shard_size=shard_size, workers=2, torch_threads=1)
    one_2t = end_to_end(work, "w1t2", data, 1, shard_size=shard_size, workers=1, torch_threads=2)
    w12, w21, w11 = one_2t["median_s"], two["median_s"], one_worker_1t["median_s"]
    keys = ("median_s", "settings", "success")
    return {
        "one_worker_two_threads": {k: one_2t[k] for k in keys},
        "two_workers_one_thread": {k: two[k] for k in (*keys, "rss_peak_mib")},
        "one_worker_one_thread": {k: one_worker_1t[k] for k in keys},
        "startup_s": startup_s,
        "speedup_fair_1x2t_vs_2x1t": c.ratio(w12, w21),
        "speedup_fair_excl_startup": c.ratio(w12 - startup_s, w21 - startup_s),
        "speedup_1x1t_vs_2x1t": c.ratio(w11, w21),
        "speedup_1x1t_vs_2x1t_excl_startup": c.ratio(w11 - startup_s, w21 - startup_s),
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "target": "speed-up >= 1.7",
    }


def resume(
    work: Path, data: Path, uninterrupted: dict[str, Any], startup_s: float, shard_size: int
) -> dict[str, Any]:
    """Case 3: SIGKILL the process group at about half the shards, then resume."""
    out = work / "out-resume"
    shutil.rmtree(out, ignore_errors=True)
    job = c.write_job(
        work / "resume.yaml", data, out, shard_size=shard_size, workers=1, torch_threads=1
    )
    total = int(uninterrupted["success"]["shards"])
    half = math.ceil(total / 2)
    killed = c.run_cli(["run", str(job)], stop_when=lambda: c.committed(out) >= half)
    at_kill = c.committed(out)
    resumed = c.run_cli(["run", str(job)])
    success = c.read_success(out)
    w, r = uninterrupted["median_s"], resumed["wall_s"]
    left = (total - at_kill) / total
    return {
        "shards": total,
        "committed_at_kill": at_kill,
        "killed_run_wall_s": killed["wall_s"],
        "resumed_wall_s": r,
        "uninterrupted_wall_s": w,
        "startup_s": startup_s,
        "ratio_resumed_over_half": c.ratio(r, w / 2),
        "ratio_excl_startup": c.ratio(r - startup_s, (w - startup_s) / 2),
        "ratio_excl_startup_per_remaining_share": c.ratio(r - startup_s, (w - startup_s) * left),
        "scored_after_resume": success["scored"],
        "target": "ratio <= 1.1 (start-up separately)",
    }
