"""The Rank1 algorithm as pure functions over plain data.

Everything that decides a score lives here, so both engines (transformers, vLLM) share one
implementation and every rule is unit-tested without a model. The rules follow the reference
implementation (``orionw/rank1``: ``rank1.py``/``prompts.py``) exactly, plus two guards it lacks:
passage truncation so a prompt always fits ``max_model_len``, and a bound on the forced prompt.
See ARCHITECTURE.md §"Rank1 scoring".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PROMPT_HEAD = (
    "Determine if the following passage is relevant to the query. "
    "Answer only with 'true' or 'false'.\nQuery: "
)
PASSAGE_SEP = "\nPassage: "
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
PROMPT_TAIL = "\n" + THINK_OPEN
QUERY_PLACEHOLDER = "FILL_QUERY_HERE"
TRUE_TEXT = " true"
FALSE_TEXT = " false"
STOP_STRINGS = (THINK_CLOSE + TRUE_TEXT, THINK_CLOSE + FALSE_TEXT)
TOP_LOGPROBS = 20
SENTENCE_ENDS = ".!?"

COMPLETE = "complete"
FORCED = "forced"
FALLBACK = "fallback"
ERROR = "error"
DIRECT = "direct"
STATUSES = (COMPLETE, FORCED, FALLBACK, ERROR, DIRECT)

# ``reasoning.mode``: how much reasoning a job spends (see :mod:`rank1_batch.core.modes`).
THINK = "think"
MODES = (THINK, DIRECT, "cascade")

# Error codes carried by `error` rows.
PROMPT_TOO_LONG = "prompt_too_long"
ENGINE_ERROR = "engine_error"

Encode = Callable[[str], Sequence[int]]
Decode = Callable[[Sequence[int]], str]


def compose_query(
    query: str, *, instruction: str | None = None, template: str | None = None
) -> str:
    """Query text after the instruction rule and the optional ``FILL_QUERY_HERE`` template.

    The instruction is appended after one space unless it equals the query (compared
    stripped); only then is the template applied, as in the reference.
    """
    if instruction is not None:
        if query.strip() != instruction.strip():
            query = f"{query} {instruction}".strip()
        else:
            query = query.strip()
    if template is not None:
        if QUERY_PLACEHOLDER not in template:
            raise ValueError(f"prompt template must contain {QUERY_PLACEHOLDER}")
        query = template.replace(QUERY_PLACEHOLDER, query)
    return query


def compose_passage(passage: str, *, title: str | None = None) -> str:
    """Passage text: ``(title + " " + text).strip()`` when a title exists, else ``text.strip()``."""
    if title:
        return f"{title} {passage}".strip()
    return passage.strip()


def prompt_from_parts(query_text: str, passage_text: str) -> str:
    """The exact reference prompt for an already composed query and passage."""
    return PROMPT_HEAD + query_text + PASSAGE_SEP + passage_text + PROMPT_TAIL


def build_prompt(
    query: str,
    passage: str,
    *,
    title: str | None = None,
    instruction: str | None = None,
    template: str | None = None,
) -> str:
    """The Rank1 prompt for one (query, passage) pair: raw completion text, no chat template."""
    return prompt_from_parts(
        compose_query(query, instruction=instruction, template=template),
        compose_passage(passage, title=title),
    )


def score_from_logprobs(lp_true: float, lp_false: float) -> tuple[float, float]:
    """``(P(true), logit)``: the two-way softmax ``e^lt / (e^lt + e^lf)`` and ``lt - lf``.

    Computed as a sigmoid of the difference, which is the same value without overflow.
    """
    logit = lp_true - lp_false
    if logit >= 0:
        score = 1.0 / (1.0 + math.exp(-logit))
    else:
        e = math.exp(logit)
        score = e / (1.0 + e)
    return score, logit


def answer_from_top_logprobs(
    top: Mapping[int, float] | None, true_id: int, false_id: int
) -> tuple[float, float] | None:
    """Score from one position's top logprobs, or ``None`` when either answer id is missing.

    This is the reference's completeness rule: an output counts as answered when the last
    position's top-k dictionary holds both ``" true"`` and ``" false"``.
    """
    if not top or true_id not in top or false_id not in top:
        return None
    lp_true, lp_false = float(top[true_id]), float(top[false_id])
    if math.isnan(lp_true) or math.isnan(lp_false):
        return None
    if math.isinf(lp_true) and math.isinf(lp_false):
        return None
    return score_from_logprobs(lp_true, lp_false)


def clean_reasoning(text: str) -> str:
    """Reasoning kept for the forced answer: cut after the last ``.``/``!``/``?``, then strip.

    Text with no sentence end is kept whole (as the reference does). A ``</think>`` already in
    the text is left in place, as in the reference.
    """
    text = text.rstrip()
    if text and text[-1] not in SENTENCE_ENDS:
        cut = max(text.rfind(c) for c in SENTENCE_ENDS)
        if cut >= 0:
            text = text[: cut + 1]
    return text.strip()


def forced_prompt(prompt: str, reasoning: str) -> str:
    """``prompt + "\\n" + cleaned reasoning + "\\n</think>"``: the next token is the answer."""
    return f"{prompt}\n{clean_reasoning(reasoning)}\n{THINK_CLOSE}"


def direct_prompt(prompt: str) -> str:
    """The ``direct`` (no reasoning) prompt: the Rank1 prompt, an empty reasoning, ``</think>``.

    Exactly the forced prompt with no reasoning — ``prompt + "\\n\\n</think>"``, i.e.
    ``...\\nPassage: <passage>\\n<think>\\n\\n</think>`` — so the next token is the answer,
    read from one token restricted to ``" true"``/``" false"`` with the same two-way softmax.
    This is the "reasoning switched off" setting of "Don't Overthink" (arXiv 2505.16886).
    """
    return forced_prompt(prompt, "")


def _shorten_at_sentence(text: str) -> str:
    """Drop the last sentence (or, without one, the last word) of already cleaned text."""
    body = text.rstrip()[:-1] if text and text.rstrip()[-1:] in SENTENCE_ENDS else text
    cut = max(body.rfind(c) for c in SENTENCE_ENDS)
    if cut >= 0:
        return body[: cut + 1].strip()
    space = body.rstrip().rfind(" ")
    return body[:space].strip() if space > 0 else ""


def fit_forced_prompt(prompt: str, reasoning: str, *, encode: Encode, max_tokens: int) -> str:
    """The forced prompt, with reasoning shortened from the end so it is ≤ ``max_tokens`` tokens.

    The reference could exceed the model length here; we drop whole sentences from the end
    (and finally the whole reasoning) until the prompt fits. The cut is found by bisection
    over the successively shortened reasonings (each a prefix of the one before, so their
    token counts fall), a few encodes of the whole prompt instead of one per dropped sentence.
    """
    cuts = [clean_reasoning(reasoning)]
    if len(encode(f"{prompt}\n{cuts[0]}\n{THINK_CLOSE}")) <= max_tokens:
        return f"{prompt}\n{cuts[0]}\n{THINK_CLOSE}"  # the common case: one encode
    while cuts[-1]:
        cuts.append(_shorten_at_sentence(cuts[-1]))
    # The longest cut that fits: cuts[0] does not, cuts[-1] == "" is taken whether it fits or not.
    lo, hi = 1, len(cuts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if len(encode(f"{prompt}\n{cuts[mid]}\n{THINK_CLOSE}")) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    return f"{prompt}\n{cuts[lo]}\n{THINK_CLOSE}"


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits the model: its text, token ids and whether the passage was cut."""

    text: str
    token_ids: tuple[int, ...]
    truncated: bool


