"""The drain benchmark (benchmarks/drain_cases.py) end to end at a tiny size, and the
simulated engine's slot accounting. The engine is a test double (benchmarks/sim_engine.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import drain_cases
from sim_engine import SimParams, SimulatedContinuousBatchingEngine

from rank1_batch.engines.base import EngineOptions

TINY_SIM = SimParams(slots=8, median_tokens=6, sigma=1.0, cap_tokens=48)
TINY = drain_cases.DrainSettings(
    shard_sizes=(20, 80),
    total_pairs=160,
    shards_in_flight=(1, 4),
    candidates_per_query=10,
    passage_chars=80,
    sim=TINY_SIM,
)


def _engine(params: SimParams) -> SimulatedContinuousBatchingEngine:
    opts = EngineOptions(max_model_len=4096, max_tokens=params.cap_tokens, min_reserve=64)
    return SimulatedContinuousBatchingEngine(params, opts)


def test_a_full_batch_is_fully_busy_and_a_lone_sequence_is_not():
    params = SimParams(slots=4, step_base_s=0.01, step_per_seq_s=0.001, cap_tokens=64)
    engine = _engine(params)

    async def run(n: int) -> None:
        await asyncio.gather(*(engine._run(10) for _ in range(n)))

    asyncio.run(run(4))
    full = engine.reset_stats()
    assert full.busy_fraction == pytest.approx(1.0)
    assert full.steps == 10
    assert full.wall_s == pytest.approx(10 * (0.01 + 4 * 0.001))
    asyncio.run(run(1))
    lone = engine.reset_stats()
    assert lone.busy_fraction == pytest.approx(0.25)
    # Five requests on four slots: the fifth waits for a free slot, then runs alone.
    asyncio.run(run(5))
    queued = engine.reset_stats()
    assert queued.steps == 20
    assert queued.busy_fraction == pytest.approx(
        (10 * 4 * 0.014 + 10 * 0.011) / (4 * (0.14 + 0.11))
    )


def test_lengths_are_long_tailed_deterministic_and_capped():
    engine = _engine(SimParams(median_tokens=20, sigma=1.2, cap_tokens=200))
    prompts = [[i, i + 1, 7] for i in range(3000)]
    lengths = [engine.reasoning_length(p) for p in prompts]
    assert lengths == [_engine(engine.params).reasoning_length(p) for p in prompts]
    assert max(lengths) == 200 and min(lengths) >= 1
    capped = sum(n == 200 for n in lengths) / len(lengths)
    assert 0.001 < capped < 0.05
    assert sorted(lengths)[len(lengths) // 2] < sum(lengths) / len(lengths)  # mean > median


def test_a_capped_pair_is_forced_and_every_pair_scored():
    engine = _engine(SimParams(slots=4, median_tokens=6, sigma=1.0, cap_tokens=8))
    from rank1_batch.engines.base import JudgeRequest

    requests = [JudgeRequest(f"query {i}", f"passage number {i}.") for i in range(60)]

    async def run() -> list:
        return list(await asyncio.gather(*(engine.judge_one(r) for r in requests)))

    judgements = asyncio.run(run())
    statuses = {j.status for j in judgements}
    assert statuses == {"complete", "forced"}
    assert engine.stats.forced == sum(j.status == "forced" for j in judgements) > 0
    assert all(0 < j.score < 1 for j in judgements)


def test_drain_case_end_to_end(tmp_path):
    result = drain_cases.drain(tmp_path, TINY, rss_repeats=1)
    assert result["settings"]["sim"]["slots"] == 8
    ref = result["never_draining"]
    assert 0 < ref["busy_fraction"] <= 1
    assert set(result["sizes"]) == {"20", "80"}
    for size, shards in (("20", 8), ("80", 2)):
        case = result["sizes"][size]
        assert case["shards"] == shards
        assert case["old_policy"]["committed_shards"] == shards
        assert set(case["stream"]) == {"1", "4"}
        for run in (case["old_policy"], *case["stream"].values()):
            assert run["requests"] == 160 + run["forced_requests"]
            assert 0 < run["busy_fraction"] <= 1
    small = result["sizes"]["20"]
    # The drain: one shard at a time wastes slots; four shards in flight keep them busy.
    assert small["stream"]["4"]["busy_fraction"] > small["old_policy"]["busy_fraction"]
    assert small["stream_over_never_draining"]["4"] > small["old_over_never_draining"]
    rss = result["peak_rss"]["stream_per_shard_size"]
    assert set(rss) == {"20", "80"}
    assert all(v["peak_rss_mib"] >= v["rss_before_scoring_mib"] > 0 for v in rss.values())
    assert all(1 <= v["peak_open_shards"] <= v["shards"] for v in rss.values())
    assert isinstance(result["peak_rss"]["growth_smallest_to_largest"], float)


def test_token_ids_do_not_depend_on_what_was_seen_before():
    a, b = _engine(TINY_SIM), _engine(TINY_SIM)
    b.encode("some other words first")
    text = "Determine if the passage is relevant.\nQuery: q1\n<think>"
    assert a.encode(text) == b.encode(text)
    assert a.decode(a.encode(text)) == text


def test_peak_rss_against_a_baseline_tree(tmp_path):
    """``--rss-only --baseline DIR``: the same shards measured with this tree's code and with
    DIR's (here this tree again), a fresh process per size and tree."""
    prepared = drain_cases.prepare_all(tmp_path, TINY)
    root = Path(__file__).resolve().parents[1]
    rss = drain_cases.peak_rss(tmp_path, TINY, prepared, baseline=root, repeats=1)
    assert rss["baseline_code"] == str(root)
    for name in ("stream_per_shard_size", "baseline_per_shard_size"):
        assert set(rss[name]) == {"20", "80"}
        for run in rss[name].values():
            assert run["peak_rss_mib"] >= run["rss_before_scoring_mib"] > 0
            assert run["arrow_pool_peak_mib"] >= 0
            assert run["peak_rss_mib_runs"] == [run["peak_rss_mib"]]
    assert isinstance(rss["baseline_growth_smallest_to_largest"], float)


def test_busy_fractions_against_a_baseline_tree(tmp_path):
    """``--baseline DIR`` without ``--rss-only``: DIR's stream policy measured in the same run,
    beside this tree's (here this tree again: the same figures, the virtual clock being
    deterministic)."""
    root = Path(__file__).resolve().parents[1]
    settings = drain_cases.DrainSettings(**{**TINY.__dict__, "shard_sizes": (20,), "rss": False})
    result = drain_cases.drain(tmp_path, settings, rss_repeats=1, baseline=root)
    assert result["baseline_code"] == str(root)
    case = result["sizes"]["20"]
    assert set(case["baseline_stream"]) == set(case["stream"]) == {"1", "4"}
    assert case["baseline_stream_over_never_draining"] == case["stream_over_never_draining"]
