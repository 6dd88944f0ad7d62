"""Test double: a fault-injecting engine behind the engine interface (never a user engine).

``FaultInjectingTestEngine`` judges pairs without a model (a hash of the passage), and on
purpose misbehaves on pairs whose passage contains a keyword:

* ``POISON-CRASH``: the actor process exits (``os._exit``) every time it reaches the pair;
* ``POISON-HANG``: the call sleeps for an hour (only ``compute.shard_timeout`` ends it);
* ``FLAKY``: raises a transient error the first time any process reaches the pair;
* the first engine built in the whole test fails to start (``fail_start_once``).

Every ``judge`` call (one shard attempt) draws a fresh random token that goes into its scores
(``reasoning_tokens`` and the score's last digits) and its traces (``reasoning``), so a shard
whose scores and traces came from two attempts is detectable.

Selected only through the test-only hook :data:`rank1_batch.engines.factory.TEST_ENGINE_ENV`
(``RANK1_BATCH_TEST_ENGINE=fault_engine:build``): a job file cannot name it. Its settings come
from ``RANK1_BATCH_FAULTS`` (JSON: ``state_dir``, ``fail_start_once``, ``pair_seconds``).
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from rank1_batch import rank1
from rank1_batch.engines.base import EngineOptions, Generation, JudgeRequest, Rank1Engine

FAULTS_ENV = "RANK1_BATCH_FAULTS"
CRASH_EXIT = 17


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

    name = "fault-injecting-test-double"

    def __init__(self, options: EngineOptions) -> None:
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


def build(options: EngineOptions) -> Rank1Engine:
    """The factory the test hook calls."""
    return FaultInjectingTestEngine(options)
