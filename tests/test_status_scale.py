"""`status` on an output of 50,000 shards (synthetic markers) answers in seconds."""

from __future__ import annotations

import json
import time

import pytest
from commit_checks import synthetic_marker

from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.outputs.status import read_status

SHARDS = 50_000
LIMIT_S = 10.0
JOB = {"spec": {"name": "j", "model": {"name": "toy"}}, "layout_version": layout.LAYOUT_VERSION}


def marker(i: int) -> commit.Marker:
    stats = ShardStats(pairs=2000, complete=1990 - i % 7, forced=7 + i % 7, error=3)
    return synthetic_marker(layout.shard_name(i, SHARDS), stats, 1e9 + i, rows=2000, tag=str(i))


def planned(store: Store, shards: int = SHARDS) -> None:
    store.write_json(layout.JOB_FILE, JOB)
    manifest = {
        "input_rows": 2000 * shards,
        "pairs": 2000 * shards,
        "rejected": 0,
        "duplicates": 0,
        "shards": [{"id": layout.shard_name(i, shards), "rows": 2000} for i in range(shards)],
    }
    store.write_json(layout.MANIFEST, manifest)


def expected(committed: range) -> dict[str, int]:
    total = sum((marker(i).stats for i in committed), ShardStats())
    return {"pairs": total.pairs, "forced": total.forced, "complete": total.complete}


def check(status: dict, committed: range) -> None:
    want = expected(committed)
    assert status["shards_total"] == SHARDS
    assert status["shards_committed"] == len(committed)
    assert status["pairs_scored"] == want["pairs"]
    assert status["statuses"]["forced"] == want["forced"]
    assert status["statuses"]["complete"] == want["complete"]


def test_status_of_50000_local_markers_in_seconds(tmp_path):
    store = Store(str(tmp_path / "out"))
    planned(store)
    folder = tmp_path / "out" / layout.COMMITS
    folder.mkdir()
    committed = range(SHARDS - 1)  # one shard still scoring
    for i in committed:
        (folder / f"{layout.shard_name(i, SHARDS)}.json").write_text(
            json.dumps(marker(i).to_dict())
        )
    start = time.perf_counter()
    first = read_status(store)  # every marker read (concurrently), then folded into the digest
    cold = time.perf_counter() - start
    check(first, committed)
    assert store.exists(commit.DIGEST)
    start = time.perf_counter()
    again = read_status(store)  # one listing and the digest
    warm = time.perf_counter() - start
    check(again, committed)
    print(f"status over {SHARDS} local markers: {cold:.2f} s cold, {warm:.2f} s with the digest")
    assert warm < LIMIT_S
    # Cold, every marker is a file to open and parse: 8-13 s here with the 2 cores shared by
    # a load of ~30; bounded loosely. The digest is what keeps every later call fast.
    assert cold < 3 * LIMIT_S


def test_digest_is_a_cache_markers_added_later_still_count(tmp_path):
    store = Store(str(tmp_path / "out"))
    planned(store, 1200)
    folder = tmp_path / "out" / layout.COMMITS
    folder.mkdir()
    for i in range(600):
        (folder / f"{layout.shard_name(i, 1200)}.json").write_text(json.dumps(marker(i).to_dict()))
    assert len(commit.read_markers(store)) == 600 and store.exists(commit.DIGEST)
    for i in range(600, 700):
        (folder / f"{layout.shard_name(i, 1200)}.json").write_text(json.dumps(marker(i).to_dict()))
    got = commit.read_markers(store)
    assert [m.shard for m in got] == [layout.shard_name(i, 1200) for i in range(700)]
    assert [m.to_dict() for m in got] == [
        marker(i).to_dict() | {"shard": layout.shard_name(i, 1200)} for i in range(700)
    ]


@pytest.mark.s3
def test_status_of_50000_shards_on_s3_in_seconds(s3):
    """On the moto server: 50,000 committed shards, of which the last 200 have only their
    marker object and the rest are folded into the digest an earlier reader wrote (moto here
    serves a few dozen requests a second, so 50,000 marker objects take it ~20 min to store)."""
    uri = f"s3://{s3.bucket}/big"
    store = Store(uri, StorageSpec(endpoint_url=s3.endpoint))
    planned(store)
    folded = range(SHARDS - 200)
    commit.write_digest(store, {marker(i).shard: marker(i) for i in folded})
    store.fs.pipe(
        {
            store.path(layout.marker_path(marker(i).shard)): json.dumps(
                marker(i).to_dict()
            ).encode()
            for i in range(SHARDS - 200, SHARDS - 1)
        }
    )
    start = time.perf_counter()
    status = read_status(store)
    took = time.perf_counter() - start
    print(f"status over {SHARDS} shards on moto S3: {took:.2f} s")
    assert status["shards_committed"] == SHARDS - 1 - 0  # digest + marker objects
    assert status["pairs_scored"] == expected(range(SHARDS - 1))["pairs"]
    assert took < LIMIT_S


