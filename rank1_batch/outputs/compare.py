"""``rank1-batch compare``: several outputs (and the first stage) against qrels, paired.

Per-query values are ``eval``'s (:mod:`rank1_batch.outputs.evaluate`): ``ir_measures.iter_calc`` on
each committed shard's judged queries, with the reranked run exactly as exported and the
first stage as the pairs' ``input_rank``; a judged query the run lacks (every row an error)
scores 0, as evaluators score it. The comparison is over the *same* queries for every output:
the qrels queries that every output holds in a committed shard (their intersection); the
others are dropped and counted per output. When the outputs hold every qrels query, each
output's mean is ``eval --all-qrels-queries``' (trec_eval -c); it is also ``eval``'s default
(the queries the run has) unless a query's rows are all errors, which only ``-c`` counts.

Against the first output (the baseline): the mean paired difference, a paired t-test
(``scipy.stats.ttest_rel``), a paired randomization test (``scipy.stats.permutation_test``,
``permutation_type="samples"``: each query's two values swapped or not, the statistic the
mean difference, ``--permutations`` resamples with ``--seed``; exact when there are no more
than that many sign patterns), both two-sided, and wins/ties/losses per query. p-values are
corrected (Holm or Bonferroni) over one family: the comparisons against the baseline for
one metric (k outputs: k - 1 tests per family), as ranx does. Agreement without qrels lives
in :mod:`rank1_batch.outputs.agreement`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.outputs.evaluate import QrelsIndex, _measures, first_stage_run, reranked_run
from rank1_batch.outputs.results import QueryGuard, open_committed

FIRST_STAGE = "first-stage"
TESTS = ("t", "randomization")
CORRECTIONS = ("holm", "bonferroni", "none")
TIE = 1e-12  # per-query differences at most this large count as ties


@dataclass(frozen=True)
class Source:
    """One compared run: an output's reranked run, or the first stage of an output."""

    label: str  # as the user named it
    uri: str
    kind: str  # "reranked" or "first_stage"


def parse_sources(names: Sequence[str]) -> list[Source]:
    """``OUT`` (its reranked run), ``first-stage:OUT`` (that output's input order) or
    ``first-stage`` (the input order of the first output named)."""
    outputs = [n for n in names if n != FIRST_STAGE and not n.startswith(FIRST_STAGE + ":")]
    sources = []
    for name in names:
        if name == FIRST_STAGE:
            if not outputs:
                raise ValueError("first-stage needs an output to read it from (first-stage:OUT)")
            sources.append(Source(name, outputs[0], "first_stage"))
        elif name.startswith(FIRST_STAGE + ":"):
            sources.append(Source(name, name[len(FIRST_STAGE) + 1 :], "first_stage"))
        else:
            sources.append(Source(name, name, "reranked"))
    if len(sources) < 2:
        raise ValueError("compare needs at least two runs (outputs or first-stage)")
    if len({(s.uri, s.kind) for s in sources}) < len(sources):
        raise ValueError("the same run is named twice")
    return sources


@dataclass
class PerQuery:
    """Per-query metric values of one run and the qrels queries its output holds."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> qid -> v
    held: set[str] = field(default_factory=set)  # queries in committed shards (judged or not)
    complete: bool = True


def per_query_values(
    uri: str,
    qrels: QrelsIndex,
    metrics: list[str],
    kinds: Iterable[str],
    storage: StorageSpec | None = None,
) -> dict[str, PerQuery]:
    """Stream ``uri``'s committed shards once; per-query values of each run kind asked."""
    import ir_measures

    store = Store(uri, storage)
    committed = open_committed(store)
    measures = _measures(metrics)
    out = {k: PerQuery(complete=committed.complete) for k in kinds}
    guard = QueryGuard(store.uri)
    for marker, table in committed.tables(("query_id", "doc_id", "score"), ("input_rank",)):
        qids = guard.check_table(table, marker.shard)
        judged = qrels.for_queries(qids)
        for kind, pq in out.items():
            pq.held.update(qids)
            if not judged:
                continue
            run = first_stage_run(table) if kind == "first_stage" else reranked_run(table)
            for m in ir_measures.iter_calc(measures, judged, run):
                pq.values.setdefault(str(m.measure), {})[m.query_id] = float(m.value)
    return out


