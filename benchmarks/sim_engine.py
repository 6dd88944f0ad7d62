"""A simulated continuous-batching engine: a TEST DOUBLE for the drain benchmark, not an engine.

:class:`SimulatedContinuousBatchingEngine` implements the async engine primitives of
``rank1_batch.engines.stream_engine.StreamEngine`` (``generate_one``, ``answer_one``,
``max_in_flight``, ``encode``/``decode``) the way a continuous-batching server (vLLM's V1
scheduler) behaves, with no model: at most ``slots`` sequences (``max_num_seqs``) run at once;
one scheduler task admits queued requests first come first served, advances every running
sequence by one token per step, spends a step time that grows with the batch
(``step_base_s + step_per_seq_s * active``, plus what the step's admissions cost) and resolves
the sequences that are done. Reasoning lengths are lognormal with a cap, drawn
deterministically from the prompt's token ids; a pair that reaches its budget gets no answer
logprobs, so the shared protocol runs its forced pass (``answer_one``: one step).

**Requests per pair** (``requests_per_pair``), as the project's vLLM engine makes them
(``rank1_batch/engines/vllm_protocol.py``; the simulated engine owns its requests, so the
extra ones live inside ``generate_one``):

- ``single``, the reference's: one pass-1 request (stop strings ``</think> true|false``,
  logprobs at the last position), plus the forced pass for a pair that did not stop;
- ``stepped``, ``stream_pass1``'s: pass 1 until ``</think>``, then a one-token step with
  logprobs over the cached prefix (the answer token); a budget ending instead takes one
  one-token request over the prompt and all but the last token (that position's logprobs),
  then the forced pass. So 2 requests for a pair that stops, 3 for one that hits its budget.
  (Not modelled: EOS endings, and a non-answer token after ``</think>``, where the real
  driver reasons on with more requests.)

**What a request costs.** Each admission adds ``request_overhead_s`` to its step (the engine
core's scheduling of a new request; default 0.05 ms, from vLLM PR #19057's scheduler
benchmark: 5.2 ms to schedule 100 requests first come first served, 49.7 ms for 1,000; the
front end's input processing and detokenizer set-up run in the actor's process, host work
that the virtual clock makes free) and ``prefill_token_s`` per token it computes (default
0.03 ms: Qwen2.5-7B's 2 × 7.6 GFLOP a token at about 500 TFLOP/s of bf16 on an H200, the
linear layers without a decode's KV reads). The prefix cache is modelled simply: a pair's
first request prefills its prompt; its follow-ups (the step, the last-position request, the
forced pass) find the pair's prefix cached and prefill one token (cache eviction is not
modelled). Prefill is not chunked: the prompts here fit one step's token budget.

**KV capacity** (``kv_tokens``; None: unlimited): a total of tokens held by the running
sequences (prompt + generated so far, a follow-up counting its whole cached prefix). As in
vLLM's V1 scheduler, a waiting request is admitted only if it and one more token for every
running sequence fit; when the running sequences grow past the capacity the newest is
preempted by recompute: it goes back to the front of the queue, keeps its progress, and its
re-admission prefills everything it held. (Reserving each request's maximum length at
admission instead would cap 1,024 slots at a few hundred: not what vLLM does.) The default,
2,000,000 tokens, is Rank1-7B on one H200: 139 GiB × 0.9 (``gpu_memory_utilization``) less
14.2 GiB of bf16 weights and about 4 GiB of activations and CUDA graphs leaves about 107 GiB,
at 56 KiB a token (28 layers × 2 × 4 KV heads × 128 × 2 bytes). vLLM logs the real figure at
start-up ("GPU KV cache size: N tokens").

Two clocks. ``virtual`` (the benchmark's): engine time is simulated. Before each step the
scheduler lets the event loop run until nothing else is ready (the host has done everything it
can), then jumps to the next completion (or to the step where the KV capacity would be
exceeded), adding the steps' times to its clock. Host work thus costs no engine time, as on a
GPU whose host keeps up (vLLM's engine core runs in its own process), and results do not
depend on how busy this machine is. Run storage I/O inline (:func:`inline_executor`) so it,
too, happens between steps. ``real``: every step sleeps its step time on the wall clock, host
work included, as the measured step durations show.

It records ``busy_slot_s`` (the sum over steps of running sequences × step time) and the
time from the first request to the last completion: ``busy_fraction = busy_slot_s / (slots ×
wall_s)``, the share of slot-time that held a sequence. A request's cost lengthens its step,
so it shows in the engine time (``engine_wall_s``), not in the busy fraction (which measures
the admission policy only). It lives under ``benchmarks/`` on purpose: it is never offered as
an engine (not in ``rank1_batch.engines``, not selectable from a job file).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sim_parts import PIECE, SimStats, WordTokenizer, inline_executor

from rank1_batch.engines.base import EngineOptions, Generation

try:
    from rank1_batch.engines.stream_engine import StreamEngine
except ImportError:  # an older tree's package (drain_cases.py --baseline): it lived in base
    from rank1_batch.engines.base import StreamEngine  # type: ignore[attr-defined,no-redef]

__all__ = [
    "REQUEST_MODELS",
    "SimParams",
    "SimStats",
    "SimulatedContinuousBatchingEngine",
    "inline_executor",
]

REQUEST_MODELS = ("single", "stepped")
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
    (median 350, sigma 1.2: about 0.4% reach the cap), today's stepped requests, and the
    request costs and KV capacity of the module docstring. The step time only weights the
    steps (a fuller batch takes a longer step); its absolute value cancels out of the
    fractions.
    """

    slots: int = 256
    step_base_s: float = 0.015
    step_per_seq_s: float = 0.00006
    median_tokens: float = 350.0
    sigma: float = 1.2
    cap_tokens: int = 8192
    clock: Literal["virtual", "real"] = "virtual"
    requests_per_pair: Literal["single", "stepped"] = "stepped"
    request_overhead_s: float = 0.00005
    prefill_token_s: float = 0.00003
    kv_tokens: int | None = 2_000_000

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class _Request:
    tokens: int  # KV tokens it holds once admitted (its prompt and what it generated before)
    prefill: int  # tokens its admission computes (those not in the prefix cache)
    steps: int  # tokens it has left to generate
    fut: asyncio.Future[None]
    admitted: int = 0  # the step it was admitted at, while it runs


