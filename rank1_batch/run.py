"""``rank1-batch run``: claim the output, prepare, score pending shards on Ray, finalize.

The driver holds no data: it lists inputs, reads the manifest and the commit markers, and
sums shard stats. Scoring runs in the Ray executor (:mod:`rank1_batch.pipeline.pool`) over
the shards not yet committed, or with ``compute.executor: local`` in this process
(:func:`rank1_batch.pipeline.local.run_local`), with the same shard body and commit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rank1_batch.core.stats import ShardStats
from rank1_batch.engines import model_cache
from rank1_batch.engines.factory import model_path
from rank1_batch.io import commit, layout, lease, paths
from rank1_batch.io.store import StorageError, Store
from rank1_batch.io.verify import require_files
from rank1_batch.job.convert import (
    CONVERTED,
    CONVERTED_MARKER,
    RUN_FORMATS,
    convert,
    source_listing,
)
from rank1_batch.job.inputs import InputFile, listing, scan_inputs
from rank1_batch.job.prepare import prepare
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.job.resolve import resolve_spec
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import console, reuse_ready
from rank1_batch.pipeline.attempts import settle
from rank1_batch.pipeline.finalize import finalize
from rank1_batch.pipeline.local import run_local
from rank1_batch.pipeline.pool import init_ray, score_pending

log = logging.getLogger(__name__)


def claim_converted(spec: JobSpec, store: Store) -> None:
    """Run/corpus and HF inputs: claim the output with the *original* files' listing."""
    claim_output(store, job_record(spec, source_listing(spec.input, spec.storage)))


def convert_input(
    spec: JobSpec, store: Store, quiet: bool = False
) -> tuple[JobSpec, list[InputFile]]:
    """Run/corpus and HF inputs, once claimed (:func:`claim_converted`): convert them once to
    Parquet pairs in the output folder and read those as ``pairs``.

    A run with a corpus is joined by Ray tasks (:mod:`rank1_batch.job.convert_join`), so Ray
    starts here, before the conversion, for every executor (the ``local`` one too, as an
    ungrouped input's shuffle starts it); a converted folder already there needs no Ray.
    """
    if spec.input.format in RUN_FORMATS and not store.exists(CONVERTED_MARKER):
        console.tame_ray(quiet)
        init_ray(spec)
    converted = spec.model_copy(update={"input": convert(spec, store)})
    return converted, scan_inputs(converted.input, spec.storage)


