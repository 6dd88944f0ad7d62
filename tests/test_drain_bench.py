"""The drain benchmark (benchmarks/drain_cases.py) end to end at a tiny size, and the
simulated engine's slot accounting. The engine is a test double (benchmarks/sim_engine.py)."""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import drain_cases
import drain_slots
from sim_engine import SimParams, SimulatedContinuousBatchingEngine

from rank1_batch.engines.base import EngineOptions, JudgeRequest

# Case 9 as published: one request per pair, free requests, no KV limit.
TINY_SIM = replace(drain_cases.CASE9_SIM, slots=8, median_tokens=6, sigma=1.0, cap_tokens=48)
FREE = {"request_overhead_s": 0.0, "prefill_token_s": 0.0}
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
    params = SimParams(slots=4, step_base_s=0.01, step_per_seq_s=0.001, cap_tokens=64, **FREE)
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


def _judge_all(engine: SimulatedContinuousBatchingEngine, n: int) -> list:
    requests = [JudgeRequest(f"query {i}", f"passage number {i}.") for i in range(n)]

    async def run() -> list:
        return list(await asyncio.gather(*(engine.judge_one(r) for r in requests)))

    return asyncio.run(run())


@pytest.mark.parametrize("model", ["single", "stepped"])
def test_requests_per_pair_follow_the_model(model):
    """single: pass 1, plus the forced pass for a pair that hit its budget. stepped: pass 1 to
    ``</think>`` and the answer step (2), or at the budget pass 1 and the last-position step,
    then the forced pass (3). A follow-up prefills one token (its pair's prefix is cached)."""
    params = SimParams(slots=4, median_tokens=6, sigma=1.0, cap_tokens=8, requests_per_pair=model)
    engine = _engine(params)
    judgements = _judge_all(engine, 80)
    complete = sum(j.status == "complete" for j in judgements)
    forced = sum(j.status == "forced" for j in judgements)
    assert complete + forced == 80 and complete > 0 and forced > 0
    stats = engine.stats
    assert stats.forced == forced
    prompts = sum(j.prompt_tokens for j in judgements)
    assert stats.reasoning_tokens == sum(j.reasoning_tokens for j in judgements)
    if model == "single":
        assert stats.requests == 80 + forced
        assert stats.step_requests == stats.last_position_requests == 0
        assert stats.prefill_tokens == prompts + forced
    else:
        assert stats.requests == 2 * 80 + forced
        assert stats.step_requests == complete
        assert stats.last_position_requests == forced
        assert stats.prefill_tokens == prompts + 80 + forced


def test_request_costs_lengthen_their_step_not_the_busy_fraction():
    params = SimParams(
        slots=4,
        step_base_s=0.01,
        step_per_seq_s=0.001,
        request_overhead_s=0.002,
        prefill_token_s=0.0001,
    )
    engine = _engine(params)

    async def run() -> None:
        await asyncio.gather(*(engine._run(10, tokens=10) for _ in range(4)))

    asyncio.run(run())
    stats = engine.stats
    assert stats.admission_s == pytest.approx(4 * (0.002 + 10 * 0.0001))
    assert stats.wall_s == pytest.approx(10 * 0.014 + stats.admission_s)
    assert stats.prefill_tokens == 40
    assert stats.busy_fraction == pytest.approx(1.0)


def test_kv_capacity_preempts_the_newest_by_recompute():
    """Two sequences of 2 + 6 tokens in 10 tokens of KV: after 3 steps they hold 10 and cannot
    both grow, so the newer is preempted, re-queued with its 3 tokens, and re-admitted (its 5
    tokens prefilled again) once the other is done: 9 steps, never more than 10 tokens held."""
    kv = _engine(SimParams(slots=2, kv_tokens=10, **FREE))
    free = _engine(SimParams(slots=2, kv_tokens=None, **FREE))
    for engine in (kv, free):

        async def run(engine: SimulatedContinuousBatchingEngine = engine) -> None:
            await asyncio.gather(*(engine._run(6, tokens=2) for _ in range(2)))

        asyncio.run(run())
    assert (free.stats.steps, free.stats.preemptions, free.stats.peak_kv_tokens) == (6, 0, 16)
    assert (kv.stats.steps, kv.stats.preemptions, kv.stats.peak_kv_tokens) == (9, 1, 10)
    assert kv.stats.prefill_tokens == 2 + 2 + 5
    with pytest.raises(ValueError, match="exceeds kv_tokens"):
        asyncio.run(kv._run(9, tokens=2))


