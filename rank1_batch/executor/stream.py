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
from rank1_batch.pipeline.score import commit_shard, committed_marker, read_pairs, requests_for
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
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.in_flight = 0
        self.peak_in_flight = 0

    def _semaphore(self) -> asyncio.Semaphore:
        """One cap per event loop (a Ray actor has one; each ``asyncio.run`` makes a new one)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:
            self._slots, self._loop = asyncio.Semaphore(self.max_requests), loop
        return self._slots

    async def _judge(
        self,
        slots: asyncio.Semaphore,
        judge: Callable[[JudgeRequest], Awaitable[rank1.Judgement]],
        request: JudgeRequest,
    ) -> rank1.Judgement:
        async with slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await judge(request)
            finally:
                self.in_flight -= 1

    async def _judge_all(
        self,
        judge: Callable[[JudgeRequest], Awaitable[rank1.Judgement]],
        requests: Sequence[JudgeRequest],
    ) -> list[rank1.Judgement]:
        slots = self._semaphore()
        # A TaskGroup: if one pair raises (an engine failure), its siblings are cancelled and
        # the shard fails as a whole; Ray retries it. Rows a pair can cause are error rows.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._judge(slots, judge, r)) for r in requests]
        return [t.result() for t in tasks]

    async def judge_pairs(
        self, requests: Sequence[JudgeRequest], query_ids: Sequence[str]
    ) -> list[rank1.Judgement]:
        """The streaming twin of :meth:`Rank1Engine.judge_pairs`: the same plan
        (:mod:`rank1_batch.cascade`), each pass's pairs streamed one request at a time."""
        mode = self.spec.reasoning_mode
        direct = None
        if mode.mode != rank1.THINK:
            direct = await self._judge_all(self.engine.judge_direct_one, requests)
        chosen = cascade.plan(mode.mode, query_ids, direct, top_k=mode.top_k, margin=mode.margin)
        reasoned = await self._judge_all(self.engine.judge_one, [requests[i] for i in chosen])
        return cascade.finish(len(requests), direct, dict(zip(chosen, reasoned, strict=True)))

    async def score_shard(self, shard: str) -> commit.Marker:
        """Judge every pair of ``shard`` and commit it; the existing marker if already done."""
        done = await asyncio.to_thread(committed_marker, shard, self.store)
        if done is not None:
            return done
        start = time.perf_counter()
        pairs = await asyncio.to_thread(read_pairs, shard, self.store)
        requests = requests_for(pairs, self.spec)
        judgements = await self.judge_pairs(requests, pairs.column("query_id").to_pylist())
        seconds = time.perf_counter() - start
        return await asyncio.to_thread(
            commit_shard, shard, pairs, judgements, self.engine, self.store, self.spec, seconds
        )


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
