"""Stage 1 of :mod:`rank1_batch.job.convert_join`: one byte range of a run, corpus or
queries file parsed with pyarrow and cut into hash pieces, and the stable hash that cuts.

Each reader holds one range (its bytes and their Arrow columns), never a whole file
(a compressed file is one range). A TREC run's lines are one string column read with
``pyarrow.csv`` (no quoting, a delimiter that does not occur, empty lines kept so line numbers
hold), split by ``utf8_split_whitespace``; a line the vectorised path cannot take falls back
to :func:`rank1_batch.job.run_files.trec_check`, which names it. TSV text is split by
``split_pattern("\\t")`` (2 or 3 columns in one file), JSONL read by ``pyarrow.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.job.run_files import FormatError, json_blocks, trec_check

RUN_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("score", pa.float64()),
        ("line", pa.int64()),
    ]
)
_LINES = dict(
    read_options=pcsv.ReadOptions(column_names=["line"], block_size=16 << 20),
    parse_options=pcsv.ParseOptions(
        delimiter="\x01",
        quote_char=False,
        double_quote=False,
        escape_char=False,
        ignore_empty_lines=False,
        newlines_in_values=False,
    ),
    convert_options=pcsv.ConvertOptions(
        column_types={"line": pa.string()}, strings_can_be_null=False
    ),
)


def stable_hash(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """FNV-1a (64 bit) of each string, vectorised over Arrow's buffers: the same in every
    process and release (Python's ``hash`` is salted per process)."""
    arr = pc.cast(pc.fill_null(ids, ""), pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    h = np.full(n, 0xCBF29CE484222325, np.uint64)
    if n == 0 or arr.buffers()[2] is None:
        return h
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    prime = np.uint64(0x100000001B3)
    for j in range(int(lengths.max(initial=0))):
        at = np.nonzero(lengths > j)[0]
        h[at] = (h[at] ^ data[starts[at] + j].astype(np.uint64)) * prime
    return h


def split_by(table: pa.Table, key: str, n: int) -> list[pa.Table]:
    """``table`` cut into ``n`` pieces by :func:`stable_hash` of ``key`` (mod ``n``)."""
    return split_at(table, (stable_hash(table.column(key)) % np.uint64(n)).astype(np.int64), n)


def split_at(table: pa.Table, slot: np.ndarray, n: int) -> list[pa.Table]:
    """``table`` cut into ``n`` pieces by ``slot`` (each row's piece, 0 to n-1), rows keeping
    their order within a piece: one take, then zero-copy slices (a take or a filter per piece,
    each over the whole table, made a 1M-pair reuse build 7.1 s in one process against 6.6 s
    with this)."""
    if n == 1:
        return [table]
    order = np.argsort(slot, kind="stable")
    table = table.take(pa.array(order))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(slot, minlength=n))])
    return [table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in range(n)]


def read_range(uri: str, storage: StorageSpec | None, start: int, end: int) -> bytes:
    """The whole lines that start in ``[start, end)`` (``end`` -1: the whole file)."""
    fs, path = filesystem(uri, storage)
    if end < 0:
        with fs.open(path, "rb", compression="infer") as fh:
            data: bytes = fh.read()
        return data
    with fs.open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            fh.readline()  # the line that started before the range belongs to the one before
        pos = fh.tell()
        if pos >= end:
            return b""
        data = fh.read(end - pos)
        if data and not data.endswith(b"\n"):
            data += fh.readline()
    return data


def lines_of(data: bytes, uri: str) -> pa.Array:
    """Each line of ``data`` as one string (empty lines kept, so line numbers hold)."""
    if not data:
        return pa.array([], pa.string())
    try:
        table = pcsv.read_csv(pa.BufferReader(data), **_LINES)
    except pa.ArrowInvalid as exc:  # e.g. bytes that are not UTF-8
        raise FormatError(f"{uri}: cannot be read as text ({exc})") from None
    return table.column("line").combine_chunks()


def _error(n: int, text: str) -> dict[str, Any]:
    return {"lines": 0, "error": (n, text)}


def read_run(*args: Any) -> list[Any]:
    """:func:`_read_run`, a :class:`FormatError` returned in its meta."""
    try:
        return _read_run(*args)
    except FormatError as exc:
        return [{"lines": 0, "error": str(exc)}, *[RUN_SCHEMA.empty_table()] * args[-1]]


