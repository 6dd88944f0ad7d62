"""The toy Rank1 model: a tiny Qwen2 causal LM that imitates Rank1's output format.

THIS IS A TOY for demos and tests, not a reranker. It is trained in minutes on CPU on the
synthetic topic world of :mod:`rank1_batch.toy.data`, where it answers in Rank1's exact format:
prompt ``...\\n<think>``, then ``\\nThe query is about X. The passage is about Y. They match.
\\n</think> true<|endoftext|>``. It knows nothing about real text.

* :func:`resolve_toy_model` -- the folder to load (the committed ``toy/model_files/`` when
  complete, else a build cached once under ``$RANK1_BATCH_CACHE``).
* :func:`build_toy_model` -- tokenizer (:mod:`rank1_batch.toy.tokenizer`) + ``Qwen2ForCausalLM``
  + training and evaluation (:mod:`rank1_batch.toy.train`), written as a standard Hugging Face
  folder (loads with ``AutoModelForCausalLM`` and in vLLM).

torch, transformers and tokenizers are imported inside functions only. Rebuild the committed
folder with ``python scripts/build_toy_model.py rank1_batch/toy/model_files``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from rank1_batch.toy import TOY_MODEL_NAME, train
from rank1_batch.toy.tokenizer import (
    DEFAULT_SEED,
    DEFAULT_STEPS,
    build_tokenizer,
    save_tokenizer,
    write_json,
)

__all__ = ["TOY_MODEL_DIR", "TOY_MODEL_NAME", "build_toy_model", "resolve_toy_model"]

TOY_MODEL_DIR = Path(__file__).resolve().parent / "model_files"
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


README = """\
# rank1-batch toy model (NOT a reranker)

A tiny `Qwen2ForCausalLM` ({params:,} parameters, {layers} layers, hidden {hidden}, {heads} heads
of dim {head_dim}, byte-level BPE of {vocab} tokens) trained for demos and tests of rank1-batch.
It only knows the synthetic topic world of `rank1_batch/toy/data.py`: twelve topics with their
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
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(seed)
    save_tokenizer(tok, folder)
    stats = train.train_and_save(tok, folder, seed=seed, steps=steps, threads=threads)
    if evaluate:
        stats.update(train.evaluate_folder(folder, seed=seed))
    write_readme(folder, stats)
    write_json(folder / "training_stats.json", stats)
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
