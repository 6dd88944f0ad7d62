"""Commit markers: the one create-only file that binds a shard's committed scores and traces.

A reader trusts ``_commits/`` and ``_SUCCESS.json`` only, never a listing of data files.

Whole-attempt commits: each attempt of a shard writes its scores and traces under names unique
to the attempt (``scores/<shard>.<attempt>.parquet``, create-only), then creates the marker
exclusively. The marker names the two files it commits with their checksums, so one marker
always binds one attempt's scores to the same attempt's traces. Every reader resolves a shard's
files through :func:`read_committed` (the marker's names, checksum verified). Files of attempts
that lost the marker race are removed by :func:`remove_losing_files` at the end of the job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import KW_ONLY, asdict, dataclass, field
from typing import Any

from rank1_batch.core.stats import STAT_NAMES, ShardStats
from rank1_batch.io.fs import sha256, table_from_bytes
from rank1_batch.io.layout import COMMITS, marker_path, repair_hint, scores_path, traces_path
from rank1_batch.io.store import Store

log = logging.getLogger(__name__)


@dataclass
class Marker:
    """What ``_commits/<shard>.json`` holds: the attempt, its two files with their checksums
    and sizes, and the shard's stats.

    ``scores_file`` / ``traces_file`` are the one place a shard's data file names come from;
    :meth:`problem` refuses names other than the attempt's own.
    """

    shard: str
    rows: int
    scores_sha256: str
    traces_sha256: str
    stats: ShardStats
    _: KW_ONLY
    attempt: str
    scores_file: str
    traces_file: str
    scores_bytes: int
    traces_bytes: int
    committed_at: float = field(default_factory=time.time)
    worker: str = ""

    @classmethod
    def of_attempt(
        cls,
        shard: str,
        attempt: str,
        stats: ShardStats,
        *,
        rows: int,
        scores: bytes,
        traces: bytes,
        worker: str = "",
    ) -> Marker:
        """The marker of ``attempt``'s ``scores`` and ``traces`` file contents."""
        return cls(
            shard, rows, sha256(scores), sha256(traces), stats, attempt=attempt,
            scores_file=scores_path(shard, attempt), traces_file=traces_path(shard, attempt),
            scores_bytes=len(scores), traces_bytes=len(traces), worker=worker,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = self.stats.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Marker:
        return cls(
            shard=data["shard"],
            rows=data["rows"],
            scores_sha256=data["scores_sha256"],
            traces_sha256=data["traces_sha256"],
            stats=ShardStats.from_dict(data["stats"]),
            attempt=data["attempt"],
            scores_file=data["scores_file"],
            traces_file=data["traces_file"],
            scores_bytes=data["scores_bytes"],
            traces_bytes=data["traces_bytes"],
            committed_at=data["committed_at"],
            worker=data["worker"],
        )

    def file(self, kind: str) -> tuple[str, str, int]:
        """(name, sha256, size) of the ``scores`` or ``traces`` file this marker commits."""
        if kind == "scores":
            return self.scores_file, self.scores_sha256, self.scores_bytes
        if kind == "traces":
            return self.traces_file, self.traces_sha256, self.traces_bytes
        raise ValueError(f"kind must be 'scores' or 'traces', not {kind!r}")

    def problem(self) -> str | None:
        """Why this marker cannot be trusted (None when it can): wrong types, or data file
        names other than the ones :func:`scores_path` / :func:`traces_path` give its shard
        and attempt (a marker naming ``../x`` must never send a reader there)."""
        texts = (self.shard, self.scores_sha256, self.traces_sha256, self.attempt, self.worker)
        if not all(isinstance(v, str) for v in texts):
            return "a field that must be text is not"
        if not self.attempt:
            return "it names no attempt"
        sizes = (self.rows, self.scores_bytes, self.traces_bytes)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in sizes):
            return "a row count or size that is not a whole number"
        if isinstance(self.committed_at, bool) or not isinstance(self.committed_at, int | float):
            return "a commit time that is not a number"
        for kind, name in (("scores", self.scores_file), ("traces", self.traces_file)):
            want = (scores_path if kind == "scores" else traces_path)(self.shard, self.attempt)
            if name != want:
                return f"it names {name!r} as its {kind} file, not {want!r}"
        return None


class CommitError(RuntimeError):
    """A commit marker is corrupt, or a committed file is missing or does not match it."""


class CorruptMarker(CommitError):
    """A marker that cannot be trusted; ``problem`` says why."""

    def __init__(self, store: Store, shard: str, problem: str) -> None:
        self.shard, self.problem = shard, problem
        super().__init__(
            f"{store.uri}: {marker_path(shard)} is corrupt ({problem}); {repair_hint(store.uri)}"
        )


