"""What a newcomer meets at the command line before any model loads (cheap: no Ray
starts in these tests)."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rank1_batch.cli import main
from rank1_batch.io import layout, lease
from rank1_batch.io.store import Store
from rank1_batch.job.inputs import listing, scan_inputs
from rank1_batch.job.load import load_job
from rank1_batch.job.record import claim_output, job_record


def tiny_job(tmp_path: Path, input_path: str | None = None) -> Path:
    data = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"query_id": ["q1"], "query": ["cats"], "doc_id": ["d1"], "passage": ["cat"]}),
        data,
    )
    job = {
        "name": "tiny",
        "input": {"path": input_path or str(data)},
        "output": {"path": str(tmp_path / "out")},
        "model": {"name": "toy", "engine": "transformers", "device": "cpu"},  # device: cpu
        "reasoning": {"max_tokens": 8, "min_reserve": 8},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_set_of_an_unknown_key_names_the_set_argument(tmp_path, capsys):
    """`--set compute.wrkers=2` blames the --set argument, not the job file."""
    job = tiny_job(tmp_path)
    assert main(["run", str(job), "--set", "compute.wrkers=2"]) == 2
    err = capsys.readouterr().err
    assert "--set compute.wrkers=2: compute.wrkers: unknown field" in err
    assert str(job) not in err


def test_a_missing_input_names_input_path_and_the_job_file(tmp_path, capsys):
    """A missing input path names `input.path` and the job file."""
    job = tiny_job(tmp_path, input_path="nowhere/pairs.parquet")
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{job}: input.path nowhere/pairs.parquet: no such file or folder" in err
    assert not (tmp_path / "out").exists()


def test_an_unrelated_non_empty_output_folder_is_refused(tmp_path, capsys):
    """A folder holding other files (and no job.json) is not adopted silently."""
    job = tiny_job(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("precious")
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no job.json (found: thesis.tex)" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thesis.tex"]


def test_run_on_an_output_held_by_a_live_run_is_refused_naming_it(tmp_path, capsys):
    """A second `run` says who holds the output and how to join or take over."""
    job = tiny_job(tmp_path)
    spec = load_job(job)
    store = Store(spec.output.path)
    claim_output(store, job_record(spec, listing(scan_inputs(spec.input))))
    holder = lease.Run.new()
    holder.host, holder.pid, holder.refreshed = "gpu-node-7", 4242, time.time()
    store.write_json(lease.LEASE, holder.to_dict())
    assert main(["-q", "run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "is being run by gpu-node-7:4242" in err and "--join" in err
    assert not store.exists(layout.MANIFEST)  # nothing was prepared or scored


def test_unrelated_folder_check_allows_empty_and_own_folders(tmp_path):
    """An empty folder, a missing one, or one holding job.json are all fine."""
    lease.check_adoptable(Store(str(tmp_path / "missing")), layout.JOB_FILE)
    (tmp_path / "empty").mkdir()
    lease.check_adoptable(Store(str(tmp_path / "empty")), layout.JOB_FILE)
    (tmp_path / "empty" / "job.json").write_text("{}")
    (tmp_path / "empty" / "other").write_text("")
    lease.check_adoptable(Store(str(tmp_path / "empty")), layout.JOB_FILE)
    with pytest.raises(lease.OutputBusy):
        lease.check_adoptable(Store(str(tmp_path)), layout.JOB_FILE)


def test_quiet_is_accepted_before_and_after_the_command():
    from rank1_batch.cli import _parser

    parse = _parser().parse_args
    assert parse(["run", "job.yaml", "-q"]).quiet is True
    assert parse(["-q", "run", "job.yaml"]).quiet is True
    assert parse(["status", "out", "--quiet"]).quiet is True
    assert parse(["status", "out"]).quiet is False
    assert parse(["-q", "export", "out", "--format", "trec"]).quiet is True


def test_every_command_has_a_one_line_help_and_a_description():
    import argparse

    from rank1_batch.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert set(listed) == set(sub.choices)
    for name, command in sub.choices.items():
        assert listed[name], f"{name}: no help line in `rank1-batch --help`"
        assert command.description, f"{name}: `rank1-batch {name} --help` has no description"


def test_plan_prints_a_table_and_writes_no_file_unless_asked(tmp_path, capsys, monkeypatch):
    data = tmp_path / "two.parquet"
    pq.write_table(
        pa.table({"query_id": ["q1", "q1"], "query": ["cats", "cats"], "doc_id": ["d1", None],
                  "passage": ["cat", "dog"]}),
        data,
    )  # fmt: skip
    job = tiny_job(tmp_path, str(data))
    monkeypatch.chdir(tmp_path)
    main(["-q", "plan", str(job), "--sample", "0", "--token-sample", "10"])
    out = capsys.readouterr().out
    assert out.startswith("plan     tiny -> ")
    assert "{'" not in out and "'}" not in out, out  # no Python dict
    assert "1 pairs" not in out
    assert "1 rejected (" in out
    assert not (tmp_path / "plan.json").exists()
    main(["-q", "plan", str(job), "--sample", "0", "--token-sample", "10", "--out", "p.json"])
    assert (tmp_path / "p.json").exists()


def test_a_reader_that_stops_early_ends_no_traceback(tmp_path):
    """`rank1-batch status OUT | head -c0`: the pipe closes before status writes."""
    import subprocess
    import sys

    job = tiny_job(tmp_path)
    spec = load_job(job)
    claim_output(Store(spec.output.path), job_record(spec, listing(scan_inputs(spec.input))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rank1_batch.cli", "status", spec.output.path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
