"""Running a benchmark child process whose stages are told on stdout, sampling its RSS.

A child prints one JSON object per line: ``{"phase": NAME}`` as each stage begins (the
sampler tags its samples with it) and any other keys as results; the parent merges them.
Used by the prepare/memory cases (``data_cases``) and the scale case (``scale_cases``).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from typing import Any

import common as c


def run_phased(argv: list[str], what: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Run ``argv`` (from the repository root, Ray workers at nice 0); return the merged
    result objects, peak RSS per phase and role (:class:`common.RssSampler`), and wall time.
    A non-zero exit raises with the tail of the child's stderr."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=c.ROOT, env=c.bench_env(), stdout=subprocess.PIPE, stderr=log, text=True,
            start_new_session=True,
        )  # fmt: skip
        sampler = c.RssSampler(proc.pid)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                msg = json.loads(line)
                sampler.phase = msg.pop("phase", sampler.phase)
                result.update(msg)
        proc.wait()
        wall = time.perf_counter() - start
        peaks = sampler.stop()
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{what} exited {proc.returncode}: {log.read()[-3000:]}")
    return result, peaks, wall
