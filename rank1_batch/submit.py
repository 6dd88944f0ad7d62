"""``rank1-batch submit | jobs | logs | stop``: jobs on a Ray cluster through Ray's Job API.

The resolved job file travels in the runtime_env ``working_dir`` (a temporary folder holding
only ``job.yaml``); this package travels as a ``py_modules`` entry; heavy dependencies (torch,
vllm) are expected in the cluster image. The submission id is derived from the job's
result-determining settings and output, so submitting a running job again reports it instead
of starting a twin, and a resubmission after a failure is a new attempt (``-a2``…) that
resumes from the output folder.

Token authentication is the default (``RAY_AUTH_MODE=token``): the token comes from
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, read by Ray's client;
it is never put into the runtime_env.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from rank1_batch.job.spec import JobSpec

log = logging.getLogger(__name__)

PREFIX = "rank1-"
ACTIVE = ("PENDING", "RUNNING")
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def default_auth() -> None:
    """Token auth unless the user chose otherwise; must run before ``import ray``."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")


def _state(status: Any) -> str:
    return str(getattr(status, "value", status))


def resolve_address(address: str | None) -> str:
    for name in ADDRESS_ENV:
        if address:
            break
        address = os.environ.get(name)
    if not address:
        raise ValueError(
            "no cluster address: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)"
        )
    return address if "://" in address else f"http://{address}"


def base_submission_id(spec: JobSpec) -> str:
    """Deterministic id: job name + hash of the result settings and the output location."""
    blob = json.dumps(
        {"job": spec.result_settings(), "output": spec.output.path, "input": spec.input.path},
        sort_keys=True,
    ).encode()
    slug = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40] or "job"
    return f"{PREFIX}{slug}-{hashlib.sha256(blob).hexdigest()[:12]}"


def absolute_local_paths(spec: JobSpec) -> JobSpec:
    """Local relative paths made absolute (they must exist on the cluster's nodes)."""
    data = spec.model_dump(mode="json")
    for section in ("input", "output"):
        path = data[section]["path"]
        if "://" not in path and not os.path.isabs(path):
            data[section]["path"] = os.path.abspath(path)
            log.warning(
                "%s.path %s is local: it must exist on every cluster node",
                section,
                data[section]["path"],
            )
    return JobSpec.model_validate(data)


def runtime_env(job_dir: str) -> dict[str, Any]:
    import rank1_batch

    return {
        "working_dir": job_dir,
        "py_modules": [str(Path(rank1_batch.__file__).parent)],
        "env_vars": {"PYTHONUNBUFFERED": "1"},
    }


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(resolve_address(address))


def attempts(client: Any, base: str) -> list[Any]:
    """Existing submissions of this job, oldest first."""
    pattern = re.compile(re.escape(base) + r"(-a\d+)?$")
    found = [j for j in client.list_jobs() if j.submission_id and pattern.match(j.submission_id)]
    return sorted(found, key=lambda j: j.start_time or 0)


# What ``run`` imports before any Ray work; the check names them when the head lacks one.
_NEEDED = ("pyarrow", "pydantic", "ray", "yaml", "fsspec")


def entrypoint(python: str = "python", command: str = "run job.yaml") -> str:
    """The shell command Ray Jobs runs on the head: ``python -m rank1_batch.cli COMMAND``.

    Ray runs it with the head's environment, so ``python`` is whatever comes first on the
    PATH the head was started with, which is not the head's own interpreter when its
    virtualenv was not activated (this package travels in ``py_modules``, so it imports; its
    dependencies then fail half-way with a traceback). A check first names the interpreter and
    the missing module in one line and says how to choose another (``submit --python``)."""
    py = shlex.quote(python)
    probe = "import " + ", ".join(_NEEDED)
    hint = (
        "rank1-batch: on the Ray head, {} cannot import rank1-batch's dependencies ({}); "
        "start the head from the environment where rank1-batch is installed (its bin/ first "
        "on PATH), or submit with --python /path/to/that/env/bin/python"
    ).format(python, ", ".join(_NEEDED))
    check = (
        f"{py} -c {shlex.quote(probe)} >/dev/null 2>&1 || "
        f"{{ echo {shlex.quote(hint)} >&2; "
        f"echo {shlex.quote(f'rank1-batch: {python} there is: ')}"
        f'"$(command -v {py} || echo nothing on PATH)" >&2; '
        "exit 1; }"
    )
    return f"{check}; exec {py} -m rank1_batch.cli {command}"


def submit(
    spec: JobSpec,
    address: str,
    *,
    entrypoint_num_cpus: float = 1.0,
    entrypoint_num_gpus: float = 0.0,
    python: str = "python",
) -> tuple[str, bool]:
    """Submit (or find) the job; return (submission id, newly submitted)."""
    spec = absolute_local_paths(spec)
    client = _client(address)
    base = base_submission_id(spec)
    previous = attempts(client, base)
    for job in previous:
        if _state(job.status) in ACTIVE:
            return str(job.submission_id), False
    sid = base if not previous else f"{base}-a{len(previous) + 1}"
    with tempfile.TemporaryDirectory(prefix="rank1-submit-") as job_dir:
        (Path(job_dir) / "job.yaml").write_text(
            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        )
        _with_retry(
            client.submit_job,
            entrypoint=entrypoint(python),
            submission_id=sid,
            runtime_env=runtime_env(job_dir),
            entrypoint_num_cpus=entrypoint_num_cpus,
            entrypoint_num_gpus=entrypoint_num_gpus or None,
            metadata={"rank1_batch_job": spec.name, "output": spec.output.path},
        )
    return sid, True


def _with_retry(call: Any, *, attempts: int = 12, **kwargs: Any) -> Any:
    """Retry what a just-started head answers while its job agent comes up."""
    for i in range(attempts):
        try:
            return call(**kwargs)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(min(1.0 + i, 5.0))
    raise AssertionError("unreachable")


def status_of(address: str, sid: str) -> str:
    return _state(_client(address).get_job_status(sid))


def follow(address: str, sid: str, *, poll: float = 1.0) -> str:
    """Print the job's logs until it ends; return its final status."""
    import asyncio

    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            print(chunk, end="", flush=True)

    try:
        asyncio.run(tail())
    except Exception as exc:  # log streaming is best effort; the status is what counts
        log.warning("log stream ended: %s", exc)
    while (state := status_of(address, sid)) not in FINISHED:
        time.sleep(poll)
    return state


def list_jobs(address: str) -> list[dict[str, Any]]:
    out = []
    for j in _client(address).list_jobs():
        if j.submission_id and j.submission_id.startswith(PREFIX):
            out.append(
                {
                    "submission_id": j.submission_id,
                    "status": _state(j.status),
                    "job": (j.metadata or {}).get("rank1_batch_job"),
                    "output": (j.metadata or {}).get("output"),
                    "start_time": j.start_time,
                }
            )
    return sorted(out, key=lambda j: j["start_time"] or 0)


def logs(address: str, sid: str) -> str:
    text: str = _client(address).get_job_logs(sid)
    return text


def stop(address: str, sid: str) -> bool:
    stopped: bool = _client(address).stop_job(sid)
    return stopped
