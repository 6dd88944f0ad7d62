"""``reuse/`` is built once per output, by the run that holds it, and then only read.

Two runs score one output when a second joins (``--join``, :mod:`rank1_batch.io.lease`). The
reuse stage (:func:`build_reuse`) clears and rewrites ``reuse/<shard>.parquet``
files, so it must never run while another run reads them. The holder builds them before it
scores and then publishes ``reuse/_built.json`` (create-only, written after every reuse
file): the shards covered, the sources, the matches. A joiner never builds nor deletes
anything under ``reuse/``: it waits for that marker (bounded: while the holder is alive, and
at most :data:`WAIT_S`), then scores with what it names.

A holder that finds the marker keeps the build (a resume of the same job); it builds again
only when the ``reuse:`` sources changed and no joiner is running. A build that died before
its marker is invisible to joiners and is cleared by the next holder's build.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from rank1_batch.io import lease
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import reuse, reuse_join

log = logging.getLogger(__name__)

BUILT = f"{reuse.REUSE}/_built.json"
WAIT_S = float(os.environ.get("RANK1_REUSE_WAIT_S", "3600"))  # a joiner's longest wait
POLL_S = 2.0
# How much one task or shuffle partition of the build takes on, at most: shards per read
# block, key rows (about 70 bytes each) per join partition, matched rows (a trace each, about
# 1 KB) per fetch and write partition.
SHARDS_PER_BLOCK = 500
KEYS_PER_PARTITION = 2_000_000
MATCHES_PER_PARTITION = 200_000


def ensure_built(
    spec: JobSpec,
    store: Store,
    pending: list[str],
    held: lease.Lease,
    *,
    wait_s: float = WAIT_S,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """Make ``reuse/`` ready for scoring ``pending``: build and publish it (the holder) or
    wait for the holder's (a joiner). Returns the marker's contents."""
    if held.me.role == "joiner":
        return wait_built(store, lambda: lease.live_holder(store), wait_s=wait_s, poll_s=poll_s)
    if store.exists(BUILT):
        built: dict[str, Any] = store.read_json(BUILT)
        if built.get("sources") == list(spec.reuse):
            log.info("reuse: %s built earlier; scoring with it", BUILT)
            return built
        if held.others_running():
            log.warning(
                "reuse: the reuse: sources changed, but a joined run is reading reuse/; "
                "keeping the build of %s",
                built.get("sources"),
            )
            return built
        store.delete(BUILT)  # no one else reads reuse/ now: build again for the new sources
    counts = build_reuse(spec, store, pending)
    record = {
        "sources": list(spec.reuse),
        "shards": sorted(pending),
        "matched": counts,
        "built_at": time.time(),
    }
    if not store.create_json(BUILT, record):  # a run that took over from us published first
        taken: dict[str, Any] = store.read_json(BUILT)
        return taken
    return record


def wait_built(
    store: Store,
    holder: Callable[[], lease.Run | None],
    *,
    wait_s: float = WAIT_S,
    poll_s: float = POLL_S,
) -> dict[str, Any]:
    """The marker's contents once it exists; :class:`lease.OutputBusy` (one line) when the
    holder is gone without publishing it, or after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        if store.exists(BUILT):
            built: dict[str, Any] = store.read_json(BUILT)
            return built
        rec = holder()
        if rec is None:
            raise lease.OutputBusy(
                f"{store.uri}: no live run holds this output and {BUILT} is missing: the holder "
                "builds reuse/ before it scores; run without --join to build it"
            )
        if time.monotonic() >= deadline:
            raise lease.OutputBusy(
                f"{store.uri}: waited {wait_s:g} s for {rec.who()} to publish {BUILT}; "
                "run --join again later (RANK1_REUSE_WAIT_S sets the wait)"
            )
        if not said:
            log.info("reuse: waiting for %s to build reuse/ (up to %g s)", rec.who(), wait_s)
            said = True
        time.sleep(poll_s)