class PromptTooLong(ValueError):
    """Even with an empty passage the prompt leaves no room for the reasoning reserve."""


def fit_prompt(
    query_text: str,
    passage_text: str,
    *,
    encode: Encode,
    decode: Decode,
    max_prompt_tokens: int,
    encode_text: Encode | None = None,
) -> FittedPrompt:
    """Build the prompt, cutting passage tokens from the end until it has ≤ ``max_prompt_tokens``.

    Only the passage is cut: the instruction head, the query (with its template tail) and
    ``\\n<think>`` always survive. Token counts are taken on the whole prompt, so tokenizer merges
    across the boundaries are accounted for. Raises :class:`PromptTooLong` when the prompt would
    not fit even with an empty passage. ``encode`` counts whole prompts as the engine feeds
    them; ``encode_text`` (default ``encode``) tokenises the bare passage for cutting.
    """
    text = prompt_from_parts(query_text, passage_text)
    ids = encode(text)
    if len(ids) <= max_prompt_tokens:
        return FittedPrompt(text, tuple(ids), False)
    bare = encode(prompt_from_parts(query_text, ""))
    room = max_prompt_tokens - len(bare)
    if room < 0:
        raise PromptTooLong(
            f"prompt needs {len(bare)} tokens without any passage; limit is {max_prompt_tokens}"
        )
    passage_ids = list((encode_text or encode)(passage_text))
    keep = min(room, len(passage_ids))
    while True:
        cut = decode(passage_ids[:keep]).rstrip() if keep > 0 else ""
        text = prompt_from_parts(query_text, cut)
        ids = encode(text)
        if len(ids) <= max_prompt_tokens:
            return FittedPrompt(text, tuple(ids), True)
        # Re-tokenising the cut text can merge differently; step down by the overshoot.
        keep = max(0, keep - max(1, len(ids) - max_prompt_tokens))


