"""The Docker Engine API on the local unix socket, for the bulk transfers where the CLI costs.

Everything else goes through the docker CLI (``docker_cli.py``). A save or a restore, though,
streams gigabytes: through ``docker save``/``docker load`` every byte is copied once more (our
pipe, the CLI, the socket), and on a two-core runner that copy takes CPU from the daemon doing
the work (measured: restore / ``docker load -i`` 1.24 through the CLI, 1.11 straight into the
socket, same run). So when the CLI would talk to the local socket anyway (``DOCKER_HOST`` unset
or ``unix://``, no context selected), save reads ``GET /images/get`` and restore writes
``POST /images/load`` here, and the small questions around them (image inspect, engine info,
which images the daemon holds) skip the CLI's start-up as well; with a context, TCP, TLS or ssh
everything uses the CLI, which knows how to reach those.

Requests that read an answer to its end are HTTP/1.0: the engine then sends the body as it is
and closes, with no chunk framing to take apart (an export is ~35,000 chunks of 32 KiB). A cut
body is caught by whoever reads it: the archive reader needs the end-of-archive marker and
checks every member, and JSON must parse.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
from typing import Any, Callable
from urllib.parse import quote

from .errors import DockerCommandError

DEFAULT_SOCKET = "/var/run/docker.sock"
# A send buffer that holds several of the stream's 1 MiB chunks: our writer and the daemon's
# reader then wake each other far less often (same-run A/B on a 1.1 GiB restore, 6 pairs:
# 1.02 -> 0.95 of `docker load -i` with 8 MiB over the 208 KiB default).
SEND_BUFFER = 8 << 20
# An export is read ahead by a thread into this many buffers of READ_SIZE (see ImageExport).
READ_AHEAD = 16
READ_SIZE = 1 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux; not exported by Python 3.9
MAX_HEAD = 64 << 10  # status line and headers
MAX_JSON_BODY = 64 << 20  # image lists of big hosts are a few MiB
MAX_ERROR_TAIL = 64 << 10  # what is read after a broken export to find the engine's error
ERROR_TAIL_WAIT = 2.0  # seconds


class EngineSocketUnavailable(Exception):
    """The local socket cannot be reached (missing, refused, no permission): use the CLI."""


def local_engine_socket() -> str | None:
    """The unix socket the docker CLI would use, or None when it would go elsewhere."""
    context = os.environ.get("DOCKER_CONTEXT")
    if context not in (None, "", "default"):
        return None
    host = os.environ.get("DOCKER_HOST", "")
    if host:
        if not host.startswith("unix://"):
            return None
        return host[len("unix://") :] or None
    if context is None and _configured_context() not in (None, "", "default"):
        return None
    return DEFAULT_SOCKET


def _configured_context() -> str | None:
    config_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        with open(os.path.join(config_dir, "config.json")) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    context = data.get("currentContext") if isinstance(data, dict) else None
    return context if isinstance(context, str) else None


# ---------------------------------------------------------------------------------------
# requests that read an answer
# ---------------------------------------------------------------------------------------
def _connect(socket_path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        sock.close()
        raise EngineSocketUnavailable(f"{socket_path}: {exc.strerror or exc}") from None
    return sock


class _Answer:
    """Status and headers of an HTTP answer, and the body bytes that came with them."""

    def __init__(self, status: int, reason: str, headers: dict[str, str], rest: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.rest = rest


def _read_head(sock: socket.socket) -> _Answer:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise DockerCommandError("the Docker engine's answer has no end of headers")
        chunk = sock.recv(65536)
        if not chunk:
            raise DockerCommandError("the Docker engine closed the connection without answering")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        raise DockerCommandError(f"the Docker engine answered {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Answer(status, parts[2] if len(parts) > 2 else "", headers, rest)


def _request(socket_path: str, method: str, target: str) -> tuple[socket.socket, _Answer]:
    """Send ``METHOD target`` (HTTP/1.0, no body) and read the answer's head; the caller closes
    the socket."""
    sock = _connect(socket_path)
    try:
        sock.sendall(
            (
                f"{method} {target} HTTP/1.0\r\nHost: docker\r\nUser-Agent: runnerkeep\r\n"
                + ("Content-Length: 0\r\n" if method == "POST" else "")
                + "\r\n"
            ).encode("ascii")
        )
        return sock, _read_head(sock)
    except OSError as exc:
        sock.close()
        raise EngineSocketUnavailable(f"{socket_path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise


def _read_body(sock: socket.socket, answer: _Answer, limit: int) -> bytes:
    body = bytearray(answer.rest)
    length = answer.headers.get("content-length")
    want = int(length) if length and length.isdigit() else None
    while want is None or len(body) < want:
        if len(body) > limit:
            raise DockerCommandError(f"the Docker engine's answer is larger than {limit} bytes")
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        body += chunk
    if answer.headers.get("transfer-encoding", "").lower() == "chunked":
        raise DockerCommandError("the Docker engine answered an HTTP/1.0 request in chunks")
    return bytes(body)


def get_json(socket_path: str, target: str, method: str = "GET") -> tuple[int, Any]:
    """``GET target`` (or a POST without body) and its JSON answer: (status, parsed body)."""
    sock, answer = _request(socket_path, method, target)
    with sock:
        try:
            body = _read_body(sock, answer, MAX_JSON_BODY)
        except OSError as exc:
            raise DockerCommandError(f"the Docker engine stopped answering: {exc}") from None
    try:
        return answer.status, json.loads(body or b"null")
    except ValueError:
        text = body[:200].decode("utf-8", "replace")
        raise DockerCommandError(f"the Docker engine answered {target} with {text!r}") from None


def _error_text(sock: socket.socket, answer: _Answer) -> str:
    """The message of an error answer (JSON ``{"message": ...}``, or its text)."""
    try:
        body = _read_body(sock, answer, MAX_ERROR_TAIL)
    except (OSError, DockerCommandError) as exc:
        return f"HTTP {answer.status} ({exc})"
    try:
        return _message(answer.status, json.loads(body))
    except ValueError:
        return body[:500].decode("utf-8", "replace").strip() or f"HTTP {answer.status}"


def _message(status: int, data: Any) -> str:
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return f"HTTP {status}"


def _path_ref(ref: str) -> str:
    # Quoted so a ref can never add a header or a path of its own (CR, LF, '?', '#', space).
    return quote(ref, safe="/:@")


def inspect_image(socket_path: str, ref: str) -> dict[str, Any] | None:
    """``GET /images/REF/json`` (what ``docker image inspect`` prints), None when missing."""
    status, data = get_json(socket_path, f"/images/{_path_ref(ref)}/json")
    if status == 404:
        return None
    if status != 200 or not isinstance(data, dict):
        raise DockerCommandError(f"image inspect {ref} failed: {_message(status, data)}")
    return data


def inspect_images(socket_path: str, refs: list[str]) -> list[dict[str, Any]]:
    """inspect each ref, in order; DockerCommandError naming the first missing one, in the
    words the CLI uses ("No such image: REF")."""
    infos = []
    for ref in refs:
        info = inspect_image(socket_path, ref)
        if info is None:
            raise DockerCommandError(f"'docker image inspect' failed: Error: No such image: {ref}")
        infos.append(info)
    return infos


def engine_info(socket_path: str) -> dict[str, Any]:
    """``GET /info`` (what ``docker info`` shows of the server)."""
    status, data = get_json(socket_path, "/info")
    if status != 200 or not isinstance(data, dict):
        raise DockerCommandError(f"engine info failed: {_message(status, data)}")
    return data


def tag_image(socket_path: str, image_id: str, ref: str) -> None:
    """``docker tag IMAGE_ID REF``."""
    last = ref.rsplit("/", 1)[-1]
    repo, tag = ref.rsplit(":", 1) if ":" in last else (ref, "latest")
    query = f"repo={quote(repo, safe='')}&tag={quote(tag, safe='')}"
    target = f"/images/{_path_ref(image_id)}/tag?{query}"
    status, data = get_json(socket_path, target, method="POST")
    if status not in (200, 201):
        raise DockerCommandError(f"docker tag {image_id} {ref} failed: {_message(status, data)}")


def list_image_ids(socket_path: str) -> list[str]:
    """IDs of every image the daemon holds, intermediate build images included."""
    status, data = get_json(socket_path, "/images/json?all=1")
    if status != 200 or not isinstance(data, list):
        raise DockerCommandError(f"image list failed: {_message(status, data)}")
    return [str(item["Id"]) for item in data if isinstance(item, dict) and item.get("Id")]


# ---------------------------------------------------------------------------------------
# save: GET /images/get
# ---------------------------------------------------------------------------------------
class ImageExport:
    """The archive ``GET /images/get`` sends, as a raw stream: ``readinto`` until it returns 0.

    A second thread drains the socket into READ_AHEAD buffers of READ_SIZE while the caller
    hashes and writes. Reading the socket only between those steps stalls the engine: on a unix
    socket all it may have in flight is its own send buffer (~200 KiB; our receive buffer does
    not count), so each pause of ours became a pause of its export (same run, 3 pairs: the
    stream phase took 7-9 s read inline, 4.1-4.7 s through `docker save`, whose own process
    keeps draining the socket into a 1 MiB pipe).

    Once the engine has started sending, it can no longer report a failure in the status, so
    it writes its error into the stream and closes; ``engine_error()`` finds it there after
    the reader stopped at the bytes that are not tar.
    """

    def __init__(
        self, sock: socket.socket, first: bytes, buffers: int = READ_AHEAD, size: int = READ_SIZE
    ) -> None:
        self.sock = sock
        self.pending = memoryview(first)  # received, not yet handed to the reader
        self.pending_index: int | None = None  # the buffer ``pending`` lies in
        self.ended = False
        self.last: tuple[memoryview, int] | None = None
        self.views = [memoryview(bytearray(size)) for _ in range(buffers)]
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for index in range(buffers):
            self.free.put(index)
        self.filled: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._drain, name="rk-export", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        """Fill free buffers from the socket, whole ones (MSG_WAITALL: the kernel copies as the
        engine sends, so the engine never waits while a buffer is free), until the end."""
        try:
            while True:
                index = self.free.get()
                if index is None:
                    return
                view = self.views[index]
                count = self.sock.recv_into(view, len(view), socket.MSG_WAITALL)
                self.filled.put((index, count))
                if count == 0:
                    return
        except OSError as exc:
            self.filled.put(exc)

    def _next_buffer(self, timeout: float | None = None) -> bool:
        """Make the next filled buffer ``pending``; False at the end of the stream."""
        if self.pending_index is not None:
            self.free.put(self.pending_index)
            self.pending_index = None
        if self.ended:
            return False
        item = self.filled.get(timeout=timeout)
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        index, count = item
        if count == 0:
            self.ended = True
            return False
        self.pending_index = index
        self.pending = self.views[index][:count]
        return True

    def readinto(self, view: memoryview) -> int:
        if not self.pending and not self._next_buffer():
            return 0
        count = min(len(view), len(self.pending))
        view[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        # No copy: the reader refills this view only on its next call.
        self.last = (view, count)
        return count

    def engine_error(self) -> str | None:
        """The error the engine wrote into the stream, if any (reads at most 64 KiB more)."""
        seen = bytearray()
        if self.last is not None:
            view, count = self.last
            seen += view[:count]
        seen += self.pending
        self.pending = memoryview(b"")
        try:
            while len(seen) < MAX_ERROR_TAIL and self._next_buffer(timeout=ERROR_TAIL_WAIT):
                seen += self.pending
                self.pending = memoryview(b"")
        except (OSError, queue.Empty):
            pass
        return _stream_error(bytes(seen))

    def close(self) -> None:
        # Wake the draining thread (its recv returns), let it end, then close.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.free.put(None)
        self.thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> ImageExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stream_error(data: bytes) -> str | None:
    start = data.find(b'{"errorDetail"')
    if start < 0:
        return None
    line = data[start:].split(b"\n", 1)[0]
    try:
        item = json.loads(line)
    except ValueError:
        return line[:500].decode("utf-8", "replace").strip()
    return str(item.get("error") or item.get("errorDetail", {}).get("message") or "").strip()


def export_images(socket_path: str, refs: list[str]) -> ImageExport:
    """Start ``GET /images/get`` for ``refs`` (what ``docker save REFS`` streams).

    Raises EngineSocketUnavailable when the socket cannot be reached, DockerCommandError when
    the engine refuses (its message, e.g. a missing image). The caller closes the export.
    """
    target = "/images/get?" + "&".join("names=" + quote(ref, safe="") for ref in refs)
    sock, answer = _request(socket_path, "GET", target)
    try:
        if answer.status != 200:
            raise DockerCommandError(f"docker save failed: {_error_text(sock, answer)}")
        if answer.headers.get("transfer-encoding", "").lower() == "chunked":
            raise DockerCommandError("the Docker engine answered an HTTP/1.0 request in chunks")
    except BaseException:
        sock.close()
        raise
    return ImageExport(sock, answer.rest)


# ---------------------------------------------------------------------------------------
# restore: POST /images/load
# ---------------------------------------------------------------------------------------
def load_image_archive(socket_path: str, length: int, write_body: Callable[[int], int]) -> str:
    """``POST /images/load`` with the ``length``-byte archive that ``write_body(fd)`` writes.

    Returns the engine's messages ("Loaded image: ..."). An exception from ``write_body``
    closes the connection before the body is complete: the engine sees a cut archive (no
    ``manifest.json``) and tags nothing. Raises EngineSocketUnavailable when the socket cannot
    be connected, DockerCommandError when the engine refuses the archive.
    """
    sock = _connect(socket_path)
    try:
        enlarge_send_buffer(sock)
        sock.sendall(
            (
                "POST /images/load?quiet=1 HTTP/1.1\r\n"
                "Host: docker\r\n"
                "User-Agent: runnerkeep\r\n"
                "Content-Type: application/x-tar\r\n"
                f"Content-Length: {length}\r\n"
                "Connection: close\r\n\r\n"
            ).encode("ascii")
        )
        try:
            sent = write_body(sock.fileno())
        except (BrokenPipeError, ConnectionResetError):
            # The engine stopped reading: its answer says why.
            raise DockerCommandError(f"docker load stopped early: {_answer(sock)}") from None
        if sent != length:
            raise DockerCommandError(
                f"internal error: the archive was {sent} bytes, announced as {length}"
            )
        return _answer(sock, raise_errors=True)
    finally:
        sock.close()


def enlarge_send_buffer(sock: socket.socket, size: int = SEND_BUFFER) -> int:
    """Ask for a ``size`` send buffer; returns what the kernel granted.

    Root may go past ``net.core.wmem_max`` (SO_SNDBUFFORCE); other users get at most that
    limit, which is still more than the default. A refusal only costs speed.
    """
    for option in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def _answer(sock: socket.socket, raise_errors: bool = False) -> str:
    """The engine's reply as text; with ``raise_errors``, DockerCommandError on a failure."""
    import http.client  # here, not at the top: it costs every CLI start ~30 ms

    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        body = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        if raise_errors:
            raise DockerCommandError(f"docker load: no answer from the engine ({exc})") from None
        return f"no answer from the engine ({exc})"
    messages, errors = [], []
    for line in body.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            messages.append(line.strip())
            continue
        if not isinstance(item, dict):
            continue
        if item.get("error") or item.get("message"):
            errors.append(str(item.get("error") or item.get("message")).strip())
        elif item.get("stream"):
            messages.append(str(item["stream"]).strip())
    if response.status != 200 and not errors:
        errors.append(f"HTTP {response.status} {response.reason}")
    if errors and raise_errors:
        raise DockerCommandError(f"docker load failed: {'; '.join(errors)}")
    return "; ".join(errors or messages)