# -- statistics (pure) ------------------------------------------------------------------------


def t_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value of ``b - a`` (1.0 when every difference is zero)."""
    from scipy import stats

    if len(a) < 2 or np.all(np.abs(b - a) <= TIE):
        return 1.0
    return float(stats.ttest_rel(b, a).pvalue)


def randomization_test(a: np.ndarray, b: np.ndarray, permutations: int, seed: int) -> float:
    """Two-sided paired randomization test of the mean difference (scipy, seeded)."""
    from scipy import stats

    if len(a) < 1 or np.all(np.abs(b - a) <= TIE):
        return 1.0

    def mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(y - x, axis=axis)

    res = stats.permutation_test(
        (a, b),
        mean_diff,
        permutation_type="samples",
        vectorized=True,
        n_resamples=permutations,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def exact(n_queries: int, permutations: int) -> bool:
    """Whether scipy enumerates every sign pattern (2^n) instead of sampling."""
    return n_queries < 63 and 2**n_queries <= permutations


def correct(pvalues: Sequence[float], method: str) -> list[float]:
    """Holm (step-down) or Bonferroni adjusted p-values, in the order given."""
    m = len(pvalues)
    if method == "none" or m == 0:
        return list(pvalues)
    if method == "bonferroni":
        return [min(1.0, p * m) for p in pvalues]
    if method != "holm":
        raise ValueError(f"unknown correction {method!r} (one of {', '.join(CORRECTIONS)})")
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def wins_ties_losses(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    d = b - a
    return int((d > TIE).sum()), int((np.abs(d) <= TIE).sum()), int((d < -TIE).sum())


# -- the comparison ---------------------------------------------------------------------------


def compare(
    names: Sequence[str],
    qrels_uri: str,
    metrics: list[str],
    *,
    test: str = "t",
    alpha: float = 0.05,
    correction: str = "holm",
    permutations: int = 10_000,
    seed: int = 0,
    storage: StorageSpec | None = None,
) -> dict[str, Any]:
    """The comparison as a JSON-ready dict (see the module docstring)."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r} (one of {', '.join(TESTS)})")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r} (one of {', '.join(CORRECTIONS)})")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha {alpha}: expected 0 < alpha < 1")
    if permutations < 1:
        raise ValueError("--permutations must be at least 1")
    sources = parse_sources(names)
    qrels = QrelsIndex.load(qrels_uri, storage)
    by_uri: dict[str, list[str]] = {}
    for s in sources:
        by_uri.setdefault(s.uri, []).append(s.kind)
    read = {
        uri: per_query_values(uri, qrels, metrics, kinds, storage) for uri, kinds in by_uri.items()
    }
    runs = [read[s.uri][s.kind] for s in sources]
    judged = {str(q) for q in qrels.ids.to_pylist()}
    covered = [pq.held & judged for pq in runs]
    common = sorted(set.intersection(*covered))
    anywhere: set[str] = set().union(*covered)
    keys = [str(m) for m in _measures(metrics)]
    report: dict[str, Any] = {
        "qrels": qrels_uri,
        "metrics": keys,
        "baseline": sources[0].label,
        "runs": [
            {"label": s.label, "output": s.uri, "run": s.kind, "complete": pq.complete}
            for s, pq in zip(sources, runs, strict=True)
        ],
        "queries": {
            "qrels": len(judged),
            "compared": len(common),
            "dropped": len(anywhere) - len(common),
            "in_no_output": len(judged - anywhere),
            "held_per_run": [len(c) for c in covered],
            "dropped_per_run": [len(c) - len(common) for c in covered],
        },
        "convention": "mean over the qrels queries every run's output holds (their "
        "intersection); per-query values as rank1-batch eval computes them",
        "test": test,
        "alpha": alpha,
        "correction": correction,
        "correction_family": "per metric and test: the comparisons against the baseline",
        "permutations": permutations,
        "seed": seed,
        "randomization_exact": exact(len(common), permutations),
        "results": {},
    }
    for key in keys:
        vals = [np.array([r.values.get(key, {}).get(q, 0.0) for q in common]) for r in runs]
        base = vals[0]
        rows: list[dict[str, Any]] = [{"label": sources[0].label, "mean": _mean(base)}]
        for s, v in zip(sources[1:], vals[1:], strict=True):
            w, t, lo = wins_ties_losses(base, v)
            rows.append(
                {
                    "label": s.label,
                    "mean": _mean(v),
                    "delta": _mean(v - base),
                    "p_t": t_test(base, v),
                    "p_randomization": randomization_test(base, v, permutations, seed),
                    "wins": w,
                    "ties": t,
                    "losses": lo,
                }
            )
        for name in ("p_t", "p_randomization"):
            adjusted = correct([r[name] for r in rows[1:]], correction)
            for r, p in zip(rows[1:], adjusted, strict=True):
                r[name + "_corrected"] = p
        for r in rows[1:]:
            chosen = r["p_t_corrected" if test == "t" else "p_randomization_corrected"]
            r["significant"] = bool(chosen < alpha)
        report["results"][key] = rows
        report.setdefault("per_query", {})[key] = {
            q: [float(v[i]) for v in vals] for i, q in enumerate(common)
        }
    return report


