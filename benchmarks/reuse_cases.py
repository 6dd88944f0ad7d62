"""Reuse benchmark: bytes read and wall time of the reuse build, today's tree against this one.

    python benchmarks/reuse_cases.py --pairs 1000000 --baseline /tmp/old-tree \\
        --out benchmarks/results/reuse.json

Builds a committed output of ``--pairs`` pairs (query-grouped, 100 candidates a query,
passages of ~40 words) with the instant test-double engine through the local loop, each
trace ~800 characters of varied words (``InstantTestEngine`` says ``"."``; Rank1's reasoning
is hundreds of tokens, and traces are what reuse used to move). Then two jobs that each
match 5% of it, plus as many new pairs: ``concentrated`` (the pairs of the first 5% of the
source's shards: a job sharing some queries) and ``scattered`` (every 20th source pair).

Each reuse build runs in a child process (``--child``) of one tree (``PYTHONPATH``), on a
local Ray of 2 CPUs, rounds alternating which tree runs first; medians are reported. Bytes
are counted through the Store in the driver and in every Ray worker (a worker setup hook
wraps ``Store.read_bytes`` and ``Store.read_parquet``; a column read counts the Parquet
footer and the chunks of the columns asked for), split by output (source/target) and by
folder (the first build's reads). Each child then runs the same build again in its Ray
(``wall_again_s``: its worker processes already started, nearer a run's, whose reuse build
follows prepare on the same Ray) and hashes the rows it wrote to ``reuse/``: both trees must agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COUNT_ENV = "REUSE_BENCH_COUNT_DIR"
OBJECT_STORE = 2 << 30  # other engineers' benchmarks share the machine's memory


# -- byte counting (driver and Ray workers) -----------------------------------------------
def install_counter() -> None:
    """Wrap the Store's two readers to log (uri, path, bytes) per read to a per-process file."""
    where = os.environ.get(COUNT_ENV)
    if not where:
        return
    import pyarrow.parquet as pq

    from rank1_batch.io.store import Store

    if getattr(Store, "_counted", False):
        return
    read_bytes, read_parquet = Store.read_bytes, Store.read_parquet

    def log(store: Any, rel: str, n: int) -> None:
        line = json.dumps({"uri": store.uri, "rel": rel, "bytes": n})
        with open(os.path.join(where, f"{os.getpid()}.jsonl"), "a") as fh:
            fh.write(line + "\n")

    def counted_bytes(self: Any, rel: str) -> bytes:
        data: bytes = read_bytes(self, rel)
        log(self, rel, len(data))
        return data

    def counted_parquet(self: Any, rel: str, columns: Any = None) -> Any:
        table = read_parquet(self, rel, columns)
        if columns is not None:  # (None reads through read_bytes, counted there)
            meta = pq.ParquetFile(self.path(rel)).metadata
            n = meta.serialized_size + 8
            for g in range(meta.num_row_groups):
                rg = meta.row_group(g)
                for i in range(rg.num_columns):
                    if rg.column(i).path_in_schema in columns:
                        n += rg.column(i).total_compressed_size
            log(self, rel, n)
        return table

    Store.read_bytes, Store.read_parquet = counted_bytes, counted_parquet
    Store._counted = True  # type: ignore[attr-defined]


def tally(where: Path, source: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"source": {}, "target": {}}
    for f in where.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            side = "source" if r["uri"].rstrip("/") == source.rstrip("/") else "target"
            folder = r["rel"].split("/", 1)[0] if "/" in r["rel"] else r["rel"]
            out[side][folder] = out[side].get(folder, 0) + r["bytes"]
    return out


