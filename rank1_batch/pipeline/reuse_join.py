"""The reuse join, key first: match on result keys alone, then fetch only the matched rows.

Phase 1 (:func:`target_rows`, :func:`source_keys`, :func:`join_bucket`): each pending shard
gives ``(key, shard, query_id, doc_id)`` per pair; each committed source shard gives
``(key, source, source_shard, row)`` per reusable pair, ``row`` its position in the source's
``pairs/`` file. Every usable source has the job's key settings (:func:`reuse.usable_sources`),
so the key joined on is the text key (:mod:`rank1_batch.core.text_key`): read from the
``text_key`` column of ``pairs/`` (16 bytes a pair), or, for a shard prepared before that
column existed, computed from its text columns (``query``, ``passage``, ``title``,
``instruction``), as :func:`pair_keys` does on both sides. A source shard's scores and traces
are not read, unless its marker counts error rows (which are never reused) or a row count
other than its pairs', and then only its scores' ids and status. Both sides are split by
key hash into pieces (:func:`target_pieces`, :func:`source_pieces`) and joined a piece of
buckets at a time (:func:`join_pieces`): each target pair gets the first-listed source's row
of its key (earlier source, then earlier shard, then earlier row).

Phase 2 (:func:`fetch_pieces`, :func:`fetch_rows`): the matches are grouped by source shard;
each source shard with matches reads its committed scores and traces (checksums verified
against the marker, so each is read whole: a committed file is never decoded unverified) and
its pairs' ids, and takes the matched rows: at their ``pairs/`` position, where the ids there
agree (the commit writes both files in pairs order), else by a join on the ids. A source
shard without matches is never read past its pairs' keys. A committed file that is missing
or fails its checksum here is logged and its matches dropped: those pairs are scored, not
copied from a later source.

The matched rows are then grouped by target shard and written (:func:`write_pieces`,
:func:`write_shard`). :func:`rank1_batch.pipeline.reuse_ready.build_reuse` runs these steps
as Ray tasks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core import text_key
from rank1_batch.core.rows import TextSettings
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import StorageSpec, parquet_bytes, table_from_bytes
from rank1_batch.io.store import Store
from rank1_batch.job.convert_read import split_at, split_by
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import reuse

log = logging.getLogger(__name__)

BUCKETS = 64
TEXTS = ["query", "passage", "title", "instruction"]  # what a text key is composed of
ID_COLUMNS = ["query_id", "doc_id"]
# A matched pair: its target shard and ids, and where its result lies (source, shard, row).
POINTER = pa.schema(
    [*reuse.IDS, ("source", pa.string()), ("source_shard", pa.string()), ("row", pa.int64())]
)
# Both sides of the key join in one schema (a source row has no target ids, a target no
# pointer): keys and pointers only, no result payload.
JOIN_SCHEMA = pa.schema(
    [("key", text_key.TYPE), ("bucket", pa.int32()), ("side", pa.string()),
     ("priority", pa.int64()), *POINTER]
)  # fmt: skip


def _bucket(keys: pa.Array) -> pa.Array:
    """A key's bucket: its first byte (keys are hashes), modulo :data:`BUCKETS`."""
    if not len(keys):
        return pa.array([], pa.int32())
    w = text_key.WIDTH
    raw = np.frombuffer(keys.buffers()[1], np.uint8, len(keys) * w, keys.offset * w)
    return pa.array(raw[::w].astype(np.int32) % BUCKETS)


def pair_table(
    store: Store, shard: str, reasoning: TextSettings, columns: tuple[str, ...] = ()
) -> pa.Table:
    """``pairs/<shard>``'s text keys (column ``text_key``) and its ``columns``, in one read:
    its stored ``text_key`` column, or for a shard prepared before that column existed, the
    keys of its texts composed under ``reasoning``."""
    rel = layout.pairs_path(shard)
    try:
        stored = store.read_parquet(rel, columns=[text_key.COLUMN, *columns])
    except pa.ArrowInvalid:  # a local file without the column (remote reads leave it out)
        stored = None
    if stored is not None and text_key.COLUMN in stored.column_names:
        return stored.select([text_key.COLUMN, *columns])
    texts = store.read_parquet(rel, columns=[*TEXTS, *columns])
    keys = text_key.text_keys(texts, reasoning)
    return texts.select(list(columns)).add_column(0, text_key.COLUMN, keys)


