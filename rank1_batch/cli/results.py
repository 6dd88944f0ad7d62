"""``rank1-batch export``, ``eval`` and ``verify``: the parsers and commands.

One output convention for the commands that read an output (``eval``, ``export``,
``report``, ``compare``, ``verify``): a short human-readable summary on stdout, the JSON
object with ``--json``; warnings and errors on stderr. Paths are printed as the user spelt
them (a relative output stays relative). The storage flags (``--endpoint-url``,
``--region``, ``--profile``) are ``status``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rank1_batch.io.fs import StorageSpec

JSON_HELP = "print the JSON object instead of the summary"

EXPORT_EPILOG = """examples:
  rank1-batch export out/demo --format trec --tag rank1-toy
  rank1-batch export out/demo --format json-run --out run.json
  rank1-batch export out/demo --format flagembedding --pos-threshold 0.9 --neg-threshold 0.1
      (FlagEmbedding distillation: scores are logits unless --value score)
  rank1-batch export out/demo --format sentence-transformers --st-kind n-tuple-scores \\
      --max-neg 4 --st-save disk
  rank1-batch export out/demo --format tevatron --neg-ranks 10:100 --rank-by input
  rank1-batch export out/demo --format pylate --value logit
  rank1-batch export out/demo --format hf [--push-to-hub user/name]
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from rank1_batch.outputs.exports import FORMATS
    from rank1_batch.outputs.labels import ST_KINDS

    ex = sub.add_parser(
        "export",
        help="write runs, training labels or a HF dataset from committed scores",
        description="Derive a file from the committed scores of OUTPUT (never from a listing "
        "of data files), one shard at a time: memory does not grow with the number of pairs. "
        "Default --out: OUTPUT/exports/<name>. Label formats keep only "
        "complete, forced and direct rows (fallback and error rows never become labels) and "
        "write a "
        "sidecar JSON with the rules, counts, model and prompt id. Prints what was written "
        "(--json: the JSON summary).",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("output", help="output folder of a job (local path or URI)")
    ex.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="trec / json-run: the reranked run; flagembedding, tevatron, "
        "sentence-transformers, pylate: training labels; hf: a Hugging Face dataset folder "
        "(scores with text, traces)",
    )
    ex.add_argument("--out", metavar="PATH", help="where to write (file or folder)")
    ex.add_argument(
        "--tag", default=None, help="TREC run tag (default rank1; rank1-<mode> for direct/cascade)"
    )
    g = ex.add_argument_group("label selection (label formats)")
    g.add_argument(
        "--pos-threshold",
        type=float,
        default=0.5,
        help="min P(true) of a positive (default %(default)s)",
    )
    g.add_argument(
        "--neg-threshold",
        type=float,
        default=0.5,
        help="max P(true) of a negative (default %(default)s)",
    )
    g.add_argument(
        "--pos-ranks", metavar="A:B", help="rank window of positives, e.g. 1:3 (default: all ranks)"
    )
    g.add_argument(
        "--neg-ranks",
        metavar="A:B",
        help="rank window of negatives, e.g. 10:100 (default: all ranks)",
    )
    g.add_argument(
        "--rank-by",
        choices=("rerank", "input"),
        default="rerank",
        help="windows over reranked ranks or first-stage ranks (default %(default)s)",
    )
    g.add_argument(
        "--max-pos", type=int, default=1, help="positives per query (default %(default)s)"
    )
    g.add_argument(
        "--max-neg", type=int, default=8, help="negatives per query (default %(default)s)"
    )
    g.add_argument(
        "--margin",
        type=float,
        help="a negative's P(true) <= best positive - MARGIN (default: no margin)",
    )
    g.add_argument(
        "--value",
        choices=("score", "logit"),
        default=None,
        help="exported score values: P(true) or the logit (default: logit for "
        "flagembedding, whose softmax flattens probabilities; score for the others)",
    )
    g.add_argument(
        "--st-kind",
        choices=ST_KINDS,
        default="triplet",
        help="sentence-transformers layout (default %(default)s): triplet (query, positive, "
        "negative), "
        "n-tuple (negative_1..N, N = --max-neg), n-tuple-scores (plus a score list), "
        "labeled-pair (query, passage, label 1/0), margin-mse (score = pos - neg)",
    )
    g.add_argument(
        "--st-save",
        choices=("parquet", "disk"),
        default="parquet",
        help="sentence-transformers: one Parquet file, or a datasets save_to_disk folder "
        "(default %(default)s)",
    )
    ex.add_argument("--push-to-hub", metavar="REPO", help="hf format: upload to this dataset repo")
    ex.add_argument("--json", action="store_true", help=JSON_HELP)
    add_storage_arguments(ex)

    ev = sub.add_parser(
        "eval",
        help="evaluate the first-stage and reranked runs against qrels (ir_measures)",
        description="Evaluate the first-stage run (the input order) and the reranked run of "
        "OUTPUT, one committed shard at a time, against qrels (TREC 'qid 0 docid rel' or "
        "BEIR 'query-id corpus-id score' TSV); print them side by side (--json: the JSON "
        "object) and write OUTPUT/exports/metrics.json. Each metric is the mean over the "
        "queries the run has that have qrels, as trec_eval (and pytrec_eval) compute it on "
        "the exported run; --all-qrels-queries: over every qrels query, a query the run "
        "lacks scoring 0, as trec_eval -c. The convention and the query counts are printed "
        "and stored with the metrics. On a job that is not finished the rule is the same, "
        "and eval warns.",
    )
    ev.add_argument("output", help="output folder of a job (local path or URI)")
    ev.add_argument("--qrels", required=True, help="qrels file (local path or URI)")
    ev.add_argument(
        "--metrics",
        nargs="+",
        default=["nDCG@10", "RR@10", "R@100"],
        help="ir_measures names (default nDCG@10 RR@10 R@100)",
    )
    ev.add_argument(
        "--all-qrels-queries",
        action="store_true",
        help="average over every qrels query, 0 for those the run lacks (trec_eval -c)",
    )
    ev.add_argument("--per-query", action="store_true", help="also print a per-query table")
    ev.add_argument("--json", action="store_true", help=JSON_HELP)
    add_storage_arguments(ev)
    _verify_parser(sub)


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    vf = sub.add_parser(
        "verify",
        help="check every committed file against its marker (sha256, size); --repair",
        description="Read every commit marker of OUTPUT and every file it names: the marker "
        "must parse and name its shard's own files, each file must exist with the recorded "
        "size and SHA-256 (streamed). Prints one line per bad shard and a summary. Exit 0: "
        "all good; 1: bad shards found (with --repair: found and retired); 2: the output "
        "cannot be read. --repair moves the bad shards' markers to _commits_retired/ (never "
        "deleted) and removes _SUCCESS.json, so the next `rank1-batch run` of the job "
        "rescores exactly those shards. Prints the bad shards and a summary (--json: the "
        "JSON object).",
    )
    vf.add_argument("output", help="output folder of a job (local path or URI)")
    vf.add_argument("--repair", action="store_true", help="retire the bad shards' markers")
    vf.add_argument("--json", action="store_true", help=JSON_HELP)
    add_storage_arguments(vf)


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--endpoint-url/--region/--profile``: how to reach an output on S3 (no credentials)."""
    parser.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)",
    )
    parser.add_argument("--region", help="S3 region (default: the AWS environment / profile)")
    parser.add_argument("--profile", help="AWS profile name (default: the AWS environment)")


def storage_of(args: argparse.Namespace) -> StorageSpec:
    """The storage section :func:`add_storage_arguments`' flags describe."""
    from rank1_batch.io.fs import StorageSpec

    return StorageSpec(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile)


