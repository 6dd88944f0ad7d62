"""A real Ray head on loopback with token auth: submit the demo job with the CLI, wait for
SUCCEEDED, check the output; an unauthenticated submission is refused; no credential in the
submitted runtime_env."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rank1_batch.io import layout

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLANTED = "PLANTEDsecret" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_processes(temp_dir: str, gcs_port: int | None = None) -> list:
    """This test's Ray processes: those naming its temp dir, and those naming its GCS port in
    ``--address=HOST:PORT`` (the Ray client server, ``ray.util.client.server``, names no temp
    dir, and its HOST is the machine's address even with --node-ip-address=127.0.0.1: it was
    left behind before)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            parts = proc.info["cmdline"] or ()
            if any(temp_dir in part for part in parts) or (
                gcs_port is not None
                and any(
                    part.startswith("--address=") and part.endswith(f":{gcs_port}")
                    for part in parts
                )
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_session(temp_dir: str, gcs_port: int | None = None) -> None:
    """Stop only this test's Ray processes (``ray stop`` would stop every Ray on the box)."""
    import psutil

    for proc in session_processes(temp_dir, gcs_port):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()


class Head:
    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.port, self.dash = free_port(), free_port()
        self.temp = tempfile.mkdtemp(prefix="r1c", dir="/tmp")
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_DISABLE_USAGE_STATS": "1",
            "PYTHONUNBUFFERED": "1",
            # The cluster's "python" is this venv's, as it would be the image's.
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"http://127.0.0.1:{self.dash}"
        self.node_ports: list[int] = []

    def start(self, *extra: str) -> None:
        proc = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dash}",
                "--num-cpus=2",
                f"--temp-dir={self.temp}",
                # Every agent port chosen free, so other Ray instances on the box never collide.
                *(
                    f"--{name}={free_port()}"
                    for name in (
                        "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port",
                        "runtime-env-agent-port",
                        "metrics-export-port",
                        "ray-client-server-port",
                        "node-manager-port",
                        "object-manager-port",
                    )
                ),
                "--disable-usage-stats",
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{proc.stderr[-3000:]}")

    def add_node(self, num_cpus: int = 2) -> int:
        """Start a second raylet on loopback; return its node-manager port (to kill it)."""
        nm_port = free_port()
        subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                f"--address=127.0.0.1:{self.port}",
                f"--num-cpus={num_cpus}",
                "--disable-usage-stats",
                f"--node-manager-port={nm_port}",
                *(
                    f"--{name}={free_port()}"
                    for name in (
                        "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port",
                        "runtime-env-agent-port",
                        "metrics-export-port",
                        "object-manager-port",
                    )
                ),
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=180,
        )
        self.node_ports.append(nm_port)
        return nm_port

    def kill_node(self, nm_port: int) -> int:
        """SIGKILL one node's raylet: the node and its workers are lost."""
        import psutil

        killed = 0
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or ())
            if "raylet" in (proc.info["name"] or "") and f"node_manager_port={nm_port}" in cmd:
                proc.kill()
                killed += 1
        return killed

    def stop(self) -> None:
        import psutil

        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or ())
            if any(f"node_manager_port={p}" in cmd for p in self.node_ports):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        kill_session(self.temp, self.port)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    h = Head()
    h.start()
    try:
        yield h
    finally:
        h.stop()


def cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rank1_batch.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_demo_waits_for_success_and_writes_output(head, tmp_path):
    out = tmp_path / "out"
    env = {**head.env, "AWS_SECRET_ACCESS_KEY": PLANTED}
    proc = cli(
        ["submit", "jobs/demo.yaml", "--address", head.address, "--output", str(out), "--wait"], env
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "SUCCEEDED" in proc.stdout
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["scored"] == 3000
    sid = proc.stdout.split("submitted: ", 1)[1].split()[0]

    listed = cli(["jobs", "--address", head.address], head.env)
    assert sid in listed.stdout and "SUCCEEDED" in listed.stdout
    logs = cli(["logs", sid, "--address", head.address], head.env)
    assert "committed" in logs.stdout

    # The submitted runtime_env carries code and the job file, never a credential. Asked
    # from a subprocess with the head's environment: setting RAY_AUTH_MODE in this process
    # would leak into every later test that starts Ray in-process.
    info = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json,sys; from ray.job_submission import JobSubmissionClient as C; "
            f"i=C('{head.address}').get_job_info('{sid}'); print(json.dumps(i.runtime_env))",
        ],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "py_modules" in info.stdout
    assert PLANTED not in info.stdout and head.token not in info.stdout


