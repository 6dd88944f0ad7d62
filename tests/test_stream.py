"""The streaming executor: one request per pair, several shards in flight, one commit body.

``SleepyStreamEngine`` is a test double (not an engine users get): a word-level tokenizer and
deterministic pass-1/forced outputs that take a little time, so many requests overlap. The
toy-model test runs the real transformers engine behind a stream adapter (also a test double)
and checks the per-pair protocol gives exactly the batch protocol's judgements.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import math
import re
import threading
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch.core import rank1
from rank1_batch.engines.base import EngineOptions, Generation, JudgeRequest
from rank1_batch.engines.stream_engine import StreamEngine
from rank1_batch.io import layout
from rank1_batch.io.fs import parquet_bytes
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.outputs import results
from rank1_batch.pipeline.score import process_shard
from rank1_batch.pipeline.stream import ShardStreamer, default_max_requests, score_shards


class SleepyStreamEngine(StreamEngine):
    """Test double: scores from a hash of the prompt; every 4th prompt needs a forced pass."""

    name = "sleepy"

    def __init__(self, max_in_flight: int = 8, fail_on: str | None = None) -> None:
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self.max_in_flight = max_in_flight
        self.fail_on = fail_on
        self.running = 0
        self.peak = 0
        self.calls: list[str] = []
        super().__init__(
            EngineOptions(max_model_len=4096, max_tokens=32, min_reserve=32),
            model_id="sleepy",
            model_revision="0",
        )

    def encode(self, text: str) -> list[int]:
        out = []
        for word in re.findall(r"\s*\S+|\s+", text):
            if word not in self.vocab:
                self.vocab[word] = len(self.words)
                self.words.append(word)
            out.append(self.vocab[word])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.words[i] for i in ids)

    def _digest(self, prompt: Sequence[int]) -> int:
        return int.from_bytes(hashlib.sha256(self.decode(prompt).encode()).digest()[:4], "big")

    async def _work(self, kind: str) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.calls.append(kind)
        try:
            await asyncio.sleep(0.002)
        finally:
            self.running -= 1

    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        await self._work("generate")
        if self.fail_on is not None and self.fail_on in self.decode(prompt):
            raise RuntimeError("engine died")
        h = self._digest(prompt)
        p = (h % 1000 + 1) / 1002
        top = {self.true_id: math.log(p), self.false_id: math.log(1 - p)}
        if h % 4 == 0:
            return Generation("Thinking, unfinished", budget, None, False, "length")
        return Generation(f"Thinking {h % 7}.", 3, top, True, "stop")

    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        await self._work("answer")
        p = (self._digest(prompt) % 100 + 1) / 102
        return {self.true_id: math.log(p), self.false_id: math.log(1 - p)}


def _job(tmp_path, n: int, shard_rows: int):  # type: ignore[no-untyped-def]
    spec = spec_from_mapping(
        {
            "input": {"path": "unused.parquet"},
            "output": {"path": str(tmp_path / "out")},
            "model": {"name": "sleepy"},
        }
    )
    store = Store(spec.output.path, spec.storage)
    shards = []
    for s in range(math.ceil(n / shard_rows)):
        rows = range(s * shard_rows, min(n, (s + 1) * shard_rows))
        shard = f"shard-{s:05d}"
        table = pa.table(
            {
                "query_id": [f"q{i // 5}" for i in rows],
                "doc_id": [f"d{i}" for i in rows],
                "query": [f"query {i // 5}" for i in rows],
                "passage": [f"passage number {i}" for i in rows],
                "title": pa.nulls(len(rows), pa.string()),
                "instruction": pa.nulls(len(rows), pa.string()),
            }
        )
        store.create_exclusive(layout.pairs_path(shard), parquet_bytes(table))
        shards.append(shard)
    return spec, store, shards


def test_streamed_shards_commit_the_same_rows_as_process_shard(tmp_path) -> None:
    spec, store, shards = _job(tmp_path / "a", 60, 20)
    engine = SleepyStreamEngine(max_in_flight=8)
    streamer = ShardStreamer(engine, store, spec)
    markers = asyncio.run(score_shards(streamer, shards, shards_in_flight=2))
    assert [m.shard for m in markers] == shards
    assert streamer.max_requests == default_max_requests(8) == 9
    # The cap holds across shards, and it is reached: the engine never runs more than that.
    assert engine.peak == streamer.peak_in_flight == 9
    assert {"generate", "answer"} == set(engine.calls)

    ref_spec, ref_store, _ = _job(tmp_path / "b", 60, 20)
    reference = [process_shard(s, SleepyStreamEngine(), ref_store, ref_spec) for s in shards]
    for ours, theirs in zip(markers, reference, strict=True):
        assert ours.rows == theirs.rows == 20
        assert ours.scores_sha256 == theirs.scores_sha256
        assert ours.traces_sha256 == theirs.traces_sha256
        assert ours.stats.to_dict() | {"seconds": 0} == theirs.stats.to_dict() | {"seconds": 0}
    stats = markers[0].stats
    assert stats.forced > 0 and stats.complete > 0
    # A second pass finds every marker and writes nothing.
    again = asyncio.run(score_shards(streamer, shards, shards_in_flight=3))
    assert [m.to_dict() for m in again] == [m.to_dict() for m in markers]


def test_shards_in_flight_share_one_bound_on_requests(tmp_path) -> None:
    spec, store, shards = _job(tmp_path, 120, 20)
    engine = SleepyStreamEngine(max_in_flight=8)
    streamer = ShardStreamer(engine, store, spec)
    markers = asyncio.run(score_shards(streamer, shards, shards_in_flight=6))
    assert [m.rows for m in markers] == [20] * 6
    # Six shards open at once (the actor's concurrency), 120 requests to make against one cap
    # of 9: the engine never runs more than the cap, and reaches it.
    assert streamer.peak_open_shards == 6
    assert engine.peak == streamer.peak_in_flight == streamer.max_requests == 9
    assert streamer.in_flight == 0 and streamer.open_shards == 0


def test_a_failing_request_fails_its_shard_without_a_marker(tmp_path) -> None:
    spec, store, shards = _job(tmp_path, 10, 10)
    engine = SleepyStreamEngine(fail_on="number 7")
    streamer = ShardStreamer(engine, store, spec, max_requests=3)
    with pytest.raises(ExceptionGroup):
        asyncio.run(score_shards(streamer, shards, shards_in_flight=1))
    assert not store.exists(layout.marker_path(shards[0]))
    assert engine.peak <= 3
    assert streamer.in_flight == 0 and streamer.open_shards == 0  # the books balance


def test_a_stream_engine_serves_one_event_loop() -> None:
    """The first loop that drives an engine owns it; its synchronous methods drive it on a
    loop of its own, never beside a caller's loop."""
    request = JudgeRequest("query 1", "passage number 1")

    async def judge_one(engine: StreamEngine) -> rank1.Judgement:
        return await engine.judge_one(request)

    driven = SleepyStreamEngine()
    first = asyncio.run(judge_one(driven))
    with pytest.raises(RuntimeError, match="second event loop"):
        asyncio.run(judge_one(driven))
    with pytest.raises(RuntimeError, match="caller's event loop"):
        driven.judge([request])
    own = SleepyStreamEngine()
    assert own.judge([request]) == own.judge([request]) == [first]  # one loop, every call
    with pytest.raises(RuntimeError, match="second event loop"):
        asyncio.run(judge_one(own))

    async def sync_inside_a_loop() -> None:
        own.judge([request])

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(sync_inside_a_loop())
    own.close()
    with pytest.raises(RuntimeError, match="closed"):
        own.judge([request])