def pair_keys(store: Store, shard: str, reasoning: TextSettings) -> pa.Array:
    """Text keys of ``pairs/<shard>`` (:func:`pair_table`)."""
    return pair_table(store, shard, reasoning).column(text_key.COLUMN).combine_chunks()


def _side(keys: pa.Array, side: str, cols: dict[str, Any]) -> pa.Table:
    n = len(keys)
    full = {f.name: pa.nulls(n, f.type) for f in JOIN_SCHEMA}
    full.update(key=keys, bucket=_bucket(keys), side=[side] * n, **cols)
    return pa.table(full, schema=JOIN_SCHEMA)


def target_rows(batch: pa.Table, *, spec: JobSpec, store: Store) -> pa.Table:
    """Pending shards -> ``(key, shard, query_id, doc_id)`` of each of their pairs."""
    parts = []
    for shard in batch.column("shard").to_pylist():
        pairs = pair_table(store, shard, spec.reasoning, tuple(ID_COLUMNS))
        keys = pairs.column(text_key.COLUMN).combine_chunks()
        cols = {"shard": [shard] * pairs.num_rows, **{c: pairs.column(c) for c in ID_COLUMNS}}
        parts.append(_side(keys, "target", cols))
    return pa.concat_tables(parts) if parts else JOIN_SCHEMA.empty_table()


def _reusable_rows(src: Store, shard: str, marker: commit.Marker, n: int) -> pa.Array | None:
    """Positions in ``pairs/<shard>`` of the rows that may be copied (no error rows, a row in
    the scores), or None to skip the shard. Reads the scores' ids and status only when the
    marker does not already say that every pair has a non-error row."""
    if marker.stats.error == 0 and marker.rows == n:
        return pa.array(range(n), pa.int64())
    try:
        scores = commit.committed_table(src, shard, "scores", [*ID_COLUMNS, "status"])
    except commit.CommitError as exc:
        log.warning("reuse: %s %s: %s; skipped", src.uri, shard, exc)
        return None
    ids = src.read_parquet(layout.pairs_path(shard), columns=ID_COLUMNS)
    ids = ids.append_column("row", pa.array(range(n), pa.int64()))
    ok = ids.join(scores, ID_COLUMNS, join_type="inner").filter(pc.field("status") != "error")
    row = ok.column("row")
    return row.take(pc.sort_indices(row)).combine_chunks()


def source_keys(batch: pa.Table, *, storage: StorageSpec | None) -> pa.Table:
    """Committed shards of earlier outputs -> ``(key, source, source_shard, row)`` of each
    reusable pair (phase 1: the pairs' keys, no scores payload, no traces)."""
    parts = []
    for uri, shard, priority in zip(
        *(batch.column(c).to_pylist() for c in ("uri", "shard", "priority")), strict=True
    ):
        src = Store(uri, storage)
        marker = commit.read_marker(src, shard)
        keys = pair_keys(src, shard, reuse._source_spec(uri, storage).reasoning)
        rows = _reusable_rows(src, shard, marker, len(keys))
        if rows is None or not len(rows):
            continue
        keys = keys.take(rows)
        n = len(keys)
        cols = {"priority": [priority] * n, "source": [uri] * n, "source_shard": [shard] * n}
        parts.append(_side(keys, "source", {**cols, "row": rows}))
    return pa.concat_tables(parts) if parts else JOIN_SCHEMA.empty_table()


