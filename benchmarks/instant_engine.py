"""A test-double engine for the scale benchmark: scores every pair instantly, no model.

Not an engine users can pick (nothing in ``rank1_batch`` knows it): the scale benchmark
injects it into the local executor so that only the pipeline around scoring is measured.
The score is a deterministic function of the passage text, so reruns agree.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from rank1_batch.core import rank1


class InstantTestEngine:
    """Test double: ``judge`` returns a made-up but deterministic judgement per pair."""

    model_id = "instant-test-double"
    model_revision = "0"

    def judge(self, requests: Sequence[object]) -> list[rank1.Judgement]:
        out = []
        for r in requests:
            h = zlib.crc32(r.passage.encode())  # type: ignore[attr-defined]
            out.append(
                rank1.Judgement(
                    score=(h % 10_007) / 10_007, logit=0.0, status="complete", reasoning="."
                )
            )
        return out

    def close(self) -> None:
        pass
