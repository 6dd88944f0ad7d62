"""End to end on local Ray with the toy model: layout, accounting, quality, resume, kill -9.

The demo job runs once uninterrupted (module fixture); other tests compare against it.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.results import shard_table
from rank1_batch.toy.data import ndcg_at_k

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "demo.yaml"
QRELS = ROOT / "jobs" / "data" / "demo.qrels"
CLI = [sys.executable, "-m", "rank1_batch.cli"]
ENV = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*CLI, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def committed_scores(out: Path) -> pa.Table:
    """Scores as a reader sees them: only the files that commit markers name."""
    shards = sorted(commit.committed_shards(Store(str(out))))
    return pa.concat_tables(shard_table(Store(str(out)), s, "scores") for s in shards)


def score_map(table: pa.Table) -> dict[tuple[str, str], float]:
    return {
        (q, d): s
        for q, d, s in zip(
            table.column("query_id").to_pylist(),
            table.column("doc_id").to_pylist(),
            table.column("score").to_pylist(),
            strict=True,
        )
    }


def read_qrels() -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in QRELS.read_text().splitlines():
        qid, _, did, rel = line.split()
        qrels.setdefault(qid, {})[did] = int(rel)
    return qrels


@pytest.fixture(scope="module")
def demo_out(demo_reference) -> Path:
    """The uninterrupted demo run (shared with the S3 tests through conftest)."""
    return demo_reference


def test_demo_writes_the_layout(demo_out):
    manifest = json.loads((demo_out / layout.MANIFEST).read_text())
    shards = [s["id"] for s in manifest["shards"]]
    assert len(shards) >= 4
    for name in ("job.json", "_SUCCESS.json", "pairs/_manifest.json"):
        assert (demo_out / name).is_file(), name
    for s in shards:
        for rel in (
            layout.pairs_path(s),
            layout.marker_path(s),
        ):
            assert (demo_out / rel).is_file(), rel
    scores = shard_table(Store(str(demo_out)), shards[0], "scores")
    assert scores.schema.names == [
        "query_id",
        "doc_id",
        "score",
        "logit",
        "status",
        "error",
        "prompt_tokens",
        "reasoning_tokens",
        "truncated",
        "rank",
        "model",
        "model_revision",
        "prompt_id",
        "score_direct",
        "score_reasoned",
        "decided_by",
        "engine",
    ]
    assert set(scores.column("engine").to_pylist()) == {"transformers"}
    traces = shard_table(Store(str(demo_out)), shards[0], "traces")
    assert traces.column_names == ["query_id", "doc_id", "reasoning", "finish_reason"]
    assert "The query is about" in traces.column("reasoning")[0].as_py()


def test_every_input_pair_is_accounted_for_once(demo_out):
    scores = committed_scores(demo_out)
    keys = list(
        zip(scores.column("query_id").to_pylist(), scores.column("doc_id").to_pylist(), strict=True)
    )
    assert len(keys) == len(set(keys)), "duplicate (query_id, doc_id) in scores"
    source = pq.read_table(ROOT / "jobs" / "data" / "demo-pairs.parquet")
    src_keys = set(
        zip(source.column("query_id").to_pylist(), source.column("doc_id").to_pylist(), strict=True)
    )
    success = json.loads((demo_out / layout.SUCCESS).read_text())
    assert set(keys) == src_keys
    assert success["input_rows"] == source.num_rows
    assert success["scored"] + success["rejected"] + success["duplicates"] == source.num_rows
    assert sum(success["statuses"].values()) == success["scored"]
    assert success["statuses"]["complete"] > 0.9 * success["scored"]


def test_ranks_follow_scores(demo_out):
    scores = committed_scores(demo_out).to_pylist()
    by_query: dict[str, list[dict]] = {}
    for row in scores:
        by_query.setdefault(row["query_id"], []).append(row)
    for rows in by_query.values():
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(rows))


def test_reranking_lifts_ndcg_by_at_least_0_3(demo_out):
    qrels = read_qrels()
    pairs = pa.concat_tables(
        pq.read_table(p) for p in sorted((demo_out / "pairs").glob("*.parquet"))
    )
    first_stage: dict[str, list[tuple[int, str]]] = {}
    for q, d, r in zip(
        pairs.column("query_id").to_pylist(),
        pairs.column("doc_id").to_pylist(),
        pairs.column("input_rank").to_pylist(),
        strict=True,
    ):
        first_stage.setdefault(q, []).append((r, d))
    reranked: dict[str, list[tuple[int, str]]] = {}
    for row in committed_scores(demo_out).to_pylist():
        reranked.setdefault(row["query_id"], []).append((row["rank"], row["doc_id"]))

    def mean_ndcg(runs):
        return ndcg_at_k({q: [d for _, d in sorted(docs)] for q, docs in runs.items()}, qrels, 10)

    before, after = mean_ndcg(first_stage), mean_ndcg(reranked)
    print(f"nDCG@10 input order {before:.3f} -> reranked {after:.3f}")
    assert after - before >= 0.3


def test_second_run_writes_nothing_and_exits_0(demo_out):
    before = {p: p.stat().st_mtime_ns for p in demo_out.rglob("*")}
    proc = cli("run", str(DEMO), "--output", str(demo_out))
    assert "already complete" in proc.stderr
    after = {p: p.stat().st_mtime_ns for p in demo_out.rglob("*")}
    assert before == after


def test_changed_result_setting_is_refused_naming_it(demo_out):
    proc = cli(
        "run", str(DEMO), "--output", str(demo_out), "--set", "reasoning.max_tokens=7", check=False
    )
    assert proc.returncode == 2
    assert "reasoning.max_tokens: 64 -> 7" in proc.stderr


def test_status_of_finished_job(demo_out):
    out = cli("status", str(demo_out)).stdout
    assert "state    complete" in out
    data = json.loads(cli("status", str(demo_out), "--json").stdout)
    assert data["shards_committed"] == data["shards_total"]
    assert data["pairs_scored"] == data["pairs_total"]


def test_sigkill_mid_score_then_resume_gives_identical_output(demo_out, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*CLI, "run", str(DEMO), "--output", str(out)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    total = len(json.loads((demo_out / layout.MANIFEST).read_text())["shards"])
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            done = (
                len(commit.committed_shards(Store(str(out)))) if (out / "_commits").exists() else 0
            )
            if done >= 1:
                break
            assert proc.poll() is None, "run ended before it could be killed"
            time.sleep(0.05)
        status = json.loads(cli("status", str(out), "--json").stdout)
        assert status["state"] == "scoring"
        assert 1 <= status["shards_committed"] < total
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and every worker
        proc.wait()
    assert not (out / layout.SUCCESS).exists()
    cli("run", str(DEMO), "--output", str(out))
    resumed = committed_scores(out)
    reference = committed_scores(demo_out)
    assert resumed.num_rows == reference.num_rows
    assert score_map(resumed) == score_map(reference)
    keys = list(
        zip(
            resumed.column("query_id").to_pylist(),
            resumed.column("doc_id").to_pylist(),
            strict=True,
        )
    )
    assert len(keys) == len(set(keys))


def test_messy_input_all_statuses_and_every_row_accounted(tmp_path):
    """Int ids, nulls, blank text, duplicates, an over-long passage and an over-long query,
    with a tiny reasoning budget so pass 1 never completes; two workers in parallel."""
    from rank1_batch.toy.data import make_ir_collection

    coll = make_ir_collection(7, 6, 5)
    rows = [
        {"qid": i // 5, "q": c.query, "did": 100 + i, "text": c.passage}
        for i, c in enumerate(coll.candidates)
    ]
    rows += [
        {"qid": 0, "q": rows[0]["q"], "did": 100, "text": rows[0]["text"]},  # duplicate
        {"qid": 0, "q": rows[0]["q"], "did": 900, "text": "   "},  # blank passage
        {"qid": None, "q": "x", "did": 901, "text": "y"},  # null query id
        {"qid": 1, "q": rows[5]["q"], "did": None, "text": "z"},  # null doc id
        {"qid": 2, "q": rows[10]["q"], "did": 902, "text": "ocean " * 400},  # truncated
        {"qid": 9, "q": "galaxy " * 300, "did": 903, "text": "comet star"},  # cannot fit
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{path: {tmp_path / 'in.parquet'}, columns: {{query_id: qid, query: q, "
        "doc_id: did, passage: text}}\n"
        f"output: {{path: {tmp_path / 'out'}, shard_size: 8}}\n"
        "model: {name: toy, engine: transformers, max_model_len: 256}\n"
        "reasoning: {max_tokens: 4, min_reserve: 16}\n"
        "compute: {workers: 2, batch_size: 8}\n"
    )
    cli("run", str(job))
    out = tmp_path / "out"
    success = json.loads((out / layout.SUCCESS).read_text())
    assert success["input_rows"] == len(rows)
    assert success["duplicates"] == 1 and success["rejected"] == 3
    assert success["scored"] + success["rejected"] + success["duplicates"] == len(rows)
    assert success["statuses"]["forced"] == success["scored"] - 1
    assert success["statuses"]["error"] == 1 and success["truncated"] == 1
    scores = {(r["query_id"], r["doc_id"]): r for r in committed_scores(out).to_pylist()}
    assert scores[("9", "903")]["error"] == "prompt_too_long"
    assert scores[("9", "903")]["rank"] is None
    assert scores[("2", "902")]["truncated"] and scores[("2", "902")]["prompt_tokens"] <= 240
    rejected = pa.concat_tables(pq.read_table(p) for p in (out / "rejected").glob("*.parquet"))
    assert sorted(rejected.column("reason").to_pylist()) == [
        "empty_passage",
        "null_doc_id",
        "null_query_id",
    ]
    assert ("0", "100") in scores and scores[("0", "100")]["status"] == "forced"
