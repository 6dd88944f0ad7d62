"""Blame and truthful attempt records.

* A timeout bounds the judging, never a commit in progress: the attempt record and the
  commit marker always agree (a slow commit outlives ``shard_timeout`` and still succeeds; a
  hang times out, is recorded and commits nothing).
* With ``shards_in_flight: 8``, a poison pair that kills its actor quarantines its own shard
  only: co-tenants of a crash are not charged and are retried in isolation (one shard per
  actor), where the poison shard crashes alone and is charged.
* Ten actor kills at chosen moments (``tests/fault_engine.py``, the stream test double),
  never twice in one shard: nothing is quarantined under the default three attempts, every
  shard commits its rows exactly once.

The actor is driven directly (no Ray) in the first tests, through the CLI on a local Ray in
the others.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from fault_engine import FAULTS_ENV, STREAM_ENGINE, expected_score

from rank1_batch.io import commit, layout
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.outputs import results
from rank1_batch.pipeline import attempts
from rank1_batch.pipeline.actor import CommitGate, ShardWorker
from rank1_batch.pipeline.attempts import EXIT_QUARANTINED

SHARD = "shard-00000"


class SlowCommitStore(Store):
    """Test double: creating a commit marker takes ``seconds`` (a slow object store)."""

    seconds = 1.5

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        if rel.startswith(layout.COMMITS):
            time.sleep(self.seconds)
        return super().create_exclusive(rel, data)


def pairs(n: int, tag: str = "") -> pa.Table:
    return pa.table(
        {
            "query_id": ["q0"] * n,
            "doc_id": [f"d{i}" for i in range(n)],
            "query": ["query 0"] * n,
            "passage": [f"passage {i} {tag if i == 1 else ''}" for i in range(n)],
            "title": pa.nulls(n, pa.string()),
            "instruction": pa.nulls(n, pa.string()),
        }
    )


def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_class: type[Store], tag: str):
    """A scoring actor on the stream test double (the ``fault_engines`` fixture registers it)."""
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"state_dir": str(tmp_path)}))
    out = str(tmp_path / "out")
    spec = spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": out},
            "model": {"name": "toy", "engine": STREAM_ENGINE, "device": "cpu"},
            "compute": {"shard_timeout": 0.5},
        }
    )
    store = store_class(out)
    store.write_atomic(layout.pairs_path(SHARD), parquet_bytes(pairs(4, tag)))
    return ShardWorker(spec, store, threads=1, run="run-1"), store


@pytest.mark.usefixtures("fault_engines")
def test_a_commit_slower_than_the_timeout_completes_and_is_recorded_as_success(
    tmp_path, monkeypatch
):
    """Judging takes milliseconds, the marker's create 1.5 s, ``shard_timeout`` 0.5 s. Before,
    the timeout cancelled the await, not the commit thread: the attempt was recorded as failed
    and its marker landed after."""
    shard_worker, store = worker(tmp_path, monkeypatch, SlowCommitStore, "")
    row = asyncio.run(shard_worker({"shard": [SHARD]}))
    time.sleep(SlowCommitStore.seconds + 0.5)  # a commit thread left running would land now
    (record,) = attempts.records(store, SHARD)
    marker = commit.read_marker(store, SHARD)
    assert marker.attempt == record["attempt"]  # this attempt committed ...
    assert "error" not in record and not attempts.failed(store, SHARD)  # ... and says so
    assert row == {"shard": [SHARD], "pairs": [4], "error": [""], "fatal": [""]}


@pytest.mark.usefixtures("fault_engines")
def test_a_cancel_during_the_commit_waits_for_it(tmp_path, monkeypatch):
    """Cancelled from outside (here ``wait_for``) while its commit thread runs, the shard's
    call returns only once the commit has ended: nothing of the attempt lands later."""
    shard_worker, store = worker(tmp_path, monkeypatch, SlowCommitStore, "")
    streamer = shard_worker.streamer
    assert streamer is not None

    async def cancelled_late() -> float:
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(streamer.score_shard(SHARD, "a1"), 0.5)
        return time.perf_counter() - start

    assert asyncio.run(cancelled_late()) >= SlowCommitStore.seconds  # waited for the commit
    assert commit.read_marker(store, SHARD).attempt == "a1"
    assert not attempts.fail(store, SHARD, "a1", "cancelled")  # committed: never a failure


@pytest.mark.usefixtures("fault_engines")
def test_a_hang_times_out_commits_nothing_and_is_charged(tmp_path, monkeypatch):
    shard_worker, store = worker(tmp_path, monkeypatch, Store, "POISON-HANG")
    row = asyncio.run(shard_worker({"shard": [SHARD]}))
    assert row["error"] == ["timed out after 0.5s"]
    assert not store.exists(layout.marker_path(SHARD))
    (record,) = attempts.failed(store, SHARD)
    assert record["cause"] == attempts.OWN_ERROR and record["charged"] is True


@pytest.mark.usefixtures("fault_engines")
def test_an_actor_told_to_stop_records_its_attempts_as_interrupted(tmp_path, monkeypatch):
    """The exit hook (Ray's SIGTERM handler exits through ``sys.exit``): not charged."""
    shard_worker, store = worker(tmp_path, monkeypatch, Store, "")
    shard_worker._start(SHARD, "a1")
    shard_worker._interrupted()
    (record,) = attempts.records(store, SHARD)
    assert record["cause"] == attempts.INTERRUPTED and record["charged"] is False
    assert not attempts.failed(store, SHARD)


def test_causes_of_death() -> None:
    from collections import Counter

    from rank1_batch.pipeline.blame import cause_of_death

    dead = Counter({"h:1:aaaa": 3, "h:2:aaaa": 1, "h:3:bbbb": 2})
    alive = {"aaaa0123456789", "cccc0123456789"}
    assert cause_of_death({"worker": "h:1:aaaa"}, dead, alive) == attempts.CRASH_SHARED
    assert cause_of_death({"worker": "h:2:aaaa"}, dead, alive) == attempts.CRASH_ALONE
    assert cause_of_death({"worker": "h:3:bbbb"}, dead, alive) == attempts.NODE_LOST
    assert cause_of_death({"worker": "h:2:aaaa"}, dead, None) == attempts.CRASH_ALONE
    assert {attempts.OWN_ERROR, attempts.CRASH_ALONE} == attempts.CHARGED


def test_the_commit_gate_decides_once() -> None:
    """The batch path: the timeout and the commit race for one gate; the loser backs off."""
    late = CommitGate()
    assert late.begin() and not late.close()  # committing: the timeout waits for it
    early = CommitGate()
    assert early.close() and not early.begin()  # abandoned: the commit never begins


# -- through the CLI on a local Ray ----------------------------------------------------------

QUERIES, DOCS = 20, 4


def blame_job(tmp: Path, marks: dict[int, str] | None = None) -> tuple[Path, Path]:
    """20 queries of 4 pairs, sorted by query: 20 shards of one query each."""
    rows = []
    for q in range(QUERIES):
        for d in range(DOCS):
            mark = (marks or {}).get(q, "") if d == 2 else ""
            text = f"passage {q}-{d} about topic {q % 7} {mark}".strip()
            rows.append(
                {"query_id": f"q{q:03d}", "query": f"query {q}", "doc_id": f"d{d}", "passage": text}
            )
    pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
    job = {
        "name": "blame",
        "input": {"path": str(tmp / "pairs.parquet")},
        "output": {"path": str(tmp / "out"), "shard_size": DOCS},
        "model": {"name": "toy", "engine": STREAM_ENGINE, "device": "cpu", "max_model_len": 512},
        "reasoning": {"max_tokens": 8, "min_reserve": 8},
        "compute": {
            "workers": 2,
            "num_cpus": 2,
            "cpus_per_worker": 0.5,
            "torch_threads": 1,
            "shards_in_flight": 8,
            "retry_backoff": 0.2,
        },
    }
    (tmp / "job.yaml").write_text(json.dumps(job))
    return tmp / "job.yaml", tmp / "out"


def env_for(state: Path, plugins: dict[str, str], **faults: object) -> dict[str, str]:
    import os

    state.mkdir(exist_ok=True)
    return {
        **os.environ,
        **plugins,
        FAULTS_ENV: json.dumps({"state_dir": str(state), **faults}),
    }


def committed_rows_are_right(out: Path) -> set[str]:
    """The committed shards, each checked: the input's pairs exactly once, each scored as the
    engine scores its passage."""
    store = Store(str(out))
    passages = {
        (r["query_id"], r["doc_id"]): r["passage"]
        for r in pq.read_table(out.parent / "pairs.parquet").to_pylist()
    }
    seen: list[tuple[str, str]] = []
    shards = commit.committed_shards(store)
    for shard in shards:
        table = results.shard_table(store, shard, "scores").to_pylist()
        for r in table:
            key = (r["query_id"], r["doc_id"])
            seen.append(key)
            assert r["status"] == "complete" and r["score"] == expected_score(passages[key])
        pairs_of = store.read_parquet(layout.pairs_path(shard))
        assert len(table) == pairs_of.num_rows == DOCS
    assert len(seen) == len(set(seen)), "a pair was committed twice"
    return shards


def causes(out: Path, shard: str) -> list[str]:
    return [str(r.get("cause")) for r in attempts.records(Store(str(out)), shard)]


def events(state: Path, kind: str) -> int:
    log = state / "events.log"
    return (
        sum(line.endswith(f" {kind}") for line in log.read_text().splitlines())
        if log.exists()
        else 0
    )


@pytest.mark.ray
def test_one_poison_shard_among_twenty_only_it_is_quarantined(
    tmp_path: Path, fault_engines: dict[str, str]
) -> None:
    """Before, each crash charged every shard in flight on the actor: the poison shard's
    co-tenants, rescheduled with it round after round, were quarantined with it."""
    job, out = blame_job(tmp_path, {7: "POISON-CRASH"})
    state = tmp_path / "state"
    start = time.time()
    done = run_cli(
        "run",
        str(job),
        env=env_for(state, fault_engines, pair_seconds=0.05),
        check=False,
        timeout=400,
    )
    assert done.returncode == EXIT_QUARANTINED, done.stderr[-3000:]
    line = [x for x in done.stderr.splitlines() if x.startswith("rank1-batch: error:")]
    assert len(line) == 1 and "1 shard(s) quarantined" in line[0], done.stderr[-3000:]
    store = Store(str(out))
    manifest = store.read_json(layout.MANIFEST)
    assert len(manifest["shards"]) == QUERIES
    committed = committed_rows_are_right(out)
    assert len(committed) == QUERIES - 1
    (poison,) = {s["id"] for s in manifest["shards"]} - committed
    assert poison in line[0] and "3 attempts" in line[0]
    assert causes(out, poison).count(attempts.CRASH_ALONE) == 3
    for shard in committed:  # co-tenants died with it, uncharged
        assert not attempts.failed(store, shard), (shard, causes(out, shard))
    print(f"poison: {events(state, 'crash')} crashes, {time.time() - start:.0f}s")


@pytest.mark.ray
def test_ten_kills_from_outside_quarantine_nothing(
    tmp_path: Path, fault_engines: dict[str, str]
) -> None:
    """Kills at chosen moments (each after 3 pairs judged since the last, never twice in a
    shard), default three attempts. Before, each kill charged every shard in flight on the
    actor, and healthy shards were quarantined."""
    job, out = blame_job(tmp_path)
    state = tmp_path / "state"
    start = time.time()
    env = env_for(state, fault_engines, pair_seconds=0.05, kills=10, kill_every=3)
    done = run_cli("run", str(job), env=env, check=False, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert events(state, "kill") == 10
    assert len(committed_rows_are_right(out)) == QUERIES
    store = Store(str(out))
    assert store.exists(layout.SUCCESS)
    charged = [s for s in commit.committed_shards(store) if attempts.failed(store, s)]
    assert all(len(attempts.failed(store, s)) == 1 for s in charged)  # a victim alone, once
    print(f"kills: 10, shards charged once {len(charged)}, {time.time() - start:.0f}s")
