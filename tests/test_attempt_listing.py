"""The driver's bookkeeping between scoring rounds costs a fixed number of S3 requests, however
many shards the job has: one recursive listing of ``_attempts/`` per round, then reads of the
records of the shards that have any (never a listing per shard).

The rounds are the driver's own (``pool.score_pending``, its quarantine, blame and isolation
code), on a real moto S3 server that counts the requests it serves; only the actor pool's
pass over the shards (``_score_round``, Ray Data) is replaced: it leaves the attempt records a
round of crashing shards leaves (a start record, no end), stored straight in moto's backend so
that only the driver's requests are counted.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from s3_server import MotoServer, s3_env

from rank1_batch.io import layout
from rank1_batch.io.fs import StorageSpec
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.pipeline import attempts, pool

pytestmark = pytest.mark.s3
RUN = "run-1"


@pytest.fixture(scope="module")
def counting() -> Iterator[MotoServer]:
    pytest.importorskip("moto.server")
    server = MotoServer(counting=True)
    server.start()
    yield server
    server.stop()


def crashing_round(server: MotoServer, bucket: str, poison: set[str]) -> Any:
    """A stand-in for one actor pool's pass: each poison shard's attempt starts and its
    process dies (a start record with this run's id and its own worker, no end)."""
    rounds: list[int] = []

    def score_round(spec: Any, store: Store, group: list[dict[str, Any]], run: str, *a: Any):
        rounds.append(len(group))
        records = {}
        for s in group:
            if s["id"] in poison:
                attempt = f"a{len(rounds)}-{s['id']}"
                record = {"shard": s["id"], "attempt": attempt, "run": run, "started_at": 1.0}
                record["worker"] = f"host:{s['id']}:node"
                key = f"out/{attempts.attempt_path(s['id'], attempt)}"
                records[key] = json.dumps(record).encode()
        server.seed(bucket, records)

    score_round.rounds = rounds  # type: ignore[attr-defined]
    return score_round


def driver_requests(
    server: MotoServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    shards: int,
    poison: int = 0,
) -> tuple[dict[str, int], list[attempts.Quarantine], list[int]]:
    """The S3 requests of ``score_pending`` over ``shards`` pending shards whose rounds
    commit nothing, the first ``poison`` of them crashing alone each round."""
    uri = f"s3://{bucket}/out"
    spec = spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": uri},
            "model": {"name": "toy", "engine": "transformers", "device": "cpu"},
            "storage": {"endpoint_url": server.url},
            "compute": {"retry_backoff": 0, "max_shard_attempts": 3},
        }
    )
    store = Store(uri, StorageSpec(endpoint_url=server.url))
    pending = [{"id": layout.shard_name(i, shards), "rows": 10} for i in range(shards)]
    fake = crashing_round(server, bucket, {s["id"] for s in pending[:poison]})
    monkeypatch.setattr(pool, "_score_round", fake)
    monkeypatch.setattr(pool, "_ensure_gpus", lambda spec: None)
    monkeypatch.setattr(pool.model_cache, "fetch_on_nodes", lambda *a, **k: None)
    monkeypatch.setattr(pool, "torch_threads", lambda spec: 1)
    server.requests(reset=True)
    quarantined = pool.score_pending(spec, store, pending, RUN)
    return server.requests(), quarantined, fake.rounds


@pytest.fixture(autouse=True)
def _credential(monkeypatch: pytest.MonkeyPatch, counting: MotoServer) -> None:
    """The planted credential, as the ``s3`` fixture gives it."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_env(counting.url).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def new_bucket(server: MotoServer) -> str:
    import boto3

    name = f"rank1-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def test_requests_per_round_do_not_grow_with_shards(counting, monkeypatch):
    """1,000 and 5,000 pending shards, no attempt records: every round costs the same
    requests (before: a listing of ``_attempts/<shard>`` per shard, three times a round)."""
    small, q_small, rounds_small = driver_requests(
        counting, new_bucket(counting), monkeypatch, 1000
    )
    big, q_big, rounds_big = driver_requests(counting, new_bucket(counting), monkeypatch, 5000)
    # Behaviour kept: rounds without progress end with every shard quarantined (limit + 2).
    assert len(rounds_small) == len(rounds_big) == 5
    assert len(q_small) == 1000 and len(q_big) == 5000
    assert all("without progress" in q.last_error and q.attempts == 0 for q in q_big)
    print(f"requests of 5 rounds, no records: {small} (1,000 shards), {big} (5,000 shards)")
    assert small == big, (small, big)
    assert sum(small.values()) <= 5 * len(rounds_small) + 5, small  # a handful per round


def test_requests_grow_with_attempt_records_only(counting, monkeypatch):
    """With 10 shards whose attempt dies each round: the same requests at 1,000 and 5,000
    shards, more than with no records, and quarantine and isolation as before."""
    base, _, _ = driver_requests(counting, new_bucket(counting), monkeypatch, 1000)
    small, q_small, rounds_small = driver_requests(
        counting, new_bucket(counting), monkeypatch, 1000, poison=10
    )
    big, q_big, rounds_big = driver_requests(
        counting, new_bucket(counting), monkeypatch, 5000, poison=10
    )
    assert small == big, (small, big)
    assert sum(small.values()) > sum(base.values())
    # 10 shards x 3 crashes: each a few requests when recorded and read in each later round
    assert sum(small.values()) - sum(base.values()) <= 10 * 3 * 20
    # A crash alone is charged: after 3 the shard is quarantined, with its attempts counted;
    # from its first crash on it went alone on an actor (isolation: a second pool per round).
    poisoned = {q.shard: q for q in q_big if q.attempts}
    assert sorted(poisoned) == [layout.shard_name(i, 5000) for i in range(10)]
    assert all(q.attempts == 3 and q.last_error == attempts.DIED for q in poisoned.values())
    assert rounds_big[:3] == [5000, 4990, 10] and rounds_small[:3] == [1000, 990, 10]
    assert sorted(q.shard for q in q_small if q.attempts) == [
        layout.shard_name(i, 1000) for i in range(10)
    ]
