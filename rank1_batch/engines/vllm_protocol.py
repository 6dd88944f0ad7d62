"""Rank1 on vLLM's request primitives: pure adapters and the per-pair pass-1 drivers.

Nothing here imports vllm: the functions work on objects shaped like vLLM 0.32's
``RequestOutput``/``CompletionOutput``/``Logprob``/``FlatLogprobs`` (``vllm/outputs.py``,
``vllm/logprobs.py``), and :func:`stream_pass1` drives any async ``submit(prompt_ids,
sampling_kwargs) -> RequestOutput``, so its equality with the reference rule is unit-tested
on recorded output shapes (``tests/test_vllm_adapters.py``).

**Logprobs only where they are read.** The reference asks top-20 logprobs for every pass-1
token and reads one position: the last. :func:`stream_pass1` asks none while reasoning. It
stops on ``</think>`` (a prefix of both reference stop strings, so it stops at or before the
reference), then takes one more greedy step with ``logprobs=20`` over the cached prefix: if
that token completes ``</think> true``/``</think> false`` it is the reference's last position;
otherwise it is appended and generation goes on, exactly as the reference would (the token
after ``</think>`` was not an answer). When the budget or EOS ends the reasoning, one step
over the prompt and all but the last token gives the last position's top-20 (prefix-cached,
one token of work). Greedy decoding makes the tokens the reference's; the text and the
stopping point are decided on the decoded text, as vLLM's stop strings are. That text is
decoded incrementally (:class:`~rank1_batch.engines.decoding.IncrementalText`: only each
segment's new tokens), and the decoding runs through ``off_loop`` (a worker thread).

**The reference's one request** (``model.request_mode: single``, :func:`single_pass1`): its
stop strings, top-20 logprobs for every token (flat), the final output only; the last
position is the answer position and the text is vLLM's own. Fewer requests, more logprobs:
which is faster is measured, not assumed (docs/gpu.md).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from rank1_batch.core import rank1
from rank1_batch.engines.base import Generation
from rank1_batch.engines.decoding import IncrementalText

FINISH_EOS = "eos"  # finish_reason "stop" without a stop string: EOS or a stop token id
FINISH_ENGINE_ERROR = "engine_error"  # marks a prompt vLLM refused or aborted
# Class names (anywhere in the MRO) of errors that leave the engine unusable.
FATAL_ERROR_NAMES = frozenset({"EngineDeadError", "OutOfMemoryError", "MemoryError"})
# vllm.exceptions.VLLMClientError (request validation) is not a ValueError;
# EngineGenerateError is one request failing inside a live engine.
REQUEST_ERROR_NAMES = frozenset({"VLLMClientError", "EngineGenerateError"})

# ``model.request_mode``: how pass 1 talks to vLLM (see the module docstring).
REQUEST_MODES = ("stepped", "single")

Submit = Callable[[list[int], dict[str, Any]], Awaitable[Any]]
Decode = Callable[[Sequence[int]], str]
OffLoop = Callable[..., Awaitable[Any]]  # asyncio.to_thread's shape: run fn(*args) elsewhere


class RequestRefused(Exception):
    """vLLM refused or failed this one request (the engine lives on): an ``error`` row."""


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


# -- sampling ----------------------------------------------------------------------------------


def pass1_sampling(budget: int) -> dict[str, Any]:
    """Reasoning: greedy, this pair's remaining budget, stop on ``</think>`` (matched on text
    with special tokens kept), and no logprobs at all."""
    return {
        "temperature": 0.0,
        "max_tokens": budget,
        "stop": [rank1.THINK_CLOSE],
        "skip_special_tokens": False,
    }


def step_sampling() -> dict[str, Any]:
    """One greedy token with the top-20 logprobs of its position: the answer position."""
    return {
        "temperature": 0.0,
        "max_tokens": 1,
        "logprobs": rank1.TOP_LOGPROBS,
        "skip_special_tokens": False,
        "flat_logprobs": True,
    }


def single_sampling(budget: int) -> dict[str, Any]:
    """The reference's pass 1 (``request_mode: single``): greedy, this pair's budget, its
    stop strings, the top 20 logprobs of every token (flat: no dict per position)."""
    return {
        "temperature": 0.0,
        "max_tokens": budget,
        "stop": list(rank1.STOP_STRINGS),
        "logprobs": rank1.TOP_LOGPROBS,
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


# -- the pass-1 drivers --------------------------------------------------------------------------


async def single_pass1(submit: Submit, prompt: Sequence[int], budget: int) -> Generation:
    """Pass 1 as the reference runs it: one request (:func:`single_sampling`); the answer
    position is the last one, and the text is vLLM's own (its incremental detokenizer, with
    the matched stop string cut, an EOS left out), so nothing is decoded here."""
    try:
        comp = _completion(await submit(list(prompt), single_sampling(budget)))
    except RequestRefused:
        return failed_generation()
    tokens = comp.token_ids or ()
    if not tokens:
        return failed_generation()  # as the stepped driver: a request that generated nothing
    finish, stopped = finish_of(comp.finish_reason, comp.stop_reason)
    last = last_position_logprobs(comp.logprobs)
    return Generation(comp.text or "", len(tokens), last, stopped=stopped, finish_reason=finish)


def reference_stop(text: str) -> int | None:
    """Where the first reference stop string starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in rank1.STOP_STRINGS) if i >= 0]
    return min(found) if found else None


