"""``rank1-batch eval``: first-stage and reranked runs against qrels, through ir_measures.

Both runs come from committed shards: the first stage from the pairs' ``input_rank`` (as
``-rank``, distinct within a query), the reranked run is exactly the exported run
(:func:`rank1_batch.outputs.exports.json_run`: scores, with ties lowered by a few float64 steps so
that every evaluator reads our order: score desc, then doc_id). Error rows (NaN scores) are
left out of the reranked run, as they are of ``run.trec``.

Which queries the mean is over (the *convention*, stated in the output and ``metrics.json``):
by default trec_eval's own: the queries the run has that have qrels, so ``eval`` prints what
trec_eval and pytrec_eval print on the exported ``run.trec``. With ``all_qrels_queries``
(``--all-qrels-queries``) trec_eval ``-c``'s: every qrels query counts, one the run lacks
scoring as an empty ranking does (0 for these measures). The rule is the same on a job that
is not finished; eval then also says how many shards are committed.

:func:`evaluate_output` works one committed shard at a time (both prepare plans keep a query
whole in one shard): per-query values from ``ir_measures.iter_calc`` on the shard's queries
feed each measure's own aggregator, exactly what ``calc_aggregate`` does over a whole run.
Only ``query_id, doc_id, score`` of the scores files and ``input_rank`` of the pairs files
are read. Driver memory: the qrels as one sorted Arrow table (:class:`QrelsIndex`, about 30
bytes a judgement), a few shards, and with ``--per-query`` the per-query values.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rank1_batch.io import layout
from rank1_batch.io.fs import StorageSpec, filesystem
from rank1_batch.io.store import Store
from rank1_batch.outputs.exports import json_run
from rank1_batch.outputs.results import Provenance, QueryGuard, open_committed

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@100")
METRICS_FILE = "exports/metrics.json"
RUN_QUERIES, ALL_QRELS_QUERIES = "run_queries", "all_qrels_queries"
CONVENTIONS = {
    RUN_QUERIES: "mean over the queries the run has that have qrels (trec_eval's default)",
    ALL_QRELS_QUERIES: "mean over every qrels query, a query the run lacks scoring 0 "
    "(trec_eval -c)",
}


def convention_of(all_qrels_queries: bool) -> str:
    return ALL_QRELS_QUERIES if all_qrels_queries else RUN_QUERIES


def judged_for(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], all_qrels_queries: bool
) -> dict[str, dict[str, int]]:
    """The judgements a run is evaluated against: those of its own queries (trec_eval's
    default), or all of them (``-c``: ir_measures scores a query the run lacks as 0)."""
    return qrels if all_qrels_queries else {q: j for q, j in qrels.items() if q in run}


def _qrels_rows(lines: Iterable[str]) -> Iterator[tuple[str, str, int]]:
    """(qid, docid, rel) of TREC qrels (``qid iter docid rel``) or BEIR TSV lines."""
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 4:
            qid, _, did, rel = parts
        elif len(parts) == 3:
            qid, did, rel = parts
        else:
            raise ValueError(f"qrels line {n}: expected 3 or 4 columns, got {len(parts)}")
        try:
            value = int(float(rel))
        except ValueError:
            if n == 1:  # a header (BEIR: query-id corpus-id score)
                continue
            raise ValueError(f"qrels line {n}: relevance {rel!r} is not a number") from None
        yield qid, did, value


def read_qrels(text: str) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iter docid rel``) or BEIR TSV (``query-id corpus-id score``, header)."""
    qrels: dict[str, dict[str, int]] = {}
    for qid, did, value in _qrels_rows(text.splitlines()):
        qrels.setdefault(qid, {})[did] = value
    return qrels


def load_qrels(uri: str, storage: StorageSpec | None = None) -> dict[str, dict[str, int]]:
    return read_qrels("".join(_qrels_lines(uri, storage)))


def _qrels_lines(uri: str, storage: StorageSpec | None) -> Iterator[str]:
    fs, path = filesystem(uri, storage)
    try:
        fh = fs.open(path, "rb")
    except FileNotFoundError:
        raise ValueError(f"qrels file not found: {uri}") from None
    except IsADirectoryError:
        raise ValueError(f"qrels {uri}: a folder, not a qrels file") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"qrels {uri}: not a UTF-8 text file (line {n}, byte {exc.start}); expected "
                    "TREC qrels ('qid 0 docid rel') or BEIR TSV ('query-id corpus-id score')"
                ) from None


