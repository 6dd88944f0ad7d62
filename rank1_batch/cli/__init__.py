"""The ``rank1-batch`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from rank1_batch import __version__
from rank1_batch.cli.cluster import add_parsers as add_cluster_parsers
from rank1_batch.cli.cluster import cmd_cluster
from rank1_batch.cli.compare import add_parser as add_compare_parser
from rank1_batch.cli.compare import cmd_compare
from rank1_batch.cli.rejects import add_parser as add_rejects_parser
from rank1_batch.cli.rejects import cmd_rejects
from rank1_batch.cli.report import add_parser as add_report_parser
from rank1_batch.cli.report import cmd_report
from rank1_batch.cli.results import COMMANDS as IO_COMMANDS
from rank1_batch.cli.results import add_parsers as add_io_parsers
from rank1_batch.cli.results import add_storage_arguments, storage_of

EPILOG = """examples:
  rank1-batch plan jobs/demo.yaml --sample 100
  rank1-batch run jobs/demo.yaml
  rank1-batch run jobs/demo.yaml --output out/demo2 --set compute.workers=2
  rank1-batch run jobs/demo.yaml --join     (a second machine scoring the same output)
  rank1-batch status out/demo
  rank1-batch eval out/demo --qrels jobs/data/demo.qrels
  rank1-batch export out/demo --format trec
  rank1-batch report out/demo --qrels jobs/data/demo.qrels
  rank1-batch compare out/demo first-stage --qrels jobs/data/demo.qrels
  rank1-batch verify out/demo [--repair]   (checksums of every committed file)
  rank1-batch toy-model --out /tmp/toy   (rebuild the toy model from scratch)
"""


QUIET_HELP = "only warnings and errors (before or after the command)"


def _add_job_arguments(parser: argparse.ArgumentParser, job_help: str = "job file (YAML)") -> None:
    """The job file and its overrides, the same for run, plan and submit."""
    parser.add_argument("job", help=job_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a job field (repeatable), e.g. --set compute.workers=2",
    )
    parser.add_argument("--output", metavar="URI", help="override output.path")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rank1-batch",
        description="Batch reranking with the Rank1 reasoning reranker on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"rank1-batch {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run or resume a job on this machine (or the Ray cluster it runs in)",
        description="Run a job file. On an existing output folder of the same job, resume: "
        "committed shards are skipped; a finished job exits 0 without writing. A folder "
        "written with different result-determining settings is refused. Joins the Ray "
        "cluster named by RAY_ADDRESS (as inside a Ray job), else starts a local Ray.",
    )
    _add_job_arguments(run, "job file (YAML), e.g. jobs/demo.yaml")
    run.add_argument("--json", action="store_true", help="print _SUCCESS.json, not a summary")
    busy = run.add_mutually_exclusive_group()
    busy.add_argument(
        "--join",
        action="store_true",
        help="when another live run holds the output: score alongside it (from the other "
        "end of the pending shards) instead of refusing",
    )
    busy.add_argument(
        "--take-over",
        action="store_true",
        help="take the output's run lease even if its holder looks alive (it is dead on "
        "another machine); by default a dead holder is detected and replaced on its own",
    )

    _plan_parser(sub)

    st = sub.add_parser(
        "status",
        help="progress of a job, read from its output folder",
        description="Progress of a job read from its output folder alone (works anywhere, "
        "while it runs and after): state (preparing, scoring, stopped: no live run holds it, "
        "the same run command resumes it; complete), shards and pairs committed, statuses, "
        "reasoning tokens and the ETA of the live run.",
    )
    st.add_argument("output", help="output folder (local path or URI)")
    st.add_argument("--json", action="store_true", help="print JSON")
    add_storage_arguments(st)

    add_cluster_parsers(sub, _add_job_arguments)
    add_io_parsers(sub)
    add_compare_parser(sub)
    add_rejects_parser(sub)
    add_report_parser(sub)

    toy = sub.add_parser(
        "toy-model",
        help="build the toy model (a tiny demo/test model, NOT a reranker)",
        description="Rebuild the toy Qwen2-style model and tokenizer deterministically and "
        "train it on synthetic relevance data. It exists for demos and tests only; it is not "
        "a reranker. Jobs naming model 'toy' use the copy shipped in the package.",
    )
    toy.add_argument("--out", required=True, help="folder to write the model to")
    _everywhere(sub)
    return p


def _everywhere(sub: argparse._SubParsersAction) -> None:
    """Every subcommand takes the global ``-q`` too (``rank1-batch run JOB -q`` as well as
    ``rank1-batch -q run JOB``), and shows its one-line help as its description when it has
    no longer one (the subparsers of ``cli.results``, ``report``, ``compare`` included)."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, parser in sub.choices.items():
        # SUPPRESS: absent after the subcommand, the value given before it (or False) stays
        parser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP
        )
        if not parser.description:
            parser.description = helps.get(name)


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser(
        "plan",
        help="check a job as run would, count its work and estimate GPU-hours and cost",
        description="Everything run checks (job file, input schemas, output read/write, "
        "model and tokenizer, fingerprint against an existing output), then a streamed scan "
        "of the input, prompt lengths on a sample, reasoning tokens from a calibration run of "
        "--sample pairs on the job's engine, and GPU-hours and cost per GPU type, printed as "
        "a table (--json: the JSON report; --out PATH: also written there). Exits 1 naming "
        "why when run would fail. Scores nothing, writes nothing under the output (a probe "
        "file is written and deleted).",
    )
    _add_job_arguments(pl)
    pl.add_argument(
        "--sample",
        type=int,
        default=100,
        metavar="N",
        help="pairs judged on the job's engine to measure reasoning tokens (default 100; 0: none)",
    )
    pl.add_argument(
        "--token-sample",
        type=int,
        default=2000,
        metavar="N",
        help="pairs tokenised for the prompt-length distribution (default 2000)",
    )
    pl.add_argument(
        "--reasoning-mean",
        type=float,
        metavar="TOKENS",
        help="reasoning tokens per pair, instead of a calibration run",
    )
    pl.add_argument(
        "--reasoning-p95",
        type=float,
        metavar="TOKENS",
        help="95th percentile to report with --reasoning-mean",
    )
    pl.add_argument(
        "--throughput",
        action="append",
        default=[],
        metavar="GPU=TOKENS_PER_S[@USD_PER_HOUR]",
        help="decode tokens/s (and price) of one GPU for this model (repeatable)",
    )
    pl.add_argument(
        "--throughput-file",
        metavar="YAML",
        help="throughput table merged over the packaged one (same format)",
    )
    pl.add_argument(
        "--out",
        metavar="PATH",
        help="also write the JSON report to PATH (default: no file is written)",
    )
    pl.add_argument("--json", action="store_true", help="print the JSON report, not a table")


