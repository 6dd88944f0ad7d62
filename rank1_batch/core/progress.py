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
            "score: %s committed; %d/%d shards, %d/%d pairs, %.1f pairs/s, ETA %s",
            shard,
            self.shards_done,
            self.shards,
            self.pairs_done,
            self.pairs,
            self.rate(),
            format_eta(self.eta()),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
