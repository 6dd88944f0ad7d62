"""Shared pieces of the benchmarks: pure statistics, synthetic data, job files, subprocess
runs of the CLI with process-tree RSS sampling, and the machine description.

The pure helpers (:func:`shared_prefix`, :func:`padded_fraction`, :func:`p95`, ...) are unit
tested in ``tests/test_benchmarks.py``; everything else does I/O.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "rank1_batch.cli"]
MiB = 1024 * 1024


# -- pure helpers -------------------------------------------------------------------------
def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def shared_prefix(prompts: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(tokens shared with the previous prompt, total tokens) over consecutive prompts.

    What a prefix cache can reuse when prompts arrive in this order (the first prompt shares
    nothing).
    """
    shared = sum(common_prefix_len(a, b) for a, b in itertools.pairwise(prompts))
    return shared, sum(len(p) for p in prompts)


def padded_fraction(batches: Sequence[Sequence[int]]) -> float:
    """Share of padding in left-padded batches, given each batch's sequence lengths."""
    padded = sum(len(b) * max(b) for b in batches if b)
    real = sum(sum(b) for b in batches)
    return (padded - real) / padded if padded else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def p95(values: Sequence[float]) -> float:
    return percentile(values, 95)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[k : k + size]) for k in range(0, len(items), max(1, size))]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Wall seconds of ``repeats`` calls of ``fn`` and the last result."""
    walls, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - start)
    return walls, result


def summary(walls: Sequence[float]) -> dict[str, Any]:
    return {"median_s": round(median(walls), 3), "runs_s": [round(w, 3) for w in walls]}


# -- machine ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import psutil
    import pyarrow
    import ray
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "platform": platform.platform(),
    }


# -- data and jobs ------------------------------------------------------------------------
def write_pairs(path: Path, n_pairs: int, *, candidates: int = 20, seed: int = 7) -> Path:
    """A Parquet pairs file of ``n_pairs`` synthetic toy-world pairs (query-grouped).

    Text comes from :func:`rank1_batch.toy.data.make_ir_collection`. Beyond 50,000 pairs a
    50,000-pair collection is tiled with fresh query and doc ids (same text, distinct pairs),
    which keeps generating 2M pairs to seconds without changing what prepare has to do.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rank1_batch.toy.data import make_ir_collection

    base_n = min(n_pairs, 50_000)
    coll = make_ir_collection(seed, math.ceil(base_n / candidates), candidates)
    cands = coll.candidates[:base_n]
    base = pa.table(
        {
            "query_id": [c.query_id for c in cands],
            "query": [c.query for c in cands],
            "doc_id": [c.doc_id for c in cands],
            "passage": [c.passage for c in cands],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, base.schema, compression="zstd") as writer:
        done, copy = 0, 0
        while done < n_pairs:
            part = base.slice(0, min(base_n, n_pairs - done))
            if copy:
                tag = pa.scalar(f"-{copy}")
                part = part.set_column(
                    0, "query_id", pc.binary_join_element_wise(part["query_id"], tag, "")
                )
                part = part.set_column(
                    2, "doc_id", pc.binary_join_element_wise(part["doc_id"], tag, "")
                )
            writer.write_table(part, row_group_size=100_000)
            done += part.num_rows
            copy += 1
    return path


def write_job(path: Path, data: Path, out: Path, **compute: Any) -> Path:
    """A demo-style job (toy model, transformers engine) over ``data`` into ``out``."""
    shard_size = compute.pop("shard_size", 500)
    job = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    job["name"] = path.stem
    job["input"] = {"path": str(data), "format": "pairs"}
    job["output"] = {"path": str(out), "shard_size": shard_size}
    job["compute"] = {"workers": 1, "batch_size": 32, **compute}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def job_settings(job: Path) -> dict[str, Any]:
    spec = yaml.safe_load(job.read_text())
    return {
        "shard_size": spec["output"]["shard_size"],
        "model": spec["model"],
        "reasoning": spec["reasoning"],
        "compute": spec["compute"],
    }


# -- subprocess runs with RSS sampling ------------------------------------------------------
def _tree(root: int) -> list[Any]:
    import psutil

    try:
        proc = psutil.Process(root)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _role(proc: Any, root: int) -> str:
    if proc.pid == root:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "other"
    if "ShardWorker" in cmd:
        return "score_worker"
    if "ray::" in cmd or "default_worker" in cmd:
        return "ray_worker"
    return "ray_system"


class RssSampler:
    """Peak RSS (MiB) per role of a process tree, sampled every ``interval`` seconds, kept
    per phase (the caller names the phase as the run goes)."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            per_role: dict[str, float] = {}
            for proc in _tree(self.root):
                try:
                    rss = proc.memory_info().rss / MiB
                except psutil.Error:
                    continue
                role = _role(proc, self.root)
                per_role[role] = max(per_role.get(role, 0.0), rss)
            peaks = self.peaks.setdefault(self.phase, {})
            for role, rss in per_role.items():
                peaks[role] = round(max(peaks.get(role, 0.0), rss), 1)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        return self.peaks


# Ray starts its workers at nice 15 by default. On a dedicated machine that changes nothing;
# on a shared, busy one the scoring actor then loses the CPU to everyone else's nice-0
# processes while the engine-direct baseline (nice 0) does not, so the comparison would
# measure the neighbours. The benchmarks run workers at nice 0; case 1 also records one run
# with Ray's default.
WORKER_NICENESS = "0"


def bench_env(niceness: str | None = WORKER_NICENESS) -> dict[str, str]:
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "PYTHONUNBUFFERED": "1"}
    if niceness is not None:
        env["RAY_worker_niceness"] = niceness
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_cli(
    args: Sequence[str],
    *,
    stop_when: Callable[[], bool] | None = None,
    timeout: float = 1800,
    niceness: str | None = WORKER_NICENESS,
) -> dict[str, Any]:
    """Run ``rank1-batch ARGS`` in its own session; wall time, exit code and peak RSS.

    With ``stop_when``, the process group is SIGKILLed as soon as it returns true.
    """
    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*CLI, "-q", *args],
            cwd=ROOT,
            env=bench_env(niceness),
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        sampler = RssSampler(proc.pid)
        sampler.phase = "run"
        killed = False
        try:
            while proc.poll() is None and time.perf_counter() - start < timeout:
                if stop_when is not None and stop_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wall = time.perf_counter() - start
        peaks = sampler.stop()
        if proc.returncode != 0 and not killed:
            log.seek(0)
            err = log.read()[-2000:]
            raise RuntimeError(f"rank1-batch {' '.join(args)} exited {proc.returncode}: {err}")
    return {"wall_s": round(wall, 3), "killed": killed, "rss_peak_mib": peaks}


def emit(doc: dict[str, Any], out: str | None) -> None:
    """Print a benchmark's JSON document on stdout, and write it to ``out`` too if given."""
    text = json.dumps(doc, indent=2, default=str)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def read_success(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "_SUCCESS.json").read_text())
    data.pop("commits", None)
    return data


def committed(out: Path) -> int:
    folder = out / "_commits"
    return len(list(folder.glob("shard-*.json"))) if folder.is_dir() else 0
