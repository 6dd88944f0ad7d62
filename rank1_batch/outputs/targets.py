"""Where an export is written: a target file or folder under the output (or elsewhere, when the
job allows), written through a temporary file and published whole; the shared byte helpers."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from rank1_batch.io.fs import open_temp_beside
from rank1_batch.io.store import Store


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


@contextlib.contextmanager
def streamed_file(parent: Store, name: str) -> Iterator[IO[bytes]]:
    """A file written piece by piece and published whole, or not at all.

    Local: a temporary file beside the target, fsynced, then renamed over it. Object store: a
    local temporary file (disk, not memory), uploaded in one put when complete: an object
    store never shows a partly uploaded object. An exception leaves the target untouched.
    """
    if parent.local:
        final = parent.path(name)
        fd, tmp = open_temp_beside(final)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    with tempfile.NamedTemporaryFile(prefix="rank1-export-") as fh:
        yield fh
        fh.flush()
        parent.put_file(fh.name, name)


class Target:
    """Where an export goes: a file (parent store + name) or a folder (its own store)."""

    def __init__(self, output: Store, out: str | None, default: str) -> None:
        # URIs, not Store.path(): a bare object-store path would be read as a local one.
        self.uri = (out or output.uri.rstrip("/") + "/" + default).rstrip("/")
        self.folder = Store(self.uri, output.storage)
        self.parent = Store(posixpath.dirname(self.uri) or ".", output.storage)
        self.name = posixpath.basename(self.uri)

    def write_sidecar(self, obj: Any) -> str:
        self.parent.write_atomic(self.name + ".labels.json", json_bytes(obj))
        return self.uri + ".labels.json"  # spelt like ``out``: relative stays relative


def dataset_card(title: str, configs: dict[str, str], body: str, *, default: str) -> str:
    """A README.md whose YAML ``configs`` lets ``datasets.load_dataset(folder, name)`` work."""
    lines = ["---", "configs:"]
    for name, glob in configs.items():
        lines += [f"- config_name: {name}"]
        lines += ["  default: true"] if name == default else []
        lines += ["  data_files:", "  - split: train", f"    path: {glob}"]
    lines += ["---", "", f"# {title}", "", body.strip(), ""]
    return "\n".join(lines)
