"""Chaos: whole-attempt commits, bounded attempts, and a job under injected faults and kills.

The fault-injecting engine is a test double (``tests/fault_engine.py``), a plugin engine only
where the ``fault_engines`` fixture registers it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLI, QUIET, ROOT, run_cli
from fault_engine import BATCH_ENGINE, FAULTS_ENV, FaultInjectingTestEngine

from rank1_batch.core.rows import requests_for
from rank1_batch.engines.base import EngineOptions
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.prepare import shard_of
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.outputs import results
from rank1_batch.pipeline.attempts import EXIT_QUARANTINED, SHARD_FAILED
from rank1_batch.pipeline.finalize import finalize
from rank1_batch.pipeline.judged import JudgedRows
from rank1_batch.pipeline.score import (
    SCORES_SCHEMA,
    ShardWork,
    commit_shard,
    traces_bytes,
    traces_skeleton,
)

SHARD = "shard-00000"


def small_spec(out: str, **compute: object):  # type: ignore[no-untyped-def]
    return spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": out},
            "model": {"name": "toy", "engine": "transformers", "device": "cpu"},
            "compute": compute,
        }
    )


def pairs_table(n: int, tag: str = "") -> pa.Table:
    return pa.table(
        {
            "query_id": [f"q{i // 5}" for i in range(n)],
            "doc_id": [f"d{i}" for i in range(n)],
            "query": [f"query {i // 5}" for i in range(n)],
            "passage": [f"passage {i} {tag}" for i in range(n)],
            "title": pa.array([None] * n, pa.string()),
            "instruction": pa.array([None] * n, pa.string()),
            "input_rank": pa.array(range(n), pa.int32()),
        }
    )


def whole(pairs: pa.Table) -> ShardWork:
    """Every pair to judge, none copied from earlier outputs."""
    return ShardWork(pairs, pairs, SCORES_SCHEMA.empty_table())


class DiesAfterScores(Store):
    """Test double: a Store whose process 'dies' (raises) on its first traces write, after
    the attempt has written its scores: what a SIGKILL between the two writes leaves."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.died = False

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        if rel.startswith("traces/") and not self.died:
            self.died = True
            raise KeyboardInterrupt("killed between the scores and the traces write")
        return super().create_exclusive(rel, data)


def test_a_shard_never_commits_one_attempts_scores_with_anothers_traces(tmp_path):
    """The mixed-attempt reproduction (issue 11, item 1): attempt 1 writes its scores and dies,
    attempt 2 commits. Before whole-attempt commits attempt 2 adopted attempt 1's scores and
    committed them beside its own traces."""
    out = str(tmp_path / "out")
    spec = small_spec(out)
    pairs = pairs_table(10)
    Store(out).write_atomic(layout.pairs_path(SHARD), parquet_bytes(pairs))
    engine = FaultInjectingTestEngine("unused", EngineOptions(max_model_len=512, max_tokens=8))
    first = engine.judge(requests_for(pairs, spec.reasoning))
    with pytest.raises(KeyboardInterrupt):
        commit_shard(SHARD, whole(pairs), first, engine, DiesAfterScores(out), spec, 1.0)
    second = engine.judge(requests_for(pairs, spec.reasoning))
    assert {j.reasoning_tokens for j in first} != {j.reasoning_tokens for j in second}
    marker = commit_shard(SHARD, whole(pairs), second, engine, Store(out), spec, 1.0)

    store = Store(out)
    scores = results.shard_table(store, SHARD, "scores")
    traces = results.shard_table(store, SHARD, "traces")
    assert scores.column("reasoning_tokens").to_pylist() == [j.reasoning_tokens for j in second]
    assert traces.column("reasoning").to_pylist() == [j.reasoning for j in second]
    assert marker.attempt and marker.scores_file.endswith(f".{marker.attempt}.parquet")

    # finalize removes the dead attempt's scores file (no marker names it)
    manifest = {"shards": [{"id": SHARD}], "rejected": 0, "duplicates": 0, "input_rows": 10}
    success = finalize(store, manifest, 1.0)
    assert success["removed_losing_files"] == 1
    assert store.list("scores") == [marker.scores_file.split("/")[1]]


def test_readers_verify_the_checksum_the_marker_names(tmp_path):
    out = str(tmp_path / "out")
    spec = small_spec(out)
    pairs = pairs_table(5)
    store = Store(out)
    claim_output(store, job_record(spec, [{"path": "in.parquet", "rows": 5}]))
    store.write_atomic(layout.pairs_path(SHARD), parquet_bytes(pairs))
    engine = FaultInjectingTestEngine("unused", EngineOptions(max_model_len=512, max_tokens=8))
    marker = commit_shard(
        SHARD,
        whole(pairs),
        engine.judge(requests_for(pairs, spec.reasoning)),
        engine,
        store,
        spec,
        1.0,
    )
    other = engine.judge(requests_for(pairs, spec.reasoning))
    with JudgedRows.of(other, len(other)) as rows:  # another attempt's traces, same body
        store.write_atomic(marker.traces_file, traces_bytes(traces_skeleton(pairs, rows), rows))
    with pytest.raises(commit.CommitError, match="does not match the checksum"):
        results.shard_table(store, SHARD, "traces")
    assert results.read_results(store).table.num_rows == 5  # the scores file is intact


