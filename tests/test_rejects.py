"""Rejected and duplicate rows say where they came from, and ``rank1-batch rejects`` shows them.

Prepare runs in this process (no Ray: the grouped plan's units one after another); the
shuffle plan's shard body (``prepare._write_shard``) is called directly. The command is driven
through its own parser (``cli.rejects.add_parser``), as ``rank1-batch rejects`` runs it.
"""

from __future__ import annotations

import argparse
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch.cli import rejects as cli_rejects
from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.job import inputs
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.prepare import _write_shard, prepare
from rank1_batch.job.record import claim_output, job_record
from rank1_batch.outputs.rejects import read_rejects

# Line numbers as an editor shows them: 1 is the header; q1/d1's passage spans lines 3-4;
# line 6 is blank; line 7 repeats (q1, d1) with another passage, line 10 repeats (q2, d5).
CSV = (
    "query_id,query,doc_id,passage\n"  # 1
    "q1,cats,d0,a cat\n"  # 2
    'q1,cats,d1,"a cat\n'  # 3
    'on two lines"\n'  # 4
    "q1,cats,d2,\n"  # 5: empty passage
    "\n"  # 6: blank, skipped
    "q1,cats,d1,another cat\n"  # 7: duplicate of line 3, passage differs
    "q2,dogs,,a dog\n"  # 8: null doc id
    "q2,dogs,d5,dog food\n"  # 9
    "q2,dogs,d5,dog food\n"  # 10: duplicate of line 9, same passage
)


def prepared(tmp_path, inp, **input_over):
    """Prepare ``inp`` (grouped by query: the in-process plan) into ``tmp_path/out``."""
    spec = spec_from_mapping(
        {"input": {"path": str(inp), "grouped": True, **input_over},
         "output": {"path": str(tmp_path / "out"), "shard_size": 4},
         "model": {"name": "toy", "device": "cpu"}}
    )  # fmt: skip
    store = Store(spec.output.path)
    files = inputs.scan_inputs(spec.input)
    claim_output(store, job_record(spec, inputs.listing(files)))
    return store, prepare(spec, store, files)


def rejects_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rank1-batch")
    cli_rejects.add_parser(parser.add_subparsers(dest="command"))
    return cli_rejects.cmd_rejects(parser.parse_args(["rejects", *argv]))


def test_rejected_and_duplicate_rows_name_their_csv_file_and_line(tmp_path, capsys):
    (tmp_path / "in.csv").write_text(CSV)
    store, manifest = prepared(tmp_path, tmp_path / "in.csv")
    assert (manifest["rejected"], manifest["duplicates"], manifest["pairs"]) == (2, 2, 3)
    rejected = pa.concat_tables(store.read_parquet(f) for f in manifest["rejected_files"])
    columns = (rejected.column(c).to_pylist() for c in ("reason", "source_line", "source_row"))
    got = sorted(zip(*columns, strict=True))
    assert got == [("empty_passage", 5, 2), ("null_doc_id", 8, 4)]
    assert set(rejected.column("source_file").to_pylist()) == {str(tmp_path / "in.csv")}
    dups = pa.concat_tables(store.read_parquet(f) for f in manifest["duplicate_files"])
    assert [f.split("/")[0] for f in manifest["duplicate_files"]] == ["duplicates"]
    rows = sorted(dups.to_pylist(), key=lambda r: r["source_line"])
    assert [(r["doc_id"], r["source_line"], r["kept_source_line"], r["passage_differs"])
            for r in rows] == [("d1", 7, 3, True), ("d5", 10, 9, False)]  # fmt: skip

    assert rejects_cli(str(store.uri)) == 0
    out = capsys.readouterr().out
    assert "2 rows rejected, 2 duplicates dropped (of 7 input rows)" in out
    assert f"{tmp_path / 'in.csv'} line 5: query 'q1' doc 'd2'" in out
    assert f"{tmp_path / 'in.csv'} line 8: query 'q2' doc None" in out
    assert (
        f"{tmp_path / 'in.csv'} line 7: query 'q1' doc 'd1'; duplicate of "
        f"{tmp_path / 'in.csv'} line 3 (passage differs)"
    ) in out
    assert "line 9 (same passage)" in out


