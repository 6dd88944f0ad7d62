"""Grouped (one-pass) and shuffled prepare: same pairs, same accounting, resumable by unit."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.job import inputs
from rank1_batch.job import prepare_grouped as grouped
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.prepare import PLAN, prepare


def grouped_input(path, row_group_size=7):
    """Queries in runs that cross row groups (q2 spans three), with duplicates (one across a
    boundary), rejects (empty passage, a null query id inside a run) and integer-free ids."""
    rows = []
    for q, n in (("q1", 5), ("q2", 17), ("q3", 1), ("q0", 9), ("q5", 4)):
        rows += [
            (q, f"{q} query", f"d{i % (n - 2) if n > 3 else i}", f"text {q} {i}") for i in range(n)
        ]
    rows[3] = ("q1", "q1 query", "d3", "   ")  # empty passage
    rows[12] = (None, "q2 query", "dx", "orphan")  # null query id inside q2's run
    table = pa.table(
        {
            "query_id": [r[0] for r in rows],
            "query": [r[1] for r in rows],
            "doc_id": [r[2] for r in rows],
            "passage": [r[3] for r in rows],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return table


def job(tmp_path, inp, out, **input_over):
    return spec_from_mapping(
        {
            "input": {"path": str(inp), **input_over},
            "output": {"path": str(out), "shard_size": 6},
            "model": {"name": "toy", "device": "cpu"},
        }
    )


def pairs_of(store, manifest):
    tables = [store.read_parquet(s["path"]) for s in manifest["shards"]]
    t = pa.concat_tables(tables)
    return sorted(
        zip(
            *(t.column(c).to_pylist() for c in ("query_id", "doc_id", "input_order", "input_rank")),
            strict=True,
        )
    )


def rejected_of(store, manifest):
    t = pa.concat_tables([store.read_parquet(f) for f in manifest["rejected_files"]])
    return sorted(
        zip(t.column("input_order").to_pylist(), t.column("reason").to_pylist(), strict=True)
    )


def reference(spec):
    """Every row through the shuffle path's shard body at once (one shard holds it all)."""
    from rank1_batch.job.prepare import build_shard

    files = inputs.scan_inputs(spec.input)
    rows = pa.concat_tables(inputs.read_unit(u, spec.input) for u in inputs.units(files))
    return build_shard(rows), rows.num_rows


def test_grouped_prepare_equals_the_shuffle_body_and_keeps_queries_whole(tmp_path):
    grouped_input(tmp_path / "in.parquet")
    spec = job(tmp_path, tmp_path / "in.parquet", tmp_path / "out")
    store = Store(spec.output.path)
    manifest = prepare(spec, store, inputs.scan_inputs(spec.input))
    assert store.read_json(PLAN)["mode"] == "grouped" and manifest["plan"] == "grouped"
    (pairs, rejected, dups), n = reference(spec)
    ref = sorted(
        zip(
            *(
                pairs.column(c).to_pylist()
                for c in ("query_id", "doc_id", "input_order", "input_rank")
            ),
            strict=True,
        )
    )
    assert pairs_of(store, manifest) == ref
    assert rejected_of(store, manifest) == sorted(
        zip(
            rejected.column("input_order").to_pylist(),
            rejected.column("reason").to_pylist(),
            strict=True,
        )
    )
    assert (manifest["pairs"], manifest["rejected"], manifest["duplicates"]) == (
        pairs.num_rows,
        rejected.num_rows,
        dups,
    )
    assert (
        manifest["pairs"] + manifest["rejected"] + manifest["duplicates"]
        == manifest["input_rows"]
        == n
    )
    # Each query in exactly one shard; shards hold at least shard_size pairs but a unit's last.
    owner = {}
    for s in manifest["shards"]:
        t = store.read_parquet(s["path"])
        assert s["rows"] == t.num_rows and s["queries"] == len(pc.unique(t.column("query_id")))
        for q in set(t.column("query_id").to_pylist()):
            assert owner.setdefault(q, s["id"]) == s["id"]
    names = [s["id"] for s in manifest["shards"]]
    assert names == sorted(names) and len(set(names)) == len(names)


def test_grouped_prepare_is_deterministic_and_resumes_only_missing_units(tmp_path):
    grouped_input(tmp_path / "in.parquet")
    spec = job(tmp_path, tmp_path / "in.parquet", tmp_path / "a")
    store = Store(spec.output.path)
    first = prepare(spec, store, inputs.scan_inputs(spec.input))
    files = {p: (tmp_path / "a" / p).read_bytes() for p in (s["path"] for s in first["shards"])}
    # A crash after some units: drop the manifest, one unit marker and that unit's shards.
    (tmp_path / "a" / layout.MANIFEST).unlink()
    units_dir = tmp_path / "a" / grouped.UNITS
    markers = sorted(units_dir.iterdir())
    lost = json.loads(markers[1].read_text())
    markers[1].unlink()
    for s in lost["shards"]:
        (tmp_path / "a" / s["path"]).unlink()
    kept = {m.name: m.stat().st_mtime_ns for m in markers if m.exists()}
    again = prepare(spec, store, inputs.scan_inputs(spec.input))
    assert again == first
    assert {m.name: m.stat().st_mtime_ns for m in markers if m.name in kept} == kept  # not redone
    assert {p: (tmp_path / "a" / p).read_bytes() for p in files} == files
    other = job(tmp_path, tmp_path / "in.parquet", tmp_path / "b")
    assert prepare(other, Store(other.output.path), inputs.scan_inputs(other.input)) == first


def test_ungrouped_input_is_detected_and_refused_when_declared_grouped(tmp_path):
    t = grouped_input(tmp_path / "g.parquet")
    pq.write_table(
        pa.concat_tables([t.slice(20), t.slice(0, 20)]), tmp_path / "in.parquet", row_group_size=7
    )
    spec = job(tmp_path, tmp_path / "in.parquet", tmp_path / "out", grouped=True)
    with pytest.raises(
        inputs.InputError, match=r"not grouped by query: (query 'q\d' comes back|a query starts in)"
    ):
        prepare(spec, Store(spec.output.path), inputs.scan_inputs(spec.input))
    with pytest.raises(grouped.NotGrouped):
        grouped.unit_tasks(inputs.scan_inputs(spec.input), spec)


@pytest.mark.ray
def test_shuffle_path_gives_the_same_pairs_and_accounting(tmp_path):
    import ray

    t = grouped_input(tmp_path / "g.parquet")
    gspec = job(tmp_path, tmp_path / "g.parquet", tmp_path / "g")
    gman = prepare(gspec, Store(gspec.output.path), inputs.scan_inputs(gspec.input))
    sspec = job(tmp_path, tmp_path / "g.parquet", tmp_path / "s", grouped=False)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        sman = prepare(sspec, Store(sspec.output.path), inputs.scan_inputs(sspec.input))
    finally:
        ray.shutdown()
    assert sman["plan"] == "shuffle"
    gs, ss = Store(gspec.output.path), Store(sspec.output.path)
    assert pairs_of(gs, gman) == pairs_of(ss, sman)
    assert rejected_of(gs, gman) == rejected_of(ss, sman)
    for key in ("input_rows", "pairs", "rejected", "duplicates"):
        assert gman[key] == sman[key]
    assert gman["input_rows"] == t.num_rows
