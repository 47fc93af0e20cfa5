"""The errors of the fleet cache tier's transport (``remote/``).

Every one is a ``RunnerkeepError``, so no traceback reaches a user, and every message is one
line that names the registry (its URL as configured, which never holds credentials) and what
to do. No message ever holds the password or an ``Authorization`` header: the client builds
messages from the status, the registry's error code and an escaped, shortened excerpt of its
error text, never from what it sent.

``status`` is the HTTP status when there was an answer (else None) and ``code`` the first
Distribution error code of the answer (``BLOB_UNKNOWN``, ``DIGEST_INVALID``, ...) or None, so
callers can branch without parsing the text.
"""

from __future__ import annotations

from ..errors import EXIT_CACHE_MISS, RunnerkeepError


class RemoteError(RunnerkeepError):
    """The registry refused or failed an operation (base of the errors below)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class RemoteMiss(RemoteError):
    """The registry has no such blob, manifest, tag or repository (404)."""

    exit_code = EXIT_CACHE_MISS


class RemoteAuthError(RemoteError):
    """401/403: no or wrong credentials, or no rights for the operation."""


class RemoteUnavailable(RemoteError):
    """The registry cannot be reached or used now: refused, DNS, timeout, too slow, TLS
    failure, a dropped connection, 5xx, 429."""


class RemoteReadOnly(RemoteUnavailable):
    """A write answered 405 with ``Allow: GET, HEAD``: the registry is in read-only mode (its
    garbage-collection window) or is a pull-only endpoint."""


class RemoteDataError(RemoteError):
    """The registry's answer cannot be used: malformed, too big, or a digest that does not
    match the bytes."""

    exit_code = EXIT_CACHE_MISS
