"""The vLLM engine's pure parts, on objects shaped exactly like vLLM's (no vllm needed).

``RequestOutput``/``CompletionOutput``/``Logprob``/``FlatLogprobs`` below mirror the fields of
``vllm/outputs.py`` and ``vllm/logprobs.py`` (0.32/0.33). The engine's submission path runs
against ``FakeLLM``, which validates requests as they are added and raises a
``VLLMValidationError`` that, like vLLM's, is not a ``ValueError``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rank1_batch.core import rank1
from rank1_batch.engines import EngineOptions, Generation, JudgeRequest, Rank1Engine, make_engine
from rank1_batch.engines import decoding as vd
from rank1_batch.engines import vllm_engine as ve
from rank1_batch.engines import vllm_protocol as vp
from rank1_batch.engines.decoding import IncrementalText
from rank1_batch.job import resolve
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.spec import JobError

ROOT = Path(__file__).resolve().parents[1]


# -- vLLM-shaped data ------------------------------------------------------------------------


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FlatLogprobs:
    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    decoded_tokens: list[str | None] = field(default_factory=list)

    def append(self, position: Mapping[int, Logprob] | None) -> None:
        self.start_indices.append(len(self.logprobs))
        for token_id, lp in (position or {}).items():
            self.token_ids.append(token_id)
            self.logprobs.append(lp.logprob)
            self.ranks.append(lp.rank)
            self.decoded_tokens.append(lp.decoded_token)
        self.end_indices.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start_indices)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True
    num_cached_tokens: int | None = 0


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):
    pass


class EngineDeadError(VLLMError):
    pass


TRUE, FALSE, CLOSE, OTHER = 8, 9, 2, 3


def position(**lps: float) -> dict[int, Logprob]:
    ids = {"true": TRUE, "false": FALSE, "close": CLOSE, "other": OTHER}
    ranked = sorted(lps.items(), key=lambda kv: -kv[1])
    return {ids[k]: Logprob(v, rank + 1, k) for rank, (k, v) in enumerate(ranked)}


def completion(text, tokens, positions, finish, stop=None, flat=False) -> RequestOutput:
    logprobs: Any = None
    if positions is not None:
        logprobs = FlatLogprobs() if flat else []
        for p in positions:
            logprobs.append(p)
    comp = CompletionOutput(0, text, tokens, None, logprobs, finish, stop)
    return RequestOutput("0", None, [1, 2, 3], None, [comp])


# -- Generation and answer adapters ----------------------------------------------------------


def reference_generation(output: Any) -> Generation:
    """The reference's pass 1 (one request: stop strings ``</think> true``/``</think> false``,
    top-20 logprobs for every token) read as a :class:`Generation`, through the engine's pure
    adapters: what the tests hold :func:`vp.stream_pass1` to. vLLM cuts a matched stop string
    from ``.text`` but keeps the token that completed it in ``.token_ids`` and ``.logprobs``,
    so the last position holds the answer distribution."""
    completions = getattr(output, "outputs", None) or []
    if not completions:
        return ve.failed_generation()
    comp = completions[0]
    finish, stopped = ve.finish_of(comp.finish_reason, comp.stop_reason)
    if finish == ve.FINISH_ENGINE_ERROR:
        return ve.failed_generation()
    count = len(comp.token_ids or ())
    last = ve.last_position_logprobs(comp.logprobs) if count else None
    return Generation(comp.text or "", count, last, stopped=stopped, finish_reason=finish)


@pytest.mark.parametrize("flat", [False, True], ids=["dicts", "flat"])
def test_stopped_output_is_complete(flat: bool) -> None:
    # vLLM cut "</think> true" from the text; the answer token stays in token_ids/logprobs.
    out = completion(
        "The query is about x. They match.\n",
        [OTHER, OTHER, CLOSE, TRUE],
        [
            position(other=-0.1),
            position(other=-0.2),
            position(close=-0.05),
            position(true=-0.1, false=-2.4, other=-5.0),
        ],
        "stop",
        "</think> true",
        flat=flat,
    )
    gen = reference_generation(out)
    assert gen == Generation(
        "The query is about x. They match.\n",
        4,
        {TRUE: -0.1, FALSE: -2.4, OTHER: -5.0},
        stopped=True,
        finish_reason="stop",
    )
    verdict = rank1.complete_or_none(
        gen.last_top, true_id=TRUE, false_id=FALSE, stopped=gen.stopped, require_stop=True
    )
    assert verdict is not None
    assert verdict[0] == pytest.approx(1 / (1 + math.exp(-2.3)))


def test_length_capped_output_is_incomplete() -> None:
    out = completion("Thinking and thinking", [OTHER] * 3, [position(other=-0.3)] * 3, "length")
    gen = reference_generation(out)
    assert (gen.token_count, gen.stopped, gen.finish_reason) == (3, False, "length")
    assert (
        rank1.complete_or_none(
            gen.last_top, true_id=TRUE, false_id=FALSE, stopped=False, require_stop=False
        )
        is None
    )


@pytest.mark.parametrize("stop_reason", [None, 0], ids=["eos", "stop-token-id"])
def test_eos_is_not_a_stop_string(stop_reason: int | None) -> None:
    out = completion(
        "done", [OTHER, 0], [position(other=-0.1), position(other=-0.5)], "stop", stop_reason
    )
    gen = reference_generation(out)
    assert (gen.stopped, gen.finish_reason) == (False, ve.FINISH_EOS)


def test_missing_and_empty_outputs() -> None:
    no_logprobs = reference_generation(completion("abc", [OTHER], None, "length"))
    assert no_logprobs.last_top is None and no_logprobs.token_count == 1
    empty = reference_generation(completion("", [], [], "length"))
    assert (empty.text, empty.token_count, empty.last_top) == ("", 0, None)
    assert ve.last_position_logprobs(FlatLogprobs()) is None
    nothing = RequestOutput("0", None, [1], None, [])
    assert reference_generation(nothing).finish_reason == ve.FINISH_ENGINE_ERROR
    assert ve.answer_from_output(nothing, TRUE, FALSE) is None
    aborted = completion("", [], [], "abort")
    assert reference_generation(aborted).finish_reason == ve.FINISH_ENGINE_ERROR


def test_forced_processed_logprobs_hold_both_answers() -> None:
    # Processed logprobs: a log-softmax over the two allowed ids; every other id is -inf.
    lt, lf = math.log(0.8), math.log(0.2)
    pos = {TRUE: Logprob(lt, 1), FALSE: Logprob(lf, 2), OTHER: Logprob(-math.inf, 3)}
    out = completion(" true", [TRUE], [pos], "length")
    assert ve.answer_from_output(out, TRUE, FALSE) == {TRUE: lt, FALSE: lf}
    score, _ = rank1.score_from_logprobs(lt, lf)
    assert score == pytest.approx(0.8)


def test_forced_raw_logprobs_give_the_same_score_or_none() -> None:
    # Raw (pre-mask) logprobs over the whole vocabulary: same lt - lf, so the same score...
    raw = completion(" true", [TRUE], [position(other=-0.2, true=-2.0, false=-3.386)], "length")
    top = ve.answer_from_output(raw, TRUE, FALSE)
    assert top is not None
    assert rank1.score_from_logprobs(top[TRUE], top[FALSE])[0] == pytest.approx(0.8, abs=1e-3)
    # ... but the second answer may be outside the top 20: then there is no answer.
    one = completion(" true", [TRUE], [position(other=-0.2, true=-2.0)], "length")
    assert ve.answer_from_output(one, TRUE, FALSE) is None


# -- the shared protocol over the adapters ---------------------------------------------------


class WordTokenizer:
    """Words (with their leading space) and special tokens as ids; exact round trip."""

    SPECIAL = ("<|endoftext|>", "<think>", "</think>")
    PATTERN = re.compile(r"<\|endoftext\|>|</?think>|\s?[^\s<]+|\s")

    def __init__(self) -> None:
        self.lock = threading.Lock()  # encode adds words, from the engine's worker threads
        self.vocab: dict[str, int] = {}
        for text in (*self.SPECIAL, " other", "\n", " x", " y", " z", " true", " false"):
            self.vocab.setdefault(text, len(self.vocab))
        self.inverse = {i: t for t, i in self.vocab.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
        with self.lock:
            for piece in self.PATTERN.findall(text):
                if piece not in self.vocab:
                    self.vocab[piece] = len(self.vocab)
                    self.inverse[self.vocab[piece]] = piece
                ids.append(self.vocab[piece])
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self.inverse[i] for i in ids)


def test_word_tokenizer_ids_match_the_constants() -> None:
    tok = WordTokenizer()
    assert (tok.encode(" true"), tok.encode(" false"), tok.encode("</think>")) == (
        [TRUE],
        [FALSE],
        [CLOSE],
    )


class FakeAsyncLLM:
    """vLLM 0.32's ``AsyncLLM.generate`` as the engine uses it: one request, sampling
    parameters as keyword arguments, the final ``RequestOutput`` at the end. Requests are
    validated as they are added (a bad one raises a ``VLLMValidationError``, not a
    ``ValueError``). A prompt with " GOOD" in it answers true; "ramble" never closes."""

    def __init__(self, tokenizer: WordTokenizer, max_model_len: int, poison: str = "POISON"):
        self.tok, self.max_model_len, self.poison = tokenizer, max_model_len, poison
        self.requests: list[dict[str, Any]] = []
        self.dead = False

    async def generate(self, prompt: dict[str, list[int]], params: Any, request_id: str):  # type: ignore[no-untyped-def]
        ids = prompt["prompt_token_ids"]
        self.requests.append(params)
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue.")
        if len(ids) >= self.max_model_len:
            raise VLLMValidationError("The decoder prompt is longer than the maximum")
        if self.poison in self.tok.decode(ids):
            raise VLLMValidationError("Token id out of vocabulary")
        await asyncio.sleep(0)
        yield self._respond(ids, params)

    def _respond(self, ids: list[int], sp: Any) -> RequestOutput:
        text = self.tok.decode(ids)
        good = " GOOD" in text
        if sp.get("allowed_token_ids"):  # the forced pass
            assert sp["allowed_token_ids"] == [TRUE, FALSE] and sp["logprobs"] == 20
            lt, lf = (math.log(0.7), math.log(0.3)) if good else (math.log(0.4), math.log(0.6))
            return completion(
                " true", [TRUE], [{TRUE: Logprob(lt, 1), FALSE: Logprob(lf, 2)}], "length"
            )
        if "ramble" in text:  # never closes its reasoning
            return scripted_response([" other"] * 100, ids, text, sp, self.tok)
        answer = " true" if good else " false"
        return scripted_response([" x.", "\n", "</think>", answer], ids, text, sp, self.tok)


def top_at(token: str, k: int) -> dict[int, Logprob]:
    """A scripted model's top logprobs at generated position ``k`` for its greedy ``token``:
    at an answer both answers are there; at every third other position too, far down."""
    if token == " true":
        return position(true=-0.1, false=-2.5, other=-6.0)
    if token == " false":
        return position(true=-3.0, false=-0.05, other=-6.0)
    top = {CLOSE: Logprob(-0.2, 1)} if token == "</think>" else {OTHER: Logprob(-0.2, 1)}
    if k % 3 == 2:
        top |= {TRUE: Logprob(-9.0 - k / 10, 5), FALSE: Logprob(-9.5, 6)}
    return top


def scripted_response(
    script: list[str], ids: list[int], text: str, sp: Any, tok: WordTokenizer
) -> RequestOutput:
    """vLLM's semantics over a greedy model that emits ``script`` after ``<think>`` (then
    `` z`` forever): EOS ends a request (its text left out), a stop string ends it (cut
    from the text, its token kept) even on the last budgeted token, ``max_tokens`` caps it;
    ``logprobs`` gives every generated position's top logprobs."""
    done = text.split("<think>", 1)[1] if "<think>" in text else ""
    # Where in the script the prompt ends: the script's text already in it.
    k, acc = 0, ""
    while acc != done:
        acc += script[k] if k < len(script) else " z"
        k += 1
        assert len(acc) <= len(done), (acc, done)
    tokens: list[int] = []
    tops: list[dict[int, Logprob]] = []
    finish, stop_reason = "length", None
    while len(tokens) < sp["max_tokens"]:
        piece = script[k] if k < len(script) else " z"
        tokens.append(tok.encode(piece)[0])
        tops.append(top_at(piece, k))
        k += 1
        if piece == "<|endoftext|>":
            finish = "stop"
            break
        out_text = tok.decode(tokens)
        hit = [s for s in sp.get("stop") or [] if s in out_text]
        if hit:
            finish, stop_reason = "stop", hit[0]
            break
    out_text = tok.decode(tokens[:-1] if finish == "stop" and stop_reason is None else tokens)
    if stop_reason is not None:
        out_text = out_text[: out_text.find(stop_reason)]
    positions = tops if sp.get("logprobs") else None
    return completion(out_text, tokens, positions, finish, stop_reason, flat=True)


