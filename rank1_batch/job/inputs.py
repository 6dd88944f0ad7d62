"""Reading user input: listing files, checking schemas, normalising row groups to pairs.

Input files are Parquet, CSV/TSV or JSON Lines (``input.file_type``, detected from the
extension by default): a Parquet row group, or a whole text file, is one unit of reading.
Text files are read with the same column checks and reason codes; CSV fields are read as
strings, and an empty CSV field is null (so an empty id or text is rejected, as in Parquet).

Everything here is checked before any model is loaded: an unreadable file or a missing or
mistyped column stops the job with a message naming the file and the column. Row-level
problems (null ids, empty text) are not errors: those rows get a reason code and go to
``rejected/``, so every input row is accounted for.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.job.sources import empty_input, text_error
from rank1_batch.job.spec import InputSpec

# Reason codes for rejected rows.
NULL_QUERY_ID = "null_query_id"
NULL_DOC_ID = "null_doc_id"
EMPTY_QUERY = "empty_query"
EMPTY_PASSAGE = "empty_passage"
NO_CANDIDATES = "no_candidates"
MISSING_QUERY = "missing_query"
MISSING_DOC = "missing_doc"
# A column written by rank1_batch.job.convert when it converts a run + corpus to pairs: a reason
# decided at conversion (missing_query, missing_doc) that takes precedence over the checks here.
PRESET_REASON = "_rank1_reason"
# Written beside it: the line of the original file a converted row came from (a TREC run's, a
# rank-llm request's) and, for a rank-llm candidate, its 0-based position in the request.
PRESET_LINE = "_rank1_line"
PRESET_CANDIDATE = "_rank1_candidate"

NORMALISED = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("query", pa.string()),
        ("passage", pa.string()),
        ("title", pa.string()),
        ("instruction", pa.string()),
        ("input_order", pa.int64()),
        ("reason", pa.string()),
        # where the row came from (rank1_batch.job.sources): never written to pairs files
        ("source_row", pa.int64()),
        ("source_line", pa.int64()),
        ("candidate", pa.int32()),
    ]
)


class InputError(ValueError):
    """The input cannot be used as given (the message names the file and column)."""


@dataclass(frozen=True)
class InputFile:
    path: str  # protocol-qualified where remote
    size: int
    row_groups: tuple[int, ...]

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


@dataclass(frozen=True)
class Unit:
    """One row group of one file: the unit of parallel reading. ``ordinal`` numbers units in
    input order, so ``(ordinal << 32) | position`` is a stable, unique ``input_order`` key for
    every normalised row (a candidate's position counts within its exploded row group)."""

    file: str
    row_group: int
    ordinal: int


EXTENSIONS = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv", ".csv.gz"),
    "tsv": (".tsv", ".tsv.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"),
}


def file_type(path: str, declared: str = "auto") -> str:
    """``parquet``, ``csv``, ``tsv`` or ``jsonl``: as declared, else from the extension
    (anything unrecognised is read as Parquet)."""
    if declared != "auto":
        return declared
    name = path.lower()
    for kind, exts in EXTENSIONS.items():
        if name.endswith(exts):
            return kind
    return "parquet"


def list_input_files(
    uri: str, storage: StorageSpec | None = None, declared: str = "auto"
) -> list[str]:
    """Input files at ``uri``: a file, a folder (searched recursively for the extensions of
    ``declared``, or of every supported type) or a glob; sorted."""
    fs, path = filesystem(uri, storage)
    exts = EXTENSIONS[declared] if declared != "auto" else sum(EXTENSIONS.values(), ())
    if any(c in path for c in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if p.lower().endswith(exts)]
    elif fs.exists(path):
        found = [path]
    else:
        raise InputError(
            f"input.path {uri}: no such file or folder"
            + ("" if "://" in uri or os.path.isabs(uri) else f" (relative to {os.getcwd()})")
        )
    found = sorted(p for p in found if not posixpath.basename(p).startswith((".", "_")))
    if not found:
        raise InputError(f"input.path {uri}: no input files found ({', '.join(exts)})")
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return [p if proto in ("file", "local") else f"{proto}://{p}" for p in found]


def _open_parquet(path: str, storage: StorageSpec | None) -> pq.ParquetFile:
    fs, bare = filesystem(path, storage)
    try:
        return pq.ParquetFile(fs.open(bare, "rb"))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"input file {path}: not a readable Parquet file ({exc})") from None


def _csv_options(path: str, spec: InputSpec) -> dict[str, Any]:
    import pyarrow.csv as pcsv

    text_cols = [c for c in spec.columns.model_dump().values() if c]
    delimiter = "\t" if file_type(path, spec.file_type) == "tsv" else ","
    return {
        "parse_options": pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
        "convert_options": pcsv.ConvertOptions(
            column_types=dict.fromkeys(text_cols, pa.string()), strings_can_be_null=True
        ),
    }


