"""The toy model's tokenizer and shape: a byte-level BPE and a tiny Qwen2 configuration.

THIS IS A TOY for demos and tests, not a reranker (see :mod:`rank1_batch.toy.model`).

* :func:`build_tokenizer` -- a byte-level BPE trained locally with ``tokenizers``, with Qwen2's
  normaliser, pre-tokeniser and decoder, so ``" true"``, ``" false"``, ``<think>`` and
  ``</think>`` are single tokens and ``AutoTokenizer`` loads it as a ``Qwen2Tokenizer``.
* :func:`toy_prompt` / :func:`toy_completion` -- the training text in Rank1's exact format.
* :func:`model_config_kwargs` -- ``Qwen2Config`` arguments for the toy shape.

Nothing here imports the trainer or the model builder, so :mod:`rank1_batch.toy.train` and
:mod:`rank1_batch.toy.model` both build on it without an import circle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rank1_batch.core.rank1 import build_prompt
from rank1_batch.toy import data as toy_data

if TYPE_CHECKING:
    from tokenizers import Tokenizer


EOS = "<|endoftext|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TRUE_TEXT = " true"
FALSE_TEXT = " false"
SPECIAL_TOKENS = (EOS, THINK_OPEN, THINK_CLOSE)  # ids 0, 1, 2

# Qwen2's pre-tokenisation regex (transformers' tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BPE_VOCAB_LIMIT = 2048
TOKENIZER_CORPUS = 4000  # examples whose text trains the BPE

DEFAULT_SEED = 1234
DEFAULT_STEPS = 1500
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 32: vLLM's CPU attention refuses less
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


def toy_prompt(query: str, passage: str) -> str:
    """The Rank1 prompt, exactly as the scorer builds it."""
    return build_prompt(query, passage)


def toy_completion(reasoning: str, label: bool) -> str:
    """Text after the prompt: ``"\\n" + reasoning + "\\n</think> true"`` (EOS added as an id)."""
    return "\n" + reasoning + "\n" + THINK_CLOSE + (TRUE_TEXT if label else FALSE_TEXT)


def _special_free_pieces(text: str) -> Iterator[str]:
    """The text between special tokens: what the BPE model itself ever sees."""
    pattern = "|".join(re.escape(t) for t in SPECIAL_TOKENS)
    for piece in re.split(pattern, text):
        if piece:
            yield piece


def build_tokenizer(seed: int = DEFAULT_SEED) -> Tokenizer:
    """Train the byte-level BPE on synthetic training text; deterministic in ``seed``.

    Special tokens take ids 0-2 (``<|endoftext|>``, ``<think>``, ``</think>``), all added as
    special tokens, as Rank1's training added the think tags (LLaMA-Factory
    ``new_special_tokens``); engines decode with special tokens kept so stop strings match.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(
        vocab_size=BPE_VOCAB_LIMIT,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus: list[str] = []
    for ex in toy_data.make_examples(seed + 1, TOKENIZER_CORPUS):
        text = toy_prompt(ex.query, ex.passage) + toy_completion(ex.reasoning, ex.label)
        corpus.extend(_special_free_pieces(text))
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    spec = json.loads(tok.to_str())
    for added in spec["added_tokens"]:
        added["special"] = True
        added["normalized"] = False
    tok = Tokenizer.from_str(json.dumps(spec))
    ids = token_ids(tok)
    if [ids["eos"], ids["think_open"], ids["think_close"]] != [0, 1, 2]:
        raise RuntimeError(f"unexpected special token ids: {ids}")
    return tok


def token_ids(tok: Tokenizer) -> dict[str, int]:
    """Ids of the answer words and special tokens; each must encode to exactly one token."""
    out: dict[str, int] = {}
    for name, text in (
        ("true", TRUE_TEXT),
        ("false", FALSE_TEXT),
        ("think_open", THINK_OPEN),
        ("think_close", THINK_CLOSE),
        ("eos", EOS),
    ):
        ids = tok.encode(text, add_special_tokens=False).ids
        if len(ids) != 1:
            raise RuntimeError(f"{text!r} must be one token, got {ids}")
        out[name] = ids[0]
    return out


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    """tokenizer.json plus the slow-style vocab.json/merges.txt and a Qwen2 tokenizer_config."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n",
        encoding="utf-8",
    )
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8"
    )
    added = {
        str(a["id"]): {
            "content": a["content"],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": a["special"],
        }
        for a in spec["added_tokens"]
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "errors": "replace",
        "model_max_length": MODEL_SHAPE["max_position_embeddings"],
        "split_special_tokens": False,
    }
    write_json(folder / "tokenizer_config.json", config)
    write_json(
        folder / "special_tokens_map.json",
        {"eos_token": EOS, "pad_token": EOS},
    )


def model_config_kwargs(vocab_size: int, eos_id: int) -> dict[str, Any]:
    """Arguments of ``Qwen2Config`` for the toy shape."""
    return {
        **MODEL_SHAPE,
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "use_sliding_window": False,
        "dtype": "float32",
    }


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
