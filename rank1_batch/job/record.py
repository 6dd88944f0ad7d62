"""``job.json``: the resolved job, its fingerprint, and the claim of an output folder by one job.

The fingerprint hashes what determines results (:meth:`JobSpec.result_settings` and the input
listing); a resume with other such settings is refused, naming each changed setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from rank1_batch import __version__
from rank1_batch.io.layout import JOB_FILE
from rank1_batch.io.store import Store
from rank1_batch.job.spec import JobSpec

log = logging.getLogger(__name__)


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

    Returns True when this call created it. Raises :class:`FingerprintMismatch` naming every
    changed setting when the folder holds another job's results.
    """
    if store.create_json(JOB_FILE, record):
        return True
    old = store.read_json(JOB_FILE)
    if old.get("fingerprint") != record["fingerprint"]:
        from rank1_batch.job.resolve import as_resolved, model_fields

        settings = as_resolved(old.get("settings", {}), record["settings"])
        if settings == record["settings"]:
            log.warning(
                "%s: job.json was written before engine, device and dtype were resolved "
                "(%s); resuming as %s", store.uri, model_fields(old.get("settings", {})),
                model_fields(record["settings"]),
            )  # fmt: skip
            return False
        changes = _diff(settings, record["settings"]) or ["fingerprint"]
        raise FingerprintMismatch(
            f"{store.uri} holds results of a different job; changed: {'; '.join(changes)}. "
            "Use a new output location (or delete this one) to run with these settings."
        )
    return False
