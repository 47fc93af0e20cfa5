"""The Docker Engine API on the local unix socket, for the one bulk transfer where the CLI costs.

Everything else goes through the docker CLI (``docker_cli.py``). A restore, though, streams
gigabytes: through ``docker load`` every byte is copied once more (our pipe, the CLI, the
socket), and on a two-core runner that copy takes CPU from the daemon doing the load (measured:
restore / ``docker load -i`` 1.24 through the CLI, 1.11 straight into the socket, same run).
So when the CLI would talk to the local socket anyway (``DOCKER_HOST`` unset or ``unix://``, no
context selected), restore writes its archive straight into ``POST /images/load``; with a
context, TCP, TLS or ssh it uses the CLI, which knows how to reach those.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Callable

from .errors import DockerCommandError

DEFAULT_SOCKET = "/var/run/docker.sock"
# A send buffer that holds several of the stream's 1 MiB chunks: our writer and the daemon's
# reader then wake each other far less often (same-run A/B on a 1.1 GiB restore, 6 pairs:
# 1.02 -> 0.95 of `docker load -i` with 8 MiB over the 208 KiB default).
SEND_BUFFER = 8 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux; not exported by Python 3.9


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


def load_image_archive(socket_path: str, length: int, write_body: Callable[[int], int]) -> str:
    """``POST /images/load`` with the ``length``-byte archive that ``write_body(fd)`` writes.

    Returns the engine's messages ("Loaded image: ..."). An exception from ``write_body``
    closes the connection before the body is complete: the engine sees a cut archive (no
    ``manifest.json``) and tags nothing. Raises EngineSocketUnavailable when the socket cannot
    be connected, DockerCommandError when the engine refuses the archive.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise EngineSocketUnavailable(f"{socket_path}: {exc.strerror or exc}") from None
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
