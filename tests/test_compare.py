"""``rank1-batch compare``: its numbers against independent computations.

Three runs of the demo's candidates: the demo output (A), a copy with a few queries' scores
replaced by noise (B, 12% of queries; C, 4%), written through the commit helpers
(``compare_outputs.derive``), plus the first stage. Per-query values are checked against
pytrec_eval called directly on the committed runs, means against ``eval``, t-test p-values
against ``scipy.stats.ttest_rel``, randomization p-values against a plain sign-flip test
written here, the Holm correction by hand.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compare_outputs import degrade, derive, drop_shards, unit
from conftest import ROOT, run_cli
from scipy import stats

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.compare import correct, exact, randomization_test
from rank1_batch.outputs.evaluate import evaluate_output
from rank1_batch.outputs.exports import json_run
from rank1_batch.outputs.results import LABEL_STATUSES, read_results

QRELS = ROOT / "jobs" / "data" / "demo.qrels"
METRICS = {"nDCG@10": "ndcg_cut_10", "P@5": "P_5", "R@100": "recall_100"}


@pytest.fixture(scope="module")
def runs(report_demo_out: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {
        "a": derive(report_demo_out, root / "a"),
        "b": derive(report_demo_out, root / "b", degrade(0.12, "b"), lambda t: "[B] " + t.strip()),
        "c": derive(report_demo_out, root / "c", degrade(0.04, "c")),
    }


def qrels() -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in QRELS.read_text().splitlines():
        q, _, d, rel = line.split()
        out.setdefault(q, {})[d] = int(rel)
    return out


def pytrec_values(out: Path, first_stage: bool = False) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query values on the committed run (the exported one), keyed by the
    ir_measures name."""
    import pytrec_eval

    table = read_results(Store(str(out))).table
    if first_stage:
        run: dict[str, dict[str, float]] = {}
        for q, d, r in zip(
            table["query_id"].to_pylist(),
            table["doc_id"].to_pylist(),
            table["input_rank"].to_pylist(),
            strict=True,
        ):
            run.setdefault(q, {})[d] = -float(r)
    else:
        run = json_run(table)
    ev = pytrec_eval.RelevanceEvaluator(qrels(), {"ndcg_cut.10", "P.5", "recall.100"})
    got = ev.evaluate(run)
    return {m: {q: v[name] for q, v in got.items()} for m, name in METRICS.items()}


def compare_json(*args: str) -> dict[str, Any]:
    proc = run_cli("compare", *args, "--json")
    return dict(json.loads(proc.stdout))


