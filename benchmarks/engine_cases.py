"""Cases 6-7: transformers-engine batching efficiency and token economics.

Case 6 drives the engine's own batch primitive (``TransformersEngine._generate_batch``, pass 1:
greedy reasoning) with batch orders chosen here, so every variant runs the same code on the
same prompts and only the grouping differs:

* ``sorted``: length-sorted batches of ``batch_size``, as ``TransformersEngine.generate`` does;
* ``unsorted``: batches of ``batch_size`` in input order (query-grouped, as in a shard);
* ``per_query``: one generate call per query over its candidates (what per-query rerankers do);
* ``per_pair``: one call per pair (batch of one), on a subset.

Case 7 reads a finished run's committed outputs and re-tokenises its shards' prompts in shard
order to count what a prefix cache could reuse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common as c


def load_engine(threads: int) -> Any:
    import torch

    from rank1_batch.engines.factory import build_engine, model_path
    from rank1_batch.job.load import load_job

    torch.set_num_threads(threads)
    spec = load_job(c.ROOT / "jobs" / "demo.yaml", overrides=["compute.batch_size=32"])
    return build_engine(spec, model_path(spec))


def fitted_prompts(engine: Any, queries: Sequence[str], passages: Sequence[str]) -> list[list[int]]:
    """Prompt token ids exactly as ``judge`` builds them (truncation guard included)."""
    from rank1_batch.core import rank1

    opts = engine.options
    return [
        list(
            rank1.fit_prompt(
                rank1.compose_query(q, instruction=None, template=None),
                rank1.compose_passage(p, title=None),
                encode=engine.encode_prompt,
                decode=engine.decode,
                encode_text=engine.encode,
                max_prompt_tokens=opts.max_model_len - opts.min_reserve,
            ).token_ids
        )
        for q, p in zip(queries, passages, strict=True)
    ]


def run_batches(
    engine: Any, prompts: list[list[int]], batches: list[list[int]], budget: int, repeats: int
) -> dict[str, Any]:
    gens: list[Any] = []

    def once() -> None:
        gens.clear()
        for batch in batches:
            gens.append(engine._generate_batch([prompts[i] for i in batch], [budget] * len(batch)))

    walls, _ = c.timed(once, repeats)
    pairs = sum(len(b) for b in batches)
    counts = [[g.token_count for g in out] for out in gens]
    return {
        **c.summary(walls),
        "pairs": pairs,
        "batches": len(batches),
        "pairs_per_s": round(pairs / c.median(walls), 1),
        "prompt_padded_fraction": round(
            c.padded_fraction([[len(prompts[i]) for i in b] for b in batches]), 4
        ),
        # Rows that stopped early still ride along until the batch's longest one ends.
        "decode_padded_fraction": round(c.padded_fraction(counts), 4),
    }


def efficiency(n_queries: int, candidates: int, repeats: int, threads: int = 1) -> dict[str, Any]:
    """Case 6."""
    from rank1_batch.toy.data import make_ir_collection

    engine = load_engine(threads)
    coll = make_ir_collection(11, n_queries, candidates)
    prompts = fitted_prompts(
        engine, [x.query for x in coll.candidates], [x.passage for x in coll.candidates]
    )
    size, budget = engine.options.batch_size, engine.options.max_tokens
    order = list(range(len(prompts)))
    by_len = sorted(order, key=lambda i: (-len(prompts[i]), i))
    per_query: dict[str, list[int]] = {}
    for i, cand in enumerate(coll.candidates):
        per_query.setdefault(cand.query_id, []).append(i)
    subset = [i for q in list(per_query)[: max(2, n_queries // 10)] for i in per_query[q]]
    variants = {
        "sorted": run_batches(engine, prompts, c.chunks(by_len, size), budget, repeats),
        "unsorted": run_batches(engine, prompts, c.chunks(order, size), budget, repeats),
        "per_query": run_batches(engine, prompts, list(per_query.values()), budget, repeats),
        "per_pair": run_batches(engine, prompts, [[i] for i in subset], budget, repeats),
    }
    engine.close()
    rate = {k: v["pairs_per_s"] for k, v in variants.items()}
    return {
        "settings": {
            "queries": n_queries,
            "candidates_per_query": candidates,
            "batch_size": size,
            "reasoning_budget": budget,
            "torch_threads": threads,
            "pass": "pass 1 (greedy reasoning), engine._generate_batch",
        },
        "variants": variants,
        "speedup_sorted_over_unsorted": c.ratio(rate["sorted"], rate["unsorted"]),
        "speedup_sorted_over_per_query": c.ratio(rate["sorted"], rate["per_query"]),
        "speedup_sorted_over_per_pair": c.ratio(rate["sorted"], rate["per_pair"]),
    }


def token_economics(out: Path) -> dict[str, Any]:
    """Case 7 from a finished run's folder (manifest, pairs shards, committed scores)."""
    import pyarrow.parquet as pq

    from rank1_batch.io import commit
    from rank1_batch.io.store import Store

    store = Store(str(out))
    engine = load_engine(1)
    manifest = json.loads((out / "pairs" / "_manifest.json").read_text())
    shared = total = 0
    reasoning: list[int] = []
    statuses: dict[str, int] = {}
    for shard in manifest["shards"]:
        pairs = pq.read_table(out / shard["path"], columns=["query", "passage"])
        prompts = fitted_prompts(engine, pairs["query"].to_pylist(), pairs["passage"].to_pylist())
        s, t = c.shared_prefix(prompts)
        shared, total = shared + s, total + t
        # Read as every reader does: through the shard's commit marker (data files are named
        # by attempt, so no file name can be guessed), checksum verified.
        scores = commit.committed_table(store, shard["id"], "scores")
        reasoning += scores["reasoning_tokens"].to_pylist()
        for status in scores["status"].to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    engine.close()
    n = len(reasoning)
    return {
        "run": str(out),
        "pairs": n,
        "prompt_tokens": total,
        "prompt_tokens_shared_with_previous": shared,
        "shared_prefix_fraction": round(shared / total, 4) if total else None,
        "mean_prompt_tokens": round(total / n, 2) if n else None,
        "mean_reasoning_tokens": round(sum(reasoning) / n, 2) if n else None,
        "p95_reasoning_tokens": c.p95(reasoning),
        "statuses": statuses,
        "forced_rate": round(statuses.get("forced", 0) / n, 5) if n else None,
        "fallback_rate": round(statuses.get("fallback", 0) / n, 5) if n else None,
        "note": "prompts re-tokenised in shard order, as a shard reaches the engine",
    }
