"""``rank1-batch plan``: the checks run would make, the streamed scan, the throughput model,
and the calibration against a real demo run (toy model, device: cpu)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch import cli
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.outputs import forecast, throughput

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "demo.yaml"
DEMO_INPUT = ROOT / "jobs" / "data" / "demo-pairs.parquet"
CPU = ["--set", "model.device=cpu"]


def plan_cli(tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / "plan.json"
    rc = cli.main(["-q", "plan", *args, "--out", str(out)])
    return rc, json.loads(out.read_text())


def pairs(n: int, **over: list) -> pa.Table:
    cols = {
        "query_id": [f"q{i % 7}" for i in range(n)],
        "query": ["cats and dogs"] * n,
        "doc_id": [f"d{i}" for i in range(n)],
        "passage": [f"passage number {i} about cats" for i in range(n)],
    }
    cols.update(over)
    return pa.table(cols)


def job(tmp_path: Path, input_path: Path, **extra: object) -> Path:
    path = tmp_path / "job.json"  # YAML is a superset of JSON
    spec = {
        "input": {"path": str(input_path)},
        "output": {"path": str(tmp_path / "out")},
        "model": {"name": "toy", "engine": "transformers", "device": "cpu",
                  "max_model_len": 2048},
        "reasoning": {"max_tokens": 64, "min_reserve": 64},
        **extra,
    }  # fmt: skip
    path.write_text(json.dumps(spec))
    return path


# -- the scan -------------------------------------------------------------------------------
def test_scan_counts_pairs_queries_duplicates_and_rejects_exactly(tmp_path, monkeypatch):
    table = pairs(
        40,
        doc_id=[f"d{i % 30}" if i < 35 else None for i in range(40)],
        passage=["text"] * 3 + ["  "] + ["text"] * 36,
    )
    # Also a second file repeating five pairs of the first: duplicates across files count.
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet", row_group_size=8)
    pq.write_table(table.slice(0, 5), tmp_path / "in" / "b.parquet")
    spec = spec_from_mapping(json.loads(job(tmp_path, tmp_path / "in").read_text()))
    from rank1_batch.job.inputs import scan_inputs

    files = scan_inputs(spec.input)
    monkeypatch.setattr(forecast, "SPILL_ROWS", 6)  # force the on-disk path
    scan = forecast.scan(spec, files, sample_size=10)
    # Truth, computed the obvious way.
    qids = table.column("query_id").to_pylist() + table.column("query_id").to_pylist()[:5]
    dids = table.column("doc_id").to_pylist() + table.column("doc_id").to_pylist()[:5]
    texts = table.column("passage").to_pylist() + table.column("passage").to_pylist()[:5]
    good = [(q, d) for q, d, t in zip(qids, dids, texts, strict=True) if d and t.strip()]
    assert scan.input_rows == 45
    assert scan.rejected == {"null_doc_id": 5, "empty_passage": 2}
    assert scan.pairs == len(set(good))
    assert scan.duplicates == len(good) - len(set(good)) > 0
    assert scan.queries == len({q for q, _ in good})
    sample = scan.sample
    assert sample is not None and sample.num_rows == 10
    keys = list(zip(sample["query_id"].to_pylist(), sample["doc_id"].to_pylist(), strict=True))
    assert len(set(keys)) == 10 and set(keys) <= set(good)


def test_summary_percentiles():
    s = forecast.summary(list(range(1, 101)))
    assert s["mean"] == 50.5 and s["min"] == 1 and s["max"] == 100
    assert 94 <= s["p95"] <= 96
    assert forecast.summary([]) == {}


# -- the throughput model -------------------------------------------------------------------
def test_throughput_estimate_math_and_overrides(tmp_path):
    table = throughput.load_table()
    for size, row in table["decode_tokens_per_s"].items():
        assert size in throughput.SIZE_CLASSES
        for gpu, entry in row.items():
            assert entry["source"] and entry["value"] > 0, (size, gpu)
            assert table["gpus"][gpu]["source"]
    params = int(7.6e9)
    work = throughput.Work(pairs=1000, prompt_tokens=0, generated_tokens=3_600_000)
    rows = {r["gpu"]: r for r in throughput.estimate(work, params, table)}
    a100 = rows["A100-80GB"]
    assert a100["gpu_hours"] == pytest.approx(3_600_000 / 3363 / 3600)
    assert a100["cost_usd"] == pytest.approx(a100["gpu_hours"] * 1.30)
    # Prompt tokens cost prefill time: mfu * flops / (2 * params) tokens/s.
    work2 = throughput.Work(pairs=1000, prompt_tokens=1e9, generated_tokens=3_600_000)
    a100b = {r["gpu"]: r for r in throughput.estimate(work2, params, table)}["A100-80GB"]
    prefill = 0.4 * 312e12 / (2 * params)
    assert a100b["gpu_hours"] == pytest.approx(a100["gpu_hours"] + 1e9 / prefill / 3600)
    # Command-line override: a new GPU type and a new price for an existing one.
    over = [throughput.parse_override("L40S=2000@0.9"), throughput.parse_override("H100-80GB=7000")]
    rows = {r["gpu"]: r for r in throughput.estimate(work, params, table, over)}
    assert rows["L40S"]["gpu_hours"] == pytest.approx(3_600_000 / 2000 / 3600)
    assert rows["L40S"]["cost_usd"] == pytest.approx(0.5 * 0.9)
    assert rows["H100-80GB"]["decode_tokens_per_s"] == 7000
    # A file merges over the packaged table.
    f = tmp_path / "t.yaml"
    f.write_text(
        "gpus: {A100-80GB: {usd_per_hour: 2.0}}\n"
        "decode_tokens_per_s: {7b: {A100-80GB: {value: 1000, source: mine}}}\n"
    )
    rows = {r["gpu"]: r for r in throughput.estimate(work, params, throughput.load_table(f))}
    assert rows["A100-80GB"]["gpu_hours"] == pytest.approx(1.0)
    assert rows["A100-80GB"]["cost_usd"] == pytest.approx(2.0)
    assert rows["A100-80GB"]["source"] == "mine"
    with pytest.raises(throughput.ThroughputError, match="GPU=TOKENS_PER_S"):
        throughput.parse_override("H100 7000")


def test_size_class_from_config():
    qwen7b = {
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "vocab_size": 152064,
        "intermediate_size": 18944,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
    }
    params = throughput.parameter_count(qwen7b)
    assert 7.0e9 < params < 8.0e9
    assert throughput.size_class(params)[:2] == ("7b", 1.0)
    name, scale, note = throughput.size_class(int(3e9))
    assert name == "7b" and scale == 2.0 and "scaled" in note


# -- checks: each names why run would fail --------------------------------------------------
def test_missing_column_exits_non_zero_naming_it(tmp_path, capsys):
    pq.write_table(pairs(10).drop_columns(["passage"]), tmp_path / "in.parquet")
    rc, report = plan_cli(tmp_path, str(job(tmp_path, tmp_path / "in.parquet")))
    assert rc == 1
    assert "missing column 'passage'" in capsys.readouterr().err
    assert any("missing column 'passage'" in f for f in report["would_fail"])
    assert not (tmp_path / "out").exists()


def test_output_under_a_file_exits_non_zero_naming_it(tmp_path, capsys):
    pq.write_table(pairs(10), tmp_path / "in.parquet")
    (tmp_path / "afile").write_text("x")
    rc, report = plan_cli(
        tmp_path, str(job(tmp_path, tmp_path / "in.parquet")), "--output",
        str(tmp_path / "afile" / "out"), "--sample", "0", "--reasoning-mean", "20",
    )  # fmt: skip
    assert rc == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert report["work"]["pairs"] == 10  # the other checks and the scan still ran


@pytest.mark.s3
def test_denied_s3_output_exits_non_zero_naming_it(tmp_path, s3, capsys):
    from s3_server import FaultPlan, FaultProxy

    pq.write_table(pairs(10), tmp_path / "in.parquet")
    with FaultProxy(s3.port, FaultPlan(deny=True)) as proxy:
        uri = f"s3://{s3.bucket}/denied"
        rc, report = plan_cli(
            tmp_path, str(job(tmp_path, tmp_path / "in.parquet")), "--output", uri,
            "--set", f"storage.endpoint_url={proxy.url}", "--sample", "0",
            "--reasoning-mean", "20",
        )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert f"output: {uri}" in err and "Forbidden" in err
    assert [c["check"] for c in report["checks"] if not c["ok"]] == ["output"]


@pytest.mark.s3
def test_writable_s3_output_is_probed_and_left_clean(tmp_path, s3):
    pq.write_table(pairs(10), tmp_path / "in.parquet")
    rc, report = plan_cli(
        tmp_path, str(job(tmp_path, tmp_path / "in.parquet")), "--output",
        f"s3://{s3.bucket}/fresh", "--set", f"storage.endpoint_url={s3.endpoint}",
        "--sample", "0", "--reasoning-mean", "20",
    )  # fmt: skip
    assert rc == 0, report["would_fail"]
    assert "probe written and deleted" in report["checks"][0]["detail"]
    assert s3.keys("fresh") == []


# -- against a real demo run ----------------------------------------------------------------
@pytest.mark.ray
def test_demo_plan_matches_the_run_and_sees_changes(tmp_path, demo_reference, capsys):
    done = json.loads((demo_reference / "_SUCCESS.json").read_text())
    rc, report = plan_cli(
        tmp_path, str(DEMO), "--output", str(demo_reference), "--sample", "100", *CPU
    )
    assert rc == 0, report["would_fail"]
    w = report["work"]
    assert (w["pairs"], w["queries"], w["duplicates"], w["rejected"]) == (3000, 100, 0, 0)
    assert w["pairs"] == done["scored"]
    assert report["checks"][2] == {
        "check": "fingerprint", "ok": True, "detail": "complete: run would write nothing"
    }  # fmt: skip
    assert report["calibration"]["pairs"] == 100
    measured = done["reasoning_tokens"] / done["scored"]
    estimated = report["reasoning"]["mean"]
    print(f"reasoning tokens/pair: plan {estimated:.2f}, run {measured:.2f}")
    assert abs(estimated - measured) <= 0.2 * measured
    assert report["prompts"]["prompt_tokens"]["mean"] == pytest.approx(
        done["prompt_tokens"] / done["scored"], rel=0.05
    )
    assert {r["gpu"] for r in report["estimate"]} >= {"A100-80GB", "H100-80GB"}
    assert all(r["gpu_hours"] > 0 for r in report["estimate"])
    table = capsys.readouterr().out
    assert "3,000 pairs over 100 queries" in table and "GPU-hours" in table
    # A changed result-determining setting: run would refuse the folder, and plan says why.
    rc, report = plan_cli(
        tmp_path, str(DEMO), "--output", str(demo_reference), "--sample", "0",
        "--reasoning-mean", "20", "--set", "reasoning.max_tokens=32", *CPU,
    )  # fmt: skip
    assert rc == 1
    assert "job.reasoning.max_tokens: 64 -> 32" in capsys.readouterr().err
    assert report["resume"]["state"] == "refused"
    # With the finished demo as a reuse source, a new output would judge nothing.
    rc, report = plan_cli(
        tmp_path, str(DEMO), "--output", str(tmp_path / "new"), "--sample", "0",
        "--reasoning-mean", "20", "--set", f"reuse=['{demo_reference}']", *CPU,
    )  # fmt: skip
    assert rc == 0, report["would_fail"]
    assert report["reuse_estimate"]["share"] == 1.0
    assert report["reuse_estimate"]["available"] == 3000
    assert report["tokens"]["pairs_to_judge"] == 0
    assert "~3,000 pairs copied" in capsys.readouterr().out
