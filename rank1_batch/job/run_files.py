"""First-stage run files (TREC, JSON) read as query blocks, with bounded memory.

A block is one query's rows ``(qid, docid, score, line)`` sorted by score descending, ties in
file order (``line``: the row's 1-based line in a TREC run, None in a JSON run); blocks come in
run order (the order queries first appear). What memory holds:

* a TREC run **grouped by query** (a query's lines contiguous, the usual shape): one block;
  a first pass checks the grouping;
* an **ungrouped** TREC run: a first pass indexes the queries (ordinal and row count per query
  id, about 100 bytes a query); a second pass writes every row to local temporary Arrow
  files, one per range of query ordinals holding at most :data:`BUCKET_ROWS` rows; each file
  is then sorted on its own and cut into blocks. Memory: the query index plus one bucket;
  local disk: about the run once more (zstd);
* a **JSON run** (``{qid: {docid: score}}``): parsed incrementally, one query's object at a
  time, plus the set of query ids seen (a query id given twice is refused: ``json.load``
  would keep only the last).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.job.inputs import InputError

Row = tuple[str, str, float, int | None]  # qid, docid, score, line (TREC runs)
BUCKET_ROWS = 500_000
CHUNK_LINES = 200_000
READ_CHARS = 1 << 20


class FormatError(InputError):
    """An input file of a converted format cannot be read (the message names it)."""


def trec_line(line: str, n: int, source: str) -> tuple[str, str, float] | None:
    """``qid Q0 docid rank score tag`` or ``qid docid score``; None for blank/comment lines."""
    parts = line.split()
    if not parts or line.startswith("#"):
        return None
    try:
        if len(parts) == 6:
            return parts[0], parts[2], float(parts[4])
        if len(parts) == 3:
            return parts[0], parts[1], float(parts[2])
        raise ValueError(f"expected 6 or 3 columns, got {len(parts)}")
    except ValueError as exc:
        raise FormatError(f"{source}: line {n}: {exc}") from None


def open_text(uri: str, storage: StorageSpec | None) -> IO[str]:
    """``uri`` opened as UTF-8 text (compression from the suffix); a missing file named."""
    fs, path = filesystem(uri, storage)
    try:
        return fs.open(path, "rt", encoding="utf-8", compression="infer")
    except FileNotFoundError:
        raise FormatError(f"input {uri}: no such file") from None


def lines(uri: str, storage: StorageSpec | None) -> Iterator[str]:
    with open_text(uri, storage) as fh:
        yield from fh


def trec_rows(uri: str, storage: StorageSpec | None, ranks: bool = False) -> Iterator[Row]:
    """Rows of a TREC run; ``ranks``: an MS MARCO run (``qid<TAB>docid<TAB>rank``, as pyserini's
    ``--output-format msmarco`` writes it), whose rank 1 comes first (its score is -rank)."""
    for n, line in enumerate(lines(uri, storage), 1):
        row = trec_line(line, n, uri)
        if row is None:
            continue
        if ranks:
            if len(line.split()) != 3:
                raise FormatError(f"{uri}: line {n}: expected qid<TAB>docid<TAB>rank")
            row = (row[0], row[1], -row[2])
        yield (*row, n)


class Ungrouped(Exception):
    """A query's lines come back after another query started."""


