"""``reuse/`` is built once, by the holder, and published with a marker; a joiner (--join)
waits for the marker and never builds, deletes or rewrites a reuse file."""

from __future__ import annotations

import threading
import time

import pytest

from rank1_batch.io import lease
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.pipeline import reuse, reuse_ready

JOB = {
    "input": {"path": "in.parquet"},
    "output": {"path": "out"},
    "model": {"name": "toy", "engine": "transformers"},
    "reuse": ["/earlier/out"],
}
SHARDS = ["shard-00000", "shard-00001"]


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "out"))


def run_as(store: Store, role: str) -> lease.Lease:
    held = lease.Lease(store)  # not acquired: only its role and view of others are used
    held.me.role = role
    return held


def fake_build(calls: list[str]):
    def build(spec, store, pending):
        calls.append(spec.reuse[0])
        for shard in pending:
            store.write_atomic(reuse.reuse_path(shard), b"rows of " + shard.encode())
        return {pending[0]: 3}

    return build


def file_ids(store: Store) -> dict[str, tuple[int, int, bytes]]:
    root = store.fs._strip_protocol(store.path(reuse.REUSE))
    from pathlib import Path

    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(Path(root).iterdir())
    }


def test_holder_builds_once_then_publishes_the_marker_last(store, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(reuse_ready, "build_reuse", fake_build(calls))
    spec = spec_from_mapping(JOB)
    built = reuse_ready.ensure_built(spec, store, SHARDS, run_as(store, "holder"))
    assert calls == ["/earlier/out"]
    assert built["shards"] == SHARDS and built["sources"] == ["/earlier/out"]
    assert store.read_json(reuse_ready.BUILT) == built
    # A resume of the same job keeps the build.
    reuse_ready.ensure_built(spec, store, SHARDS[1:], run_as(store, "holder"))
    assert calls == ["/earlier/out"]


def test_a_joiner_reads_the_build_and_never_touches_reuse_files(store, monkeypatch):
    monkeypatch.setattr(reuse_ready, "build_reuse", fake_build([]))
    spec = spec_from_mapping(JOB)
    built = reuse_ready.ensure_built(spec, store, SHARDS, run_as(store, "holder"))
    before = file_ids(store)

    def forbidden(*args, **kwargs):
        raise AssertionError("a joiner built or cleared reuse/")

    monkeypatch.setattr(reuse_ready, "build_reuse", forbidden)
    monkeypatch.setattr(reuse_ready, "_clear", forbidden)
    changed = spec_from_mapping({**JOB, "reuse": ["/another/out"]})  # even with other sources
    for joiner_spec in (spec, changed):
        got = reuse_ready.ensure_built(joiner_spec, store, SHARDS[::-1], run_as(store, "joiner"))
        assert got == built
    assert file_ids(store) == before  # same inodes, mtimes and bytes: nothing rewritten


def test_a_joiner_that_starts_before_the_marker_waits_then_reads(store):
    holder = lease.Run.new()  # this process: alive
    store.write_json(lease.LEASE, holder.to_dict())

    def build_later():
        time.sleep(0.5)
        store.write_atomic(reuse.reuse_path(SHARDS[0]), b"rows")
        store.create_json(reuse_ready.BUILT, {"sources": ["/earlier/out"], "shards": SHARDS})

    thread = threading.Thread(target=build_later)
    start = time.monotonic()
    thread.start()
    got = reuse_ready.ensure_built(
        spec_from_mapping(JOB), store, SHARDS, run_as(store, "joiner"), poll_s=0.05
    )
    thread.join()
    assert time.monotonic() - start >= 0.5
    assert got["shards"] == SHARDS
    assert [p for p in store.list(reuse.REUSE)] == ["_built.json", "shard-00000.parquet"]


def test_a_joiner_without_a_live_holder_or_past_its_wait_says_so_in_one_line(store):
    with pytest.raises(lease.OutputBusy) as err:
        reuse_ready.wait_built(store, lambda: None, wait_s=60, poll_s=0.01)
    msg = str(err.value)
    assert "\n" not in msg and "reuse/_built.json is missing" in msg
    assert "run without --join to build it" in msg
    holder = lease.Run.new()
    start = time.monotonic()
    with pytest.raises(lease.OutputBusy, match=r"waited 0\.2 s for .* reuse/_built\.json"):
        reuse_ready.wait_built(store, lambda: holder, wait_s=0.2, poll_s=0.05)
    assert time.monotonic() - start < 5
    assert not store.exists(reuse.REUSE)  # a waiting joiner writes nothing


def test_holder_rebuilds_for_new_sources_only_when_no_joiner_reads(store, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(reuse_ready, "build_reuse", fake_build(calls))
    reuse_ready.ensure_built(spec_from_mapping(JOB), store, SHARDS, run_as(store, "holder"))
    changed = spec_from_mapping({**JOB, "reuse": ["/another/out"]})
    joiner = lease.Run.new("joiner")
    store.write_json(lease.run_path(joiner.run_id), joiner.to_dict())
    kept = reuse_ready.ensure_built(changed, store, SHARDS, run_as(store, "holder"))
    assert kept["sources"] == ["/earlier/out"] and calls == ["/earlier/out"]
    store.delete(lease.run_path(joiner.run_id))  # the joiner is gone
    rebuilt = reuse_ready.ensure_built(changed, store, SHARDS, run_as(store, "holder"))
    assert rebuilt["sources"] == ["/another/out"] and calls == ["/earlier/out", "/another/out"]


def test_the_build_is_sized_by_the_cluster_and_the_data_not_a_fixed_width():
    """Two CPUs and a small job: a few tasks and partitions (Ray Data's cost per task and per
    partition was most of a small build); a large job: more partitions, so none holds more
    than its share of rows; never more than there are groups to fill them."""
    assert reuse_ready._blocks(100, cpus=2) == 4
    assert reuse_ready._blocks(50_000, cpus=2) == 100  # 500 shards a block
    assert reuse_ready._blocks(3, cpus=2) == 3
    assert reuse_ready._parts(1_000_000, 2_000_000, cpus=2, most=64) == 2
    assert reuse_ready._parts(100_000_000, 2_000_000, cpus=2, most=64) == 50
    assert reuse_ready._parts(100_000_000, 2_000_000, cpus=256, most=64) == 50
    assert reuse_ready._parts(1_000_000, 2_000_000, cpus=256, most=64) == 16
    assert reuse_ready._parts(10**9, 200_000, cpus=2, most=7) == 7
