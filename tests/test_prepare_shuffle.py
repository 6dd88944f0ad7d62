"""The shuffle plan streams (no materialize of the whole input) and writes, byte for byte, what
its shard body makes of each shard's rows; its row count needs no pass over the texts."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rank1_batch.io import layout
from rank1_batch.io.store import Store
from rank1_batch.job import inputs
from rank1_batch.job.load import spec_from_mapping
from rank1_batch.job.prepare import _write_shard, normalised_rows, prepare, shard_of


def ungrouped_pairs(path):
    """Queries interleaved across row groups, with a duplicate and two rejects."""
    rows = [(f"q{i % 7}", f"d{i % 11}", f"text {i}") for i in range(60)]
    rows[5] = ("q5", "d5", "  ")  # empty passage
    rows[9] = (None, "d9", "orphan")  # null query id
    rows[40] = rows[4]  # (q4, d4) again: a duplicate
    table = pa.table(
        {
            "query_id": [r[0] for r in rows],
            "query": [f"about {r[0]}" for r in rows],
            "doc_id": [r[1] for r in rows],
            "passage": [r[2] for r in rows],
        }
    )
    pq.write_table(table, path, row_group_size=8)


def ungrouped_candidates(path):
    """One row per query with a list of candidates: empty and null lists among them."""
    item = pa.struct([("doc_id", pa.string()), ("passage", pa.string())])
    qids, lists = [], []
    for i in range(24):
        qids.append(f"q{i % 5}")
        lists.append(
            None if i == 3 else [{"doc_id": f"d{i}-{j}", "passage": f"p {j}"} for j in range(i % 4)]
        )
    table = pa.table(
        {
            "query_id": qids,
            "query": [f"about {q}" for q in qids],
            "candidates": pa.array(lists, pa.list_(item)),
        }
    )
    pq.write_table(table, path, row_group_size=5)


def spec_for(inp, out, **input_over):
    return spec_from_mapping(
        {
            "input": {"path": str(inp), "grouped": False, **input_over},
            "output": {"path": str(out), "shard_size": 6},
            "model": {"name": "toy", "device": "cpu"},
        }
    )


def reference(spec, ref: Store) -> dict[str, str]:
    """Every shard through the shuffle's shard body in this process (no Ray, no shuffle): the
    bytes of every file it writes, by path."""
    files = inputs.scan_inputs(spec.input)
    work = inputs.units(files)
    rows = pa.concat_tables(inputs.read_unit(u, spec.input) for u in work)
    n_shards = -(-rows.num_rows // spec.output.shard_size)
    ids = rows.column("query_id").to_pylist()
    shard = pa.array([shard_of(q, n_shards) for q in ids], pa.int32())
    rows = rows.append_column("shard", shard)
    for k in sorted(set(shard.to_pylist())):
        _write_shard(
            rows.filter(pc.equal(rows.column("shard"), k)),
            ref,
            n_shards,
            tuple(u.file for u in work),
            spec.input,
            spec.reasoning,
        )
    return written(ref)


def written(store: Store) -> dict[str, str]:
    out = {}
    for folder in ("pairs", "rejected", "duplicates"):
        for name, _ in store.find(folder).items():
            if name.endswith(".parquet"):
                rel = f"{folder}/{name}"
                out[rel] = store.read_bytes(rel).hex()
    return out


@pytest.mark.ray
def test_shuffle_streams_and_writes_what_its_shard_body_writes(tmp_path, monkeypatch):
    import ray
    import ray.data

    def no_materialize(self, *a, **k):
        raise AssertionError("the shuffle plan materialized its whole input")

    monkeypatch.setattr(ray.data.Dataset, "materialize", no_materialize)
    ungrouped_pairs(tmp_path / "p.parquet")
    ungrouped_candidates(tmp_path / "c.parquet")
    pspec = spec_for(tmp_path / "p.parquet", tmp_path / "p")
    cspec = spec_for(tmp_path / "c.parquet", tmp_path / "c", format="candidates")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        manifests = [
            prepare(s, Store(s.output.path), inputs.scan_inputs(s.input)) for s in (pspec, cspec)
        ]
    finally:
        ray.shutdown()
    for spec, manifest in zip((pspec, cspec), manifests, strict=True):
        store = Store(spec.output.path)
        assert manifest["plan"] == "shuffle"
        assert store.read_json(layout.MANIFEST) == json.loads(json.dumps(manifest))
        ref = reference(spec, Store(str(tmp_path / f"ref-{spec.input.format}")))
        assert written(store) == ref and ref  # the same files, the same bytes
        for s in manifest["shards"]:
            assert s["sha256"] == hashlib.sha256(bytes.fromhex(ref[s["path"]])).hexdigest()
        assert manifest["rejected"] and manifest["input_rows"] == sum(
            inputs.read_unit(u, spec.input).num_rows
            for u in inputs.units(inputs.scan_inputs(spec.input))
        )
    assert manifests[0]["duplicates"] == 1


@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_normalised_rows_counts_what_read_unit_gives(tmp_path, kind):
    ungrouped_candidates(tmp_path / "c.parquet")
    path = tmp_path / f"c.{kind}"
    if kind == "jsonl":
        rows = pq.read_table(tmp_path / "c.parquet").to_pylist()
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for fmt in ("candidates", "pairs"):
        if fmt == "pairs":
            ungrouped_pairs(tmp_path / "p.parquet")
            path = tmp_path / "p.parquet"
        spec = spec_for(path, tmp_path / "out", format=fmt)
        files = inputs.scan_inputs(spec.input)
        work = inputs.units(files)
        expected = sum(inputs.read_unit(u, spec.input).num_rows for u in work)
        assert normalised_rows(files, work, spec) == expected
