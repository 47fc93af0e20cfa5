"""The admission service: one connection from a job-start hook, answered as root.

systemd's ``runnerkeep-admission.socket`` (Accept=yes, 0660 root:<job group>) starts
``runnerkeep admission serve-connection`` per connection with the socket on fd 0. Protocol
(one request per connection)::

    hook    -> {"v": 1, "op": "admit", "args": {"job_id": "..."}}\\n
    service -> {"exit_code": N, "data": {"admitted": bool, "line": "...", ...}, "error": ...}\\n

Who asks is ``SO_PEERCRED``'s pid and uid, never anything the hook says: the asking process
and its ancestors (from /proc) are the job whose own job lock does not stop the emergency
stage. A peer the kernel cannot name (pid 0: another pid namespace) is refused. The request
must be complete within ``REQUEST_DEADLINE`` seconds and ``MAX_REQUEST_BYTES``; no file
descriptor is taken (``recv``, not ``recvmsg``: the kernel drops any that were sent).

The hook side (``ask``) waits at most ``admission.deadline`` plus ``ANSWER_MARGIN`` for the
answer; an unreachable or silent service is ``Unreachable`` and the hook lets the job run
(fails open): a broken admission service must not stop a fleet that has disk to spare.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import time
from typing import Any, Callable

from .errors import EXIT_FAILURE, EXIT_OK, ConfigError, RunnerkeepError
from .textutil import escape_text

PROTOCOL = 1
REQUEST_DEADLINE = 10.0
MAX_REQUEST_BYTES = 16 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
RESPONSE_SEND_TIMEOUT = 10.0
ANSWER_MARGIN = 30.0
MAX_JOB_ID = 200


class ProtocolError(ConfigError):
    """A request that is not one (malformed, too big, too slow, from an unnamed peer)."""


class Unreachable(RunnerkeepError):
    """No answer from the service (not there, refused, silent past the deadline, garbage)."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def read_request(sock: socket.socket, deadline: float = REQUEST_DEADLINE) -> dict[str, Any]:
    """The request; ProtocolError when not complete within ``deadline`` seconds in all, too
    big, or malformed."""
    end = time.monotonic() + deadline
    buf = bytearray()
    while b"\n" not in buf:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise ProtocolError(f"no complete request within {deadline:g} s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            raise ProtocolError(f"no complete request within {deadline:g} s") from None
        if not data:
            raise ProtocolError("the connection closed before a complete request")
        buf += data
        if len(buf) > MAX_REQUEST_BYTES:
            raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    return parse_request(bytes(buf[: buf.index(b"\n")]))


def parse_request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("the request is not JSON") from None
    if not isinstance(request, dict) or request.get("v") != PROTOCOL:
        raise ProtocolError(f"unknown request (protocol version {PROTOCOL} expected)")
    if request.get("op") != "admit":
        raise ProtocolError(f"unknown operation {escape_text(repr(request.get('op')))[:60]}")
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("args must be an object")
    job_id = args.get("job_id", "")
    if not isinstance(job_id, str) or len(job_id) > MAX_JOB_ID:
        raise ProtocolError(f"job_id must be a string of at most {MAX_JOB_ID} characters")
    return {"op": "admit", "job_id": escape_text(job_id)}


# What the service runs for one request: (peer pid, peer uid, job id) -> the answer's data.
Handler = Callable[[int, int, str], dict[str, Any]]


def serve_connection(
    sock: socket.socket, handler: Handler, deadline: float = REQUEST_DEADLINE
) -> dict[str, Any]:
    """Serve the one request on ``sock``; returns the response sent. Every failure is a
    response with an exit code and one line, never a traceback."""
    try:
        pid, uid, _gid = peer_credentials(sock)
        if pid <= 0:
            raise ProtocolError("the peer's process cannot be named (another pid namespace?)")
        request = read_request(sock, deadline)
        data = handler(pid, uid, request["job_id"])
        response = {"exit_code": EXIT_OK, "data": data, "error": None}
    except RunnerkeepError as exc:
        response = {"exit_code": exc.exit_code, "data": None, "error": str(exc)}
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        message = f"{exc.strerror or exc}{where}"
        response = {"exit_code": EXIT_FAILURE, "data": None, "error": message}
    except Exception as exc:  # the guard: a hook gets one line, never a traceback
        message = f"internal error in the admission service: {type(exc).__name__}: {exc}"
        response = {"exit_code": EXIT_FAILURE, "data": None, "error": message}
    send_response(sock, response)
    return response


def send_response(sock: socket.socket, response: dict[str, Any]) -> None:
    data = (json.dumps(response, sort_keys=True, default=str) + "\n").encode()
    with contextlib.suppress(OSError):  # the hook went away: nothing else to tell it
        sock.settimeout(RESPONSE_SEND_TIMEOUT)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def ask(socket_path: str, job_id: str, timeout: float) -> dict[str, Any]:
    """The hook's side: the service's answer (its data), ``Unreachable`` when there is none
    within ``timeout`` seconds, or RunnerkeepError with the error the service reported."""
    line = (json.dumps({"v": PROTOCOL, "op": "admit", "args": {"job_id": job_id}}) + "\n").encode()
    end = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(10.0, timeout))
        try:
            sock.connect(socket_path)
            sock.sendall(line)
        except OSError as exc:
            raise Unreachable(
                f"cannot reach the admission service at {socket_path}: {exc.strerror or exc}"
            ) from None
        raw = _read_answer(sock, end, timeout)
    finally:
        sock.close()
    return _answer_data(raw)


def _read_answer(sock: socket.socket, end: float, timeout: float) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            raise Unreachable(f"the admission service gave no answer within {timeout:g} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise Unreachable(
                f"the admission service gave no answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise Unreachable(f"the admission service failed: {exc.strerror or exc}") from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise Unreachable("the admission service's answer is too large")
        chunks.append(chunk)


def _answer_data(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise Unreachable("the admission service closed the connection without an answer")
    try:
        response = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Unreachable("the admission service sent no valid answer") from None
    if not isinstance(response, dict) or type(response.get("exit_code")) is not int:
        raise Unreachable("the admission service sent no valid answer")
    if response.get("error") or response["exit_code"] != EXIT_OK:
        raise RunnerkeepError(escape_text(str(response.get("error") or "failed")))
    data = response.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("admitted"), bool):
        raise Unreachable("the admission service sent no valid answer")
    return data


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
