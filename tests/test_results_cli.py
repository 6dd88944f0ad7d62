"""The commands that read an output, held to one convention: ``eval``, ``export``,
``report`` and ``verify`` take ``status``'s storage flags; each prints a short
summary (``--json``: the JSON object) with paths spelt as the user gave them; ``export
--help`` shows every default; a missing qrels file is one line.

Folders are written by hand (test_exports_eval's ``_write_shard``): no Ray, no model.
"""

from __future__ import annotations

import json
import re

import pytest
from test_exports_eval import JOB, SHARD0, SHARD1, _write_shard

from rank1_batch.cli import main
from rank1_batch.io import layout
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store

FLAGS = ["--endpoint-url", "http://s3.example.invalid:9", "--region", "eu-west-3"]
SPEC = StorageSpec(endpoint_url=FLAGS[1], region=FLAGS[3], profile="team")


def _output(store: Store) -> Store:
    _write_shard(store, "shard-00000", SHARD0)
    _write_shard(store, "shard-00001", SHARD1)
    store.write_json(layout.JOB_FILE, JOB)
    store.write_json(layout.SUCCESS, {"scored": 9})
    return store


@pytest.fixture()
def here(tmp_path, monkeypatch):
    """A finished output ``out`` and qrels ``q`` in the working directory."""
    monkeypatch.chdir(tmp_path)
    _output(Store("out"))
    (tmp_path / "q").write_text("q1 0 a 1\nq2 0 x 1\n")
    return tmp_path


def _entries(help_text: str, section: str) -> dict[str, str]:
    """Option -> its help text, for the options of one section of ``--help``."""
    body = help_text.split(section + ":\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    for line in body.splitlines():
        if re.match(r"  -", line):
            flag = line.split()[0]
            entries[flag] = line
        else:
            entries[flag] += " " + line.strip()
    return entries


def test_export_help_shows_the_default_of_every_label_option(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    entries = _entries(capsys.readouterr().out, "label selection (label formats)")
    assert len(entries) >= 11
    for flag, text in entries.items():
        assert "default" in " ".join(text.split()), flag
    joined = {flag: " ".join(text.split()) for flag, text in entries.items()}
    for flag, default in [
        ("--pos-threshold", "0.5"),
        ("--neg-threshold", "0.5"),
        ("--max-pos", "1"),
        ("--max-neg", "8"),
        ("--rank-by", "rerank"),
        ("--st-kind", "triplet"),
        ("--st-save", "parquet"),
    ]:
        assert f"(default {default})" in joined[flag], flag


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "out", "--qrels", "q"],
        ["export", "out", "--format", "trec"],
        ["report", "out", "--qrels", "q"],
        ["verify", "out"],
        ["compare", "out", "first-stage", "--qrels", "q"],
        ["report", "out", "--compare", "first-stage", "--qrels", "q"],
    ],
)
def test_storage_flags_reach_the_store(here, monkeypatch, capsys, command):
    """``--endpoint-url/--region/--profile`` are taken by each reader and become the
    StorageSpec of the Store that reads the output (as ``status`` has always done)."""
    seen: list[tuple[str, StorageSpec | None]] = []
    original = Store.__init__

    def spy(self: Store, uri: str, storage: StorageSpec | None = None) -> None:
        seen.append((uri, storage))
        original(self, uri, storage)

    monkeypatch.setattr(Store, "__init__", spy)
    assert main(["-q", *command, *FLAGS, "--profile", "team"]) == 0
    assert ("out", SPEC) in seen
    capsys.readouterr()


@pytest.mark.s3
def test_storage_flags_reach_an_output_on_s3(s3, tmp_path, monkeypatch, capsys):
    """With the endpoint only on the command line (not in the environment), eval, export
    and report read and write an output on the S3 server."""
    import s3fs

    uri = f"s3://{s3.bucket}/job"
    _output(Store(uri, StorageSpec(endpoint_url=s3.endpoint)))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    qrels = tmp_path / "q"
    qrels.write_text("q1 0 a 1\n")
    flags = ["--endpoint-url", s3.endpoint, "--region", "us-east-1"]
    assert main(["-q", "eval", uri, "--qrels", str(qrels), *flags]) == 0
    assert main(["-q", "export", uri, "--format", "trec", *flags]) == 0
    assert main(["-q", "report", uri, "--qrels", str(qrels), *flags]) == 0
    out = capsys.readouterr().out
    for name in ("metrics.json", "run.trec", "report.html"):
        assert f"written: {uri}/exports/{name}" in out
    assert {f"job/exports/{n}" for n in ("metrics.json", "run.trec", "report.html")} <= set(
        s3.keys("job/exports/")
    )


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["eval", "out", "--qrels", "q"], "exports/metrics.json"),
        (["export", "out", "--format", "trec"], "exports/run.trec"),
        (["export", "out", "--format", "tevatron"], "exports/tevatron.jsonl"),
        (["report", "out"], "exports/report.html"),
        (["report", "out", "--compare", "first-stage"], "exports/compare.html"),
    ],
)
def test_one_output_convention(here, capsys, command, name):
    """A human summary naming what was written, as the user spelt the output (relative
    here); ``--json``: one JSON object naming the same path."""
    assert main(["-q", *command]) == 0
    text = capsys.readouterr().out
    assert f"written: out/{name}" in text.splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert (here / "out" / name).exists()
    assert main(["-q", *command, "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert f"out/{name}" in (obj.get("out"), obj.get("report"), obj.get("metrics_file"))


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "out", "--qrels", "missing.qrels"],
        ["report", "out", "--qrels", "missing.qrels"],
        ["compare", "out", "first-stage", "--qrels", "missing.qrels"],
        ["report", "out", "--compare", "first-stage", "--qrels", "missing.qrels"],
    ],
)
def test_a_missing_qrels_file_is_one_line(here, capsys, command):
    assert main(["-q", *command]) == 2
    captured = capsys.readouterr()
    assert captured.err == "rank1-batch: error: qrels file not found: missing.qrels\n"
    assert "Errno" not in captured.out + captured.err


def test_export_of_an_unfinished_job_says_so_on_stderr(here, capsys):
    (here / "out" / layout.SUCCESS).unlink()
    assert main(["-q", "export", "out", "--format", "trec"]) == 0
    captured = capsys.readouterr()
    assert "written: out/exports/run.trec" in captured.out and "complete: no" in captured.out
    assert "the job is not finished: exported its committed shards only" in captured.err
    (here / "out" / layout.SUCCESS).write_text("{}")
    assert main(["-q", "export", "out", "--format", "trec"]) == 0
    assert "not finished" not in capsys.readouterr().err
