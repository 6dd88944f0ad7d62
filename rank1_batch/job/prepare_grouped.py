"""Prepare for input grouped by query: one pass, one task per input unit, no shuffle.

Most inputs already keep a query's rows together (candidate lists, runs and pair files sorted
by query). For them a shuffle is wasted work: every unit (one row group of one file) can cut
its own queries into shards.

1. **Scan** (driver, threads): read only the query-id column of every unit; record its first
   and last id, how many of its rows continue the previous unit's last query, and a 64-bit
   hash of every query it starts. The input is grouped when no query starts twice (a query
   may run across unit boundaries, never come back). Memory: 8 bytes per query.
2. **Plan**: unit *k* owns every query that starts in it, with the rows that continue it in
   the next units; the rows of a unit that continue an earlier unit's query belong to that
   unit. Shard numbers are reserved per unit from an upper bound on its shard count (each
   shard but a unit's last holds at least ``shard_size`` pairs), so names are known before
   any unit runs and sort in input order.
3. **Units** (Ray tasks): read, normalise, reject, dedup (first occurrence), rank, cut whole
   queries into shards of at least ``shard_size`` pairs, write them with the unit's
   ``rejected/`` and ``duplicates/`` rows, then write the unit's marker
   ``pairs/_units/unit-N.json``. A crash mid-prepare redoes only units without one.

Rows of a shard keep input order (whole queries, each in its input order). A row whose query
id is null has no query to follow: it is rejected by the unit it sits in.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rank1_batch.core import text_key
from rank1_batch.core.schemas import DUPLICATES_SCHEMA, REJECTED_SCHEMA
from rank1_batch.io import layout
from rank1_batch.io.fs import StorageSpec, filesystem, parquet_bytes, sha256
from rank1_batch.io.store import Store
from rank1_batch.job import sources
from rank1_batch.job.inputs import (
    InputError,
    InputFile,
    Unit,
    file_type,
    read_text,
    read_unit,
    units,
)
from rank1_batch.job.spec import InputSpec, JobSpec

log = logging.getLogger(__name__)

UNITS = "pairs/_units"
SCAN_THREADS = 8


def unit_marker_path(ordinal: int, n_units: int) -> str:
    width = max(5, len(str(max(n_units, 1) - 1)))
    return f"{UNITS}/unit-{ordinal:0{width}d}.json"


@dataclass(frozen=True)
class UnitScan:
    """What the scan learns about one unit from its query-id column alone."""

    rows: int
    first: str | None  # first non-null query id
    last: str | None  # last non-null query id
    first_run: int  # rows holding ``first`` (all in its leading run when the unit is grouped)
    grouped: bool  # every query id of the unit sits in one run
    stray: str | None  # a query id that comes back within the unit, when not grouped
    hashes: np.ndarray  # one uint64 per query id the unit holds


def _hash64(ids: list[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(q.encode(), digest_size=8).digest(), "big") for q in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def scan_unit(unit: Unit, input_spec: InputSpec, storage: StorageSpec | None) -> UnitScan:
    column = input_spec.columns.query_id
    if file_type(unit.file, input_spec.file_type) == "parquet":
        fs, bare = filesystem(unit.file, storage)
        with fs.open(bare, "rb") as fh:
            col = pq.ParquetFile(fh).read_row_group(unit.row_group, columns=[column]).column(0)
    else:  # a CSV/TSV/JSONL file is one unit, read whole (inputs.read_unit does the same)
        col = read_text(unit.file, input_spec, storage).column(column)
    rows = len(col)
    ids = pc.cast(col, pa.string()).drop_null().combine_chunks()
    if not len(ids):
        return UnitScan(rows, None, None, 0, True, None, np.zeros(0, np.uint64))
    changes = pc.not_equal(ids[1:], ids[:-1]) if len(ids) > 1 else pa.array([], pa.bool_())
    runs = 1 + int(pc.sum(changes).as_py() or 0)
    unique = pc.unique(ids)
    grouped = runs == len(unique)
    stray = None
    if not grouped:
        starts = np.flatnonzero(np.concatenate([[True], changes.to_numpy(zero_copy_only=False)]))
        seen: set[str] = set()
        for q in pc.take(ids, pa.array(starts)).to_pylist():
            if q in seen:
                stray = q
                break
            seen.add(q)
    first, last = ids[0].as_py(), ids[-1].as_py()
    first_run = int(pc.sum(pc.equal(ids, first)).as_py() or 0)
    return UnitScan(rows, first, last, first_run, grouped, stray, _hash64(unique.to_pylist()))


@dataclass(frozen=True)
class UnitTask:
    """One unit's share of the work: its own queries plus their continuation in later units."""

    ordinal: int
    file: str
    row_group: int
    skip_query: str | None  # continues an earlier unit's query: those rows are not ours
    continued: list[tuple[str, int, int]] = field(default_factory=list)  # later units' parts
    carry_query: str | None = None  # the query continued there
    first_index: int = 0  # shard numbers reserved for this unit: [first_index, first_index+bound)
    bound: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NotGrouped(Exception):
    """The input is not grouped by query; the message says where a query comes back."""


