"""The engine interface and the Rank1 protocol every engine shares.

An engine supplies three primitives — tokenisation, a greedy reasoning pass, and a one-token
answer pass restricted to the two answer ids. :meth:`Rank1Engine.judge` turns them into
judgements with the shared rules of :mod:`rank1_batch.core.rank1`, so no engine re-implements
prompt building, truncation, the completeness rule, the forced prompt or the fallback.

Two shapes of engine share those steps (:meth:`Rank1Engine.fit`, ``budget``, ``after_pass1``,
``forced_prompt``, ``after_forced``): a batch engine (transformers) implements ``generate`` and
``answer`` over lists and is judged a batch at a time; a stream engine
(:class:`rank1_batch.engines.stream_engine.StreamEngine`, vLLM's ``AsyncLLM``) implements
``generate_one``/``answer_one`` and each pair is judged on its own.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rank1_batch.core import modes, rank1
from rank1_batch.core.rows import JudgeRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """What an engine needs beyond the model: lengths, budgets and batching."""

    max_model_len: int = 16000
    max_tokens: int = 8192
    min_reserve: int = 1024
    require_stop: bool = False
    batch_size: int = 16
    # vLLM's pass-1 requests (``model.request_mode``): "stepped" or "single"; others ignore it.
    request_mode: str = "stepped"


@dataclass(frozen=True)
class Generation:
    """Pass-1 output for one prompt.

    ``text`` is the reasoning with the matched stop string removed (special tokens kept);
    ``last_top`` the top logprobs at the last generated position (the answer token when a stop
    string fired); ``stopped`` whether a stop string fired. ``error`` is an error code when
    the engine could not run this prompt at all (it becomes an ``error`` row, not forced).
    """

    text: str
    token_count: int
    last_top: Mapping[int, float] | None
    stopped: bool
    finish_reason: str
    error: str | None = None


def resolve_answer_ids(encode: rank1.Encode) -> tuple[int, int]:
    """Ids of ``" true"`` and ``" false"`` (leading space) in the model's own tokenizer."""
    ids = []
    for text in (rank1.TRUE_TEXT, rank1.FALSE_TEXT):
        tokens = list(encode(text))
        if not tokens:
            raise ValueError(f"tokenizer encodes {text!r} to no token; not a Rank1 tokenizer")
        if len(tokens) > 1:
            log.warning(
                "%r encodes to %d tokens; using the first, as the reference does", text, len(tokens)
            )
        ids.append(tokens[0])
    if ids[0] == ids[1]:
        raise ValueError("' true' and ' false' encode to the same first token")
    return ids[0], ids[1]


def _answered(
    verdict: tuple[float, float], status: str, fp: rank1.FittedPrompt, gen: Generation
) -> rank1.Judgement:
    """A judgement with a score (complete or forced): the pass-1 trace and counts kept."""
    return rank1.Judgement(
        score=verdict[0],
        logit=verdict[1],
        status=status,
        prompt_tokens=len(fp.token_ids),
        reasoning_tokens=gen.token_count,
        truncated=fp.truncated,
        reasoning=gen.text,
        finish_reason=gen.finish_reason,
    )