def _completion(output: Any) -> Any:
    """The first ``CompletionOutput``; :class:`RequestRefused` for a failed request."""
    completions = getattr(output, "outputs", None) or []
    if not completions:
        raise RequestRefused("vLLM returned no completion")
    comp = completions[0]
    if finish_of(comp.finish_reason, comp.stop_reason)[0] == FINISH_ENGINE_ERROR:
        raise RequestRefused(f"request finished with {comp.finish_reason!r}")
    return comp


async def _last_top(submit: Submit, prompt: list[int], gen: list[int]) -> dict[int, float] | None:
    """Top-20 logprobs of the last generated position: one step over everything before it."""
    comp = _completion(await submit(prompt + gen[:-1], step_sampling()))
    return last_position_logprobs(comp.logprobs)


# The host work of the stepped driver, run off the event loop (``off_loop``): each reads the
# generation's text through an IncrementalText, which decodes only what is new.


def _stop_in_segment(text: IncrementalText, start: int) -> tuple[int, str] | None:
    """``(tokens kept, reasoning)`` where a reference stop string first completes at a token
    ``>= start`` (the segment just generated), or None. The stop strings are ASCII, so once a
    decoded prefix holds one every longer prefix does: the token is found by bisection over
    the segment's prefixes, each decoded from the segment's start."""
    n = len(text.tokens)
    if reference_stop(text.upto(n)) is None:
        return None
    lo, hi = max(start, 1), n
    while lo < hi:
        mid = (lo + hi) // 2
        if reference_stop(text.upto(mid)) is None:
            lo = mid + 1
        else:
            hi = mid
    kept = text.upto(lo)
    cut = reference_stop(kept)
    assert cut is not None
    return lo, kept[:cut]


def _end_text(text: IncrementalText, finish: str) -> str:
    """The reasoning of a generation ended by the budget or EOS (whose text vLLM leaves out,
    its token counted)."""
    n = len(text.tokens)
    return text.upto(n - 1 if finish == FINISH_EOS else n)


def _after_step(text: IncrementalText, step_finish: str, budget: int) -> tuple[str, str]:
    """After the one-token step that followed ``</think>``: ``("stop", reasoning)`` if it
    completed a reference stop string, ``("end", reasoning)`` if EOS or the budget ended the
    generation, else ``("more", "")`` with the text so far marked (reasoning goes on)."""
    n = len(text.tokens)
    full = text.upto(n)
    cut = reference_stop(full)
    if cut is not None:
        return "stop", full[:cut]
    if step_finish == FINISH_EOS or n >= budget:
        return "end", _end_text(text, step_finish)
    text.mark(n, full)
    return "more", ""


async def stream_pass1(
    submit: Submit,
    prompt: Sequence[int],
    budget: int,
    decode: Decode,
    *,
    off_loop: OffLoop = asyncio.to_thread,
) -> Generation:
    """Pass 1 of one prompt, equal to the reference's (see the module docstring).

    ``budget`` ≥ 1. Never keeps more than one position's logprobs. A refused request gives a
    failed generation (an ``error`` row); engine-fatal errors propagate from ``submit``. The
    decoding and stop-string search run through ``off_loop`` (a worker thread), so the
    caller's loop only sends requests and takes their outputs.
    """
    ids = list(prompt)
    text = IncrementalText(decode)
    gen = text.tokens
    try:
        while True:
            start = len(gen)
            comp = _completion(await submit(ids + gen, pass1_sampling(budget - len(gen))))
            finish, closed = finish_of(comp.finish_reason, comp.stop_reason)
            gen.extend(comp.token_ids or ())
            if not gen:
                raise RequestRefused("vLLM generated no token")
            stop = await off_loop(_stop_in_segment, text, start)
            if stop is not None:  # greedy: the reference produced the same tokens, cut here
                kept, reasoning = stop
                top = await _last_top(submit, ids, gen[:kept])
                return Generation(reasoning, kept, top, stopped=True, finish_reason="stop")
            if not closed or len(gen) >= budget:  # EOS or budget: the last position is read
                finish = finish if not closed else "length"
                reasoning = await off_loop(_end_text, text, finish)
                top = await _last_top(submit, ids, gen)
                return Generation(reasoning, len(gen), top, stopped=False, finish_reason=finish)
            # Stopped on </think> with budget left: the answer position, with its logprobs.
            step = _completion(await submit(ids + gen, step_sampling()))
            step_finish = finish_of(step.finish_reason, step.stop_reason)[0]
            gen.extend(step.token_ids or ())
            top = last_position_logprobs(step.logprobs)
            kind, reasoning = await off_loop(_after_step, text, step_finish, budget)
            if kind == "stop":
                return Generation(reasoning, len(gen), top, stopped=True, finish_reason="stop")
            if kind == "end":
                return Generation(
                    reasoning, len(gen), top, stopped=False, finish_reason=step_finish
                )
            # Not an answer token: the reference reasons on; so do we.
    except RequestRefused:
        return failed_generation()
