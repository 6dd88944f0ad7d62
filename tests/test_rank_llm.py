"""rank_llm interop: its request JSONL as input, its result JSONL as an export, read back.

A hand-written request file (3 queries; rank_llm's ``Request`` shape, checked against
``rank_llm/data.py`` of rank-llm 0.25.7) is converted, prepared and scored in this process with
the toy model (``score_local``: the shard body Ray runs, without Ray), then exported as
``rank-llm``. The core assertions check the export against rank_llm's documented schema and
the committed scores; where ``rank_llm.data`` imports (``pip install --no-deps rank-llm
dacite``), a second test reads it back with rank_llm's own classes and writer.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from rank1_batch.io.store import Store
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.outputs import exports
from rank1_batch.outputs.rejects import read_rejects
from rank1_batch.outputs.results import read_results

REQUESTS = [
    {
        "query": {"text": "how do cats sleep", "qid": "q1"},
        "candidates": [
            {"docid": "d1", "score": 12.5, "doc": {"contents": "Cats sleep most of the day."}},
            {"docid": "d2", "score": 11.0, "doc": {"title": "Dogs", "text": "Dogs bark."}},
            {"docid": "d3", "score": 9.0, "doc": {"segment": "A cat naps in the sun."}},
            {"docid": "d1", "score": 8.0, "doc": {"contents": "Cats sleep a lot."}},  # again
        ],
    },
    {
        "query": {"text": "what do dogs eat", "qid": 2},  # rank_llm allows int ids
        "candidates": [
            {"docid": 7, "score": 3.0, "doc": {"text": "Dogs eat meat and kibble."}},
            {"docid": "d9", "score": 2.0, "doc": {"url": "http://x"}},  # no text: missing_doc
            {"docid": "d4", "score": 1.0, "doc": {"body": "Fish swim."}},
        ],
    },
    {
        "query": {"text": "birds that fly", "qid": "q3"},
        "candidates": [
            {"docid": "d5", "score": 0.5, "doc": {"passage": "Birds fly south."}},
            {"docid": "d6", "score": 0.4, "doc": {"text": "Penguins do not fly."}},
        ],
    },
]


def run_locally(spec_map: dict) -> Store:
    """``rank1-batch run`` without Ray: convert, prepare (grouped: in this process), score
    every shard with one engine, finalize."""
    from rank1_batch.engines.factory import build_engine, model_path
    from rank1_batch.job.prepare import prepare
    from rank1_batch.job.resolve import resolve_spec
    from rank1_batch.pipeline.finalize import finalize
    from rank1_batch.pipeline.local import score_local
    from rank1_batch.run import claim_converted, convert_input

    start = time.perf_counter()
    spec = resolve_spec(spec_from_mapping(spec_map))
    store = Store(spec.output.path)
    claim_converted(spec, store)
    spec, files = convert_input(spec, store)
    manifest = prepare(spec, store, files)
    engine = build_engine(spec, model_path(spec))
    score_local(spec, store, [s["id"] for s in manifest["shards"]], engine)
    finalize(store, manifest, time.perf_counter() - start)
    return store


@pytest.fixture(scope="module")
def reranked(tmp_path_factory) -> tuple[Store, dict]:
    root = tmp_path_factory.mktemp("rank-llm")
    (root / "requests.jsonl").write_text(
        "\n".join(json.dumps(r) for r in REQUESTS[:2]) + "\n\n" + json.dumps(REQUESTS[2]) + "\n"
    )
    store = run_locally(
        {
            "input": {"path": str(root / "requests.jsonl"), "format": "rank-llm"},
            "output": {"path": str(root / "out"), "shard_size": 3},
            "model": {"name": "toy", "engine": "transformers", "device": "cpu",
                      "dtype": "float32", "max_model_len": 1024},
            "reasoning": {"max_tokens": 32, "min_reserve": 16},
            "compute": {"batch_size": 8, "torch_threads": 1},
        }
    )  # fmt: skip
    summary = exports.export(store, "rank-llm")
    return store, summary


def read_export(store: Store) -> list[dict]:
    text = store.read_bytes(exports.default_name("rank-llm")).decode()
    return [json.loads(line) for line in text.splitlines()]


def test_a_rank_llm_request_file_is_reranked_into_a_rank_llm_result_file(reranked):
    store, summary = reranked
    results = read_results(store, require_complete=True).table
    scores = {
        (q, d): s
        for q, d, s in zip(*(results.column(c).to_pylist() for c in ("query_id", "doc_id",
                                                                      "score")), strict=True)
    }  # fmt: skip
    # every candidate with text is scored once: d1 of q1 twice is one pair; d9 has no text
    assert sorted(scores) == [("2", "7"), ("2", "d4"), ("q1", "d1"), ("q1", "d2"),
                              ("q1", "d3"), ("q3", "d5"), ("q3", "d6")]  # fmt: skip
    got = read_export(store)
    assert summary["rows"] == 7 and summary["out"].endswith("exports/rank_llm.jsonl")
    # rank_llm's Result, as its DataWriter.write_in_jsonl_format writes it
    assert [set(r) for r in got] == [{"query", "candidates"}] * 3
    for result in got:
        assert list(result["query"]) == ["text", "qid"]
        assert all(list(c) == ["docid", "score", "doc"] for c in result["candidates"])
        values = [c["score"] for c in result["candidates"]]
        assert values == sorted(values, reverse=True)  # reranked order
        for c in result["candidates"]:
            assert math.isclose(c["score"], scores[(result["query"]["qid"], c["docid"])],
                                rel_tol=1e-6)  # fmt: skip
    by_qid = {r["query"]["qid"]: r for r in got}
    assert by_qid["2"]["query"]["text"] == "what do dogs eat"
    q1 = {c["docid"]: c["doc"] for c in by_qid["q1"]["candidates"]}
    # the passage judged (the first occurrence's), and the title
    assert q1 == {"d1": {"text": "Cats sleep most of the day."},
                  "d2": {"text": "Dogs bark.", "title": "Dogs"},
                  "d3": {"text": "A cat naps in the sun."}}  # fmt: skip
    # what was not scored is accounted for, with the request's line (line 3 is blank)
    report = read_rejects(store)
    by = {b["reason"]: b["rows"] for b in report["reasons"]}
    requests = str(store.uri).rsplit("/", 1)[0] + "/requests.jsonl"
    assert [r["where"] for r in by["missing_doc"]] == [f"{requests} line 2, candidate 1"]
    dup = by["duplicate"][0]
    assert (dup["where"], dup["kept_where"], dup["passage_differs"]) == (
        f"{requests} line 1, candidate 3",
        f"{requests} line 1, candidate 0",
        True,
    )


def test_the_trec_tag_is_the_models_name_unless_given(reranked, tmp_path):
    store, _ = reranked
    exports.export(store, "trec", str(tmp_path / "run.trec"))
    assert {line.split()[-1] for line in (tmp_path / "run.trec").read_text().splitlines()} == {
        "toy"
    }
    exports.export(store, "trec", str(tmp_path / "mine.trec"), tag="mine")
    assert (tmp_path / "mine.trec").read_text().split("\n")[0].endswith(" mine")

    class Job:
        def __init__(self, model: str, **reasoning: object) -> None:
            self.job = {"spec": {"model": {"name": model}, "reasoning": reasoning}}

    assert exports.run_tag(Job("jaedong/rank1-7b")) == "rank1-7b"  # type: ignore[arg-type]
    assert exports.run_tag(Job("/models/rank1-32b-awq/", mode="direct")) == "rank1-32b-awq-direct"  # type: ignore[arg-type]
    cascade = Job("jaedong/rank1-7b", mode="cascade", cascade={"top_k": 10, "margin": 0.1})
    assert exports.run_tag(cascade) == "rank1-7b-cascade-k10-m0.1"  # type: ignore[arg-type]
    assert exports.run_tag(Job("")) == "rank1"  # type: ignore[arg-type]


def test_rank_llm_reads_the_result_back_with_its_own_classes(reranked, tmp_path):
    try:
        from rank_llm.data import DataWriter, Result, read_requests_from_file
    except ImportError as exc:
        pytest.skip(
            f"rank_llm.data does not import ({exc}); the export is checked against its "
            "documented schema by test_a_rank_llm_request_file_is_reranked_into_a_rank_llm_"
            "result_file (pip install --no-deps rank-llm dacite to run this one)"
        )
    from dacite import from_dict

    store, _ = reranked
    path = tmp_path / "result.jsonl"
    path.write_bytes(store.read_bytes(exports.default_name("rank-llm")))
    # the input was a valid rank_llm request file, as rank_llm reads one
    (tmp_path / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REQUESTS))
    assert [r.query.qid for r in read_requests_from_file(str(tmp_path / "requests.jsonl"))] == [
        "q1",
        2,
        "q3",
    ]
    lines = path.read_text().splitlines()
    results = [from_dict(data_class=Result, data=json.loads(line)) for line in lines]
    assert [r.query.qid for r in results] == ["q1", "2", "q3"]  # shards in input order
    assert {c.docid for c in results[0].candidates} == {"d1", "d2", "d3"}
    assert all(isinstance(c.score, float) for r in results for c in r.candidates)
    # rank_llm's own writer writes the same bytes from what it read
    again = tmp_path / "again.jsonl"
    DataWriter(results).write_in_jsonl_format(str(again))
    assert again.read_bytes() == path.read_bytes()