def cmd_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from rank1_batch.io.store import Store
    from rank1_batch.io.verify import EXIT_BAD, repair, verify

    store = Store(args.output, storage_of(args))
    report = verify(store)
    if args.repair:
        report = repair(store, report)
    if args.json:
        print(json.dumps({**asdict(report), "bad_shards": report.bad_shards}, indent=2))
    else:
        for shard in report.bad_shards:
            what = "; ".join(f"{p.file}: {p.what}" for p in report.problems if p.shard == shard)
            print(f"bad {shard}: {what}")
        print(report.summary())
    return EXIT_BAD if report.problems or report.digest_stale else 0


def cmd_export(args: argparse.Namespace) -> int:
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.exports import export, push_to_hub
    from rank1_batch.outputs.labels import LabelRules, default_value

    if args.push_to_hub and args.format != "hf":  # before any work is done
        print("rank1-batch: error: --push-to-hub needs --format hf", file=sys.stderr)
        return 2
    try:
        rules = LabelRules(
            pos_threshold=args.pos_threshold,
            neg_threshold=args.neg_threshold,
            pos_ranks=args.pos_ranks,
            neg_ranks=args.neg_ranks,
            max_pos=args.max_pos,
            max_neg=args.max_neg,
            margin=args.margin,
            rank_by=args.rank_by,
            value=args.value or default_value(args.format),
        )
        summary = export(
            Store(args.output, storage_of(args)),
            args.format,
            args.out,
            tag=args.tag,
            rules=rules,
            st_kind=args.st_kind,
            st_save=args.st_save,
        )
    except ValueError as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    if args.push_to_hub:
        summary["pushed"] = push_to_hub(summary["out"], args.push_to_hub)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, "out"))
    if summary.get("complete") is False:
        print(
            "rank1-batch: warning: the job is not finished: exported its committed shards only",
            file=sys.stderr,
        )
    return 0


