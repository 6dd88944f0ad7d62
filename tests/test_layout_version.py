"""The output layout is versioned: ``job.json`` records ``layout_version``, and every reader of
an existing output refuses another version, or none, in one line naming the folder, the version
found and the version this rank1-batch reads (exit 2, no traceback). No Ray, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_newcomer import tiny_job
from test_exports_eval import SHARD0, SHARD1, _write_shard

from rank1_batch.cli import main
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.job.inputs import listing, scan_inputs
from rank1_batch.job.load import load_job
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.outputs.plan import fingerprint_state

# (how job.json is edited, what the refusal says was found)
EDITS = [
    pytest.param(lambda job: job | {"layout_version": 99}, "layout_version 99", id="99"),
    pytest.param(
        lambda job: {k: v for k, v in job.items() if k != "layout_version"},
        "no layout_version",
        id="missing",
    ),
]


def _edit_job(out: Path, edit) -> None:
    path = out / layout.JOB_FILE
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _refused(capsys, out: Path, found: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"rank1-batch: error: {out}: job.json records {found};"), err
    assert f"reads output layout version {layout.LAYOUT_VERSION} only" in err, err


def test_job_json_records_the_layout_version(tmp_path):
    spec = load_job(tiny_job(tmp_path))
    record = job_record(spec, listing(scan_inputs(spec.input)))
    assert record["layout_version"] == layout.LAYOUT_VERSION == 1
    store = Store(spec.output.path)
    assert claim_output(store, record)
    assert layout.read_job(store)["layout_version"] == layout.LAYOUT_VERSION


@pytest.mark.parametrize(("edit", "found"), EDITS)
def test_every_reader_refuses_another_layout_in_one_line(tmp_path, capsys, edit, found):
    out = tmp_path / "out"
    store = Store(str(out))
    _write_shard(store, "shard-00000", SHARD0)
    _write_shard(store, "shard-00001", SHARD1)
    store.write_json(layout.SUCCESS, {"scored": len(SHARD0) + len(SHARD1)})
    qrels = tmp_path / "qrels"
    qrels.write_text("q1 0 a 1\nq2 0 x 1\n")
    assert main(["-q", "export", str(out), "--format", "trec"]) == 0  # readable as written
    capsys.readouterr()
    _edit_job(out, edit)
    commands = [
        ["status", str(out)],
        ["export", str(out), "--format", "trec"],
        ["eval", str(out), "--qrels", str(qrels)],
        ["report", str(out)],
        ["verify", str(out)],
        ["compare", str(out), "first-stage"],
        ["compare", str(out), "first-stage", "--qrels", str(qrels)],
    ]
    for argv in commands:
        assert main(["-q", *argv]) == 2, argv
        _refused(capsys, out, found)
    assert not (out / "exports" / "report.html").exists()


@pytest.mark.parametrize(("edit", "found"), EDITS)
def test_run_and_plan_refuse_to_resume_another_layout(tmp_path, capsys, edit, found):
    job = tiny_job(tmp_path)
    spec = load_job(job)
    store = Store(spec.output.path)
    record = job_record(spec, listing(scan_inputs(spec.input)))
    claim_output(store, record)
    _edit_job(Path(spec.output.path), edit)
    assert main(["-q", "run", str(job)]) == 2
    _refused(capsys, Path(spec.output.path), found)
    assert sorted(p.name for p in Path(spec.output.path).iterdir()) == [layout.JOB_FILE]
    ok, detail, facts = fingerprint_state(store, record)
    assert not ok and facts["state"] == "refused"
    assert f"job.json records {found};" in detail and "\n" not in detail
