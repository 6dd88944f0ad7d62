"""Folder exports published whole: a killed ``export --format hf`` never leaves a partial
dataset under the final name, and the next export removes what killed ones left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, ENV, ROOT, run_cli

from rank1_batch.io.store import Store
from rank1_batch.outputs.exports import export


def _parquet(folder: Path) -> list[Path]:
    """Data files in ``folder`` now (temp files not counted); none once it has been renamed
    away under the walk (the export publishing it, or setting the old one aside)."""
    try:
        return [p for p in folder.rglob("*.parquet") if not p.name.startswith(".")]
    except FileNotFoundError:
        return []


def kill_export(out: Path, after_files: int, timeout: float = 120) -> bool:
    """Start ``export --format hf`` and SIGKILL it once ``after_files`` new data files are
    written (in its partial folder, or in the final one: where the code before whole
    publishing wrote them); return whether the kill landed before it finished."""
    proc = subprocess.Popen(
        [*CLI, "-q", "export", str(out), "--format", "hf"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    exports = out / "exports"
    final = exports / "hf"
    before = {p: _mtime(p) for p in _parquet(final)}
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            partial = list(exports.glob(".hf.partial-*")) if exports.exists() else []
            if partial and len(_parquet(partial[0])) >= after_files:
                break
            fresh = [p for p in _parquet(final) if before.get(p) != _mtime(p)]
            if len(fresh) >= after_files:
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode == -signal.SIGKILL


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def complete_rows(folder: Path, cache: Path) -> dict[str, int]:
    """Rows of each config as ``datasets.load_dataset(folder, config)`` reads them."""
    datasets = pytest.importorskip("datasets")
    return {
        config: datasets.load_dataset(
            str(folder), config, split="train", cache_dir=str(cache)
        ).num_rows
        for config in ("scores", "traces")
    }


def test_killed_hf_exports_leave_no_partial_dataset(tmp_path, demo_reference):
    out = tmp_path / "out"
    shutil.copytree(demo_reference, out, ignore=shutil.ignore_patterns("exports"))
    final = out / "exports" / "hf"
    pairs = Store(str(out)).read_json("_SUCCESS.json")["scored"]
    full = {"scores": pairs, "traces": pairs}
    landed = 0
    # No export yet, then over a complete one: after every kill the final name holds no
    # folder or a complete export (the old one, or this one if it finished first).
    for after in (1, 4, 9, None, 2, 7):
        if after is None:
            run_cli("-q", "export", str(out), "--format", "hf")
            assert complete_rows(final, tmp_path / "cache") == full
            continue
        landed += kill_export(out, after)
        if final.exists():
            assert complete_rows(final, tmp_path / f"cache-{landed}-{after}") == full, after
    assert landed >= 3, "too few kills landed mid-export"
    run_cli("-q", "export", str(out), "--format", "hf")
    assert complete_rows(final, tmp_path / "cache-last") == full
    assert not [p for p in (out / "exports").iterdir() if p.name.startswith(".")]


def test_next_export_removes_leftovers_and_never_replaces_other_folders(tmp_path, demo_reference):
    out = tmp_path / "out"
    shutil.copytree(demo_reference, out, ignore=shutil.ignore_patterns("exports"))
    exports = out / "exports"
    (exports / ".hf.partial-dead" / "scores").mkdir(parents=True)
    (exports / ".hf.partial-dead" / "scores" / "shard-00000.parquet").write_bytes(b"x")
    (exports / ".run.trec.0123abcd").write_bytes(b"half a run")
    (exports / ".other.file.keep").write_bytes(b"not ours to remove")
    store = Store(str(out))
    export(store, "trec")
    assert sorted(p.name for p in exports.iterdir()) == [
        ".hf.partial-dead", ".other.file.keep", "run.trec"
    ]  # fmt: skip
    export(store, "hf")
    assert sorted(p.name for p in exports.iterdir()) == [".other.file.keep", "hf", "run.trec"]
    # A folder holding files an export does not write is refused, and left as it was.
    mine = tmp_path / "mine"
    (mine / "scores").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds files an export does not write"):
        export(store, "hf", str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "scores"]
    assert not list(tmp_path.glob(".mine.*"))
