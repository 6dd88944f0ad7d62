"""Bounded attempts: every attempt of a shard is recorded in the output folder.

``_attempts/<shard>/<attempt>.json`` is created (create-only) when an attempt starts and
rewritten with its ``error`` when it fails. An attempt whose process died (a crash, a kill,
``compute.shard_timeout``) cannot write its error: after each round the driver writes it for
the attempts its own run started. Attempts of an earlier run that never ended were cut short
by that run's driver stopping (the whole Ray job goes with it): they are ``interrupted`` and
do not count. A shard with ``compute.max_shard_attempts`` failed attempts is quarantined: the
job ends naming it (:class:`ShardQuarantined`, exit code 3), or with
``compute.on_shard_failure: error_rows`` its pairs are committed as ``error`` rows with code
``shard_failed``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from rank1_batch import rank1
from rank1_batch.spec import JobSpec
from rank1_batch.storage import Store

log = logging.getLogger(__name__)

ATTEMPTS = "_attempts"
SHARD_FAILED = "shard_failed"
EXIT_QUARANTINED = 3
DIED = "the attempt ended without a result (its process died, was killed or timed out)"


def attempt_path(shard: str, attempt: str) -> str:
    return f"{ATTEMPTS}/{shard}/{attempt}.json"


def start(store: Store, shard: str, attempt: str, run: str, worker: str) -> None:
    record = {"shard": shard, "attempt": attempt, "run": run, "worker": worker}
    store.create_json(attempt_path(shard, attempt), {**record, "started_at": time.time()})


def fail(store: Store, shard: str, attempt: str, error: str) -> None:
    """Record why an attempt failed (keeps what the start record said)."""
    rel = attempt_path(shard, attempt)
    record = store.read_json(rel) if store.exists(rel) else {"shard": shard, "attempt": attempt}
    record.update(error=error[:2000], ended_at=time.time())
    store.write_json(rel, record)


def records(store: Store, shard: str) -> list[dict[str, Any]]:
    names = [n for n in store.list(f"{ATTEMPTS}/{shard}") if n.endswith(".json")]
    found = [store.read_json(f"{ATTEMPTS}/{shard}/{n}") for n in names]
    return sorted(found, key=lambda r: r.get("started_at", 0.0))


def close_orphans(store: Store, shard: str, run: str, reason: str = DIED) -> None:
    """Give this run's unfinished attempts of an uncommitted shard their error."""
    for r in records(store, shard):
        if r.get("run") == run and "error" not in r:
            fail(store, shard, r["attempt"], reason)


@dataclass(frozen=True)
class Quarantine:
    shard: str
    attempts: int
    last_error: str

    def line(self) -> str:
        return f"{self.shard} ({self.attempts} attempts; last error: {self.last_error})"


def failed(store: Store, shard: str) -> list[dict[str, Any]]:
    """Attempts that count toward the limit: those that ended with an error."""
    return [r for r in records(store, shard) if "error" in r]


def quarantine_of(store: Store, shard: str, limit: int) -> Quarantine | None:
    bad = failed(store, shard)
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
        marker = commit_shard(q.shard, work, rows, _Provenance(spec), store, spec, 0.0)  # type: ignore[arg-type]
        log.warning(
            "%s: quarantined; committed its %d pairs as error rows (%s): %s",
            q.shard, marker.rows, SHARD_FAILED, q.line(),
        )  # fmt: skip


@dataclass(frozen=True)
class _Provenance:
    """What the scores table records about the model, for rows no engine produced."""

    spec: JobSpec

    @property
    def model_id(self) -> str:
        return self.spec.model.name

    @property
    def model_revision(self) -> str:
        return self.spec.model.revision or ""
