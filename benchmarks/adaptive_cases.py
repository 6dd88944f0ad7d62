"""Case 8: the cost/quality knob of ``reasoning.mode`` — reasoning tokens spent and nDCG@10
for ``think``, ``direct`` and ``cascade`` at three settings, all from one run.

Every setting is a real ``rank1-batch run`` of the same job (``--set reasoning.mode=...``)
into its own output folder, then ``rank1_batch.outputs.evaluate`` (ir_measures, as ``rank1-batch
eval``) against the qrels. Tokens are the ``_SUCCESS.json`` totals of that run.

    # the toy demo (CPU, minutes): a TOY world, not a measurement of Rank1's quality
    python benchmarks/adaptive_cases.py --queries 100
    # the real thing on a GPU (inputs prepared as jobs/bright-biology-cascade.yaml says)
    python benchmarks/adaptive_cases.py --job jobs/bright-biology-cascade.yaml \\
        --qrels bright/biology/qrels.trec --work /scratch/bright-modes

Prints one JSON document (``settings``: one row per setting) and a Markdown table (stderr).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common as c

# (label, --set overrides): the reference, no reasoning, and three cascades.
SETTINGS: list[tuple[str, list[str]]] = [
    ("think", ["reasoning.mode=think"]),
    ("direct", ["reasoning.mode=direct"]),
    (
        "cascade top_k=3",
        ["reasoning.mode=cascade", "reasoning.cascade.top_k=3", "reasoning.cascade.margin=0"],
    ),
    (
        "cascade top_k=10",
        ["reasoning.mode=cascade", "reasoning.cascade.top_k=10", "reasoning.cascade.margin=0"],
    ),
    (
        "cascade top_k=3 margin=0.3",
        ["reasoning.mode=cascade", "reasoning.cascade.top_k=3", "reasoning.cascade.margin=0.3"],
    ),
]
DEMO_JOB = c.ROOT / "jobs" / "demo.yaml"
DEMO_QRELS = c.ROOT / "jobs" / "data" / "demo.qrels"
DEMO_PAIRS = c.ROOT / "jobs" / "data" / "demo-pairs.parquet"


def summary_row(label: str, success: dict[str, Any], ndcg: float, wall: float) -> dict[str, Any]:
    """One table row from a finished run's ``_SUCCESS.json`` and its nDCG@10."""
    statuses = success["statuses"]
    scored = success["scored"]
    unreasoned = statuses.get("direct", 0)
    return {
        "setting": label,
        "pairs": scored,
        "pairs_decided_without_reasoning": unreasoned,
        "reasoning_tokens": success["reasoning_tokens"],
        "reasoning_tokens_per_pair": round(success["reasoning_tokens"] / scored, 2)
        if scored
        else None,
        "prompt_tokens": success["prompt_tokens"],
        "ndcg@10": round(ndcg, 4),
        "score_seconds": round(success["score_seconds"], 1),
        "wall_seconds": round(wall, 1),
    }


# What each row keeps of `compare`'s result against think.
SIGNIFICANCE = ("delta", "p_randomization", "p_randomization_corrected", "wins", "ties", "losses")


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: tokens relative to ``think`` (the first row), nDCG@10, and each
    setting's nDCG@10 difference to think with its Holm-corrected randomization p-value
    (``rank1-batch compare``)."""
    base = rows[0]["reasoning_tokens"] or 1
    lines = [
        "| setting | reasoning tokens | vs think | tokens/pair | nDCG@10 | Δ vs think | p (Holm) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = f"{100 * r['reasoning_tokens'] / base:.0f}%"
        vs = r.get("vs_think")
        delta = f"{vs['delta']:+.4f}" if vs else "–"
        p = f"{vs['p_randomization_corrected']:.3g}" if vs else "–"
        lines.append(
            f"| {r['setting']} | {r['reasoning_tokens']:,} | {share} | "
            f"{r['reasoning_tokens_per_pair']} | {r['ndcg@10']:.4f} | {delta} | {p} |"
        )
    return "\n".join(lines)


def subset(queries: int, work: Path) -> Path:
    """The first ``queries`` queries of the demo pairs (30 candidates each)."""
    import pyarrow.parquet as pq

    table = pq.read_table(DEMO_PAIRS)
    path = work / f"demo-{queries}q.parquet"
    pq.write_table(table.slice(0, queries * 30), path)
    return path


def trade_off(
    job: Path,
    qrels: Path,
    work: Path,
    extra: list[str] | None = None,
    settings: list[tuple[str, list[str]]] = SETTINGS,
) -> dict[str, Any]:
    """Run ``job`` once per setting into ``work/<n>`` and evaluate each against ``qrels``."""
    from rank1_batch.io.store import Store
    from rank1_batch.outputs import compare, evaluate

    rows, outs = [], []
    for n, (label, overrides) in enumerate(settings):
        out = work / f"{n}-{label.replace(' ', '_').replace('=', '')}"
        sets = [f"--set={o}" for o in [*(extra or []), *overrides]]
        wall = c.run_cli(["run", str(job), "--output", str(out), *sets])["wall_s"]
        store = Store(str(out))
        report = evaluate.evaluate_output(store, str(qrels), ["nDCG@10"])
        ndcg = report["runs"]["reranked"]["aggregate"]["nDCG@10"]
        rows.append(summary_row(label, store.read_json("_SUCCESS.json"), ndcg, wall))
        outs.append(str(out))
        print(f"[adaptive] {label}: {rows[-1]}", file=sys.stderr, flush=True)
    # Each setting against think, as `rank1-batch compare` reports it: paired randomization
    # test over the same queries, Holm-corrected across the settings.
    against = compare.compare(outs, str(qrels), ["nDCG@10"], test="randomization")
    for row, result in zip(rows[1:], against["results"]["nDCG@10"][1:], strict=True):
        row["vs_think"] = {k: result[k] for k in SIGNIFICANCE}
    return {
        "job": str(job), "qrels": str(qrels), "overrides": extra or [], "settings": rows,
        "compare": {k: against[k] for k in ("convention", "queries", "test", "correction",
                                             "permutations", "seed")},
    }  # fmt: skip


def demo(queries: int, work: Path, settings: int | None = None) -> dict[str, Any]:
    """The trade-off on the toy demo world (``queries`` of its 100 queries; the first
    ``settings`` of :data:`SETTINGS`, default all)."""
    pairs = subset(queries, work) if queries < 100 else DEMO_PAIRS
    chosen = SETTINGS[:settings] if settings else SETTINGS
    result = trade_off(DEMO_JOB, DEMO_QRELS, work, [f"input.path={pairs}"], chosen)
    result["world"] = (
        "TOY: the synthetic demo world and the toy model (rank1_batch/toy), "
        f"{queries} queries x 30 candidates; not a measurement of Rank1's quality"
    )
    result["markdown"] = markdown(result["settings"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--job", help="job file (default: the toy demo)")
    p.add_argument("--qrels", help="qrels for --job (TREC qrels)")
    p.add_argument("--queries", type=int, default=100, help="demo queries to use (max 100)")
    p.add_argument("--work", help="folder for the outputs (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], help="extra override for every run")
    p.add_argument("--out", help="also write the JSON document here")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="rank1-modes-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.job:
        if not args.qrels:
            p.error("--job needs --qrels")
        doc = trade_off(Path(args.job), Path(args.qrels), work, args.set)
        doc["markdown"] = markdown(doc["settings"])
    else:
        doc = demo(min(args.queries, 100), work)
    doc |= {"machine": c.machine(), "started_at": started, "work": str(work)}
    print(doc["markdown"], file=sys.stderr)
    c.emit(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
