"""A full output device ends the job at once, in one line that names the output (ENOSPC is
not transient: no backoff rounds, no quarantine, no summary that blames a dead process)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from conftest import DEMO, run_cli

from rank1_batch.io import layout
from rank1_batch.io.store import Store

pytestmark = pytest.mark.ray


def test_a_full_output_device_ends_the_run_in_one_line(tmp_path, demo_reference):
    out = tmp_path / "out"
    # A prepared output (the demo's job.json, manifest and pairs), not scored yet: a resume.
    for name in (layout.JOB_FILE, "pairs", "rejected"):
        src = demo_reference / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        elif src.exists():
            out.mkdir(exist_ok=True)
            shutil.copy(src, out / name)
    scores = out / "scores"
    scores.mkdir(parents=True)
    # scores/ on a filesystem of 8 KiB: a shard's scores file (about 19 KB) cannot be written,
    # so the first commit of every scoring actor meets ENOSPC; the rest of the output is fine.
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(scores)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode()}")
    try:
        start = time.monotonic()
        result = run_cli("run", str(DEMO), "--output", str(out), check=False, timeout=600)
        wall = time.monotonic() - start
    finally:
        subprocess.run(["umount", "-l", str(scores)], check=True)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "rank1-batch: error" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert str(out) in errors[0] and "full or read-only" in errors[0], errors[0]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "to score again" not in result.stderr, "a full device was retried in rounds"
    assert not Store(str(out)).exists(layout.SUCCESS)
    print(f"ended in {wall:.0f} s: {errors[0]}")
