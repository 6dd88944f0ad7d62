"""Reading a finished (or partly finished) output folder as Arrow tables.

Only shards named by ``_commits/`` markers are read, never a listing of ``scores/``: a
scores file without a marker may belong to an attempt that was killed before it committed.
Each shard's files come from its marker (:func:`rank1_batch.io.commit.read_committed`, checksum
verified).
A committed shard's scores file holds exactly the rows of its pairs file, in the same order
(``process_shard`` builds one from the other), so the two are zipped, not joined.

Two ways to read: :func:`open_committed` gives a :class:`Committed` view whose
:meth:`Committed.tables` yields one shard at a time with only the columns asked for (what
exports, eval and labels use: driver memory bounded by a few shards, whatever the number of
pairs); :func:`read_results` concatenates every shard into one table (small outputs, tests).
Both prepare plans keep every query whole in one shard, so per-query work (runs, metrics,
labels) is done shard by shard; :class:`QueryGuard` refuses an output where a query comes
back in a later shard rather than report it twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.io import commit, layout
from rank1_batch.io.fs import table_from_bytes
from rank1_batch.io.store import Store
from rank1_batch.pipeline.score import SCORES_SCHEMA

# Statuses whose score is the model's own judgement (``direct``: without reasoning, from
# reasoning.mode direct/cascade); ``fallback`` (0.5 by rule) and ``error`` (NaN) rows never
# become labels.
LABEL_STATUSES = ("complete", "forced", "direct")

PAIR_COLUMNS = ("query", "passage", "title", "input_rank")

RESULTS_SCHEMA = pa.schema(
    [
        *SCORES_SCHEMA,
        pa.field("query", pa.string()),
        pa.field("passage", pa.string()),
        pa.field("title", pa.string()),
        pa.field("input_rank", pa.int32()),
    ]
)


class ResultsError(RuntimeError):
    """The output folder has no committed results (or they are inconsistent)."""


def reasoning_mode(job: dict[str, Any]) -> str:
    """``reasoning.mode`` that produced ``score`` (think, direct or cascade)."""
    mode = job.get("spec", {}).get("reasoning", {}).get("mode", "think")
    if mode == "cascade":
        cascade = job["spec"]["reasoning"].get("cascade", {})
        return f"cascade(top_k={cascade.get('top_k')},margin={cascade.get('margin')})"
    return str(mode)


@dataclass(frozen=True)
class Results:
    """Committed rows of an output folder plus what produced them."""

    table: pa.Table  # RESULTS_SCHEMA, ordered by (query_id, rank)
    shards: tuple[str, ...]
    job: dict[str, Any]
    complete: bool  # _SUCCESS.json exists

    @property
    def model(self) -> str | None:
        return self._provenance().one("model")

    @property
    def prompt_id(self) -> str | None:
        return self._provenance().one("prompt_id")

    @property
    def reasoning_mode(self) -> str:
        """``reasoning.mode`` that produced ``score`` (think, direct or cascade)."""
        return reasoning_mode(self.job)

    def _provenance(self) -> Provenance:
        prov = Provenance()
        prov.add(self.table)
        return prov

    def provenance(self) -> dict[str, Any]:
        return self._provenance().to_dict(self)


def committed(store: Store) -> list[str]:
    return sorted(commit.committed_shards(store))


def shard_table(store: Store, shard: str, kind: str) -> pa.Table:
    """A committed shard's ``scores`` or ``traces`` table: the file its marker names,
    checksum verified."""
    table: pa.Table = commit.committed_table(store, shard, kind)
    return table


def read_shard(store: Store, shard: str) -> pa.Table:
    """One committed shard: its scores with the pair's text and first-stage rank."""
    scores = shard_table(store, shard, "scores")
    pairs = store.read_parquet(layout.pairs_path(shard))
    if scores.num_rows != pairs.num_rows or not (
        scores.column("query_id").equals(pairs.column("query_id"))
        and scores.column("doc_id").equals(pairs.column("doc_id"))
    ):
        raise ResultsError(f"{store.uri}: {shard}: scores do not match its pairs file")
    scores = scores.select(SCORES_SCHEMA.names)  # without reuse's reused_from
    for name in PAIR_COLUMNS:
        scores = scores.append_column(name, pairs.column(name))
    return scores.cast(RESULTS_SCHEMA)


