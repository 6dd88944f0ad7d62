"""A synthetic retrieval world for the toy Rank1 model: demos and tests only.

Twelve topics each own a vocabulary of distinct English words; a few filler words are shared.
A query is a few words of one topic. A passage is mostly words of its own topic plus filler,
and sometimes one or two "noise" words of another topic: often the query's topic when the
passage is not relevant, so that matching a single query word is a poor rule. A passage is
relevant to a query iff both have the same topic, which can only be decided by aggregating
over all the words of the passage.

The reasoning the toy model learns names the topics and compares them, e.g.
``"The query is about cooking. The passage is about sports. They differ."`` This is a toy
chain of thought, not relevance judgement: nothing here measures a real reranker.

Pure python (``random``); :func:`write_demo_data` imports pyarrow when called.
Regenerate the committed demo files with ``python -m rank1_batch.toy.data jobs/data``.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# One topic per paragraph: "name: word word ..." (continuation lines are indented).
_TOPIC_TABLE = """
cooking: bread oven flour butter garlic onion recipe simmer skillet pastry dough saucepan
    spatula roast bake pepper vinegar yeast broth whisk ladle caramel noodle sugar
sports: football goal referee stadium sprint tennis racket coach league tournament striker
    marathon hockey medal athlete dribble inning pitcher umpire relay penalty jersey
    wrestling champion
music: guitar melody violin chord rhythm orchestra piano drummer concert tempo lyrics
    soprano trumpet album harmony cello symphony ballad choir banjo conductor octave flute
    jazz
astronomy: galaxy telescope comet nebula planet orbit asteroid eclipse quasar meteor
    supernova crater lunar solar cosmos pulsar observatory constellation star gravity
    satellite jupiter saturn equinox
medicine: doctor vaccine fever surgery patient clinic antibiotic diagnosis nurse symptom
    tablet infection dosage therapy allergy vitamin bandage stethoscope pharmacy syringe
    insulin ward pulse virus
finance: stock bond dividend investor market equity loan interest mortgage broker portfolio
    inflation budget revenue audit currency bank credit asset tax pension hedge yield profit
gardening: tulip compost shovel seedling rake soil fertilizer greenhouse orchard pruning
    mulch daisy watering weeds trowel lawn blossom bulb sunflower hoe trellis petal fern
    hose
computing: software compiler laptop keyboard database server algorithm python kernel browser
    network processor memory cache debugger password router pixel monitor cursor firmware
    backup script cloud
sailing: boat sail harbor anchor mast keel rudder tide voyage captain deck dinghy regatta
    compass buoy starboard hull wind yacht crew knot port lighthouse ocean
law: court judge lawyer verdict jury statute lawsuit contract attorney trial appeal witness
    evidence plaintiff defendant testimony justice prosecutor ruling clause legislation
    felony bail subpoena
travel: passport airport luggage hotel ticket tourist itinerary suitcase visa flight hostel
    backpack museum souvenir guide train journey resort cruise map booking customs beach
    sightseeing
geology: rock mineral volcano granite fossil sediment quartz magma basalt erosion glacier
    canyon limestone crystal earthquake lava tectonic boulder pebble cave marble slate
    geyser strata
