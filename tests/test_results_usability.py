"""Eval and export as a newcomer meets them: ties as trec_eval breaks them, unfinished jobs,
the export formats' columns and values, and one-line errors.

Folders are written by hand (``_write_shard`` from test_exports_eval) so every case is exact.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_exports_eval import JOB, SHARD0, SHARD1, _write_shard

from rank1_batch.cli import main
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.outputs import evaluate, exports, labels, results

# Twin passages that tie exactly. Our order is score desc then doc_id ascending; trec_eval
# breaks ties by doc_id descending. The relevant documents sit where the two rules disagree.
TIES = [
    ("q1", "a", 0.7, "complete", 5),
    ("q1", "b", 0.7, "complete", 4),
    ("q1", "c", 0.7, "complete", 3),
    ("q1", "d", 0.7, "complete", 2),
    ("q1", "e", 0.2, "complete", 1),
    ("q2", "m", 0.5, "complete", 1),
    ("q2", "n", 0.5, "complete", 2),
    ("q2", "o", 0.9, "complete", 3),
    ("q2", "p", 0.0, "complete", 4),
    ("q2", "q", 0.0, "complete", 5),
]
TIES_QRELS = "q1 0 a 1\nq1 0 b 1\nq2 0 m 1\nq2 0 q 1\n"


def _folder(tmp_path, *shards: list[tuple], complete: bool = True) -> Store:
    store = Store(str(tmp_path / "out"))
    for i, rows in enumerate(shards):
        _write_shard(store, layout.shard_name(i, len(shards)), rows)
    store.write_json(layout.JOB_FILE, JOB)
    if complete:
        store.write_json(layout.SUCCESS, {"scored": sum(len(s) for s in shards)})
    return store


def test_eval_equals_trec_eval_on_the_exported_runs_with_ties(tmp_path):
    """Eval and pytrec_eval (trec_eval's rules) on run.trec / run.json agree on ties."""
    import ir_measures

    store = _folder(tmp_path, TIES)
    qrels_file = tmp_path / "qrels"
    qrels_file.write_text(TIES_QRELS)
    names = ["nDCG@10", "RR@10", "P@2", "AP"]
    report = evaluate.evaluate_output(store, str(qrels_file), names)
    ours = report["runs"]["reranked"]["aggregate"]
    exports.export(store, "trec")
    exports.export(store, "json-run")
    qrels = list(ir_measures.read_trec_qrels(str(qrels_file)))
    measures = [ir_measures.parse_measure(m) for m in names]
    trec_run = list(ir_measures.read_trec_run(str(tmp_path / "out/exports/run.trec")))
    json_run = json.loads((tmp_path / "out/exports/run.json").read_text())
    for run in (trec_run, json_run):
        agg = ir_measures.pytrec_eval.calc_aggregate(measures, qrels, run)
        assert {str(m): pytest.approx(float(agg[m])) for m in measures} == ours
    # and the order is ours (doc_id ascending among ties), not trec_eval's own tie rule
    assert ours["RR@10"] == pytest.approx((1 + 1 / 2) / 2)  # q1: a first; q2: o, m
    assert ours["P@2"] == pytest.approx((1 + 1 / 2) / 2)  # q1: a, b; q2: o, m


def test_run_scores_stay_within_a_few_ulps_and_keep_the_rank_column(tmp_path):
    """The exported scores differ from the committed ones only where they tie."""
    store = _folder(tmp_path, TIES)
    exports.export(store, "trec")
    lines = [x.split() for x in (tmp_path / "out/exports/run.trec").read_text().splitlines()]
    q1 = [(d, int(r), float(s)) for q, _, d, r, s, _ in lines if q == "q1"]
    assert [d for d, _, _ in q1] == ["a", "b", "c", "d", "e"]
    assert [r for _, r, _ in q1] == [1, 2, 3, 4, 5]
    scores = [s for _, _, s in q1]
    assert scores[0] == 0.7 and scores[4] == 0.2
    assert all(np.float32(x) > np.float32(y) for x, y in itertools.pairwise(scores))
    assert all(abs(s - 0.7) < 1e-6 for s in scores[:4])


def test_scores_equal_in_float32_are_kept_apart():
    """Saturated scores distinct in float64 but equal in float32 (trec_eval's C float)
    still come out in our order."""
    import ir_measures
    import pyarrow as pa

    scores = [0.999999993, 0.999999992, 0.999999991, 0.5]
    table = pa.table({"query_id": ["q"] * 4, "doc_id": ["w", "x", "y", "z"], "score": scores})
    run = exports.json_run(table)
    assert list(run["q"]) == ["w", "x", "y", "z"]
    qrels = {"q": {"w": 1}}  # trec_eval's own tie rule (doc_id descending) would put it 3rd
    assert ir_measures.pytrec_eval.calc_aggregate([ir_measures.RR], qrels, run)[
        ir_measures.RR
    ] == pytest.approx(1.0)


def test_eval_of_an_unfinished_job_says_so_and_scores_only_scored_queries(tmp_path, capsys):
    """A running job's eval covers the scored queries only, and says it is incomplete."""
    store = _folder(tmp_path, SHARD0, SHARD1, complete=False)
    store.write_json(
        layout.MANIFEST, {"shards": [{"id": layout.shard_name(i, 5)} for i in range(5)]}
    )
    qrels = tmp_path / "qrels"
    # q1 and q2 are scored; q3..q6 sit in shards not committed yet
    qrels.write_text("q1 0 a 1\nq2 0 x 1\nq3 0 k 1\nq4 0 k 1\nq5 0 k 1\nq6 0 k 1\n")
    assert main(["-q", "eval", store.uri, "--qrels", str(qrels)]) == 0
    captured = capsys.readouterr()
    assert "not finished (2 of 5 shards committed)" in captured.err
    assert "2 of the 6 qrels queries are scored so far" in captured.out
    report = json.loads((tmp_path / "out/exports/metrics.json").read_text())
    assert report["runs"]["reranked"]["aggregate"]["RR@10"] == pytest.approx(1.0)
    assert report["incomplete"]["qrels_queries_scored"] == 2
    store.write_json(layout.SUCCESS, {})
    assert main(["-q", "eval", store.uri, "--qrels", str(qrels), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert "incomplete" not in done
    # finished, the same rule (trec_eval's default): the mean over the run's queries
    assert done["runs"]["reranked"]["aggregate"]["RR@10"] == pytest.approx(1.0)
    assert done["runs"]["reranked"]["queries"] == 2 and done["qrels_queries"] == 6


def test_push_to_hub_with_another_format_fails_before_writing(tmp_path, capsys):
    """--push-to-hub with a non-hf format is refused before any file is written."""
    store = _folder(tmp_path, SHARD0)
    assert main(["export", store.uri, "--format", "trec", "--push-to-hub", "me/x"]) == 2
    assert "--push-to-hub needs --format hf" in capsys.readouterr().err
    assert not (tmp_path / "out/exports").exists()


def test_hf_export_carries_the_text_and_first_stage_rank(tmp_path):
    """The hf export's scores config has query, passage, title and input_rank."""
    import datasets

    store = _folder(tmp_path, SHARD0, SHARD1)
    exports.export(store, "hf")
    folder = tmp_path / "out/exports/hf"
    ds = datasets.load_dataset(str(folder), "scores", split="train", cache_dir=str(tmp_path / "c"))
    for col in ("query", "passage", "title", "input_rank", "score", "logit", "rank"):
        assert col in ds.column_names
    row = next(r for r in ds if r["doc_id"] == "a")
    assert (row["query"], row["passage"], row["input_rank"]) == ("query q1", "text of a", 6)
    card = (folder / "README.md").read_text()
    assert "`scores` (default)" in card and "`traces`" in card and "`passage`" in card


def test_flagembedding_defaults_to_logits(tmp_path):
    """The FlagEmbedding export's scores are logits unless --value score."""
    store = _folder(tmp_path, SHARD0, SHARD1)
    assert main(["-q", "export", store.uri, "--format", "flagembedding"]) == 0
    path = tmp_path / "out/exports/flagembedding.jsonl"
    row = json.loads(path.read_text().splitlines()[0])
    assert row["pos_scores"] == [pytest.approx(math.log(0.9 / 0.1))]
    sidecar = json.loads(path.with_name(path.name + ".labels.json").read_text())
    assert sidecar["rules"]["value"] == "logit"
    assert main(["-q", "export", store.uri, "--format", "flagembedding", "--value", "score"]) == 0
    assert json.loads(path.read_text().splitlines()[0])["pos_scores"] == [0.9]
    # the other label formats keep P(true) by default
    exports.export(store, "tevatron")
    tev = json.loads((tmp_path / "out/exports/tevatron.jsonl").read_text().splitlines()[0])
    assert tev["positive_passages"][0]["score"] == 0.9
    assert labels.default_value("pylate") == "score"


def test_bad_qrels_and_rank_windows_are_named(tmp_path, capsys):
    """A binary qrels file and ``--neg-ranks abc`` fail in one line naming them."""
    store = _folder(tmp_path, SHARD0)
    binary = tmp_path / "qrels.parquet"
    pq.write_table(results.shard_table(store, "shard-00000", "scores"), binary)
    assert main(["-q", "eval", store.uri, "--qrels", str(binary)]) == 2
    err = capsys.readouterr().err
    assert f"qrels {binary}: not a UTF-8 text file" in err and "Traceback" not in err
    assert main(["-q", "export", store.uri, "--format", "tevatron", "--neg-ranks", "abc"]) == 2
    assert "--neg-ranks 'abc': expected START:END" in capsys.readouterr().err


def test_export_help_describes_format_and_st_kind(capsys):
    """``export --format`` and ``--st-kind`` have help text."""
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "training labels" in text and "margin-mse (score = pos - neg)" in text


def test_export_and_eval_summaries_spell_paths_as_given(tmp_path, monkeypatch, capsys):
    """The export summary does not mix relative and absolute paths."""
    _folder(tmp_path, SHARD0, SHARD1)
    monkeypatch.chdir(tmp_path)
    args = ["-q", "export", "out", "--format", "tevatron", "--out", "lab/t.jsonl"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == "lab/t.jsonl" and summary["sidecar"] == "lab/t.jsonl.labels.json"
    assert main(args) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "written: lab/t.jsonl" and "sidecar: lab/t.jsonl.labels.json" in text
    (tmp_path / "q").write_text("q1 0 a 1\n")
    assert main(["-q", "eval", "out", "--qrels", "q"]) == 0
    assert "written: out/exports/metrics.json" in capsys.readouterr().out
