"""The plain side of the vLLM wall-clock benchmark (``vllm_wall_cases.py``): what a user
writes instead of rank1-batch, the reference's recipe (``orionw/rank1``, ``rank1.py``) on
``vllm.LLM``: one ``generate`` over every prompt with the reference's sampling (greedy, the
budget, stop on ``</think> true`` / ``</think> false``, top-20 logprobs on every token), then
one forced pass (``"\\n</think>"`` appended to the cleaned reasoning, one token restricted to
the two answer ids) over the prompts whose last position lacks either answer.

Prompts are built with the project's template (:mod:`rank1_batch.core.rank1`, the reference's
text), so both sides feed the engine the same token ids. A long-lived child: it builds its
engine once, then serves commands (one JSON line each on stdin) through
:func:`vllm_wall_proto.serve`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_wall_proto as proto


def score_plain(
    llm: Any, pairs: list[dict[str, str]], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """The reference's two passes over ``pairs``: ``{status, score, prompt_tokens,
    reasoning_tokens}`` per pair, in order, and the number of requests made."""
    from vllm import SamplingParams

    from rank1_batch.core import rank1

    tok = llm.get_tokenizer()
    true_id = tok.encode(rank1.TRUE_TEXT, add_special_tokens=False)[0]
    false_id = tok.encode(rank1.FALSE_TEXT, add_special_tokens=False)[0]
    prompts = [rank1.build_prompt(p["query"], p["passage"]) for p in pairs]
    reasoning = SamplingParams(
        temperature=0.0,
        max_tokens=budget,
        stop=list(rank1.STOP_STRINGS),
        logprobs=rank1.TOP_LOGPROBS,
        skip_special_tokens=False,
    )
    outputs = llm.generate(prompts, reasoning, use_tqdm=False)
    rows: list[dict[str, Any]] = []
    forced: list[int] = []
    for i, out in enumerate(outputs):
        comp = out.outputs[0]
        top = comp.logprobs[-1] if comp.logprobs else {}
        row = {"prompt_tokens": len(out.prompt_token_ids), "reasoning_tokens": len(comp.token_ids)}
        if true_id in top and false_id in top:
            score, _ = rank1.score_from_logprobs(top[true_id].logprob, top[false_id].logprob)
            row.update(status=rank1.COMPLETE, score=score)
        else:
            forced.append(i)
        rows.append(row)
    if forced:
        answer = SamplingParams(
            temperature=0.0,
            max_tokens=1,
            logprobs=rank1.TOP_LOGPROBS,
            allowed_token_ids=[true_id, false_id],
            skip_special_tokens=False,
        )
        texts = [rank1.forced_prompt(prompts[i], outputs[i].outputs[0].text) for i in forced]
        for i, out in zip(forced, llm.generate(texts, answer, use_tqdm=False), strict=True):
            logprobs = out.outputs[0].logprobs
            top = logprobs[-1] if logprobs else {}
            if true_id in top and false_id in top:
                score, _ = rank1.score_from_logprobs(top[true_id].logprob, top[false_id].logprob)
                rows[i].update(status=rank1.FORCED, score=score)
            else:
                rows[i].update(status=rank1.FALLBACK, score=0.5)
    return rows, len(pairs) + len(forced)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--settings", required=True, help="JSON file of the engine settings")
    args = p.parse_args()
    s = json.loads(Path(args.settings).read_text())
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(s["kv_cache_gib"])
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")
    from vllm import LLM

    start = time.perf_counter()
    # The project's engine options, written out as a user would.
    llm = LLM(
        model=s["model"],
        dtype="float32",
        max_model_len=s["max_model_len"],
        max_num_seqs=s["max_num_seqs"],
        max_num_batched_tokens=s["max_num_batched_tokens"],
        enforce_eager=True,
        enable_prefix_caching=True,
        # As the reference's vLLM 0.7.2: forced-pass logprobs after allowed_token_ids masking.
        logprobs_mode="processed_logprobs",
        disable_log_stats=True,
        distributed_executor_backend="uni",
    )
    startup = time.perf_counter() - start

    proto.serve_sync(
        startup_s=startup,
        config=proto.engine_config(llm.llm_engine.vllm_config),
        reset=llm.reset_prefix_cache,
        score=lambda pairs, budget: score_plain(llm, pairs, budget),
    )


if __name__ == "__main__":
    main()