"""
_FILLER_WORDS = """
the a of and in with for on to was are this that it by from at as new many some very often
each also every most other such more
"""


def _parse_topics(table: str) -> dict[str, tuple[str, ...]]:
    topics: dict[str, tuple[str, ...]] = {}
    for block in table.strip().replace("\n    ", " ").splitlines():
        name, words = block.split(":")
        topics[name.strip()] = tuple(words.split())
    return topics


TOPICS: dict[str, tuple[str, ...]] = _parse_topics(_TOPIC_TABLE)
TOPIC_NAMES: tuple[str, ...] = tuple(TOPICS)
FILLER: tuple[str, ...] = tuple(_FILLER_WORDS.split())

QUERY_WORDS = (2, 4)  # inclusive range of words in a query
PASSAGE_TOPIC_WORDS = (7, 10)
PASSAGE_FILLER_WORDS = (3, 5)
PASSAGE_NOISE_WORDS = (0, 2)


@dataclass(frozen=True)
class Example:
    """One supervised (query, passage) pair with its label and the reasoning to imitate."""

    query: str
    passage: str
    label: bool
    reasoning: str
    query_topic: str
    passage_topic: str


@dataclass(frozen=True)
class Candidate:
    """One first-stage candidate: a row of the demo pairs file."""

    query_id: str
    query: str
    doc_id: str
    passage: str


@dataclass(frozen=True)
class IRCollection:
    """Queries, candidates in first-stage order (a random shuffle per query) and qrels."""

    queries: dict[str, str]
    candidates: list[Candidate]
    qrels: dict[str, dict[str, int]]


def reasoning_text(query_topic: str, passage_topic: str) -> str:
    """The toy chain of thought: name both topics, compare; ends with a sentence end."""
    verdict = "They match." if query_topic == passage_topic else "They differ."
    return f"The query is about {query_topic}. The passage is about {passage_topic}. {verdict}"


def make_query(rng: random.Random, topic: str) -> str:
    """A few distinct words of one topic."""
    return " ".join(rng.sample(TOPICS[topic], rng.randint(*QUERY_WORDS)))


def make_passage(rng: random.Random, topic: str, *, noise_topic: str | None = None) -> str:
    """~10-16 words: mostly ``topic`` words, some filler, 0-2 words of ``noise_topic``.

    ``noise_topic`` defaults to a random other topic.
    """
    words = rng.sample(TOPICS[topic], rng.randint(*PASSAGE_TOPIC_WORDS))
    words += [rng.choice(FILLER) for _ in range(rng.randint(*PASSAGE_FILLER_WORDS))]
    if noise_topic is None:
        noise_topic = rng.choice([t for t in TOPIC_NAMES if t != topic])
    words += rng.sample(TOPICS[noise_topic], rng.randint(*PASSAGE_NOISE_WORDS))
    rng.shuffle(words)
    return " ".join(words) + "."


def _negative_passage(rng: random.Random, query_topic: str) -> tuple[str, str]:
    """A passage of another topic; half of them carry noise words of the query's topic."""
    topic = rng.choice([t for t in TOPIC_NAMES if t != query_topic])
    noise = query_topic if rng.random() < 0.5 else None
    return topic, make_passage(rng, topic, noise_topic=noise)


def make_example(rng: random.Random, *, relevant: bool | None = None) -> Example:
    """One training pair; ``relevant`` is drawn 50/50 when not given."""
    if relevant is None:
        relevant = rng.random() < 0.5
    query_topic = rng.choice(TOPIC_NAMES)
    query = make_query(rng, query_topic)
    if relevant:
        passage_topic, passage = query_topic, make_passage(rng, query_topic)
    else:
        passage_topic, passage = _negative_passage(rng, query_topic)
    return Example(
        query=query,
        passage=passage,
        label=relevant,
        reasoning=reasoning_text(query_topic, passage_topic),
        query_topic=query_topic,
        passage_topic=passage_topic,
    )


