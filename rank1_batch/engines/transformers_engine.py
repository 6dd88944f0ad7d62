"""The Rank1 engine on Hugging Face transformers: CPU by default, CUDA when present.

It mimics what the reference gets from vLLM, so both engines score alike:

* greedy decoding with a clean generation config (a checkpoint's ``generation_config.json``
  may carry sampling defaults or a repetition penalty; the reference's explicit
  ``SamplingParams`` ignore them, so we do too);
* stop strings ``</think> true`` / ``</think> false`` matched on decoded text with special
  tokens kept, however the text splits into tokens; the stop string is cut from the text
  but its tokens count, as in vLLM;
* the top-20 log-softmax values at every step, kept as ids/values only (never full-vocab
  logits for all steps);
* each prompt's own token budget applied exactly, so a result does not depend on which other
  prompts share its batch (up to floating-point noise of batched kernels);
* the forced pass as one forward step whose log-softmax runs over just the two answer ids,
  like vLLM V0's ``allowed_token_ids`` masking.

Batches are length-sorted and left padded; results come back in input order.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from rank1_batch.core import rank1
from rank1_batch.engines.base import EngineOptions, Generation, Rank1Engine

THREADS_ENV = "RANK1_BATCH_TORCH_THREADS"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Tokens decoded from the end of each sequence to look for a stop string: one per character
# of the longest stop string covers any split, plus slack for bytes merged on decoding.
STOP_TAIL_TOKENS = max(len(s) for s in rank1.STOP_STRINGS) + 4


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU; on CUDA bfloat16 where supported, else float16."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, not {dtype!r}")
    return DTYPES[dtype]


def folder_revision(folder: Path) -> str:
    """A short content hash of a local model folder (config.json + weight files).

    A Hugging Face cache snapshot folder is already named by its commit; use that.
    """
    if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", folder.name):
        return folder.name
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    files = [folder / "config.json", *weights]
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            with path.open("rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
    return "sha256:" + digest.hexdigest()[:16]


def _batches(lengths: Sequence[int], indices: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` sorted by length (longest first, so memory trouble shows early), cut up."""
    ordered = sorted(indices, key=lambda i: (-lengths[i], i))
    return [ordered[k : k + size] for k in range(0, len(ordered), max(1, size))]


