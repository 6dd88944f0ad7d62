"""Exports and evaluation on a hand-built output folder (no Ray, no model).

The folder holds two committed shards and one *uncommitted* scores file (an attempt killed
before its marker), which every reader must ignore.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.store import Store
from rank1_batch.outputs import evaluate, exports, labels
from rank1_batch.outputs.results import read_results
from rank1_batch.pipeline.score import SCORES_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
# The job.json of a hand-built output: enough for the readers (and its layout version).
JOB = {"fingerprint": "fp", "spec": {}, "layout_version": layout.LAYOUT_VERSION}

# (query_id, doc_id, score, status, input_rank); q1's first stage is the reverse of Rank1's.
SHARD0 = [
    ("q1", "a", 0.9, "complete", 6),
    ("q1", "b", 0.8, "forced", 5),
    ("q1", "c", 0.5, "fallback", 4),
    ("q1", "d", 0.1, "complete", 3),
    ("q1", "e", math.nan, "error", 2),
    ("q1", "f", 0.05, "complete", 1),
]
SHARD1 = [
    ("q2", "y", 0.2, "complete", 1),
    ("q2", "x", 0.95, "complete", 2),
    ("q2", "z", 0.2, "complete", 3),  # ties with y: doc_id breaks it (y before z)
]
# 0.2 lowered one float32 step: how a tie with 0.2 is exported in runs
TIED_02 = float(np.nextafter(np.float32(0.2), np.float32(0)))


def _write_shard(store: Store, shard: str, rows: list[tuple], *, marker: bool = True) -> None:
    """One shard as ``process_shard`` commits it (reasoning.mode think); :data:`JOB` as the
    folder's job.json unless it has one."""
    qids = [r[0] for r in rows]
    dids = [r[1] for r in rows]
    scores = [r[2] for r in rows]
    from rank1_batch.core.rows import ranks_within_query

    n = len(rows)
    pairs = pa.table(
        {
            "query_id": qids,
            "doc_id": dids,
            "query": [f"query {q}" for q in qids],
            "passage": [f"text of {d}" for d in dids],
            "title": [None] * n,
            "instruction": [None] * n,
            "input_order": list(range(n)),
            "input_rank": pa.array([r[4] for r in rows], pa.int32()),
        }
    )
    logit = [math.log(s / (1 - s)) if 0 < s < 1 else math.nan for s in scores]
    table = pa.table(
        {
            "query_id": qids,
            "doc_id": dids,
            "score": scores,
            "logit": logit,
            "status": [r[3] for r in rows],
            "error": ["boom" if r[3] == "error" else None for r in rows],
            "prompt_tokens": [10] * n,
            "reasoning_tokens": [5] * n,
            "truncated": [False] * n,
            "rank": ranks_within_query(qids, dids, scores),
            "model": ["toy"] * n,
            "model_revision": ["rev1"] * n,
            "prompt_id": ["rank1-abc"] * n,
            "score_direct": pa.nulls(n, pa.float64()),
            "score_reasoned": pa.nulls(n, pa.float64()),
            "decided_by": pa.nulls(n, pa.string()),
            "engine": ["transformers"] * n,
        },
        schema=SCORES_SCHEMA,
    )
    traces = pa.table(
        {"query_id": qids, "doc_id": dids, "reasoning": ["r"] * n, "finish_reason": ["stop"] * n}
    )
    store.create_json(layout.JOB_FILE, JOB)
    store.write_atomic(layout.pairs_path(shard), parquet_bytes(pairs))
    scores_data, traces_data = parquet_bytes(table), parquet_bytes(traces)
    attempt = layout.new_attempt_id()
    store.write_atomic(layout.scores_path(shard, attempt), scores_data)
    store.write_atomic(layout.traces_path(shard, attempt), traces_data)
    if marker:
        m = commit.Marker.of_attempt(
            shard, attempt, ShardStats(pairs=n), rows=n, scores=scores_data, traces=traces_data
        )
        store.create_json(layout.marker_path(shard), m.to_dict())


@pytest.fixture()
def out(tmp_path) -> Path:
    path = tmp_path / "out"
    store = Store(str(path))
    _write_shard(store, "shard-00000", SHARD0)
    _write_shard(store, "shard-00001", SHARD1)
    _write_shard(store, "shard-00002", [("q9", "zz", 0.99, "complete", 1)], marker=False)
    store.write_json(layout.JOB_FILE, JOB)
    return path


def test_results_read_only_committed_shards(out):
    res = read_results(Store(str(out)))
    assert res.shards == ("shard-00000", "shard-00001")
    assert "q9" not in res.table.column("query_id").to_pylist()
    assert res.table.column("doc_id").to_pylist() == [*"abcdfe", "x", "y", "z"]
    assert res.provenance()["model"] == "toy" and res.prompt_id == "rank1-abc"
    assert res.provenance()["reasoning_mode"] == "think"
    assert res.table.column("decided_by").null_count == res.table.num_rows
    assert set(res.table.column("engine").to_pylist()) == {"transformers"}


