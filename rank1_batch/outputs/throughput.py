"""The throughput model behind ``rank1-batch plan``: GPU-hours and cost per GPU type.

A table of per-GPU figures ships with the package (``rank1_batch/data/throughput.yaml``, each
figure with its source). For a job it gives, per GPU type::

    gpu_seconds = generated_tokens / decode_tokens_per_s + prompt_tokens / prefill_tokens_per_s
    prefill_tokens_per_s = prefill_mfu * peak_bf16_tflops * 1e12 / (2 * params)

The model's size class (7b, 14b, 32b) is the table row nearest its parameter count (computed
from its config); a model between classes gets the nearest row scaled by the parameter ratio
(decode is memory-bandwidth bound), clamped to [0.5, 2] and flagged. Users override figures
with ``GPU=TOKENS_PER_S[@USD_PER_HOUR]`` items or a file of the same shape as the table.
Pure functions: no I/O here except :func:`load_table`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

# Parameter counts (billions) of the table's size classes (Qwen2.5 7B / 14B / 32B).
SIZE_CLASSES = {"7b": 7.6, "14b": 14.8, "32b": 32.8}


class ThroughputError(ValueError):
    """A throughput override or file is malformed (the message names it)."""


def load_table(path: str | Path | None = None) -> dict[str, Any]:
    """The packaged table, or ``path`` merged over it (same shape; its entries win)."""
    text = resources.files("rank1_batch").joinpath("data/throughput.yaml").read_text()
    table: dict[str, Any] = yaml.safe_load(text)
    if path is None:
        return table
    try:
        extra = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ThroughputError(f"{path}: cannot read throughput file: {exc}") from None
    if not isinstance(extra, dict):
        raise ThroughputError(f"{path}: a throughput file must be a mapping")
    for key in ("prefill_mfu",):
        if key in extra:
            table[key] = extra[key]
    for gpu, entry in (extra.get("gpus") or {}).items():
        table["gpus"][gpu] = {**table["gpus"].get(gpu, {}), **entry}
    for size, row in (extra.get("decode_tokens_per_s") or {}).items():
        table["decode_tokens_per_s"].setdefault(size, {}).update(row)
    return table


def parse_override(item: str) -> tuple[str, float, float | None]:
    """``GPU=TOKENS_PER_S[@USD_PER_HOUR]`` -> (gpu, decode tokens/s, price or None)."""
    gpu, sep, rest = item.partition("=")
    tps, _, price = rest.partition("@")
    try:
        if not sep or not gpu.strip():
            raise ValueError
        out = (gpu.strip(), float(tps), float(price) if price else None)
    except ValueError:
        raise ThroughputError(
            f"--throughput {item!r}: expected GPU=TOKENS_PER_S[@USD_PER_HOUR], "
            "e.g. H100-80GB=7000@2.5"
        ) from None
    if out[1] <= 0:
        raise ThroughputError(f"--throughput {item!r}: tokens/s must be positive")
    return out


def parameter_count(config: dict[str, Any]) -> int:
    """Parameters of a decoder-only transformer from its ``config.json`` (approximate)."""
    text = config.get("text_config") or config
    hidden = int(text["hidden_size"])
    layers = int(text["num_hidden_layers"])
    vocab = int(text["vocab_size"])
    inter = int(text.get("intermediate_size") or 4 * hidden)
    heads = int(text.get("num_attention_heads") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    kv_dim = hidden // heads * kv_heads
    per_layer = hidden * (hidden + 2 * kv_dim) + hidden * hidden + 3 * hidden * inter
    embed = vocab * hidden * (1 if text.get("tie_word_embeddings", False) else 2)
    return layers * per_layer + embed


def size_class(params: int) -> tuple[str, float, str]:
    """(nearest size class, decode scale factor, note) for a model of ``params``."""
    billions = params / 1e9
    name = min(SIZE_CLASSES, key=lambda k: abs(math.log(SIZE_CLASSES[k] / max(billions, 1e-9))))
    ratio = SIZE_CLASSES[name] / max(billions, 1e-9)
    if 0.85 <= ratio <= 1.15:
        return name, 1.0, ""
    scale = min(max(ratio, 0.5), 2.0)
    note = f"model has {billions:.3g}B parameters; {name} figures scaled x{scale:.2f}"
    if scale != ratio:
        note += " (clamped: outside the table's range, treat as a rough bound)"
    return name, scale, note


@dataclass(frozen=True)
class Work:
    """The token work of a job: what the throughput model turns into GPU time."""

    pairs: int
    prompt_tokens: float  # total over the job
    generated_tokens: float  # reasoning + answer tokens, total over the job


def estimate(
    work: Work,
    params: int,
    table: dict[str, Any],
    overrides: Sequence[tuple[str, float, float | None]] = (),
) -> list[dict[str, Any]]:
    """One row per GPU type: tokens/s used, GPU-hours, cost and where the figures came from."""
    name, scale, note = size_class(params)
    decode_row = dict(table["decode_tokens_per_s"].get(name, {}))
    gpus = {g: dict(e) for g, e in table["gpus"].items()}
    for gpu, tps, price in overrides:
        decode_row[gpu] = {"value": tps / scale, "source": "command line"}
        gpus.setdefault(gpu, {})
        if price is not None:
            gpus[gpu]["usd_per_hour"] = price
    rows = []
    for gpu, entry in decode_row.items():
        g = gpus.get(gpu, {})
        decode = float(entry["value"]) * scale
        seconds = work.generated_tokens / decode
        tflops = g.get("peak_bf16_tflops")
        if tflops:
            prefill = float(table["prefill_mfu"]) * float(tflops) * 1e12 / (2 * max(params, 1))
            seconds += work.prompt_tokens / prefill
        hours = seconds / 3600
        price = g.get("usd_per_hour")
        rows.append(
            {
                "gpu": gpu,
                "size_class": name,
                "decode_tokens_per_s": round(decode, 1),
                "gpu_hours": hours,
                "usd_per_hour": price,
                "cost_usd": hours * float(price) if price is not None else None,
                "source": entry.get("source", ""),
                "price_source": g.get("source", ""),
                "note": note,
            }
        )
    return rows
