"""Job files: typed, validated, overridable; errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from rank1_batch.job.load import load_job, spec_from_mapping
from rank1_batch.job.spec import JobError

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "model": {"name": "toy"}}


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_file_loads(job):
    spec = load_job(job)
    assert spec.model.name


def test_defaults_follow_the_reference():
    spec = spec_from_mapping(MINIMAL)
    assert spec.model.max_model_len == 16000
    assert spec.reasoning.max_tokens == 8192
    assert spec.model.engine == "auto"
    assert spec.input.format == "pairs"


def test_missing_field_names_file_and_field(tmp_path):
    p = write(tmp_path, "input: {path: x}\noutput: {path: o}\n")
    with pytest.raises(JobError) as e:
        load_job(p)
    assert f"{p}: model: required field is missing" in str(e.value)


def test_wrong_type_names_field_and_value(tmp_path):
    p = write(
        tmp_path, "input: {path: x}\noutput: {path: o}\nmodel: {name: toy, max_model_len: lots}\n"
    )
    with pytest.raises(JobError) as e:
        load_job(p)
    assert "model.max_model_len" in str(e.value) and "'lots'" in str(e.value)
    assert str(p) in str(e.value)


def test_unknown_field_is_refused(tmp_path):
    p = write(tmp_path, "input: {path: x}\noutput: {path: o}\nmodel: {name: toy, tempurature: 1}\n")
    with pytest.raises(JobError, match=r"model\.tempurature: unknown field"):
        load_job(p)


def test_bad_choice_and_range():
    with pytest.raises(JobError, match=r"model\.engine"):
        spec_from_mapping({**MINIMAL, "model": {"name": "toy", "engine": "tensorrt"}})
    with pytest.raises(JobError, match=r"compute\.workers"):
        spec_from_mapping({**MINIMAL, "compute": {"workers": 0}})


def test_template_must_hold_placeholder():
    with pytest.raises(JobError, match=r"reasoning\.prompt_template.*FILL_QUERY_HERE"):
        spec_from_mapping({**MINIMAL, "reasoning": {"prompt_template": "no slot"}})


def test_set_overrides_any_field_and_is_validated(tmp_path):
    p = write(tmp_path, "input: {path: x}\noutput: {path: o}\nmodel: {name: toy}\n")
    spec = load_job(
        p, overrides=["compute.workers=3", "reasoning.instruction=be strict", "model.revision=null"]
    )
    assert spec.compute.workers == 3
    assert spec.reasoning.instruction == "be strict"
    with pytest.raises(JobError, match=r"compute\.workers"):
        load_job(p, overrides=["compute.workers=many"])
    with pytest.raises(JobError, match=r"expected section\.key=value"):
        load_job(p, overrides=["compute.workers"])


def test_output_override(tmp_path):
    p = write(tmp_path, "input: {path: x}\noutput: {path: o}\nmodel: {name: toy}\n")
    assert load_job(p, output="s3://bucket/run=1").output.path == "s3://bucket/run=1"


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(JobError, match="cannot read job file"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(write(tmp_path, "input: [unclosed"))


def test_fingerprint_ignores_tuning_knobs_but_not_results():
    a = spec_from_mapping(MINIMAL)
    b = spec_from_mapping({**MINIMAL, "compute": {"workers": 4, "batch_size": 2}})
    c = spec_from_mapping({**MINIMAL, "reasoning": {"max_tokens": 100}})
    assert a.result_settings() == b.result_settings()
    assert a.result_settings() != c.result_settings()
    d = spec_from_mapping({**MINIMAL, "reasoning": {"instruction": "x"}})
    assert a.prompt_id != d.prompt_id
