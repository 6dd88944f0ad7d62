"""CSV, TSV and JSON Lines pair files are read like Parquet pairs, with
the same column checks and reason codes (they used to be refused as "not a readable Parquet
file")."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch.job import inputs
from rank1_batch.job.spec import InputSpec

ROWS = [
    {"query_id": "q1", "query": "cats", "doc_id": "d1", "passage": "a cat, sitting"},
    {"query_id": "q1", "query": "cats", "doc_id": "d2", "passage": ""},
    {"query_id": "q2", "query": "dogs", "doc_id": "d1", "passage": 'a "dog"\nwith two lines'},
    {"query_id": "", "query": "dogs", "doc_id": "d3", "passage": "dog food"},
    {"query_id": "7", "query": "birds", "doc_id": "8", "passage": "a bird"},
]


def _csv(rows: list[dict], sep: str = ",") -> str:
    def cell(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if v and (sep in v or '"' in v or "\n" in v) else v

    head = sep.join(rows[0])
    return head + "\n" + "".join(sep.join(cell(v) for v in r.values()) + "\n" for r in rows)


def _normalised(path: str, **spec: str) -> pa.Table:
    s = InputSpec(path=path, **spec)
    files = inputs.scan_inputs(s)
    table = pa.concat_tables(inputs.read_unit(u, s) for u in inputs.units(files))
    return table.drop_columns(["input_order"])


@pytest.fixture()
def parquet_reference(tmp_path) -> pa.Table:
    # Parquet with nulls where the text files have empty fields (an empty CSV field is null)
    table = pa.Table.from_pylist([{k: (v or None) for k, v in r.items()} for r in ROWS])
    pq.write_table(table, tmp_path / "ref.parquet")
    return _normalised(str(tmp_path / "ref.parquet"))


def test_csv_tsv_and_jsonl_read_like_parquet(tmp_path, parquet_reference):
    (tmp_path / "p.csv").write_text(_csv(ROWS))
    (tmp_path / "p.tsv").write_text(_csv(ROWS, "\t"))
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({k: (v or None) for k, v in r.items()}) + "\n" for r in ROWS)
    )
    with gzip.open(tmp_path / "p.csv.gz", "wt") as fh:
        fh.write(_csv(ROWS))
    for name in ("p.csv", "p.tsv", "p.jsonl", "p.csv.gz"):
        got = _normalised(str(tmp_path / name))
        assert got.to_pylist() == parquet_reference.to_pylist(), name
    reasons = parquet_reference.column("reason").to_pylist()
    assert reasons == [None, "empty_passage", None, "null_query_id", None]
    # ids that look like numbers stay strings ("7", "8"), as the text had them
    assert parquet_reference.column("doc_id").to_pylist()[-1] == "8"


def test_file_type_named_in_the_job_and_folders_of_text_files(tmp_path, parquet_reference):
    (tmp_path / "pairs.txt").write_text(_csv(ROWS))
    got = _normalised(str(tmp_path / "pairs.txt"), file_type="csv")
    assert got.to_pylist() == parquet_reference.to_pylist()
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.csv").write_text(_csv(ROWS[:2]))
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[2:3]))
    (folder / "notes.md").write_text("not input")
    files = inputs.scan_inputs(InputSpec(path=str(folder)))
    assert [f.path.rsplit("/", 1)[1] for f in files] == ["a.csv", "b.jsonl"]
    assert [f.rows for f in files] == [2, 1]


def test_text_files_get_the_same_column_checks(tmp_path):
    (tmp_path / "bad.csv").write_text("qid,query,doc_id,passage\nq1,x,d1,p\n")
    with pytest.raises(inputs.InputError, match=r"bad.csv: missing column 'query_id'"):
        inputs.scan_inputs(InputSpec(path=str(tmp_path / "bad.csv")))
    (tmp_path / "bad.jsonl").write_text('{"query_id": "q1", "query": "x"}\n{"query_id": 2}\n')
    with pytest.raises(inputs.InputError, match=r"bad.jsonl: not a readable JSONL file"):
        inputs.scan_inputs(InputSpec(path=str(tmp_path / "bad.jsonl")))
    (tmp_path / "list.jsonl").write_text(
        '{"query_id": "q1", "query": "x", "doc_id": "d", "passage": ["a", "b"]}\n'
    )
    with pytest.raises(inputs.InputError, match=r"column 'passage' has type list"):
        inputs.scan_inputs(InputSpec(path=str(tmp_path / "list.jsonl")))
