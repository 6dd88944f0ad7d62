"""``rank1-batch run``: claim the output, prepare, score pending shards on Ray, finalize.

The driver holds no data: it lists inputs, reads the manifest and the commit markers, and
sums shard stats. Scoring runs in a Ray Data actor pool over the shards not yet committed
(one engine per actor); each actor calls :func:`rank1_batch.score.process_shard`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any

from rank1_batch import commit
from rank1_batch.engines.base import EngineOptions, Rank1Engine
from rank1_batch.formats import CONVERTED
from rank1_batch.inputs import InputError, InputFile, listing, scan_inputs
from rank1_batch.progress import Progress
from rank1_batch.score import process_shard
from rank1_batch.spec import JobSpec
from rank1_batch.storage import StorageError, Store

log = logging.getLogger(__name__)


def model_path(spec: JobSpec) -> str:
    """Local folder (or hub id / URI) to load; ``toy`` resolves to the built-in toy model."""
    from rank1_batch.toy_model import TOY_MODEL_NAME, resolve_toy_model

    if spec.model.name == TOY_MODEL_NAME:
        return str(resolve_toy_model())
    return spec.model.name


def vllm_usable() -> bool:
    """vllm is installed and this process sees a CUDA GPU (checked where the engine runs)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def engine_kind(spec: JobSpec) -> str:
    """``auto`` is vLLM where vllm is installed and a CUDA GPU is visible, else transformers.

    Resolved inside the scoring actor: it sees the GPUs Ray gave it, not the driver's.
    """
    if spec.model.engine != "auto":
        return spec.model.engine
    return "vllm" if vllm_usable() else "transformers"


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

    kind = engine_kind(spec)
    m = spec.model
    kwargs: dict[str, Any] = {
        "revision": m.revision,
        "dtype": m.dtype,
        "device": m.device,
        "model_id": m.name,
    }
    if kind == "vllm":
        kwargs.update(
            quantization=m.quantization,
            tensor_parallel_size=m.tensor_parallel_size,
            gpu_memory_utilization=m.gpu_memory_utilization,
            enforce_eager=m.enforce_eager,
            engine_args=m.engine_args,
        )
    return make_engine(kind, path, engine_options(spec), **kwargs)


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


def worker_gpus(spec: JobSpec) -> float:
    """GPUs per scoring actor: explicit, else ``tensor_parallel_size`` for engine vllm (or
    auto with tensor parallelism).

    A vLLM actor holding all its tensor-parallel GPUs (one node) runs vLLM's default "mp"
    executor: vLLM spawns one worker process per GPU inside the actor. With
    ``engine_args.distributed_executor_backend: ray`` the GPUs come from a placement group
    instead (:func:`vllm_placement_args`) and the actor itself holds none.
    """
    if vllm_ray_backend(spec):
        return 0.0
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


def score_pending(spec: JobSpec, store: Store, pending: list[dict[str, Any]]) -> None:
    """Score pending shards in an actor pool, showing shards, pairs, pairs/s and ETA."""
    import ray

    cpus = worker_cpus(spec, float(ray.available_resources().get("CPU", 1)))
    # Threads from the cluster's total, not the momentarily free CPUs: torch's CPU results
    # depend on the thread count, and a resumed run must reproduce the scores exactly.
    total_cpus = worker_cpus(spec, float(ray.cluster_resources().get("CPU", 1)))
    threads = spec.compute.torch_threads or max(1, math.ceil(total_cpus - 1e-9))
    workers = min(spec.compute.workers, len(pending))
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
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        num_gpus=worker_gpus(spec) or None,
        **placement,
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


def convert_input(spec: JobSpec, store: Store) -> tuple[JobSpec, list[InputFile]]:
    """Run/corpus and HF inputs: claim the output with the *original* files' listing, then
    convert them once to Parquet pairs in the output folder and read those as ``pairs``."""
    from rank1_batch import formats

    commit.claim_output(
        store, commit.job_record(spec, formats.source_listing(spec.input, spec.storage))
    )
    converted = spec.model_copy(update={"input": formats.convert(spec, store)})
    return converted, scan_inputs(converted.input, spec.storage)


def run(spec: JobSpec) -> dict[str, Any]:
    """Run (or resume) a job to completion; return the contents of ``_SUCCESS.json``."""
    start = time.perf_counter()
    store = Store(spec.output.path, spec.storage)
    store.check_access()  # no such bucket / access denied: fail now, before input or model
    if spec.input.format in CONVERTED:
        spec, files = convert_input(spec, store)
    else:
        try:
            files = scan_inputs(spec.input, spec.storage)
        except PermissionError as exc:
            raise StorageError(f"input {spec.input.path}: access denied ({exc})") from exc
        if not any(f.rows for f in files):
            # Refused before anything is written: an empty input is almost always a mistake.
            raise InputError(
                f"input {spec.input.path}: {len(files)} Parquet file(s), 0 rows; nothing to rerank"
            )
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
