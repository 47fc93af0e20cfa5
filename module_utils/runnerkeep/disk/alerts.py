"""Alert channels: syslog/journal (always) and an optional JSON webhook.

Syslog goes through ``logger`` (util-linux; reaches journald or rsyslog), else straight to the
``/dev/log`` socket, else stderr. The webhook is a POST of a JSON body with a per-attempt
timeout and a bounded number of retries, all within a deadline the caller gives, so a dead
endpoint never holds the watch longer than its own timeout.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

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
    """Log one line; returns the channel used ("logger", "/dev/log" or "stderr")."""
    priority = PRIORITIES.get(severity, severity)
    logger = shutil.which("logger")
    if logger:
        try:
            proc = subprocess.run(
                [logger, "-t", tag, "-p", f"user.{priority}", "--", message],
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


def post_webhook(
    url: str, body: dict[str, Any], *, timeout: float, retries: int, deadline: float
) -> dict[str, Any]:
    """POST ``body`` as JSON; at most ``1 + retries`` attempts, never past ``deadline``
    (a ``time.monotonic()`` value). Returns {"ok", "attempts", "status", "error"}."""
    data = json.dumps(body, sort_keys=True).encode()
    attempts = 0
    error = None
    status = None
    for attempt in range(1 + max(0, retries)):
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            error = error or "no time left within the watch timeout"
            break
        attempts += 1
        request = urllib.request.Request(
            url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "runnerkeep-disk-watch"},
        )
        try:
            with urllib.request.urlopen(request, timeout=min(timeout, remaining)) as response:
                status = response.status
                response.read(65536)
            if 200 <= status < 300:
                return {"ok": True, "attempts": attempts, "status": status, "error": None}
            error = f"HTTP {status}"
        except urllib.error.HTTPError as exc:
            status = exc.code
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            error = str(reason) or exc.__class__.__name__
        if attempt < retries:
            pause = min(0.5 * (2**attempt), deadline - time.monotonic() - 0.05)
            if pause <= 0:
                break
            time.sleep(pause)
    return {"ok": False, "attempts": attempts, "status": status, "error": error}
