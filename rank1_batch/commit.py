"""Output layout, the job fingerprint, shard stats and commit markers.

A reader trusts ``_commits/`` and ``_SUCCESS.json`` only, never a listing of data files.
Every name below is a pure function of (job, shard).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rank1_batch import __version__, rank1
from rank1_batch.spec import JobSpec
from rank1_batch.storage import Store

JOB_FILE = "job.json"
MANIFEST = "pairs/_manifest.json"
SUCCESS = "_SUCCESS.json"
COMMITS = "_commits"


def pairs_path(shard: str) -> str:
    return f"pairs/{shard}.parquet"


def rejected_path(shard: str) -> str:
    return f"rejected/{shard}.parquet"


def scores_path(shard: str) -> str:
    return f"scores/{shard}.parquet"


def traces_path(shard: str) -> str:
    return f"traces/{shard}.parquet"


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
    direct: int = 0  # reasoning.mode direct/cascade: pairs scored without reasoning
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
    """What ``_commits/<shard>.json`` holds: the committed files, checksums and stats."""

    shard: str
    rows: int
    scores_sha256: str
    traces_sha256: str
    stats: ShardStats
    committed_at: float = field(default_factory=time.time)
    worker: str = ""

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
        )


def committed_shards(store: Store) -> set[str]:
    """Shards with a commit marker: one listing of ``_commits/``."""
    return {
        n[: -len(".json")]
        for n in store.list(COMMITS)
        if n.endswith(".json") and not n.startswith(".")
    }


def read_markers(store: Store) -> list[Marker]:
    return [
        Marker.from_dict(store.read_json(marker_path(s))) for s in sorted(committed_shards(store))
    ]


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
