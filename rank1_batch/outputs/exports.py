"""``rank1-batch export``: files derived from committed scores (runs, labels, a HF dataset).

Every export reads the committed shards one at a time
(:meth:`rank1_batch.outputs.results.Committed.tables`: commit markers, never a listing; checksums
verified), with only the columns its format needs: runs read ``query_id, doc_id, score`` from
the scores files and never open the pairs files (``rank-llm`` results add the query and passage
text); label formats join the pairs' text per shard. One-file formats (TREC, JSON and
rank_llm runs, JSONL labels, a sentence-transformers Parquet file) are streamed shard by shard
into a temporary file that is published whole (a rename, or one upload to an object store);
folder formats (``hf``, ``pylate``) are written one file per shard into a folder published
whole (:mod:`rank1_batch.io.publish`: built beside the final name and renamed into place; on
object stores the card is written last). What killed exports of the same target left (temp
files, partial folders) is removed first.
Driver memory: a few shards, plus what a format must keep across shards (label counts, the
ids of documents already written for ``pylate``), never the pairs. Both prepare plans keep
each query whole in one shard, so per-query ranking and selection are done per shard; the
files list queries in shard order. By default everything goes under ``OUTPUT/exports/``.
Label exports write a ``<name>.labels.json`` sidecar (or ``labels.json`` inside a folder
export) recording the selection rules, counts and provenance.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core.schemas import SCORES_SCHEMA
from rank1_batch.io import commit
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.publish import published_folder, remove_leftovers
from rank1_batch.io.store import Store
from rank1_batch.outputs import labels
from rank1_batch.outputs.results import (
    PAIR_COLUMNS,
    RESULTS_SCHEMA,
    Committed,
    Provenance,
    QueryGuard,
    Results,
    open_committed,
)
from rank1_batch.outputs.targets import Target, dataset_card, streamed_file

RUN_FORMATS = ("trec", "json-run", "rank-llm")
LABEL_FORMATS = ("flagembedding", "tevatron", "sentence-transformers", "pylate")
FORMATS = (*RUN_FORMATS, *LABEL_FORMATS, "hf")


def default_name(fmt: str, st_kind: str = "triplet", st_save: str = "parquet") -> str:
    names = {
        "trec": "run.trec",
        "json-run": "run.json",
        "rank-llm": "rank_llm.jsonl",
        "flagembedding": "flagembedding.jsonl",
        "tevatron": "tevatron.jsonl",
        "pylate": "pylate",
        "hf": "hf",
        "sentence-transformers": f"st-{st_kind}" + (".parquet" if st_save == "parquet" else ""),
    }
    return "exports/" + names[fmt]


def _ranked(table: pa.Table) -> tuple[list[str], list[str], list[int], np.ndarray]:
    """Columns of the ranked rows: by query, score desc, doc_id; NaN/null (error) rows out."""
    score = table.column("score")
    keep = pc.fill_null(pc.invert(pc.is_nan(score)), False)
    t = table.select(["query_id", "doc_id", "score"]).filter(keep)
    order = [("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")]
    t = t.take(pc.sort_indices(t, order))  # Arrow orders strings by UTF-8 bytes: code points
    qids, docs = t.column("query_id").to_pylist(), t.column("doc_id").to_pylist()
    ranks, prev, rank = [], None, 0
    for q in qids:
        rank = rank + 1 if q == prev else 1
        prev = q
        ranks.append(rank)
    return qids, docs, ranks, t.column("score").to_numpy()


def run_tag(results: Results | Committed) -> str:
    """Default TREC tag: the model's name without its owner or folder (``rank1-7b`` for
    ``jaedong/rank1-7b``; ``rank1`` when the job names none), plus ``-direct`` /
    ``-cascade-k10-m0.1`` when ``reasoning.mode`` is not ``think``, so a run file says which
    model and mode produced it."""
    spec = results.job.get("spec", {})
    name = str(spec.get("model", {}).get("name") or "").rstrip("/").rsplit("/", 1)[-1]
    base = "_".join(name.split()) or "rank1"  # a tag is one word
    reasoning = spec.get("reasoning", {})
    mode = reasoning.get("mode", "think")
    if mode == "cascade":
        c = reasoning.get("cascade", {})
        return f"{base}-cascade-k{c.get('top_k')}-m{c.get('margin')}"
    return base if mode == "think" else f"{base}-{mode}"


def run_rows(table: pa.Table) -> Iterable[tuple[str, str, int, float]]:
    """:func:`ranked_rows` with run scores that stay strictly decreasing within a query, even
    for evaluators that read scores as float32.

    Evaluators break score ties their own way (trec_eval and pytrec_eval: doc_id
    *descending*), and trec_eval keeps scores as C ``float``: two float64 scores that differ
    below float32 precision (saturated ones like 0.99999999 and 0.999999995) tie there too.
    A score that would tie with the one above it (in float32) is exported one float32 step
    below that one: about 1e-7 per tied document, after which every evaluator reads exactly
    the ranking ``eval`` evaluates (score desc, then doc_id). Other scores keep full float64
    precision; ``scores/`` keeps the exact values.
    """
    qids, docs, ranks, scores = _ranked(table)
    as32 = scores.astype(np.float32).tolist()  # float32 values, as exact Python floats
    prev_q, prev32 = None, math.inf  # float32 of the previous exported value
    for q, d, r, s, s32 in zip(qids, docs, ranks, scores.tolist(), as32, strict=True):
        if q != prev_q:
            prev_q, prev32 = q, math.inf
        if s32 < prev32:
            value, prev32 = s, s32
        else:  # ties with the one above in float32: one float32 step below it
            value = prev32 = float(np.nextafter(np.float32(prev32), np.float32(-np.inf)))
        yield q, d, r, value


def trec_text(table: pa.Table, tag: str = "rank1") -> str:
    """TREC run lines with full-precision scores (``repr`` round-trips a float64)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag {tag!r} must be one word")
    return "".join(f"{q} Q0 {d} {r} {s!r} {tag}\n" for q, d, r, s in run_rows(table))


