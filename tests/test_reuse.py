"""Reuse across jobs: the result key field by field, the shard merge, and end to end on the
toy model (device: cpu) with local and S3 earlier outputs, interrupted and resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from rank1_batch.io import commit, layout
from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.outputs.results import shard_table
from rank1_batch.pipeline import reuse, reuse_join, reuse_ready

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "demo.yaml"
DEMO_INPUT = ROOT / "jobs" / "data" / "demo-pairs.parquet"


def demo_mapping(**over: object) -> dict:
    raw = yaml.safe_load(DEMO.read_text())
    raw["input"]["path"] = str(DEMO_INPUT)
    raw["model"]["device"] = "cpu"
    raw.update(over)
    return raw


def pairs(**over: list) -> pa.Table:
    cols: dict[str, list] = {
        "query_id": ["q1", "q1"],
        "doc_id": ["d1", "d2"],
        "query": ["what do cats eat", "what do cats eat"],
        "passage": ["Cats eat fish.", "Dogs bark."],
        "title": [None, None],
        "instruction": [None, None],
    }
    cols.update(over)
    return pa.table(cols, schema=pa.schema([(c, pa.string()) for c in cols]))


# -- the key --------------------------------------------------------------------------------
KEY_FIELDS = [
    "model.name=other",
    "model.revision=abc123",
    "model.engine=vllm",
    "model.dtype=float16",
    "model.quantization=gptq",
    "model.max_model_len=4096",
    "reasoning.max_tokens=32",
    "reasoning.min_reserve=32",
    "reasoning.require_stop=true",
    "reasoning.prompt_template='Search: FILL_QUERY_HERE'",
    "reasoning.instruction='answer carefully'",
]
NOT_KEY_FIELDS = [
    "name=renamed",
    "output.path=/elsewhere",
    "output.shard_size=7",
    "input.path=/other.parquet",
    "model.gpu_memory_utilization=0.5",
    "model.enforce_eager=true",
    "compute.workers=4",
    "compute.batch_size=3",
    "compute.torch_threads=2",
    "reuse=['/some/earlier/output']",
]


@pytest.mark.parametrize("override", KEY_FIELDS)
def test_each_result_setting_changes_the_key(override):
    base = spec_from_mapping(demo_mapping())
    changed = spec_from_mapping(demo_mapping(), overrides=[override])
    assert reuse.keys_for(pairs(), base) != reuse.keys_for(pairs(), changed)
    assert all(
        a != b
        for a, b in zip(
            reuse.keys_for(pairs(), base), reuse.keys_for(pairs(), changed), strict=True
        )
    )


@pytest.mark.parametrize("override", NOT_KEY_FIELDS)
def test_tuning_knobs_and_locations_keep_the_key(override):
    base = spec_from_mapping(demo_mapping())
    changed = spec_from_mapping(demo_mapping(), overrides=[override])
    assert reuse.keys_for(pairs(), base) == reuse.keys_for(pairs(), changed)


def test_device_enters_the_key_only_through_the_dtype_it_resolves():
    """``dtype: auto`` is float32 on CPU and a 16-bit type on a GPU: the key hashes the
    resolved dtype (as the fingerprint does), so the device matters only through it."""
    keys = [
        reuse.keys_for(pairs(), spec_from_mapping(demo_mapping(), overrides=extra))
        for extra in (
            [],
            ["model.device=cuda"],
            ["model.dtype=float32"],
            ["model.dtype=float32", "model.device=cuda"],
        )
    ]
    assert keys[0] != keys[1]
    assert keys[0] == keys[2] == keys[3]


def test_key_covers_composed_texts_not_ids():
    spec = spec_from_mapping(demo_mapping())
    base = reuse.keys_for(pairs(), spec)
    assert base[0] != base[1]
    assert reuse.keys_for(pairs(query_id=["x", "y"], doc_id=["a", "b"]), spec) == base
    for variant in (
        pairs(query=["what do dogs eat"] * 2),
        pairs(passage=["Cats eat fish!", "Dogs bark!"]),
        pairs(title=["Cats", "Dogs"]),
        pairs(instruction=["be brief", "be brief"]),
    ):
        assert all(a != b for a, b in zip(reuse.keys_for(variant, spec), base, strict=True))
    # Composition, not raw columns: a title is the passage's prefix, stripping is applied.
    same = pairs(passage=["  Cats eat fish.  ", " Dogs bark."])
    assert reuse.keys_for(same, spec) == base
    assert (
        reuse.result_key(reuse.key_settings(spec), "what do cats eat", "Cats eat fish.") == base[0]
    )


def test_reuse_is_not_in_the_fingerprint():
    a = spec_from_mapping(demo_mapping())
    b = spec_from_mapping(demo_mapping(reuse=["/earlier/out", "s3://bucket/run1"]))
    ra, rb = job_record(a, []), job_record(b, [])
    assert ra["fingerprint"] == rb["fingerprint"]


def test_a_reuse_source_that_is_no_output_is_named(tmp_path):
    spec = spec_from_mapping(demo_mapping(reuse=[str(tmp_path / "nothing")]))
    with pytest.raises(FileNotFoundError, match=r"reuse: .*nothing: no job\.json"):
        reuse.usable_sources(spec)


def test_reuse_may_not_name_the_job_own_output():
    from rank1_batch.job.spec import JobError

    with pytest.raises(JobError, match=r"reuse\[0\].*own output"):
        spec_from_mapping(demo_mapping(output={"path": "/o"}, reuse=["/o/"]))


# -- the shard merge (pure) -----------------------------------------------------------------
def test_split_and_merge_copy_matched_rows_and_rank_the_whole_shard():
    from rank1_batch.pipeline.score import SCORES_SCHEMA

    shard = pairs(
        query_id=["q1", "q1", "q1"], doc_id=["d1", "d2", "d3"], query=["q"] * 3,
        passage=["a", "b", "c"], title=[None] * 3, instruction=[None] * 3,
    )  # fmt: skip
    reused = pa.table(
        {
            "query_id": ["q1", "q1"],
            "doc_id": ["d1", "d3"],
            "score": [0.2, 0.9],
            "logit": [-1.4, 2.2],
            "status": ["complete", "forced"],
            "error": [None, None],
            "prompt_tokens": [10, 11],
            "reasoning_tokens": [5, 6],
            "truncated": [False, True],
            "model_revision": ["rev1", "rev0"],  # d3 was scored by another revision
            "engine": ["vllm", "vllm"],
            "reasoning": ["because a", "because c"],
            "finish_reason": ["stop", "length"],
            "reused_from": ["/earlier", "/earlier"],
        },
        schema=reuse.MATCH_SCHEMA.remove(0),
    )
    to_judge, copied = reuse.split_reused(shard, reused, "rev1")
    assert to_judge.column("doc_id").to_pylist() == ["d2", "d3"]
    assert copied.column("doc_id").to_pylist() == ["d1"]
    judged = pa.table(
        {"query_id": ["q1", "q1"], "doc_id": ["d2", "d3"], "score": [0.5, 0.1],
         "logit": [0.0, -2.0], "status": ["complete", "complete"], "error": [None, None],
         "prompt_tokens": [7, 8], "reasoning_tokens": [3, 4], "truncated": [False, False],
         "rank": [1, 2], "model": ["toy"] * 2, "model_revision": ["rev1"] * 2,
         "prompt_id": ["p"] * 2, "score_direct": [None] * 2, "score_reasoned": [0.5, 0.1],
         "decided_by": ["think"] * 2, "engine": ["transformers"] * 2},
        schema=SCORES_SCHEMA,
    )  # fmt: skip
    traces = pa.table(
        {"query_id": ["q1", "q1"], "doc_id": ["d2", "d3"], "reasoning": ["x", "y"],
         "finish_reason": ["stop", "stop"]}
    )  # fmt: skip
    scores, tr = reuse.merge_results(
        shard, judged, traces, copied, model="toy", model_revision="rev1", prompt_id="p"
    )
    assert scores.column("doc_id").to_pylist() == ["d1", "d2", "d3"]
    assert scores.column("score").to_pylist() == [0.2, 0.5, 0.1]
    assert scores.column("rank").to_pylist() == [2, 1, 3]
    assert scores.column("reused_from").to_pylist() == ["/earlier", None, None]
    # A copied row keeps the engine that judged it in the earlier output.
    assert scores.column("engine").to_pylist() == ["vllm", "transformers", "transformers"]
    assert tr.column("reasoning").to_pylist() == ["because a", "x", "y"]
    stats = reuse.copied_stats(copied)
    assert (stats.pairs, stats.reused, stats.complete, stats.reasoning_tokens) == (1, 1, 1, 5)
    # No reuse file: nothing copied, the pairs pass through untouched.
    same, none = reuse.split_reused(shard, None, "rev1")
    assert same is shard and none.num_rows == 0


def test_join_bucket_matches_keys_and_the_first_listed_source_wins():
    def row(**kw: object) -> dict:
        kw["key"] = str(kw["key"]).encode().ljust(16, b".")
        return {**{f.name: None for f in reuse_join.JOIN_SCHEMA}, **kw}

    t = pa.Table.from_pylist(
        [
            row(key="k1", bucket=0, side="target", shard="s1", query_id="q", doc_id="d1"),
            row(key="k2", bucket=0, side="target", shard="s1", query_id="q", doc_id="d2"),
            row(key="k1", bucket=0, side="source", priority=(1 << 32), source="B",
                source_shard="b0", row=0),
            row(key="k1", bucket=0, side="source", priority=3, source="A", source_shard="a3",
                row=7),
            row(key="k1", bucket=0, side="source", priority=3, source="A", source_shard="a3",
                row=2),
            row(key="k3", bucket=0, side="source", priority=0, source="A", source_shard="a0",
                row=0),
        ],
        schema=reuse_join.JOIN_SCHEMA,
    )  # fmt: skip
    out = reuse_join.join_bucket(t).to_pylist()
    assert out == [
        {"shard": "s1", "query_id": "q", "doc_id": "d1", "source": "A", "source_shard": "a3",
         "row": 2}
    ]  # fmt: skip
    # Phase 1 moves keys and pointers only: no result or trace column in the join, no text.
    assert set(reuse_join.JOIN_SCHEMA.names).isdisjoint(reuse.PAYLOAD.names)
    assert set(reuse_join.JOIN_SCHEMA.names).isdisjoint(reuse_join.TEXTS)
    assert reuse_join.join_bucket(t.filter(pc.field("side") == "target")).num_rows == 0
    # Two pending pairs of one text (other shards, other ids) both point at the same row.
    also = row(key="k1", bucket=0, side="target", shard="s2", query_id="q9", doc_id="d9")
    both = pa.concat_tables([t, pa.Table.from_pylist([also], schema=reuse_join.JOIN_SCHEMA)])
    got = sorted(reuse_join.join_bucket(both).to_pylist(), key=lambda r: r["shard"])
    assert [(r["shard"], r["doc_id"], r["source_shard"], r["row"]) for r in got] == [
        ("s1", "d1", "a3", 2), ("s2", "d9", "a3", 2)
    ]  # fmt: skip


# -- end to end -----------------------------------------------------------------------------
COPIED = ["score", "logit", "status", "error", "prompt_tokens", "reasoning_tokens", "truncated"]


def committed(out: str) -> tuple[pa.Table, pa.Table]:
    store = Store(out)
    shards = sorted(commit.committed_shards(store))
    scores = pa.concat_tables(shard_table(store, s, "scores") for s in shards)
    traces = pa.concat_tables(shard_table(store, s, "traces") for s in shards)
    return scores, traces


def by_pair(scores: pa.Table, traces: pa.Table) -> dict[tuple[str, str], tuple]:
    cols = (traces.column(c).to_pylist() for c in traces.column_names)
    t = {(q, d): (r, f) for q, d, r, f in zip(*cols, strict=True)}
    out = {}
    for row in scores.to_pylist():
        key = (row["query_id"], row["doc_id"])
        out[key] = (*(row[c] for c in COPIED), *t[key])
    return out


def same(a: tuple, b: tuple) -> bool:
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(a, b, strict=True))  # fmt: skip


def extended_input(path: Path) -> pa.Table:
    """The demo pairs plus 50% new pairs (new doc ids and passage text, same queries)."""
    demo = pq.read_table(DEMO_INPUT)
    extra = demo.slice(0, demo.num_rows // 2)
    extra = extra.set_column(
        extra.schema.get_field_index("doc_id"), "doc_id",
        pc.binary_join_element_wise("new-", extra.column("doc_id"), ""),
    ).set_column(
        extra.schema.get_field_index("passage"), "passage",
        pc.binary_join_element_wise(extra.column("passage"), " Also new.", ""),
    )  # fmt: skip
    table = pa.concat_tables([demo, extra.cast(demo.schema)])
    pq.write_table(table, path)
    return table


@pytest.mark.ray
def test_extended_job_scores_only_new_pairs_and_resumes_exactly(tmp_path, demo_reference):
    from rank1_batch.engines.factory import build_engine, model_path
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.local import score_local
    from rank1_batch.pipeline.pool import init_ray
    from rank1_batch.run import run

    table = extended_input(tmp_path / "ext.parquet")
    out = str(tmp_path / "ext-out")
    spec = spec_from_mapping(
        demo_mapping(input={"path": str(tmp_path / "ext.parquet")}, output={"path": out,
                     "shard_size": 500}, reuse=[str(demo_reference)])
    )  # fmt: skip
    # An interrupted first attempt: prepare, match, and commit two shards only.
    store = Store(out)
    files = scan_inputs(spec.input)
    claim_output(store, job_record(spec, listing(files)))
    init_ray(spec)
    manifest = prepare(spec, store, files)
    shards = [s["id"] for s in manifest["shards"]]
    matched = reuse_ready.build_reuse(spec, store, shards)
    assert sum(matched.values()) == 3000
    engine = build_engine(spec, model_path(spec))
    first = score_local(spec, store, shards[:2], engine)
    before = {m.shard: (tmp_path / "ext-out" / layout.marker_path(m.shard)).read_bytes()
              for m in first}  # fmt: skip
    # The resumed run: only the other shards are matched and scored again.
    done = run(spec)
    for shard, data in before.items():
        assert (tmp_path / "ext-out" / layout.marker_path(shard)).read_bytes() == data
    assert done["scored"] == table.num_rows == 4500
    assert done["reused"] == 3000, done
    markers = commit.read_markers(store)
    assert sum(m.stats.reused for m in markers) == 3000
    print(f"extended job: {done['scored']} pairs, {done['reused']} reused, "
          f"{done['scored'] - done['reused']} judged")  # fmt: skip
    # Reused rows are the earlier output's, field for field, and say where they came from.
    old = by_pair(*committed(str(demo_reference)))
    new_scores, new_traces = committed(out)
    new = by_pair(new_scores, new_traces)
    assert len(new) == 4500
    for pair, row in old.items():
        assert same(new[pair], row), pair
    ids = zip(*(new_scores.column(c).to_pylist() for c in ("query_id", "doc_id")), strict=True)
    origin = dict(zip(ids, new_scores.column("reused_from").to_pylist(), strict=True))
    assert {origin[p] for p in old} == {str(demo_reference)}
    assert {origin[p] for p in new if p not in old} == {None}
    # Status shows the count.
    from rank1_batch.outputs.status import read_status

    assert read_status(store)["pairs_reused"] == 3000
    # Readers (exports, eval) take a reuse job's output like any other.
    from rank1_batch.outputs.results import read_results

    assert read_results(store, require_complete=True).table.num_rows == 4500


@pytest.mark.ray
def test_changed_reasoning_budget_reuses_nothing(tmp_path, demo_reference):
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.pool import init_ray

    spec = spec_from_mapping(
        demo_mapping(output={"path": str(tmp_path / "o"), "shard_size": 500},
                     reuse=[str(demo_reference)]),
        overrides=["reasoning.max_tokens=32"],
    )  # fmt: skip
    store = Store(spec.output.path)
    files = scan_inputs(spec.input)
    claim_output(store, job_record(spec, listing(files)))
    init_ray(spec)
    manifest = prepare(spec, store, files)
    shards = [s["id"] for s in manifest["shards"]]
    assert reuse.usable_sources(spec) == []
    assert reuse_ready.build_reuse(spec, store, shards) == {}
    # Same settings: every pair matches (the join, not a shortcut, finds them).
    same_spec = spec_from_mapping(
        demo_mapping(output={"path": str(tmp_path / "p"), "shard_size": 500},
                     reuse=[str(demo_reference)])
    )  # fmt: skip
    store2 = Store(same_spec.output.path)
    claim_output(store2, job_record(same_spec, listing(files)))
    prepare(same_spec, store2, files)
    assert sum(reuse_ready.build_reuse(same_spec, store2, shards).values()) == 3000


@pytest.mark.s3
@pytest.mark.ray
def test_reuse_from_and_into_s3(tmp_path, s3, demo_reference, monkeypatch):
    """The earlier output on S3, the new job's output on S3: every pair is copied."""
    from conftest import run_cli

    client = s3.client()
    for f in demo_reference.rglob("*"):
        if f.is_file():
            client.put_object(Bucket=s3.bucket, Key=f"old/{f.relative_to(demo_reference)}",
                              Body=f.read_bytes())  # fmt: skip
    client.put_object(Bucket=s3.bucket, Key="in/demo-pairs.parquet", Body=DEMO_INPUT.read_bytes())
    args, store = s3.demo_run(f"s3://{s3.bucket}/new")
    run_cli(*args, "--set", f"reuse=['s3://{s3.bucket}/old']", "--set", "model.device=cpu",
            env=s3.env)  # fmt: skip
    done = store.read_json(layout.SUCCESS)
    assert done["scored"] == 3000 and done["reused"] == 3000
    old = by_pair(*committed(str(demo_reference)))
    shards = sorted(commit.committed_shards(store))
    new_scores = pa.concat_tables(shard_table(store, s, "scores") for s in shards)
    new_traces = pa.concat_tables(shard_table(store, s, "traces") for s in shards)
    new = by_pair(new_scores, new_traces)
    assert all(same(new[p], row) for p, row in old.items())
    assert set(new_scores.column("reused_from").to_pylist()) == {f"s3://{s3.bucket}/old"}
    json.dumps(done)


