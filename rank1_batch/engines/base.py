"""The engine interface and the Rank1 protocol every engine shares.

An engine supplies three primitives — tokenisation, a greedy reasoning pass, and a one-token
answer pass restricted to the two answer ids. :meth:`Rank1Engine.judge` turns them into
judgements with the shared rules of :mod:`rank1_batch.rank1`, so no engine re-implements
prompt building, truncation, the completeness rule, the forced prompt or the fallback.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rank1_batch import rank1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeRequest:
    """One pair to judge: the composed query text and passage text (see ``rank1.compose_*``)."""

    query: str
    passage: str


@dataclass(frozen=True)
class EngineOptions:
    """What an engine needs beyond the model: lengths, budgets and batching."""

    max_model_len: int = 16000
    max_tokens: int = 8192
    min_reserve: int = 1024
    require_stop: bool = False
    batch_size: int = 16


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
    """Base class: subclasses implement the primitives, ``judge`` is shared."""

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

    # -- the shared protocol ----------------------------------------------------------------
    def judge(self, requests: Sequence[JudgeRequest]) -> list[rank1.Judgement]:
        """Judge every request; the result list is aligned with ``requests``."""
        opts = self.options
        max_prompt = opts.max_model_len - opts.min_reserve
        results: list[rank1.Judgement | None] = [None] * len(requests)
        fitted: dict[int, rank1.FittedPrompt] = {}
        for i, req in enumerate(requests):
            try:
                fitted[i] = rank1.fit_prompt(
                    req.query,
                    req.passage,
                    encode=self.encode_prompt,
                    decode=self.decode,
                    encode_text=self.encode,
                    max_prompt_tokens=max_prompt,
                )
            except rank1.PromptTooLong:
                results[i] = rank1.error_judgement(rank1.PROMPT_TOO_LONG)
        order = list(fitted)
        gens = self.generate(
            [fitted[i].token_ids for i in order],
            [
                rank1.reasoning_budget(
                    len(fitted[i].token_ids),
                    max_tokens=opts.max_tokens,
                    max_model_len=opts.max_model_len,
                )
                for i in order
            ],
        )
        incomplete: list[tuple[int, Generation]] = []
        for i, gen in zip(order, gens, strict=True):
            fp = fitted[i]
            if gen.error is not None:
                results[i] = rank1.error_judgement(
                    gen.error, prompt_tokens=len(fp.token_ids), truncated=fp.truncated
                )
                continue
            verdict = rank1.complete_or_none(
                gen.last_top,
                true_id=self.true_id,
                false_id=self.false_id,
                stopped=gen.stopped,
                require_stop=opts.require_stop,
            )
            if verdict is None:
                incomplete.append((i, gen))
                continue
            results[i] = _answered(verdict, rank1.COMPLETE, fp, gen)
        if incomplete:
            forced = [
                self.encode_prompt(
                    rank1.fit_forced_prompt(
                        fitted[i].text,
                        gen.text,
                        encode=self.encode_prompt,
                        max_tokens=opts.max_model_len - 1,
                    )
                )
                for i, gen in incomplete
            ]
            answers = self.answer(forced)
            for (i, gen), top in zip(incomplete, answers, strict=True):
                fp = fitted[i]
                verdict = rank1.answer_from_top_logprobs(top, self.true_id, self.false_id)
                if verdict is None:
                    results[i] = rank1.fallback(
                        len(fp.token_ids),
                        gen.token_count,
                        fp.truncated,
                        gen.text,
                        gen.finish_reason,
                    )
                else:
                    results[i] = _answered(verdict, rank1.FORCED, fp, gen)
        out = [r for r in results if r is not None]
        assert len(out) == len(requests)
        return out
