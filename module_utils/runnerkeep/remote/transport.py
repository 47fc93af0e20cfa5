"""Bounded HTTP(S) connections for the registry client: nothing here can hang.

- Names are resolved in a helper thread the caller waits for at most until its deadline
  (``getaddrinfo`` itself cannot be given a timeout).
- Every socket operation has the per-operation timeout (``cache.remote.timeout``) or what is
  left of the call's deadline, whichever is shorter.
- A ``Watchdog`` holds a whole exchange to its deadline: a peer that answers one byte just
  before each timeout (a drip) would otherwise stretch a call without end, since the timeout
  of a socket applies to each receive. At the deadline it shuts the socket down, which ends
  whatever receive or send is waiting, and the caller reports the deadline.
- TLS: the system CAs plus ``ca_file``, TLS 1.2 at least, the host name checked (an IP
  literal is checked against the certificate's IP addresses).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import select
import socket
import ssl
import threading
import time
from typing import Any, NamedTuple

from ..errors import ConfigError

# Reads and writes move this much per call: the fleet tier races `docker pull` and `curl`,
# and per-chunk Python work is what would lose that race.
BUFFER_SIZE = 1 << 20
# A blob transfer may take `timeout` plus one second per MiB: a registry or link slower than
# this on average is given up on (a 1 GiB layer: 17 minutes).
MIN_RATE = 1 << 20


class Origin(NamedTuple):
    """Where requests go: scheme, host (IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"


class DeadlinePassed(Exception):
    """The call's deadline passed before an operation could start."""


class Deadline:
    """A point in time (monotonic) that a call must finish by."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; DeadlinePassed when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlinePassed()
        return left

    def op_timeout(self, timeout: float) -> float:
        return min(timeout, self.remaining())


class Watchdog:
    """Shuts the connection's socket down when ``seconds`` pass before ``stop``.

    ``fired`` tells the caller that a failure it sees was the deadline. A watchdog that fired
    leaves the connection unusable: the caller closes it."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.fired = False
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            sock = self.conn.sock
        if sock is not None:
            # Already closed: nothing is waiting on it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> bool:
        """Disarm; True when it had fired (the connection is then unusable)."""
        with self._lock:
            self._stopped = True
        self._timer.cancel()
        return self.fired

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system CAs plus ``ca_file``; ConfigError when ``ca_file`` cannot be used."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except FileNotFoundError:
            raise ConfigError(
                f"cache.remote.ca_file: {ca_file} does not exist; copy the registry's CA "
                "certificate (PEM) there or unset it"
            ) from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "unusable"
            raise ConfigError(
                f"cache.remote.ca_file: {ca_file} is not a PEM CA certificate ({reason})"
            ) from None
    return context


class _TlsRaw(io.RawIOBase):
    """The TLS socket's records as a raw stream, one C call per record.

    ``SSLSocket.makefile`` stacks three Python calls per 16 KiB record (SocketIO.readinto,
    SSLSocket.recv_into, SSLSocket.read): at registry speeds that is a quarter of a blob's
    CPU time. The socket's timeout still bounds each read (the C read waits with it)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        super().__init__()
        self._sock = sock
        self._read = sock._sslobj.read  # type: ignore[union-attr]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._read(len(buffer), buffer)
        except ssl.SSLError as exc:
            if exc.args and exc.args[0] == ssl.SSL_ERROR_EOF:
                return 0  # a peer that closed without close_notify: the length check decides
            raise


class _TlsResponse(http.client.HTTPResponse):
    """An answer read through ``_TlsRaw`` (see there) instead of ``sock.makefile``."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        if getattr(sock, "_sslobj", None) is not None:
            self.fp.close()  # the SocketIO made by makefile: the socket itself stays open
            self.fp = io.BufferedReader(_TlsRaw(sock), 1 << 16)


class _Plain(http.client.HTTPConnection):
    def __init__(self, origin: Origin, addresses: list, timeout: float) -> None:
        super().__init__(origin.host, origin.port, timeout=timeout, blocksize=BUFFER_SIZE)
        self.rk_addresses = addresses

    def connect(self) -> None:
        self.sock = _open_socket(self.rk_addresses, self.timeout)


class _Secure(http.client.HTTPSConnection):
    response_class = _TlsResponse

    def __init__(
        self, origin: Origin, addresses: list, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(
            origin.host, origin.port, timeout=timeout, context=context, blocksize=BUFFER_SIZE
        )
        self.rk_addresses = addresses
        self.rk_context = context

    def connect(self) -> None:
        raw = _open_socket(self.rk_addresses, self.timeout)
        try:
            secure = self.rk_context.wrap_socket(
                raw, server_hostname=self.host, do_handshake_on_connect=False
            )
        except BaseException:
            raw.close()
            raise
        # Visible to a watchdog before the handshake: a stalling handshake is shut down too.
        self.sock = secure
        secure.do_handshake()


def open_connection(
    origin: Origin, context: ssl.SSLContext | None, timeout: float, deadline: Deadline
) -> http.client.HTTPConnection:
    """A connection (not yet connected: the first request connects, under its watchdog)."""
    addresses = resolve(origin.host, origin.port, deadline, timeout)
    op_timeout = deadline.op_timeout(timeout)
    if origin.scheme == "https":
        assert context is not None
        return _Secure(origin, addresses, op_timeout, context)
    return _Plain(origin, addresses, op_timeout)


def resolve(host: str, port: int, deadline: Deadline, timeout: float) -> list:
    """getaddrinfo's answer for TCP, waited for at most the deadline (a hanging resolver
    leaves a daemon thread behind, never a hung call)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # a literal: no lookup to wait for
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    answer: dict[str, Any] = {}

    def lookup() -> None:
        try:
            answer["ok"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc

    thread = threading.Thread(target=lookup, name="runnerkeep-resolve", daemon=True)
    thread.start()
    thread.join(deadline.op_timeout(timeout))
    if "ok" in answer:
        return answer["ok"]
    if "error" in answer:
        raise answer["error"]
    raise socket.timeout(f"resolving {host} took longer than the deadline")


def _open_socket(addresses: list, timeout: float) -> socket.socket:
    last: OSError | None = None
    give_up = time.monotonic() + timeout
    for family, kind, proto, _name, address in addresses:
        left = give_up - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or socket.timeout("no address could be reached in time")


def dropped(conn: http.client.HTTPConnection) -> bool:
    """True when an idle kept-alive connection cannot be used: closed by us, or readable
    (the peer closed it, or sent something unasked)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _w, _x = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def set_timeout(conn: http.client.HTTPConnection, seconds: float) -> None:
    """The per-operation timeout of the connection's socket (and of its next connect)."""
    conn.timeout = seconds
    if conn.sock is not None:
        conn.sock.settimeout(seconds)


def transport_reason(exc: BaseException, origin: Origin, timeout: float) -> str:
    """What went wrong with the connection, in words (never holds what was sent)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", "") or "verification failed"
        return (
            f"TLS: the certificate of {origin.host} is not trusted ({detail}); set "
            "cache.remote.ca_file to the registry's CA certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {origin.netloc} ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, (socket.timeout, DeadlinePassed)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {origin.netloc} (is the registry running?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {origin.host} ({exc.strerror or exc})"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "the registry closed the connection"
    if isinstance(exc, http.client.IncompleteRead):
        return "the registry closed the connection in the middle of an answer"
    if isinstance(exc, http.client.HTTPException):
        return f"the answer is not HTTP ({exc.__class__.__name__})"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or exc.__class__.__name__})"
    return exc.__class__.__name__