# -- keys first: the join reads results only of matched source shards -------------------------
class ErrorsSometimes:
    """Engine double: a deterministic judgement per passage, an error row for the passages
    in ``errors``, and a reasoning text that varies in length (traces are a shard's bulk)."""

    model_id = "toy"
    model_revision = "0"

    def __init__(self, errors: frozenset[str] = frozenset()) -> None:
        self.errors = errors

    def judge(self, requests):
        import zlib

        from rank1_batch.core import rank1

        out = []
        for r in requests:
            h = zlib.crc32(r.passage.encode())
            if r.passage in self.errors:
                out.append(rank1.error_judgement("prompt_too_long", prompt_tokens=h % 90))
                continue
            out.append(
                rank1.Judgement(
                    score=(h % 997) / 997, logit=(h % 13) - 6.0, status="complete",
                    prompt_tokens=h % 300, reasoning_tokens=h % 40, truncated=h % 3 == 0,
                    reasoning=f"because {r.passage} " * (1 + h % 9), finish_reason="stop",
                )
            )  # fmt: skip
        return out

    def close(self) -> None:
        pass


def texts_table(rows: list[tuple[str, str, str, str]]) -> pa.Table:
    names = ("query_id", "query", "doc_id", "passage")
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def prepared_output(tmp_path: Path, name: str, rows: list[tuple[str, str, str, str]], **job):
    """A prepared output of ``rows`` (shards of about 20 pairs): its spec, store and shards."""
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.pool import init_ray

    pq.write_table(texts_table(rows), tmp_path / f"{name}.parquet")
    spec = spec_from_mapping(
        demo_mapping(input={"path": str(tmp_path / f"{name}.parquet")},
                     output={"path": str(tmp_path / name), "shard_size": 20}, **job)
    )  # fmt: skip
    store = Store(spec.output.path)
    files = scan_inputs(spec.input)
    claim_output(store, job_record(spec, listing(files)))
    init_ray(spec)
    shards = [s["id"] for s in prepare(spec, store, files)["shards"]]
    return spec, store, shards


