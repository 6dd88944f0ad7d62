"""The real vLLM engine end to end, on CPU through vllm-cpu (CI installs it; marked ``vllm``).

* The demo job with ``engine: vllm, device: cpu`` (``jobs/demo-vllm-cpu.yaml``) completes on
  the streaming engine, through the Ray actor, and agrees with the transformers engine's demo:
  statuses on at least 99% of pairs, scores within 1e-3.
* The forced pass, exercised with a budget of 2 tokens on a slice of the demo pairs, agrees
  with the transformers engine the same way.
* ``model.request_mode: single`` (the reference's one request) does the same on the demo and
  at a budget of 2, and its reasoning texts (vLLM's detokenizer) are the stepped mode's.
* A run SIGKILLed mid-score (budget 2, 50-pair shards) resumes to the same rows: shards
  committed before the kill are kept byte for byte, no pair twice, every pair once, statuses
  and scores as the transformers engine's.

Skipped where vllm is not installed (or is a GPU build without a visible GPU).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLI, DEMO, ROOT, run_cli

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.results import shard_table


def _vllm_cpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


pytestmark = [
    pytest.mark.vllm,
    pytest.mark.ray,
    pytest.mark.skipif(not _vllm_cpu(), reason="needs the vllm-cpu build of vllm"),
]

VLLM_DEMO = ROOT / "jobs" / "demo-vllm-cpu.yaml"
SLICE = 400  # pairs of the demo input for the forced-pass and kill/resume runs


def rows(out: Path) -> dict[tuple[str, str], tuple[str, float]]:
    """(query_id, doc_id) -> (status, score) over committed shards; fails on duplicates."""
    store = Store(str(out))
    shards = sorted(commit.committed_shards(store))
    table = pa.concat_tables(shard_table(store, s, "scores") for s in shards)
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "status", "score")]
    found = {(q, d): (st, sc) for q, d, st, sc in zip(*cols, strict=True)}
    assert len(found) == table.num_rows, "a pair was committed twice"
    return found


def agreement(ours: Path, theirs: Path) -> tuple[float, float]:
    """(fraction of pairs with equal status, largest score difference among them)."""
    a, b = rows(ours), rows(theirs)
    assert set(a) == set(b)
    same = [k for k in a if a[k][0] == b[k][0]]
    return len(same) / len(a), max(abs(a[k][1] - b[k][1]) for k in same)


@pytest.fixture(scope="module")
def vllm_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vllm-demo") / "out"
    start = time.perf_counter()
    run_cli("run", str(VLLM_DEMO), "--output", str(out), timeout=1800)
    print(f"vllm-cpu demo: {time.perf_counter() - start:.0f} s")
    return out


@pytest.fixture(scope="module")
def demo_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slice") / "pairs.parquet"
    pq.write_table(pq.read_table(ROOT / "jobs/data/demo-pairs.parquet").slice(0, SLICE), path)
    return path


def reasoning(out: Path) -> dict[tuple[str, str], str]:
    """(query_id, doc_id) -> the pair's reasoning text, over committed shards."""
    store = Store(str(out))
    shards = sorted(commit.committed_shards(store))
    table = pa.concat_tables(shard_table(store, s, "traces") for s in shards)
    cols = [table.column(c).to_pylist() for c in ("query_id", "doc_id", "reasoning")]
    return {(q, d): r for q, d, r in zip(*cols, strict=True)}


SINGLE = "--set=model.request_mode=single"  # the reference's one request per pass 1


@pytest.fixture(scope="module")
def vllm_demo_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vllm-demo-single") / "out"
    run_cli("run", str(VLLM_DEMO), "--output", str(out), SINGLE, timeout=1800)
    return out


