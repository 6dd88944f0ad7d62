"""The transformers engine on real tiny models: no mocks of the parts under test.

Two models: a random-init tiny Qwen2 built here (it never writes a stop string, so the length,
forced and fallback paths are reached deterministically), and the committed toy Rank1 model
(trained to answer in Rank1's format, so the complete path and score direction show).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rank1_batch.core import rank1  # noqa: E402
from rank1_batch.engines import (  # noqa: E402
    EngineOptions,
    Generation,
    JudgeRequest,
    Rank1Engine,
    make_engine,
)
from rank1_batch.engines.transformers_engine import (  # noqa: E402
    TransformersEngine,
    resolve_dtype,
)

ROOT = Path(__file__).resolve().parents[1]
TOY_DIR = ROOT / "rank1_batch" / "toy" / "model_files"
needs_toy = pytest.mark.skipif(
    not (TOY_DIR / "config.json").is_file(),
    reason="toy model not built yet: rank1_batch/toy/model_files/config.json is missing",
)

# Forced answers are certain on the random model only when the stop string is required: its
# last position could hold both answer ids in its top 20 by chance.
RANDOM_OPTS = EngineOptions(
    max_model_len=256, max_tokens=12, min_reserve=32, require_stop=True, batch_size=8
)

SENTENCES = [
    "Determine if the following passage is relevant to the query.",
    "Answer only with 'true' or 'false'. The answer is true. The answer is false.",
    "Query: what is the capital of france Passage: Paris is the capital of France.",
    "The passage talks about baking bread in an oven with flour and butter.",
]


class RecordingEngine(TransformersEngine):
    """Records the prompts fed to each primitive (behaviour unchanged)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.generated: list[list[int]] = []
        self.answered: list[list[int]] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        self.generated.extend(list(p) for p in prompts)
        return super().generate(prompts, budgets)

    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        self.answered.extend(list(p) for p in prompts)
        return super().answer(prompts)


