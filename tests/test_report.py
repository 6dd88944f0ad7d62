"""``rank1-batch report`` on real outputs (no browser: see test_report_browser.py).

The demo job's output (conftest's session fixture: local Ray, the toy model on CPU) and a
folder holding every status (tests/report_outputs.py: the real shard body and toy engine).
Every figure on the page is checked against what the project's own readers compute.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pyarrow.compute as pc
import pytest
from conftest import ROOT, run_cli
from report_outputs import messy_output, read_traces

from rank1_batch.core.figures import Reliability, kendall_tau_b, spearman
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.evaluate import evaluate_runs, first_stage_run, load_qrels, reranked_run
from rank1_batch.outputs.labels import LabelRules, select
from rank1_batch.outputs.report.build import collect
from rank1_batch.outputs.report.explorer import Limits
from rank1_batch.outputs.results import read_results

QRELS = ROOT / "jobs" / "data" / "demo.qrels"


@pytest.fixture(scope="session")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return messy_output(tmp_path_factory)


# -- pure figures -----------------------------------------------------------------------------


def test_rank_correlations_on_known_orders():
    assert spearman([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap of neighbours among five: 2 discordant pairs of 10; sum d^2 = 4
    assert kendall_tau_b([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert math.isnan(spearman([1], [1])) and math.isnan(kendall_tau_b([3, 3], [1, 2]))
    # chunking does not change the result
    x = [7, 1, 4, 4, 9, 2, 2, 8, 5, 3]
    y = [1, 2, 3, 3, 4, 9, 8, 7, 6, 5]
    assert kendall_tau_b(x, y, chunk=3) == pytest.approx(kendall_tau_b(x, y, chunk=100))


def test_rank_correlations_with_ties_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = [7, 1, 4, 4, 9, 2, 2, 8, 5, 3, 3, 6]
    y = [1, 2, 3, 3, 4, 9, 8, 7, 6, 5, 5, 1]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_expected_calibration_error_by_hand():
    rel = Reliability(bins=2)
    rel.add([0.1, 0.2, 0.3, 0.9, 0.8, math.nan], [False, True, False, True, True, True])
    # bin 0: conf 0.2, acc 1/3; bin 1: conf 0.85, acc 1.0; NaN ignored
    expected = 3 / 5 * abs(1 / 3 - 0.2) + 2 / 5 * abs(1.0 - 0.85)
    assert rel.total == 5 and rel.ece == pytest.approx(expected)


# -- the demo output --------------------------------------------------------------------------


@pytest.mark.ray
def test_demo_report_agrees_with_eval_labels_and_markers(report_demo_out: Path, tmp_path: Path):
    out = tmp_path / "demo.html"
    args = ["report", str(report_demo_out), "--qrels", str(QRELS), "--out", str(out)]
    summary = json.loads(run_cli(*args, "--json").stdout)
    success = json.loads((report_demo_out / layout.SUCCESS).read_text())
    assert summary["report"] == str(out) and summary["bytes"] == out.stat().st_size
    assert summary["pairs"] == success["scored"]
    assert {k: v for k, v in success["statuses"].items() if v} == summary["statuses"]
    assert summary["explorer_queries"] == 25 and "a sample of 25 of 100" in summary["selection"]

    store = Store(str(report_demo_out))
    report = collect(store, qrels=str(QRELS))
    results = read_results(store)
    runs = {"first_stage": first_stage_run(results.table), "reranked": reranked_run(results.table)}
    whole = evaluate_runs(load_qrels(str(QRELS)), runs, list(report.metrics))
    for run in runs:
        for metric, value in whole["runs"][run]["aggregate"].items():
            assert report.scan.aggregates()[run][metric] == pytest.approx(value, abs=1e-12)
    _, counts = select(results.table, LabelRules())
    assert report.scan.labels == counts
    assert len(report.scan.gains) == 100 and len(report.scan.spearman) == 100

    page = out.read_text()
    fs = whole["runs"]["first_stage"]["aggregate"]["nDCG@10"]
    rr = whole["runs"]["reranked"]["aggregate"]["nDCG@10"]
    assert re.search(rf"nDCG@10</td><td class=\"n\">{fs:.4f}</td><td class=\"n\">{rr:.4f}", page)
    assert f'id="ece">{report.scan.reliability.ece:.4f}<' in page
    # self-contained: nothing on the page points at the network
    assert not re.search(r"(src|href)=\"(https?:)?//|@import|url\(", page)
    # page size stated, and true to within rounding
    stated = re.search(r"page size (\d+) KB", page)
    assert stated and abs(int(stated.group(1)) - len(page.encode()) / 1024) < 1


@pytest.mark.ray
def test_explorer_selection_and_limits(report_demo_out: Path, tmp_path: Path):
    store = Store(str(report_demo_out))
    named = collect(store, queries=["q0042", "q0007"], limits=Limits(max_candidates=5))
    assert [q["id"] for q in named.explorer.queries] == ["q0042", "q0007"]
    q42 = named.explorer.queries[0]
    assert q42["n"] == 30 and [c["r"] for c in q42["c"]] == [1, 2, 3, 4, 5]
    assert named.explorer.candidates_cut == 2
    traces = read_traces(store)
    row = traces.filter(
        pc.and_(
            pc.equal(traces.column("query_id"), "q0042"),
            pc.equal(traces.column("doc_id"), q42["c"][0]["d"]),
        )
    ).to_pylist()[0]
    assert q42["c"][0]["t"] == row["reasoning"] and q42["c"][0]["fr"] == row["finish_reason"]

    sample = collect(store, limits=Limits(sample=10, max_bytes=40_000))
    ids = [q["id"] for q in sample.explorer.queries]
    assert ids == sorted(ids) and sample.explorer.bytes <= 40_000
    assert len(ids) + sample.explorer.dropped_for_size == 10 and sample.explorer.dropped_for_size
    again = [q["id"] for q in collect(store, limits=Limits(sample=10)).explorer.queries]
    assert len(again) == 10 and set(ids) <= set(again)  # the same sample, all of it

    bad = run_cli("report", str(report_demo_out), "--queries", "q0001,nope", check=False)
    assert bad.returncode == 2 and "'nope'" in bad.stderr
    assert not (report_demo_out / "exports" / "report.html").exists()


# -- every status -----------------------------------------------------------------------------


def test_output_with_every_status_is_reported_correctly(messy: tuple[Path, Path]):
    out, qrels = messy
    proc = run_cli("report", str(out), "--qrels", str(qrels), "--sample", "100", "--json")
    page_path = out / "exports" / "report.html"
    assert json.loads(proc.stdout)["report"] == str(page_path)
    scores = read_results(Store(str(out))).table
    truth = Counter(scores.column("status").to_pylist())
    assert set(truth) == {"complete", "forced", "fallback", "error"}
    page = page_path.read_text()
    for status, n in truth.items():
        share = f"{100 * n / scores.num_rows:.1f}%"
        row = rf'<span class="st st-{status}">{status}</span></td><td class="n">{n}</td>'
        assert re.search(row + rf'<td class="n">{re.escape(share)}</td>', page), status
    assert "prompt_too_long" in page and "null_doc_id" in page
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) >= 12
    for svg in svgs:  # well-formed XML, each with a size
        root = ElementTree.fromstring(svg)
        assert float(root.get("width", 0)) > 0 and float(root.get("height", 0)) > 0

    report = collect(Store(str(out)), qrels=str(qrels), limits=Limits(sample=100))
    cands = {(q["id"], c["d"]): c for q in report.explorer.queries for c in q["c"]}
    assert len(cands) == scores.num_rows  # everything embedded
    for row in scores.to_pylist():
        c = cands[(row["query_id"], row["doc_id"])]
        assert c["st"] == row["status"] and c["r"] == row["rank"]
        if row["status"] == "error":
            assert c["s"] is None and c["er"] == "prompt_too_long" and c["r"] is None
        else:
            assert c["s"] == row["score"]
        if row["status"] == "fallback":
            assert c["s"] == 0.5 and c["lg"] == 0.0
    # label yield excludes fallback and error rows, as the exports do
    assert report.scan.labels.excluded_status == {"fallback": truth["fallback"], "error": 1}
    assert report.scan.truncated == 1
    # an error row's query (q9999) has no qrels; it is not in the reliability diagram
    assert report.scan.reliability.total == truth["complete"] + truth["forced"]


def test_partial_output_reads_only_committed_shards(messy: tuple[Path, Path], tmp_path: Path):
    """A job still running: no _SUCCESS.json, one marker missing while its scores file is on
    disk (an attempt killed before it committed). The report reads what markers name."""
    out = tmp_path / "partial"
    shutil.copytree(messy[0], out, ignore=shutil.ignore_patterns("exports"))
    (out / layout.SUCCESS).unlink()
    (out / layout.marker_path("shard-00001")).unlink()
    assert list((out / "scores").glob("shard-00001.*parquet"))
    summary = json.loads(run_cli("report", str(out), "--json").stdout)
    marker = json.loads((messy[0] / layout.marker_path("shard-00000")).read_text())
    assert summary["pairs"] == marker["rows"] == marker["stats"]["pairs"]
    assert summary["statuses"].get("error", 0) == marker["stats"]["error"] == 0
    page = (out / "exports" / "report.html").read_text()
    assert "in progress (no _SUCCESS.json)" in page and "1/2" in page
    assert "q9999" not in page  # its shard is not committed
    assert "No qrels given" in page


def test_report_states_the_eval_convention_and_its_counts(messy: tuple[Path, Path], tmp_path):
    """The page says which queries its means are over (eval's default: the run's queries
    with qrels) with the counts, and its means equal eval's on the same output."""
    from rank1_batch.outputs.evaluate import evaluate_output

    out, qrels = messy
    html = tmp_path / "r.html"
    run_cli("report", str(out), "--qrels", str(qrels), "--out", str(html))
    page = html.read_text()
    note = re.search(r'<p class="note" id="convention">(.*?)</p>', page, flags=re.S)
    assert note
    text = " ".join(note.group(1).split())
    scores = read_results(Store(str(out))).table
    judged = load_qrels(str(qrels))
    qids, values = scores.column("query_id").to_pylist(), scores.column("score").to_pylist()
    held = set(qids)
    ranked = {q for q, s in zip(qids, values, strict=True) if not math.isnan(s)}
    assert held - set(judged)  # the messy output holds a query without qrels (q9999)
    n_rr, n_fs = len(ranked & set(judged)), len(held & set(judged))
    assert f"({len(judged)} queries)" in text and "trec_eval's default" in text
    assert f"the reranked run's over {n_rr}, the first stage's over {n_fs}" in text
    assert f"without qrels (in no mean): {len(held - set(judged))}" in text
    ev = evaluate_output(Store(str(out)), str(qrels), ["nDCG@10"])
    assert ev["runs"]["reranked"]["queries"] == n_rr
    rr = ev["runs"]["reranked"]["aggregate"]["nDCG@10"]
    assert re.search(rf"nDCG@10</td><td class=\"n\">[0-9.]+</td><td class=\"n\">{rr:.4f}<", page)
    assert f'queries averaged over</td><td class="n">{n_fs}</td><td class="n">{n_rr}<' in page
