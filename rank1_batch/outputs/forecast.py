"""The forecast half of ``rank1-batch plan``: a streamed full scan, a token sample, a calibration.

* :func:`scan` reads the input once, one row group at a time, with the same normaliser as
  ``prepare`` (:func:`rank1_batch.job.inputs.read_unit`), and counts input rows, rejects by reason,
  pairs, queries and duplicates exactly. Memory does not grow with the input: each row
  group's 64-bit query and pair hashes go to one of :data:`BUCKETS` buckets by query hash
  (a duplicate pair and all rows of a query share a bucket), spilled to a local temporary
  folder, and each bucket is counted on its own at the end (16 bytes of disk per row).
  The same pass keeps a uniform sample of pairs: the ``k`` pairs with the smallest hash
  (a bottom-k sketch: deterministic, spread over the whole input, O(k) memory).
* :func:`token_stats` builds each sampled pair's exact prompt with the model's own tokenizer
  (:func:`rank1_batch.core.rank1.fit_prompt`, as the engine does): prompt lengths and truncation.
* :func:`calibrate` judges sampled pairs on the job's real engine: reasoning tokens per pair,
  statuses and this machine's pairs/s.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core import rank1
from rank1_batch.job.inputs import InputFile, read_unit, units
from rank1_batch.job.spec import JobSpec

BUCKETS = 64
SPILL_ROWS = 1 << 21  # rows held in memory before the buckets spill to disk
SAMPLE_COLUMNS = ["query_id", "doc_id", "query", "passage", "title", "instruction"]


def _hash64(values: list[str]) -> np.ndarray:
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "big")
            for v in values
        ),
        dtype=np.uint64,
        count=len(values),
    )


def summary(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """mean, min, p50, p90, p95, p99, max of ``values`` (empty: {})."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {}
    pct = np.percentile(arr, [50, 90, 95, 99])
    return {
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "p50": float(pct[0]),
        "p90": float(pct[1]),
        "p95": float(pct[2]),
        "p99": float(pct[3]),
        "max": float(arr.max()),
    }


