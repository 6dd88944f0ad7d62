"""``rank1-batch report``: its parser and command (kept here so cli.py only wires it in)."""

from __future__ import annotations

import argparse
import json
import posixpath
import sys
from typing import Any

from rank1_batch.cli.results import (
    JSON_HELP,
    add_storage_arguments,
    format_summary,
    storage_of,
)

EPILOG = """examples:
  rank1-batch report out/demo --qrels jobs/data/demo.qrels
  rank1-batch report out/demo --out /tmp/demo-report.html --sample 50
  rank1-batch report s3://bucket/job --queries q1,q7 --out report.html
  rank1-batch report out/think --compare out/direct first-stage --qrels q.txt
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rank1_batch.outputs.report.explorer import Limits

    d = Limits()
    rp = sub.add_parser(
        "report",
        help="write one self-contained HTML page: job, plots, metrics, trace explorer",
        description="Read the committed results of OUTPUT (through its commit markers) and "
        "write one HTML file that opens offline: the job and its throughput, score and "
        "reasoning-length distributions per status, agreement with the first stage, label "
        "yield, with --qrels first-stage vs reranked metrics, a reliability diagram and "
        "per-query gains, and a trace explorer over a bounded selection of queries. "
        "Default --out: OUTPUT/exports/report.html. Prints what was written (--json: the "
        "JSON summary). The metrics follow eval's default convention: the mean over the "
        "queries each run has that have qrels, as trec_eval computes it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("output", help="output folder of a job (local path or URI)")
    rp.add_argument("--qrels", help="qrels file (TREC or BEIR TSV) for metrics and calibration")
    rp.add_argument("--out", metavar="FILE.html", help="where to write the page")
    rp.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN",
        help="write the comparison page instead (default OUTPUT/exports/compare.html): OUTPUT "
        "is the baseline, each RUN an output folder, first-stage or first-stage:OUT "
        "(see rank1-batch compare)",
    )
    rp.add_argument(
        "--queries",
        metavar="ID,...",
        help="embed exactly these queries in the trace explorer (comma-separated ids)",
    )
    rp.add_argument(
        "--sample",
        type=int,
        default=d.sample,
        metavar="N",
        help=f"else embed a deterministic sample of N queries (default {d.sample})",
    )
    rp.add_argument(
        "--max-candidates",
        type=int,
        default=d.max_candidates,
        metavar="K",
        help=f"candidates shown per query, best ranked first (default {d.max_candidates}; "
        "forced/fallback/error rows are added)",
    )
    rp.add_argument(
        "--trace-chars",
        type=int,
        default=d.trace_chars,
        metavar="N",
        help=f"cut each embedded trace at N characters (default {d.trace_chars})",
    )
    rp.add_argument(
        "--max-mb",
        type=float,
        default=d.max_bytes / 1e6,
        metavar="MB",
        help=f"size limit of the explorer's data (default {d.max_bytes / 1e6:.0f})",
    )
    rp.add_argument("--json", action="store_true", help=JSON_HELP)
    add_storage_arguments(rp)


def cmd_report(args: argparse.Namespace) -> int:
    from rank1_batch.outputs.report.build import write_report
    from rank1_batch.outputs.report.explorer import Limits

    try:
        import ir_measures  # noqa: F401
    except ImportError:
        if args.qrels:
            print(
                "rank1-batch: error: report --qrels needs ir_measures: "
                "pip install 'rank1-batch[eval]'",
                file=sys.stderr,
            )
            return 2
    queries = None
    if args.queries is not None:
        queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    if args.compare:
        return _cmd_compare_page(args)
    try:
        limits = Limits(
            sample=args.sample,
            max_candidates=args.max_candidates,
            trace_chars=args.trace_chars,
            max_bytes=int(args.max_mb * 1e6),
        )
        summary = write_report(
            args.output,
            args.out,
            qrels=args.qrels,
            queries=queries,
            limits=limits,
            storage=storage_of(args),
        )
    except ValueError as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:  # spelt as the user spelt OUTPUT (relative stays relative)
        from rank1_batch.outputs.report.build import DEFAULT_NAME

        summary["report"] = _under(args.output, DEFAULT_NAME)
    return _print(summary, args.json)


def _under(output: str, name: str) -> str:
    return posixpath.join(output.rstrip("/") or "/", name)


def _print(summary: dict[str, Any], as_json: bool) -> int:
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary, "report"))
    return 0


def _cmd_compare_page(args: argparse.Namespace) -> int:
    from rank1_batch.outputs.compare import parse_sources
    from rank1_batch.outputs.report.compare_page import DEFAULT_NAME, write_compare_page
    from rank1_batch.outputs.report.explorer import Limits

    try:
        limits = Limits(
            max_candidates=args.max_candidates,
            trace_chars=args.trace_chars,
            max_bytes=int(args.max_mb * 1e6),
        )
        summary = write_compare_page(
            [args.output, *args.compare],
            args.out,
            storage_of(args),
            qrels=args.qrels,
            limits=limits,
        )
        if args.out is None:
            summary["report"] = _under(
                parse_sources([args.output, *args.compare])[0].uri, DEFAULT_NAME
            )
    except ValueError as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    return _print(summary, args.json)
