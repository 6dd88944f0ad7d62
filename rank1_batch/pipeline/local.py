"""Score pending shards in this process, one after another, with one engine (no Ray): the
local executor (``compute.executor: local``) and the loop the tests and benchmarks drive."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from rank1_batch.core.progress import Progress
from rank1_batch.engines.base import Rank1Engine
from rank1_batch.engines.factory import build_engine, model_path
from rank1_batch.io import commit
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline.pool import local_cpus, torch_threads
from rank1_batch.pipeline.score import process_shard


def score_local(
    spec: JobSpec,
    store: Store,
    shards: Iterable[str],
    engine: Rank1Engine,
    *,
    progress: Progress | None = None,
) -> list[commit.Marker]:
    """Score and commit each shard in turn; return the markers in shard order."""
    markers = []
    for shard in shards:
        marker = process_shard(shard, engine, store, spec)
        markers.append(marker)
        if progress is not None:
            progress.shard_done(marker.shard, marker.rows)
    return markers


def run_local(spec: JobSpec, store: Store, pending: list[dict[str, Any]]) -> list[commit.Marker]:
    """The local executor: the engine a Ray actor would build, built here, then
    :func:`score_local` over ``pending`` (manifest entries) with a progress line per shard.

    torch gets the thread count a Ray actor of this job would get on this machine (the CPUs
    local Ray would start with), so both executors give one job the same rows."""
    threads = torch_threads(spec, float(local_cpus(spec)))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # engines without torch
        pass
    engine = build_engine(spec, model_path(spec))
    progress = Progress(len(pending), sum(int(s["rows"]) for s in pending))
    try:
        return score_local(spec, store, [s["id"] for s in pending], engine, progress=progress)
    finally:
        engine.close()
