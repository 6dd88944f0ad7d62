"""What can be checked here of cluster/: each YAML parses and holds what its tool requires,
entrypoints call the real CLI, and image and package versions agree."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from rank1_batch.cli import _parser
from rank1_batch.job.load import spec_from_mapping

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def test_rayjob_has_what_kuberay_requires_and_a_valid_job():
    config_map, rayjob = docs("rayjob.yaml")
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["backoffLimit"] >= 1 and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    job = spec_from_mapping(yaml.safe_load(config_map["data"]["job.yaml"]))
    workers = cluster["workerGroupSpecs"][0]
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"]
    assert workers["replicas"] * gpus == job.compute.workers * job.compute.gpus_per_worker
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["rank1-batch", "run"]
    args = _parser().parse_args(argv[1:])
    assert args.command == "run"
    mount = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert argv[2] == f"{mount['mountPath']}/job.yaml"


def test_raycluster_has_token_auth_and_gpu_workers():
    (rc,) = docs("raycluster.yaml")
    assert rc["kind"] == "RayCluster" and rc["spec"]["authOptions"]["mode"] == "token"
    group = rc["spec"]["workerGroupSpecs"][0]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_cluster_launcher_config():
    (cfg,) = docs("aws-gpu.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in cfg
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == gpu["max_workers"] <= cfg["max_workers"]
    assert any("RAY_AUTH_MODE=token" in c for c in cfg["head_start_ray_commands"])


def test_image_and_package_versions_agree():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    ray_image = re.search(r"FROM rayproject/ray:(\d+\.\d+\.\d+)", dockerfile).group(1)
    ray_min = re.search(r'"ray\[[a-z,]+\]>=(\d+\.\d+)', PYPROJECT).group(1)
    assert ray_image.startswith(ray_min)
    vllm = re.search(r'"vllm==(\d+)\.(\d+)\.\d+"', dockerfile)
    lo, hi = re.search(r'"vllm>=0\.(\d+),<0\.(\d+)"', PYPROJECT).groups()
    assert vllm.group(1) == "0" and int(lo) <= int(vllm.group(2)) < int(hi)
    version = re.search(r'^version = "([^"]+)"', PYPROJECT, re.M).group(1)
    for name in ("rayjob.yaml", "raycluster.yaml", "aws-gpu.yaml"):
        assert f"rank1-batch:{version}" in (CLUSTER / name).read_text(), name
    for name in ("rayjob.yaml", "raycluster.yaml"):
        assert 'rayVersion: "' + ray_image + '"' in (CLUSTER / name).read_text()