def _committed_or_fail(
    store: Store, require_complete: bool
) -> tuple[dict[str, Any], list[str], bool]:
    """``job.json`` (its layout version checked), the committed shard names and whether the
    job finished; an error naming the output when there is nothing to read (or the job is
    unfinished and that was required)."""
    job = layout.read_job(store)
    shards = committed(store)
    if not shards:
        raise ResultsError(f"{store.uri}: no committed shards (run the job first)")
    complete = store.exists(layout.SUCCESS)
    if require_complete and not complete:
        raise ResultsError(f"{store.uri}: the job is not finished (no {layout.SUCCESS})")
    return job, shards, complete


def read_results(store: Store, *, require_complete: bool = False) -> Results:
    """All committed rows, ordered by (query_id, rank); errors (rank null) last per query."""
    job, shards, complete = _committed_or_fail(store, require_complete)
    table = pa.concat_tables([read_shard(store, s) for s in shards])
    # error rows (rank null) last within their query
    key = pa.table(
        {
            "q": table.column("query_id"),
            "r": pc.fill_null(table.column("rank"), pa.scalar(2**31 - 1, pa.int32())),
            "d": table.column("doc_id"),
        }
    )
    table = table.take(
        pc.sort_indices(key, [("q", "ascending"), ("r", "ascending"), ("d", "ascending")])
    )
    return Results(table, tuple(shards), job, complete)


