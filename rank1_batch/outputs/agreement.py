"""Where two runs of the same candidates disagree, without qrels (``compare``'s second half).

Per query held by both runs: Kendall's tau-b between their ranks of the documents both rank
(error rows have no rank and are left out; the first stage ranks by ``input_rank``), the
overlap of their top k (``|top_k(A) ∩ top_k(B)| / k``, k cut to the shorter ranking), and
the label each gives a pair at ``export``'s thresholds
(:class:`~rank1_batch.outputs.labels.LabelRules`, default P(true) >= 0.5 positive, <= 0.5
negative, positives first; only complete, forced and direct rows carry a label, as in
``export``; the first stage gives none). The share of pairs whose label differs is pooled
over every pair both runs hold.

Reading: the baseline's committed shards one at a time; for each, the shards of the other
run that hold its queries (found from the pairs files' ``query_id`` column: one small read a
shard), kept in a small cache. Outputs of one input with one shard plan align shard for
shard, so each shard is read once; memory is a few shards plus per-query scalars.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from rank1_batch.core.figures import kendall_tau_b
from rank1_batch.io import layout
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.outputs.labels import LabelRules
from rank1_batch.outputs.results import LABEL_STATUSES, Committed, open_committed

COLUMNS = ("query_id", "doc_id", "score", "status", "rank")
POS, NEG, NONE = 1, -1, 0
CACHE_SHARDS = 4


@dataclass(frozen=True)
class Ranking:
    """One query of one run: rank (NaN where unranked) and label per document."""

    rank: dict[str, float]
    label: dict[str, int] | None  # None: the first stage (no scores)


def label_of(score: float, status: str, rules: LabelRules) -> int:
    if status not in LABEL_STATUSES or math.isnan(score):
        return NONE
    if score >= rules.pos_threshold:
        return POS
    return NEG if score <= rules.neg_threshold else NONE


def rankings(table: pa.Table, kind: str, rules: LabelRules) -> dict[str, Ranking]:
    """Each query of one shard table as a :class:`Ranking`."""
    cols = {c: table.column(c).to_pylist() for c in (*COLUMNS, "input_rank")}
    out: dict[str, Ranking] = {}
    for i, q in enumerate(cols["query_id"]):
        r = out.get(q)
        if r is None:
            r = out[q] = Ranking({}, None if kind == "first_stage" else {})
        d = cols["doc_id"][i]
        rank = cols["input_rank"][i] if kind == "first_stage" else cols["rank"][i]
        r.rank[d] = math.nan if rank is None else float(rank)
        if r.label is not None:
            r.label[d] = label_of(cols["score"][i], cols["status"][i], rules)
    return out


@dataclass
class QueryAgreement:
    query_id: str
    tau: float
    overlap: float
    common: int  # documents both rank
    pairs: int  # pairs both runs hold (label comparison)
    differ: int  # of those, pairs whose label differs
    pos_to_neg: int
    neg_to_pos: int
    labelled: bool  # both runs give labels (not the first stage)


def agree(a: Ranking, b: Ranking, qid: str, k: int) -> QueryAgreement:
    ranked = [
        d for d, r in a.rank.items() if d in b.rank and not (math.isnan(r) or math.isnan(b.rank[d]))
    ]
    tau = kendall_tau_b([a.rank[d] for d in ranked], [b.rank[d] for d in ranked])
    top_a = _top(a.rank, k)
    top_b = _top(b.rank, k)
    kk = min(k, len(top_a), len(top_b))
    overlap = len(set(top_a[:kk]) & set(top_b[:kk])) / kk if kk else math.nan
    both = [d for d in a.rank if d in b.rank]
    differ = p2n = n2p = 0
    labelled = a.label is not None and b.label is not None
    if a.label is not None and b.label is not None:
        for d in both:
            la, lb = a.label[d], b.label[d]
            differ += la != lb
            p2n += la == POS and lb == NEG
            n2p += la == NEG and lb == POS
    return QueryAgreement(qid, tau, overlap, len(ranked), len(both), differ, p2n, n2p, labelled)


def _top(rank: dict[str, float], k: int) -> list[str]:
    ranked = sorted((r, d) for d, r in rank.items() if not math.isnan(r))
    return [d for _, d in ranked[:k]]


@dataclass
class _Other:
    """The other run: which shard holds each query, and a small cache of shard rankings."""

    committed: Committed
    kind: str
    rules: LabelRules
    shard_of: dict[str, str] = field(default_factory=dict)
    cache: OrderedDict[str, dict[str, Ranking]] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        store = self.committed.store
        for shard in self.committed.shards:
            ids = store.read_parquet(layout.pairs_path(shard), columns=["query_id"])
            for q in set(ids.column("query_id").to_pylist()):
                self.shard_of[q] = shard

    def get(self, qid: str) -> Ranking | None:
        shard = self.shard_of.get(qid)
        if shard is None:
            return None
        if shard not in self.cache:
            _, table = self.committed.read(shard, COLUMNS, ("input_rank",))
            self.cache[shard] = rankings(table, self.kind, self.rules)
            if len(self.cache) > CACHE_SHARDS:
                self.cache.popitem(last=False)
        self.cache.move_to_end(shard)
        return self.cache[shard].get(qid)


def agreement(
    base: tuple[str, str],
    others: list[tuple[str, str]],
    *,
    k: int = 10,
    rules: LabelRules | None = None,
    storage: StorageSpec | None = None,
) -> list[tuple[list[QueryAgreement], int, int]]:
    """Per-query agreement of ``base`` = (uri, kind) with each of ``others``, and how many
    queries each of the two holds."""
    rules = rules or LabelRules()
    if k < 1:
        raise ValueError("--top-k must be at least 1")
    base_c = open_committed(Store(base[0], storage))
    views = [_Other(open_committed(Store(uri, storage)), kind, rules) for uri, kind in others]
    out: list[list[QueryAgreement]] = [[] for _ in others]
    base_n = 0
    for _, table in base_c.tables(COLUMNS, ("input_rank",)):
        for qid, a in sorted(rankings(table, base[1], rules).items()):
            base_n += 1
            for view, rows in zip(views, out, strict=True):
                b = view.get(qid)
                if b is not None:
                    rows.append(agree(a, b, qid, k))
    return [(rows, base_n, len(v.shard_of)) for rows, v in zip(out, views, strict=True)]


def summary(rows: list[QueryAgreement], base_queries: int, other_queries: int) -> dict[str, Any]:
    """What the command prints: medians and means over queries, the pooled label share."""
    taus = [r.tau for r in rows if not math.isnan(r.tau)]
    overlaps = [r.overlap for r in rows if not math.isnan(r.overlap)]
    pairs = sum(r.pairs for r in rows)
    labelled = bool(rows) and all(r.labelled for r in rows)
    differ = sum(r.differ for r in rows)
    return {
        "queries": len(rows),
        "only_in_baseline": base_queries - len(rows),
        "only_in_other": other_queries - len(rows),
        "kendall_tau_median": float(np.median(taus)) if taus else math.nan,
        "kendall_tau_mean": float(np.mean(taus)) if taus else math.nan,
        "top_k_overlap_mean": float(np.mean(overlaps)) if overlaps else math.nan,
        "pairs": pairs,
        "label_differ_share": differ / pairs if pairs and labelled else None,
        "pos_to_neg": sum(r.pos_to_neg for r in rows),
        "neg_to_pos": sum(r.neg_to_pos for r in rows),
    }


def agreement_report(
    names: list[str],
    k: int,
    pos_threshold: float = 0.5,
    neg_threshold: float = 0.5,
    storage: StorageSpec | None = None,
) -> list[dict[str, Any]]:
    """Agreement of the baseline with each other run: a summary and per-query rows."""
    from rank1_batch.outputs.compare import parse_sources
    from rank1_batch.outputs.labels import LabelRules

    sources = parse_sources(names)
    rules = LabelRules(pos_threshold=pos_threshold, neg_threshold=neg_threshold)
    base, others = sources[0], sources[1:]
    pairs = [(s.uri, s.kind) for s in others]
    results = agreement((base.uri, base.kind), pairs, k=k, rules=rules, storage=storage)
    out = []
    for s, (rows, n_base, n_other) in zip(others, results, strict=True):
        out.append(
            {
                "baseline": base.label,
                "label": s.label,
                "top_k": k,
                "thresholds": {"pos": pos_threshold, "neg": neg_threshold},
                **summary(rows, n_base, n_other),
                "per_query": [asdict(r) for r in rows],
            }
        )
    return out


def format_agreement(rows: list[dict[str, Any]]) -> str:
    lines = ["agreement (no qrels needed), per query against the baseline:"]
    for a in rows:
        share = a["label_differ_share"]
        label = "–" if share is None else f"{share:.1%} of {a['pairs']} pairs"
        lines.append(
            f"  {a['label']} vs {a['baseline']}: {a['queries']} queries; Kendall tau median "
            f"{a['kendall_tau_median']:.3f} (mean {a['kendall_tau_mean']:.3f}); top-{a['top_k']} "
            f"overlap {a['top_k_overlap_mean']:.3f}; label differs {label}"
            + (
                f" (pos->neg {a['pos_to_neg']}, neg->pos {a['neg_to_pos']})"
                if share is not None
                else ""
            )
        )
        dropped = a["only_in_baseline"] + a["only_in_other"]
        if dropped:
            lines.append(
                f"    dropped {dropped} queries held by one run only ({a['only_in_baseline']} "
                f"only in {a['baseline']}, {a['only_in_other']} only in {a['label']})"
            )
    return "\n".join(lines)


def json_safe(obj: Any) -> Any:
    """NaN (a mean over no query, a tau of one document) as null: JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
