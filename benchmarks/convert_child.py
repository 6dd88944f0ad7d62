"""Child process of ``convert_cases.py``: one conversion (or a plain pyarrow read) in this
process, which is the driver; prints one JSON object.

    python benchmarks/convert_child.py new|old|pyarrow CASE.json

``new``: this tree's join on a local Ray (2 CPUs, a 2 GiB object store), workers' RSS
sampled from /proc every 0.2 s (processes named ``ray::...``); ``old``: the conversion of the
tree named by ``CASE["old"]`` (put first on sys.path by the parent); ``pyarrow``: the run,
corpus and queries read whole with pyarrow (``pyarrow.csv`` / ``pyarrow.json``), nothing else.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")  # Ray's own, not task workers


def descendants(root: int) -> list[str]:
    """The processes below ``root`` (this driver's raylet and its workers, not another
    user's Ray on the same machine)."""
    parent: dict[str, str] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    parent[pid] = fh.read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
    found, todo = [], [str(root)]
    while todo:
        here = todo.pop()
        kids = [p for p, pp in parent.items() if pp == here]
        found += kids
        todo += kids
    return found


def worker_rss() -> dict[int, tuple[float, float]]:
    """(VmRSS, RssAnon) in MiB of this machine's Ray worker processes (``ray::`` in their
    command line). VmRSS counts the object store's shared pages a worker maps (shared by
    all, counted in each); RssAnon is the worker's own heap."""
    out = {}
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                name = fh.read(64)
            if not name.startswith(b"ray::") or name.startswith(AGENTS):
                continue
            with open(f"/proc/{pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            rss, anon = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon"))
            out[int(pid)] = (rss, anon)
        except OSError:
            continue
    return out


def main() -> None:
    mode, case_path = sys.argv[1:]
    case = json.loads(Path(case_path).read_text())
    from rank1_batch.job.spec import InputSpec

    spec = InputSpec(
        path=case["run"], format="trec", corpus=case["corpus"], queries=case.get("queries")
    )
    out: dict[str, object] = {"mode": mode}
    if mode == "pyarrow":
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.json as pjson

        start = time.perf_counter()
        run = pcsv.read_csv(
            case["run"],
            read_options=pcsv.ReadOptions(autogenerate_column_names=True),
            parse_options=pcsv.ParseOptions(delimiter=" "),
        )
        rows = run.num_rows
        for uri in (case["corpus_file"], case["queries_file"]):
            if uri.endswith(".jsonl"):
                rows += pjson.read_json(uri).num_rows
            else:
                rows += pcsv.read_csv(
                    uri,
                    read_options=pcsv.ReadOptions(autogenerate_column_names=True),
                    parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                    convert_options=pcsv.ConvertOptions(column_types={"f0": pa.string()}),
                ).num_rows
        out.update(wall_s=time.perf_counter() - start, rows=rows)
    else:
        from rank1_batch.io.store import Store
        from rank1_batch.job import convert

        peaks: dict[int, float] = {}
        anon: dict[int, float] = {}
        totals = [0.0, 0.0]
        stop = threading.Event()
        if mode == "new":
            import ray

            t0 = time.perf_counter()
            ray.init(
                num_cpus=2,
                object_store_memory=2 * 1024**3,
                include_dashboard=False,
                configure_logging=False,
            )
            out["ray_init_s"] = time.perf_counter() - t0

            def sample() -> None:
                while not stop.wait(0.2):
                    now = worker_rss()
                    totals[0] = max(totals[0], sum(r for r, _ in now.values()))
                    totals[1] = max(totals[1], sum(a for _, a in now.values()))
                    for pid, (rss, own) in now.items():
                        peaks[pid] = max(peaks.get(pid, 0.0), rss)
                        anon[pid] = max(anon.get(pid, 0.0), own)

            threading.Thread(target=sample, daemon=True).start()
        with tempfile.TemporaryDirectory(dir=case["workdir"]) as tmp:
            from rank1_batch.job.load import spec_from_mapping

            job = spec_from_mapping(
                {"input": spec.model_dump(), "output": {"path": tmp}, "model": {"name": "toy"}}
            )
            start = time.perf_counter()
            convert.convert(job, Store(tmp))
            out["wall_s"] = time.perf_counter() - start
            marker = json.loads((Path(tmp) / "input" / "_converted.json").read_text())
            out.update(rows=marker["rows"], parts=marker["parts"])
        stop.set()
        if mode == "new":
            out["worker_peak_rss_mib"] = round(max(peaks.values(), default=0.0), 1)
            out["workers_total_peak_rss_mib"] = round(totals[0], 1)
            out["worker_peak_anon_mib"] = round(max(anon.values(), default=0.0), 1)
            out["workers_total_peak_anon_mib"] = round(totals[1], 1)
    out["driver_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
