"""Reasoning modes: spend reasoning tokens only where they can change the ranking.

``reasoning.mode`` (pure rules here; the engines' shared protocol runs them, see
:func:`rank1_batch.engines.base.judge_pairs`):

* ``think`` — every pair gets Rank1's full reasoning (the reference protocol).
* ``direct`` — no reasoning: one answer token after :func:`rank1_batch.core.rank1.direct_prompt`
  (status ``direct``).
* ``cascade`` — ``direct`` for every pair of a shard, then full reasoning for the pairs that
  can change the top of their query's ranking (:func:`select`): the ``top_k`` best pairs of
  each query by direct score, and the pairs the direct pass is unsure of,
  ``|p - 0.5| < margin``. A query's pairs all sit in one shard, so the choice is per shard.

How the final ranking combines the two scores (:func:`combine`): a pair's ``score`` is its
reasoned score where it was reasoned (and the reasoning produced a verdict, status
``complete`` or ``forced``), else its direct score; the query is ranked by that one column.
Why not "reasoned pairs ahead of the rest": both numbers are the same model's P(true) from
the same two-way softmax at the same answer position, so they share one scale, and the
reasoned one is the model's better-informed estimate. One scale keeps ``score`` a
probability every reader (exports, labels, thresholds, eval) can use as before, and lets
reasoning *demote*: a direct top-k pair that reasoning finds irrelevant leaves the top
instead of being pinned above every unreasoned pair; and an unsure pair (``margin``)
reasoned to 0.6 does not jump above a pair the direct pass already gives 0.95. The cost:
where direct and reasoned scores are calibrated differently the merge can misorder pairs
across the two groups; the benchmark (docs/reasoning-modes.md) measures the net effect.

Both scores are kept: ``score_direct``, ``score_reasoned`` (None where not computed) and
``decided_by`` (``direct`` or ``think``) say which of them set ``score``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from rank1_batch.core import rank1

CASCADE = "cascade"
REASONED_VERDICTS = (rank1.COMPLETE, rank1.FORCED)


@dataclass(frozen=True)
class ReasoningMode:
    """``reasoning.mode`` and the cascade's parameters (``JobSpec.reasoning_mode``)."""

    mode: str = rank1.THINK
    top_k: int = 0
    margin: float = 0.0


def select(
    query_ids: Sequence[str],
    direct: Sequence[rank1.Judgement],
    *,
    top_k: int,
    margin: float,
) -> list[int]:
    """Indices (ascending) of the pairs a cascade reasons about.

    A pair is chosen when its direct pass scored it (status ``direct``) and it is among its
    query's ``top_k`` by direct score (ties broken by position, so the choice is
    deterministic), or when ``|score - 0.5| < margin``. ``top_k=0`` and ``margin=0`` turn a
    criterion off. Error and fallback rows are never chosen (reasoning would not fit or help).
    """
    if len(query_ids) != len(direct):
        raise ValueError("query_ids and direct judgements differ in length")
    if top_k < 0 or not 0 <= margin <= 0.5:
        raise ValueError(f"top_k must be >= 0 and margin in [0, 0.5], got {top_k}, {margin}")
    scored = [i for i, j in enumerate(direct) if j.status == rank1.DIRECT]
    chosen = {i for i in scored if abs(direct[i].score - 0.5) < margin}
    if top_k:
        by_query: dict[str, list[int]] = {}
        for i in scored:
            by_query.setdefault(query_ids[i], []).append(i)
        for members in by_query.values():
            members.sort(key=lambda i: (-direct[i].score, i))
            chosen.update(members[:top_k])
    return sorted(chosen)


def reasoned_pairs(
    mode: str,
    query_ids: Sequence[str],
    direct: Sequence[rank1.Judgement] | None,
    *,
    top_k: int = 0,
    margin: float = 0.0,
) -> list[int]:
    """Indices of the pairs to reason about: all for ``think``, none for ``direct``."""
    if mode == rank1.THINK:
        return list(range(len(query_ids)))
    if direct is None:
        raise ValueError(f"mode {mode!r} needs the direct judgements")
    if mode == rank1.DIRECT:
        return []
    if mode == CASCADE:
        return select(query_ids, direct, top_k=top_k, margin=margin)
    raise ValueError(f"unknown reasoning mode {mode!r} (one of {', '.join(rank1.MODES)})")


def combine(direct: rank1.Judgement | None, reasoned: rank1.Judgement | None) -> rank1.Judgement:
    """The row recorded for one pair, from whichever passes ran (see the module docstring).

    The reasoned judgement decides when it has a verdict (``complete``/``forced``) or when
    there is no direct one (``think`` mode, where it decides whatever its status); otherwise
    the direct one decides, carrying the reasoning tokens and trace the failed reasoning cost.
    """
    if direct is None and reasoned is None:
        raise ValueError("a pair needs at least one judgement")
    d_score = _score(direct)
    r_score = _score(reasoned)
    if reasoned is not None and (direct is None or reasoned.status in REASONED_VERDICTS):
        by = rank1.THINK if reasoned.status != rank1.ERROR else None
        return dataclasses.replace(
            reasoned, score_direct=d_score, score_reasoned=r_score, decided_by=by
        )
    assert direct is not None
    by = rank1.DIRECT if direct.status != rank1.ERROR else None
    if reasoned is None:
        return dataclasses.replace(direct, score_direct=d_score, decided_by=by)
    return dataclasses.replace(
        direct,
        reasoning_tokens=reasoned.reasoning_tokens,
        reasoning=reasoned.reasoning,
        finish_reason=reasoned.finish_reason,
        score_direct=d_score,
        score_reasoned=r_score,
        decided_by=by,
    )


def _score(j: rank1.Judgement | None) -> float | None:
    if j is None or j.status in (rank1.ERROR, rank1.FALLBACK) or math.isnan(j.score):
        return None
    return j.score


def finish(
    n: int,
    direct: Sequence[rank1.Judgement] | None,
    reasoned: dict[int, rank1.Judgement],
) -> list[rank1.Judgement]:
    """The ``n`` rows of a shard from the direct judgements (None in ``think`` mode) and the
    reasoned ones by index."""
    if direct is not None and len(direct) != n:
        raise ValueError("direct judgements do not cover the shard")
    return [combine(None if direct is None else direct[i], reasoned.get(i)) for i in range(n)]


def columns_from_status(statuses: Sequence[str], scores: Sequence[float]) -> dict[str, list]:
    """``score_direct``, ``score_reasoned`` and ``decided_by`` of rows known only by status
    and score (rows copied by ``reuse:``, which cascade jobs do not use): what
    :func:`combine` records for a ``think`` or ``direct`` judgement."""
    direct = [s == rank1.DIRECT for s in statuses]
    return {
        "score_direct": [sc if d else None for sc, d in zip(scores, direct, strict=True)],
        "score_reasoned": [
            sc if st in REASONED_VERDICTS else None for sc, st in zip(scores, statuses, strict=True)
        ],
        "decided_by": [
            None if st == rank1.ERROR else (rank1.DIRECT if d else rank1.THINK)
            for st, d in zip(statuses, direct, strict=True)
        ],
    }
