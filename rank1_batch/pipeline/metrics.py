"""Live metrics of the scoring actors, through Ray's metrics API (``ray.util.metrics``).

This module owns the metric objects and their names; the few hooks sit where the numbers
already are: :func:`judged` where a final judgement is produced
(:func:`rank1_batch.pipeline.score.process_shard`, the streamer's
:meth:`~rank1_batch.pipeline.stream.ShardStreamer.judge_pairs`), :func:`in_flight` where
the streamer admits and finishes a request, :func:`shard_committed` where a shard's marker
is created (:func:`rank1_batch.pipeline.score.commit_shard`). Every series is tagged with the
job's ``name`` (``job_name``: Prometheus keeps ``job`` for its scrape target), pairs also
with their ``status``.

Ray exports them from each worker process through its node's metrics agent on the node's
metrics export port (``ray start --metrics-export-port``), where Prometheus scrapes (Ray
writes the targets to ``prom_metrics_service_discovery.json`` in its session folder). There
each name gets Ray's ``ray_`` prefix, and a counter Prometheus' ``_total`` suffix:
``ray_rank1_batch_pairs_judged_total``. The Grafana dashboard
``cluster/grafana-rank1-batch.json`` plots them, with vLLM's own running/waiting gauges.

A no-op unless Ray is initialised in this process: the local executor
(``compute.executor: local``) and plain tests record nothing, and nothing here imports Ray.
The objects are made once per process, on first use (``ray.util.metrics`` objects must be
made where Ray is initialised: in the actor, not on the driver that pickles it).
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rank1_batch.core import rank1

PAIRS_JUDGED = "rank1_batch_pairs_judged"
REASONING_TOKENS = "rank1_batch_reasoning_tokens"
REQUESTS_IN_FLIGHT = "rank1_batch_requests_in_flight"
SHARDS_COMMITTED = "rank1_batch_shards_committed"
COMMIT_SECONDS = "rank1_batch_commit_seconds"
NAMES = (PAIRS_JUDGED, REASONING_TOKENS, REQUESTS_IN_FLIGHT, SHARDS_COMMITTED, COMMIT_SECONDS)
# Commit latency buckets (seconds): a local-disk commit takes milliseconds, an S3 one
# seconds, a retried one up to minutes.
COMMIT_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
JOB = "job_name"
STATUS = "status"


@dataclass(frozen=True)
class _Metrics:
    pairs: Any
    tokens: Any
    in_flight: Any
    shards: Any
    commit_seconds: Any


_made: _Metrics | None = None
_lock = threading.Lock()


def _metrics() -> _Metrics | None:
    """This process's metric objects; None (record nothing) where Ray is not initialised.
    Called per request and per pair on the actor's loop: once made, taken without the lock."""
    global _made
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    if _made is not None:
        return _made
    with _lock:
        if _made is None:
            from ray.util.metrics import Counter as RayCounter
            from ray.util.metrics import Gauge, Histogram

            _made = _Metrics(
                pairs=RayCounter(PAIRS_JUDGED, "Pairs judged, by status.", tag_keys=(JOB, STATUS)),
                tokens=RayCounter(
                    REASONING_TOKENS, "Reasoning tokens of the pairs judged.", tag_keys=(JOB,)
                ),
                in_flight=Gauge(
                    REQUESTS_IN_FLIGHT,
                    "Engine requests in flight on this actor (stream engines).",
                    tag_keys=(JOB,),
                ),
                shards=RayCounter(
                    SHARDS_COMMITTED, "Shards committed (markers created).", tag_keys=(JOB,)
                ),
                commit_seconds=Histogram(
                    COMMIT_SECONDS,
                    "Seconds from a shard's last judgement to its marker: files and marker.",
                    boundaries=COMMIT_BUCKETS,
                    tag_keys=(JOB,),
                ),
            )
        return _made


def judged(job: str, judgements: Iterable[rank1.Judgement]) -> None:
    """Final judgements produced: count them by status, add their reasoning tokens."""
    m = _metrics()
    if m is None:
        return
    statuses: Counter[str] = Counter()
    tokens = 0
    for j in judgements:
        statuses[j.status] += 1
        tokens += j.reasoning_tokens
    for status, n in statuses.items():
        m.pairs.inc(n, tags={JOB: job, STATUS: status})
    if tokens > 0:  # Ray's counters refuse an increment of 0
        m.tokens.inc(tokens, tags={JOB: job})


def in_flight(job: str, n: int) -> None:
    """The engine requests this actor has in flight now."""
    m = _metrics()
    if m is not None:
        m.in_flight.set(n, tags={JOB: job})


def shard_committed(job: str, seconds: float) -> None:
    """A shard committed by this attempt (its marker created), in ``seconds``."""
    m = _metrics()
    if m is None:
        return
    m.shards.inc(1, tags={JOB: job})
    m.commit_seconds.observe(seconds, tags={JOB: job})