def unit_tasks(
    files: list[InputFile], spec: JobSpec, *, threads: int = SCAN_THREADS
) -> tuple[list[UnitTask], int]:
    """Scan the query ids and plan one task per unit; return (tasks, shard-name count).

    Raises :class:`NotGrouped` when some query's rows are not contiguous in the input.
    """
    work = units(files)
    with ThreadPoolExecutor(threads) as pool:
        scans = list(pool.map(lambda u: scan_unit(u, spec.input, spec.storage), work))
    continues = [False] * len(work)
    for k in range(1, len(work)):
        # Only the unit right before may hand a query over (a unit of null ids breaks the run).
        continues[k] = scans[k].first is not None and scans[k].first == scans[k - 1].last
    for u, s in zip(work, scans, strict=True):
        if not s.grouped:
            raise NotGrouped(
                f"query {s.stray!r} comes back after other queries in {u.file} "
                f"(row group {u.row_group})"
            )
    # The queries each unit starts: all it holds but the one it continues.
    starts = [
        s.hashes[s.hashes != _hash64([s.first])[0]] if continues[k] and s.first else s.hashes
        for k, s in enumerate(scans)
    ]
    every = np.concatenate(starts) if starts else np.zeros(0, np.uint64)
    uniq, counts = np.unique(every, return_counts=True)
    if len(uniq) != len(every):
        twice = uniq[counts > 1][0]
        where = [f"{u.file} (row group {u.row_group})" for u, h in zip(work, starts, strict=True)
                 if (h == twice).any()]  # fmt: skip
        raise NotGrouped(f"a query starts in {where[0]} and again in {where[1]}")
    size = spec.output.shard_size
    tasks: list[UnitTask] = []
    index = 0
    for k, (u, s) in enumerate(zip(work, scans, strict=True)):
        own = s.rows - (s.first_run if continues[k] else 0)
        continued: list[tuple[str, int, int]] = []
        j = k + 1
        # A unit that is all one continued query carries nothing: the query is not its own.
        carries = s.last is not None and not (continues[k] and s.last == s.first)
        while carries and j < len(work) and continues[j]:
            continued.append((work[j].file, work[j].row_group, work[j].ordinal))
            own += scans[j].first_run
            # Go on only while the whole next unit is this one query.
            if scans[j].last != s.last:
                break
            j += 1
        # Pairs: one row per pair. Candidates: a row may hold many pairs, but each shard
        # holds at least one query, so rows bound the count either way.
        bound = own // size + 1 if spec.input.format == "pairs" else own + 1
        tasks.append(
            UnitTask(
                u.ordinal,
                u.file,
                u.row_group,
                s.first if continues[k] else None,
                continued,
                s.last if continued else None,
                index,
                bound,
            )
        )
        index += bound
    return tasks, index


def query_starts(pairs: pa.Table) -> np.ndarray:
    """Row indices where a new query begins (rows grouped by query)."""
    n = pairs.num_rows
    if n < 2:
        return np.zeros(n, np.int64)
    qid = pairs.column("query_id")
    changes = pc.not_equal(qid[1:], qid[:-1]).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(changes) + 1])


def cut(pairs: pa.Table, shard_size: int) -> list[tuple[int, int, int]]:
    """Slices (offset, length, queries) of whole queries, each of at least ``shard_size`` rows
    but the last."""
    n = pairs.num_rows
    if not n:
        return []
    starts = query_starts(pairs)
    out, begin, first = [], 0, 0
    for k in range(1, len(starts)):
        s = int(starts[k])
        if s - begin >= shard_size:
            out.append((begin, s - begin, k - first))
            begin, first = s, k
    out.append((begin, n - begin, len(starts) - first))
    return out