def parse_marker(store: Store, shard: str, data: bytes | Any) -> Marker:
    """The marker of ``shard`` from its file's bytes (or parsed JSON): the one place markers
    are checked, so a truncated, corrupt or hand-edited one is a :class:`CorruptMarker`
    naming the file and the repair, never a bare ``JSONDecodeError``/``KeyError``."""
    try:
        doc = json.loads(data) if isinstance(data, bytes | bytearray) else data
        marker = Marker.from_dict(doc)
        problem = marker.problem() or (
            None if marker.shard == shard else f"it is the marker of {marker.shard!r}"
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError too
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise CorruptMarker(store, shard, problem)
    return marker


def read_marker(store: Store, shard: str) -> Marker:
    return parse_marker(store, shard, store.read_bytes(marker_path(shard)))


def committed_table(store: Store, shard: str, kind: str, columns: list[str] | None = None) -> Any:
    """``columns`` (default: all) of a committed shard's ``scores`` or ``traces`` file (a
    pyarrow Table), its checksum verified before any byte is decoded: pyarrow can abort the
    process on a corrupt file (``terminate called``), so unverified bytes never reach it."""
    data = read_committed(store, read_marker(store, shard), kind)
    return table_from_bytes(data, columns=columns)


def read_committed(store: Store, marker: Marker, kind: str) -> bytes:
    """The bytes of a committed shard's ``scores`` or ``traces`` file, checksum verified."""
    rel, expected, _ = marker.file(kind)
    try:
        data = store.read_bytes(rel)
    except FileNotFoundError as exc:
        raise CommitError(
            f"{store.uri}: {rel} (committed by {marker_path(marker.shard)}) is missing; "
            + repair_hint(store.uri)
        ) from exc
    if sha256(data) != expected:
        raise CommitError(
            f"{store.uri}: {rel} does not match the checksum in {marker_path(marker.shard)} "
            f"(sha256 {sha256(data)[:12]}..., marker {expected[:12]}...); {repair_hint(store.uri)}"
        )
    return data


def remove_losing_files(store: Store, markers: list[Marker]) -> list[str]:
    """Delete data files in ``scores/`` and ``traces/`` that no marker names (attempts that
    were killed or lost the marker race); return their names. Run when every shard is
    committed: a file no marker names can then never be committed."""
    named = {m.scores_file for m in markers} | {m.traces_file for m in markers}
    removed = []
    for folder in ("scores", "traces"):
        for name in store.list(folder):
            rel = f"{folder}/{name}"
            if name.startswith(".") or rel in named:
                continue
            try:
                store.remove(rel)
                removed.append(rel)
            except FileNotFoundError:
                pass
    if removed:
        log.info("%s: removed %d file(s) of losing attempts", store.uri, len(removed))
    return removed


def committed_shards(store: Store) -> set[str]:
    """Shards with a commit marker: one listing of ``_commits/``."""
    return {
        n[: -len(".json")]
        for n in store.list(COMMITS)
        if n.endswith(".json") and not n.startswith(".")
    }


# Concurrent small reads: enough to hide object-store latency, few enough for any endpoint.
READ_THREADS = 32
# A cache of committed markers: ``{"fields": [...], "markers": {shard: [values...]}}``.
DIGEST = "_commits_digest.json"
DIGEST_MIN_NEW = 500  # a reader that read this many markers not in the digest rewrites it
# A reader naming its shards reads the markers missing from the digest one by one, without a
# listing, when they are at most one in this many of its shards.
DIRECT_RATIO = 20
_STATS = list(STAT_NAMES)
_FILE_FIELDS = ["attempt", "scores_file", "traces_file", "scores_bytes", "traces_bytes"]
_DIGEST_FIELDS = [
    "rows", "scores_sha256", "traces_sha256", "committed_at", "worker", *_STATS, *_FILE_FIELDS,
]  # fmt: skip


def read_bytes_many(
    store: Store, paths: list[str], threads: int = READ_THREADS, *, missing_ok: bool = False
) -> list[bytes | None]:
    """Read many small files concurrently (bounded); results in the order of ``paths``
    (``None`` for a file that is not there, with ``missing_ok``)."""

    def one(p: str) -> bytes | None:
        try:
            if store.local:
                with open(store.path(p), "rb") as fh:
                    return fh.read()
            return store.read_bytes(p)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise

    if store.local or len(paths) <= 1:  # local: CPU-bound, no threads contending for the GIL
        return [one(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(paths))) as pool:
        return list(pool.map(one, paths))


def read_json_many(store: Store, paths: list[str], threads: int = READ_THREADS) -> list[Any]:
    """Read many small JSON files concurrently (bounded); results in the order of ``paths``."""
    return [json.loads(data or b"") for data in read_bytes_many(store, paths, threads)]


def _digest_row(m: Marker) -> list[Any]:
    head = [m.rows, m.scores_sha256, m.traces_sha256, m.committed_at, m.worker]
    tail = [getattr(m, k) for k in _FILE_FIELDS]
    return head + [getattr(m.stats, k) for k in _STATS] + tail


def _from_digest(shard: str, row: list[Any]) -> Marker:
    rows, scores, traces, at, worker, *rest = row
    stats, files = rest[: len(_STATS)], rest[len(_STATS) :]
    attempt, scores_file, traces_file, scores_bytes, traces_bytes = files
    return Marker(
        shard, rows, scores, traces, ShardStats(*stats), attempt=attempt,
        scores_file=scores_file, traces_file=traces_file, scores_bytes=scores_bytes,
        traces_bytes=traces_bytes, committed_at=at, worker=worker,
    )  # fmt: skip


def read_digest(store: Store) -> dict[str, Marker]:
    """The markers folded into ``_commits_digest.json`` (empty when there is none, or when it
    cannot be read or holds other fields: it is a cache, and the markers themselves are read
    instead)."""
    if not store.exists(DIGEST):
        return {}
    try:
        doc = store.read_json(DIGEST)
        if doc["fields"] != _DIGEST_FIELDS:
            raise ValueError(f"fields {doc['fields']!r}, not {_DIGEST_FIELDS!r}")
        digest = {s: _from_digest(s, row) for s, row in doc["markers"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s: ignoring an unreadable %s (%s)", store.uri, DIGEST, exc)
        return {}
    for shard, m in digest.items():
        if m.problem() is not None:
            log.warning("%s: ignoring %s: %s: %s", store.uri, DIGEST, shard, m.problem())
            return {}
    return digest


def write_digest(store: Store, markers: dict[str, Marker]) -> bool:
    """Fold ``markers`` into the digest (best effort: a reader without write access skips it).

    Markers never change once created, so any digest is a true subset of the commits; two
    readers racing only decide which true subset stays.
    """
    doc = {
        "fields": _DIGEST_FIELDS,
        "markers": {s: _digest_row(markers[s]) for s in sorted(markers)},
    }
    try:
        store.write_atomic(DIGEST, json.dumps(doc, separators=(",", ":")).encode())
    except (OSError, RuntimeError) as exc:  # read-only mount, StorageError (access denied)
        log.info("not writing %s: %s", DIGEST, exc)
        return False
    return True


def read_markers(
    store: Store, shards: list[str] | None = None, *, update_digest: bool = True
) -> list[Marker]:
    """The commit markers of ``shards`` (default: every committed shard), in name order.

    The digest for markers folded into it, then the rest: when ``shards`` are named and the
    digest already holds all but one in :data:`DIRECT_RATIO` of them, only those markers are
    read, one request each, with no listing (at 50,000 shards a listing of ``_commits/`` is 50
    pages read one after another, and the test S3 server spends about 2 s a page); otherwise one
    listing of ``_commits/`` and bounded concurrent reads of the markers it names beyond the
    digest. When many were read, the digest is rewritten so the next reader (a ``status``
    every few seconds, a resumed ``run``) reads one file instead of thousands.
    """
    digest = read_digest(store)
    unknown = None if shards is None else sorted(set(shards) - digest.keys())
    if unknown is not None and digest and len(unknown) * DIRECT_RATIO <= len(shards or ()):
        raw = read_bytes_many(store, [marker_path(s) for s in unknown], missing_ok=True)
        fresh = [
            parse_marker(store, s, d) for s, d in zip(unknown, raw, strict=True) if d is not None
        ]
        kept = digest
    else:
        listed = committed_shards(store)
        # A digest entry was read from a marker, and markers are never removed: committed too.
        known = listed | digest.keys()
        names = known if shards is None else set(shards) & known
        new = sorted(s for s in names if s not in digest)
        got = read_bytes_many(store, [marker_path(s) for s in new])
        fresh = [parse_marker(store, s, d or b"") for s, d in zip(new, got, strict=True)]
        kept = {s: m for s, m in digest.items() if s in listed}
    if update_digest and len(fresh) >= DIGEST_MIN_NEW:
        write_digest(store, {**kept, **{m.shard: m for m in fresh}})
    found = {**digest, **{m.shard: m for m in fresh}}
    wanted = found.keys() if shards is None else set(shards) & found.keys()
    return [found[s] for s in sorted(wanted)]
