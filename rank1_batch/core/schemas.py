"""The committed files' schemas: one row per pair in ``scores/``, its trace in ``traces/``, and
prepare's accounts of the input rows it did not keep (``rejected/``, ``duplicates/``).

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

# Where an input row came from (rank1_batch.job.sources): its file, its 0-based row in that
# file (a Parquet row across row groups; a text file's record after the header), the 1-based
# line a text file's record starts on (null for Parquet) and, for candidate lists, its 0-based
# position in the list (null for pairs).
SOURCE_FIELDS = [
    ("source_file", pa.string()),
    ("source_row", pa.int64()),
    ("source_line", pa.int64()),
    ("candidate", pa.int32()),
]

# rejected/<shard|unit>.parquet: input rows refused by prepare, each with its reason code
REJECTED_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("reason", pa.string()),
        ("input_order", pa.int64()),
        *SOURCE_FIELDS,
    ]
)

# duplicates/<shard|unit>.parquet: rows dropped because their (query_id, doc_id) came earlier
# in the input; ``kept_*`` say where the row that was kept came from, ``passage_differs``
# whether its passage text was not the same.
DUPLICATES_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("input_order", pa.int64()),
        *SOURCE_FIELDS,
        ("kept_input_order", pa.int64()),
        *[(f"kept_{name}", kind) for name, kind in SOURCE_FIELDS],
        ("passage_differs", pa.bool_()),
    ]
)