def join_bucket(group: pa.Table) -> pa.Table:
    """The keys of one or more buckets (:func:`join_pieces` passes a piece of them): each
    target pair with the pointer of the first-listed source row of its key (lowest priority,
    then lowest row)."""
    targets = group.filter(pc.field("side") == "target").select(["key", *reuse.IDS.names])
    sources = group.filter(pc.field("side") == "source")
    if not targets.num_rows or not sources.num_rows:
        return POINTER.empty_table()
    # Only source rows whose key a target holds are sorted (a job matching 5% sorts 5%).
    sources = sources.filter(pc.is_in(sources.column("key"), targets.column("key")))
    if not sources.num_rows:
        return POINTER.empty_table()
    order = [("key", "ascending"), ("priority", "ascending"), ("row", "ascending")]
    sources = sources.take(pc.sort_indices(sources, order))
    keys = sources.column("key").combine_chunks()
    first = pa.concat_arrays(
        [pa.array([True]), pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))]
    )
    sources = sources.filter(first).select(["key", "source", "source_shard", "row"])
    matched = targets.join(sources, "key", join_type="inner")
    return matched.select(POINTER.names).cast(POINTER)


def fetch_rows(group: pa.Table, *, storage: StorageSpec | None) -> pa.Table:
    """Phase 2, one source shard's matches -> the matched rows with their results and traces
    (:data:`reuse.MATCH_SCHEMA`). Reads the shard's committed scores and traces (verified,
    whole) and its pairs' ids; nothing else."""
    uri, shard = group.column("source")[0].as_py(), group.column("source_shard")[0].as_py()
    src = Store(uri, storage)
    marker = commit.read_marker(src, shard)
    try:
        scores_data = commit.read_committed(src, marker, "scores")
        traces_data = commit.read_committed(src, marker, "traces")
    except commit.CommitError as exc:
        log.warning("reuse: %s %s: %s; its %d matches are scored", uri, shard, exc, len(group))
        return reuse.MATCH_SCHEMA.empty_table()
    scores = table_from_bytes(scores_data, columns=[*ID_COLUMNS, *reuse.RESULT_COLUMNS])
    traces = table_from_bytes(traces_data, columns=[*ID_COLUMNS, "reasoning", "finish_reason"])
    ids = src.read_parquet(layout.pairs_path(shard), columns=ID_COLUMNS).take(group["row"])
    rows = _by_position(group, ids, scores, traces)
    if rows is None:
        rows = _by_ids(group, ids, scores, traces)
    rows = rows.filter(pc.not_equal(rows["status"], "error"))  # not an Acero plan per shard
    rows = rows.append_column("reused_from", pa.array([uri] * rows.num_rows, pa.string()))
    return rows.select(reuse.MATCH_SCHEMA.names).cast(reuse.MATCH_SCHEMA)


def _by_position(
    group: pa.Table, ids: pa.Table, scores: pa.Table, traces: pa.Table
) -> pa.Table | None:
    """The matched rows taken at their ``row`` in the scores and traces, which the commit
    writes in ``pairs/`` order; None unless every row taken has its pair's ids (then
    :func:`_by_ids`). The id joins it spares were 0.9 s of the fetch's 4.4 s (a 1M-pair build
    matching every 20th pair, in one process; 3.7 s with this)."""
    at = group["row"]
    if not len(at) or pc.max(at).as_py() >= min(scores.num_rows, traces.num_rows):
        return None
    picked = [t.take(at) for t in (scores, traces)]
    for t in picked:
        for c in ID_COLUMNS:
            if not pc.all(pc.equal(t[c], ids[c]), skip_nulls=False).as_py():  # a null: no
                return None
    out = group.select(reuse.IDS.names)
    for t in picked:
        for name in t.column_names[len(ID_COLUMNS) :]:
            out = out.append_column(name, t[name])
    return out


def _by_ids(group: pa.Table, ids: pa.Table, scores: pa.Table, traces: pa.Table) -> pa.Table:
    """The matched rows found by their pair's ids in the scores and traces (a join)."""
    src_ids = ["src_query_id", "src_doc_id"]
    wanted = group.select(reuse.IDS.names).append_column(src_ids[0], ids["query_id"])
    wanted = wanted.append_column(src_ids[1], ids["doc_id"])
    rename = {"query_id": src_ids[0], "doc_id": src_ids[1]}
    return wanted.join(scores.rename_columns(rename), src_ids, join_type="inner").join(
        traces.rename_columns(rename), src_ids, join_type="inner"
    )


