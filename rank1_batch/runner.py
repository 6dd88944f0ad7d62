"""``rank1-batch run``: claim the output, prepare, score pending shards on Ray, finalize.

The driver holds no data: it lists inputs, reads the manifest and the commit markers, and
sums shard stats. Scoring runs in a Ray Data actor pool over the shards not yet committed
(one engine per actor); each actor calls :func:`rank1_batch.score.process_shard`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from rank1_batch import commit
from rank1_batch.engines.base import EngineOptions, Rank1Engine
from rank1_batch.inputs import listing, scan_inputs
from rank1_batch.progress import Progress
from rank1_batch.score import process_shard
from rank1_batch.spec import JobSpec
from rank1_batch.storage import Store

log = logging.getLogger(__name__)


def model_path(spec: JobSpec) -> str:
    """Local folder (or hub id / URI) to load; ``toy`` resolves to the built-in toy model."""
    from rank1_batch.toy_model import TOY_MODEL_NAME, resolve_toy_model

    if spec.model.name == TOY_MODEL_NAME:
        return str(resolve_toy_model())
    return spec.model.name


def engine_kind(spec: JobSpec) -> str:
    """``auto`` means the transformers engine: the only engine this release ships."""
    return "transformers" if spec.model.engine == "auto" else spec.model.engine


def engine_options(spec: JobSpec) -> EngineOptions:
    r = spec.reasoning
    return EngineOptions(
        max_model_len=spec.model.max_model_len,
        max_tokens=r.max_tokens,
        min_reserve=min(r.min_reserve, spec.model.max_model_len - 1),
        require_stop=r.require_stop,
        batch_size=spec.compute.batch_size,
    )


def build_engine(spec: JobSpec, path: str) -> Rank1Engine:
    from rank1_batch.engines import make_engine

    return make_engine(
        engine_kind(spec),
        path,
        engine_options(spec),
        revision=spec.model.revision,
        dtype=spec.model.dtype,
        device=spec.model.device,
        model_id=spec.model.name,
    )


class ShardWorker:
    """A Ray Data actor: loads one engine, then scores whole shards (batch_size=1)."""

    def __init__(self, spec: JobSpec, store: Store, threads: int) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # engines without torch
            pass
        self.spec, self.store = spec, store
        # Resolved here, not on the driver: on a cluster the worker's node has its own copy.
        self.engine = build_engine(spec, model_path(spec))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "pairs": [], "stats": []}
        for shard in batch["shard"]:
            marker = process_shard(str(shard), self.engine, self.store, self.spec)
            out["shard"].append(marker.shard)
            out["pairs"].append(marker.rows)
            out["stats"].append(marker.stats.to_dict())
        return out


def init_ray(spec: JobSpec) -> None:
    """Join the Ray cluster this runs in (RAY_ADDRESS, a Ray job) or start a local one."""
    import ray

    if ray.is_initialized():
        return
    ray.data.DataContext.get_current().enable_progress_bars = True
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    ray.init(
        num_cpus=spec.compute.num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )


def worker_cpus(spec: JobSpec, cluster_cpus: float) -> float:
    """CPUs per scoring actor: explicit, else share the cluster but leave room for Ray Data's
    own tasks (a 2-core box deadlocks when actors hold every CPU)."""
    if spec.compute.cpus_per_worker is not None:
        return spec.compute.cpus_per_worker
    if spec.compute.gpus_per_worker > 0:
        return 1.0
    share = (cluster_cpus - 0.5) / spec.compute.workers
    return max(0.25, min(share, 8.0))


def score_pending(spec: JobSpec, store: Store, pending: list[dict[str, Any]]) -> None:
    """Score pending shards in an actor pool, showing shards, pairs, pairs/s and ETA."""
    import ray

    cpus = worker_cpus(spec, float(ray.cluster_resources().get("CPU", 1)))
    threads = spec.compute.torch_threads or max(1, math.ceil(cpus - 1e-9))
    workers = min(spec.compute.workers, len(pending))
    items = [{"shard": s["id"]} for s in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardWorker,
        fn_constructor_kwargs={"spec": spec, "store": store, "threads": threads},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        num_gpus=spec.compute.gpus_per_worker or None,
    )
    progress = Progress(len(pending), sum(int(s["rows"]) for s in pending))
    for row in ds.iter_rows():
        progress.shard_done(str(row["shard"]), int(row["pairs"]))
    progress.close()


def finalize(store: Store, manifest: dict[str, Any], wall: float) -> dict[str, Any]:
    """Check every shard is committed, sum their stats, write ``_SUCCESS.json`` last."""
    markers = {m.shard: m for m in commit.read_markers(store)}
    expected = [s["id"] for s in manifest["shards"]]
    missing = [s for s in expected if s not in markers]
    if missing:
        raise RuntimeError(f"{len(missing)} shards are not committed (first: {missing[0]})")
    total = sum((markers[s].stats for s in expected), commit.ShardStats())
    accounted = total.pairs + manifest["rejected"] + manifest["duplicates"]
    if accounted != manifest["input_rows"]:
        raise RuntimeError(
            f"accounting mismatch: scored {total.pairs} + rejected {manifest['rejected']} + "
            f"duplicates {manifest['duplicates']} != input {manifest['input_rows']}"
        )
    success = {
        "input_rows": manifest["input_rows"],
        "scored": total.pairs,
        "rejected": manifest["rejected"],
        "duplicates": manifest["duplicates"],
        "statuses": {s: getattr(total, s) for s in ("complete", "forced", "fallback", "error")},
        "truncated": total.truncated,
        "prompt_tokens": total.prompt_tokens,
        "reasoning_tokens": total.reasoning_tokens,
        "shards": len(expected),
        "score_seconds": round(total.seconds, 3),
        "wall_seconds": round(wall, 3),
        "pairs_per_second": round(total.pairs / total.seconds, 3) if total.seconds else None,
        "commits": {s: markers[s].scores_sha256 for s in expected},
        "finished_at": time.time(),
    }
    store.create_json(commit.SUCCESS, success)
    result: dict[str, Any] = store.read_json(commit.SUCCESS)
    return result


def run(spec: JobSpec) -> dict[str, Any]:
    """Run (or resume) a job to completion; return the contents of ``_SUCCESS.json``."""
    start = time.perf_counter()
    store = Store(spec.output.path, spec.storage)
    files = scan_inputs(spec.input, spec.storage)
    commit.claim_output(store, commit.job_record(spec, listing(files)))
    if store.exists(commit.SUCCESS):
        log.info("%s is already complete; nothing to do", store.uri)
        done: dict[str, Any] = store.read_json(commit.SUCCESS)
        return done
    model_path(spec)  # a toy model that is not built yet is built once, here, before Ray
    init_ray(spec)
    from rank1_batch.prepare import prepare

    manifest = prepare(spec, store, files)
    done_shards = commit.committed_shards(store)
    pending = [s for s in manifest["shards"] if s["id"] not in done_shards]
    log.info(
        "score: %d of %d shards pending (%d pairs)",
        len(pending),
        len(manifest["shards"]),
        sum(s["rows"] for s in pending),
    )
    if pending:
        for folder in ("scores", "traces", commit.COMMITS):
            store.remove_temp_leftovers(folder)
        score_pending(spec, store, pending)
    return finalize(store, manifest, time.perf_counter() - start)
