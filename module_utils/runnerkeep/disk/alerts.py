"""Alert channels: syslog/journal (always) and an optional JSON webhook.

Syslog goes through ``logger`` (util-linux; reaches journald or rsyslog; the message on its
stdin), else straight to the ``/dev/log`` socket, else stderr. The webhook is a POST of a JSON
body with a per-attempt timeout and a bounded number of retries, all within a deadline the
caller gives, so a dead endpoint never holds the watch longer than its own timeout.

urllib's timeout is per socket operation (a server dripping one byte a second never trips it)
and name lookup (getaddrinfo) cannot be timed out at all, so the POST runs in a child Python
process (``_SENDER``, standard library only) that the caller kills at the deadline: the
deadline covers lookup, connect, send and read of every attempt together. The URL goes to the
child on stdin (never in its argv, which every user can read in /proc), and what comes back is
redacted with the URL's secrets (``secrets.redact_text``): an error naming the URL cannot leak
its token into a message.

The body carries a Slack-compatible ``text`` (``slack_text``: the alert's message, one line,
``&<>`` escaped), so a Slack or Mattermost incoming webhook shows it as is. An optional header
(``disk.webhook_auth_header_file``: a root-only file like ``disk.webhook_url_file``, whose first
line is the ``Authorization`` value, e.g. ``Bearer TOKEN``, or a whole ``Name: value`` header)
goes with every POST, through the child's stdin like the URL, and is redacted like it. Redirects
are not followed: a credential (the header, or the URL's userinfo) must never be sent on to
another address.

URL and header are one ``WebhookTarget``, resolved together by ``webhook_target`` and posted
whole by ``post_to``: a caller that resolves only the URL would silently drop the credential
(every POST then a 401), so there is no way to hold one without the other.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..secrets import MIN_SECRET_LEN, read_secret_file, redact_data, url_secrets, webhook_url

PRIORITIES = {
    "ok": "notice",
    "warning": "warning",
    "critical": "crit",
    "emergency": "alert",
    "error": "err",
    "info": "info",
}
_SYSLOG_CODES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_USER_FACILITY = 1


def syslog(message: str, severity: str = "info", tag: str = "runnerkeep") -> str:
    """Log one line; returns the channel used ("logger", "/dev/log" or "stderr").

    The message goes to ``logger`` on stdin, never on its argv: every user can read a
    process's argv in /proc/PID/cmdline, and a message may quote something secret that
    redaction missed.
    """
    priority = PRIORITIES.get(severity, severity)
    # logger makes one entry per stdin line: the message stays one entry.
    message = " ".join(str(message).splitlines())
    logger = shutil.which("logger")
    if logger:
        try:
            proc = subprocess.run(
                [logger, "-t", tag, "-p", f"user.{priority}"],
                input=message.encode("utf-8", errors="replace"),
                capture_output=True,
                timeout=5,
                check=False,
            )
            if proc.returncode == 0:
                return "logger"
        except (OSError, subprocess.TimeoutExpired):
            pass
    code = _USER_FACILITY * 8 + _SYSLOG_CODES.get(priority, 6)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.connect("/dev/log")
            sock.send(f"<{code}>{tag}: {message}".encode())
        return "/dev/log"
    except OSError:
        print(f"{tag}: {message}", file=sys.stderr)
        return "stderr"


# Runs in the child (``python -I -S -c``): self-contained, standard library only. It prints one
# "attempt" line as each attempt starts, so a killed child still tells how far it got, and the
# result as a JSON line at the end.
_SENDER = r"""
import base64, json, sys, time, urllib.error, urllib.parse, urllib.request

def split_auth(url):
    # urllib does not send a URL's userinfo: it becomes a Basic Authorization header.
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = ":".join([urllib.parse.unquote(user), urllib.parse.unquote(password)])
    header = "Basic " + base64.b64encode(token.encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=hostport)), {"Authorization": header}

class NoRedirect(urllib.request.HTTPRedirectHandler):
    # A credential must not follow a redirect to another address: a 3xx is a failure.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None

