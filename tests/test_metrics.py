"""Live metrics (:mod:`rank1_batch.pipeline.metrics`): a job on a real Ray head moves the
``rank1_batch_*`` series its metrics export port serves (found, as Prometheus finds it,
through Ray's service-discovery file); the Grafana dashboard in ``cluster/`` is valid
dashboard JSON that queries only metrics the module defines; without Ray the hooks are
no-ops."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLI, ROOT

from rank1_batch.pipeline import metrics

DASHBOARD = ROOT / "cluster" / "grafana-rank1-batch.json"
SERIES = re.compile(r"\bray_(rank1_batch_[a-z_]+?)(_total|_bucket|_sum|_count)?\b")


# -- the dashboard ---------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_the_dashboard_is_grafana_dashboard_json():
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["title"], str) and dash["title"]
    assert isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert isinstance(dash["panels"], list) and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dash["panels"]:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert isinstance(panel["title"], str) and panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["w"] > 0 and grid["x"] + grid["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_queries_only_metrics_the_module_defines():
    used = {m.group(1) for e in dashboard_exprs() for m in SERIES.finditer(e)}
    assert used == set(metrics.NAMES)  # each one plotted, none that does not exist
    exprs = " ".join(dashboard_exprs())
    # vLLM's own gauges, as RayPrometheusStatLogger exports them (':' made '_', Ray's prefix).
    assert "ray_vllm_num_requests_running" in exprs and "ray_vllm_num_requests_waiting" in exprs


def test_without_ray_the_hooks_record_nothing_and_import_no_ray():
    """The local executor and plain tests: no Ray initialised, the hooks do nothing."""
    code = (
        "import sys\n"
        "from rank1_batch.core.rank1 import Judgement\n"
        "from rank1_batch.pipeline import metrics\n"
        "metrics.judged('j', [Judgement(0.5, 0.0, 'complete', reasoning_tokens=3)])\n"
        "metrics.in_flight('j', 2)\n"
        "metrics.shard_committed('j', 0.1)\n"
        "assert 'ray' not in sys.modules and metrics._made is None\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


# -- a job on a Ray head ---------------------------------------------------------------------

PAIRS, SHARD = 40, 20


def targets(temp_dir: str) -> list[str]:
    """The metrics endpoints of this head's session, as Prometheus finds them: Ray's
    service-discovery file (``file_sd_configs``), read afresh each time (nodes are listed
    once they are alive)."""
    path = Path(temp_dir) / "session_latest" / "prom_metrics_service_discovery.json"
    if not path.exists():
        return []
    return sorted({t for group in json.loads(path.read_text() or "[]") for t in group["targets"]})


def scrape(temp_dir: str) -> dict[tuple[str, str], float]:
    """``{(series, job_name): value}`` of the ``rank1_batch`` series every target serves now,
    summed over their other labels (worker, node, status); of a histogram's buckets only
    ``+Inf``."""
    found: dict[tuple[str, str], float] = {}
    for target in targets(temp_dir):
        try:
            text = urllib.request.urlopen(f"http://{target}/metrics", timeout=10).read()
        except OSError:  # not serving yet
            continue
        for line in text.decode().splitlines():
            if not line.startswith("ray_rank1_batch_"):
                continue
            labels, _, value = line.rpartition(" ")
            series = labels.split("{", 1)[0]
            if series.endswith("_bucket") and 'le="+Inf"' not in labels:
                continue
            job = re.search(r'job_name="([^"]*)"', labels)
            status = re.search(r'status="([^"]*)"', labels)
            key = (series, job.group(1) if job else "")
            found[key] = found.get(key, 0.0) + float(value)
            if status:  # pairs by status as well: (series:status, job)
                key = (f"{series}:{status.group(1)}", key[1])
                found[key] = found.get(key, 0.0) + float(value)
    return found


def wait_for(temp_dir: str, want: dict[tuple[str, str], float], timeout: float = 90) -> dict:
    """Poll the endpoints until every ``want`` series has its value (Ray's agent pushes on
    an interval), a value of 0 also matching a series no longer served (a gauge of a worker
    gone); return the last scrape."""
    deadline = time.time() + timeout
    seen: dict = {}
    while time.time() < deadline:
        seen = scrape(temp_dir)
        if all(seen.get(k, 0.0 if v == 0 else None) == v for k, v in want.items()):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"wanted {want}, the endpoints served {seen}")


def small_job(tmp: Path, name: str, engine: dict) -> Path:
    src = pq.read_table(ROOT / "jobs" / "data" / "demo-pairs.parquet").slice(0, PAIRS)
    pq.write_table(pa.Table.from_pylist(src.to_pylist()), tmp / f"{name}.parquet")
    job = {
        "name": name,
        "input": {"path": str(tmp / f"{name}.parquet")},
        "output": {"path": str(tmp / name), "shard_size": SHARD},
        "model": {"name": "toy", "device": "cpu", "max_model_len": 2048, **engine},
        "reasoning": {"max_tokens": 64, "min_reserve": 64},
        "compute": {"workers": 1, "cpus_per_worker": 1, "torch_threads": 1},
    }
    (tmp / f"{name}.yaml").write_text(json.dumps(job))
    return tmp / f"{name}.yaml"


@pytest.mark.ray
def test_a_job_on_a_head_moves_its_metrics(tmp_path, fault_engines, monkeypatch):
    from fault_engine import FAULTS_ENV, STREAM_ENGINE
    from test_cluster import Head

    # The head's workers get its environment: the stream test double (fault_engines) and
    # its pace, 2.5 s a pair: 40 pairs, 5 in flight, about 20 s of requests in flight. Seen
    # on this machine, the values reached the endpoint about every 10 s whatever the report
    # interval below, and at half a second a pair (4 s in flight) no push caught one.
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"state_dir": str(tmp_path), "pair_seconds": 2.5}))
    head = Head()
    # Ray's workers push their metrics to the node's agent every 10 s by default; every
    # second here.
    head.start('--system-config={"metrics_report_interval_ms": 1000}')
    try:
        env = {**head.env, "RAY_ADDRESS": f"127.0.0.1:{head.port}"}
        assert not scrape(head.temp)

        # The toy transformers engine (a batch engine): pairs, tokens, shards, commits.
        toy = "metrics-toy"
        job = small_job(tmp_path, toy, {"engine": "transformers"})
        subprocess.run([*CLI, "run", str(job)], cwd=ROOT, env=env, check=True, timeout=600,
                       capture_output=True)  # fmt: skip
        done = json.loads((tmp_path / toy / "_SUCCESS.json").read_text())
        assert done["scored"] == PAIRS and done["shards"] == PAIRS // SHARD
        want = {
            ("ray_rank1_batch_pairs_judged_total", toy): PAIRS,
            ("ray_rank1_batch_shards_committed_total", toy): PAIRS // SHARD,
            ("ray_rank1_batch_commit_seconds_count", toy): PAIRS // SHARD,
            ("ray_rank1_batch_reasoning_tokens_total", toy): done["reasoning_tokens"],
        }
        for status, n in done["statuses"].items():
            want[(f"ray_rank1_batch_pairs_judged_total:{status}", toy)] = n
        seen = wait_for(head.temp, want)
        assert done["reasoning_tokens"] > 0 and seen[("ray_rank1_batch_commit_seconds_sum", toy)]

        # A stream engine: requests in flight rise while it runs, and are 0 once it is done.
        stream = "metrics-stream"
        job = small_job(tmp_path, stream, {"engine": STREAM_ENGINE})
        proc = subprocess.Popen([*CLI, "run", str(job)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        key = ("ray_rank1_batch_requests_in_flight", stream)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, scrape(head.temp).get(key, 0.0))
            time.sleep(0.3)
        assert proc.stderr is not None
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        assert peak > 0, "requests in flight never seen above 0 while the stream job ran"
        seen = wait_for(
            head.temp, {key: 0.0, ("ray_rank1_batch_pairs_judged_total", stream): PAIRS}
        )
        # The first job's counters are its own still.
        assert seen[("ray_rank1_batch_pairs_judged_total", toy)] == PAIRS

        # Every rank1_batch series the dashboard plots is one the endpoints served.
        served = {k[0] for k in seen} | {key[0]}
        for expr in dashboard_exprs():
            for m in SERIES.finditer(expr):
                assert m.group(0) in served, m.group(0)
    finally:
        head.stop()
