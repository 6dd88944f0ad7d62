"""A simulated continuous-batching engine: a TEST DOUBLE for the drain benchmark, not an engine.

:class:`SimulatedContinuousBatchingEngine` implements the async engine primitives of
``rank1_batch.engines.base.StreamEngine`` (``generate_one``, ``answer_one``,
``max_in_flight``, ``encode``/``decode``) the way a continuous-batching server behaves, with no
model: ``slots`` sequences run at once; one scheduler task admits queued requests into free
slots, advances every running sequence by one token per step, spends a step time that grows
with the batch (``step_base_s + step_per_seq_s * active``) and resolves the sequences that are
done. Reasoning lengths are lognormal with a cap, drawn deterministically from the prompt's
token ids; a pair that reaches its budget gets no answer logprobs, so the shared protocol runs
its forced pass (``answer_one``: one step).

Two clocks. ``virtual`` (the benchmark's): engine time is simulated. Before each step the
scheduler lets the event loop run until nothing else is ready (the host has done everything it
can), then jumps to the next completion, adding the steps' times to its clock. Host work thus
costs no engine time, as on a GPU whose host keeps up (vLLM's engine core runs in its own
process), and results do not depend on how busy this machine is. Run storage I/O inline
(:func:`inline_executor`) so it, too, happens between steps. ``real``: every step sleeps its
step time on the wall clock, host work included, as the measured step durations show.

It records slot occupancy: ``busy_slot_s`` (the sum over steps of running sequences × step
time) and the time from the first request to the last completion, so
``busy_fraction = busy_slot_s / (slots × wall_s)``: the share of the engine's slot-time that
did work (1.0 = every slot busy all the time).

It lives under ``benchmarks/`` on purpose: it is never offered as an engine (not in
``rank1_batch.engines``, not selectable from a job file).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import heapq
import itertools
import math
import random
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from rank1_batch.engines.base import EngineOptions, Generation

try:
    from rank1_batch.engines.stream_engine import StreamEngine
except ImportError:  # an older tree's package (drain_cases.py --baseline): it lived in base
    from rank1_batch.engines.base import StreamEngine  # type: ignore[attr-defined,no-redef]

_PIECE = re.compile(r"\s*\S+|\s+")
# Sentences for the simulated reasoning text (cut after a sentence end by the forced prompt).
_WORDS = (
    "the passage mentions the query topic so it seems relevant. "
    "however it discusses a different aspect and the details do not match! "
    "let me check the key terms again? the answer depends on the main claim. "
)


@dataclass(frozen=True)
class SimParams:
    """Everything that shapes the simulation (printed in the benchmark JSON).

    The defaults are a full-scale Rank1 scenario: 256 slots (vLLM's ``max_num_seqs``),
    Rank1's 8,192-token reasoning cap, lognormal lengths with a mean of about 700 tokens
    (median 350, sigma 1.2: about 0.4% reach the cap). The step time only weights the steps
    (a fuller batch takes a longer step); its absolute value cancels out of the fractions.
    """

    slots: int = 256
    step_base_s: float = 0.015
    step_per_seq_s: float = 0.00006
    median_tokens: float = 350.0
    sigma: float = 1.2
    cap_tokens: int = 8192
    clock: Literal["virtual", "real"] = "virtual"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        for piece in _PIECE.findall(text):
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
    steps: int = 0
    step_s: float = 0.0
    busy_slot_s: float = 0.0
    idle_s: float = 0.0
    requests: int = 0
    forced: int = 0
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
            "requests": self.requests,
            "forced_requests": self.forced,
            "peak_queue": self.peak_queue,
        }


class SimulatedContinuousBatchingEngine(StreamEngine):
    """TEST DOUBLE of a continuous-batching engine (see the module docstring)."""

    name = "simulated"

    def __init__(self, params: SimParams, options: EngineOptions) -> None:
        if params.clock not in ("virtual", "real"):
            raise ValueError(f"clock must be 'virtual' or 'real', not {params.clock!r}")
        self.params = params
        self.max_in_flight = params.slots
        self._tok = WordTokenizer()
        pieces = _PIECE.findall(_WORDS * (params.cap_tokens // 20 + 2))[: params.cap_tokens + 1]
        self._text = "".join(pieces)
        self._ends = list(itertools.accumulate((len(x) for x in pieces), initial=0))
        self.stats = SimStats(params.slots, params.clock)
        self._vclock = 0.0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        super().__init__(options, model_id="simulated", model_revision="sim-1")

    # -- tokenisation ---------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(ids)

    # -- the pairs' deterministic outcomes ----------------------------------------------------
    @staticmethod
    def _rng(prompt: Sequence[int], salt: bytes) -> random.Random:
        digest = hashlib.blake2b(salt + repr(tuple(prompt)).encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(digest, "big"))

    def reasoning_length(self, prompt: Sequence[int]) -> int:
        """Tokens this prompt's reasoning takes without a budget (at most the cap)."""
        p = self.params
        draw = self._rng(prompt, b"len").lognormvariate(math.log(p.median_tokens), p.sigma)
        return max(1, min(p.cap_tokens, math.ceil(draw)))

    def _answer(self, prompt: Sequence[int]) -> dict[int, float]:
        u = self._rng(prompt, b"ans").random()
        p_true = min(max(u, 1e-6), 1 - 1e-6)
        return {self.true_id: math.log(p_true), self.false_id: math.log(1 - p_true)}

    # -- the StreamEngine primitives ------------------------------------------------------------
    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        length = self.reasoning_length(prompt)
        done = length < budget
        steps = max(1, length if done else budget)
        await self._run(steps)
        return Generation(
            text=self._text[: self._ends[min(steps, len(self._ends) - 1)]],
            token_count=steps,
            last_top=self._answer(prompt) if done else None,
            stopped=done,
            finish_reason="stop" if done else "length",
        )

    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        self.stats.forced += 1
        await self._run(1)
        return self._answer(prompt)

    # -- the scheduler ------------------------------------------------------------------------
    def reset_stats(self) -> SimStats:
        old, self.stats = self.stats, SimStats(self.params.slots, self.params.clock)
        return old

    def _now(self) -> float:
        if self.params.clock == "virtual":
            return self._vclock
        assert self._loop is not None
        return self._loop.time()

    async def _run(self, steps: int) -> None:
        """Occupy one slot for ``steps`` engine steps (queued until a slot is free)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop, self._queue, self._wake = loop, deque(), asyncio.Event()
            self._task = loop.create_task(self._scheduler(), name="simulated-engine")
        assert self._wake is not None
        fut: asyncio.Future[None] = loop.create_future()
        stats = self.stats
        if stats.first_submit is None:
            stats.first_submit = self._now()
        stats.requests += 1
        self._queue.append((steps, fut))
        stats.peak_queue = max(stats.peak_queue, len(self._queue))
        self._wake.set()
        await fut

    @staticmethod
    async def _settle(loop: asyncio.AbstractEventLoop) -> None:
        """Yield until no other callback is ready: the host has done all it can for now.
        (Reads the event loop's ready queue; CPython's asyncio loops have one.)"""
        while True:
            await asyncio.sleep(0)
            if not getattr(loop, "_ready", None):
                return

    async def _scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        p = self.params
        virtual = p.clock == "virtual"
        running: list[tuple[int, int, asyncio.Future[None]]] = []  # (finish step, seq, future)
        order = itertools.count()
        step = 0
        assert self._wake is not None
        while True:
            if virtual:
                await self._settle(loop)
            while self._queue and len(running) < p.slots:
                steps, fut = self._queue.popleft()
                if not fut.done():
                    heapq.heappush(running, (step + steps, next(order), fut))
            if not running:
                self._wake.clear()
                start = loop.time()
                await self._wake.wait()
                if not virtual:
                    now = loop.time()
                    self.stats.idle_s += now - max(start, self.stats.first_submit or now)
                continue
            active = len(running)
            step_time = p.step_base_s + p.step_per_seq_s * active
            if virtual:
                # Nothing can arrive before the next completion (the host is idle): jump to it.
                n = running[0][0] - step
                elapsed = n * step_time
                self._vclock += elapsed
            else:
                n = 1
                start = loop.time()
                await asyncio.sleep(step_time)
                elapsed = loop.time() - start
            stats = self.stats
            stats.steps += n
            stats.step_s += elapsed
            stats.busy_slot_s += active * elapsed
            step += n
            while running and running[0][0] <= step:
                fut = heapq.heappop(running)[2]
                if not fut.done():
                    fut.set_result(None)
                stats.last_done = self._now()
