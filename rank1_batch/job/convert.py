"""IR input formats converted to Parquet pairs: TREC / MS MARCO / JSON runs + text, HF data,
rank_llm requests.

``input.format: trec | msmarco-run | json-run | hf | rank-llm`` is turned into normalised
Parquet parts, ``OUTPUT/input/part-NNNNN.parquet`` (columns query_id, query, doc_id, passage,
title, a preset reason, and where known the line of the original file a row came from: a TREC
run's line, a ``rank-llm`` request's and the candidate's place in it), each written atomically,
then ``input/_converted.json`` (which also names the original input); prepare then reads the
folder as ordinary ``pairs`` input. Rows of the run whose query or document has no text become
``rejected/`` rows with reason ``missing_query`` / ``missing_doc``. The job's fingerprint
records the *original* files (names and sizes), not the converted ones.

Memory, by format:

* a run with a corpus (``trec``, ``msmarco-run``, ``json-run``) is a distributed join
  (:mod:`rank1_batch.job.convert_join`): the driver holds object references and one line count
  per byte range of the run, never text or rows; each Ray task holds one 64 MiB range of a file
  or one hash partition (a part's worth of pairs, about :data:`PART_ROWS`); the pieces between
  stages live in Ray's object store. Every query is whole in one part, the parts a pure
  function of the input files (which part: a hash of the query id);
* ``hf`` data is memory-mapped Arrow, written out part by part on the driver;
* a ``rank-llm`` file is rank_llm's request JSONL (``rank_llm.data.Request``: one query a line,
  ``{"query": {"text", "qid"}, "candidates": [{"docid", "score", "doc": {...}}]}``), read one
  line at a time on the driver, one part of pairs held; its candidates keep the file's order
  (rank_llm's first-stage ranking), and a candidate's passage is the first of ``doc``'s text
  fields rank_llm itself reads (:data:`RANK_LLM_TEXT`), its title ``doc.title``.

Text sources (``input.queries`` / ``input.corpus``):

* a BEIR folder as ``corpus``: ``corpus.jsonl`` ({_id, title, text}) and, unless
  ``queries`` is given, ``queries.jsonl`` ({_id, text});
* JSONL files of those shapes (``.jsonl``, optionally ``.gz``);
* MS MARCO TSVs: ``collection.tsv`` (``pid<TAB>text``, or ``pid<TAB>title<TAB>text``) and
  ``queries.*.tsv`` (``qid<TAB>text``).

An id given twice in a corpus or queries file: its last line wins.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.io.store import Store
from rank1_batch.job.convert_join import CONVERTED_SCHEMA, ROW_GROUP, join_run
from rank1_batch.job.inputs import (
    MISSING_DOC,
    PRESET_CANDIDATE,
    PRESET_LINE,
    PRESET_REASON,
)
from rank1_batch.job.run_files import FormatError, lines
from rank1_batch.job.spec import CONVERTED_FORMATS, Columns, InputSpec, JobSpec

CONVERTED = CONVERTED_FORMATS
CONVERTED_DIR = "input"
CONVERTED_MARKER = "input/_converted.json"
PART_ROWS = 500_000
RUN_FORMATS = ("trec", "msmarco-run", "json-run")

# The fields of a rank_llm candidate's ``doc`` that hold its text, in the order rank_llm's
# prompt builder tries them (rank_llm.rerank.inference_handler).
RANK_LLM_TEXT = ("text", "segment", "contents", "content", "body", "passage")


# -- text sources -----------------------------------------------------------------------------


def _is_jsonl(uri: str) -> bool:
    return uri.removesuffix(".gz").endswith((".jsonl", ".json"))


def text_sources(spec: InputSpec, storage: StorageSpec | None = None) -> tuple[str, str]:
    """(queries file, corpus file) from ``input.queries`` / ``input.corpus``."""
    if spec.corpus is None:
        raise FormatError(
            f"input.format {spec.format}: input.corpus is required (file or BEIR folder)"
        )
    corpus, queries = spec.corpus, spec.queries
    fs, path = filesystem(corpus, storage)
    if fs.isdir(path):
        queries = queries or posixpath.join(corpus.rstrip("/"), "queries.jsonl")
        corpus = posixpath.join(corpus.rstrip("/"), "corpus.jsonl")
    if queries is None:
        raise FormatError(f"input.format {spec.format}: input.queries is required")
    return queries, corpus


def source_listing(spec: InputSpec, storage: StorageSpec | None = None) -> list[dict[str, Any]]:
    """What the fingerprint records about a converted input: original names and sizes."""
    if spec.format == "hf":
        fs, path = filesystem(spec.path, storage)
        if not fs.exists(path) and not any(c in path for c in "*?["):
            return [{"path": spec.path, "hub": True, "split": spec.split}]  # a hub id
        files = fs.glob(path) if any(c in path for c in "*?[") else [path]
        if fs.isdir(path):
            files = fs.find(path)
        return [{"path": f, "size": int(fs.size(f) or 0)} for f in sorted(files)]
    out = []
    sources = () if spec.format == "rank-llm" else text_sources(spec, storage)
    for uri in (spec.path, *sources):
        fs, path = filesystem(uri, storage)
        if not fs.exists(path):
            raise FormatError(f"input {uri}: no such file")
        out.append({"path": uri, "size": int(fs.size(path) or 0)})
    return out


# -- conversion -------------------------------------------------------------------------------


def iter_run_pairs(
    spec: InputSpec, storage: StorageSpec | None = None, part_rows: int = PART_ROWS
) -> Iterator[pa.Table]:
    """A TREC or JSON run plus its text → its :data:`CONVERTED_SCHEMA` parts, in part order,
    through the same join as :func:`convert` (into a temporary folder read back: tests and
    tools, small runs)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rank1-convert-") as tmp:
        store = Store(tmp, storage)
        join_run(spec, store, storage, part_rows, *text_sources(spec, storage))
        for name in sorted(store.list(CONVERTED_DIR)):
            yield pq.read_table(posixpath.join(tmp, CONVERTED_DIR, name))


