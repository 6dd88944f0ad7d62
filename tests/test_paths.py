"""Path safety: unknown schemes, '..' segments, '::' chaining and control characters are
refused (naming the field) unless the job sets storage.allow_unsafe_paths."""

from __future__ import annotations

import pytest

from rank1_batch.paths import UnsafePath, check_uri
from rank1_batch.spec import JobError, spec_from_mapping


def job(output: str = "out", input_path: str = "in.parquet", **storage: object) -> dict:
    return {
        "input": {"path": input_path},
        "output": {"path": output},
        "model": {"name": "toy"},
        "storage": storage,
    }


@pytest.mark.parametrize(
    "uri",
    ["out/demo", "/abs/out", "file:///tmp/out", "s3://bucket/prefix", "s3a://b/p", "gs://b/p"],
)
def test_safe_output_uris_are_accepted(uri):
    assert spec_from_mapping(job(output=uri)).output.path == uri


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("s3://bucket/a/../b", "'..' segment"),
        ("../elsewhere", "'..' segment"),
        ("out/..", "'..' segment"),
        ("memory://x", "scheme 'memory' is not allowed"),
        ("http://example.com/x", "scheme 'http' is not allowed"),
        ("hf://datasets/x", "scheme 'hf' is not allowed"),  # read-only: inputs only
        ("simplecache::s3://b/p", "chains filesystems"),
        ("zip://a::file:///tmp/x.zip", "chains filesystems"),
        ("out/a\nb", "control characters"),
    ],
)
def test_unsafe_output_is_refused_naming_the_field(uri, rule):
    with pytest.raises(JobError) as err:
        spec_from_mapping(job(output=uri), source="job.yaml")
    msg = str(err.value)
    assert msg.startswith("job.yaml: output.path: ") and rule in msg
    assert "storage.allow_unsafe_paths" in msg


def test_unsafe_input_is_refused_naming_the_field():
    with pytest.raises(JobError, match=r"job\.yaml: input\.path: .*chains filesystems"):
        spec_from_mapping(job(input_path="blockcache::s3://b/in.parquet"), source="job.yaml")
    assert spec_from_mapping(job(input_path="hf://datasets/org/x/a.parquet"))


def test_explicit_opt_in_allows_unsafe_paths():
    spec = spec_from_mapping(job(output="memory://out/../x", allow_unsafe_paths=True))
    assert spec.output.path == "memory://out/../x"
    # The opt-in is not a result setting: resuming with or without it is the same job.
    assert "allow_unsafe_paths" not in str(spec.result_settings())


def test_check_uri_dotted_names_are_not_parent_segments():
    check_uri("s3://b/run..1/x..parquet", "output.path", output=True)
    with pytest.raises(UnsafePath):
        check_uri("s3://b/x/..\\y", "output.path", output=True)
