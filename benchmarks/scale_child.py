"""Child process of the scale case: one job end to end in this process (the driver).

    python benchmarks/scale_child.py JOB.yaml QRELS            # run: prepare, score, finalize
    python benchmarks/scale_child.py JOB.yaml QRELS STAGE      # status | export_trec | eval

Without a stage: prepare (Ray tasks, local Ray) -> score (the local executor with the instant
test-double engine, in this process) -> finalize, as ``rank1-batch run`` does. With one: that
command alone in a fresh process, as a user runs ``rank1-batch status / export / eval``.
Prints one JSON object per line: ``{"phase": ...}`` as each stage begins (the parent tags its
RSS samples with it), then the stage timings, each stage's peak RSS (VmHWM reset as it
starts) and the process's peak RSS over its whole life.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rank1_batch.job.record import claim_output, job_record

sys.path.insert(0, str(Path(__file__).resolve().parent))


def say(**obj: object) -> None:
    print(json.dumps(obj), flush=True)


def reset_peak() -> None:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_mib() -> float:
    """VmHWM: the peak RSS since the last :func:`reset_peak` (MiB; -1 where unknown)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return -1.0


def main() -> None:
    job, qrels, *only = sys.argv[1:]
    from rank1_batch.io.store import Store
    from rank1_batch.job.load import load_job
    from rank1_batch.outputs import evaluate, exports
    from rank1_batch.outputs.status import read_status

    spec = load_job(job)
    store = Store(spec.output.path, spec.storage)
    times: dict[str, float] = {}
    hwm: dict[str, float] = {"startup": peak_mib()}  # imports (VmHWM is fresh after exec)

    def process_peak_mib() -> float:
        """The peak RSS of this process's whole life: the largest of its stages' peaks.
        (Not ru_maxrss: Linux carries that across exec from the parent.)"""
        return max(hwm.values())

    def stage(name: str, fn):  # type: ignore[no-untyped-def]
        say(phase=name)
        reset_peak()
        start = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - start, 3)
        hwm[name] = peak_mib()
        return result

    if only:  # one command of its own, as a user runs status / export / eval
        commands = {
            "status": lambda: read_status(store),
            "export_trec": lambda: exports.export(store, "trec"),
            "eval": lambda: evaluate.evaluate_output(store, qrels, ["nDCG@10"]),
        }
        for name in only:
            stage(name, commands[name])
        say(phase="done", times=times, hwm_mib=hwm, process_peak_mib=process_peak_mib())
        return
    from instant_engine import InstantTestEngine

    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.finalize import finalize
    from rank1_batch.pipeline.local import score_local
    from rank1_batch.pipeline.pool import init_ray

    files = scan_inputs(spec.input, spec.storage)
    claim_output(store, job_record(spec, listing(files)))
    init_ray(spec)
    start = time.perf_counter()
    manifest = stage("prepare", lambda: prepare(spec, store, files))
    shards = [s["id"] for s in manifest["shards"]]
    stage("score", lambda: score_local(spec, store, shards, InstantTestEngine()))
    done = stage("finalize", lambda: finalize(store, manifest, time.perf_counter() - start))
    say(
        phase="done",
        times=times,
        hwm_mib=hwm,
        process_peak_mib=process_peak_mib(),
        pairs=done["scored"],
        shards=len(shards),
        plan=manifest.get("plan"),
    )


if __name__ == "__main__":
    main()
