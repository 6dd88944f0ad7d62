"""The report page: one HTML file with its CSS, JavaScript, SVG plots and data inlined.

Nothing on the page points outside it (no CDN, no web font, no image URL), so it opens from
disk with the network off. The explorer's data travels as JSON in a ``<script
type="application/json">`` element, with ``<`` escaped so no text can close the element.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from html import escape
from importlib import resources
from typing import Any

from rank1_batch.core.figures import Histogram, quantiles
from rank1_batch.outputs.report import plots
from rank1_batch.outputs.report.data import JobInfo, Scan
from rank1_batch.outputs.report.explorer import Explorer, Limits

STATUSES = ("complete", "forced", "direct", "fallback", "error")
SIZE_MARK = "@@PAGE_SIZE@@"


def asset(name: str) -> str:
    return (resources.files("rank1_batch.outputs.report") / "assets" / name).read_text("utf-8")


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "–"


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(
    head: list[str], rows: list[list[Any]], numeric: set[int] | None = None, **attrs: str
) -> str:
    """A table; cells are HTML (escape text first), ``numeric`` columns right-aligned."""
    numeric = numeric or set()
    extra = "".join(f' {k}="{escape(v)}"' for k, v in attrs.items())
    cells = "".join(
        f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
        for i, h in enumerate(head)
    )
    body = [f"<tr>{cells}</tr>"]
    for row in rows:
        tds = "".join(
            f'<td class="n">{v}</td>' if i in numeric else f"<td>{v}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{tds}</tr>")
    return f"<table{extra}>{''.join(body)}</table>"


def _card(value: Any, key: str) -> str:
    return (
        f'<div class="card"><div class="v">{escape(str(value))}</div>'
        f'<div class="k">{escape(key)}</div></div>'
    )


def _badge(status: str) -> str:
    return f'<span class="st st-{escape(status)}">{escape(status)}</span>'


def _count_hist(name: str, title: str, counts: dict[int, int], xlabel: str) -> str:
    if not counts:
        return plots.empty(name, title, "no queries")
    top = max(counts)
    edges = [i - 0.5 for i in range(top + 2)]
    values = [counts.get(i, 0) for i in range(top + 1)]
    return plots.histogram(name, title, edges, values, xlabel=xlabel, ylabel="queries")


def _per_pair(part: int, total: int) -> str:
    return _num(part / total if total else None, 1)


def job_section(r: Report) -> str:
    spec, info, scan = r.info.spec, r.info, r.scan
    model, reasoning = spec.get("model", {}), spec.get("reasoning", {})
    manifest, success = info.manifest, info.success
    prov = {k: ", ".join(sorted(v)) or "–" for k, v in scan.provenance.items()}
    settings = (
        f"{model.get('engine')} · {model.get('dtype')} · {model.get('quantization') or 'none'}"
    )
    budget = (
        f"max_tokens {reasoning.get('max_tokens')}, min_reserve {reasoning.get('min_reserve')}, "
        f"require_stop {reasoning.get('require_stop')}"
    )
    template = reasoning.get("prompt_template") or "none"
    rows = [
        ["job", escape(str(spec.get("name", "–")))],
        ["output", f"<code>{escape(r.uri)}</code>"],
        ["model", escape(prov.get("model", model.get("name", "–")))],
        ["model revision", escape(prov.get("model_revision", "–"))],
        ["engine · dtype · quantization", escape(settings)],
        ["max model length", escape(str(model.get("max_model_len")))],
        ["prompt id", f"<code>{escape(prov.get('prompt_id', '–'))}</code>"],
        ["reasoning", escape(budget)],
        ["instruction", escape(str(reasoning.get("instruction") or "none"))],
        ["prompt template", f"<code>{escape(str(template))}</code>"],
        ["fingerprint", f"<code>{escape(str(info.job.get('fingerprint', '–'))[:16])}</code>"],
        ["state", "complete (_SUCCESS.json)" if success else "in progress (no _SUCCESS.json)"],
    ]
    total = scan.pairs
    seconds = sum(m.stats.seconds for m in info.markers)
    bars = info.timeline()
    span = max(b[3] for b in bars) if bars else 0.0
    cards = [
        _card(manifest.get("input_rows", "–"), "input rows"),
        _card(total, "pairs scored"),
        _card(scan.queries, "queries"),
        _card(manifest.get("rejected", "–"), "rejected rows"),
        _card(manifest.get("duplicates", "–"), "duplicates"),
        _card(f"{len(info.markers)}/{len(manifest.get('shards', [])) or '?'}", "shards committed"),
        _card(len({m.worker for m in info.markers}), "workers"),
        _card(f"{total / span:.1f}" if span else "–", "pairs/s (first start to last commit)"),
        _card(f"{total / seconds:.1f}" if seconds else "–", "pairs/s per worker"),
    ]
    status_rows = [
        [_badge(s), scan.statuses.get(s, 0), _pct(scan.statuses.get(s, 0), total)] for s in STATUSES
    ]
    status_rows.append(["truncated passage", scan.truncated, _pct(scan.truncated, total)])
    extra = ""
    if scan.errors:
        codes = [[escape(k), v] for k, v in scan.errors.most_common()]
        extra += "<h3>Error codes</h3>" + _table(["code", "rows"], codes, {1}, id="error-codes")
    if info.rejected_reasons:
        reasons = [[escape(k), v] for k, v in sorted(info.rejected_reasons.items())]
        extra += "<h3>Rejected input rows</h3>" + _table(["reason", "rows"], reasons, {1})
    tokens = _table(
        ["", "total", "mean per pair"],
        [
            ["prompt tokens", scan.prompt_tokens, _per_pair(scan.prompt_tokens, total)],
            ["reasoning tokens", scan.reasoning_tokens, _per_pair(scan.reasoning_tokens, total)],
        ],
        {1, 2},
    )
    series = info.throughput()
    # worker i has the timeline lane's colour; the total (when there are several) is grey
    lane_colors = [plots.PALETTE[i % len(plots.PALETTE)] for i in range(len(series))]
    colors = ["#444", *lane_colors] if len(series) > 1 else lane_colors
    throughput = plots.lines(
        "throughput",
        "pairs committed over time",
        series,
        xlabel="seconds since the first shard started",
        ylabel="pairs committed",
        colors=colors[: len(series)],
    )
    timeline = plots.timeline("timeline", "shard timeline (start → commit, per worker)", bars)
    workers = sorted({m.worker for m in info.markers})
    lanes = [[f"w{i}", f"<code>{escape(w)}</code>"] for i, w in enumerate(workers)]
    statuses = _table(["status", "pairs", "share"], status_rows, {1, 2}, id="status-table")
    return f"""<section id="job"><h2>Job</h2>
