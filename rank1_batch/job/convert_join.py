"""Run ⋈ queries ⋈ corpus as a hash-partitioned join on Ray tasks: the conversion of
``trec`` / ``msmarco-run`` / ``json-run`` inputs (:func:`join_run`).

Stages (each a Ray task per piece when Ray is initialised, else the same functions in this
process, one after another: tests and tools):

1. **read** — the run, the corpus and the queries are cut into byte ranges of about
   :data:`RANGE_BYTES` (a compressed file is one range), each parsed with pyarrow on its own
   (``pyarrow.csv`` reading each line as one string column, then ``utf8_split_whitespace`` /
   ``split_pattern``; ``pyarrow.json`` for JSONL) and split by a stable hash: run rows by
   query into ``P`` pieces, corpus rows by document into ``D``, queries by query into ``P``;
2. **top-k** (per query partition) — the run's rows get their file line (range offsets come
   from the read's line counts), are ordered by the query's first line, score descending,
   ties in file order, cut at ``top_k``, and split by document into ``D`` pieces;
3. **documents** (per document partition) — the run pieces joined with the corpus pieces
   (``pyarrow.Table.join``, last occurrence of a document id wins, as a dict would) and split
   by query into ``P`` pieces;
4. **parts** (per query partition) — joined with the queries, given their ``missing_query`` /
   ``missing_doc`` reasons, ordered (first line of the query, then its top-k order) and written
   as ``part-NNNNN.parquet``: every query whole in one part, the part a pure function of the
   input files (``P`` and ``D`` come from file sizes, never from Ray's block boundaries).

Memory: the driver holds object references and per-range line counts, never text or rows;
a task holds one range or one partition (pieces live in Ray's object store, which spills to
disk). Why plain tasks with ``num_returns`` rather than ``ray.data.Dataset.join``: the
run's line numbers need every range's line count before the top-k stage (Ray Data's readers
do not expose them), and the parts must not depend on block boundaries; tasks returning
hash pieces give both with a fixed, known memory bound per task.
"""

from __future__ import annotations

import io
import math
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.job.convert_read import read_json_run, read_run, read_text, split_by
from rank1_batch.job.inputs import (
    MISSING_DOC,
    MISSING_QUERY,
    PRESET_CANDIDATE,
    PRESET_LINE,
    PRESET_REASON,
)
from rank1_batch.job.run_files import FormatError, trec_check

ROW_GROUP = 20_000
CONVERTED_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("doc_id", pa.string()),
        ("passage", pa.string()),
        ("title", pa.string()),
        (PRESET_REASON, pa.string()),
        (PRESET_LINE, pa.int64()),
        (PRESET_CANDIDATE, pa.int32()),
    ]
)

RANGE_BYTES = 64 << 20
RUN_LINE_BYTES = 40  # about a TREC line of MS MARCO's BM25 run: sizes P from the run's bytes
DOC_PART_BYTES = 256 << 20
TASK_CPUS = 0.5
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd")


def byte_ranges(uri: str, storage: StorageSpec | None) -> tuple[int, list[tuple[int, int]]]:
    """(file size, ranges); a compressed file is one range (-1: to the end, decompressed)."""
    fs, path = filesystem(uri, storage)
    if not fs.exists(path):
        raise FormatError(f"input {uri}: no such file")
    size = int(fs.size(path) or 0)
    if path.endswith(COMPRESSED) or size == 0:
        return size, [(0, -1)]
    return size, [(s, min(s + RANGE_BYTES, size)) for s in range(0, size, RANGE_BYTES)]


# -- stages 2-4 -------------------------------------------------------------------------------


