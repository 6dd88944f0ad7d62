"""IR input formats (TREC / JSON runs with BEIR or MS MARCO text, HF datasets) and, end to end,
a BEIR folder through ``run`` -> ``eval`` -> every label export loaded by its consumer's reader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import run_reference

from rank1_batch.io.store import Store
from rank1_batch.job import convert as formats
from rank1_batch.job import inputs
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.spec import InputSpec
from rank1_batch.toy.data import make_ir_collection

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}


def test_trec_runs_six_and_three_columns_in_run_order():
    six = "q2 Q0 b 1 3.0 bm25\nq2 Q0 a 2 5.0 bm25\nq1 Q0 c 1 1.0 bm25\nq2 Q0 d 3 3.0 bm25\n"
    rows = run_reference.parse_trec_run(six)
    assert rows == [("q2", "a", 5.0), ("q2", "b", 3.0), ("q2", "d", 3.0), ("q1", "c", 1.0)]
    three = "q2\tb\t3.0\nq2\ta\t5.0\nq1\tc\t1.0\n"
    assert run_reference.parse_trec_run(three) == [r for r in rows if r[1] != "d"]
    assert run_reference.cut_top_k(rows, 1) == [("q2", "a"), ("q1", "c")]
    with pytest.raises(formats.FormatError, match="line 1"):
        run_reference.parse_trec_run("q1 Q0 c 1\n")
    with pytest.raises(formats.FormatError, match="not a number"):
        run_reference.parse_json_run({"q1": {"a": "high"}})


def test_pyserini_runs_in_its_trec_and_msmarco_output_formats(tmp_path):
    (tmp_path / "collection.tsv").write_text("".join(f"p{i}\tpassage {i}\n" for i in range(4)))
    (tmp_path / "queries.tsv").write_text("1\tfirst\n2\tsecond\n")

    def pairs(text: str, fmt: str, top_k: int | None = None) -> list[tuple[str, str]]:
        (tmp_path / "run").write_text(text)
        spec = InputSpec(path=str(tmp_path / "run"), format=fmt, top_k=top_k,
                         queries=str(tmp_path / "queries.tsv"),
                         corpus=str(tmp_path / "collection.tsv"))  # fmt: skip
        table = run_reference.run_pairs(spec)
        return list(
            zip(*(table.column(c).to_pylist() for c in ("query_id", "doc_id")), strict=True)
        )

    # pyserini's default (--output-format trec): qid Q0 docid rank score Anserini
    trec = "1 Q0 p2 1 9.5 Anserini\n1 Q0 p1 2 7.25 Anserini\n2 Q0 p1 1 3.0 Anserini\n"
    assert pairs(trec, "trec") == [("1", "p2"), ("1", "p1"), ("2", "p1")]
    # --output-format msmarco: qid<TAB>docid<TAB>rank; rank 1 first (read as a 3-column
    # trec run, the rank would be taken for a score and the order turned upside down)
    msmarco = "1\tp2\t1\n1\tp1\t2\n1\tp3\t3\n2\tp1\t1\n"
    assert pairs(msmarco, "msmarco-run") == [("1", "p2"), ("1", "p1"), ("1", "p3"), ("2", "p1")]
    assert pairs(msmarco, "msmarco-run", top_k=2) == [("1", "p2"), ("1", "p1"), ("2", "p1")]
    assert pairs(msmarco, "trec")[:3] == [("1", "p3"), ("1", "p1"), ("1", "p2")]  # the trap
    with pytest.raises(formats.FormatError, match="line 1: expected qid<TAB>docid<TAB>rank"):
        pairs(trec, "msmarco-run")


def test_msmarco_tsvs_and_missing_text_become_rejected_reasons(tmp_path):
    (tmp_path / "collection.tsv").write_text("p1\tfirst passage\np2\tsecond passage\np9\tunused\n")
    (tmp_path / "queries.dev.tsv").write_text("1\twhat is first\n")
    (tmp_path / "run.txt").write_text("1 p1 9.0\n1 p2 8.0\n1 p3 7.0\n2 p1 1.0\n")
    spec = InputSpec(
        path=str(tmp_path / "run.txt"),
        format="trec",
        queries=str(tmp_path / "queries.dev.tsv"),
        corpus=str(tmp_path / "collection.tsv"),
    )
    table = run_reference.run_pairs(spec)
    assert table.column("doc_id").to_pylist() == ["p1", "p2", "p3", "p1"]
    assert table.column(inputs.PRESET_REASON).to_pylist() == [
        None,
        None,
        "missing_doc",
        "missing_query",
    ]
    # the preset reason survives read_unit and outranks its own checks (empty passage)
    path = tmp_path / "conv.parquet"
    pq.write_table(table, path)
    pairs_spec = InputSpec(path=str(path), columns={"title": "title"})
    files = inputs.scan_inputs(pairs_spec)
    rows = inputs.read_unit(inputs.units(files)[0], pairs_spec)
    assert rows.column("reason").to_pylist() == [None, None, "missing_doc", "missing_query"]
    listing = formats.source_listing(spec)
    assert [Path(e["path"]).name for e in listing] == [
        "run.txt",
        "queries.dev.tsv",
        "collection.tsv",
    ]
    assert all(e["size"] > 0 for e in listing)


def test_json_run_with_beir_jsonl_text_and_top_k(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "a", "title": "T", "text": "alpha"}\n{"_id": "b", "title": "", "text": "beta"}\n'
    )
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "which"}\n')
    (tmp_path / "run.json").write_text(json.dumps({"q1": {"b": 1.0, "a": 2.0, "c": 0.5}}))
    spec = InputSpec(path=str(tmp_path / "run.json"), format="json-run", corpus=str(tmp_path))
    table = run_reference.run_pairs(spec)
    assert table.column("doc_id").to_pylist() == ["a", "b", "c"]
    assert table.column("title").to_pylist() == ["T", None, None]
    assert table.column(inputs.PRESET_REASON).to_pylist() == [None, None, "missing_doc"]
    top2 = run_reference.run_pairs(spec.model_copy(update={"top_k": 2}))
    assert top2.column("doc_id").to_pylist() == ["a", "b"]


def test_hf_inputs_from_disk_and_parquet_with_column_mapping(tmp_path):
    import datasets

    data = {"qid": [1, 2], "q": ["cats", "dogs"], "pid": ["a", "b"], "text": ["x", "y"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "ds"))
    pq.write_table(pa.table(data), tmp_path / "d.parquet")
    cols = {"query_id": "qid", "query": "q", "doc_id": "pid", "passage": "text"}
    for path in (tmp_path / "ds", tmp_path / "d.parquet"):
        table = formats.hf_pairs(InputSpec(path=str(path), format="hf", columns=cols))
        assert table.column("query_id").to_pylist() == ["1", "2"]
        assert table.column("passage").to_pylist() == ["x", "y"]
    with pytest.raises(formats.FormatError, match="missing column 'query_id'"):
        formats.hf_pairs(InputSpec(path=str(tmp_path / "ds"), format="hf"))


def test_converted_formats_fingerprint_depth_but_pairs_keep_theirs():
    base = {"output": {"path": "o"}, "model": {"name": "toy"}}
    trec = {"path": "r", "format": "trec", "corpus": "c", "top_k": 10}
    a = spec_from_mapping({**base, "input": trec})
    b = spec_from_mapping({**base, "input": {**trec, "top_k": 20}})
    assert a.result_settings() != b.result_settings()
    pairs = spec_from_mapping({**base, "input": {"path": "p"}})
    assert "top_k" not in pairs.result_settings()["input"]


# -- end to end: BEIR folder -> run -> eval -> exports ----------------------------------------


def write_beir(folder: Path) -> Path:
    """A BEIR folder (4 queries, 12 docs), qrels, and a shuffled first-stage TREC run naming
    one doc that is not in the corpus and one query that is not in queries.jsonl."""
    coll = make_ir_collection(seed=7, n_queries=4, n_candidates=3)
    folder.mkdir()
    with open(folder / "corpus.jsonl", "w") as fh:
        for c in coll.candidates:
            fh.write(json.dumps({"_id": c.doc_id, "title": "", "text": c.passage}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for qid, text in coll.queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{r}" for q, docs in coll.qrels.items() for d, r in docs.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    run = []
    for q, docs in coll.qrels.items():
        # first stage: non-relevant first (a bad retriever), so reranking has room to help
        ordered = sorted(docs, key=lambda d: (docs[d], d))
        run += [f"{q} Q0 {d} {i + 1} {10 - i} bm25" for i, d in enumerate(ordered)]
    run += ["q0001 Q0 d999999 9 0.5 bm25", "q9999 Q0 d000001 1 1.0 bm25"]
    (folder / "run.trec").write_text("\n".join(run) + "\n")
    return folder


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "rank1_batch.cli", "-q", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.ray
def test_beir_folder_run_eval_and_label_exports(tmp_path):
    import datasets
    import ir_measures

    beir = write_beir(tmp_path / "beir")
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "input": {"path": str(beir / "run.trec"), "format": "trec", "corpus": str(beir)},
                "output": {"path": str(tmp_path / "out"), "shard_size": 500},
                "model": {"name": "toy", "engine": "transformers", "max_model_len": 2048},
                "reasoning": {"max_tokens": 64, "min_reserve": 64},
                "compute": {"batch_size": 32},
            }
        )
    )
    out = tmp_path / "out"
    done = json.loads(cli("run", str(job), "--json").stdout)
    assert done["scored"] == 12 and done["rejected"] == 2
    manifest = json.loads((out / "pairs" / "_manifest.json").read_text())
    rejected = pa.concat_tables(pq.read_table(out / f) for f in manifest["rejected_files"])
    assert sorted(rejected.column("reason").to_pylist()) == ["missing_doc", "missing_query"]
    listing = json.loads((out / "job.json").read_text())["settings"]["input"]
    assert [Path(e["path"]).name for e in listing] == ["run.trec", "queries.jsonl", "corpus.jsonl"]
    assert cli("run", str(job)).returncode == 0  # resume of a finished converted job

    report = cli("eval", str(out), "--qrels", str(beir / "qrels" / "test.tsv"), "--per-query")
    ndcg = next(line for line in report.stdout.splitlines() if line.startswith("nDCG@10"))
    first, reranked = float(ndcg.split()[1]), float(ndcg.split()[2])
    assert reranked > first
    metrics = json.loads((out / "exports" / "metrics.json").read_text())
    assert metrics["runs"]["reranked"]["aggregate"]["nDCG@10"] == pytest.approx(reranked, abs=1e-4)

    cache = str(tmp_path / "hf-cache")
    cli("export", str(out), "--format", "trec")
    run = list(ir_measures.read_trec_run(str(out / "exports" / "run.trec")))
    assert len(run) == 12
    common = ["--pos-threshold", "0.5", "--neg-threshold", "0.5", "--max-neg", "1"]
    cli("export", str(out), "--format", "flagembedding", *common)
    fe = datasets.load_dataset(
        "json", data_files=str(out / "exports" / "flagembedding.jsonl"), cache_dir=cache
    )["train"]
    assert set(fe.column_names) == {"query", "pos", "neg", "pos_scores", "neg_scores"}
    cli("export", str(out), "--format", "tevatron", *common)
    tev = datasets.load_dataset(
        "json", data_files=str(out / "exports" / "tevatron.jsonl"), cache_dir=cache
    )["train"]
    assert "positive_passages" in tev.column_names
    cli("export", str(out), "--format", "sentence-transformers", "--st-save", "disk", *common)
    st = datasets.load_from_disk(str(out / "exports" / "st-triplet"))
    assert st.column_names == ["query", "positive", "negative"] and st.num_rows >= 1
    cli("export", str(out), "--format", "pylate", *common)
    train = datasets.load_dataset(str(out / "exports" / "pylate"), "train", cache_dir=cache)
    assert train["train"].num_rows >= 1
    side = json.loads((out / "exports" / "flagembedding.jsonl.labels.json").read_text())
    assert side["model"] == "toy" and side["prompt_id"].startswith("rank1-")
    assert Store(str(out)).exists(formats.CONVERTED_MARKER)  # converted parts, then marker


def _run_files(tmp_path, lines):
    (tmp_path / "collection.tsv").write_text("".join(f"p{i}\tpassage {i}\n" for i in range(40)))
    (tmp_path / "queries.tsv").write_text("".join(f"{q}\tquery {q}\n" for q in range(12)))
    (tmp_path / "run.txt").write_text("".join(lines))
    return InputSpec(
        path=str(tmp_path / "run.txt"),
        format="trec",
        queries=str(tmp_path / "queries.tsv"),
        corpus=str(tmp_path / "collection.tsv"),
        top_k=3,
    )


def _reference(spec):
    """The whole-run rules: parse everything, order per query, cut top_k."""
    rows = run_reference.cut_top_k(
        run_reference.parse_trec_run(Path(spec.path).read_text(), spec.path), spec.top_k
    )
    return rows


def _by_query(pairs):
    """(query_id, doc_id) pairs as {query: its docs in order}: parts may put queries in any
    order (a hash of the query id picks the part), a query's own order is the run's."""
    out: dict[str, list[str]] = {}
    for q, d in pairs:
        out.setdefault(q, []).append(d)
    return out


def _whole_queries(chunks):
    """Each query's rows in one part, contiguous there."""
    seen: set[str] = set()
    for chunk in chunks:
        ids = chunk.column("query_id").to_pylist()
        runs = [q for i, q in enumerate(ids) if i == 0 or ids[i - 1] != q]
        assert len(runs) == len(set(runs)) and not seen & set(runs)
        seen |= set(runs)


