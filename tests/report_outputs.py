"""Output folders for the report tests.

``build_messy_output`` makes a folder holding every status without Ray: the pairs go through
prepare's own shard body (``_write_shard``: dedup, rejects, first-stage ranks), each shard
through ``process_shard`` (the unit of work both executors call) with the committed toy model
on CPU, then ``finalize``. Two shards: one with a tiny reasoning budget (every pair is
``forced``, except the few that the real completeness rule already accepts; for every 4th
pair ``FallbackFor``, a test double, makes the forced pass yield no answer, so they become
``fallback``), one with the normal budget
(``complete``, one over-long passage ``truncated``, one over-long query an ``error`` row).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from rank1_batch.engines.base import Rank1Engine
from rank1_batch.engines.factory import build_engine, model_path
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.job.load import load_job
from rank1_batch.job.prepare import _write_shard
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.outputs import results
from rank1_batch.pipeline.finalize import finalize
from rank1_batch.pipeline.score import process_shard
from rank1_batch.toy.data import make_ir_collection


def read_traces(store: Store) -> pa.Table:
    """Reasoning traces of every committed shard (the files their markers name, checksums
    verified)."""
    return pa.concat_tables(
        [results.shard_table(store, s, "traces") for s in results.committed(store)]
    )


class FallbackFor:
    """Test double around a real engine's forced pass: forced prompts holding one of
    ``passages`` get no answer logprobs (as when the answer ids are missing), so the shared
    judge must fall back. Everything else is the real engine."""

    def __init__(self, engine: Rank1Engine, passages: set[str]) -> None:
        self.engine = engine
        self.passages = passages
        self.original = engine.answer

    def __call__(self, prompts: Sequence[Sequence[int]]) -> list[Mapping[int, float] | None]:
        answers = self.original(prompts)
        texts = [self.engine.decode(list(p)) for p in prompts]
        return [
            None if any(passage in text for passage in self.passages) else a
            for text, a in zip(texts, answers, strict=True)
        ]


def _rows(qids: list[str], coll: Any, order: int) -> list[dict[str, Any]]:
    rows = []
    for c in coll.candidates:
        if c.query_id in qids:
            rows.append(
                {"query_id": c.query_id, "doc_id": c.doc_id, "query": c.query, "passage": c.passage}
            )
    return [
        r | {"title": None, "instruction": None, "input_order": order + i, "reason": None}
        for i, r in enumerate(rows)
    ]


_BUILT: list[tuple[Path, Path]] = []


def messy_output(tmp_path_factory: Any) -> tuple[Path, Path]:
    """The messy folder, built once per test session (both report test files read it)."""
    if not _BUILT:
        _BUILT.append(build_messy_output(tmp_path_factory.mktemp("messy")))
    return _BUILT[0]


def build_messy_output(root: Path) -> tuple[Path, Path]:
    """Write the folder under ``root``; return (output folder, qrels file)."""
    coll = make_ir_collection(11, 6, 6)
    qids = sorted(coll.queries)
    first, second = qids[:3], qids[3:]
    out = root / "messy"
    job = root / "job.yaml"
    (root / "in.parquet").write_bytes(b"")  # named by the job; prepare is done here
    job.write_text(
        f"name: messy\ninput: {{path: {root / 'in.parquet'}}}\n"
        f"output: {{path: {out}, shard_size: 20}}\n"
        "model: {name: toy, engine: transformers, max_model_len: 256, dtype: float32}\n"
        "reasoning: {max_tokens: 64, min_reserve: 16}\n"
        "compute: {workers: 1, batch_size: 8, torch_threads: 1}\n"
    )
    spec = load_job(job)
    store = Store(str(out))
    claim_output(store, job_record(spec, [{"path": "in.parquet", "rows": 0}]))

    shard0 = _rows(first, coll, 0)
    fallback = {r["passage"] for r in shard0[1::4]}  # these fall back if forced
    shard0.append(shard0[0] | {"input_order": 900})  # a duplicate
    shard0.append(shard0[1] | {"doc_id": None, "input_order": 901, "reason": "null_doc_id"})
    shard1 = _rows(second, coll, 1000)
    shard1[2]["passage"] = "ocean " * 400  # truncated to fit
    shard1.append(
        {
            "query_id": "q9999",
            "doc_id": "d999999",
            "query": "galaxy " * 300,  # cannot fit: an error row
            "passage": "comet star",
            "title": None,
            "instruction": None,
            "input_order": 2000,
            "reason": None,
        }
    )
    stats = []
    for index, rows in enumerate((shard0, shard1)):
        table = pa.Table.from_pylist(rows).append_column(
            "shard", pa.array([index] * len(rows), pa.int32())
        )
        stats.append(_write_shard(table, store, 2).to_pylist()[0])
    manifest = {
        "n_buckets": 2,
        "input_rows": sum(s["input_rows"] for s in stats),
        "pairs": sum(s["rows"] for s in stats),
        "rejected": sum(s["rejected"] for s in stats),
        "duplicates": sum(s["duplicates"] for s in stats),
        "shards": [
            {k: s[k] for k in ("id", "rows", "queries", "rejected", "duplicates", "sha256")}
            | {"path": layout.pairs_path(s["id"])}
            for s in stats
        ],
        "rejected_files": [layout.rejected_path(s["id"]) for s in stats if s["rejected"]],
    }
    store.write_json(layout.MANIFEST, manifest)

    start = time.perf_counter()
    engine = build_engine(spec, model_path(spec))
    try:
        normal = engine.options
        engine.options = dataclasses.replace(normal, max_tokens=3)
        engine.answer = FallbackFor(engine, fallback)  # type: ignore[method-assign]
        process_shard("shard-00000", engine, store, spec)
        engine.options = normal
        engine.answer = engine.answer.original  # type: ignore[attr-defined]
        process_shard("shard-00001", engine, store, spec)
    finally:
        engine.close()
    finalize(store, manifest, time.perf_counter() - start)

    qrels = root / "messy.qrels"
    lines = [f"{q} 0 {d} {rel}" for q, docs in coll.qrels.items() for d, rel in docs.items()]
    qrels.write_text("\n".join(lines) + "\n")
    return out, qrels
