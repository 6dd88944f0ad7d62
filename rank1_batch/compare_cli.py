"""``rank1-batch compare``: its parser, the command, and the agreement half of its report."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from typing import Any

from rank1_batch.evaluate import DEFAULT_METRICS

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
    cp.add_argument("--json", action="store_true", help="print JSON (with per-query values)")


def agreement_report(
    names: list[str], k: int, pos_threshold: float = 0.5, neg_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Agreement of the baseline with each other run: a summary and per-query rows."""
    from rank1_batch.agreement import agreement, summary
    from rank1_batch.compare import parse_sources
    from rank1_batch.labels import LabelRules

    sources = parse_sources(names)
    rules = LabelRules(pos_threshold=pos_threshold, neg_threshold=neg_threshold)
    base, others = sources[0], sources[1:]
    results = agreement((base.uri, base.kind), [(s.uri, s.kind) for s in others], k=k, rules=rules)
    out = []
    for s, (rows, n_base, n_other) in zip(others, results, strict=True):
        out.append(
            {
                "baseline": base.label,
                "label": s.label,
                "top_k": k,
                "thresholds": {"pos": pos_threshold, "neg": neg_threshold},
                **summary(rows, n_base, n_other),
                "per_query": [asdict(r) for r in rows],
            }
        )
    return out


def format_agreement(rows: list[dict[str, Any]]) -> str:
    lines = ["agreement (no qrels needed), per query against the baseline:"]
    for a in rows:
        share = a["label_differ_share"]
        label = "–" if share is None else f"{share:.1%} of {a['pairs']} pairs"
        lines.append(
            f"  {a['label']} vs {a['baseline']}: {a['queries']} queries; Kendall tau median "
            f"{a['kendall_tau_median']:.3f} (mean {a['kendall_tau_mean']:.3f}); top-{a['top_k']} "
            f"overlap {a['top_k_overlap_mean']:.3f}; label differs {label}"
            + (
                f" (pos->neg {a['pos_to_neg']}, neg->pos {a['neg_to_pos']})"
                if share is not None
                else ""
            )
        )
        dropped = a["only_in_baseline"] + a["only_in_other"]
        if dropped:
            lines.append(
                f"    dropped {dropped} queries held by one run only ({a['only_in_baseline']} "
                f"only in {a['baseline']}, {a['only_in_other']} only in {a['label']})"
            )
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from rank1_batch.compare import compare, format_compare

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
            )
        report["agreement"] = agreement_report(
            args.runs, args.top_k, args.pos_threshold, args.neg_threshold
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


def json_safe(obj: Any) -> Any:
    """NaN (a mean over no query, a tau of one document) as null: JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
