"""Path safety: unknown schemes, '..' segments, '::' chaining and control characters are
refused (naming the field) unless the job sets storage.allow_unsafe_paths."""

from __future__ import annotations

import pytest

from rank1_batch.io import layout
from rank1_batch.io.paths import UnsafePath, check_uri
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.job.spec import JobError


def job(output: str = "out", input_path: str = "in.parquet", **storage: object) -> dict:
    return {
        "input": {"path": input_path},
        "output": {"path": output},
        "model": {"name": "toy"},
        "storage": storage,
    }


@pytest.mark.parametrize(
    "uri",
    ["out/demo", "/abs/out", "file:///tmp/out", "s3://bucket/prefix", "s3a://b/p"],
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


@pytest.mark.parametrize("scheme", ["gs", "gcs", "az", "abfs", "abfss"])
def test_outputs_are_the_schemes_the_store_commits_to(scheme):
    """The path rules and the store's exclusive-create check are one list."""
    from rank1_batch.io import paths
    from rank1_batch.io import store as storage

    assert set(storage.EXCLUSIVE_BACKENDS) == paths.OUTPUT_SCHEMES == {"file", "local", "s3", "s3a"}
    with pytest.raises(JobError, match=f"output.path: .*scheme {scheme!r} is not allowed"):
        spec_from_mapping(job(output=f"{scheme}://bucket/out"))


def trec_job(tmp_path, **fields: str):
    import yaml

    data = {
        "input": {"path": "run.trec", "format": "trec", "queries": "q.jsonl", "corpus": "c.jsonl"},
        "output": {"path": str(tmp_path / "out")},
        "model": {"name": "toy"},
    }
    for dotted, value in fields.items():
        section, key = dotted.split("__")
        data[section][key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("field", "uri", "rule"),
    [
        ("input__queries", "../secrets/queries.jsonl", "'..' segment"),
        ("input__queries", "memory://q.jsonl", "scheme 'memory' is not allowed"),
        ("input__corpus", "simplecache::s3://b/corpus", "chains filesystems"),
        ("input__corpus", "http://example.com/corpus.jsonl", "scheme 'http' is not allowed"),
        ("model__name", "../../models/rank1", "'..' segment"),
        ("model__name", "zip://m::file:///tmp/m.zip", "chains filesystems"),
        ("model__name", "ftp://host/model", "scheme 'ftp' is not allowed"),
    ],
)
def test_every_uri_a_job_names_is_checked_one_line_exit_2(tmp_path, capsys, field, uri, rule):
    from rank1_batch.cli import main

    path = trec_job(tmp_path, **{field: uri})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    dotted = field.replace("__", ".")
    assert err.startswith(f"rank1-batch: error: {path}: {dotted}: {uri!r}")
    assert rule in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_hub_ids_and_local_model_folders_pass():
    for name in (
        "jhu-clsp/rank1-7b",
        "./models/rank1",
        "/models/rank1",
        "s3://b/models/x",
        "gs://b/m",
    ):
        assert spec_from_mapping({**job(), "model": {"name": name}}).model.name == name


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ({"id": "../../etc/x", "path": "pairs/../../etc/x.parquet"}, "is not a plain shard-NNNNN"),
        ({"id": "shard-00000", "path": "/etc/passwd"}, "is not pairs/shard-00000.parquet"),
        ({"id": "shard-00000/../../x"}, "is not a plain shard-NNNNN"),
        ({"id": 7}, "shard 7 is not a plain"),
    ],
)
def test_a_manifest_naming_other_files_is_refused_one_line_exit_2(tmp_path, capsys, entry, rule):
    """A resume joins the manifest's shard ids into paths: only prepare's own names pass."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from rank1_batch.cli import main
    from rank1_batch.io.store import Store
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.load import load_job

    data = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"query_id": ["q"], "query": ["a"], "doc_id": ["d"], "passage": ["b"]}), data
    )
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump({"input": {"path": str(data)}, "output": {"path": str(tmp_path / "out")},
                        "model": {"name": "toy", "engine": "transformers", "device": "cpu"}})
    )  # fmt: skip
    spec = load_job(path)
    store = Store(spec.output.path)
    claim_output(store, job_record(spec, listing(scan_inputs(spec.input))))
    store.write_json(layout.MANIFEST, {"shards": [{"id": "shard-00001"}, entry]})
    assert main(["-q", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rank1-batch: error: {store.uri}/pairs/_manifest.json: ")
    assert rule in err and err.count("\n") == 1
    assert not store.exists(layout.SUCCESS)


def test_manifest_names_prepare_writes_pass():
    from rank1_batch.io.paths import check_manifest

    check_manifest(
        {
            "shards": [{"id": "shard-00000", "path": "pairs/shard-00000.parquet"},
                       {"id": "shard-1000000"}],
            "rejected_files": ["rejected/shard-00000.parquet", "rejected/unit-00003.parquet"],
        },
        "m",
    )  # fmt: skip
    with pytest.raises(UnsafePath, match=r"rejected file '\.\./x\.parquet'"):
        check_manifest({"shards": [], "rejected_files": ["../x.parquet"]}, "m")
    check_manifest({"shards": [], "duplicate_files": ["duplicates/unit-00001.parquet"]}, "m")
    with pytest.raises(UnsafePath, match=r"duplicates file '\.\./y\.parquet'"):
        check_manifest({"shards": [], "duplicate_files": ["../y.parquet"]}, "m")