def test_trec_export_full_precision_ties_by_doc_id_and_round_trip(out):
    import ir_measures

    summary = exports.export(Store(str(out)), "trec", tag="mytag")
    path = out / "exports" / "run.trec"
    assert summary["out"] == str(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 a 1 0.9 mytag"
    assert "q1 Q0 e" not in path.read_text()  # error rows (NaN) are not ranked
    # y and z tie at 0.2: z (after y by doc_id) is exported one float32 step lower
    z = f"q2 Q0 z 3 {TIED_02!r} mytag"
    assert lines[-3:] == ["q2 Q0 x 1 0.95 mytag", "q2 Q0 y 2 0.2 mytag", z]
    back = {(r.query_id, r.doc_id): r.score for r in ir_measures.read_trec_run(str(path))}
    assert back[("q1", "f")] == 0.05 and len(back) == 8
    with pytest.raises(ValueError):
        exports.trec_text(read_results(Store(str(out))).table, tag="two words")


def test_json_run_round_trip(out, tmp_path):
    from run_reference import parse_json_run

    exports.export(Store(str(out)), "json-run", str(tmp_path / "r.json"))
    run = json.loads((tmp_path / "r.json").read_text())
    assert list(run["q1"]) == ["a", "b", "c", "d", "f"]
    assert run["q2"] == {"x": 0.95, "y": 0.2, "z": TIED_02}
    assert [d for q, d, _ in parse_json_run(run) if q == "q1"] == ["a", "b", "c", "d", "f"]


def test_label_selection_skips_fallback_and_error_and_honours_windows(out):
    table = read_results(Store(str(out))).table
    chosen, counts = labels.select(
        table, labels.LabelRules(pos_threshold=0.7, neg_threshold=0.5, max_pos=2, max_neg=5)
    )
    q1 = chosen[0]
    assert [d.doc_id for d in q1.positives] == ["a", "b"]
    assert [d.doc_id for d in q1.negatives] == ["d", "f"]  # c is fallback, e is error
    assert counts.excluded_status == {"fallback": 1, "error": 1}
    # first-stage window: f is input rank 1, d rank 3 -> only d in 2:3
    chosen, _ = labels.select(
        table, labels.LabelRules(neg_ranks="2:3", rank_by="input", pos_threshold=0.7)
    )
    assert [d.doc_id for d in chosen[0].negatives] == ["d"]
    # margin: negatives must be 0.8 below the best positive (0.95 for q2) -> none for q2
    chosen, counts = labels.select(table, labels.LabelRules(margin=0.8, pos_threshold=0.7))
    assert [q.query_id for q in chosen] == ["q1"] and counts.no_negative == 1
    assert labels.parse_window("10:100") == (10, 100) and labels.parse_window("5") == (1, 5)
    with pytest.raises(ValueError):
        labels.parse_window("5:2")


def test_label_exports_load_with_their_readers(out, tmp_path):
    import datasets

    cache = str(tmp_path / "hf-cache")  # datasets caches folder loads by name: keep it fresh
    store = Store(str(out))
    rules = labels.LabelRules(pos_threshold=0.7, max_neg=2)
    s = exports.export(store, "flagembedding", rules=rules)
    fe = datasets.load_dataset("json", data_files=s["out"], split="train", cache_dir=cache)
    assert fe[0]["pos"] == ["text of a"] and fe[0]["neg"] == ["text of d", "text of f"]
    assert fe[0]["neg_scores"] == [0.1, 0.05]
    side = json.loads(Path(s["sidecar"]).read_text())
    assert side["rules"]["pos_threshold"] == 0.7 and side["model"] == "toy"
    assert side["prompt_id"] == "rank1-abc" and side["counts"]["labelled_queries"] == 2

    s = exports.export(store, "tevatron", rules=rules)
    tev = [json.loads(line) for line in Path(s["out"]).read_text().splitlines()]
    assert tev[1]["positive_passages"][0] == {
        "docid": "x",
        "title": "",
        "text": "text of x",
        "score": 0.95,
    }

    for kind in labels.ST_KINDS:
        s = exports.export(store, "sentence-transformers", rules=rules, st_kind=kind)
        ds = datasets.load_dataset("parquet", data_files=s["out"], split="train", cache_dir=cache)
        assert ds.num_rows > 0, kind
    margin = datasets.load_dataset("parquet", data_files=s["out"], split="train", cache_dir=cache)
    assert margin.column_names == ["query", "positive", "negative", "score"]
    assert margin[0]["score"] == pytest.approx(0.9 - 0.1)
    disk = tmp_path / "st"
    exports.export(store, "sentence-transformers", str(disk), rules=rules, st_save="disk")
    assert datasets.load_from_disk(str(disk)).column_names == ["query", "positive", "negative"]

    s = exports.export(store, "pylate", rules=rules.__class__(pos_threshold=0.7, value="logit"))
    train = datasets.load_dataset(s["out"], "train", split="train", cache_dir=cache)
    assert train[0]["document_ids"] == ["a", "d", "f"]
    assert train[0]["scores"][0] == pytest.approx(math.log(9))
    docs = datasets.load_dataset(s["out"], "documents", split="train", cache_dir=cache)
    assert set(docs["document_id"]) >= {"a", "d", "f", "x"}

    s = exports.export(store, "hf")
    scores = datasets.load_dataset(s["out"], "scores", split="train", cache_dir=cache)
    traces = datasets.load_dataset(s["out"], "traces", split="train", cache_dir=cache)
    assert scores.num_rows == traces.num_rows == 9  # committed shards only
    assert "status_rates" in (out / "exports" / "hf" / "README.md").read_text()


def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"a": 1, "c": 2}, "q2": {"x": 1}}
    runs = {
        "first_stage": {"q1": {"c": -1.0, "b": -2.0, "a": -3.0}, "q2": {"y": -1.0, "x": -2.0}},
        "reranked": {"q1": {"a": -1.0, "b": -2.0, "c": -3.0}, "q2": {"x": -1.0, "y": -2.0}},
    }
    rep = evaluate.evaluate_runs(qrels, runs, ["nDCG@10", "RR@10", "R@1"], per_query=True)
    idcg1 = 2 + 1 / math.log2(3)
    fs_q1 = (2 + 1 / math.log2(4)) / idcg1  # c (2) at rank 1, a (1) at rank 3
    rr_q1 = (1 + 2 / math.log2(4)) / idcg1  # a at 1, c at 3
    fs_q2, rr_q2 = 1 / math.log2(3), 1.0
    fs, rr = rep["runs"]["first_stage"], rep["runs"]["reranked"]
    assert fs["aggregate"]["nDCG@10"] == pytest.approx((fs_q1 + fs_q2) / 2)
    assert rr["aggregate"]["nDCG@10"] == pytest.approx((rr_q1 + rr_q2) / 2)
    assert fs["aggregate"]["RR@10"] == pytest.approx((1 + 0.5) / 2)
    assert rr["aggregate"]["R@1"] == pytest.approx((0.5 + 1) / 2)
    assert rr["per_query"]["q2"]["nDCG@10"] == pytest.approx(1.0)


