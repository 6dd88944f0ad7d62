"""The run ⋈ queries ⋈ corpus join (:mod:`rank1_batch.job.convert_join`) against the
line-by-line rules of the conversion it replaced (dicts of the text, the run sorted per query):
same rows, same reasons, same order inside a query; parts hold whole queries and are a pure
function of the input files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch.io.store import Store
from rank1_batch.job import convert, convert_join
from rank1_batch.job.inputs import PRESET_LINE, PRESET_REASON
from rank1_batch.job.run_files import FormatError, json_blocks, trec_check
from rank1_batch.job.spec import InputSpec

FIELDS = ("query_id", "query", "doc_id", "passage", "title", PRESET_REASON, PRESET_LINE)


def reference(spec: InputSpec) -> list[tuple]:
    """Today's conversion, line by line: dicts of the text (the last line of an id wins), the
    run in first-appearance order, score descending, ties in file order, cut at top_k."""
    queries_uri, corpus_uri = convert.text_sources(spec)
    queries: dict[str, str] = {}
    corpus: dict[str, tuple[str | None, str]] = {}
    for uri, out in ((queries_uri, queries), (corpus_uri, corpus)):
        for line in Path(uri).read_text().splitlines():
            if not line.strip():
                continue
            if uri.endswith(".jsonl"):
                obj = json.loads(line)
                value = obj["text"] if out is queries else (obj.get("title") or None, obj["text"])
                out[str(obj["_id"])] = value  # type: ignore[assignment]
            else:
                parts = line.split("\t")
                if out is queries:
                    out[parts[0]] = parts[-1]  # type: ignore[assignment]
                else:
                    title = parts[1] or None if len(parts) == 3 else None
                    out[parts[0]] = (title, parts[-1])  # type: ignore[assignment]
    if spec.format == "json-run":
        rows = [r for block in json_blocks(spec.path, None) for r in block]
    else:
        rows = []
        for n, line in enumerate(Path(spec.path).read_text().splitlines(), 1):
            if line.split() and not line.startswith("#"):
                rows.append((*trec_check(line, n, spec.path, spec.format == "msmarco-run"), n))
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(r[0], i)
    rows.sort(key=lambda r: (first[r[0]], -r[2]))  # stable: ties in file order
    out, seen = [], dict.fromkeys(first, 0)
    for q, d, _, line in rows:
        seen[q] += 1
        if spec.top_k is not None and seen[q] > spec.top_k:
            continue
        query, (title, passage) = queries.get(q), corpus.get(d, (None, None))
        reason = "missing_query" if query is None else "missing_doc" if passage is None else None
        out.append((q, query, d, passage, title, reason, line))
    return out


def converted(spec: InputSpec, tmp: Path, part_rows: int = 500_000) -> list[pa.Table]:
    store = Store(str(tmp))
    convert_join.join_run(spec, store, None, part_rows, *convert.text_sources(spec))
    return [pq.read_table(p) for p in sorted((tmp / "input").glob("part-*.parquet"))]


def rows_of(parts: list[pa.Table]) -> list[tuple]:
    return [tuple(r[f] for f in FIELDS) for t in parts for r in t.to_pylist()]


def check_equal(spec: InputSpec, tmp: Path, part_rows: int = 500_000) -> list[pa.Table]:
    parts = converted(spec, tmp, part_rows)
    got, want = rows_of(parts), reference(spec)
    assert sorted(got, key=repr) == sorted(want, key=repr)  # the same rows, as a set
    for q in {r[0] for r in want}:  # inside a query: the same order (top-k order)
        assert [r for r in got if r[0] == q] == [r for r in want if r[0] == q]
    owners = [{r["query_id"] for r in t.to_pylist()} for t in parts]
    assert sum(len(o) for o in owners) == len(set().union(*owners))  # each query in one part
    for t in parts:  # ... and contiguous in it
        ids = t.column("query_id").to_pylist()
        assert len({q for i, q in enumerate(ids) if i == 0 or ids[i - 1] != q}) == len(set(ids))
    return parts


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    docs = [{"_id": f"d{i}", "title": "" if i % 3 else f"T{i}", "text": f"doc {i}"}
            for i in range(30)]  # fmt: skip
    docs.append({"_id": "d4", "title": "again", "text": "doc 4, second line wins"})
    write(folder / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in docs) + "\n")
    qs = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(8)]
    write(folder / "queries.jsonl", "".join(json.dumps(q) + "\n" for q in qs))
    return folder


def ungrouped_run(six: bool) -> str:
    lines = []
    for r in range(7):
        for q in (3, 1, 9, 0, 5, 2):  # q9: not in the queries
            d = f"d{(q * 5 + r) % 33}"  # d30..d32: not in the corpus
            score = float(r % 3)  # ties: file order breaks them
            lines.append(f"q{q} Q0 {d} {r + 1} {score} bm25" if six else f"q{q}\t{d}\t{score}")
    return "\n".join(lines[:20]) + "\n\n# a comment\n" + "\n".join(lines[20:]) + "\n"


@pytest.mark.parametrize("six", [True, False])
@pytest.mark.parametrize("top_k", [None, 2])
def test_trec_runs_with_a_beir_folder_equal_the_line_by_line_rules(tmp_path, beir, six, top_k):
    run = write(tmp_path / "run.trec", ungrouped_run(six))
    spec = InputSpec(path=run, format="trec", corpus=str(beir), top_k=top_k)
    parts = check_equal(spec, tmp_path / "out")
    reasons = {r[5] for r in rows_of(parts)}
    assert reasons == {None, "missing_doc", "missing_query"}
    grouped = "".join(sorted(ungrouped_run(six).splitlines(True)))  # grouped by query
    spec = spec.model_copy(update={"path": write(tmp_path / "grouped.trec", grouped)})
    check_equal(spec, tmp_path / "grouped")


@pytest.mark.parametrize("columns", [2, 3])
def test_msmarco_tsvs_and_msmarco_run_equal_the_line_by_line_rules(tmp_path, columns):
    coll = "".join(
        f"{i}\tTitle {i}\tpassage {i}\n" if columns == 3 and i % 2 else f"{i}\tpassage {i}\n"
        for i in range(25)
    )
    if columns == 3:
        coll = coll.replace("0\tpassage 0", "0\t\tpassage 0")  # an empty title: None
    corpus = write(tmp_path / "collection.tsv", coll + "7\tpassage 7 again\n")
    queries = write(tmp_path / "queries.dev.tsv", "".join(f"{q}\tq {q}\n" for q in range(1, 5)))
    run = "".join(f"{q}\t{(q * 3 + r) % 28}\t{r + 1}\n" for q in (2, 4, 1, 6) for r in range(6))
    spec = InputSpec(path=write(tmp_path / "run.tsv", run), format="msmarco-run",
                     queries=queries, corpus=corpus, top_k=4)  # fmt: skip
    check_equal(spec, tmp_path / "out")
    check_equal(spec.model_copy(update={"format": "trec", "top_k": None}), tmp_path / "trec")


def test_json_run_goes_through_the_same_join(tmp_path, beir):
    obj = {f"q{q}": {f"d{(q * 3 + d) % 33}": round(1 / (d + 1), 3) for d in range(5)}
           for q in (7, 2, 9, 0)}  # fmt: skip
    obj["q2"]["d29"] = 0.5  # a tie: file order breaks it
    spec = InputSpec(path=write(tmp_path / "run.json", json.dumps(obj)), format="json-run",
                     corpus=str(beir), top_k=4)  # fmt: skip
    parts = check_equal(spec, tmp_path / "out")
    assert {r[6] for r in rows_of(parts)} == {None}  # a JSON run has no lines
    spec = spec.model_copy(
        update={"path": write(tmp_path / "dup.json", '{"1": {"a": 1}, "1": {}}')}
    )
    with pytest.raises(FormatError, match="query '1' is given twice"):
        converted(spec, tmp_path / "dup")


def test_malformed_lines_are_named_by_their_line_across_ranges(tmp_path, beir, monkeypatch):
    monkeypatch.setattr(convert_join, "RANGE_BYTES", 64)  # many ranges: offsets must add up
    good = [f"q{i % 4} Q0 d{i} {i} 1.0 bm25" for i in range(12)]
    cases = [
        ("q1 Q0 d1 1\n", "trec", r"line 13: expected 6 or 3 columns, got 4"),
        ("q1 Q0 d1 1 high bm25\n", "trec", r"line 13: could not convert string to float"),
        ("q1 Q0 d1 1 2.0 bm25\n", "msmarco-run", r"line 1: expected qid<TAB>docid<TAB>rank"),
    ]
    for bad, fmt, message in cases:
        text = "\n".join(good) + "\n" + bad + "q1 Q0 d1 1 x\n"  # the first bad line is named
        spec = InputSpec(path=write(tmp_path / "run", text), format=fmt, corpus=str(beir))
        with pytest.raises(FormatError, match=f"run: {message}"):
            converted(spec, tmp_path / "out")
    corpus = write(tmp_path / "c.tsv", "".join(f"d{i}\tp\n" for i in range(20)) + "d20\n")
    queries = write(tmp_path / "q.tsv", "q0\tzero\n")
    spec = InputSpec(path=write(tmp_path / "r", "q0 d1 1\n"), format="trec", corpus=corpus,
                     queries=queries)  # fmt: skip
    with pytest.raises(FormatError, match=r"c.tsv: line 21: expected pid<TAB>text"):
        converted(spec, tmp_path / "c")
    bad_json = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d2", \n')
    spec = spec.model_copy(update={"corpus": bad_json})
    with pytest.raises(FormatError, match=r"corpus.jsonl: expected \{_id, title, text\}"):
        converted(spec, tmp_path / "j")


def test_parts_are_whole_queries_and_a_function_of_the_files_only(tmp_path, beir, monkeypatch):
    lines = [f"q{q} Q0 d{(q * 7 + r) % 33} {r} {float(r % 4)} bm25" for r in range(9)
             for q in range(8)]  # fmt: skip
    spec = InputSpec(path=write(tmp_path / "run", "\n".join(lines) + "\n"), format="trec",
                     corpus=str(beir), top_k=5)  # fmt: skip
    base = check_equal(spec, tmp_path / "a", part_rows=3)
    assert len(base) >= 3  # several parts
    for range_bytes, doc_bytes in ((50, 100), (333, 1 << 20)):  # other ranges, other D
        monkeypatch.setattr(convert_join, "RANGE_BYTES", range_bytes)
        monkeypatch.setattr(convert_join, "DOC_PART_BYTES", doc_bytes)
        again = converted(spec, tmp_path / f"b{range_bytes}", part_rows=3)
        assert [t.to_pylist() for t in again] == [t.to_pylist() for t in base]


def test_convert_writes_parts_then_the_marker(tmp_path, beir):
    from rank1_batch.job.load import spec_from_mapping

    run = write(
        tmp_path / "run", "".join(f"q{q} d{q + r} {r}\n" for q in range(8) for r in range(4))
    )
    job = spec_from_mapping({
        "input": {"path": run, "format": "trec", "corpus": str(beir)},
        "output": {"path": str(tmp_path / "out")}, "model": {"name": "toy"},
    })  # fmt: skip
    store = Store(str(tmp_path / "out"))
    convert.convert(job, store, part_rows=4)
    marker = store.read_json(convert.CONVERTED_MARKER)
    parts = sorted((tmp_path / "out" / "input").glob("part-*.parquet"))
    assert marker["parts"] == len(parts) > 1 and marker["rows"] == 32
    assert pq.read_schema(parts[0]).remove_metadata() == convert.CONVERTED_SCHEMA


@pytest.mark.ray
def test_on_ray_the_parts_equal_the_in_process_ones(tmp_path, beir):
    import ray

    lines = [f"q{q} Q0 d{(q * 7 + r) % 33} {r} {float(r % 4)} bm25" for r in range(9)
             for q in range(8)]  # fmt: skip
    spec = InputSpec(path=write(tmp_path / "run", "\n".join(lines) + "\n"), format="trec",
                     corpus=str(beir), top_k=5)  # fmt: skip
    local = converted(spec, tmp_path / "local", part_rows=3)
    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, include_dashboard=False)
    try:
        on_ray = converted(spec, tmp_path / "ray", part_rows=3)
    finally:
        ray.shutdown()
    assert [t.to_pylist() for t in on_ray] == [t.to_pylist() for t in local]


def test_numeric_ids_in_jsonl_are_strings_as_before(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    write(folder / "corpus.jsonl", "".join(f'{{"_id": {i}, "text": "t{i}"}}\n' for i in range(5)))
    write(folder / "queries.jsonl", '{"_id": 7, "text": "seven"}\n')
    run = write(tmp_path / "run", "7 Q0 3 1 2.0 x\n7 Q0 9 2 1.0 x\n8 Q0 1 1 1.0 x\n")
    parts = check_equal(InputSpec(path=run, format="trec", corpus=str(folder)), tmp_path / "o")
    assert [r[5] for r in rows_of(parts)] == [None, "missing_doc", "missing_query"]