def send(url, data, timeout, retries, deadline, note, extra_headers=None):
    url, auth = split_auth(url)
    opener = urllib.request.build_opener(NoRedirect)
    attempts = 0
    error = None
    status = None
    for attempt in range(1 + max(0, retries)):
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            error = error or "no time left within the watch timeout"
            break
        attempts += 1
        note()
        request = urllib.request.Request(
            url, data=data, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "runnerkeep-disk-watch",
                     **auth, **(extra_headers or {})},
        )
        try:
            with opener.open(request, timeout=min(timeout, remaining)) as response:
                status = response.status
                response.read(65536)
            if 200 <= status < 300:
                return {"ok": True, "attempts": attempts, "status": status, "error": None}
            error = "HTTP %s" % status
        except urllib.error.HTTPError as exc:
            status = exc.code
            error = "HTTP %s" % exc.code
        except Exception as exc:
            reason = getattr(exc, "reason", exc)
            error = str(reason) or exc.__class__.__name__
        if attempt < retries:
            pause = min(0.5 * (2 ** attempt), deadline - time.monotonic() - 0.05)
            if pause <= 0:
                break
            time.sleep(pause)
    return {"ok": False, "attempts": attempts, "status": status, "error": error}

if __name__ == "__main__":
    job = json.loads(sys.stdin.buffer.read())
    def note():
        sys.stdout.write("attempt\n")
        sys.stdout.flush()
    result = send(job["url"], job["data"].encode(), job["timeout"], job["retries"],
                  time.monotonic() + job["budget"], note, job.get("headers"))
    sys.stdout.write(json.dumps(result) + "\n")
"""

# Time the child needs to start, and the parent to kill and reap it, within the deadline.
_CHILD_MARGIN = 0.15


def post_webhook(
    url: str,
    body: dict[str, Any],
    *,
    timeout: float,
    retries: int,
    deadline: float,
    auth_header: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """POST ``body`` as JSON, with a Slack-compatible ``text`` when it has a message
    (``with_text``) and ``auth_header`` (name, value) when given; at most ``1 + retries``
    attempts, never past ``deadline`` (a ``time.monotonic()`` value). Returns
    {"ok", "attempts", "status", "error"}, the error redacted."""
    headers = dict([auth_header]) if auth_header else {}
    result = _post(
        url, with_text(body), headers=headers, timeout=timeout, retries=retries, deadline=deadline
    )
    return redact_data(result, [*url_secrets(url), *header_secrets(auth_header)])


def post_to(
    target: WebhookTarget,
    body: dict[str, Any],
    *,
    timeout: float,
    retries: int,
    deadline: float,
) -> dict[str, Any]:
    """``post_webhook`` to a resolved target: its URL with its header, redacted with both."""
    return post_webhook(
        target.url,
        body,
        timeout=timeout,
        retries=retries,
        deadline=deadline,
        auth_header=target.auth_header,
    )


def _post(
    url: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    timeout: float,
    retries: int,
    deadline: float,
) -> dict[str, Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0.05:
        return _failed(0, None, "no time left within the watch timeout")
    job = {
        "url": url,
        "data": json.dumps(body, sort_keys=True),
        "headers": headers or {},
        "timeout": float(timeout),
        "retries": max(0, int(retries)),
        "budget": max(0.05, remaining - _CHILD_MARGIN),
    }
    if not sys.executable:
        return _post_in_process(job)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SENDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        return _failed(0, None, f"cannot start the webhook sender: {exc.strerror or exc}")
    timed_out = False
    try:
        out, _ = proc.communicate(
            json.dumps(job).encode(), timeout=max(0.01, deadline - time.monotonic())
        )
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate()
    return _child_result(out, timed_out, remaining)


def _child_result(out: bytes, timed_out: bool, budget: float) -> dict[str, Any]:
    lines = out.decode("utf-8", errors="replace").splitlines()
    attempts = sum(1 for line in lines if line == "attempt")
    if not timed_out and lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
        if isinstance(result, dict) and "ok" in result:
            return result
    if timed_out:
        return _failed(
            attempts, None, f"no answer within the watch timeout ({budget:.1f}s left for it)"
        )
    return _failed(attempts, None, "the webhook sender ended without a result")


def _failed(attempts: int, status: int | None, error: str) -> dict[str, Any]:
    return {"ok": False, "attempts": attempts, "status": status, "error": error}


def _post_in_process(job: dict[str, Any]) -> dict[str, Any]:
    """No interpreter to start (embedded Python): send here, bounded per socket operation only."""
    namespace: dict[str, Any] = {"__name__": "runnerkeep_webhook_sender"}
    exec(_SENDER, namespace)  # our own constant, never input
    return namespace["send"](
        job["url"],
        job["data"].encode(),
        job["timeout"],
        job["retries"],
        time.monotonic() + job["budget"],
        lambda: None,
        job["headers"],
    )


# --- the body's Slack-compatible text -------------------------------------------------------

# Slack and Mattermost render these emoji codes; other receivers show them as words.
_ICONS = {
    "ok": ":white_check_mark:",
    "warning": ":warning:",
    "critical": ":rotating_light:",
    "emergency": ":fire:",
}


def slack_text(body: dict[str, Any]) -> str:
    """One line for a chat: icon, host and message, ``&<>`` escaped as Slack requires (a path
    or message holding ``<...>`` would otherwise become a link or a mention)."""
    icon = _ICONS.get(str(body.get("state")), ":information_source:")
    host = body.get("host") or "?"
    resent = " (sent again: the webhook missed it)" if body.get("resent") else ""
    message = " ".join(str(body.get("message", "")).split())
    text = f"{icon} runnerkeep on {host}{resent}: {message}"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def with_text(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with a ``text`` field made from its message (a copy; a body that has its own
    ``text``, or no message, is sent as it is)."""
    if "text" in body or "message" not in body:
        return body
    return {**body, "text": slack_text(body)}