<div class="cards">{"".join(cards)}</div>
<div class="plots"><div>{_table(["", ""], rows)}</div><div>
<h3>Statuses</h3>{statuses}{tokens}{extra}</div></div>
<h3>Throughput and shards</h3>
<p class="note">From the commit markers: a shard runs from its commit time minus the scoring
seconds it records, to its commit.</p>
<div class="plots">{throughput}{timeline}</div>{_table(["lane", "worker"], lanes)}</section>"""


def scores_section(r: Report) -> str:
    scan = r.scan
    per_status = []
    for s in STATUSES:
        if s == "error":  # no score
            continue
        h = scan.score_hist[s]
        title = f"P(true), {s} ({scan.statuses.get(s, 0)} pairs)"
        color = plots.STATUS_COLORS[s]
        per_status.append(
            plots.histogram(f"score-{s}", title, h.edges, h.counts, xlabel="P(true)", color=color)
        )
    lengths = []
    for s in STATUSES:
        h = scan.reasoning_hist[s]
        if h.total:
            title = f"reasoning tokens, {s} ({h.total} pairs)"
            lengths.append(
                plots.histogram(
                    f"reasoning-{s}",
                    title,
                    h.edges,
                    h.counts,
                    xlabel="reasoning tokens",
                    color=plots.STATUS_COLORS[s],
                )
            )
    total = scan.pairs
    rates = (
        f"forced {_pct(scan.statuses.get('forced', 0), total)} · fallback "
        f"{_pct(scan.statuses.get('fallback', 0), total)} · error "
        f"{_pct(scan.statuses.get('error', 0), total)} of {total} pairs. "
        "Forced: no answer within the reasoning budget, so the answer was forced after the "
        "reasoning. Fallback: the forced answer failed too, so the score is 0.5 by rule. "
        "Error rows have no score."
    )
    return f"""<section id="scores"><h2>Scores and reasoning</h2>
