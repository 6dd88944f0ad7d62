"""Row builders: the requests an engine judges, from a shard's pairs, and ranks within a query.

Pure functions over Arrow columns and plain values, shared by scoring, reuse and ``plan``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from rank1_batch.core import rank1


@dataclass(frozen=True)
class JudgeRequest:
    """One pair to judge: the composed query text and passage text (see ``rank1.compose_*``)."""

    query: str
    passage: str


class TextSettings(Protocol):
    """What composing a pair's text needs from the job (its ``reasoning`` section)."""

    instruction: str | None
    prompt_template: str | None


def requests_for(pairs: pa.Table, reasoning: TextSettings) -> list[JudgeRequest]:
    """Compose each pair's query and passage text with the job's instruction and template
    (a pair's own ``instruction`` wins over the job's)."""
    cols = {c: pairs.column(c).to_pylist() for c in ("query", "passage", "title", "instruction")}
    out = []
    for q, p, t, i in zip(
        cols["query"], cols["passage"], cols["title"], cols["instruction"], strict=True
    ):
        own = i if i is not None else reasoning.instruction
        out.append(
            JudgeRequest(
                query=rank1.compose_query(q, instruction=own, template=reasoning.prompt_template),
                passage=rank1.compose_passage(p, title=t),
            )
        )
    return out


def ranks_within_query(
    query_ids: list[str], doc_ids: list[str], scores: list[float]
) -> list[int | None]:
    """1-based rank of each pair in its query by score desc, then doc_id; None for NaN scores."""
    order = sorted(
        (i for i, s in enumerate(scores) if not math.isnan(s)),
        key=lambda i: (query_ids[i], -scores[i], doc_ids[i]),
    )
    ranks: list[int | None] = [None] * len(scores)
    prev, r = None, 0
    for i in order:
        r = r + 1 if query_ids[i] == prev else 1
        prev = query_ids[i]
        ranks[i] = r
    return ranks
