"""The comparison page (``report OUTPUT --compare RUN …``) in headless Chromium, network off.

As ``test_report_browser``: the system's Chromium through Playwright, skipped (saying why)
only where neither can be found. The compared run is the demo output with some queries'
scores replaced by noise and its traces rewritten (``compare_outputs.derive``), so the two
traces shown side by side differ and each can be checked against its own output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from compare_outputs import degrade, derive
from conftest import ROOT, run_cli
from report_outputs import read_traces
from test_report_browser import CHROMIUM, shot

from rank1_batch.io.store import Store

QRELS = ROOT / "jobs" / "data" / "demo.qrels"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (install Debian's: apt-get install -y chromium, as .ci/run does; "
    "or set RANK1_CHROMIUM to a Chromium binary)",
)


def trace(out: Path, query: str, doc: str) -> str:
    t = read_traces(Store(str(out)))
    rows = t.filter(pc.and_(pc.equal(t["query_id"], query), pc.equal(t["doc_id"], doc)))
    return str(rows.column("reasoning")[0].as_py()).strip()


@pytest.mark.ray
def test_compare_page_in_chromium(report_demo_out: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    a = derive(report_demo_out, tmp_path / "a")
    b = derive(report_demo_out, tmp_path / "b", degrade(0.12, "b"), lambda t: "[B] " + t.strip())
    html = tmp_path / "compare.html"
    summary = json.loads(
        run_cli(
            "report", str(a), "--compare", str(b), "first-stage", "--qrels", str(QRELS),
            "--out", str(html), "--json",
        ).stdout
    )  # fmt: skip
    assert summary["runs"] == 3 and summary["disagreement_queries"] > 0
    stats = json.loads(
        run_cli("compare", str(a), str(b), "first-stage", "--qrels", str(QRELS), "--json").stdout
    )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        outside: list[str] = []
        errors: list[str] = []

        def route(r: Any) -> None:
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.resolve().as_uri())

        # the metric table: one row per (metric, run); marks where compare says significant
        rows = page.locator("#compare-metrics tr")
        assert rows.count() == 1 + 3 * 3
        for i, (metric, results) in enumerate(stats["results"].items()):
            for j, r in enumerate(results):
                cells = rows.nth(1 + 3 * i + j).locator("td")
                assert cells.nth(0).text_content() == metric
                assert cells.nth(2).text_content() == f"{r['mean']:.4f}"
                if j:
                    assert cells.nth(3).locator(".sig").count() == int(r["significant"])
        assert page.locator("#compare-metrics .sig").count() >= 2  # B and the first stage
        # per-query differences: one bar per compared query
        assert page.locator('svg[data-plot="diff-1"] rect').count() == 100
        page.screenshot(path=shot("compare-summary.png"))

        # the largest disagreement: its candidates in both runs; click one: both traces
        first = page.locator("tr.dq").first
        query = first.get_attribute("data-query-id")
        first.click()
        assert page.locator("#cmp-query-title").text_content().startswith(f"{query}:")
        cands = page.locator("#cmp-candidates tr.cand")
        assert cands.count() == 30
        cand = cands.nth(2)
        doc = cand.get_attribute("data-doc-id")
        assert page.locator(".trace").count() == 0
        cand.click()
        left = page.locator(f'.trace[data-run="0"][data-doc-id="{doc}"]')
        right = page.locator(f'.trace[data-run="1"][data-doc-id="{doc}"]')
        assert left.is_visible() and right.is_visible()
        assert left.text_content() == trace(a, query, doc)
        assert right.text_content() == trace(b, query, doc) == "[B] " + trace(a, query, doc)
        assert page.locator('.trace[data-run="2"]').text_content() == "(first stage: no reasoning)"
        lbox, rbox = left.bounding_box(), right.bounding_box()
        assert lbox and rbox and rbox["x"] > lbox["x"] + lbox["width"] - 1  # side by side
        page.locator("#disagreements").screenshot(path=shot("compare-traces.png"))
        cand.click()  # closes again
        assert page.locator(".trace").count() == 0
        assert errors == [] and outside == []
        context.close()
        browser.close()