def test_caps_must_be_positive(tmp_path) -> None:
    spec, store, shards = _job(tmp_path, 5, 5)
    with pytest.raises(ValueError, match="max_requests"):
        ShardStreamer(SleepyStreamEngine(), store, spec, max_requests=0)
    streamer = ShardStreamer(SleepyStreamEngine(), store, spec)
    with pytest.raises(ValueError, match="shards_in_flight"):
        asyncio.run(score_shards(streamer, shards, shards_in_flight=0))


class TransformersStream(StreamEngine):
    """Test double: the real toy transformers engine behind the stream primitives, one prompt
    per call (a lock, as the model is not re-entrant)."""

    name = "transformers-stream"

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.lock = threading.Lock()
        super().__init__(inner.options, model_id="toy", model_revision=inner.model_revision)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)  # type: ignore[no-any-return]

    def encode_prompt(self, text: str) -> list[int]:
        return self.inner.encode_prompt(text)  # type: ignore[no-any-return]

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)  # type: ignore[no-any-return]

    def _locked(self, fn, *args):  # type: ignore[no-untyped-def]
        with self.lock:
            return fn(*args)

    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        [gen] = await asyncio.to_thread(self._locked, self.inner.generate, [prompt], [budget])
        return gen  # type: ignore[no-any-return]

    async def answer_one(self, prompt: Sequence[int]) -> Mapping[int, float] | None:
        [top] = await asyncio.to_thread(self._locked, self.inner.answer, [prompt])
        return top  # type: ignore[no-any-return]


def test_judge_one_is_the_batch_protocol_on_the_toy_model() -> None:
    pytest.importorskip("torch")
    import random

    from rank1_batch.engines import make_engine
    from rank1_batch.toy import data as toy_data
    from rank1_batch.toy.model import resolve_toy_model

    opts = EngineOptions(max_model_len=256, max_tokens=64, min_reserve=64, batch_size=1)
    inner = make_engine("transformers", str(resolve_toy_model()), opts, num_threads=1, device="cpu")
    rng = random.Random(3)
    examples = [toy_data.make_example(rng, relevant=i % 2 == 0) for i in range(6)]
    requests = [JudgeRequest(e.query, e.passage) for e in examples]
    requests.append(JudgeRequest(examples[0].query * 40, "too long a query"))
    stream = TransformersStream(inner)
    for budget in (64, 3):  # complete and forced
        inner.options = stream.options = EngineOptions(
            max_model_len=256, max_tokens=budget, min_reserve=64, batch_size=1
        )
        batch = inner.judge(requests)
        streamed = stream.judge(requests)  # sync adapter over judge_one
        assert streamed == batch
        statuses = {j.status for j in batch}
        assert rank1.ERROR in statuses
        assert (rank1.COMPLETE if budget == 64 else rank1.FORCED) in statuses
    stream.close()
    inner.close()