def test_second_submit_of_running_job_reports_it(head, tmp_path):
    out = tmp_path / "out"
    args = ["submit", "jobs/demo.yaml", "--address", head.address, "--output", str(out)]
    first = cli(args, head.env)
    assert first.returncode == 0 and "submitted:" in first.stdout, first.stderr[-2000:]
    sid = first.stdout.split("submitted: ", 1)[1].split()[0]
    second = cli(args, head.env)
    assert second.returncode == 0 and f"already running: {sid}" in second.stdout
    stop = cli(["stop", sid, "--address", head.address], head.env)
    assert stop.returncode == 0
    deadline = time.time() + 120
    while time.time() < deadline:
        listed = cli(["jobs", "--address", head.address], head.env).stdout
        line = next(ln for ln in listed.splitlines() if ln.startswith(sid + " "))
        if "STOPPED" in line or "SUCCEEDED" in line or "FAILED" in line:
            break
        time.sleep(1)
    # After it ended, submitting again is a new attempt that resumes the same output.
    third = cli(args, head.env)
    assert f"submitted: {sid}-a2" in third.stdout, third.stdout + third.stderr[-2000:]
    cli(["stop", f"{sid}-a2", "--address", head.address], head.env)


def test_stopping_a_head_leaves_no_process_behind():
    """A stopped head leaves no Ray process of its own, the Ray client
    server (``ray.util.client.server``) included."""
    import psutil

    h = Head()
    h.start()
    assert any(
        "ray.util.client.server" in " ".join(p.info["cmdline"] or ())
        for p in session_processes(h.temp, h.port)
    ), "no client server started: nothing to check"
    h.stop()
    deadline = time.time() + 30
    while (left := session_processes(h.temp, h.port)) and time.time() < deadline:
        time.sleep(0.5)
    names = []
    for p in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(" ".join(p.cmdline())[:120])
    assert not names, f"left behind: {names}"


def test_unauthenticated_submission_is_refused(head, tmp_path):
    env = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = cli(
        ["submit", "jobs/demo.yaml", "--address", head.address, "--output", str(tmp_path / "out")],
        env,
    )
    assert proc.returncode != 0
    assert "auth" in proc.stderr.lower()
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def two_nodes() -> Iterator[Head]:
    h = Head()
    h.start()
    h.add_node()
    try:
        yield h
    finally:
        h.stop()


def test_two_nodes_spread_and_losing_one_mid_score_ends_exact(two_nodes, tmp_path):
    """Workers run on both nodes; SIGKILL of the worker node's raylet mid-score costs only its
    in-flight shards and the job still ends with exactly the uninterrupted output."""
    from rank1_batch.io import commit
    from rank1_batch.io.store import Store
    from rank1_batch.outputs.results import shard_table

    out, ref = tmp_path / "out", tmp_path / "ref"
    base = ["run", "jobs/demo.yaml", "--set", "output.shard_size=250"]
    local_env = {k: v for k, v in two_nodes.env.items() if not k.startswith("RAY_AUTH")}
    assert cli([*base, "--output", str(ref)], local_env).returncode == 0
    env = {**two_nodes.env, "RAY_ADDRESS": f"127.0.0.1:{two_nodes.port}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rank1_batch.cli",
            *base,
            "--output",
            str(out),
            "--set",
            "compute.workers=2",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = Store(str(out))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        markers = commit.read_markers(store) if (out / "_commits").exists() else []
        if len({m.worker.rsplit(":", 1)[-1] for m in markers}) >= 2:
            break
        time.sleep(0.1)
    nodes_before = {m.worker.rsplit(":", 1)[-1] for m in commit.read_markers(store)}
    assert len(nodes_before) == 2, "scoring did not use both nodes"
    total = len(json.loads((out / layout.MANIFEST).read_text())["shards"])
    assert len(commit.committed_shards(store)) < total, "finished before the node was killed"
    assert two_nodes.kill_node(two_nodes.node_ports[0]) == 1
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]

    def scores(folder):
        s = Store(str(folder))
        rows = []
        for shard in sorted(commit.committed_shards(s)):
            rows += shard_table(s, shard, "scores").to_pylist()
        return {(r["query_id"], r["doc_id"]): r["score"] for r in rows}, len(rows)

    got, n = scores(out)
    want, _ = scores(ref)
    assert n == len(got) == 3000
    assert got == want