def unit_rows(task: UnitTask, spec: JobSpec) -> pa.Table:
    """The normalised rows this unit owns, in input order."""
    own = read_unit(Unit(task.file, task.row_group, task.ordinal), spec.input, spec.storage)
    if task.skip_query is not None:
        theirs = pc.fill_null(pc.equal(own.column("query_id"), task.skip_query), False)
        own = own.filter(pc.invert(theirs))
    parts = [own]
    for file, row_group, ordinal in task.continued:
        more = read_unit(Unit(file, row_group, ordinal), spec.input, spec.storage)
        parts.append(
            more.filter(pc.fill_null(pc.equal(more.column("query_id"), task.carry_query), False))
        )
    return pa.concat_tables(parts) if len(parts) > 1 else own


def split_unit(rows: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(pairs, rejected, duplicates) of grouped rows in input order; pairs keep that order.
    Rejected and duplicate rows are not yet located (:func:`sources.locate`)."""
    if rows.column("reason").null_count == rows.num_rows:  # the common case: nothing rejected
        rejected, good = sources.rejected_rows(rows.slice(0, 0)), rows
    else:
        bad = pc.is_valid(rows.column("reason"))
        rejected = sources.rejected_rows(rows.filter(bad))
        if rejected.num_rows > 1:  # lists with no candidates come after a unit's exploded rows
            rejected = rejected.take(pc.sort_indices(rejected.column("input_order")))
        good = rows.filter(pc.invert(bad))
    good, duplicates = sources.dedup(good)
    n = good.num_rows
    starts = np.zeros(n, bool)
    starts[query_starts(good)] = True
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = (np.arange(n) - group_start + 1).astype(np.int32)
    pairs = good.drop_columns(["reason", *sources.SOURCE_COLUMNS])
    return pairs.append_column("input_rank", pa.array(rank)), rejected, duplicates


def run_unit(
    task: UnitTask, spec: JobSpec, store: Store, count: int, n_units: int
) -> dict[str, Any]:
    """Prepare one unit: write its shards and rejected rows, then its marker; return the marker."""
    rows = unit_rows(task, spec)
    pairs, rejected, duplicates = split_unit(rows)
    pairs = text_key.with_text_keys(pairs, spec.reasoning)  # reuse matches on it, not texts
    files = {task.ordinal: task.file, **{o: f for f, _, o in task.continued}}
    slices = cut(pairs, spec.output.shard_size)
    if len(slices) > task.bound:
        raise RuntimeError(
            f"unit {task.ordinal}: {len(slices)} shards exceed its bound {task.bound}"
        )
    shards = []
    for i, (offset, length, queries) in enumerate(slices):
        name = layout.shard_name(task.first_index + i, count)
        data = parquet_bytes(pairs.slice(offset, length), plain=True)
        store.write_atomic(layout.pairs_path(name), data, durable=False)
        shards.append(
            {
                "id": name,
                "path": layout.pairs_path(name),
                "rows": length,
                "queries": queries,
                "sha256": sha256(data),
            }
        )
    written: dict[str, str | None] = {"rejected": None, "duplicates": None}
    for folder, table, schema in (
        ("rejected", rejected, REJECTED_SCHEMA),
        ("duplicates", duplicates, DUPLICATES_SCHEMA),
    ):
        if table.num_rows:
            kind = functools.partial(file_type, declared=spec.input.file_type)
            table = sources.locate(table, files, kind, spec.storage, schema)
            rel = written[folder] = f"{folder}/unit-{task.ordinal:05d}.parquet"
            store.write_atomic(rel, parquet_bytes(table), durable=False)
    marker = {
        "unit": task.ordinal,
        "input_rows": rows.num_rows,
        "pairs": pairs.num_rows,
        "rejected": rejected.num_rows,
        "duplicates": duplicates.num_rows,
        "shards": shards,
        "rejected_file": written["rejected"],
        "duplicate_file": written["duplicates"],
    }
    store.sync()  # the unit's files are durable before the marker that vouches for them
    store.write_json(unit_marker_path(task.ordinal, n_units), marker)
    return marker


__all__ = [
    "InputError",
    "NotGrouped",
    "UnitTask",
    "cut",
    "run_unit",
    "split_unit",
    "unit_tasks",
]