def json_run(table: pa.Table) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` with the same tie-free scores as the TREC run."""
    run: dict[str, dict[str, float]] = {}
    for q, d, _, s in run_rows(table):
        run.setdefault(q, {})[d] = s
    return run


def json_run_members(table: pa.Table) -> tuple[list[str], int]:
    """The ``"qid": {...}`` members of ``table``'s queries as ``json.dumps(run, indent=2,
    sort_keys=True)`` writes them inside the whole run's object, and their documents."""
    run = json_run(table)
    members = [json.dumps({q: run[q]}, indent=2, sort_keys=True)[2:-2] for q in sorted(run)]
    return members, sum(len(docs) for docs in run.values())


RUN_COLUMNS = ("query_id", "doc_id", "score")
RANK_LLM_TEXT = ("query", "passage", "title")


def rank_llm_lines(table: pa.Table) -> tuple[str, int]:
    """rank_llm result JSONL of ``table``'s queries (``rank_llm.data.Result`` as its
    ``DataWriter.write_in_jsonl_format`` writes it: ``{"query": {"text", "qid"},
    "candidates": [{"docid", "score", "doc": {"text"[, "title"]}}]}``), candidates in
    reranked order with the run's scores (error rows out, as in every run); and its rows."""
    text: dict[tuple[str, str], tuple[str, str, str | None]] = {
        (q, d): (qt, p, t)
        for q, d, qt, p, t in zip(
            *(table.column(c).to_pylist() for c in ("query_id", "doc_id", *RANK_LLM_TEXT)),
            strict=True,
        )
    }
    results: dict[str, dict[str, Any]] = {}
    for q, d, _, s in run_rows(table):
        query, passage, title = text[(q, d)]
        result = results.setdefault(q, {"query": {"text": query, "qid": q}, "candidates": []})
        doc = {"text": passage, **({"title": title} if title else {})}
        result["candidates"].append({"docid": d, "score": s, "doc": doc})
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results.values())
    return lines, sum(len(r["candidates"]) for r in results.values())


def _write_run(committed: Committed, target: Target, fmt: str, tag: str) -> int:
    """Stream the reranked run into one file, shard by shard; return its rows."""
    if fmt == "trec" and (not tag or any(c.isspace() for c in tag)):
        raise ValueError(f"run tag {tag!r} must be one word")
    guard, rows, sep = QueryGuard(committed.store.uri), 0, "\n"
    with streamed_file(target.parent, target.name) as fh:
        if fmt == "json-run":
            fh.write(b"{")
        pair_columns = RANK_LLM_TEXT if fmt == "rank-llm" else ()
        for marker, table in committed.tables(RUN_COLUMNS, pair_columns):
            guard.check_table(table, marker.shard)
            if fmt == "rank-llm":
                text, docs = rank_llm_lines(table)
                rows += docs
            elif fmt == "trec":
                text = trec_text(table, tag)
                rows += text.count("\n")
            else:
                members, docs = json_run_members(table)
                text = sep + ",\n".join(members) if members else ""
                sep = ",\n" if members else sep
                rows += docs
            fh.write(text.encode())
        if fmt == "json-run":
            fh.write(b"}\n" if sep == "\n" else b"\n}\n")
    return rows


def export_hf(committed: Committed, target: Target) -> dict[str, Any]:
    """Parquet shards (configs ``scores`` and ``traces``) plus a dataset card.

    ``scores`` rows carry the pair's text (query, passage, title) and first-stage rank
    (``input_rank``) beside the judgement, so the export trains or evaluates on its own.
    Written one shard at a time; the card's figures are summed over shards.
    """
    with published_folder(target.parent, target.name, ("scores", "traces")) as folder:
        n, queries, prov, statuses = _write_hf(committed, folder)
        folder.write_atomic("README.md", _hf_card(committed, n, queries, prov, statuses))
    return {"format": "hf", "out": target.uri, "pairs": n, "shards": len(committed.shards)}


def _write_hf(committed: Committed, folder: Store) -> tuple[int, int, Provenance, Counter[str]]:
    store, prov, statuses = committed.store, Provenance(), Counter[str]()
    guard, n, queries = QueryGuard(store.uri), 0, 0
    for marker, table in committed.tables(SCORES_SCHEMA.names, PAIR_COLUMNS):
        qids = guard.check_table(table, marker.shard)
        prov.add(table)
        statuses.update(table.column("status").to_pylist())
        n, queries = n + table.num_rows, queries + len(qids)
        scores = parquet_bytes(table.cast(RESULTS_SCHEMA))
        folder.write_atomic(f"scores/{marker.shard}.parquet", scores)
        traces = commit.read_committed(store, marker, "traces")
        folder.write_atomic(f"traces/{marker.shard}.parquet", traces)
    return n, queries, prov, statuses


def _hf_card(
    committed: Committed, n: int, queries: int, prov: Provenance, statuses: Counter[str]
) -> bytes:
    spec = committed.job.get("spec", {})
    info = {
        **prov.to_dict(committed),
        "reasoning": spec.get("reasoning"),
        "max_model_len": spec.get("model", {}).get("max_model_len"),
        "pairs": n,
        "queries": queries,
        "status_rates": {k: round(v / n, 6) for k, v in sorted(statuses.items())},
    }
    body = (
        "Relevance judgements from the Rank1 reasoning reranker, written by rank1-batch.\n\n"
        "## Configs\n\n"
        "- `scores` (default): one row per (query, passage) pair: `query_id`, `doc_id`, "
        "`query`, `passage`, `title` (the text the model judged), `input_rank` (the "
        "first-stage rank), `score`, `logit`, `status`, `error`, `rank` (reranked, within the "
        "query), token counts, `truncated`, `model`, `model_revision`, `prompt_id`.\n"
        "- `traces`: `query_id`, `doc_id`, `reasoning` (the model's reasoning text), "
        "`finish_reason`; join with `scores` on (query_id, doc_id).\n\n"
        "`score` is P(true) from the model's last-position logprobs; `logit` is "
        "log P(true) - log P(false); `status` is complete | forced | direct (no reasoning) | "
        "fallback (0.5 by rule, not a judgement) | error (NaN). Only complete, forced and "
        "direct rows are judgements to train on. `reasoning_mode` below says which "
        "reasoning.mode produced `score`; `score_direct`, `score_reasoned` and `decided_by` "
        "keep both scores.\n\n"
        "```json\n" + json.dumps(info, indent=2, default=str) + "\n```\n"
    )
    configs = {"scores": "scores/*.parquet", "traces": "traces/*.parquet"}
    return dataset_card("Rank1 reranking scores", configs, body, default="scores").encode()


def push_to_hub(folder: str, repo_id: str, private: bool = True) -> str:
    """Upload an ``hf`` export folder as a dataset repo (needs network and a HF token)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="dataset")
    return f"https://huggingface.co/datasets/{repo_id}"


def export(
    store: Store,
    fmt: str,
    out: str | None = None,
    *,
    tag: str | None = None,
    rules: labels.LabelRules | None = None,
    st_kind: str = "triplet",
    st_save: str = "parquet",
) -> dict[str, Any]:
    """Write one export of the committed results in ``store``; return a summary."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if st_kind not in labels.ST_KINDS:
        raise ValueError(f"unknown --st-kind {st_kind!r} (one of {', '.join(labels.ST_KINDS)})")
    committed = open_committed(store)
    target = Target(store, out, default_name(fmt, st_kind, st_save))
    remove_leftovers(target.parent, target.name)  # of killed exports of this target
    if rules is None:
        rules = labels.LabelRules(value=labels.default_value(fmt))
    if fmt in RUN_FORMATS:
        rows = _write_run(committed, target, fmt, tag or run_tag(committed))
        return {"format": fmt, "out": target.uri, "rows": rows, "complete": committed.complete}
    if fmt == "hf":
        return export_hf(committed, target)
    from rank1_batch.outputs.label_exports import export_labels

    return export_labels(committed, fmt, target, rules, st_kind=st_kind, st_save=st_save)