def todays_reuse(spec, store: Store, shard: str) -> list[dict]:
    """The oracle: reuse as it was before keys came first, in plain pyarrow: every source
    shard's pairs + scores + traces joined, error rows dropped, the first-listed source's row
    of each key kept; the target shard's matches in (query_id, doc_id) order."""
    ids, best = ["query_id", "doc_id"], {}
    for uri in spec.reuse:
        src = Store(uri)
        src_spec = reuse._source_spec(uri, None)
        for s in sorted(commit.committed_shards(src)):
            scores = shard_table(src, s, "scores").drop_columns(["model", "prompt_id", "rank"])
            traces = shard_table(src, s, "traces")
            rows = src.read_parquet(layout.pairs_path(s)).join(scores, ids).join(traces, ids)
            rows = rows.filter(pc.field("status") != "error")
            for key, row in zip(reuse.keys_for(rows, src_spec), rows.to_pylist(), strict=True):
                best.setdefault(key, {**row, "reused_from": uri})
    pairs = store.read_parquet(layout.pairs_path(shard))
    keys = reuse.keys_for(pairs, spec)
    qids, dids = pairs["query_id"].to_pylist(), pairs["doc_id"].to_pylist()
    got = [
        {**best[k], "query_id": q, "doc_id": d}
        for k, q, d in zip(keys, qids, dids, strict=True)
        if k in best
    ]
    got.sort(key=lambda r: (r["query_id"], r["doc_id"]))
    return [{n: r[n] for n in reuse.MATCH_SCHEMA.names[1:]} for r in got]