# -- the child: one reuse build -------------------------------------------------------------
def child(job: str, source: str, counts: str) -> None:
    import ray

    os.environ[COUNT_ENV] = counts
    ray.init(
        num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
        object_store_memory=OBJECT_STORE,
        runtime_env={"worker_process_setup_hook": "reuse_cases.install_counter",
                     "env_vars": {COUNT_ENV: counts}},
    )  # fmt: skip
    install_counter()
    import pyarrow.parquet as pq

    from rank1_batch.io import layout
    from rank1_batch.io.store import Store
    from rank1_batch.job.load import load_job
    from rank1_batch.pipeline import reuse, reuse_ready

    spec = load_job(job)
    store = Store(spec.output.path)
    shards = [s["id"] for s in store.read_json(layout.MANIFEST)["shards"]]
    for f in Path(counts).glob("*.jsonl"):
        f.unlink()  # the reads above are set-up, not the build
    start = time.perf_counter()
    matched = reuse_ready.build_reuse(spec, store, shards)
    wall = time.perf_counter() - start
    time.sleep(1)  # let workers' last log lines land
    counted = tally(Path(counts), source)  # the first build's reads only
    # The same build again in this Ray: its worker processes already started, as a run's are
    # when its reuse build follows prepare (the first build's wall includes Ray Data's start).
    start = time.perf_counter()
    again = reuse_ready.build_reuse(spec, store, shards)
    wall_again = time.perf_counter() - start
    assert again == matched, "the second build matched other rows"
    digest = hashlib.sha256()
    for shard in sorted(matched):
        rows = pq.read_table(store.path(reuse.reuse_path(shard))).to_pylist()
        digest.update(json.dumps([shard, rows], default=str, sort_keys=True).encode())
    got = {"wall_s": round(wall, 3), "wall_again_s": round(wall_again, 3)}
    got.update(matched=sum(matched.values()), rows_sha256=digest.hexdigest(), bytes=counted)
    print(json.dumps(got))
    ray.shutdown()


# -- building the outputs -----------------------------------------------------------------
def words_text(n_chars: int, seed: int) -> str:
    import random

    rnd = random.Random(seed)
    vocab = [
        "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
        for _ in range(3000)
    ]
    out, size = [], 0
    while size < n_chars:
        w = rnd.choice(vocab)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


class TracedEngine:
    """The instant test double, with a trace of 400-1,200 characters of varied words."""

    def __init__(self) -> None:
        sys.path.insert(0, str(HERE))
        from instant_engine import InstantTestEngine

        self.inner = InstantTestEngine()
        self.model_id, self.model_revision = self.inner.model_id, self.inner.model_revision
        self.text = words_text(4_000_000, 1)

    def judge(self, requests: list[Any]) -> list[Any]:
        import dataclasses
        import zlib

        out = []
        for r, j in zip(requests, self.inner.judge(requests), strict=True):
            h = zlib.crc32(r.passage.encode())
            at, n = h % 3_000_000, 400 + h % 800
            out.append(
                dataclasses.replace(j, reasoning=self.text[at : at + n], finish_reason="stop")
            )
        return out

    def close(self) -> None:
        pass


def job_file(work: Path, name: str, data: Path, reuse: list[str]) -> Path:
    import yaml

    job = {
        "name": name,
        "input": {"path": str(data), "format": "pairs"},
        "output": {"path": str(work / name), "shard_size": 2000},
        "model": {"name": "toy", "engine": "transformers", "device": "cpu"},
        "reasoning": {"max_tokens": 64, "min_reserve": 64},
        "compute": {"workers": 1, "num_cpus": 2},
        "reuse": reuse,
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def prepared(job: Path) -> tuple[Any, Any, list[str]]:
    from rank1_batch.io.store import Store
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.load import load_job
    from rank1_batch.job.prepare import prepare
    from rank1_batch.job.record import claim_output, job_record
    from rank1_batch.pipeline.pool import init_ray

    spec = load_job(str(job))
    store = Store(spec.output.path)
    files = scan_inputs(spec.input)
    claim_output(store, job_record(spec, listing(files)))
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE)
    init_ray(spec)
    return spec, store, [s["id"] for s in prepare(spec, store, files)["shards"]]


