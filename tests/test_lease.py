"""Two runs on one output. A heartbeat lease names the run that holds the folder; a second
run is refused (naming it), joins, or takes over a dead one's lease. Also the status ETA from
the current run only, and the total vs last-run wall time. Local disk and the loopback S3
server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from commit_checks import synthetic_marker

from rank1_batch.core.stats import ShardStats
from rank1_batch.io import layout, lease
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.outputs.status import format_status, read_status


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return Store(str(tmp_path / "out"))
    s3 = request.getfixturevalue("s3")
    return Store(f"s3://{s3.bucket}/out", StorageSpec(endpoint_url=s3.endpoint))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(store: Store, **over: object) -> lease.Run:
    rec = lease.Run.new()
    for k, v in over.items():
        setattr(rec, k, v)
    store.write_json(lease.LEASE, rec.to_dict())
    return rec


def test_a_second_run_is_refused_naming_the_holder_until_it_releases(store):
    first = lease.Lease(store)
    first.acquire()
    try:
        with pytest.raises(lease.OutputBusy) as busy:
            lease.Lease(store).acquire()
        text = str(busy.value)
        assert f"{socket.gethostname()}:{first.me.pid}" in text
        assert "--join" in text and "--take-over" in text and "rank1-batch status" in text
    finally:
        first.release()
    assert not store.exists(lease.LEASE)
    second = lease.Lease(store)
    second.acquire()
    second.release()
    assert {r.run_id for r in lease.runs(store)} == {first.me.run_id, second.me.run_id}
    assert all(r.finished for r in lease.runs(store))


def test_a_dead_holder_on_this_host_is_taken_over_once(store):
    dead = plant(store, pid=dead_pid())
    taker = lease.Lease(store)
    taker.acquire()
    try:
        assert taker.holder and lease.read_lease(store).run_id == taker.me.run_id
        assert store.exists(f"{lease.TAKEOVERS}/{dead.run_id}.json")
        # a second run that also found the dead holder now finds the live taker: refused
        with pytest.raises(lease.OutputBusy, match=str(taker.me.pid)):
            lease.Lease(store).acquire()
    finally:
        taker.release()


def test_a_taker_killed_before_writing_the_lease_is_replaced_too(store):
    dead = plant(store, pid=dead_pid())
    half = lease.Run.new()
    half.pid = dead_pid()
    store.create_json(f"{lease.TAKEOVERS}/{dead.run_id}.json", half.to_dict())
    run = lease.Lease(store)
    run.acquire()
    assert run.holder and store.exists(f"{lease.TAKEOVERS}/{half.run_id}.json")
    run.release()


def test_a_holder_on_another_host_goes_stale_without_heartbeat(store):
    fresh = plant(store, host="elsewhere", pid=1, refreshed=time.time())
    with pytest.raises(lease.OutputBusy, match="elsewhere:1"):
        lease.Lease(store).acquire()
    forced = lease.Lease(store, take_over=True)
    forced.acquire()
    assert forced.holder and store.exists(f"{lease.TAKEOVERS}/{fresh.run_id}.json")
    forced.release()
    plant(store, host="elsewhere", pid=1, refreshed=time.time() - lease.STALE_S - 5)
    quiet = lease.Lease(store)
    quiet.acquire()
    assert quiet.holder
    quiet.release()


def test_join_scores_alongside_without_taking_the_lease(store):
    holder = plant(store, host="elsewhere", pid=1, refreshed=time.time())
    joiner = lease.Lease(store, join=True)
    joiner.acquire()
    assert joiner.me.role == "joiner" and not joiner.holder
    assert lease.read_lease(store).run_id == holder.run_id  # untouched
    other = lease.Lease(store, take_over=True)
    other.acquire()
    assert other.others_running()  # the live joiner: its temp files must not be swept
    joiner.release()
    assert not other.others_running()
    other.release()


def _eventually(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def test_heartbeat_refreshes_and_notices_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    store = Store(str(tmp_path / "out"))
    run = lease.Lease(store)
    run.acquire()
    try:
        # Polled, not slept: on a loaded machine the heartbeat thread may run late.
        assert _eventually(lambda: lease.read_lease(store).refreshed > run.me.started)
        other = plant(store, host="elsewhere", pid=1)
        assert _eventually(lambda: run._lost)
        assert lease.read_lease(store).run_id == other.run_id
    finally:
        run.release()
    assert lease.read_lease(store).run_id == other.run_id  # not deleted: not ours


def test_total_wall_time_is_the_union_of_runs():
    """Resumes add up, downtime and overlapping joiners do not."""

    def a(start: float, end: float) -> lease.Run:
        return lease.Run("x", "h", 1, start, end)

    assert lease.total_seconds([a(0, 10), a(5, 20), a(100, 110)]) == 30
    assert lease.total_seconds([a(100, 110)]) == 10


def _status_folder(store: Store, total: int) -> None:
    store.write_json(
        layout.JOB_FILE,
        {"spec": {"name": "j", "model": {"name": "toy"}}, "layout_version": layout.LAYOUT_VERSION},
    )
    store.write_json(
        layout.MANIFEST,
        {"shards": [{"id": f"s{i}"} for i in range(10)], "pairs": total, "rejected": 0,
         "duplicates": 0},
    )  # fmt: skip


def _marker(store: Store, shard: str, rows: int, at: float) -> None:
    m = synthetic_marker(shard, ShardStats(pairs=rows), at)
    store.create_json(layout.marker_path(shard), m.to_dict())


def test_status_eta_uses_the_current_run_rate(tmp_path):
    """After a resume, the rate is measured over the current run, not across the downtime
    (the first run scored 1000 pairs in 10 s, then the job sat idle an hour)."""
    store = Store(str(tmp_path / "out"))
    _status_folder(store, total=3000)
    now = time.time()
    _marker(store, "s0", 500, now - 3600)
    _marker(store, "s1", 500, now - 3590)
    plant(store, started=now - 200)  # this process: alive
    _marker(store, "s2", 100, now - 100)
    _marker(store, "s3", 100, now - 50)  # 100 pairs in 50 s: 2 pairs/s
    status = read_status(store)
    assert status["state"] == "scoring" and status["run"].endswith(f":{lease.os.getpid()}")
    left = 3000 - 1200
    assert status["eta_seconds"] == pytest.approx(left / 2 - 50, abs=2)


def test_status_of_a_stopped_job_says_how_to_resume(tmp_path):
    store = Store(str(tmp_path / "out"))
    _status_folder(store, total=3000)
    _marker(store, "s0", 500, time.time() - 10)
    plant(store, pid=dead_pid())
    status = read_status(store)
    assert status["state"] == "stopped" and status["eta_seconds"] is None
    assert "`rank1-batch run` with the same job resumes it" in format_status(status)


def test_status_during_a_conversion_names_a_live_run(tmp_path, monkeypatch):
    """A TREC run + corpus is converted under the lease: while it converts, ``status`` sees a
    live run (``preparing``), not ``stopped`` (conversion took no lease before)."""
    from rank1_batch import run as run_mod
    from rank1_batch.job.load import spec_from_mapping

    (tmp_path / "collection.tsv").write_text("p1\tfirst passage\np2\tsecond passage\n")
    (tmp_path / "queries.tsv").write_text("1\twhat is first\n")
    (tmp_path / "run.txt").write_text("1 p1 9.0\n1 p2 8.0\n")
    spec = spec_from_mapping(
        {"input": {"path": str(tmp_path / "run.txt"), "format": "trec",
                   "queries": str(tmp_path / "queries.tsv"),
                   "corpus": str(tmp_path / "collection.tsv")},
         "output": {"path": str(tmp_path / "out")}, "model": {"name": "toy", "device": "cpu"},
         "compute": {"executor": "local"}}
    )  # fmt: skip
    seen: list[str] = []

    class Seen(Exception):
        pass

    def converting(spec, store, *args, **kwargs):
        seen.append(read_status(store)["state"])
        raise Seen  # the state during conversion is all this test needs

    monkeypatch.setattr(run_mod, "convert", converting)
    monkeypatch.setattr("rank1_batch.job.convert.convert", converting)
    with pytest.raises(Seen):
        run_mod.run(spec)
    assert seen == ["preparing"]
    assert read_status(Store(str(tmp_path / "out")))["state"] == "stopped"  # lease released
