"""Child process of cases 4-5: prepare a job's input, then score its first K shards.

    python benchmarks/prepare_child.py JOB.yaml K

Does what ``rank1-batch run`` does up to scoring (claim the output, start Ray, prepare), but
times prepare on its own (Ray start-up excluded) and scores only a bounded subset of the
shards, so a 2M-pair input can be followed through both stages in minutes. Prints one JSON
object per line: ``{"phase": ...}`` as stages begin (the parent tags its RSS samples with
them), then ``{"prepare_s": ..., "score_s": ..., ...}``.
"""

from __future__ import annotations

import json
import sys
import time

from rank1_batch.job.record import claim_output, job_record


def say(**obj: object) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    job, k = sys.argv[1], int(sys.argv[2])
    from rank1_batch.engines.factory import model_path
    from rank1_batch.io.store import Store
    from rank1_batch.job.inputs import listing, scan_inputs
    from rank1_batch.job.load import load_job
    from rank1_batch.job.prepare import prepare
    from rank1_batch.pipeline.pool import init_ray, score_pending

    spec = load_job(job)
    store = Store(spec.output.path, spec.storage)
    files = scan_inputs(spec.input, spec.storage)
    claim_output(store, job_record(spec, listing(files)))
    model_path(spec)
    init_ray(spec)
    say(phase="prepare")
    start = time.perf_counter()
    manifest = prepare(spec, store, files)
    prepare_s = time.perf_counter() - start
    say(phase="score")
    pending = manifest["shards"][:k]
    start = time.perf_counter()
    if pending:
        score_pending(spec, store, pending)
    score_s = time.perf_counter() - start
    say(
        phase="done",
        prepare_s=round(prepare_s, 3),
        input_rows=manifest["input_rows"],
        shards=len(manifest["shards"]),
        scored_shards=len(pending),
        scored_pairs=sum(int(s["rows"]) for s in pending),
        score_s=round(score_s, 3),
    )


if __name__ == "__main__":
    main()