def test_rejects_json_first_and_reason_options(tmp_path, capsys):
    lines = ["query_id,query,doc_id,passage"] + [f"q{i},x,d{i}," for i in range(7)]
    with gzip.open(tmp_path / "in.csv.gz", "wt") as fh:
        fh.write("\n".join([*lines, "q9,x,d9,kept", "q9,x,d9,kept"]) + "\n")
    store, _ = prepared(tmp_path, tmp_path / "in.csv.gz")
    assert rejects_cli(str(store.uri), "--json", "--first", "2") == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rejected"], report["duplicates"], report["input_rows"]) == (7, 1, 9)
    by = {b["reason"]: b for b in report["reasons"]}
    assert by["empty_passage"]["count"] == 7
    assert [r["source_line"] for r in by["empty_passage"]["rows"]] == [2, 3]  # the first 2
    assert by["duplicate"]["rows"][0]["kept_where"].endswith("in.csv.gz line 9")
    assert rejects_cli(str(store.uri), "--reason", "duplicate") == 0
    text = capsys.readouterr().out
    assert "duplicate: 1" in text and "empty_passage" not in text
    assert rejects_cli(str(store.uri), "--first", "1") == 0
    assert "... and 6 more" in capsys.readouterr().out


def test_parquet_rows_count_across_row_groups_and_candidates_name_their_position(tmp_path):
    table = pa.table(
        {"query_id": ["q1", "q1", "q2", "q2", "q3", "q3"], "query": ["c"] * 6,
         "doc_id": ["a", "b", "a", "b", "a", "a"], "passage": ["x", "y", "x", "", "x", "z"]}
    )  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    store, _ = prepared(tmp_path, tmp_path / "in.parquet")
    report = read_rejects(store)
    by = {b["reason"]: b["rows"] for b in report["reasons"]}
    assert [r["where"] for r in by["empty_passage"]] == [f"{tmp_path / 'in.parquet'} row 3"]
    assert [(r["where"], r["kept_where"]) for r in by["duplicate"]] == [
        (f"{tmp_path / 'in.parquet'} row 5", f"{tmp_path / 'in.parquet'} row 4")
    ]
    # candidate lists: the query row and the candidate's 0-based position in its list
    cands = pa.table(
        {"query_id": ["q1", "q2"], "query": ["c", "d"],
         "candidates": [[{"doc_id": "a", "passage": "x"}, {"doc_id": "b", "passage": " "}],
                        [{"doc_id": "a", "passage": "x"}, {"doc_id": "a", "passage": "x"}]]}
    )  # fmt: skip
    pq.write_table(cands, tmp_path / "c.parquet")
    store, _ = prepared(tmp_path / "c", tmp_path / "c.parquet", format="candidates")
    by = {b["reason"]: b["rows"] for b in read_rejects(store)["reasons"]}
    assert [r["where"] for r in by["empty_passage"]] == [
        f"{tmp_path / 'c.parquet'} row 0, candidate 1"
    ]
    dup = by["duplicate"][0]
    assert (dup["where"], dup["kept_where"], dup["passage_differs"]) == (
        f"{tmp_path / 'c.parquet'} row 1, candidate 1",
        f"{tmp_path / 'c.parquet'} row 1, candidate 0",
        False,
    )


def test_the_shuffle_plans_shard_body_writes_duplicates_too(tmp_path):
    (tmp_path / "in.jsonl").write_text(
        "".join(
            json.dumps({"query_id": q, "query": "x", "doc_id": d, "passage": p}) + "\n" + extra
            for q, d, p, extra in [("q1", "a", "one", "\n"), ("q2", "b", "two", ""),
                                   ("q1", "a", "uno", ""), ("q2", "c", None, "")]
        )
    )  # fmt: skip
    spec = inputs.InputSpec(path=str(tmp_path / "in.jsonl"))
    files = inputs.scan_inputs(spec)
    rows = pa.concat_tables(inputs.read_unit(u, spec) for u in inputs.units(files))
    rows = rows.append_column("shard", pa.array([0] * rows.num_rows, pa.int32()))
    store = Store(str(tmp_path / "out"))
    stats = _write_shard(rows, store, 1, (files[0].path,), spec).to_pylist()[0]
    assert (stats["rows"], stats["rejected"], stats["duplicates"]) == (2, 1, 1)
    dups = store.read_parquet(layout.duplicates_path(stats["id"])).to_pylist()
    # JSON Lines: a record's line, blank lines counted as an editor counts them
    assert [(d["source_line"], d["kept_source_line"], d["passage_differs"]) for d in dups] == [
        (4, 1, True)
    ]
    rejected = store.read_parquet(layout.rejected_path(stats["id"])).to_pylist()
    assert [(r["reason"], r["source_line"]) for r in rejected] == [("empty_passage", 5)]


