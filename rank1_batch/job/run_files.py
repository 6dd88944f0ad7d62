"""First-stage run files (TREC, JSON): the rules of one line, and JSON runs as query blocks.

A TREC run is read with pyarrow by :mod:`rank1_batch.job.convert_join`; :func:`trec_check` is
the per-line rule it falls back to for the message naming a malformed line. A block is one
query's rows ``(qid, docid, score, line)`` sorted by score descending, ties in file order;
a **JSON run** (``{qid: {docid: score}}``) is parsed incrementally, one query's object at a
time, plus the set of query ids seen (a query id given twice is refused: ``json.load`` would
keep only the last).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.job.inputs import InputError

Row = tuple[str, str, float, int | None]  # qid, docid, score, line (TREC runs)
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


def trec_check(line: str, n: int, source: str, ranks: bool = False) -> tuple[str, str, float]:
    """One non-blank, non-comment line's (qid, docid, score) by today's rules, or the
    :class:`FormatError` naming ``source`` and line ``n``; ``ranks``: an MS MARCO run
    (``qid<TAB>docid<TAB>rank``, as pyserini's ``--output-format msmarco`` writes it), whose
    rank 1 comes first (its score is -rank)."""
    row = trec_line(line, n, source)
    if row is None:
        raise FormatError(f"{source}: line {n}: a blank line")
    if ranks:
        if len(line.split()) != 3:
            raise FormatError(f"{source}: line {n}: expected qid<TAB>docid<TAB>rank")
        row = (row[0], row[1], -row[2])
    return row


def _by_score(block: list[Row]) -> list[Row]:
    return sorted(block, key=lambda r: -r[2])  # stable: ties keep file order


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
