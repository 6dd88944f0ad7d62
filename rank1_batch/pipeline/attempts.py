"""Bounded attempts: every attempt of a shard is recorded in the output folder.

``_attempts/<shard>/<attempt>.json`` is created (create-only) when an attempt starts and
rewritten with its ``error``, ``cause`` and ``charged`` when it fails; never for an attempt
whose commit marker landed after all (a committed shard is never recorded as failed). An
attempt whose process died (a crash, a kill, ``compute.shard_timeout`` on a batch engine)
cannot write its error: after each round the driver writes it for the attempts its own run
started, with the cause :mod:`rank1_batch.pipeline.blame` finds. Attempts of an earlier run
that never ended were cut short by that run's driver stopping (the whole Ray job goes with
it): they do not count. Only ``charged`` failures count (the shard's own: :data:`CHARGED`); a
shard with ``compute.max_shard_attempts`` of them is quarantined: the job ends naming it
(:class:`ShardQuarantined`, exit code 3), or with ``compute.on_shard_failure: error_rows``
its pairs are committed as ``error`` rows with code ``shard_failed``.

Listings: the driver reads the records of many shards at once (:func:`records_of`): one
recursive listing of ``_attempts/`` (on S3 a request a thousand records, one for a job that
has none), then reads of the records of the shards asked about that have any, never a
listing per shard; :func:`records` and :func:`failed` are the same read for one shard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rank1_batch.core import rank1
from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"
SHARD_FAILED = "shard_failed"
EXIT_QUARANTINED = 3
DIED = "the attempt ended without a result (its process died, was killed or timed out)"

# Causes of a failed attempt (the ``cause`` of its record).
OWN_ERROR = "own_error"  # the attempt raised (a pair, the shard's data, its timeout)
CRASH_ALONE = "crash_alone"  # its process died while it was the only attempt there
CRASH_SHARED = "crash_shared"  # its process died with other attempts in flight
NODE_LOST = "node_lost"  # its node left the cluster (preemption, node failure)
INTERRUPTED = "interrupted"  # its process was told to stop (SIGTERM) or the driver stopped
ROUND_FAILED = "round_failed"  # the actor pool failed as a whole (no actor could start)
CHARGED = frozenset({OWN_ERROR, CRASH_ALONE})


def attempt_path(shard: str, attempt: str) -> str:
    return f"{ATTEMPTS}/{shard}/{attempt}.json"


def start(store: Store, shard: str, attempt: str, run: str, worker: str) -> None:
    record = {"shard": shard, "attempt": attempt, "run": run, "worker": worker}
    store.create_json(attempt_path(shard, attempt), {**record, "started_at": time.time()})


def fail(
    store: Store,
    shard: str,
    attempt: str,
    error: str,
    cause: str = OWN_ERROR,
    record: dict[str, Any] | None = None,
) -> bool:
    """Record why an attempt failed (keeps what the start record said); whether it did: not
    when the shard's marker is this attempt's (its commit landed, the attempt succeeded).
    ``record``: the attempt's record as just read (not read again), updated in place."""
    if committed_by(store, shard, attempt):
        return False
    rel = attempt_path(shard, attempt)
    if record is None:
        record = store.read_json(rel) if store.exists(rel) else {"shard": shard, "attempt": attempt}
    record.update(error=error[:2000], cause=cause, charged=cause in CHARGED, ended_at=time.time())
    store.write_json(rel, record)
    return True


def committed_by(store: Store, shard: str, attempt: str) -> bool:
    rel = layout.marker_path(shard)
    return bool(attempt) and store.exists(rel) and store.read_json(rel).get("attempt") == attempt


def records_of(store: Store, shards: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """``{shard: its attempt records, oldest first}`` for each of ``shards`` (none: ``[]``):
    one recursive listing of ``_attempts/``, then reads (concurrent on object stores) of
    the records of those shards alone (module docstring)."""
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in shards}
    paths = [
        f"{ATTEMPTS}/{rel}"
        for rel in sorted(store.find(ATTEMPTS))
        if rel.endswith(".json") and rel.count("/") == 1 and rel.split("/")[0] in out
    ]
    for rel, record in zip(paths, commit.read_json_many(store, paths), strict=True):
        out[rel.split("/")[1]].append(record)
    return {s: sorted(rs, key=lambda r: r.get("started_at", 0.0)) for s, rs in out.items()}


def records(store: Store, shard: str) -> list[dict[str, Any]]:
    """The attempt records of one shard, oldest first, read as the driver reads them."""
    return records_of(store, [shard])[shard]


def unfinished(records: list[dict[str, Any]], run: str) -> list[dict[str, Any]]:
    """Of one shard's ``records``, this run's attempts that never recorded an end."""
    return [r for r in records if r.get("run") == run and "error" not in r]


@dataclass(frozen=True)
class Quarantine:
    shard: str
    attempts: int
    last_error: str

    def line(self) -> str:
        return f"{self.shard} ({self.attempts} attempts; last error: {self.last_error})"


def charged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of one shard's ``records``, those that count toward the limit: the attempts that failed
    by the shard's own fault."""
    return [r for r in records if "error" in r and r["charged"]]


def failed(store: Store, shard: str) -> list[dict[str, Any]]:
    """The charged attempts of one shard (:func:`charged`), read from the output."""
    return charged(records(store, shard))


def quarantine_of(shard: str, records: list[dict[str, Any]], limit: int) -> Quarantine | None:
    """The shard's quarantine when ``limit`` of its ``records`` are charged; else None."""
    bad = charged(records)
    if len(bad) < limit:
        return None
    return Quarantine(shard, len(bad), str(bad[-1]["error"]).splitlines()[0][:300])


class ShardQuarantined(RuntimeError):
    """Shards failed ``compute.max_shard_attempts`` times; the job ends (exit code 3)."""

    def __init__(self, quarantined: list[Quarantine]) -> None:
        self.quarantined = quarantined
        super().__init__(
            f"{len(quarantined)} shard(s) quarantined: "
            + "; ".join(q.line() for q in quarantined)
            + ". Committed shards are kept; raise compute.max_shard_attempts or set "
            "compute.on_shard_failure: error_rows, then run again to resume"
        )


def settle(spec: JobSpec, store: Store, quarantined: list[Quarantine]) -> None:
    """End the job naming the quarantined shards, or commit them as ``error`` rows."""
    if not quarantined:
        return
    if spec.compute.on_shard_failure != "error_rows":
        raise ShardQuarantined(quarantined)
    from rank1_batch.pipeline.score import SCORES_SCHEMA, ShardWork, commit_shard, read_pairs

    for q in quarantined:
        pairs = read_pairs(q.shard, store)
        rows = [rank1.error_judgement(SHARD_FAILED) for _ in range(pairs.num_rows)]
        work = ShardWork(pairs, pairs, SCORES_SCHEMA.empty_table())
        marker = commit_shard(q.shard, work, rows, NamedModel(spec), store, spec, 0.0)
        log.warning(
            "%s: quarantined; committed its %d pairs as error rows (%s): %s",
            q.shard, marker.rows, SHARD_FAILED, q.line(),
        )  # fmt: skip


@dataclass(frozen=True)
class NamedModel:
    """The model ``spec`` names, as the judge of rows no engine produced (a
    :class:`rank1_batch.pipeline.score.Judge`)."""

    spec: JobSpec

    @property
    def model_id(self) -> str:
        return self.spec.model.name

    @property
    def model_revision(self) -> str:
        return self.spec.model.revision or ""