def run(
    spec: JobSpec, *, join: bool = False, take_over: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Run (or resume) a job to completion; return the contents of ``_SUCCESS.json``.

    ``join``/``take_over``: what to do when another live run holds the output
    (:mod:`rank1_batch.io.lease`); by default that is refused with :class:`lease.OutputBusy`.
    """
    start = time.perf_counter()
    # engine/device/dtype ``auto`` decided once, here, for the workers' resources: the
    # fingerprint hashes these values and every actor builds exactly this engine.
    spec = resolve_spec(spec)
    store = Store(spec.output.path, spec.storage)
    store.check_access()  # no such bucket / access denied: fail now, before input or model
    store.verify_exclusive_create()  # the commit protocol needs it: refuse a backend without
    lease.check_adoptable(store, layout.JOB_FILE)
    converted = spec.input.format in CONVERTED
    if converted:  # claimed now; converted under the lease, below
        claim_converted(spec, store)
    else:
        try:
            files = scan_inputs(spec.input, spec.storage)
        except PermissionError as exc:
            raise StorageError(f"input {spec.input.path}: access denied ({exc})") from exc
        claim_output(store, job_record(spec, listing(files)))
    if store.exists(layout.MANIFEST):  # a resume: its names are joined into paths below
        _check_manifest(store, store.read_json(layout.MANIFEST))
    if store.exists(layout.SUCCESS):
        # Certified once, but files can be lost or replaced since: what finalize checks.
        require_files(store, commit.read_markers(store))
        log.info("%s is already complete; nothing to do", store.uri)
        done: dict[str, Any] = store.read_json(layout.SUCCESS)
        return {**done, "this_run": this_run(done, None, time.perf_counter() - start, 0.0)}
    with lease.Lease(store, join=join, take_over=take_over) as held:
        # Conversion can take minutes: under the lease, so ``status`` sees a live run.
        if converted:
            spec, files = convert_input(spec, store)
        return _run_held(spec, store, files, held, start, quiet)


def _check_manifest(store: Store, manifest: dict[str, Any]) -> None:
    paths.check_manifest(manifest, f"{store.uri.rstrip('/')}/{layout.MANIFEST}")


def _run_held(
    spec: JobSpec,
    store: Store,
    files: list[InputFile],
    held: lease.Lease,
    start: float,
    quiet: bool,
) -> dict[str, Any]:
    if model_cache.kind(spec.model.name) == "toy":
        model_path(spec)  # a toy model that is not built yet is built once, here, before Ray
    local = spec.compute.executor == "local"
    console.tame_ray(quiet)
    if not local:  # the local executor starts no Ray (an ungrouped input's shuffle still does)
        init_ray(spec)
    manifest = prepare(spec, store, files)
    _check_manifest(store, manifest)  # as prepare read it
    # What earlier runs committed: the digest, then only the markers it lacks.
    before = commit.read_markers(store, [s["id"] for s in manifest["shards"]])
    done_shards = {m.shard for m in before}
    pending = [s for s in manifest["shards"] if s["id"] not in done_shards]
    score_wall = 0.0
    log.info(
        "score: %d of %d shards pending (%d pairs)",
        len(pending),
        len(manifest["shards"]),
        sum(s["rows"] for s in pending),
    )
    if pending:
        if held.me.role == "joiner":
            pending = pending[::-1]  # from the other end: the two runs meet in the middle
        elif not held.others_running():  # a live joiner's temp files are still being written
            for folder in ("scores", "traces", layout.COMMITS):
                store.remove_temp_leftovers(folder)
        if not local:
            console.ray_progress_off()
            log.info(console.CONSTRUCTOR_NOTE)
        if spec.reuse:  # built once, by the holder; a joiner waits for it and only reads
            reuse_ready.ensure_built(spec, store, [s["id"] for s in pending], held)
        score_start = time.perf_counter()
        if local:  # a failing shard ends the run here (no rounds to retry it in)
            run_local(spec, store, pending)
            quarantined = []
        else:
            quarantined = score_pending(spec, store, pending, held.me.run_id)
        score_wall = time.perf_counter() - score_start
        settle(spec, store, quarantined)
    done = finalize(
        store,
        manifest,
        time.perf_counter() - start,
        total_wall=held.total_seconds(),
        runs=len(lease.runs(store)),
    )
    earlier = ShardStats.total(m.stats for m in before)
    wall = float(done["last_run_wall_seconds"])
    return {**done, "this_run": this_run(done, (len(before), earlier), wall, score_wall)}


def this_run(
    done: dict[str, Any],
    earlier: tuple[int, ShardStats] | None,
    wall: float,
    score_wall: float,
) -> dict[str, Any]:
    """What *this* run did, for the summary (not written to ``_SUCCESS.json``): the output's
    totals less what earlier runs had committed (``earlier``: shards and their summed stats;
    None: the output was already complete, nothing was done; a ``--join``ed run's commits
    during this run count as this run's). ``judged`` are pairs the engine
    scored now, ``reused`` pairs copied from earlier outputs; the rate is ``judged`` over the
    score stage's wall time (actors starting and model loading included)."""
    shards, stats = earlier if earlier is not None else (int(done["shards"]), None)
    pairs = int(done["scored"]) - (stats.pairs if stats else int(done["scored"]))
    reused = int(done["reused"]) - (stats.reused if stats else int(done["reused"]))
    tokens = int(done["reasoning_tokens"]) - (
        stats.reasoning_tokens if stats else int(done["reasoning_tokens"])
    )
    judged = pairs - reused
    return {
        "nothing_to_do": earlier is None,
        "wall_seconds": round(wall, 3),
        "shards": int(done["shards"]) - shards,
        "judged": judged,
        "reused": reused,
        "reasoning_tokens": tokens,
        "score_wall_seconds": round(score_wall, 3),
        "pairs_per_second": round(judged / score_wall, 3) if judged and score_wall > 0 else None,
    }
