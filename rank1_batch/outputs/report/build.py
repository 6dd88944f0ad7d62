"""``rank1-batch report``: stream the committed shards once, then write one HTML page."""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow.compute as pc

from rank1_batch.io.store import Store
from rank1_batch.outputs.evaluate import DEFAULT_METRICS, load_qrels
from rank1_batch.outputs.report.data import Scan, read_job_info, read_shard
from rank1_batch.outputs.report.explorer import Limits, Selection
from rank1_batch.outputs.report.explorer import build as build_explorer
from rank1_batch.outputs.report.html import Report

DEFAULT_NAME = "exports/report.html"


def collect(
    store: Store,
    *,
    qrels: str | None = None,
    queries: list[str] | None = None,
    limits: Limits | None = None,
    metrics: list[str] | None = None,
) -> Report:
    """Read the folder: markers and job files, every committed shard once (columns the
    figures need), then the chosen queries' shards again for the explorer."""
    limits = limits or Limits()
    metrics = list(metrics or DEFAULT_METRICS)
    info = read_job_info(store)
    judged = load_qrels(qrels, store.storage) if qrels else None
    budget = int(info.spec.get("reasoning", {}).get("max_tokens", 8192))
    scan = Scan(reasoning_budget=budget, qrels=judged, metrics=tuple(metrics))
    selection = Selection(queries, limits.sample)
    for marker in info.markers:
        table = read_shard(store, marker.shard)
        scan.add_shard(table)
        selection.offer(pc.unique(table.column("query_id")).to_pylist(), marker.shard)
    chosen = selection.chosen()
    ex = build_explorer(store, chosen, limits, judged, metrics)
    return Report(
        uri=store.uri,
        info=info,
        scan=scan,
        explorer=ex,
        selection=selection.describe(scan.queries),
        limits=limits,
        qrels=qrels,
        metrics=metrics,
        generated_at=time.time(),
    )


def write_report(
    uri: str,
    out: str | None = None,
    *,
    qrels: str | None = None,
    queries: list[str] | None = None,
    limits: Limits | None = None,
    metrics: list[str] | None = None,
    storage: Any = None,
) -> dict[str, Any]:
    """Build the page for output folder ``uri`` and write it to ``out`` (a local path or a
    URI; default ``<uri>/exports/report.html``). Returns a summary of what was written."""
    from rank1_batch.outputs.report.html import render

    store = Store(uri, storage)
    report = collect(store, qrels=qrels, queries=queries, limits=limits, metrics=metrics)
    page = render(report).encode("utf-8")
    if out is None:
        store.write_atomic(DEFAULT_NAME, page)
        where = store.path(DEFAULT_NAME)
    else:
        where = out
        target = Store(os.path.dirname(out) or ".", storage)
        target.write_atomic(os.path.basename(out), page)
    return {
        "report": where,
        "bytes": len(page),
        "pairs": report.scan.pairs,
        "queries": report.scan.queries,
        "explorer_queries": len(report.explorer.queries),
        "selection": report.selection,
        "statuses": dict(report.scan.statuses),
    }
