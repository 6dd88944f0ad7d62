"""GPU smoke benchmark: a few hundred demo pairs through the vLLM engine, one JSON line out.

    python benchmarks/gpu_smoke.py --model jhu-clsp/rank1-7b            # or a local folder
    python benchmarks/gpu_smoke.py --model jhu-clsp/rank1-32b-awq --quantization awq

Pairs come from ``jobs/data/demo-pairs.parquet`` (the toy world; the text is word salad to a
real model, which is fine for throughput and for the rates of each path), ordered by query so
a query's candidates are adjacent, as ``prepare`` lays out a shard. All pairs go through one
``engine.judge`` call, the way a scoring actor handles one shard.

Printed: pairs/s (judge wall time, engine start-up excluded), mean and p95 reasoning tokens,
mean prompt tokens, the share of complete/forced/fallback/error pairs, and the prefix-cache hit
rate. The hit rate is read from vLLM's own counters (``LLM.get_metrics()``:
``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries``, in tokens, both passes; stat
logging is switched on for this via ``disable_log_stats=False``) and, as a cross-check, from
``RequestOutput.num_cached_tokens`` summed over pass 1. ``--help`` works without vllm.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO_PAIRS = ROOT / "jobs" / "data" / "demo-pairs.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="HF model id or local/s3 path (Rank1 model)")
    p.add_argument("--pairs", type=int, default=300, help="number of pairs (default 300)")
    p.add_argument("--data", default=str(DEMO_PAIRS), help="Parquet pairs (query_id, query, ...)")
    p.add_argument("--revision", default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--quantization", default=None, help="e.g. awq (needs float16)")
    p.add_argument("--max-model-len", type=int, default=16000)
    p.add_argument("--max-tokens", type=int, default=8192, help="reasoning budget per pair")
    p.add_argument("--min-reserve", type=int, default=1024)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra vllm.LLM argument (value parsed as YAML), repeatable",
    )
    return p.parse_args(argv)


def load_pairs(path: str, n: int) -> list[tuple[str, str]]:
    """(query, passage) for the first ``n`` pairs in query order; toy data if no file."""
    if Path(path).is_file():
        import pyarrow.parquet as pq

        rows = pq.read_table(path, columns=["query_id", "query", "doc_id", "passage"]).to_pylist()
        rows.sort(key=lambda r: (r["query_id"], r["doc_id"]))
        return [(r["query"], r["passage"]) for r in rows[:n]]
    from rank1_batch.toy import data as toy_data

    examples = toy_data.make_examples(seed=0, n=n)
    return [(e.query, e.passage) for e in examples]


def prefix_cache_counters(llm: Any) -> tuple[float, float] | None:
    """(hit tokens, queried tokens) from vLLM's Prometheus counters, or None if unavailable."""
    try:
        metrics = llm.get_metrics()
    except Exception:
        return None
    hits = sum(m.value for m in metrics if m.name == "vllm:prefix_cache_hits")
    queries = sum(m.value for m in metrics if m.name == "vllm:prefix_cache_queries")
    return float(hits), float(queries)


def p95(values: list[int]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import yaml

    from rank1_batch.core import rank1
    from rank1_batch.engines import EngineOptions, JudgeRequest
    from rank1_batch.engines.vllm_engine import VLLMEngine

    engine_args: dict[str, Any] = {"disable_log_stats": False}
    for item in args.engine_arg:
        key, _, raw = item.partition("=")
        engine_args[key.strip()] = yaml.safe_load(raw)
    pairs = load_pairs(args.data, args.pairs)
    options = EngineOptions(
        max_model_len=args.max_model_len, max_tokens=args.max_tokens, min_reserve=args.min_reserve
    )
    start = time.perf_counter()
    engine = VLLMEngine(
        args.model,
        options,
        revision=args.revision,
        dtype=args.dtype,
        quantization=args.quantization,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        engine_args=engine_args,
        exit_on_fatal=False,
    )
    load_s = time.perf_counter() - start
    before = prefix_cache_counters(engine.llm)
    start = time.perf_counter()
    results = engine.judge([JudgeRequest(q, p) for q, p in pairs])
    judge_s = time.perf_counter() - start
    after = prefix_cache_counters(engine.llm)
    n = len(results)
    statuses = {s: sum(j.status == s for j in results) for s in rank1.STATUSES}
    reasoning = [j.reasoning_tokens for j in results if j.status != rank1.ERROR]
    prompts = [j.prompt_tokens for j in results]
    hit_rate = None
    if before is not None and after is not None and after[1] > before[1]:
        hit_rate = round((after[0] - before[0]) / (after[1] - before[1]), 4)
    submitted = engine.prompt_tokens_submitted
    report = {
        "model": args.model,
        "model_revision": engine.model_revision,
        "pairs": n,
        "engine_load_seconds": round(load_s, 2),
        "judge_seconds": round(judge_s, 2),
        "pairs_per_second": round(n / judge_s, 3) if judge_s else None,
        "reasoning_tokens_mean": round(statistics.fmean(reasoning), 1) if reasoning else 0.0,
        "reasoning_tokens_p95": p95(reasoning),
        "prompt_tokens_mean": round(statistics.fmean(prompts), 1) if prompts else 0.0,
        "generated_tokens_per_second": round(sum(reasoning) / judge_s, 1) if judge_s else None,
        "rates": {s: round(c / n, 4) if n else 0.0 for s, c in statuses.items()},
        "forced_rate": round(statuses[rank1.FORCED] / n, 4) if n else 0.0,
        "fallback_rate": round(statuses[rank1.FALLBACK] / n, 4) if n else 0.0,
        "truncated": sum(j.truncated for j in results),
        "prefix_cache_hit_rate": hit_rate,
        "prefix_cache_hit_rate_pass1": round(engine.prompt_tokens_cached / submitted, 4)
        if submitted
        else None,
        "settings": {
            "max_model_len": args.max_model_len,
            "max_tokens": args.max_tokens,
            "dtype": args.dtype,
            "quantization": args.quantization,
            "tensor_parallel_size": args.tensor_parallel_size,
            "engine_args": engine_args,
        },
    }
    engine.close()
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
