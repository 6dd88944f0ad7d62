"""The pure helpers behind benchmarks/run.py (no timing, no model, no Ray)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common


def test_common_prefix_len():
    assert common.common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common.common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common.common_prefix_len([], [1]) == 0
    assert common.common_prefix_len([5], [6]) == 0


def test_shared_prefix_counts_each_prompt_against_the_previous_one():
    prompts = [[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7], [8]]
    shared, total = common.shared_prefix(prompts)
    assert (shared, total) == (3 + 2 + 0, 4 + 4 + 3 + 1)
    assert common.shared_prefix([]) == (0, 0)
    assert common.shared_prefix([[1, 2]]) == (0, 2)


def test_padded_fraction():
    # one batch [4, 2]: width 4, 8 slots, 6 real tokens -> 2 padded
    assert common.padded_fraction([[4, 2]]) == 2 / 8
    # equal lengths: no padding; empty batches are ignored
    assert common.padded_fraction([[3, 3], []]) == 0.0
    assert common.padded_fraction([[5], [2, 1]]) == 1 / (5 + 4)
    assert common.padded_fraction([]) == 0.0


def test_percentiles_use_nearest_rank():
    values = list(range(1, 101))
    assert common.p95(values) == 95
    assert common.p95([7]) == 7
    assert common.p95([3, 1, 2]) == 3
    assert common.percentile(values, 50) == 50
    assert math.isnan(common.p95([]))


def test_ratio_and_chunks():
    assert common.ratio(3, 2) == 1.5
    assert common.ratio(1, 0) is None
    assert common.chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
