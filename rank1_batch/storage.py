"""One output folder (local path or fsspec URI) and the few operations the protocol needs.

Three ways to write, each matching a rule of the resume protocol:

* :meth:`Store.write_atomic` - overwrite-only files (manifest, pair shards, ``_SUCCESS.json``):
  the content appears whole or not at all (local: temp file, fsync, rename; object stores: one
  PUT of the whole body, so no ``with fs.open()`` that would publish a partial object when an
  exception unwinds through it).
* :meth:`Store.publish` - data files under a committed name: exclusive, so a name is written
  at most once. A later attempt that finds the name taken adopts what is there; it was
  complete when it appeared.
* :meth:`Store.create_exclusive` - commit markers and ``job.json``: create-only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tempfile
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from rank1_batch.spec import StorageSpec


def storage_options(uri: str, storage: StorageSpec | None) -> dict[str, Any]:
    """fsspec options for ``uri`` from the job's storage section (never credentials)."""
    if storage is None or not uri.startswith(("s3://", "s3a://")):
        return {}
    opts: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if storage.endpoint_url:
        client_kwargs["endpoint_url"] = storage.endpoint_url
    if storage.region:
        client_kwargs["region_name"] = storage.region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    if storage.profile:
        opts["profile"] = storage.profile
    return opts


def filesystem(
    uri: str, storage: StorageSpec | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the bare path of ``uri`` (local paths made absolute)."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri, storage))
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return fs, path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


class Store:
    """An output folder. Paths passed to methods are relative to its root."""

    def __init__(self, uri: str, storage: StorageSpec | None = None) -> None:
        self.uri = uri
        self.storage = storage
        self.fs, self.root = filesystem(uri, storage)
        self.local = isinstance(self.fs, LocalFileSystem)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships stores to workers: rebuild the filesystem there instead of pickling it.
        return (Store, (self.uri, self.storage))

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if not self.local else os.path.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        data: bytes = self.fs.cat_file(self.path(rel))
        return data

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(rel)))

    def list(self, rel_dir: str) -> list[str]:
        """File names in ``rel_dir`` (sorted), fresh from storage, not from a listing cache."""
        path = self.path(rel_dir)
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(str(e).rstrip("/")) for e in entries)

    # -- writes -------------------------------------------------------------------------------
    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` with ``data``; readers see the old or the new content, never a part."""
        if self.local:
            final = self.path(rel)
            tmp = self._local_temp(final, data)
            os.replace(tmp, final)
            _fsync_dir(os.path.dirname(final))
        else:
            self.fs.pipe_file(self.path(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_atomic(rel, _json_bytes(obj))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` unless it exists; True when this call created it."""
        final = self.path(rel)
        if self.local:
            tmp = self._local_temp(final, data)
            try:
                os.link(tmp, final)  # atomic and exclusive: complete content or nothing
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            _fsync_dir(os.path.dirname(final))
            return True
        try:
            self.fs.pipe_file(final, data, mode="create")
        except FileExistsError:
            return False
        return True

    def create_json(self, rel: str, obj: Any) -> bool:
        return self.create_exclusive(rel, _json_bytes(obj))

    def publish(self, rel: str, data: bytes) -> bytes:
        """Publish a data file exclusively; return the bytes now under that name.

        When an earlier attempt already published the name, its (complete) content is kept
        and returned, so whoever commits describes exactly what readers will find.
        """
        if self.create_exclusive(rel, data):
            return data
        return self.read_bytes(rel)

    def _local_temp(self, final: str, data: bytes) -> str:
        directory = os.path.dirname(final)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(final)}.", suffix=f".{uuid.uuid4().hex[:8]}"
        )
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

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


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
