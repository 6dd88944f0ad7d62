"""``rank1-batch verify OUTPUT [--repair]``: check every commit against the files it names.

Two depths of check, one vocabulary of :class:`Problem` (shard, file, what is wrong):

* :func:`check_files` - what ``finalize`` (and a ``run`` of a finished job) does before it
  certifies an output: every file a marker names exists with the size the marker records.
  One detail listing of ``scores/`` and one of ``traces/``, whatever the number of shards.
  A file rewritten with the same size (flipped bytes) passes: only :func:`verify` catches that.
* :func:`verify` - the full check: every marker parses and names exactly the files its shard
  and attempt give (:meth:`rank1_batch.io.commit.Marker.problem`), every file exists with its
  size, and its SHA-256 (read in chunks: memory bounded by a chunk a thread) matches.

:func:`repair` retires the bad shards' markers (moved to ``_commits_retired/``, never
deleted), drops the commit digest (a cache) and ``_SUCCESS.json``: the next ``run`` of the
job rescores exactly those shards, as it does any uncommitted shard.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rank1_batch.io import commit, layout, lease
from rank1_batch.io.store import Store

log = logging.getLogger(__name__)

RETIRED = "_commits_retired"
CHUNK = 1 << 20  # bytes hashed at a time
LOCAL_THREADS = 4  # hashing releases the GIL; disks like a few readers, not dozens
EXIT_BAD = 1  # verify found bad shards (retired with --repair); 2: the output cannot be read


@dataclass(frozen=True)
class Problem:
    """One bad commit: the shard, the file at fault (a data file or the marker) and why."""

    shard: str
    file: str
    what: str

    def line(self) -> str:
        return f"{self.shard}: {self.file}: {self.what}"


def _folder_sizes(store: Store) -> dict[str, int]:
    """``{"scores/name": bytes, "traces/name": bytes}``: one listing per folder."""
    return {
        f"{folder}/{name}": size
        for folder in ("scores", "traces")
        for name, size in store.sizes(folder).items()
    }


def _size_problems(markers: Iterable[commit.Marker], sizes: dict[str, int]) -> list[Problem]:
    out = []
    for m in markers:
        for kind in ("scores", "traces"):
            rel, _, want = m.file(kind)
            if rel not in sizes:
                out.append(Problem(m.shard, rel, "missing"))
            elif sizes[rel] != want:
                out.append(Problem(m.shard, rel, f"{sizes[rel]} bytes, the marker says {want}"))
    return out


def check_files(store: Store, markers: Iterable[commit.Marker]) -> list[Problem]:
    """Existence and size of every file ``markers`` name (two listings, no reads)."""
    return _size_problems(markers, _folder_sizes(store))


def require_files(store: Store, markers: Iterable[commit.Marker]) -> None:
    """:func:`check_files`, raising one :class:`~rank1_batch.io.commit.CommitError` line that
    names the first bad shard and file, and the repair."""
    problems = check_files(store, markers)
    if problems:
        shards = sorted({p.shard for p in problems})
        more = f" (and {len(shards) - 1} more bad shard(s))" if len(shards) > 1 else ""
        raise commit.CommitError(
            f"{store.uri}: {problems[0].line()}{more}; the output is not complete: "
            + layout.repair_hint(store.uri)
        )


def file_sha256(store: Store, rel: str) -> str:
    """SHA-256 of one file, streamed in :data:`CHUNK` reads (retried as a whole on transient
    object-store errors)."""

    def digest() -> str:
        h = hashlib.sha256()
        with store.fs.open(store.path(rel), "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    return store._call(f"reading {rel}", digest)


@dataclass
class Report:
    """What :func:`verify` found."""

    uri: str
    shards: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    digest_stale: bool = False  # the commit digest disagrees with a marker
    retired: list[str] = field(default_factory=list)  # with --repair: where markers went

    @property
    def bad_shards(self) -> list[str]:
        return sorted({p.shard for p in self.problems})

    def summary(self) -> str:
        head = f"{self.uri}: {self.shards} committed shard(s), {self.files} file(s), "
        head += f"{self.bytes / 1e6:.1f} MB checked: "
        if not self.problems and not self.digest_stale:
            return head + "all match their markers"
        text = head + f"{len(self.bad_shards)} bad shard(s)"
        if self.digest_stale:
            text += f"; {commit.DIGEST} disagrees with the markers"
        if self.retired or (self.digest_stale and not self.problems):
            return text + (
                f"; retired {len(self.retired)} marker(s) to {RETIRED}/ and removed "
                f"{layout.SUCCESS}: run the job again to rescore them"
                if self.retired
                else "; repaired"
            )
        return text + f"; `rank1-batch verify {self.uri} --repair` retires them"


def _check_shard(store: Store, marker: commit.Marker) -> list[Problem]:
    out = []
    for kind in ("scores", "traces"):
        rel, want, _ = marker.file(kind)
        try:
            got = file_sha256(store, rel)
        except FileNotFoundError:
            out.append(Problem(marker.shard, rel, "missing"))
            continue
        if got != want:
            out.append(
                Problem(marker.shard, rel, f"sha256 {got[:12]}..., the marker says {want[:12]}...")
            )
    return out


def verify(store: Store, threads: int | None = None) -> Report:
    """Check every committed shard of ``store`` (see the module docstring); an output of
    another layout version is refused (:class:`~rank1_batch.io.layout.LayoutVersionError`)."""
    layout.read_job(store)
    shards = sorted(commit.committed_shards(store))
    report = Report(store.uri, shards=len(shards))
    raw = commit.read_bytes_many(store, [layout.marker_path(s) for s in shards])
    markers: list[commit.Marker] = []
    for shard, data in zip(shards, raw, strict=True):
        try:
            markers.append(commit.parse_marker(store, shard, data))
        except commit.CorruptMarker as exc:
            what = f"corrupt: {exc.problem}"
            report.problems.append(Problem(shard, layout.marker_path(shard), what))
    sizes = _folder_sizes(store)
    sized = _size_problems(markers, sizes)
    report.problems += sized
    by_size = {p.shard for p in sized}
    to_hash = [m for m in markers if m.shard not in by_size]
    report.files = 2 * len(markers)
    report.bytes = sum(sizes.get(m.file(k)[0], 0) for m in markers for k in ("scores", "traces"))
    n = threads or (LOCAL_THREADS if store.local else commit.READ_THREADS)
    with ThreadPoolExecutor(max(1, min(n, len(to_hash) or 1))) as pool:
        for found in pool.map(lambda m: _check_shard(store, m), to_hash):
            report.problems += found
    digest = commit.read_digest(store)
    fresh = {m.shard: m for m in markers}
    report.digest_stale = any(
        s not in fresh or commit._digest_row(m) != commit._digest_row(fresh[s])
        for s, m in digest.items()
    )
    report.problems.sort(key=lambda p: (p.shard, p.file))
    return report


def repair(store: Store, report: Report) -> Report:
    """Retire the markers of ``report``'s bad shards; drop the digest and ``_SUCCESS.json``.

    Order matters for a repair that is killed: ``_SUCCESS.json`` goes first (the output is no
    longer certified), then the digest (else it would keep naming retired shards), then each
    marker is copied to ``_commits_retired/`` before it is removed. Running it again finishes
    the job. Refused while a live run holds the output.
    """
    holder = lease.live_holder(store)
    if holder is not None:
        raise lease.OutputBusy(
            f"{store.uri}: a live run holds the output ({holder.who()}); repair it when the "
            "run has ended"
        )
    if not report.bad_shards and not report.digest_stale:
        return report
    if report.bad_shards:
        store.delete(layout.SUCCESS)
    store.delete(commit.DIGEST)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    for shard in report.bad_shards:
        rel = layout.marker_path(shard)
        retired = f"{RETIRED}/{shard}.{stamp}.json"
        try:
            data = store.read_bytes(rel)
        except FileNotFoundError:  # a repair killed after the move: done already
            continue
        store.write_atomic(retired, data)
        store.remove(rel)
        report.retired.append(retired)
        log.info("%s: retired %s to %s", store.uri, rel, retired)
    return report
