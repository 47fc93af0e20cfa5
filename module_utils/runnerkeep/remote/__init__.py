"""The fleet cache tier's transport: an OCI Distribution client (stdlib only) and its config.

- ``remote_config``: ``RemoteSettings`` and ``remote_settings`` (the ``cache.remote`` section,
  ``--remote URL``, ``--no-remote``).
- ``credentials``: ``read_credentials`` (``USER:PASSWORD`` file, mode and owner checked).
- ``registry``: ``RegistryClient`` (blobs, uploads, manifests, tags, deletes), ``BlobReader``,
  ``Manifest``.
- ``errors``: ``RemoteError`` and its kinds (miss, auth, unavailable, read-only, bad data).
- ``transport``: bounded connections (resolve, connect, TLS, watchdog).

``remote/`` knows nothing of the cache store: ``cache/remote_*.py`` import it, never the
reverse.
"""

from __future__ import annotations

from .credentials import Credentials, read_credentials
from .errors import (
    RemoteAuthError,
    RemoteDataError,
    RemoteError,
    RemoteMiss,
    RemoteReadOnly,
    RemoteUnavailable,
)
from .registry import BlobReader, Manifest, RegistryClient
from .remote_config import RemoteSettings, remote_settings

__all__ = [
    "BlobReader",
    "Credentials",
    "Manifest",
    "RegistryClient",
    "RemoteAuthError",
    "RemoteDataError",
    "RemoteError",
    "RemoteMiss",
    "RemoteReadOnly",
    "RemoteSettings",
    "RemoteUnavailable",
    "read_credentials",
    "remote_settings",
]
