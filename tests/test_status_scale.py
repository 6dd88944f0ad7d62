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