def build_reuse(spec: JobSpec, store: Store, pending: list[str]) -> dict[str, int]:
    """Match pending shards' pairs against the ``reuse:`` sources; write ``reuse/`` files.

    Returns {shard: matched rows} for shards with matches. Runs on Ray Data.
    """
    import ray.data

    from rank1_batch.job.resolve import resolve_spec

    spec = resolve_spec(spec)  # here, not in each task: the key hashes the driver's values
    _clear(store, set(pending))
    sources = reuse.usable_sources(spec)
    items = [
        {"uri": uri, "shard": shard, "priority": (i << 32) + j}
        for i, (uri, shards) in enumerate(sources)
        for j, shard in enumerate(shards)
    ]
    if not items or not pending:
        return {}
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    target_pairs = len(pending) * spec.output.shard_size
    source_pairs = sum(
        len(shards) * reuse._source_spec(uri, spec.storage).output.shard_size
        for uri, shards in sources
    )
    targets = ray.data.from_items(
        [{"shard": s} for s in pending], override_num_blocks=_blocks(len(pending), cpus)
    ).map_batches(
        functools.partial(reuse_join.target_rows, spec=spec, store=store),
        batch_size=1, batch_format="pyarrow", num_cpus=0.5,
    )  # fmt: skip
    found = ray.data.from_items(items, override_num_blocks=_blocks(len(items), cpus)).map_batches(
        functools.partial(reuse_join.source_keys, storage=spec.storage),
        batch_size=1, batch_format="pyarrow", num_cpus=0.5,
    )  # fmt: skip
    # Phase 1 moves keys and pointers only; phase 2 reads results of matched shards only.
    written = (
        targets.union(found)
        .groupby("bucket", num_partitions=_parts(target_pairs + source_pairs, KEYS_PER_PARTITION,
                                                   cpus, reuse_join.BUCKETS))
        .map_groups(reuse_join.join_bucket, batch_format="pyarrow", num_cpus=0.5)
        # Phase 2 in parallel, one group a matched source shard. Its map_groups asks no CPUs of
        # its own so that Ray Data fuses it into the shuffle's reduce tasks, which drop empty
        # output blocks: unfused (num_cpus=0.5), an empty partition here comes out as a block
        # without columns, and the next hash shuffle (Ray Data 2.60) fails on it when it comes
        # first in a mapper's input ("Schema at index 1 was different").
        .groupby(["source", "source_shard"],
                 num_partitions=_parts(target_pairs, MATCHES_PER_PARTITION, cpus, len(items)))
        .map_groups(functools.partial(reuse_join.fetch_rows, storage=spec.storage),
                    batch_format="pyarrow")
        .groupby("shard",
                 num_partitions=_parts(target_pairs, MATCHES_PER_PARTITION, cpus, len(pending)))
        .map_groups(functools.partial(reuse_join.write_shard, store=store),
                    batch_format="pyarrow", num_cpus=0.5)
        .take_all()
    )  # fmt: skip
    counts = {str(r["shard"]): int(r["rows"]) for r in written}
    log.info(
        "reuse: %d pairs of %d shards match earlier outputs", sum(counts.values()), len(counts)
    )
    return counts


def _blocks(n: int, cpus: int) -> int:
    """Read blocks for ``n`` shards: two per CPU, more only past :data:`SHARDS_PER_BLOCK` a
    block. Each block is a task, and Ray Data's fixed cost per task and per shuffle partition
    was most of the build: the same build of 200,000 pairs (100 source shards, 10 target
    shards, 2 CPUs) took 7.8 s warm with 64 blocks and 16 partitions, 1.4 s with 8 and 4."""
    return max(1, min(n, max(2 * cpus, math.ceil(n / SHARDS_PER_BLOCK))))


def _parts(rows: int, per: int, cpus: int, most: int) -> int:
    """Shuffle partitions for about ``rows`` rows: one per CPU (at most 16), more when a
    partition would hold over ``per`` rows; never more than ``most``."""
    return max(1, min(most, max(min(cpus, 16), math.ceil(rows / per))))


def _clear(store: Store, shards: set[str]) -> None:
    """Drop reuse files of the shards about to be matched again (an earlier run's)."""
    for name in store.list(reuse.REUSE):
        if name.endswith(".parquet") and name[: -len(".parquet")] in shards:
            store.fs.rm(store.path(f"{reuse.REUSE}/{name}"))
