"""``job.json``: the resolved job, its fingerprint, and the claim of an output folder by one job.

The fingerprint hashes what determines results (:meth:`JobSpec.result_settings` and the input
listing); a resume with other such settings is refused, naming each changed setting, and so
is a resume of an output written in another layout (:data:`rank1_batch.io.layout.LAYOUT_VERSION`).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from rank1_batch import __version__
from rank1_batch.io.layout import JOB_FILE, LAYOUT_VERSION, read_job
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec


class FingerprintMismatch(RuntimeError):
    """The output folder belongs to a job with different result-determining settings."""


def job_record(spec: JobSpec, input_listing: list[dict[str, Any]]) -> dict[str, Any]:
    """Contents of ``job.json``: resolved spec, fingerprinted settings and the fingerprint.

    ``engine``, ``device`` and ``dtype`` are hashed as resolved for the scoring actors
    (:func:`rank1_batch.job.resolve.resolve_spec`; a spec resolved already is kept), so a
    resume that would resolve ``auto`` otherwise is refused, naming the setting.
    """
    from rank1_batch.job.resolve import resolve_spec

    spec = resolve_spec(spec)
    settings = {"job": spec.result_settings(), "input": input_listing}
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return {
        "fingerprint": hashlib.sha256(blob).hexdigest(),
        "settings": settings,
        "spec": spec.model_dump(mode="json"),
        "rank1_batch_version": __version__,
        "layout_version": LAYOUT_VERSION,
        "created_at": time.time(),
    }


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if old != new:
        if isinstance(old, list) and isinstance(new, list):
            return [f"{prefix} changed (files or sizes differ)"]
        return [f"{prefix}: {old!r} -> {new!r}"]
    return []


def claim_output(store: Store, record: dict[str, Any]) -> bool:
    """Write ``job.json`` (create-only) or check that the existing one matches.

    Returns True when this call created it. Raises
    :class:`~rank1_batch.io.layout.LayoutVersionError` when the folder was written in another
    layout, :class:`FingerprintMismatch` naming every changed setting when it holds another
    job's results.
    """
    if store.create_json(JOB_FILE, record):
        return True
    old = read_job(store)
    if old.get("fingerprint") != record["fingerprint"]:
        changes = _diff(old.get("settings", {}), record["settings"]) or ["fingerprint"]
        raise FingerprintMismatch(
            f"{store.uri} holds results of a different job; changed: {'; '.join(changes)}. "
            "Use a new output location (or delete this one) to run with these settings."
        )
    return False
