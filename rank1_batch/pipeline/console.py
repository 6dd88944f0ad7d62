"""What ``run`` shows: Ray's own logs kept off stdout and quiet under ``-q``, one progress
display, and the end-of-run summary (:func:`format_summary`).

Ray's loggers write to stdout; stdout is for results (the summary, or ``--json``), so they
are moved to stderr. Ray Data's own progress (bars on a terminal, a logged block every 10 s
on a pipe) is always off: ours is a bar on a terminal and one line per committed shard on a
pipe (:mod:`rank1_batch.core.progress`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from rank1_batch.core.progress import format_eta, format_rate, plural, reasoning_line

STATUS_ORDER = ("complete", "forced", "direct", "fallback", "error")
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve")

# Printed at ERROR level by Ray's core worker (C++, not filterable) for every scoring actor:
# Ray Data itself puts each actor's constructor arguments in the object store and enables
# actor restarts (which replace a dead engine). Harmless; explained once per run.
CONSTRUCTOR_NOTE = (
    "score: Ray may now log one ERROR line per worker, 'has constructor arguments in the "
    "object store and max_restarts > 0': expected (Ray Data stores actor arguments and "
    "restarts dead actors), not a failure"
)


class _DropTokenAuthNotice(logging.Filter):
    """Ray's start-up notice that token auth is *on* (the setting the tool asks for, through
    RAY_AUTH_MODE=token or a token file): a line per run that says nothing to act on. The
    warning that it is *off* is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this")


class _DropStatsActorKeyError(logging.Filter):
    """Ray Data's metrics actor failing to update a dataset it has no entry for.

    ``_StatsActor.update_execution_metrics`` (``ray/data/_internal/stats.py``) indexes
    ``self.datasets[dataset_tag]``, relying on ``register_dataset`` having reached the actor
    first; nothing enforces that order (named in ray-project/ray#57971's review, "Uninitialized
    Dataset Tags Cause KeyError"). The update's result is never read, so the driver logs it
    as an "Unhandled error" traceback at ERROR level: only Ray Data's dashboard metrics
    miss one update; scoring and results are untouched. Only that record is dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (
            text.startswith("Unhandled error") and "_StatsActor." in text and "KeyError" in text
        )


def tame_ray(quiet: bool) -> None:
    """Before ``ray.init``: Ray's Python loggers to stderr, and WARNING-only under ``-q``;
    Ray Data's execution INFO lines (start, plan, finished) always off: our lines say it."""
    import ray
    import ray.data  # configures Ray Data's loggers, which we then adjust

    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        if quiet or name == "ray.data":
            logger.setLevel(logging.WARNING)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    for name, drop in (
        ("ray._private.authentication.authentication_token_setup", _DropTokenAuthNotice),
        ("ray._private.worker", _DropStatsActorKeyError),
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, drop) for f in logger.filters):
            logger.addFilter(drop())
    # Prepare has no display of its own: Ray Data's bars show it on a terminal, unless -q.
    terminal = sys.stdout.isatty() and sys.stderr.isatty()
    ray.data.DataContext.get_current().enable_progress_bars = terminal and not quiet
    if not terminal or quiet:
        ray_progress_off()
    del ray


def ray_progress_off() -> None:
    """Ray Data's own progress display off, on a terminal and on a pipe alike.

    On a terminal it would draw bars next to ours; on a pipe (``stdout`` not a terminal:
    CI, ``| tee``, Ray job logs) it logs a 7-line block every 10 s, where we log one line per
    committed shard (:class:`rank1_batch.core.progress.Progress`). Set in the driver, the
    process that executes the dataset (under ``submit`` too: the entrypoint is ``run``).
    """
    import ray
    from ray.util.debug import log_once

    # Ray Data warns once per process that its bars are off; we switched them off on
    # purpose (our progress is shown), so spend that "once" here.
    log_once("ray_data_progress_manager_disabled")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.verbose_stats_logs = False


def _qrels_hint(spec_input: dict[str, Any]) -> str:
    """A qrels file next to a local input (the demo's jobs/data/demo.qrels), else QRELS."""
    path = str(spec_input.get("path") or "")
    if "://" in path:
        return "QRELS"
    folder = Path(path) if os.path.isdir(path) else Path(path).parent
    found = sorted(folder.glob("*.qrels")) if folder.is_dir() else []
    return str(found[0]) if len(found) == 1 else "QRELS"


def format_summary(done: dict[str, Any], output: str, spec_input: dict[str, Any]) -> str:
    """A few lines a newcomer can act on: what this run did (pairs the engine scored, pairs
    copied, or nothing), the output's totals, reasoning tokens, how long, where, what next.

    ``done`` is ``_SUCCESS.json`` with ``this_run`` (:func:`rank1_batch.run.this_run`).
    """
    now = done["this_run"]
    statuses = done["statuses"]
    runs = done["runs"]
    if now["nothing_to_do"]:
        head = f"nothing to do: {output} was already complete"
    else:
        head = f"done: {plural(now['judged'], 'pair')} scored this run"
        if now["reused"]:
            head += f", {plural(now['reused'], 'pair')} reused (copied from earlier outputs)"
        head += f", in {plural(now['shards'], 'shard')}"
    total = f"output: {plural(done['scored'], 'pair')} in {plural(done['shards'], 'shard')}"
    if done["reused"]:
        total += f" ({done['reused']:,} of them reused)"
    total += f"; {done['rejected']:,} rejected, {done['duplicates']:,} duplicates"
    timing = f"{format_eta(now['wall_seconds'])} this run"
    if runs > 1:
        timing += f", {format_eta(done['total_wall_seconds'])} over {runs} runs"
    if now["pairs_per_second"]:
        timing += (
            f"; {format_rate(now['pairs_per_second'])} pairs/s over the score stage's "
            f"{format_eta(now['score_wall_seconds'])} (model loading included)"
        )
    lines = [
        head,
        total,
        "statuses: "
        + ", ".join(f"{k} {statuses[k]:,}" for k in STATUS_ORDER if k in statuses)
        + f"; truncated {done['truncated']:,}",
        "tokens: " + reasoning_line(done["reasoning_tokens"], done["scored"]),
        f"time: {timing}",
        f"results: {output}  (scores/, traces/, _SUCCESS.json)",
        "next:",
        f"  rank1-batch status {output}",
        f"  rank1-batch eval {output} --qrels {_qrels_hint(spec_input)}",
        f"  rank1-batch export {output} --format trec   (or json-run, flagembedding, hf, ...)",
    ]
    return "\n".join(lines)
