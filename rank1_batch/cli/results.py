"""``rank1-batch export``, ``eval`` and ``verify``: the parsers and commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rank1_batch.io.fs import StorageSpec

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
        "sidecar JSON with the rules, counts, model and prompt id.",
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
    g.add_argument("--pos-threshold", type=float, default=0.5, help="min P(true) of a positive")
    g.add_argument("--neg-threshold", type=float, default=0.5, help="max P(true) of a negative")
    g.add_argument("--pos-ranks", metavar="A:B", help="rank window of positives, e.g. 1:3")
    g.add_argument("--neg-ranks", metavar="A:B", help="rank window of negatives, e.g. 10:100")
    g.add_argument(
        "--rank-by",
        choices=("rerank", "input"),
        default="rerank",
        help="windows over reranked ranks (default) or first-stage ranks",
    )
    g.add_argument("--max-pos", type=int, default=1, help="positives per query (default 1)")
    g.add_argument("--max-neg", type=int, default=8, help="negatives per query (default 8)")
    g.add_argument("--margin", type=float, help="a negative's P(true) <= best positive - MARGIN")
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
        help="sentence-transformers layout: triplet (query, positive, negative; default), "
        "n-tuple (negative_1..N, N = --max-neg), n-tuple-scores (plus a score list), "
        "labeled-pair (query, passage, label 1/0), margin-mse (score = pos - neg)",
    )
    g.add_argument(
        "--st-save",
        choices=("parquet", "disk"),
        default="parquet",
        help="sentence-transformers: one Parquet file, or a datasets save_to_disk folder",
    )
    ex.add_argument("--push-to-hub", metavar="REPO", help="hf format: upload to this dataset repo")

    ev = sub.add_parser(
        "eval",
        help="evaluate the first-stage and reranked runs against qrels (ir_measures)",
        description="Evaluate the first-stage run (the input order) and the reranked run of "
        "OUTPUT, one committed shard at a time, against qrels (TREC 'qid 0 docid rel' or "
        "BEIR 'query-id corpus-id score' TSV); print them side by side and write "
        "OUTPUT/exports/metrics.json.",
    )
    ev.add_argument("output", help="output folder of a job (local path or URI)")
    ev.add_argument("--qrels", required=True, help="qrels file")
    ev.add_argument(
        "--metrics",
        nargs="+",
        default=["nDCG@10", "RR@10", "R@100"],
        help="ir_measures names (default nDCG@10 RR@10 R@100)",
    )
    ev.add_argument("--per-query", action="store_true", help="also print a per-query table")
    ev.add_argument("--json", action="store_true", help="print JSON")
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
        "rescores exactly those shards.",
    )
    vf.add_argument("output", help="output folder of a job (local path or URI)")
    vf.add_argument("--repair", action="store_true", help="retire the bad shards' markers")
    vf.add_argument("--json", action="store_true", help="print JSON")
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

    storage = storage_of(args)
    store = Store(args.output, storage)
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
            Store(args.output),
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
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.evaluate import evaluate_output, format_report, incomplete_warning

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
            Store(args.output), args.qrels, list(args.metrics), per_query=args.per_query
        )
    except ValueError as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    warning = incomplete_warning(report)
    if warning:
        print(f"rank1-batch: {warning}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "export": cmd_export,
    "eval": cmd_eval,
    "verify": cmd_verify,
}