def test_status_of_a_complete_output_counts_reused_pairs(tmp_path):
    """A complete output answers from _SUCCESS.json alone, reused pairs included."""
    from rank1_batch.outputs.status import format_status, read_status

    store = Store(str(tmp_path / "out"))
    store.write_json(layout.JOB_FILE, JOB)
    store.write_json(
        layout.MANIFEST,
        {"shards": [{"id": "shard-00000", "rows": 3}], "pairs": 3, "rejected": 0, "duplicates": 0},
    )
    success = {
        "shards": 1, "scored": 3, "statuses": {"complete": 3}, "truncated": 0,
        "reasoning_tokens": 0,
    }  # fmt: skip
    store.write_json(layout.SUCCESS, success | {"reused": 2})
    status = read_status(store)
    assert status["state"] == "complete" and status["pairs_reused"] == 2
    assert "2 copied from earlier outputs" in format_status(status)


def test_named_shards_with_a_digest_read_only_the_markers_it_lacks(tmp_path, monkeypatch):
    """With the digest holding all but a few of the named shards, no listing of ``_commits/``
    is made (at 50,000 marker objects it is 50 pages, ~2 s each on the test S3 server), and a
    shard committed after the digest was written counts, whatever its place in name order."""
    n = 1000
    store = Store(str(tmp_path / "out"))
    planned(store, n)
    folder = tmp_path / "out" / layout.COMMITS
    folder.mkdir()
    committed = [i for i in range(n) if i not in (3, 500, 999)]  # 3 still scoring
    for i in committed:
        (folder / f"{layout.shard_name(i, n)}.json").write_text(json.dumps(marker(i).to_dict()))
    commit.write_digest(store, {marker(i).shard: marker(i) for i in committed if i != 7})
    (folder / f"{layout.shard_name(500, n)}.json").write_text(json.dumps(marker(500).to_dict()))
    committed.append(500)  # committed after the digest, before shards it outranks

    def no_listing(rel_dir: str) -> list[str]:
        raise AssertionError(f"listed {rel_dir}")

    monkeypatch.setattr(store, "list", no_listing)
    names = [layout.shard_name(i, n) for i in range(n)]
    got = commit.read_markers(store, names)
    assert [m.shard for m in got] == [layout.shard_name(i, n) for i in sorted(committed)]
    status = read_status(store)
    assert status["shards_committed"] == n - 2
    assert status["pairs_scored"] == sum((marker(i).stats for i in committed), ShardStats()).pairs


def test_named_shards_far_from_the_digest_are_listed(tmp_path):
    """More than one named shard in twenty missing from the digest: one listing, as before (a
    read per missing shard would cost more requests than the listing's pages)."""
    n = 100
    store = Store(str(tmp_path / "out"))
    planned(store, n)
    folder = tmp_path / "out" / layout.COMMITS
    folder.mkdir()
    for i in range(60):
        (folder / f"{layout.shard_name(i, n)}.json").write_text(json.dumps(marker(i).to_dict()))
    commit.write_digest(store, {marker(i).shard: marker(i) for i in range(50)})
    calls = []
    real = store.list
    store.list = lambda rel_dir: calls.append(rel_dir) or real(rel_dir)  # type: ignore[method-assign]
    got = commit.read_markers(store, [layout.shard_name(i, n) for i in range(n)])
    assert len(got) == 60 and calls == [layout.COMMITS]


@pytest.mark.s3
def test_status_requests_do_not_grow_with_the_shards(tmp_path):
    """On a moto server that counts what it serves: every committed marker an object, the digest
    an earlier reader wrote holding all but the 20 newest; ``status`` makes the same requests at
    1,000 and 5,000 shards (no listing of ``_commits/``), one GET per marker it lacks (no HEAD
    before each read)."""
    import os
    import uuid

    import boto3
    from s3_server import MotoServer, s3_env

    pytest.importorskip("moto.server")
    os.environ.update({k: v for k, v in s3_env("x").items() if k.startswith("AWS_")})
    server = MotoServer(counting=True)
    server.start()
    global SHARDS
    saved = SHARDS
    try:
        counts = []
        for n in (1000, 5000):
            SHARDS = n
            bucket = f"rank1-{uuid.uuid4().hex[:12]}"
            boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(
                Bucket=bucket
            )
            store = Store(f"s3://{bucket}/big", StorageSpec(endpoint_url=server.url))
            planned(store, n)
            markers = [marker(i) for i in range(n - 1)]
            commit.write_digest(store, {m.shard: m for m in markers[:-20]})
            server.seed(
                bucket,
                {f"big/{layout.marker_path(m.shard)}": json.dumps(m.to_dict()).encode()
                 for m in markers},
            )  # fmt: skip
            server.requests(reset=True)
            status = read_status(store)
            counts.append(server.requests())
            check(status, range(n - 1))
        assert counts[0] == counts[1], counts
        assert counts[0].get("get", 0) <= 20 + 1 + 6, counts  # lacking markers + one absent
        assert counts[0].get("head", 0) <= 6, counts
    finally:
        SHARDS = saved
        server.stop()
