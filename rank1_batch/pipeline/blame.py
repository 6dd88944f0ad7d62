"""Blame: a failed attempt counts toward its shard's quarantine only when it is the shard's own.

With ``compute.shards_in_flight`` shards on one actor, a pair that kills the process (or a kill
from outside, a lost node) ends every attempt in flight there. Charging all of them would
quarantine healthy shards that merely shared an actor with a poison one, and on a preemptible
cluster infrastructure would quarantine healthy work. The rule:

* An attempt that raised (its own pair, its data, its timeout) is ``own_error``: charged.
* An attempt that ended without a result (:func:`close_round`, after each round, for the
  attempts this run started, in the records read in one listing) is classified from its
  start record's ``worker`` (``host:pid:node``): its node no longer alive in Ray
  (``ray.nodes()``) is ``node_lost``; other attempts of the same process that also died in
  the round make it ``crash_shared``; otherwise it died alone there, ``crash_alone``:
  charged. Neither of the first two is.
* A process told to stop (SIGTERM from Ray or the cluster, the actor's exit hook in
  :mod:`rank1_batch.pipeline.pool`) records its attempts ``interrupted``; a round whose
  pool failed as a whole, ``round_failed``: neither is charged.
* A shard whose attempt died once (shared or alone) is scored from then on in isolation
  (:func:`isolated`): its own actor pool with one shard per actor, where a crash is alone and
  so charged. The co-tenants of a poison shard commit there; the poison shard is found and,
  after ``compute.max_shard_attempts`` crashes alone, quarantined.

What this cannot tell apart: a process killed from outside (SIGKILL, an OOM killer choosing it
for another process's memory) while one attempt alone ran there is charged like a crash of
that shard; a healthy shard needs ``max_shard_attempts`` such kills to be quarantined.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Any

from rank1_batch.io.store import Store
from rank1_batch.pipeline import attempts

log = logging.getLogger(__name__)

DIED_CAUSES = frozenset({attempts.CRASH_ALONE, attempts.CRASH_SHARED})


def alive_nodes() -> set[str] | None:
    """Ids of the Ray nodes alive now; None outside Ray (nothing to tell)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return {str(n["NodeID"]) for n in ray.nodes() if n.get("Alive")}


def cause_of_death(
    record: dict[str, Any], dead_per_worker: Counter[str], alive: set[str] | None
) -> str:
    """The cause of an attempt that ended without a result (see the module docstring)."""
    worker = str(record.get("worker", ""))
    node = worker.split(":")[2] if worker.count(":") >= 2 else ""
    if node and alive is not None and not any(n.startswith(node) for n in alive):
        return attempts.NODE_LOST
    if dead_per_worker[worker] > 1:
        return attempts.CRASH_SHARED
    return attempts.CRASH_ALONE


def close_round(
    store: Store, records: dict[str, list[dict[str, Any]]], run: str, reason: str = attempts.DIED
) -> int:
    """Record the cause of this run's attempts that never ended, of the (uncommitted) shards
    of ``records`` (:func:`attempts.records_of`: read once for the round; the records written
    here are updated in it); ``reason`` other than :data:`attempts.DIED`: the pool failed as
    a whole. Return how many were charged."""
    dead = {s: attempts.unfinished(rs, run) for s, rs in records.items()}
    per_worker = Counter(str(r.get("worker", "")) for rs in dead.values() for r in rs)
    alive = alive_nodes() if any(dead.values()) else None
    charged = 0
    for shard, rs in dead.items():
        for r in rs:
            if reason != attempts.DIED:
                cause = attempts.ROUND_FAILED
            else:
                cause = cause_of_death(r, per_worker, alive)
            if attempts.fail(store, shard, r["attempt"], reason, cause, record=r):
                charged += cause in attempts.CHARGED
                log.info("%s: attempt %s ended without a result: %s", shard, r["attempt"], cause)
    return charged


def isolated(records: list[dict[str, Any]]) -> bool:
    """Whether a shard is scored alone on its actor: one of its attempts (its ``records``)
    died there."""
    return any(r.get("cause") in DIED_CAUSES for r in records)