def build(work: Path, n_pairs: int) -> dict[str, Any]:
    """The source output and the two target jobs; their sizes and build times."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rank1_batch.io import layout
    from rank1_batch.pipeline.local import score_local

    start = time.perf_counter()
    text = words_text(3_000_000, 2)
    n_q = n_pairs // 100
    qid = [f"q{i // 100}" for i in range(n_pairs)]
    did = [f"d{i}" for i in range(n_pairs)]
    query = [f"what about {text[(i * 7919) % 2_000_000 :][:40]}" for i in range(n_q)]
    passage = [text[(i * 104729) % 2_900_000 :][:250] for i in range(n_pairs)]
    table = pa.table({"query_id": qid, "query": [query[i // 100] for i in range(n_pairs)],
                      "doc_id": did, "passage": passage})  # fmt: skip
    pq.write_table(table, work / "source.parquet")
    spec, store, shards = prepared(job_file(work, "source", work / "source.parquet", []))
    score_local(spec, store, shards, TracedEngine())
    built = {"source_build_s": round(time.perf_counter() - start, 1), "source_shards": len(shards)}
    sizes: dict[str, int] = {}
    for folder in ("pairs", "scores", "traces"):
        sizes[folder] = sum(store.sizes(folder).values())
    built["source_bytes"] = sizes

    pairs = pa.concat_tables(
        store.read_parquet(layout.pairs_path(s), columns=["query_id", "query", "doc_id", "passage"])
        for s in shards
    )
    per_shard = [
        store.read_parquet(layout.pairs_path(s), columns=["doc_id"]).num_rows for s in shards
    ]
    first = sum(per_shard[: max(1, len(shards) // 20)])
    picks = {
        "concentrated": pa.array(range(first)),
        "scattered": pa.array(range(0, len(pairs), 20)),
    }
    for name, rows in picks.items():
        same = pairs.take(rows)
        new = same.set_column(2, "doc_id", pc.binary_join_element_wise("new-", same["doc_id"], ""))
        new = new.set_column(3, "passage", pc.binary_join_element_wise(same["passage"], " new", ""))
        pq.write_table(pa.concat_tables([same, new]), work / f"{name}.parquet")
        prepared(job_file(work, name, work / f"{name}.parquet", [str(work / "source")]))
        built[f"{name}_matching_pairs"] = len(same)
    return built


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=3, metavar=("JOB", "SOURCE", "COUNTS"))
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--baseline", help="a checkout of the tree to compare with (e.g. main)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", help="keep the outputs here (default: a temporary folder)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="reuse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"command": " ".join(sys.argv), "pairs": args.pairs}
    built = work / "build.json"  # a kept --work folder is measured again, not built again
    if not built.exists():
        built.write_text(json.dumps(build(work, args.pairs)))
    result["build"] = json.loads(built.read_text())
    import ray

    ray.shutdown()
    trees = {"new": str(ROOT)}
    if args.baseline:
        trees["old"] = args.baseline
    for case in ("concentrated", "scattered"):
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in trees}
        for r in range(args.repeats):
            for tree in list(trees)[:: 1 if r % 2 else -1]:
                counts = Path(tempfile.mkdtemp(prefix="counts-", dir=work))
                env = {**os.environ, "PYTHONPATH": f"{trees[tree]}:{HERE}"}
                cmd = [sys.executable, str(HERE / "reuse_cases.py"), "--child",
                       str(work / f"{case}.yaml"), str(work / "source"), str(counts)]  # fmt: skip
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(f"{tree} {case}: {done.stderr[-3000:]}")
                runs[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
        out: dict[str, Any] = {}
        for tree, rs in runs.items():
            src = [sum(x["bytes"]["source"].values()) for x in rs]
            out[tree] = {
                "wall_s_median": statistics.median(x["wall_s"] for x in rs),
                "wall_s": [x["wall_s"] for x in rs],
                "wall_again_s_median": statistics.median(x["wall_again_s"] for x in rs),
                "source_bytes_median": statistics.median(src),
                "source_bytes_by_folder": rs[0]["bytes"]["source"],
                "target_bytes_by_folder": rs[0]["bytes"]["target"],
                "matched": rs[0]["matched"],
                "rows_sha256": rs[0]["rows_sha256"],
            }
            assert len({x["rows_sha256"] for x in rs}) == 1, f"{tree} {case}: rows differ by run"
        if "old" in out:
            old, new = out["old"], out["new"]
            out["same_rows"] = old["rows_sha256"] == new["rows_sha256"]
            out["new_over_old"] = {
                "source_bytes": round(new["source_bytes_median"] / old["source_bytes_median"], 4),
                "wall": round(new["wall_s_median"] / old["wall_s_median"], 4),
                "wall_again": round(new["wall_again_s_median"] / old["wall_again_s_median"], 4),
            }
        result[case] = out
        print(json.dumps({case: out}), flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
