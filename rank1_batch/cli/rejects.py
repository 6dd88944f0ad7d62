"""``rank1-batch rejects``: its parser and the command (the reading is outputs.rejects)."""

from __future__ import annotations

import argparse
import json

from rank1_batch.cli.results import add_storage_arguments, storage_of

EPILOG = """examples:
  rank1-batch rejects out/demo
  rank1-batch rejects out/demo --reason duplicate --first 20
  rank1-batch rejects s3://bucket/job --json

Each row is shown as FILE line N (CSV, TSV, JSONL: the line its record starts on, 1-based,
as an editor shows it) or FILE row N (Parquet: the row's 0-based index in the file), and
", candidate K" (0-based) for candidate lists. Duplicates name the row they collided with.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser(
        "rejects",
        help="rejected and duplicate input rows, by reason, with the file and line of each",
        description="The input rows prepare did not score: rejected rows (null ids, blank "
        "text, missing documents...) and duplicates (a (query_id, doc_id) seen earlier, "
        "dropped: the first occurrence is kept), counted by reason, with the first rows of "
        "each and where they came from.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rp.add_argument("output", help="output folder (local path or s3://...)")
    rp.add_argument("--first", type=int, default=5, help="rows shown per reason (5)")
    rp.add_argument(
        "--reason", action="append", help="only this reason (repeatable; 'duplicate' too)"
    )
    rp.add_argument("--json", action="store_true", help="print JSON (every field of each row)")
    add_storage_arguments(rp)


def cmd_rejects(args: argparse.Namespace) -> int:
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.rejects import format_rejects, read_rejects

    first = max(0, args.first)
    report = read_rejects(Store(args.output, storage_of(args)), first, args.reason)
    print(json.dumps(report, indent=2) if args.json else format_rejects(report, first))
    return 0
