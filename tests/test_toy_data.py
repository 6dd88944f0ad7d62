"""The synthetic retrieval world behind the toy model and the demo job."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from rank1_batch.toy import data as toy_data

REPO = Path(__file__).resolve().parents[1]


def _topic_of_words(words: list[str]) -> str:
    """The aggregate rule: the topic owning most of the words."""
    owner = {w: t for t, vocab in toy_data.TOPICS.items() for w in vocab}
    counts = Counter(owner[w] for w in words if w in owner)
    return counts.most_common(1)[0][0]


def _words(text: str) -> list[str]:
    return text.rstrip(".").split()


def test_vocabularies_are_distinct_and_sized() -> None:
    words = [w for vocab in toy_data.TOPICS.values() for w in vocab] + list(toy_data.FILLER)
    assert len(words) == len(set(words))
    assert 8 <= len(toy_data.TOPICS) <= 12
    assert all(20 <= len(v) <= 30 for v in toy_data.TOPICS.values())
    assert not set(words) & set(toy_data.TOPIC_NAMES)
    assert all(w.isalpha() and w.islower() for w in words)


def test_examples_are_deterministic_and_follow_the_rule() -> None:
    a = toy_data.make_examples(7, 2000)
    assert a == toy_data.make_examples(7, 2000)
    assert a != toy_data.make_examples(8, 2000)
    assert 0.45 < sum(e.label for e in a) / len(a) < 0.55
    for e in a:
        words = _words(e.passage)
        assert 10 <= len(words) <= 17
        assert 2 <= len(e.query.split()) <= 4
        assert _topic_of_words(e.query.split()) == e.query_topic
        assert _topic_of_words(words) == e.passage_topic
        assert e.label == (e.query_topic == e.passage_topic)
        assert e.reasoning == toy_data.reasoning_text(e.query_topic, e.passage_topic)
        assert e.reasoning[-1] in ".!?" and len(e.reasoning.split()) <= 14


def test_single_word_matching_is_a_poor_rule() -> None:
    examples = toy_data.make_examples(3, 4000)
    overlap_says = [bool(set(e.query.split()) & set(_words(e.passage))) for e in examples]
    accuracy = sum(o == e.label for o, e in zip(overlap_says, examples, strict=True)) / len(
        examples
    )
    negatives_with_query_topic_words = [
        e
        for e in examples
        if not e.label and set(_words(e.passage)) & set(toy_data.TOPICS[e.query_topic])
    ]
    assert accuracy < 0.85
    assert len(negatives_with_query_topic_words) > 0.3 * sum(not e.label for e in examples)


def test_ir_collection_shape_and_shuffled_order() -> None:
    coll = toy_data.make_ir_collection(11, 40, 30)
    assert coll == toy_data.make_ir_collection(11, 40, 30)
    assert len(coll.queries) == 40 and len(coll.candidates) == 1200
    assert len({c.doc_id for c in coll.candidates}) == 1200
    qids = [c.query_id for c in coll.candidates]
    assert qids == sorted(qids)  # a query's candidates are adjacent
    for qid, judged in coll.qrels.items():
        assert 6 <= sum(judged.values()) <= 9  # 20-30% of 30
        assert set(judged.values()) <= {0, 1}
        for cand in (c for c in coll.candidates if c.query_id == qid):
            assert cand.query == coll.queries[qid]
            topic = _topic_of_words(_words(cand.passage))
            assert judged[cand.doc_id] == (topic == _topic_of_words(cand.query.split()))
    first = toy_data.ndcg_at_k(toy_data.first_stage_ranking(coll), coll.qrels)
    assert 0.2 < first < 0.55  # a shuffle: no better than chance


def test_ndcg_at_k() -> None:
    qrels = {"q": {"a": 1, "b": 0, "c": 1}}
    assert toy_data.ndcg_at_k({"q": ["a", "c", "b"]}, qrels) == 1.0
    expected = (1 + 1 / 2) / (1 + 1 / 1.584962500721156)
    assert abs(toy_data.ndcg_at_k({"q": ["a", "b", "c"]}, qrels) - expected) < 1e-9
    scores = {("q", "a"): 0.1, ("q", "b"): 0.9, ("q", "c"): 0.9}
    coll = toy_data.IRCollection(
        {"q": "x"}, [toy_data.Candidate("q", "x", d, "p") for d in "abc"], qrels
    )
    assert toy_data.rank_by_score(coll, scores) == {"q": ["b", "c", "a"]}


def test_committed_demo_files_match_the_generator(tmp_path: Path) -> None:
    pairs, qrels = toy_data.write_demo_data(tmp_path)
    committed = REPO / "jobs" / "data"
    table = pq.read_table(committed / "demo-pairs.parquet")
    assert table.equals(pq.read_table(pairs))
    assert (committed / "demo.qrels").read_text() == qrels.read_text()
    assert table.column_names == ["query_id", "query", "doc_id", "passage"]
    assert all(str(f.type) == "string" for f in table.schema)
    assert table.num_rows == toy_data.DEMO_QUERIES * toy_data.DEMO_CANDIDATES
    lines = qrels.read_text().splitlines()
    assert len(lines) == table.num_rows
    assert all(len(line.split()) == 4 and line.split()[1] == "0" for line in lines)
