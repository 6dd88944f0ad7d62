"""How the test process ends (``conftest.pytest_unconfigure``): with pytest's own exit status,
after its ``atexit`` hooks, without the interpreter's finalization (where Ray's leftover
threads crashed a CI run after every test had passed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PROBE = """
import atexit
import os

OUT = os.environ["PROBE_OUT"]
atexit.register(lambda: open(OUT + ".atexit", "w").close())


class Finalized:
    def __del__(self, _open=open, _path=OUT + ".finalized") -> None:
        _open(_path, "w").close()  # when the interpreter clears this module at finalization


KEEP = Finalized()


def test_probe() -> None:
    assert os.environ["PROBE"] == "pass"
"""


ARGS = ["-q", "-p", "no:cacheprovider"]
# pytest.main() called by a program that goes on afterwards (and marks that it did).
IN_A_PROGRAM = (
    "import os, sys, pytest\n"
    "status = pytest.main(sys.argv[1:])\n"
    "open(os.environ['PROBE_OUT'] + '.after', 'w').close()\n"
    "sys.exit(status)\n"
)


def _pytest(
    tmp_path: Path, outcome: str, *plugin: str, program: list[str] | None = None
) -> tuple[int, set[str], str]:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "test_probe.py").write_text(PROBE)
    out = tmp_path / outcome
    proc = subprocess.run(
        [*(program or [sys.executable, "-m", "pytest"]), *ARGS, *plugin, "test_probe.py"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "PROBE": outcome,
            "PROBE_OUT": str(out),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    ran = {p.suffix for p in tmp_path.glob(f"{outcome}.*")}
    return proc.returncode, ran, proc.stdout


def test_the_test_process_keeps_its_status_runs_atexit_and_skips_finalization(
    tmp_path: Path,
) -> None:
    # The probe sees the finalization where the conftest is not loaded ...
    rc, ran, _ = _pytest(tmp_path / "plain", "pass")
    assert (rc, ran) == (0, {".atexit", ".finalized"})
    # ... and with it: the same status and atexit hooks, no finalization, the report printed.
    for outcome, status, summary in [("pass", 0, "1 passed"), ("fail", 1, "1 failed")]:
        rc, ran, stdout = _pytest(tmp_path / "ours", outcome, "-p", "conftest")
        assert (rc, ran) == (status, {".atexit"}), stdout
        assert summary in stdout
    # pytest.main() inside a program: the program goes on and ends as it would.
    rc, ran, _ = _pytest(
        tmp_path / "program", "pass", "-p", "conftest", program=[sys.executable, "-c", IN_A_PROGRAM]
    )
    assert (rc, ran) == (0, {".after", ".atexit", ".finalized"})
