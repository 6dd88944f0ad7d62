"""Where everything lives in an output folder, and the version of that layout.

Every path is a pure function of shard and attempt; :mod:`rank1_batch.io.commit` and the
stages build their paths from these names, so the layout is read in one place.

``job.json`` records the :data:`LAYOUT_VERSION` its output was written with; every reader of
an existing output (:func:`read_job`) refuses another version, or none, in one line
(:class:`LayoutVersionError`) instead of misreading the folder.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rank1_batch.io.store import Store

LAYOUT_VERSION = 1  # the output layout this rank1-batch writes and reads
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


def duplicates_path(shard: str) -> str:
    """Rows of ``shard`` dropped as duplicates of an earlier (query_id, doc_id)."""
    return f"duplicates/{shard}.parquet"


def scores_path(shard: str, attempt: str) -> str:
    """The scores file of one attempt of ``shard`` (the marker names the winner's)."""
    return f"scores/{shard}.{attempt}.parquet"


def traces_path(shard: str, attempt: str) -> str:
    return f"traces/{shard}.{attempt}.parquet"


def new_attempt_id() -> str:
    """A fresh attempt id: unique across workers, nodes and runs."""
    return uuid.uuid4().hex[:16]


def marker_path(shard: str) -> str:
    return f"{COMMITS}/{shard}.json"


NAME_WIDTH = 5  # the fewest digits of a shard number


def shard_name(index: int, count: int) -> str:
    """Name of shard ``index`` of an output planned for at most ``count`` shards.

    The number is zero-padded to the width of ``count - 1`` (at least :data:`NAME_WIDTH`
    digits), so the names of one output sort in shard order for any count. Readers take names
    from the manifest and the markers, never by parsing them.
    """
    if not 0 <= index < max(count, 1):
        raise ValueError(f"shard index {index} outside a plan of {count} shards")
    width = max(NAME_WIDTH, len(str(max(count, 1) - 1)))
    return f"shard-{index:0{width}d}"


class LayoutVersionError(RuntimeError):
    """An output folder written in a layout this rank1-batch does not read."""


def check_layout(uri: str, job: dict[str, Any]) -> None:
    """Refuse ``job`` (the ``job.json`` of output ``uri``) unless it records
    :data:`LAYOUT_VERSION`: one line naming the folder, the version found and the one read."""
    found = job.get("layout_version") if isinstance(job, dict) else None
    if found == LAYOUT_VERSION and not isinstance(found, bool):
        return
    what = "no layout_version" if found is None else f"layout_version {found!r}"
    raise LayoutVersionError(
        f"{uri}: {JOB_FILE} records {what}; this rank1-batch reads output layout version "
        f"{LAYOUT_VERSION} only (use the rank1-batch that wrote it, or run the job again into "
        "a new output)"
    )


def read_job(store: Store) -> dict[str, Any]:
    """``job.json`` of an existing output, its layout version checked
    (:class:`LayoutVersionError`); :class:`FileNotFoundError` naming the folder without one."""
    if not store.exists(JOB_FILE):
        raise FileNotFoundError(f"{store.uri}: no {JOB_FILE}; not a rank1-batch output folder")
    job: dict[str, Any] = store.read_json(JOB_FILE)
    check_layout(store.uri, job)
    return job
