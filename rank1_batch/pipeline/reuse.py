"""Reuse across jobs: copy committed results of earlier outputs instead of scoring again.

**The result key** (:func:`result_key`) of a pair is a hash of everything that decides its
result and nothing else:

* the model: ``model.name``, ``model.revision``, ``model.engine``, ``model.dtype`` (these two
  as resolved, :mod:`rank1_batch.job.resolve`), ``model.quantization``,
  ``model.max_model_len`` (the fingerprint's model half, less the device);
* ``prompt_id`` (prompt head, template and job-level instruction);
* the reasoning settings: ``reasoning.max_tokens``, ``reasoning.min_reserve``,
  ``reasoning.require_stop``;
* the composed query text and passage text the engine sees (instruction, template and title
  applied), not the query or doc ids: the same text under other ids is reused.

The key has two halves: the settings (the list above less the texts, one per job:
:func:`settings_key`) and the texts (:mod:`rank1_batch.core.text_key`, 16 bytes a pair, which
prepare stores in ``pairs/``). The settings half is compared once per source
(:func:`usable_sources`: a source with other settings is skipped unread), so the join matches
on text keys alone.

Tuning knobs (workers, batch sizes, device, tensor parallelism) are left out, as in the
fingerprint. A copied row must also carry the ``model_revision`` the scoring engine reports
(checked where the engine runs), so ``revision: null`` never reuses results of another
snapshot. ``error`` rows are never reused; they are scored again.

**The reuse stage** (:func:`.reuse_ready.build_reuse`, after prepare, over pending
shards only, run once by the run holding the output) is a hash join on keys first, on Ray
tasks, not a driver dictionary (:mod:`.reuse_join`): the pending shards' keys and the earlier
outputs' keys with a pointer (source, shard, row) are split by key hash and joined per
bucket; then only source shards with matches read their committed scores and
traces (checksums verified), take the matched rows, and the rows are grouped by target shard
and written to ``reuse/<shard>.parquet``. Sources whose key settings differ from the job's
are skipped without reading them.

**Scoring** (:func:`split_reused`, :func:`merge_results`) copies matched rows (score, logit,
status, error, token counts, truncated, trace) with a ``reused_from`` column naming the
earlier output, and judges only the rest; ranks are recomputed over the whole shard. The
marker's stats count copied rows in ``reused``, so a resumed job counts each row once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core import modes, text_key
from rank1_batch.core.schemas import SCORES_SCHEMA, TRACES_SCHEMA
from rank1_batch.core.stats import ShardStats
from rank1_batch.io import commit, layout
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.paths import check_shard_name
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec

log = logging.getLogger(__name__)

REUSE = "reuse"
KEY_MODEL_FIELDS = ("name", "revision", "engine", "dtype", "quantization", "max_model_len")
KEY_REASONING_FIELDS = ("max_tokens", "min_reserve", "require_stop")
RESULT_COLUMNS = (
    "score", "logit", "status", "error", "prompt_tokens", "reasoning_tokens", "truncated",
    "model_revision", "engine",
)  # fmt: skip
# What a copied row carries: the scores columns a result is made of, its trace, its origin.
PAYLOAD = pa.schema(
    [
        *(SCORES_SCHEMA.field(name) for name in RESULT_COLUMNS),
        *TRACES_SCHEMA.remove(0).remove(0),
        ("reused_from", pa.string()),
    ]
)
IDS = pa.schema([("shard", pa.string()), ("query_id", pa.string()), ("doc_id", pa.string())])
MATCH_SCHEMA = pa.schema(list(IDS) + list(PAYLOAD))


def reuse_path(shard: str) -> str:
    return f"{REUSE}/{shard}.parquet"


def key_settings(spec: JobSpec) -> dict[str, Any]:
    """The job half of the result key: model (engine, device, dtype resolved as for the
    fingerprint), prompt id and reasoning settings."""
    from rank1_batch.job.resolve import resolve_spec

    spec = resolve_spec(spec)
    return {
        "model": {f: getattr(spec.model, f) for f in KEY_MODEL_FIELDS},
        "prompt_id": spec.prompt_id,
        "reasoning": {
            **{f: getattr(spec.reasoning, f) for f in KEY_REASONING_FIELDS},
            "mode": spec.reasoning.mode,
        },
    }


def settings_key(settings: Mapping[str, Any]) -> str:
    """The settings half of the result key (:func:`key_settings`), one per job."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def result_key(settings: Mapping[str, Any], query_text: str, passage_text: str) -> str:
    """The result key of one pair: its settings half and its text half
    (:func:`rank1_batch.core.text_key.text_key`, stored per pair in ``pairs/``)."""
    return settings_key(settings) + text_key.text_key(query_text, passage_text).hex()


