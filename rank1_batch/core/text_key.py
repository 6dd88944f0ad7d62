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

import pyarrow as pa

from rank1_batch.core.rows import TextSettings, requests_for

COLUMN = "text_key"
WIDTH = 16
TYPE = pa.binary(WIDTH)


def text_key(query: str, passage: str) -> bytes:
    """The text key of one pair's composed texts (the query's length first, so no other
    split of the same characters gives the same key)."""
    q = query.encode()
    h = hashlib.blake2b(digest_size=WIDTH)
    h.update(len(q).to_bytes(8, "big"))
    h.update(q)
    h.update(passage.encode())
    return h.digest()


def text_keys(pairs: pa.Table, reasoning: TextSettings) -> pa.Array:
    """Text keys of a table of pairs (text columns as in ``pairs/``), composed as the job
    ``reasoning`` settings say."""
    keys = [text_key(r.query, r.passage) for r in requests_for(pairs, reasoning)]
    return pa.array(keys, TYPE)


def with_text_keys(pairs: pa.Table, reasoning: TextSettings) -> pa.Table:
    """``pairs`` with its ``text_key`` column appended (what prepare writes)."""
    return pairs.append_column(pa.field(COLUMN, TYPE), text_keys(pairs, reasoning))