class NoAnswerEngine(TransformersEngine):
    """An engine whose forced pass yields no answer ids (the fallback path)."""

    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        return [None] * len(prompts)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny Qwen2 with a byte-level BPE trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("random-qwen2")
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<think>", "</think>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 5, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model_config = Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
        initializer_range=1.0,  # peaked logits: greedy choices far from ties
    )
    Qwen2ForCausalLM(model_config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def random_engine(random_model: Path) -> RecordingEngine:
    return RecordingEngine(str(random_model), RANDOM_OPTS, num_threads=1, device="cpu")


@pytest.fixture(scope="module")
def toy_engine() -> TransformersEngine:
    if not (TOY_DIR / "config.json").is_file():
        pytest.skip("toy model not built yet: rank1_batch/toy/model_files/config.json is missing")
    opts = EngineOptions(max_model_len=512, max_tokens=64, min_reserve=64, batch_size=8)
    return TransformersEngine(str(TOY_DIR), opts, num_threads=1, device="cpu")


def judge(engine: Rank1Engine, requests: Sequence[JudgeRequest], **opts: object) -> list:
    """Judge with the engine's options changed for this call only."""
    saved = engine.options
    engine.options = dataclasses.replace(saved, **opts)  # type: ignore[arg-type]
    try:
        return engine.judge(requests)
    finally:
        engine.options = saved


def mixed_requests(n: int = 6) -> list[JudgeRequest]:
    rng = random.Random(7)
    words = ["bread", "oven", "flour", "paris", "capital", "france", "query", "passage"]
    return [
        JudgeRequest(
            " ".join(rng.choices(words, k=2)), " ".join(rng.choices(words, k=3 + 9 * i)) + "."
        )
        for i in range(n)
    ]


def assert_same(a: rank1.Judgement, b: rank1.Judgement) -> None:
    assert (a.status, a.reasoning_tokens, a.finish_reason, a.reasoning) == (
        b.status,
        b.reasoning_tokens,
        b.finish_reason,
        b.reasoning,
    )
    assert a.prompt_tokens == b.prompt_tokens and a.truncated == b.truncated
    assert a.score == pytest.approx(b.score, abs=1e-4)
    assert a.logit == pytest.approx(b.logit, abs=1e-3)


# -- the random model: length, forced, fallback, budgets, guards ------------------------------


def test_forced_answer_uses_the_fitted_forced_prompt(random_engine: RecordingEngine) -> None:
    req = JudgeRequest("capital of france", "Paris is the capital of France.")
    random_engine.answered.clear()
    [j] = random_engine.judge([req])
    assert j.status == rank1.FORCED and j.finish_reason == "length"
    assert j.reasoning_tokens == RANDOM_OPTS.max_tokens
    prompt = rank1.prompt_from_parts(req.query, req.passage)
    expected = rank1.fit_forced_prompt(
        prompt,
        j.reasoning,
        encode=random_engine.encode_prompt,
        max_tokens=RANDOM_OPTS.max_model_len - 1,
    )
    assert random_engine.answered == [random_engine.encode_prompt(expected)]
    # The score is the two-way softmax of the next-token logits after the forced prompt,
    # computed here by a plain unpadded forward pass.
    ids = torch.tensor([random_engine.encode_prompt(expected)])
    with torch.inference_mode():
        logits = random_engine.model(input_ids=ids).logits[0, -1].float()
    pair = logits[[random_engine.true_id, random_engine.false_id]]
    assert j.logit == pytest.approx(float(pair[0] - pair[1]), abs=1e-4)
    assert j.score == pytest.approx(float(torch.softmax(pair, -1)[0]), abs=1e-5)


def test_fallback_when_the_forced_pass_yields_no_answer(random_model: Path) -> None:
    engine = NoAnswerEngine(str(random_model), RANDOM_OPTS, num_threads=1, device="cpu")
    [j] = engine.judge([JudgeRequest("bread", "Baking bread in an oven.")])
    assert (j.status, j.score, j.logit) == (rank1.FALLBACK, 0.5, 0.0)
    assert j.reasoning_tokens == RANDOM_OPTS.max_tokens and j.finish_reason == "length"


def test_generate_applies_each_budget_exactly(random_engine: RecordingEngine) -> None:
    prompts = [random_engine.encode_prompt(r.query + "\n" + r.passage) for r in mixed_requests()]
    budgets = [1, 9, 0, 17, 4, 12]
    together = random_engine.generate(prompts, budgets)
    for prompt, budget, gen in zip(prompts, budgets, together, strict=True):
        [alone] = random_engine.generate([prompt], [budget])
        if budget == 0:
            assert gen == alone and (gen.text, gen.token_count, gen.last_top) == ("", 0, None)
            continue
        assert (gen.text, gen.token_count, gen.finish_reason) == (
            alone.text,
            alone.token_count,
            alone.finish_reason,
        )
        if gen.finish_reason == "length":
            assert gen.token_count == budget
        assert gen.last_top is not None and alone.last_top is not None
        assert len(gen.last_top) == rank1.TOP_LOGPROBS
        best = max(alone.last_top, key=alone.last_top.__getitem__)
        assert gen.last_top[best] == pytest.approx(alone.last_top[best], abs=1e-4)


def test_stop_string_split_across_tokens_is_caught(random_engine: RecordingEngine) -> None:
    from rank1_batch.engines.transformers_engine import _StopAndBudget

    enc = random_engine.encode
    pieces = [enc("The answer."), enc("\n</think>"), enc(" t"), enc("ru"), enc("e"), enc(" more")]
    stop_at = sum(len(p) for p in pieces[:5])
    tokens = [t for p in pieces for t in p]
    prompt = enc("Query: x\n<think>")
    # Two rows: the second one ends on its budget of 3 tokens.
    crit = _StopAndBudget(
        len(prompt), [len(tokens), 3], random_engine.eos_ids, random_engine._decode_many
    )
    done_at: list[int | None] = [None, None]
    for n in range(1, len(tokens) + 1):
        ids = torch.tensor([prompt + tokens[:n], prompt + tokens[:n]])
        for row, flag in enumerate(crit(ids, None).tolist()):
            if flag and done_at[row] is None:
                done_at[row] = n
    assert crit.ended == [(stop_at, "stop"), None]
    assert done_at == [stop_at, 3]


def test_judging_alone_or_in_a_mixed_batch_agrees(random_engine: RecordingEngine) -> None:
    # A small max_model_len makes the budgets differ with the prompt length.
    requests = mixed_requests()
    opts = {"max_model_len": 120, "max_tokens": 40, "min_reserve": 8}
    together = judge(random_engine, requests, **opts)
    assert len({j.reasoning_tokens for j in together}) > 1
    for req, j in zip(requests, together, strict=True):
        [alone] = judge(random_engine, [req], **opts)
        assert_same(j, alone)
        assert j.reasoning_tokens == min(40, 120 - j.prompt_tokens)


def test_judging_is_deterministic(random_engine: RecordingEngine) -> None:
    requests = mixed_requests()
    assert random_engine.judge(requests) == random_engine.judge(requests)


def test_long_passage_is_truncated_to_fit(random_engine: RecordingEngine) -> None:
    query = "capital of france"
    random_engine.generated.clear()
    [j] = judge(
        random_engine,
        [JudgeRequest(query, "Paris is the capital of France. " * 300)],
        max_model_len=160,
        min_reserve=40,
    )
    assert j.truncated and j.status == rank1.FORCED
    assert 0 < j.prompt_tokens <= 160 - 40
    [fed] = random_engine.generated
    text = random_engine.decode(fed)
    assert len(fed) == j.prompt_tokens
    assert text.startswith(rank1.PROMPT_HEAD + query + rank1.PASSAGE_SEP + "Paris is")
    assert text.endswith("\n<think>")


def test_prompt_too_long_is_an_error_row(random_engine: RecordingEngine) -> None:
    requests = [JudgeRequest("bread " * 200, "oven"), JudgeRequest("bread", "oven")]
    bad, good = judge(random_engine, requests, max_model_len=160, min_reserve=40)
    assert bad.status == rank1.ERROR and bad.error == rank1.PROMPT_TOO_LONG
    assert math.isnan(bad.score)
    assert good.status == rank1.FORCED


def test_model_revision_and_options(random_model: Path, random_engine: RecordingEngine) -> None:
    assert random_engine.model_revision.startswith("sha256:")
    assert random_engine.model_id == str(random_model)
    assert random_engine.dtype == torch.float32 and random_engine.device.type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))
    engine = make_engine(
        "transformers",
        str(random_model),
        RANDOM_OPTS,
        revision="abc123",
        model_id="tiny",
        device="cpu",
    )
    assert (engine.model_revision, engine.model_id, engine.name) == (
        "abc123",
        "tiny",
        "transformers",
    )
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(RuntimeError, match="vLLM engine"):
            make_engine("vllm", str(random_model), RANDOM_OPTS)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("onnx", str(random_model), RANDOM_OPTS)


