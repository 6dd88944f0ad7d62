"""The committed toy model: a standard HF folder that answers in Rank1's format.

Nothing here trains the model; every check uses ``rank1_batch/toy/model_files``.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rank1_batch.core import rank1
from rank1_batch.toy import data as toy_data
from rank1_batch.toy import model as toy_model
from rank1_batch.toy import tokenizer as toy_tokenizer
from rank1_batch.toy import train as toy_train

FOLDER = toy_model.TOY_MODEL_DIR
SINGLE_TOKENS = (" true", " false", "<think>", "</think>", "<|endoftext|>")


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[Any, Any]]:
    import torch

    threads = torch.get_num_threads()
    # Tiny matrices: one thread is as fast, and does not stall when the cores are busy.
    torch.set_num_threads(1)
    yield toy_train.load(FOLDER)
    torch.set_num_threads(threads)


def _training_text(ex: toy_data.Example) -> str:
    prompt = toy_tokenizer.toy_prompt(ex.query, ex.passage)
    return prompt + toy_tokenizer.toy_completion(ex.reasoning, ex.label) + toy_tokenizer.EOS


def ex_label(ex: toy_data.Example) -> str:
    return "true" if ex.label else "false"


def test_import_pulls_no_heavy_modules() -> None:
    code = (
        "import sys, rank1_batch.toy.model, rank1_batch.toy.train, rank1_batch.toy.data\n"
        "heavy = {'torch', 'transformers', 'tokenizers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_committed_folder_is_small_complete_and_says_toy() -> None:
    assert toy_model.is_complete(FOLDER)
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size < 2_000_000
    readme = (FOLDER / "README.md").read_text()
    assert "NOT a reranker" in readme
    stats = json.loads((FOLDER / "training_stats.json").read_text())
    assert stats["heldout_accuracy"] >= 0.95


def test_config_is_a_vllm_loadable_qwen2() -> None:
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["model_type"] == "qwen2"
    assert config["hidden_size"] // config["num_attention_heads"] >= 32
    assert config["max_position_embeddings"] >= 2048
    assert config["eos_token_id"] == config["pad_token_id"] == config["bos_token_id"] == 0
    raw = (FOLDER / "model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"F32"}
    vocab_rows = header["model.embed_tokens.weight"]["shape"][0]
    assert vocab_rows == config["vocab_size"]


def test_loads_with_auto_model_for_causal_lm(loaded: tuple[Any, Any]) -> None:
    import torch

    model, tok = loaded
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config.vocab_size >= tok.get_vocab_size()


def test_pre_tokenizer_pattern_is_qwen2s() -> None:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert toy_tokenizer.QWEN2_PATTERN == PRETOKENIZE_REGEX


def test_tokenizer_build_is_deterministic_and_committed() -> None:
    first = toy_tokenizer.build_tokenizer()
    assert first.to_str() == toy_tokenizer.build_tokenizer().to_str()
    committed = json.loads((FOLDER / "tokenizer.json").read_text())
    assert json.loads(first.to_str()) == committed
    assert (
        toy_tokenizer.token_ids(first)
        == json.loads((FOLDER / "training_stats.json").read_text())["token_ids"]
    )


@pytest.mark.parametrize("with_tokenizer_json", [True, False])
def test_auto_tokenizer_matches_training_ids(tmp_path: Path, with_tokenizer_json: bool) -> None:
    """Both loading paths (tokenizer.json, or rebuilt from vocab.json + merges.txt)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    folder = FOLDER
    if not with_tokenizer_json:
        folder = tmp_path / "model"
        shutil.copytree(FOLDER, folder)
        (folder / "tokenizer.json").unlink()
    hf = AutoTokenizer.from_pretrained(str(folder))
    raw = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    ids = toy_tokenizer.token_ids(raw)
    for text in SINGLE_TOKENS:
        encoded = hf.encode(text, add_special_tokens=False)
        assert len(encoded) == 1
        assert encoded == raw.encode(text, add_special_tokens=False).ids
    assert hf.eos_token_id == hf.pad_token_id == ids["eos"]
    assert hf.convert_tokens_to_ids(["<think>", "</think>"]) == [1, 2]
    for ex in toy_data.make_examples(42, 50):
        text = _training_text(ex)
        expected = raw.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == expected
        assert hf.decode(expected) == text
        assert raw.decode(expected, skip_special_tokens=False) == text
    # The think tags survive skip_special_tokens (as in Qwen3): stop strings still match.
    assert "</think>" not in hf.decode(expected, skip_special_tokens=True)  # a special token


def test_prompt_is_rank1s() -> None:
    prompt = toy_tokenizer.toy_prompt("q w", "p x.")
    assert prompt == (
        "Determine if the following passage is relevant to the query. Answer only with 'true' "
        "or 'false'.\nQuery: q w\nPassage: p x.\n<think>"
    )
    assert toy_tokenizer.toy_completion("R.", True) == "\nR.\n</think> true"


