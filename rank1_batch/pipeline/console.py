"""What ``run`` shows on a terminal: Ray's own logs kept off stdout and quiet under ``-q``,
one progress display at a time, and the end-of-run summary (:func:`format_summary`).

Ray's loggers write to stdout; stdout is for results (the summary, or ``--json``), so they
are moved to stderr. Ray Data draws its own progress bars when stdout is a terminal; during
the score stage our bar (pairs, shards, pairs/s, ETA) is drawn on stderr, so Ray Data's are
switched off there, never both on one screen.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from rank1_batch.core.progress import format_eta

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


def tame_ray(quiet: bool) -> None:
    """Before ``ray.init``: Ray's Python loggers to stderr, and WARNING-only under ``-q``."""
    import ray
    import ray.data  # configures Ray Data's loggers, which we then adjust

    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        if quiet:
            logger.setLevel(logging.WARNING)
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    del ray


def ray_bars_during_score() -> bool:
    """Ray Data's bars are on during scoring only when ours is not (stderr not a terminal)."""
    import ray
    from ray.util.debug import log_once

    enabled = not sys.stderr.isatty()
    if not enabled:
        # Ray Data warns once per process that its bars are off; we switched them off on
        # purpose (ours is on screen), so spend that "once" here.
        log_once("ray_data_progress_manager_disabled")
    ray.data.DataContext.get_current().enable_progress_bars = enabled
    return enabled


def _qrels_hint(spec_input: dict[str, Any]) -> str:
    """A qrels file next to a local input (the demo's jobs/data/demo.qrels), else QRELS."""
    path = str(spec_input.get("path") or "")
    if "://" in path:
        return "QRELS"
    folder = Path(path) if os.path.isdir(path) else Path(path).parent
    found = sorted(folder.glob("*.qrels")) if folder.is_dir() else []
    return str(found[0]) if len(found) == 1 else "QRELS"


def format_summary(done: dict[str, Any], output: str, spec_input: dict[str, Any]) -> str:
    """A few lines a newcomer can act on: what was scored, how long, where, what next."""
    statuses = done["statuses"]
    runs = done["runs"]
    timing = f"{format_eta(done['last_run_wall_seconds'])} this run"
    if runs > 1:
        timing += f", {format_eta(done['total_wall_seconds'])} over {runs} runs"
    rate = done.get("pairs_per_second")
    lines = [
        f"done: {done['scored']:,} pairs scored in {done['shards']} shards "
        f"({done['rejected']:,} rejected, {done['duplicates']:,} duplicates)",
        "statuses: "
        + ", ".join(f"{k} {statuses[k]:,}" for k in STATUS_ORDER if k in statuses)
        + f"; truncated {done['truncated']:,}",
        f"time: {timing}" + (f"; {rate:g} pairs/s while scoring" if rate else ""),
        f"results: {output}  (scores/, traces/, _SUCCESS.json)",
        "next:",
        f"  rank1-batch status {output}",
        f"  rank1-batch eval {output} --qrels {_qrels_hint(spec_input)}",
        f"  rank1-batch export {output} --format trec   (or json-run, flagembedding, hf, ...)",
    ]
    return "\n".join(lines)
