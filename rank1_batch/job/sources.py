"""Where an input row came from, for the rows a person must find: rejected and duplicate ones.

:func:`rank1_batch.job.inputs.read_unit` gives every normalised row ``source_row`` (its 0-based
row in its file: a Parquet row counted across row groups, a text file's record after the
header), ``candidate`` (its 0-based position in a candidate list; null for pairs) and, where a
converted input knows it, ``source_line``; the unit ordinal in ``input_order >> 32`` names the
file. Prepare drops the first-occurrence duplicates with :func:`dedup`, which keeps for each
dropped row the kept row's place and whether the passages differ; before ``rejected/`` or
``duplicates/`` rows are written, :func:`locate` names their file and, for CSV/TSV/JSONL files,
the 1-based line their record starts on. Finding lines reads the text file once more, so only
units that reject or drop a row pay for it.

Also here: :func:`text_error`, the one-line message for a text file Arrow cannot read; for
bytes that are not UTF-8 it names the file, the column and the line, found by scanning the
bytes on that error path only.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core.schemas import DUPLICATES_SCHEMA, REJECTED_SCHEMA
from rank1_batch.io.fs import StorageSpec, filesystem

# Carried by every normalised row (rank1_batch.job.inputs.NORMALISED), never into pairs files.
SOURCE_COLUMNS = ("source_row", "source_line", "candidate")
_TYPES = {"source_row": pa.int64(), "source_line": pa.int64(), "candidate": pa.int32()}
_KEPT = ("input_order", "passage", *SOURCE_COLUMNS)


def with_sources(rows: pa.Table) -> pa.Table:
    """``rows`` with the source columns (null where a caller built rows without them)."""
    for name in SOURCE_COLUMNS:
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows, _TYPES[name]))
    return rows


def dedup(good: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(kept, duplicates) of rows without a reason: the first occurrence (in input order) of
    each (query_id, doc_id) is kept, in ``good``'s order; each duplicate carries
    ``kept_input_order``, the kept row's source columns and ``passage_differs``."""
    keys = pc.binary_join_element_wise(good.column("query_id"), good.column("doc_id"), "\x1f")
    if len(pc.unique(keys)) == good.num_rows:  # the common case: one hash pass, nothing else
        return good, _duplicates_frame()
    firsts = good.group_by(["query_id", "doc_id"], use_threads=False).aggregate(
        [("input_order", "min")]
    )
    is_kept = pc.is_in(good.column("input_order"), value_set=firsts.column("input_order_min"))
    kept = good.filter(is_kept)
    dropped = good.filter(pc.invert(is_kept)).select(["query_id", "doc_id", *_KEPT])
    kept_info = kept.select(list(_KEPT)).rename_columns([f"kept_{c}" for c in _KEPT])
    dups = dropped.join(firsts, ["query_id", "doc_id"]).join(
        kept_info, "input_order_min", right_keys="kept_input_order"
    )
    dups = dups.append_column(
        "passage_differs",
        pc.fill_null(pc.not_equal(dups.column("passage"), dups.column("kept_passage")), True),
    )
    dups = dups.rename_columns(
        ["kept_input_order" if c == "input_order_min" else c for c in dups.column_names]
    )
    dups = dups.take(pc.sort_indices(dups.column("input_order")))
    return kept, dups.drop_columns(["passage", "kept_passage"])


def _duplicates_frame() -> pa.Table:
    names = [n for n in DUPLICATES_SCHEMA.names if not n.endswith("source_file")]
    return pa.schema([DUPLICATES_SCHEMA.field(n) for n in names]).empty_table()


def locate(
    table: pa.Table,
    files: Mapping[int, str],
    kind: Callable[[str], str],
    storage: StorageSpec | None,
    schema: pa.Schema,
) -> pa.Table:
    """``table`` (rejected or duplicate rows) cast to ``schema``, with ``source_file`` named
    from the unit ordinals (``files``: ordinal -> file) and ``source_line`` found for rows of
    text files (``kind(file)``: ``csv``, ``tsv``, ``jsonl`` or ``parquet``); the same for the
    ``kept_`` columns when ``schema`` has them."""
    prefixes = ("", "kept_") if "kept_input_order" in schema.names else ("",)
    columns = {
        p: (
            [files.get(int(o) >> 32) for o in table.column(f"{p}input_order").to_pylist()],
            table.column(f"{p}source_line").to_pylist(),
            table.column(f"{p}source_row").to_pylist(),
        )
        for p in prefixes
    }
    wanted: dict[str, set[int]] = {}  # per text file: the records whose line is needed
    for names, lines, rows in columns.values():
        for name, line, row in zip(names, lines, rows, strict=True):
            if name is not None and line is None and row is not None and kind(name) != "parquet":
                wanted.setdefault(name, set()).add(row)
    found = {name: record_lines(name, kind(name), storage, want) for name, want in wanted.items()}
    for prefix, (names, lines, rows) in columns.items():
        for i, (name, row) in enumerate(zip(names, rows, strict=True)):
            if name in found and lines[i] is None:
                lines[i] = found[name].get(row)
        table = table.set_column(
            table.schema.get_field_index(f"{prefix}source_line"),
            f"{prefix}source_line",
            pa.array(lines, pa.int64()),
        )
        if f"{prefix}source_file" in table.column_names:
            table = table.drop_columns([f"{prefix}source_file"])
        table = table.append_column(f"{prefix}source_file", pa.array(names, pa.string()))
    return table.select(schema.names).cast(schema)


