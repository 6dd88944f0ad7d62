"""Label exports (``flagembedding``, ``tevatron``, ``sentence-transformers``, ``pylate``),
one committed shard at a time.

Each shard's scores are read with its pairs' text (the label layouts carry passages), labels
are chosen per query (:func:`rank1_batch.outputs.labels.select`; a query is whole in one shard), and
the layout's rows are appended to the output: JSONL and Parquet files are streamed into one
file published whole (:func:`rank1_batch.outputs.targets.streamed_file`), ``pylate`` writes one
Parquet file per shard and config, in a folder published whole (:mod:`rank1_batch.io.publish`).
Across shards only the counts, the provenance values and, for ``pylate``, the ids of
documents already written (at most ``max_pos + max_neg`` a query) are kept.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.publish import published_folder
from rank1_batch.io.store import Store
from rank1_batch.outputs import labels
from rank1_batch.outputs.results import PAIR_COLUMNS, Committed, Provenance, QueryGuard
from rank1_batch.outputs.targets import Target, dataset_card, json_bytes, jsonl_bytes, streamed_file


def _add_counts(total: labels.LabelCounts, part: labels.LabelCounts) -> None:
    for key, value in vars(part).items():
        if key == "excluded_status":
            for status, n in value.items():
                total.excluded_status[status] = total.excluded_status.get(status, 0) + n
        else:
            setattr(total, key, getattr(total, key) + value)


LABEL_SCORE_COLUMNS = (
    "query_id",
    "doc_id",
    "score",
    "logit",
    "status",
    "rank",
    *Provenance.COLUMNS,
)


def _label_shards(
    committed: Committed, rules: labels.LabelRules, counts: labels.LabelCounts, prov: Provenance
) -> Iterator[list[labels.QueryLabels]]:
    """Labels of each committed shard (text joined per shard); counts and provenance added up."""
    guard = QueryGuard(committed.store.uri)
    for marker, table in committed.tables(LABEL_SCORE_COLUMNS, PAIR_COLUMNS):
        guard.check_table(table, marker.shard)
        prov.add(table)
        chosen, part = labels.select(table, rules)
        _add_counts(counts, part)
        yield chosen


def _st_schema(kind: str, n_neg: int) -> pa.Schema:
    names = {
        "triplet": ["query", "positive", "negative"],
        "margin-mse": ["query", "positive", "negative", "score"],
        "n-tuple": ["query", "positive", *(f"negative_{i + 1}" for i in range(n_neg))],
        "labeled-pair": ["query", "passage", "label"],
    }
    names["n-tuple-scores"] = [*names["n-tuple"], "score"]
    if kind not in names:
        raise ValueError(f"unknown sentence-transformers kind {kind!r}")
    types = {"label": pa.float64(), "score": pa.float64()}
    if kind == "n-tuple-scores":
        types["score"] = pa.list_(pa.float64())
    return pa.schema([(n, types.get(n, pa.string())) for n in names[kind]])


def _write_st(
    target: Target, shards: Iterable[list[labels.QueryLabels]], kind: str, n_neg: int, save: str
) -> int:
    """One Parquet file, a row group per shard (or a ``datasets`` folder made from it)."""
    if save != "parquet" and not target.folder.local:
        raise ValueError("--st-save disk needs a local --out; use parquet for object storage")
    schema, rows = _st_schema(kind, n_neg), 0
    with contextlib.ExitStack() as stack:
        if save == "parquet":
            fh = stack.enter_context(streamed_file(target.parent, target.name))
        else:
            fh = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".parquet"))
        with pq.ParquetWriter(fh, schema) as writer:
            for chosen in shards:
                table = labels.sentence_transformers_table(chosen, kind, n_neg)
                if table.num_rows:
                    writer.write_table(table.select(schema.names).cast(schema))
                    rows += table.num_rows
        if save != "parquet":
            import datasets

            fh.flush()
            with tempfile.TemporaryDirectory() as cache:
                ds = datasets.Dataset.from_parquet(fh.name, cache_dir=cache)
                ds.save_to_disk(target.uri)
    return rows


PYLATE_CONFIGS = ("train", "queries", "documents")


def _write_pylate(folder: Store, shards: Iterable[list[labels.QueryLabels]]) -> None:
    """Configs ``train``, ``queries``, ``documents``: one Parquet file per shard with labels
    (at least one file per config); a document is written once, in the first shard naming it."""
    written: set[str] = set()
    parts = 0
    for chosen in shards:
        if not chosen and parts:
            continue
        tables = labels.pylate_tables(chosen)
        docs = tables["documents"]
        fresh = [d not in written for d in docs.column("document_id").to_pylist()]
        written.update(docs.column("document_id").to_pylist())
        tables["documents"] = docs.filter(pa.array(fresh, pa.bool_()))
        for name, t in tables.items():
            folder.write_atomic(f"{name}/{name}-{parts:05d}.parquet", parquet_bytes(t))
        parts += 1


def export_labels(
    committed: Committed,
    fmt: str,
    target: Target,
    rules: labels.LabelRules,
    *,
    st_kind: str = "triplet",
    st_save: str = "parquet",
) -> dict[str, Any]:
    counts, prov = labels.LabelCounts(), Provenance()
    shards = _label_shards(committed, rules, counts, prov)
    fmt_name = f"{fmt}:{st_kind}" if fmt == "sentence-transformers" else fmt
    st_rows = None
    if fmt in ("flagembedding", "tevatron"):
        row_layout = labels.flagembedding_rows if fmt == "flagembedding" else labels.tevatron_rows
        with streamed_file(target.parent, target.name) as fh:
            for chosen in shards:
                fh.write(jsonl_bytes(row_layout(chosen)))
    elif fmt == "sentence-transformers":
        st_rows = _write_st(target, shards, st_kind, rules.max_neg, st_save)
    elif fmt == "pylate":
        with published_folder(target.parent, target.name, PYLATE_CONFIGS) as folder:
            _write_pylate(folder, shards)
            meta = labels.sidecar(rules, counts, fmt_name, prov.to_dict(committed))
            body = (
                "Rank1 distillation data for PyLate (`train`: query_id, document_ids, scores; "
                f"`queries`; `documents`). Model: {meta['model']}; prompt: {meta['prompt_id']}."
            )
            configs = {n: f"{n}/*.parquet" for n in PYLATE_CONFIGS}
            card = dataset_card("Rank1 scores for PyLate", configs, body, default="train")
            folder.write_atomic("labels.json", json_bytes(meta))
            folder.write_atomic("README.md", card.encode())  # last: the completion mark
        return {"format": fmt, "out": target.uri, **counts_dict(meta)}
    else:
        raise ValueError(f"unknown label format {fmt!r}")
    meta = labels.sidecar(rules, counts, fmt_name, prov.to_dict(committed))
    if st_rows is not None:
        meta["rows"] = st_rows
    sidecar_path = target.write_sidecar(meta)
    return {"format": fmt_name, "out": target.uri, "sidecar": sidecar_path, **counts_dict(meta)}


def counts_dict(meta: dict[str, Any]) -> dict[str, Any]:
    c = meta["counts"]
    return {k: c[k] for k in ("queries", "labelled_queries", "positives", "negatives")}
