"""The TREC + corpus conversion at MS MARCO's shape: driver and worker peak RSS, wall time
against a plain pyarrow read of the same files, and the conversion before the join.

    python benchmarks/convert_cases.py [--sizes 1m,10m] [--layouts beir,tsv] [--rounds 2]
                                       [--old /path/to/worktree-of-the-code-before]

Writes, per size, a synthetic input under ``--workdir`` (deleted after): a TREC run grouped
by query, 1,000 documents a query (MS MARCO dev's BM25 top-1000: 1M lines are 1,000 queries,
10M lines 10,000), document ids drawn uniformly from the corpus; a corpus of 1M (8.8M) passages
of about 55 words (normal, sd 20, 10..200 words: about 330 characters) in the BEIR layout
(corpus.jsonl + queries.jsonl) and as MS MARCO TSVs (collection.tsv + queries.tsv). Each
measurement is a fresh child process (benchmarks/convert_child.py); new and pyarrow alternate
``--rounds`` times (medians); ``old`` runs once at the sizes in ``--old-sizes``. A small case
first checks the rows and reasons of the new conversion against the old one (as sets).
Prints JSON and writes benchmarks/results/convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1m": (1_000_000, 1_000_000), "10m": (10_000_000, 8_800_000), "small": (6_000, 3_000)}
DOCS_PER_QUERY = 1000


def passages(n_pool: int, rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, k)) for k in rng.integers(2, 9, 30_000)]
    lengths = np.clip(rng.normal(55, 20, n_pool).astype(int), 10, 200)
    return [" ".join(vocab[i] for i in rng.integers(0, len(vocab), k)) for k in lengths]


def write_case(folder: Path, lines: int, n_docs: int, seed: int = 0) -> dict[str, str]:
    """The run, BEIR files and MS MARCO TSVs (a pool of 20,000 passages reused under distinct
    ids: realistic lengths at a fraction of the generation time)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pool = passages(20_000, rng)
    n_queries = max(1, lines // DOCS_PER_QUERY)
    chunk = 200_000
    with open(folder / "collection.tsv", "w") as tsv, open(folder / "corpus.jsonl", "w") as js:
        for start in range(0, n_docs, chunk):
            ids = range(start, min(start + chunk, n_docs))
            tsv.write("".join(f"{i}\t{pool[i % len(pool)]}\n" for i in ids))
            js.write(
                "".join(
                    f'{{"_id": "{i}", "title": "", "text": "{pool[i % len(pool)]}"}}\n' for i in ids
                )
            )
    qtext = [f"what is the meaning of w{q} in {q % 97}" for q in range(n_queries)]
    with open(folder / "queries.tsv", "w") as fh:
        fh.write("".join(f"{1_000_000 + q}\t{t}\n" for q, t in enumerate(qtext)))
    with open(folder / "queries.jsonl", "w") as fh:
        fh.write(
            "".join(f'{{"_id": "{1_000_000 + q}", "text": "{t}"}}\n' for q, t in enumerate(qtext))
        )
    with open(folder / "run.trec", "w") as fh:
        per = lines // n_queries
        for q0 in range(0, n_queries, 1000):
            out = []
            for q in range(q0, min(q0 + 1000, n_queries)):
                docs = rng.integers(0, n_docs + n_docs // 100, per)  # ~1% not in the corpus
                out += [f"{1_000_000 + q} Q0 {d} {r + 1} {30 - r * 0.01:.2f} bm25\n"
                        for r, d in enumerate(docs.tolist())]  # fmt: skip
            fh.write("".join(out))
    return {"folder": str(folder)}


def child(mode: str, case: dict[str, str], old: str | None) -> dict[str, object]:
    path = Path(case["workdir"]) / "case.json"
    path.write_text(json.dumps(case))
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    env["PYTHONPATH"] = old if mode == "old" and old else str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "convert_child.py"), mode, str(path)],
        capture_output=True, text=True, env=env, timeout=7200,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"{mode}: {proc.stderr[-3000:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def layout_case(folder: str, layout: str, workdir: str) -> dict[str, str]:
    f = Path(folder)
    names = (
        ("corpus.jsonl", "queries.jsonl") if layout == "beir" else ("collection.tsv", "queries.tsv")
    )
    corpus, queries = str(f / names[0]), str(f / names[1])
    return {"run": str(f / "run.trec"), "corpus": corpus, "queries": queries,
            "corpus_file": corpus, "queries_file": queries, "workdir": workdir}  # fmt: skip


def same_rows(case: dict[str, str], old: str) -> bool:
    """The new and the old conversion of ``case``: equal rows (all fields) as sets."""
    script = (
        "import json, sys, pyarrow as pa\n"
        "from rank1_batch.job.convert import iter_run_pairs\n"
        "from rank1_batch.job.spec import InputSpec\n"
        "c = json.loads(sys.argv[1])\n"
        "s = InputSpec(path=c['run'], format='trec', corpus=c['corpus'], queries=c['queries'])\n"
        "t = pa.concat_tables(list(iter_run_pairs(s)))\n"
        "print(json.dumps(sorted(map(repr, (tuple(r.values()) for r in t.to_pylist())))))\n"
    )
    got = []
    for tree in (str(ROOT), old):
        env = {**os.environ, "PYTHONPATH": tree}
        proc = subprocess.run([sys.executable, "-c", script, json.dumps(case)], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        got.append(json.loads(proc.stdout))
    return got[0] == got[1] and len(got[0]) > 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1m,10m")
    ap.add_argument("--layouts", default="beir,tsv")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--old", default=None)
    ap.add_argument("--old-sizes", default="1m")
    ap.add_argument("--workdir", default="/tmp/rank1-convert-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "convert.json"))
    args = ap.parse_args()
    work = Path(args.workdir)
    report: dict[str, object] = {"docs_per_query": DOCS_PER_QUERY, "cases": []}
    try:
        if args.old:
            small = write_case(work / "small", *SIZES["small"])["folder"]
            report["same_rows_as_old"] = {
                layout: same_rows(layout_case(small, layout, str(work)), args.old)
                for layout in args.layouts.split(",")
            }
        for size in args.sizes.split(","):
            lines, docs = SIZES[size]
            folder = write_case(work / size, lines, docs)["folder"]
            sizes_mib = {p.name: round(p.stat().st_size / 2**20, 1) for p in Path(folder).iterdir()}
            for layout in args.layouts.split(","):
                case = layout_case(folder, layout, str(work))
                runs: dict[str, list[dict[str, object]]] = {"new": [], "pyarrow": []}
                for _ in range(args.rounds):
                    for mode in ("new", "pyarrow"):
                        runs[mode].append(child(mode, case, args.old))
                        print(json.dumps({"size": size, "layout": layout, **runs[mode][-1]}),
                              file=sys.stderr, flush=True)  # fmt: skip
                if args.old and size in args.old_sizes.split(","):
                    runs["old"] = [child("old", case, args.old)]
                entry: dict[str, object] = {"size": size, "run_lines": lines, "passages": docs,
                                            "layout": layout, "files_mib": sizes_mib}  # fmt: skip
                for mode, rs in runs.items():
                    entry[mode] = {
                        k: statistics.median(float(r[k]) for r in rs)  # type: ignore[arg-type]
                        for k in rs[0]
                        if isinstance(rs[0][k], (int, float))
                    }
                new, plain = entry["new"], entry["pyarrow"]
                entry["wall_ratio_new_over_pyarrow"] = round(
                    new["wall_s"] / plain["wall_s"],
                    2,  # type: ignore[index]
                )
                report["cases"].append(entry)  # type: ignore[attr-defined]
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
