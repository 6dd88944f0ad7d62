"""The Rank1 engine on vLLM: the GPU path that production jobs run (README: "Running on GPUs").

One synchronous ``vllm.LLM`` per Ray actor, coded against vLLM 0.32/0.33:

* **A whole shard in flight**: one ``LLM.generate`` call per pass with every prompt of the
  shard (token ids, one ``SamplingParams`` each, carrying its budget), so continuous batching
  never starves; prefix caching on, a query's candidates adjacent. Prompts are cut to fit by
  the shared ``rank1.fit_prompt`` with the engine's own tokenizer before submission.
* **Processed logprobs**: by default vLLM V1 computes logprobs *before* ``allowed_token_ids``
  masking, so the forced pass could miss an answer id; with ``logprobs_mode=
  "processed_logprobs"`` it is a log-softmax over the two ids, as in the reference's vLLM 0.7.2.
  Greedy pass 1 has no logits processors: there both modes agree. Only the last position is
  read (``flat_logprobs`` keeps the per-token logprobs in a few flat lists).
* **Failures**: a dead engine (``EngineDeadError``) or CUDA OOM logs and ``os._exit(1)``, so
  Ray restarts the actor and retries the shard; a prompt vLLM refuses is isolated by bisecting
  the batch and becomes an ``error`` row (``engine_error``); start-up failure raises
  ``RuntimeError`` with vLLM's message (Ray Data does not retry actor construction: fail fast).

vllm is imported inside :class:`VLLMEngine` only; the adapters are pure functions over objects
shaped like vLLM's ``RequestOutput``/``CompletionOutput``/``Logprob``/``FlatLogprobs``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from rank1_batch import rank1
from rank1_batch.engines.base import EngineOptions, Generation, Rank1Engine
from rank1_batch.spec import RESERVED_ENGINE_ARGS

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

FINISH_EOS = "eos"  # finish_reason "stop" without a stop string: EOS or a stop token id
FINISH_ENGINE_ERROR = "engine_error"  # marks a prompt vLLM refused or aborted
LONG_MAX_MODEL_LEN_ENV = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"
OBJECT_STORE_SCHEMES = ("s3://", "gs://")
# Class names (anywhere in the MRO) of errors that leave the engine unusable.
FATAL_ERROR_NAMES = frozenset({"EngineDeadError", "OutOfMemoryError", "MemoryError"})
# vllm.exceptions.VLLMClientError (request validation) is not a ValueError.
REQUEST_ERROR_NAMES = frozenset({"VLLMClientError"})


# -- pure adapters: vLLM output shapes -> the engine interface -------------------------------


def position_logprobs(position: Mapping[int, Any] | None) -> dict[int, float] | None:
    """``{token_id: logprob}`` for one position (values ``Logprob``-like or floats).

    Non-finite values are dropped: with processed logprobs every masked id is ``-inf``.
    """
    if not position:
        return None
    out: dict[int, float] = {}
    for token_id, value in position.items():
        lp = float(getattr(value, "logprob", value))
        if math.isfinite(lp):
            out[int(token_id)] = lp
    return out or None


def last_position_logprobs(logprobs: Any) -> dict[int, float] | None:
    """The last generated position of ``CompletionOutput.logprobs``: a list of dicts, or a
    ``FlatLogprobs`` (read from its flat lists without building a dict per position)."""
    if logprobs is None:
        return None
    if hasattr(logprobs, "start_indices") and hasattr(logprobs, "end_indices"):
        if not logprobs.start_indices:
            return None
        lo, hi = logprobs.start_indices[-1], logprobs.end_indices[-1]
        ids, values = logprobs.token_ids[lo:hi], logprobs.logprobs[lo:hi]
        return position_logprobs(dict(zip(ids, values, strict=True)))
    if len(logprobs) == 0:
        return None
    return position_logprobs(logprobs[-1])


def finish_of(finish_reason: str | None, stop_reason: int | str | None) -> tuple[str, bool]:
    """``(finish_reason, stopped)`` in the engine interface's terms.

    vLLM says ``stop`` both for a stop string (``stop_reason`` is the string) and for EOS or a
    stop token (``stop_reason`` None or the id); only the first is a Rank1 answer. ``abort``,
    ``error`` (a request-level engine error) and anything unknown mark the prompt failed.
    """
    if finish_reason == "stop":
        return ("stop", True) if isinstance(stop_reason, str) else (FINISH_EOS, False)
    if finish_reason in ("length", "repetition"):
        return str(finish_reason), False
    return FINISH_ENGINE_ERROR, False


def generation_from_output(output: Any) -> Generation:
    """Pass-1 ``RequestOutput`` -> :class:`Generation`.

    vLLM cuts a matched stop string from ``.text`` but keeps the token that completed it in
    ``.token_ids`` and ``.logprobs``, so the last position holds the answer distribution.
    """
    completions = getattr(output, "outputs", None) or []
    if not completions:
        return failed_generation()
    comp = completions[0]
    finish, stopped = finish_of(comp.finish_reason, comp.stop_reason)
    if finish == FINISH_ENGINE_ERROR:
        return failed_generation()
    count = len(comp.token_ids or ())
    last = last_position_logprobs(comp.logprobs) if count else None
    return Generation(comp.text or "", count, last, stopped=stopped, finish_reason=finish)


def answer_from_output(output: Any, true_id: int, false_id: int) -> dict[int, float] | None:
    """Forced-pass ``RequestOutput`` -> ``{true_id: lp, false_id: lp}``, or None if either is
    missing (then the pair falls back). Raw (pre-mask) logprobs give the same score when both
    ids are present; processed ones always hold both."""
    completions = getattr(output, "outputs", None) or []
    if not completions:
        return None
    comp = completions[0]
    if finish_of(comp.finish_reason, comp.stop_reason)[0] == FINISH_ENGINE_ERROR:
        return None
    top = last_position_logprobs(comp.logprobs)
    if not top or true_id not in top or false_id not in top:
        return None
    return {true_id: top[true_id], false_id: top[false_id]}


def failed_generation() -> Generation:
    """A prompt vLLM refused or aborted: the shared protocol makes it an ``error`` row."""
    return Generation(
        "", 0, None, stopped=False, finish_reason=FINISH_ENGINE_ERROR, error=rank1.ENGINE_ERROR
    )


# -- pure failure handling -------------------------------------------------------------------


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_fatal_engine_error(exc: BaseException) -> bool:
    """The engine cannot go on: vLLM's ``EngineDeadError``, CUDA or host out of memory."""
    if _class_names(exc) & FATAL_ERROR_NAMES:
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def is_request_error(exc: BaseException) -> bool:
    """An error one bad request can cause (vLLM validates each request as it is added)."""
    if is_fatal_engine_error(exc):
        return False
    return isinstance(exc, ValueError | TypeError) or bool(_class_names(exc) & REQUEST_ERROR_NAMES)


