"""Output layout, the job fingerprint, shard stats and commit markers.

A reader trusts ``_commits/`` and ``_SUCCESS.json`` only, never a listing of data files.

Whole-attempt commits: each attempt of a shard writes its scores and traces under names unique
to the attempt (``scores/<shard>.<attempt>.parquet``, create-only), then creates the marker
exclusively. The marker names the two files it commits with their checksums, so one marker
always binds one attempt's scores to the same attempt's traces. Every reader resolves a shard's
files through :func:`read_committed` (the marker's names, checksum verified); markers written
before this change name no files and resolve to the old deterministic names. Files of attempts
that lost the marker race are removed by :func:`remove_losing_files` at the end of the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rank1_batch import __version__, rank1
from rank1_batch.spec import JobSpec
from rank1_batch.storage import Store, sha256

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
MANIFEST = "pairs/_manifest.json"
SUCCESS = "_SUCCESS.json"
COMMITS = "_commits"


def pairs_path(shard: str) -> str:
    return f"pairs/{shard}.parquet"


def rejected_path(shard: str) -> str:
    return f"rejected/{shard}.parquet"


def scores_path(shard: str, attempt: str = "") -> str:
    """The attempt's scores file; without an attempt, the name used before whole-attempt
    commits (markers that name no file)."""
    return f"scores/{shard}.{attempt}.parquet" if attempt else f"scores/{shard}.parquet"


def traces_path(shard: str, attempt: str = "") -> str:
    return f"traces/{shard}.{attempt}.parquet" if attempt else f"traces/{shard}.parquet"


def new_attempt_id() -> str:
    """A fresh attempt id: unique across workers, nodes and runs."""
    return uuid.uuid4().hex[:16]


def marker_path(shard: str) -> str:
    return f"{COMMITS}/{shard}.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


@dataclass
class ShardStats:
    """Per-shard counters; ``a + b`` merges them, so the driver just sums."""

    pairs: int = 0
    complete: int = 0
    forced: int = 0
    fallback: int = 0
    error: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: ShardStats) -> ShardStats:
        return ShardStats(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def count(self, status: str) -> None:
        if status not in rank1.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        setattr(self, status, getattr(self, status) + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardStats:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Marker:
    """What ``_commits/<shard>.json`` holds: the committed files, checksums and stats.

    ``scores_file`` / ``traces_file`` are the one place a shard's data file names come from.
    """

    shard: str
    rows: int
    scores_sha256: str
    traces_sha256: str
    stats: ShardStats
    committed_at: float = field(default_factory=time.time)
    worker: str = ""
    attempt: str = ""
    scores_file: str = ""
    traces_file: str = ""

    def __post_init__(self) -> None:
        # Markers written before whole-attempt commits name no files: the old names.
        self.scores_file = self.scores_file or scores_path(self.shard)
        self.traces_file = self.traces_file or traces_path(self.shard)

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
            committed_at=data.get("committed_at", 0.0),
            worker=data.get("worker", ""),
            attempt=data.get("attempt", ""),
            scores_file=data.get("scores_file", ""),
            traces_file=data.get("traces_file", ""),
        )


class CommitError(RuntimeError):
    """A committed file is missing or does not match its marker's checksum."""


def read_marker(store: Store, shard: str) -> Marker:
    return Marker.from_dict(store.read_json(marker_path(shard)))


def read_committed(store: Store, marker: Marker, kind: str) -> bytes:
    """The bytes of a committed shard's ``scores`` or ``traces`` file, checksum verified."""
    if kind not in ("scores", "traces"):
        raise ValueError(f"kind must be 'scores' or 'traces', not {kind!r}")
    rel = marker.scores_file if kind == "scores" else marker.traces_file
    expected = marker.scores_sha256 if kind == "scores" else marker.traces_sha256
    try:
        data = store.read_bytes(rel)
    except FileNotFoundError as exc:
        raise CommitError(
            f"{store.uri}: {rel} (committed by {marker_path(marker.shard)}) is missing"
        ) from exc
    if sha256(data) != expected:
        raise CommitError(
            f"{store.uri}: {rel} does not match the checksum in {marker_path(marker.shard)} "
            f"(sha256 {sha256(data)[:12]}..., marker {expected[:12]}...)"
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


def read_markers(store: Store) -> list[Marker]:
    return [read_marker(store, s) for s in sorted(committed_shards(store))]


class FingerprintMismatch(RuntimeError):
    """The output folder belongs to a job with different result-determining settings."""


def job_record(spec: JobSpec, input_listing: list[dict[str, Any]]) -> dict[str, Any]:
    """Contents of ``job.json``: resolved spec, fingerprinted settings and the fingerprint."""
    settings = {"job": spec.result_settings(), "input": input_listing}
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return {
        "fingerprint": hashlib.sha256(blob).hexdigest(),
        "settings": settings,
        "spec": spec.model_dump(mode="json"),
        "rank1_batch_version": __version__,
        "created_at": time.time(),
    }


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if old != new:
        if isinstance(old, list) and isinstance(new, list):
            return [f"{prefix} changed (files or sizes differ)"]
        return [f"{prefix}: {old!r} -> {new!r}"]
    return []


def claim_output(store: Store, record: dict[str, Any]) -> bool:
    """Write ``job.json`` (create-only) or check that the existing one matches.

    Returns True when this call created it. Raises :class:`FingerprintMismatch` naming every
    changed setting when the folder holds another job's results.
    """
    if store.create_json(JOB_FILE, record):
        return True
    old = store.read_json(JOB_FILE)
    if old.get("fingerprint") != record["fingerprint"]:
        changes = _diff(old.get("settings", {}), record["settings"]) or ["fingerprint"]
        raise FingerprintMismatch(
            f"{store.uri} holds results of a different job; changed: {'; '.join(changes)}. "
            "Use a new output location (or delete this one) to run with these settings."
        )
    return False
