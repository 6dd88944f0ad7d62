"""The model fetched once per node: object-store folders copied to a node-local
cache under a lock, the pool waiting for the copy, and the job's scores unchanged."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from conftest import DEMO, run_cli
from s3_server import s3_env

from rank1_batch.engines import model_cache
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.outputs import results
from rank1_batch.toy.model import resolve_toy_model


def test_model_names_are_classified(tmp_path: Path) -> None:
    assert model_cache.kind("toy") == "toy"
    assert model_cache.kind("s3://bucket/models/rank1-7b") == "uri"
    assert model_cache.kind("gs://bucket/m") == "uri"
    assert model_cache.kind(str(tmp_path)) == "local"
    assert model_cache.kind("./not-there-yet") == "local"  # a path, never a hub id
    assert model_cache.kind("jhu-clsp/rank1-7b") == "hub"


def test_runai_streaming_copies_nothing() -> None:
    from rank1_batch.job.load import spec_from_mapping

    def spec(**engine_args: str):  # type: ignore[no-untyped-def]
        return spec_from_mapping(
            {
                "input": {"path": "in.parquet"},
                "output": {"path": "out"},
                "model": {"name": "s3://bucket/m", "engine_args": engine_args},
            }
        )

    assert model_cache.model_path(spec(load_format="runai_streamer")) == "s3://bucket/m"
    assert model_cache.fetch_on_nodes(spec(load_format="runai_streamer")) == []


def _upload_toy(s3) -> str:  # type: ignore[no-untyped-def]
    folder = resolve_toy_model()
    client = s3.client()
    for f in sorted(folder.iterdir()):
        client.upload_file(str(f), s3.bucket, f"models/toy/{f.name}")
    return f"s3://{s3.bucket}/models/toy"


@pytest.mark.s3
def test_an_object_store_model_is_copied_once_per_node(s3, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(model_cache.CACHE_ENV, str(tmp_path / "cache"))
    uri = _upload_toy(s3)
    storage = StorageSpec(endpoint_url=s3.endpoint)
    got: list[tuple[Path, bool]] = []

    def fetch() -> None:
        got.append(model_cache.copy_from_store(uri, None, storage))

    threads = [threading.Thread(target=fetch) for _ in range(4)]  # four actors starting at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(copied for _, copied in got) == [False, False, False, True]
    folder = got[0][0]
    assert {p for p, _ in got} == {folder}
    toy = resolve_toy_model()
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in toy.iterdir())
    for f in toy.iterdir():
        assert (folder / f.name).read_bytes() == f.read_bytes()
    # a folder a killed copy left without its completion mark is copied again, not loaded
    (folder.with_name(folder.name + ".complete")).unlink()
    (folder / "model.safetensors").write_bytes(b"torn")
    again, copied = model_cache.copy_from_store(uri, None, storage)
    assert copied and again == folder
    assert (folder / "model.safetensors").read_bytes() == (toy / "model.safetensors").read_bytes()


@pytest.mark.s3
def test_a_missing_model_folder_is_named(s3, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(model_cache.CACHE_ENV, str(tmp_path / "cache"))
    uri = f"s3://{s3.bucket}/models/nothing-here"
    with pytest.raises(Exception, match="models/nothing-here"):
        model_cache.copy_from_store(uri, None, StorageSpec(endpoint_url=s3.endpoint))


@pytest.mark.s3
@pytest.mark.ray
def test_a_job_loads_its_model_from_object_storage(s3, tmp_path, demo_reference) -> None:  # type: ignore[no-untyped-def]
    """The demo with ``model.name: s3://…``: fetched on the node before the pool starts, and
    the scores equal the local toy model's (same weights, same revision)."""
    uri = _upload_toy(s3)
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    env = {**s3_env(s3.endpoint), model_cache.CACHE_ENV: str(cache)}
    args = ["--set", f"model.name={uri}", "--set", f"storage.endpoint_url={s3.endpoint}"]
    proc = run_cli("run", str(DEMO), "--output", str(out), *args, env=env)
    log = proc.stdout + proc.stderr
    assert f"model {uri}: ready on 1 node(s) (1 fetched now)" in log, log[-3000:]
    assert len(list(cache.glob("*.complete"))) == 1
    ours, ref = (
        results.read_results(Store(str(out))),
        results.read_results(Store(str(demo_reference))),
    )

    def scores(r: results.Results) -> dict[tuple[str, str], float]:
        t = r.table
        cols = (t.column(c).to_pylist() for c in ("query_id", "doc_id", "score"))
        return {(q, d): s for q, d, s in zip(*cols, strict=True)}

    assert scores(ours) == scores(ref)
    assert set(ours.table.column("model").to_pylist()) == {uri}
    assert (
        ours.table.column("model_revision").to_pylist()
        == ref.table.column("model_revision").to_pylist()
    )


def test_a_gpu_job_fetches_only_on_gpu_nodes() -> None:
    nodes = [
        {"NodeID": "head", "Alive": True, "Resources": {"CPU": 8.0}},
        {"NodeID": "gpu-1", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 8.0}},
        {"NodeID": "gpu-2", "Alive": False, "Resources": {"CPU": 16.0, "GPU": 8.0}},
    ]
    assert model_cache.target_nodes(nodes, gpu_nodes_only=True) == ["gpu-1"]
    assert model_cache.target_nodes(nodes, gpu_nodes_only=False) == ["head", "gpu-1"]


@pytest.mark.ray
def test_a_fetch_that_never_answers_is_left_to_the_actors(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every wait on the cluster has a bound: a per-node fetch that hangs (a dead mount, a
    stalled download) is cancelled after ``timeout`` and the job goes on."""
    import time

    import ray

    from rank1_batch.job.load import spec_from_mapping

    def hang(spec):  # type: ignore[no-untyped-def]
        time.sleep(600)

    monkeypatch.setattr(model_cache, "fetch_here", hang)
    spec = spec_from_mapping(
        {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "model": {"name": "a/b"}}
    )
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        start = time.monotonic()
        assert model_cache.fetch_on_nodes(spec, tries=1, timeout=2.0) == []
        assert time.monotonic() - start < 30
    finally:
        ray.shutdown()