class _Buckets:
    """Per-bucket (query hash, pair hash) arrays, spilled to ``folder`` when large."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.held: list[list[np.ndarray]] = [[] for _ in range(BUCKETS)]
        self.rows = 0
        self.spills = 0

    def add(self, qhash: np.ndarray, phash: np.ndarray) -> None:
        bucket = (qhash % BUCKETS).astype(np.int64)
        for b in np.unique(bucket):
            mask = bucket == b
            self.held[int(b)].append(np.stack([qhash[mask], phash[mask]]))
        self.rows += len(qhash)
        if self.rows >= SPILL_ROWS:
            self._spill()

    def _spill(self) -> None:
        for b, parts in enumerate(self.held):
            if parts:
                np.save(os.path.join(self.folder, f"{b}-{self.spills}.npy"), np.hstack(parts))
        self.held = [[] for _ in range(BUCKETS)]
        self.rows = 0
        self.spills += 1

    def counts(self) -> tuple[int, int, int]:
        """(rows, distinct queries, distinct pairs) over every bucket."""
        rows = queries = pairs = 0
        for b in range(BUCKETS):
            parts = list(self.held[b])
            for k in range(self.spills):
                path = os.path.join(self.folder, f"{b}-{k}.npy")
                if os.path.exists(path):
                    parts.append(np.load(path))
            if not parts:
                continue
            arr = np.hstack(parts)
            rows += arr.shape[1]
            queries += len(np.unique(arr[0]))
            pairs += len(np.unique(arr[1]))
        return rows, queries, pairs


@dataclass
class Scan:
    input_rows: int = 0
    pairs: int = 0
    queries: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    sample: pa.Table | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_rows": self.input_rows,
            "pairs": self.pairs,
            "queries": self.queries,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "scan_seconds": round(self.seconds, 3),
        }


def _bottom_k(current: pa.Table | None, rows: pa.Table, k: int) -> pa.Table:
    table = rows if current is None else pa.concat_tables([current, rows])
    order = pc.sort_indices(table, [("_hash", "ascending")])
    table = table.take(order)
    # One row per pair: duplicates of a pair hash alike.
    h = table.column("_hash").to_numpy()
    first = np.ones(len(h), dtype=bool)
    first[1:] = h[1:] != h[:-1]
    return table.filter(pa.array(first)).slice(0, k)


def scan(spec: JobSpec, files: list[InputFile], *, sample_size: int) -> Scan:
    """Read every input row once (streamed); exact counts and a uniform sample of pairs."""
    start = time.perf_counter()
    out = Scan()
    sample: pa.Table | None = None
    with tempfile.TemporaryDirectory(prefix="rank1-plan-") as folder:
        buckets = _Buckets(folder)
        for unit in units(files):
            table = read_unit(unit, spec.input, spec.storage)
            out.input_rows += table.num_rows
            bad = pc.is_valid(table.column("reason"))
            for entry in pc.value_counts(table.column("reason").filter(bad)).to_pylist():
                out.rejected[entry["values"]] = out.rejected.get(entry["values"], 0) + int(
                    entry["counts"]
                )
            good = table.filter(pc.invert(bad))
            if not good.num_rows:
                continue
            qids = good.column("query_id").to_pylist()
            dids = good.column("doc_id").to_pylist()
            qhash = _hash64(qids)
            phash = _hash64([f"{q}\x00{d}" for q, d in zip(qids, dids, strict=True)])
            buckets.add(qhash, phash)
            if sample_size > 0:
                keep = np.argsort(phash, kind="stable")[:sample_size]
                rows = good.select(SAMPLE_COLUMNS).take(pa.array(keep))
                rows = rows.append_column("_hash", pa.array(phash[keep]))
                sample = _bottom_k(sample, rows, sample_size)
        rows, out.queries, out.pairs = buckets.counts()
    out.duplicates = rows - out.pairs
    if sample is not None:
        out.sample = sample.drop_columns(["_hash"])
    out.seconds = time.perf_counter() - start
    return out


def load_tokenizer(spec: JobSpec, path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, revision=spec.model.revision)


def token_stats(spec: JobSpec, sample: pa.Table, tokenizer: Any) -> dict[str, Any]:
    """Exact prompt lengths and truncation of ``sample`` with the model's tokenizer."""
    from rank1_batch.core.rows import requests_for

    reserve = min(spec.reasoning.min_reserve, spec.model.max_model_len - 1)
    limit = spec.model.max_model_len - reserve
    lengths, passage_tokens = [], []
    truncated = too_long = 0
    for req in requests_for(sample, spec.reasoning):
        try:
            fp = rank1.fit_prompt(
                req.query,
                req.passage,
                encode=lambda t: tokenizer.encode(t, add_special_tokens=True),
                decode=lambda ids: tokenizer.decode(
                    list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
                ),
                encode_text=lambda t: tokenizer.encode(t, add_special_tokens=False),
                max_prompt_tokens=limit,
            )
        except rank1.PromptTooLong:
            too_long += 1
            continue
        lengths.append(len(fp.token_ids))
        truncated += int(fp.truncated)
        passage_tokens.append(len(tokenizer.encode(req.passage, add_special_tokens=False)))
    n = sample.num_rows
    return {
        "sampled_pairs": n,
        "max_prompt_tokens": limit,
        "prompt_tokens": summary(lengths),
        "passage_tokens": summary(passage_tokens),
        "truncated": truncated,
        "truncated_share": truncated / n if n else 0.0,
        "prompt_too_long": too_long,
        "prompt_too_long_share": too_long / n if n else 0.0,
    }


def calibrate(spec: JobSpec, sample: pa.Table, model_dir: str) -> dict[str, Any]:
    """Judge ``sample`` on the job's engine: reasoning tokens per pair, statuses, pairs/s."""
    from rank1_batch.core.rows import requests_for
    from rank1_batch.engines.factory import build_engine, engine_kind

    t0 = time.perf_counter()
    engine = build_engine(spec, model_dir)
    load = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        # reasoning.mode applies (direct: no reasoning; a cascade selects within the
        # sample's pairs of each query, so it overstates the reasoned share a little)
        qids = sample.column("query_id").to_pylist()
        judgements = engine.judge_pairs(
            requests_for(sample, spec.reasoning), qids, spec.reasoning_mode
        )
        seconds = time.perf_counter() - t1
    finally:
        engine.close()
    answered = [j for j in judgements if j.status != rank1.ERROR]
    statuses = {s: sum(j.status == s for j in judgements) for s in rank1.STATUSES}
    return {
        "engine": engine_kind(spec),
        "pairs": len(judgements),
        "reasoning_tokens": summary([j.reasoning_tokens for j in answered]),
        "prompt_tokens": summary([j.prompt_tokens for j in answered]),
        "statuses": statuses,
        "forced_share": statuses[rank1.FORCED] / len(judgements) if judgements else 0.0,
        "load_seconds": round(load, 3),
        "judge_seconds": round(seconds, 3),
        "pairs_per_second": len(judgements) / seconds if seconds > 0 else None,
    }
