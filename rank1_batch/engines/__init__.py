"""Rank1 engines: one interface (:class:`Rank1Engine`), implementations found by name.

An engine is a built-in (``transformers``, ``vllm``) or a plugin: an entry point in group
``rank1_batch.engines`` (:data:`rank1_batch.job.spec.ENGINE_ENTRY_POINTS`) of an installed
distribution, naming a :class:`Rank1Engine` subclass. ``model.engine`` names one of them (or
``auto``); a job file naming another is refused, with the names there are. A plugin is built
as the built-ins are: ``cls(model_path, options, revision=..., dtype=..., device=...,
model_id=...)``. The built-ins are known by this module, not by entry points: a package run
from a source tree (a Ray ``working_dir``) has no installed metadata.

Importing this package pulls neither torch nor vllm; :func:`make_engine` imports the one asked
for (a plugin's module is imported only when its engine is asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rank1_batch.engines.base import EngineOptions, Generation, JudgeRequest, Rank1Engine
from rank1_batch.engines.stream_engine import StreamEngine
from rank1_batch.job.spec import engine_names, installed_engines

__all__ = [
    "EngineOptions",
    "Generation",
    "JudgeRequest",
    "Rank1Engine",
    "StreamEngine",
    "engine_class",
    "make_engine",
    "streams",
]


def engine_class(kind: str) -> type[Rank1Engine]:
    """The class of engine ``kind`` (a built-in or an installed plugin)."""
    if kind == "transformers":
        from rank1_batch.engines.transformers_engine import TransformersEngine

        return TransformersEngine
    if kind == "vllm":
        from rank1_batch.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    plugin = installed_engines().get(kind)
    if plugin is None:
        raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(engine_names())}")
    found = plugin.load()
    if not (isinstance(found, type) and issubclass(found, Rank1Engine)):
        raise TypeError(
            f"engine {kind!r}: entry point {plugin.value!r} is not a Rank1Engine subclass"
        )
    return found


def streams(kind: str) -> bool:
    """Whether engine ``kind`` takes requests one at a time (a :class:`StreamEngine`), so an
    actor may score several shards at once; ``auto`` may become vLLM. Built-ins are known
    without importing them (transformers imports torch)."""
    if kind in ("auto", "vllm"):
        return True
    if kind == "transformers":
        return False
    return issubclass(engine_class(kind), StreamEngine)


def make_engine(kind: str, model_path: str, options: EngineOptions, **kwargs: Any) -> Rank1Engine:
    """Build the engine ``kind`` for ``model_path``; ``kwargs`` go to its constructor."""
    # Every engine's constructor takes (model_path, options, **kwargs); Rank1Engine's own is
    # the subclasses' super().__init__.
    build: Callable[..., Rank1Engine] = engine_class(kind)
    return build(model_path, options, **kwargs)
