"""Path safety: which input and output URIs a job may name.

fsspec opens almost anything: dozens of protocols, ``a::b`` URL chaining (a filesystem
layered over another), and local paths that climb out of a folder with ``..``. A job file is
often written by someone other than the person running it, so by default only plain local
paths, ``file://`` and the object stores this project supports are accepted, with no ``..``
segment, no chaining and no control characters. The rules cover every URI a job names (input
path, queries, corpus, the model when it is a path, reuse sources, output);
``storage.allow_unsafe_paths: true`` lifts them for a job that really needs it (say a
``memory://`` or ``zip::`` input in a test).

Names read back from an output folder (the manifest's shard ids and files, the shard names of
commit markers) are joined into paths too, so they must be plain ``shard-NNNNN`` names
(:func:`check_manifest`, :func:`check_shard_name`); no option lifts that.
"""

from __future__ import annotations

import re

# The one list of schemes: output backends whose create-only write is atomic, which the
# commit protocol needs (local disk: temp file + os.link; S3 through s3fs >= 2025.7:
# If-None-Match: *). fsspec's create for other backends (gs://, az://, ...) checks and then
# writes: not exclusive. rank1_batch.io.store refuses any other backend with this same list.
EXCLUSIVE_SCHEMES = ("file", "local", "s3", "s3a")
OUTPUT_SCHEMES = frozenset(EXCLUSIVE_SCHEMES)
# Inputs (and models, reuse sources) are only read, so stores without an exclusive create
# may be read too: Google Cloud Storage, Azure, and ``hf`` (Hugging Face Hub files).
READ_ONLY_SCHEMES = ("gs", "gcs", "az", "abfs", "abfss", "hf")
INPUT_SCHEMES = OUTPUT_SCHEMES | set(READ_ONLY_SCHEMES)
# What prepare names shards and rejected-row files (rank1_batch.io.layout.shard_name, grouped).
SHARD_NAME = re.compile(r"shard-[0-9]{5,}")
REJECTED_FILE = re.compile(r"rejected/(shard|unit)-[0-9]{5,}\.parquet")
DUPLICATE_FILE = re.compile(r"duplicates/(shard|unit)-[0-9]{5,}\.parquet")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnsafePath(ValueError):
    """A URI breaks a path-safety rule; the message names the field and the rule."""


def scheme_of(uri: str) -> str:
    """The URI's scheme, lower-cased; ``""`` for a plain local path."""
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else ""


def check_uri(uri: str, field: str, *, output: bool, allow_unsafe: bool = False) -> None:
    """Raise :class:`UnsafePath` naming ``field`` when ``uri`` breaks a rule (unless allowed)."""
    if allow_unsafe:
        return
    hint = "; set storage.allow_unsafe_paths: true to allow it"
    if not uri.strip():
        raise UnsafePath(f"{field}: empty path")
    if _CONTROL.search(uri):
        raise UnsafePath(f"{field}: {uri!r} contains control characters{hint}")
    if "::" in uri:
        raise UnsafePath(f"{field}: {uri!r} chains filesystems with '::'{hint}")
    scheme = scheme_of(uri)
    allowed = OUTPUT_SCHEMES if output else INPUT_SCHEMES
    if scheme and scheme not in allowed:
        raise UnsafePath(
            f"{field}: {uri!r}: scheme {scheme!r} is not allowed "
            f"(allowed: local paths, {', '.join(sorted(allowed))}){hint}"
        )
    rest = uri[len(scheme) + 3 :] if scheme else uri
    if ".." in re.split(r"[/\\]", rest):
        raise UnsafePath(f"{field}: {uri!r} contains a '..' segment{hint}")


def check_shard_name(name: object, where: str) -> str:
    """``name`` when it is a plain ``shard-NNNNN`` name, else :class:`UnsafePath`."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise UnsafePath(f"{where}: shard {name!r} is not a plain shard-NNNNN name; refused")
    return name


def check_manifest(manifest: dict[str, object], where: str) -> None:
    """Refuse a manifest naming a shard or file other than prepare's own names (each shard
    ``shard-NNNNN`` at ``pairs/shard-NNNNN.parquet``), before any of them is joined."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise UnsafePath(f"{where}: no shard list; refused")
    for entry in shards:
        if not isinstance(entry, dict):
            raise UnsafePath(f"{where}: shard entry {entry!r} is not a mapping; refused")
        name = check_shard_name(entry.get("id"), where)
        if entry.get("path", f"pairs/{name}.parquet") != f"pairs/{name}.parquet":
            raise UnsafePath(
                f"{where}: shard {name} path {entry['path']!r} is not pairs/{name}.parquet; refused"
            )
    for key, pattern, folder in (
        ("rejected_files", REJECTED_FILE, "rejected"),
        ("duplicate_files", DUPLICATE_FILE, "duplicates"),
    ):
        named = manifest.get(key, [])
        for rel in named if isinstance(named, list) else [named]:
            if not isinstance(rel, str) or not pattern.fullmatch(rel):
                raise UnsafePath(f"{where}: {folder} file {rel!r} is not a {folder}/ name; refused")