QRELS_SCHEMA = pa.schema([("q", pa.string()), ("d", pa.string()), ("rel", pa.int32())])


class QrelsIndex:
    """Qrels as one Arrow table sorted by query id: judgements of a few queries on demand.

    About 30 bytes a judgement (a dict of dicts costs ten times that). A judgement given
    twice keeps the last value, as :func:`read_qrels` does.
    """

    def __init__(self, table: pa.Table) -> None:
        # A stable sort: rows of one query keep file order, so the last duplicate wins.
        self.table = table.take(pc.sort_indices(table, [("q", "ascending")])).combine_chunks()
        q = self.table.column("q").chunk(0) if self.table.num_rows else pa.array([], pa.string())
        change = np.flatnonzero(pc.not_equal(q[1:], q[:-1]).to_numpy(zero_copy_only=False))
        self.starts = np.concatenate([[0], change + 1, [len(q)]]).astype(np.int64)
        self.ids = q.take(pa.array(self.starts[:-1])) if len(q) else q
        self.asked = np.zeros(len(self.ids), bool)  # queries for_queries was asked for

    @classmethod
    def load(cls, uri: str, storage: StorageSpec | None = None, chunk: int = 20_000) -> QrelsIndex:
        parts, cols = [], ([], [], [])  # type: list[pa.Table], tuple[list[Any], ...]
        try:
            for row in _qrels_rows(_qrels_lines(uri, storage)):
                for col, value in zip(cols, row, strict=True):
                    col.append(value)
                if len(cols[0]) >= chunk:
                    parts.append(pa.table(list(cols), schema=QRELS_SCHEMA))
                    cols = ([], [], [])
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith("qrels ") else f"qrels {uri}: {msg}") from None
        parts.append(pa.table(list(cols), schema=QRELS_SCHEMA))
        return cls(pa.concat_tables(parts))

    def __len__(self) -> int:
        return len(self.ids)

    def for_queries(self, qids: Iterable[str]) -> dict[str, dict[str, int]]:
        """``{qid: {docid: rel}}`` for those of ``qids`` that have judgements."""
        ids = _Strings(self.ids)
        out: dict[str, dict[str, int]] = {}
        for q in qids:
            i = bisect.bisect_left(ids, q)
            if i < len(ids) and ids[i] == q:
                self.asked[i] = True
                out[q] = self._judgements(i)
        return out

    def _judgements(self, i: int) -> dict[str, int]:
        rows = self.table.slice(self.starts[i], self.starts[i + 1] - self.starts[i])
        return dict(zip(rows.column("d").to_pylist(), rows.column("rel").to_pylist(), strict=True))

    def never_asked(self, chunk: int = 10_000) -> Iterator[dict[str, dict[str, int]]]:
        """Judgements of the queries :meth:`for_queries` never found, ``chunk`` at a time."""
        left = np.flatnonzero(~self.asked)
        for start in range(0, len(left), chunk):
            yield {
                str(self.ids[int(i)].as_py()): self._judgements(int(i))
                for i in left[start : start + chunk]
            }


class _Strings:
    """An Arrow string array as a sequence of Python strings (for :mod:`bisect`; Arrow sorts
    by UTF-8 bytes, which is code-point order, as Python compares strings)."""

    def __init__(self, array: pa.Array) -> None:
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> str:
        return str(self.array[i].as_py())


def first_stage_run(table: pa.Table) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for q, d, r in zip(
        table.column("query_id").to_pylist(),
        table.column("doc_id").to_pylist(),
        table.column("input_rank").to_pylist(),
        strict=True,
    ):
        run.setdefault(q, {})[d] = -float(r)
    return run


def reranked_run(table: pa.Table) -> dict[str, dict[str, float]]:
    """The reranked run exactly as exported (``run.trec``/``run.json``)."""
    return json_run(table)


