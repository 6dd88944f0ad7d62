"""End to end on local Ray (device: cpu): what `run` shows a newcomer on a terminal, and
Ctrl-C: the summary, --json, -q and one progress display; wall times after a resume; a CSV
input through prepare and score; Ctrl-C ending in one line."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import yaml
from conftest import CLI, ENV, ROOT

from rank1_batch.io import layout, lease
from rank1_batch.io.store import Store
from rank1_batch.job.inputs import listing, scan_inputs
from rank1_batch.job.load import load_job
from rank1_batch.job.record import claim_output, job_record

pytestmark = pytest.mark.ray


def write_job(tmp_path: Path, input_path: str, shard_size: int) -> Path:
    job = {
        "name": "console",
        "input": {"path": input_path},
        "output": {"path": str(tmp_path / "out"), "shard_size": shard_size},
        "model": {"name": "toy", "engine": "transformers", "device": "cpu"},  # device: cpu
        "reasoning": {"max_tokens": 16, "min_reserve": 16},
        "compute": {"num_cpus": 2},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_on_a_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal (120 columns); return the exit
    code and everything the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [*CLI, *args], cwd=ROOT, env=ENV, stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    out = bytearray()
    deadline, ended = time.time() + timeout, None
    try:
        while time.time() < deadline:
            if proc.poll() is not None and ended is None:
                ended = time.time()
            if ended is not None and time.time() - ended > 2:
                break  # Ray's children may hold the terminal open a little longer
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        os.close(master)
    return proc.returncode, out.decode(errors="replace")


def test_run_on_a_terminal_shows_one_progress_bar_and_a_summary(tmp_path):
    """-q hides Ray's INFO lines, Ray Data's score bar stays off while ours
    runs, the end is a summary with the next commands; _SUCCESS.json has the total and last
    run's wall time after a resume; the input is a CSV file."""
    rows = [f"q{q},query {q},d{q}-{d},passage {d} of query {q}" for q in range(3) for d in range(4)]
    (tmp_path / "pairs.csv").write_text("query_id,query,doc_id,passage\n" + "\n".join(rows))
    job = write_job(tmp_path, str(tmp_path / "pairs.csv"), shard_size=4)
    # an earlier run of this job that ran 100 s and was stopped
    spec = load_job(job)
    store = Store(spec.output.path)
    claim_output(store, job_record(spec, listing(scan_inputs(spec.input))))
    earlier = lease.Run.new()
    earlier.started, earlier.refreshed = time.time() - 1000, time.time() - 900
    earlier.finished = True
    store.write_json(lease.run_path(earlier.run_id), earlier.to_dict())

    rc, screen = run_on_a_terminal(["-q", "run", str(job)])
    assert rc == 0, screen[-3000:]
    assert "done: 12 pairs scored" in screen
    for line in (
        f"results: {store.uri}",
        f"rank1-batch status {store.uri}",
        f"rank1-batch eval {store.uri} --qrels",
        f"rank1-batch export {store.uri} --format trec",
    ):
        assert line in screen, line
    assert " INFO " not in screen and "INFO " not in screen.replace("\r", "\n")
    assert "- MapBatches(ShardWorker):" not in screen  # Ray Data's score bar: off
    assert "Progress bars disabled" not in screen
    assert re.search(r"shards \d+/\d+", screen), "our progress bar is missing"
    assert "finished_at" not in screen  # no raw JSON

    done = store.read_json(layout.SUCCESS)
    assert done["runs"] == 2
    assert done["total_wall_seconds"] >= 100 + done["last_run_wall_seconds"] - 1
    assert "wall_seconds" not in done
    again = subprocess.run(
        [*CLI, "-q", "run", str(job), "--json"], cwd=ROOT, env=ENV, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scored"] == 12


def test_ctrl_c_exits_130_with_one_line_and_the_run_resumes(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) ends with exit 130 and one line
    saying the output is safe and the same command resumes; no traceback; lease released."""
    job = write_job(tmp_path, str(ROOT / "jobs/data/demo-pairs.parquet"), shard_size=50)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "run", str(job)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 600
        while not (out / layout.COMMITS).exists() or not os.listdir(out / layout.COMMITS):
            assert time.time() < deadline, "no shard committed in 600 s"
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == (
        f"rank1-batch: interrupted; {out} is safe: committed shards are kept, "
        "and the same command resumes"
    ), err[-3000:]
    assert not (out / lease.LEASE).exists()
    assert not (out / layout.SUCCESS).exists()


def test_a_swallowed_ctrl_c_still_stops_scoring():
    """Ray Data can swallow the driver's KeyboardInterrupt (or turn it into another error);
    the scoring loop's watch keeps the fact, so the next shard or round stops the run."""
    from rank1_batch.pipeline.pool import _sigint_watch

    before = signal.getsignal(signal.SIGINT)
    with _sigint_watch() as interrupted:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here
        except KeyboardInterrupt:
            pass  # what a library in between might do
        assert interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before
