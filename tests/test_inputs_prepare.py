"""Input validation and shard building: every input row lands in exactly one place."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rank1_batch.job import inputs
from rank1_batch.job.prepare import build_shard, shard_of
from rank1_batch.job.spec import InputSpec


def write(path, table, **kw):
    pq.write_table(table, path, **kw)
    return str(path)


def pairs_table(**over):
    cols = {
        "query_id": ["q1", "q1", "q2", "q2", "q1"],
        "query": ["cats", "cats", "dogs", "dogs", "cats"],
        "doc_id": ["d1", "d2", "d1", "d3", "d1"],
        "passage": ["a cat", "  ", "a dog", "dog food", "a cat again"],
    }
    cols.update(over)
    return pa.table(cols)


def read_all(path, spec):
    files = inputs.scan_inputs(spec)
    return pa.concat_tables(inputs.read_unit(u, spec) for u in inputs.units(files))


def test_pairs_are_normalised_with_reasons(tmp_path):
    spec = InputSpec(path=write(tmp_path / "in.parquet", pairs_table()))
    rows = read_all(spec.path, spec)
    assert rows.schema == inputs.NORMALISED
    assert rows.column("reason").to_pylist() == [None, "empty_passage", None, None, None]


def test_int_ids_are_cast_to_strings(tmp_path):
    t = pairs_table(query_id=[1, 1, 2, 2, 1], doc_id=[10, 20, 10, 30, 10])
    spec = InputSpec(path=write(tmp_path / "in.parquet", t))
    rows = read_all(spec.path, spec)
    assert rows.column("query_id").to_pylist() == ["1", "1", "2", "2", "1"]
    assert rows.column("doc_id").to_pylist()[1] == "20"


def test_nulls_become_reason_codes(tmp_path):
    t = pairs_table(
        query_id=["q1", None, "q2", "q2", "q1"],
        doc_id=["d1", "d2", None, "d3", "d1"],
        query=["cats", "cats", "dogs", None, "cats"],
    )
    spec = InputSpec(path=write(tmp_path / "in.parquet", t))
    reasons = read_all(spec.path, spec).column("reason").to_pylist()
    assert reasons == [None, "null_query_id", "null_doc_id", "empty_query", None]


def test_missing_column_names_file_and_column(tmp_path):
    path = write(tmp_path / "in.parquet", pairs_table().drop_columns(["passage"]))
    with pytest.raises(inputs.InputError) as e:
        inputs.scan_inputs(InputSpec(path=path))
    assert path in str(e.value) and "'passage'" in str(e.value)


def test_column_mapping(tmp_path):
    t = pairs_table().rename_columns(["qid", "q", "pid", "text"])
    spec = InputSpec.model_validate(
        {
            "path": write(tmp_path / "in.parquet", t),
            "columns": {"query_id": "qid", "query": "q", "doc_id": "pid", "passage": "text"},
        }
    )
    assert read_all(spec.path, spec).num_rows == 5


def test_list_where_text_expected_is_refused(tmp_path):
    t = pairs_table(passage=[["a"], ["b"], ["c"], ["d"], ["e"]])
    path = write(tmp_path / "in.parquet", t)
    with pytest.raises(
        inputs.InputError, match=r"column 'passage' has type list<.*expected string"
    ):
        inputs.scan_inputs(InputSpec(path=path))


def test_non_parquet_file_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "in.parquet"
    bad.write_text("query_id,query\n1,x\n")
    with pytest.raises(inputs.InputError, match=f"{bad}: not a readable Parquet file"):
        inputs.scan_inputs(InputSpec(path=str(bad)))


def test_missing_input_and_empty_folder(tmp_path):
    with pytest.raises(inputs.InputError, match="no such file"):
        inputs.scan_inputs(InputSpec(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(inputs.InputError, match="no input files found"):
        inputs.scan_inputs(InputSpec(path=str(tmp_path / "empty")))


def test_folder_input_in_sorted_order_with_row_groups(tmp_path):
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "b.parquet", pairs_table(), row_group_size=2)
    write(tmp_path / "d" / "a.parquet", pairs_table())
    files = inputs.scan_inputs(InputSpec(path=str(tmp_path / "d")))
    assert [f.path.rsplit("/", 1)[1] for f in files] == ["a.parquet", "b.parquet"]
    assert files[1].row_groups == (2, 2, 1)
    assert [u.ordinal for u in inputs.units(files)] == [0, 1, 2, 3]


def candidates_table():
    cand = pa.list_(
        pa.struct([("doc_id", pa.string()), ("passage", pa.string()), ("title", pa.string())])
    )
    return pa.table(
        {
            "query_id": ["q1", "q2", "q3"],
            "query": ["cats", "dogs", "birds"],
            "candidates": pa.array(
                [
                    [
                        {"doc_id": "d1", "passage": "a cat", "title": "Cat"},
                        {"doc_id": "d2", "passage": "kitten", "title": None},
                    ],
                    [],
                    [{"doc_id": "d9", "passage": "a bird", "title": None}],
                ],
                cand,
            ),
        }
    )


def test_candidate_lists_explode_and_empty_list_is_rejected(tmp_path):
    spec = InputSpec.model_validate(
        {
            "path": write(tmp_path / "c.parquet", candidates_table()),
            "format": "candidates",
            "columns": {"title": "title"},
        }
    )
    rows = read_all(spec.path, spec)
    assert rows.column("doc_id").to_pylist() == ["d1", "d2", "d9", None]
    assert rows.column("query_id").to_pylist() == ["q1", "q1", "q3", "q2"]
    assert rows.column("title").to_pylist() == ["Cat", None, None, None]
    assert rows.column("reason").to_pylist() == [None, None, None, "no_candidates"]
    assert len(set(rows.column("input_order").to_pylist())) == 4


def test_build_shard_dedups_keeps_queries_together_and_ranks_input_order(tmp_path):
    spec = InputSpec(path=write(tmp_path / "in.parquet", pairs_table()))
    pairs, rejected, dups = build_shard(read_all(spec.path, spec))
    assert dups == 1  # (q1, d1) twice: the first occurrence stays
    assert rejected.column("reason").to_pylist() == ["empty_passage"]
    assert list(
        zip(
            pairs.column("query_id").to_pylist(),
            pairs.column("doc_id").to_pylist(),
            pairs.column("input_rank").to_pylist(),
            strict=True,
        )
    ) == [("q1", "d1", 1), ("q2", "d1", 1), ("q2", "d3", 2)]
    assert pairs.column("passage").to_pylist()[0] == "a cat"
    assert pairs.num_rows + rejected.num_rows + dups == 5


def test_shard_of_is_stable():
    # A fixed value: shard plans must not change between runs or Python processes.
    assert shard_of("q1", 1000) == shard_of("q1", 1000)
    assert [shard_of(q, 7) for q in ("a", "b", "c")] == [shard_of(q, 7) for q in ("a", "b", "c")]
    assert shard_of(None, 5) == shard_of("", 5)