def _open_text(path: str, spec: InputSpec, storage: StorageSpec | None) -> Any:
    """A streaming Arrow reader over a CSV/TSV/JSONL file (``.gz`` decompressed)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    fs, bare = filesystem(path, storage)
    fh = fs.open(bare, "rb", compression="infer")
    kind = file_type(path, spec.file_type)
    try:
        if kind == "jsonl":
            return pjson.open_json(fh)
        return pcsv.open_csv(fh, **_csv_options(path, spec))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(text_error(path, kind, storage, exc)) from None


def _batches(
    reader: Any, path: str, spec: InputSpec, storage: StorageSpec | None
) -> Iterator[pa.RecordBatch]:
    """The batches of ``reader`` (:func:`_open_text`). Arrow's JSON reader, unlike its CSV one,
    does not check UTF-8: JSONL batches get Arrow's full validation, so both fail here, naming
    the file and the line (not later, as a ``UnicodeDecodeError`` traceback)."""
    kind = file_type(path, spec.file_type)
    try:
        for batch in reader:
            if kind == "jsonl":
                batch.validate(full=True)
            yield batch
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(text_error(path, kind, storage, exc, reader.schema.names)) from None


def read_text(path: str, spec: InputSpec, storage: StorageSpec | None) -> pa.Table:
    reader = _open_text(path, spec, storage)
    return pa.Table.from_batches(list(_batches(reader, path, spec, storage)), schema=reader.schema)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _is_id(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(t)


def check_schema(schema: pa.Schema, spec: InputSpec, path: str) -> None:
    """Fail early, naming the file and the column, when the input does not fit ``spec``."""
    cols = spec.columns

    def need(
        fields: pa.Schema | pa.StructType,
        name: str | None,
        kind: str,
        where: str,
        optional: bool = False,
    ) -> None:
        if name is None:
            return
        names = [f.name for f in fields]
        if name not in names:
            if optional:
                return
            raise InputError(
                f"input file {path}: missing column {where}{name!r} "
                f"(columns: {', '.join(names)}); map it under input.columns"
            )
        t = fields.field(name).type
        ok = _is_id(t) if kind == "id" else _is_text(t)
        if not ok:
            expected = "string or integer" if kind == "id" else "string"
            raise InputError(
                f"input file {path}: column {where}{name!r} has type {t}, expected {expected}"
            )

    need(schema, cols.query_id, "id", "")
    need(schema, cols.query, "text", "")
    need(schema, cols.instruction, "text", "")
    if spec.format == "pairs":
        need(schema, cols.doc_id, "id", "")
        need(schema, cols.passage, "text", "")
        need(schema, cols.title, "text", "")
        return
    name = spec.candidates_column
    if name not in schema.names:
        raise InputError(f"input file {path}: missing column {name!r} (input.candidates_column)")
    t = schema.field(name).type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(
        t.value_type
    ):
        raise InputError(
            f"input file {path}: column {name!r} has type {t}, expected a list of "
            "structs (doc_id, passage[, title])"
        )
    where = f"{name}."
    need(t.value_type, cols.doc_id, "id", where)
    need(t.value_type, cols.passage, "text", where)
    need(t.value_type, cols.title, "text", where, optional=True)


def scan_inputs(spec: InputSpec, storage: StorageSpec | None = None) -> list[InputFile]:
    """List and open every input file, check its schema, and read row-group sizes; an input
    of no rows at all is refused (:func:`empty_input`)."""
    out = []
    for path in list_input_files(spec.path, storage, spec.file_type):
        fs, bare = filesystem(path, storage)
        size = int(fs.size(bare) or 0)
        if file_type(path, spec.file_type) != "parquet":
            reader = _open_text(path, spec, storage)  # streamed: never held whole here
            rows = sum(batch.num_rows for batch in _batches(reader, path, spec, storage))
            check_schema(reader.schema, spec, path)
            out.append(InputFile(path, size, (rows,)))  # a text file is one unit
            continue
        pf = _open_parquet(path, storage)
        check_schema(pf.schema_arrow, spec, path)
        md = pf.metadata
        out.append(
            InputFile(path, size, tuple(md.row_group(i).num_rows for i in range(md.num_row_groups)))
        )
    if not any(f.rows for f in out):
        where = out[0].path if len(out) == 1 else spec.path
        raise InputError(empty_input(where, [file_type(f.path, spec.file_type) for f in out]))
    return out


def listing(files: list[InputFile]) -> list[dict[str, Any]]:
    """What the fingerprint records about the input: names, sizes, row counts."""
    return [{"path": f.path, "size": f.size, "rows": f.rows} for f in files]


def units(files: list[InputFile]) -> list[Unit]:
    return [
        Unit(f.path, i, k)
        for k, (f, i) in enumerate((f, i) for f in files for i in range(len(f.row_groups)))
    ]


def _order(unit: Unit, start: int, n: int) -> pa.Array:
    return pa.array((unit.ordinal << 32) + np.arange(start, start + n, dtype=np.int64))


def _as_string(arr: pa.Array | pa.ChunkedArray | None, n: int) -> pa.Array:
    if arr is None:
        return pa.nulls(n, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return pc.cast(arr, pa.string())


def _blank(arr: pa.Array) -> pa.Array:
    """True where text is null, empty or whitespace only (no copy of the text is made)."""
    return pc.fill_null(pc.or_(pc.equal(pc.binary_length(arr), 0), pc.utf8_is_space(arr)), True)


def read_unit(unit: Unit, spec: InputSpec, storage: StorageSpec | None = None) -> pa.Table:
    """Read one row group and normalise it to :data:`NORMALISED` rows (candidates exploded)."""
    offset = 0  # rows of the file before this unit
    if file_type(unit.file, spec.file_type) == "parquet":
        pf = _open_parquet(unit.file, storage)
        table = pf.read_row_group(unit.row_group)
        offset = sum(pf.metadata.row_group(i).num_rows for i in range(unit.row_group))
    else:
        table = read_text(unit.file, spec, storage)
    cols = spec.columns
    n = table.num_rows

    def col(t: pa.Table | pa.StructArray, name: str | None) -> Any:
        if name is None:
            return None
        if isinstance(t, pa.Table):
            return t.column(name) if name in t.column_names else None
        return t.field(name) if t.type.get_field_index(name) >= 0 else None

    qid = _as_string(col(table, cols.query_id), n)
    query = _as_string(col(table, cols.query), n)
    instr = _as_string(col(table, cols.instruction), n)
    if spec.format == "pairs":
        doc_id = _as_string(col(table, cols.doc_id), n)
        passage = _as_string(col(table, cols.passage), n)
        title = _as_string(col(table, cols.title), n)
        empty_lists = pa.array([], pa.int64())
        order = _order(unit, 0, n)
        source_row = pa.array(np.arange(offset, offset + n, dtype=np.int64))
        candidate = pa.nulls(n, pa.int32())
    else:
        lists = table.column(spec.candidates_column).combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(lists), 0)
        empty_lists = pc.indices_nonzero(pc.equal(lengths, 0))
        parents = pc.list_parent_indices(lists)
        flat = pc.list_flatten(lists)
        m = len(flat)
        where = parents.to_numpy().astype(np.int64)  # non-decreasing: a list's candidates
        source_row = pa.array(where + offset)
        candidate = pa.array((np.arange(m) - np.searchsorted(where, where)).astype(np.int32))
        qid, query, instr = (pc.take(a, parents) for a in (qid, query, instr))
        doc_id = _as_string(col(flat, cols.doc_id), m)
        passage = _as_string(col(flat, cols.passage), m)
        title = _as_string(col(flat, cols.title), m)
        order = _order(unit, 0, m)
    reason = pa.nulls(len(qid), pa.string())
    for mask, code in (  # a later reason wins over an earlier one
        (_blank(passage), EMPTY_PASSAGE),
        (_blank(query), EMPTY_QUERY),
        (pc.is_null(doc_id), NULL_DOC_ID),
        (pc.is_null(qid), NULL_QUERY_ID),
    ):
        if pc.any(mask).as_py():  # most units reject nothing: skip the string copies
            reason = pc.if_else(mask, pa.scalar(code, pa.string()), reason)
    if spec.format == "pairs" and PRESET_REASON in table.column_names:
        preset = _as_string(table.column(PRESET_REASON), n)
        reason = pc.if_else(pc.is_valid(preset), preset, reason)
    line = pa.nulls(len(qid), pa.int64())
    if spec.format == "pairs" and PRESET_LINE in table.column_names:
        line = pc.cast(table.column(PRESET_LINE).combine_chunks(), pa.int64())
        candidate = pc.cast(table.column(PRESET_CANDIDATE).combine_chunks(), pa.int32())
    out = pa.table(
        [qid, doc_id, query, passage, title, instr, order, reason, source_row, line, candidate],
        schema=NORMALISED,
    )
    if len(empty_lists):
        rows = pc.take(table.select([cols.query_id, cols.query]), empty_lists)
        k = rows.num_rows
        out = pa.concat_tables(
            [
                out,
                pa.table(
                    [
                        _as_string(rows.column(0), k),
                        pa.nulls(k, pa.string()),
                        _as_string(rows.column(1), k),
                        pa.nulls(k, pa.string()),
                        pa.nulls(k, pa.string()),
                        pa.nulls(k, pa.string()),
                        _order(unit, len(qid), k),
                        pa.array([NO_CANDIDATES] * k, pa.string()),
                        pc.add(pc.cast(empty_lists, pa.int64()), offset),
                        pa.nulls(k, pa.int64()),
                        pa.nulls(k, pa.int32()),
                    ],
                    schema=NORMALISED,
                ),
            ]
        )
    return out
