"""What ``run`` and ``status`` print: the summary tells this run's work from reused rows and
from an earlier run's (a no-op rerun says so), rates to 3 significant figures, reasoning
tokens spent; Ray Data's own progress off on a pipe (one line per committed shard instead);
a Ray start-up failure in one line; ``status`` after a run died during start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import CLI, DEMO, ENV, ROOT

from rank1_batch.cli import main
from rank1_batch.core.progress import format_rate, plural
from rank1_batch.core.stats import ShardStats
from rank1_batch.io import layout, lease
from rank1_batch.io.store import Store
from rank1_batch.outputs.status import format_status, read_status
from rank1_batch.pipeline.console import format_summary
from rank1_batch.run import this_run

SUCCESS = {
    "input_rows": 3000, "scored": 3000, "reused": 0, "rejected": 0, "duplicates": 0,
    "statuses": {"complete": 3000, "forced": 0, "fallback": 0, "error": 0, "direct": 0},
    "truncated": 0, "prompt_tokens": 300000, "reasoning_tokens": 61234, "shards": 6,
    "score_seconds": 0.2, "last_run_wall_seconds": 57.0, "total_wall_seconds": 57.0, "runs": 1,
    "pairs_per_second": 18338.7,
}  # fmt: skip


def summary(done: dict, **now: object) -> str:
    facts = {
        "nothing_to_do": False, "wall_seconds": 57.0, "shards": 6, "judged": 3000,
        "reused": 0, "reasoning_tokens": 61234, "score_wall_seconds": 32.29,
        "pairs_per_second": 92.906, **now,
    }  # fmt: skip
    return format_summary({**done, "this_run": facts}, "out/demo", {"path": "x.parquet"})


def test_a_fully_reused_run_says_it_copied_and_gives_no_rate():
    """All 3,000 pairs copied from an earlier output: 0 scored this run, 3,000 reused; no
    pairs/s (nothing was scored), not the 18338.7 of copied rows over copying time."""
    text = summary({**SUCCESS, "reused": 3000}, judged=0, reused=3000, pairs_per_second=None)
    assert text.splitlines()[0] == (
        "done: 0 pairs scored this run, 3,000 pairs reused (copied from earlier outputs), "
        "in 6 shards"
    )
    assert "(3,000 of them reused)" in text
    assert "pairs/s" not in text and "18338" not in text


def test_a_rerun_on_a_finished_output_says_it_did_nothing_in_this_runs_time():
    text = summary(SUCCESS, nothing_to_do=True, wall_seconds=2.5, shards=0, judged=0,
                   pairs_per_second=None)  # fmt: skip
    assert text.splitlines()[0] == "nothing to do: out/demo was already complete"
    assert "time: 2s this run" in text
    assert "57s" not in text


def test_the_rate_has_three_significant_figures_and_says_its_span():
    text = summary(SUCCESS)
    assert "92.9 pairs/s over the score stage's 32s (model loading included)" in text
    assert "92.906" not in text
    assert [format_rate(r) for r in (0.01234, 1.5, 9.876, 92.906, 123.4, 18338.7)] == [
        "0.0123", "1.50", "9.88", "92.9", "123", "18,339",
    ]  # fmt: skip


def test_summary_and_status_show_reasoning_tokens_total_and_per_pair(tmp_path):
    assert "tokens: 61,234 reasoning tokens, 20.4 per pair" in summary(SUCCESS)
    store = complete_output(tmp_path)
    status = read_status(store)
    assert status["reasoning_tokens"] == 61234
    assert "tokens   61,234 reasoning tokens, 20.4 per pair" in format_status(status)


def test_one_shard_is_singular():
    text = summary({**SUCCESS, "shards": 1}, shards=1, judged=1)
    assert "in 1 shard" in text and "1 pair scored" in text and "1 shards" not in text
    assert plural(1, "shard") == "1 shard" and plural(2000, "pair") == "2,000 pairs"


def test_this_run_counts_only_what_this_run_committed():
    """Two of six shards were committed by an earlier run (1,000 pairs, 200 of them reused);
    this run judged the rest."""
    earlier = (2, ShardStats(pairs=1000, reused=200, reasoning_tokens=20000))
    now = this_run({**SUCCESS, "reused": 500}, earlier, wall=40.0, score_wall=20.0)
    assert now == {
        "nothing_to_do": False, "wall_seconds": 40.0, "shards": 4, "judged": 1700,
        "reused": 300, "reasoning_tokens": 41234, "score_wall_seconds": 20.0,
        "pairs_per_second": 85.0,
    }  # fmt: skip


# -- status -----------------------------------------------------------------------------------
def job_folder(tmp_path: Path) -> Store:
    store = Store(str(tmp_path / "out"))
    store.write_json(
        layout.JOB_FILE,
        {"spec": {"name": "j", "model": {"name": "toy"}}, "layout_version": layout.LAYOUT_VERSION},
    )
    return store


def complete_output(tmp_path: Path) -> Store:
    store = job_folder(tmp_path)
    store.write_json(
        layout.MANIFEST,
        {"shards": [{"id": f"s{i}"} for i in range(6)], "pairs": 3000, "rejected": 0,
         "duplicates": 0},
    )  # fmt: skip
    store.write_json(layout.SUCCESS, SUCCESS)
    return store


def test_status_fields_come_in_one_order_whatever_the_state(tmp_path):
    """A finished job and a stopped one list the same fields in the same order."""
    finished = read_status(complete_output(tmp_path / "a"))
    stopped_store = complete_output(tmp_path / "b")
    stopped_store.delete(layout.SUCCESS)
    stopped = read_status(stopped_store)
    assert finished["state"] == "complete" and stopped["state"] == "stopped"
    assert list(finished) == list(stopped)
    order = [line.split()[0] for line in format_status(finished).splitlines()]
    assert order == [line.split()[0] for line in format_status(stopped).splitlines()]


def test_status_before_the_manifest_with_no_live_run_is_stopped_not_preparing(tmp_path):
    """The run died during start-up (here: a lease left by a process that is gone)."""
    store = job_folder(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    rec = lease.Run.new()
    rec.pid = dead.pid
    store.write_json(lease.LEASE, rec.to_dict())
    status = read_status(store)
    assert status["state"] == "stopped"
    assert "resumes it" in format_status(status)
    rec.pid = os.getpid()  # a live holder: still preparing
    store.write_json(lease.LEASE, rec.to_dict())
    assert read_status(store)["state"] == "preparing"


# -- Ray's own lines -------------------------------------------------------------------------
def test_only_the_stats_actor_key_error_and_the_token_notice_are_dropped():
    """The two Ray records tame_ray drops, and nothing else of those loggers."""
    import logging

    from rank1_batch.pipeline import console

    console.tame_ray(quiet=False)
    worker = logging.getLogger("ray._private.worker")
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    stats_error = (
        "Unhandled error (suppress with 'RAY_IGNORE_UNHANDLED_ERRORS=1'): "
        "\x1b[36mray::_StatsActor.update_execution_metrics()\x1b[39m (pid=1, ip=10.0.0.1)\n"
        '  File ".../ray/data/_internal/stats.py", line 934, in update_dataset\n'
        "    self.datasets[dataset_tag].update(state)\nKeyError: 'dataset_0358_0'"
    )
    kept: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())  # type: ignore[method-assign]
    for logger in (worker, auth):
        logger.addHandler(handler)
    try:
        worker.error(stats_error)
        worker.error("Unhandled error (suppress with ...): ray::ShardWorker.__call__() KeyError")
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with")
    finally:
        for logger in (worker, auth):
            logger.removeHandler(handler)
    assert kept == [
        "Unhandled error (suppress with ...): ray::ShardWorker.__call__() KeyError",
        "Token authentication is disabled for this Ray cluster. Anyone with",
    ]


# -- Ray start-up ---------------------------------------------------------------------------
def tiny_job(tmp_path: Path, shard_size: int = 4, **over: object) -> Path:
    rows = [f"q{q},query {q},d{q}-{d},passage {d} of query {q}" for q in range(3) for d in range(4)]
    (tmp_path / "pairs.csv").write_text("query_id,query,doc_id,passage\n" + "\n".join(rows))
    job = {
        "name": "quiet",
        "input": {"path": str(tmp_path / "pairs.csv")},
        "output": {"path": str(tmp_path / "out"), "shard_size": shard_size},
        "model": {"name": "toy", "engine": "transformers", "device": "cpu"},
        "reasoning": {"max_tokens": 16, "min_reserve": 16},
        "compute": {"num_cpus": 2},
        **over,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_a_ray_start_up_failure_is_one_line_and_status_says_stopped(tmp_path, capsys, monkeypatch):
    import ray

    def refuse(*_a: object, **_k: object) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nsecond line\nthird")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    job = tiny_job(tmp_path)
    assert main(["run", str(job), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "rank1-batch: error: Ray did not start: ConnectionError: Could not find any running "
        "Ray instance."
    ]
    capsys.readouterr()
    assert main(["status", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "state    stopped" in out and "preparing" not in out


@pytest.mark.ray
def test_status_after_a_sigkill_during_start_up_is_stopped(tmp_path):
    """SIGKILL once the run holds the lease, before its manifest (Ray starting): `status`
    says stopped (the holder's pid is gone), not `preparing` forever."""
    job = tiny_job(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "run", str(job)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (out / lease.LEASE).exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.02)
        assert not (out / layout.MANIFEST).exists(), "too late: prepare already finished"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    status = subprocess.run(
        [*CLI, "status", str(out), "--json"], cwd=ROOT, env=ENV, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert '"state": "stopped"' in status.stdout


# -- on a pipe --------------------------------------------------------------------------------
RAY_DATA_PROGRESS = ("logging_progress", "Running Dataset", "Total Progress", "Loading weights",
                     "Progress will be logged", "streaming_executor")  # fmt: skip


@pytest.mark.ray
def test_the_demo_on_a_pipe_logs_a_line_per_shard_and_no_ray_data_progress(tmp_path):
    """stderr piped: no Ray Data progress block, at most one line per shard plus as many
    as the summary has (ours: prepare and score start; Ray's: one unavoidable line per
    scoring actor, see console.CONSTRUCTOR_NOTE). A rerun then says it did nothing."""
    out = tmp_path / "demo"
    args = [*CLI, "run", str(DEMO), "--output", str(out), "--set", "compute.num_cpus=2"]
    first = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stderr.splitlines() if line.strip()]
    for marker in RAY_DATA_PROGRESS:
        assert not [line for line in lines if marker in line], marker
    shards = len(Store(str(out)).read_json(layout.MANIFEST)["shards"])
    committed = [line for line in lines if " committed; " in line]
    assert len(committed) == shards
    assert len(lines) <= shards + len(first.stdout.splitlines()), first.stderr
    assert "Token authentication is enabled" not in first.stderr
    assert first.stdout.startswith(f"done: 3,000 pairs scored this run, in {shards} shards")
    assert " pairs/s over the score stage's " in first.stdout

    again = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith(f"nothing to do: {out} was already complete")
    assert "pairs/s" not in again.stdout