<p class="note" id="status-rates">{escape(rates)}</p>
<div class="plots">{"".join(per_status)}</div>
<div class="plots">{"".join(lengths)}</div></section>"""


def qrels_section(r: Report) -> str:
    scan = r.scan
    if r.qrels is None:
        return (
            '<section id="quality"><h2>Against qrels</h2><p class="note">No qrels given: '
            "run <code>rank1-batch report OUTPUT --qrels FILE</code> for first-stage vs reranked "
            "metrics, the reliability diagram and per-query gains.</p></section>"
        )
    agg, counted = scan.aggregates(), scan.evaluated_queries()
    fs, rr = agg.get("first_stage", {}), agg.get("reranked", {})
    rows: list[list[Any]] = []
    for m in r.metrics:
        if m in fs or m in rr:
            delta = rr.get(m, math.nan) - fs.get(m, math.nan)
            rows.append([escape(m), _num(fs.get(m)), _num(rr.get(m)), f"{delta:+.4f}"])
    n_fs, n_rr = counted.get("first_stage", 0), counted.get("reranked", 0)
    rows.append(["queries averaged over", n_fs, n_rr, ""])
    rel, gains, head = scan.reliability, scan.gains, r.metrics[0]
    better = sum(g > 1e-12 for g in gains)
    worse = sum(g < -1e-12 for g in gains)
    rel_rows = [
        [
            f"{b['lo']:.1f}–{b['hi']:.1f}",
            int(b["n"]),
            f"{b['confidence']:.3f}",
            f"{b['accuracy']:.3f}",
        ]
        for b in rel.rows()
    ]
    metrics = _table(
        ["metric", "first stage", "reranked", "delta"], rows, {1, 2, 3}, id="metrics-table"
    )
    diagram = plots.reliability(
        "reliability", f"reliability: P(true) vs relevance (ECE {rel.ece:.3f})", rel.rows(), rel.ece
    )
    bars = plots.sorted_bars(
        "gains", f"per-query gain in {head} (reranked − first stage)", gains, ylabel=f"Δ {head}"
    )
    bins = _table(
        ["P(true) bin", "pairs", "mean P(true)", "fraction relevant"], rel_rows, {1, 2, 3}
    )
    return f"""<section id="quality"><h2>Against qrels</h2>
<p class="note" id="convention">qrels: <code>{escape(r.qrels)}</code> ({len(scan.qrels or {})}
queries). Each metric is the mean over the queries the run has that have qrels (trec_eval's
default, as <code>rank1-batch eval</code> prints it; <code>eval --all-qrels-queries</code> for
trec_eval -c): the reranked run's over {n_rr}, the first stage's over {n_fs}. Queries of the
output without qrels (in no mean): {scan.unjudged}. Error rows are left out of the reranked run.
</p>
{metrics}<div class="plots">{diagram}{bars}</div>
<p class="note">Reliability: complete and forced pairs of queries that have qrels ({rel.total}
pairs; unjudged documents count as not relevant), in 10 bins of P(true); expected calibration
error <b id="ece">{rel.ece:.4f}</b>. Per-query {escape(head)}: {better} queries gain,
{worse} lose, {len(gains) - better - worse} unchanged.</p>{bins}</section>"""


def agreement_section(r: Report) -> str:
    scan = r.scan
    rho = [v for v in scan.spearman if not math.isnan(v)]
    tau = [v for v in scan.kendall if not math.isnan(v)]
    edges = [-1 + 0.1 * i for i in range(21)]
    hists = []
    for name, label, values in (("spearman", "Spearman ρ", rho), ("kendall", "Kendall τ-b", tau)):
        h = Histogram(edges)
        h.add(values)
        title = f"{label} per query: first stage vs reranked"
        hists.append(plots.histogram(name, title, edges, h.counts, xlabel=label, ylabel="queries"))
    q_rho, q_tau = quantiles(rho), quantiles(tau)
    return f"""<section id="agreement"><h2>Agreement with the first stage</h2>