def test_grouped_trec_run_streams_into_parts_equal_to_the_whole_run_rules(tmp_path):
    lines = [f"{q} Q0 p{(q * 7 + r) % 40} {r} {float((r * 5) % 4)} bm25\n" for q in range(12)
             for r in range(6)]  # fmt: skip
    spec = _run_files(tmp_path, lines)
    chunks = list(formats.iter_run_pairs(spec, part_rows=7))
    assert len(chunks) > 3  # several parts, each whole queries
    _whole_queries(chunks)
    whole = pa.concat_tables(chunks)
    got = list(
        zip(whole.column("query_id").to_pylist(), whole.column("doc_id").to_pylist(), strict=True)
    )
    assert _by_query(got) == _by_query(_reference(spec)) and len(got) == len(_reference(spec))
    # convert writes the parts, then the marker; prepare reads the folder
    store = Store(str(tmp_path / "out"))
    job = spec_from_mapping(
        {
            "input": spec.model_dump(),
            "output": {"path": str(tmp_path / "out")},
            "model": {"name": "toy"},
        }
    )
    pairs_spec = formats.convert(job, store, part_rows=10)
    parts = sorted(p.name for p in (tmp_path / "out" / "input").glob("part-*.parquet"))
    marker = store.read_json(formats.CONVERTED_MARKER)
    assert len(parts) == marker["parts"] > 1 and marker["rows"] == len(got)
    files = inputs.scan_inputs(pairs_spec)
    assert [Path(f.path).name for f in files] == parts
    assert sum(f.rows for f in files) == len(got)


