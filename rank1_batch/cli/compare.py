"""``rank1-batch compare``: its parser, the command, and the agreement half of its report."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rank1_batch.cli.results import JSON_HELP, add_storage_arguments, storage_of
from rank1_batch.outputs.evaluate import DEFAULT_METRICS

EPILOG = """examples:
  rank1-batch compare out/think out/direct --qrels jobs/data/demo.qrels
  rank1-batch compare first-stage out/7b out/32b --qrels q.txt --test randomization
  rank1-batch compare out/fp16 out/awq            (agreement only: no qrels)
  rank1-batch compare first-stage:out/a out/a out/b --qrels q.txt --json

RUN is an output folder (its reranked run), first-stage (the input order of the first
output named) or first-stage:OUT. The first RUN is the baseline.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser(
        "compare",
        help="paired significance tests and agreement between outputs (and the first stage)",
        description="Compare runs of the same candidates against the first (the baseline): "
        "with --qrels, each metric's mean over the queries every run holds (per-query values "
        "as eval computes them), the paired difference, a paired t-test and a paired "
        "randomization test, corrected p-values and wins/ties/losses per query; always, per "
        "query, Kendall tau and top-k overlap between the rankings and the share of pairs "
        "whose label (at export's thresholds) differs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("runs", nargs="+", metavar="RUN", help="output folders or first-stage")
    cp.add_argument("--qrels", help="qrels file (TREC or BEIR TSV); without it, agreement only")
    cp.add_argument(
        "--metrics",
        nargs="+",
        default=list(DEFAULT_METRICS),
        help="ir_measures names (default nDCG@10 RR@10 R@100)",
    )
    cp.add_argument(
        "--test",
        choices=("t", "randomization"),
        default="t",
        help="the test whose corrected p-value marks significance (both are reported)",
    )
    cp.add_argument("--alpha", type=float, default=0.05, help="significance level (0.05)")
    cp.add_argument(
        "--correction",
        choices=("holm", "bonferroni", "none"),
        default="holm",
        help="multiple-comparison correction over each metric's comparisons (default holm)",
    )
    cp.add_argument(
        "--permutations", type=int, default=10_000, help="randomization resamples (10000)"
    )
    cp.add_argument("--seed", type=int, default=0, help="randomization seed (0)")
    cp.add_argument("--top-k", type=int, default=10, help="k of the top-k overlap (10)")
    cp.add_argument(
        "--pos-threshold", type=float, default=0.5, help="label: min P(true) of a positive"
    )
    cp.add_argument(
        "--neg-threshold", type=float, default=0.5, help="label: max P(true) of a negative"
    )
    cp.add_argument("--json", action="store_true", help=JSON_HELP + " (with per-query values)")
    add_storage_arguments(cp)


def cmd_compare(args: argparse.Namespace) -> int:
    from rank1_batch.outputs.agreement import agreement_report, format_agreement, json_safe
    from rank1_batch.outputs.compare import compare, format_compare

    if args.qrels:
        try:
            import ir_measures  # noqa: F401
            import scipy  # noqa: F401
        except ImportError:
            print(
                "rank1-batch: error: compare --qrels needs ir_measures and scipy: "
                "pip install 'rank1-batch[eval]'",
                file=sys.stderr,
            )
            return 2
    try:
        report: dict[str, Any] = {}
        if args.qrels:
            report = compare(
                args.runs,
                args.qrels,
                list(args.metrics),
                test=args.test,
                alpha=args.alpha,
                correction=args.correction,
                permutations=args.permutations,
                seed=args.seed,
                storage=storage_of(args),
            )
        report["agreement"] = agreement_report(
            args.runs, args.top_k, args.pos_threshold, args.neg_threshold, storage_of(args)
        )
    except ValueError as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        text = format_compare(report) + "\n\n" if args.qrels else ""
        print(text + format_agreement(report["agreement"]))
    return 0