class Rank1Engine(abc.ABC):
    """Base class: subclasses implement the primitives; the Rank1 steps and the batch
    ``judge`` are shared (and the stream engine reuses the same steps per pair)."""

    name: str = "base"

    def __init__(self, options: EngineOptions, *, model_id: str, model_revision: str) -> None:
        self.options = options
        self.model_id = model_id
        self.model_revision = model_revision
        self.true_id, self.false_id = resolve_answer_ids(self.encode)

    # -- primitives -------------------------------------------------------------------------
    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens added (raw completion prompts)."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept."""

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids the engine feeds for a prompt: what the tokenizer adds by default (a BOS
        for Llama-style tokenizers, nothing for Qwen), as the reference's ``LLM.generate``."""
        return self.encode(text)

    @abc.abstractmethod
    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        """Greedy pass 1: each prompt gets at most its budget of new tokens, stop strings
        ``</think> true`` / ``</think> false``, top-20 logprobs at the last position."""

    @abc.abstractmethod
    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        """Forced pass: one token restricted to the two answer ids; their logprobs."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (engines holding GPUs override this)."""

    # -- the shared protocol: Rank1 steps, used by the batch ``judge`` and the stream engine
    def fit(self, request: JudgeRequest) -> rank1.FittedPrompt | rank1.Judgement:
        """The prompt cut to leave the reasoning reserve, or an ``error`` row if it cannot fit."""
        opts = self.options
        try:
            return rank1.fit_prompt(
                request.query,
                request.passage,
                encode=self.encode_prompt,
                decode=self.decode,
                encode_text=self.encode,
                max_prompt_tokens=opts.max_model_len - opts.min_reserve,
            )
        except rank1.PromptTooLong:
            return rank1.error_judgement(rank1.PROMPT_TOO_LONG)

    def budget(self, fp: rank1.FittedPrompt) -> int:
        """New tokens pass 1 may generate for this prompt."""
        return rank1.reasoning_budget(
            len(fp.token_ids),
            max_tokens=self.options.max_tokens,
            max_model_len=self.options.max_model_len,
        )

    def after_pass1(self, fp: rank1.FittedPrompt, gen: Generation) -> rank1.Judgement | None:
        """The judgement pass 1 settles (an error row, or complete), or None: force it."""
        if gen.error is not None:
            return rank1.error_judgement(
                gen.error, prompt_tokens=len(fp.token_ids), truncated=fp.truncated
            )
        verdict = rank1.complete_or_none(
            gen.last_top,
            true_id=self.true_id,
            false_id=self.false_id,
            stopped=gen.stopped,
            require_stop=self.options.require_stop,
        )
        return None if verdict is None else _answered(verdict, rank1.COMPLETE, fp, gen)

    def forced_prompt(self, fp: rank1.FittedPrompt, gen: Generation) -> list[int]:
        """Token ids of the forced prompt (reasoning cut to a sentence end, bounded to fit)."""
        text = rank1.fit_forced_prompt(
            fp.text,
            gen.text,
            encode=self.encode_prompt,
            max_tokens=self.options.max_model_len - 1,
        )
        return self.encode_prompt(text)

    def after_forced(
        self, fp: rank1.FittedPrompt, gen: Generation, top: Mapping[int, float] | None
    ) -> rank1.Judgement:
        """Forced verdict, or the flagged 0.5 fallback when either answer logprob is missing."""
        verdict = rank1.answer_from_top_logprobs(top, self.true_id, self.false_id)
        if verdict is None:
            return rank1.fallback(
                len(fp.token_ids), gen.token_count, fp.truncated, gen.text, gen.finish_reason
            )
        return _answered(verdict, rank1.FORCED, fp, gen)

    def direct_prompt(self, fp: rank1.FittedPrompt) -> list[int]:
        """Token ids of the ``direct`` prompt (:func:`rank1.direct_prompt`), bounded to fit."""
        text = rank1.fit_forced_prompt(
            fp.text, "", encode=self.encode_prompt, max_tokens=self.options.max_model_len - 1
        )
        return self.encode_prompt(text)

    def after_direct(
        self, fp: rank1.FittedPrompt, top: Mapping[int, float] | None
    ) -> rank1.Judgement:
        """The ``direct`` verdict (no reasoning), or the flagged 0.5 fallback."""
        verdict = rank1.answer_from_top_logprobs(top, self.true_id, self.false_id)
        if verdict is None:
            return rank1.fallback(len(fp.token_ids), 0, fp.truncated, "", rank1.DIRECT)
        return _answered(verdict, rank1.DIRECT, fp, NO_REASONING)

    def _fit_all(
        self, requests: Sequence[JudgeRequest]
    ) -> tuple[list[rank1.Judgement | None], dict[int, rank1.FittedPrompt]]:
        """Fit every prompt: ``(results, fitted)`` where a prompt that cannot fit is already
        its error judgement in ``results`` and the rest are in ``fitted`` by index."""
        results: list[rank1.Judgement | None] = [None] * len(requests)
        fitted: dict[int, rank1.FittedPrompt] = {}
        for i, req in enumerate(requests):
            fp = self.fit(req)
            if isinstance(fp, rank1.Judgement):
                results[i] = fp
            else:
                fitted[i] = fp
        return results, fitted

    def judge_direct(self, requests: Sequence[JudgeRequest]) -> list[rank1.Judgement]:
        """Judge every request without reasoning: one batched answer pass."""
        results, fitted = self._fit_all(requests)
        if fitted:
            tops = self.answer([self.direct_prompt(fp) for fp in fitted.values()])
            for (i, fp), top in zip(fitted.items(), tops, strict=True):
                results[i] = self.after_direct(fp, top)
        out = [r for r in results if r is not None]
        assert len(out) == len(requests)
        return out

    def judge_pairs(
        self,
        requests: Sequence[JudgeRequest],
        query_ids: Sequence[str],
        mode: modes.ReasoningMode,
    ) -> list[rank1.Judgement]:
        """A shard's judgements under ``reasoning.mode`` (:mod:`rank1_batch.core.modes`):
        the direct pass where the mode has one, then reasoning for the pairs it plans."""
        direct = self.judge_direct(requests) if mode.mode != rank1.THINK else None
        chosen = modes.reasoned_pairs(
            mode.mode, query_ids, direct, top_k=mode.top_k, margin=mode.margin
        )
        reasoned = self.judge([requests[i] for i in chosen]) if chosen else []
        return modes.finish(len(requests), direct, dict(zip(chosen, reasoned, strict=True)))

    def judge(self, requests: Sequence[JudgeRequest]) -> list[rank1.Judgement]:
        """Judge every request in two batched passes; the result list is aligned with
        ``requests``."""
        results, fitted = self._fit_all(requests)
        order = list(fitted)
        gens = self.generate(
            [fitted[i].token_ids for i in order], [self.budget(fitted[i]) for i in order]
        )
        incomplete: list[tuple[int, Generation]] = []
        for i, gen in zip(order, gens, strict=True):
            results[i] = self.after_pass1(fitted[i], gen)
            if results[i] is None:
                incomplete.append((i, gen))
        if incomplete:
            answers = self.answer([self.forced_prompt(fitted[i], gen) for i, gen in incomplete])
            for (i, gen), top in zip(incomplete, answers, strict=True):
                results[i] = self.after_forced(fitted[i], gen, top)
        out = [r for r in results if r is not None]
        assert len(out) == len(requests)
        return out


NO_GENERATION = Generation("", 0, None, stopped=False, finish_reason="length")
NO_REASONING = Generation("", 0, None, stopped=False, finish_reason=rank1.DIRECT)
