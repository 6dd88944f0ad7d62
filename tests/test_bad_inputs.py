"""Bad input, nothing written: the cases of the bad-input matrix that the other input tests
do not reach. Each is refused by ``run`` before Ray starts or a model loads, naming the file
(and the column), and leaves the output location untouched. (Row-level cases - nulls, blank
text, duplicates, over-long passages, empty candidate lists - become ``rejected/`` rows or
flagged scores: see test_inputs_prepare.py and test_pipeline.py's messy-input test.)"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch import run as runner
from rank1_batch.job.inputs import InputError
from rank1_batch.job.load import spec_from_mapping


def good(n: int = 4) -> pa.Table:
    return pa.table(
        {
            "query_id": [f"q{i}" for i in range(n)],
            "query": ["cats"] * n,
            "doc_id": [f"d{i}" for i in range(n)],
            "passage": ["a cat"] * n,
        }
    )


def refused(tmp_path, input_path, match: str) -> None:
    import ray

    spec = spec_from_mapping(
        {"input": {"path": str(input_path)}, "output": {"path": str(tmp_path / "out")},
         "model": {"name": "toy"}}
    )  # fmt: skip
    with pytest.raises(InputError, match=match):
        runner.run(spec)
    assert not (tmp_path / "out").exists(), "a refused job wrote to its output"
    assert not ray.is_initialized()


def test_truncated_parquet_file_is_refused_naming_it(tmp_path):
    pq.write_table(good(), tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    cut = tmp_path / "in" / "cut.parquet"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    refused(tmp_path, cut, r"cut\.parquet: not a readable Parquet file")


def test_one_bad_file_in_a_folder_refuses_the_job_naming_that_file(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(good(), folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"PAR1 not really parquet")
    refused(tmp_path, folder, r"b\.parquet: not a readable Parquet file")


def test_a_later_file_missing_a_column_is_named(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(good(), folder / "a.parquet")
    pq.write_table(good().drop_columns(["passage"]), folder / "b.parquet")
    refused(tmp_path, folder, r"b\.parquet: missing column 'passage'")


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("passage", [1, 2, 3, 4], "expected string"),
        ("query", [1.5, 2.5, 3.5, 4.5], "expected string"),
        ("doc_id", [1.5, 2.5, 3.5, 4.5], "expected string or integer"),
        ("query_id", [True, False, True, False], "expected string or integer"),
    ],
)
def test_wrong_column_types_are_refused_naming_file_and_column(tmp_path, column, values, expected):
    table = good().set_column(good().schema.get_field_index(column), column, pa.array(values))
    pq.write_table(table, tmp_path / "in.parquet")
    refused(tmp_path, tmp_path / "in.parquet", rf"in\.parquet: column '{column}' .*{expected}")


def test_empty_input_file_is_refused(tmp_path):
    pq.write_table(good(0), tmp_path / "in.parquet")
    refused(tmp_path, tmp_path / "in.parquet", r"0 rows in 1 Parquet file; nothing to rerank")


def test_a_header_only_csv_is_refused_as_such_not_as_parquet(tmp_path):
    (tmp_path / "in.csv").write_text("query_id,query,doc_id,passage\n")
    refused(tmp_path, tmp_path / "in.csv", r"^input file \S+in\.csv has a header and no rows; ")


def test_bytes_that_are_not_utf8_are_refused_naming_the_column_and_line(tmp_path):
    (tmp_path / "in.csv").write_bytes(b"query_id,query,doc_id,passage\nq1,caf\xe9,d1,a cat\n")
    refused(tmp_path, tmp_path / "in.csv", r"in\.csv: line 2, column 'query': byte 0xe9")


def test_jsonl_bytes_that_are_not_utf8_are_refused_naming_the_column_and_line(tmp_path):
    """Arrow's JSON reader does not check UTF-8 (before, the run ended in a
    UnicodeDecodeError traceback); the JSONL message matches the CSV one."""
    good_line = b'{"query_id": "q1", "query": "tea", "doc_id": "d1", "passage": "a cat"}\n'
    bad_line = b'{"query_id": "q1", "query": "caf\xe9", "doc_id": "d2", "passage": "a dog"}\n'
    (tmp_path / "in.jsonl").write_bytes(good_line + bad_line)
    refused(tmp_path, tmp_path / "in.jsonl", r"in\.jsonl: line 2, column 'query': byte 0xe9")
