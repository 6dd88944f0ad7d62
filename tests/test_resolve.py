"""engine/device/dtype ``auto``: resolved once on the driver, fingerprinted as resolved, and
a resume that would resolve otherwise is refused naming the setting."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from rank1_batch.cli import main
from rank1_batch.engines import factory
from rank1_batch.io.store import Store
from rank1_batch.job import resolve
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.job.resolve import Platform, resolve_model, resolve_spec, worker_gpus
from rank1_batch.job.spec import ModelSpec

MINIMAL = {"input": {"path": "in.parquet"}, "output": {"path": "out"}, "model": {"name": "toy"}}


@pytest.mark.parametrize(
    ("model", "gpu", "vllm", "bf16", "expected"),
    [
        ({}, False, True, False, ("transformers", "cpu", "float32")),
        ({}, True, True, True, ("vllm", "cuda", "float16")),
        ({}, True, False, True, ("transformers", "cuda", "bfloat16")),
        ({}, True, False, False, ("transformers", "cuda", "float16")),
        ({"engine": "vllm", "device": "cpu"}, False, True, False, ("vllm", "cpu", "float32")),
        ({"engine": "vllm"}, True, True, False, ("vllm", "cuda", "float16")),
        ({"dtype": "bfloat16"}, False, False, False, ("transformers", "cpu", "bfloat16")),
        ({"engine": "transformers", "device": "cuda"}, False, True, True,
         ("transformers", "cuda", "bfloat16")),
        ({"quantization": "awq"}, True, True, True, ("vllm", "cuda", "float16")),
        ({"quantization": "AWQ"}, False, False, True, ("transformers", "cpu", "float16")),
    ],
)  # fmt: skip
def test_auto_resolves_by_the_engines_rules(model, gpu, vllm, bf16, expected):
    spec = ModelSpec(name="toy", **model)
    got = resolve_model(spec, Platform(gpu=gpu, vllm=vllm, bf16=lambda: bf16))
    assert (got["engine"], got["device"], got["dtype"]) == expected


def test_the_driver_resolves_for_the_workers_gpus_not_its_own(monkeypatch):
    """No GPU per worker: Ray hides every GPU from the actor, so transformers on CPU; GPUs
    per worker: vLLM where installed, whatever the driver itself has."""
    monkeypatch.setattr(resolve, "vllm_installed", lambda: True)
    cpu = spec_from_mapping(MINIMAL)
    gpu = spec_from_mapping({**MINIMAL, "compute": {"gpus_per_worker": 1}})
    assert resolve_spec(cpu).model.engine == "transformers"
    assert resolve_spec(cpu).model.dtype == "float32"
    assert (resolve_spec(gpu).model.engine, resolve_spec(gpu).model.device) == ("vllm", "cuda")
    for spec in (
        cpu,
        gpu,
        spec_from_mapping({**MINIMAL, "model": {"name": "t", "engine": "vllm"}}),
    ):
        resolved = resolve_spec(spec)
        assert worker_gpus(resolved) == worker_gpus(spec)  # the same resources are asked
        assert resolve_spec(resolved) is resolved  # resolved once: kept as it is


def test_job_json_records_resolved_settings_and_actors_build_them(monkeypatch):
    monkeypatch.setattr(resolve, "vllm_installed", lambda: True)
    spec = spec_from_mapping({**MINIMAL, "compute": {"gpus_per_worker": 1}})
    record = job_record(spec, [])
    model = record["settings"]["job"]["model"]
    assert (model["engine"], model["device"], model["dtype"]) == ("vllm", "cuda", "float16")
    assert record["spec"]["model"]["engine"] == "vllm"
    # An actor handed the resolved spec builds exactly that, on any hardware it has.
    monkeypatch.setattr(factory, "local_platform", lambda s=None: Platform(gpu=False, vllm=False))
    assert factory.engine_kind(resolve_spec(spec)) == "vllm"
    assert factory.engine_kind(spec) == "transformers"  # an unresolved spec: this process's


def _job(tmp_path, **compute: object):
    data = tmp_path / "pairs.parquet"
    pq.write_table(
        pa.table({"query_id": ["q"], "query": ["a"], "doc_id": ["d"], "passage": ["b"]}), data
    )
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": {"path": str(data)},
                "output": {"path": str(tmp_path / "out")},
                "model": {"name": "toy"},
                "compute": compute,
            }
        )
    )
    return path


def _claim(path, monkeypatch, *, vllm: bool) -> None:
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.load import load_job

    monkeypatch.setattr(resolve, "vllm_installed", lambda: vllm)
    spec = load_job(path)
    claim_output(Store(spec.output.path), job_record(spec, listing(scan_inputs(spec.input))))


def test_resume_that_resolves_another_engine_is_refused_one_line_exit_2(
    tmp_path, monkeypatch, capsys
):
    """The first run's image had no vllm (transformers on the GPU); the resume's has it."""
    path = _job(tmp_path, gpus_per_worker=1)
    _claim(path, monkeypatch, vllm=False)
    monkeypatch.setattr(resolve, "vllm_installed", lambda: True)
    assert main(["-q", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rank1-batch: error: ") and err.count("\n") == 1, err
    assert "job.model.engine: 'transformers' -> 'vllm'" in err


def test_resume_on_gpu_workers_of_a_cpu_output_is_refused_naming_device(
    tmp_path, monkeypatch, capsys
):
    """``--set compute.gpus_per_worker=1`` is a tuning knob, but with device auto it moves
    the scoring from the CPU (float32) to a GPU: refused, naming what it changes."""
    path = _job(tmp_path)
    _claim(path, monkeypatch, vllm=False)
    argv = ["-q", "run", str(path), "--set", "compute.gpus_per_worker=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "job.model.device: 'cpu' -> 'cuda'" in err
    assert "job.model.dtype: 'float32' -> " in err
