"""Pure figures behind the report: rank correlations, histograms, calibration.

Everything here works on plain lists/arrays of one query or one shard and returns plain
numbers, so the driver can stream shards and keep only the accumulators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Average ranks (1-based), ties sharing their mean rank."""
    arr = np.asarray(values, dtype=np.float64)
    order = np.argsort(arr, kind="mergesort")
    ranks = np.empty(len(arr), dtype=np.float64)
    sorted_vals = arr[order]
    i = 0
    while i < len(arr):
        j = i
        while j + 1 < len(arr) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN under 2 points or no spread."""
    if len(x) != len(y):
        raise ValueError("spearman: x and y differ in length")
    if len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum()) / denom if denom > 0 else math.nan


def kendall_tau_b(x: Sequence[float], y: Sequence[float], chunk: int = 512) -> float:
    """Kendall's tau-b (tie-corrected), O(n²) in row chunks so memory stays ``chunk × n``."""
    if len(x) != len(y):
        raise ValueError("kendall: x and y differ in length")
    n = len(x)
    if n < 2:
        return math.nan
    ax, ay = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    concordant_minus_discordant = 0
    ties_x = ties_y = 0  # pairs tied in x (resp. y), each unordered pair counted twice
    for start in range(0, n, chunk):
        sx = np.sign(ax[start : start + chunk, None] - ax[None, :])
        sy = np.sign(ay[start : start + chunk, None] - ay[None, :])
        concordant_minus_discordant += int((sx * sy).sum())
        ties_x += int((sx == 0).sum())
        ties_y += int((sy == 0).sum())
    pairs = n * (n - 1)  # ordered pairs; the diagonal (n entries) is a tie in both
    tx, ty = ties_x - n, ties_y - n
    denom = math.sqrt(float(pairs - tx) * float(pairs - ty))
    return concordant_minus_discordant / denom if denom > 0 else math.nan


@dataclass
class Histogram:
    """Counts over fixed bin edges; values outside [edges[0], edges[-1]] go to the end bins."""

    edges: list[float]
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.edges) < 2:
            raise ValueError("a histogram needs at least two edges")
        if not self.counts:
            self.counts = [0] * (len(self.edges) - 1)

    def add(self, values: Sequence[float] | np.ndarray) -> None:
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if not len(arr):
            return
        arr = np.clip(arr, self.edges[0], self.edges[-1])
        counts, _ = np.histogram(arr, bins=np.asarray(self.edges))
        self.counts = [a + int(b) for a, b in zip(self.counts, counts, strict=True)]

    @property
    def total(self) -> int:
        return sum(self.counts)


def linear_edges(lo: float, hi: float, bins: int) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    return [lo + (hi - lo) * i / bins for i in range(bins + 1)]


@dataclass
class Reliability:
    """Reliability diagram accumulators: per bin of predicted P(true), how many pairs, the sum
    of predictions and how many were relevant. ``ece`` is the expected calibration error,
    sum over bins of (n_b / N) · |accuracy_b − confidence_b|."""

    bins: int = 10
    n: list[int] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n = self.n or [0] * self.bins
        self.conf = self.conf or [0.0] * self.bins
        self.hits = self.hits or [0] * self.bins

    def add(self, p_true: Sequence[float], relevant: Sequence[bool]) -> None:
        for p, rel in zip(p_true, relevant, strict=True):
            if p is None or math.isnan(p):
                continue
            b = min(int(p * self.bins), self.bins - 1)
            self.n[b] += 1
            self.conf[b] += p
            self.hits[b] += int(rel)

    @property
    def total(self) -> int:
        return sum(self.n)

    def rows(self) -> list[dict[str, float]]:
        """One row per non-empty bin: range, count, mean confidence, observed accuracy."""
        out = []
        for b in range(self.bins):
            if self.n[b]:
                out.append(
                    {
                        "lo": b / self.bins,
                        "hi": (b + 1) / self.bins,
                        "n": self.n[b],
                        "confidence": self.conf[b] / self.n[b],
                        "accuracy": self.hits[b] / self.n[b],
                    }
                )
        return out

    @property
    def ece(self) -> float:
        if not self.total:
            return math.nan
        return sum(r["n"] / self.total * abs(r["accuracy"] - r["confidence"]) for r in self.rows())


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.1, 0.5, 0.9)) -> list[float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if not len(arr):
        return [math.nan for _ in qs]
    return [float(v) for v in np.quantile(arr, qs)]
