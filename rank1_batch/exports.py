"""``rank1-batch export``: files derived from committed scores (runs, labels, a HF dataset).

Every export reads :func:`rank1_batch.results.read_results` (commit markers, never a
listing) and writes whole files atomically through :class:`~rank1_batch.storage.Store`, by
default under ``OUTPUT/exports/``. Label exports write a ``<name>.labels.json`` sidecar (or
``labels.json`` inside a folder export) recording the selection rules, counts and provenance.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch import commit, labels
from rank1_batch.results import Results, read_results, read_shard
from rank1_batch.storage import Store, parquet_bytes

RUN_FORMATS = ("trec", "json-run")
LABEL_FORMATS = ("flagembedding", "tevatron", "sentence-transformers", "pylate")
FORMATS = (*RUN_FORMATS, *LABEL_FORMATS, "hf")


def default_name(fmt: str, st_kind: str = "triplet", st_save: str = "parquet") -> str:
    names = {
        "trec": "run.trec",
        "json-run": "run.json",
        "flagembedding": "flagembedding.jsonl",
        "tevatron": "tevatron.jsonl",
        "pylate": "pylate",
        "hf": "hf",
        "sentence-transformers": f"st-{st_kind}" + (".parquet" if st_save == "parquet" else ""),
    }
    return "exports/" + names[fmt]


def ranked_rows(table: pa.Table) -> Iterable[tuple[str, str, int, float]]:
    """(query_id, doc_id, rank, score) by query, score desc, doc_id; NaN (error) rows skipped."""
    rows = [
        (q, d, s)
        for q, d, s in zip(
            table.column("query_id").to_pylist(),
            table.column("doc_id").to_pylist(),
            table.column("score").to_pylist(),
            strict=True,
        )
        if s is not None and not math.isnan(s)
    ]
    rows.sort(key=lambda r: (r[0], -r[2], r[1]))
    prev, rank = None, 0
    for q, d, s in rows:
        rank = rank + 1 if q == prev else 1
        prev = q
        yield q, d, rank, s


def run_tag(results: Results) -> str:
    """Default TREC tag: ``rank1``, or ``rank1-direct`` / ``rank1-cascade-k10-m0.1`` when
    ``reasoning.mode`` is not ``think``, so a run file says which mode produced it."""
    reasoning = results.job.get("spec", {}).get("reasoning", {})
    mode = reasoning.get("mode", "think")
    if mode == "cascade":
        c = reasoning.get("cascade", {})
        return f"rank1-cascade-k{c.get('top_k')}-m{c.get('margin')}"
    return "rank1" if mode == "think" else f"rank1-{mode}"


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
    prev_q, prev = None, math.inf
    for q, d, r, s in ranked_rows(table):
        if q != prev_q:
            prev_q, prev = q, math.inf
        below = float(np.nextafter(np.float32(prev), np.float32(-np.inf)))
        value = s if np.float32(s) < np.float32(prev) else below
        prev = value
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


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


class _Target:
    """Where an export goes: a file (parent store + name) or a folder (its own store)."""

    def __init__(self, output: Store, out: str | None, default: str) -> None:
        # URIs, not Store.path(): a bare object-store path would be read as a local one.
        self.uri = (out or output.uri.rstrip("/") + "/" + default).rstrip("/")
        self.folder = Store(self.uri, output.storage)
        self.parent = Store(posixpath.dirname(self.uri) or ".", output.storage)
        self.name = posixpath.basename(self.uri)

    def write_file(self, data: bytes) -> None:
        self.parent.write_atomic(self.name, data)

    def write_sidecar(self, obj: Any) -> str:
        self.parent.write_atomic(self.name + ".labels.json", _json(obj))
        return self.uri + ".labels.json"  # spelt like ``out``: relative stays relative


def dataset_card(title: str, configs: dict[str, str], body: str, *, default: str) -> str:
    """A README.md whose YAML ``configs`` lets ``datasets.load_dataset(folder, name)`` work."""
    lines = ["---", "configs:"]
    for name, glob in configs.items():
        lines += [f"- config_name: {name}"]
        lines += ["  default: true"] if name == default else []
        lines += ["  data_files:", "  - split: train", f"    path: {glob}"]
    lines += ["---", "", f"# {title}", "", body.strip(), ""]
    return "\n".join(lines)


def _write_st(target: _Target, table: pa.Table, save: str) -> None:
    if save == "parquet":
        target.write_file(parquet_bytes(table))
        return
    if not target.folder.local:
        raise ValueError("--st-save disk needs a local --out; use parquet for object storage")
    import datasets

    datasets.Dataset(table).save_to_disk(target.uri)


def export_labels(
    results: Results,
    fmt: str,
    target: _Target,
    rules: labels.LabelRules,
    *,
    st_kind: str = "triplet",
    st_save: str = "parquet",
) -> dict[str, Any]:
    chosen, counts = labels.select(results.table, rules)
    fmt_name = f"{fmt}:{st_kind}" if fmt == "sentence-transformers" else fmt
    meta = labels.sidecar(rules, counts, fmt_name, results.provenance())
    if fmt == "flagembedding":
        target.write_file(_jsonl(labels.flagembedding_rows(chosen)))
    elif fmt == "tevatron":
        target.write_file(_jsonl(labels.tevatron_rows(chosen)))
    elif fmt == "sentence-transformers":
        table = labels.sentence_transformers_table(chosen, st_kind, rules.max_neg)
        meta["rows"] = table.num_rows
        _write_st(target, table, st_save)
    elif fmt == "pylate":
        tables = labels.pylate_tables(chosen)
        for name, t in tables.items():
            target.folder.write_atomic(f"{name}/{name}-00000.parquet", parquet_bytes(t))
        body = (
            "Rank1 distillation data for PyLate (`train`: query_id, document_ids, scores; "
            f"`queries`; `documents`). Model: {results.model}; prompt: {results.prompt_id}."
        )
        configs = {n: f"{n}/*.parquet" for n in tables}
        card = dataset_card("Rank1 scores for PyLate", configs, body, default="train")
        target.folder.write_atomic("README.md", card.encode())
        target.folder.write_atomic("labels.json", _json(meta))
        return {"format": fmt, "out": target.uri, **counts_dict(meta)}
    else:
        raise ValueError(f"unknown label format {fmt!r}")
    sidecar_path = target.write_sidecar(meta)
    return {"format": fmt_name, "out": target.uri, "sidecar": sidecar_path, **counts_dict(meta)}


def counts_dict(meta: dict[str, Any]) -> dict[str, Any]:
    c = meta["counts"]
    return {k: c[k] for k in ("queries", "labelled_queries", "positives", "negatives")}


def export_hf(store: Store, results: Results, target: _Target) -> dict[str, Any]:
    """Parquet shards (configs ``scores`` and ``traces``) plus a dataset card.

    ``scores`` rows carry the pair's text (query, passage, title) and first-stage rank
    (``input_rank``) beside the judgement, so the export trains or evaluates on its own.
    """
    for shard in results.shards:
        scores = parquet_bytes(read_shard(store, shard))
        target.folder.write_atomic(f"scores/{shard}.parquet", scores)
        traces = commit.read_committed(store, commit.read_marker(store, shard), "traces")
        target.folder.write_atomic(f"traces/{shard}.parquet", traces)
    spec = results.job.get("spec", {})
    statuses = {
        s["values"]: int(s["counts"])
        for s in pc.value_counts(results.table.column("status")).to_pylist()
    }
    n = results.table.num_rows
    info = {
        **results.provenance(),
        "reasoning": spec.get("reasoning"),
        "max_model_len": spec.get("model", {}).get("max_model_len"),
        "pairs": n,
        "queries": len(pc.unique(results.table.column("query_id"))),
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
    card = dataset_card("Rank1 reranking scores", configs, body, default="scores")
    target.folder.write_atomic("README.md", card.encode())
    return {"format": "hf", "out": target.uri, "pairs": n, "shards": len(results.shards)}


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
    results = read_results(store)
    target = _Target(store, out, default_name(fmt, st_kind, st_save))
    if rules is None:
        rules = labels.LabelRules(value=labels.default_value(fmt))
    if fmt == "trec":
        target.write_file(trec_text(results.table, tag or run_tag(results)).encode())
    elif fmt == "json-run":
        target.write_file(_json(json_run(results.table)))
    elif fmt == "hf":
        return export_hf(store, results, target)
    else:
        return export_labels(results, fmt, target, rules, st_kind=st_kind, st_save=st_save)
    return {"format": fmt, "out": target.uri, "complete": results.complete}
