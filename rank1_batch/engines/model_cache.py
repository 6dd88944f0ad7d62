"""The model's files, fetched once per node before the scoring actors start.

``model.name`` is one of:

* ``toy``: the built-in toy model (demos, tests);
* a local folder: loaded as is;
* an object-store folder (``s3://``, ``gs://``, ``az://``, ... a saved checkpoint): copied once
  per node into the node-local cache (``$RANK1_BATCH_MODEL_CACHE``, default
  ``~/.cache/rank1-batch/models``), one sub-folder per (URI, revision), and loaded from there
  (read with the job's ``storage:`` options); with ``engine_args.load_format:
  runai_streamer`` vLLM streams it from the store instead and nothing is copied;
* a hub id (``jhu-clsp/rank1-7b``): downloaded once per node into the Hugging Face cache
  (``huggingface_hub.snapshot_download``, which honours ``HF_HOME`` / ``HF_TOKEN``); the engines
  then find it there.

Every fetch takes a per-model file lock in the cache, so actors of one node that start together
wait for one copy instead of each downloading the model. An object-store copy lands in a
temporary folder and is renamed into place when whole: a killed copy is never loaded.
:func:`fetch_on_nodes` runs the fetch on every alive node of the Ray cluster before the pool
starts, with bounded retries; a node that still fails is left to its actors (which fetch under
the same lock, and whose start-up failures are retried).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rank1_batch.io.fs import StorageSpec
from rank1_batch.job.spec import JobSpec

log = logging.getLogger(__name__)

CACHE_ENV = "RANK1_BATCH_MODEL_CACHE"
# Schemes of object stores (and hf:// via fsspec) read through fsspec; a hub id has no scheme.
URI_SEPARATOR = "://"


def kind(name: str) -> str:
    """``toy``, ``local``, ``uri`` (an fsspec URL) or ``hub`` (a Hugging Face hub id)."""
    from rank1_batch.toy import TOY_MODEL_NAME

    if name == TOY_MODEL_NAME:
        return "toy"
    if URI_SEPARATOR in name and not name.startswith("file://"):
        return "uri"
    local = name.removeprefix("file://")
    if local.startswith(("/", ".", "~")) or Path(local).expanduser().exists():
        return "local"
    return "hub"


def streamed(spec: JobSpec) -> bool:
    """An object-store model vLLM streams itself (``engine_args.load_format:
    runai_streamer``, needs ``vllm[runai]``): no node-local copy."""
    return spec.model.engine_args.get("load_format") == "runai_streamer"


def cache_root() -> Path:
    default = Path.home() / ".cache" / "rank1-batch" / "models"
    return Path(os.environ.get(CACHE_ENV) or default)


def cache_dir(uri: str, revision: str | None) -> Path:
    """The node-local folder an object-store model is copied to."""
    key = hashlib.sha256(f"{uri}\n{revision or ''}".encode()).hexdigest()[:16]
    tail = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    return cache_root() / f"{tail}-{key}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def copy_from_store(
    uri: str, revision: str | None, storage: StorageSpec | None
) -> tuple[Path, bool]:
    """The local copy of the model folder at ``uri``; (folder, whether this call copied it)."""
    from rank1_batch.io.fs import filesystem
    from rank1_batch.io.store import StorageError

    target = cache_dir(uri, revision)
    # Beside the folder, not in it: the folder holds exactly the checkpoint's files (its
    # content hash is the model revision the outputs record).
    complete = target.with_name(target.name + ".complete")
    if complete.exists():
        return target, False
    with _locked(target.with_name(target.name + ".lock")):
        if complete.exists():  # another actor of this node copied it meanwhile
            return target, False
        fs, root = filesystem(uri, storage)
        try:
            files = [f for f in fs.find(root) if not f.endswith("/")]
        except Exception as exc:
            raise StorageError(f"model {uri}: cannot list the model folder: {exc}") from exc
        if not files:
            raise StorageError(f"model {uri}: no files there (expected a saved checkpoint)")
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            for f in files:
                rel = f[len(root) :].lstrip("/")
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f, str(staging / rel))
            if target.exists():  # a copy a killed process left unmarked
                shutil.rmtree(target)
            staging.rename(target)
            complete.write_text(f"{uri}\n{revision or ''}\n")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target, True


def download_from_hub(name: str, revision: str | None) -> tuple[Path, bool]:
    """The hub model in this node's Hugging Face cache, downloaded once under a lock."""
    from huggingface_hub import snapshot_download

    lock = cache_root() / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".hub.lock")
    with _locked(lock):
        try:
            return Path(snapshot_download(name, revision=revision, local_files_only=True)), False
        except Exception:  # not cached yet (or incomplete): download
            return Path(snapshot_download(name, revision=revision)), True


