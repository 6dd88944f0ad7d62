"""Shard stats: counters that add up (``a + b`` merges them, the driver sums)."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from rank1_batch.core import rank1


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
    reused: int = 0  # rows copied from an earlier output (rank1_batch.pipeline.reuse), not judged

    def __add__(self, other: ShardStats) -> ShardStats:
        return ShardStats(*(getattr(self, k) + getattr(other, k) for k in STAT_NAMES))

    @classmethod
    def total(cls, many: Iterable[ShardStats]) -> ShardStats:
        """The sum of ``many``, field by field in one pass (``sum`` with ``+`` builds an object
        per term: 1.0 s for a status over 50,000 shards, against about 0.05 s)."""
        return cls(*(sum(column) for column in zip(*map(_values, many), strict=True)))

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


STAT_NAMES = tuple(f.name for f in fields(ShardStats))
_values = operator.attrgetter(*STAT_NAMES)
