"""Reading a finished (or partly finished) output folder as Arrow tables.

Only shards named by ``_commits/`` markers are read, never a listing of ``scores/``: a
scores file without a marker may belong to an attempt that was killed before it committed.
Each shard's files come from its marker (:func:`rank1_batch.commit.read_committed`, checksum
verified).
A committed shard's scores file holds exactly the rows of its pairs file, in the same order
(``process_shard`` builds one from the other), so the two are zipped, not joined.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rank1_batch import commit
from rank1_batch.pipeline.score import SCORES_SCHEMA, TRACES_SCHEMA
from rank1_batch.storage import Store

# Statuses whose score is the model's own judgement (``direct``: without reasoning, from
# reasoning.mode direct/cascade); ``fallback`` (0.5 by rule) and ``error`` (NaN) rows never
# become labels.
LABEL_STATUSES = ("complete", "forced", "direct")

PAIR_COLUMNS = ("query", "passage", "title", "input_rank")

RESULTS_SCHEMA = pa.schema(
    [
        *SCORES_SCHEMA,
        pa.field("query", pa.string()),
        pa.field("passage", pa.string()),
        pa.field("title", pa.string()),
        pa.field("input_rank", pa.int32()),
    ]
)


class ResultsError(RuntimeError):
    """The output folder has no committed results (or they are inconsistent)."""


@dataclass(frozen=True)
class Results:
    """Committed rows of an output folder plus what produced them."""

    table: pa.Table  # RESULTS_SCHEMA, ordered by (query_id, rank)
    shards: tuple[str, ...]
    job: dict[str, Any]
    complete: bool  # _SUCCESS.json exists

    @property
    def model(self) -> str | None:
        values = pc.unique(self.table.column("model")).to_pylist()
        return values[0] if len(values) == 1 else (None if not values else ",".join(values))

    @property
    def prompt_id(self) -> str | None:
        values = pc.unique(self.table.column("prompt_id")).to_pylist()
        return values[0] if len(values) == 1 else (None if not values else ",".join(values))

    @property
    def reasoning_mode(self) -> str:
        """``reasoning.mode`` that produced ``score`` (think, direct or cascade)."""
        mode = self.job.get("spec", {}).get("reasoning", {}).get("mode", "think")
        if mode == "cascade":
            cascade = self.job["spec"]["reasoning"].get("cascade", {})
            return f"cascade(top_k={cascade.get('top_k')},margin={cascade.get('margin')})"
        return str(mode)

    def provenance(self) -> dict[str, Any]:
        revisions = pc.unique(self.table.column("model_revision")).to_pylist()
        return {
            "model": self.model,
            "model_revision": revisions[0] if len(revisions) == 1 else revisions,
            "prompt_id": self.prompt_id,
            "reasoning_mode": self.reasoning_mode,
            "fingerprint": self.job.get("fingerprint"),
            "shards": len(self.shards),
            "complete": self.complete,
        }


def committed(store: Store) -> list[str]:
    return sorted(commit.committed_shards(store))


def shard_table(store: Store, shard: str, kind: str) -> pa.Table:
    """A committed shard's ``scores`` or ``traces`` table: the file its marker names,
    checksum verified."""
    data = commit.read_committed(store, commit.read_marker(store, shard), kind)
    return pq.read_table(io.BytesIO(data))


def read_shard(store: Store, shard: str) -> pa.Table:
    """One committed shard: its scores with the pair's text and first-stage rank."""
    scores = shard_table(store, shard, "scores")
    pairs = store.read_parquet(commit.pairs_path(shard))
    if scores.num_rows != pairs.num_rows or not (
        scores.column("query_id").equals(pairs.column("query_id"))
        and scores.column("doc_id").equals(pairs.column("doc_id"))
    ):
        raise ResultsError(f"{store.uri}: {shard}: scores do not match its pairs file")
    if "reused_from" in scores.column_names:  # jobs with reuse: (rank1_batch.reuse)
        scores = scores.drop_columns(["reused_from"])
    for field in SCORES_SCHEMA:
        if field.name not in scores.column_names:  # outputs written before reasoning.mode
            scores = scores.append_column(field, pa.nulls(scores.num_rows, field.type))
    scores = scores.select(SCORES_SCHEMA.names)
    for name in PAIR_COLUMNS:
        scores = scores.append_column(name, pairs.column(name))
    return scores.cast(RESULTS_SCHEMA)


def read_results(store: Store, *, require_complete: bool = False) -> Results:
    """All committed rows, ordered by (query_id, rank); errors (rank null) last per query."""
    shards = committed(store)
    if not shards:
        raise ResultsError(f"{store.uri}: no committed shards (run the job first)")
    complete = store.exists(commit.SUCCESS)
    if require_complete and not complete:
        raise ResultsError(f"{store.uri}: the job is not finished (no {commit.SUCCESS})")
    table = pa.concat_tables([read_shard(store, s) for s in shards])
    # error rows (rank null) last within their query
    key = pa.table(
        {
            "q": table.column("query_id"),
            "r": pc.fill_null(table.column("rank"), pa.scalar(2**31 - 1, pa.int32())),
            "d": table.column("doc_id"),
        }
    )
    table = table.take(
        pc.sort_indices(key, [("q", "ascending"), ("r", "ascending"), ("d", "ascending")])
    )
    job = store.read_json(commit.JOB_FILE) if store.exists(commit.JOB_FILE) else {}
    return Results(table, tuple(shards), job, complete)


def read_traces(store: Store) -> pa.Table:
    """Reasoning traces of every committed shard."""
    tables = [shard_table(store, s, "traces") for s in committed(store)]
    return pa.concat_tables(tables).cast(TRACES_SCHEMA) if tables else TRACES_SCHEMA.empty_table()


def by_query(table: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by query_id, each group in the table's order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["query_id"], []).append(row)
    return out