def keys_for(pairs: pa.Table, spec: JobSpec) -> list[str]:
    """Result keys of a table of pairs (columns as in ``pairs/``) under ``spec``."""
    head = settings_key(key_settings(spec))
    return [head + k.hex() for k in text_key.text_keys(pairs, spec.reasoning).to_pylist()]


@functools.lru_cache(maxsize=64)
def _source_spec(uri: str, storage: StorageSpec | None) -> JobSpec:
    """The job of reuse source ``uri`` (its layout version checked)."""
    record = layout.read_job(Store(uri, storage))
    return JobSpec.model_validate(record["spec"])


def usable_sources(spec: JobSpec) -> list[tuple[str, list[str]]]:
    """(uri, committed shards) of each ``reuse:`` source whose key settings match the job."""
    ours = key_settings(spec)
    out = []
    for uri in spec.reuse:
        src = Store(uri, spec.storage)
        if not src.exists(layout.JOB_FILE):
            raise FileNotFoundError(f"reuse: {uri}: no job.json; not a rank1-batch output folder")
        theirs = key_settings(_source_spec(uri, spec.storage))  # LayoutVersionError: refused
        if theirs != ours:
            diff = sorted(
                f"{s}.{k}" for s in ours if isinstance(ours[s], dict)
                for k in ours[s] if ours[s][k] != theirs[s].get(k)
            ) or ["prompt_id"]  # fmt: skip
            log.info("reuse: %s has other result settings (%s); nothing to reuse", uri, diff)
            continue
        where = f"reuse: {uri}/{layout.COMMITS}"
        out.append((uri, sorted(check_shard_name(s, where) for s in commit.committed_shards(src))))
    return out


# -- scoring side: pure functions over one shard ----------------------------------------------
def read_reused(store: Store, shard: str, spec: JobSpec) -> pa.Table | None:
    """The shard's matched rows, or None (no ``reuse:`` or nothing matched)."""
    if not spec.reuse or not store.exists(reuse_path(shard)):
        return None
    return store.read_parquet(reuse_path(shard))


def split_reused(
    pairs: pa.Table, reused: pa.Table | None, model_revision: str
) -> tuple[pa.Table, pa.Table]:
    """(pairs to judge, rows to copy): a pair is copied when a reused row for its ids exists
    and was scored by the same model revision as this engine's."""
    empty = MATCH_SCHEMA.remove(0).empty_table()
    if reused is None or not reused.num_rows:
        return pairs, empty
    ok = reused.filter(pc.field("model_revision") == model_revision)
    have = set(zip(ok.column("query_id").to_pylist(), ok.column("doc_id").to_pylist(), strict=True))
    ids = zip(pairs.column("query_id").to_pylist(), pairs.column("doc_id").to_pylist(), strict=True)
    mask = pa.array([pair in have for pair in ids])
    return pairs.filter(pc.invert(mask)), ok.select(MATCH_SCHEMA.names[1:]).cast(empty.schema)


