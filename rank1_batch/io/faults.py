"""Which storage failures a retry can fix, which mean a full device, and which mean "exists".

:func:`is_transient` decides what :meth:`rank1_batch.io.store.Store._call` (the one retry
layer) retries: lost connections, timeouts, HTTP 5xx, throttling. Everything else is raised at
once. Kept apart from :mod:`rank1_batch.io.store` so the rules can be read and tested alone.
"""

from __future__ import annotations

import errno


class StorageError(RuntimeError):
    """Storage failed in a way retrying cannot fix (no such bucket, access denied)."""


class OutputUnwritable(StorageError):
    """The output's device is full or read-only (ENOSPC, EDQUOT, EROFS): no retry can help,
    and no shard can commit, so the job ends at once naming the output."""


# errno values of failures that a retry can fix. s3fs maps SlowDown and 503 to EBUSY, 500 to
# EREMOTEIO; the rest are the socket-level ones.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EBUSY", "EREMOTEIO", "EAGAIN", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED",
        "ECONNREFUSED", "EPIPE", "ENETUNREACH", "ENETDOWN", "EHOSTUNREACH", "EINTR",
    )
    if hasattr(errno, name)
)  # fmt: skip
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# Exception classes of botocore, aiohttp, urllib3 and fsspec that are lost connections or
# timeouts (by name: none of these packages is imported for it).
TRANSIENT_CLASSES = frozenset(
    {
        "HTTPClientError", "ConnectionError", "EndpointConnectionError",
        "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError", "ProxyConnectionError",
        "ResponseStreamingError", "IncompleteReadError", "IncompleteRead", "ProtocolError",
        "ClientConnectionError", "ClientOSError", "ServerDisconnectedError",
        "ServerTimeoutError", "ClientPayloadError", "FSTimeoutError",
    }
)  # fmt: skip
# S3 error codes a retry can fix, whatever HTTP status they come with.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
        "ServiceUnavailable", "RequestLimitExceeded", "ConditionalRequestConflict",
        "OperationAborted",
    }
)  # fmt: skip


# Errors that answer a question about a file (it is missing, it exists, it is a folder):
# never retried, and raised to the caller as they are.
FILE_ANSWERS = FileNotFoundError | FileExistsError | IsADirectoryError | NotADirectoryError


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def is_full(exc: BaseException) -> bool:
    """The device is full or read-only (ENOSPC, EDQUOT, EROFS) anywhere in the chain."""
    return any(isinstance(e, OSError) and e.errno in FULL_ERRNOS for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether retrying can fix ``exc``: a lost connection, a timeout, an HTTP 5xx or a
    throttling answer. Everything else (4xx, missing files, denied access, a full device,
    bad arguments) is permanent: retrying it only delays the one line that explains it."""
    if isinstance(exc, FILE_ANSWERS | PermissionError | StorageError) or is_full(exc):
        return False
    for e in _chain(exc):
        if isinstance(e, TimeoutError | ConnectionError):  # builtins: resets, refused, ...
            return True
        if any(c.__name__ in TRANSIENT_CLASSES for c in type(e).__mro__[:-1]):
            return True
        response = getattr(e, "response", None)
        if isinstance(response, dict):  # botocore's ClientError
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            return code in TRANSIENT_CODES or int(status) >= 500
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def missing_bucket(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, FileNotFoundError) and ("bucket" in text and "not exist" in text)


def is_precondition_failed(exc: BaseException) -> bool:
    """An HTTP 412 (PreconditionFailed) in any shape, anywhere in the exception's chain.

    s3fs maps a 412 to FileExistsError only when the response echoes ``Condition:
    If-None-Match`` (AWS does); S3-compatible servers that do not echo it surface as an EINVAL
    OSError around botocore's ClientError. On a create-only write every 412 means "exists".
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            error = response.get("Error") or {}
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if error.get("Code") == "PreconditionFailed" or status == 412:
                return True
        if "PreconditionFailed" in str(current) or "Precondition Failed" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_storage_failure(exc: BaseException) -> bool:
    """An object store's failure (an OSError or a botocore/aiohttp error) that is no answer
    about a file: a 4xx, or a transient error that outlived the retries. It reaches the user
    as one :class:`StorageError` line naming the URI and the operation."""
    if isinstance(exc, FILE_ANSWERS):
        return False
    module = type(exc).__module__
    return isinstance(exc, OSError) or module.startswith(("botocore", "aiobotocore", "aiohttp"))
