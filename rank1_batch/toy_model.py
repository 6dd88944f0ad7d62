"""The toy Rank1 model: a tiny Qwen2 causal LM that imitates Rank1's output format.

THIS IS A TOY for demos and tests, not a reranker. It is trained in minutes on CPU on the
synthetic topic world of :mod:`rank1_batch.toy_data`, where it answers in Rank1's exact format:
prompt ``...\\n<think>``, then ``\\nThe query is about X. The passage is about Y. They match.
\\n</think> true<|endoftext|>``. It knows nothing about real text.

What is here:

* :func:`resolve_toy_model` -- the folder to load (the committed ``toy_model_files/`` when
  complete, else a build cached once under ``$RANK1_BATCH_CACHE``).
* :func:`build_tokenizer` -- a byte-level BPE trained locally with ``tokenizers``, with Qwen2's
  normaliser, pre-tokeniser and decoder, so ``" true"``, ``" false"``, ``<think>`` and
  ``</think>`` are single tokens and ``AutoTokenizer`` loads it as a ``Qwen2Tokenizer``.
* :func:`build_toy_model` -- tokenizer + ``Qwen2ForCausalLM`` + training + evaluation, written as
  a standard Hugging Face folder (loads with ``AutoModelForCausalLM`` and in vLLM).

Training and decoding live in :mod:`rank1_batch.toy_train`. torch, transformers and tokenizers
are imported inside functions only. Rebuild the committed folder with
``python scripts/build_toy_model.py rank1_batch/toy_model_files``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rank1_batch import toy_data
from rank1_batch.rank1 import build_prompt

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOY_MODEL_NAME = "toy"
TOY_MODEL_DIR = Path(__file__).resolve().parent / "toy_model_files"
CACHE_ENV = "RANK1_BATCH_CACHE"
CACHE_SUBDIR = "toy-model-v1"  # bump when the build recipe changes
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
)

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
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(
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


README = """\
# rank1-batch toy model (NOT a reranker)

A tiny `Qwen2ForCausalLM` ({params:,} parameters, {layers} layers, hidden {hidden}, {heads} heads
of dim {head_dim}, byte-level BPE of {vocab} tokens) trained for demos and tests of rank1-batch.
It only knows the synthetic topic world of `rank1_batch/toy_data.py`: twelve topics with their
own words. Given Rank1's prompt it writes a short chain of thought and Rank1's answer, e.g.

    ...\\nQuery: bread oven\\nPassage: tennis racket the coach ... stadium.\\n<think>
    The query is about cooking. The passage is about sports. They differ.
    </think> false<|endoftext|>

Its scores mean nothing on real queries and passages. Use it to exercise the pipeline.
{quality}

Token ids: `" true"` {true}, `" false"` {false}, `<think>` {think_open}, `</think>`
{think_close}, `<|endoftext|>` {eos} (eos and pad).

Rebuild: `python scripts/build_toy_model.py OUT_DIR` (seed {seed}, {steps} steps). The
tokenizer is reproducible exactly; the weights are reproducible bit for bit on the same
machine and software, and may differ in the last bits elsewhere.
"""


def write_readme(folder: Path, stats: dict[str, Any]) -> None:
    """The model card: says, first, that this is a toy."""
    quality = "Built without the held-out evaluation."
    if "heldout_accuracy" in stats:
        quality = (
            f"On held-out synthetic data: answer accuracy {stats['heldout_accuracy']:.1%}, "
            f"nDCG@10 {stats['ndcg10_model']:.3f}\nvs {stats['ndcg10_shuffled']:.3f} for the "
            "shuffled first-stage order (see training_stats.json)."
        )
    text = README.format(**stats, **stats["token_ids"], quality=quality)
    (folder / "README.md").write_text(text, encoding="utf-8")


def build_toy_model(
    out_dir: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    steps: int = DEFAULT_STEPS,
    threads: int = 2,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Train the toy model into ``out_dir`` (created) and return the training stats.

    Writes config.json, model.safetensors, generation_config.json, the tokenizer files,
    README.md and training_stats.json. ``evaluate`` runs the held-out checks (accuracy,
    nDCG@10 against the shuffled order, forced answers under a tiny reasoning budget).
    """
    from rank1_batch import toy_train

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(seed)
    save_tokenizer(tok, folder)
    stats = toy_train.train_and_save(tok, folder, seed=seed, steps=steps, threads=threads)
    if evaluate:
        stats.update(toy_train.evaluate_folder(folder, seed=seed))
    write_readme(folder, stats)
    _write_json(folder / "training_stats.json", stats)
    for path in folder.iterdir():
        path.chmod(0o644)  # save_pretrained leaves the weights owner-only
    return stats


def is_complete(folder: Path) -> bool:
    """A model folder with every file a loader needs."""
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$RANK1_BATCH_CACHE``, else ``~/.cache/rank1-batch``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rank1-batch"


def resolve_toy_model(cache_dir: str | None = None) -> Path:
    """The toy model folder: the committed one when complete, else built once into the cache.

    The cached copy lives at ``cache_root(cache_dir) / "toy-model-v1"``. A build is written to
    a temporary sibling and renamed into place, so a killed build never leaves a half folder
    and two concurrent builds leave one winner.
    """
    if is_complete(TOY_MODEL_DIR):
        return TOY_MODEL_DIR
    root = cache_root(cache_dir)
    final = root / CACHE_SUBDIR
    if is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CACHE_SUBDIR}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        build_toy_model(tmp, evaluate=False)
        if final.exists() and not is_complete(final):
            # Left by hand or by an old layout: move it aside, never delete in place.
            final.rename(root / f".{CACHE_SUBDIR}.stale-{uuid.uuid4().hex[:8]}")
        try:
            tmp.rename(final)
        except OSError:
            if not is_complete(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
