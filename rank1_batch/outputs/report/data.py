"""Reading an output folder for the report, one committed shard at a time.

Only shards named by ``_commits/`` markers are read (as :mod:`rank1_batch.outputs.results` does),
each file checksum verified against its marker (:func:`committed_columns`), and only the
columns a figure needs are decoded. A query's rows all live in one shard (prepare assigns shards
by query id), so per-query figures are computed shard by shard and only per-query scalars and
fixed-size accumulators stay in memory: the driver's memory grows with the number of queries,
never with pairs, passages or traces.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core import rank1
from rank1_batch.core.figures import (
    Histogram,
    Reliability,
    kendall_tau_b,
    linear_edges,
    spearman,
)
from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.labels import LabelCounts, LabelRules, select
from rank1_batch.outputs.results import LABEL_STATUSES, ResultsError

# The report reads the final score only (not reasoning.mode's parts, nor the engine).
SCORE_COLUMNS = (
    "query_id", "doc_id", "score", "logit", "status", "error", "prompt_tokens",
    "reasoning_tokens", "truncated", "rank", "model", "model_revision", "prompt_id",
)  # fmt: skip
PROVENANCE = ("model", "model_revision", "prompt_id")
SCAN_PAIR_COLUMNS = ("query_id", "doc_id", "input_rank")
STATUSES = rank1.STATUSES


def read_columns(store: Store, rel: str, columns: Sequence[str]) -> pa.Table:
    """Only ``columns`` of one Parquet file (column chunks are fetched, not the whole file)."""
    return store.read_parquet(rel, columns=columns)


def committed_columns(store: Store, shard: str, kind: str, columns: Sequence[str]) -> pa.Table:
    """``columns`` of a committed shard's ``scores`` or ``traces`` file, its checksum verified
    (:func:`rank1_batch.io.commit.committed_table`: a tampered file is a ``CommitError``)."""
    table: pa.Table = commit.committed_table(store, shard, kind, list(columns))
    return table


def read_shard(store: Store, shard: str, pair_columns: Sequence[str] = ()) -> pa.Table:
    """A committed shard's scores plus its pairs' first-stage rank (and ``pair_columns``).

    The scores file holds the rows of the pairs file in the same order (``process_shard``
    builds one from the other); the ids are compared so a mismatch is an error, not a mix-up.
    """
    scores = committed_columns(store, shard, "scores", SCORE_COLUMNS)
    wanted = [*SCAN_PAIR_COLUMNS, *(c for c in pair_columns if c not in SCAN_PAIR_COLUMNS)]
    pairs = read_columns(store, layout.pairs_path(shard), wanted)
    if scores.num_rows != pairs.num_rows or not (
        scores.column("query_id").equals(pairs.column("query_id"))
        and scores.column("doc_id").equals(pairs.column("doc_id"))
    ):
        raise ResultsError(f"{store.uri}: {shard}: scores do not match its pairs file")
    for name in wanted[2:]:
        scores = scores.append_column(name, pairs.column(name))
    return scores


def query_groups(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """(query_id, rows) for each query of a shard table, rows in the table's order."""
    if not table.num_rows:
        return
    order = pc.sort_indices(table, [("query_id", "ascending")])  # stable
    table = table.take(order)
    ids = table.column("query_id").to_pylist()
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            yield ids[start], table.slice(start, i - start)
            start = i