def merge_results(
    pairs: pa.Table,
    scores: pa.Table,
    traces: pa.Table,
    copied: pa.Table,
    *,
    model: str,
    model_revision: str,
    prompt_id: str,
) -> tuple[pa.Table, pa.Table]:
    """Judged and copied rows as one shard, in ``pairs`` order, ranks over the whole shard,
    and a ``reused_from`` column (null for judged rows)."""
    from rank1_batch.core.rows import ranks_within_query

    n = copied.num_rows
    mode_columns = modes.columns_from_status(
        copied.column("status").to_pylist(), copied.column("score").to_pylist()
    )
    copied_scores = (
        pa.table(
            {
                **mode_columns,
                **{c: copied.column(c) for c in SCORES_SCHEMA.names if c in copied.column_names},
                "rank": pa.nulls(n, pa.int32()),
                "model": [model] * n,
                "model_revision": [model_revision] * n,
                "prompt_id": [prompt_id] * n,
            }
        )
        .select(SCORES_SCHEMA.names)
        .cast(SCORES_SCHEMA)
    )
    copied_traces = copied.select(TRACES_SCHEMA.names).cast(TRACES_SCHEMA)
    origin = pa.concat_arrays(
        [pa.nulls(scores.num_rows, pa.string()), copied.column("reused_from").combine_chunks()]
    )
    all_scores = pa.concat_tables([scores.cast(SCORES_SCHEMA), copied_scores])
    all_traces = pa.concat_tables([traces.cast(TRACES_SCHEMA), copied_traces])
    position = {
        pair: i
        for i, pair in enumerate(
            zip(
                pairs.column("query_id").to_pylist(),
                pairs.column("doc_id").to_pylist(),
                strict=True,
            )
        )
    }
    qids, dids = all_scores.column("query_id").to_pylist(), all_scores.column("doc_id").to_pylist()
    order = pa.array(sorted(range(len(qids)), key=lambda i: position[(qids[i], dids[i])]))
    all_scores, all_traces = all_scores.take(order), all_traces.take(order)
    origin = origin.take(order)
    ranks = ranks_within_query(
        all_scores.column("query_id").to_pylist(),
        all_scores.column("doc_id").to_pylist(),
        all_scores.column("score").to_pylist(),
    )
    all_scores = all_scores.set_column(
        all_scores.schema.get_field_index("rank"), "rank", pa.array(ranks, pa.int32())
    ).append_column("reused_from", origin)
    return all_scores, all_traces


def copied_stats(copied: pa.Table) -> ShardStats:
    """Stats of copied rows: they count as pairs (and statuses, tokens) and as ``reused``."""
    stats = ShardStats(pairs=copied.num_rows, reused=copied.num_rows)
    for status in copied.column("status").to_pylist():
        stats.count(status)
    stats.truncated = int(pc.sum(pc.cast(copied.column("truncated"), pa.int64())).as_py() or 0)
    stats.prompt_tokens = int(pc.sum(copied.column("prompt_tokens")).as_py() or 0)
    stats.reasoning_tokens = int(pc.sum(copied.column("reasoning_tokens")).as_py() or 0)
    return stats


def sample_matches(spec: JobSpec, sample: pa.Table) -> dict[str, Any]:
    """For ``plan``: how many of a sample of the job's pairs the ``reuse:`` sources hold.

    Streams the sources' committed pairs one shard at a time (memory: the sample's keys).
    """
    wanted = set(keys_for(sample, spec))
    found: set[str] = set()
    available = 0
    for uri, shards in usable_sources(spec):
        src, src_spec = Store(uri, spec.storage), _source_spec(uri, spec.storage)
        for shard in shards:
            ids = ["query_id", "doc_id"]
            scores = commit.committed_table(src, shard, "scores", [*ids, "status"])
            rows = src.read_parquet(layout.pairs_path(shard)).join(scores, ids)
            rows = rows.filter(pc.field("status") != "error")
            available += rows.num_rows
            found |= wanted.intersection(keys_for(rows, src_spec))
    share = len(found) / len(wanted) if wanted else 0.0
    return {"sampled": len(wanted), "matched": len(found), "share": share, "available": available}
