"""Driver-side progress for the score stage: shards and pairs done, pairs/s and ETA.

A tqdm bar on a terminal; on a pipe (Ray job logs, CI) one plain line per committed shard.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("rank1_batch.core.progress")


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    secs = round(seconds)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(rate: float) -> str:
    """A rate to 3 significant figures, never in exponent form: 0.123, 12.3, 123, 12,345."""
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.{2 if rate < 10 else 1}f}" if rate >= 1 else f"{rate:.3g}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 shard``, ``2 shards``, ``1,000 pairs`` (thousands separated); ``many``: the plural
    when it is not ``word + "s"`` (``plural(2, "query", "queries")``)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def reasoning_line(tokens: int, pairs: int) -> str:
    """``61,234 reasoning tokens, 20.4 per pair``: tokens spent on the output's pairs (a
    reused pair counts the tokens spent when it was first scored)."""
    per = f", {format_rate(tokens / pairs)} per pair" if pairs else ""
    return f"{plural(tokens, 'reasoning token')}{per}"


class Progress:
    def __init__(self, shards: int, pairs: int, *, stream: Any = None) -> None:
        self.shards, self.pairs = shards, pairs
        self.shards_done = self.pairs_done = 0
        self.start = time.perf_counter()
        stream = stream if stream is not None else sys.stderr
        self.bar: Any = None
        if getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=pairs, unit="pair", desc="score", file=stream, dynamic_ncols=True)
            self.bar.set_postfix_str(f"shards 0/{shards}")

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.pairs_done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.pairs - self.pairs_done) / rate if rate > 0 else None

    def shard_done(self, shard: str, pairs: int) -> None:
        self.shards_done += 1
        self.pairs_done += pairs
        if self.bar is not None:
            self.bar.update(pairs)
            self.bar.set_postfix_str(f"shards {self.shards_done}/{self.shards}")
            return
        log.info(
            "score: %s committed; %d/%d shards, %d/%d pairs, %s pairs/s since scoring "
            "started, ETA %s",
            shard,
            self.shards_done,
            self.shards,
            self.pairs_done,
            self.pairs,
            format_rate(self.rate()),
            format_eta(self.eta()),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
