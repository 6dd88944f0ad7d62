"""``rank1-batch eval``: first-stage and reranked runs against qrels, through ir_measures.

Both runs come from committed shards: the first stage from the pairs' ``input_rank`` (as
``-rank``, distinct within a query), the reranked run is exactly the exported run
(:func:`rank1_batch.exports.json_run`: scores, with ties lowered by a few float64 steps so
that every evaluator reads our order: score desc, then doc_id). So ``eval`` and trec_eval /
pytrec_eval / ir_measures on ``run.trec`` give the same numbers. Error rows (NaN scores) are
left out of the reranked run, as they are of ``run.trec``.

On a job that is not finished only the queries already scored are evaluated (qrels of other
queries would count as misses), and the report says so.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from rank1_batch import commit
from rank1_batch.exports import json_run
from rank1_batch.results import read_results
from rank1_batch.spec import StorageSpec
from rank1_batch.storage import Store, filesystem

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100")
METRICS_FILE = "exports/metrics.json"


def read_qrels(text: str) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iter docid rel``) or BEIR TSV (``query-id corpus-id score``, header)."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 4:
            qid, _, did, rel = parts
        elif len(parts) == 3:
            qid, did, rel = parts
        else:
            raise ValueError(f"qrels line {n}: expected 3 or 4 columns, got {len(parts)}")
        try:
            value = int(float(rel))
        except ValueError:
            if n == 1:  # a header (BEIR: query-id corpus-id score)
                continue
            raise ValueError(f"qrels line {n}: relevance {rel!r} is not a number") from None
        qrels.setdefault(qid, {})[did] = value
    return qrels


def load_qrels(uri: str, storage: StorageSpec | None = None) -> dict[str, dict[str, int]]:
    fs, path = filesystem(uri, storage)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"qrels {uri}: not a UTF-8 text file (byte {exc.start}); expected TREC qrels "
            "('qid 0 docid rel') or BEIR TSV ('query-id corpus-id score')"
        ) from None
    try:
        return read_qrels(text)
    except ValueError as exc:
        raise ValueError(f"qrels {uri}: {exc}") from None


def first_stage_run(table: pa.Table) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for q, d, r in zip(
        table.column("query_id").to_pylist(),
        table.column("doc_id").to_pylist(),
        table.column("input_rank").to_pylist(),
        strict=True,
    ):
        run.setdefault(q, {})[d] = -float(r)
    return run


def reranked_run(table: pa.Table) -> dict[str, dict[str, float]]:
    """The reranked run exactly as exported (``run.trec``/``run.json``)."""
    return json_run(table)


def evaluate_runs(
    qrels: dict[str, dict[str, int]],
    runs: dict[str, dict[str, dict[str, float]]],
    metrics: list[str],
    per_query: bool = False,
) -> dict[str, Any]:
    """Aggregate (and optionally per-query) values of ``metrics`` for each named run."""
    import ir_measures

    try:
        measures = [ir_measures.parse_measure(m) for m in metrics]
    except (ValueError, NameError, SyntaxError) as exc:
        raise ValueError(f"unknown metric in {metrics}: {exc}") from None
    out: dict[str, Any] = {"metrics": metrics, "runs": {}}
    for name, run in runs.items():
        agg = ir_measures.calc_aggregate(measures, qrels, run)
        entry: dict[str, Any] = {"aggregate": {str(m): float(agg[m]) for m in measures}}
        entry["queries"] = len(set(run) & set(qrels))
        if per_query:
            table: dict[str, dict[str, float]] = {}
            for m in ir_measures.iter_calc(measures, qrels, run):
                table.setdefault(m.query_id, {})[str(m.measure)] = float(m.value)
            entry["per_query"] = dict(sorted(table.items()))
        out["runs"][name] = entry
    return out


def evaluate_output(
    store: Store, qrels_uri: str, metrics: list[str], *, per_query: bool = False
) -> dict[str, Any]:
    """Evaluate the folder's first-stage and reranked runs; write ``exports/metrics.json``."""
    results = read_results(store)
    qrels = load_qrels(qrels_uri, store.storage)
    runs = {"first_stage": first_stage_run(results.table), "reranked": reranked_run(results.table)}
    incomplete = None
    if not results.complete:
        # Qrels queries whose shards are not committed yet would count as misses.
        scored = set(results.table.column("query_id").to_pylist())
        manifest = store.read_json(commit.MANIFEST) if store.exists(commit.MANIFEST) else {}
        incomplete = {
            "shards_committed": len(results.shards),
            "shards_total": len(manifest.get("shards", [])) or None,
            "qrels_queries": len(qrels),
            "qrels_queries_scored": len(scored & set(qrels)),
        }
        qrels = {q: rels for q, rels in qrels.items() if q in scored}
    report = evaluate_runs(qrels, runs, metrics, per_query)
    report |= {"qrels": qrels_uri, **results.provenance()}
    if incomplete:
        report["incomplete"] = incomplete
    store.write_atomic(METRICS_FILE, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    report["metrics_file"] = store.uri.rstrip("/") + "/" + METRICS_FILE
    return report


def incomplete_warning(report: dict[str, Any]) -> str | None:
    """One plain line when the job was still running (or stopped) at evaluation time."""
    inc = report.get("incomplete")
    if not inc:
        return None
    total = inc["shards_total"] if inc["shards_total"] is not None else "?"
    return (
        f"warning: the job is not finished ({inc['shards_committed']} of {total} shards "
        f"committed): evaluated only the {inc['qrels_queries_scored']} of "
        f"{inc['qrels_queries']} qrels queries scored so far"
    )


def format_report(report: dict[str, Any]) -> str:
    """Side-by-side table: one row per metric, first stage | reranked | delta."""
    runs = report["runs"]
    fs, rr = runs["first_stage"]["aggregate"], runs["reranked"]["aggregate"]
    width = max(len(m) for m in fs) + 2
    lines = [f"{'metric':<{width}}{'first_stage':>12}{'reranked':>12}{'delta':>10}"]
    for m in fs:
        lines.append(f"{m:<{width}}{fs[m]:>12.4f}{rr[m]:>12.4f}{rr[m] - fs[m]:>+10.4f}")
    lines.append(f"queries evaluated: {runs['reranked']['queries']}")
    warning = incomplete_warning(report)
    if warning:
        lines.append(warning)
    if "per_query" in runs["reranked"]:
        lines.append("")
        names = list(fs)
        lines.append("query_id " + " ".join(f"{'fs ' + m:>14} {'rr ' + m:>14}" for m in names))
        fpq, rpq = runs["first_stage"]["per_query"], runs["reranked"]["per_query"]
        for q in sorted(set(fpq) | set(rpq)):
            cells = " ".join(
                f"{fpq.get(q, {}).get(m, float('nan')):>14.4f} "
                f"{rpq.get(q, {}).get(m, float('nan')):>14.4f}"
                for m in names
            )
            lines.append(f"{q} {cells}")
    if "metrics_file" in report:
        lines.append(f"written: {report['metrics_file']}")
    return "\n".join(lines)
