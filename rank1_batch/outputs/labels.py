"""Training labels from Rank1 scores: choosing positives and negatives, and label layouts.

Selection (:class:`LabelRules`) works per query on committed rows:

* only ``complete``, ``forced`` and ``direct`` rows are candidates; ``fallback`` (0.5 by
  rule) and ``error`` rows never become labels;
* a positive has ``score >= pos_threshold`` and a rank inside ``pos_ranks``; a negative has
  ``score <= neg_threshold``, a rank inside ``neg_ranks`` and, when ``margin`` is set, a
  score at least ``margin`` below the query's best positive;
* ranks are the reranked ranks (``rank_by="rerank"``) or the first-stage ranks
  (``rank_by="input"``, e.g. hard negatives from BM25 ranks 10-100);
* at most ``max_pos`` positives and ``max_neg`` negatives per query, best first; queries
  without a positive or without a negative are skipped and counted.

The layouts follow each consumer's own format (see docs/inputs-outputs.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from rank1_batch.outputs.results import LABEL_STATUSES, by_query


def parse_window(text: str | None, what: str = "rank window") -> tuple[int, int | None]:
    """``"10:100"`` → (10, 100) (1-based, inclusive); ``"10:"`` → (10, None); ``"5"`` → (1, 5).

    ``what`` names the option in errors (``--neg-ranks 'abc': ...``)."""
    if text is None or text.strip() in ("", ":"):
        return 1, None
    bad = ValueError(f"{what} {text!r}: expected START:END, START: or N (1-based integers)")
    lo, hi = text.split(":", 1) if ":" in text else ("1", text)
    try:
        start = int(lo) if lo.strip() else 1
        end = int(hi) if hi.strip() else None
    except ValueError:
        raise bad from None
    if start < 1 or (end is not None and end < start):
        raise ValueError(f"{what} {text!r}: expected START:END with 1 <= START <= END")
    return start, end


# FlagEmbedding distils with a softmax over the teacher scores: probabilities near 0 and 1
# flatten to ~uniform there ([0.9999, 0.0004] -> [0.73, 0.27]), logits keep the margins.
DEFAULT_VALUE = {"flagembedding": "logit"}


def default_value(fmt: str) -> str:
    """The exported score value a label format uses unless ``--value`` says otherwise."""
    return DEFAULT_VALUE.get(fmt, "score")


@dataclass(frozen=True)
class LabelRules:
    pos_threshold: float = 0.5
    neg_threshold: float = 0.5
    pos_ranks: str | None = None
    neg_ranks: str | None = None
    max_pos: int = 1
    max_neg: int = 8
    margin: float | None = None
    rank_by: str = "rerank"  # or "input"
    value: str = "score"  # "score" (P(true)) or "logit" for the exported score values

    def __post_init__(self) -> None:
        parse_window(self.pos_ranks, "--pos-ranks")
        parse_window(self.neg_ranks, "--neg-ranks")
        if self.rank_by not in ("rerank", "input"):
            raise ValueError("rank_by must be 'rerank' or 'input'")
        if self.value not in ("score", "logit"):
            raise ValueError("value must be 'score' or 'logit'")
        if self.max_pos < 1 or self.max_neg < 1:
            raise ValueError("max_pos and max_neg must be at least 1")


@dataclass
class LabelCounts:
    queries: int = 0
    labelled_queries: int = 0
    no_positive: int = 0
    no_negative: int = 0
    positives: int = 0
    negatives: int = 0
    excluded_status: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Doc:
    doc_id: str
    text: str
    title: str | None
    score: float  # the exported value (score or logit)
    p_true: float


@dataclass(frozen=True)
class QueryLabels:
    query_id: str
    query: str
    positives: list[Doc]
    negatives: list[Doc]


def _inside(rank: int | None, window: tuple[int, int | None]) -> bool:
    if rank is None:
        return False
    lo, hi = window
    return rank >= lo and (hi is None or rank <= hi)


def select(table: pa.Table, rules: LabelRules) -> tuple[list[QueryLabels], LabelCounts]:
    """Positives and negatives per query (queries in id order), plus counts for the sidecar."""
    counts = LabelCounts()
    pos_w, neg_w = parse_window(rules.pos_ranks), parse_window(rules.neg_ranks)
    rank_col = "rank" if rules.rank_by == "rerank" else "input_rank"
    out = []
    for qid, rows in by_query(table).items():
        counts.queries += 1
        usable = []
        for r in rows:
            if r["status"] in LABEL_STATUSES and not math.isnan(r["score"]):
                usable.append(r)
            else:
                counts.excluded_status[r["status"]] = counts.excluded_status.get(r["status"], 0) + 1
        usable.sort(key=lambda r: (-r["score"], r["doc_id"]))

        def doc(r: dict[str, Any]) -> Doc:
            return Doc(r["doc_id"], r["passage"], r["title"], float(r[rules.value]), r["score"])

        pos = [
            r for r in usable if r["score"] >= rules.pos_threshold and _inside(r[rank_col], pos_w)
        ][: rules.max_pos]
        taken = {r["doc_id"] for r in pos}
        ceiling = pos[0]["score"] - rules.margin if pos and rules.margin is not None else math.inf
        neg = [
            r
            for r in usable
            if r["doc_id"] not in taken
            and r["score"] <= rules.neg_threshold
            and r["score"] <= ceiling
            and _inside(r[rank_col], neg_w)
        ][: rules.max_neg]
        if not pos:
            counts.no_positive += 1
            continue
        if not neg:
            counts.no_negative += 1
            continue
        counts.labelled_queries += 1
        counts.positives += len(pos)
        counts.negatives += len(neg)
        out.append(QueryLabels(qid, rows[0]["query"], [doc(r) for r in pos], [doc(r) for r in neg]))
    return out, counts


def sidecar(rules: LabelRules, counts: LabelCounts, fmt: str, provenance: dict[str, Any]) -> dict:
    """What the label files record about how they were chosen."""
    return {
        "format": fmt,
        "rules": asdict(rules),
        "label_statuses": list(LABEL_STATUSES),
        "counts": asdict(counts),
        **provenance,
    }


# -- layouts ----------------------------------------------------------------------------------


def _text(d: Doc) -> str:
    return f"{d.title} {d.text}".strip() if d.title else d.text


def flagembedding_rows(labels: list[QueryLabels]) -> list[dict[str, Any]]:
    return [
        {
            "query": q.query,
            "pos": [_text(d) for d in q.positives],
            "neg": [_text(d) for d in q.negatives],
            "pos_scores": [d.score for d in q.positives],
            "neg_scores": [d.score for d in q.negatives],
        }
        for q in labels
    ]


def tevatron_rows(labels: list[QueryLabels]) -> list[dict[str, Any]]:
    def passage(d: Doc) -> dict[str, Any]:
        return {"docid": d.doc_id, "title": d.title or "", "text": d.text, "score": d.score}

    return [
        {
            "query_id": q.query_id,
            "query": q.query,
            "positive_passages": [passage(d) for d in q.positives],
            "negative_passages": [passage(d) for d in q.negatives],
        }
        for q in labels
    ]


ST_KINDS = ("triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "margin-mse")


def sentence_transformers_table(labels: list[QueryLabels], kind: str, n_neg: int) -> pa.Table:
    """sentence-transformers training columns (order = model inputs; ``label``/``score`` last).

    ``n-tuple``/``n-tuple-scores`` keep queries with ``n_neg`` negatives (the first positive);
    ``triplet``/``margin-mse`` pair every positive with every negative; ``margin-mse`` scores
    are ``value(pos) - value(neg)``; ``labeled-pair`` has label 1 for positives, 0 for negatives.
    """
    if kind in ("triplet", "margin-mse"):
        rows = [
            {"query": q.query, "positive": _text(p), "negative": _text(n)}
            | ({"score": p.score - n.score} if kind == "margin-mse" else {})
            for q in labels
            for p in q.positives
            for n in q.negatives
        ]
        names = ["query", "positive", "negative"] + (["score"] if kind == "margin-mse" else [])
    elif kind in ("n-tuple", "n-tuple-scores"):
        rows = []
        for q in labels:
            if len(q.negatives) < n_neg:
                continue
            negs = q.negatives[:n_neg]
            row: dict[str, Any] = {"query": q.query, "positive": _text(q.positives[0])}
            row |= {f"negative_{i + 1}": _text(n) for i, n in enumerate(negs)}
            if kind == "n-tuple-scores":
                row["score"] = [q.positives[0].score] + [n.score for n in negs]
            rows.append(row)
        names = ["query", "positive"] + [f"negative_{i + 1}" for i in range(n_neg)]
        names += ["score"] if kind == "n-tuple-scores" else []
    elif kind == "labeled-pair":
        rows = [
            {"query": q.query, "passage": _text(d), "label": float(lab)}
            for q in labels
            for lab, docs in ((1, q.positives), (0, q.negatives))
            for d in docs
        ]
        names = ["query", "passage", "label"]
    else:
        raise ValueError(f"unknown sentence-transformers kind {kind!r} (one of {ST_KINDS})")
    if not rows:
        return pa.table({n: pa.array([], _st_type(n)) for n in names})
    return pa.Table.from_pylist(rows).select(names)


def _st_type(name: str) -> pa.DataType:
    if name == "score":
        return pa.float64()
    return pa.float64() if name == "label" else pa.string()


def pylate_tables(labels: list[QueryLabels]) -> dict[str, pa.Table]:
    """PyLate distillation configs: ``train`` {query_id, document_ids, scores}, ``queries``
    {query_id, text}, ``documents`` {document_id, text}; candidates = positives + negatives."""
    train = {"query_id": [], "document_ids": [], "scores": []}  # type: dict[str, list[Any]]
    docs: dict[str, str] = {}
    for q in labels:
        cands = q.positives + q.negatives
        train["query_id"].append(q.query_id)
        train["document_ids"].append([d.doc_id for d in cands])
        train["scores"].append([d.score for d in cands])
        for d in cands:
            docs.setdefault(d.doc_id, _text(d))
    return {
        "train": pa.table(
            train,
            schema=pa.schema(
                [
                    ("query_id", pa.string()),
                    ("document_ids", pa.list_(pa.string())),
                    ("scores", pa.list_(pa.float64())),
                ]
            ),
        ),
        "queries": pa.table(
            {"query_id": [q.query_id for q in labels], "text": [q.query for q in labels]},
            schema=pa.schema([("query_id", pa.string()), ("text", pa.string())]),
        ),
        "documents": pa.table(
            {"document_id": sorted(docs), "text": [docs[k] for k in sorted(docs)]},
            schema=pa.schema([("document_id", pa.string()), ("text", pa.string())]),
        ),
    }
