"""Entry MACs: HMAC-SHA256 of an entry's canonical JSON with a host key only the store's owner
can read.

The plain checksum of an entry only catches accidents: anyone who can write the file can
recompute it. The MAC binds every field (the scope included) to a key jobs cannot read, so an
entry edited in place, copied under another name or forged from scratch is a CorruptEntry.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import stat
from typing import Any

from ..errors import ConfigError

DEFAULT_KEY_FILE = "/etc/runnerkeep/cache.key"
MAC_PREFIX = "hmac-sha256:"
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096
# Fields that are not part of the signed body: the checksum covers the mac, not the reverse.
UNSIGNED_FIELDS = ("checksum", "mac")


class KeyUnavailable(ConfigError):
    """The key file exists but this user cannot use it: reading entries unverified would accept
    forgeries, writing them unsigned would make misses, so the store is not used directly."""


def load_entry_key(path: str | None) -> bytes | None:
    """The key bytes; None when ``path`` is None or no key file exists (entries are unsigned,
    as on a single-user machine). KeyUnavailable when it exists but cannot be used."""
    if not path:
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise KeyUnavailable(
                f"the cache key {path} is not readable by this user: use the store through "
                "the cache service (leave out --no-service), or run as its owner"
            ) from None
        raise KeyUnavailable(
            f"the cache key {path} cannot be opened ({exc.strerror}): it must be a regular file"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_BYTES:
            raise KeyUnavailable(
                f"the cache key {path} is not a regular file of at most {MAX_KEY_BYTES} bytes"
            )
        data = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    if not MIN_KEY_BYTES <= len(data) <= MAX_KEY_BYTES:
        raise KeyUnavailable(
            f"the cache key {path} holds {len(data)} bytes; it needs {MIN_KEY_BYTES} to "
            f"{MAX_KEY_BYTES} (the image_cache role writes 32 random bytes)"
        )
    return data


def canonical_body(body: dict[str, Any]) -> bytes:
    clean = {k: v for k, v in body.items() if k not in UNSIGNED_FIELDS}
    return json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()


def entry_mac(body: dict[str, Any], key: bytes) -> str:
    """``hmac-sha256:HEX`` over the canonical body (every field but checksum and mac)."""
    return MAC_PREFIX + hmac.new(key, canonical_body(body), hashlib.sha256).hexdigest()


def mac_matches(body: dict[str, Any], key: bytes) -> bool:
    """Whether the body's ``mac`` is the one this key gives (constant-time compare)."""
    claimed = body.get("mac")
    if not isinstance(claimed, str):
        return False
    try:
        expected = entry_mac(body, key)
    except (ValueError, TypeError, RecursionError):
        return False
    return hmac.compare_digest(
        claimed.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
    )
