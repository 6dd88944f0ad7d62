"""Stage 1: normalise, validate, dedup, group by query and cut into shards (Ray, CPU).

Two plans, both a pure function of the input and ``shard_size`` (Ray's block boundaries
never decide anything), both keeping each query whole in one shard:

* **grouped** (the common case: a query's rows are contiguous in the input): one pass, one
  Ray task per input unit, no shuffle; see :mod:`rank1_batch.job.prepare_grouped`. Resumable
  per unit.
* **shuffle** (anything else): a query goes to shard ``hash(query_id) % n_shards`` (a stable
  hash, not Python's) through a Ray Data groupby; inside a shard rows are ordered by
  (query_id, input order). It streams: ``n_shards`` comes from the scan's row counts
  (:func:`normalised_rows`), and the rows go read -> shard -> shuffle -> write without the
  whole input ever held in the object store (Ray Data's shuffle spills what does not fit).

Each pair is written with its ``text_key`` (:mod:`rank1_batch.core.text_key`), which reuse
matches on. Re-running prepare rewrites identical files, and once ``pairs/_manifest.json``
exists it is not re-run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rank1_batch.core import text_key
from rank1_batch.core.rows import TextSettings
from rank1_batch.core.schemas import DUPLICATES_SCHEMA, REJECTED_SCHEMA
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import StorageSpec, filesystem, parquet_bytes, sha256
from rank1_batch.io.store import Store
from rank1_batch.job import prepare_grouped as grouped
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


def shard_of(query_id: str | None, n_shards: int) -> int:
    digest = hashlib.blake2b((query_id or "").encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def _sorted_by(table: pa.Table, *keys: str) -> pa.Table:
    return table.take(pc.sort_indices(table, [(k, "ascending") for k in keys]))


def build_shard(rows: pa.Table) -> tuple[pa.Table, pa.Table, int]:
    """One shard's normalised rows → (pairs, rejected, duplicate count)
    (:func:`shard_tables`)."""
    pairs, rejected, duplicates = shard_tables(rows)
    return pairs, rejected, duplicates.num_rows


def shard_tables(rows: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """One shard's normalised rows → (pairs, rejected, duplicates), the last two not yet
    located (:func:`rank1_batch.job.sources.locate`).

    Pairs keep the first occurrence (in input order) of each (query_id, doc_id), ordered by
    query then input order, with ``input_rank``: the pair's 1-based position in its query's
    first-stage list.
    """
    rows = sources.with_sources(rows)
    bad = pc.is_valid(rows.column("reason"))
    rejected = sources.rejected_rows(_sorted_by(rows.filter(bad), "input_order"))
    kept, duplicates = sources.dedup(rows.filter(pc.invert(bad)))
    pairs = _sorted_by(kept, "query_id", "input_order")
    qid = pairs.column("query_id").to_numpy(zero_copy_only=False)
    starts = np.ones(len(qid), dtype=bool)
    if len(qid) > 1:
        starts[1:] = qid[1:] != qid[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(qid)), 0))
    rank = (np.arange(len(qid)) - group_start + 1).astype(np.int32)
    pairs = pairs.drop_columns(["reason", *sources.SOURCE_COLUMNS])
    return pairs.append_column("input_rank", pa.array(rank)), rejected, duplicates


def _read_units(batch: pa.Table, *, spec: JobSpec) -> pa.Table:
    tables = [
        read_unit(Unit(f, g, o), spec.input, spec.storage)
        for f, g, o in zip(
            *(batch.column(c).to_pylist() for c in ("file", "row_group", "ordinal")), strict=True
        )
    ]
    return pa.concat_tables(tables)


def normalised_rows(files: list[InputFile], work: list[Unit], spec: JobSpec) -> int:
    """How many rows :func:`read_unit` gives for ``work``, without reading the texts.

    Pairs: one row per input row, as the scan counted them (``files``). Candidates: one row per
    candidate, or one for an empty list: only one leaf of each list is read (Parquet), or the
    text file's list column (driver threads, as the grouped scan reads query ids).
    """
    if spec.input.format == "pairs":
        return sum(f.rows for f in files)
    with ThreadPoolExecutor(grouped.SCAN_THREADS) as pool:
        return sum(pool.map(lambda u: _candidate_rows(u, spec.input, spec.storage), work))


def _candidate_rows(unit: Unit, input_spec: InputSpec, storage: StorageSpec | None) -> int:
    name = input_spec.candidates_column
    if file_type(unit.file, input_spec.file_type) == "parquet":
        fs, bare = filesystem(unit.file, storage)
        with fs.open(bare, "rb") as fh:
            pf = pq.ParquetFile(fh)
            leaves = [pf.schema.column(i).path for i in range(pf.metadata.num_columns)]
            leaf = next(p for p in leaves if p.startswith(f"{name}."))
            lists = pf.read_row_group(unit.row_group, columns=[leaf]).column(0)
    else:
        lists = read_text(unit.file, input_spec, storage).column(name)
    lengths = pc.fill_null(pc.list_value_length(lists), 0)
    return int(pc.sum(pc.max_element_wise(lengths, 1)).as_py() or 0)


def _assign_shard(table: pa.Table, n_shards: int) -> pa.Table:
    ids = table.column("query_id").to_pylist()
    return table.append_column("shard", pa.array([shard_of(q, n_shards) for q in ids], pa.int32()))


def _write_shard(
    rows: pa.Table,
    store: Store,
    n_shards: int,
    files: tuple[str, ...] = (),
    input_spec: InputSpec | None = None,
    reasoning: TextSettings | None = None,
) -> pa.Table:
    """Write one shard's pairs (with their text keys under ``reasoning``,
    :mod:`rank1_batch.core.text_key`), rejected and duplicate rows (``files``: each unit's file,
    by ordinal, to name where rows came from); return its stats row."""
    name = layout.shard_name(int(rows.column("shard")[0].as_py()), n_shards)
    pairs, rejected, duplicates = shard_tables(rows.drop_columns(["shard"]))
    if reasoning is not None:
        pairs = text_key.with_text_keys(pairs, reasoning)
    data = parquet_bytes(pairs, plain=True)
    if pairs.num_rows:
        store.write_atomic(layout.pairs_path(name), data)
    declared = input_spec.file_type if input_spec is not None else "auto"
    kind = functools.partial(file_type, declared=declared)
    where = dict(enumerate(files))
    if rejected.num_rows:
        table = sources.locate(rejected, where, kind, store.storage, REJECTED_SCHEMA)
        store.write_atomic(layout.rejected_path(name), parquet_bytes(table))
    if duplicates.num_rows:
        table = sources.locate(duplicates, where, kind, store.storage, DUPLICATES_SCHEMA)
        store.write_atomic(layout.duplicates_path(name), parquet_bytes(table))
    return pa.table(
        {
            "id": [name],
            "rows": [pairs.num_rows],
            "queries": [len(pc.unique(pairs.column("query_id")))],
            "rejected": [rejected.num_rows],
            "duplicates": [duplicates.num_rows],
            "sha256": [sha256(data) if pairs.num_rows else ""],
            "input_rows": [rows.num_rows],
        }
    )


PLAN = "pairs/_plan.json"


def prepare(spec: JobSpec, store: Store, files: list[InputFile]) -> dict[str, Any]:
    """Run prepare unless the manifest exists; return the manifest.

    Grouped input (detected, or ``input.grouped: true``) takes the one-pass path of
    :mod:`rank1_batch.job.prepare_grouped`; other input is shuffled by query. The path chosen
    is recorded in ``pairs/_plan.json`` before any shard is written, so a resumed prepare
    takes the same one.
    """
    if store.exists(layout.MANIFEST):
        manifest: dict[str, Any] = store.read_json(layout.MANIFEST)
        return manifest
    mode = store.read_json(PLAN)["mode"] if store.exists(PLAN) else None
    tasks: list[grouped.UnitTask] = []
    count = 0
    if mode != "shuffle" and spec.input.grouped is not False:
        try:
            tasks, count = grouped.unit_tasks(files, spec)
            mode = "grouped"
        except grouped.NotGrouped as exc:
            if spec.input.grouped is True or mode == "grouped":
                raise InputError(
                    f"input {spec.input.path} is not grouped by query: {exc}; "
                    "set input.grouped to false (or auto) to shuffle it"
                ) from None
            log.info("prepare: input not grouped by query (%s); shuffling", exc)
    mode = mode or "shuffle"
    if not store.exists(PLAN):
        store.write_json(PLAN, {"mode": mode})
    if mode == "grouped":
        manifest = _prepare_grouped(spec, store, tasks, count)
    else:
        manifest = _prepare_shuffled(spec, store, files)
    store.write_json(layout.MANIFEST, manifest)
    return manifest


def _prepare_grouped(
    spec: JobSpec, store: Store, tasks: list[grouped.UnitTask], count: int
) -> dict[str, Any]:
    import ray

    n_units = len(tasks)
    # One listing of the unit markers: a unit with one is done (its shards were written first).
    present = {f"{grouped.UNITS}/{n}" for n in store.list(grouped.UNITS)}
    paths = {t.ordinal: grouped.unit_marker_path(t.ordinal, n_units) for t in tasks}
    finished = [paths[t.ordinal] for t in tasks if paths[t.ordinal] in present]
    pending = [t for t in tasks if paths[t.ordinal] not in present]
    log.info(
        "prepare: input grouped by query; %d units (%d already done), up to %d shards",
        n_units,
        len(finished),
        count,
    )
    markers = commit.read_json_many(store, finished)
    if pending and ray.is_initialized():
        # One CPU a unit: a unit is CPU-bound (decode, checks, encode), and half-CPU tasks
        # only make two share a core (measured slower on a 2-core machine).
        cpus = min(1.0, ray.cluster_resources().get("CPU", 1.0))
        run = ray.remote(num_cpus=cpus)(grouped.run_unit)
        markers += _gather(
            [run.remote(t, spec, store, count, n_units) for t in pending], len(finished), n_units
        )
    else:  # no Ray (tests, tools): the same units in this process, one after another
        markers += [grouped.run_unit(t, spec, store, count, n_units) for t in pending]
    markers.sort(key=lambda m: m["unit"])
    shards = [s for m in markers for s in m["shards"]]
    return {
        "plan": "grouped",
        "name_count": count,
        "input_rows": sum(m["input_rows"] for m in markers),
        "pairs": sum(m["pairs"] for m in markers),
        "rejected": sum(m["rejected"] for m in markers),
        "duplicates": sum(m["duplicates"] for m in markers),
        "shards": shards,
        "rejected_files": [m["rejected_file"] for m in markers if m["rejected_file"]],
        "duplicate_files": [m["duplicate_file"] for m in markers if m.get("duplicate_file")],
    }


def _gather(refs: list[Any], done: int, total: int, every: float = 10.0) -> list[Any]:
    """Results of ``refs`` as they finish, logging progress every ``every`` seconds."""
    import ray

    out: list[Any] = []
    last = time.monotonic()
    while refs:
        ready, refs = ray.wait(refs, num_returns=len(refs), timeout=every)
        out += ray.get(ready)
        if refs and time.monotonic() - last >= every:
            log.info("prepare: %d of %d units done", done + len(out), total)
            last = time.monotonic()
    return out


def _prepare_shuffled(spec: JobSpec, store: Store, files: list[InputFile]) -> dict[str, Any]:
    """Every row to shard ``hash(query_id) % n_shards`` through a Ray Data groupby.

    Not resumable inside: the shuffle has no finished part until it ends, so a crash redoes it.
    """
    import ray.data

    work = units(files)
    items = [{"file": u.file, "row_group": u.row_group, "ordinal": u.ordinal} for u in work]
    # The shard count comes from row counts the scan read (Parquet metadata, text files counted
    # whole): the rows stream read -> shard -> groupby -> write, never held in the object store
    # whole (Ray Data's shuffle spills what does not fit).
    total = normalised_rows(files, work, spec)
    n_shards = max(1, math.ceil(total / spec.output.shard_size))
    log.info(
        "prepare: %d input pairs -> %d shards of about %d", total, n_shards, spec.output.shard_size
    )
    normal = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        functools.partial(_read_units, spec=spec),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0.5,
    )
    stats = (
        normal.map_batches(
            functools.partial(_assign_shard, n_shards=n_shards),
            batch_format="pyarrow",
            num_cpus=0.5,
        )
        .groupby("shard", num_partitions=min(n_shards, 64))
        .map_groups(
            functools.partial(
                _write_shard,
                store=store,
                n_shards=n_shards,
                files=tuple(u.file for u in work),
                input_spec=spec.input,
                reasoning=spec.reasoning,
            ),
            batch_format="pyarrow",
            num_cpus=0.5,
        )
        .take_all()
    )
    stats.sort(key=lambda r: r["id"])
    shards = [
        {
            "id": r["id"],
            "path": layout.pairs_path(r["id"]),
            "rows": int(r["rows"]),
            "queries": int(r["queries"]),
            "rejected": int(r["rejected"]),
            "duplicates": int(r["duplicates"]),
            "sha256": r["sha256"],
        }
        for r in stats
    ]
    if sum(int(r["input_rows"]) for r in stats) != total:
        raise RuntimeError("prepare lost rows: shard inputs do not add up to the input count")
    return {
        "plan": "shuffle",
        "n_buckets": n_shards,
        "input_rows": total,
        "pairs": sum(s["rows"] for s in shards),
        "rejected": sum(s["rejected"] for s in shards),
        "duplicates": sum(s["duplicates"] for s in shards),
        "shards": [s for s in shards if s["rows"]],
        "rejected_files": [layout.rejected_path(s["id"]) for s in shards if s["rejected"]],
        "duplicate_files": [layout.duplicates_path(s["id"]) for s in shards if s["duplicates"]],
    }
