"""``rank1-batch status OUTPUT``: progress read from the output folder alone.

Works while a job runs (anywhere: the folder is the only shared state) and after it ends.
"""

from __future__ import annotations

import time
from typing import Any

from rank1_batch import commit, rank1
from rank1_batch.progress import format_eta
from rank1_batch.storage import Store


def read_status(store: Store) -> dict[str, Any]:
    if not store.exists(commit.JOB_FILE):
        raise FileNotFoundError(f"{store.uri}: no job.json; not a rank1-batch output folder")
    job = store.read_json(commit.JOB_FILE)
    out: dict[str, Any] = {
        "output": store.uri,
        "job": job["spec"].get("name"),
        "model": job["spec"]["model"]["name"],
    }
    if not store.exists(commit.MANIFEST):
        out["state"] = "preparing"
        return out
    manifest = store.read_json(commit.MANIFEST)
    markers = commit.read_markers(store)
    stats = sum((m.stats for m in markers), commit.ShardStats())
    total_pairs = int(manifest["pairs"])
    out.update(
        shards_total=len(manifest["shards"]),
        shards_committed=len(markers),
        pairs_total=total_pairs,
        pairs_scored=stats.pairs,
        rejected=manifest["rejected"],
        duplicates=manifest["duplicates"],
        statuses={s: getattr(stats, s) for s in rank1.STATUSES},
        truncated=stats.truncated,
    )
    if store.exists(commit.SUCCESS):
        out["state"] = "complete"
        out["eta_seconds"] = 0.0
        return out
    out["state"] = "scoring"
    times = sorted(m.committed_at for m in markers)
    eta = None
    if len(markers) >= 2 and times[-1] > times[0]:
        # Rate over the commits seen so far (the first commit marks when scoring was flowing).
        rate = sum(m.rows for m in markers if m.committed_at > times[0]) / (times[-1] - times[0])
        if rate > 0:
            eta = (total_pairs - stats.pairs) / rate - (time.time() - times[-1])
            eta = max(eta, 0.0)
    out["eta_seconds"] = eta
    return out


def format_status(s: dict[str, Any]) -> str:
    lines = [
        f"output   {s['output']}",
        f"job      {s['job']}  (model {s['model']})",
        f"state    {s['state']}",
    ]
    if "shards_total" in s:
        pct = 100.0 * s["pairs_scored"] / s["pairs_total"] if s["pairs_total"] else 100.0
        lines += [
            f"shards   {s['shards_committed']}/{s['shards_total']} committed",
            f"pairs    {s['pairs_scored']}/{s['pairs_total']} scored ({pct:.1f}%), "
            f"{s['rejected']} rejected, {s['duplicates']} duplicates",
            "statuses "
            + ", ".join(f"{k} {v}" for k, v in s["statuses"].items())
            + f"; truncated {s['truncated']}",
            f"eta      {format_eta(s['eta_seconds'])}",
        ]
    return "\n".join(lines)
