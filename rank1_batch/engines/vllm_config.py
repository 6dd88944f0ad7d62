"""The vLLM engine's configuration, as pure functions of the job's options: the
``AsyncEngineArgs`` (:func:`engine_kwargs`), the process environment vLLM reads when its
engine starts (:func:`configure_environment`), and where its stats go
(:func:`ray_stat_loggers`). vllm is imported only by :func:`ray_stat_loggers`, inside Ray.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from rank1_batch.job.spec import RESERVED_ENGINE_ARGS

LONG_MAX_MODEL_LEN_ENV = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"
CPU_KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"
OBJECT_STORE_SCHEMES = ("s3://", "gs://")


def vllm_dtype(dtype: str, *, cpu: bool = False) -> str:
    """``auto`` is float16 on GPUs, as the reference runs every Rank1 model (and AWQ
    requires); float32 on CPU, where vLLM's CPU kernels take float32 or bfloat16."""
    if dtype != "auto":
        return dtype
    return "float32" if cpu else "float16"


def engine_kwargs(
    model_path: str,
    *,
    max_model_len: int,
    revision: str | None = None,
    dtype: str = "auto",
    quantization: str | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    enforce_eager: bool = False,
    engine_args: Mapping[str, Any] | None = None,
    cpu: bool = False,
) -> dict[str, Any]:
    """Arguments for ``AsyncEngineArgs``; ``engine_args`` add to them but may not override
    the first-class options nor the settings the scoring depends on."""
    extra = dict(engine_args or {})
    for key in extra:
        if key in RESERVED_ENGINE_ARGS:
            raise ValueError(
                f"model.engine_args: {key!r} cannot be set here; use {RESERVED_ENGINE_ARGS[key]}"
            )
    kwargs: dict[str, Any] = {
        "model": model_path,
        "revision": revision,
        "dtype": vllm_dtype(dtype, cpu=cpu),
        "quantization": quantization,
        "max_model_len": max_model_len,
        "tensor_parallel_size": tensor_parallel_size,
        "enforce_eager": enforce_eager or cpu,  # no graph capture on CPU: starts in seconds
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
        "disable_log_stats": True,
    }
    if cpu:
        if tensor_parallel_size == 1:
            # The model runs inside the engine-core process: one process fewer to start.
            kwargs["distributed_executor_backend"] = "uni"
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    if model_path.startswith(OBJECT_STORE_SCHEMES):
        # vLLM streams s3:// and gs:// checkpoints with the Run:ai streamer (vllm[runai]).
        kwargs["load_format"] = "runai_streamer"
    kwargs.update(extra)
    return kwargs


def configure_environment(
    *, cpu: bool, batch_invariant: bool, cpu_kv_cache_gib: int | None
) -> None:
    """Process environment vLLM reads when its engine starts (the engine core inherits it)."""
    # 16000 exceeds some models' positions (Llama-3-8B: 8192); the reference allows it too.
    os.environ.setdefault(LONG_MAX_MODEL_LEN_ENV, "1")
    if cpu and cpu_kv_cache_gib is not None:
        os.environ[CPU_KV_CACHE_ENV] = str(cpu_kv_cache_gib)
    if batch_invariant:
        os.environ[BATCH_INVARIANT_ENV] = "1"


def ray_stat_loggers() -> list[Any] | None:
    """vLLM's stat loggers for an engine inside Ray (``ray.is_initialized()``): vLLM's
    ``RayPrometheusStatLogger``, so its metrics (``vllm:num_requests_running``,
    ``vllm:num_requests_waiting``, …) go through Ray's metrics API to Ray's Prometheus
    endpoint; None outside Ray (no stats, as before).

    Given custom loggers, ``AsyncLLM`` turns stats on itself while ``disable_log_stats`` stays
    on, so vLLM adds none of its default loggers (no periodic ``LoggingStatLogger`` lines):
    ``StatLoggerManager(enable_default_loggers=log_stats)`` in ``vllm/v1/engine/async_llm.py``.
    vLLM imports ``ray.serve`` and ``ray.util.metrics`` in one ``try`` (``vllm/v1/metrics/
    ray_wrappers.py``), so without Ray Serve's dependencies, which a batch job does not need,
    it leaves Ray metrics off and the logger raises; its module is handed ``ray.util.metrics``
    then (it reads Serve only for a replica tag, left empty outside Serve)."""
    if "ray" not in sys.modules:  # a process in Ray has imported it
        return None
    import ray

    if not ray.is_initialized():
        return None
    from ray.util import metrics
    from vllm.v1.metrics import ray_wrappers

    if ray_wrappers.ray_metrics is None:
        ray_wrappers.ray_metrics = metrics
    return [ray_wrappers.RayPrometheusStatLogger]
