"""The demo job with input and output on S3 (moto on loopback, its own process): SIGKILL
mid-score, resume, exact output, ``status s3://…``, and no trace of the credential anywhere.

One kill-and-resume run (module fixture) feeds both tests, so the suite pays for it once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import CLI, ROOT, S3, run_cli
from s3_server import SECRET_KEY, s3_env

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.outputs.results import shard_table

pytestmark = [pytest.mark.s3, pytest.mark.ray]


def scores_of(store: Store) -> pa.Table:
    """Scores as a reader sees them: only the files commit markers name."""
    shards = sorted(commit.committed_shards(store))
    return pa.concat_tables(shard_table(store, s, "scores") for s in shards)


def score_map(table: pa.Table) -> dict[tuple[str, str], float]:
    cols = (table.column(c).to_pylist() for c in ("query_id", "doc_id", "score"))
    return {(q, d): s for q, d, s in zip(*cols, strict=True)}


@pytest.fixture(scope="module")
def s3_run(moto_server, demo_reference):
    """Run the demo on S3, kill it after the first commit, check status, resume."""
    import s3fs

    env = s3_env(moto_server.url)
    s3 = S3(moto_server.url, moto_server.port, f"rank1-{uuid.uuid4().hex[:12]}", env)
    ray_tmp = Path(tempfile.mkdtemp(prefix="r1s3-", dir="/tmp"))  # short: Ray's socket paths
    env = {**env, "RAY_TMPDIR": str(ray_tmp)}
    logs = Path(tempfile.mkdtemp(prefix="r1s3logs-"))
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(key)
        for key, value in env.items():
            if key.startswith("AWS_"):
                mp.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        s3.client().create_bucket(Bucket=s3.bucket)
        s3.client().upload_file(
            str(ROOT / "jobs/data/demo-pairs.parquet"), s3.bucket, "in/demo-pairs.parquet"
        )
        uri = f"s3://{s3.bucket}/demo"
        args, store = s3.demo_run(uri)
        total = len(json.loads((demo_reference / layout.MANIFEST).read_text())["shards"])
        with open(logs / "killed.out", "w") as out, open(logs / "killed.err", "w") as err:
            proc = subprocess.Popen(
                [*CLI, *args],
                cwd=ROOT,
                env={**env, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                deadline = time.time() + 300
                while len(commit.committed_shards(store)) < 1:
                    assert time.time() < deadline, "no shard committed in 300 s"
                    assert proc.poll() is None, "run ended before it could be killed"
                    time.sleep(0.2)
                scoring = run_cli("status", uri, "--json", "--endpoint-url", s3.endpoint, env=env)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)  # driver, its local Ray, every worker
                proc.wait()
        killed_at = len(commit.committed_shards(store))
        assert not store.exists(layout.SUCCESS)
        resumed = run_cli(*args, env=env)
        (logs / "resumed.out").write_text(resumed.stdout)
        (logs / "resumed.err").write_text(resumed.stderr)
        done = run_cli("status", uri, env={**env, "AWS_ENDPOINT_URL_S3": s3.endpoint})
        objects = {
            key: s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            for key in s3.keys("demo/")
        }
        yield {
            "store": store,
            "total": total,
            "killed_at": killed_at,
            "scoring": json.loads(scoring.stdout),
            "done": done.stdout,
            "objects": objects,
            "logs": logs,
            "ray_tmp": ray_tmp,
            "scores": scores_of(store),
        }
    shutil.rmtree(ray_tmp, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)


def test_s3_demo_killed_mid_score_resumes_to_the_exact_output(s3_run, demo_reference):
    assert s3_run["scoring"]["state"] == "scoring"
    assert 1 <= s3_run["scoring"]["shards_committed"] < s3_run["total"]
    assert 1 <= s3_run["killed_at"] < s3_run["total"], "kill came too late to test resume"
    assert "state    complete" in s3_run["done"]
    resumed = s3_run["scores"]
    reference = pa.concat_tables(
        shard_table(Store(str(demo_reference)), s, "scores")
        for s in sorted(commit.committed_shards(Store(str(demo_reference))))
    )
    keys = list(zip(*(resumed.column(c).to_pylist() for c in ("query_id", "doc_id")), strict=True))
    assert len(keys) == len(set(keys)), "duplicate pairs after resume"
    assert resumed.num_rows == reference.num_rows
    assert score_map(resumed) == score_map(reference)
    success = s3_run["store"].read_json(layout.SUCCESS)
    assert success["scored"] + success["rejected"] + success["duplicates"] == success["input_rows"]


def test_s3_run_leaves_no_trace_of_the_credential(s3_run):
    secret = SECRET_KEY.encode()
    checked = 0
    for key, body in s3_run["objects"].items():
        assert secret not in body, f"credential in s3 object {key}"
        checked += 1
    assert any(k.endswith("job.json") for k in s3_run["objects"])
    for folder in (s3_run["logs"], s3_run["ray_tmp"]):
        for path in Path(folder).rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                assert secret not in data, f"credential in {path}"
                checked += 1
    ray_logs = list(Path(s3_run["ray_tmp"]).rglob("logs/*"))
    assert ray_logs, "the run's Ray session logs were not found"
    print(f"grepped {checked} artefacts ({len(ray_logs)} Ray log files)")
