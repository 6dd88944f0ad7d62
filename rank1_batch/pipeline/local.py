"""Score pending shards in this process, one after another, with one engine (no Ray)."""

from __future__ import annotations

from collections.abc import Iterable

from rank1_batch.core.progress import Progress
from rank1_batch.engines.base import Rank1Engine
from rank1_batch.io import commit
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec
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
