"""What the vLLM wall-clock benchmark's children share: the command protocol, the CPU and
event-loop-lag measurements, and the engine settings each side reports.

A child builds its engine once, prints one ``@@bench {"ready": ...}`` line, then serves
commands, one JSON object a line on stdin (``{"pairs": file, "budget": n, "out": file}``, or
``{"quit": true}``), answering each with one ``@@bench {...}`` line of figures and writing its
per-pair rows to ``out``. The prefix ``@@bench`` keeps the answers apart from vLLM's own log
lines, which go to stdout. Between commands the child resets vLLM's prefix cache, so every
round starts cold; what is timed is the scoring alone (engine start-up is reported apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

PREFIX = "@@bench "
TICK_S = 0.005

Rows = list[dict[str, Any]]


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def engine_config(cfg: Any) -> dict[str, Any]:
    """The engine settings both sides must share, read back from vLLM's own config."""
    sched, model, cache = cfg.scheduler_config, cfg.model_config, cfg.cache_config
    return {
        "max_model_len": model.max_model_len,
        "dtype": str(model.dtype),
        "enforce_eager": model.enforce_eager,
        "logprobs_mode": str(model.logprobs_mode),
        "max_num_seqs": sched.max_num_seqs,
        "max_num_batched_tokens": sched.max_num_batched_tokens,
        "enable_prefix_caching": cache.enable_prefix_caching,
        "kv_cache_env_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
        "kv_cache_blocks": getattr(cache, "num_gpu_blocks", None),
    }


def children_cpu_s() -> float:
    """CPU seconds of this process's live children (vLLM's engine core, the reaper)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


class Meter:
    """Wall and CPU seconds of one scoring run: this (front-end) process, its children."""

    def __enter__(self) -> Meter:
        self.cpu0, self.kids0 = time.process_time(), children_cpu_s()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        self.kids = children_cpu_s() - self.kids0

    def figures(self, pairs: int, requests: int) -> dict[str, Any]:
        return {
            "pairs": pairs,
            "wall_s": round(self.wall, 3),
            "pairs_per_s": round(pairs / self.wall, 3) if self.wall else None,
            "cpu_s": round(self.cpu, 3),
            "cpu_ms_per_pair": round(1000 * self.cpu / pairs, 2) if pairs else None,
            "engine_core_cpu_s": round(self.kids, 3),
            "requests": requests,
            "requests_per_pair": round(requests / pairs, 3) if pairs else None,
        }


class LagTicker:
    """Event-loop lag: a coroutine on the loop sleeps :data:`TICK_S` again and again and
    records how late each wake-up is (actual minus asked-for)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(TICK_S)
            self.lags.append(loop.time() - t0 - TICK_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> dict[str, Any]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        lags = sorted(self.lags)
        if not lags:
            return {"loop_lag_ticks": 0}
        p99 = lags[max(0, math.ceil(0.99 * len(lags)) - 1)]
        return {
            "loop_lag_ticks": len(lags),
            "loop_lag_max_ms": round(1000 * lags[-1], 2),
            "loop_lag_p99_ms": round(1000 * p99, 2),
            "loop_lag_mean_ms": round(1000 * sum(lags) / len(lags), 3),
        }


def _command(line: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    cmd: dict[str, Any] = json.loads(line)
    return None if cmd.get("quit") else cmd


def _pairs(cmd: dict[str, Any]) -> list[dict[str, str]]:
    pairs: list[dict[str, str]] = json.loads(Path(cmd["pairs"]).read_text())
    return pairs


def serve_sync(
    *,
    startup_s: float,
    config: dict[str, Any],
    reset: Callable[[], Any],
    score: Callable[[list[dict[str, str]], int], tuple[Rows, int]],
) -> None:
    """Serve commands with a synchronous ``score(pairs, budget) -> (rows, requests)``, all
    of it timed (a user's script starts from the pairs' text)."""
    say({"ready": True, "startup_s": round(startup_s, 2), "engine_config": config})
    for line in sys.stdin:
        cmd = _command(line)
        if cmd is None:
            break
        pairs = _pairs(cmd)
        reset()
        with Meter() as meter:
            rows, requests = score(pairs, cmd["budget"])
        Path(cmd["out"]).write_text(json.dumps(rows))
        say(meter.figures(len(pairs), requests))


async def serve_async(
    *,
    startup_s: float,
    config: dict[str, Any],
    extra: dict[str, Any],
    reset: Callable[[], Awaitable[Any]],
    prepare: Callable[[list[dict[str, str]], int, Path], Any],
    score: Callable[[Any], Awaitable[tuple[int, dict[str, Any]]]],
    collect: Callable[[Any], Rows],
) -> None:
    """Serve commands on this loop: ``prepare(pairs, budget, scratch) -> job`` (untimed: the
    shards a job's prepare step would have written), ``score(job) -> (requests, figures)``
    timed with the lag ticker on the loop, ``collect(job) -> rows`` (untimed: the committed
    rows read back)."""
    say({"ready": True, "startup_s": round(startup_s, 2), "engine_config": config, **extra})
    while True:
        cmd = _command(await asyncio.to_thread(sys.stdin.readline) or '{"quit": true}')
        if cmd is None:
            break
        out = Path(cmd["out"])
        job = prepare(_pairs(cmd), cmd["budget"], out.with_suffix(".store"))
        await reset()
        ticker = LagTicker()
        ticker.start()
        with Meter() as meter:
            requests, more = await score(job)
        lag = await ticker.stop()
        rows = collect(job)
        out.write_text(json.dumps(rows))
        say({**meter.figures(len(rows), requests), **lag, **more})
