"""Verified outputs: a tampered output is named, refused by every reader, repaired, rescored.

The demo output (conftest's session run) is copied and tampered four ways, one shard each:
flipped bytes in a scores file, a deleted traces file, a scores file rewritten as valid
Parquet with one score changed, a truncated marker. ``verify`` names exactly those shards;
``report``/``export``/``eval`` refuse with one line (exit 2); a ``run`` of the finished job
refuses too; ``verify --repair`` and one ``run`` give rows identical to the untouched output.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEMO, ROOT, run_cli

from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.io.verify import RETIRED, check_files, verify
from rank1_batch.outputs import results
from rank1_batch.pipeline.finalize import finalize

QRELS = ROOT / "jobs" / "data" / "demo.qrels"
TAMPERED = ["shard-00000", "shard-00001", "shard-00002", "shard-00003"]


def _copy(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest, ignore=shutil.ignore_patterns("exports"))
    return dest


def _file(out: Path, kind: str, shard: str) -> Path:
    marker = json.loads((out / layout.marker_path(shard)).read_text())
    return out / marker[f"{kind}_file"]


def flip_bytes(out: Path, shard: str) -> None:
    path = _file(out, "scores", shard)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the first data page: same size, other bytes
    path.write_bytes(bytes(data))


def change_one_score(out: Path, shard: str) -> None:
    path = _file(out, "scores", shard)
    table = pq.read_table(path)
    scores = table.column("score").to_pylist()
    scores[0] = 1.0 - scores[0]
    i = table.schema.get_field_index("score")
    pq.write_table(table.set_column(i, "score", pa.array(scores, pa.float64())), path)


def truncate_marker(out: Path, shard: str) -> None:
    path = out / layout.marker_path(shard)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def tamper(out: Path) -> None:
    flip_bytes(out, TAMPERED[0])
    _file(out, "traces", TAMPERED[1]).unlink()
    change_one_score(out, TAMPERED[2])
    truncate_marker(out, TAMPERED[3])


def one_error_line(proc) -> str:  # type: ignore[no-untyped-def]
    """The command failed with exit 2 and exactly one line on stderr, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("rank1-batch: error: "), proc.stderr[-3000:]
    assert "verify" in lines[0] and "--repair" in lines[0]
    return lines[0]


def all_rows(out: Path, kind: str) -> pa.Table:
    store = Store(str(out))
    tables = [results.shard_table(store, s, kind) for s in sorted(commit.committed_shards(store))]
    table = pa.concat_tables(tables)
    return table.sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


def test_markers_are_checked_in_one_place(tmp_path):
    store = Store(str(tmp_path))
    shard, attempt = "shard-00007", "ab12"
    doc = commit.Marker(
        shard, 3, "a" * 64, "b" * 64, ShardStats(pairs=3), attempt=attempt,
        scores_file=layout.scores_path(shard, attempt),
        traces_file=layout.traces_path(shard, attempt), scores_bytes=5, traces_bytes=6,
    ).to_dict()  # fmt: skip
    assert commit.parse_marker(store, shard, json.dumps(doc).encode()).scores_bytes == 5
    cases = {
        "truncated": json.dumps(doc).encode()[:40],
        "missing key": json.dumps({k: v for k, v in doc.items() if k != "rows"}).encode(),
        "other path": json.dumps({**doc, "scores_file": "../x"}).encode(),
        "other shard": json.dumps({**doc, "shard": "shard-00008"}).encode(),
        "bad size": json.dumps({**doc, "traces_bytes": "many"}).encode(),
    }
    for case, data in cases.items():
        with pytest.raises(commit.CommitError) as err:
            commit.parse_marker(store, "shard-00007", data)
        text = str(err.value)
        assert "_commits/shard-00007.json is corrupt" in text, case
        assert f"rank1-batch verify {tmp_path} --repair" in text, case