# --- the optional auth header ---------------------------------------------------------------

_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers the POST itself needs; a file naming one would break every delivery.
_RESERVED_HEADERS = {"content-type", "content-length", "host", "transfer-encoding", "connection"}
AUTH_KEY = "disk.webhook_auth_header_file"


def webhook_auth_header(
    settings: dict[str, Any],
) -> tuple[str, str] | None:
    """(name, value) from ``disk.webhook_auth_header_file`` (root watch only; the same checks
    as the URL file), or None when it is unset. ConfigError naming the file, never its
    content, when it cannot be used."""
    path = settings.get("webhook_auth_header_file") or None
    if not path:
        return None
    return parse_auth_header(read_secret_file(path, AUTH_KEY), path)


def parse_auth_header(line: str, path: str) -> tuple[str, str]:
    """``Name: value`` (a header name, a colon) or else the ``Authorization`` value."""
    name, colon, rest = line.partition(":")
    if colon and _HEADER_NAME.match(name):
        header = (name, rest.strip())
    else:
        header = ("Authorization", line.strip())
    if not header[1]:
        raise ConfigError(
            f"{AUTH_KEY}: {path} holds no header value; its first line is the Authorization "
            "value (e.g. 'Bearer TOKEN') or a whole header ('X-Token: TOKEN')"
        )
    if _HEADER_VALUE_BAD.search(header[1]):
        raise ConfigError(f"{AUTH_KEY}: {path}: the header value holds control characters")
    if header[0].lower() in _RESERVED_HEADERS:
        raise ConfigError(
            f"{AUTH_KEY}: {path} sets {header[0]}, which the POST sets itself; "
            "use Authorization or a header of your receiver"
        )
    return header


def header_secrets(header: tuple[str, str] | None) -> list[str]:
    """What of the header must never be shown: its value and the credential after a scheme
    word ('Bearer TOKEN' -> TOKEN), longest first."""
    if not header:
        return []
    value = header[1]
    found = {value, value.split(None, 1)[-1]}
    return sorted((s for s in found if len(s) >= MIN_SECRET_LEN), key=len, reverse=True)


# --- the target: URL and header, resolved together ----------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """Where the alerts go: the URL and the optional auth header, both secrets."""

    url: str
    auth_header: tuple[str, str] | None = None

    def secrets(self) -> list[str]:
        """Everything of the URL and the header that must never be shown, longest first."""
        found = set(url_secrets(self.url)) | set(header_secrets(self.auth_header))
        return sorted(found, key=len, reverse=True)

    def __repr__(self) -> str:
        # A target in a traceback or a debug print must not show its secrets.
        header = f"{self.auth_header[0]}: ***" if self.auth_header else None
        return f"WebhookTarget(url=<redacted>, auth_header={header!r})"


def webhook_target(settings: dict[str, Any]) -> WebhookTarget | None:
    """The webhook to post to (``disk.webhook_url`` or ``disk.webhook_url_file``, with
    ``disk.webhook_auth_header_file``), or None when no URL is set; ConfigError naming the
    unusable setting or file, never a file's content. The header goes only where the URL goes:
    without a URL its file is not even read."""
    url = webhook_url(settings)
    if not url:
        return None
    return WebhookTarget(url, webhook_auth_header(settings))
