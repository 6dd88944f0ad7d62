"""Stage 3: check every shard is committed and its files are there (existence and the size
its marker records: :func:`rank1_batch.io.verify.require_files`; checksums are ``verify``'s
job), sum the shard stats, write ``_SUCCESS.json``, remove the data files of losing attempts
(files no marker names)."""

from __future__ import annotations

import time
from typing import Any

from rank1_batch.core import rank1
from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.io.verify import require_files


def finalize(
    store: Store,
    manifest: dict[str, Any],
    wall: float,
    *,
    total_wall: float | None = None,
    runs: int = 1,
) -> dict[str, Any]:
    """Check every shard is committed, sum their stats, write ``_SUCCESS.json`` last.

    ``wall`` is this run's wall time; ``total_wall`` that of every run of the job (resumes
    and joiners included, downtime excluded; from :mod:`rank1_batch.io.lease`'s run records),
    ``runs`` how many there were.
    """
    markers = {m.shard: m for m in commit.read_markers(store)}
    expected = [s["id"] for s in manifest["shards"]]
    missing = [s for s in expected if s not in markers]
    if missing:
        raise RuntimeError(f"{len(missing)} shards are not committed (first: {missing[0]})")
    require_files(store, [markers[s] for s in expected])  # CommitError: no _SUCCESS.json
    total = ShardStats.total(markers[s].stats for s in expected)
    accounted = total.pairs + manifest["rejected"] + manifest["duplicates"]
    if accounted != manifest["input_rows"]:
        raise RuntimeError(
            f"accounting mismatch: scored {total.pairs} + rejected {manifest['rejected']} + "
            f"duplicates {manifest['duplicates']} != input {manifest['input_rows']}"
        )
    success = {
        "input_rows": manifest["input_rows"],
        "scored": total.pairs,
        "reused": total.reused,
        "rejected": manifest["rejected"],
        "duplicates": manifest["duplicates"],
        "statuses": {s: getattr(total, s) for s in rank1.STATUSES},
        "truncated": total.truncated,
        "prompt_tokens": total.prompt_tokens,
        "reasoning_tokens": total.reasoning_tokens,
        "shards": len(expected),
        "score_seconds": round(total.seconds, 3),
        "last_run_wall_seconds": round(wall, 3),
        "total_wall_seconds": round(max(total_wall if total_wall is not None else wall, wall), 3),
        "runs": max(runs, 1),
        "pairs_per_second": round(total.pairs / total.seconds, 3) if total.seconds else None,
        "commits": {s: markers[s].scores_sha256 for s in expected},
        "finished_at": time.time(),
    }
    success["removed_losing_files"] = len(commit.remove_losing_files(store, list(markers.values())))
    store.create_json(layout.SUCCESS, success)
    result: dict[str, Any] = store.read_json(layout.SUCCESS)
    return result