@dataclass
class JobInfo:
    """What the folder says about the job: job.json, the manifest, _SUCCESS.json, markers."""

    job: dict[str, Any]
    manifest: dict[str, Any]
    success: dict[str, Any] | None
    markers: list[commit.Marker]
    rejected_reasons: dict[str, int]

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.job.get("spec", {})
        return spec

    def timeline(self) -> list[tuple[str, str, float, float, int]]:
        """(worker, shard, start, end, rows) per committed shard, seconds since the earliest
        start. A shard's start is its commit time minus the seconds its marker records."""
        if not self.markers:
            return []
        starts = [m.committed_at - m.stats.seconds for m in self.markers]
        t0 = min(starts)
        return [
            (m.worker or "?", m.shard, s - t0, m.committed_at - t0, m.rows)
            for m, s in zip(self.markers, starts, strict=True)
        ]

    def throughput(self) -> list[tuple[str, list[float], list[float]]]:
        """Cumulative pairs committed over time, per worker and in total (step series)."""
        bars = sorted(self.timeline(), key=lambda b: b[3])
        series: dict[str, tuple[list[float], list[float]]] = {}
        total: tuple[list[float], list[float]] = ([], [])
        done: Counter[str] = Counter()
        for worker, _, _, end, rows in bars:
            done[worker] += rows
            xs, ys = series.setdefault(worker, ([], []))
            xs.append(end)
            ys.append(done[worker])
            total[0].append(end)
            total[1].append((total[1][-1] if total[1] else 0) + rows)
        named = [(f"w{i} {w}", *series[w]) for i, w in enumerate(sorted(series))]
        return [("all workers", *total), *named] if len(series) > 1 else named


def read_job_info(store: Store) -> JobInfo:
    job = layout.read_job(store)
    manifest = store.read_json(layout.MANIFEST) if store.exists(layout.MANIFEST) else {}
    success = store.read_json(layout.SUCCESS) if store.exists(layout.SUCCESS) else None
    markers = commit.read_markers(store)
    if not markers:
        raise ResultsError(f"{store.uri}: no committed shards (run the job first)")
    reasons: Counter[str] = Counter()
    for rel in manifest.get("rejected_files", []):
        reasons.update(read_columns(store, rel, ["reason"]).column("reason").to_pylist())
    return JobInfo(job, manifest, success, markers, dict(reasons))


