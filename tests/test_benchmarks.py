"""The helpers behind benchmarks/run.py (no model, no Ray): pure statistics, synthetic inputs,
the child-process runner with its per-phase RSS samples."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

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


def test_scale_input_is_grouped_by_query_and_the_test_double_is_deterministic(tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import scale_cases
    from instant_engine import InstantTestEngine

    from rank1_batch.engines.base import JudgeRequest

    path = scale_cases.write_scale_pairs(tmp_path / "s.parquet", 1050, chunk=400)
    t = pq.read_table(path)
    assert t.num_rows == 1050
    qid = t.column("query_id")
    runs = 1 + pc.sum(pc.not_equal(qid[1:], qid[:-1])).as_py()
    assert runs == len(pc.unique(qid)) == 11  # 100 candidates a query, each query one run
    assert len(pc.unique(pc.binary_join_element_wise(qid, t.column("doc_id"), "|"))) == 1050
    req = [JudgeRequest("q", p) for p in t.column("passage").to_pylist()[:5]]
    a, b = InstantTestEngine().judge(req), InstantTestEngine().judge(req)
    assert a == b and all(0 <= j.score < 1 and j.status == "complete" for j in a)


def test_run_phased_merges_the_child_results_and_tags_rss_by_phase(tmp_path):
    from children import run_phased

    script = (
        "import json, time\n"
        "print(json.dumps({'phase': 'load'}), flush=True)\n"
        "data = bytearray(64 * 1024 * 1024)\n"
        "time.sleep(0.6)\n"
        "print(json.dumps({'phase': 'idle', 'loaded': len(data)}), flush=True)\n"
        "del data\n"
        "time.sleep(0.6)\n"
        "print('not json')\n"
    )
    result, peaks, wall = run_phased([sys.executable, "-c", script], "child")
    assert result == {"loaded": 64 * 1024 * 1024} and wall > 1
    assert peaks["load"]["driver"] > peaks["idle"]["driver"] + 32  # MiB, sampled per phase
    failing = "import sys; print('boom', file=sys.stderr); sys.exit(3)"
    with pytest.raises(RuntimeError, match="child exited 3: boom"):
        run_phased([sys.executable, "-c", failing], "child")


@pytest.mark.slow
@pytest.mark.ray
def test_every_benchmark_case_runs_at_a_tiny_size(tmp_path):
    """``benchmarks/run.py --tiny`` runs each case's real code path (the toy model, local Ray,
    the output readers), so a case that reads a renamed file or calls a moved function fails
    here, not on the next person's ``--quick`` run (case 7 once read
    ``scores/shard-00000.parquet`` after data files became attempt-named)."""
    import json
    import subprocess

    out = tmp_path / "tiny.json"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    expected = {
        "1_pipeline_overhead", "2_scaling", "3_resume", "4_prepare_throughput", "5_memory",
        "6_engine_efficiency", "7_token_economics", "8_scale", "9_drain", "10_reasoning_modes",
    }  # fmt: skip
    failed = {name: case["error"] for name, case in cases.items() if "error" in case}
    assert not failed, (failed, proc.stderr[-3000:])
    assert set(cases) == expected
    economics = cases["7_token_economics"]
    # The prefix-sharing figures come back with case 7 (they vanished while it failed).
    assert economics["pairs"] > 0 and economics["prompt_tokens"] > 0
    assert 0 <= economics["shared_prefix_fraction"] <= 1
    assert len(cases["10_reasoning_modes"]["settings"]) == 3
