"""Which queries ``eval``'s means are over: trec_eval's default, or ``-c`` on request.

The issue's case: the first 10 demo queries reranked, evaluated with the full 100-query
demo qrels. By default ``eval`` must print what pytrec_eval (trec_eval's rules) prints on
the exported ``run.trec``: the mean over the run's queries. With ``--all-qrels-queries`` it
is trec_eval ``-c``: the library's per-query values summed over the run's queries, divided
by the 100 qrels queries (0 for each query the run lacks). Folders are written by hand
(test_exports_eval's ``_write_shard``): no Ray, no model.
"""

from __future__ import annotations

import json
import math

import pytest
from compare_outputs import unit
from test_exports_eval import JOB, _write_shard

from rank1_batch.cli import main
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.outputs import evaluate, exports
from rank1_batch.toy.data import demo_collection, write_qrels

pytrec_eval = pytest.importorskip("pytrec_eval")

# ir_measures names -> pytrec_eval's measure and result key
MEASURES = {
    "nDCG@10": ("ndcg_cut.10", "ndcg_cut_10"),
    "R@100": ("recall.100", "recall_100"),
    "P@5": ("P.5", "P_5"),
    "AP": ("map", "map"),
}
ALL_ERRORS = "q0007"  # every row of this query is an error: it is in no exported run
UNJUDGED = "qx001"  # a query of the output that has no qrels


def _rows(qids: list[str]) -> list[tuple]:
    """(qid, doc, score, status, input_rank): scores that know relevance, with noise."""
    coll = demo_collection()
    rows, ranks = [], {}  # type: list[tuple], dict[str, int]
    for cand in coll.candidates:
        if cand.query_id not in qids:
            continue
        ranks[cand.query_id] = rank = ranks.get(cand.query_id, 0) + 1
        rel = coll.qrels[cand.query_id][cand.doc_id]
        score = 0.05 + 0.3 * rel + 0.6 * unit("conv", cand.doc_id)
        status = "complete"
        if cand.query_id == ALL_ERRORS or (rank == 3 and cand.query_id == qids[0]):
            score, status = math.nan, "error"
        rows.append((cand.query_id, cand.doc_id, score, status, rank))
    return rows


@pytest.fixture()
def ten(tmp_path):
    """A finished output holding the first 10 demo queries (and one query without qrels),
    and the demo's 100-query qrels."""
    qids = sorted(demo_collection().queries)[:10]
    store = Store(str(tmp_path / "out"))
    _write_shard(store, "shard-00000", _rows(qids[:5]))
    _write_shard(store, "shard-00001", _rows(qids[5:]))
    extra = [(UNJUDGED, f"dx{i}", 0.1 * i, "complete", i) for i in range(1, 4)]
    _write_shard(store, "shard-00002", extra)
    store.write_json(layout.JOB_FILE, JOB)
    store.write_json(layout.SUCCESS, {"scored": 303})  # a finished job
    qrels = tmp_path / "demo.qrels"
    write_qrels(qrels, demo_collection().qrels)
    return store, qrels, qids