def rejected_rows(rows: pa.Table) -> pa.Table:
    """The columns of ``rejected/`` that normalised rows hold (``source_file`` comes later)."""
    return rows.select([n for n in REJECTED_SCHEMA.names if n != "source_file"])


def record_lines(
    path: str, kind: str, storage: StorageSpec | None, wanted: set[int]
) -> dict[int, int]:
    """The 1-based line each ``wanted`` record (0-based, data records only) of a text file
    starts on: CSV/TSV as Arrow reads them (a quoted value may span lines, blank lines are
    skipped, the header is no record); JSONL one record per non-blank line. Reads the file up
    to the last record wanted; holds only the answers."""
    fs, bare = filesystem(path, storage)
    out: dict[int, int] = {}
    last, record = max(wanted, default=-1), -1
    limit = csv.field_size_limit(2**31 - 1)  # a passage may exceed csv's 128 KiB default
    try:
        with fs.open(bare, "rt", encoding="utf-8", newline="", compression="infer") as fh:
            if kind == "jsonl":
                starts: Iterator[int] = (n for n, line in enumerate(fh, 1) if line.strip())
            else:
                starts = _csv_starts(csv.reader(fh, delimiter="\t" if kind == "tsv" else ","))
                next(starts, None)  # the header
            for line in starts:
                record += 1
                if record in wanted:
                    out[record] = line
                if record >= last:
                    break
    finally:
        csv.field_size_limit(limit)
    return out


def _csv_starts(reader: Any) -> Iterator[int]:
    """The line each CSV record starts on (``reader.line_num`` is the line it ends on)."""
    before = 0
    for fields in reader:
        if fields:
            yield before + 1
        before = reader.line_num


def empty_input(path: str, kinds: list[str]) -> str:
    """Why an input of 0 rows is refused, by what its files are (``kinds``: each file's
    type): "FILE has a header and no rows" for one CSV/TSV, else "0 rows in 2 CSV files and
    1 Parquet file"."""
    if len(kinds) == 1 and kinds[0] in ("csv", "tsv"):
        return f"input file {path} has a header and no rows; nothing to rerank"
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    names = [f"{n} {'Parquet' if k == 'parquet' else k.upper()} file{'s' * (n > 1)}"
             for k, n in counts.items()]  # fmt: skip
    return f"input {path}: 0 rows in {' and '.join(names)}; nothing to rerank"


_COLUMN_INDEX = re.compile(r"column #(\d+)")  # Arrow's CSV reader
_JSON_COLUMN_INDEX = re.compile(r"\b[Cc]olumn (\d+):")  # RecordBatch.validate(full=True)


def text_error(
    path: str,
    kind: str,
    storage: StorageSpec | None,
    exc: Exception,
    names: list[str] | None = None,
) -> str:
    """One line saying why Arrow could not read text file ``path``. Bytes that are not UTF-8
    are named by file, column name and line (Arrow gives only the column's index: CSV/TSV
    columns are named from the header, JSONL ones from ``names``, the batch's columns)."""
    message = str(exc)
    if "UTF8" in message or "UTF-8" in message:
        where = first_bad_utf8(path, storage)
        if where is not None:
            line, offset, byte = where
            header: list[str] = []
            found = _COLUMN_INDEX.search(message)
            if found and kind in ("csv", "tsv"):
                header = _header(path, kind, storage)
            elif kind == "jsonl":
                found, header = _JSON_COLUMN_INDEX.search(message), names or []
            column = ""
            if found and header:
                index = int(found.group(1))
                name = header[index] if index < len(header) else f"#{index}"
                column = f", column {name!r}"
            return (
                f"input file {path}: line {line}{column}: byte 0x{byte:02x} (offset {offset}) "
                "is not UTF-8; save the file as UTF-8"
            )
    return f"input file {path}: not a readable {kind.upper()} file ({message})"


def _header(path: str, kind: str, storage: StorageSpec | None) -> list[str]:
    fs, bare = filesystem(path, storage)
    with fs.open(bare, "rt", encoding="utf-8", errors="replace", compression="infer") as fh:
        return next(csv.reader(fh, delimiter="\t" if kind == "tsv" else ","), [])


def first_bad_utf8(
    path: str, storage: StorageSpec | None, chunk: int = 1 << 20
) -> tuple[int, int, int] | None:
    """(1-based line, byte offset, byte value) of the first byte that is not UTF-8 in the
    (decompressed) file, or None; reads the file in chunks, holding one."""
    fs, bare = filesystem(path, storage)
    base = newlines = 0
    carry = b""
    with fs.open(bare, "rb", compression="infer") as fh:
        while True:
            piece = fh.read(chunk)
            data = carry + piece
            if not data:
                return None
            try:
                data.decode("utf-8")
                newlines, base, carry = newlines + data.count(b"\n"), base + len(data), b""
            except UnicodeDecodeError as err:
                if piece and err.reason == "unexpected end of data":  # cut mid-character
                    newlines += data.count(b"\n", 0, err.start)
                    base, carry = base + err.start, data[err.start :]
                    continue
                line = newlines + data.count(b"\n", 0, err.start) + 1
                return line, base + err.start, data[err.start]
            if not piece:
                return None