def _tables(queries: Iterable[list[tuple[Any, ...]]], chunk_rows: int) -> Iterator[pa.Table]:
    """:data:`CONVERTED_SCHEMA` rows, one query's at a time, as tables of whole queries of
    about ``chunk_rows`` rows (a table ends after the query that reaches it)."""
    cols: dict[str, list[Any]] = {name: [] for name in CONVERTED_SCHEMA.names}
    for block in queries:
        for row in block:
            for name, value in zip(CONVERTED_SCHEMA.names, row, strict=True):
                cols[name].append(value)
        if len(cols["query_id"]) >= chunk_rows:
            yield pa.table(cols, schema=CONVERTED_SCHEMA)
            cols = {name: [] for name in CONVERTED_SCHEMA.names}
    if cols["query_id"]:
        yield pa.table(cols, schema=CONVERTED_SCHEMA)


def rank_llm_pairs(
    spec: InputSpec, storage: StorageSpec | None = None, chunk_rows: int = 500_000
) -> Iterator[pa.Table]:
    """rank_llm request JSONL → :data:`CONVERTED_SCHEMA` tables of whole requests (at most
    about ``chunk_rows`` rows), each row with its request's line; a candidate without text is
    a ``missing_doc`` row, a query given on two lines is refused."""
    yield from _tables(_rank_llm_requests(spec, storage), chunk_rows)