def by_query(table: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by query_id, each group in the table's order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["query_id"], []).append(row)
    return out


# -- one shard at a time ------------------------------------------------------------------------


# Shards read ahead of the one being processed: local reads need little overlap; an object
# store's latency (3-4 requests a shard) is hidden by more (a shard's columns are ~100 KB).
PREFETCH = 2
REMOTE_PREFETCH = 16


def _scores_columns(data: bytes, columns: Sequence[str]) -> pa.Table:
    """``columns`` of a scores file, typed as :data:`SCORES_SCHEMA` has them."""
    table = table_from_bytes(data, columns=list(columns))
    return table.cast(pa.schema([SCORES_SCHEMA.field(c) for c in columns]))


@dataclass(frozen=True)
class Committed:
    """The committed shards of an output folder, read one at a time (never all at once).

    Holds the shard names only (one listing of ``_commits/``); each shard's marker is read
    when the shard is, so nothing per shard accumulates while reading.
    """

    store: Store
    shards: tuple[str, ...]
    job: dict[str, Any]
    complete: bool  # _SUCCESS.json exists

    @property
    def reasoning_mode(self) -> str:
        return reasoning_mode(self.job)

    def read(
        self, shard: str, columns: Sequence[str], pair_columns: Sequence[str] = ()
    ) -> tuple[commit.Marker, pa.Table]:
        """One shard's marker and table: ``columns`` of its committed scores file (checksum
        verified), plus ``pair_columns`` of its pairs file (only those column chunks)."""
        marker = commit.read_marker(self.store, shard)
        table = _scores_columns(commit.read_committed(self.store, marker, "scores"), columns)
        if not pair_columns:
            return marker, table
        wanted = ["query_id", "doc_id", *(c for c in pair_columns if c not in table.column_names)]
        pairs = self.store.read_parquet(layout.pairs_path(shard), columns=wanted)
        if pairs.num_rows != table.num_rows or not all(
            table.column(c).equals(pairs.column(c)) for c in wanted[:2] if c in table.column_names
        ):
            raise ResultsError(f"{self.store.uri}: {shard}: scores do not match its pairs")
        for name in wanted[2:]:
            table = table.append_column(name, pairs.column(name))
        return marker, table

    def tables(
        self, columns: Sequence[str], pair_columns: Sequence[str] = (), prefetch: int | None = None
    ) -> Iterator[tuple[commit.Marker, pa.Table]]:
        """Each committed shard as :meth:`read` gives it, in shard order; at most
        ``1 + prefetch`` shards are held at once (default :data:`PREFETCH` locally,
        :data:`REMOTE_PREFETCH` on an object store): each is read (:meth:`read`) while the
        consumer works on an earlier one, and handed over (:func:`hand_over`) in turn."""
        if prefetch is None:
            prefetch = PREFETCH if self.store.local else REMOTE_PREFETCH
        with ThreadPoolExecutor(max(1, prefetch)) as pool:
            ahead: deque[Future[tuple[commit.Marker, pa.Table]]] = deque()
            try:
                for shard in self.shards:
                    ahead.append(pool.submit(self.read, shard, columns, pair_columns))
                    if len(ahead) > prefetch:
                        yield from hand_over(ahead.popleft())
                while ahead:
                    yield from hand_over(ahead.popleft())
            finally:
                for future in ahead:  # a consumer that stopped early: read no further
                    future.cancel()


def hand_over(
    future: Future[tuple[commit.Marker, pa.Table]],
) -> Iterator[tuple[commit.Marker, pa.Table]]:
    """A read shard to the consumer of :meth:`Committed.tables`, which holds it until it asks
    for the next one."""
    yield future.result()


def open_committed(store: Store, *, require_complete: bool = False) -> Committed:
    """The committed shards of ``store`` (one listing of ``_commits/``)."""
    job, shards, complete = _committed_or_fail(store, require_complete)
    return Committed(store, tuple(shards), job, complete)


class QueryGuard:
    """Refuses a query seen in an earlier shard (prepare keeps each query whole in one shard;
    per-query work done shard by shard would count a split query twice).

    Memory: 8 bytes a query (64-bit hashes in a few sorted NumPy arrays, merged as they grow,
    so a check is a handful of binary searches), never per pair.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.blocks: list[np.ndarray] = []

    def check_table(self, table: pa.Table, shard: str) -> list[str]:
        """:meth:`check` the queries of one shard's table; return them (first seen first)."""
        queries: list[str] = pc.unique(table.column("query_id")).to_pylist()
        self.check(queries, shard)
        return queries

    def check(self, shard_queries: Sequence[str], shard: str) -> None:
        hashes = np.unique(np.fromiter((hash(q) for q in shard_queries), np.int64))
        for block in self.blocks:
            at = np.minimum(np.searchsorted(block, hashes), len(block) - 1)
            if (block[at] == hashes).any():
                again = next(q for q in shard_queries if hash(q) in set(block[at].tolist()))
                raise ResultsError(
                    f"{self.uri}: query {again!r} comes back in {shard} after an earlier "
                    "shard: per-query exports need each query whole in one shard (as prepare "
                    "writes them)"
                )
        while self.blocks and len(self.blocks[-1]) <= len(hashes):
            hashes = np.union1d(self.blocks.pop(), hashes)
        self.blocks.append(hashes)


class Provenance:
    """model, model_revision and prompt_id values seen, shard by shard (first seen first)."""

    COLUMNS = ("model", "model_revision", "prompt_id")

    def __init__(self) -> None:
        self.values: dict[str, dict[Any, None]] = {c: {} for c in self.COLUMNS}

    def add(self, table: pa.Table) -> None:
        for name in self.COLUMNS:
            for v in pc.unique(table.column(name)).to_pylist():
                self.values[name].setdefault(v, None)

    def one(self, name: str) -> Any:
        values = [v for v in self.values[name] if v is not None] or list(self.values[name])
        return values[0] if len(values) == 1 else (None if not values else ",".join(values))

    def to_dict(self, committed: Committed | Results) -> dict[str, Any]:
        revisions = list(self.values["model_revision"])
        return {
            "model": self.one("model"),
            "model_revision": revisions[0] if len(revisions) == 1 else revisions,
            "prompt_id": self.one("prompt_id"),
            "reasoning_mode": committed.reasoning_mode,
            "fingerprint": committed.job.get("fingerprint"),
            "shards": len(committed.shards),
            "complete": committed.complete,
        }