# -- the job under faults (slow: real Ray, real CLI) -----------------------------------------


def chaos_job(tmp: Path, queries: int, docs: int, **compute: object) -> tuple[Path, Path]:
    """A pairs input with one crashing, one hanging and two flaky pairs (each in a shard of
    its own: shards are a pure function of the query ids), and its job file."""
    # Input sorted by query is cut in input order (grouped prepare, two queries per shard),
    # otherwise by a hash of the query id: spread the faults so each lands in a shard of its
    # own either way.
    n_shards = math.ceil(queries * docs / (docs * 2))
    picks: list[int] = []
    for q in range(0, queries, 2):
        hashed = {shard_of(f"q{p:03d}", n_shards) for p in picks}
        if shard_of(f"q{q:03d}", n_shards) not in hashed:
            picks.append(q)
    assert len(picks) >= 4, "too few queries to spread the faults"
    faults = {(picks[0], 3): "POISON-CRASH", (picks[1], 1): "POISON-HANG"}
    faults.update({(picks[2], 2): "FLAKY", (picks[3], 4): "FLAKY"})
    rows = []
    for q in range(queries):
        for d in range(docs):
            text = f"passage {q}-{d} about topic {q % 7} {faults.get((q, d), '')}"
            rows.append(
                {"query_id": f"q{q:03d}", "query": f"query {q}", "doc_id": f"d{d}", "passage": text}
            )
    pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
    job = {
        "name": "chaos",
        "input": {"path": str(tmp / "pairs.parquet")},
        "output": {"path": str(tmp / "out"), "shard_size": docs * 2},
        "model": {"name": "toy", "engine": BATCH_ENGINE, "device": "cpu", "max_model_len": 512},
        "reasoning": {"max_tokens": 8, "min_reserve": 8},
        "compute": {
            "workers": 2,
            "num_cpus": 2,
            "cpus_per_worker": 0.5,
            "torch_threads": 1,
            "shard_timeout": 4,
            "retry_backoff": 0.2,
            **compute,
        },
    }
    (tmp / "job.yaml").write_text(json.dumps(job))
    return tmp / "job.yaml", tmp / "out"


def fault_env(state: Path, plugins: dict[str, str], **faults: object) -> dict[str, str]:
    state.mkdir(exist_ok=True)
    return {**os.environ, **plugins, FAULTS_ENV: json.dumps({"state_dir": str(state), **faults})}


def events(state: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    log = state / "events.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        counts[line.split()[-1]] = counts.get(line.split()[-1], 0) + 1
    return counts


def shard_keys(out: Path, shard: str) -> set[tuple[str, str]]:
    table = results.shard_table(Store(str(out)), shard, "scores")
    return set(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))


def check_output(out: Path, input_rows: int) -> dict[str, object]:
    """Every input pair exactly once; every shard's scores and traces from one attempt."""
    store = Store(str(out))
    res = results.read_results(store, require_complete=True)
    keys = list(
        zip(res.table["query_id"].to_pylist(), res.table["doc_id"].to_pylist(), strict=True)
    )
    success = store.read_json(layout.SUCCESS)
    mixed, quarantined = [], []
    for shard in res.shards:
        scores = results.shard_table(store, shard, "scores")
        traces = results.shard_table(store, shard, "traces")
        if set(scores["error"].to_pylist()) == {SHARD_FAILED}:
            quarantined.append(shard)
            continue
        from_scores = set(scores["reasoning_tokens"].to_pylist())
        from_traces = {int(t.split()[-1]) for t in traces["reasoning"].to_pylist()}
        if len(from_scores) != 1 or from_scores != from_traces:
            mixed.append(shard)
    return {
        "pairs_lost": input_rows - len(set(keys)),
        "pairs_duplicated": len(keys) - len(set(keys)),
        "accounted": success["scored"] + success["rejected"] + success["duplicates"] == input_rows,
        "shards_mixing_attempts": len(mixed),
        "quarantined": sorted(quarantined),
        "shards": len(res.shards),
        "leftover_data_files": len(store.list("scores"))
        + len(store.list("traces"))
        - 2 * len(res.shards),
    }