def test_single_request_demo_matches_the_transformers_engine(
    vllm_demo_single: Path, vllm_demo: Path, demo_reference: Path
) -> None:
    """``request_mode: single`` agrees with the transformers engine as the stepped mode does,
    and its reasoning (vLLM's own detokenized text) is the stepped mode's (decoded here,
    incrementally), special tokens kept."""
    equal, diff = agreement(vllm_demo_single, demo_reference)
    print(f"single vs transformers demo: statuses equal {equal:.4f}, max score diff {diff:.2e}")
    assert equal >= 0.99 and diff <= 1e-3
    single, stepped = reasoning(vllm_demo_single), reasoning(vllm_demo)
    assert set(single) == set(stepped)
    same = sum(single[k] == stepped[k] for k in single) / len(single)
    print(f"single vs stepped demo: reasoning equal {same:.4f}")
    assert same >= 0.99


def test_vllm_demo_matches_the_transformers_engine(vllm_demo: Path, demo_reference: Path):
    assert (vllm_demo / layout.SUCCESS).exists()
    equal, diff = agreement(vllm_demo, demo_reference)
    print(f"vllm-cpu vs transformers demo: statuses equal {equal:.4f}, max score diff {diff:.2e}")
    assert equal >= 0.99 and diff <= 1e-3
    statuses = {status for status, _ in rows(vllm_demo).values()}
    assert "complete" in statuses


@pytest.fixture(scope="module")
def slice_reference(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Path:
    """The transformers engine on the slice at a budget of 2 (every pair forced)."""
    out = tmp_path_factory.mktemp("slice-ref") / "out"
    run_cli("run", str(DEMO), "--output", str(out), *budget2(demo_slice))
    return out


def budget2(demo_slice: Path) -> list[str]:
    return [f"--set=input.path={demo_slice}", "--set=reasoning.max_tokens=2"]


@pytest.mark.parametrize("mode", ["stepped", "single"])
def test_forced_pass_with_a_two_token_budget(
    tmp_path: Path, demo_slice: Path, slice_reference: Path, mode: str
) -> None:
    out = tmp_path / "v"
    mode_arg = f"--set=model.request_mode={mode}"
    run_cli(
        "run", str(VLLM_DEMO), "--output", str(out), *budget2(demo_slice), mode_arg, timeout=1200
    )
    equal, diff = agreement(out, slice_reference)
    print(f"budget 2: statuses equal {equal:.4f}, max score diff {diff:.2e}")
    assert equal >= 0.99 and diff <= 1e-3
    assert {status for status, _ in rows(out).values()} == {"forced"}


def test_killed_vllm_run_resumes_to_the_same_rows(
    tmp_path: Path, demo_slice: Path, slice_reference: Path
) -> None:
    out = tmp_path / "out"
    store = Store(str(out))
    args = [
        "run",
        str(VLLM_DEMO),
        "--output",
        str(out),
        *budget2(demo_slice),
        "--set=output.shard_size=50",
    ]
    proc = subprocess.Popen(
        [*CLI, *args],
        cwd=ROOT,
        env={**os.environ, "RAY_DISABLE_USAGE_STATS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 1200
        while time.time() < deadline and proc.poll() is None:
            if store.exists(layout.MANIFEST) and commit.committed_shards(store):
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {s: (out / layout.marker_path(s)).read_bytes() for s in commit.committed_shards(store)}
    assert before and not store.exists(layout.SUCCESS), "the kill landed after the run ended"
    run_cli(*args, timeout=1200)
    for shard, marker in before.items():  # committed shards are kept, byte for byte
        assert (out / layout.marker_path(shard)).read_bytes() == marker
    resumed = rows(out)  # fails on a pair committed twice
    assert len(resumed) == store.read_json(layout.SUCCESS)["scored"] > 0
    equal, diff = agreement(out, slice_reference)  # every pair, as the reference has them
    print(
        f"killed after {len(before)} shard(s), resumed: statuses equal {equal:.4f}, "
        f"max score diff {diff:.2e}"
    )
    assert equal >= 0.99 and diff <= 1e-3
