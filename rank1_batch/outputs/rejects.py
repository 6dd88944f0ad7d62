"""``rank1-batch rejects OUTPUT``: the input rows prepare did not keep, by reason, with their place.

Prepare writes every refused row to ``rejected/`` (with its reason code) and every row it
dropped because its (query_id, doc_id) came earlier to ``duplicates/`` (reason
:data:`DUPLICATE` here), each with the file, 0-based row, 1-based line (text files) and
candidate position it came from (:mod:`rank1_batch.job.sources`); a duplicate also names the
row it collided with (the kept one) and whether the two passages differ. The manifest lists
those files; this module reads them one at a time, counting rows per reason and keeping the
first ``first`` of each (memory: one file plus the examples).

Rows of converted inputs (``trec``, ``json-run``, ``hf``, ``rank-llm``) came from parts under
``OUTPUT/input/``; they are shown as the original input (``input/_converted.json`` names it),
with its line where conversion recorded one, else the part and its row.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.io import layout
from rank1_batch.io.paths import check_manifest
from rank1_batch.io.store import Store
from rank1_batch.job.convert import CONVERTED_MARKER

DUPLICATE = "duplicate"


def where(row: dict[str, Any], prefix: str = "") -> str:
    """``FILE line N`` (text), ``FILE row N`` (Parquet, 0-based) and ``, candidate K``."""
    file, line = row.get(f"{prefix}source_file"), row.get(f"{prefix}source_line")
    if file is None:  # written before rows carried their source
        return f"input_order {row.get(f'{prefix}input_order')}"
    text = f"{file} line {line}" if line is not None else f"{file} row {row[f'{prefix}source_row']}"
    candidate = row.get(f"{prefix}candidate")
    return text + (f", candidate {candidate}" if candidate is not None else "")


def _converted(store: Store) -> tuple[str, str | None]:
    """(prefix of converted parts, the original input) or ("", None)."""
    if not store.exists(CONVERTED_MARKER):
        return "", None
    source = store.read_json(CONVERTED_MARKER).get("source")
    return store.uri.rstrip("/") + "/input/", source


def _as_original(row: dict[str, Any], parts: str, source: str | None) -> dict[str, Any]:
    for prefix in ("", "kept_"):
        file = row.get(f"{prefix}source_file")
        if source is None or not isinstance(file, str) or not file.startswith(parts):
            continue
        if row.get(f"{prefix}source_line") is not None:
            row[f"{prefix}source_file"] = source
        else:  # no line recorded: the converted part is where the row can be found
            row[f"{prefix}source_file"] = f"{source} (converted: {file})"
    return row


def read_rejects(store: Store, first: int = 5, reasons: list[str] | None = None) -> dict[str, Any]:
    """Counts per reason and the first ``first`` rows of each (``reasons``: only those)."""
    layout.read_job(store)
    if not store.exists(layout.MANIFEST):
        raise FileNotFoundError(f"{store.uri}: no {layout.MANIFEST} (prepare has not finished)")
    manifest = store.read_json(layout.MANIFEST)
    # Every name is one prepare writes before any is joined into a path (the run's own check).
    check_manifest(manifest, f"{store.uri.rstrip('/')}/{layout.MANIFEST}")
    files: list[tuple[str, str | None]] = [(r, None) for r in manifest.get("rejected_files", [])]
    files += [(rel, DUPLICATE) for rel in manifest.get("duplicate_files", [])]
    parts, source = _converted(store)
    counts: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for rel, fixed in files:
        table = store.read_parquet(rel)
        if fixed is not None:
            table = table.append_column("reason", pa.array([fixed] * table.num_rows, pa.string()))
        for entry in pc.value_counts(table.column("reason")).to_pylist():
            reason = entry["values"]
            if reasons and reason not in reasons:
                continue
            counts[reason] += int(entry["counts"])
            shown = examples.setdefault(reason, [])
            if len(shown) < first:
                mask = pc.equal(table.column("reason"), reason)
                rows = table.filter(mask).slice(0, first - len(shown)).to_pylist()
                shown += [_as_original(r, parts, source) for r in rows]
    order = sorted(counts, key=lambda r: (r == DUPLICATE, -counts[r], r))
    return {
        "output": store.uri,
        "input_rows": manifest.get("input_rows"),
        "rejected": sum(n for r, n in counts.items() if r != DUPLICATE),
        "duplicates": counts.get(DUPLICATE, 0),
        "reasons": [
            {
                "reason": r,
                "count": counts[r],
                "rows": [
                    {**row, "where": where(row)}
                    | ({"kept_where": where(row, "kept_")} if r == DUPLICATE else {})
                    for row in examples[r]
                ],
            }
            for r in order
        ],
    }


def format_rejects(report: dict[str, Any], first: int) -> str:
    """The report as text: one block per reason, its count, then its first rows."""
    of = f" (of {report['input_rows']:,} input rows)" if report["input_rows"] is not None else ""
    rejected, duplicates = report["rejected"], report["duplicates"]
    lines = [
        f"{report['output']}: {rejected:,} row{'s' * (rejected != 1)} rejected, "
        f"{duplicates:,} duplicate{'s' * (duplicates != 1)} dropped{of}"
    ]
    for block in report["reasons"]:
        lines.append(f"{block['reason']}: {block['count']:,}")
        for row in block["rows"]:
            pair = f"query {row['query_id']!r} doc {row['doc_id']!r}"
            text = f"  {row['where']}: {pair}"
            if block["reason"] == DUPLICATE:
                differs = "passage differs" if row["passage_differs"] else "same passage"
                text += f"; duplicate of {row['kept_where']} ({differs})"
            lines.append(text)
        more = block["count"] - len(block["rows"])
        if more > 0:
            lines.append(f"  ... and {more:,} more (--first N shows more)")
    if not report["reasons"]:
        lines.append("nothing rejected, no duplicates")
    return "\n".join(lines)
