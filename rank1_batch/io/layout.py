"""Where everything lives in an output folder: every path a pure function of shard and attempt.

Nothing here touches storage; :mod:`rank1_batch.io.commit` and the stages build their paths
from these names, so the layout is read in one place.
"""

from __future__ import annotations

import uuid

JOB_FILE = "job.json"
MANIFEST = "pairs/_manifest.json"
SUCCESS = "_SUCCESS.json"
COMMITS = "_commits"


def repair_hint(uri: str) -> str:
    """What to do about a corrupt commit (every such error ends with it)."""
    return f"run `rank1-batch verify {uri} --repair`, then run the job again to rescore it"


def pairs_path(shard: str) -> str:
    return f"pairs/{shard}.parquet"


def rejected_path(shard: str) -> str:
    return f"rejected/{shard}.parquet"


def scores_path(shard: str, attempt: str = "") -> str:
    """The attempt's scores file; without an attempt, the name used before whole-attempt
    commits (markers that name no file)."""
    return f"scores/{shard}.{attempt}.parquet" if attempt else f"scores/{shard}.parquet"


def traces_path(shard: str, attempt: str = "") -> str:
    return f"traces/{shard}.{attempt}.parquet" if attempt else f"traces/{shard}.parquet"


def new_attempt_id() -> str:
    """A fresh attempt id: unique across workers, nodes and runs."""
    return uuid.uuid4().hex[:16]


def marker_path(shard: str) -> str:
    return f"{COMMITS}/{shard}.json"


NAME_WIDTH = 5  # the width of every name before widths grew with the shard count


def shard_name(index: int, count: int) -> str:
    """Name of shard ``index`` of an output planned for at most ``count`` shards.

    The number is zero-padded to the width of ``count - 1`` (at least 5 digits), so the names
    of one output sort in shard order for any count; outputs of up to 100,000 shards get the
    same 5-digit names as before. Readers take names from the manifest and the markers, never
    by parsing them.
    """
    if not 0 <= index < max(count, 1):
        raise ValueError(f"shard index {index} outside a plan of {count} shards")
    width = max(NAME_WIDTH, len(str(max(count, 1) - 1)))
    return f"shard-{index:0{width}d}"