# -- pass 1 with logprobs only where read == the reference's pass 1 ---------------------------

SCRIPTS = {
    "complete": [" The", " x.", "\n", "</think>", " true"],
    "false": [" The", " y.", "</think>", " false"],
    "close-then-more": [" a.", "</think>", " other", " b.", "</think>", " true"],
    "close-then-eos": [" a.", "</think>", "<|endoftext|>"],
    "eos": [" a", " b.", "<|endoftext|>"],
    "ramble": [" other"] * 12,
    "double-close": ["</think>", "</think>", " false"],
    # Several segments: </think> followed by a non-answer, reasoning on, three times.
    "segments": [" w", " v.", "</think>", " other"] * 3 + ["</think>", " true"],
    # The answer spelled in two tokens, the second starting the next segment.
    "split-answer": [" a.", "</think>", " t", "rue", " z."],
}


async def reference_pass1(script: list[str], budget: int) -> Generation:
    """The reference: one request with its stop strings and top-20 logprobs for every token."""
    tok = WordTokenizer()
    prompt = tok.encode(rank1.prompt_from_parts("q", "p"))
    sp = ve.forced_sampling(TRUE, FALSE) | {"max_tokens": budget, "stop": list(rank1.STOP_STRINGS)}
    sp.pop("allowed_token_ids")
    return reference_generation(scripted_response(script, prompt, tok.decode(prompt), sp, tok))