def _pytrec(qrels_file, run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-query values of pytrec_eval (trec_eval's code) on ``run``: metric -> qid -> value."""
    with open(qrels_file) as fh:
        qrels = pytrec_eval.parse_qrel(fh)
    got = pytrec_eval.RelevanceEvaluator(qrels, {m for m, _ in MEASURES.values()}).evaluate(run)
    return {name: {q: v[key] for q, v in got.items()} for name, (_, key) in MEASURES.items()}


def _trec_run(path) -> dict[str, dict[str, float]]:
    with open(path) as fh:
        return pytrec_eval.parse_run(fh)


def test_default_is_trec_evals_mean_over_the_runs_queries(ten):
    store, qrels, qids = ten
    report = evaluate.evaluate_output(store, str(qrels), list(MEASURES))
    exports.export(store, "trec")
    run = _trec_run(store.path("exports/run.trec"))
    assert len(run) == 10 and ALL_ERRORS not in run  # 9 demo queries and the unjudged one
    want = _pytrec(qrels, run)
    rr = report["runs"]["reranked"]
    for name, per_query in want.items():
        assert len(per_query) == 9  # what pytrec_eval averages over: the run's judged queries
        mean = sum(per_query.values()) / len(per_query)
        assert rr["aggregate"][name] == pytest.approx(mean, abs=1e-12), name
    assert 0.5 < rr["aggregate"]["nDCG@10"] < 1  # not the 10-of-100 dilution (<= 0.1)
    assert report["convention"] == evaluate.RUN_QUERIES and report["qrels_queries"] == 100
    assert (rr["queries"], rr["judged_queries"], rr["unjudged_queries"]) == (9, 9, 1)
    # the first stage holds the all-error query too: pytrec_eval on its input order
    fs_run = {q: {d: -float(r) for q2, d, _, _, r in _rows(qids) if q2 == q} for q in qids}
    fs = report["runs"]["first_stage"]
    for name, per_query in _pytrec(qrels, fs_run).items():
        assert fs["aggregate"][name] == pytest.approx(sum(per_query.values()) / 10, abs=1e-12)
    assert (fs["queries"], fs["unjudged_queries"]) == (10, 1)


def test_all_qrels_queries_is_trec_eval_minus_c(ten):
    store, qrels, _ = ten
    report = evaluate.evaluate_output(store, str(qrels), list(MEASURES), all_qrels_queries=True)
    exports.export(store, "trec")
    want = _pytrec(qrels, _trec_run(store.path("exports/run.trec")))
    rr = report["runs"]["reranked"]
    for name, per_query in want.items():
        # summed over the run's queries, divided by every qrels query (0 for the missing)
        assert rr["aggregate"][name] == pytest.approx(sum(per_query.values()) / 100, abs=1e-12)
    assert report["convention"] == evaluate.ALL_QRELS_QUERIES
    assert (rr["queries"], rr["judged_queries"]) == (100, 9)
    default = evaluate.evaluate_output(store, str(qrels), list(MEASURES))
    ndcg = default["runs"]["reranked"]["aggregate"]["nDCG@10"]
    assert rr["aggregate"]["nDCG@10"] == pytest.approx(ndcg * 9 / 100)


def test_eval_prints_and_stores_the_convention_and_counts(ten, capsys):
    store, qrels, _ = ten
    assert main(["-q", "eval", store.uri, "--qrels", str(qrels)]) == 0
    out = capsys.readouterr().out
    assert "queries averaged over: 9 (first stage 10) of the 100 qrels queries" in out
    assert "trec_eval's default" in out and "queries without qrels (not evaluated): 1" in out
    stored = store.read_json(evaluate.METRICS_FILE)
    assert stored["convention"] == "run_queries" and stored["qrels_queries"] == 100
    assert "trec_eval's default" in stored["averaged_over"]
    assert stored["runs"]["reranked"]["queries"] == 9
    assert main(["-q", "eval", store.uri, "--qrels", str(qrels), "--all-qrels-queries"]) == 0
    out = capsys.readouterr().out
    assert "queries averaged over: all 100 qrels queries (trec_eval -c)" in out
    assert "the 91 the reranked run lacks score 0" in out
    stored = store.read_json(evaluate.METRICS_FILE)
    assert stored["convention"] == "all_qrels_queries" and "-c" in stored["averaged_over"]
    assert stored["runs"]["reranked"]["queries"] == 100


def test_an_unfinished_job_follows_the_same_rule_and_warns(ten, capsys):
    """Unfinished (no _SUCCESS.json, shards to come): the same means as once finished."""
    store, qrels, _ = ten
    store.fs.rm(store.path(layout.SUCCESS))
    store.write_json(layout.MANIFEST, {"shards": [{"id": f"s{i}"} for i in range(20)]})
    for every in ([], ["--all-qrels-queries"]):
        assert main(["-q", "eval", store.uri, "--qrels", str(qrels), "--json", *every]) == 0
        captured = capsys.readouterr()
        running = json.loads(captured.out)
        assert "not finished (3 of 20 shards committed)" in captured.err
        assert "10 of the 100 qrels queries are scored so far" in captured.err
        store.write_json(layout.SUCCESS, {"scored": 1})
        assert main(["-q", "eval", store.uri, "--qrels", str(qrels), "--json", *every]) == 0
        captured = capsys.readouterr()
        done = json.loads(captured.out)
        assert "not finished" not in captured.err and "incomplete" not in done
        for run in ("first_stage", "reranked"):
            assert running["runs"][run]["aggregate"] == done["runs"][run]["aggregate"]
            assert running["runs"][run]["queries"] == done["runs"][run]["queries"]
        store.fs.rm(store.path(layout.SUCCESS))


def test_evaluate_runs_follows_the_convention():
    """The whole-run helper (the report's) leaves a qrels query the run lacks out, or
    scores it 0 with all_qrels_queries."""
    qrels = {"q1": {"a": 1}, "q2": {"x": 1}}
    runs = {"reranked": {"q1": {"a": 1.0, "b": 0.5}, "q3": {"z": 1.0}}}
    default = evaluate.evaluate_runs(qrels, runs, ["RR@10"])["runs"]["reranked"]
    assert default["aggregate"]["RR@10"] == pytest.approx(1.0)
    assert (default["queries"], default["unjudged_queries"]) == (1, 1)
    every = evaluate.evaluate_runs(qrels, runs, ["RR@10"], all_qrels_queries=True)
    assert every["runs"]["reranked"]["aggregate"]["RR@10"] == pytest.approx(0.5)
    assert every["runs"]["reranked"]["queries"] == 2
