"""Chaos: whole-attempt commits, bounded attempts, and a job under injected faults and kills.

The fault-injecting engine is a test double (``tests/fault_engine.py``), selected through the
test-only hook ``RANK1_BATCH_TEST_ENGINE``.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from fault_engine import FaultInjectingTestEngine

from rank1_batch import commit, results
from rank1_batch.engines.base import EngineOptions
from rank1_batch.pipeline.finalize import finalize
from rank1_batch.pipeline.score import commit_shard, requests_for
from rank1_batch.spec import spec_from_mapping
from rank1_batch.storage import Store, parquet_bytes

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
    Store(out).write_atomic(commit.pairs_path(SHARD), parquet_bytes(pairs))
    engine = FaultInjectingTestEngine(EngineOptions(max_model_len=512, max_tokens=8))
    first = engine.judge(requests_for(pairs, spec))
    with pytest.raises(KeyboardInterrupt):
        commit_shard(SHARD, pairs, first, engine, DiesAfterScores(out), spec, 1.0)
    second = engine.judge(requests_for(pairs, spec))
    assert {j.reasoning_tokens for j in first} != {j.reasoning_tokens for j in second}
    marker = commit_shard(SHARD, pairs, second, engine, Store(out), spec, 1.0)

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
    store.write_atomic(commit.pairs_path(SHARD), parquet_bytes(pairs))
    engine = FaultInjectingTestEngine(EngineOptions(max_model_len=512, max_tokens=8))
    marker = commit_shard(
        SHARD, pairs, engine.judge(requests_for(pairs, spec)), engine, store, spec, 1.0
    )
    other = engine.judge(requests_for(pairs, spec))
    from rank1_batch.pipeline.score import build_tables

    store.write_atomic(
        marker.traces_file, parquet_bytes(build_tables(pairs, other, engine, "p")[1])
    )
    with pytest.raises(commit.CommitError, match="does not match the checksum"):
        results.read_traces(store)
    assert results.read_results(store).table.num_rows == 5  # the scores file is intact