@dataclass(frozen=True)
class ItemFailure:
    """An item that fails on its own: the error message vLLM gave for it."""

    message: str


def run_isolating_failures(
    items: Sequence[T],
    run: Callable[[list[T]], list[R]],
    is_item_error: Callable[[BaseException], bool],
) -> list[R | ItemFailure]:
    """``run(items)`` as one call; results aligned with ``items``.

    When the call raises an error a single item can cause, the batch is split in halves and
    each half retried, down to single items: a failing one becomes :class:`ItemFailure` and
    every other item still runs. k bad items among n cost O(k log n) calls; vLLM refuses a
    request when it is added, before any generation, so the retries waste no GPU time.
    Other errors propagate.
    """
    if not items:
        return []
    try:
        out = run(list(items))
    except Exception as exc:
        if not is_item_error(exc):
            raise
        if len(items) == 1:
            return [ItemFailure(f"{type(exc).__name__}: {exc}")]
        mid = len(items) // 2
        head = run_isolating_failures(items[:mid], run, is_item_error)
        return head + run_isolating_failures(items[mid:], run, is_item_error)
    if len(out) != len(items):
        raise RuntimeError(f"engine returned {len(out)} outputs for {len(items)} prompts")
    return list(out)


# -- pure configuration ----------------------------------------------------------------------


def vllm_dtype(dtype: str) -> str:
    """``auto`` is float16, as the reference runs every Rank1 model (and AWQ requires)."""
    return "float16" if dtype == "auto" else dtype


def llm_kwargs(
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
) -> dict[str, Any]:
    """Arguments for ``vllm.LLM``; ``engine_args`` add to them but may not override the
    first-class options nor the settings the scoring depends on."""
    extra = dict(engine_args or {})
    for key in extra:
        if key in RESERVED_ENGINE_ARGS:
            raise ValueError(
                f"model.engine_args: {key!r} cannot be set here; use {RESERVED_ENGINE_ARGS[key]}"
            )
    kwargs: dict[str, Any] = {
        "model": model_path,
        "revision": revision,
        "dtype": vllm_dtype(dtype),
        "quantization": quantization,
        "max_model_len": max_model_len,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": enforce_eager,
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
    }
    if model_path.startswith(OBJECT_STORE_SCHEMES):
        # vLLM streams s3:// and gs:// checkpoints with the Run:ai streamer (vllm[runai]).
        kwargs["load_format"] = "runai_streamer"
    kwargs.update(extra)
    return kwargs


def pass1_sampling(budget: int) -> dict[str, Any]:
    """Reference pass 1 for one prompt: greedy, its own budget, top-20 logprobs, stop strings
    matched on text with special tokens kept (else ``</think>`` never shows in the text)."""
    return {
        "temperature": 0.0,
        "max_tokens": budget,
        "logprobs": rank1.TOP_LOGPROBS,
        "stop": list(rank1.STOP_STRINGS),
        "skip_special_tokens": False,
        "flat_logprobs": True,
    }


