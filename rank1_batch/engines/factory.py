"""Which engine a job gets, and how it is built from the job file.

The actors receive a spec whose ``auto`` settings the driver resolved
(:mod:`rank1_batch.job.resolve`) and build exactly that engine, a built-in or a plugin found
by its name (:mod:`rank1_batch.engines`); the model folder is found where the engine runs
(the one on that node).
"""

from __future__ import annotations

from typing import Any

from rank1_batch.engines.base import EngineOptions, Rank1Engine
from rank1_batch.job.resolve import local_platform, resolve_spec
from rank1_batch.job.spec import JobSpec


def model_path(spec: JobSpec) -> str:
    """Local folder (or hub id) to load: ``toy`` resolves to the built-in toy model, an
    object-store folder to this node's cached copy (:mod:`rank1_batch.engines.model_cache`)."""
    from rank1_batch.engines.model_cache import model_path as resolve

    return resolve(spec)


def engine_kind(spec: JobSpec) -> str:
    """The engine ``spec`` runs: as resolved on the driver, or (a spec not resolved yet,
    built in this process) by the same rules on this process's hardware."""
    return resolve_spec(spec, local_platform).model.engine


def engine_options(spec: JobSpec) -> EngineOptions:
    r = spec.reasoning
    return EngineOptions(
        max_model_len=spec.model.max_model_len,
        max_tokens=r.max_tokens,
        min_reserve=min(r.min_reserve, spec.model.max_model_len - 1),
        require_stop=r.require_stop,
        batch_size=spec.compute.batch_size,
        request_mode=spec.model.request_mode,
    )


def build_engine(spec: JobSpec, path: str) -> Rank1Engine:
    """The engine ``spec.model.engine`` names, for the model at ``path``: every engine gets
    ``revision``, ``dtype``, ``device`` and ``model_id``; vLLM its own options too."""
    from rank1_batch.engines import make_engine

    spec = resolve_spec(spec, local_platform)  # a driver-resolved spec is kept as it is
    kind = spec.model.engine
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
            batch_invariant=m.batch_invariant,
            cpu_kv_cache_gib=m.cpu_kv_cache_gib,
        )
    return make_engine(kind, path, engine_options(spec), **kwargs)