def grouped_blocks(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """Contiguous query blocks in file order (unsorted); :class:`Ungrouped` when a query
    comes back after another one started."""
    block: list[Row] = []
    done: set[str] = set()
    for row in rows:
        if block and row[0] != block[0][0]:
            done.add(block[0][0])
            yield block
            block = []
            if row[0] in done:
                raise Ungrouped(row[0])
        block.append(row)
    if block:
        yield block


def _by_score(block: list[Row]) -> list[Row]:
    return sorted(block, key=lambda r: -r[2])  # stable: ties keep file order


BUCKET_SCHEMA = pa.schema(
    [("ordinal", pa.int64()), ("seq", pa.int64()), ("query_id", pa.string()),
     ("doc_id", pa.string()), ("score", pa.float64()), ("line", pa.int64())]
)  # fmt: skip


# What the last partitioned read did (tests observe it): buckets, largest bucket read back.
PARTITION_STATS = {"buckets": 0, "peak_bucket_rows": 0}


def partitioned_blocks(
    rows: Iterable[Row], again: Iterable[Row], workdir: str, bucket_rows: int | None = None
) -> Iterator[list[Row]]:
    """Sorted blocks of an ungrouped run: ``rows`` and ``again`` are two passes over it."""
    bucket_rows = bucket_rows or BUCKET_ROWS
    ordinal: dict[str, int] = {}
    counts: list[int] = []
    for q, *_ in rows:
        i = ordinal.setdefault(q, len(ordinal))
        if i == len(counts):
            counts.append(0)
        counts[i] += 1
    # Contiguous ordinal ranges of at most bucket_rows rows (one query may exceed it alone).
    bucket_of = np.zeros(len(counts), np.int32)
    b = filled = 0
    for i, n in enumerate(counts):
        if filled and filled + n > bucket_rows:
            b, filled = b + 1, 0
        bucket_of[i], filled = b, filled + n
    del counts
    paths = [os.path.join(workdir, f"bucket-{k:05d}.arrow") for k in range(b + 1)]
    PARTITION_STATS.update(buckets=len(paths), peak_bucket_rows=0)
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    writers = [pa.ipc.new_file(p, BUCKET_SCHEMA, options=options) for p in paths]
    try:
        seq = 0
        chunk: list[Row] = []

        def flush() -> None:
            ords = np.fromiter((ordinal[r[0]] for r in chunk), np.int64, len(chunk))
            table = pa.table(
                [ords, np.arange(seq - len(chunk), seq), [r[0] for r in chunk],
                 [r[1] for r in chunk], [r[2] for r in chunk], [r[3] for r in chunk]],
                schema=BUCKET_SCHEMA,
            )  # fmt: skip
            where = bucket_of[ords]
            for k in np.unique(where):
                writers[k].write_table(table.filter(pa.array(where == k)))
            chunk.clear()

        for row in again:
            chunk.append(row)
            seq += 1
            if len(chunk) >= CHUNK_LINES:
                flush()
        if chunk:
            flush()
    finally:
        for w in writers:
            w.close()
    ordinal.clear()  # the index is not needed to read the buckets back
    for path in paths:
        with pa.memory_map(path) as source:
            table = pa.ipc.open_file(source).read_all()
        peak = max(PARTITION_STATS["peak_bucket_rows"], table.num_rows)
        PARTITION_STATS["peak_bucket_rows"] = peak
        order = [("ordinal", "ascending"), ("score", "descending"), ("seq", "ascending")]
        table = table.take(pc.sort_indices(table, order))
        qs, ds = table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()
        ss, ns = table.column("score").to_pylist(), table.column("line").to_pylist()
        del table
        start = 0
        for i in range(1, len(qs) + 1):
            if i == len(qs) or qs[i] != qs[start]:
                yield list(zip(qs[start:i], ds[start:i], ss[start:i], ns[start:i], strict=True))
                start = i
        os.unlink(path)


def trec_blocks(uri: str, storage: StorageSpec | None, ranks: bool = False) -> Iterator[list[Row]]:
    """Sorted query blocks of a TREC run (``ranks``: an MS MARCO run, see :func:`trec_rows`)
    in run order, grouped or not (see the module)."""

    def rows() -> Iterator[Row]:
        return trec_rows(uri, storage, ranks)

    try:
        for _ in grouped_blocks(rows()):
            pass
    except Ungrouped:
        with tempfile.TemporaryDirectory(prefix="rank1-run-") as workdir:
            yield from partitioned_blocks(rows(), rows(), workdir)
        return
    for block in grouped_blocks(rows()):
        yield _by_score(block)


# -- JSON runs --------------------------------------------------------------------------------


def _chars(uri: str, storage: StorageSpec | None) -> Iterator[str]:
    with open_text(uri, storage) as fh:
        while piece := fh.read(READ_CHARS):
            yield piece


def json_members(pieces: Iterable[str], source: str) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of a JSON object's members, decoding one member at a time from a
    stream of text pieces (a member's value must fit in memory, the object need not)."""
    decoder = json.JSONDecoder()
    it = iter(pieces)
    buf, pos, eof = "", 0, False

    def fill() -> bool:  # keep the unread text, append the next piece
        nonlocal buf, pos, eof
        more = next(it, None)
        if more is None:
            eof = True
            return False
        buf, pos = buf[pos:] + more, 0
        return True

    def skip_ws() -> None:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not fill():
                return

    def expect(chars: str, what: str) -> str:
        nonlocal pos
        skip_ws()
        if pos >= len(buf) or buf[pos] not in chars:
            raise FormatError(f"{source}: expected {what} in a JSON run {{qid: {{docid: score}}}}")
        pos += 1
        return buf[pos - 1]

    def value() -> Any:
        nonlocal pos
        skip_ws()
        while True:
            try:
                obj, end = decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:  # at the window's end a number may go on
                    pos = end
                    return obj
            except json.JSONDecodeError as exc:
                if eof:
                    raise FormatError(f"{source}: not valid JSON ({exc.msg})") from None
            fill()

    expect("{", "'{'")
    skip_ws()
    if pos < len(buf) and buf[pos] == "}":
        pos += 1
    else:
        while True:
            key = value()
            if not isinstance(key, str):
                raise FormatError(f"{source}: expected a query id string, got {key!r}")
            expect(":", "':'")
            yield key, value()
            if expect(",}", "',' or '}'") == "}":
                break
    skip_ws()
    if pos < len(buf):
        raise FormatError(f"{source}: not valid JSON (text after the run's object)")


def json_blocks(uri: str, storage: StorageSpec | None) -> Iterator[list[Row]]:
    """Sorted query blocks of a JSON run, in file order."""
    seen: set[str] = set()
    for qid, docs in json_members(_chars(uri, storage), uri):
        if not isinstance(docs, dict):
            raise FormatError(f"{uri}: expected a JSON object {{qid: {{docid: score}}}}")
        if qid in seen:
            raise FormatError(f"{uri}: query {qid!r} is given twice")
        seen.add(qid)
        try:
            block: list[Row] = [(qid, str(d), float(s), None) for d, s in docs.items()]
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{uri}: a score is not a number ({exc})") from None
        if block:
            yield _by_score(block)
