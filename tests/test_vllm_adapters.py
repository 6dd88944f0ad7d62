"""The vLLM engine's pure parts, on objects shaped exactly like vLLM's (no vllm needed).

``RequestOutput``/``CompletionOutput``/``Logprob``/``FlatLogprobs`` below mirror the fields of
``vllm/outputs.py`` and ``vllm/logprobs.py`` (0.32/0.33). The engine's submission path runs
against ``FakeLLM``, which validates requests as they are added and raises a
``VLLMValidationError`` that, like vLLM's, is not a ``ValueError``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rank1_batch import rank1
from rank1_batch.engines import EngineOptions, Generation, JudgeRequest, Rank1Engine, make_engine
from rank1_batch.engines import vllm_engine as ve
from rank1_batch.spec import JobError, spec_from_mapping

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
    gen = ve.generation_from_output(out)
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
    gen = ve.generation_from_output(out)
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
    gen = ve.generation_from_output(out)
    assert (gen.stopped, gen.finish_reason) == (False, ve.FINISH_EOS)


def test_missing_and_empty_outputs() -> None:
    no_logprobs = ve.generation_from_output(completion("abc", [OTHER], None, "length"))
    assert no_logprobs.last_top is None and no_logprobs.token_count == 1
    empty = ve.generation_from_output(completion("", [], [], "length"))
    assert (empty.text, empty.token_count, empty.last_top) == ("", 0, None)
    assert ve.last_position_logprobs(FlatLogprobs()) is None
    nothing = RequestOutput("0", None, [1], None, [])
    assert ve.generation_from_output(nothing).finish_reason == ve.FINISH_ENGINE_ERROR
    assert ve.answer_from_output(nothing, TRUE, FALSE) is None
    aborted = completion("", [], [], "abort")
    assert ve.generation_from_output(aborted).finish_reason == ve.FINISH_ENGINE_ERROR


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
        self.vocab: dict[str, int] = {}
        for text in (*self.SPECIAL, " other", "\n", " x", " y", " z", " true", " false"):
            self.vocab.setdefault(text, len(self.vocab))
        self.inverse = {i: t for t, i in self.vocab.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
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


class SamplingParams:
    """Stands in for ``vllm.SamplingParams`` (keyword arguments kept as attributes)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class FakeLLM:
    """``LLM.generate`` as vLLM 0.32 behaves: requests are validated as they are added (a bad
    one raises before any generation); a prompt with " GOOD" in it answers true."""

    def __init__(self, tokenizer: WordTokenizer, max_model_len: int, poison: str = "POISON"):
        self.tok, self.max_model_len, self.poison = tokenizer, max_model_len, poison
        self.calls: list[int] = []
        self.dead = False

    def generate(self, prompts, params, use_tqdm=False):
        assert use_tqdm is False and len(prompts) == len(params)
        self.calls.append(len(prompts))
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue.")
        for p in prompts:
            ids = p["prompt_token_ids"]
            if len(ids) >= self.max_model_len:
                raise VLLMValidationError("The decoder prompt is longer than the maximum")
            if self.poison in self.tok.decode(ids):
                raise VLLMValidationError("Token id out of vocabulary")
        return [
            self._respond(p["prompt_token_ids"], sp) for p, sp in zip(prompts, params, strict=True)
        ]

    def _respond(self, ids: list[int], sp: SamplingParams) -> RequestOutput:
        text = self.tok.decode(ids)
        good = " GOOD" in text
        if sp.max_tokens == 1:  # the forced pass
            assert sp.allowed_token_ids == [TRUE, FALSE] and sp.logprobs == 20
            lt, lf = (math.log(0.7), math.log(0.3)) if good else (math.log(0.4), math.log(0.6))
            return completion(
                " true", [TRUE], [{TRUE: Logprob(lt, 1), FALSE: Logprob(lf, 2)}], "length"
            )
        assert sp.stop == list(rank1.STOP_STRINGS) and sp.skip_special_tokens is False
        if "ramble" in text:  # never closes its reasoning: capped by its budget
            n = sp.max_tokens
            return completion(
                " other" * n, [OTHER] * n, [position(other=-0.1)] * n, "length", flat=True
            )
        answer = "true" if good else "false"
        last = position(true=-0.1, false=-2.5) if good else position(true=-3.0, false=-0.05)
        return completion(
            " x.\n",
            [OTHER, 5, CLOSE, TRUE if good else FALSE],
            [position(other=-0.1)] * 3 + [last],
            "stop",
            f"</think> {answer}",
            flat=True,
        )


def fake_engine(max_model_len: int = 200, **opts: Any) -> ve.VLLMEngine:
    """A VLLMEngine whose ``vllm.LLM`` is :class:`FakeLLM` (vllm itself is not installed)."""
    engine = ve.VLLMEngine.__new__(ve.VLLMEngine)
    engine.tokenizer = WordTokenizer()
    engine.llm = FakeLLM(engine.tokenizer, max_model_len)
    engine._sampling_params = SamplingParams
    engine.exit_on_fatal = True
    engine.prompt_tokens_submitted = engine.prompt_tokens_cached = 0
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
    assert engine.llm.calls == [3, 1]  # one call per pass: the whole batch in flight


