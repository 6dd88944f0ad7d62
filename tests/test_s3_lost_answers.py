"""Requests that land at the server but whose answers are lost (a reset after the write, a 500
after the write), and what is retried at all: the own-write rule of ``Store.create_exclusive``
and the one retry layer of ``Store._call``, on a real S3 server (moto on loopback) behind the
fault proxy of ``tests/s3_server.py``."""

from __future__ import annotations

import errno
import time

import pytest
from s3_server import FaultPlan, FaultProxy, Rule
from test_storage_s3 import EchoEngine, _job_and_shard, store_of

from rank1_batch.io import commit, layout, lease
from rank1_batch.io.store import OutputUnwritable, StorageError, Store, is_transient
from rank1_batch.outputs.results import shard_table
from rank1_batch.pipeline.score import process_shard

pytestmark = pytest.mark.s3

ATTEMPT_FILE = r"\.[0-9a-f]{16}\.parquet"


def _score_through(s3, prefix: str, rules: list[Rule]) -> tuple[commit.Marker, FaultPlan]:
    spec, _ = _job_and_shard(s3, prefix)
    plan = FaultPlan(rules=rules)
    with FaultProxy(s3.port, plan) as proxy:
        marker = process_shard("shard-00000", EchoEngine(), store_of(s3, prefix, proxy.url), spec)
    assert all(r.times == 0 for r in rules), f"a fault was never injected: {rules}"
    return marker, plan


def _assert_committed_and_readable(s3, prefix: str, marker: commit.Marker) -> None:
    direct = store_of(s3, prefix)
    on_disk = commit.read_marker(direct, "shard-00000")
    assert on_disk.attempt == marker.attempt
    assert direct.list(layout.COMMITS) == ["shard-00000.json"]
    scores = shard_table(direct, "shard-00000", "scores")  # checksum verified
    traces = shard_table(direct, "shard-00000", "traces")
    assert scores.num_rows == traces.num_rows == 40
    assert direct.list("scores") == [on_disk.scores_file.rsplit("/", 1)[1]]


@pytest.mark.parametrize("action", ["lost", "landed500"])
def test_marker_put_that_landed_with_its_answer_lost_stays_committed(s3, action):
    """The critical path: the marker PUT reached the store, its answer did not; the retry
    gets a 412. The attempt must recognise its own marker, keep its files, and return it."""
    marker, plan = _score_through(
        s3, f"marker-{action}", [Rule("PUT", r"/_commits/shard-00000\.json", action)]
    )
    assert plan.counts[action] == 1
    _assert_committed_and_readable(s3, f"marker-{action}", marker)


@pytest.mark.parametrize("kind", ["scores", "traces"])
def test_data_file_put_that_landed_with_its_answer_lost_is_this_attempts(s3, kind):
    """Its own upload is not "another attempt's": no 'attempt is not unique' failure."""
    marker, _ = _score_through(
        s3, f"data-{kind}", [Rule("PUT", rf"/{kind}/shard-00000{ATTEMPT_FILE}", "lost")]
    )
    _assert_committed_and_readable(s3, f"data-{kind}", marker)


def test_lease_put_that_landed_with_its_answer_lost_is_held_not_busy(s3):
    """``Lease`` must not find its own lease and refuse the run naming itself."""
    plan = FaultPlan(rules=[Rule("PUT", r"/_run/lease\.json", "lost")])
    with FaultProxy(s3.port, plan) as proxy:
        run = lease.Lease(store_of(s3, "lease", proxy.url))
        run.acquire()
        try:
            assert run.holder and run.me.role == "holder"
        finally:
            run.release()
    assert plan.counts["lost"] == 1
    assert not store_of(s3, "lease").exists(lease.LEASE)


def test_a_create_that_lost_the_race_is_still_refused_after_a_lost_answer(s3):
    """Own-write recognition compares bytes: another writer's object stays another's."""
    direct = store_of(s3, "race412")
    assert direct.create_exclusive("_commits/x.json", b"the winner's marker")
    plan = FaultPlan(rules=[Rule("PUT", r"/_commits/x\.json", "landed500")])
    with FaultProxy(s3.port, plan) as proxy:
        assert not store_of(s3, "race412", proxy.url).create_exclusive(
            "_commits/x.json", b"a loser's marker"
        )
    assert direct.read_bytes("_commits/x.json") == b"the winner's marker"


