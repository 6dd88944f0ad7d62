"""The trace explorer's data: a bounded selection of queries with their candidates and traces.

The page embeds only the queries named by ``--queries`` or a deterministic sample of
``--sample`` queries (the ones whose id hashes lowest, so the choice does not depend on shard
order or on how many shards exist), each with at most ``max_candidates`` of its best-ranked
candidates plus its non-``complete`` ones, traces and passages cut to a stated length, and
the whole payload under ``max_bytes``. Every cut is counted and said on the page.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.io.store import Store
from rank1_batch.outputs.report.data import committed_columns, query_groups, read_shard


@dataclass(frozen=True)
class Limits:
    sample: int = 25
    max_candidates: int = 100
    trace_chars: int = 6000
    passage_chars: int = 1500
    max_bytes: int = 15_000_000  # explorer payload; the page adds its plots (tens of KB)

    def __post_init__(self) -> None:
        for name in ("sample", "max_candidates", "trace_chars", "passage_chars", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"report: {name} must be at least 1")


def _key(query_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(query_id.encode(), digest_size=8).digest(), "big")


class Selection:
    """Which queries the explorer embeds, decided while streaming the shards."""

    def __init__(self, ids: Iterable[str] | None, sample: int) -> None:
        self.ids = list(dict.fromkeys(ids)) if ids is not None else None
        self.sample = sample
        self.found: dict[str, str] = {}  # query_id -> shard
        self._heap: list[tuple[int, str, str]] = []  # (-key, query_id, shard)

    def offer(self, query_ids: Iterable[str], shard: str) -> None:
        if self.ids is not None:
            wanted = set(self.ids)
            self.found.update((q, shard) for q in query_ids if q in wanted)
            return
        for q in query_ids:
            item = (-_key(q), q, shard)
            if len(self._heap) < self.sample:
                heapq.heappush(self._heap, item)
            elif item > self._heap[0]:
                heapq.heapreplace(self._heap, item)

    def chosen(self) -> list[tuple[str, str]]:
        """(query_id, shard) in display order: as named, or by id for a sample."""
        if self.ids is not None:
            missing = [q for q in self.ids if q not in self.found]
            if missing:
                raise ValueError(
                    f"--queries: {len(missing)} id(s) not in the committed results "
                    f"(first: {missing[0]!r})"
                )
            return [(q, self.found[q]) for q in self.ids]
        return sorted((q, s) for _, q, s in self._heap)

    def describe(self, total_queries: int) -> str:
        if self.ids is not None:
            return f"the {len(self.ids)} queries named by --queries"
        n = min(self.sample, total_queries)
        if n >= total_queries:
            return f"all {total_queries} queries"
        return (
            f"a sample of {n} of {total_queries} queries (those whose id hashes lowest; "
            "choose others with --queries or a larger --sample)"
        )


@dataclass
class Explorer:
    queries: list[dict[str, Any]] = field(default_factory=list)
    dropped_for_size: int = 0
    candidates_cut: int = 0  # queries showing fewer candidates than they have
    traces_cut: int = 0
    bytes: int = 0


def _num(v: Any) -> Any:
    """JSON has no NaN: NaN scores (error rows) travel as null."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _cut(text: str | None, limit: int) -> tuple[str | None, bool]:
    if text is None or len(text) <= limit:
        return text, False
    return text[:limit], True


def build(
    store: Store,
    chosen: list[tuple[str, str]],
    limits: Limits,
    qrels: dict[str, dict[str, int]] | None,
    metrics: list[str],
) -> Explorer:
    """Read the chosen queries' rows, passages and traces (only their shards)."""
    by_shard: dict[str, list[str]] = {}
    for q, s in chosen:
        by_shard.setdefault(s, []).append(q)
    payload: dict[str, dict[str, Any]] = {}
    out = Explorer()
    for shard in sorted(by_shard):
        ids = pa.array(by_shard[shard], pa.string())
        table = read_shard(store, shard, ("query", "passage", "title"))
        table = table.filter(pc.is_in(table.column("query_id"), ids))
        traces = committed_columns(
            store, shard, "traces", ("query_id", "doc_id", "reasoning", "finish_reason")
        )
        traces = traces.filter(pc.is_in(traces.column("query_id"), ids))
        trace_of = {
            (r["query_id"], r["doc_id"]): (r["reasoning"], r["finish_reason"])
            for r in traces.to_pylist()
        }
        per_query = _query_metrics(table, qrels, metrics) if qrels is not None else {}
        for qid, rows_q in query_groups(table):
            payload[qid] = _query_payload(qid, rows_q, trace_of, limits, qrels, out)
            if qid in per_query:
                payload[qid]["metrics"] = per_query[qid]
    for qid, _ in chosen:
        if qid not in payload:
            continue
        size = len(json.dumps(payload[qid]))
        if out.bytes + size > limits.max_bytes:
            out.dropped_for_size += 1
            continue
        out.bytes += size
        out.queries.append(payload[qid])
    return out


def _query_metrics(
    table: pa.Table, qrels: dict[str, dict[str, int]], metrics: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    from rank1_batch.outputs.evaluate import evaluate_runs, first_stage_run, reranked_run

    sub = {q: qrels[q] for q in pc.unique(table.column("query_id")).to_pylist() if q in qrels}
    if not sub:
        return {}
    runs = {"first_stage": first_stage_run(table), "reranked": reranked_run(table)}
    result = evaluate_runs(sub, runs, metrics, per_query=True)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        for q, values in result["runs"][run].get("per_query", {}).items():
            out.setdefault(q, {})[run] = values
    return out


def _query_payload(
    qid: str,
    rows: pa.Table,
    trace_of: dict[tuple[str, str], tuple[str | None, str | None]],
    limits: Limits,
    qrels: dict[str, dict[str, int]] | None,
    out: Explorer,
) -> dict[str, Any]:
    records = rows.to_pylist()
    # Reranked order; error rows (no rank) last, by doc id.
    records.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0, r["doc_id"]))
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    top = records[: limits.max_candidates]
    rest = [r for r in records[limits.max_candidates :] if r["status"] != "complete"]
    shown = top + rest[: limits.max_candidates]
    if len(shown) < len(records):
        out.candidates_cut += 1
    judged = qrels.get(qid) if qrels is not None else None
    cands = []
    for r in shown:
        reasoning, finish = trace_of.get((qid, r["doc_id"]), (None, None))
        trace, trace_cut = _cut(reasoning, limits.trace_chars)
        passage, _ = _cut(r["passage"], limits.passage_chars)
        out.traces_cut += trace_cut
        cands.append(
            {
                "d": r["doc_id"],
                "r": r["rank"],
                "s": _num(r["score"]),
                "lg": _num(r["logit"]),
                "st": r["status"],
                "er": r["error"],
                "ir": r["input_rank"],
                "rel": judged.get(r["doc_id"], 0) if judged is not None else None,
                "rt": r["reasoning_tokens"],
                "pt": r["prompt_tokens"],
                "tr": r["truncated"],
                "fr": finish,
                "t": trace,
                "tc": len(reasoning) if trace_cut and reasoning is not None else None,
                "p": passage,
                "ti": r["title"],
            }
        )
    return {
        "id": qid,
        "text": records[0]["query"] if records else "",
        "n": len(records),
        "statuses": statuses,
        "judged": judged is not None,
        "c": cands,
    }
