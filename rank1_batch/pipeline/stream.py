"""Shards in, a stream of requests out: the streaming engine's executor.

A shard stays the unit of commit and recovery, never the unit the engine waits on. The
:class:`ShardStreamer` judges every pair of a shard as its own request
(:meth:`~rank1_batch.engines.stream_engine.StreamEngine.judge_one`: pass 1, then that pair's
forced pass at once), and several shards at a time: the Ray actor
(:class:`rank1_batch.pipeline.pool.ShardWorker`) runs ``compute.shards_in_flight`` calls of
:meth:`ShardStreamer.score_shard` at once on its event loop (Ray Data's actor concurrency);
:func:`score_shards` is the same without Ray, for tests and benchmarks.

Admission is one bound, as in ``ray.data.llm``: an ``asyncio.Semaphore`` of ``max_requests``
slots, a little above what the engine runs at once (``max_in_flight``, vLLM's
``max_num_seqs``), shared by every shard in flight. A request holds a slot from the moment it
is made until its judgement is put away, so the engine always has queued work while one
shard's last pairs finish and the next shard's first pairs start. A shard commits through the
one commit body (:func:`rank1_batch.pipeline.score.commit_shard`) when its last pair is judged;
storage I/O runs in a thread so the event loop keeps feeding the engine meanwhile.

The bound is all the scheduling there is. Its waiters are served in turn, so the shards in
flight share the slots round robin and tend to finish together. Measured on a simulated
256-slot engine (``benchmarks/drain_cases.py``), that keeps the engine 0.976 / 0.988 / 0.994
as busy as a never-draining one at the default ``shards_in_flight`` 8 with 500 / 2,000 /
8,000-pair shards, the target being 0.95; the scheduler it replaced (slots to the oldest
shard first, shards opened when the queue ran short) got 1.00 at each. With fewer shards in
flight the difference grows (3 shards of 2,000 pairs: 0.93 against 1.00): raise
``shards_in_flight`` rather than order the requests.

Memory does not grow with the reasoning budget, nor with the shard size beyond the shards'
input tables. A pair's request (prompt, task) is made only when it takes a slot; each finished
judgement goes at once into the shard's :class:`~rank1_batch.pipeline.judged.JudgedRows`
(scalars in memory, reasoning text in a node-local spill file); once a shard's last request
is made its query and passage texts are dropped, leaving its ids for the commit. So an actor
holds the requests in flight, the input tables of the shards still making requests, and
about 100 bytes a pair of open shards; no per-token logprobs anywhere.

``compute.shard_timeout`` bounds a shard's reading, its waits for slots and its judging,
never its commit: once the commit thread has begun it runs to its end (:func:`run_to_end`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import pyarrow as pa

from rank1_batch.core import modes, rank1
from rank1_batch.core.rows import JudgeRequest, requests_for
from rank1_batch.engines.stream_engine import StreamEngine
from rank1_batch.io import commit
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import metrics
from rank1_batch.pipeline.judged import JudgedRows
from rank1_batch.pipeline.score import commit_shard, committed_marker, read_work

# Requests in flight per engine slot: a little queued work so no slot idles between requests.
HEADROOM = 1.1

T = TypeVar("T")


def default_max_requests(max_in_flight: int) -> int:
    return max(1, math.ceil(max_in_flight * HEADROOM))


class ShardStreamer:
    """Scores whole shards on one stream engine, pairs streamed to it one by one; serves the
    engine's event loop (the first that drives it)."""

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
        self._slots: asyncio.Semaphore | None = None  # made on the loop, at first use
        self.in_flight = 0
        self.peak_in_flight = 0
        self.open_shards = 0
        self.peak_open_shards = 0

    async def _stream(
        self,
        judge: Callable[[JudgeRequest], Awaitable[rank1.Judgement]],
        requests: _Requests,
        indices: Sequence[int],
        done: Callable[[int, rank1.Judgement], None],
        *,
        last: bool,
    ) -> None:
        """Judge ``requests[i]`` for each ``i`` of ``indices``, handing each judgement to
        ``done(i, judgement)`` as it completes. Each request is made, and its task created,
        only once it holds a slot. ``last``: the shard's last pass, after whose last request
        its query and passage texts are dropped (its stragglers may run for minutes yet)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_requests)
        slots = self._slots
        # A TaskGroup: if one pair raises (an engine failure), its siblings are cancelled
        # and the shard fails as a whole; Ray retries it. What one pair causes is a row.
        async with asyncio.TaskGroup() as group:
            for i in indices:
                await slots.acquire()
                try:
                    request = requests[i]
                except BaseException:
                    slots.release()
                    raise
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                metrics.in_flight(self.spec.name, self.in_flight)
                task = group.create_task(self._one(judge, request, i, done))
                # A callback, not a ``finally`` in the task: a task cancelled before it
                # first runs never enters its body.
                task.add_done_callback(self._release)
            if last:
                requests.close()

    @staticmethod
    async def _one(
        judge: Callable[[JudgeRequest], Awaitable[rank1.Judgement]],
        request: JudgeRequest,
        i: int,
        done: Callable[[int, rank1.Judgement], None],
    ) -> None:
        done(i, await judge(request))

    def _release(self, _task: asyncio.Task[None]) -> None:
        self.in_flight -= 1
        metrics.in_flight(self.spec.name, self.in_flight)
        assert self._slots is not None
        self._slots.release()

    async def judge_pairs(self, requests: _Requests, query_ids: pa.Array, rows: JudgedRows) -> None:
        """The streaming twin of :meth:`Rank1Engine.judge_pairs`: the same plan
        (:mod:`rank1_batch.core.modes`), each pass's pairs streamed one request at a time, each
        final judgement put into ``rows`` (spilled) the moment it exists."""
        mode = self.spec.reasoning_mode
        n = len(requests)

        def put(i: int, j: rank1.Judgement) -> None:
            rows.put(i, j)
            metrics.judged(self.spec.name, (j,))

        if mode.mode == rank1.THINK:

            def reasoned_only(i: int, j: rank1.Judgement) -> None:
                put(i, modes.combine(None, j))

            await self._stream(self.engine.judge_one, requests, range(n), reasoned_only, last=True)
            return
        # The direct pass's judgements carry no reasoning: a shard's worth stays in memory
        # until the plan has chosen which pairs to reason about.
        direct: list[rank1.Judgement] = [_PENDING] * n
        await self._stream(
            self.engine.judge_direct_one, requests, range(n), direct.__setitem__, last=False
        )
        chosen = modes.reasoned_pairs(
            mode.mode, query_ids.to_pylist(), direct, top_k=mode.top_k, margin=mode.margin
        )
        picked = set(chosen)
        for i in range(n):
            if i not in picked:
                put(i, modes.combine(direct[i], None))

        def both(i: int, j: rank1.Judgement) -> None:
            put(i, modes.combine(direct[i], j))

        await self._stream(self.engine.judge_one, requests, chosen, both, last=True)

    async def score_shard(
        self, shard: str, attempt: str = "", timeout: float | None = None
    ) -> commit.Marker:
        """Judge every pair of ``shard`` and commit it; the existing marker if already done.

        ``timeout`` bounds the reading, the waits for slots and the judging
        (``TimeoutError``), never the commit: once the commit thread has begun it runs to its
        end, even when this call is cancelled meanwhile (a thread cannot be stopped, and a
        marker landing after the attempt was recorded as failed would make the record lie).
        The cancellation is raised after it."""
        done = await asyncio.to_thread(committed_marker, shard, self.store)
        if done is not None:
            return done
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        start = time.perf_counter()
        async with asyncio.timeout_at(deadline):
            work = await asyncio.to_thread(read_work, shard, self.store, self.spec, self.engine)
        requests = _Requests(work.to_judge, self.spec)
        work = work.ids_only()  # what the commit reads; the texts live on in ``requests``
        self.open_shards += 1
        self.peak_open_shards = max(self.peak_open_shards, self.open_shards)
        # Closed whatever happens: a cancelled shard never starts its commit, and a commit
        # is awaited to its end before the rows close.
        with JudgedRows(work.to_judge.num_rows) as rows:
            try:
                async with asyncio.timeout_at(deadline):
                    await self.judge_pairs(requests, work.to_judge.column("query_id"), rows)
                del requests
            finally:
                self.open_shards -= 1
            seconds = time.perf_counter() - start
            return await run_to_end(
                asyncio.to_thread(
                    commit_shard,
                    shard,
                    work,
                    rows,
                    self.engine,
                    self.store,
                    self.spec,
                    seconds,
                    attempt,
                )
            )


async def run_to_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile; then re-raise the
    cancellation (the commit of a shard whose attempt timed out or was cancelled late)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled: nothing more to wait for
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


_PENDING = rank1.Judgement(math.nan, math.nan, "pending")


class _Requests:
    """The :class:`JudgeRequest` of each row of ``pairs``, built on demand a block of rows
    at a time (a pass walks its indices in ascending order), so a shard's prompts are never
    all in memory at once."""

    BLOCK = 256

    def __init__(self, pairs: pa.Table, spec: JobSpec) -> None:
        self.pairs: pa.Table | None = pairs
        self.spec = spec
        self.n = pairs.num_rows
        self._first = -1
        self._block: list[JudgeRequest] = []

    def __len__(self) -> int:
        return self.n

    def close(self) -> None:
        """Drop the table (its query and passage texts): every request has been made."""
        self.pairs, self._block, self._first = None, [], -1

    def __getitem__(self, i: int) -> JudgeRequest:
        if self.pairs is None:
            raise RuntimeError("the shard's requests were all made already")
        first = i - i % self.BLOCK
        if first != self._first:
            self._block = requests_for(self.pairs.slice(first, self.BLOCK), self.spec.reasoning)
            self._first = first
        return self._block[i - first]


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