def top_k(offsets: list[int], k: int | None, d: int, *pieces: pa.Table) -> list[Any]:
    """One query partition of the run (a piece per range, in range order) → [meta, D pieces]
    of its top-k rows with ``first`` (the query's first line) and ``pos`` (its place)."""
    tables = [
        t.set_column(3, "line", pc.add(t.column("line"), off))
        for t, off in zip(pieces, offsets, strict=True)
    ]
    run = pa.concat_tables(tables)
    first = run.group_by("query_id").aggregate([("line", "min")])
    at = pc.index_in(run.column("query_id"), value_set=first.column("query_id"))
    run = run.append_column("first", first.column("line_min").take(at))
    run = run.take(
        pc.sort_indices(
            run, [("first", "ascending"), ("score", "descending"), ("line", "ascending")]
        )
    )
    firsts = run.column("first").to_numpy()
    start = (
        np.concatenate([[0], np.nonzero(firsts[1:] != firsts[:-1])[0] + 1])
        if len(firsts)
        else np.array([], np.int64)
    )
    pos = np.arange(len(firsts)) - np.repeat(start, np.diff(np.append(start, len(firsts))))
    run = run.append_column("pos", pa.array(pos.astype(np.int64)))
    if k is not None:
        run = run.filter(pa.array(pos < k))
    return [{"rows": run.num_rows}, *split_by(run.drop_columns(["score"]), "doc_id", d)]


def lookup(keys: pa.ChunkedArray, ids: pa.ChunkedArray) -> pa.Array:
    """Index into ``ids`` of each key's *last* occurrence (null: not there), what a dict built
    line by line keeps; ``pc.index_in`` finds the first, so it searches the ids reversed. A
    hash lookup on the ids alone: the text is then taken once, not carried through a join."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(ids)
    reverse = ids.take(pa.array(np.arange(n - 1, -1, -1, dtype=np.int64)))
    return pc.subtract(
        pa.scalar(n - 1, pa.int64()), pc.cast(pc.index_in(keys, value_set=reverse), pa.int64())
    )


def join_docs(n_run: int, p: int, *pieces: pa.Table) -> list[Any]:
    """One document partition: its run pieces (the first ``n_run``) given the title and
    passage of their document from its corpus pieces (file order: the last line of an id
    wins) → [meta, P pieces] split by query."""
    run, corpus = pa.concat_tables(pieces[:n_run]), pa.concat_tables(pieces[n_run:])
    at = lookup(run.column("doc_id"), corpus.column("id"))
    joined = run.append_column("title", corpus.column("title").take(at))
    joined = joined.append_column("passage", corpus.column("text").take(at))
    return [{"rows": joined.num_rows}, *split_by(joined, "query_id", p)]


def write_part(store: Any, name: str, lines: bool, n_run: int, *pieces: pa.Table) -> int:
    """One query partition: joined rows (the first ``n_run`` pieces) with their query text,
    reasons, in order, written as the part ``name``; returns its rows (0: nothing written)."""
    rows = pa.concat_tables(pieces[:n_run])
    if rows.num_rows == 0:
        return 0
    queries = pa.concat_tables(pieces[n_run:])
    at = lookup(rows.column("query_id"), queries.column("id"))
    rows = rows.append_column("query", queries.column("text").take(at))
    rows = rows.take(pc.sort_indices(rows, [("first", "ascending"), ("pos", "ascending")]))
    reason = pc.if_else(
        pc.is_null(rows.column("query")),
        pa.scalar(MISSING_QUERY),
        pc.if_else(
            pc.is_null(rows.column("passage")), pa.scalar(MISSING_DOC), pa.scalar(None, pa.string())
        ),
    )
    n = rows.num_rows
    table = pa.table(
        [
            rows.column("query_id"),
            rows.column("query"),
            rows.column("doc_id"),
            rows.column("passage"),
            rows.column("title"),
            reason,
            rows.column("line") if lines else pa.nulls(n, pa.int64()),
            pa.nulls(n, pa.int32()),
        ],
        schema=CONVERTED_SCHEMA,
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP)
    store.write_atomic(name, sink.getvalue())
    return n


# -- the driver -------------------------------------------------------------------------------


class Tasks:
    """Ray tasks when Ray is initialised, else direct calls (the same functions). Also the
    reuse build's (:func:`rank1_batch.pipeline.reuse_ready.build_reuse`)."""

    def __init__(self) -> None:
        import ray

        self.ray = ray if ray.is_initialized() else None

    def call(self, fn: Callable[..., Any], returns: int, *args: Any) -> Any:
        if self.ray is None:
            return fn(*args)
        remote = self.ray.remote(num_cpus=TASK_CPUS, num_returns=returns, max_retries=3)(fn)
        return remote.remote(*args)

    def get(self, refs: Any) -> Any:
        return refs if self.ray is None else self.ray.get(refs)


