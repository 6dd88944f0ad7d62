"""Child process of the scale case: one job end to end in this process (the driver).

    python benchmarks/scale_child.py JOB.yaml QRELS

prepare (Ray tasks, local Ray) -> score (the local executor with the instant test-double
engine, in this process) -> finalize -> status -> export trec -> eval. Prints one JSON object
per line: ``{"phase": ...}`` as each stage begins (the parent tags its RSS samples with it),
then the stage timings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def say(**obj: object) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    job, qrels = sys.argv[1], sys.argv[2]
    from instant_engine import InstantTestEngine

    from rank1_batch import commit, evaluate, exports
    from rank1_batch.executor.local import score_local
    from rank1_batch.executor.ray_pool import init_ray
    from rank1_batch.inputs import listing, scan_inputs
    from rank1_batch.pipeline.finalize import finalize
    from rank1_batch.pipeline.prepare import prepare
    from rank1_batch.spec import load_job
    from rank1_batch.status import read_status
    from rank1_batch.storage import Store

    spec = load_job(job)
    store = Store(spec.output.path, spec.storage)
    files = scan_inputs(spec.input, spec.storage)
    commit.claim_output(store, commit.job_record(spec, listing(files)))
    init_ray(spec)
    times: dict[str, float] = {}

    def stage(name: str, fn):  # type: ignore[no-untyped-def]
        say(phase=name)
        start = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - start, 3)
        return result

    start = time.perf_counter()
    manifest = stage("prepare", lambda: prepare(spec, store, files))
    shards = [s["id"] for s in manifest["shards"]]
    stage("score", lambda: score_local(spec, store, shards, InstantTestEngine()))
    done = stage("finalize", lambda: finalize(store, manifest, time.perf_counter() - start))
    status = stage("status", lambda: read_status(store))
    stage("export_trec", lambda: exports.export(store, "trec"))
    stage("eval", lambda: evaluate.evaluate_output(store, qrels, ["nDCG@10"]))
    say(
        phase="done",
        times=times,
        pairs=done["scored"],
        shards=len(shards),
        plan=manifest.get("plan"),
        status_state=status["state"],
    )


if __name__ == "__main__":
    main()