class _TopLogprobs(LogitsProcessor):
    """Records the top-k log-softmax ids/values of every step; leaves the scores alone."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        top = torch.log_softmax(scores.float(), dim=-1).topk(min(self.k, scores.shape[-1]), dim=-1)
        self.values.append(top.values)
        self.ids.append(top.indices)
        return scores

    def last_top(self, row: int, step: int) -> dict[int, float]:
        ids, values = self.ids[step][row].tolist(), self.values[step][row].tolist()
        return dict(zip(ids, values, strict=True))


class _StopAndBudget(StoppingCriteria):
    """Per sequence: stop when a stop string shows up in the decoded tail, on an EOS id, or
    when the sequence's own budget is spent. Records where each sequence ended and why."""

    def __init__(
        self,
        prompt_len: int,
        budgets: Sequence[int],
        eos_ids: frozenset[int],
        decode: Callable[[list[list[int]]], list[str]],
    ) -> None:
        self.prompt_len = prompt_len
        self.budgets = list(budgets)
        self.eos_ids = eos_ids
        self.decode = decode
        self.ended: list[tuple[int, str] | None] = [None] * len(budgets)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs: Any
    ) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.prompt_len
        rows = [i for i, end in enumerate(self.ended) if end is None and n <= self.budgets[i]]
        if rows and n > 0:
            tails = input_ids[rows, -min(n, STOP_TAIL_TOKENS) :].tolist()
            for i, tail, text in zip(rows, tails, self.decode(tails), strict=True):
                if tail[-1] in self.eos_ids:
                    self.ended[i] = (n, "eos")
                elif any(stop in text for stop in rank1.STOP_STRINGS):
                    self.ended[i] = (n, "stop")
        done = [end is not None or n >= b for end, b in zip(self.ended, self.budgets, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class TransformersEngine(Rank1Engine):
    """Rank1 through ``AutoModelForCausalLM.generate``; see the module docstring."""

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        options: EngineOptions,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        model_id: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        threads = num_threads or int(os.environ.get(THREADS_ENV, "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, revision=revision, dtype=self.dtype
        )
        model.to(self.device)  # type: ignore[arg-type]  # transformers types `to` oddly
        self.model = model.eval()
        eos: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is not None:
                eos.update([source] if isinstance(source, int) else source)
        self.eos_ids = frozenset(eos)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(eos, default=0))
        # Only eos/pad survive from the checkpoint: no sampling defaults, no penalties.
        self.model.generation_config = GenerationConfig(
            eos_token_id=sorted(eos) or None, pad_token_id=self.pad_id
        )
        if revision is None:
            local = Path(model_path)
            if local.is_dir():
                revision = folder_revision(local)
            else:
                revision = getattr(self.model.config, "_commit_hash", None) or "unknown"
        super().__init__(options, model_id=model_id or model_path, model_revision=revision)

    # -- tokenisation -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def _decode_many(self, seqs: list[list[int]]) -> list[str]:
        return [self.decode(s) for s in seqs]

    def _left_pad(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
                mask[row, width - len(prompt) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- pass 1 -----------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        if len(prompts) != len(budgets):
            raise ValueError("prompts and budgets differ in length")
        out: list[Generation | None] = [None] * len(prompts)
        active = []
        for i, budget in enumerate(budgets):
            if budget <= 0:
                out[i] = Generation("", 0, None, stopped=False, finish_reason="length")
            else:
                active.append(i)
        lengths = [len(p) for p in prompts]
        for batch in _batches(lengths, active, self.options.batch_size):
            gens = self._generate_batch([prompts[i] for i in batch], [budgets[i] for i in batch])
            for i, gen in zip(batch, gens, strict=True):
                out[i] = gen
        return [g for g in out if g is not None]

    def _generate_batch(
        self, prompts: Sequence[Sequence[int]], budgets: Sequence[int]
    ) -> list[Generation]:
        ids, mask = self._left_pad(prompts)
        width = ids.shape[1]
        capture = _TopLogprobs(rank1.TOP_LOGPROBS)
        stop = _StopAndBudget(width, budgets, self.eos_ids, self._decode_many)
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max(budgets),
            eos_token_id=sorted(self.eos_ids) or None,
            pad_token_id=self.pad_id,
        )
        with torch.inference_mode():
            seqs = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([capture]),
                stopping_criteria=StoppingCriteriaList([stop]),
            )
        generated = seqs[:, width:].tolist()
        results = []
        for row, budget in enumerate(budgets):
            end = stop.ended[row]
            count, reason = end if end is not None else (budget, "length")
            count = min(count, budget, len(generated[row]), len(capture.ids))
            tokens = generated[row][:count]
            # An EOS token counts but its text is dropped, as in vLLM.
            text = self.decode(tokens[:-1] if reason == "eos" else tokens)
            cuts = [text.find(s) for s in rank1.STOP_STRINGS if s in text]
            if reason == "stop" and cuts:  # vLLM cuts the text where the stop string starts
                text = text[: min(cuts)]
            last_top = capture.last_top(row, count - 1) if count > 0 else None
            results.append(Generation(text, count, last_top, reason == "stop", reason))
        return results

    # -- forced pass ------------------------------------------------------------------------
    def answer(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        out: list[Mapping[int, float] | None] = [None] * len(prompts)
        lengths = [len(p) for p in prompts]
        pair = [self.true_id, self.false_id]
        for batch in _batches(lengths, range(len(prompts)), self.options.batch_size):
            ids, mask = self._left_pad([prompts[i] for i in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=False,
                    logits_to_keep=1,
                ).logits[:, -1, :]
                lps = torch.log_softmax(logits[:, pair].float(), dim=-1).tolist()
            for i, (lt, lf) in zip(batch, lps, strict=True):
                if math.isfinite(lt) and math.isfinite(lf):
                    out[i] = {self.true_id: lt, self.false_id: lf}
        return out

    def close(self) -> None:
        """Drop the model and free accelerator memory."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
