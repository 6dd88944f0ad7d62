"""Who is running a job: a heartbeat lease on the output folder, and one record per run.

A *run* is one ``rank1-batch run`` process on the output (the first, each resume, each
joiner); an *attempt* is one try at one shard (:mod:`rank1_batch.pipeline.attempts`).
Files (all small JSON, under ``_run/`` of the output folder, local or object storage):

``_run/lease.json``            the run that holds the job: run id, host, pid, started,
                               refreshed (rewritten every ``HEARTBEAT_S`` by a daemon thread)
``_run/runs/<run-id>.json``    every run (holder or joiner): host, pid, started, refreshed,
                               finished; their union is the job's total wall time
``_run/takeovers/<run-id>.json`` create-only: who took over that run's stale lease, so two
                               runs that find the same dead holder never both take over

A second ``run`` on a held output is refused, naming the holder (exit 2), unless it joins
(``--join``: it scores too, from the other end of the pending list, while the holder keeps
the lease) or takes over (``--take-over``). A lease is stale, and taken over without asking,
when its holder ran on this host and its pid is gone, or when its heartbeat is older than
``STALE_S`` (another host). Commits stay exclusive whatever happens here: a lease only
avoids wasted compute, it never guards correctness.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from rank1_batch.io.store import Store

log = logging.getLogger(__name__)

LEASE = "_run/lease.json"
RUNS = "_run/runs"
TAKEOVERS = "_run/takeovers"
HEARTBEAT_S = float(os.environ.get("RANK1_LEASE_HEARTBEAT_S", "10"))
STALE_S = float(os.environ.get("RANK1_LEASE_STALE_S", "60"))


class OutputBusy(RuntimeError):
    """Another live run holds the output folder (or the folder is not this job's)."""


@dataclass
class Run:
    """One ``run`` process on the output: the lease's holder or a joiner."""

    run_id: str
    host: str
    pid: int
    started: float
    refreshed: float
    role: str = "holder"  # or "joiner"
    finished: bool = False

    @classmethod
    def new(cls, role: str = "holder") -> Run:
        now = time.time()
        host, pid = socket.gethostname(), os.getpid()
        # sortable by start time, unique across hosts and restarts
        run_id = f"{int(now * 1000):013d}-{host}-{pid}-{uuid.uuid4().hex[:6]}"
        return cls(run_id, host, pid, now, now, role)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def who(self) -> str:
        return f"{self.host}:{self.pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(rec: Run, now: float | None = None) -> str | None:
    """Why ``rec``'s holder is gone (None: it looks alive)."""
    now = time.time() if now is None else now
    if rec.finished:
        return "it finished"
    if rec.host == socket.gethostname() and not _pid_alive(rec.pid):
        return f"process {rec.pid} on this host is gone"
    if now - rec.refreshed > STALE_S:
        return f"no heartbeat for {now - rec.refreshed:.0f} s (> {STALE_S:.0f} s)"
    return None


def read_lease(store: Store) -> Run | None:
    try:
        return Run.from_dict(store.read_json(LEASE))
    except FileNotFoundError:
        return None


def live_holder(store: Store) -> Run | None:
    """The run holding the folder now, or None (nobody, or a stale lease)."""
    rec = read_lease(store)
    return rec if rec is not None and stale_reason(rec) is None else None


def run_path(run_id: str) -> str:
    return f"{RUNS}/{run_id}.json"


def runs(store: Store) -> list[Run]:
    """Every run recorded on the output (finished or not)."""
    return [
        Run.from_dict(store.read_json(f"{RUNS}/{n}"))
        for n in store.list(RUNS)
        if n.endswith(".json") and not n.startswith(".")
    ]


def total_seconds(records: list[Run]) -> float:
    """Wall time during which any run ran: the union of [started, refreshed]."""
    total, end = 0.0, -float("inf")
    for a in sorted(records, key=lambda a: a.started):
        start = max(a.started, end)
        if a.refreshed > start:
            total += a.refreshed - start
        end = max(end, a.refreshed)
    return total


def busy_message(store: Store, rec: Run) -> str:
    age = time.time() - rec.refreshed
    return (
        f"{store.uri} is being run by {rec.who()} (run started "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(rec.started))}, heartbeat "
        f"{age:.0f} s ago). Follow it with `rank1-batch status {store.uri}`; add --join to "
        f"score alongside it from this machine; if that process is dead, rerun after "
        f"{STALE_S:.0f} s without a heartbeat, or pass --take-over now."
    )


