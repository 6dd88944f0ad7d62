"""The scoring actor of the Ray executor (:mod:`rank1_batch.pipeline.pool`).

An async callable class (``async def __call__``), the pattern Ray Data runs on one event loop
per actor and ``ray.data.llm`` uses for vLLM. The engine is built in the constructor, outside
any loop, and a stream engine (vLLM's ``AsyncLLM``) then runs on that one loop, the loop of
every ``__call__``, with no thread between (:mod:`rank1_batch.engines.stream_engine`): the
actor takes ``compute.shards_in_flight`` shards at once and each goes through
:class:`rank1_batch.pipeline.stream.ShardStreamer`, so the engine never drains between
shards. A batch engine (transformers) runs :func:`rank1_batch.pipeline.score.process_shard`
in a thread, one shard at a time.

Every exception of a shard attempt is caught, recorded (:mod:`rank1_batch.pipeline.attempts`,
cause ``own_error``) and returned as a failed row, so one shard never fails the others.
``compute.shard_timeout`` bounds the judging, never a commit once begun: the stream path
awaits a begun commit to its end, the batch path closes a :class:`CommitGate` first and ends
the process only if no commit had begun. So an attempt record never says failed for a shard
this attempt committed. A process told to stop (SIGTERM: Ray's handler exits through
``sys.exit``) records its attempts in flight as ``interrupted`` (not charged) on its way out.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from typing import Any

from rank1_batch.engines.factory import build_engine, model_path
from rank1_batch.engines.stream_engine import StreamEngine
from rank1_batch.io import commit, layout
from rank1_batch.io.store import OutputUnwritable, Store
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import attempts
from rank1_batch.pipeline.score import committed_marker, process_shard, worker_name
from rank1_batch.pipeline.stream import ShardStreamer

log = logging.getLogger(__name__)


class CommitGate:
    """Decides, once, between a commit beginning and its attempt being abandoned."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "judging"

    def begin(self) -> bool:
        """The worker thread, about to commit: may it (not when already abandoned)?"""
        with self._lock:
            if self._state == "closed":
                return False
            self._state = "committing"
            return True

    def close(self) -> bool:
        """The timeout: abandon the attempt unless its commit has begun (then False)."""
        with self._lock:
            if self._state == "committing":
                return False
            self._state = "closed"
            return True


class ShardWorker:
    """A Ray Data actor: loads one engine, then scores whole shards (batch_size=1)."""

    def __init__(self, spec: JobSpec, store: Store, threads: int, run: str = "") -> None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # engines without torch
            pass
        self.spec, self.store, self.run = spec, store, run
        # Resolved here, not on the driver: on a cluster the worker's node has its own copy.
        self.engine = build_engine(spec, model_path(spec))
        self.streamer = (
            ShardStreamer(self.engine, store, spec, max_requests=spec.compute.requests_in_flight)
            if isinstance(self.engine, StreamEngine)
            else None
        )
        self._batch_lock = asyncio.Lock()
        self._open: dict[str, str] = {}  # attempt -> shard, in flight here
        atexit.register(self._interrupted)

    def _interrupted(self) -> None:
        """On a normal process exit (SIGTERM, Ray ending the actor): attempts still in
        flight were stopped from outside; record them so, not charged."""
        for attempt, shard in list(self._open.items()):
            try:
                attempts.fail(self.store, shard, attempt, "interrupted", attempts.INTERRUPTED)
            except Exception as exc:  # the driver records it after the round
                log.warning("%s: could not record the interruption: %s", shard, exc)

    def _start(self, shard: str, attempt: str) -> None:
        attempts.start(self.store, shard, attempt, self.run, worker_name())
        self._open[attempt] = shard

    async def score(self, shard: str, attempt: str) -> commit.Marker:
        timeout = self.spec.compute.shard_timeout
        try:
            if self.streamer is not None:
                await asyncio.to_thread(self._start, shard, attempt)
                return await self.streamer.score_shard(shard, attempt, timeout)
            # A batch engine blocks: run it off the actor's event loop, one shard at a time
            # (an `engine: auto` actor that resolved to transformers may get several at once).
            async with self._batch_lock:
                await asyncio.to_thread(self._start, shard, attempt)
                return await self._score_batch(shard, attempt, timeout)
        finally:
            self._open.pop(attempt, None)

    async def _score_batch(self, shard: str, attempt: str, timeout: float | None) -> commit.Marker:
        gate = CommitGate()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                process_shard, shard, self.engine, self.store, self.spec, attempt, gate.begin
            )
        )
        await asyncio.wait({work}, timeout=timeout)
        if not work.done() and gate.close():
            # A thread cannot be stopped: record why, then end the process (Ray restarts
            # the actor; this task is not retried). Its commit can no longer begin.
            attempts.fail(self.store, shard, attempt, f"timed out after {timeout:g}s")
            log.error("%s: attempt %s timed out after %gs; exiting", shard, attempt, timeout)
            os._exit(1)
        return await work  # done, or its commit has begun: awaited to its end

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "pairs": [], "error": [], "fatal": []}
        for shard in map(str, batch["shard"]):
            attempt = layout.new_attempt_id()
            try:
                marker = await self.score(shard, attempt)
            except OutputUnwritable as exc:  # no shard can commit: the driver ends the job
                out["shard"].append(shard)
                out["pairs"].append(0)
                out["error"].append(f"{type(exc).__name__}: {exc}")
                out["fatal"].append(str(exc))
                continue
            except Exception as exc:  # one shard's failure is that shard's, not the job's
                error = (
                    f"timed out after {self.spec.compute.shard_timeout:g}s"
                    if isinstance(exc, TimeoutError)
                    else f"{type(exc).__name__}: {exc}"
                )
                try:
                    recorded = await asyncio.to_thread(
                        attempts.fail, self.store, shard, attempt, error
                    )
                except Exception as record_exc:  # the driver records it after the round
                    log.warning("%s: could not record the failure: %s", shard, record_exc)
                    recorded = True
                if not recorded:  # its commit landed: the attempt succeeded after all
                    found = await asyncio.to_thread(committed_marker, shard, self.store)
                    assert found is not None
                    marker = found
                else:
                    log.warning("%s: attempt %s failed: %s", shard, attempt, error)
                    out["shard"].append(shard)
                    out["pairs"].append(0)
                    out["error"].append(error)
                    out["fatal"].append("")
                    continue
            out["shard"].append(marker.shard)
            out["pairs"].append(marker.rows)
            out["error"].append("")
            out["fatal"].append("")
        return out