# Error rows of the first source: two the target wants (the second source has their texts),
# one in a shard the target does not match.
A_ERRORS = frozenset({"passage 1-3", "passage 1-7", "passage 7-2"})


@pytest.mark.ray
def test_keys_first_reuse_equals_todays_and_never_reads_unmatched_results(tmp_path):
    """Two sources (the first listed wins a shared key, its error rows fall through to the
    second), a target matching part of them: the reuse files equal today's join row for row,
    and the traces of source shards without matches are never read (they are directories
    here, which any read fails on), nor their scores unless they hold error rows."""
    from rank1_batch.pipeline.local import score_local

    def rows(q: int, docs: range, tag: str = "") -> list[tuple[str, str, str, str]]:
        return [(f"q{q}", f"query {q}", f"{tag}d{d}", f"passage {q}-{d}{tag}") for d in docs]

    a_rows = [r for q in range(8) for r in rows(q, range(10))]
    b_rows = [r for q in range(3) for r in rows(q, range(5, 15), "b")]
    # The same texts as the first source's under other doc ids.
    b_rows += [
        (f"q{q}", f"query {q}", f"bd{d}", f"passage {q}-{d}") for q in (0, 1) for d in range(10)
    ]
    a_spec, a_store, a_shards = prepared_output(tmp_path, "a", a_rows)
    score_local(a_spec, a_store, a_shards, ErrorsSometimes(A_ERRORS))
    b_spec, b_store, b_shards = prepared_output(tmp_path, "b", b_rows)
    score_local(b_spec, b_store, b_shards, ErrorsSometimes())
    target = [r for q in (0, 1, 2) for r in rows(q, range(12))] + rows(2, range(5, 9), "b")
    spec, store, shards = prepared_output(
        tmp_path, "t", target, reuse=[str(tmp_path / "a"), str(tmp_path / "b")]
    )
    wanted = {
        k for s in shards for k in reuse.keys_for(store.read_parquet(layout.pairs_path(s)), spec)
    }
    expected = {s: todays_reuse(spec, store, s) for s in shards}  # before any file is probed
    probed = {"traces": 0, "scores": 0}
    for src, src_shards in ((a_store, a_shards), (b_store, b_shards)):
        for s in src_shards:
            if wanted.intersection(reuse.keys_for(src.read_parquet(layout.pairs_path(s)), spec)):
                continue
            marker = commit.read_marker(src, s)
            for kind in ("traces", "scores") if marker.stats.error == 0 else ("traces",):
                (Path(src.uri) / marker.file(kind)[0]).unlink()
                (Path(src.uri) / marker.file(kind)[0]).mkdir()
                probed[kind] += 1
    assert probed["scores"] >= 1 and probed["traces"] > probed["scores"], probed
    # The first source as prepared before pairs stored their text key (no column: its keys
    # come from its texts); the second with its texts replaced, its stored keys kept: it
    # matches only if its texts are never read.
    from rank1_batch.core import text_key
    from rank1_batch.io.fs import parquet_bytes

    for src, src_shards in ((a_store, a_shards), (b_store, b_shards)):
        for s in src_shards:
            table = src.read_parquet(layout.pairs_path(s))
            if src is a_store:
                table = table.drop_columns([text_key.COLUMN])
            else:
                for c in ("query", "passage"):
                    i = table.schema.get_field_index(c)
                    table = table.set_column(i, c, pa.array(["unread"] * table.num_rows))
            src.write_atomic(layout.pairs_path(s), parquet_bytes(table, plain=True))

    matched = reuse_ready.build_reuse(spec, store, shards)
    assert matched == {s: len(e) for s, e in expected.items() if e}
    origins = [r["reused_from"] for e in expected.values() for r in e]
    assert set(origins) == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert sum(matched.values()) > 20
    for s, e in expected.items():
        if not e:
            assert not store.exists(reuse.reuse_path(s))
            continue
        got = store.read_parquet(reuse.reuse_path(s))
        assert got.schema == reuse.MATCH_SCHEMA.remove(0)
        assert got.to_pylist() == e, s


