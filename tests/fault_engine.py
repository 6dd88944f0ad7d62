"""Test double: a fault-injecting engine behind the engine interface (never a user engine).

``FaultInjectingTestEngine`` judges pairs without a model (a hash of the passage), and on
purpose misbehaves on pairs whose passage contains a keyword:

* ``POISON-CRASH``: the actor process exits (``os._exit``) every time it reaches the pair;
* ``POISON-HANG``: the call sleeps for an hour (only ``compute.shard_timeout`` ends it);
* ``FLAKY``: raises a transient error the first time any process reaches the pair;
* the first engine built in the whole test fails to start (``fail_start_once``).

``FaultInjectingStreamEngine`` is its stream twin: one request
per pair, so with ``compute.shards_in_flight`` several shards share an actor and a crash ends
them all. Besides ``POISON-CRASH`` it kills its process at chosen moments (``kills``: that
many times in the whole test, each after ``kill_every`` pairs judged anywhere since the last,
each time while judging a pair of a query, hence with one query a shard a shard, that was
never the victim before): a kill from outside as far as any shard can tell. Its scores are
a pure function of the passage, so every committed row can be checked.

Every ``judge`` call (one shard attempt) draws a fresh random token that goes into its scores
(``reasoning_tokens`` and the score's last digits) and its traces (``reasoning``), so a shard
whose scores and traces came from two attempts is detectable.

Both are plugin engines only where a test registers them: the ``fault_engines`` fixture
(``tests/conftest.py``) installs a distribution into a temporary folder whose entry points
(group ``rank1_batch.engines``) name them :data:`BATCH_ENGINE` and :data:`STREAM_ENGINE`, and
puts that folder on ``sys.path`` and on ``PYTHONPATH`` (the CLI, its Ray workers). Nothing in
the package names them. Their settings come from ``RANK1_BATCH_FAULTS`` (JSON: ``state_dir``,
``fail_start_once``, ``pair_seconds``, ``kills``, ``kill_every``).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from rank1_batch.core import rank1
from rank1_batch.engines.base import EngineOptions, Generation, JudgeRequest, Rank1Engine
from rank1_batch.engines.stream_engine import StreamEngine

FAULTS_ENV = "RANK1_BATCH_FAULTS"
CRASH_EXIT = 17
# The engines' names (model.engine) where the fault_engines fixture registers them.
BATCH_ENGINE = "fault-injecting-test-double"
STREAM_ENGINE = "fault-injecting-stream-test-double"
ENTRY_POINTS = {
    BATCH_ENGINE: "fault_engine:FaultInjectingTestEngine",
    STREAM_ENGINE: "fault_engine:FaultInjectingStreamEngine",
}


def _config() -> dict:
    return json.loads(os.environ.get(FAULTS_ENV, "{}"))


def first_time(state_dir: str, event: str) -> bool:
    """True for exactly one caller across every process of the test (exclusive create)."""
    path = Path(state_dir) / f"{event}.fired"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def log_event(state_dir: str, event: str) -> None:
    with open(Path(state_dir) / "events.log", "a") as fh:
        fh.write(f"{time.time():.3f} {os.getpid()} {event}\n")


class FaultInjectingTestEngine(Rank1Engine):
    """Test double (see module docstring)."""

    name = BATCH_ENGINE

    def __init__(self, model_path: str, options: EngineOptions, **model: object) -> None:
        cfg = _config()
        self.state_dir = cfg.get("state_dir", "")
        self.pair_seconds = float(cfg.get("pair_seconds", 0.0))
        if cfg.get("fail_start_once") and first_time(self.state_dir, "start-failure"):
            log_event(self.state_dir, "start-failure")
            raise RuntimeError("injected start failure (model download glitch)")
        super().__init__(options, model_id="fault-test-double", model_revision="0")

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(w.encode()) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return ""

    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        raise NotImplementedError("the test double overrides judge")

    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        raise NotImplementedError("the test double overrides judge")

    def judge(self, requests: Sequence[JudgeRequest]) -> list[rank1.Judgement]:
        token = random.SystemRandom().randrange(1, 2**30)  # this attempt's mark
        out = []
        for req in requests:
            if "POISON-CRASH" in req.passage:
                log_event(self.state_dir, "crash")
                os._exit(CRASH_EXIT)
            if "POISON-HANG" in req.passage:
                log_event(self.state_dir, "hang")
                time.sleep(3600)
            key = zlib.crc32(req.passage.encode())
            if "FLAKY" in req.passage and first_time(self.state_dir, f"flaky-{key}"):
                log_event(self.state_dir, "transient")
                raise ConnectionError("injected transient error (storage blip)")
            if self.pair_seconds:
                time.sleep(self.pair_seconds)
            score = (key % 1000) / 1000 * 0.9 + (token % 1000) / 1e7
            out.append(
                rank1.Judgement(
                    score=score,
                    logit=score,
                    status=rank1.COMPLETE,
                    prompt_tokens=len(req.passage),
                    reasoning_tokens=token,
                    reasoning=f"attempt {token}",
                    finish_reason="stop",
                )
            )
        return out


def expected_score(passage: str) -> float:
    return (zlib.crc32(passage.encode()) % 1000) / 1000 * 0.9


def bump(state_dir: str, counter: str, *, reset: bool = False) -> int:
    """Add one to ``counter`` (shared by every process of the test); its new value. ``reset``
    sets it to 0 instead."""
    with open(Path(state_dir) / f"{counter}.count", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        value = 0 if reset else int(fh.read() or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(value))
        return value


class FaultInjectingStreamEngine(StreamEngine):
    """Test double (see module docstring): a stream engine, pairs judged one at a time."""

    name = STREAM_ENGINE
    max_in_flight = 4  # requests at once; with shards of 4 pairs, two shards judging at a time

    def __init__(self, model_path: str, options: EngineOptions, **model: object) -> None:
        cfg = _config()
        self.state_dir = cfg.get("state_dir", "")
        self.pair_seconds = float(cfg.get("pair_seconds", 0.0))
        self.kills = int(cfg.get("kills", 0))
        self.kill_every = int(cfg.get("kill_every", 1))
        super().__init__(options, model_id="fault-test-double", model_revision="0")

    def encode(self, text: str) -> list[int]:
        return [zlib.crc32(w.encode()) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return ""

    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        raise NotImplementedError("the test double overrides judge_one")

    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        raise NotImplementedError("the test double overrides judge_one")

    def _maybe_killed(self, req: JudgeRequest) -> None:
        if bump(self.state_dir, "judged") < self.kill_every:
            return
        for n in range(self.kills):
            if Path(self.state_dir, f"kill-{n}.fired").exists():
                continue
            if not first_time(self.state_dir, f"victim-{zlib.crc32(req.query.encode())}"):
                return  # this shard was a victim already: another pair's turn
            if first_time(self.state_dir, f"kill-{n}"):
                bump(self.state_dir, "judged", reset=True)
                log_event(self.state_dir, "kill")
                os._exit(CRASH_EXIT)
            return

    async def judge_one(self, request: JudgeRequest) -> rank1.Judgement:
        if "POISON-CRASH" in request.passage:
            log_event(self.state_dir, "crash")
            os._exit(CRASH_EXIT)
        if "POISON-HANG" in request.passage:
            await asyncio.sleep(3600)
        if self.kills:
            self._maybe_killed(request)
        if self.pair_seconds:
            await asyncio.sleep(self.pair_seconds)
        score = expected_score(request.passage)
        return rank1.Judgement(
            score=score,
            logit=score,
            status=rank1.COMPLETE,
            prompt_tokens=len(request.passage),
            reasoning_tokens=1,
            reasoning="judged",
            finish_reason="stop",
        )