def test_a_delete_that_landed_with_its_answer_lost_is_done(s3):
    direct = store_of(s3, "rm")
    direct.write_atomic("scores/x.parquet", b"x")
    plan = FaultPlan(rules=[Rule("DELETE", r"/scores/x\.parquet", "lost")])
    with FaultProxy(s3.port, plan) as proxy:
        store_of(s3, "rm", proxy.url).remove("scores/x.parquet")
    assert not direct.exists("scores/x.parquet")


def test_a_bad_request_is_not_retried(s3):
    """A 400 surfaces at once, naming the URI: one request, not 6 x 5 of them."""
    plan = FaultPlan(rules=[Rule("PUT", r"/bad\.json", "badrequest", times=100)])
    with FaultProxy(s3.port, plan) as proxy:
        store = store_of(s3, "bad", proxy.url)
        start = time.monotonic()
        with pytest.raises(
            StorageError, match=r"s3://.*/bad: writing bad\.json failed \(not retried\)"
        ):
            store.write_json("bad.json", {"a": 1})
    assert time.monotonic() - start < 5
    assert plan.counts["badrequest"] == 1, plan.counts


def test_a_bad_request_ends_run_in_one_line(s3):
    """Through the CLI: a 400 on the output is one line, exit 2, in seconds, not a traceback
    after minutes of retries."""
    from conftest import DEMO, run_cli

    plan = FaultPlan(rules=[Rule("PUT", r"/job\.json", "badrequest", times=100)])
    with FaultProxy(s3.port, plan) as proxy:
        start = time.monotonic()
        result = run_cli(
            "run", str(DEMO), "--output", f"s3://{s3.bucket}/bad400",
            "--set", f"storage.endpoint_url={proxy.url}", env=s3.env, check=False,
        )  # fmt: skip
    assert time.monotonic() - start < 30
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("rank1-batch: error: s3://"), result.stderr[-2000:]
    assert "job.json failed (not retried)" in errors[-1] and "Traceback" not in result.stderr
    assert plan.counts["badrequest"] == 1, plan.counts


def test_a_slowdown_is_retried_by_the_store_alone(s3):
    """One retry layer: three SlowDowns cost three retries of the store, and no more
    requests than that (botocore and s3fs do not retry underneath)."""
    plan = FaultPlan(rules=[Rule("PUT", r"/slow\.json", "slowdown", times=3)])
    with FaultProxy(s3.port, plan) as proxy:
        store_of(s3, "slow", proxy.url).write_json("slow.json", {"a": 1})
    assert plan.by_kind == {("put", "slowdown"): 3, ("put", "pass"): 1}


def _client_error(status: int, code: str) -> Exception:
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (TimeoutError("timed out"), True),
        (OSError(errno.EBUSY, "SlowDown"), True),  # s3fs's SlowDown and 503
        (OSError(121, "InternalError"), True),  # s3fs's 500 (EREMOTEIO)
        (OSError(errno.EINVAL, "InvalidArgument"), False),  # s3fs's 400
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (OSError(errno.EROFS, "Read-only file system"), False),
        (PermissionError("denied"), False),
        (FileNotFoundError("gone"), False),
        (ValueError("a bug"), False),
        (_client_error(503, "SlowDown"), True),
        (_client_error(500, "InternalError"), True),
        (_client_error(400, "InvalidRequest"), False),
        (_client_error(404, "NoSuchKey"), False),
    ],
)
def test_only_transient_errors_are_retried(exc, transient):
    assert is_transient(exc) is transient


def test_an_eio_around_a_5xx_is_transient_and_around_a_4xx_is_not():
    for status, code, transient in ((502, "BadGateway", True), (409, "Weird", False)):
        wrapped = OSError(errno.EIO, code)  # what s3fs makes of a code it does not know
        wrapped.__cause__ = _client_error(status, code)
        assert is_transient(wrapped) is transient


