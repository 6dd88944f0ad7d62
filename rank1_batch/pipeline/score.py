"""Stage 2: score shards. ``process_shard`` is the whole unit of work.

The Ray executor (an actor pool over pending shards, one engine per actor) and plain tests call
the same function. A shard is committed by one attempt as a whole: write scores and traces
under names unique to the attempt (create-only), then create ``_commits/<shard>.json``
exclusively, naming those two files and their checksums. An attempt that finds the marker
already there does nothing more; one that loses the marker race removes its own files.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from rank1_batch.core import modes, rank1
from rank1_batch.core.rows import ranks_within_query, requests_for
from rank1_batch.core.schemas import SCORES_SCHEMA, TRACES_SCHEMA
from rank1_batch.engines.base import JudgeRequest, Rank1Engine
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import metrics, reuse
from rank1_batch.pipeline.judged import JudgedRows

log = logging.getLogger(__name__)
# Traces row groups: the text one group holds (UTF-8), and a row cap for tiny traces.
TRACE_GROUP_BYTES = 1 << 20
TRACE_GROUP_ROWS = 16_384


class Judge(Protocol):
    """What a committed scores file records about who judged its rows: every
    :class:`~rank1_batch.engines.base.Rank1Engine` is one; so is the model a job names, for
    rows no engine judged (:class:`rank1_batch.pipeline.attempts.NamedModel`)."""

    @property
    def model_id(self) -> str: ...

    @property
    def model_revision(self) -> str: ...


def scores_table(pairs: pa.Table, rows: JudgedRows, engine: Judge, prompt_id: str) -> pa.Table:
    """The scores of ``pairs`` (aligned with ``rows``): scalars only, built in memory."""
    qids = pairs.column("query_id").to_pylist()
    dids = pairs.column("doc_id").to_pylist()
    scores = rows.score.tolist()
    n = len(qids)
    return pa.table(
        {
            "query_id": qids,
            "doc_id": dids,
            "score": scores,
            "logit": rows.logit.tolist(),
            "status": rows.status,
            "error": rows.error,
            "prompt_tokens": rows.prompt_tokens.tolist(),
            "reasoning_tokens": rows.reasoning_tokens.tolist(),
            "truncated": [bool(t) for t in rows.truncated],
            "rank": ranks_within_query(qids, dids, scores),
            "model": [engine.model_id] * n,
            "model_revision": [engine.model_revision] * n,
            "prompt_id": [prompt_id] * n,
            "score_direct": rows.score_direct,
            "score_reasoned": rows.score_reasoned,
            "decided_by": rows.decided_by,
            # Engine.name; a judge without one (a named model, a test double) leaves it null.
            "engine": [getattr(engine, "name", None)] * n,
        },
        schema=SCORES_SCHEMA,
    )


def traces_skeleton(pairs: pa.Table, rows: JudgedRows) -> pa.Table:
    """The traces of ``pairs`` without their text (empty ``reasoning``; it stays spilled
    until :func:`traces_bytes` reads it back, a row group at a time)."""
    return pa.table(
        {
            "query_id": pairs.column("query_id"),
            "doc_id": pairs.column("doc_id"),
            "reasoning": pa.array([""] * rows.n, pa.large_string()),
            "finish_reason": rows.finish_reason,
        },
        schema=TRACES_SCHEMA,
    )


def traces_bytes(
    skeleton: pa.Table, rows: JudgedRows, judged: Sequence[bool] | None = None
) -> bytes:
    """The traces file (Parquet bytes): ``skeleton``'s rows in order, each judged row's
    reasoning read back from ``rows`` (the k-th judged row is ``rows``' pair k), the
    others (copied by ``reuse:``) keeping the skeleton's text; ``judged=None``: every row is
    judged. A row group closes once it holds :data:`TRACE_GROUP_BYTES` of text or
    :data:`TRACE_GROUP_ROWS` rows, so at most one group's text is in memory. Group bounds
    depend only on the texts, so equal judgements give equal bytes; a file of one group is
    byte-identical to ``pq.write_table`` of the whole table."""
    n = skeleton.num_rows
    copied_text = skeleton.column("reasoning")
    field = TRACES_SCHEMA.get_field_index("reasoning")
    k = 0
    start = 0
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, TRACES_SCHEMA, compression="zstd") as writer:
        while True:
            texts: list[str] = []
            size = 0
            stop = start
            while stop < n and size < TRACE_GROUP_BYTES and stop - start < TRACE_GROUP_ROWS:
                if judged is None or judged[stop]:
                    texts.append(rows.reasoning(k))
                    size += rows.reasoning_size(k)
                    k += 1
                else:
                    text = copied_text[stop].as_py() or ""
                    texts.append(text)
                    size += len(text.encode("utf-8", "surrogatepass"))
                stop += 1
            group = skeleton.slice(start, stop - start)
            writer.write_table(
                group.set_column(field, "reasoning", pa.array(texts, pa.large_string()))
            )
            start = stop
            if start >= n:
                break
    if k != rows.n:
        raise RuntimeError(f"traces: {k} judged rows written, {rows.n} judged")
    return sink.getvalue()


def _verify(data: bytes, rows: int, what: str) -> None:
    n = pq.read_metadata(io.BytesIO(data)).num_rows
    if n != rows:
        raise RuntimeError(f"{what}: file holds {n} rows, expected {rows}")


def worker_name() -> str:
    """``host:pid``, plus the Ray node id when running inside Ray (which node scored what)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        name += f":{ray.get_runtime_context().get_node_id()[:12]}"
    return name


def committed_marker(shard: str, store: Store) -> commit.Marker | None:
    """The shard's marker if some attempt already committed it."""
    if store.exists(layout.marker_path(shard)):
        return commit.read_marker(store, shard)  # a corrupt one: CommitError naming the repair
    return None


def read_pairs(shard: str, store: Store) -> pa.Table:
    return store.read_parquet(layout.pairs_path(shard))


@dataclass(frozen=True)
class ShardWork:
    """A shard read for scoring: every pair, the pairs the engine must judge, and the rows
    copied from earlier outputs (``reuse:``; empty without it)."""

    pairs: pa.Table
    to_judge: pa.Table
    copied: pa.Table

    def ids_only(self) -> ShardWork:
        """The same shard with only the pairs' ids: all the commit body reads of them (no
        query or passage texts held while the shard's last pairs run)."""
        ids = ["query_id", "doc_id"]
        return ShardWork(self.pairs.select(ids), self.to_judge.select(ids), self.copied)


def read_work(shard: str, store: Store, spec: JobSpec, engine: Rank1Engine) -> ShardWork:
    """Read a shard's pairs and split off the rows reuse copies (:mod:`.reuse`)."""
    pairs = read_pairs(shard, store)
    reused = reuse.read_reused(store, shard, spec)
    to_judge, copied = reuse.split_reused(pairs, reused, engine.model_revision)
    return ShardWork(pairs, to_judge, copied)


def commit_shard(
    shard: str,
    work: ShardWork,
    judgements: JudgedRows | Sequence[rank1.Judgement],
    engine: Judge,
    store: Store,
    spec: JobSpec,
    seconds: float,
    attempt: str = "",
) -> commit.Marker:
    """The one commit body: write this attempt's scores and traces under its own names,
    create the marker exclusively; return the marker that holds (another attempt's, if one
    won). ``judgements`` are aligned with ``work.to_judge``: the streamer's
    :class:`~rank1_batch.pipeline.judged.JudgedRows`, or a list (spilled here, so both
    paths write the same bytes); copied rows are merged in, in ``work.pairs`` order.

    Memory: the scores (scalars) are built whole; the traces file is built a row group at
    a time from the spilled text (:func:`traces_bytes`), so a shard's reasoning is never
    in memory at once, only its compressed file (which the single create-only PUT sends
    whole anyway)."""
    if isinstance(judgements, JudgedRows):
        return _commit(shard, work, judgements, engine, store, spec, seconds, attempt)
    with JudgedRows.of(judgements, len(judgements)) as rows:
        return _commit(shard, work, rows, engine, store, spec, seconds, attempt)


def _commit(
    shard: str,
    work: ShardWork,
    rows: JudgedRows,
    engine: Judge,
    store: Store,
    spec: JobSpec,
    seconds: float,
    attempt: str,
) -> commit.Marker:
    began = time.perf_counter()
    attempt = attempt or layout.new_attempt_id()
    pairs = work.pairs
    if rows.n != work.to_judge.num_rows:
        raise RuntimeError(f"{shard}: {rows.n} judgements for {work.to_judge.num_rows} pairs")
    stats = rows.stats(seconds) + reuse.copied_stats(work.copied)
    scores = scores_table(work.to_judge, rows, engine, spec.prompt_id)
    traces = traces_skeleton(work.to_judge, rows)
    judged = None
    if work.copied.num_rows:
        scores, traces = reuse.merge_results(
            pairs, scores, traces, work.copied, model=engine.model_id,
            model_revision=engine.model_revision, prompt_id=spec.prompt_id,
        )  # fmt: skip
        judged = scores.column("reused_from").is_null().to_pylist()
    files = {
        layout.scores_path(shard, attempt): parquet_bytes(scores),
        layout.traces_path(shard, attempt): traces_bytes(traces, rows, judged),
    }
    del scores, traces
    for rel, data in files.items():
        _verify(data, pairs.num_rows, rel)
        if not store.create_exclusive(rel, data):
            raise RuntimeError(f"{store.uri}: {rel} exists: attempt {attempt} is not unique")
    (_, scores_data), (_, traces_data) = files.items()
    marker = commit.Marker.of_attempt(
        shard, attempt, stats, rows=pairs.num_rows, scores=scores_data, traces=traces_data,
        worker=worker_name(),
    )  # fmt: skip
    if not store.create_json(layout.marker_path(shard), marker.to_dict()):
        log.info("%s: already committed by another attempt; discarding attempt %s", shard, attempt)
        for rel in files:
            try:
                store.remove(rel)
            except Exception as exc:  # finalize removes what is left
                log.warning("%s: could not remove %s: %s", store.uri, rel, exc)
        return commit.read_marker(store, shard)
    metrics.shard_committed(spec.name, time.perf_counter() - began)
    return marker


def judge_shard(
    engine: Rank1Engine, requests: list[JudgeRequest], query_ids: list[str], spec: JobSpec
) -> list[rank1.Judgement]:
    """A shard's judgements under ``reasoning.mode``. ``think`` is the reference protocol
    over every pair (``engine.judge``, all any engine must have); the other modes plan a
    direct pass and reasoning through the shared ``judge_pairs``."""
    mode = spec.reasoning_mode
    if mode.mode == rank1.THINK:
        return modes.finish(len(requests), None, dict(enumerate(engine.judge(requests))))
    return engine.judge_pairs(requests, query_ids, mode)


def process_shard(
    shard: str,
    engine: Rank1Engine,
    store: Store,
    spec: JobSpec,
    attempt: str = "",
    may_commit: Callable[[], bool] | None = None,
) -> commit.Marker:
    """Score one shard and commit it; return its marker (the existing one if already done).

    The synchronous unit of work (batch engines; stream engines through their sync adapter).
    :class:`rank1_batch.pipeline.stream.ShardStreamer` is its streaming twin: same read, same
    commit body, pairs judged one request at a time with several shards in flight.
    """
    done = committed_marker(shard, store)
    if done is not None:
        return done
    start = time.perf_counter()
    work = read_work(shard, store, spec, engine)
    # A shard copied whole from earlier outputs never reaches the engine.
    requests = requests_for(work.to_judge, spec.reasoning)
    query_ids = work.to_judge.column("query_id").to_pylist()
    judgements = judge_shard(engine, requests, query_ids, spec) if requests else []
    metrics.judged(spec.name, judgements)
    seconds = time.perf_counter() - start
    if may_commit is not None and not may_commit():  # the attempt was abandoned (timed out)
        raise TimeoutError(f"{shard}: attempt {attempt} abandoned before its commit")
    return commit_shard(shard, work, judgements, engine, store, spec, seconds, attempt)