def test_kv_capacity_is_never_exceeded_and_every_pair_is_judged():
    loose = _engine(SimParams(slots=16, median_tokens=12, sigma=1.0, cap_tokens=48))
    _judge_all(loose, 200)
    kv = loose.stats.peak_kv_tokens // 2  # half of what the pairs held at their peak
    tight = _engine(SimParams(slots=16, median_tokens=12, sigma=1.0, cap_tokens=48, kv_tokens=kv))
    judgements = _judge_all(tight, 200)
    assert tight.stats.preemptions > 0
    assert tight.stats.peak_kv_tokens <= kv
    assert tight.stats.prefill_tokens > loose.stats.prefill_tokens  # the recomputes
    # Preemption changes when a pair runs, never what it yields.
    again = _judge_all(_engine(loose.params), 200)
    assert [j.score for j in judgements] == [j.score for j in again]


def test_slots_part_end_to_end(tmp_path):
    """The slots part at tiny sizes: each slot count and request model, the stream with the
    executor's request cap derived from the engine's slots, against the never-draining run."""
    sim = SimParams(median_tokens=6, sigma=1.0, cap_tokens=48, kv_tokens=300)
    settings = drain_slots.SlotsSettings(
        slots=(4, 8),
        pairs_per_slot=20,
        shard_size=20,
        shards_in_flight=4,
        candidates_per_query=10,
        passage_chars=80,
        sim=sim,
    )
    result = drain_slots.slots_case(tmp_path, settings)
    assert set(result["slots"]) == {"4", "8"}
    for slots, case in result["slots"].items():
        pairs = 20 * int(slots)
        assert case["pairs"] == pairs and case["shards"] == pairs // 20
        assert case["max_requests"] == math.ceil(1.1 * int(slots))
        assert set(case["models"]) == {"single", "stepped"}
        for model, per_pair in (("single", 1), ("stepped", 2)):
            got = case["models"][model]
            for run in (got["stream"], got["never_draining"]):
                assert run["requests"] == per_pair * pairs + run["forced_requests"]
                assert run["peak_kv_tokens"] <= 300
                assert 0 < run["busy_fraction"] <= 1
            assert got["stream"]["committed_shards"] == pairs // 20
            ratio = got["stream"]["busy_fraction"] / got["never_draining"]["busy_fraction"]
            assert got["stream_over_never_draining"] == round(ratio, 3)
        assert case["stepped_over_single_engine_wall"] > 0
    assert set(result["meets_target_at_every_slot_count"]) == {"single", "stepped"}


def test_settings_sent_to_an_older_tree_leave_out_what_its_engine_lacks(tmp_path):
    """``--rss-only --baseline DIR`` runs DIR's script, whose ``SimParams`` may predate the
    request and KV fields (commit ac9e66b's does): they are left out when DIR's engine models
    them as case 9 does, refused when it cannot."""
    this_tree = Path(drain_cases.__file__).with_name("sim_engine.py")
    assert drain_cases._for_tree(TINY, this_tree) == TINY.as_dict()
    older = tmp_path / "sim_engine.py"
    fields = ("slots", "step_base_s", "step_per_seq_s", "median_tokens", "sigma", "cap_tokens")
    older.write_text("class SimParams:\n" + "".join(f"    {f}: int = 1\n" for f in fields))
    sent = drain_cases._for_tree(TINY, older)
    assert set(sent["sim"]) == set(fields)
    assert sent["shard_sizes"] == TINY.as_dict()["shard_sizes"]
    stepped = replace(TINY, sim=replace(TINY.sim, requests_per_pair="stepped"))
    with pytest.raises(ValueError, match="requests_per_pair"):
        drain_cases._for_tree(stepped, older)