def test_qrels_formats():
    trec = evaluate.read_qrels("q1 0 a 1\nq1 0 b 0\n")
    beir = evaluate.read_qrels("query-id\tcorpus-id\tscore\nq1\ta\t1\nq1\tb\t0\n")
    assert trec == beir == {"q1": {"a": 1, "b": 0}}


def test_eval_cli_prints_both_runs_and_writes_metrics(out, tmp_path):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\tx\t1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "rank1_batch.cli", "-q", "eval", str(out), "--qrels", str(qrels)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    header, ndcg = proc.stdout.splitlines()[:2]
    assert "first_stage" in header and "reranked" in header
    # reranked: a and x first -> 1.0; first stage: a at 5 (of q1's 5 ranked), x at 2
    expected_fs = (1 / math.log2(7) + 1 / math.log2(3)) / 2
    assert ndcg.split()[:3] == ["nDCG@10", f"{expected_fs:.4f}", "1.0000"]
    metrics = json.loads((out / "exports" / "metrics.json").read_text())
    assert metrics["runs"]["reranked"]["aggregate"]["nDCG@10"] == pytest.approx(1.0)
    empty = tmp_path / "empty"  # a job that committed nothing yet
    Store(str(empty)).write_json(layout.JOB_FILE, JOB)
    bad = subprocess.run(
        [sys.executable, "-m", "rank1_batch.cli", "-q", "eval", str(empty), "--qrels", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "no committed shards" in bad.stderr


@pytest.mark.s3
def test_exports_and_eval_on_object_storage(s3, tmp_path):
    from rank1_batch.io.fs import StorageSpec

    store = Store(f"s3://{s3.bucket}/job", StorageSpec(endpoint_url=s3.endpoint))
    _write_shard(store, "shard-00000", SHARD0)
    _write_shard(store, "shard-00001", SHARD1)
    exports.export(store, "trec")
    exports.export(store, "flagembedding", rules=labels.LabelRules(pos_threshold=0.7))
    exports.export(store, "pylate")
    qrels = tmp_path / "qrels"
    qrels.write_text("q1 0 a 1\n")
    report = evaluate.evaluate_output(store, str(qrels), ["nDCG@10"])
    assert report["runs"]["reranked"]["aggregate"]["nDCG@10"] == pytest.approx(1.0)
    keys = set(s3.keys("job/exports/"))
    assert {
        "job/exports/run.trec",
        "job/exports/flagembedding.jsonl",
        "job/exports/flagembedding.jsonl.labels.json",
        "job/exports/pylate/train/train-00000.parquet",
        "job/exports/metrics.json",
    } <= keys
    assert store.read_bytes("exports/run.trec").startswith(b"q1 Q0 a 1 0.9 rank1\n")
