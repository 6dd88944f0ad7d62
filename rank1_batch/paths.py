"""Path safety: which input and output URIs a job may name.

fsspec opens almost anything: dozens of protocols, ``a::b`` URL chaining (a filesystem
layered over another), and local paths that climb out of a folder with ``..``. A job file is
often written by someone other than the person running it, so by default only plain local
paths, ``file://`` and the object stores this project supports are accepted, with no ``..``
segment, no chaining and no control characters. ``storage.allow_unsafe_paths: true`` lifts
every rule for a job that really needs it (say a ``memory://`` or ``zip::`` input in a test).
"""

from __future__ import annotations

import re

# Object stores and local disk. ``hf`` (Hugging Face Hub files) is read-only: inputs only.
OUTPUT_SCHEMES = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
INPUT_SCHEMES = OUTPUT_SCHEMES | {"hf"}

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
