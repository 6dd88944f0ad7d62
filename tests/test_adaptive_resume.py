"""Each reasoning.mode runs a demo subset end to end on local Ray and resumes after a SIGKILL
to exactly the uninterrupted run's rows (think on the whole demo: ``test_pipeline``)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEMO, ROOT, kill_after_commits, run_cli

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs import results

pytestmark = pytest.mark.ray

QUERIES = 10  # of the demo's 100 (30 candidates each): 300 pairs, 5 shards
MODES = {
    "think": [],
    "direct": ["--set=reasoning.mode=direct"],
    "cascade": [
        "--set=reasoning.mode=cascade",
        "--set=reasoning.cascade.top_k=3",
        "--set=reasoning.cascade.margin=0.2",
    ],
}


@pytest.fixture(scope="module")
def demo_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = pq.read_table(ROOT / "jobs" / "data" / "demo-pairs.parquet")
    path = tmp_path_factory.mktemp("subset") / "pairs.parquet"
    pq.write_table(table.slice(0, QUERIES * 30), path)
    return path


def rows(out: Path) -> dict[tuple[str, str], dict]:
    shards = sorted(commit.committed_shards(Store(str(out))))
    table = pa.concat_tables(results.shard_table(Store(str(out)), s, "scores") for s in shards)
    got = {(r["query_id"], r["doc_id"]): r for r in table.to_pylist()}
    assert len(got) == table.num_rows, "duplicate pairs"
    return got


@pytest.mark.parametrize(
    "mode", [pytest.param("think", marks=pytest.mark.slow), "direct", "cascade"]
)
def test_mode_runs_and_resumes_after_a_kill(tmp_path: Path, demo_subset: Path, mode: str) -> None:
    args = [str(DEMO), f"--set=input.path={demo_subset}", "--set=output.shard_size=60"]
    args += MODES[mode]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_cli("run", *args, "--output", str(ref))
    total = len(Store(str(ref)).read_json(layout.MANIFEST)["shards"])
    assert 1 <= kill_after_commits(["run", *args, "--output", str(out)], Store(str(out))) < total
    run_cli("run", *args, "--output", str(out))
    resumed, reference = rows(out), rows(ref)
    assert len(reference) == QUERIES * 30
    assert resumed == reference
    success = Store(str(out)).read_json(layout.SUCCESS)
    statuses = success["statuses"]
    if mode == "think":
        assert statuses["direct"] == 0 and success["reasoning_tokens"] > 0
    elif mode == "direct":
        assert statuses["direct"] == QUERIES * 30 and success["reasoning_tokens"] == 0
    else:
        decided = [r["decided_by"] for r in resumed.values()]
        assert statuses["direct"] == decided.count("direct") > 0
        assert 0 < decided.count("think") < QUERIES * 30
    # exports say which mode produced the scores
    run_cli("export", str(out), "--format", "trec")
    # The tag's stem is the model's name (the toy model here), its suffix the mode.
    tag = {"think": "toy", "direct": "toy-direct", "cascade": "toy-cascade-k3-m0.2"}[mode]
    lines = (out / "exports" / "run.trec").read_text().splitlines()
    assert len(lines) == QUERIES * 30 and {line.split()[-1] for line in lines} == {tag}
    run_cli("export", str(out), "--format", "flagembedding")
    sidecar = json.loads((out / "exports" / "flagembedding.jsonl.labels.json").read_text())
    want = {"cascade": "cascade(top_k=3,margin=0.2)"}.get(mode, mode)
    assert sidecar["reasoning_mode"] == want and "direct" in sidecar["label_statuses"]