def test_package_import_does_not_pull_torch_vllm_or_ray() -> None:
    code = (
        "import sys, rank1_batch, rank1_batch.engines, rank1_batch.core.rank1, rank1_batch.cli\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# -- the toy Rank1 model: complete answers, forced answers, score direction ------------------


def toy_pairs(n: int = 6) -> tuple[list[JudgeRequest], list[JudgeRequest]]:
    from rank1_batch.toy import data as toy_data

    rng = random.Random(99)
    relevant = [toy_data.make_example(rng, relevant=True) for _ in range(n)]
    other = [toy_data.make_example(rng, relevant=False) for _ in range(n)]
    return (
        [JudgeRequest(e.query, e.passage) for e in relevant],
        [JudgeRequest(e.query, e.passage) for e in other],
    )


def toy_prompt(req: JudgeRequest) -> str:
    return rank1.prompt_from_parts(req.query, req.passage)


@needs_toy
def test_toy_model_completes_and_ranks_relevant_higher(toy_engine: TransformersEngine) -> None:
    relevant, other = toy_pairs()
    results = toy_engine.judge(relevant + other)
    assert all(j.status == rank1.COMPLETE for j in results), [j.status for j in results]
    for j in results:
        assert j.finish_reason == "stop" and "</think>" not in j.reasoning
        assert j.reasoning.strip().startswith("The query is about")
        assert 0.0 <= j.score <= 1.0
    # Pass 1 alone: the stop string fired, its answer token counts and carries both answers.
    [gen] = toy_engine.generate([toy_engine.encode_prompt(toy_prompt(relevant[0]))], [64])
    assert (
        gen.stopped
        and gen.finish_reason == "stop"
        and gen.token_count == results[0].reasoning_tokens
    )
    assert gen.text == results[0].reasoning and not gen.text.endswith(rank1.STOP_STRINGS)
    assert (
        gen.last_top is not None
        and max(gen.last_top, key=gen.last_top.__getitem__) == toy_engine.true_id
    )
    assert toy_engine.false_id in gen.last_top
    rel, non = results[: len(relevant)], results[len(relevant) :]
    mean = lambda js: sum(j.score for j in js) / len(js)  # noqa: E731
    assert mean(rel) > mean(non)


@needs_toy
def test_toy_model_tiny_budget_is_forced(toy_engine: TransformersEngine) -> None:
    relevant, other = toy_pairs(3)
    # The reference rule (no stop string required): 3 tokens in, the toy model's top 20 never
    # holds both answers, so every pair takes the forced path.
    results = judge(toy_engine, relevant + other, max_tokens=3, require_stop=False)
    for j in results:
        assert j.status == rank1.FORCED and j.reasoning_tokens == 3
        assert j.finish_reason == "length" and 0.0 < j.score < 1.0


@needs_toy
def test_toy_model_alone_or_in_a_batch_agrees(toy_engine: TransformersEngine) -> None:
    relevant, other = toy_pairs(3)
    requests = [other[0], JudgeRequest(relevant[0].query, relevant[0].passage * 6), *relevant[1:]]
    together = toy_engine.judge(requests)
    for req, j in zip(requests, together, strict=True):
        [alone] = toy_engine.judge([req])
        assert_same(j, alone)
