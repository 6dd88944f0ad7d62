"""Training, decoding and evaluation of the toy Rank1 model (see :mod:`rank1_batch.toy.model`).

A TOY: the model learns the synthetic topic world of :mod:`rank1_batch.toy.data` only.

Training uses the ordinary next-token loss over the whole sequence (prompt, reasoning, answer,
EOS); a loss on the completion alone was measured to stay at chance. One in five training
sequences has its reasoning cut at a random word and closed with ``\\n</think>``, which is what
Rank1's forced-answer pass sends after a reasoning budget runs out, so the toy model answers
that prompt sensibly too.

:func:`greedy_judge` is a small greedy decoder with a KV cache that stops on
``</think> true``/``</think> false``: enough for tests and the build report, independent of
the package's engines. torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rank1_batch.core.rank1 import forced_prompt
from rank1_batch.toy import TOY_MODEL_NAME
from rank1_batch.toy import data as toy_data
from rank1_batch.toy import tokenizer as toy_tokenizer

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WARMUP_STEPS = 100
CUT_FRACTION = 0.2  # share of training sequences with reasoning cut short (forced pass)
EVAL_EXAMPLES = 400
EVAL_QUERIES = 50
EVAL_CANDIDATES = 30
SHORT_BUDGET = 4  # new tokens for the "reasoning budget ran out" check


def training_ids(
    tok: Tokenizer, ex: toy_data.Example, rng: random.Random, eos_id: int
) -> list[int]:
    """Token ids of prompt + completion + EOS; sometimes with the reasoning cut short."""
    reasoning = ex.reasoning
    if rng.random() < CUT_FRACTION:
        words = reasoning.split(" ")
        reasoning = " ".join(words[: rng.randrange(len(words))])
    text = toy_tokenizer.toy_prompt(ex.query, ex.passage)
    text += toy_tokenizer.toy_completion(reasoning, ex.label)
    return [*tok.encode(text, add_special_tokens=False).ids, eos_id]


def _batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (-100 on padding)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
    return ids, labels


def train_and_save(
    tok: Tokenizer, folder: Path, *, seed: int, steps: int, threads: int
) -> dict[str, Any]:
    """Train a fresh ``Qwen2ForCausalLM`` on endless synthetic pairs; save it to ``folder``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    ids = toy_tokenizer.token_ids(tok)
    config = Qwen2Config(**toy_tokenizer.model_config_kwargs(tok.get_vocab_size(), ids["eos"]))
    model = Qwen2ForCausalLM(config).float()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    rng = random.Random(seed)
    model.train()
    started = time.perf_counter()
    losses: list[float] = []
    for _ in range(steps):
        rows = [
            training_ids(tok, toy_data.make_example(rng), rng, ids["eos"])
            for _ in range(BATCH_SIZE)
        ]
        input_ids, labels = _batch(rows, ids["eos"])
        loss = model(input_ids=input_ids, attention_mask=labels != -100, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    train_seconds = time.perf_counter() - started
    model.eval()
    model.config.architectures = ["Qwen2ForCausalLM"]
    model.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=ids["eos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["eos"],
        do_sample=False,
    ).save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    tail = losses[-50:]
    return {
        "model": TOY_MODEL_NAME,
        "seed": seed,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "threads": threads,
        "train_seconds": round(train_seconds, 1),
        "final_loss": round(sum(tail) / len(tail), 4),
        "params": n_params,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "heads": config.num_attention_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "vocab": tok.get_vocab_size(),
        "token_ids": ids,
    }


@dataclass(frozen=True)
class ToyJudgement:
    """One greedy pass: generated text (special tokens kept) and the answer's logprobs."""

    text: str
    new_tokens: int
    complete: bool  # ended with ``</think> true``/``</think> false``
    lp_true: float  # at the last generated position
    lp_false: float

    @property
    def score(self) -> float:
        return 1.0 / (1.0 + math.exp(self.lp_false - self.lp_true))


def load(folder: str | Path) -> tuple[Any, Tokenizer]:
    """The model (eval mode) and the raw ``tokenizers`` tokenizer of a toy model folder."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.eval()
    return model, Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def greedy_judge(
    model: Any,
    tok: Tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 256,
) -> list[ToyJudgement]:
    """Greedy decoding with Rank1's stop rule; logprobs of the answers at the last position."""
    import torch

    ids = toy_tokenizer.token_ids(tok)
    # transformers 5.x renamed ``past_key_values`` to ``cache`` (argument and output field).
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    out: list[ToyJudgement] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        enc = [e.ids for e in tok.encode_batch(list(chunk), add_special_tokens=False)]
        input_ids, mask = _left_pad(enc, ids["eos"])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        n = len(chunk)
        generated: list[list[int]] = [[] for _ in range(n)]
        last_lp = torch.zeros((n, 2))
        done = torch.zeros(n, dtype=torch.bool)
        complete = torch.zeros(n, dtype=torch.bool)
        past = None
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                res = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **{cache_arg: past},
                )
                past = getattr(res, cache_arg)
                logprobs = torch.log_softmax(res.logits[:, -1].float(), dim=-1)
                nxt = logprobs.argmax(-1)
                for i in range(n):
                    if done[i]:
                        continue
                    token = int(nxt[i])
                    prev = generated[i][-1] if generated[i] else None
                    generated[i].append(token)
                    last_lp[i, 0] = logprobs[i, ids["true"]]
                    last_lp[i, 1] = logprobs[i, ids["false"]]
                    if prev == ids["think_close"] and token in (ids["true"], ids["false"]):
                        done[i] = complete[i] = True
                    elif token == ids["eos"]:
                        done[i] = True
                if bool(done.all()):
                    break
                input_ids = nxt.unsqueeze(-1)
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], dim=-1)
                positions = positions[:, -1:] + 1
        for i in range(n):
            out.append(
                ToyJudgement(
                    text=tok.decode(generated[i], skip_special_tokens=False),
                    new_tokens=len(generated[i]),
                    complete=bool(complete[i]),
                    lp_true=float(last_lp[i, 0]),
                    lp_false=float(last_lp[i, 1]),
                )
            )
    return out