def test_demo_data_is_held_out() -> None:
    assert toy_data.DEMO_SEED not in {toy_tokenizer.DEFAULT_SEED + i for i in range(4)}


def test_ranking_lifts_ndcg_on_held_out_demo(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    demo = toy_data.demo_collection()
    keep = sorted(demo.queries)[:50]  # half the demo set keeps the test short
    coll = toy_data.IRCollection(
        queries={q: demo.queries[q] for q in keep},
        candidates=[c for c in demo.candidates if c.query_id in keep],
        qrels={q: demo.qrels[q] for q in keep},
    )
    prompts = [toy_tokenizer.toy_prompt(c.query, c.passage) for c in coll.candidates]
    scores, judged = toy_train.rank1_scores(model, tok, prompts)
    by_pair = {(c.query_id, c.doc_id): s for c, s in zip(coll.candidates, scores, strict=True)}
    model_ndcg = toy_data.ndcg_at_k(toy_data.rank_by_score(coll, by_pair), coll.qrels)
    shuffled = toy_data.ndcg_at_k(toy_data.first_stage_ranking(coll), coll.qrels)
    assert model_ndcg - shuffled >= 0.3, (model_ndcg, shuffled)
    assert sum(j.complete for j in judged) >= 0.95 * len(judged)
    assert max(j.new_tokens for j in judged) <= 24
    first = judged[0]
    assert first.text.startswith("\nThe query is about ")
    assert first.text.endswith(("</think> true", "</think> false"))


def test_short_budget_needs_and_gets_a_forced_answer(loaded: tuple[Any, Any]) -> None:
    model, tok = loaded
    examples = toy_data.make_examples(777, 200)
    prompts = [toy_tokenizer.toy_prompt(e.query, e.passage) for e in examples]
    short = toy_train.greedy_judge(model, tok, prompts, max_new_tokens=4)
    assert not any(j.complete for j in short)
    forced = [rank1.forced_prompt(p, j.text) for p, j in zip(prompts, short, strict=True)]
    assert forced[0].endswith("\n<think>\nThe query is\n</think>")
    answers = toy_train.answer_logprobs(model, tok, forced)
    mass = [math.exp(lt) + math.exp(lf) for lt, lf in answers]
    right = [(lt > lf) == e.label for (lt, lf), e in zip(answers, examples, strict=True)]
    assert min(mass) > 0.5 and sum(mass) / len(mass) > 0.9
    assert sum(right) / len(right) >= 0.8
    # An empty reasoning (a one-token budget) is answered too.
    empty = toy_train.answer_logprobs(model, tok, [rank1.forced_prompt(prompts[0], "")])
    assert math.exp(empty[0][0]) + math.exp(empty[0][1]) > 0.5


def test_hf_generate_follows_the_format(loaded: tuple[Any, Any]) -> None:
    """What the transformers engine sees: plain greedy ``generate`` ends in the answer + EOS."""
    import torch

    model, tok = loaded
    ex = toy_data.make_examples(5, 1)[0]
    prompt = toy_tokenizer.toy_prompt(ex.query, ex.passage)
    ids = torch.tensor([tok.encode(prompt).ids])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40)
    text = tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=False)
    assert text == "\n" + ex.reasoning + "\n</think> " + ex_label(ex) + toy_tokenizer.EOS


def test_resolve_returns_the_committed_folder() -> None:
    assert toy_model.resolve_toy_model() == FOLDER
    assert toy_model.TOY_MODEL_NAME == "toy"


def _fake_build(calls: list[Path], fail: bool = False) -> Any:
    def build(out_dir: str | Path, **_: Any) -> dict[str, Any]:
        out = Path(out_dir)
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in toy_model.REQUIRED_FILES[:3]:
            (out / name).write_text("x")
        if fail:
            raise KeyboardInterrupt  # a build killed half way
        for name in toy_model.REQUIRED_FILES[3:]:
            (out / name).write_text("x")
        return {}

    return build


def test_resolve_builds_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolution only: the build itself is replaced by a stub that writes the file set."""
    calls: list[Path] = []
    monkeypatch.setattr(toy_model, "TOY_MODEL_DIR", tmp_path / "missing")
    monkeypatch.setenv(toy_model.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(toy_model, "build_toy_model", _fake_build(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        toy_model.resolve_toy_model()
    assert list((tmp_path / "cache").iterdir()) == []  # no half folder, no temp left

    monkeypatch.setattr(toy_model, "build_toy_model", _fake_build(calls))
    path = toy_model.resolve_toy_model()
    assert path == tmp_path / "cache" / "toy-model-v1"
    assert toy_model.is_complete(path)
    assert calls[-1] != path and calls[-1].parent == path.parent  # built aside, renamed
    assert toy_model.resolve_toy_model() == path
    assert len(calls) == 2  # reused, not rebuilt

    explicit = toy_model.resolve_toy_model(str(tmp_path / "other"))
    assert explicit == tmp_path / "other" / "toy-model-v1" and len(calls) == 3