def test_ungrouped_trec_run_falls_back_to_the_whole_run(tmp_path):
    lines = [f"{q} Q0 p{q + r} {r} {10 - r} bm25\n" for r in range(4) for q in range(5)]
    spec = _run_files(tmp_path, lines)
    table = run_reference.run_pairs(spec)
    got = list(
        zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), strict=True)
    )
    assert got == _reference(spec) and len(got) == 15


def test_ungrouped_trec_run_partitions_by_query_into_whole_query_parts(tmp_path):
    # queries interleaved, ties in score (file order breaks them), one query twice as long
    lines = [f"{q} Q0 p{(q * 5 + r) % 40} {r} {float(r % 3)} bm25\n" for r in range(6)
             for q in (3, 1, 4, 0, 5, 9, 2, 6)]  # fmt: skip
    lines += [f"4 Q0 p{30 + r} {r} 0.5 bm25\n" for r in range(6)]
    spec = _run_files(tmp_path, lines).model_copy(update={"top_k": None})
    chunks = list(formats.iter_run_pairs(spec, part_rows=10))
    assert len(chunks) >= 3
    _whole_queries(chunks)
    table = pa.concat_tables(chunks)
    got = list(
        zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist(), strict=True)
    )
    assert _by_query(got) == _by_query(_reference(spec)) and len(got) == len(lines)


