"""The report page in a real browser: headless Chromium driven by Playwright, network off.

Chromium is the system's (Debian's ``chromium`` package, which ``.ci/run`` installs);
Playwright launches it through ``executable_path``, so no browser is ever downloaded. The
tests skip, saying why, only where no Chromium binary or no Playwright can be found.
Screenshots land in ``build/report-screenshots/`` (or ``$RANK1_REPORT_SCREENSHOTS``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from conftest import ROOT, run_cli
from report_outputs import messy_output, read_traces

from rank1_batch.io.store import Store

QRELS = ROOT / "jobs" / "data" / "demo.qrels"
SHOTS = Path(os.environ.get("RANK1_REPORT_SCREENSHOTS", ROOT / "build" / "report-screenshots"))
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    named = os.environ.get("RANK1_CHROMIUM")
    if named:
        return named if os.path.exists(named) else shutil.which(named)
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (install Debian's: apt-get install -y chromium, as .ci/run does; "
    "or set RANK1_CHROMIUM to a Chromium binary)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')"
    )
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """One offline page: every request other than file:// is refused and recorded."""

    def __init__(self, browser: Any, html: Path) -> None:
        self.context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(html.resolve().as_uri())
        self.page.wait_for_selector("#query-list li")

    def _route(self, route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.outside.append(route.request.url)
            route.abort()

    def data(self) -> dict[str, Any]:
        text = self.page.locator("#explorer-data").text_content()
        return dict(json.loads(text))

    def close(self) -> None:
        assert self.errors == [], self.errors
        assert self.outside == [], f"the page asked for the network: {self.outside}"
        self.context.close()


def shot(name: str) -> str:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return str(SHOTS / name)


@pytest.mark.ray
def test_demo_report_in_chromium(browser: Any, report_demo_out: Path, tmp_path: Path) -> None:
    html = tmp_path / "demo-report.html"
    run_cli("report", str(report_demo_out), "--qrels", str(QRELS), "--out", str(html))
    view = Page(browser, html)
    page = view.page

    # plots rendered: every SVG has a size, and the key ones have marks
    plots = page.locator("svg.plot")
    assert plots.count() >= 12
    for i in range(plots.count()):
        box = plots.nth(i).bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 50
    for name, mark in (
        ("reliability", "rect"),
        ("gains", "rect"),
        ("timeline", "rect"),
        ("throughput", "polyline"),
        ("score-complete", "rect"),
        ("spearman", "rect"),
    ):
        assert page.locator(f'svg[data-plot="{name}"] {mark}').count() > 0, name
    page.screenshot(path=shot("demo-summary.png"))
    page.locator("#quality").screenshot(path=shot("demo-plot-quality.png"))

    # type a query id: the list filters to it
    data = view.data()
    ids = [q["id"] for q in data["queries"]]
    target = ids[len(ids) // 2]
    search = page.locator("#query-search")
    search.fill(target)
    items = page.locator("#query-list li")
    assert items.count() == 1
    assert items.first.get_attribute("data-query-id") == target
    assert page.locator("#query-count").text_content().startswith(f"1 of {len(ids)}")
    # by text: every query whose text holds the word, and only those
    word = next(q for q in data["queries"] if q["id"] == target)["text"].split()[0]
    search.fill(word)
    expected = sorted(q["id"] for q in data["queries"] if word.lower() in q["text"].lower())
    shown = sorted(items.nth(i).get_attribute("data-query-id") for i in range(items.count()))
    assert shown == expected and target in shown
    search.fill(target)

    # click the query, then a candidate: its trace opens
    items.first.click()
    assert page.locator("#query-title").text_content().startswith(f"{target}:")
    query = next(q for q in data["queries"] if q["id"] == target)
    rows = page.locator("#candidates tr.cand")
    assert rows.count() == len(query["c"])
    second = rows.nth(1)
    doc = second.get_attribute("data-doc-id")
    second.click()
    trace = page.locator(f'.trace[data-doc-id="{doc}"]')
    assert trace.is_visible()
    traces = read_traces(Store(str(report_demo_out)))
    want = traces.filter(
        pc.and_(pc.equal(traces.column("query_id"), target), pc.equal(traces.column("doc_id"), doc))
    ).column("reasoning")[0]
    assert want.as_py().strip() and trace.text_content() == want.as_py().strip()
    page.locator("#explorer").screenshot(path=shot("demo-trace-expanded.png"))
    second.click()  # closes again
    assert page.locator(f'.trace[data-doc-id="{doc}"]').count() == 0
    view.close()


def test_every_status_in_chromium(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    out, qrels = messy_output(tmp_path_factory)
    html = tmp_path_factory.mktemp("messy-page") / "report.html"
    run_cli("report", str(out), "--qrels", str(qrels), "--out", str(html))
    view = Page(browser, html)
    page, data = view.page, view.data()
    for status in ("complete", "forced", "fallback", "error"):
        page.select_option("#status-filter", status)
        having = [q for q in data["queries"] if q["statuses"].get(status)]
        items = page.locator("#query-list li")
        assert items.count() == len(having) > 0, status
        items.first.click()
        rows = page.locator("#candidates tr.cand")
        assert rows.count() == having[0]["statuses"][status]
        for i in range(rows.count()):
            assert rows.nth(i).get_attribute("data-status") == status
            badge = rows.nth(i).locator(f".st-{status}")
            assert badge.text_content() == status
        if status == "error":
            cells = rows.first.locator("td")
            assert cells.nth(0).text_content() == "–"  # no rank
            assert cells.nth(2).text_content() == "–"  # no score
            assert "prompt_too_long" in cells.nth(3).text_content()
        if status == "fallback":
            assert rows.first.locator("td").nth(2).text_content() == "0.5000"
            rows.first.click()
            assert page.locator(".trace").first.is_visible()
            page.locator("#explorer").screenshot(path=shot("statuses-fallback.png"))
    page.locator("#job").screenshot(path=shot("statuses-summary.png"))
    view.close()