def _raise_first(
    metas: Sequence[dict[str, Any]], offsets: list[int], on_line: Callable[[int, str], None]
) -> None:
    for meta, off in zip(metas, offsets, strict=True):
        if isinstance(meta["error"], str):
            raise FormatError(meta["error"])
        if meta["error"] is not None:
            local, text = meta["error"]
            on_line(off + local, text)


def _offsets(metas: Sequence[dict[str, Any]]) -> list[int]:
    return [0, *np.cumsum([m["lines"] for m in metas[:-1]]).tolist()] if metas else []


def join_run(
    spec: Any,
    store: Any,
    storage: StorageSpec | None,
    part_rows: int,
    queries_uri: str,
    corpus_uri: str,
) -> tuple[int, int]:
    """Convert the run ``spec`` (an :class:`InputSpec`) into ``store``'s ``input/`` parts;
    returns (parts written, rows)."""
    ranks = spec.format == "msmarco-run"
    runner = Tasks()
    run_size, run_ranges = byte_ranges(spec.path, storage)
    p = max(1, math.ceil(run_size / (part_rows * RUN_LINE_BYTES)))
    corpus_size, corpus_ranges = byte_ranges(corpus_uri, storage)
    d = max(1, math.ceil(corpus_size / DOC_PART_BYTES))
    if spec.format == "json-run":
        run_out = [runner.call(read_json_run, p + 1, spec.path, storage, p)]
    else:
        run_out = [
            runner.call(read_run, p + 1, spec.path, storage, s, e, ranks, p) for s, e in run_ranges
        ]
    text_out = [
        runner.call(read_text, d + 1, corpus_uri, storage, s, e, "corpus", d)
        for s, e in corpus_ranges
    ]
    _, query_ranges = byte_ranges(queries_uri, storage)
    query_out = [
        runner.call(read_text, p + 1, queries_uri, storage, s, e, "queries", p)
        for s, e in query_ranges
    ]
    run_metas = runner.get([o[0] for o in run_out])
    offsets = _offsets(run_metas)

    def bad_run_line(n: int, text: str) -> None:
        trec_check(text, n, spec.path, ranks)

    _raise_first(run_metas, offsets, bad_run_line)
    for uri, outs, kind in ((corpus_uri, text_out, "corpus"), (queries_uri, query_out, "queries")):
        metas = runner.get([o[0] for o in outs])
        expect = "pid<TAB>text or pid<TAB>title<TAB>text" if kind == "corpus" else "qid<TAB>text"

        def bad_text_line(n: int, _: str, uri: str = uri, expect: str = expect) -> None:
            raise FormatError(f"{uri}: line {n}: expected {expect}")

        _raise_first(metas, _offsets(metas), bad_text_line)
    tops = [
        runner.call(top_k, d + 1, offsets, spec.top_k, d, *[o[1 + q] for o in run_out])
        for q in range(p)
    ]
    joined = [
        runner.call(
            join_docs, p + 1, p, p, *[t[1 + j] for t in tops], *[o[1 + j] for o in text_out]
        )
        for j in range(d)
    ]
    del run_out, text_out, tops
    lines = spec.format != "json-run"
    names = [posixpath.join("input", f"part-{q:05d}.parquet") for q in range(p)]
    written = [
        runner.call(
            write_part,
            1,
            store,
            names[q],
            lines,
            d,
            *[j[1 + q] for j in joined],
            *[o[1 + q] for o in query_out],
        )
        for q in range(p)
    ]
    counts = runner.get(written)
    return sum(1 for c in counts if c), int(sum(counts))
