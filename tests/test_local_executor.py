"""``compute.executor: local``: the demo scored in the driver process, no Ray started, killed
after its first commits and resumed, equals the Ray run's rows (scores and traces), shard for
shard; the summary is the usual one."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pytest
from conftest import CLI, DEMO, ENV, ROOT, kill_after_commits, run_cli

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store

LOCAL = ["--set", "compute.executor=local"]


def rows(out, kind: str) -> pa.Table:
    store = Store(str(out))
    shards = sorted(commit.committed_shards(store))
    table = pa.concat_tables(commit.committed_table(store, s, kind) for s in shards)
    return table.sort_by([("query_id", "ascending"), ("doc_id", "ascending")])


@pytest.mark.slow
def test_the_local_executor_resumes_to_the_ray_runs_rows(tmp_path, demo_reference):
    out = tmp_path / "out"
    store = Store(str(out))
    args = ["run", str(DEMO), "--output", str(out), *LOCAL]
    assert kill_after_commits(args, store, shards=2) >= 2
    # The resume with RAY_ADDRESS naming a port where no Ray is: a run that reached for Ray
    # would fail to connect; the local executor never asks.
    env = {**ENV, "RAY_ADDRESS": "127.0.0.1:9"}
    proc = subprocess.run(
        [*CLI, *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads(proc.stdout)
    assert 0 < done["this_run"]["shards"] < done["shards"]  # the resume did the rest
    for kind in ("scores", "traces"):
        assert rows(out, kind).equals(rows(demo_reference, kind)), kind
    ours = json.loads((out / layout.MANIFEST).read_text())
    theirs = json.loads((demo_reference / layout.MANIFEST).read_text())
    assert ours["shards"] == theirs["shards"]
    run_cli("verify", str(out))
