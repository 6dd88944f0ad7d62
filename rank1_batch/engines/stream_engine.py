"""The stream engine: one request per pair, on one event loop for the engine's whole life.

A :class:`StreamEngine` takes one request at a time (vLLM's ``AsyncLLM``): the executor
(:mod:`rank1_batch.pipeline.stream`) keeps many pairs in flight and each runs
:meth:`StreamEngine.judge_one`, the shared Rank1 steps of :mod:`rank1_batch.engines.base` per
pair, so a pair's forced pass starts as soon as its pass 1 ends.

Its async methods run on the caller's loop, with no thread hop for the requests; a pair's
host work (tokenising, decoding) goes through :meth:`StreamEngine.off_loop` (vLLM's engine:
the loop's worker threads).
The synchronous adapters drive the engine on a loop of its own, in the calling thread. See
:class:`StreamEngine`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from rank1_batch.core import rank1
from rank1_batch.core.rows import JudgeRequest
from rank1_batch.engines.base import NO_GENERATION, Generation, Rank1Engine

T = TypeVar("T")


class StreamEngine(Rank1Engine):
    """An engine that takes one request at a time (vLLM's ``AsyncLLM``): the executor keeps
    many pairs in flight and each pair runs :meth:`judge_one`, so a pair's forced pass starts
    as soon as its pass 1 ends and nothing waits for the rest of a batch.

    Subclasses implement :meth:`generate_one` and :meth:`answer_one`.

    **One event loop per engine.** The async methods run on the caller's event loop, with no
    thread hop: in production the Ray actor's loop (Ray Data runs every ``async __call__`` of
    an actor on one loop), in tests an ``asyncio.run``. The first loop that drives an engine
    owns it for the engine's life (:meth:`bind_loop`); a request from any other loop raises
    ``RuntimeError``. vLLM needs exactly that: ``AsyncLLM`` starts its output handler task (and
    its engine-core client's socket reader) on the loop it first runs on, and every request's
    output queue is fed by that task. The synchronous adapters (``generate``, ``answer``,
    ``judge``, ``judge_direct``: ``process_shard``, ``plan``, the local loop, the engine
    contract suite) run the async methods on a loop of the engine's own, in the calling thread
    (``run_until_complete``), made on first use; so an engine is driven either through its
    async methods (by one caller's loop) or through its adapters (by its own loop), never
    both. :meth:`close` cancels what is left on its own loop and closes that loop.
    """

    max_in_flight: int = 256
    """Sequences the engine runs at once (vLLM: ``max_num_seqs``)."""

    _bound_loop: asyncio.AbstractEventLoop | None = None  # the loop that drives this engine
    _own_loop: asyncio.AbstractEventLoop | None = None  # the synchronous adapters' loop

    @abc.abstractmethod
    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        """Pass 1 of one prompt: greedy, at most ``budget`` new tokens (≥ 1), ending where
        the reference's stop strings would; ``last_top`` the top logprobs at the last
        position, and no other logprobs kept."""

    @abc.abstractmethod
    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        """Forced pass of one prompt: one token restricted to the two answer ids."""

    async def judge_one(self, request: JudgeRequest) -> rank1.Judgement:
        """One pair through the shared protocol: fit, pass 1, its forced pass at once; the
        tokenizer work (fitting, the forced prompt) through :meth:`off_loop`."""
        self.bind_loop()
        fp = await self.off_loop(self.fit, request)
        if isinstance(fp, rank1.Judgement):
            return fp
        budget = self.budget(fp)
        gen = await self.generate_one(fp.token_ids, budget) if budget > 0 else NO_GENERATION
        done = self.after_pass1(fp, gen)
        if done is not None:
            return done
        forced = await self.off_loop(self.forced_prompt, fp, gen)
        return self.after_forced(fp, gen, await self.answer_one(forced))

    async def judge_direct_one(self, request: JudgeRequest) -> rank1.Judgement:
        """One pair without reasoning: fit, then its one-token answer pass."""
        self.bind_loop()
        fp = await self.off_loop(self.fit, request)
        if isinstance(fp, rank1.Judgement):
            return fp
        return self.after_direct(
            fp, await self.answer_one(await self.off_loop(self.direct_prompt, fp))
        )

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: a pair's host work (tokenising, decoding). Here it runs inline;
        an engine whose tokenizer may run in threads and whose loop must stay free runs it
        in a worker thread instead (vLLM: :meth:`VLLMEngine.off_loop
        <rank1_batch.engines.vllm_engine.VLLMEngine.off_loop>`)."""
        return fn(*args)

    # -- the engine's one loop ---------------------------------------------------------------
    def bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be the one that drives this engine (the first to
        call this): ``RuntimeError`` from any other."""
        loop = asyncio.get_running_loop()
        if self._bound_loop is None:
            self._bound_loop = loop
        elif self._bound_loop is not loop:
            raise RuntimeError(
                f"{self.name} engine: driven from a second event loop; an engine serves the "
                "loop that first drove it, for its whole life"
                + (" (that loop has ended)" if self._bound_loop.is_closed() else "")
            )
        return loop

    def run_sync(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the coroutine ``make()`` to its end on the engine's own loop, in this thread (the
        synchronous adapters); made only once the loop may run it."""
        return self._sync_loop().run_until_complete(make())

    def _sync_loop(self) -> asyncio.AbstractEventLoop:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                f"{self.name} engine: a synchronous method called on a running event loop; "
                "await its async methods (judge_one) there instead"
            )
        if self._own_loop is None:
            if self._bound_loop is not None:
                raise RuntimeError(
                    f"{self.name} engine: driven by a caller's event loop already; its "
                    "synchronous methods would drive it from a second one"
                )
            self._own_loop = asyncio.new_event_loop()
        if self._own_loop.is_closed():
            raise RuntimeError(f"{self.name} engine: closed")
        return self._own_loop

    def close_own_loop(self) -> None:
        """Cancel what is left on the engine's own loop and close it (not while it runs: a
        fatal error raised on it, the process about to exit)."""
        loop = self._own_loop
        if loop is None or loop.is_closed() or loop.is_running():
            return
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())  # off_loop's threads
        finally:
            loop.close()

    # -- synchronous adapters -------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        if len(prompts) != len(budgets):
            raise ValueError("prompts and budgets differ in length")

        async def one(prompt: Sequence[int], budget: int) -> Generation:
            self.bind_loop()
            return await self.generate_one(prompt, budget) if budget > 0 else NO_GENERATION

        return self.run_sync(
            lambda: _gather([one(p, b) for p, b in zip(prompts, budgets, strict=True)])
        )

    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        async def one(prompt: Sequence[int]) -> Mapping[int, float] | None:
            self.bind_loop()
            return await self.answer_one(prompt)

        return self.run_sync(lambda: _gather([one(p) for p in prompts]))

    def judge(self, requests: Sequence[JudgeRequest]) -> list[rank1.Judgement]:
        return self.run_sync(lambda: _gather([self.judge_one(r) for r in requests]))

    def judge_direct(self, requests: Sequence[JudgeRequest]) -> list[rank1.Judgement]:
        return self.run_sync(lambda: _gather([self.judge_direct_one(r) for r in requests]))

    def close(self) -> None:
        self.close_own_loop()


async def _gather(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result in order; on the first failure the others are cancelled (none is left
    running on a loop that stops once this returns), then it is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
