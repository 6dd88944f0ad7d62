"""The commit protocol's building blocks on a real S3 server (moto on loopback): exclusive
create, racing attempts of one shard, fresh listings, retried transient faults, permanent
faults that fail fast naming the URI."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest
from commit_checks import assert_exclusive_create
from s3_server import FaultPlan, FaultProxy

from rank1_batch.core import rank1
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import StorageSpec, parquet_bytes
from rank1_batch.io.store import StorageError, Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.outputs.results import shard_table
from rank1_batch.pipeline.score import process_shard

pytestmark = pytest.mark.s3


def store_of(s3, prefix: str = "out", endpoint: str | None = None) -> Store:
    return Store(f"s3://{s3.bucket}/{prefix}", StorageSpec(endpoint_url=endpoint or s3.endpoint))


def test_s3fs_create_is_exclusive_for_small_files(s3):
    assert_exclusive_create(store_of(s3))


def test_list_sees_objects_written_by_others(s3):
    store = store_of(s3)
    assert store.list("_commits") == []
    store.create_exclusive("_commits/a.json", b"x")
    assert store.list("_commits") == ["a.json"]
    # Another writer (another worker) adds a marker: the next listing must show it.
    s3.client().put_object(Bucket=s3.bucket, Key="out/_commits/b.json", Body=b"y")
    assert store.list("_commits") == ["a.json", "b.json"]
    assert store.exists("_commits/b.json")


def test_endpoint_from_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    store = Store(f"s3://{s3.bucket}/env")
    store.write_json("x.json", {"a": 1})
    assert store.read_json("x.json") == {"a": 1}


def test_job_json_holds_no_credentials(s3):
    spec = spec_from_mapping(
        {
            "input": {"path": f"s3://{s3.bucket}/in.parquet"},
            "output": {"path": f"s3://{s3.bucket}/out"},
            "model": {"name": "toy"},
            "storage": {"endpoint_url": s3.endpoint, "region": "us-east-1"},
        }
    )
    store = store_of(s3)
    claim_output(store, job_record(spec, []))
    text = store.read_bytes(layout.JOB_FILE).decode()
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in text
    assert s3.env["AWS_ACCESS_KEY_ID"] not in text


class EchoEngine:
    """A deterministic stand-in for a model (the engine is not under test here): the score is
    a function of the passage text. ``gate`` holds every attempt until all have scored."""

    model_id = "echo"
    model_revision = "0"

    def __init__(self, gate: threading.Barrier | None = None) -> None:
        self.gate = gate

    def judge(self, requests):
        if self.gate is not None:
            self.gate.wait(timeout=30)
        return [
            rank1.Judgement(
                score=(sum(r.passage.encode()) % 97) / 97,
                logit=0.0,
                status="complete",
                reasoning=f"about {r.passage[:10]}",
            )
            for r in requests
        ]


def _job_and_shard(s3, prefix: str, n: int = 40) -> tuple[object, Store]:
    spec = spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": f"s3://{s3.bucket}/{prefix}"},
            "model": {"name": "echo"},
        }
    )
    store = store_of(s3, prefix)
    pairs = pa.table(
        {
            "query_id": [f"q{i // 5}" for i in range(n)],
            "doc_id": [f"d{i}" for i in range(n)],
            "query": [f"query {i // 5}" for i in range(n)],
            "passage": [f"passage number {i}" for i in range(n)],
            "title": pa.nulls(n, pa.string()),
            "instruction": pa.nulls(n, pa.string()),
        }
    )
    store.write_atomic(layout.pairs_path("shard-00000"), parquet_bytes(pairs))
    return spec, store


def test_two_racing_attempts_of_one_shard_commit_once(s3):
    spec, store = _job_and_shard(s3, "race")
    gate = threading.Barrier(2)
    markers: list[commit.Marker] = []
    errors: list[BaseException] = []

    def attempt() -> None:
        # Each attempt has its own Store, as two Ray workers would.
        try:
            own = store_of(s3, "race")
            markers.append(process_shard("shard-00000", EchoEngine(gate), own, spec))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.list(layout.COMMITS) == ["shard-00000.json"]
    on_disk = commit.Marker.from_dict(store.read_json(layout.marker_path("shard-00000")))
    # Both attempts report the one committed marker, and it describes the published files.
    assert [m.scores_sha256 for m in markers] == [on_disk.scores_sha256] * 2
    # The losing attempt removed its own files: only the committed attempt's remain.
    assert store.list("scores") == [on_disk.scores_file.split("/")[-1]]
    scores = shard_table(store, "shard-00000", "scores")
    keys = list(zip(scores["query_id"].to_pylist(), scores["doc_id"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) == 40
    from rank1_batch.io.fs import sha256

    assert sha256(store.read_bytes(on_disk.scores_file)) == on_disk.scores_sha256


def test_transient_faults_are_retried_and_output_is_identical(s3):
    spec, clean = _job_and_shard(s3, "clean")
    reference = process_shard("shard-00000", EchoEngine(), clean, spec)
    plan = FaultPlan(first=6, rate=0.2, seed=1234, resets=0.2)
    with FaultProxy(s3.port, plan) as proxy:
        spec, _ = _job_and_shard(s3, "faulty")
        faulty = store_of(s3, "faulty", endpoint=proxy.url)
        marker = process_shard("shard-00000", EchoEngine(), faulty, spec)
        for i in range(10):
            faulty.write_json(f"extra/{i}.json", {"i": i})
        assert faulty.list("extra") == sorted(f"{i}.json" for i in range(10))
    assert plan.counts.get("slowdown", 0) >= 6 and plan.counts.get("pass", 0) > 0
    assert marker.scores_sha256 == reference.scores_sha256
    assert marker.traces_sha256 == reference.traces_sha256
    direct = store_of(s3, "faulty")
    assert shard_table(direct, "shard-00000", "scores") == shard_table(
        clean, "shard-00000", "scores"
    )
    assert direct.list(layout.COMMITS) == ["shard-00000.json"]
    print("fault counts:", plan.counts)


def test_one_file_export_upload_is_retried_on_transient_faults(s3, monkeypatch):
    """A TREC run or JSONL labels file goes up in one put at the end of a long export: a reset
    connection that botocore's own retries did not absorb must be retried, not end the export.
    (Injected at the filesystem: through the fault proxy s3fs's own backoff takes minutes.)"""
    from rank1_batch.outputs.targets import streamed_file

    store = store_of(s3, "upload")
    real, calls = store.fs.put_file, []

    def flaky(lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) <= 2:
            raise ConnectionResetError("connection reset by peer (injected)")
        return real(lpath, rpath, **kwargs)

    monkeypatch.setattr(store.fs, "put_file", flaky)
    body = b"".join(f"q{i} Q0 d{i} 1 0.5 rank1\n".encode() for i in range(1000))
    with streamed_file(store, "run.trec") as fh:
        fh.write(body)
    assert len(calls) == 3
    assert store_of(s3, "upload").read_bytes("run.trec") == body


def test_no_such_bucket_fails_fast_naming_the_uri(s3):
    spec = _run_spec(s3, output=f"s3://no-such-bucket-{s3.bucket}/out")
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"s3://no-such-bucket-{s3.bucket}/out"):
        _run(spec)
    assert time.monotonic() - start < 10


