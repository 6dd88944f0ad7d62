"""Rank1 engines: one interface (:class:`Rank1Engine`), implementations imported on demand.

Importing this package pulls neither torch nor vllm; :func:`make_engine` imports the one asked for.
"""

from __future__ import annotations

from typing import Any

from rank1_batch.engines.base import EngineOptions, Generation, JudgeRequest, Rank1Engine
from rank1_batch.engines.stream_engine import StreamEngine

__all__ = [
    "ENGINES",
    "EngineOptions",
    "Generation",
    "JudgeRequest",
    "Rank1Engine",
    "StreamEngine",
    "make_engine",
]

ENGINES = ("transformers", "vllm")


def make_engine(kind: str, model_path: str, options: EngineOptions, **kwargs: Any) -> Rank1Engine:
    """Build the engine ``kind`` for ``model_path``; ``kwargs`` go to its constructor."""
    if kind == "transformers":
        from rank1_batch.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_path, options, **kwargs)
    if kind == "vllm":
        from rank1_batch.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, options, **kwargs)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
