"""Secrets stay secret: URLs redacted in everything runnerkeep says, the webhook URL in a
root-only file.

A webhook URL often carries its credential (``https://user:token@host/...``, ``?token=...``,
``/api/webhooks/ID/TOKEN``).
Everything the watch produces is read by people and programs that must not learn it: the
journal (stdout of the unit), syslog, the metrics textfile, ``--json`` output and the state
dir (world-readable by design). So every message that may hold the URL goes through
``redact_text`` with the URL's secrets, and a URL shown on purpose goes through ``redact_url``.

``disk.webhook_url_file`` names a file (``/etc/runnerkeep/secrets.d/...``, root 0600) whose
first line is the URL: only the root watch reads it, through the safe reader (no symlink, no
FIFO, bounded), and refuses it unless it is a regular file owned by root (or the reader) with
no permission for group or other. The job hooks never call ``webhook_url``.

What a peer says (a registry's or a proxy's error text) may quote the credentials it was
sent, whole or cut short. ``peer_excerpt`` masks them in the RAW text first, then escapes it
and cuts it to length: masking after escaping would miss a password whose ``\\`` or quotes
the escape changed, masking after cutting would leave the cut-off prefix readable.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import statefile
from .errors import ConfigError
from .schema import check_option
from .textutil import escape_text

MASK = "***"
SECRET_FILE_BOUND = 4096
# Shorter fragments (a query value "1") would mask ordinary words in messages.
MIN_SECRET_LEN = 4
# Path segments at least this long are tokens (Slack 24, Mattermost 26, Discord 68 characters).
MIN_TOKEN_SEGMENT = 16


def redact_url(url: Any) -> str:
    """``scheme://host[:port]`` and nothing more of it: userinfo, a path, query or fragment
    each show as ``***`` (``https://***@hooks.example/***``).

    Webhook services put the token wherever they like: userinfo, query, or the path itself
    (Slack, Discord, Mattermost: ``/api/webhooks/ID/TOKEN``). Only where the URL points is
    safe to show.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK  # not even a URL: nothing of it is safe to show
    if not parts.scheme or not host:
        return MASK
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    rest = ""
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        rest = f"/{MASK}"
    return f"{parts.scheme}://{netloc}{rest}"


def url_secrets(url: Any) -> list[str]:
    """What of ``url`` must never be shown: the URL itself, the URL without its fragment and
    without its query, its path and each long path segment, its userinfo and password, its
    query, fragment and each query value (raw and percent-decoded), longest first."""
    if not url:
        return []
    text = str(url)
    found = [text, text.partition("#")[0], text.partition("#")[0].partition("?")[0]]
    try:
        parts = urlsplit(text)
    except ValueError:
        return _longest_first(found)
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    # A user name alone is not masked in text ("alert" would mask "alerts"); its password is,
    # and a userinfo without a password is a token.
    found += [userinfo, userinfo.partition(":")[2], parts.query, parts.fragment]
    if parts.path not in ("", "/"):
        found.append(parts.path)
        # A path token quoted on its own (an error naming "TOKEN") is still masked; short
        # segments ("api", "hooks") are words, not tokens.
        found += [seg for seg in parts.path.split("/") if len(seg) >= MIN_TOKEN_SEGMENT]
    for raw in parts.query.split("&"):
        found.append(raw.partition("=")[2])
    found += [value for _key, value in parse_qsl(parts.query, keep_blank_values=True)]
    found += [unquote(s) for s in list(found)]
    return _longest_first(found)


def _longest_first(found: Iterable[str]) -> list[str]:
    # Longest first: the whole URL is masked before a part of it could split it.
    unique = {s for s in found if len(s) >= MIN_SECRET_LEN}
    return sorted(unique, key=len, reverse=True)


def redact_text(text: Any, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    result = str(text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        result = result.replace(secret, MASK)
    return result


# An Authorization value a peer quotes back ("Basic dXNlcjpw...", "Bearer eyJ..."), whole or
# cut: whatever follows the scheme is a credential.
_AUTH_VALUE_RE = re.compile(r"(?i)(basic|bearer)(\s+|=|:\s*)[A-Za-z0-9+/=._~-]{8,}")
# A cut-off piece of a secret this long is masked wherever it stands; a shorter one only at
# the end of the text (where a peer's own cut leaves it).
MIN_PIECE = 8


def peer_excerpt(text: Any, secrets: Iterable[str], limit: int = 160) -> str:
    """What a peer said, safe to show on one line: every secret (whole, or a piece of one
    cut short by the peer) and any quoted Authorization value masked in the raw text, then
    escaped (``textutil.escape_text``) and cut to ``limit`` characters."""
    secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
    raw = redact_text(text, secrets)
    raw = _AUTH_VALUE_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", raw)
    for secret in secrets:
        raw = _mask_pieces(raw, secret)
    shown = redact_text(escape_text(raw), [escape_text(s) for s in secrets])
    return shown[:limit]


def _mask_pieces(text: str, secret: str) -> str:
    """``text`` with each run of ``secret``'s leading characters masked: MIN_PIECE or more
    anywhere, fewer (down to MIN_SECRET_LEN) at the very end."""
    head = secret[: min(MIN_PIECE, len(secret))]
    out, start = [], 0
    while True:
        found = text.find(head, start) if len(head) >= MIN_PIECE else -1
        if found < 0:
            break
        end = found + len(head)
        while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
            end += 1
        out += [text[start:found], MASK]
        start = end
    rest = text[start:]
    for size in range(min(len(secret), len(rest)), MIN_SECRET_LEN - 1, -1):
        if rest.endswith(secret[:size]):
            return "".join(out) + rest[:-size] + MASK
    return "".join(out) + rest


def redact_data(data: Any, secrets: Iterable[str]) -> Any:
    """A copy of a JSON-like value with every string redacted (``--json`` output, state)."""
    secrets = list(secrets)
    if not secrets:
        return data
    if isinstance(data, str):
        return redact_text(data, secrets)
    if isinstance(data, dict):
        return {k: redact_data(v, secrets) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v, secrets) for v in data]
    return data


def read_secret_file(path: str, what: str) -> str:
    """The first line of a secret file; ConfigError (naming the file and the fix) unless it is
    a regular file owned by root (or by the reader) that neither group nor other may use."""
    fix = f"chown root:root {path} && chmod 600 {path}"
    try:
        data, _rest, info = statefile.read_regular(path, SECRET_FILE_BOUND)
    except FileNotFoundError:
        raise ConfigError(
            f"{what}: {path} does not exist; create it (mode 600) or unset it"
        ) from None
    except statefile.Unreadable as exc:
        # chown/chmod of a device or FIFO would not help and could break it (/dev/zero).
        raise ConfigError(
            f"{what}: {path} is {exc}, not a regular file; point {what} at a regular file "
            "owned by root with mode 600"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"{what}: {path} is owned by uid {info.st_uid}, not root; {fix}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"{what}: {path} is accessible to group or other "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[0].strip() if lines else ""


def webhook_url(settings: dict[str, Any], source: str = "the runnerkeep config") -> str | None:
    """The webhook URL: ``disk.webhook_url``, or the first line of ``disk.webhook_url_file``
    (root watch only). Both set is a ConfigError, and so is an unusable file or URL."""
    inline = settings.get("webhook_url") or None
    path = settings.get("webhook_url_file") or None
    if inline and path:
        raise ConfigError(
            "disk.webhook_url and disk.webhook_url_file are both set; keep only "
            f"disk.webhook_url_file ({path}) so the URL stays out of the config"
        )
    if not path:
        return inline
    url = read_secret_file(path, "disk.webhook_url_file")
    if not url:
        raise ConfigError(f"disk.webhook_url_file: {path} is empty; its first line is the URL")
    check_option("disk", "webhook_url", url, path)
    return url