def test_access_denied_fails_fast_naming_the_uri(s3):
    with FaultProxy(s3.port, FaultPlan(deny=True)) as proxy:
        spec = _run_spec(s3, output=f"s3://{s3.bucket}/denied", endpoint=proxy.url)
        start = time.monotonic()
        with pytest.raises(StorageError, match=f"s3://{s3.bucket}/denied"):
            _run(spec)
        assert time.monotonic() - start < 10


def _run_spec(s3, output: str, endpoint: str | None = None):
    return spec_from_mapping(
        {
            "input": {"path": f"s3://{s3.bucket}/in/x.parquet"},
            "output": {"path": output},
            "model": {"name": "toy"},
            "storage": {"endpoint_url": endpoint or s3.endpoint},
        }
    )


def _run(spec) -> None:
    """``pipeline.run.run`` must fail before Ray starts or a model loads.

    Ray may already be up in this process (an earlier in-process test left it), so the check is
    that the run never reached ``init_ray``, not whether Ray happens to be initialized.
    """
    from rank1_batch import run as runner

    reached: list[str] = []
    original = runner.init_ray
    runner.init_ray = lambda *_a, **_k: reached.append("init_ray")  # type: ignore[assignment]
    try:
        runner.run(spec)
    finally:
        runner.init_ray = original
        assert not reached, "storage error surfaced only after Ray started"


def test_412_without_the_condition_echoed_means_exists(s3):
    """S3fs maps a 412 to FileExistsError only when the response echoes
    ``Condition: If-None-Match``; other servers' 412 must still read as "exists" (it used to be
    an EINVAL OSError, retried, then failing every resume)."""
    plan = FaultPlan(strip_condition=True)
    with FaultProxy(s3.port, plan) as proxy:
        store = store_of(s3, "strip412", endpoint=proxy.url)
        raw = store.fs
        with pytest.raises(Exception) as bare:  # what s3fs itself makes of such a 412
            raw.pipe_file(store.path("x.json"), b"a", mode="create")
            raw.pipe_file(store.path("x.json"), b"b", mode="create")
        assert not isinstance(bare.value, FileExistsError)
        assert store.create_exclusive("_commits/a.json", b"first")
        assert not store.create_exclusive("_commits/a.json", b"second")
        assert store.read_bytes("_commits/a.json") == b"first"
        store.verify_exclusive_create()  # exclusive after all: accepted


def test_store_ignoring_if_none_match_is_refused(s3):
    """A server that ignores If-None-Match overwrites silently: refused, naming the URI."""
    with FaultProxy(s3.port, FaultPlan(ignore_if_none_match=True)) as proxy:
        store = store_of(s3, "noexcl", endpoint=proxy.url)
        with pytest.raises(StorageError, match=r"s3://.*/noexcl.*does not honour create-only"):
            store.verify_exclusive_create()


def test_exclusive_create_probe_passes_and_cleans_up(s3):
    store = store_of(s3, "probe")
    store.verify_exclusive_create()
    assert store.list("_probe") == []
