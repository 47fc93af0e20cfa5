"""Bounded HTTP(S) connections for the registry client: nothing here can hang.

- Names are resolved in a helper thread the caller waits for at most until its deadline
  (``getaddrinfo`` itself cannot be given a timeout).
- Every socket operation has the per-operation timeout (``cache.remote.timeout``) or what is
  left of the call's deadline, whichever is shorter.
- A ``Watchdog`` holds a whole exchange to its deadline: a peer that answers one byte just
  before each timeout (a drip) would otherwise stretch a call without end, since the timeout
  of a socket applies to each receive. At the deadline it shuts the socket down, which ends
  whatever receive or send is waiting, and the caller reports the deadline.
- A blob stream is paced on the bytes actually received (``Pace``): each receive may wait
  what is left of ``timeout + received / MIN_RATE`` (never more than ``timeout``), so a peer
  that drips, whatever length it announced, is cut once it falls below the rate floor.
- A whole operation (a pull, a push) may have a deadline of its own (``Deadline``'s ``cap``,
  the client's ``deadline_at``): no single call outlives it.
- ``http://`` without ``allow_http``: every address the name resolves to must be loopback,
  and the connection goes to those addresses (no second lookup).
- TLS: the system CAs plus ``ca_file`` (read like the credentials file, handed to ssl as
  data: ssl never opens the path), TLS 1.2 at least, the host name checked (an IP literal is
  checked against the certificate's IP addresses).
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
from .credentials import MAX_CA_BYTES, read_protected_file

# Reads and writes move this much per call: the fleet tier races `docker pull` and `curl`,
# and per-chunk Python work is what would lose that race.
BUFFER_SIZE = 1 << 20
# A blob transfer may take `timeout` plus one second per MiB: a registry or link slower than
# this on average is given up on (a 1 GiB layer: 17 minutes).
MIN_RATE = 1 << 20
# No watchdog timer is armed for longer than this (threading's timers overflow past ~9e9 s and
# their thread dies with a traceback); every real bound is far shorter.
MAX_WATCH = 7 * 86400.0


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


class NotLoopback(Exception):
    """An http:// registry name resolved to an address that is not loopback."""


class Deadline:
    """A point in time (monotonic) that a call must finish by: ``seconds`` from now, or the
    whole operation's ``cap`` (a monotonic time) when that comes first (``capped``)."""

    def __init__(self, seconds: float, cap: float | None = None) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.capped = cap is not None and cap < self.end
        if cap is not None and self.capped:
            self.end = cap

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
        self._timer = threading.Timer(min(max(0.0, seconds), MAX_WATCH), self._fire)
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
    """The system CAs plus ``ca_file``; ConfigError when ``ca_file`` cannot be used.

    The file is read like the credentials file (a regular file, no symlink or FIFO, owned by
    root or the reader, writable by nobody else, bounded) and handed over as data: a trust
    root a job could write, or a FIFO that would block ssl's own open(2), is refused."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        what = "cache.remote.ca_file"
        data = read_protected_file(ca_file, what, MAX_CA_BYTES, secret=False)
        try:
            context.load_verify_locations(cadata=_ca_data(data))
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or "unusable"
            raise ConfigError(f"{what}: {ca_file} is not a PEM CA certificate ({reason})") from None
    return context


def _ca_data(data: bytes) -> str | bytes:
    # PEM is ASCII text (ssl wants it as str); anything else is tried as DER.
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return data


class Pace:
    """The rate floor of one stream, on the bytes actually received: a receive may wait what
    is left of ``timeout + received / MIN_RATE`` since the start, at most ``timeout``, and
    never past the operation's ``end``. ``expired`` says which bound ran out."""

    def __init__(self, timeout: float, end: float | None = None) -> None:
        self.timeout = timeout
        self.end = end
        self.start = time.monotonic()
        self.received = 0
        self.expired: str | None = None

    def allowance(self) -> tuple[float, str]:
        """(seconds left, which bound: "rate" or "deadline")."""
        now = time.monotonic()
        left, bound = self.start + self.timeout + self.received / MIN_RATE - now, "rate"
        if self.end is not None and self.end - now < left:
            left, bound = self.end - now, "deadline"
        return left, bound

    def next_timeout(self) -> float:
        """The timeout of the next receive; DeadlinePassed when nothing is left."""
        left, bound = self.allowance()
        if left <= 0:
            self.expired = bound
            raise DeadlinePassed()
        # A receive that times out with less than `timeout` to wait broke this bound.
        self._cut = bound if left < self.timeout else None
        return min(self.timeout, left)

    def why(self) -> str | None:
        """The bound that ran out ("rate", "deadline"), if one did: a receive that timed
        out was given less than the per-operation timeout because of it."""
        cut = getattr(self, "_cut", None)
        if cut == "rate" and not self.received:
            cut = None  # nothing came at all: a stall, which the timeout names
        return self.expired or cut


