"""One output folder (local path or fsspec URI) and the few operations the protocol needs.

Three ways to write, each matching a rule of the resume protocol:

* :meth:`Store.write_atomic` - overwrite-only files (manifest, pair shards, ``_SUCCESS.json``):
  the content appears whole or not at all (local: temp file, fsync, rename; object stores: one
  PUT of the whole body, so no ``with fs.open()`` that would publish a partial object when an
  exception unwinds through it).
* :meth:`Store.create_exclusive` - data files under attempt-unique names, commit markers,
  leases and ``job.json``: create-only.
* :meth:`Store.put_file` - a finished local file uploaded whole (one-file exports).

One retry layer: :meth:`Store._call`. On the output's object store it is the only one
(botocore's and s3fs's own retries are switched off for the store's filesystem, so a failure
is retried ``RETRIES`` times, not 5 × 5 × 6), and it retries only what is transient:
connection resets, timeouts, HTTP 5xx, SlowDown/throttling (:func:`is_transient`). Anything
else raises at once: a 4xx, a missing bucket or denied access as :class:`StorageError` naming
the URI; a full or read-only output device (ENOSPC, EDQUOT, EROFS, local or remote) as
:class:`OutputUnwritable`, which ends the job in one line. Input readers open their own
filesystems (:func:`filesystem`) and keep botocore's standard retries as their one layer.

Own writes are recognised: a create-only write whose request landed but whose answer was lost
(reset, timeout, a 500 after the write) is retried, finds the object there and gets a 412.
:meth:`Store.create_exclusive` then reads the object back and counts the create as won when
it holds exactly the bytes this call sent. Every create-only body the protocol writes is
unique to its writer (a marker carries its attempt id and time, a lease its holder's id, a
data file its attempt's name), so equal bytes mean this call's own write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rank1_batch.io.faults import (
    OutputUnwritable,
    StorageError,
    is_full,
    is_precondition_failed,
    is_storage_failure,
    is_transient,
    missing_bucket,
)
from rank1_batch.io.fs import (
    StorageSpec,
    filesystem,
    fsync_dir,
    open_temp_beside,
    syncfs,
    table_from_bytes,
)
from rank1_batch.io.paths import EXCLUSIVE_SCHEMES

log = logging.getLogger(__name__)


T = TypeVar("T")

RETRIES = 8  # attempts of one store operation: the only retry layer for the output store
# Output backends whose create-only write is atomic: local disk (temp file + os.link) and S3
# through s3fs >= 2025.7 (PutObject / CompleteMultipartUpload with If-None-Match: *). fsspec's
# default create for other backends (gs://, az://, ...) checks and then writes: not exclusive.
EXCLUSIVE_BACKENDS = EXCLUSIVE_SCHEMES  # one list with the path rules (rank1_batch.io.paths)
PROBE_DIR = "_probe"


class Store:
    """An output folder. Paths passed to methods are relative to its root."""

    def __init__(self, uri: str, storage: StorageSpec | None = None) -> None:
        self.uri = uri
        self.storage = storage
        self.fs, self.root = filesystem(uri, storage, own_retries=True)
        self.local = isinstance(self.fs, LocalFileSystem)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships stores to workers: rebuild the filesystem there instead of pickling it.
        return (Store, (self.uri, self.storage))

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if not self.local else os.path.join(self.root, rel)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one storage operation: the one retry layer. Transient errors are retried with
        backoff (object stores); a full or read-only device raises :class:`OutputUnwritable`
        and denied access or a missing bucket :class:`StorageError`, naming the URI; other
        errors are raised as they are, at once."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if is_full(exc):
                    raise OutputUnwritable(
                        f"{self.uri}: {what} failed: the output's device is full or read-only "
                        f"({exc}); free space (or choose another output) and run again to resume"
                    ) from exc
                if isinstance(exc, PermissionError) or missing_bucket(exc):
                    raise StorageError(f"{self.uri}: {what} failed: {exc}") from exc
                attempt += 1
                if self.local or attempt >= RETRIES or not is_transient(exc):
                    if self.local or not is_storage_failure(exc):
                        raise  # missing / existing files are answers; other errors are bugs
                    tried = f"after {attempt} attempts" if attempt > 1 else "not retried"
                    raise StorageError(f"{self.uri}: {what} failed ({tried}): {exc}") from exc
                delay = min(0.2 * 2**attempt, 10.0) * (0.5 + random.random())
                log.warning(
                    "%s: %s: transient error (%s: %s); retry %d/%d in %.1fs",
                    self.uri, what, type(exc).__name__, exc, attempt, RETRIES - 1, delay,
                )  # fmt: skip
                time.sleep(delay)

    def check_access(self) -> None:
        """Fail fast (before any model loads) when the output location cannot be used."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self._call(f"opening bucket {bucket}", lambda: self.fs.info(bucket, refresh=True))
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri}: no such bucket {bucket!r} ({exc})") from exc
        self.exists("job.json")

    def exists(self, rel: str) -> bool:
        return bool(self._call(f"checking {rel}", lambda: self.fs.exists(self.path(rel))))

    def read_bytes(self, rel: str) -> bytes:
        data: bytes = self._call(f"reading {rel}", lambda: self.fs.cat_file(self.path(rel)))
        return data

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: Sequence[str] | None = None) -> pa.Table:
        """One Parquet file; with ``columns``, only those column chunks are fetched (the
        file is opened, not downloaded whole)."""
        if columns is None:
            return table_from_bytes(self.read_bytes(rel))

        def read() -> pa.Table:
            # Local: Arrow opens the file itself. Remote: ParquetFile reads through the fsspec
            # file on this thread; read_table's scanner would hold that Python file on its own
            # threads past the call, which aborts the process at exit (see table_from_bytes).
            if self.local:
                return pq.read_table(self.path(rel), columns=list(columns))
            with self.fs.open(self.path(rel), "rb") as fh:
                return pq.ParquetFile(fh).read(columns=list(columns))

        return self._call(f"reading {rel}", read)

    def _fresh(self, what: str, path: str, listing: Callable[[], T], empty: T) -> T:
        """One listing of ``path`` (``listing``) through the retry layer, fresh from storage,
        not from a listing cache; ``empty`` when ``path`` does not exist."""

        def run() -> T:
            if hasattr(self.fs, "invalidate_cache"):
                self.fs.invalidate_cache(path)
            try:
                return listing()
            except FileNotFoundError as exc:
                if missing_bucket(exc):
                    raise
                return empty

        return self._call(what, run)

    def list(self, rel_dir: str) -> list[str]:
        """File names in ``rel_dir`` (sorted), fresh from storage, not from a listing cache."""
        path = self.path(rel_dir)
        entries: list[Any] = self._fresh(
            f"listing {rel_dir}", path, lambda: self.fs.ls(path, detail=False), []
        )
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    def sizes(self, rel_dir: str) -> dict[str, int]:
        """``{name: bytes}`` of the files in ``rel_dir``: one detail listing (object stores:
        one LIST request a thousand keys), fresh from storage; empty when it does not exist."""
        path = self.path(rel_dir)
        entries: list[dict[str, Any]] = self._fresh(
            f"listing {rel_dir}", path, lambda: self.fs.ls(path, detail=True), []
        )
        return {
            posixpath.basename(str(e["name"]).rstrip("/")): int(e.get("size") or 0)
            for e in entries
            if e.get("type", "file") == "file"
        }

    def find(self, rel_dir: str) -> dict[str, int]:
        """``{path: bytes}`` of every file below ``rel_dir`` at any depth, paths relative to
        it (``shard/attempt.json``): one recursive listing, fresh from storage; empty when it
        does not exist. On object stores that is one ListObjectsV2 without a delimiter
        (fsspec's ``find``): a request a thousand keys, however many folders they are in."""
        path = self.path(rel_dir)
        found: dict[str, dict[str, Any]] = self._fresh(
            f"listing {rel_dir} recursively", path, lambda: self.fs.find(path, detail=True), {}
        )
        base = str(self.fs._strip_protocol(path)).rstrip("/") + "/"
        return {
            str(name)[len(base) :]: int(e.get("size") or 0)
            for name, e in found.items()
            if str(name).startswith(base) and e.get("type", "file") == "file"
        }

    # -- writes -------------------------------------------------------------------------------
    def write_atomic(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """Replace ``rel`` with ``data``; readers see the old or the new content, never a part.

        ``durable=False`` (local only) skips the fsyncs: the file is still whole or absent
        for any reader and after a killed process, and :meth:`sync` makes a batch of such
        files durable at once, before the record that points at them is written.
        """
        final = self.path(rel)
        if self.local:

            def replace() -> None:
                tmp = self._local_temp(final, data, fsync=durable)
                os.replace(tmp, final)
                if durable:
                    fsync_dir(os.path.dirname(final))

            self._call(f"writing {rel}", replace)
        else:
            self._call(f"writing {rel}", lambda: self.fs.pipe_file(final, data))

    def put_file(self, local_path: str, rel: str) -> None:
        """Upload a finished local file to ``rel`` in one put (object stores), retried on
        transient errors: a put replaces the object whole, so a retry is safe."""
        if self.local:
            raise ValueError("put_file is for object stores; write local files in place")
        self._call(f"uploading {rel}", lambda: self.fs.put_file(local_path, self.path(rel)))

    def remove(self, rel: str) -> None:
        """Delete one file (FileNotFoundError when it is not there)."""
        if self.local:
            os.unlink(self.path(rel))
            return
        tries = 0

        def rm() -> None:
            nonlocal tries
            tries += 1
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                if tries == 1:
                    raise  # a retry that finds nothing: the first try's delete landed

        self._call(f"removing {rel}", rm)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_atomic(rel, _json_bytes(obj))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` unless it exists; True when this call created it.

        On object stores a create whose answer was lost is retried and finds the object
        there: it is this call's own when it holds exactly ``data`` (callers make every body
        unique to its writer; module docstring), and counts as created.
        """
        final = self.path(rel)
        if self.local:

            def link() -> bool:
                tmp = self._local_temp(final, data)
                try:
                    os.link(tmp, final)  # atomic and exclusive: complete content or nothing
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
                fsync_dir(os.path.dirname(final))
                return True

            return self._call(f"creating {rel}", link)

        tries = 0

        def create() -> bool:
            nonlocal tries
            tries += 1
            try:
                # s3fs >= 2025.7: a conditional PUT (If-None-Match: *), exclusive for any size.
                self.fs.pipe_file(final, data, mode="create")
            except Exception as exc:
                if not isinstance(exc, FileExistsError) and not is_precondition_failed(exc):
                    raise
                # "exists" (a 412 in any shape): ours when a lost answer hid our own write
                return self._holds(final, data)
            return True

        return self._call(f"creating {rel}", create)

    def _holds(self, path: str, data: bytes) -> bool:
        """Whether the object at ``path`` holds exactly ``data`` (read only after a 412: the
        bodies are markers, leases and one shard's files)."""
        try:
            return bool(self.fs.cat_file(path) == data)
        except FileNotFoundError:
            return False  # removed since the 412: not ours (ours are never removed so soon)

    def verify_exclusive_create(self) -> None:
        """Refuse an output backend whose create-only write is not exclusive.

        The commit protocol rests on it. Backends outside :data:`EXCLUSIVE_BACKENDS` are
        refused by name; on an object store two creates of one probe object must give exactly
        one winner (a server that ignores ``If-None-Match`` overwrites silently and is refused).
        """
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if not set(protocols) & set(EXCLUSIVE_BACKENDS):
            raise StorageError(
                f"{self.uri}: output backend {protocols[0]!r} is not supported: its create-only "
                "write is not exclusive (fsspec checks, then writes), so two attempts of one "
                "shard could both commit. Supported outputs: a local path or s3://."
            )
        if self.local:
            return  # os.link is atomic and exclusive on local filesystems
        probe = f"{PROBE_DIR}/create-{uuid.uuid4().hex}"
        first = self.create_exclusive(probe, b"1")
        second = self.create_exclusive(probe, b"2")
        try:
            content = self.read_bytes(probe)
        finally:
            try:
                self._call(f"removing {probe}", lambda: self.fs.rm_file(self.path(probe)))
            except Exception as exc:  # a leftover probe object is harmless
                log.warning("%s: could not remove %s: %s", self.uri, probe, exc)
        if not first or second or content != b"1":
            raise StorageError(
                f"{self.uri}: the object store does not honour create-only writes "
                f"(If-None-Match: *): a second create of {probe} "
                + ("overwrote the first" if second or content != b"1" else "was refused first")
                + "; exactly-once commits are impossible on it. Use AWS S3 or a server that "
                "implements conditional PUT (MinIO, Ceph RGW and moto recent releases do)."
            )

    def create_json(self, rel: str, obj: Any) -> bool:
        return self.create_exclusive(rel, _json_bytes(obj))

    def sync(self) -> None:
        """Flush what :meth:`write_atomic` wrote with ``durable=False`` (one syncfs, local)."""
        if self.local:
            syncfs(self.root)

    def _local_temp(self, final: str, data: bytes, fsync: bool = True) -> str:
        fd, tmp = open_temp_beside(final)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def delete(self, rel: str) -> None:
        """Remove ``rel`` if it exists (leases only: data files are never deleted)."""
        with contextlib.suppress(FileNotFoundError):
            self._call(f"deleting {rel}", lambda: self.fs.rm_file(self.path(rel)))

    def remove_temp_leftovers(self, rel_dir: str) -> int:
        """Delete ``.name.xxxx`` temp files that killed attempts left in a local folder."""
        if not self.local:
            return 0
        directory = self.path(rel_dir)
        removed = 0
        for name in self.list(rel_dir):
            if name.startswith("."):
                try:
                    os.unlink(os.path.join(directory, name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