def format_summary(summary: dict[str, Any], path_key: str) -> str:
    """``written: PATH``, then one ``key: value`` line per other field (export, report)."""
    lines = [f"written: {summary[path_key]}"]
    for key, value in summary.items():
        if key == path_key:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif isinstance(value, bool):
            value = "yes" if value else "no"
        lines.append(f"{key.replace('_', ' ')}: {value}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.evaluate import evaluate_output

    try:
        import ir_measures  # noqa: F401
    except ImportError:
        print(
            "rank1-batch: error: eval needs ir_measures: pip install 'rank1-batch[eval]'",
            file=sys.stderr,
        )
        return 2
    try:
        report = evaluate_output(
            Store(args.output, storage_of(args)),
            args.qrels,
            list(args.metrics),
            per_query=args.per_query,
            all_qrels_queries=args.all_qrels_queries,
        )
    except ValueError as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_eval(report))
    warning = incomplete_warning(report)
    if warning:
        print(f"rank1-batch: {warning}", file=sys.stderr)
    return 0


def convention_lines(report: dict[str, Any]) -> list[str]:
    """Which queries each mean is over, and the counts behind it (eval's text)."""
    from rank1_batch.outputs.evaluate import ALL_QRELS_QUERIES

    fs, rr = report["runs"]["first_stage"], report["runs"]["reranked"]
    n = report["qrels_queries"]
    if report["convention"] == ALL_QRELS_QUERIES:
        lacks = n - rr["judged_queries"]
        lines = [
            f"queries averaged over: all {n} qrels queries (trec_eval -c); the {lacks} the "
            "reranked run lacks score 0"
        ]
    else:
        both = rr["queries"] == fs["queries"]
        counts = rr["queries"] if both else f"{rr['queries']} (first stage {fs['queries']})"
        lines = [
            f"queries averaged over: {counts} of the {n} qrels queries: those the run has "
            "(trec_eval's default; --all-qrels-queries for trec_eval -c)"
        ]
    if fs["unjudged_queries"]:
        lines.append(f"queries without qrels (not evaluated): {fs['unjudged_queries']}")
    return lines


def incomplete_warning(report: dict[str, Any]) -> str | None:
    """One plain line when the job was still running (or stopped) at evaluation time."""
    from rank1_batch.outputs.evaluate import ALL_QRELS_QUERIES

    inc = report.get("incomplete")
    if not inc:
        return None
    total = inc["shards_total"] if inc["shards_total"] is not None else "?"
    rest = inc["qrels_queries"] - inc["qrels_queries_scored"]
    if report["convention"] == ALL_QRELS_QUERIES:
        fate = f"the other {rest} count as 0 (--all-qrels-queries)"
    else:
        fate = f"the other {rest} are not in the means"
    return (
        f"warning: the job is not finished ({inc['shards_committed']} of {total} shards "
        f"committed): {inc['qrels_queries_scored']} of the {inc['qrels_queries']} qrels "
        f"queries are scored so far; {fate}"
    )


def format_eval(report: dict[str, Any]) -> str:
    """Side-by-side table: one row per metric, first stage | reranked | delta."""
    runs = report["runs"]
    fs, rr = runs["first_stage"]["aggregate"], runs["reranked"]["aggregate"]
    width = max(len(m) for m in fs) + 2
    lines = [f"{'metric':<{width}}{'first_stage':>12}{'reranked':>12}{'delta':>10}"]
    for m in fs:
        lines.append(f"{m:<{width}}{fs[m]:>12.4f}{rr[m]:>12.4f}{rr[m] - fs[m]:>+10.4f}")
    lines += convention_lines(report)
    warning = incomplete_warning(report)
    if warning:
        lines.append(warning)
    if "per_query" in runs["reranked"]:
        lines.append("")
        names = list(fs)
        lines.append("query_id " + " ".join(f"{'fs ' + m:>14} {'rr ' + m:>14}" for m in names))
        fpq, rpq = runs["first_stage"]["per_query"], runs["reranked"]["per_query"]
        for q in sorted(set(fpq) | set(rpq)):
            cells = " ".join(
                f"{fpq.get(q, {}).get(m, float('nan')):>14.4f} "
                f"{rpq.get(q, {}).get(m, float('nan')):>14.4f}"
                for m in names
            )
            lines.append(f"{q} {cells}")
    if "metrics_file" in report:
        lines.append(f"written: {report['metrics_file']}")
    return "\n".join(lines)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "export": cmd_export,
    "eval": cmd_eval,
    "verify": cmd_verify,
}