def forced_sampling(true_id: int, false_id: int) -> dict[str, Any]:
    """Forced pass: one greedy token restricted to the two answer ids."""
    return {
        "temperature": 0.0,
        "max_tokens": 1,
        "logprobs": rank1.TOP_LOGPROBS,
        "allowed_token_ids": [true_id, false_id],
        "skip_special_tokens": False,
    }


def exit_for_restart(exc: BaseException) -> NoReturn:
    """Take the actor down so Ray restarts it and retries the shard on a fresh engine."""
    log.critical(
        "vLLM engine is unusable (%s: %s); exiting so Ray restarts this actor and retries",
        type(exc).__name__,
        exc,
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(1)


# -- the engine ------------------------------------------------------------------------------


class VLLMEngine(Rank1Engine):
    """Rank1 through one ``vllm.LLM``; see the module docstring."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        options: EngineOptions,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        quantization: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        engine_args: Mapping[str, Any] | None = None,
        model_id: str | None = None,
        device: str = "auto",
        exit_on_fatal: bool = True,
    ) -> None:
        if device == "cpu":
            raise ValueError("engine vllm runs on CUDA GPUs; use engine transformers on CPU")
        kwargs = llm_kwargs(
            model_path,
            max_model_len=options.max_model_len,
            revision=revision,
            dtype=dtype,
            quantization=quantization,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            engine_args=engine_args,
        )
        self.exit_on_fatal = exit_on_fatal
        # 16000 exceeds some models' positions (Llama-3-8B: 8192); the reference allows it too.
        os.environ.setdefault(LONG_MAX_MODEL_LEN_ENV, "1")
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError(
                f"vLLM engine needs the vllm package (install rank1-batch[vllm] on a GPU "
                f"image): {exc}"
            ) from exc
        self._sampling_params = vllm.SamplingParams
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:
            raise RuntimeError(
                f"vLLM engine failed to start for {model_path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.prompt_tokens_submitted = 0
        self.prompt_tokens_cached = 0
        if revision is None:
            revision = self._resolve_revision(model_path)
        super().__init__(options, model_id=model_id or model_path, model_revision=revision)

    def _resolve_revision(self, model_path: str) -> str:
        if os.path.isdir(model_path):
            from rank1_batch.engines.transformers_engine import folder_revision

            return folder_revision(Path(model_path))
        hf_config = getattr(getattr(self.llm, "model_config", None), "hf_config", None)
        return str(getattr(hf_config, "_commit_hash", None) or "unknown")

    # -- tokenisation (the engine's own tokenizer) ------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    # -- submission ---------------------------------------------------------------------------
    def _submit(self, requests: list[tuple[list[int], Any]]) -> list[Any]:
        """All requests in one ``LLM.generate`` call; a refused prompt is an ItemFailure."""

        def run(batch: list[tuple[list[int], Any]]) -> list[Any]:
            prompts = [{"prompt_token_ids": ids} for ids, _ in batch]
            return list(self.llm.generate(prompts, [p for _, p in batch], use_tqdm=False))

        try:
            results = run_isolating_failures(requests, run, is_request_error)
        except Exception as exc:
            if self.exit_on_fatal and is_fatal_engine_error(exc):
                exit_for_restart(exc)
            raise
        failures = [r for r in results if isinstance(r, ItemFailure)]
        if failures:
            if len(failures) == len(requests) > 1:
                # Not one bad pair: something wrong for every prompt. Fail the shard loudly.
                raise RuntimeError(f"vLLM refused all {len(requests)} prompts: {failures[0]}")
            log.warning("vLLM refused %d prompt(s): %s", len(failures), failures[0].message)
        return results

    # -- pass 1 -------------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        if len(prompts) != len(budgets):
            raise ValueError("prompts and budgets differ in length")
        out = [Generation("", 0, None, stopped=False, finish_reason="length") for _ in prompts]
        todo = [i for i, budget in enumerate(budgets) if budget > 0]  # vLLM needs max_tokens≥1
        requests = [
            (list(prompts[i]), self._sampling_params(**pass1_sampling(budgets[i]))) for i in todo
        ]
        for i, result in zip(todo, self._submit(requests), strict=True):
            if isinstance(result, ItemFailure):
                out[i] = failed_generation()
                continue
            out[i] = generation_from_output(result)
            self.prompt_tokens_submitted += len(prompts[i])
            self.prompt_tokens_cached += int(getattr(result, "num_cached_tokens", 0) or 0)
        return out

    # -- forced pass --------------------------------------------------------------------------
    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        params = self._sampling_params(**forced_sampling(self.true_id, self.false_id))
        results = self._submit([(list(p), params) for p in prompts])
        return [
            None
            if isinstance(r, ItemFailure)
            else answer_from_output(r, self.true_id, self.false_id)
            for r in results
        ]

    def close(self) -> None:
        """Shut the engine core down and free GPU memory."""
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception as exc:  # closing must not mask the caller's own error
                log.warning("vLLM engine shutdown failed: %s", exc)
        del llm
        gc.collect()
