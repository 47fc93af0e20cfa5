"""The registry's basic-auth credentials, read from a file only (never argv, env or config).

The file (``cache.remote.credentials_file``) holds ``USER:PASSWORD`` on one line (a trailing
newline is fine; the password may contain ':'). It must be a regular file (not a symlink,
FIFO or device), owned by root or by the reader, with no permission for other users and no
group write: ``root:runnerkeep 0640`` lets the store's owner (the cache service) read it,
``0600`` keeps it to its owner. Anything else is a ConfigError naming the file and the fix,
never the file's content.

``Credentials`` never shows the password: not in ``repr``, ``str`` or ``as_dict``.

``read_protected_file`` is the one reader of the fleet tier's files: the credentials file
(secret: no permission for other, no group write) and the CA file (a trust root: writable by
nobody but its owner, readable by all).
"""

from __future__ import annotations

import os
import stat

from .. import statefile
from ..errors import ConfigError

MAX_CREDENTIALS_BYTES = 4096
# A CA bundle of a few hundred certificates fits; a file larger than this is not one.
MAX_CA_BYTES = 1 << 20


class Credentials:
    """A user and password; every rendering masks the password."""

    __slots__ = ("password", "user")

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***')"

    __str__ = __repr__

    def as_dict(self) -> dict[str, str]:
        """For ``--json`` output and events: the user only."""
        return {"user": self.user}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.user, self.password) == (other.user, other.password)

    def __hash__(self) -> int:
        return hash(self.user)

    def __reduce__(self) -> tuple:
        # Pickling would be the one way a password travels (e.g. to a child): refuse it.
        raise TypeError("Credentials are not picklable")


def read_credentials(path: str, what: str = "cache.remote.credentials_file") -> Credentials:
    """The credentials in ``path``; ConfigError (naming ``what``, the file and the fix) when
    the file is missing, unsafe or not one ``USER:PASSWORD`` line."""
    return _parse(read_protected_file(path, what, MAX_CREDENTIALS_BYTES, secret=True), path, what)


def read_protected_file(path: str, what: str, limit: int, *, secret: bool) -> bytes:
    """The content of ``path`` (at most ``limit`` bytes), opened without following a symlink
    and without blocking on a FIFO; ConfigError (naming ``what``, the file and the fix, never
    the content) unless it is a regular file owned by root or the reader that nobody else may
    write (``secret``: nor read, except its group)."""
    mode_fix = "600" if secret else "644"
    fix = f"run: chown root:root {path} && chmod {mode_fix} {path}"
    try:
        data, rest, info = statefile.read_regular(path, limit)
    except FileNotFoundError:
        hint = "create it (USER:PASSWORD, mode 600)" if secret else "copy the CA there or unset it"
        raise ConfigError(f"{what}: {path} does not exist; {hint}") from None
    except statefile.Unreadable as exc:
        raise ConfigError(
            f"{what}: {path} is {exc}, not a regular file; point {what} at a regular file "
            f"owned by root with mode {mode_fix}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    _check_owner_and_mode(path, info, what, fix, secret)
    if rest:
        raise ConfigError(f"{what}: {path} is larger than {limit} bytes")
    return data


def _check_owner_and_mode(
    path: str, info: os.stat_result, what: str, fix: str, secret: bool
) -> None:
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"{what}: {path} is owned by uid {info.st_uid}, not root; {fix}")
    mode = stat.S_IMODE(info.st_mode)
    if secret and mode & 0o007:
        raise ConfigError(
            f"{what}: {path} is accessible to other users (mode {mode:04o}); run: chmod 600 {path}"
            " (or 640 with the runnerkeep group)"
        )
    if mode & 0o022:
        whom = "its group" if mode & 0o020 else "other users"
        raise ConfigError(
            f"{what}: {path} is writable by {whom} (mode {mode:04o}); "
            f"run: chmod {'600' if secret else '644'} {path}"
        )


def _parse(data: bytes, path: str, what: str) -> Credentials:
    shape = f"{what}: {path} must hold one line USER:PASSWORD"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{shape} (it is not UTF-8 text)") from None
    if text.endswith("\n"):
        text = text[:-1]
    if text.endswith("\r"):
        text = text[:-1]
    if "\n" in text or "\r" in text:
        raise ConfigError(f"{shape} (it has more than one line)")
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise ConfigError(f"{shape} (no user, no ':' or no password)")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"{shape} (it holds control characters)")
    return Credentials(user, password)
