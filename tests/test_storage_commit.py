"""The commit protocol's building blocks on local disk: atomic, exclusive, fingerprinted."""

from __future__ import annotations

import os

import pytest
from commit_checks import assert_exclusive_create

from rank1_batch.core.stats import ShardStats
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.record import FingerprintMismatch, claim_output, job_record

MINIMAL = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "model": {"name": "toy"}}


def test_create_exclusive_only_once_and_racing_creates_have_one_winner(tmp_path):
    store = Store(str(tmp_path))
    assert_exclusive_create(store)
    assert store.list("_commits") == ["a.json", "race.json"]  # no temp leftovers


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    store = Store(str(tmp_path))
    store.write_atomic("pairs/_manifest.json", b"old")
    store.write_atomic("pairs/_manifest.json", b"new")
    assert store.read_bytes("pairs/_manifest.json") == b"new"
    assert os.listdir(tmp_path / "pairs") == ["_manifest.json"]


def test_failed_write_publishes_nothing(tmp_path, monkeypatch):
    store = Store(str(tmp_path))

    def boom(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        store.write_atomic("scores/x.parquet", b"partial")
    monkeypatch.undo()
    assert not store.exists("scores/x.parquet")
    assert store.list("scores") == []


def test_temp_leftovers_are_cleaned(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / ".shard-00001.parquet.abc.123").write_bytes(b"x")
    store.write_atomic("scores/shard-00000.parquet", b"y")
    assert store.remove_temp_leftovers("scores") == 1
    assert store.list("scores") == ["shard-00000.parquet"]


def test_stats_add_up():
    a = ShardStats(pairs=3, complete=2, forced=1, prompt_tokens=30, seconds=1.5)
    b = ShardStats(pairs=2, error=1, fallback=1, reasoning_tokens=7, seconds=0.5)
    total = a + b
    assert (total.pairs, total.complete, total.forced, total.error, total.fallback) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert total.seconds == 2.0 and total.prompt_tokens == 30 and total.reasoning_tokens == 7
    assert ShardStats.from_dict(total.to_dict()) == total


def test_claim_output_refuses_changed_settings_and_names_them(tmp_path):
    store = Store(str(tmp_path))
    listing = [{"path": "in.parquet", "size": 10, "rows": 2}]
    spec = spec_from_mapping(MINIMAL)
    assert claim_output(store, job_record(spec, listing))
    tuned = spec_from_mapping({**MINIMAL, "compute": {"workers": 8}})
    assert not claim_output(store, job_record(tuned, listing))
    changed = spec_from_mapping({**MINIMAL, "reasoning": {"max_tokens": 12}})
    with pytest.raises(FingerprintMismatch, match=r"reasoning\.max_tokens: 8192 -> 12"):
        claim_output(store, job_record(changed, listing))
    other_input = [{"path": "in.parquet", "size": 11, "rows": 2}]
    with pytest.raises(FingerprintMismatch, match="input changed"):
        claim_output(store, job_record(spec, other_input))


def test_backend_without_exclusive_create_is_refused(tmp_path):
    """Fsspec's default create (memory://, gs://, az://) checks then writes."""
    from rank1_batch.io.store import StorageError

    with pytest.raises(StorageError, match=r"memory://somewhere.*'memory' is not supported"):
        Store("memory://somewhere").verify_exclusive_create()
    Store(str(tmp_path / "out")).verify_exclusive_create()  # local disk: accepted


@pytest.mark.parametrize("count", [1, 7, 100_000, 100_001, 2_500_000, 10**12])
def test_shard_names_sort_in_shard_order_for_any_count(count: int) -> None:
    picks = sorted(
        i
        for i in {0, 1, 9, 10, 99_999, 100_000, count // 2, count - 2, count - 1}
        if 0 <= i < count
    )
    names = [layout.shard_name(i, count) for i in picks]
    assert sorted(names) == names
    assert len(set(map(len, names))) == 1


def test_shard_names_of_old_outputs_are_unchanged() -> None:
    # Outputs of up to 100,000 shards keep the 5-digit names earlier versions wrote.
    assert layout.shard_name(0, 1) == "shard-00000"
    assert layout.shard_name(99_999, 100_000) == "shard-99999"
    assert layout.shard_name(100_000, 100_001) == "shard-100000"
    assert layout.shard_name(5, 100_001) == "shard-000005"
    with pytest.raises(ValueError):
        layout.shard_name(3, 3)
