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

Nothing here waits without a bound: a question and its whole answer get ANSWER_TIMEOUT (the
CLI's own timeout, so the socket is never looser than the ``docker`` commands it replaces), and
the two streams an inactivity timeout (STREAM_IDLE_TIMEOUT, the cache service's): an engine that
accepts and then says nothing, or stops in the middle of an export or a load, is EngineStalled,
a DockerCommandError naming the engine and what stalled. What the engine answers is checked for
the shape runnerkeep reads (``_checked_image``, ``engine_info``): anything else is a
DockerCommandError too, never an AttributeError further on.

Requests are HTTP/1.0: the engine then sends the body as it is and closes, with no chunk
framing to take apart (an export is ~35,000 chunks of 32 KiB). A cut body is caught by whoever
reads it: the archive reader needs the end-of-archive marker and checks every member, and JSON
must parse. A load's answer is read only until the engine has said that every image is loaded
and tagged (``load_image_archive``'s ``done_when``): what it does after that is clean-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Collection
from typing import Any, Callable
from urllib.parse import quote

from .docker_cli import DEFAULT_TIMEOUT
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
# Bounds on waiting for the engine. Read at call time, so a test can make them small.
ANSWER_TIMEOUT = DEFAULT_TIMEOUT  # seconds for connect, question and its whole answer
STREAM_IDLE_TIMEOUT = 60.0  # seconds without a byte moving, as the cache service's pump
# After the last byte of a load the engine registers the layers it lacks before it answers
# (nothing is sent meanwhile): the wait for its answer grows with the archive at this rate,
# a slow disk's, on top of ANSWER_TIMEOUT.
LOAD_MIN_RATE = 10 << 20  # bytes per second


class EngineStalled(DockerCommandError):
    """The engine stopped answering, or stopped moving a stream, within its timeout."""


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
def _engine(socket_path: str) -> str:
    return f"the Docker engine at unix://{socket_path}"


def _connect(socket_path: str, timeout: float) -> socket.socket:
    """A connected socket, in timeout mode (``timeout`` seconds per call until changed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(socket_path)
    except socket.timeout:
        sock.close()
        raise EngineStalled(
            f"{_engine(socket_path)} did not take the connection within {timeout:g}s"
        ) from None
    except OSError as exc:
        sock.close()
        raise EngineSocketUnavailable(f"{socket_path}: {exc.strerror or exc}") from None
    return sock


class _Deadline:
    """One bound for a whole exchange: each socket call gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def arm(self, sock: socket.socket) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        sock.settimeout(left)


def _stream_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """A blocking socket whose send (SO_SNDTIMEO) or receive (SO_RCVTIMEO) gives up after
    ``seconds`` without progress: the call returns what moved so far, or fails with EAGAIN
    when nothing did. Blocking, not Python's timeout mode: the export's MSG_WAITALL reads and
    the load's os.write on the fd need a blocking socket."""
    sock.settimeout(None)
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET, option, struct.pack("ll", whole, int((seconds - whole) * 1e6))
    )


class _Answer:
    """Status and headers of an HTTP answer, and the body bytes that came with them."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: dict[str, str],
        rest: bytes,
        deadline: _Deadline | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.rest = rest
        self.deadline = deadline  # what bounds reading the rest of the answer


def _read_head(sock: socket.socket, deadline: _Deadline) -> _Answer:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise DockerCommandError("the Docker engine's answer has no end of headers")
        deadline.arm(sock)
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
    return _Answer(status, parts[2] if len(parts) > 2 else "", headers, rest, deadline)


def _request(socket_path: str, method: str, target: str) -> tuple[socket.socket, _Answer]:
    """Send ``METHOD target`` (HTTP/1.0, no body) and read the answer's head; the caller closes
    the socket. The answer's ``deadline`` (ANSWER_TIMEOUT from now) bounds reading its body."""
    deadline = _Deadline(ANSWER_TIMEOUT)
    sock = _connect(socket_path, deadline.seconds)
    try:
        deadline.arm(sock)
        sock.sendall(
            (
                f"{method} {target} HTTP/1.0\r\nHost: docker\r\nUser-Agent: runnerkeep\r\n"
                + ("Content-Length: 0\r\n" if method == "POST" else "")
                + "\r\n"
            ).encode("ascii")
        )
        return sock, _read_head(sock, deadline)
    except socket.timeout:
        sock.close()
        raise _no_answer(socket_path, f"{method} {target}", deadline) from None
    except OSError as exc:
        sock.close()
        raise EngineSocketUnavailable(f"{socket_path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise


def _no_answer(socket_path: str, what: str, deadline: _Deadline) -> EngineStalled:
    return EngineStalled(
        f"{_engine(socket_path)} did not answer {what[:200]} within {deadline.seconds:g}s"
    )


def _read_body(sock: socket.socket, answer: _Answer, limit: int) -> bytes:
    body = bytearray(answer.rest)
    length = answer.headers.get("content-length")
    want = int(length) if length and length.isdigit() else None
    while want is None or len(body) < want:
        if len(body) > limit:
            raise DockerCommandError(f"the Docker engine's answer is larger than {limit} bytes")
        if answer.deadline is not None:
            answer.deadline.arm(sock)
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
        except socket.timeout:
            raise _no_answer(socket_path, f"{method} {target}", answer.deadline) from None
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
    return _checked_image(data, ref)


def _checked_image(data: dict[str, Any], ref: str) -> dict[str, Any]:
    """``data`` once the fields runnerkeep reads have their types (Id: a string, RepoTags: a
    list of strings, RootFS.Layers: a list of strings, Size: a count); DockerCommandError
    otherwise: a daemon that answers in another shape is not one we can trust to say more."""
    rootfs = data.get("RootFS")
    problem = None
    if not isinstance(data.get("Id"), str) or not data["Id"]:
        problem = "no Id"
    elif not _strings_or_none(data.get("RepoTags")):
        problem = "RepoTags is not a list of names"
    elif rootfs is not None and not isinstance(rootfs, dict):
        problem = "RootFS is not an object"
    elif rootfs is not None and not _strings_or_none(rootfs.get("Layers")):
        problem = "RootFS.Layers is not a list of digests"
    elif not _count_or_none(data.get("Size")):
        problem = "Size is not a byte count"
    if problem:
        raise DockerCommandError(
            f"image inspect {ref}: the Docker engine's answer is malformed ({problem})"
        )
    return data


def _strings_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _count_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


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
    for name in ("ServerVersion", "DockerRootDir"):
        if not isinstance(data.get(name), (str, type(None))):
            raise DockerCommandError(
                f"engine info: the Docker engine's answer is malformed ({name} is not a string)"
            )
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
    if not all(isinstance(item, dict) and isinstance(item.get("Id"), str) for item in data):
        raise DockerCommandError(
            "image list: the Docker engine's answer is malformed (an image without Id)"
        )
    return [item["Id"] for item in data if item["Id"]]


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
        self,
        sock: socket.socket,
        first: bytes,
        buffers: int = READ_AHEAD,
        size: int = READ_SIZE,
        engine: str = "the Docker engine",
    ) -> None:
        self.sock = sock
        self.engine = engine
        self.idle = STREAM_IDLE_TIMEOUT
        # A read that waits this long for its first byte fails with EAGAIN (see _drain); one
        # that got some returns them. So a silent engine ends the export within 2 * idle.
        _stream_timeout(sock, socket.SO_RCVTIMEO, self.idle)
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
        except BlockingIOError:
            self.filled.put(
                EngineStalled(
                    f"{self.engine} stopped sending the image export (nothing for {self.idle:g}s)"
                )
            )
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
        except (OSError, queue.Empty, EngineStalled):
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
    if not isinstance(item, dict):
        return line[:500].decode("utf-8", "replace").strip()
    detail = item.get("errorDetail")
    message = item.get("error") or (detail.get("message") if isinstance(detail, dict) else detail)
    return str(message or "").strip()[:2000]


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
    return ImageExport(sock, answer.rest, engine=_engine(socket_path))


# ---------------------------------------------------------------------------------------
# restore: POST /images/load
# ---------------------------------------------------------------------------------------
def load_image_archive(
    socket_path: str,
    length: int,
    write_body: Callable[[int], int],
    done_when: Collection[str] = (),
) -> str:
    """``POST /images/load`` with the ``length``-byte archive that ``write_body(fd)`` writes.

    Returns the engine's messages ("Loaded image: ..."). An exception from ``write_body``
    closes the connection before the body is complete: the engine sees a cut archive (no
    ``manifest.json``) and tags nothing. Raises EngineSocketUnavailable when the socket cannot
    be connected, DockerCommandError when the engine refuses the archive, EngineStalled when it
    stops reading the archive for STREAM_IDLE_TIMEOUT or does not answer in time after it.

    ``done_when``: the lines the engine says once the last image is loaded and tagged
    ("Loaded image: REF", or "Loaded image ID: ID" for an archive without tags). Once all of
    them came, and no error, the rest of the answer is not waited for: engine 20.10 then only
    removes its unpacked copy of the archive before it closes the connection (measured on a
    1.1 GiB archive: 0.4-0.6 s on a busy two-core host), and nothing after those lines can
    fail the load. The caller checks the images in the daemon itself afterwards. Empty: the
    answer is read to its end, as ``docker load`` does.
    """
    with ImageLoad(socket_path, length) as load:
        load.send(write_body)
        return load.finish(done_when)


class ImageLoad:
    """One ``POST /images/load`` in steps (load_image_archive's rules): the head is sent on
    creation, ``send(write)`` writes part of the body (as often as needed, in order),
    ``finish(done_when)`` reads the answer. Between the parts the caller may do other work,
    e.g. wait for the engine to finish an earlier load. ``close()`` before the whole body
    was sent cuts the archive: the engine loads nothing from it."""

    def __init__(self, socket_path: str, length: int) -> None:
        self.socket_path = socket_path
        self.length = length
        self.sent = 0
        self.engine = _engine(socket_path)
        self.sock = _connect(socket_path, ANSWER_TIMEOUT)
        try:
            _stream_timeout(self.sock, socket.SO_SNDTIMEO, STREAM_IDLE_TIMEOUT)
            enlarge_send_buffer(self.sock)
            self.sock.sendall(_load_head(length))
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> ImageLoad:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, write: Callable[[int], int]) -> None:
        """Write part of the body: ``write(fd)`` returns the bytes it wrote."""
        try:
            self.sent += write(self.sock.fileno())
        except (BrokenPipeError, ConnectionResetError):
            # The engine stopped reading: its answer says why.
            said = _answer(self.sock, _Deadline(ANSWER_TIMEOUT))
            raise DockerCommandError(f"docker load stopped early: {said}") from None
        except BlockingIOError:
            raise EngineStalled(
                f"{self.engine} stopped reading the image archive "
                f"(nothing for {STREAM_IDLE_TIMEOUT:g}s)"
            ) from None

    def finish(self, done_when: Collection[str] = ()) -> str:
        """The engine's answer once the whole body was sent (see load_image_archive)."""
        if self.sent != self.length:
            raise DockerCommandError(
                f"internal error: the archive was {self.sent} bytes, announced as {self.length}"
            )
        # The engine answers once it has registered what it lacks: time that grows with the
        # archive.
        wait = _Deadline(ANSWER_TIMEOUT + self.length / LOAD_MIN_RATE)
        try:
            return _answer(self.sock, wait, done_when, raise_errors=True)
        except socket.timeout:
            raise EngineStalled(
                f"{self.engine} did not answer the image load within {wait.seconds:.0f}s of its end"
            ) from None


def remove_image(socket_path: str, image_id: str) -> bool:
    """``DELETE /images/ID`` (untagged, not forced: an image a container uses stays); True
    when the engine removed it or never had it."""
    status, _data = get_json(socket_path, f"/images/{_path_ref(image_id)}", method="DELETE")
    return status in (200, 404)


def _load_head(length: int) -> bytes:
    # HTTP/1.0: the engine sends its answer as it is and closes, without chunk framing.
    return (
        "POST /images/load?quiet=1 HTTP/1.0\r\n"
        "Host: docker\r\n"
        "User-Agent: runnerkeep\r\n"
        "Content-Type: application/x-tar\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode("ascii")


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


class _LoadLines:
    """The JSON lines of a load's answer as they come in: messages, errors and each line said."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.errors: list[str] = []
        self.said: set[str] = set()
        self.partial = b""

    def feed(self, data: bytes) -> None:
        # A JSON line holds no raw newline (its text's are escaped), so b"\n" ends each one.
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        self._line(self.partial)
        self.partial = b""

    def complete(self, done_when: Collection[str]) -> bool:
        return bool(done_when) and not self.errors and self.said.issuperset(done_when)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            item = json.loads(text)
        except ValueError:
            self.messages.append(text)
            return
        if not isinstance(item, dict):
            return
        if item.get("error") or item.get("message"):
            self.errors.append(str(item.get("error") or item.get("message")).strip())
        elif item.get("stream"):
            stream = str(item["stream"])
            self.messages.append(stream.strip())
            self.said.update(line.strip() for line in stream.splitlines())


def _read_load_answer(
    sock: socket.socket, deadline: _Deadline, done_when: Collection[str]
) -> tuple[_Answer, _LoadLines]:
    """The load's answer, read until the engine closes (or its Content-Length, or
    MAX_JSON_BODY), or until every line of ``done_when`` came."""
    answer = _read_head(sock, deadline)
    if answer.headers.get("transfer-encoding", "").lower() == "chunked":
        raise DockerCommandError("the Docker engine answered an HTTP/1.0 request in chunks")
    length = answer.headers.get("content-length")
    want = int(length) if length and length.isdigit() else MAX_JSON_BODY
    lines = _LoadLines()
    lines.feed(answer.rest)
    received = len(answer.rest)
    while received < min(want, MAX_JSON_BODY):
        if answer.status == 200 and lines.complete(done_when):
            return answer, lines
        deadline.arm(sock)
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += len(chunk)
        lines.feed(chunk)
    lines.finish()
    return answer, lines


def _answer(
    sock: socket.socket,
    deadline: _Deadline,
    done_when: Collection[str] = (),
    raise_errors: bool = False,
) -> str:
    """The engine's reply as text; with ``raise_errors``, DockerCommandError on a failure."""
    try:
        answer, lines = _read_load_answer(sock, deadline, done_when)
    except socket.timeout:
        if raise_errors:
            raise  # the caller says which engine and how long
        return "no answer from the engine in time"
    except (OSError, DockerCommandError) as exc:
        if raise_errors:
            raise DockerCommandError(f"docker load: no answer from the engine ({exc})") from None
        return f"no answer from the engine ({exc})"
    errors = lines.errors
    if answer.status != 200 and not errors:
        errors = [f"HTTP {answer.status} {answer.reason}".strip()]
    if errors and raise_errors:
        raise DockerCommandError(f"docker load failed: {'; '.join(errors)}")
    return "; ".join(errors or lines.messages)
