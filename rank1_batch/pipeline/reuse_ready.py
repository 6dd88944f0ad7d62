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

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rank1_batch.io import lease
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import reuse, reuse_join

log = logging.getLogger(__name__)
T = TypeVar("T")

BUILT = f"{reuse.REUSE}/_built.json"
WAIT_S = float(os.environ.get("RANK1_REUSE_WAIT_S", "3600"))  # a joiner's longest wait
POLL_S = 2.0
# How much one task of the build takes on, at most: shards per phase-1 task, key rows (about
# 70 bytes each) per join task, matched rows (a trace each, about 1 KB) per fetch and write
# task.
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

    Returns {shard: matched rows} for shards with matches. Plain Ray tasks, each returning
    its output in hash pieces for the next step (as the conversion's join does,
    :mod:`rank1_batch.job.convert_join`): phase 1 reads the keys (targets, sources) in
    ``_blocks`` tasks, split by key bucket; one task per bucket piece joins them and splits the
    matches by source shard; one per source-shard piece fetches the matched rows and splits them
    by target shard; one per target-shard piece writes them. The driver holds references
    only. Without Ray (the local executor) the same steps run in this process.

    Why not Ray Data's ``groupby``: its three hash shuffles cost about 3-5 s each at any size
    (a 1M-pair build on 2 CPUs, its worker processes already started: phase 1 1.2 s, then
    5.0 s, 3.6 s and 2.9 s for shuffles that moved 1.1M keys, 50,000 pointers and 50,000 rows),
    most of a build whose data is a few seconds of work.
    """
    import ray

    from rank1_batch.job.convert_join import Tasks
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
    tasks = Tasks()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1))) if tasks.ray else 1
    target_pairs = len(pending) * spec.output.shard_size
    source_pairs = sum(
        len(shards) * reuse._source_spec(uri, spec.storage).output.shard_size
        for uri, shards in sources
    )
    nb = _parts(target_pairs + source_pairs, KEYS_PER_PARTITION, cpus, reuse_join.BUCKETS)
    nf = _parts(target_pairs, MATCHES_PER_PARTITION, cpus, len(items))
    nw = _parts(target_pairs, MATCHES_PER_PARTITION, cpus, len(pending))
    # Phase 1 moves keys and pointers only; phase 2 reads results of matched shards only.
    keyed = [
        tasks.call(reuse_join.target_pieces, nb + 1, chunk, nb, spec, store)
        for chunk in _chunks(pending, _blocks(len(pending), cpus))
    ] + [
        tasks.call(reuse_join.source_pieces, nb + 1, chunk, nb, spec.storage)
        for chunk in _chunks(items, _blocks(len(items), cpus))
    ]
    joined = [
        tasks.call(reuse_join.join_pieces, nf + 1, nf, *[k[1 + b] for k in keyed])
        for b in range(nb)
    ]
    del keyed
    fetched = [
        tasks.call(reuse_join.fetch_pieces, nw + 1, nw, spec.storage, *[j[1 + f] for j in joined])
        for f in range(nf)
    ]
    del joined
    written = [
        tasks.call(reuse_join.write_pieces, 1, store, *[x[1 + w] for x in fetched])
        for w in range(nw)
    ]
    del fetched
    counts: dict[str, int] = {}
    for table in tasks.get(written):
        counts.update(zip(table["shard"].to_pylist(), table["rows"].to_pylist(), strict=True))
    log.info(
        "reuse: %d pairs of %d shards match earlier outputs", sum(counts.values()), len(counts)
    )
    return counts


def _chunks(items: Sequence[T], k: int) -> list[list[T]]:
    """``items`` in ``k`` contiguous runs of nearly equal length."""
    bounds = [len(items) * i // k for i in range(k + 1)]
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def _blocks(n: int, cpus: int) -> int:
    """Phase-1 tasks for ``n`` shards: two per CPU, more only past :data:`SHARDS_PER_BLOCK` a
    task (a task's fixed cost was most of a small build: on the Ray Data build this replaced,
    one of 200,000 pairs on 2 CPUs took 7.8 s with 64 blocks a side and 16 partitions, 1.4 s
    with 8 and 4)."""
    return max(1, min(n, max(2 * cpus, math.ceil(n / SHARDS_PER_BLOCK))))


def _parts(rows: int, per: int, cpus: int, most: int) -> int:
    """Tasks (hash pieces) for about ``rows`` rows: one per CPU (at most 16), more when one
    would hold over ``per`` rows; never more than ``most``."""
    return max(1, min(most, max(min(cpus, 16), math.ceil(rows / per))))


def _clear(store: Store, shards: set[str]) -> None:
    """Drop reuse files of the shards about to be matched again (an earlier run's)."""
    for name in store.list(reuse.REUSE):
        if name.endswith(".parquet") and name[: -len(".parquet")] in shards:
            store.fs.rm(store.path(f"{reuse.REUSE}/{name}"))
