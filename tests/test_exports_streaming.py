"""Exports, eval and labels read one committed shard at a time.

Each test compares the streamed result with the whole-table result (``read_results``, what
every export computed before), on an output whose shards do not come in query-id order, and
observes the read structure through the ``reads`` fixture (shard tables read and rows held at
once, from :meth:`results.Committed.read` to the end of their :func:`results.hand_over`; the
columns of every pairs-file read).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_exports_eval import JOB, _write_shard

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs import evaluate, exports, labels, results
from rank1_batch.outputs.results import read_results

STATUSES = ["complete"] * 6 + ["forced", "fallback", "error"]


@dataclass
class Reads:
    """What the readers of committed shards did: tables read, rows held (now and at peak),
    the pairs-file columns read."""

    tables: int = 0
    held: int = 0
    peak: int = 0
    pair_columns: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, rows: int) -> None:
        with self.lock:
            self.tables += 1
            self.held += rows
            self.peak = max(self.peak, self.held)

    def give(self, rows: int) -> None:
        with self.lock:
            self.held -= rows

    def reset(self) -> None:
        with self.lock:
            self.tables = self.held = self.peak = 0
            self.pair_columns = set()


@pytest.fixture()
def reads(monkeypatch) -> Reads:
    """Count through the readers' own seams: a table is held from the moment
    ``Committed.read`` returns it until its consumer asks for the next one."""
    seen = Reads()
    read, hand_over, read_parquet = results.Committed.read, results.hand_over, Store.read_parquet

    def counted_read(self, shard, columns, pair_columns=()):
        marker, table = read(self, shard, columns, pair_columns)
        seen.take(table.num_rows)
        return marker, table

    def counted_hand_over(future):
        try:
            yield from hand_over(future)
        finally:
            seen.give(future.result()[1].num_rows)

    def counted_read_parquet(self, rel, columns=None, **kw):
        if rel.startswith("pairs/"):
            with seen.lock:
                seen.pair_columns.update(columns or ["*"])
        return read_parquet(self, rel, columns=columns, **kw)

    monkeypatch.setattr(results.Committed, "read", counted_read)
    monkeypatch.setattr(results, "hand_over", counted_hand_over)
    monkeypatch.setattr(Store, "read_parquet", counted_read_parquet)
    return seen


def _rows(rng: random.Random, qids: list[str]) -> list[tuple]:
    rows = []
    for q in qids:
        n = rng.randint(3, 9)
        for i in range(n):
            status = rng.choice(STATUSES)
            score = math.nan if status == "error" else round(rng.choice([0.2, rng.random()]), 3)
            rows.append((q, f"{q}-d{i}", score, status, i + 1))
    return rows


@pytest.fixture()
def many(tmp_path) -> Path:
    """8 committed shards of 3 queries each, in an order that is not query-id order."""
    rng = random.Random(12)
    path = tmp_path / "out"
    store = Store(str(path))
    for s in range(8):
        qids = [f"q{(7 - s) * 3 + k:02d}" for k in (2, 0, 1)]
        _write_shard(store, layout.shard_name(s, 8), _rows(rng, qids))
    store.write_json(layout.JOB_FILE, JOB)
    return path


def _blocks(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(line.split()[0], []).append(line)
    return out


def test_trec_and_json_runs_equal_the_whole_table_runs(many, tmp_path, reads):
    store = Store(str(many))
    whole = read_results(store).table
    reads.reset()
    summary = exports.export(store, "trec", tag="t")
    got = (many / "exports" / "run.trec").read_text().splitlines()
    old = exports.trec_text(whole, "t").splitlines()
    assert sorted(got) == sorted(old) and len(got) == summary["rows"]
    assert _blocks(got) == _blocks(old)  # each query's lines in the same order
    assert list(_blocks(got)) == [f"q{(7 - s) * 3 + k:02d}" for s in range(8) for k in (0, 1, 2)]
    # structure: never more than 1 + PREFETCH shards held; runs never open a pairs file
    largest = max(m.rows for m in commit.read_markers(store))
    assert reads.tables == 8
    assert reads.peak <= (1 + results.PREFETCH) * largest < whole.num_rows
    assert reads.pair_columns == set() and reads.held == 0

    exports.export(store, "json-run", str(tmp_path / "run.json"))
    text = (tmp_path / "run.json").read_text()
    run = json.loads(text)
    assert run == exports.json_run(whole)
    assert all(list(run[q]) == sorted(run[q]) for q in run)  # as sort_keys wrote them
    # the same text as json.dumps of the whole run, members in shard order
    assert text == json.dumps(run, indent=2) + "\n"


def test_json_run_of_no_ranked_rows_is_an_empty_object(tmp_path):
    store = Store(str(tmp_path / "out"))
    _write_shard(store, "shard-00000", [("q1", "a", math.nan, "error", 1)])
    exports.export(store, "json-run")
    assert json.loads((tmp_path / "out/exports/run.json").read_text()) == {}


def test_eval_equals_whole_run_metrics_and_reads_no_text(many, tmp_path, reads):
    store = Store(str(many))
    whole = read_results(store).table
    rng = random.Random(3)
    qids = sorted(set(whole.column("query_id").to_pylist()))
    lines = [f"{q} 0 {q}-d{i} {rng.choice([0, 1, 2])}" for q in qids[::2] for i in range(6)]
    lines += ["qnone 0 x 1", f"{qids[1]} 0 {qids[1]}-d0 1", f"{qids[1]} 0 {qids[1]}-d0 0"]
    qrels_path = tmp_path / "qrels"
    qrels_path.write_text("\n".join(lines) + "\n")
    metrics = ["nDCG@10", "RR@10", "R@5", "P@3", "AP"]
    runs = {
        "first_stage": evaluate.first_stage_run(whole),
        "reranked": evaluate.reranked_run(whole),
    }
    all_qrels = evaluate.load_qrels(str(qrels_path))
    # the default (the run's queries) and -c (every qrels query), unfinished and finished
    for done, every in itertools.product((False, True), repeat=2):
        if done:
            store.write_json(layout.SUCCESS, {"scored": whole.num_rows})
        reads.reset()
        report = evaluate.evaluate_output(
            store, str(qrels_path), metrics, per_query=True, all_qrels_queries=every
        )
        assert reads.pair_columns == {"query_id", "doc_id", "input_rank"}
        assert reads.peak < whole.num_rows
        old = evaluate.evaluate_runs(
            all_qrels, runs, metrics, per_query=True, all_qrels_queries=every
        )
        for name in runs:
            new_run, old_run = report["runs"][name], old["runs"][name]
            assert new_run["queries"] == old_run["queries"] > 0
            assert new_run["aggregate"] == pytest.approx(old_run["aggregate"], rel=1e-12)
            assert new_run["per_query"].keys() == old_run["per_query"].keys()
            for q, values in old_run["per_query"].items():
                assert new_run["per_query"][q] == pytest.approx(values, rel=1e-12)
        assert ("incomplete" in report) is not done
        # qnone is in no shard: -c scores it 0 (as trec_eval -c does), the default leaves it out
        assert ("qnone" in report["runs"]["reranked"]["per_query"]) is every


def test_label_exports_equal_the_whole_table_selection(many, reads):
    store = Store(str(many))
    whole = read_results(store).table
    rules = labels.LabelRules(pos_threshold=0.6, neg_threshold=0.4, max_neg=3)
    old_labels, old_counts = labels.select(whole, rules)
    reads.reset()
    summary = exports.export(store, "tevatron", rules=rules)
    assert reads.peak < whole.num_rows
    got = [json.loads(line) for line in Path(summary["out"]).read_text().splitlines()]
    old = [json.loads(json.dumps(r)) for r in labels.tevatron_rows(old_labels)]
    assert sorted(got, key=lambda r: r["query_id"]) == old and old
    side = json.loads(Path(summary["sidecar"]).read_text())
    assert side["counts"] == json.loads(json.dumps(vars(old_counts)))

    s = exports.export(store, "sentence-transformers", rules=rules, st_kind="n-tuple-scores")
    import pyarrow.parquet as pq

    table = pq.read_table(s["out"])
    expected = labels.sentence_transformers_table(old_labels, "n-tuple-scores", rules.max_neg)
    assert sorted(table.to_pylist(), key=str) == sorted(expected.to_pylist(), key=str)

    s = exports.export(store, "pylate", rules=rules)
    folder = Path(s["out"])
    docs = pq.read_table(folder / "documents").column("document_id").to_pylist()
    old_docs = labels.pylate_tables(old_labels)["documents"].column("document_id").to_pylist()
    assert sorted(docs) == old_docs  # each document once


def test_a_query_split_across_shards_is_refused(tmp_path):
    store = Store(str(tmp_path / "out"))
    _write_shard(store, "shard-00000", [("q1", "a", 0.9, "complete", 1)])
    _write_shard(store, "shard-00001", [("q1", "b", 0.8, "complete", 2)])
    with pytest.raises(results.ResultsError, match="query 'q1' comes back in shard-00001"):
        exports.export(store, "trec")
    assert not (tmp_path / "out" / "exports" / "run.trec").exists()  # nothing published


def test_query_guard_keeps_sorted_hash_blocks_and_finds_a_repeat_among_many():
    guard = results.QueryGuard("out")
    for s in range(300):
        guard.check([f"q{s}-{k}" for k in range(7)], f"shard-{s}")
    # 2,100 hashes in a few merged blocks (a binary search each), not one array per shard
    assert sum(len(b) for b in guard.blocks) == 2100 and len(guard.blocks) <= 12
    with pytest.raises(results.ResultsError, match="query 'q17-3' comes back in shard-x"):
        guard.check(["new", "q17-3"], "shard-x")


def _reference_run_rows(table):
    """The run rows as computed before the vectorised sort: a Python sort by (query, -score,
    doc_id) and per-row float32 comparisons (the rule ``run_rows`` documents)."""
    import numpy as np

    rows = [
        (q, d, s)
        for q, d, s in zip(
            table.column("query_id").to_pylist(),
            table.column("doc_id").to_pylist(),
            table.column("score").to_pylist(),
            strict=True,
        )
        if s is not None and not math.isnan(s)
    ]
    rows.sort(key=lambda r: (r[0], -r[2], r[1]))
    out, prev_q, prev, rank = [], None, math.inf, 0
    for q, d, s in rows:
        if q != prev_q:
            prev_q, prev, rank = q, math.inf, 0
        rank += 1
        below = float(np.nextafter(np.float32(prev), np.float32(-np.inf)))
        value = s if np.float32(s) < np.float32(prev) else below
        prev = value
        out.append((q, d, rank, value))
    return out


def test_run_rows_equal_the_per_row_rule_with_ties_saturation_nan_and_unicode():
    import pyarrow as pa

    rng = random.Random(5)
    pool = [0.2, 0.5, 0.99999999, 0.999999995, 0.99999998, 1.0, 0.0, 1e-9, math.nan, None]
    qids = ["q1", "q10", "q2", "é", "Z", "q1 "]
    rows = [
        (q, f"d{rng.randint(0, 40)}{rng.choice(['', 'é', 'a'])}", rng.choice(pool))
        for q in (rng.choice(qids) for _ in range(3000))
    ]
    rows += [(rng.choice(qids), f"r{i}", rng.random()) for i in range(500)]
    seen, unique = set(), []
    for q, d, s in rows:
        if (q, d) not in seen:
            seen.add((q, d))
            unique.append((q, d, s))
    table = pa.table(
        {
            "query_id": [r[0] for r in unique],
            "doc_id": [r[1] for r in unique],
            "score": pa.array([r[2] for r in unique], pa.float64()),
        }
    )
    got = list(exports.run_rows(table))
    assert got == _reference_run_rows(table) and len(got) > 100
    assert list(exports.run_rows(table.slice(0, 0))) == []
