"""The text keys prepare writes are each pair's composed texts hashed, byte for byte,
whatever the instructions, titles and template (:func:`rank1_batch.core.text_key.text_keys`
composes each distinct query once; the reference here composes each pair)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pytest

from rank1_batch.core import rank1, text_key
from rank1_batch.core.rows import requests_for


@dataclass(frozen=True)
class Settings:
    instruction: str | None = None
    prompt_template: str | None = None


def pairs(instructions: bool) -> pa.Table:
    n = 40
    return pa.table(
        {
            "query_id": [f"q{i // 7}" for i in range(n)],
            "query": [f" query {i // 7} " if i % 5 else f"query {i // 7}" for i in range(n)],
            "doc_id": [f"d{i}" for i in range(n)],
            "passage": [f" passage {i % 9}  " for i in range(n)],
            "title": [None if i % 3 else f"title {i % 4}" for i in range(n)],
            "instruction": [
                (None if i % 4 else f"own {i % 2}") if instructions else None for i in range(n)
            ],
        },
        schema=pa.schema([(c, pa.string()) for c in
                          ("query_id", "query", "doc_id", "passage", "title", "instruction")]),
    )  # fmt: skip


@pytest.mark.parametrize("instructions", [False, True])
@pytest.mark.parametrize(
    "settings",
    [
        Settings(),
        Settings(instruction="be brief"),
        Settings(prompt_template=f"Q: {rank1.QUERY_PLACEHOLDER} ?"),
        Settings(instruction="query 1", prompt_template=f"<{rank1.QUERY_PLACEHOLDER}>"),
    ],
)
def test_text_keys_equal_a_per_pair_composition(instructions, settings):
    table = pairs(instructions)
    ours = text_key.with_text_keys(table, settings)
    per_pair = [text_key.text_key(r.query, r.passage) for r in requests_for(table, settings)]
    assert ours.column(text_key.COLUMN).to_pylist() == per_pair
    assert len(set(ours.column(text_key.COLUMN).to_pylist())) > 10  # keys differ by text
    chunked = pa.concat_tables([table.slice(0, 13), table.slice(13)])
    assert (
        text_key.with_text_keys(chunked, settings)
        .column(text_key.COLUMN)
        .equals(ours.column(text_key.COLUMN))
    )
