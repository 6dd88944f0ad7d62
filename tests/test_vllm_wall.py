"""The measuring parts of benchmarks/vllm_wall_cases.py, without vLLM: the event-loop lag
ticker and the per-pair agreement of two sides (the benchmark itself is run by hand; its
engine start-ups would make the tiny-size benchmark test minutes slower)."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import vllm_wall_cases
import vllm_wall_proto


def test_lag_ticker_sees_a_blocked_loop() -> None:
    async def go() -> tuple[dict, dict]:
        quiet = vllm_wall_proto.LagTicker()
        quiet.start()
        await asyncio.sleep(0.1)
        calm = await quiet.stop()
        busy = vllm_wall_proto.LagTicker()
        busy.start()
        await asyncio.sleep(0.02)
        time.sleep(0.15)  # host work on the loop: every tick waits for it
        await asyncio.sleep(0.02)
        return calm, await busy.stop()

    calm, blocked = asyncio.run(go())
    assert blocked["loop_lag_max_ms"] >= 100
    assert calm["loop_lag_ticks"] > 0 and calm["loop_lag_max_ms"] < blocked["loop_lag_max_ms"]


def test_agreement_counts_status_and_token_mismatches() -> None:
    plain = [
        {"status": "complete", "score": 0.9, "prompt_tokens": 40},
        {"status": "forced", "score": 0.2, "prompt_tokens": 41},
        {"status": "forced", "score": 0.5, "prompt_tokens": 42},
    ]
    ours = [
        {"status": "complete", "score": 0.9, "prompt_tokens": 40},
        {"status": "forced", "score": 0.25, "prompt_tokens": 41},
        {"status": "fallback", "score": 0.5, "prompt_tokens": 43},
    ]
    got = vllm_wall_cases.agreement(ours, plain)
    assert got["status_mismatches"] == 1 and got["prompt_token_mismatches"] == 1
    assert math.isclose(got["max_abs_score_diff"], 0.05)
    assert got["statuses"] == {"complete": 1, "forced": 1, "fallback": 1}