def _cmd_run(args: argparse.Namespace) -> int:
    from rank1_batch.job.inputs import InputError
    from rank1_batch.job.load import load_job
    from rank1_batch.pipeline.console import format_summary
    from rank1_batch.run import run

    spec = load_job(args.job, overrides=args.overrides, output=args.output)
    args.interrupted_hint = (
        f"{spec.output.path} is safe: committed shards are kept, and the same command resumes"
    )
    try:
        result = run(spec, join=args.join, take_over=args.take_over, quiet=args.quiet)
    except InputError as exc:
        raise InputError(f"{args.job}: {exc}") from None
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "commits"}, indent=2))
    else:
        print(format_summary(result, spec.output.path, spec.input.model_dump()))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rank1_batch.job.load import load_job
    from rank1_batch.outputs.plan import PlanOptions, format_plan, make_plan

    spec = load_job(args.job, overrides=args.overrides, output=args.output)
    options = PlanOptions(
        sample=args.sample,
        token_sample=args.token_sample,
        reasoning_mean=args.reasoning_mean,
        reasoning_p95=args.reasoning_p95,
        throughput_file=args.throughput_file,
        throughput=args.throughput,
    )
    report = make_plan(spec, options)
    print(json.dumps(report, indent=2, default=str) if args.json else format_plan(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"plan written to {args.out}", file=sys.stderr)
    for reason in report["would_fail"]:
        print(f"rank1-batch: error: {reason}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.status import format_status, read_status

    storage = storage_of(args)
    status = read_status(Store(args.output, storage))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from rank1_batch.toy.model import build_toy_model

    print(json.dumps(build_toy_model(args.out), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`rank1-batch status OUT | head -1`): what it read is what it
        # asked for, so exit quietly. stdout goes to devnull first, or Python's flush at
        # exit would raise the same error again, with a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from rank1_batch.io.commit import CommitError
    from rank1_batch.io.layout import LayoutVersionError
    from rank1_batch.io.lease import OutputBusy
    from rank1_batch.io.paths import UnsafePath
    from rank1_batch.io.store import StorageError
    from rank1_batch.job.inputs import InputError
    from rank1_batch.job.record import FingerprintMismatch
    from rank1_batch.job.spec import JobError
    from rank1_batch.outputs.results import ResultsError
    from rank1_batch.outputs.throughput import ThroughputError
    from rank1_batch.pipeline.attempts import EXIT_QUARANTINED, ShardQuarantined
    from rank1_batch.pipeline.pool import RayStartError

    commands = {"plan": _cmd_plan, "run": _cmd_run, "status": _cmd_status, "toy-model": _cmd_toy}
    commands.update(dict.fromkeys(("submit", "jobs", "logs", "stop"), cmd_cluster))
    commands.update(IO_COMMANDS)
    commands["report"] = cmd_report
    commands["compare"] = cmd_compare
    commands["rejects"] = cmd_rejects
    try:
        return commands[args.command](args)
    except (
        CommitError,
        JobError,
        InputError,
        FingerprintMismatch,
        FileNotFoundError,
        StorageError,
        ResultsError,
        OutputBusy,
        ThroughputError,
        UnsafePath,
        LayoutVersionError,
        RayStartError,
    ) as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2
    except ShardQuarantined as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return EXIT_QUARANTINED
    except KeyboardInterrupt:
        hint = getattr(args, "interrupted_hint", None)
        print("\nrank1-batch: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