def _mean(v: np.ndarray) -> float:
    return float(np.mean(v)) if len(v) else math.nan


def fmt_p(p: float) -> str:
    """A p-value in 4 decimals, or in scientific notation below 1e-4 (never a bare 0)."""
    return f"{p:.4f}" if p >= 1e-4 or p == 0 else f"{p:.1e}"


def format_compare(report: dict[str, Any]) -> str:
    """One table per metric: mean, delta, p-values (corrected) and W/T/L per run."""
    q = report["queries"]
    lines = [
        f"baseline: {report['baseline']}; {q['compared']} queries compared ({report['convention']})"
    ]
    for run, held, dropped in zip(
        report["runs"], q["held_per_run"], q["dropped_per_run"], strict=True
    ):
        if dropped:
            lines.append(
                f"dropped: {dropped} of the {held} judged queries of {run['label']} "
                "(not held by every other run)"
            )
    if q["in_no_output"]:
        lines.append(f"note: {q['in_no_output']} qrels queries are in no run's output")
    kind = "exact" if report["randomization_exact"] else f"{report['permutations']} resamples"
    lines.append(
        f"tests: paired t-test and paired randomization ({kind}, seed {report['seed']}), "
        f"two-sided; correction {report['correction']} per metric; * = corrected p "
        f"({report['test']}) < {report['alpha']}"
    )
    width = max(len(r["label"]) for r in report["runs"]) + 2
    for metric, rows in report["results"].items():
        lines.append("")
        lines.append(
            f"{metric:<{width}}{'mean':>9}{'delta':>10}{'p(t)':>10}{'p(t)c':>10}"
            f"{'p(rand)':>10}{'p(rand)c':>10}  W/T/L"
        )
        for r in rows:
            if "delta" not in r:
                lines.append(f"{r['label']:<{width}}{r['mean']:>9.4f}  (baseline)")
                continue
            star = "*" if r["significant"] else " "
            lines.append(
                f"{r['label']:<{width}}{r['mean']:>9.4f}{r['delta']:>+9.4f}{star}"
                + "".join(
                    f"{fmt_p(r[k]):>10}"
                    for k in (
                        "p_t",
                        "p_t_corrected",
                        "p_randomization",
                        "p_randomization_corrected",
                    )
                )
                + "  "
                f"{r['wins']}/{r['ties']}/{r['losses']}"
            )
    return "\n".join(lines)
