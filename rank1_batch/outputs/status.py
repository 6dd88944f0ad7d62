"""``rank1-batch status OUTPUT``: progress read from the output folder alone.

Works while a job runs (anywhere: the folder is the only shared state) and after it ends.
"""

from __future__ import annotations

import time
from typing import Any

from rank1_batch.core import rank1
from rank1_batch.core.progress import format_eta, plural, reasoning_line
from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout, lease
from rank1_batch.io.store import Store

FIELDS = (
    "output", "job", "model", "state", "run", "shards_total", "shards_committed",
    "pairs_total", "pairs_scored", "pairs_reused", "rejected", "duplicates", "statuses",
    "truncated", "reasoning_tokens", "eta_seconds",
)  # fmt: skip
"""The keys of ``status --json``, in this order whatever the state (fields not known yet,
before the manifest is written, are left out)."""


def read_status(store: Store) -> dict[str, Any]:
    """The state (``preparing``/``scoring`` while a live run holds the output; ``stopped``
    when none does: it died or was stopped, even during start-up; ``complete``) and counts."""
    job = layout.read_job(store)
    out: dict[str, Any] = {
        "output": store.uri,
        "job": job["spec"].get("name"),
        "model": job["spec"]["model"]["name"],
    }
    holder = None if store.exists(layout.SUCCESS) else lease.live_holder(store)
    out["state"] = "preparing" if holder is not None else "stopped"
    out["run"] = holder.who() if holder is not None else None
    if not store.exists(layout.MANIFEST):
        return _ordered(out)
    manifest = store.read_json(layout.MANIFEST)
    counts = {
        "shards_total": len(manifest["shards"]),
        "pairs_total": int(manifest["pairs"]),
        "rejected": manifest["rejected"],
        "duplicates": manifest["duplicates"],
    }
    if store.exists(layout.SUCCESS):
        # Complete: the totals are in _SUCCESS.json; no marker needs reading (at 50,000
        # shards that is one request instead of a listing and a digest).
        done = store.read_json(layout.SUCCESS)
        out.update(
            counts,
            state="complete",
            shards_committed=int(done["shards"]),
            pairs_scored=int(done["scored"]),
            pairs_reused=int(done["reused"]),
            statuses=done["statuses"],
            truncated=done["truncated"],
            reasoning_tokens=int(done["reasoning_tokens"]),
            eta_seconds=0.0,
        )
        return _ordered(out)
    # Named shards: with a digest, only the markers it lacks are read (no listing at all).
    markers = commit.read_markers(store, [s["id"] for s in manifest["shards"]])
    stats = ShardStats.total(m.stats for m in markers)
    out.update(
        counts,
        shards_committed=len(markers),
        pairs_scored=stats.pairs,
        pairs_reused=stats.reused,
        statuses={s: getattr(stats, s) for s in rank1.STATUSES},
        truncated=stats.truncated,
        reasoning_tokens=stats.reasoning_tokens,
        eta_seconds=eta_seconds(markers, counts["pairs_total"] - stats.pairs, holder),
    )
    if holder is not None:
        out["state"] = "scoring"
    return _ordered(out)


def _ordered(out: dict[str, Any]) -> dict[str, Any]:
    return {k: out[k] for k in FIELDS if k in out}


def eta_seconds(
    markers: list[commit.Marker], pairs_left: int, holder: lease.Run | None
) -> float | None:
    """Time left at the rate of the *current* run (never across a downtime).

    Only commits made since the live run started count, first to last (the first marks when
    scoring was flowing: prepare and model loading stay out of the rate); fewer than two, or
    no live run (stopped, killed): None.
    """
    if holder is None:
        return None
    times = sorted(m.committed_at for m in markers if m.committed_at >= holder.started)
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    rows = sum(m.rows for m in markers if m.committed_at > times[0])
    rate = rows / (times[-1] - times[0])
    if rate <= 0:
        return None
    return max(pairs_left / rate - (time.time() - times[-1]), 0.0)


def format_status(s: dict[str, Any]) -> str:
    lines = [
        f"output   {s['output']}",
        f"job      {s['job']}  (model {s['model']})",
        f"state    {s['state']}"
        + (f"  (run by {s['run']})" if s.get("run") else "")
        + (
            "  (no live run holds it: `rank1-batch run` with the same job resumes it)"
            if s["state"] == "stopped"
            else ""
        ),
    ]
    if "shards_total" in s:
        pct = 100.0 * s["pairs_scored"] / s["pairs_total"] if s["pairs_total"] else 100.0
        lines += [
            f"shards   {s['shards_committed']}/{plural(s['shards_total'], 'shard')} committed",
            f"pairs    {s['pairs_scored']:,}/{s['pairs_total']:,} scored ({pct:.1f}%), "
            f"{s['rejected']:,} rejected, {s['duplicates']:,} duplicates"
            + (f"; {s['pairs_reused']:,} copied from earlier outputs" if s["pairs_reused"] else ""),
            "statuses "
            + ", ".join(f"{k} {v:,}" for k, v in s["statuses"].items())
            + f"; truncated {s['truncated']:,}",
            f"tokens   {reasoning_line(s['reasoning_tokens'], s['pairs_scored'])}",
            f"eta      {format_eta(s['eta_seconds'])}",
        ]
    return "\n".join(lines)
