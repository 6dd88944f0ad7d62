"""Folder exports published whole, and what killed exports leave behind.

A folder export (``hf``, ``pylate``) is many files; a reader such as
``datasets.load_dataset`` must never find a part of one under the final name (a killed
export would read as a smaller dataset).

* Local disk: the folder is built beside the final name, as ``.<name>.partial-<id>/``, and
  renamed into place when complete. An existing export of the same name is first renamed
  aside (``.<name>.old-<id>/``) and removed after: a kill in between leaves no folder under
  the final name, never a mixed one.
* Object stores have no rename: the files are written in place and the dataset card
  (``README.md``) last, so **a folder without README.md is an unfinished export**. A new
  export removes the old card first, then the old data files, before writing.

:func:`remove_leftovers` deletes what killed exports of one target left in its parent
folder: ``.<name>.<random>`` temp files (:func:`rank1_batch.io.fs.open_temp_beside`) and
partial or old folders. It runs at the start of every export of that target; two exports of
one target must not run at once.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator, Sequence

from rank1_batch.io.fs import fsync_dir
from rank1_batch.io.store import Store

CARD = "README.md"
SIDECARS = ("README.md", "labels.json")


def remove_leftovers(parent: Store, name: str) -> int:
    """Delete ``.<name>.*`` entries (temp files, partial and old folders) of killed exports of
    ``name`` in local folder ``parent``; return how many. Object stores: none are left
    (one-file exports are uploaded whole from a local temp file)."""
    if not parent.local or not os.path.isdir(parent.root):
        return 0
    removed = 0
    for entry in os.scandir(parent.root):
        if not entry.name.startswith(f".{name}."):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


def _is_export(files: Sequence[str], configs: Sequence[str]) -> bool:
    """Whether every file (relative to the folder) is one an export with ``configs`` writes:
    the card, ``labels.json``, ``<config>/*.parquet`` (and hidden temp files beside them)."""
    for rel in files:
        head, _, base = rel.replace(os.sep, "/").rpartition("/")
        if not head and base in SIDECARS:
            continue
        if head in configs and (base.endswith(".parquet") or base.startswith(".")):
            continue
        return False
    return True


def _local_files(root: str) -> list[str]:
    return [
        os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names
    ]


def _refuse(uri: str) -> ValueError:
    return ValueError(
        f"{uri} exists and holds files an export does not write; not replacing it: "
        "choose another --out or remove it"
    )


@contextlib.contextmanager
def published_folder(parent: Store, name: str, configs: Sequence[str]) -> Iterator[Store]:
    """A store to write folder export ``parent/name`` into; published whole on exit (see the
    module docstring). Callers write the card (``README.md``) last. An exception leaves the
    final name as it was (local) or without a card (object store)."""
    uri = parent.uri.rstrip("/") + "/" + name
    remove_leftovers(parent, name)
    if not parent.local:
        folder = Store(uri, parent.storage)
        found = [posixpath.relpath(p, folder.root) for p in folder.fs.find(folder.root)]
        if not _is_export(found, configs):
            raise _refuse(uri)
        folder.delete(CARD)  # from here on the old export reads as unfinished
        for rel in found:
            folder.delete(rel)
        yield folder
        return
    final = parent.path(name)
    if os.path.lexists(final) and not (
        os.path.isdir(final) and _is_export(_local_files(final), configs)
    ):
        raise _refuse(uri)
    partial = parent.path(f".{name}.partial-{uuid.uuid4().hex[:12]}")
    os.makedirs(partial)
    try:
        yield Store(partial, parent.storage)
        old = None
        if os.path.lexists(final):
            old = parent.path(f".{name}.old-{uuid.uuid4().hex[:12]}")
            os.rename(final, old)
        os.rename(partial, final)
        fsync_dir(parent.root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