def test_a_full_output_device_raises_output_unwritable_at_once(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "out"))

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_local_temp", full)
    for write in (
        lambda: store.write_json("x.json", {}),
        lambda: store.create_exclusive("_commits/a.json", b"x"),
    ):
        with pytest.raises(OutputUnwritable, match=r"/out: .*full or read-only"):
            write()


def _rows(store: Store) -> dict[tuple[str, str], tuple]:
    """Every committed row by (query_id, doc_id), the columns a run determines (asserting
    each shard's scores and traces come from one attempt and align row by row)."""
    import pyarrow as pa

    out: dict[tuple[str, str], tuple] = {}
    for m in commit.read_markers(store):
        assert m.scores_file.split(".")[1] == m.traces_file.split(".")[1] == m.attempt, m
        scores = shard_table(store, m.shard, "scores")
        traces = shard_table(store, m.shard, "traces")
        ids = ("query_id", "doc_id")
        assert scores.select(ids).equals(traces.select(ids)), f"{m.shard}: mixed attempts"
        columns = ("query_id", "doc_id", "score", "status", "rank")
        table = pa.Table.from_arrays(
            [*(scores.column(c) for c in columns), traces.column("reasoning")],
            names=["query_id", "doc_id", "score", "status", "rank", "reasoning"],
        )
        for row in table.to_pylist():
            key = (row["query_id"], row["doc_id"])
            assert key not in out, f"duplicated pair {key}"
            out[key] = tuple(row.values())
    return out


@pytest.mark.ray
def test_s3_demo_with_faults_on_every_request_kind_equals_a_local_run(s3, demo_reference):
    """The demo on S3 with 10% of all requests failing, before forwarding (reset, 500, 503)
    and after it (answer lost, or a 500 for a request that took effect): nothing lost,
    nothing duplicated, no shard mixing two attempts, rows identical to a local run."""
    import tempfile

    from conftest import DEMO, ROOT, run_cli

    s3.client().upload_file(
        str(ROOT / "jobs/data/demo-pairs.parquet"), s3.bucket, "in/demo-pairs.parquet"
    )
    uri = f"s3://{s3.bucket}/flaky"
    # 10% of all requests at random, plus each after-forward fault at least once on every
    # request kind the protocol makes (marker, data file and lease PUTs, reads, listings,
    # HEADs, deletes), so a lucky seed cannot leave one out.
    rules = [
        Rule(method, path, action)
        for method, path in (
            ("PUT", r"/_commits/"), ("PUT", r"/scores/"), ("PUT", r"/traces/"),
            ("PUT", r"/_run/lease"), ("GET", r"list-type"), ("GET", r"/pairs/shard"),
            ("HEAD", r"/flaky/"), ("DELETE", r"/flaky/"),
        )
        for action in ("lost", "landed500")
    ]  # fmt: skip
    plan = FaultPlan(rate=0.1, seed=20, resets=0.2, after=0.5, rules=rules)
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="r1f-", dir="/tmp") as ray_tmp,
        FaultProxy(s3.port, plan) as proxy,
    ):
        result = run_cli(
            "run", str(DEMO), "--output", uri,
            "--set", f"input.path=s3://{s3.bucket}/in/demo-pairs.parquet",
            "--set", f"storage.endpoint_url={proxy.url}",
            env={**s3.env, "RAY_TMPDIR": ray_tmp}, check=False, timeout=900,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r for r in rules if r.times] == [], "faults never injected"
    random_faults = sum(n for (_, action), n in plan.by_kind.items() if action != "pass")
    assert random_faults > len(rules) + 10, plan.by_kind
    store = store_of(s3, "flaky")
    assert store.exists(layout.SUCCESS)
    local = _rows(Store(str(demo_reference)))
    flaky = _rows(store)
    assert len(flaky) == len(local) == 3000
    assert flaky == local
    print(f"{time.monotonic() - start:.0f} s; faults:", dict(sorted(plan.by_kind.items())))
