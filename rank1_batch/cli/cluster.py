"""The Ray Jobs commands: ``submit``, ``jobs``, ``logs`` and ``stop`` (parsers and bodies;
the client is :mod:`rank1_batch.submit`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def add_parsers(
    sub: argparse._SubParsersAction, add_job_arguments: Callable[[argparse.ArgumentParser], None]
) -> None:
    """``submit`` (its job arguments added by ``add_job_arguments``, as for run), ``jobs``,
    ``logs`` and ``stop``."""
    address = {
        "metavar": "URL",
        "help": "Ray dashboard/Jobs address, e.g. http://HEAD:8265 "
        "(default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)",
    }
    sm = sub.add_parser(
        "submit",
        help="submit a job to a Ray cluster (Ray Jobs API, token auth)",
        description="Submit JOB.yaml to a Ray cluster. The resolved job file travels with the "
        "submission, the package as a runtime_env py_module; torch/vllm come from the cluster "
        "image. The submission id is derived from the job and its output, so submitting a "
        "running job again reports it instead of starting a twin; after a failure a new "
        "submission resumes from the output folder. Token auth is on by default "
        "(RAY_AUTH_MODE=token; token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
        "~/.ray/auth_token). Flow: submit -> jobs/logs -> status OUTPUT -> results in OUTPUT.",
    )
    add_job_arguments(sm)
    sm.add_argument("--address", **address)
    sm.add_argument(
        "--wait",
        action="store_true",
        help="follow the logs to the end; exit 0 only if the job succeeded",
    )
    sm.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=1.0,
        help="CPUs reserved for the driver (default 1)",
    )
    sm.add_argument(
        "--python",
        default="python",
        help="the interpreter the head runs the job with (default: the first python on the "
        "PATH the head was started with); a head started from an unactivated virtualenv needs "
        "/path/to/that/env/bin/python",
    )
    jl = sub.add_parser(
        "jobs",
        help="list rank1-batch jobs submitted to a cluster",
        description="List the rank1-batch jobs submitted to the Ray cluster: submission id, "
        "state and output folder (then: logs ID, status OUTPUT).",
    )
    jl.add_argument("--address", **address)
    lg = sub.add_parser(
        "logs",
        help="print a submitted job's logs",
        description="Print the driver logs of a submitted job (--follow: until it ends; exit "
        "0 only if it succeeded).",
    )
    lg.add_argument("submission_id")
    lg.add_argument("--address", **address)
    lg.add_argument("--follow", action="store_true", help="follow until the job ends")
    sp = sub.add_parser(
        "stop",
        help="stop a submitted job (its output stays resumable)",
        description="Stop a submitted job. Committed shards are kept; submitting the same "
        "job again resumes it from its output folder.",
    )
    sp.add_argument("submission_id")
    sp.add_argument("--address", **address)


def cmd_cluster(args: argparse.Namespace) -> int:
    from rank1_batch import submit

    submit.default_auth()
    try:
        return _cluster_command(args)
    except Exception as exc:
        # What Ray's client raises for a refused, unreachable or failing cluster: one line,
        # not a traceback (and never the token). Anything else is a bug: let it surface.
        expected = (ConnectionError, RuntimeError, ValueError)
        if not isinstance(exc, expected) and "Authentication" not in type(exc).__name__:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"rank1-batch: error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 2


def _cluster_command(args: argparse.Namespace) -> int:
    from rank1_batch import submit

    if args.command == "jobs":
        for job in submit.list_jobs(args.address):
            print(f"{job['submission_id']}  {job['status']:<9}  {job['output']}")
        return 0
    if args.command == "logs":
        if args.follow:
            state = submit.follow(args.address, args.submission_id)
            return 0 if state == "SUCCEEDED" else 1
        print(submit.logs(args.address, args.submission_id), end="")
        return 0
    if args.command == "stop":
        print("stopped" if submit.stop(args.address, args.submission_id) else "not running")
        return 0
    from rank1_batch.job.load import load_job

    spec = load_job(args.job, overrides=args.overrides, output=args.output)
    sid, new = submit.submit(
        spec, args.address, entrypoint_num_cpus=args.entrypoint_num_cpus, python=args.python
    )
    print(f"{'submitted' if new else 'already running'}: {sid}")
    if not args.wait:
        return 0
    state = submit.follow(args.address, sid)
    print(f"job {sid}: {state}")
    return 0 if state == "SUCCEEDED" else 1