class _SockRaw(io.RawIOBase):
    """The socket as a raw stream, one C call per receive (a TLS record, or what recv has),
    each paced when a ``Pace`` is set (blob streams).

    ``SSLSocket.makefile`` stacks three Python calls per 16 KiB record (SocketIO.readinto,
    SSLSocket.recv_into, SSLSocket.read): at registry speeds that is a quarter of a blob's
    CPU time. The socket's timeout still bounds each read (the C read waits with it, a TLS
    read as a whole)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.pace: Pace | None = None
        sslobj = getattr(sock, "_sslobj", None)
        self._tls = sslobj is not None
        self._read = sslobj.read if sslobj is not None else None
        # As socket.makefile's SocketIO does: the connection may close the socket while its
        # answer is still being read; the descriptor closes when the answer does.
        sock._io_refs += 1  # type: ignore[attr-defined]

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._sock._decref_socketios()  # type: ignore[attr-defined]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        pace = self.pace
        if pace is not None:
            self._sock.settimeout(pace.next_timeout())
        count = self._receive(buffer)
        if pace is not None:
            pace.received += count
        return count

    def _receive(self, buffer: Any) -> int:
        if not self._tls:
            return self._sock.recv_into(buffer)
        try:
            return self._read(len(buffer), buffer)
        except ssl.SSLError as exc:
            if exc.args and exc.args[0] == ssl.SSL_ERROR_EOF:
                return 0  # a peer that closed without close_notify: the length check decides
            raise


class _Response(http.client.HTTPResponse):
    """An answer read through ``_SockRaw`` (see there) instead of ``sock.makefile``."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the SocketIO made by makefile: the socket itself stays open
        self.fp = io.BufferedReader(_SockRaw(sock), 1 << 16)


def set_pace(resp: http.client.HTTPResponse, pace: Pace) -> None:
    """Pace every further receive of ``resp``'s body."""
    raw = getattr(getattr(resp, "fp", None), "raw", None)
    if isinstance(raw, _SockRaw):
        raw.pace = pace


class _Plain(http.client.HTTPConnection):
    response_class = _Response

    def __init__(self, origin: Origin, addresses: list, timeout: float) -> None:
        super().__init__(origin.host, origin.port, timeout=timeout, blocksize=BUFFER_SIZE)
        self.rk_addresses = addresses

    def connect(self) -> None:
        self.sock = _open_socket(self.rk_addresses, self.timeout)


class _Secure(http.client.HTTPSConnection):
    response_class = _Response

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
    origin: Origin,
    context: ssl.SSLContext | None,
    timeout: float,
    deadline: Deadline,
    loopback_only: bool = False,
) -> http.client.HTTPConnection:
    """A connection (not yet connected: the first request connects, under its watchdog).
    ``loopback_only``: NotLoopback unless every address of the host is loopback; the
    connection then goes to exactly those addresses."""
    addresses = resolve(origin.host, origin.port, deadline, timeout)
    if loopback_only:
        outside = sorted({str(a[4][0]) for a in addresses if not _is_loopback_address(a[4][0])})
        if outside or not addresses:
            raise NotLoopback(", ".join(outside) or "no address")
    op_timeout = deadline.op_timeout(timeout)
    if origin.scheme == "https":
        if context is None:  # a caller's bug, never a peer's: https always builds a context
            raise RuntimeError("an https connection needs a TLS context")
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


def _is_loopback_address(address: Any) -> bool:
    try:
        return ipaddress.ip_address(str(address).partition("%")[0]).is_loopback
    except ValueError:
        return False


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
    if isinstance(exc, ValueError):
        # http.client encodes the request as ASCII/latin-1: a URL or header it cannot send.
        return f"the request cannot be sent ({exc.__class__.__name__}: a URL or header it refuses)"
    return exc.__class__.__name__