def evaluate_runs(
    qrels: dict[str, dict[str, int]],
    runs: dict[str, dict[str, dict[str, float]]],
    metrics: list[str],
    per_query: bool = False,
    *,
    all_qrels_queries: bool = False,
) -> dict[str, Any]:
    """Aggregate (and optionally per-query) values of ``metrics`` for each named run, over
    the queries the convention names (see the module docstring)."""
    import ir_measures

    measures = _measures(metrics)
    out: dict[str, Any] = {
        "metrics": metrics,
        "convention": convention_of(all_qrels_queries),
        "runs": {},
    }
    for name, run in runs.items():
        judged = judged_for(qrels, run, all_qrels_queries)
        agg = ir_measures.calc_aggregate(measures, judged, run)
        entry: dict[str, Any] = {"aggregate": {str(m): float(agg[m]) for m in measures}}
        entry["queries"] = len(judged)
        entry["unjudged_queries"] = len(set(run) - set(qrels))
        if per_query:
            table: dict[str, dict[str, float]] = {}
            for m in ir_measures.iter_calc(measures, judged, run):
                table.setdefault(m.query_id, {})[str(m.measure)] = float(m.value)
            entry["per_query"] = dict(sorted(table.items()))
        out["runs"][name] = entry
    return out


def _measures(metrics: list[str]) -> list[Any]:
    import ir_measures

    try:
        return [ir_measures.parse_measure(m) for m in metrics]
    except (ValueError, NameError, SyntaxError) as exc:
        raise ValueError(f"unknown metric in {metrics}: {exc}") from None


EVAL_COLUMNS = ("query_id", "doc_id", "score", *Provenance.COLUMNS)


def evaluate_output(
    store: Store,
    qrels_uri: str,
    metrics: list[str],
    *,
    per_query: bool = False,
    all_qrels_queries: bool = False,
) -> dict[str, Any]:
    """Evaluate the folder's first-stage and reranked runs; write ``exports/metrics.json``.

    Shard by shard: the same numbers as :func:`evaluate_runs` on the whole runs (the
    aggregate is each measure's aggregator over the per-query values), with driver memory
    independent of the number of pairs. The convention (which queries the mean is over) and
    the query counts behind it are in the report.
    """
    import ir_measures

    committed = open_committed(store)
    qrels = QrelsIndex.load(qrels_uri, store.storage)
    measures = _measures(metrics)
    names = ("first_stage", "reranked")
    aggs = {name: {m: m.aggregator() for m in measures} for name in names}
    judged_n, unjudged_n = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    tables: dict[str, dict[str, dict[str, float]]] = {name: {} for name in names}
    guard, prov, scored = QueryGuard(store.uri), Provenance(), 0

    def add(name: str, values: Iterable[Any]) -> None:
        for m in values:
            aggs[name][m.measure].add(m.value)
            if per_query:
                tables[name].setdefault(m.query_id, {})[str(m.measure)] = float(m.value)

    for marker, table in committed.tables(EVAL_COLUMNS, ("input_rank",)):
        qids = guard.check_table(table, marker.shard)
        prov.add(table)
        judged = qrels.for_queries(qids)
        scored += len(judged)
        runs = {"first_stage": first_stage_run(table), "reranked": reranked_run(table)}
        for name, run in runs.items():
            judged_n[name] += sum(q in run for q in judged)
            unjudged_n[name] += sum(q not in judged for q in run)
            if judged:
                add(
                    name,
                    ir_measures.iter_calc(
                        measures, judged_for(judged, run, all_qrels_queries), run
                    ),
                )
    if all_qrels_queries:
        # trec_eval -c: a qrels query in no committed shard scores as an empty ranking (0).
        for judged in qrels.never_asked():
            for name in names:
                add(name, ir_measures.iter_calc(measures, judged, {}))
    convention = convention_of(all_qrels_queries)
    report: dict[str, Any] = {
        "metrics": metrics,
        "convention": convention,
        "averaged_over": CONVENTIONS[convention],
        "qrels_queries": len(qrels),
        "runs": {},
    }
    for name in names:
        entry: dict[str, Any] = {
            "aggregate": {str(m): float(a.result()) for m, a in aggs[name].items()},
            "queries": len(qrels) if all_qrels_queries else judged_n[name],
            "judged_queries": judged_n[name],
            "unjudged_queries": unjudged_n[name],
        }
        if per_query:
            entry["per_query"] = dict(sorted(tables[name].items()))
        report["runs"][name] = entry
    report |= {"qrels": qrels_uri, **prov.to_dict(committed)}
    if not committed.complete:
        manifest = store.read_json(layout.MANIFEST) if store.exists(layout.MANIFEST) else {}
        report["incomplete"] = {
            "shards_committed": len(committed.shards),
            "shards_total": len(manifest.get("shards", [])) or None,
            "qrels_queries": len(qrels),
            "qrels_queries_scored": scored,
        }
    store.write_atomic(METRICS_FILE, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    report["metrics_file"] = store.uri.rstrip("/") + "/" + METRICS_FILE
    return report
