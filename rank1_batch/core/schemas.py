"""The committed files' schemas: one row per pair in ``scores/``, its trace in ``traces/``.

Kept apart from the score stage so readers (results, reuse, report) import them without it.
"""

from __future__ import annotations

import pyarrow as pa

SCORES_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("score", pa.float64()),
        ("logit", pa.float64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("reasoning_tokens", pa.int32()),
        ("truncated", pa.bool_()),
        ("rank", pa.int32()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("prompt_id", pa.string()),
        # reasoning.mode (rank1_batch.core.modes): the direct and reasoned scores, which decided
        ("score_direct", pa.float64()),
        ("score_reasoned", pa.float64()),
        ("decided_by", pa.string()),
        # The engine that judged the row (transformers | vllm)
        ("engine", pa.string()),
    ]
)
TRACES_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("reasoning", pa.large_string()),
        ("finish_reason", pa.string()),
    ]
)

# rejected/<shard>.parquet: input rows refused by prepare, each with its reason code
REJECTED_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("reason", pa.string()),
        ("input_order", pa.int64()),
    ]
)