class WordyStreamEngine(SleepyStreamEngine):
    """Test double: every pair completes with ``text_chars`` of reasoning unique to it. Every
    10th request it counts the :class:`rank1.Judgement` objects alive in the process (gc):
    finished pairs still held in memory, whoever holds them."""

    def __init__(self, text_chars: int, max_in_flight: int = 8) -> None:
        super().__init__(max_in_flight=max_in_flight)
        self.text_chars = text_chars
        self.requests = 0
        self.live_peak = 0

    async def generate_one(self, prompt: Sequence[int], budget: int) -> Generation:
        self.requests += 1
        if self.requests % 10 == 0:
            live = sum(type(o) is rank1.Judgement for o in gc.get_objects())
            self.live_peak = max(self.live_peak, live)
        await self._work("generate")
        h = self._digest(prompt)
        p = (h % 1000 + 1) / 1002
        top = {self.true_id: math.log(p), self.false_id: math.log(1 - p)}
        text = (f"pair {h} thinks. " * (self.text_chars // 12 + 1))[: self.text_chars]
        return Generation(text, 3, top, True, "stop")


def test_an_open_shard_holds_only_the_requests_in_flight(tmp_path, monkeypatch) -> None:
    """Finished judgements are spilled at once: the process holds about as many as it has
    requests in flight (9), not the 2 x 300 pairs of its open shards; the traces file is
    written in bounded row groups, in pairs order, and equals the batch path's."""
    from rank1_batch.pipeline import score

    monkeypatch.setattr(score, "TRACE_GROUP_BYTES", 64 << 10)
    spec, store, shards = _job(tmp_path / "a", 600, 300)
    engine = WordyStreamEngine(text_chars=4096)
    streamer = ShardStreamer(engine, store, spec)
    markers = asyncio.run(score_shards(streamer, shards, shards_in_flight=2))
    assert streamer.peak_open_shards == 2 and streamer.max_requests == 9
    assert engine.requests == 600
    assert 0 < engine.live_peak <= 2 * streamer.max_requests
    traces = pq.ParquetFile(io.BytesIO(store.read_bytes(markers[0].traces_file)))
    assert traces.metadata.num_row_groups == 300 * 4096 // (64 << 10) + 1  # 16 pairs a group

    ref_spec, ref_store, _ = _job(tmp_path / "b", 600, 300)
    sync = WordyStreamEngine(text_chars=4096)
    reference = [process_shard(s, sync, ref_store, ref_spec) for s in shards]
    assert [m.traces_sha256 for m in markers] == [m.traces_sha256 for m in reference]
    assert [m.scores_sha256 for m in markers] == [m.scores_sha256 for m in reference]
    texts = results.shard_table(store, shards[1], "traces").column("reasoning").to_pylist()
    pairs = ref_store.read_parquet(layout.pairs_path(shards[1]))
    from rank1_batch.core.rows import requests_for

    expected = sync.judge(requests_for(pairs, ref_spec.reasoning))
    assert texts == [j.reasoning for j in expected]
    assert all(len(t) == 4096 for t in texts) and len(set(texts)) == 300


def test_spilled_rows_leave_no_file_and_read_back_what_was_put(tmp_path, monkeypatch) -> None:
    """The spill file lives in $RANK1_BATCH_SPILL_DIR, unlinked from the start (nothing is left
    behind, even by a killed process); rows come back by index whatever the order of arrival."""
    from rank1_batch.pipeline.judged import SPILL_DIR_ENV, JudgedRows

    monkeypatch.setenv(SPILL_DIR_ENV, str(tmp_path))
    made = [
        rank1.Judgement(0.1 * i, float(i), rank1.COMPLETE, reasoning=f"é {i} " * (i * 50))
        for i in range(6)
    ]
    rows = JudgedRows(6)
    for i in (3, 0, 5, 1, 4, 2):
        rows.put(i, made[i])
    assert list(tmp_path.iterdir()) == []
    assert rows.spilled_bytes == sum(len(j.reasoning.encode()) for j in made)
    assert [rows.judgement(i) for i in range(6)] == made
    with pytest.raises(ValueError, match="already judged"):
        rows.put(2, made[2])
    assert rows.stats(1.0).complete == 6
    rows.close()
    with pytest.raises(RuntimeError, match="closed"):
        rows.reasoning(5)
    with pytest.raises(RuntimeError, match="never judged"):
        JudgedRows(2).stats(0.0)