def sign_flip_p(d: np.ndarray, n: int, seed: int) -> float:
    """Two-sided paired randomization test, written plainly: flip each query's sign."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    return float((null >= abs(d.mean()) - 1e-12).mean())


@pytest.mark.ray
def test_compare_against_eval_pytrec_scipy(runs: dict[str, Path]) -> None:
    a, b, c = (str(runs[k]) for k in "abc")
    report = compare_json(a, b, c, "first-stage", "--qrels", str(QRELS), "--metrics", *METRICS)
    assert report["baseline"] == a and report["permutations"] == 10000
    assert report["queries"]["compared"] == 100 and report["queries"]["dropped"] == 0
    assert not report["randomization_exact"]
    evals = {k: evaluate_output(Store(str(p)), str(QRELS), list(METRICS)) for k, p in runs.items()}
    want = {k: pytrec_values(p) for k, p in runs.items()}
    want["fs"] = pytrec_values(runs["a"], first_stage=True)
    names = ["a", "b", "c", "fs"]
    for metric, rows in report["results"].items():
        assert [r["label"] for r in rows] == [a, b, c, "first-stage"]
        # means: eval's (the first stage: eval's first_stage run)
        for r, k in zip(rows, names, strict=True):
            run = "first_stage" if k == "fs" else "reranked"
            assert r["mean"] == pytest.approx(evals[k if k != "fs" else "a"]["runs"][run][
                "aggregate"][metric], abs=1e-12)  # fmt: skip
        # per-query values: pytrec_eval's
        per_query = report["per_query"][metric]
        assert set(per_query) == set(want["a"][metric])
        for q, values in per_query.items():
            assert values == pytest.approx([want[k][metric][q] for k in names], abs=1e-12)
        qs = sorted(per_query)
        base = np.array([want["a"][metric][q] for q in qs])
        raw = []
        for r, k in zip(rows[1:], names[1:], strict=True):
            other = np.array([want[k][metric][q] for q in qs])
            d = other - base
            assert r["delta"] == pytest.approx(d.mean(), abs=1e-12)
            assert (r["wins"], r["ties"], r["losses"]) == (
                int((d > 1e-12).sum()), int((abs(d) <= 1e-12).sum()), int((d < -1e-12).sum())
            )  # fmt: skip
            if np.all(d == 0):
                assert r["p_t"] == 1.0 and r["p_randomization"] == 1.0
            else:
                assert r["p_t"] == pytest.approx(stats.ttest_rel(other, base).pvalue, rel=1e-9)
                p_ind, n_ind = sign_flip_p(d, 40_000, seed=12345), 40_000
                se = math.sqrt(p_ind * (1 - p_ind) * (1 / n_ind + 1 / 10_000))
                assert abs(r["p_randomization"] - p_ind) <= 4 * se + 3 / 10_000, (metric, k)
            raw.append(r["p_t"])
        # Holm by hand over the three comparisons of this metric
        order = sorted(range(3), key=lambda i: raw[i])
        by_hand, running = [0.0] * 3, 0.0
        for step, i in enumerate(order):
            running = max(running, min(1.0, (3 - step) * raw[i]))
            by_hand[i] = running
        assert [r["p_t_corrected"] for r in rows[1:]] == pytest.approx(by_hand, rel=1e-12)
        assert [r["significant"] for r in rows[1:]] == [p < 0.05 for p in by_hand]
    nd = report["results"]["nDCG@10"]
    # the noise costs B (12% of queries) more than C (4%), and the first stage the most
    assert nd[0]["mean"] > nd[2]["mean"] > nd[1]["mean"] > nd[3]["mean"]
    # a p-value away from 0 and 1 is among those checked against the sign-flip test
    assert any(0.001 < r["p_randomization"] < 0.9 for rows in report["results"].values()
               for r in rows[1:])  # fmt: skip


def test_holm_and_bonferroni_by_hand() -> None:
    p = [0.01, 0.04, 0.03]
    # Holm: 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 = 0.04, raised to 0.06 (monotone)
    assert correct(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert correct(p, "bonferroni") == pytest.approx([0.03, 0.12, 0.09])
    assert correct(p, "none") == p
    assert correct([0.5, 0.9], "holm") == pytest.approx([1.0, 1.0])


def test_randomization_exact_on_few_queries() -> None:
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.4])
    b = np.array([0.3, 0.6, 0.2, 1.0, 0.1, 0.8])
    assert exact(len(a), 10_000)
    d = b - a
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * len(d))).reshape(len(d), -1).T
    null = np.abs((signs * d).mean(axis=1))
    want = float((null >= abs(d.mean()) - 1e-12).mean())
    assert randomization_test(a, b, 10_000, seed=0) == pytest.approx(want)


@pytest.mark.ray
def test_different_queries_use_the_intersection(runs: dict[str, Path], tmp_path: Path) -> None:
    store = Store(str(runs["a"]))
    shards = sorted(commit.committed_shards(store))
    gone = read_results(store).table
    lost_shard = shards[0]
    lost = set(
        store.read_parquet(layout.pairs_path(lost_shard), ["query_id"])["query_id"].to_pylist()
    )
    assert 0 < len(lost) < 100
    d = drop_shards(runs["b"], tmp_path / "d", [lost_shard])
    a = str(runs["a"])
    report = compare_json(a, str(d), "--qrels", str(QRELS), "--metrics", "nDCG@10")
    q = report["queries"]
    assert q["compared"] == 100 - len(lost)
    assert q["dropped"] == len(lost) and q["dropped_per_run"] == [len(lost), 0]
    assert set(report["per_query"]["nDCG@10"]) == set(gone["query_id"].to_pylist()) - lost
    pa_, pd_ = pytrec_values(runs["a"]), pytrec_values(d)
    kept = sorted(set(pa_["nDCG@10"]) - lost)
    rows = report["results"]["nDCG@10"]
    assert rows[0]["mean"] == pytest.approx(np.mean([pa_["nDCG@10"][k] for k in kept]))
    assert rows[1]["mean"] == pytest.approx(np.mean([pd_["nDCG@10"][k] for k in kept]))
    assert report["runs"][1]["complete"] is False
    agree = report["agreement"][0]
    assert agree["queries"] == 100 - len(lost)
    assert (agree["only_in_baseline"], agree["only_in_other"]) == (len(lost), 0)
    text = run_cli("compare", a, str(d), "--qrels", str(QRELS)).stdout
    assert f"dropped: {len(lost)} of the 100 judged queries of {a}" in text
    assert f"dropped {len(lost)} queries held by one run only" in text


def _label(score: float, status: str) -> int:
    if status not in LABEL_STATUSES or math.isnan(score):
        return 0
    return 1 if score >= 0.5 else -1


@pytest.mark.ray
def test_agreement_without_qrels(runs: dict[str, Path]) -> None:
    a, b = str(runs["a"]), str(runs["b"])
    report = compare_json(a, b, "first-stage", "--top-k", "5")
    assert "results" not in report
    ab, afs = report["agreement"]
    ta, tb = (read_results(Store(p)).table.to_pylist() for p in (a, b))
    rows_a = {(r["query_id"], r["doc_id"]): r for r in ta}
    rows_b = {(r["query_id"], r["doc_id"]): r for r in tb}
    assert rows_a.keys() == rows_b.keys()
    differ = sum(
        _label(rows_a[k]["score"], rows_a[k]["status"])
        != _label(rows_b[k]["score"], rows_b[k]["status"])
        for k in rows_a
    )
    assert ab["pairs"] == len(rows_a) and ab["label_differ_share"] == pytest.approx(
        differ / len(rows_a)
    )
    assert differ > 0 and afs["label_differ_share"] is None
    per_query = {r["query_id"]: r for r in ab["per_query"]}
    assert len(per_query) == 100
    for q in sorted(per_query)[:20]:
        docs = sorted(d for (qq, d), r in rows_a.items() if qq == q and r["rank"] is not None)
        ra = [rows_a[(q, d)]["rank"] for d in docs]
        rb = [rows_b[(q, d)]["rank"] for d in docs]
        tau = stats.kendalltau(ra, rb).statistic
        assert per_query[q]["tau"] == pytest.approx(tau, abs=1e-12)
        top_a = {d for d in docs if rows_a[(q, d)]["rank"] <= 5}
        top_b = {d for d in docs if rows_b[(q, d)]["rank"] <= 5}
        assert per_query[q]["overlap"] == pytest.approx(len(top_a & top_b) / 5)
    # exactly the queries whose scores were replaced by noise disagree
    noisy = {q for q in per_query if unit("b", q) < 0.12}
    assert {q for q, r in per_query.items() if r["tau"] != pytest.approx(1.0)} == noisy
    assert min(r["tau"] for r in per_query.values()) < 0.5
    assert ab["kendall_tau_median"] == pytest.approx(1.0)


@pytest.mark.ray
def test_compare_page_without_qrels(report_demo_out: Path, tmp_path: Path) -> None:
    """No qrels: no tests, the agreement still, and disagreements by Kendall tau."""
    b = derive(report_demo_out, tmp_path / "b", degrade(0.12, "b"))
    html = tmp_path / "c.html"
    args = ["report", str(report_demo_out), "--compare", str(b), "--out", str(html)]
    run_cli(*args)
    text = html.read_text()
    assert "No qrels given" in text and 'id="agreement-table"' in text
    assert "the lowest Kendall τ-b" in text and 'class="dq"' in text
    bad = run_cli("report", str(report_demo_out), "--compare", str(report_demo_out), check=False)
    assert isinstance(bad, subprocess.CompletedProcess) and bad.returncode == 2
    assert "the same run is named twice" in bad.stderr
