"""Kill-anywhere (slow suite): a seeded loop SIGKILLs the demo job in prepare, score and
finalize, on local disk and on S3, resumes each time, and checks the final output equals an
uninterrupted run's: same (query_id, doc_id) set, no duplicates, same scores. Also kills a
Ray worker (not the driver) mid-shard: the job finishes on its own.

Run with ``pytest -m slow tests/test_kill_anywhere.py`` (several minutes).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import CLI, DEMO, ROOT, run_cli

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.results import shard_table

pytestmark = [pytest.mark.slow, pytest.mark.ray]

KILLS = 10
PHASES = ("prepare", "score", "finalize")


def phase_of(store: Store, total: int) -> str:
    if store.exists(layout.SUCCESS):
        return "done"
    if not store.exists(layout.MANIFEST):
        return "prepare"
    return "score" if len(commit.committed_shards(store)) < total else "finalize"


def reference_scores(reference: Path) -> dict[tuple[str, str], float]:
    shards = sorted(commit.committed_shards(Store(str(reference))))
    table = pa.concat_tables(shard_table(Store(str(reference)), s, "scores") for s in shards)
    return _score_map(table)


def _score_map(table: pa.Table) -> dict[tuple[str, str], float]:
    cols = (table.column(c).to_pylist() for c in ("query_id", "doc_id", "score"))
    return {(q, d): s for q, d, s in zip(*cols, strict=True)}


def check_final(store: Store, reference: Path) -> None:
    shards = sorted(commit.committed_shards(store))
    table = pa.concat_tables(shard_table(store, s, "scores") for s in shards)
    keys = list(zip(*(table.column(c).to_pylist() for c in ("query_id", "doc_id")), strict=True))
    assert len(keys) == len(set(keys)), "duplicate pairs"
    assert _score_map(table) == reference_scores(reference)
    success = store.read_json(layout.SUCCESS)
    assert success["scored"] + success["rejected"] + success["duplicates"] == success["input_rows"]


def kill_loop(args: list[str], env: dict[str, str], store: Store, total: int, seed: int) -> dict:
    """SIGKILL the run ``KILLS`` times at seeded moments in seeded phases; return what was hit."""
    rng = random.Random(seed)
    hits: dict[str, int] = {}
    env = {**env, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}
    kills = 0
    while kills < KILLS:
        target = PHASES[kills % 3] if kills < 3 else rng.choice(PHASES)
        proc = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            at_start = phase_of(store, total)
            if PHASES.index(target) < PHASES.index(at_start):
                target = rng.choice(PHASES[PHASES.index(at_start) :])  # that phase is over
            committed = len(commit.committed_shards(store))
            goal = rng.randint(committed, total - 1) if target == "score" else 0
            if target == "prepare" or (target == "finalize" and at_start == "finalize"):
                delay = rng.uniform(0, 10.0)  # somewhere between start-up and the phase's end
            else:
                delay = rng.uniform(0, 0.5)
            start = time.time()
            while proc.poll() is None and time.time() - start < 300:
                phase = phase_of(store, total)
                if target in ("prepare", "finalize") and at_start == target:
                    if time.time() - start > delay or phase != target:
                        break
                elif target == "finalize" and phase in ("finalize", "done"):
                    break
                elif (
                    target == "score"
                    and phase in ("score", "finalize")
                    and len(commit.committed_shards(store)) >= goal
                ):
                    time.sleep(delay)
                    break
                time.sleep(0.01)
            phase = phase_of(store, total)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if phase == "done":  # finished before the kill landed: start a fresh output
            hits["missed"] = hits.get("missed", 0) + 1
            return hits
        kills += 1
        hits[phase] = hits.get(phase, 0) + 1
    run_cli(*args, env=env)
    return hits


def test_kill_anywhere_local(tmp_path, demo_reference):
    total = len(json.loads((demo_reference / layout.MANIFEST).read_text())["shards"])
    hits: dict[str, int] = {}
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        store = Store(str(out))
        args = ["run", str(DEMO), "--output", str(out)]
        got = kill_loop(args, dict(os.environ), store, total, seed)
        for k, v in got.items():
            hits[k] = hits.get(k, 0) + v
        if not store.exists(layout.SUCCESS):
            run_cli("run", str(DEMO), "--output", str(out))
        check_final(store, demo_reference)
        if sum(v for k, v in hits.items() if k != "missed") >= KILLS:
            break
    print("local kills by phase:", hits)
    assert sum(v for k, v in hits.items() if k != "missed") >= KILLS
    assert hits.get("prepare") and hits.get("score")


@pytest.mark.s3
def test_kill_anywhere_s3(s3, demo_reference):
    total = len(json.loads((demo_reference / layout.MANIFEST).read_text())["shards"])
    s3.client().upload_file(
        str(ROOT / "jobs/data/demo-pairs.parquet"), s3.bucket, "in/demo-pairs.parquet"
    )
    env = {**s3.env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="r1k-", dir="/tmp")}
    hits: dict[str, int] = {}
    for seed in range(6):
        uri = f"s3://{s3.bucket}/out{seed}"
        args, store = s3.demo_run(uri)
        got = kill_loop(args, env, store, total, 100 + seed)
        for k, v in got.items():
            hits[k] = hits.get(k, 0) + v
        if not store.exists(layout.SUCCESS):
            run_cli(*args, env=env)
        check_final(store, demo_reference)
        if sum(v for k, v in hits.items() if k != "missed") >= KILLS:
            break
    print("s3 kills by phase:", hits)
    assert sum(v for k, v in hits.items() if k != "missed") >= KILLS
    assert hits.get("prepare") and hits.get("score")


def descendants(root: int) -> dict[int, str]:
    """Command lines of every process below ``root`` (children, grandchildren, ...)."""
    ps = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True)
    procs = {}
    for line in ps.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            procs[int(parts[0])] = (int(parts[1]), parts[2])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cmd) in procs.items():
            if ppid == parent and pid not in found:
                found[pid] = cmd
                frontier.append(pid)
    return found


def test_killing_a_ray_worker_mid_shard_does_not_stop_the_job(tmp_path, demo_reference):
    out = tmp_path / "out"
    store = Store(str(out))
    ray_tmp = tempfile.mkdtemp(prefix="r1w-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_DISABLE_USAGE_STATS": "1"}
    proc = subprocess.Popen(
        [*CLI, "run", str(DEMO), "--output", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and proc.poll() is None:
            if store.exists(layout.MANIFEST) and len(commit.committed_shards(store)) >= 1:
                # Only our run's descendants: other Ray jobs may run on this machine.
                for pid, cmd in descendants(proc.pid).items():
                    if "ShardWorker" in cmd or "MapWorker" in cmd:
                        os.kill(pid, signal.SIGKILL)
                        killed = cmd
                        break
            time.sleep(0.1)
        assert killed, "found no ShardWorker actor process to kill"
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    check_final(store, demo_reference)
