"""Shards in, a stream of requests out: the scheduling code of the streaming engine.

A shard stays the unit of commit and recovery, never the unit the engine waits on. The
:class:`ShardStreamer` judges every pair of a shard as its own request
(:meth:`~rank1_batch.engines.base.StreamEngine.judge_one`: pass 1, then that pair's forced
pass at once), several shards at a time, all sharing one cap on requests in flight. The cap
sits a little above what the engine runs at once (``max_in_flight``, vLLM's ``max_num_seqs``),
as ``ray.data.llm`` does, so the engine always has queued work while one shard's last pairs
finish and the next shard's first pairs start. A shard commits through the one commit body
(:func:`rank1_batch.pipeline.score.commit_shard`) when its last pair is judged; storage I/O
runs in a thread so the event loop keeps feeding the engine meanwhile.

The cap is an ``asyncio.Semaphore`` (FIFO): pairs of the shard that started first are served
first, so shards finish roughly in the order they started instead of all at the end.

Shards are opened on demand: of the ``shards_in_flight`` shards the actor may hold, a new one
is read and queued only when fewer than ``max_requests`` requests of the open shards are still
waiting for a slot. With long-tailed reasoning a shard stays open for its slowest pair long
after its bulk is done; the next shards keep the engine full meanwhile (small shards need
several open at once, large ones two), and a shard is never read before the engine needs it.

Memory per actor holds the judgements of the shards in flight (scalars and reasoning text)
and the engine's requests in flight; no per-token logprobs are kept anywhere.

The Ray actor (:class:`rank1_batch.executor.ray_pool.ShardWorker`) calls
:meth:`ShardStreamer.score_shard` from its async ``__call__``, one call per shard, with
``compute.shards_in_flight`` calls at once; :func:`score_shards` is the same thing without
Ray, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from rank1_batch import cascade, commit, rank1
from rank1_batch.engines.base import JudgeRequest, StreamEngine
from rank1_batch.pipeline.score import commit_shard, committed_marker, read_work, requests_for
from rank1_batch.spec import JobSpec
from rank1_batch.storage import Store

# Requests in flight per engine slot: a little queued work so no slot idles between requests.
HEADROOM = 1.1


def default_max_requests(max_in_flight: int) -> int:
    return max(1, math.ceil(max_in_flight * HEADROOM))


class ShardStreamer:
    """Scores whole shards on one :class:`StreamEngine`, pairs streamed to it one by one."""

    def __init__(
        self,
        engine: StreamEngine,
        store: Store,
        spec: JobSpec,
        *,
        max_requests: int | None = None,
    ) -> None:
        if max_requests is not None and max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, not {max_requests}")
        self.engine, self.store, self.spec = engine, store, spec
        self.max_requests = max_requests or default_max_requests(engine.max_in_flight)
        self._state: _LoopState | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.waiting = 0  # requests of open shards not yet holding a slot
        self.open_shards = 0
        self.peak_open_shards = 0

    def _loop_state(self) -> _LoopState:
        """Cap and admission, one set per event loop (a Ray actor has one; each
        ``asyncio.run`` makes a new one)."""
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop, self.max_requests)
        return self._state

    async def _judge(
        self,
        state: _LoopState,
        judge: Callable[[JudgeRequest], Awaitable[rank1.Judgement]],
        request: JudgeRequest,
    ) -> rank1.Judgement:
        queued = True
        try:
            async with state.slots:
                queued = False
                self.waiting -= 1
                state.changed.set()
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    return await judge(request)
                finally:
                    self.in_flight -= 1
        finally:
            if queued:  # cancelled before it got a slot (a sibling failed)
                self.waiting -= 1
                state.changed.set()

    async def _admit(self, state: _LoopState) -> None:
        """Wait until the queued requests of the open shards fall below the cap: a new shard
        is opened only when the engine is about to run out of queued work, so shards whose
        stragglers are still running do not stop it, and no shard is read before it is
        needed."""
        while self.waiting >= self.max_requests:
            state.changed.clear()
            await state.changed.wait()

    async def _judge_all(
        self,
        state: _LoopState,
        judge: Callable[[JudgeRequest], Awaitable[rank1.Judgement]],
        requests: Sequence[JudgeRequest],
    ) -> list[rank1.Judgement]:
        # A TaskGroup: if one pair raises (an engine failure), its siblings are cancelled
        # and the shard fails as a whole; Ray retries it. What one pair causes is a row.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._judge(state, judge, r)) for r in requests]
        return [t.result() for t in tasks]

    async def judge_pairs(
        self, state: _LoopState, requests: Sequence[JudgeRequest], query_ids: Sequence[str]
    ) -> list[rank1.Judgement]:
        """The streaming twin of :meth:`Rank1Engine.judge_pairs`: the same plan
        (:mod:`rank1_batch.cascade`), each pass's pairs streamed one request at a time.
        ``requests`` are already counted as waiting (admission); a cascade's second pass
        adds its own."""
        mode = self.spec.reasoning_mode
        direct = None
        if mode.mode != rank1.THINK:
            direct = await self._judge_all(state, self.engine.judge_direct_one, requests)
        chosen = cascade.plan(mode.mode, query_ids, direct, top_k=mode.top_k, margin=mode.margin)
        if direct is not None:
            self.waiting += len(chosen)
        todo = [requests[i] for i in chosen]
        reasoned = await self._judge_all(state, self.engine.judge_one, todo)
        return cascade.finish(len(requests), direct, dict(zip(chosen, reasoned, strict=True)))

    async def score_shard(self, shard: str, attempt: str = "") -> commit.Marker:
        """Judge every pair of ``shard`` and commit it; the existing marker if already done."""
        done = await asyncio.to_thread(committed_marker, shard, self.store)
        if done is not None:
            return done
        state = self._loop_state()
        async with state.admission:  # one shard admitted at a time, in arrival order
            await self._admit(state)
            start = time.perf_counter()
            work = await asyncio.to_thread(read_work, shard, self.store, self.spec, self.engine)
            requests = requests_for(work.to_judge, self.spec)
            self.waiting += len(requests)
        self.open_shards += 1
        self.peak_open_shards = max(self.peak_open_shards, self.open_shards)
        try:
            query_ids = work.to_judge.column("query_id").to_pylist()
            judgements = await self.judge_pairs(state, requests, query_ids)
        finally:
            self.open_shards -= 1
        seconds = time.perf_counter() - start
        return await asyncio.to_thread(
            commit_shard,
            shard,
            work,
            judgements,
            self.engine,
            self.store,
            self.spec,
            seconds,
            attempt,
        )


class _LoopState:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_requests: int) -> None:
        self.loop = loop
        self.slots = asyncio.Semaphore(max_requests)
        self.admission = asyncio.Lock()
        self.changed = asyncio.Event()


async def score_shards(
    streamer: ShardStreamer, shards: Iterable[str], shards_in_flight: int
) -> list[commit.Marker]:
    """Score ``shards`` with ``shards_in_flight`` of them going at once; markers in shard
    order. The local twin of the Ray actor's concurrency (``max_concurrency``)."""
    if shards_in_flight < 1:
        raise ValueError(f"shards_in_flight must be at least 1, not {shards_in_flight}")
    gate = asyncio.Semaphore(shards_in_flight)

    async def one(shard: str) -> commit.Marker:
        async with gate:
            return await streamer.score_shard(shard)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(s)) for s in shards]
    return [t.result() for t in tasks]