# -- the stored text key: prepare writes it, reuse joins on it ------------------------------
@pytest.mark.ray
@pytest.mark.parametrize("plan", ["grouped", "shuffle"])
def test_prepare_stores_each_pair_text_key(tmp_path, plan):
    """Both prepare plans write ``text_key``: the key of the pair's texts as the job composes
    them (its instruction applied), the same on both, 16 bytes a pair."""
    from test_prepare_plans import grouped_input

    from rank1_batch.core import text_key
    from rank1_batch.job.inputs import scan_inputs
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.pool import init_ray

    grouped_input(tmp_path / "in.parquet")
    spec = spec_from_mapping(
        {"input": {"path": str(tmp_path / "in.parquet"), "grouped": plan == "grouped"},
         "output": {"path": str(tmp_path / "out"), "shard_size": 6},
         "model": {"name": "toy", "device": "cpu"},
         "reasoning": {"instruction": "answer carefully"}}
    )  # fmt: skip
    store = Store(spec.output.path)
    init_ray(spec)
    manifest = prepare(spec, store, scan_inputs(spec.input))
    assert manifest["plan"] == plan
    bare = spec_from_mapping(demo_mapping())  # no job instruction
    for s in manifest["shards"]:
        pairs = store.read_parquet(s["path"])
        assert pairs.schema.field(text_key.COLUMN).type == pa.binary(16)
        stored = pairs.column(text_key.COLUMN).to_pylist()
        assert stored == text_key.text_keys(pairs, spec.reasoning).to_pylist()
        assert stored != text_key.text_keys(pairs, bare.reasoning).to_pylist()
        assert reuse_join.pair_keys(store, s["id"], bare.reasoning).to_pylist() == stored


