"""reasoning.mode (think | direct | cascade): the direct prompt, the cascade's pure rules, the
fingerprint, and the shared protocol on a batch engine (the toy transformers model, device
cpu) and a stream engine (the ``SleepyStreamEngine`` test double of ``test_stream``).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pyarrow as pa
import pytest
from test_stream import SleepyStreamEngine

from rank1_batch.core import modes, rank1
from rank1_batch.core.stats import ShardStats
from rank1_batch.io import layout
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.spec import JobError
from rank1_batch.outputs import results
from rank1_batch.pipeline.score import SCORES_SCHEMA, process_shard
from rank1_batch.pipeline.stream import ShardStreamer, score_shards

ROOT = Path(__file__).resolve().parents[1]
TOY_DIR = ROOT / "rank1_batch" / "toy" / "model_files"


def J(score: float, status: str = rank1.DIRECT, tokens: int = 0) -> rank1.Judgement:
    return rank1.Judgement(score=score, logit=0.0, status=status, reasoning_tokens=tokens)


# -- the direct prompt -------------------------------------------------------------------------
def test_direct_prompt_is_pinned() -> None:
    prompt = rank1.build_prompt("what is x", "x is y")
    assert rank1.direct_prompt(prompt) == (
        "Determine if the following passage is relevant to the query. "
        "Answer only with 'true' or 'false'.\nQuery: what is x\nPassage: x is y\n"
        "<think>\n\n</think>"
    )
    # the forced prompt with no reasoning: the same string the forced pass would build
    assert rank1.direct_prompt(prompt) == rank1.forced_prompt(prompt, "")


# -- cascade selection and combination (pure) -------------------------------------------------
def test_select_top_k_per_query_ties_by_position() -> None:
    qids = ["a", "a", "a", "b", "b", "b"]
    direct = [J(0.1), J(0.9), J(0.9), J(0.2), J(0.3), J(0.8)]
    assert modes.select(qids, direct, top_k=1, margin=0) == [1, 5]
    assert modes.select(qids, direct, top_k=2, margin=0) == [1, 2, 4, 5]
    assert modes.select(qids, direct, top_k=5, margin=0) == list(range(6))


def test_select_margin_and_union_skip_errors_and_fallbacks() -> None:
    qids = ["a", "a", "a", "a"]
    err = rank1.error_judgement(rank1.PROMPT_TOO_LONG)
    fb = J(0.5, rank1.FALLBACK)
    direct = [J(0.55), J(0.99), err, fb]
    assert modes.select(qids, direct, top_k=0, margin=0.1) == [0]
    assert modes.select(qids, direct, top_k=0, margin=0.04) == []
    assert modes.select(qids, direct, top_k=1, margin=0.1) == [0, 1]
    assert modes.select(qids, direct, top_k=9, margin=0.5) == [0, 1]
    with pytest.raises(ValueError, match="margin"):
        modes.select(qids, direct, top_k=1, margin=0.6)


def test_plan_by_mode() -> None:
    qids = ["a", "a"]
    direct = [J(0.2), J(0.7)]
    assert modes.reasoned_pairs("think", qids, None) == [0, 1]
    assert modes.reasoned_pairs("direct", qids, direct) == []
    assert modes.reasoned_pairs("cascade", qids, direct, top_k=1) == [1]
    with pytest.raises(ValueError, match="unknown reasoning mode"):
        modes.reasoned_pairs("ponder", qids, direct)


def test_combine_reasoned_verdict_decides_else_direct() -> None:
    d = J(0.9)
    r = J(0.2, rank1.COMPLETE, tokens=40)
    row = modes.combine(d, r)
    assert (row.score, row.status, row.decided_by) == (0.2, rank1.COMPLETE, "think")
    assert (row.score_direct, row.score_reasoned, row.reasoning_tokens) == (0.9, 0.2, 40)
    # reasoning that ends in a fallback does not override a direct verdict; its cost is kept
    row = modes.combine(d, J(0.5, rank1.FALLBACK, tokens=64))
    assert (row.score, row.status, row.decided_by) == (0.9, rank1.DIRECT, "direct")
    assert (row.score_reasoned, row.reasoning_tokens) == (None, 64)
    # unreasoned pair; think mode (no direct pass); error rows decided by nothing
    row = modes.combine(d, None)
    assert (row.score, row.decided_by, row.score_reasoned) == (0.9, "direct", None)
    row = modes.combine(None, r)
    assert (row.score_direct, row.score_reasoned, row.decided_by) == (None, 0.2, "think")
    err = modes.combine(rank1.error_judgement(rank1.PROMPT_TOO_LONG), None)
    assert err.status == rank1.ERROR and err.decided_by is None and err.score_direct is None
    with pytest.raises(ValueError):
        modes.combine(None, None)


def test_combined_ranking_lets_reasoning_demote_a_direct_top_pair() -> None:
    """The documented rule: one scale, so a reasoned-irrelevant top-k pair leaves the top."""
    qids = ["a"] * 3
    direct = [J(0.95), J(0.9), J(0.6)]
    chosen = modes.reasoned_pairs("cascade", qids, direct, top_k=1)
    assert chosen == [0]
    rows = modes.finish(3, direct, {0: J(0.1, rank1.COMPLETE, 30)})
    assert [r.score for r in rows] == [0.1, 0.9, 0.6]
    assert [r.decided_by for r in rows] == ["think", "direct", "direct"]


# -- spec and fingerprint ---------------------------------------------------------------------
def _spec(tmp: Path, **reasoning: object):  # type: ignore[no-untyped-def]
    return spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": str(tmp / "out")},
            "model": {"name": "sleepy"},
            "reasoning": reasoning,
        }
    )


def test_modes_enter_the_fingerprint_and_cascade_settings_only_in_cascade(tmp_path: Path) -> None:
    think = _spec(tmp_path).result_settings()["reasoning"]
    assert set(think) == {
        "max_tokens",
        "min_reserve",
        "prompt_template",
        "instruction",
        "require_stop",
        "mode",
    }
    assert think["mode"] == "think"
    assert _spec(tmp_path, cascade={"top_k": 3}).result_settings()["reasoning"] == think
    direct = _spec(tmp_path, mode="direct").result_settings()["reasoning"]
    assert direct == {**think, "mode": "direct"}
    c1 = _spec(tmp_path, mode="cascade", cascade={"top_k": 3}).result_settings()
    c2 = _spec(tmp_path, mode="cascade", cascade={"top_k": 3, "margin": 0.1}).result_settings()
    assert c1["reasoning"]["cascade"] == {"top_k": 3, "margin": 0.0}
    assert c1 != c2
    with pytest.raises(JobError, match=r"reasoning\.mode"):
        _spec(tmp_path, mode="ponder")
    with pytest.raises(JobError, match="nothing would be reasoned"):
        _spec(tmp_path, mode="cascade", cascade={"top_k": 0})


def test_reuse_keys_the_mode_and_is_refused_with_cascade(tmp_path: Path) -> None:
    from rank1_batch.pipeline import reuse

    think = reuse.key_settings(_spec(tmp_path))
    assert set(think["reasoning"]) == {*reuse.KEY_REASONING_FIELDS, "mode"}
    assert think["reasoning"]["mode"] == "think"
    assert reuse.key_settings(_spec(tmp_path, mode="direct"))["reasoning"] == {
        **think["reasoning"],
        "mode": "direct",
    }
    raw = {
        "input": {"path": "unused.parquet"},
        "output": {"path": str(tmp_path / "out")},
        "model": {"name": "sleepy"},
        "reuse": [str(tmp_path / "earlier")],
    }
    spec_from_mapping(raw, overrides=["reasoning.mode=direct"])
    with pytest.raises(JobError, match=r"reuse: not available with reasoning\.mode cascade"):
        spec_from_mapping(raw, overrides=["reasoning.mode=cascade"])
    cols = modes.columns_from_status(
        ["direct", "complete", "fallback", "error"], [0.9, 0.2, 0.5, 1]
    )
    assert cols == {
        "score_direct": [0.9, None, None, None],
        "score_reasoned": [None, 0.2, None, None],
        "decided_by": ["direct", "think", "think", None],
    }


# -- the shared protocol on a stream engine (sync adapter and streamed alike) -----------------
def _shards(store: Store, n: int, per_query: int, shard_rows: int) -> list[str]:
    shards = []
    for s in range(math.ceil(n / shard_rows)):
        rows = range(s * shard_rows, min(n, (s + 1) * shard_rows))
        table = pa.table(
            {
                "query_id": [f"q{i // per_query}" for i in rows],
                "doc_id": [f"d{i}" for i in rows],
                "query": [f"query {i // per_query}" for i in rows],
                "passage": [f"passage number {i}" for i in rows],
                "title": pa.nulls(len(rows), pa.string()),
                "instruction": pa.nulls(len(rows), pa.string()),
            }
        )
        shard = f"shard-{s:05d}"
        store.create_exclusive(layout.pairs_path(shard), parquet_bytes(table))
        shards.append(shard)
    return shards


@pytest.mark.parametrize("mode", ["think", "direct", "cascade"])
def test_stream_and_batch_paths_agree_per_mode(tmp_path: Path, mode: str) -> None:
    spec = _spec(tmp_path, mode=mode, cascade={"top_k": 2, "margin": 0.1})
    tables = []
    for path in ("streamed", "sync"):
        store = Store(str(tmp_path / path))
        shards = _shards(store, 40, 10, 20)
        engine = SleepyStreamEngine(max_in_flight=4)
        if path == "streamed":
            streamer = ShardStreamer(engine, store, spec)
            markers = asyncio.run(score_shards(streamer, shards, shards_in_flight=2))
            assert streamer.in_flight == 0 and streamer.open_shards == 0  # both passes accounted
        else:
            markers = [process_shard(s, engine, store, spec) for s in shards]
        table = pa.concat_tables(results.shard_table(store, s, "scores") for s in shards)
        assert table.schema == SCORES_SCHEMA
        assert set(table.column("engine").to_pylist()) == {engine.name}  # the engine's name
        tables.append((table, markers, engine))
    (a, ma, ea), (b, mb, _) = tables
    assert a.equals(b)
    assert [m.scores_sha256 for m in ma] == [m.scores_sha256 for m in mb]
    rows = a.to_pylist()
    stats = sum((m.stats for m in ma), ShardStats())
    reasoned = [r for r in rows if r["score_reasoned"] is not None]
    assert stats.reasoning_tokens == sum(r["reasoning_tokens"] for r in rows)
    if mode == "think":
        assert stats.direct == 0 and all(r["score_direct"] is None for r in rows)
        assert {r["decided_by"] for r in rows} == {"think"}
        assert ea.calls.count("generate") == 40
    elif mode == "direct":
        assert stats.direct == 40 and stats.reasoning_tokens == 0 and not reasoned
        assert ea.calls == ["answer"] * 40  # one restricted answer pass per pair, no pass 1
        assert all(r["score"] == r["score_direct"] for r in rows)
    else:
        # each query: its top 2 by direct score plus the unsure ones, and nothing else
        by_q: dict[str, list[dict]] = {}
        for r in rows:
            by_q.setdefault(r["query_id"], []).append(r)
        for members in by_q.values():
            top = sorted(members, key=lambda r: -r["score_direct"])[:2]
            want = {r["doc_id"] for r in top} | {
                r["doc_id"] for r in members if abs(r["score_direct"] - 0.5) < 0.1
            }
            assert {r["doc_id"] for r in members if r["reasoning_tokens"] > 0} == want
        assert ea.calls.count("generate") == sum(r["reasoning_tokens"] > 0 for r in rows)
        assert 8 <= ea.calls.count("generate") < 40
        for r in rows:
            assert r["score"] == (
                r["score_reasoned"] if r["decided_by"] == "think" else r["score_direct"]
            )
        assert stats.direct == sum(r["decided_by"] == "direct" for r in rows)


# -- the shared protocol on the batch engine: the toy model (device cpu) ----------------------
@pytest.mark.skipif(not (TOY_DIR / "config.json").is_file(), reason="toy model not built")
def test_toy_transformers_engine_in_each_mode(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from rank1_batch.engines import EngineOptions
    from rank1_batch.engines.transformers_engine import TransformersEngine
    from rank1_batch.toy.data import make_ir_collection

    coll = make_ir_collection(11, 2, 8)
    table = pa.table(
        {
            "query_id": [c.query_id for c in coll.candidates],
            "doc_id": [c.doc_id for c in coll.candidates],
            "query": [c.query for c in coll.candidates],
            "passage": [c.passage for c in coll.candidates],
            "title": pa.nulls(16, pa.string()),
            "instruction": pa.nulls(16, pa.string()),
        }
    )
    opts = EngineOptions(max_model_len=512, max_tokens=64, min_reserve=64, batch_size=16)
    engine = TransformersEngine(str(TOY_DIR), opts, num_threads=1, device="cpu")
    out = {}
    for mode in ("think", "direct", "cascade"):
        spec = _spec(tmp_path / mode, mode=mode, cascade={"top_k": 2})
        store = Store(spec.output.path)
        store.create_exclusive(layout.pairs_path("shard-00000"), parquet_bytes(table))
        marker = process_shard("shard-00000", engine, store, spec)
        out[mode] = (results.shard_table(store, "shard-00000", "scores").to_pylist(), marker)
    think, direct, casc = (out[m][0] for m in ("think", "direct", "cascade"))
    assert {r["status"] for r in direct} == {"direct"}
    assert out["direct"][1].stats.reasoning_tokens == 0 < out["cascade"][1].stats.reasoning_tokens
    assert out["cascade"][1].stats.reasoning_tokens < out["think"][1].stats.reasoning_tokens
    # cascade: direct scores equal the direct run's, reasoned scores the think run's
    for c, d, t in zip(casc, direct, think, strict=True):
        assert c["score_direct"] == pytest.approx(d["score"], abs=1e-9)
        if c["score_reasoned"] is not None:
            assert c["score_reasoned"] == pytest.approx(t["score"], abs=1e-6)
    assert sum(c["score_reasoned"] is not None for c in casc) == 4  # top 2 of each query
    # the toy model ranks relevant passages first without reasoning too
    for rows in (direct, casc):
        for r in rows:
            rel = coll.qrels[r["query_id"]][r["doc_id"]]
            assert (r["score"] > 0.5) == (rel > 0)