# -- the build's tasks: each takes its pieces and returns (rows, *pieces for the next step) --
def _split(table: pa.Table, key: str, n: int) -> tuple[Any, ...]:
    """(rows, piece 0, ..., piece n-1) of ``table`` by a stable hash of ``key``."""
    return (table.num_rows, *split_by(table, key, n))


def _groups(table: pa.Table, values: pa.Array | pa.ChunkedArray) -> list[pa.Table]:
    """``table``'s rows grouped by ``values`` (one table a distinct value)."""
    if not table.num_rows:
        return []
    coded = pc.dictionary_encode(values)
    coded = coded.combine_chunks() if isinstance(coded, pa.ChunkedArray) else coded
    return split_at(table, coded.indices.to_numpy(zero_copy_only=False), len(coded.dictionary))


def _bucket_split(rows: pa.Table, n: int) -> tuple[Any, ...]:
    slots = rows.column("bucket").to_numpy() % n
    return (rows.num_rows, *split_at(rows, slots, n))


def target_pieces(shards: list[str], n: int, spec: JobSpec, store: Store) -> tuple[Any, ...]:
    """Phase 1, target side: the keys of ``shards``' pairs, in ``n`` pieces by key bucket."""
    return _bucket_split(target_rows(pa.table({"shard": shards}), spec=spec, store=store), n)


def source_pieces(
    items: list[dict[str, Any]], n: int, storage: StorageSpec | None
) -> tuple[Any, ...]:
    """Phase 1, source side: ``items``' (uri, shard, priority) keys and pointers, in ``n``
    pieces by key bucket."""
    return _bucket_split(source_keys(pa.Table.from_pylist(items), storage=storage), n)


def join_pieces(n: int, *pieces: pa.Table) -> tuple[Any, ...]:
    """The key join of one set of buckets (:func:`join_bucket`); the matches in ``n`` pieces
    by source shard."""
    matched = join_bucket(pa.concat_tables([JOIN_SCHEMA.empty_table(), *pieces]))
    return _split(matched, "source_shard", n)


def fetch_pieces(n: int, storage: StorageSpec | None, *pieces: pa.Table) -> tuple[Any, ...]:
    """Phase 2 for the source shards of these pieces (:func:`fetch_rows`, one source shard at
    a time); the matched rows in ``n`` pieces by target shard."""
    pointers = pa.concat_tables([POINTER.empty_table(), *pieces])
    by_shard = pc.binary_join_element_wise(pointers["source"], pointers["source_shard"], "\0")
    rows = pa.concat_tables(
        [reuse.MATCH_SCHEMA.empty_table()]
        + [fetch_rows(g, storage=storage) for g in _groups(pointers, by_shard)]
    )
    return _split(rows, "shard", n)


def write_pieces(store: Store, *pieces: pa.Table) -> pa.Table:
    """The matched rows of these pieces written, one target shard at a time
    (:func:`write_shard`); returns (shard, rows) of each."""
    rows = pa.concat_tables([reuse.MATCH_SCHEMA.empty_table(), *pieces])
    written = [write_shard(g, store=store) for g in _groups(rows, rows["shard"])]
    return pa.concat_tables(written) if written else pa.table({"shard": [], "rows": []})


def write_shard(group: pa.Table, *, store: Store) -> pa.Table:
    """One target shard's matched rows -> ``reuse/<shard>.parquet``, in (query_id, doc_id)
    order."""
    shard = group.column("shard")[0].as_py()
    rows = group.take(pc.sort_indices(group, [("query_id", "ascending"), ("doc_id", "ascending")]))
    store.write_atomic(reuse.reuse_path(shard), parquet_bytes(rows.drop_columns(["shard"])))
    return pa.table({"shard": [shard], "rows": [rows.num_rows]})