def test_pair_keys_of_a_shard_without_the_column_are_computed_from_its_texts(tmp_path):
    """An output prepared before ``text_key`` existed: its keys come from its texts."""
    from rank1_batch.core import text_key
    from rank1_batch.io.fs import parquet_bytes

    spec = spec_from_mapping(demo_mapping())
    store = Store(str(tmp_path / "old"))
    store.write_atomic(layout.pairs_path("shard-00000"), parquet_bytes(pairs(), plain=True))
    keys = reuse_join.pair_keys(store, "shard-00000", spec.reasoning)
    assert keys.type == text_key.TYPE
    head = reuse.settings_key(reuse.key_settings(spec))
    assert [head + k.hex() for k in keys.to_pylist()] == reuse.keys_for(pairs(), spec)
    # With ids (one read of the file): the same keys, each beside its own pair's ids.
    table = reuse_join.pair_table(store, "shard-00000", spec.reasoning, ("query_id", "doc_id"))
    assert table.column_names == [text_key.COLUMN, "query_id", "doc_id"]
    assert table.column(text_key.COLUMN).to_pylist() == keys.to_pylist()
    assert (
        table.select(["query_id", "doc_id"]).to_pylist()
        == pairs().select(["query_id", "doc_id"]).to_pylist()
    )


