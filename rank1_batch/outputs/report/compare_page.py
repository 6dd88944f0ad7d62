"""``rank1-batch report OUTPUT --compare RUN …``: the comparison page.

One self-contained HTML file (the report's CSS and plots, its own small script), built from
what ``rank1-batch compare`` computes (:mod:`..compare`, :mod:`..agreement`):
the metric table with significance marks, one per-query difference plot per compared run, the
agreement with the baseline, and the queries where the runs disagree most, whose candidates
and reasoning traces are embedded (through the report's explorer reader, so with its limits):
click a query, then a candidate, and the runs' traces for that pair open side by side.
"""

from __future__ import annotations

import json
import math
import os
import time
from html import escape
from typing import Any

from rank1_batch.core.figures import Histogram
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.outputs.compare import fmt_p
from rank1_batch.outputs.evaluate import DEFAULT_METRICS, load_qrels
from rank1_batch.outputs.report import plots
from rank1_batch.outputs.report.explorer import Limits
from rank1_batch.outputs.report.explorer import build as build_explorer
from rank1_batch.outputs.report.html import _num, _table, asset

DEFAULT_NAME = "exports/compare.html"
DISAGREEMENTS = 10  # queries embedded per compared run


def _shard_of(store: Store) -> dict[str, str]:
    """query_id -> committed shard, from the pairs files' ``query_id`` column."""
    out: dict[str, str] = {}
    for shard in sorted(commit.committed_shards(store)):
        ids = store.read_parquet(layout.pairs_path(shard), columns=["query_id"])
        out.update(dict.fromkeys(ids.column("query_id").to_pylist(), shard))
    return out


def _worst(agree: dict[str, Any], deltas: dict[str, float] | None, n: int) -> list[str]:
    """The ``n`` queries of one comparison that disagree most: the largest |metric
    difference| with qrels, else the lowest Kendall tau (then the lowest top-k overlap)."""

    def nan_last(v: float | None) -> float:
        return math.inf if v is None or math.isnan(v) else v

    rows = [
        (r["query_id"], deltas.get(r["query_id"]) if deltas else None, r["tau"], r["overlap"])
        for r in agree["per_query"]
    ]
    if deltas is not None:
        rows = [r for r in rows if r[1] is not None]
        rows.sort(key=lambda r: (-abs(r[1] or 0.0), nan_last(r[2]), r[0]))
    else:
        rows.sort(key=lambda r: (nan_last(r[2]), nan_last(r[3]), r[0]))
    return [r[0] for r in rows[:n]]