def model_path(spec: JobSpec) -> str:
    """The folder (or hub id) the engines load for ``spec``; object-store models are copied to
    this node's cache first (once per node)."""
    name = spec.model.name
    found = kind(name)
    if found == "toy":
        from rank1_batch.toy.model import resolve_toy_model

        return str(resolve_toy_model())
    if found == "uri":
        if streamed(spec):
            return name
        return str(copy_from_store(name, spec.model.revision, spec.storage)[0])
    return str(Path(name.removeprefix("file://")).expanduser()) if found == "local" else name


# The longest wait for one round of per-node fetches: a 32B checkpoint (about 65 GB) at
# 100 MB/s takes 11 minutes; an hour leaves room for slow links without waiting forever.
FETCH_TIMEOUT_S = 3600.0


def fetch_here(spec: JobSpec) -> dict[str, Any]:
    """Fetch the model on this node; what was done, for the driver's log."""
    import socket

    start = time.monotonic()
    name, found = spec.model.name, kind(spec.model.name)
    fetched = False
    if found == "uri":
        fetched = copy_from_store(name, spec.model.revision, spec.storage)[1]
    elif found == "hub":
        fetched = download_from_hub(name, spec.model.revision)[1]
    return {
        "node": socket.gethostname(),
        "fetched": fetched,
        "seconds": round(time.monotonic() - start, 2),
    }


def target_nodes(nodes: list[dict[str, Any]], gpu_nodes_only: bool) -> list[str]:
    """Ids of the alive nodes (``ray.nodes()`` entries) the model is fetched on."""
    return [
        n["NodeID"]
        for n in nodes
        if n.get("Alive") and (not gpu_nodes_only or n.get("Resources", {}).get("GPU", 0) > 0)
    ]


def fetch_on_nodes(
    spec: JobSpec,
    *,
    gpu_nodes_only: bool = False,
    tries: int = 3,
    backoff: float = 5.0,
    timeout: float = FETCH_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Fetch the model on every alive Ray node that can load it (object-store folders and hub
    ids; nothing to do for ``toy`` and local folders), before the actor pool starts; one task
    per node, pinned to it. ``gpu_nodes_only``: skip nodes without a GPU (a CPU-only head
    never loads a GPU job's model). Failures are retried ``tries`` times with a doubling
    pause, then left to the actors (logged), so a flaky download never ends the job here;
    a try waits at most ``timeout`` seconds (a node that died or a copy that hangs is left to
    its actors, which fetch under the same node lock)."""
    found = kind(spec.model.name)
    if found not in ("uri", "hub") or (found == "uri" and streamed(spec)):
        return []
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    fetch = ray.remote(num_cpus=0, max_retries=0)(fetch_here)
    todo = target_nodes(ray.nodes(), gpu_nodes_only)
    done: list[dict[str, Any]] = []
    for attempt in range(1, tries + 1):
        refs = {
            node: fetch.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(spec)
            for node in todo
        }
        failed = []
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        for node, ref in refs.items():
            if ref not in ready:  # a node that never ran it, or a copy that hangs
                log.warning(
                    "model %s: fetch on node %s gave no answer in %.0f s; left to its actors",
                    spec.model.name, node, timeout,
                )  # fmt: skip
                ray.cancel(ref, force=True)
                continue
            try:
                done.append(ray.get(ref))
            except Exception as exc:
                log.warning("model %s: fetch on node %s failed: %s", spec.model.name, node, exc)
                failed.append(node)
        todo = failed
        if not todo:
            break
        if attempt < tries:
            time.sleep(backoff * 2 ** (attempt - 1))
    copied = sum(1 for d in done if d["fetched"])
    log.info(
        "model %s: ready on %d node(s) (%d fetched now)%s",
        spec.model.name, len(done), copied,
        f"; {len(todo)} node(s) left to their actors" if todo else "",
    )  # fmt: skip
    return done