def test_bytes_that_are_not_utf8_name_the_file_column_and_line(tmp_path):
    good = "".join(f"q{i},cats,d{i},a cat\n" for i in range(3000))
    data = ("query_id,query,doc_id,passage\n" + good).encode() + b"q9,cats,d9,caf\xe9\n"
    (tmp_path / "in.csv").write_bytes(data)
    with pytest.raises(inputs.InputError) as err:
        inputs.scan_inputs(inputs.InputSpec(path=str(tmp_path / "in.csv")))
    message = str(err.value)
    assert message.startswith(f"input file {tmp_path / 'in.csv'}: line 3002, column 'passage'")
    assert "0xe9" in message and "\n" not in message


def test_a_header_only_csv_says_so(tmp_path):
    (tmp_path / "in.csv").write_text("query_id,query,doc_id,passage\n")
    with pytest.raises(inputs.InputError) as err:
        inputs.scan_inputs(inputs.InputSpec(path=str(tmp_path / "in.csv")))
    assert str(err.value) == (
        f"input file {tmp_path / 'in.csv'} has a header and no rows; nothing to rerank"
    )
    assert "Parquet" not in str(err.value)
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.csv").write_text("query_id,query,doc_id,passage\n")
    (folder / "b.csv").write_text("query_id,query,doc_id,passage\n")
    names = ("query_id", "query", "doc_id", "passage")
    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in names}), folder / "c.parquet")
    with pytest.raises(inputs.InputError, match=r"0 rows in 2 CSV files and 1 Parquet file;"):
        inputs.scan_inputs(inputs.InputSpec(path=str(folder)))


def test_rows_of_a_converted_trec_run_name_the_run_file_and_line(tmp_path):
    from rank1_batch.run import claim_converted, convert_input

    (tmp_path / "collection.tsv").write_text("p1\tfirst passage\np2\tsecond passage\n")
    (tmp_path / "queries.tsv").write_text("1\twhat is first\n")
    (tmp_path / "run.txt").write_text("# a comment\n1 p1 9.0\n1 p2 8.0\n1 p3 7.0\n2 p1 1.0\n")
    spec = spec_from_mapping(
        {"input": {"path": str(tmp_path / "run.txt"), "format": "trec",
                   "queries": str(tmp_path / "queries.tsv"),
                   "corpus": str(tmp_path / "collection.tsv")},
         "output": {"path": str(tmp_path / "out")}, "model": {"name": "toy", "device": "cpu"}}
    )  # fmt: skip
    store = Store(spec.output.path)
    claim_converted(spec, store)
    converted, files = convert_input(spec, store)
    prepare(converted, store, files)
    by = {b["reason"]: b["rows"] for b in read_rejects(store)["reasons"]}
    run = tmp_path / "run.txt"
    assert [r["where"] for r in by["missing_doc"]] == [f"{run} line 4"]
    assert [r["where"] for r in by["missing_query"]] == [f"{run} line 5"]


def test_lines_are_found_past_values_longer_than_csvs_field_limit(tmp_path):
    long = "word " * 40_000  # 200 KB: over the csv module's 128 KiB default field limit
    (tmp_path / "in.tsv").write_text(
        f'query_id\tquery\tdoc_id\tpassage\nq1\tx\td1\t"{long}\n{long}"\nq1\tx\td2\t\n'
    )
    store, _ = prepared(tmp_path, tmp_path / "in.tsv")
    by = {b["reason"]: b["rows"] for b in read_rejects(store)["reasons"]}
    assert [r["where"] for r in by["empty_passage"]] == [f"{tmp_path / 'in.tsv'} line 4"]