async def streamed_pass1(script: list[str], budget: int) -> tuple[Generation, list[Any]]:
    tok = WordTokenizer()
    prompt = tok.encode(rank1.prompt_from_parts("q", "p"))
    seen: list[Any] = []

    async def submit(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        seen.append(sp)
        return scripted_response(script, ids, tok.decode(ids), sp, tok)

    gen = await vp.stream_pass1(submit, prompt, budget, tok.decode)
    return gen, seen


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_stream_pass1_equals_the_reference_at_every_budget(name: str) -> None:
    script = SCRIPTS[name]
    for budget in range(1, len(script) + 3):
        ours, requests = asyncio.run(streamed_pass1(script, budget))
        theirs = asyncio.run(reference_pass1(script, budget))
        assert ours == theirs, (name, budget)
        for opts in (False, True):  # the verdict the shared protocol draws is the same too
            assert rank1.complete_or_none(
                ours.last_top, true_id=TRUE, false_id=FALSE, stopped=ours.stopped, require_stop=opts
            ) == rank1.complete_or_none(
                theirs.last_top,
                true_id=TRUE,
                false_id=FALSE,
                stopped=theirs.stopped,
                require_stop=opts,
            )
        # Reasoning asks no logprobs; only one-token steps do.
        for sp in requests:
            assert sp.get("logprobs") is None or sp["max_tokens"] == 1
        # One per </think> (the answer step), one more for the last position.
        assert sum(1 for sp in requests if sp.get("logprobs")) <= script.count("</think>") + 1


def test_stream_pass1_finds_the_stop_in_a_long_segment_with_few_decodes() -> None:
    """A stop string completing deep in one long segment is found by bisection over the
    segment's token prefixes (a linear scan decoded every prefix: quadratic)."""
    script = ["w"] * 3000 + ["</think>", " true"]
    tok = WordTokenizer()
    prompt = tok.encode(rank1.prompt_from_parts("q", "p"))
    decodes = 0

    def counting_decode(ids: Any) -> str:
        nonlocal decodes
        decodes += 1
        return tok.decode(ids)

    async def submit(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        # One request returns every remaining token (no stop strings honoured): the protocol
        # must find where the reference's stop string completed.
        sp = {**sp, "stop": []}
        return scripted_response(script, ids, tok.decode(ids), sp, tok)

    ours = asyncio.run(vp.stream_pass1(submit, prompt, 5000, counting_decode))
    theirs = asyncio.run(reference_pass1(script, 5000))
    assert ours == theirs
    assert decodes <= 20


async def single_pass1(script: list[str], budget: int) -> tuple[Generation, list[Any]]:
    """``request_mode: single`` over the scripted model: the engine's own driver."""
    tok = WordTokenizer()
    prompt = tok.encode(rank1.prompt_from_parts("q", "p"))
    seen: list[Any] = []

    async def submit(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        seen.append(sp)
        return scripted_response(script, ids, tok.decode(ids), sp, tok)

    return await vp.single_pass1(submit, prompt, budget), seen


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_single_pass1_equals_the_reference_and_the_stepped_driver(name: str) -> None:
    script = SCRIPTS[name]
    for budget in range(1, len(script) + 3):
        single, requests = asyncio.run(single_pass1(script, budget))
        assert single == asyncio.run(reference_pass1(script, budget)), (name, budget)
        assert single == asyncio.run(streamed_pass1(script, budget))[0], (name, budget)
        [sp] = requests  # one request, the reference's
        assert sp == {
            "temperature": 0.0,
            "max_tokens": budget,
            "stop": ["</think> true", "</think> false"],
            "logprobs": 20,
            "skip_special_tokens": False,
            "flat_logprobs": True,
        }


def test_single_pass1_refused_or_empty_is_a_failed_generation() -> None:
    async def refuse(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        raise vp.RequestRefused("no")

    async def empty(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        return completion("", [], [], "length", flat=True)

    for submit in (refuse, empty):
        gen = asyncio.run(vp.single_pass1(submit, [1, 2], 8))
        assert (gen.error, gen.finish_reason) == (rank1.ENGINE_ERROR, ve.FINISH_ENGINE_ERROR)


def test_stream_pass1_decodes_only_the_new_tokens_of_each_segment() -> None:
    """Many segments (``</think>`` followed by a non-answer, reasoning on): the tokens
    decoded add up to about the generation's length, not its length per segment (the whole
    generation was decoded after every segment: quadratic)."""
    script = ([" w"] * 40 + ["</think>", " other"]) * 20 + ["</think>", " true"]
    tok = WordTokenizer()
    prompt = tok.encode(rank1.prompt_from_parts("q", "p"))
    decoded = 0

    def counting_decode(ids: Any) -> str:
        nonlocal decoded
        decoded += len(ids)
        return tok.decode(ids)

    async def submit(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        return scripted_response(script, ids, tok.decode(ids), sp, tok)

    ours = asyncio.run(vp.stream_pass1(submit, prompt, 5000, counting_decode))
    assert ours == asyncio.run(reference_pass1(script, 5000))
    assert ours.token_count == len(script) and ours.stopped
    assert decoded <= 2 * len(script) + 20 * 4 * vd.DECODE_OVERLAP


def toy_tokenizer() -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(ROOT / "rank1_batch/toy/model_files/tokenizer.json"))


def test_incremental_text_equals_whole_decoding_on_the_toy_tokenizer() -> None:
    """IncrementalText gives ``decode(tokens[:n])`` exactly, special tokens kept, for
    generations with characters whose bytes span tokens, marked at random points."""
    tok = toy_tokenizer()

    def decode(ids: Sequence[int]) -> str:
        return str(tok.decode(list(ids), skip_special_tokens=False))

    rng = random.Random(7)
    words = [
        "The",
        " passage",
        " é",
        "中文",
        " 🙂",
        "ü",
        "</think>",
        " true",
        "<think>",
        "\n",
        ".",
        "ß",
        " 👩‍🔬",
    ]
    vocab = tok.get_vocab_size()
    for trial in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        ids = tok.encode(text, add_special_tokens=False).ids
        if trial % 3 == 0:  # arbitrary ids too: byte tokens that split characters anywhere
            ids = [rng.randrange(vocab) if rng.random() < 0.3 else i for i in ids]
        inc = IncrementalText(decode)
        inc.tokens.extend(ids)
        for _ in range(6):
            n = rng.randint(0, len(ids))
            assert inc.upto(n) == decode(ids[:n]), (ids, n)
            if rng.random() < 0.5:
                inc.mark(n)


def test_stream_pass1_reads_the_answer_position_of_a_complete_pair() -> None:
    gen, requests = asyncio.run(streamed_pass1(SCRIPTS["complete"], 64))
    assert gen == Generation(
        " The x.\n", 5, {TRUE: -0.1, FALSE: -2.5, OTHER: -6.0}, stopped=True, finish_reason="stop"
    )
    assert [sp["max_tokens"] for sp in requests] == [64, 1]
    assert requests[0]["stop"] == ["</think>"] and "logprobs" not in requests[0]


def test_stream_pass1_refused_request_is_a_failed_generation() -> None:
    async def refuse(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        raise vp.RequestRefused("no")

    gen = asyncio.run(vp.stream_pass1(refuse, [1, 2], 8, str))
    assert (gen.error, gen.finish_reason) == (rank1.ENGINE_ERROR, ve.FINISH_ENGINE_ERROR)
    aborted = completion("", [], [], "abort")

    async def abort(ids: list[int], sp: dict[str, Any]) -> RequestOutput:
        return aborted

    assert asyncio.run(vp.stream_pass1(abort, [1], 8, str)).error == rank1.ENGINE_ERROR


# -- the engine over a fake AsyncLLM ---------------------------------------------------------


def fake_engine(max_model_len: int = 200, **opts: Any) -> ve.VLLMEngine:
    """A VLLMEngine whose ``AsyncLLM`` is :class:`FakeAsyncLLM` (no vllm needed)."""
    engine = ve.VLLMEngine.__new__(ve.VLLMEngine)
    engine.tokenizer = WordTokenizer()
    engine.llm = FakeAsyncLLM(engine.tokenizer, max_model_len)
    engine._sampling_params = dict
    engine._final_only = "final"
    engine._ids = itertools.count()
    engine.exit_on_fatal = True
    engine.max_in_flight = 4
    engine.prompt_tokens_submitted = engine.prompt_tokens_cached = 0
    engine.requests_submitted = 0
    options = EngineOptions(max_model_len=max_model_len, max_tokens=16, min_reserve=8, **opts)
    Rank1Engine.__init__(engine, options, model_id="fake", model_revision="r1")
    return engine


def test_engine_statuses_through_the_shared_protocol() -> None:
    engine = fake_engine()
    requests = [
        JudgeRequest("GOOD one", "a passage"),
        JudgeRequest("other", "a passage"),
        JudgeRequest("GOOD ramble", "a passage"),
    ]
    good, bad, ramble = engine.judge(requests)
    assert (good.status, bad.status, ramble.status) == (rank1.COMPLETE,) * 2 + (rank1.FORCED,)
    assert good.score > 0.5 > bad.score and good.reasoning == " x.\n"
    assert ramble.score == pytest.approx(0.7) and ramble.reasoning_tokens == 16
    assert (ramble.finish_reason, good.finish_reason) == ("length", "stop")
    # Every request asked for its final output only; no reasoning request asked logprobs.
    assert all(sp["output_kind"] == "final" for sp in engine.llm.requests)
    assert not [sp for sp in engine.llm.requests if sp.get("logprobs") and sp["max_tokens"] > 1]
    engine.close()


def test_single_request_mode_gives_the_stepped_judgements_in_fewer_requests() -> None:
    requests = [
        JudgeRequest("GOOD one", "a passage"),
        JudgeRequest("other", "a passage"),
        JudgeRequest("GOOD ramble", "a passage"),
    ]
    stepped, single = fake_engine(), fake_engine(request_mode="single")
    assert single.judge(requests) == stepped.judge(requests)
    # Stepped: pass 1 + answer step per answered pair, pass 1 + last-position step + forced
    # pass for the rambler; single: one request per answered pair, two for the rambler.
    assert (stepped.requests_submitted, single.requests_submitted) == (7, 4)
    assert len(single.llm.requests) == 4
    stepped.close()
    single.close()


def test_an_unknown_request_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="request_mode"):
        ve.VLLMEngine("/nonexistent", EngineOptions(request_mode="double"))
    with pytest.raises(JobError, match=r"model\.request_mode"):
        spec_from_mapping(with_model(request_mode="double"))
    spec = spec_from_mapping(with_model(engine="vllm", request_mode="single"))
    from rank1_batch.engines import factory

    assert factory.engine_options(spec).request_mode == "single"
    assert spec.result_settings() == spec_from_mapping(with_model(engine="vllm")).result_settings()


@pytest.mark.parametrize("path", ["async", "sync"])
def test_host_work_runs_off_the_engine_loop(path: str) -> None:
    """Fitting, the forced prompt and every decode run in worker threads, never on the loop
    that feeds the engine: through the async path (a caller's loop) and the synchronous
    adapters (the engine's own loop, in the calling thread)."""
    requests = [JudgeRequest("GOOD one", "a passage " * 30), JudgeRequest("GOOD ramble", "p")]
    engine = fake_engine()
    calls: list[tuple[str, bool]] = []
    loop_thread: list[int] = []

    class Spy:  # the engine's tokenizer (the fake AsyncLLM keeps the plain one)
        def __init__(self, inner: WordTokenizer) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            def spy(*args: Any, **kw: Any) -> Any:
                calls.append((name, threading.get_ident() in loop_thread))
                return getattr(self.inner, name)(*args, **kw)

            return spy

    engine.tokenizer = Spy(engine.tokenizer)

    async def judge_all() -> list[rank1.Judgement]:
        loop_thread.append(threading.get_ident())
        return list(await asyncio.gather(*(engine.judge_one(r) for r in requests)))

    if path == "async":
        complete, forced = asyncio.run(judge_all())
    else:
        loop_thread.append(threading.get_ident())
        complete, forced = engine.judge(requests)
    assert (complete.status, forced.status) == (rank1.COMPLETE, rank1.FORCED)
    assert {name for name, _ in calls} == {"encode", "decode"}
    assert not [c for c in calls if c[1]], "host work ran on the engine's loop"
    engine.close()


def test_forced_answer_missing_an_id_falls_back() -> None:
    engine = fake_engine()
    respond = engine.llm._respond

    def one_id_only(ids: list[int], sp: Any) -> RequestOutput:
        out = respond(ids, sp)
        if sp.get("allowed_token_ids"):  # raw logprobs where " false" fell out of the top 20
            out.outputs[0].logprobs = [position(other=-0.01, true=-4.0)]
        return out

    engine.llm._respond = one_id_only  # type: ignore[method-assign]
    [j] = engine.judge([JudgeRequest("GOOD ramble", "p")])
    assert (j.status, j.score, j.logit) == (rank1.FALLBACK, 0.5, 0.0)
    engine.close()


def test_a_refused_prompt_is_an_error_row_and_the_rest_are_scored() -> None:
    engine = fake_engine()
    requests = [JudgeRequest(f"GOOD q{i}", "p") for i in range(7)]
    requests[4] = JudgeRequest("GOOD POISON", "p")
    results = engine.judge(requests)
    assert [j.status for j in results] == [rank1.COMPLETE] * 4 + [rank1.ERROR] + [
        rank1.COMPLETE
    ] * 2
    assert results[4].error == rank1.ENGINE_ERROR and math.isnan(results[4].score)
    assert results[4].prompt_tokens > 0
    # Every prompt refused: each is its own error row (the shard still commits).
    both = engine.judge([JudgeRequest("POISON a", "p"), JudgeRequest("POISON b", "p")])
    assert [j.error for j in both] == [rank1.ENGINE_ERROR] * 2
    engine.close()


def test_dead_engine_exits_the_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exited(Exception):
        pass

    def fake_exit(exc: BaseException, engine: object = None) -> None:
        raise Exited(type(exc).__name__)

    monkeypatch.setattr(ve, "exit_for_restart", fake_exit)
    engine = fake_engine()
    engine.llm.dead = True
    with pytest.raises(Exited, match="EngineDeadError"):
        engine.judge([JudgeRequest("GOOD", "p")])
    engine.exit_on_fatal = False  # outside Ray (benchmarks): the error propagates
    with pytest.raises(EngineDeadError):
        engine.judge([JudgeRequest("GOOD", "p")])
    engine.close()


def test_zero_budget_is_not_submitted() -> None:
    engine = fake_engine()
    gens = engine.generate([[1, 2], [3]], [0, 4])
    assert gens[0] == Generation("", 0, None, stopped=False, finish_reason="length")
    assert len(engine.llm.requests) >= 1 and all(
        sp["max_tokens"] >= 1 for sp in engine.llm.requests
    )
    engine.close()


def test_error_classification() -> None:
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError
        pass

    assert ve.is_fatal_engine_error(EngineDeadError("x"))
    assert ve.is_fatal_engine_error(OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert ve.is_fatal_engine_error(RuntimeError("CUDA out of memory."))
    assert not ve.is_fatal_engine_error(ValueError("x"))
    assert ve.is_request_error(VLLMValidationError("too long"))
    assert ve.is_request_error(ValueError("x")) and ve.is_request_error(TypeError("x"))
    assert not ve.is_request_error(EngineDeadError("x"))
    assert not ve.is_request_error(RuntimeError("x"))


def test_refused_prompt_is_marked_as_an_engine_error() -> None:
    for failed in (RequestOutput("0", None, [1], None, []), completion("", [], [], "abort")):
        gen = reference_generation(failed)
        assert (gen.finish_reason, gen.error) == (ve.FINISH_ENGINE_ERROR, rank1.ENGINE_ERROR)
    fine = reference_generation(completion("ok.", [OTHER], None, "length"))
    assert fine.error is None


# -- configuration ---------------------------------------------------------------------------


def test_sampling_params_follow_the_reference() -> None:
    p1 = ve.pass1_sampling(300)  # reasoning: no logprobs, stop where the answer comes next
    assert p1 == {
        "temperature": 0.0,
        "max_tokens": 300,
        "stop": ["</think>"],
        "skip_special_tokens": False,
    }
    step = ve.step_sampling()  # the answer position: one token, the top 20
    assert step["max_tokens"] == 1 and step["logprobs"] == 20 and "stop" not in step
    forced = ve.forced_sampling(TRUE, FALSE)
    assert forced["allowed_token_ids"] == [TRUE, FALSE] and forced["max_tokens"] == 1
    assert forced["logprobs"] >= 2 and forced["temperature"] == 0.0


def test_engine_kwargs() -> None:
    kw = ve.engine_kwargs(
        "jhu-clsp/rank1-7b", max_model_len=16000, engine_args={"max_num_seqs": 512}
    )
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["enable_prefix_caching"] is True
    assert kw["dtype"] == "float16" and kw["max_num_seqs"] == 512 and "load_format" not in kw
    assert kw["max_model_len"] == 16000 and kw["tensor_parallel_size"] == 1
    s3 = ve.engine_kwargs("s3://bucket/rank1-7b", max_model_len=100, dtype="bfloat16")
    assert s3["load_format"] == "runai_streamer" and s3["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="logprobs_mode"):
        ve.engine_kwargs("m", max_model_len=100, engine_args={"logprobs_mode": "raw_logprobs"})


MINIMAL = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "model": {"name": "m"}}


def with_model(**model: Any) -> dict[str, Any]:
    return {**MINIMAL, "model": {"name": "m", **model}}


def test_model_options_validate_and_fingerprint() -> None:
    with pytest.raises(JobError, match=r"model\.quantization: .*awq.*float16"):
        spec_from_mapping(with_model(quantization="awq", dtype="bfloat16"))
    assert spec_from_mapping(with_model(quantization="awq", dtype="float16")).model.quantization
    with pytest.raises(JobError, match=r"model\.engine_args: .*'dtype'.*model\.dtype"):
        spec_from_mapping(with_model(engine_args={"dtype": "float16"}))
    with pytest.raises(JobError, match=r"model\.gpu_memory_utilization"):
        spec_from_mapping(with_model(gpu_memory_utilization=1.5))
    with pytest.raises(JobError, match=r"model\.tensor_parallel_size"):
        spec_from_mapping(with_model(tensor_parallel_size=2, engine="transformers"))
    with pytest.raises(JobError, match=r"compute: .*gpus_per_worker"):
        spec_from_mapping({**with_model(tensor_parallel_size=4), "compute": {"gpus_per_worker": 2}})
    base = spec_from_mapping(with_model(engine="vllm"))
    tuned = spec_from_mapping(
        with_model(
            engine="vllm",
            tensor_parallel_size=2,
            gpu_memory_utilization=0.8,
            enforce_eager=True,
            engine_args={"max_num_seqs": 64},
        )
    )
    assert base.result_settings() == tuned.result_settings()
    for change in ({"quantization": "awq"}, {"max_model_len": 8000}, {"revision": "abc"}):
        assert spec_from_mapping(with_model(engine="vllm", **change)).result_settings() != (
            base.result_settings()
        )


def test_runner_resolves_engine_and_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from rank1_batch.engines import factory
    from rank1_batch.pipeline import pool as ray_pool

    auto = spec_from_mapping(MINIMAL)
    from rank1_batch.job.resolve import Platform

    def platform(gpu: bool, vllm: bool) -> None:
        monkeypatch.setattr(factory, "local_platform", lambda spec=None: Platform(gpu, vllm))

    platform(gpu=True, vllm=True)
    assert factory.engine_kind(auto) == "vllm"
    platform(gpu=False, vllm=True)
    assert factory.engine_kind(auto) == "transformers"
    platform(gpu=True, vllm=False)
    assert factory.engine_kind(auto) == "transformers"
    assert resolve.worker_gpus(auto) == 0
    assert resolve.worker_gpus(spec_from_mapping(with_model(engine="vllm"))) == 1
    tp2 = spec_from_mapping(with_model(engine="vllm", tensor_parallel_size=2))
    assert resolve.worker_gpus(tp2) == 2 and ray_pool.worker_cpus(tp2, 64) == 1.0
    ray_tp = with_model(
        engine="vllm", tensor_parallel_size=2, engine_args={"distributed_executor_backend": "ray"}
    )
    assert resolve.worker_gpus(spec_from_mapping(ray_tp)) == 0
    captured: dict[str, Any] = {}

    def fake_make_engine(kind: str, path: str, options: EngineOptions, **kwargs: Any) -> None:
        captured.update(kind=kind, path=path, options=options, **kwargs)

    monkeypatch.setattr("rank1_batch.engines.make_engine", fake_make_engine)
    factory.build_engine(spec_from_mapping(ray_tp), "/models/m")
    assert captured["kind"] == "vllm" and captured["tensor_parallel_size"] == 2
    assert captured["engine_args"] == {"distributed_executor_backend": "ray"}
    assert captured["options"].max_model_len == 16000


def test_make_engine_vllm_without_vllm_says_so() -> None:
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match=r"vLLM engine needs the vllm package"):
        make_engine("vllm", "/nonexistent", EngineOptions())


def test_module_imports_without_vllm_or_torch() -> None:
    code = (
        "import sys, rank1_batch.engines.vllm_engine\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_gpu_smoke_help_works_without_vllm() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_smoke.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--model" in proc.stdout and "prefix" in proc.stdout


def test_vllm_on_cpu_asks_no_gpu_and_too_many_gpus_fail_at_once() -> None:
    from rank1_batch.pipeline import pool as ray_pool

    cpu = spec_from_mapping(with_model(engine="vllm", device="cpu", cpu_kv_cache_gib=2))
    assert resolve.worker_gpus(cpu) == 0 and ray_pool.shards_per_actor(cpu) == 8
    assert ray_pool.check_gpus(0, [], can_scale=False) is None
    assert ray_pool.check_gpus(2, [4.0, 1.0], can_scale=False) is None
    fixed = ray_pool.check_gpus(1, [0.0], can_scale=False)
    assert fixed is not None and "needs 1 GPU(s)" in fixed and "model.device: cpu" in fixed
    assert "\n" not in fixed
    scaling = ray_pool.check_gpus(2, [1.0], can_scale=True)
    assert scaling is not None and scaling.startswith("waiting")
    transformers = spec_from_mapping(with_model(engine="transformers"))
    assert ray_pool.shards_per_actor(transformers) == 1


def test_engine_kwargs_on_cpu() -> None:
    kw = ve.engine_kwargs("/m", max_model_len=512, cpu=True)
    assert kw["dtype"] == "float32" and kw["enforce_eager"] is True
    assert "gpu_memory_utilization" not in kw and kw["distributed_executor_backend"] == "uni"
    assert ve.engine_kwargs("/m", max_model_len=512, cpu=True, dtype="bfloat16")["dtype"] == (
        "bfloat16"
    )
    gpu = ve.engine_kwargs("/m", max_model_len=512)
    assert gpu["dtype"] == "float16" and "distributed_executor_backend" not in gpu


def test_batch_invariant_enters_the_fingerprint() -> None:
    base = spec_from_mapping(with_model(engine="vllm"))
    on = spec_from_mapping(with_model(engine="vllm", batch_invariant=True))
    assert base.result_settings()["model"]["batch_invariant"] is False
    assert on.result_settings()["model"]["batch_invariant"] is True
    assert base.result_settings() != on.result_settings()


def test_inside_ray_vllm_stats_go_to_ray_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside Ray the engine is built with vLLM's Ray stat logger (and no default loggers:
    ``disable_log_stats`` stays on); outside Ray with none, as before."""
    pytest.importorskip("vllm")
    import ray
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.metrics import loggers, ray_wrappers

    seen: dict[str, Any] = {}

    class Built:
        class vllm_config:
            class scheduler_config:
                max_num_seqs, max_num_batched_tokens = 8, 64

    def from_engine_args(engine_args: Any, **kwargs: Any) -> Built:
        seen.update(kwargs, disable_log_stats=engine_args.disable_log_stats)
        return Built()

    monkeypatch.setattr(AsyncLLM, "from_engine_args", from_engine_args)
    kwargs = ve.engine_kwargs(str(ROOT / "rank1_batch/toy/model_files"), max_model_len=64)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    ve.VLLMEngine._start(kwargs)
    assert seen["stat_loggers"] is None and seen["disable_log_stats"] is True
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray_wrappers, "ray_metrics", None)  # no Ray Serve installed
    ve.VLLMEngine._start(kwargs)
    assert seen["stat_loggers"] == [ray_wrappers.RayPrometheusStatLogger]
    assert seen["disable_log_stats"] is True
    assert ray_wrappers.ray_metrics is not None  # the logger can build its Ray metrics
    # What AsyncLLM makes of it (its log_stats is ``not disable_log_stats``): the Ray
    # logger, and neither vLLM's periodic logging one nor a second Prometheus one.
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # no Ray needed for the config
    config = AsyncEngineArgs(**kwargs).create_engine_config(UsageContext.LLM_CLASS)
    manager = loggers.StatLoggerManager(
        config, custom_stat_loggers=seen["stat_loggers"], enable_default_loggers=False
    )
    assert [type(x) for x in manager.stat_loggers] == [ray_wrappers.RayPrometheusStatLogger]