def test_forced_answer_missing_an_id_falls_back() -> None:
    engine = fake_engine()
    respond = engine.llm._respond

    def one_id_only(ids: list[int], sp: SamplingParams) -> RequestOutput:
        out = respond(ids, sp)
        if sp.max_tokens == 1:  # raw logprobs where " false" fell out of the top 20
            out.outputs[0].logprobs = [position(other=-0.01, true=-4.0)]
        return out

    engine.llm._respond = one_id_only  # type: ignore[method-assign]
    [j] = engine.judge([JudgeRequest("GOOD ramble", "p")])
    assert (j.status, j.score, j.logit) == (rank1.FALLBACK, 0.5, 0.0)


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
    assert len(engine.llm.calls) <= 2 * math.ceil(math.log2(7)) + 3


def test_every_prompt_refused_fails_the_shard() -> None:
    engine = fake_engine()
    with pytest.raises(RuntimeError, match="refused all 2 prompts"):
        engine.judge([JudgeRequest("POISON a", "p"), JudgeRequest("POISON b", "p")])


def test_dead_engine_exits_the_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exited(Exception):
        pass

    def fake_exit(exc: BaseException) -> None:
        raise Exited(type(exc).__name__)

    monkeypatch.setattr(ve, "exit_for_restart", fake_exit)
    engine = fake_engine()
    engine.llm.dead = True
    with pytest.raises(Exited, match="EngineDeadError"):
        engine.judge([JudgeRequest("GOOD", "p")])
    engine.exit_on_fatal = False  # outside Ray (benchmarks): the error propagates
    with pytest.raises(EngineDeadError):
        engine.judge([JudgeRequest("GOOD", "p")])


def test_zero_budget_is_not_submitted() -> None:
    engine = fake_engine()
    gens = engine.generate([[1, 2], [3]], [0, 4])
    assert gens[0] == Generation("", 0, None, stopped=False, finish_reason="length")
    assert engine.llm.calls == [1]


# -- bisect and error classification ---------------------------------------------------------


def test_run_isolating_failures_bisects_to_the_bad_items() -> None:
    calls: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        if any(x % 5 == 3 for x in batch):
            raise ValueError(f"bad item in {batch}")
        return [x * 10 for x in batch]

    out = ve.run_isolating_failures(list(range(10)), run, ve.is_request_error)
    assert [o for o in out if not isinstance(o, ve.ItemFailure)] == [
        x * 10 for x in range(10) if x % 5 != 3
    ]
    assert [i for i, o in enumerate(out) if isinstance(o, ve.ItemFailure)] == [3, 8]
    assert isinstance(out[3], ve.ItemFailure) and "ValueError: bad item in [3]" in out[3].message
    assert ve.run_isolating_failures([], run, ve.is_request_error) == []
    with pytest.raises(KeyError):  # not an item error: propagates untouched
        ve.run_isolating_failures([1], lambda b: {}[b[0]], ve.is_request_error)
    with pytest.raises(RuntimeError, match="2 outputs for 3"):
        ve.run_isolating_failures([1, 2, 3], lambda b: b[:2], ve.is_request_error)


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
        gen = ve.generation_from_output(failed)
        assert (gen.finish_reason, gen.error) == (ve.FINISH_ENGINE_ERROR, rank1.ENGINE_ERROR)
    fine = ve.generation_from_output(completion("ok.", [OTHER], None, "length"))
    assert fine.error is None


# -- configuration ---------------------------------------------------------------------------


def test_sampling_params_follow_the_reference() -> None:
    p1 = ve.pass1_sampling(300)
    assert p1 == {
        "temperature": 0.0,
        "max_tokens": 300,
        "logprobs": 20,
        "stop": ["</think> true", "</think> false"],
        "skip_special_tokens": False,
        "flat_logprobs": True,
    }
    forced = ve.forced_sampling(TRUE, FALSE)
    assert forced["allowed_token_ids"] == [TRUE, FALSE] and forced["max_tokens"] == 1
    assert forced["logprobs"] >= 2 and forced["temperature"] == 0.0


def test_llm_kwargs() -> None:
    kw = ve.llm_kwargs("jhu-clsp/rank1-7b", max_model_len=16000, engine_args={"max_num_seqs": 512})
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["enable_prefix_caching"] is True
    assert kw["dtype"] == "float16" and kw["max_num_seqs"] == 512 and "load_format" not in kw
    assert kw["max_model_len"] == 16000 and kw["tensor_parallel_size"] == 1
    s3 = ve.llm_kwargs("s3://bucket/rank1-7b", max_model_len=100, dtype="bfloat16")
    assert s3["load_format"] == "runai_streamer" and s3["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="logprobs_mode"):
        ve.llm_kwargs("m", max_model_len=100, engine_args={"logprobs_mode": "raw_logprobs"})


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
    from rank1_batch.executor import ray_pool

    auto = spec_from_mapping(MINIMAL)
    assert factory.engine_kind(auto) == ("vllm" if factory.vllm_usable() else "transformers")
    monkeypatch.setattr(factory, "vllm_usable", lambda: True)
    assert factory.engine_kind(auto) == "vllm"
    monkeypatch.setattr(factory, "vllm_usable", lambda: False)
    assert factory.engine_kind(auto) == "transformers"
    assert ray_pool.worker_gpus(auto) == 0
    assert ray_pool.worker_gpus(spec_from_mapping(with_model(engine="vllm"))) == 1
    tp2 = spec_from_mapping(with_model(engine="vllm", tensor_parallel_size=2))
    assert ray_pool.worker_gpus(tp2) == 2 and ray_pool.worker_cpus(tp2, 64) == 1.0
    ray_tp = with_model(
        engine="vllm", tensor_parallel_size=2, engine_args={"distributed_executor_backend": "ray"}
    )
    assert ray_pool.worker_gpus(spec_from_mapping(ray_tp)) == 0
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