<p class="note">Rank correlation, per query, between the first-stage rank and the reranked rank
of its scored candidates ({len(rho)} queries with at least two). 1 = same order, 0 = unrelated,
−1 = reversed. Median Spearman {_num(q_rho[1], 3)} (10%–90%: {_num(q_rho[0], 3)} to
{_num(q_rho[2], 3)}); median Kendall {_num(q_tau[1], 3)}.</p>
<div class="plots">{"".join(hists)}</div></section>"""


def labels_section(r: Report) -> str:
    scan, rules, c = r.scan, r.scan.rules, r.scan.labels
    per_query = c.negatives / c.labelled_queries if c.labelled_queries else None
    rows: list[list[Any]] = [
        ["queries", c.queries],
        ["labelled queries (≥1 positive and ≥1 negative)", c.labelled_queries],
        ["skipped: no positive", c.no_positive],
        ["skipped: no negative", c.no_negative],
        ["positives exported", c.positives],
        ["negatives exported", c.negatives],
        ["negatives per labelled query", _num(per_query, 2)],
    ]
    rows += [[f"rows excluded: {escape(k)}", v] for k, v in sorted(c.excluded_status.items())]
    pos, neg = rules.pos_threshold, rules.neg_threshold
    above = _count_hist(
        "above-pos",
        f"candidates with P(true) ≥ {pos}, per query",
        dict(scan.above_pos),
        "candidates above the positive threshold",
    )
    below = _count_hist(
        "below-neg",
        f"candidates with P(true) ≤ {neg}, per query",
        dict(scan.below_neg),
        "candidates below the negative threshold",
    )
    return f"""<section id="labels"><h2>Label yield at the export thresholds</h2>
<p class="note">What <code>rank1-batch export</code> selects with its defaults: positive
P(true) ≥ {pos}, negative P(true) ≤ {neg}, at most {rules.max_pos} positive(s) and
{rules.max_neg} negatives per query; only complete and forced rows (fallback and error rows
never become labels).</p>
{_table(["", "count"], rows, {1}, id="labels-table")}
<div class="plots">{above}{below}</div></section>"""


def explorer_section(r: Report) -> str:
    ex, lim = r.explorer, r.limits
    notes = [
        f"This page embeds {escape(r.selection)}: {len(ex.queries)} queries in the explorer.",
        f"Per query: the {lim.max_candidates} best-ranked candidates plus its forced, fallback "
        f"and error ones; traces cut at {lim.trace_chars} characters, passages at "
        f"{lim.passage_chars}; explorer data at most {lim.max_bytes / 1e6:.1f} MB "
        f"(this page: {ex.bytes / 1e6:.2f} MB).",
    ]
    if ex.candidates_cut:
        notes.append(f"{ex.candidates_cut} queries show fewer candidates than they have.")
    if ex.traces_cut:
        notes.append(f"{ex.traces_cut} traces were cut.")
    if ex.dropped_for_size:
        notes.append(
            f"{ex.dropped_for_size} selected queries were left out to keep the page under its "
            "size limit (ask for fewer with --sample or --queries)."
        )
    options = "".join(f'<option value="{s}">{s}</option>' for s in STATUSES)
    return f"""<section id="explorer"><h2>Trace explorer</h2>
<p class="note" id="explorer-note">{" ".join(notes)}</p>
<div class="controls">
<input type="search" id="query-search" placeholder="find a query by id or text" autocomplete="off">
<label>status <select id="status-filter"><option value="all">all</option>{options}</select>
</label><span class="note" id="query-count"></span></div>
<div class="panes"><ul id="query-list"></ul><div id="query-detail"></div></div></section>"""


def render(r: Report) -> str:
    data = json.dumps(
        {"queries": r.explorer.queries, "metrics": r.metrics if r.qrels else []},
        allow_nan=False,
        separators=(",", ":"),
    )
    data = data.replace("<", "\\u003c")
    name = escape(str(r.info.spec.get("name", "rank1-batch job")))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.generated_at))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rank1-batch report: {name}</title>
<style>{asset("report.css")}</style></head>
<body><header><h1>rank1-batch report: {name}</h1>
<div class="sub">{escape(r.uri)} · generated {when} · page size {SIZE_MARK}</div>
<nav><a href="#job">Job</a><a href="#scores">Scores</a><a href="#quality">Against qrels</a>
<a href="#agreement">Agreement</a><a href="#labels">Labels</a>
<a href="#explorer">Trace explorer</a></nav>
</header><main>
{job_section(r)}
{scores_section(r)}
{qrels_section(r)}
{agreement_section(r)}
{labels_section(r)}
{explorer_section(r)}
</main>
<script id="explorer-data" type="application/json">{data}</script>
<script>{asset("report.js")}</script>
</body></html>
"""
    size = len(page.encode("utf-8"))
    return page.replace(SIZE_MARK, f"{size / 1024:.0f} KB", 1)


@dataclass
class Report:
    """Everything the page shows (see :mod:`rank1_batch.outputs.report.html`)."""

    uri: str
    info: JobInfo
    scan: Scan
    explorer: Explorer
    selection: str
    limits: Limits
    qrels: str | None
    metrics: list[str]
    generated_at: float