def collect(
    names: list[str],
    *,
    qrels: str | None = None,
    metrics: list[str] | None = None,
    limits: Limits | None = None,
    test: str = "t",
    alpha: float = 0.05,
    correction: str = "holm",
    top_k: int = 10,
    storage: StorageSpec | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as plain data."""
    from rank1_batch.outputs.agreement import agreement_report
    from rank1_batch.outputs.compare import compare, parse_sources

    limits = limits or Limits()
    metrics = list(metrics or DEFAULT_METRICS)
    sources = parse_sources(names)
    stats = None
    if qrels:
        stats = compare(
            names, qrels, metrics, test=test, alpha=alpha, correction=correction, storage=storage
        )
    agreement = agreement_report(names, top_k, storage=storage)
    head = stats["metrics"][0] if stats else None
    per_query = stats["per_query"][head] if stats and head else {}
    picked: dict[str, dict[str, Any]] = {}
    for i, agree in enumerate(agreement, start=1):
        deltas = {q: v[i] - v[0] for q, v in per_query.items()} if stats else None
        for qid in _worst(agree, deltas, DISAGREEMENTS):
            picked.setdefault(qid, {"id": qid, "delta": {}, "tau": {}, "overlap": {}})
    for i, agree in enumerate(agreement, start=1):  # every comparison's values, where known
        rows = {r["query_id"]: r for r in agree["per_query"] if r["query_id"] in picked}
        for qid, entry in picked.items():
            v = per_query.get(qid)
            entry["delta"][i] = v[i] - v[0] if v else None
            entry["tau"][i] = rows[qid]["tau"] if qid in rows else None
            entry["overlap"][i] = rows[qid]["overlap"] if qid in rows else None
    uris = list(dict.fromkeys(s.uri for s in sources))
    judged = load_qrels(qrels, storage) if qrels else None
    payloads: list[dict[str, dict[str, Any]]] = []
    for uri in uris:
        store = Store(uri, storage)
        where = _shard_of(store)
        chosen = [(q, where[q]) for q in picked if q in where]
        ex = build_explorer(store, chosen, limits, judged, metrics if judged else [])
        payloads.append({q["id"]: q for q in ex.queries})
    queries = []
    for qid, entry in picked.items():
        texts = [p[qid]["text"] for p in payloads if qid in p]
        cands = [p[qid]["c"] if qid in p else None for p in payloads]
        queries.append({**entry, "text": texts[0] if texts else "", "src": cands})
    return {
        "sources": sources,
        "uris": uris,
        "stats": stats,
        "agreement": agreement,
        "queries": queries,
        "head": head,
        "limits": limits,
        "qrels": qrels,
    }


def _metric_section(c: dict[str, Any]) -> str:
    stats = c["stats"]
    if stats is None:
        return (
            '<section id="metrics"><h2>Metrics</h2><p class="note">No qrels given: run '
            "<code>rank1-batch report OUTPUT --compare RUN … --qrels FILE</code> for the "
            "paired tests.</p></section>"
        )
    rows: list[list[Any]] = []
    for metric, results in stats["results"].items():
        for r in results:
            if "delta" not in r:
                rows.append([escape(metric), escape(r["label"]), _num(r["mean"]), "baseline"])
                rows[-1] += [""] * 5
                continue
            mark = '<span class="sig" title="significant">*</span>' if r["significant"] else ""
            rows.append(
                [
                    escape(metric),
                    escape(r["label"]),
                    _num(r["mean"]),
                    f'<span class="delta">{r["delta"]:+.4f}</span>{mark}',
                    fmt_p(r["p_t"]),
                    fmt_p(r["p_t_corrected"]),
                    fmt_p(r["p_randomization"]),
                    fmt_p(r["p_randomization_corrected"]),
                    f"{r['wins']}/{r['ties']}/{r['losses']}",
                ]
            )
    q = stats["queries"]
    kind = "exact" if stats["randomization_exact"] else f"{stats['permutations']} resamples"
    dropped = ", ".join(
        f"{escape(r['label'])}: {d}"
        for r, d in zip(stats["runs"], q["dropped_per_run"], strict=True)
        if d
    )
    note = (
        f"qrels <code>{escape(stats['qrels'])}</code>; {q['compared']} queries compared: the "
        "qrels queries every run's output holds, with the per-query values of "
        "<code>rank1-batch eval</code>"
        + (f" (dropped, held by some runs only: {dropped})" if dropped else "")
        + f". Against the baseline: paired t-test and paired randomization test ({kind}, seed "
        f"{stats['seed']}), two-sided; p-values corrected by {escape(stats['correction'])} over "
        f"each metric's comparisons; * marks a corrected p ({escape(stats['test'])}) below "
        f"{stats['alpha']}. W/T/L: queries where the run beats, ties or loses to the baseline."
    )
    head = ["metric", "run", "mean", "Δ vs baseline", "p (t)", "p (t) corr.", "p (rand.)"]
    head += ["p (rand.) corr.", "W/T/L"]
    table = _table(head, rows, {2, 3, 4, 5, 6, 7, 8}, id="compare-metrics")
    return f"""<section id="metrics"><h2>Metrics</h2><p class="note">{note}</p>{table}</section>"""


def _differences_section(c: dict[str, Any]) -> str:
    stats, head = c["stats"], c["head"]
    if stats is None:
        return ""
    per_query = stats["per_query"][head]
    bars = []
    for i, s in enumerate(c["sources"][1:], start=1):
        gains = [v[i] - v[0] for v in per_query.values()]
        title = f"per-query Δ {head}: {s.label} − {c['sources'][0].label}"
        bars.append(plots.sorted_bars(f"diff-{i}", title, gains, ylabel=f"Δ {head}"))
    return f"""<section id="differences"><h2>Per-query differences</h2>
<p class="note">One bar per compared query, sorted; green where the run beats the baseline.</p>
<div class="plots">{"".join(bars)}</div></section>"""


def _agreement_section(c: dict[str, Any]) -> str:
    rows, hists = [], []
    edges = [-1 + 0.1 * i for i in range(21)]
    for i, a in enumerate(c["agreement"], start=1):
        share = a["label_differ_share"]
        rows.append(
            [
                escape(a["label"]),
                a["queries"],
                _num(a["kendall_tau_median"], 3),
                _num(a["top_k_overlap_mean"], 3),
                "–" if share is None else f"{100 * share:.1f}% of {a['pairs']}",
                "–" if share is None else f"{a['pos_to_neg']} / {a['neg_to_pos']}",
            ]
        )
        h = Histogram(edges)
        h.add([r["tau"] for r in a["per_query"] if r["tau"] is not None])
        title = f"Kendall τ-b per query: {a['label']} vs baseline"
        hists.append(plots.histogram(f"tau-{i}", title, edges, h.counts, xlabel="τ-b"))
    k = c["agreement"][0]["top_k"] if c["agreement"] else 10
    head = [
        "run",
        "queries",
        "median τ-b",
        f"top-{k} overlap",
        "label differs",
        "pos→neg / neg→pos",
    ]
    table = _table(head, rows, {1, 2, 3}, id="agreement-table")
    return f"""<section id="agreement"><h2>Agreement with the baseline (no qrels)</h2>
<p class="note">Per query held by both: Kendall τ-b between the ranks of the documents both
rank, the overlap of the two top-{k} lists, and the pairs whose label at export's default
thresholds (positive P(true) ≥ 0.5, negative ≤ 0.5; complete, forced and direct rows) differs.
</p>{table}<div class="plots">{"".join(hists)}</div></section>"""


def _disagreements_section(c: dict[str, Any]) -> str:
    sources, head = c["sources"], c["head"]
    cols = ["query", "text"]
    for i in range(1, len(sources)):  # runs by number: the Runs table names them
        if head:
            cols.append(f"Δ {head} (run {i})")
        cols += [f"τ (run {i})", f"overlap (run {i})"]
    rows = []
    for q in c["queries"]:
        cells = [f"<b>{escape(q['id'])}</b>", escape((q["text"] or "")[:120])]
        for i in range(1, len(sources)):
            if head:
                d = q["delta"].get(i)
                cells.append("–" if d is None else f"{d:+.3f}")
            cells += [_num(q["tau"].get(i), 3), _num(q["overlap"].get(i), 3)]
        tds = "".join(f"<td>{v}</td>" for v in cells)
        rows.append(f'<tr class="dq" data-query-id="{escape(q["id"])}">{tds}</tr>')
    th = "".join(f"<th>{escape(h)}</th>" for h in cols)
    lim = c["limits"]
    why = f"the largest |Δ {head}|" if head else "the lowest Kendall τ-b"
    return f"""<section id="disagreements"><h2>Where the runs disagree</h2>
<p class="note">Up to {DISAGREEMENTS} queries per compared run with {escape(why)}. Click a
query for its candidates in every run, then a candidate for the runs' reasoning traces side by
side (traces cut at {lim.trace_chars} characters, at most {lim.max_candidates} best-ranked
candidates per run plus every non-complete one).</p>
<table id="disagreement-table"><tr>{th}</tr>{"".join(rows)}</table>
<div id="pair-detail"></div></section>"""


def render(c: dict[str, Any], generated_at: float | None = None) -> str:
    sources = c["sources"]
    from rank1_batch.outputs.agreement import json_safe

    runs = [
        {
            "label": s.label,
            "short": "baseline" if i == 0 else f"run {i}",
            "kind": s.kind,
            "src": c["uris"].index(s.uri),
        }
        for i, s in enumerate(sources)
    ]
    payload = json_safe({"runs": runs, "queries": c["queries"]})
    data = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    data = data.replace("<", "\\u003c")
    run_rows = [
        [
            "baseline" if i == 0 else f"run {i}",
            escape(s.label),
            "first stage (input order)" if s.kind == "first_stage" else "reranked",
            f"<code>{escape(s.uri)}</code>",
        ]
        for i, s in enumerate(sources)
    ]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(generated_at or time.time()))
    extra_css = (
        ".sig{color:#c62828;font-weight:700;margin-left:2px}"
        "tr.dq{cursor:pointer}tr.dq:hover,tr.cand:hover{background:var(--soft)}"
        "tr.dq.active{background:#e3eefa}#cmp-candidates tr.cand{cursor:pointer}"
        ".side{display:grid;grid-template-columns:repeat(var(--cols),minmax(0,1fr));gap:12px}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rank1-batch comparison</title>
<style>{asset("report.css")}{extra_css}</style></head>
<body><header><h1>rank1-batch comparison</h1>
<div class="sub">baseline {escape(sources[0].label)} · {len(sources) - 1} compared run(s) ·
generated {when}</div>
<nav><a href="#runs">Runs</a><a href="#metrics">Metrics</a><a href="#differences">Differences</a>
<a href="#agreement">Agreement</a><a href="#disagreements">Disagreements</a></nav>
</header><main>
<section id="runs"><h2>Runs</h2>{_table(["", "run", "what", "output"], run_rows)}</section>
{_metric_section(c)}
{_differences_section(c)}
{_agreement_section(c)}
{_disagreements_section(c)}
</main>
<script id="compare-data" type="application/json">{data}</script>
<script>{asset("compare.js")}</script>
</body></html>
"""


def write_compare_page(
    names: list[str], out: str | None = None, storage: StorageSpec | None = None, **options: Any
) -> dict[str, Any]:
    """Build the page for ``names`` (the first is the baseline) and write it to ``out``
    (default ``<first output>/exports/compare.html``)."""
    c = collect(names, storage=storage, **options)
    page = render(c).encode("utf-8")
    if out is None:
        store = Store(c["uris"][0], storage)
        store.write_atomic(DEFAULT_NAME, page)
        where = store.path(DEFAULT_NAME)
    else:
        where = out
        Store(os.path.dirname(out) or ".", storage).write_atomic(os.path.basename(out), page)
    return {"report": where, "bytes": len(page), "runs": len(c["sources"]),
            "disagreement_queries": len(c["queries"])}  # fmt: skip
