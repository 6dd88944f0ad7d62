"""Output folders for the compare tests, derived from the demo output without scoring again.

:func:`derive` copies a finished output and rewrites its committed scores (and, optionally,
its traces) the way a commit writes them: a new attempt's files under
``layout.scores_path``/``traces_path``, ranks from ``ranks_within_query`` (the scorer's own
rule), and the shard's marker naming the new files with their checksums, so every reader
goes through the usual verified path. :func:`drop_shards` removes shards' markers (and
``_SUCCESS.json``): an output that holds fewer queries, as a job still running does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rank1_batch.core.rows import ranks_within_query
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import parquet_bytes, sha256
from rank1_batch.io.store import Store


def unit(*parts: str) -> float:
    """A deterministic pseudo-random number in [0, 1) from strings."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def degrade(share: float, salt: str) -> Callable[[str, str, float], float]:
    """Scores of a ``share`` of the queries (chosen by hash) replaced by noise."""

    def rescore(q: str, d: str, s: float) -> float:
        return unit(salt, q, d) if unit(salt, q) < share else s

    return rescore


def derive(
    src: Path,
    dst: Path,
    score: Callable[[str, str, float], float] | None = None,
    trace: Callable[[str], str] | None = None,
) -> Path:
    """Copy output ``src`` to ``dst`` and rewrite committed scores and/or traces."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("exports"))
    store = Store(str(dst))
    for shard in sorted(commit.committed_shards(store)):
        marker = commit.read_marker(store, shard)
        attempt = layout.new_attempt_id()
        changes: dict[str, Any] = {"attempt": attempt}
        if score is not None:
            table = pq.read_table(io.BytesIO(commit.read_committed(store, marker, "scores")))
            qids = table.column("query_id").to_pylist()
            dids = table.column("doc_id").to_pylist()
            old = table.column("score").to_pylist()
            new = [s if s != s else score(q, d, s) for q, d, s in zip(qids, dids, old, strict=True)]
            table = table.set_column(
                table.schema.get_field_index("score"), "score", pa.array(new, pa.float64())
            )
            ranks = pa.array(ranks_within_query(qids, dids, new), pa.int32())
            table = table.set_column(table.schema.get_field_index("rank"), "rank", ranks)
            changes |= _write(store, layout.scores_path(shard, attempt), table, "scores")
        if trace is not None:
            table = pq.read_table(io.BytesIO(commit.read_committed(store, marker, "traces")))
            text = [None if t is None else trace(t) for t in table.column("reasoning").to_pylist()]
            table = table.set_column(
                table.schema.get_field_index("reasoning"), "reasoning", pa.array(text, pa.string())
            )
            changes |= _write(store, layout.traces_path(shard, attempt), table, "traces")
        for kind in ("scores", "traces"):  # one attempt names both files: copy the other
            if f"{kind}_file" not in changes:
                data = commit.read_committed(store, marker, kind)
                changes |= _put(store, layout.scores_path(shard, attempt) if kind == "scores"
                                else layout.traces_path(shard, attempt), data, kind)  # fmt: skip
        store.write_json(
            layout.marker_path(shard), dataclasses.replace(marker, **changes).to_dict()
        )
    if store.exists(commit.DIGEST):  # a cache of the old markers
        store.remove(commit.DIGEST)
    return dst


def _write(store: Store, rel: str, table: pa.Table, kind: str) -> dict[str, Any]:
    return _put(store, rel, parquet_bytes(table), kind)


def _put(store: Store, rel: str, data: bytes, kind: str) -> dict[str, Any]:
    """Create ``rel`` and the marker fields that name it (file, checksum, size)."""
    assert store.create_exclusive(rel, data)
    return {f"{kind}_file": rel, f"{kind}_sha256": sha256(data), f"{kind}_bytes": len(data)}


def drop_shards(src: Path, dst: Path, shards: list[str]) -> Path:
    """Copy ``src`` without the markers of ``shards`` (and without ``_SUCCESS.json``)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("exports"))
    store = Store(str(dst))
    for shard in shards:
        store.remove(layout.marker_path(shard))
    store.remove(layout.SUCCESS)
    if store.exists(commit.DIGEST):
        store.remove(commit.DIGEST)
    return dst