def answer_logprobs(
    model: Any, tok: Tokenizer, prompts: Sequence[str], *, batch_size: int = 256
) -> list[tuple[float, float]]:
    """``(logP(" true"), logP(" false"))`` for the token after each prompt (forced pass)."""
    import torch

    ids = toy_tokenizer.token_ids(tok)
    out: list[tuple[float, float]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        enc = [e.ids for e in tok.encode_batch(chunk, add_special_tokens=False)]
        input_ids, mask = _left_pad(enc, ids["eos"])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits
        lp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        out.extend((float(r[ids["true"]]), float(r[ids["false"]])) for r in lp)
    return out


def rank1_scores(
    model: Any, tok: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 64
) -> tuple[list[float], list[ToyJudgement]]:
    """Rank1's two passes: greedy reasoning, then a forced answer where it did not finish."""
    judged = greedy_judge(model, tok, prompts, max_new_tokens=max_new_tokens)
    scores = [j.score for j in judged]
    todo = [i for i, j in enumerate(judged) if not j.complete]
    forced = [forced_prompt(prompts[i], judged[i].text) for i in todo]
    for i, (lt, lf) in zip(todo, answer_logprobs(model, tok, forced), strict=True):
        scores[i] = 1.0 / (1.0 + math.exp(lf - lt))
    return scores, judged


def evaluate_folder(folder: str | Path, *, seed: int) -> dict[str, Any]:
    """Held-out checks: answer accuracy, nDCG@10 vs the shuffled order, short-budget answers."""
    import torch

    model, tok = load(folder)
    started = time.perf_counter()
    examples = toy_data.make_examples(seed + 2, EVAL_EXAMPLES)
    prompts = [toy_tokenizer.toy_prompt(e.query, e.passage) for e in examples]
    judged = greedy_judge(model, tok, prompts)
    correct = [
        j.complete and (j.score > 0.5) == e.label for j, e in zip(judged, examples, strict=True)
    ]
    reasoning_ok = [
        j.text.startswith("\n" + e.reasoning) for j, e in zip(judged, examples, strict=True)
    ]

    coll = toy_data.make_ir_collection(seed + 3, EVAL_QUERIES, EVAL_CANDIDATES)
    ir_prompts = [toy_tokenizer.toy_prompt(c.query, c.passage) for c in coll.candidates]
    scores, ir_judged = rank1_scores(model, tok, ir_prompts)
    by_pair = {(c.query_id, c.doc_id): s for c, s in zip(coll.candidates, scores, strict=True)}
    ndcg_model = toy_data.ndcg_at_k(toy_data.rank_by_score(coll, by_pair), coll.qrels)
    ndcg_first = toy_data.ndcg_at_k(toy_data.first_stage_ranking(coll), coll.qrels)

    short = greedy_judge(model, tok, prompts, max_new_tokens=SHORT_BUDGET)
    forced = [forced_prompt(p, j.text) for p, j in zip(prompts, short, strict=True)]
    forced_lp = answer_logprobs(model, tok, forced)
    forced_mass = [math.exp(lt) + math.exp(lf) for lt, lf in forced_lp]
    forced_right = [(lt > lf) == e.label for (lt, lf), e in zip(forced_lp, examples, strict=True)]
    return {
        "eval_seconds": round(time.perf_counter() - started, 1),
        "heldout_accuracy": sum(correct) / len(correct),
        "heldout_reasoning_exact": sum(reasoning_ok) / len(reasoning_ok),
        "reasoning_tokens_mean": round(sum(j.new_tokens for j in judged) / len(judged), 2),
        "ndcg10_model": round(ndcg_model, 4),
        "ndcg10_shuffled": round(ndcg_first, 4),
        "ndcg10_lift": round(ndcg_model - ndcg_first, 4),
        "ir_forced_share": sum(not j.complete for j in ir_judged) / len(ir_judged),
        "short_budget_tokens": SHORT_BUDGET,
        "short_budget_complete_share": sum(j.complete for j in short) / len(short),
        "forced_answer_mass_mean": round(sum(forced_mass) / len(forced_mass), 4),
        "forced_answer_accuracy": sum(forced_right) / len(forced_right),
        "torch_threads": torch.get_num_threads(),
    }
