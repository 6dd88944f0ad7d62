"""The ``rank1-batch`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from rank1_batch import __version__

EPILOG = """examples:
  rank1-batch run jobs/demo.yaml
  rank1-batch run jobs/demo.yaml --output out/demo2 --set compute.workers=2
  rank1-batch status out/demo
  rank1-batch toy-model --out /tmp/toy   (rebuild the toy model from scratch)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rank1-batch",
        description="Batch reranking with the Rank1 reasoning reranker on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"rank1-batch {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run or resume a job on this machine (or the Ray cluster it runs in)",
        description="Run a job file. On an existing output folder of the same job, resume: "
        "committed shards are skipped; a finished job exits 0 without writing. A folder "
        "written with different result-determining settings is refused. Joins the Ray "
        "cluster named by RAY_ADDRESS (as inside a Ray job), else starts a local Ray.",
    )
    run.add_argument("job", help="job file (YAML), e.g. jobs/demo.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a job field (repeatable), e.g. --set compute.workers=2",
    )
    run.add_argument("--output", metavar="URI", help="override output.path")

    st = sub.add_parser("status", help="progress of a job, read from its output folder")
    st.add_argument("output", help="output folder (local path or URI)")
    st.add_argument("--json", action="store_true", help="print JSON")

    toy = sub.add_parser(
        "toy-model",
        help="build the toy model (a tiny demo/test model, NOT a reranker)",
        description="Rebuild the toy Qwen2-style model and tokenizer deterministically and "
        "train it on synthetic relevance data. It exists for demos and tests only; it is not "
        "a reranker. Jobs naming model 'toy' use the copy shipped in the package.",
    )
    toy.add_argument("--out", required=True, help="folder to write the model to")
    return p


def _cmd_run(args: argparse.Namespace) -> int:
    from rank1_batch.runner import run
    from rank1_batch.spec import load_job

    spec = load_job(args.job, overrides=args.overrides, output=args.output)
    result = run(spec)
    print(json.dumps({k: v for k, v in result.items() if k != "commits"}, indent=2))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from rank1_batch.status import format_status, read_status
    from rank1_batch.storage import Store

    status = read_status(Store(args.output))
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from rank1_batch.toy_model import build_toy_model

    print(json.dumps(build_toy_model(args.out), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from rank1_batch.commit import FingerprintMismatch
    from rank1_batch.inputs import InputError
    from rank1_batch.spec import JobError

    commands = {"run": _cmd_run, "status": _cmd_status, "toy-model": _cmd_toy}
    try:
        return commands[args.command](args)
    except (JobError, InputError, FingerprintMismatch, FileNotFoundError) as exc:
        print(f"rank1-batch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
