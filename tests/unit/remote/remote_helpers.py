"""Helpers of the fleet tier's transport tests: clients for loopback registries, random
blobs, and a scripted fake HTTP peer for what a real registry cannot be made to do on demand
(stall, drip, redirect, lie)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

from harness.registry import LocalRegistry
from runnerkeep.remote import RegistryClient, read_credentials, remote_settings

REPO = "runnerkeep/cache"


def client_for(
    reg: LocalRegistry, user: tuple[str, str] | None = None, repo: str = REPO, **options
) -> RegistryClient:
    settings = remote_settings({"remote": reg.remote_config(repo, user, **options)})
    creds = read_credentials(settings.credentials_file) if settings.credentials_file else None
    return RegistryClient(settings, creds)


def blob(size: int, seed: bytes = b"") -> tuple[bytes, str]:
    data = seed + os.urandom(max(0, size - len(seed)))
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


# --- a fake peer -----------------------------------------------------------------------------

Handler = Callable[[socket.socket, "FakePeer"], None]


class FakePeer:
    """A loopback TCP server running ``handler(conn, peer)`` for each connection (a thread
    each); ``requests`` collects the request heads it read with ``read_head``. With
    ``tls_from`` (a LocalRegistry with TLS) it serves that registry's certificate."""

    def __init__(self, handler: Handler, tls_from: LocalRegistry | None = None) -> None:
        self.handler = handler
        self.requests: list[str] = []
        self.rest: dict[int, bytes] = {}
        self.bodies: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.context = None
        if tls_from is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(
                os.path.join(tls_from.workdir, "server.pem"),
                os.path.join(tls_from.workdir, "server.key"),
            )
        self.scheme = "https" if self.context else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        self.threads: list[threading.Thread] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, conn: socket.socket) -> None:
        try:
            if self.context is not None:
                conn.settimeout(10)
                conn = self.context.wrap_socket(conn, server_side=True)
                self.conns.append(conn)
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def read_head(self, conn: socket.socket) -> str:
        """The request line and headers; what came after them is kept for ``read_body``."""
        data = self.rest.pop(id(conn), b"")
        conn.settimeout(10)
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _sep, rest = data.partition(b"\r\n\r\n")
        self.rest[id(conn)] = rest
        text = head.decode("latin-1")
        if text:
            self.requests.append(text)
        return text

    def read_body(self, conn: socket.socket, length: int) -> bytes:
        data = self.rest.pop(id(conn), b"")
        while len(data) < length:
            chunk = conn.recv(min(65536, length - len(data)))
            if not chunk:
                break
            data += chunk
        self.rest[id(conn)] = data[length:]
        return data[:length]

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)
        for conn in self.conns:  # handlers waiting on a kept-alive connection end now
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)


@contextlib.contextmanager
def fake_peer(handler: Handler, tls_from: LocalRegistry | None = None) -> Iterator[FakePeer]:
    peer = FakePeer(handler, tls_from)
    try:
        yield peer
    finally:
        peer.close()


def answer(status: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """An HTTP/1.1 answer with Content-Length."""
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def fake_client(url: str, ca_file: str | None = None, timeout: float = 1.0, creds=None):
    section = {"url": f"{url}/{REPO}", "timeout": timeout}
    if ca_file:
        section["ca_file"] = ca_file
    return RegistryClient(remote_settings({"remote": section}), creds)
