"""The simulated engine's parts around its scheduler (:mod:`sim_engine`, a TEST DOUBLE): the
statistics it keeps, its word tokenizer, and the inline executor that keeps storage I/O
between its virtual-clock steps."""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PIECE = re.compile(r"\s*\S+|\s+")


def inline_executor() -> concurrent.futures.ThreadPoolExecutor:
    """An executor that runs each job at once in the caller's thread.

    Set as the event loop's default executor (``loop.set_default_executor``), it makes
    ``asyncio.to_thread`` (the executor's storage I/O) finish before the virtual clock's next
    step: host work takes no engine time, and the engine never runs ahead of a commit.
    """
    return _InlineExecutor(max_workers=1)


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered to the awaiting coroutine
            fut.set_exception(exc)
        return fut


class WordTokenizer:
    """A trivial tokenizer: each whitespace-led word is one token, so
    ``decode(encode(text)) == text`` and ``" true"``/``" false"`` are one token each. A word's
    id is a hash of the word, so ids (and the lengths drawn from them) do not depend on the
    order in which prompts are seen."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in PIECE.findall(text):
            i = self._ids.get(piece)
            if i is None:
                i = int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=6).digest(), "big")
                if self._pieces.setdefault(i, piece) != piece:
                    raise RuntimeError(f"token id collision: {piece!r}, {self._pieces[i]!r}")
                self._ids[piece] = i
            out.append(i)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._pieces[i] for i in ids)


@dataclass
class SimStats:
    """Slot occupancy since the last :meth:`SimulatedContinuousBatchingEngine.reset_stats`
    (times on the engine's clock)."""

    slots: int
    clock: str
    kv_tokens: int | None = None
    steps: int = 0
    step_s: float = 0.0
    busy_slot_s: float = 0.0
    idle_s: float = 0.0
    admission_s: float = 0.0  # the part of step_s that admissions cost
    requests: int = 0
    forced: int = 0
    step_requests: int = 0  # stepped: the answer token after ``</think>``
    last_position_requests: int = 0  # stepped: a budget ending's last-position logprobs
    reasoning_tokens: int = 0  # pass-1 tokens of every generate_one
    prefill_tokens: int = 0
    preemptions: int = 0
    peak_kv_tokens: int = 0
    peak_queue: int = 0
    first_submit: float | None = None
    last_done: float | None = None

    @property
    def wall_s(self) -> float:
        if self.first_submit is None or self.last_done is None:
            return 0.0
        return self.last_done - self.first_submit

    @property
    def busy_fraction(self) -> float:
        wall = self.wall_s
        return self.busy_slot_s / (self.slots * wall) if wall > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        wall = self.wall_s
        return {
            "busy_fraction": round(self.busy_fraction, 4),
            "engine_wall_s": round(wall, 3),
            "busy_slot_s": round(self.busy_slot_s, 3),
            "steps": self.steps,
            "mean_batch": round(self.busy_slot_s / self.step_s, 1) if self.step_s else 0.0,
            "idle_s": round(self.idle_s, 3),
            "admission_s": round(self.admission_s, 3),
            "requests": self.requests,
            "forced_requests": self.forced,
            "step_requests": self.step_requests,
            "last_position_requests": self.last_position_requests,
            "reasoning_tokens": self.reasoning_tokens,
            "prefill_tokens": self.prefill_tokens,
            "preemptions": self.preemptions,
            "kv_tokens": self.kv_tokens,
            "peak_kv_tokens": self.peak_kv_tokens,
            "peak_queue": self.peak_queue,
        }
