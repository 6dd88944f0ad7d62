"""Checks of the commit primitives shared by the local-disk and the S3 tests, and synthetic
markers for tests that need many committed shards without their files."""

from __future__ import annotations

import threading

from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store


def synthetic_marker(
    shard: str, stats: ShardStats, committed_at: float, *, rows: int | None = None, tag: str = ""
) -> commit.Marker:
    """A well-formed marker of ``shard`` naming files that were never written (status, ETA
    and digest tests read markers only)."""
    attempt = f"a{tag or shard}"
    return commit.Marker(
        shard, stats.pairs if rows is None else rows, f"s{tag}", f"t{tag}", stats,
        attempt=attempt, scores_file=layout.scores_path(shard, attempt),
        traces_file=layout.traces_path(shard, attempt), scores_bytes=100, traces_bytes=50,
        committed_at=committed_at, worker="w",
    )  # fmt: skip


def assert_exclusive_create(store: Store, attempts: int = 16) -> None:
    """A second create of a name fails and keeps the first content; of many racing creates
    exactly one wins, and its content is what readers find."""
    assert store.create_exclusive("_commits/a.json", b"first")
    assert not store.create_exclusive("_commits/a.json", b"second")
    assert store.read_bytes("_commits/a.json") == b"first"
    wins: list[int] = []

    def attempt(i: int) -> None:
        if store.create_exclusive("_commits/race.json", f"attempt {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(attempts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read_bytes("_commits/race.json") == f"attempt {wins[0]}".encode()