def test_finalize_checks_existence_and_size_and_verify_checks_content(tmp_path, demo_reference):
    out = _copy(demo_reference, tmp_path / "out")
    store = Store(str(out))
    manifest = store.read_json(layout.MANIFEST)
    (out / layout.SUCCESS).unlink()
    flip_bytes(out, "shard-00004")  # same size: finalize cannot see it, verify does
    markers = commit.read_markers(store)
    assert all(m.scores_bytes and m.traces_bytes for m in markers)
    assert check_files(store, markers) == []
    assert verify(store).bad_shards == ["shard-00004"]
    path = _file(out, "scores", "shard-00005")
    path.write_bytes(path.read_bytes() + b"\0")  # one byte more
    _file(out, "traces", "shard-00002").unlink()
    with pytest.raises(commit.CommitError, match=r"shard-00002: traces/.*: missing") as err:
        finalize(store, manifest, 1.0)
    assert "and 1 more bad shard" in str(err.value)
    assert not (out / layout.SUCCESS).exists()
    problems = check_files(store, markers)
    assert {(p.shard, p.what.split(",")[0]) for p in problems} == {
        ("shard-00002", "missing"),
        ("shard-00005", f"{path.stat().st_size} bytes"),
    }


def test_status_names_a_corrupt_marker(tmp_path, demo_reference):
    out = _copy(demo_reference, tmp_path / "out")
    (out / layout.SUCCESS).unlink()  # unfinished: status reads the markers
    truncate_marker(out, "shard-00001")
    line = one_error_line(run_cli("-q", "status", str(out), check=False))
    assert "_commits/shard-00001.json is corrupt" in line


def test_tampered_output_is_named_refused_repaired_and_rescored(tmp_path, demo_reference):
    out = _copy(demo_reference, tmp_path / "out")
    tamper(out)
    success = (out / layout.SUCCESS).read_bytes()

    found = run_cli("-q", "verify", str(out), check=False)
    assert found.returncode == 1, found.stderr[-3000:]
    bad = [line.split()[1].rstrip(":") for line in found.stdout.splitlines()[:-1]]
    assert bad == TAMPERED, found.stdout
    assert "4 bad shard(s)" in found.stdout.splitlines()[-1]

    readers = {
        "report": ["report", str(out), "--out", str(tmp_path / "r.html")],
        "export trec": ["export", str(out), "--format", "trec"],
        "export hf": ["export", str(out), "--format", "hf"],
        "eval": ["eval", str(out), "--qrels", str(QRELS)],
    }
    for name, args in readers.items():
        line = one_error_line(run_cli("-q", *args, check=False))
        assert "shard-0000" in line, name

    # A run of the finished job re-checks what finalize checks before saying done.
    rerun = run_cli("-q", "run", str(DEMO), "--output", str(out), check=False)
    assert "_commits/shard-00003.json is corrupt" in one_error_line(rerun)
    assert "done" not in rerun.stdout
    assert (out / layout.SUCCESS).read_bytes() == success

    repaired = run_cli("-q", "verify", str(out), "--repair", check=False)
    assert repaired.returncode == 1 and "retired 4 marker(s)" in repaired.stdout
    assert not (out / layout.SUCCESS).exists()
    retired = sorted(p.name.split(".")[0] for p in (out / RETIRED).iterdir())
    assert retired == TAMPERED
    assert sorted(commit.committed_shards(Store(str(out)))) == ["shard-00004", "shard-00005"]
    assert run_cli("-q", "verify", str(out), check=False).returncode == 0

    run_cli("-q", "run", str(DEMO), "--output", str(out))
    assert run_cli("-q", "verify", str(out), check=False).returncode == 0
    for kind in ("scores", "traces"):
        assert all_rows(out, kind).equals(all_rows(demo_reference, kind)), kind
    done = json.loads((out / layout.SUCCESS).read_text())
    assert done["scored"] == json.loads((demo_reference / layout.SUCCESS).read_text())["scored"]
    # the tampered files are gone (no marker names them); the retired markers are kept
    names = {f"{k}/{os.path.basename(p)}" for k in ("scores", "traces") for p in glob.glob(
        str(out / k / "*.parquet"))}  # fmt: skip
    assert names == {m.file(k)[0] for m in commit.read_markers(Store(str(out)))
                     for k in ("scores", "traces")}  # fmt: skip
    assert len(list((out / RETIRED).iterdir())) == 4


def test_a_run_of_a_finished_job_with_a_missing_file_fails_naming_it(tmp_path, demo_reference):
    out = _copy(demo_reference, tmp_path / "out")
    _file(out, "traces", "shard-00001").unlink()
    rerun = run_cli("-q", "run", str(DEMO), "--output", str(out), check=False)
    line = one_error_line(rerun)
    assert "shard-00001: traces/shard-00001." in line and "missing" in line
    assert "done" not in rerun.stdout