@dataclass
class Scan:
    """Accumulators filled shard by shard; every figure of the page comes from here."""

    reasoning_budget: int
    qrels: dict[str, dict[str, int]] | None = None
    metrics: tuple[str, ...] = ()
    rules: LabelRules = field(default_factory=LabelRules)
    pairs: int = 0
    queries: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    score_hist: dict[str, Histogram] = field(default_factory=dict)
    reasoning_hist: dict[str, Histogram] = field(default_factory=dict)
    spearman: list[float] = field(default_factory=list)
    kendall: list[float] = field(default_factory=list)
    labels: LabelCounts = field(default_factory=LabelCounts)
    above_pos: Counter[int] = field(default_factory=Counter)  # per query: usable >= pos thr.
    below_neg: Counter[int] = field(default_factory=Counter)  # per query: usable <= neg thr.
    reliability: Reliability = field(default_factory=Reliability)
    per_query: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # run -> metric
    gains: list[float] = field(default_factory=list)
    unjudged: int = 0  # queries of the output without qrels (in no mean, as in eval)
    provenance: dict[str, set[str]] = field(default_factory=dict)  # model, revision, prompt

    def __post_init__(self) -> None:
        for s in STATUSES:
            self.score_hist[s] = Histogram(linear_edges(0, 1, 20))
            self.reasoning_hist[s] = Histogram(linear_edges(0, max(self.reasoning_budget, 1), 32))

    def add_shard(self, table: pa.Table) -> None:
        self.pairs += table.num_rows
        for name in PROVENANCE:
            values = pc.unique(table.column(name)).to_pylist()
            self.provenance.setdefault(name, set()).update(v for v in values if v)
        status = table.column("status")
        self.statuses.update(status.to_pylist())
        self.errors.update(e for e in table.column("error").to_pylist() if e)
        self.truncated += int(pc.sum(pc.cast(table.column("truncated"), pa.int64())).as_py() or 0)
        self.prompt_tokens += int(pc.sum(table.column("prompt_tokens")).as_py() or 0)
        self.reasoning_tokens += int(pc.sum(table.column("reasoning_tokens")).as_py() or 0)
        for s in STATUSES:
            rows = table.filter(pc.equal(status, s))
            if rows.num_rows:
                self.score_hist[s].add(rows.column("score").to_numpy(zero_copy_only=False))
                self.reasoning_hist[s].add(
                    rows.column("reasoning_tokens").fill_null(0).to_numpy(zero_copy_only=False)
                )
        for _, rows in query_groups(table):
            self.queries += 1
            self._agreement(rows)
        self._labels(table)
        if self.qrels is not None:
            self._judged(table)

    def _agreement(self, rows: pa.Table) -> None:
        scored = rows.filter(pc.invert(pc.is_null(rows.column("rank"))))
        if scored.num_rows >= 2:
            first = scored.column("input_rank").to_pylist()
            ours = scored.column("rank").to_pylist()
            self.spearman.append(spearman(first, ours))
            self.kendall.append(kendall_tau_b(first, ours))

    def _labels(self, table: pa.Table) -> None:
        # labels.select reads text columns only to build the label rows it returns; the
        # report needs its counts, so those columns are nulls here, never read from disk.
        n = table.num_rows
        for name in ("query", "passage", "title"):
            table = table.append_column(name, pa.nulls(n, pa.string()))
        _, counts = select(table, self.rules)
        for key, value in asdict(counts).items():
            if key == "excluded_status":
                for status, c in value.items():
                    self.labels.excluded_status[status] = (
                        self.labels.excluded_status.get(status, 0) + c
                    )
            else:
                setattr(self.labels, key, getattr(self.labels, key) + value)
        for _, rows in query_groups(table):
            usable = rows.filter(pc.is_in(rows.column("status"), pa.array(LABEL_STATUSES)))
            scores = [s for s in usable.column("score").to_pylist() if not math.isnan(s)]
            self.above_pos[sum(s >= self.rules.pos_threshold for s in scores)] += 1
            self.below_neg[sum(s <= self.rules.neg_threshold for s in scores)] += 1

    def _judged(self, table: pa.Table) -> None:
        from rank1_batch.outputs.evaluate import evaluate_runs, first_stage_run, reranked_run

        assert self.qrels is not None
        qrels = self.qrels
        usable = table.filter(pc.is_in(table.column("status"), pa.array(LABEL_STATUSES)))
        judged = [
            (p, qrels[q].get(d, 0) > 0)
            for q, d, p in zip(
                usable.column("query_id").to_pylist(),
                usable.column("doc_id").to_pylist(),
                usable.column("score").to_pylist(),
                strict=True,
            )
            if q in qrels
        ]
        self.reliability.add([p for p, _ in judged], [r for _, r in judged])
        qids = pc.unique(table.column("query_id")).to_pylist()
        shard_qrels = {q: qrels[q] for q in qids if q in qrels}
        self.unjudged += len(qids) - len(shard_qrels)
        if not shard_qrels:
            return
        runs = {"first_stage": first_stage_run(table), "reranked": reranked_run(table)}
        result = evaluate_runs(shard_qrels, runs, list(self.metrics), per_query=True)
        per_run = {name: result["runs"][name].get("per_query", {}) for name in runs}
        for name, table_q in per_run.items():
            acc = self.per_query.setdefault(name, {})
            for values in table_q.values():
                for metric, v in values.items():
                    acc.setdefault(metric, []).append(v)
        head = self.metric_keys(result)[0] if self.metric_keys(result) else None
        if head is not None:
            first, ours = per_run["first_stage"], per_run["reranked"]
            for q in sorted(set(first) & set(ours)):
                self.gains.append(ours[q][head] - first[q][head])

    @staticmethod
    def metric_keys(result: dict[str, Any]) -> list[str]:
        return list(result["runs"]["reranked"]["aggregate"])

    def aggregates(self) -> dict[str, dict[str, float]]:
        """Mean of the per-query values over the queries each run has that have qrels:
        ``rank1-batch eval``'s default convention (trec_eval's)."""
        return {
            run: {m: float(np.mean(v)) for m, v in metrics.items() if v}
            for run, metrics in self.per_query.items()
        }

    def evaluated_queries(self) -> dict[str, int]:
        return {
            run: max((len(v) for v in metrics.values()), default=0)
            for run, metrics in self.per_query.items()
        }