def make_examples(seed: int, n: int) -> list[Example]:
    """``n`` training examples, balanced in expectation, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [make_example(rng) for _ in range(n)]


def make_ir_collection(seed: int, n_queries: int, n_candidates: int) -> IRCollection:
    """A held-out style retrieval set: 20-30% relevant candidates per query, shuffled order.

    Query ids are ``q0001``…, doc ids ``d000001``… (unique over the collection). Qrels are
    binary and judge every candidate (1 = same topic as the query).
    """
    if n_candidates < 1 or n_queries < 0:
        raise ValueError("need n_queries >= 0 and n_candidates >= 1")
    rng = random.Random(seed)
    queries: dict[str, str] = {}
    candidates: list[Candidate] = []
    qrels: dict[str, dict[str, int]] = {}
    doc_no = 0
    for q in range(1, n_queries + 1):
        qid = f"q{q:04d}"
        topic = rng.choice(TOPIC_NAMES)
        query = make_query(rng, topic)
        queries[qid] = query
        lo = max(1, math.ceil(0.2 * n_candidates))
        hi = max(lo, math.floor(0.3 * n_candidates))
        n_rel = rng.randint(lo, hi)
        docs: list[tuple[str, int]] = []
        for i in range(n_candidates):
            if i < n_rel:
                docs.append((make_passage(rng, topic), 1))
            else:
                docs.append((_negative_passage(rng, topic)[1], 0))
        rng.shuffle(docs)  # the first-stage order carries no signal
        qrels[qid] = {}
        for passage, rel in docs:
            doc_no += 1
            doc_id = f"d{doc_no:06d}"
            candidates.append(Candidate(qid, query, doc_id, passage))
            qrels[qid][doc_id] = rel
    return IRCollection(queries=queries, candidates=candidates, qrels=qrels)


def ndcg_at_k(
    ranking: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: int = 10
) -> float:
    """Mean nDCG@k over the queries of ``qrels`` (gain ``2^rel - 1``, log2 discount)."""
    values: list[float] = []
    for qid, judged in qrels.items():
        gains = [2 ** judged.get(doc, 0) - 1 for doc in list(ranking.get(qid, ()))[:k]]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
        ideal = sorted((2**r - 1 for r in judged.values()), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        if idcg > 0:
            values.append(dcg / idcg)
    return sum(values) / len(values) if values else 0.0


def first_stage_ranking(collection: IRCollection) -> dict[str, list[str]]:
    """Doc ids per query in the (shuffled) first-stage order."""
    ranking: dict[str, list[str]] = {}
    for cand in collection.candidates:
        ranking.setdefault(cand.query_id, []).append(cand.doc_id)
    return ranking


def rank_by_score(
    collection: IRCollection, scores: Mapping[tuple[str, str], float]
) -> dict[str, list[str]]:
    """Doc ids per query by score descending, ties by doc id (as the scores schema ranks)."""
    ranking = first_stage_ranking(collection)
    return {
        qid: sorted(docs, key=lambda d: (-scores[(qid, d)], d)) for qid, docs in ranking.items()
    }


DEMO_SEED = 20250301  # training uses other seeds, so the demo set is held out
DEMO_QUERIES = 100
DEMO_CANDIDATES = 30


def demo_collection() -> IRCollection:
    """The collection behind ``jobs/data/demo-pairs.parquet`` and ``jobs/data/demo.qrels``."""
    return make_ir_collection(DEMO_SEED, DEMO_QUERIES, DEMO_CANDIDATES)


def write_qrels(path: Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """TREC qrels lines ``qid 0 docid rel``, in collection order."""
    lines = [f"{qid} 0 {doc} {rel}\n" for qid, docs in qrels.items() for doc, rel in docs.items()]
    path.write_text("".join(lines), encoding="utf-8")


def write_demo_data(out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``demo-pairs.parquet`` and ``demo.qrels`` into ``out_dir``; deterministic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    coll = demo_collection()
    table = pa.table(
        {
            "query_id": pa.array([c.query_id for c in coll.candidates], pa.string()),
            "query": pa.array([c.query for c in coll.candidates], pa.string()),
            "doc_id": pa.array([c.doc_id for c in coll.candidates], pa.string()),
            "passage": pa.array([c.passage for c in coll.candidates], pa.string()),
        }
    )
    pairs_path, qrels_path = out / "demo-pairs.parquet", out / "demo.qrels"
    pq.write_table(table, pairs_path, compression="zstd")
    write_qrels(qrels_path, coll.qrels)
    return pairs_path, qrels_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rank1_batch.toy.data",
        description="Write the synthetic TOY demo pairs and qrels (not real relevance data).",
    )
    parser.add_argument("out_dir", nargs="?", default="jobs/data")
    args = parser.parse_args(argv)
    for path in write_demo_data(args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