def reasoning_budget(prompt_tokens: int, *, max_tokens: int, max_model_len: int) -> int:
    """New tokens pass 1 may generate: ``min(max_tokens, max_model_len - prompt_tokens)``."""
    return max(0, min(max_tokens, max_model_len - prompt_tokens))


@dataclass(frozen=True)
class Judgement:
    """The outcome for one pair: what the scores and traces files record."""

    score: float
    logit: float
    status: str
    error: str | None = None
    prompt_tokens: int = 0
    reasoning_tokens: int = 0
    truncated: bool = False
    reasoning: str = ""
    finish_reason: str = ""
    # Reasoning modes (None where not computed): the direct and reasoned scores, and which
    # of the two decided ``score`` (``"direct"`` or ``"think"``; None for error rows).
    score_direct: float | None = None
    score_reasoned: float | None = None
    decided_by: str | None = None


def complete_or_none(
    top: Mapping[int, float] | None,
    *,
    true_id: int,
    false_id: int,
    stopped: bool,
    require_stop: bool,
) -> tuple[float, float] | None:
    """Pass-1 verdict: a score when the output counts as answered, else ``None`` (force it).

    ``require_stop=False`` is the reference rule (the last position's top logprobs hold both
    answers, whether or not a stop string fired); ``True`` also demands the stop string.
    """
    if require_stop and not stopped:
        return None
    return answer_from_top_logprobs(top, true_id, false_id)


def fallback(
    prompt_tokens: int, reasoning_tokens: int, truncated: bool, reasoning: str, finish_reason: str
) -> Judgement:
    """Neither pass produced both answer logprobs: score 0.5, flagged, never silent."""
    return Judgement(
        score=0.5,
        logit=0.0,
        status=FALLBACK,
        prompt_tokens=prompt_tokens,
        reasoning_tokens=reasoning_tokens,
        truncated=truncated,
        reasoning=reasoning,
        finish_reason=finish_reason,
    )


def error_judgement(code: str, *, prompt_tokens: int = 0, truncated: bool = False) -> Judgement:
    """A pair the engine could not judge: an ``error`` row with its code, score NaN."""
    return Judgement(
        score=math.nan,
        logit=math.nan,
        status=ERROR,
        error=code,
        prompt_tokens=prompt_tokens,
        truncated=truncated,
    )
