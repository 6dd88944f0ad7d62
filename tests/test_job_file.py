"""Job-file limits: a hostile file is refused in one line, fast and in little memory."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rank1_batch.job import load as job_file
from rank1_batch.job.load import load_job
from rank1_batch.job.spec import JobError
from tests.conftest import ENV, ROOT

VALID = "input: {path: in.parquet}\noutput: {path: out}\nmodel: {name: toy}\n"


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each level a list of ``width`` aliases of the level below."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return VALID + "\n".join(lines) + "\n"


# The CLI's main(), then this process's peak RSS (VmHWM: of its own address space, unlike
# ru_maxrss, which a child inherits from the pytest process that forked it).
WRAPPER = """
import os, sys
from rank1_batch.cli import main
try:
    code = main(sys.argv[1:])
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    open(os.environ["HWM_FILE"], "w").write(peak[0].split()[1])
sys.exit(code)
"""


def cli_with_usage(*args: str, tmp_path) -> tuple[int, str, float, int]:
    """Run the CLI; return (exit code, stderr, seconds, peak RSS in KiB) of that process."""
    hwm = tmp_path / "hwm.txt"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        cwd=ROOT,
        env={**ENV, "HWM_FILE": str(hwm)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    return proc.returncode, proc.stderr, seconds, int(hwm.read_text())


HOSTILE = {
    "alias-bomb": (lambda: alias_bomb().encode(), "nodes once its aliases are expanded"),
    "60-MB": (lambda: VALID.encode() + b"# " + b"x" * (60 * 1024 * 1024) + b"\n", "1 MiB"),
    "deep-list": (lambda: b"x: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "deep"),
    "not-UTF-8": (lambda: VALID.encode() + b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    "recursive-alias": (lambda: VALID.encode() + b"x: &r [*r]\n", "alias *r refers to a node"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["run", "plan"])
def test_hostile_job_file_is_one_line_exit_2(case, command, tmp_path):
    make, expected = HOSTILE[case]
    path = tmp_path / "job.yaml"
    path.write_bytes(make())
    code, stderr, seconds, rss_kib = cli_with_usage(command, str(path), tmp_path=tmp_path)
    assert code == 2, stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"rank1-batch: error: {path}: "), stderr
    assert expected in stderr.replace("nesting depth", "deep")  # libyaml stops at 1,000
    assert rss_kib < 200 * 1024, f"{rss_kib} KiB"  # the interpreter and pydantic: ~90 MiB
    assert seconds < 20, seconds  # the import alone; the limit itself is timed below


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_job_file_is_refused_in_well_under_a_second(case, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(HOSTILE[case][0]())
    start = time.perf_counter()
    with pytest.raises(JobError, match=f"^{path}: [^\n]+$"):
        load_job(path)
    assert time.perf_counter() - start < 0.5


def test_anchors_within_the_bound_still_load(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: {path: in.parquet}\noutput: {path: out}\n"
        "model: &m {name: toy}\nreasoning: {instruction: &i 'be brief'}\nname: *i\n"
    )
    spec = load_job(path)
    assert spec.name == "be brief" and spec.model.name == "toy"


def test_node_and_depth_bounds_are_exact():
    job_file.check_events("[" * job_file.MAX_DEPTH + "]" * job_file.MAX_DEPTH)
    with pytest.raises(job_file.JobFileError, match="levels deep"):
        n = job_file.MAX_DEPTH + 1
        job_file.check_events("[" * n + "]" * n)

    # A sequence holding a 1,000-node anchored list and k aliases of it: 1 + 1,000 (k + 1).
    def wide(k: int) -> str:
        return "[&a [" + ", ".join(["1"] * 999) + "]" + ", *a" * k + "]"

    job_file.check_events(wide(98))  # 99,001 nodes
    with pytest.raises(job_file.JobFileError, match="100,000 nodes"):
        job_file.check_events(wide(99))  # 100,001