def test_json_run_streams_member_by_member_like_the_whole_object(tmp_path, monkeypatch):
    from rank1_batch.job import run_files

    obj = {f"{q}": {f"p{(q * 3 + d) % 40}": round(1 / (d + 1), 3) for d in range(5)}
           for q in (7, 2, 11, 0)}  # fmt: skip
    obj["2"]["p39"] = 0.5  # a tie with another doc of query 2: file order breaks it
    (tmp_path / "run.json").write_text(json.dumps(obj, indent=1))
    spec = _run_files(tmp_path, []).model_copy(
        update={"path": str(tmp_path / "run.json"), "format": "json-run", "top_k": None}
    )
    monkeypatch.setattr(run_files, "READ_CHARS", 5)  # members split across read windows
    blocks = list(run_files.json_blocks(spec.path, None))
    assert [r[:3] for b in blocks for r in b] == run_reference.parse_json_run(obj)
    table = run_reference.run_pairs(spec)
    assert table.num_rows == 21
    (tmp_path / "dup.json").write_text('{"1": {"a": 1}, "1": {"b": 2}}')
    with pytest.raises(formats.FormatError, match="query '1' is given twice"):
        list(run_files.json_blocks(str(tmp_path / "dup.json"), None))
    (tmp_path / "cut.json").write_text('{"1": {"a": 1}, "2": {"b"')
    with pytest.raises(formats.FormatError, match="not valid JSON"):
        list(run_files.json_blocks(str(tmp_path / "cut.json"), None))
