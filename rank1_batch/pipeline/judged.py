"""A shard's judgements while it is open: scalars in memory, reasoning text on local disk.

A shard commits as a whole, but its pairs finish one by one, in any order, over minutes; the
reasoning text is nearly all of what they produce (a few KiB a pair, up to the reasoning
budget). :class:`JudgedRows` takes each :class:`~rank1_batch.core.rank1.Judgement` the moment it
is made: its scalars go into per-column arrays (about 100 bytes a pair), its reasoning is
appended to a spill file and only its offset kept. The commit body reads the text back by
index, a row group at a time (:func:`rank1_batch.pipeline.score.commit_shard`), so a scoring
process holds the reasoning of the requests in flight and of one row group being written,
whatever the shard size or the reasoning budget.

Spill files live in ``$RANK1_BATCH_SPILL_DIR``, else the system temp folder (``TMPDIR``, then
``/tmp``): node-local scratch, never the output folder. Each is unlinked as soon as it is
created (POSIX), so it is gone when the shard commits or fails, and when the process dies
(``kill -9`` included): the kernel frees it with the last open descriptor. Point
``RANK1_BATCH_SPILL_DIR`` at a disk where ``/tmp`` is a RAM-backed tmpfs, or the text lands in
memory after all.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from array import array
from collections.abc import Iterable

from rank1_batch.core import rank1
from rank1_batch.core.stats import ShardStats

SPILL_DIR_ENV = "RANK1_BATCH_SPILL_DIR"


def spill_dir() -> str:
    """Where spill files go (``$RANK1_BATCH_SPILL_DIR``, else the system temp folder)."""
    return os.environ.get(SPILL_DIR_ENV) or tempfile.gettempdir()


class JudgedRows:
    """The judgements of ``n`` pairs, filled by index in any order (each index once)."""

    def __init__(self, n: int, directory: str | None = None) -> None:
        self.n = n
        self.filled = 0
        self.score = array("d", bytes(8 * n))
        self.logit = array("d", bytes(8 * n))
        self.prompt_tokens = array("q", bytes(8 * n))
        self.reasoning_tokens = array("q", bytes(8 * n))
        self.truncated = bytearray(n)
        self.status: list[str | None] = [None] * n
        self.error: list[str | None] = [None] * n
        self.finish_reason: list[str] = [""] * n
        self.score_direct: list[float | None] = [None] * n
        self.score_reasoned: list[float | None] = [None] * n
        self.decided_by: list[str | None] = [None] * n
        self._offset = array("q", bytes(8 * n))
        self._length = array("q", bytes(8 * n))
        self._directory = directory
        self._fd: int | None = None
        self._path: str | None = None  # set only where the open file could not be unlinked
        self._end = 0
        self._closed = False
        # The commit may still read in its thread when a cancelled shard closes the rows.
        self._lock = threading.Lock()
        self.spilled_bytes = 0

    @classmethod
    def of(cls, judgements: Iterable[rank1.Judgement], n: int) -> JudgedRows:
        rows = cls(n)
        try:
            for i, j in enumerate(judgements):
                rows.put(i, j)
        except BaseException:
            rows.close()
            raise
        return rows

    def __enter__(self) -> JudgedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, i: int, j: rank1.Judgement) -> None:
        """Record pair ``i``'s judgement; its reasoning goes to the spill file at once."""
        if not 0 <= i < self.n:
            raise IndexError(f"pair {i} is outside this shard's {self.n} judged pairs")
        if self.status[i] is not None:
            raise ValueError(f"pair {i} was already judged")
        if j.reasoning:
            data = j.reasoning.encode("utf-8", "surrogatepass")
            self._offset[i], self._length[i] = self._append(data), len(data)
        self.score[i], self.logit[i] = j.score, j.logit
        self.prompt_tokens[i], self.reasoning_tokens[i] = j.prompt_tokens, j.reasoning_tokens
        self.truncated[i] = j.truncated
        self.status[i], self.error[i], self.finish_reason[i] = j.status, j.error, j.finish_reason
        self.score_direct[i], self.score_reasoned[i] = j.score_direct, j.score_reasoned
        self.decided_by[i] = j.decided_by
        self.filled += 1

    def reasoning_size(self, i: int) -> int:
        """Bytes of pair ``i``'s reasoning (UTF-8)."""
        return self._length[i]

    def reasoning(self, i: int) -> str:
        """Pair ``i``'s reasoning text, read back from the spill file."""
        size = self._length[i]
        if not size:
            return ""
        with self._lock:
            if self._closed or self._fd is None:
                raise RuntimeError("the shard's spilled judgements were closed")
            data = os.pread(self._fd, size, self._offset[i])
        if len(data) != size:
            raise RuntimeError(f"spill file: short read for pair {i} ({len(data)} of {size})")
        return data.decode("utf-8", "surrogatepass")

    def judgement(self, i: int) -> rank1.Judgement:
        """Pair ``i``'s judgement as it was put (reasoning read back)."""
        status = self.status[i]
        if status is None:
            raise KeyError(f"pair {i} has not been judged")
        return rank1.Judgement(
            score=self.score[i],
            logit=self.logit[i],
            status=status,
            error=self.error[i],
            prompt_tokens=self.prompt_tokens[i],
            reasoning_tokens=self.reasoning_tokens[i],
            truncated=bool(self.truncated[i]),
            reasoning=self.reasoning(i),
            finish_reason=self.finish_reason[i],
            score_direct=self.score_direct[i],
            score_reasoned=self.score_reasoned[i],
            decided_by=self.decided_by[i],
        )

    def stats(self, seconds: float) -> ShardStats:
        if self.filled != self.n:
            raise RuntimeError(f"{self.n - self.filled} of {self.n} pairs were never judged")
        stats = ShardStats(pairs=self.n, seconds=seconds)
        for status in self.status:
            assert status is not None
            stats.count(status)
        stats.truncated = sum(self.truncated)
        stats.prompt_tokens = sum(self.prompt_tokens)
        stats.reasoning_tokens = sum(self.reasoning_tokens)
        return stats

    def close(self) -> None:
        """Free the spill file (idempotent; later reads raise)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def _append(self, data: bytes) -> int:
        with self._lock:
            if self._closed:
                raise RuntimeError("the shard's spilled judgements were closed")
            if self._fd is None:
                fd, path = tempfile.mkstemp(
                    prefix="rank1-spill-", suffix=".txt", dir=self._directory or spill_dir()
                )
                try:
                    os.unlink(path)  # gone with the descriptor, even if the process is killed
                except OSError:  # platforms that cannot unlink an open file: remove at close
                    self._path = path
                self._fd = fd
            offset = self._end
            view = memoryview(data)
            while view:
                written = os.pwrite(self._fd, view, self._end)
                self._end += written
                view = view[written:]
            self.spilled_bytes += len(data)
            return offset