def _rank_llm_requests(
    spec: InputSpec, storage: StorageSpec | None
) -> Iterator[list[tuple[Any, ...]]]:
    """Each request's :data:`CONVERTED_SCHEMA` rows, in file order."""
    seen: set[str] = set()
    for n, line in enumerate(lines(spec.path, storage), 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            qid, query = str(request["query"]["qid"]), request["query"]["text"]
            candidates = request["candidates"][: spec.top_k]
            docs = [(c["docid"], c.get("doc") or {}) for c in candidates]
            if not isinstance(query, str) or not all(isinstance(d, dict) for _, d in docs):
                raise TypeError("query.text must be a string and each doc an object")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(
                f"{spec.path}: line {n}: expected a rank_llm request {{query: {{text, qid}}, "
                f"candidates: [{{docid, score, doc}}]}} ({type(exc).__name__}: {exc})"
            ) from None
        if qid in seen:
            raise FormatError(f"{spec.path}: line {n}: query {qid!r} is given twice")
        seen.add(qid)
        out = []
        for position, (docid, doc) in enumerate(docs):
            passage = next((doc[k] for k in RANK_LLM_TEXT if isinstance(doc.get(k), str)), None)
            title = doc.get("title") if isinstance(doc.get("title"), str) else None
            reason = MISSING_DOC if passage is None and docid is not None else None
            did = None if docid is None else str(docid)
            out.append((qid, query, did, passage, title or None, reason, n, position))
        yield out


def _load_hf(spec: InputSpec, storage: StorageSpec | None) -> pa.Table:
    import datasets

    fs, path = filesystem(spec.path, storage)
    is_local = fs.exists(path) or any(c in path for c in "*?[")
    if (
        is_local
        and fs.isdir(path)
        and (
            fs.exists(posixpath.join(path, "state.json"))
            or fs.exists(posixpath.join(path, "dataset_dict.json"))
        )
    ):
        ds = datasets.load_from_disk(spec.path)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[spec.split]
    elif is_local and not fs.isdir(path):
        builder = "json" if _is_jsonl(path) else "csv" if path.endswith(".csv") else "parquet"
        ds = datasets.load_dataset(builder, data_files=spec.path, split="train")
    else:  # a folder with data files / a dataset card, or a hub id
        ds = datasets.load_dataset(spec.path, spec.hf_config, split=spec.split)
    table: pa.Table = ds.with_format("arrow")[:]
    return table


def hf_pairs(spec: InputSpec, storage: StorageSpec | None = None) -> pa.Table:
    """A ``datasets`` dataset with pair columns named by ``input.columns``."""
    table = _load_hf(spec, storage)
    cols = spec.columns
    out: dict[str, pa.Array] = {}
    for target, source in (
        ("query_id", cols.query_id),
        ("query", cols.query),
        ("doc_id", cols.doc_id),
        ("passage", cols.passage),
        ("title", cols.title),
    ):
        if source is None:
            out[target] = pa.nulls(table.num_rows, pa.string())
            continue
        if source not in table.column_names:
            raise FormatError(
                f"input {spec.path}: missing column {source!r} (columns: "
                f"{', '.join(table.column_names)}); map it under input.columns"
            )
        try:
            out[target] = table.column(source).cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise FormatError(f"input {spec.path}: column {source!r} is not text or id") from None
    out[PRESET_REASON] = pa.nulls(table.num_rows, pa.string())
    out[PRESET_LINE] = pa.nulls(table.num_rows, pa.int64())
    out[PRESET_CANDIDATE] = pa.nulls(table.num_rows, pa.int32())
    return pa.table(out, schema=CONVERTED_SCHEMA)


def converted_spec(spec: JobSpec, store: Store) -> InputSpec:
    """The ``pairs`` input spec that reads the converted files."""
    path = store.uri.rstrip("/") + "/" + CONVERTED_DIR
    return InputSpec(path=path, format="pairs", columns=Columns(title="title"))


def convert(spec: JobSpec, store: Store, part_rows: int = PART_ROWS) -> InputSpec:
    """Write ``OUTPUT/input/part-NNNNN.parquet`` files once, then ``input/_converted.json``;
    return the pairs spec reading them.

    A run with a corpus: :func:`~rank1_batch.job.convert_join.join_run` (Ray tasks when Ray
    is initialised; parts of about ``part_rows`` pairs, a hash of the query id choosing the
    part, empty partitions writing none). Otherwise each part (at most about ``part_rows``
    pairs) is written atomically as soon as it is full. A crash before the marker redoes the
    conversion (it rewrites the same parts).
    """
    if store.exists(CONVERTED_MARKER):
        return converted_spec(spec, store)
    if spec.input.format in RUN_FORMATS:
        parts, rows = join_run(
            spec.input, store, spec.storage, part_rows, *text_sources(spec.input, spec.storage)
        )
        if rows == 0:
            raise FormatError(f"input {spec.input.path}: no pairs")
        store.write_json(
            CONVERTED_MARKER, {"parts": parts, "rows": rows, "source": spec.input.path}
        )
        return converted_spec(spec, store)
    if spec.input.format == "hf":
        table = hf_pairs(spec.input, spec.storage)  # memory-mapped Arrow: sliced, not copied
        chunks: Iterator[pa.Table] = (
            table.slice(i, part_rows) for i in range(0, table.num_rows, part_rows)
        )
    else:
        chunks = rank_llm_pairs(spec.input, spec.storage, part_rows)
    rows = parts = 0
    for chunk in chunks:
        sink = io.BytesIO()
        pq.write_table(chunk, sink, compression="zstd", row_group_size=ROW_GROUP)
        store.write_atomic(f"{CONVERTED_DIR}/part-{parts:05d}.parquet", sink.getvalue())
        rows += chunk.num_rows
        parts += 1
    if rows == 0:
        raise FormatError(f"input {spec.input.path}: no pairs")
    store.write_json(CONVERTED_MARKER, {"parts": parts, "rows": rows, "source": spec.input.path})
    return converted_spec(spec, store)