class Lease:
    """Hold (or join) the output folder for one ``run``; use as a context manager."""

    def __init__(self, store: Store, *, join: bool = False, take_over: bool = False) -> None:
        self.store, self.join, self.take_over = store, join, take_over
        self.me = Run.new()
        self.holder = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    # -- acquiring ----------------------------------------------------------------------------
    def acquire(self) -> None:
        if not self._try_hold():
            self.me.role = "joiner"
        self._write_run()
        self._thread = threading.Thread(target=self._beat, name="rank1-lease", daemon=True)
        self._thread.start()

    def _try_hold(self) -> bool:
        """True when this run now holds the lease; False when it joins; raises when busy."""
        for _ in range(5):
            if self.store.create_json(LEASE, self.me.to_dict()):
                self.holder = True
                return True
            current = read_lease(self.store)
            if current is None:
                continue  # released between our create and our read: try again
            reason = stale_reason(current)
            if reason is None and not self.take_over:
                if self.join:
                    log.info("joining %s, held by %s", self.store.uri, current.who())
                    return False
                raise OutputBusy(busy_message(self.store, current))
            victim = self._victim(current)
            if victim is None:
                continue
            self.store.write_json(LEASE, self.me.to_dict())
            self.holder = True
            log.warning(
                "took over %s from %s (%s)",
                self.store.uri,
                current.who(),
                reason or "--take-over",
            )
            return True
        raise OutputBusy(f"{self.store.uri}: could not take the run lease (contended); retry")

    def _victim(self, current: Run) -> Run | None:
        """Claim the right to replace ``current`` (create-only token per replaced run).

        A taker killed after its token but before writing the lease is itself replaced: the
        chain of tokens is followed to the last taker, which must be stale too."""
        victim = current
        for _ in range(100):
            token = f"{TAKEOVERS}/{victim.run_id}.json"
            if self.store.create_json(token, self.me.to_dict()):
                return victim
            taker = Run.from_dict(self.store.read_json(token))
            if stale_reason(taker) is None and not self.take_over:
                raise OutputBusy(busy_message(self.store, taker))
            victim = taker
        return None

    # -- heartbeat ------------------------------------------------------------------------------
    def _write_run(self) -> None:
        self.store.write_json(run_path(self.me.run_id), self.me.to_dict())

    def refresh(self) -> None:
        self.me.refreshed = time.time()
        self._write_run()
        if not self.holder or self._lost:
            return
        current = read_lease(self.store)
        if current is not None and current.run_id != self.me.run_id:
            self._lost = True
            log.error(
                "%s: the run lease was taken over by %s; this run keeps scoring (commits "
                "stay exclusive) but no longer holds the folder",
                self.store.uri,
                current.who(),
            )
            return
        self.store.write_json(LEASE, self.me.to_dict())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.refresh()
            except Exception as exc:  # a missed heartbeat must never stop the run
                log.warning("%s: lease heartbeat failed: %s", self.store.uri, exc)

    def others_running(self) -> bool:
        """Whether another run (a joiner) looks alive now."""
        return any(r.run_id != self.me.run_id and stale_reason(r) is None for r in runs(self.store))

    def total_seconds(self) -> float:
        """Wall time of every run so far, this one up to now (``_SUCCESS.json``)."""
        self.me.refreshed = time.time()
        others = [r for r in runs(self.store) if r.run_id != self.me.run_id]
        return total_seconds([*others, self.me])

    # -- releasing ------------------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.me.refreshed, self.me.finished = time.time(), True
        try:
            self._write_run()
            current = read_lease(self.store)
            if self.holder and current is not None and current.run_id == self.me.run_id:
                self.store.delete(LEASE)
        except Exception as exc:  # releasing is best effort: a stale lease is taken over
            log.warning("%s: could not release the run lease: %s", self.store.uri, exc)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_adoptable(store: Store, job_file: str) -> None:
    """Refuse an output folder that holds files but is not a rank1-batch job's."""
    if store.exists(job_file):
        return
    entries = [n for n in store.list("") if not n.startswith(".")]
    if entries:
        shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
        raise OutputBusy(
            f"{store.uri} is not empty and holds no {job_file} (found: {shown}); "
            "use an empty or new output location"
        )
