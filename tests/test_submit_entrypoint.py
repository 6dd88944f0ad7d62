"""The command Ray Jobs runs on the head, run here in a shell as the head would run it: with
a ``python`` on PATH that lacks rank1-batch's dependencies it stops with one line naming the
interpreter and the fix; with ``--python`` pointing at the right environment it runs the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rank1_batch.submit import entrypoint


def head_shell(command: str, path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Ray's job supervisor runs the entrypoint with ``shell=True`` in the head's environment.
    env = {"PATH": f"{path}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(cwd)}
    return subprocess.run(
        command, shell=True, env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def bare_python(tmp_path: Path) -> Path:
    """A bin/ whose ``python`` is an interpreter without this project's dependencies (a fresh
    virtualenv, as a head started from an unactivated venv finds the system's python)."""
    venv = tmp_path / "bare"
    subprocess.run(
        [sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True
    )
    return venv / "bin"


def test_a_python_without_the_dependencies_fails_in_one_line_that_names_it(tmp_path):
    bin_dir = bare_python(tmp_path)
    proc = head_shell(entrypoint(), bin_dir, tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert "cannot import rank1-batch's dependencies" in lines[0]
    assert "--python" in lines[0]
    assert lines[1] == f"rank1-batch: python there is: {bin_dir / 'python'}"


def test_submit_python_runs_the_cli_with_the_interpreter_given(tmp_path):
    bin_dir = bare_python(tmp_path)  # first on PATH, and wrong
    # The interpreter given is this test's own, where rank1-batch and its dependencies are.
    proc = head_shell(entrypoint(sys.executable, command="--help"), bin_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "usage: rank1-batch" in proc.stdout


def test_submit_takes_the_interpreter_on_its_command_line():
    from rank1_batch.cli import _parser

    args = _parser().parse_args(["submit", "jobs/demo.yaml", "--address", "http://h:8265"])
    assert args.python == "python"
    args = _parser().parse_args(
        ["submit", "jobs/demo.yaml", "--address", "http://h:8265", "--python", "/env/bin/python"]
    )
    assert args.python == "/env/bin/python"
