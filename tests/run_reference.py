"""Whole-run readers: the reference the streamed readers of :mod:`rank1_batch.job.run_files`
and :func:`rank1_batch.job.convert.iter_run_pairs` are checked against (small runs only)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rank1_batch.io.fs import StorageSpec
from rank1_batch.job.convert import CONVERTED_SCHEMA, iter_run_pairs
from rank1_batch.job.run_files import FormatError, Row, trec_line
from rank1_batch.job.spec import InputSpec


def parse_trec_run(text: str, source: str = "<run>") -> list[Row]:
    """A whole TREC run (``qid Q0 docid rank score tag`` or ``qid docid score`` lines) in run
    order per query: score descending, ties kept in file order (a stable sort)."""
    rows = [r for n, line in enumerate(text.splitlines(), 1) if (r := trec_line(line, n, source))]
    return _run_order(rows)


def parse_json_run(obj: Any, source: str = "<run>") -> list[tuple[str, str, float]]:
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise FormatError(f"{source}: expected a JSON object {{qid: {{docid: score}}}}")
    try:
        rows = [(str(q), str(d), float(s)) for q, docs in obj.items() for d, s in docs.items()]
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{source}: a score is not a number ({exc})") from None
    return _run_order(rows)


def _run_order(rows: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    first: dict[str, int] = {}
    for q, _, _ in rows:
        first.setdefault(q, len(first))
    order = sorted(range(len(rows)), key=lambda i: (first[rows[i][0]], -rows[i][2]))
    return [rows[i] for i in order]


def cut_top_k(rows: list[tuple[str, str, float]], top_k: int | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for q, d, _ in rows:
        seen[q] = seen.get(q, 0) + 1
        if top_k is None or seen[q] <= top_k:
            out.append((q, d))
    return out


def run_pairs(spec: InputSpec, storage: StorageSpec | None = None) -> pa.Table:
    """The whole converted run as one table."""
    parts = list(iter_run_pairs(spec, storage))
    return pa.concat_tables(parts) if parts else CONVERTED_SCHEMA.empty_table()