def test_matched_rows_are_taken_by_position_only_where_the_ids_agree():
    """The fetch takes a matched row at its ``pairs/`` position in the scores and traces
    (the commit writes them in pairs order), and falls back to the id join wherever a row
    taken there is another pair's: both give the same rows."""
    ids = pa.table({"query_id": ["q1", "q1", "q2", "q2"], "doc_id": ["d1", "d2", "d3", "d4"]})
    scores = ids.append_column("score", pa.array([0.1, 0.2, 0.3, 0.4]))
    traces = ids.append_column("reasoning", pa.array(["r1", "r2", "r3", "r4"]))
    group = pa.table(
        {"shard": ["t0", "t1"], "query_id": ["n1", "n2"], "doc_id": ["e1", "e2"], "row": [3, 1]}
    )
    picked = ids.take(group["row"])
    by_position = reuse_join._by_position(group, picked, scores, traces)
    assert by_position is not None
    assert by_position.to_pylist() == [
        {"shard": "t0", "query_id": "n1", "doc_id": "e1", "score": 0.4, "reasoning": "r4"},
        {"shard": "t1", "query_id": "n2", "doc_id": "e2", "score": 0.2, "reasoning": "r2"},
    ]
    joined = reuse_join._by_ids(group, picked, scores, traces)
    assert sorted(joined.select(by_position.column_names).to_pylist(), key=str) == sorted(
        by_position.to_pylist(), key=str
    )
    reordered = scores.take(pa.array([1, 0, 3, 2]))  # not in pairs order
    assert reuse_join._by_position(group, picked, reordered, traces) is None
    assert reuse_join._by_position(group, picked, scores.slice(0, 2), traces) is None
    nulled = scores.set_column(1, "doc_id", pa.array(["d1", "d2", "d3", None]))
    assert reuse_join._by_position(group, picked, nulled, traces) is None  # a null agrees with none
    fallback = reuse_join._by_ids(group, picked, reordered, traces)
    assert sorted(fallback.select(by_position.column_names).to_pylist(), key=str) == sorted(
        by_position.to_pylist(), key=str
    )