@pytest.mark.slow
@pytest.mark.ray
def test_a_poison_shard_is_quarantined_not_retried_forever(tmp_path, fault_engines):
    """Default: the job ends (exit 3) with one line naming each quarantined shard, its attempts
    and its last error; the crash, the hang (shard_timeout) and the failed start are bounded,
    the flaky pairs' shards commit. Then error_rows completes the job from the records."""
    job, out = chaos_job(tmp_path, queries=12, docs=5)
    env = fault_env(tmp_path / "state", fault_engines, fail_start_once=True)
    start = time.time()
    first = run_cli("run", str(job), env=env, check=False, timeout=400)
    assert first.returncode == EXIT_QUARANTINED, first.stderr[-3000:]
    line = [x for x in first.stderr.splitlines() if x.startswith("rank1-batch: error:")]
    assert len(line) == 1 and "2 shard(s) quarantined" in line[0], first.stderr[-3000:]
    assert "3 attempts; last error: timed out after 4s" in line[0]
    assert "3 attempts; last error: the attempt ended without a result" in line[0]
    seen = events(tmp_path / "state")
    assert seen["crash"] == 3 and seen["hang"] == 3 and seen["start-failure"] == 1
    assert seen["transient"] == 2
    assert not (out / layout.SUCCESS).exists()
    second = run_cli(
        "run", str(job), "--set", "compute.on_shard_failure=error_rows", env=env, timeout=400
    )
    assert second.returncode == 0
    report = check_output(out, 60)
    assert events(tmp_path / "state")["crash"] == 3  # quarantined from the records: not retried
    assert (
        report["pairs_lost"] == report["pairs_duplicated"] == report["shards_mixing_attempts"] == 0
    )
    assert len(report["quarantined"]) == 2 and report["accounted"]
    print("quarantine test:", report, seen, f"{time.time() - start:.0f}s")


KILLS = 20
KILL_SEED = 20261201
MAX_DRIVER_KILLS = 4


def our_actors(state: Path) -> list[psutil.Process]:
    """Scoring actor processes of this test's job (found by the faults setting they inherit)."""
    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ShardWorker" in " ".join(p.info["cmdline"] or ()) and str(state) in p.environ().get(
                FAULTS_ENV, ""
            ):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return mine


@pytest.mark.slow
@pytest.mark.ray
def test_chaos_kills_and_faults_lose_nothing(tmp_path, fault_engines):
    """At least 20 SIGKILLs of scoring actors and of the driver at seeded random moments, on
    top of a crashing, a hanging and two flaky pairs and a failed start, in error_rows mode:
    each job ends, every pair is accounted exactly once, no shard mixes attempts, and the
    poison shards are quarantined as shard_failed rows."""
    rng = random.Random(KILL_SEED)
    kills = {"actor": 0, "driver": 0}
    reports, start = [], time.time()
    while sum(kills.values()) < KILLS:
        base = tmp_path / f"job{len(reports)}"
        base.mkdir()
        job, out = chaos_job(
            base, queries=40, docs=5, max_shard_attempts=3, on_shard_failure="error_rows"
        )
        state = base / "state"
        env = {**fault_env(state, fault_engines, fail_start_once=True, pair_seconds=0.1), **QUIET}
        runs = 0
        while True:
            runs += 1
            assert runs <= 30, "the job does not end"
            log = open(base / f"run{runs}.log", "w")  # noqa: SIM115
            proc = subprocess.Popen(
                [*CLI, "run", str(job)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            driver_killed = False
            while sum(kills.values()) < KILLS and proc.poll() is None:
                time.sleep(rng.uniform(0.5, 3.0))
                if proc.poll() is not None:
                    break
                actors = our_actors(state)
                if not actors:  # starting up, between rounds or finalizing: wait
                    continue
                if rng.random() < 0.2 and kills["driver"] < MAX_DRIVER_KILLS:
                    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray
                    kills["driver"] += 1
                    driver_killed = True
                    break
                with contextlib.suppress(psutil.NoSuchProcess):
                    rng.choice(actors).send_signal(signal.SIGKILL)
                    kills["actor"] += 1
            rc = proc.wait(timeout=400)
            log.close()
            if driver_killed:
                continue
            assert rc == 0, (base / f"run{runs}.log").read_text()[-4000:]
            break
        report = check_output(out, 200)
        report.update(runs=runs, faults=events(state))
        reports.append(report)
        assert report["pairs_lost"] == report["pairs_duplicated"] == 0, report
        assert report["shards_mixing_attempts"] == 0 and report["accounted"], report
        assert report["leftover_data_files"] == 0, report
        crash = next(
            (r["query_id"], r["doc_id"])
            for r in pq.read_table(base / "pairs.parquet").to_pylist()
            if "POISON-CRASH" in r["passage"]
        )
        holding = [s for s in report["quarantined"] if crash in shard_keys(out, str(s))]
        assert holding, report  # the crashing pair's shard is among the quarantined
    wall = time.time() - start
    print(f"chaos: kills {kills}, wall {wall:.0f}s, jobs {reports}")
    assert wall < 900  # 198 s measured with the load average at 10-13 on two cores