class SimulatedContinuousBatchingEngine(StreamEngine):
    """TEST DOUBLE of a continuous-batching engine (see the module docstring)."""

    name = "simulated"

    def __init__(self, params: SimParams, options: EngineOptions) -> None:
        if params.clock not in ("virtual", "real"):
            raise ValueError(f"clock must be 'virtual' or 'real', not {params.clock!r}")
        if params.requests_per_pair not in REQUEST_MODELS:
            raise ValueError(
                f"requests_per_pair must be one of {REQUEST_MODELS}, "
                f"not {params.requests_per_pair!r}"
            )
        self.params = params
        self.max_in_flight = params.slots
        self._tok = WordTokenizer()
        pieces = PIECE.findall(_WORDS * (params.cap_tokens // 20 + 2))[: params.cap_tokens + 1]
        self._text = "".join(pieces)
        self._ends = list(itertools.accumulate((len(x) for x in pieces), initial=0))
        self.stats = self._new_stats()
        self._vclock = 0.0
        self._queue: deque[_Request] = deque()
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
        n = len(prompt)
        self.stats.reasoning_tokens += steps
        if self.params.requests_per_pair == "single":
            await self._run(steps, tokens=n)
        elif done:
            # Up to ``</think>``, then the answer token over the cached prefix.
            first = max(1, steps - 1)
            await self._run(first, tokens=n)
            self.stats.step_requests += 1
            await self._run(1, tokens=n + first, prefill=1)
        else:
            # The budget ends it: one step over all but the last token, for its logprobs.
            await self._run(steps, tokens=n)
            self.stats.last_position_requests += 1
            await self._run(1, tokens=n + steps - 1, prefill=1)
        return Generation(
            text=self._text[: self._ends[min(steps, len(self._ends) - 1)]],
            token_count=steps,
            last_top=self._answer(prompt) if done else None,
            stopped=done,
            finish_reason="stop" if done else "length",
        )

    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        """The forced pass: a follow-up of its pair's pass 1 (the prefix cached)."""
        self.stats.forced += 1
        await self._run(1, tokens=len(prompt), prefill=1)
        return self._answer(prompt)

    # -- the scheduler ------------------------------------------------------------------------
    def _new_stats(self) -> SimStats:
        return SimStats(self.params.slots, self.params.clock, self.params.kv_tokens)

    def reset_stats(self) -> SimStats:
        old, self.stats = self.stats, self._new_stats()
        return old

    def _now(self) -> float:
        if self.params.clock == "virtual":
            return self._vclock
        assert self._loop is not None
        return self._loop.time()

    async def _run(self, steps: int, *, tokens: int = 0, prefill: int | None = None) -> None:
        """One request: ``tokens`` held in the KV cache on admission, ``prefill`` of them
        computed then (default: all), ``steps`` tokens generated, one a step (queued until a
        slot and its tokens are free)."""
        kv = self.params.kv_tokens
        if kv is not None and tokens + steps > kv:
            raise ValueError(f"a request of {tokens + steps} tokens exceeds kv_tokens {kv}")
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
        self._queue.append(_Request(tokens, tokens if prefill is None else prefill, steps, fut))
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
        kv = p.kv_tokens
        running: dict[int, _Request] = {}  # by admission number: the newest is the last
        finish: list[tuple[int, int, _Request]] = []  # (finish step, admission number, request)
        order = itertools.count()
        step = 0
        held = 0  # KV tokens the running sequences hold
        assert self._wake is not None
        while True:
            if virtual:
                await self._settle(loop)
            stats = self.stats
            preempted = False
            # A running sequence needs one more token a step: preempt the newest until all fit.
            while kv is not None and running and held + len(running) > kv:
                _, r = running.popitem()
                done_steps = step - r.admitted
                held -= r.tokens + done_steps
                r.tokens += done_steps
                r.steps -= done_steps
                r.prefill = r.tokens  # recompute
                self._queue.appendleft(r)
                stats.preemptions += 1
                preempted = True
            admission_s = 0.0
            while not preempted and self._queue and len(running) < p.slots:
                r = self._queue[0]
                if r.fut.done():
                    self._queue.popleft()
                    continue
                if kv is not None and held + len(running) + r.tokens + 1 > kv:
                    break  # first come first served: the head waits for room
                self._queue.popleft()
                r.admitted = step
                k = next(order)
                running[k] = r
                heapq.heappush(finish, (step + r.steps, k, r))
                held += r.tokens
                admission_s += p.request_overhead_s + p.prefill_token_s * r.prefill
                stats.prefill_tokens += r.prefill
            while finish and running.get(finish[0][1]) is not finish[0][2]:
                heapq.heappop(finish)  # preempted: re-queued under a new admission number
            if not running:
                self._wake.clear()
                start = loop.time()
                await self._wake.wait()
                if not virtual:
                    now = loop.time()
                    stats.idle_s += now - max(start, stats.first_submit or now)
                continue
            active = len(running)
            step_time = p.step_base_s + p.step_per_seq_s * active
            if virtual:
                # Nothing can arrive before the next completion (the host is idle): jump to it,
                # or to the last step before the sequences outgrow the KV capacity.
                n = finish[0][0] - step
                if kv is not None:
                    n = min(n, (kv - held) // active)
                elapsed = n * step_time + admission_s
                self._vclock += elapsed
            else:
                n = 1
                start = loop.time()
                await asyncio.sleep(step_time + admission_s)
                elapsed = loop.time() - start
            stats.steps += n
            stats.step_s += elapsed
            stats.admission_s += admission_s
            stats.busy_slot_s += active * elapsed
            step += n
            held += active * n
            stats.peak_kv_tokens = max(stats.peak_kv_tokens, held)
            while finish and finish[0][0] <= step:
                _, k, r = heapq.heappop(finish)
                if running.get(k) is not r:
                    continue
                del running[k]
                held -= r.tokens + (step - r.admitted)
                if not r.fut.done():
                    r.fut.set_result(None)
                stats.last_done = self._now()