def _read_run(
    uri: str, storage: StorageSpec | None, start: int, end: int, ranks: bool, p: int
) -> list[Any]:
    """One range of a TREC run → [meta, P pieces of :data:`RUN_SCHEMA`] (``line`` local to
    the range); meta ``{"lines", "error"}``, the error ``(local line, its text)``."""
    lines = lines_of(read_range(uri, storage, start, end), uri)
    n = len(lines)
    number = pa.array(np.arange(1, n + 1, dtype=np.int64))
    trimmed = pc.utf8_trim_whitespace(lines)
    keep = pc.and_(pc.not_equal(trimmed, ""), pc.invert(pc.starts_with(lines, "#")))
    tokens = pc.utf8_split_whitespace(trimmed.filter(keep))
    number, counts = number.filter(keep), pc.list_value_length(tokens)
    rows = []
    problem = not pc.all(pc.is_in(counts, pa.array([3] if ranks else [3, 6]))).as_py()
    if not problem:
        for width, did, score in ((6, 2, 4), (3, 1, 2)):
            mask = pc.equal(counts, width)
            sub = tokens.filter(mask)
            try:
                value = pc.cast(pc.list_element(sub, score), pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                problem = True
                break
            rows.append(
                pa.table(
                    [
                        pc.list_element(sub, 0),
                        pc.list_element(sub, did),
                        pc.negate(value) if ranks else value,
                        number.filter(mask),
                    ],
                    schema=RUN_SCHEMA,
                )
            )
    if problem:  # the line-by-line rules name the first bad line and say what is wrong
        kept, texts = number.to_pylist(), lines.filter(keep).to_pylist()
        out: list[tuple[str, str, float, int]] = []
        for line_no, text in zip(kept, texts, strict=True):
            try:
                q, d, s = trec_check(text, line_no, uri, ranks)
            except FormatError:
                return [_error(line_no, text), *[RUN_SCHEMA.empty_table()] * p]
            out.append((q, d, s, line_no))
        rows = [
            pa.Table.from_pylist(
                [dict(zip(RUN_SCHEMA.names, r, strict=True)) for r in out], schema=RUN_SCHEMA
            )
        ]
    return [{"lines": n, "error": None}, *split_by(pa.concat_tables(rows), "query_id", p)]


def read_json_run(uri: str, storage: StorageSpec | None, p: int) -> list[Any]:
    """A JSON run (one task, streamed member by member) → [meta, P pieces]; ``line`` is the
    row's ordinal in the file (it orders queries and ties; the parts get no line)."""
    rows: dict[str, list[Any]] = {name: [] for name in RUN_SCHEMA.names}
    try:
        for block in json_blocks(uri, storage):
            for q, d, s, _ in block:
                rows["query_id"].append(q)
                rows["doc_id"].append(d)
                rows["score"].append(s)
                rows["line"].append(len(rows["line"]) + 1)
    except FormatError as exc:
        return [{"lines": 0, "error": str(exc)}, *[RUN_SCHEMA.empty_table()] * p]
    table = pa.table(rows, schema=RUN_SCHEMA)
    return [{"lines": table.num_rows, "error": None}, *split_by(table, "query_id", p)]


TEXT_SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])


def _jsonl_table(data: bytes, uri: str, what: str) -> pa.Table:
    fields = [("_id", pa.string()), ("title", pa.string()), ("text", pa.string())]
    options = pjson.ParseOptions(
        explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore"
    )
    try:
        try:
            table = pjson.read_json(pa.BufferReader(data), parse_options=options)
        except pa.ArrowInvalid as exc:
            if "changed from" not in str(exc):  # numbers as ids: infer, then cast to string
                raise
            table = pjson.read_json(pa.BufferReader(data))
            if "_id" not in table.column_names or "text" not in table.column_names:
                raise pa.ArrowInvalid(f"a line lacks {what}") from None
            table = table.set_column(
                table.column_names.index("_id"), "_id", pc.cast(table.column("_id"), pa.string())
            )
    except pa.ArrowInvalid as exc:
        raise FormatError(f"{uri}: expected {what} ({exc})") from None
    title = table.column("title") if "title" in table.column_names else None
    if title is None:
        title = pa.nulls(table.num_rows, pa.string())
    title = pc.if_else(pc.equal(title, ""), pa.scalar(None, pa.string()), title)
    return pa.table(
        [table.column("_id"), title, table.column("text")], names=["id", "title", "text"]
    )


def read_text(*args: Any) -> list[Any]:
    """:func:`_read_text`, a :class:`FormatError` returned in its meta."""
    try:
        return _read_text(*args)
    except FormatError as exc:
        return [{"lines": 0, "error": str(exc)}, *[TEXT_SCHEMA.empty_table()] * args[-1]]


def _read_text(
    uri: str, storage: StorageSpec | None, start: int, end: int, kind: str, n: int
) -> list[Any]:
    """One range of a corpus (``kind`` "corpus") or queries file → [meta, n pieces of
    :data:`TEXT_SCHEMA`] split by id, each piece in file order (of an id given twice, the
    join keeps the last)."""
    data = read_range(uri, storage, start, end)
    jsonl = uri.removesuffix(".gz").endswith((".jsonl", ".json"))
    count = 0
    if jsonl:
        count = data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1)
        what = "{_id, title, text}" if kind == "corpus" else "{_id, text}"
        table = _jsonl_table(data, uri, what) if data.strip() else None
        if (
            table is not None
            and table.num_rows
            and pc.any(pc.is_null(table.column("text"))).as_py()
        ):
            raise FormatError(f"{uri}: expected {what} (a line has no text)")
    else:
        lines = lines_of(data, uri)
        number = pa.array(np.arange(1, len(lines) + 1, dtype=np.int64))
        count = len(lines)
        keep = pc.not_equal(pc.utf8_trim_whitespace(lines), "")
        parts, number = pc.split_pattern(lines.filter(keep), "\t"), number.filter(keep)
        width = pc.list_value_length(parts)
        if kind == "corpus":
            bad = pc.invert(pc.is_in(width, pa.array([2, 3])))
        else:
            bad = pc.less(width, 2)
        if pc.any(bad).as_py():
            return [
                _error(pc.min(number.filter(bad)).as_py(), kind),
                *[TEXT_SCHEMA.empty_table()] * n,
            ]
        ends = pc.cumulative_sum(width)
        firsts = pc.subtract(ends, width)
        flat = pc.list_flatten(parts)
        text = flat.take(pc.subtract(ends, 1))
        title = pa.nulls(len(parts), pa.string())
        if kind == "corpus":  # pid<TAB>title<TAB>text: the middle one
            three = pc.equal(width, 3)
            title = pc.if_else(three, flat.take(pc.add(firsts, 1)), title)
            title = pc.if_else(pc.equal(title, ""), pa.scalar(None, pa.string()), title)
        table = pa.table([flat.take(firsts), title, text], names=["id", "title", "text"])
    if table is None:
        table = pa.table([pa.array([], pa.string())] * 3, names=["id", "title", "text"])
    table = table.cast(TEXT_SCHEMA)
    return [{"lines": count, "error": None}, *split_by(table, "id", n)]
