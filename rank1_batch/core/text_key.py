"""The text half of a pair's result key, stored per pair in ``pairs/`` by prepare.

A pair's result key (:func:`rank1_batch.pipeline.reuse.result_key`) has two halves: the job's
key settings (model, prompt id, reasoning budget), the same for every pair of an output and
compared once per reuse source, and this text key: a 16-byte hash of the composed query text
and passage text the engine sees (:func:`rank1_batch.core.rows.requests_for`). Prepare writes
it as the ``text_key`` column of each ``pairs/`` shard, so that reuse matches an earlier
output's pairs on 16 bytes a pair instead of reading and composing their texts.

The column is optional: outputs prepared before it have none, and their readers compute the
same keys from the text columns (:func:`text_keys`). Every other reader of ``pairs/`` selects
the columns it needs, so the extra column changes nothing for them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.core import rank1
from rank1_batch.core.rows import TextSettings, requests_for

COLUMN = "text_key"
WIDTH = 16
TYPE = pa.binary(WIDTH)


def _head(query: str) -> Any:
    """The hash state after a composed query (its length first, so no other split of the
    same characters gives the same key)."""
    q = query.encode()
    h = hashlib.blake2b(digest_size=WIDTH)
    h.update(len(q).to_bytes(8, "big"))
    h.update(q)
    return h


def text_key(query: str, passage: str) -> bytes:
    """The text key of one pair's composed texts."""
    h = _head(query)
    h.update(passage.encode())
    return bytes(h.digest())


def text_keys(pairs: pa.Table, reasoning: TextSettings) -> pa.Array:
    """Text keys of a table of pairs (text columns as in ``pairs/``), composed as the job
    ``reasoning`` settings say: for each pair, :func:`text_key` of the texts
    :func:`rank1_batch.core.rows.requests_for` builds.

    A query's text repeats for each of its candidates (100 times in case 8), and composing it
    anew for every pair was 63% of a prepare unit's time; so each distinct (query, instruction)
    is composed and hashed once, through the same ``requests_for`` (its hash state copied for
    each of its pairs), and each passage through
    :func:`~rank1_batch.core.rank1.compose_passage` (about half the time; a test pins the keys
    equal to a per-pair composition).
    """
    n = pairs.num_rows
    query, instruction = (pairs.column(c).combine_chunks() for c in ("query", "instruction"))
    index: list[Any]
    if instruction.null_count == n and query.null_count == 0:  # the common case
        coded = pc.dictionary_encode(query)
        distinct = pa.table(
            {"query": coded.dictionary, "instruction": pa.nulls(len(coded.dictionary), pa.string())}
        )
        index = coded.indices.to_pylist()
    else:
        seen: dict[tuple[str | None, str | None], int] = {}
        index = [
            seen.setdefault(k, len(seen))
            for k in zip(query.to_pylist(), instruction.to_pylist(), strict=True)
        ]
        distinct = pa.table(
            {
                "query": pa.array([q for q, _ in seen], pa.string()),
                "instruction": pa.array([i for _, i in seen], pa.string()),
            }
        )
    m = distinct.num_rows
    blank = distinct.append_column("passage", pa.array([""] * m, pa.string()))
    composed = [r.query for r in requests_for(blank.append_column("title", pa.nulls(m)), reasoning)]
    heads = [_head(q) for q in composed]  # each query's half of the hash, copied per pair
    passages, titles = (pairs.column(c).to_pylist() for c in ("passage", "title"))
    keys = []
    for k, p, t in zip(index, passages, titles, strict=True):
        h = heads[k].copy()
        h.update(rank1.compose_passage(p, title=t).encode())
        keys.append(h.digest())
    return pa.array(keys, TYPE)


def with_text_keys(pairs: pa.Table, reasoning: TextSettings) -> pa.Table:
    """``pairs`` with its ``text_key`` column appended (what prepare writes)."""
    return pairs.append_column(pa.field(COLUMN, TYPE), text_keys(pairs, reasoning))
