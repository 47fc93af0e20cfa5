"""A client of the OCI Distribution API (CNCF Distribution, Debian's ``docker-registry``),
standard library only: http.client + ssl, token-less basic auth.

    client = RegistryClient(settings, read_credentials(settings.credentials_file))
    client.check()                                  # GET /v2/: reachability and credentials
    size = client.blob_size(digest)                 # HEAD; None when absent
    with client.open_blob(digest) as blob:          # streamed; the caller verifies the bytes
        n = blob.readinto(buffer)
    client.upload_blob(digest, reader, size)        # POST + one streamed PUT (or PATCH chunks)
    manifest = client.get_manifest("KEY", accept=(OCI_INDEX,))
    digest = client.put_manifest("KEY", OCI_INDEX, data)
    tags = client.list_tags()
    client.delete_manifest(digest)

Bounds (nothing waits or buffers without one):
- every socket operation: ``settings.timeout``; every call that is not a blob stream, its
  redirects and its one reconnect included: ``settings.timeout`` as a whole (a watchdog shuts
  the socket down at the deadline, so a peer dripping bytes cannot stretch it);
- blob streams: a rate floor on the bytes actually received (``transport.Pace``): each
  receive may wait what is left of ``timeout + received / MIN_RATE``, so the length a peer
  announces never buys it time;
- a whole operation: ``deadline`` (a monotonic time, or ``with client.deadline(seconds)``)
  caps every call, stream and upload made until then;
- redirects (GET and HEAD of blobs, which S3-backed registries send elsewhere): at most 3,
  never https -> http, never to another scheme, never to another host without TLS, and the
  credentials go only to the registry itself;
- error bodies are read up to 64 KiB, manifests up to 4 MiB, tag lists up to 1000 pages.

One HTTP connection is kept alive per client and reused; one the server closed while idle is
noticed before use (or on a failed first write) and opened again. A ``BlobReader`` holds the
connection until it is read to the end or closed; calls meanwhile use another one. A client
is not thread-safe: give each thread its own (they share nothing but the settings).

Errors are ``remote.errors`` classes; their messages never hold the password or an
``Authorization`` header, and what the registry says is escaped and shortened.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import quote, urljoin, urlsplit

from ..errors import ConfigError
from ..secrets import peer_excerpt, redact_text, redact_url
from ..statefile import loads_strict
from ..textutil import escape_text
from .credentials import Credentials
from .errors import (
    RemoteAuthError,
    RemoteDataError,
    RemoteError,
    RemoteMiss,
    RemoteReadOnly,
    RemoteUnavailable,
)
from .remote_config import RemoteSettings
from .transport import (
    BUFFER_SIZE,
    MIN_RATE,
    Deadline,
    DeadlinePassed,
    NotLoopback,
    Origin,
    Pace,
    Watchdog,
    dropped,
    open_connection,
    set_pace,
    set_timeout,
    tls_context,
    transport_reason,
)

MAX_REDIRECTS = 3
MAX_ERROR_BODY = 64 << 10
MAX_MANIFEST_BYTES = 4 << 20
MAX_TAG_PAGES = 1000
MAX_TAGS = 1_000_000
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9!#$&^_.+-]{1,127}")
USER_AGENT = "runnerkeep-fleet-cache"
# Failures of a kept-alive connection the server had closed: the request is sent again once.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_TRANSPORT = (OSError, http.client.HTTPException, DeadlinePassed)
# Sending a request: http.client also raises ValueError (UnicodeEncodeError of a URL a peer
# handed us, a header value it refuses).
_REQUEST = (*_TRANSPORT, ValueError)
LENGTH_RE = re.compile(r"[0-9]{1,20}")
# A URL a peer hands us (Location, Link) is used only when it is printable ASCII.
ASCII_URL_RE = re.compile(r"[\x21-\x7e]+")

_TIMEOUTS = (socket.timeout, DeadlinePassed)

Progress = Callable[[int], None]


class Manifest(NamedTuple):
    """A manifest as served: its media type (Content-Type without parameters), the exact
    bytes, and their sha256 digest (checked against the reference or the registry's header)."""

    media_type: str
    data: bytes
    digest: str


class _Exchange(NamedTuple):
    """An answer whose body is still on the connection."""

    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse
    origin: Origin
    dog: Watchdog


class RegistryClient:
    """The Distribution API of one repository (``settings.repository``) at one registry."""

    def __init__(
        self,
        settings: RemoteSettings,
        credentials: Credentials | None = None,
        deadline: float | None = None,
    ) -> None:
        self.settings = settings
        # The whole operation's end (time.monotonic()): no call, stream or upload outlives it.
        self.deadline_at = deadline
        self.origin = Origin(settings.scheme, settings.host, settings.port)
        self.base = f"/v2/{settings.repository}"
        self.user = credentials.user if credentials is not None else None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._context = tls_context(settings.ca_file) if settings.scheme == "https" else None
        self._auth: str | None = None
        self._secrets: list[str] = []
        if credentials is not None:
            token = base64.b64encode(f"{credentials.user}:{credentials.password}".encode()).decode()
            self._auth = f"Basic {token}"
            found = (credentials.password, token, escape_text(credentials.password))
            self._secrets = sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)
        self._conn: http.client.HTTPConnection | None = None

    def __repr__(self) -> str:
        return f"RegistryClient({self.settings.url!r}, user={self.user!r})"

    def close(self) -> None:
        """Close the kept-alive connection (a later call opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[RegistryClient]:
        """Every call made inside ends within ``seconds`` from now (or the deadline already
        set, when that is sooner): a pull or push as a whole, not only each step."""
        before = self.deadline_at
        end = time.monotonic() + seconds
        self.deadline_at = end if before is None else min(before, end)
        try:
            yield self
        finally:
            self.deadline_at = before

    # --- the API ---------------------------------------------------------------------------

    def check(self) -> None:
        """GET /v2/: the registry answers and takes the credentials (RemoteAuthError if not)."""
        try:
            self._call("GET", "/v2/", "GET /v2/", ok=(200,))
        except RemoteMiss:
            raise self._error(
                RemoteError, "GET /v2/", "answered 404: this is not an OCI registry", 404
            ) from None

    def blob_size(self, digest: str) -> int | None:
        """The size of blob ``digest`` in the repository, None when it is absent."""
        _check_digest(digest)
        what = f"HEAD blob {digest}"
        try:
            resp, _data = self._call("HEAD", f"{self.base}/blobs/{digest}", what, follow=True)
        except RemoteMiss:
            return None
        length = (resp.getheader("Content-Length") or "").strip()
        if not LENGTH_RE.fullmatch(length):
            raise self._error(RemoteDataError, what, "no Content-Length in the answer")
        return int(length)

    def open_blob(self, digest: str) -> BlobReader:
        """A stream of blob ``digest`` (RemoteMiss when absent). The caller verifies it."""
        _check_digest(digest)
        what = f"GET blob {digest}"
        exchange = self._open("GET", f"{self.base}/blobs/{digest}", what, {}, follow=True)
        if exchange.resp.status != 200:
            self._fail(exchange, what)
        exchange.dog.stop()
        return BlobReader(self, exchange, digest)

    def upload_blob(
        self,
        digest: str,
        reader: BinaryIO,
        size: int,
        progress: Progress | None = None,
        chunk_size: int | None = None,
    ) -> None:
        """Upload ``size`` bytes of ``reader`` as blob ``digest``: one streamed PUT, or PATCH
        requests of ``chunk_size`` bytes and a closing PUT. The registry checks the digest
        (a mismatch is RemoteError with code DIGEST_INVALID). ``progress(bytes_sent)``."""
        _check_digest(digest)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"upload_blob: size must be a whole number >= 0, got {size!r}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"upload_blob: chunk_size must be >= 1, got {chunk_size!r}")
        what = f"upload blob {digest}"
        location = self._start_upload(what)
        if chunk_size is None:
            target = _with_digest(location, digest)
            resp, _answer = self._send_stream(
                "PUT", target, reader, size, 0, progress, what, (201,)
            )
        else:
            location = self._patch_chunks(location, reader, size, chunk_size, progress, what)
            headers = {"Content-Type": "application/octet-stream"}
            resp, _answer = self._call(
                "PUT", _with_digest(location, digest), what, headers, b"", ok=(201,)
            )
        self._check_header_digest(resp, digest, what)

    def get_manifest(self, reference: str, accept: tuple[str, ...]) -> Manifest:
        """The manifest (or index) at a tag or digest; the digest is checked against the
        reference (by digest) or the registry's Docker-Content-Digest (by tag)."""
        by_digest = _check_reference(reference)
        what = f"GET manifest {reference}"
        headers = {"Accept": ", ".join(accept)} if accept else {}
        resp, data = self._call(
            "GET", f"{self.base}/manifests/{reference}", what, headers, limit=MAX_MANIFEST_BYTES
        )
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if by_digest and digest != reference:
            raise self._error(RemoteDataError, what, f"the bytes served hash to {digest}")
        self._check_header_digest(resp, digest, what)
        media_type = (resp.getheader("Content-Type") or "").partition(";")[0].strip()
        if not MEDIA_TYPE_RE.fullmatch(media_type):
            media_type = _media_type_in(data)
        return Manifest(media_type, data, digest)

    def put_manifest(self, reference: str, media_type: str, data: bytes) -> str:
        """PUT a manifest (or index) at a tag or digest; returns its sha256 digest."""
        by_digest = _check_reference(reference)
        what = f"PUT manifest {reference}"
        if not MEDIA_TYPE_RE.fullmatch(media_type or ""):
            raise ValueError(f"put_manifest: not a media type: {escape_text(media_type)[:80]}")
        if len(data) > MAX_MANIFEST_BYTES:
            raise self._error(RemoteDataError, what, f"larger than {MAX_MANIFEST_BYTES} bytes")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if by_digest and digest != reference:
            raise ValueError(f"put_manifest: the data hashes to {digest}, not {reference}")
        headers = {"Content-Type": media_type}
        resp, _answer = self._call(
            "PUT", f"{self.base}/manifests/{reference}", what, headers, bytes(data), ok=(201,)
        )
        self._check_header_digest(resp, digest, what)
        return digest

    def list_tags(self, page_size: int | None = None) -> list[str]:
        """Every tag of the repository ([] when the registry does not know the repository),
        following ``Link: <...>; rel="next"`` for at most MAX_TAG_PAGES pages."""
        target = f"{self.base}/tags/list" + (f"?n={int(page_size)}" if page_size else "")
        tags: list[str] = []
        seen: set[str] = set()
        while target:
            if len(seen) >= MAX_TAG_PAGES or target in seen:
                raise self._error(RemoteDataError, "list tags", "pagination does not end")
            seen.add(target)
            try:
                resp, data = self._call("GET", target, "list tags", limit=MAX_MANIFEST_BYTES)
            except RemoteMiss as exc:
                if exc.code == "NAME_UNKNOWN" and len(seen) == 1:
                    return []
                raise
            tags.extend(self._tags_of(data))
            if len(tags) > MAX_TAGS:
                raise self._error(RemoteDataError, "list tags", f"more than {MAX_TAGS} tags")
            target = self._next_page(resp.getheader("Link"), target)
        return tags

    def delete_manifest(self, digest: str) -> None:
        """DELETE the manifest ``digest`` and every tag pointing at it (RemoteMiss when
        absent; RemoteError with code UNSUPPORTED when the registry has deletes disabled)."""
        _check_digest(digest)
        self._call(
            "DELETE", f"{self.base}/manifests/{digest}", f"delete manifest {digest}", ok=(202, 200)
        )

    def delete_blob(self, digest: str) -> None:
        """DELETE the blob ``digest`` from the repository (RemoteMiss when absent; RemoteError
        with code UNSUPPORTED when deletes are disabled). Distribution removes the repository's
        link only: an upload of the same digest afterwards keeps its stored data."""
        _check_digest(digest)
        self._call("DELETE", f"{self.base}/blobs/{digest}", f"delete blob {digest}", ok=(202, 200))

    # --- exchanges ---------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        target: str,
        what: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        follow: bool = False,
        limit: int = MAX_ERROR_BODY,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """One bounded exchange whose answer is read whole (up to ``limit`` bytes)."""
        exchange = self._open(method, target, what, headers or {}, body=body, follow=follow)
        if exchange.resp.status not in ok:
            self._fail(exchange, what)
        data = self._finish(exchange, limit, what)
        return exchange.resp, data

    def _open(
        self,
        method: str,
        target: str,
        what: str,
        headers: dict[str, str],
        body: bytes | None = None,
        follow: bool = False,
    ) -> _Exchange:
        """Send and read the answer's head, following redirects when ``follow``; the body is
        left on the connection, under a watchdog armed for the rest of the deadline."""
        deadline = Deadline(self.settings.timeout, self.deadline_at)
        origin = self.origin
        for hop in range(MAX_REDIRECTS + 1):
            exchange = self._exchange(method, origin, target, headers, body, deadline, what)
            status = exchange.resp.status
            if status not in REDIRECT_STATUSES:
                return exchange
            location = exchange.resp.getheader("Location")
            self._finish(exchange, MAX_ERROR_BODY, what, discard=True)
            if not follow:
                raise self._error(RemoteError, what, f"unexpected redirect ({status})", status)
            if hop == MAX_REDIRECTS:
                raise self._error(RemoteError, what, f"more than {MAX_REDIRECTS} redirects")
            origin, target = self._redirect(origin, target, location, what)
        raise AssertionError("unreachable")

    def _exchange(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        deadline: Deadline,
        what: str,
    ) -> _Exchange:
        for attempt in (1, 2):
            conn, reused = self._take(origin, deadline, what)
            try:
                dog = Watchdog(conn, self._remaining(deadline, what))
            except RemoteError:
                conn.close()
                raise
            try:
                conn.request(method, target, body=body, headers=self._headers(origin, headers))
                resp = conn.getresponse()
                if dog.fired:
                    # Cut after the status code, http.client takes the shut socket for the
                    # end of the head: what came is not the answer.
                    dog.stop()
                    conn.close()
                    raise self._unavailable(what, socket.timeout(), origin, True)
                return _Exchange(conn, resp, origin, dog)
            except _REQUEST as exc:
                fired = dog.stop()
                conn.close()
                if isinstance(exc, _STALE) and reused and attempt == 1 and not fired:
                    continue  # the server closed the idle connection: once more, afresh
                raise self._unavailable(what, exc, origin, fired) from None
        raise AssertionError("unreachable")

    def _send_stream(
        self,
        method: str,
        target: str,
        reader: BinaryIO,
        count: int,
        done: int,
        progress: Progress | None,
        what: str,
        ok: tuple[int, ...],
        extra: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """A request whose body is ``count`` bytes of ``reader``, streamed; the answer read."""
        deadline = Deadline(self.settings.timeout + count / MIN_RATE, self.deadline_at)
        conn, _reused = self._take(self.origin, deadline, what)
        dog = Watchdog(conn, self._remaining(deadline, what))
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(count)}
        headers = self._headers(self.origin, {**headers, **(extra or {})})
        try:
            self._put_head(conn, method, target, headers)
        except _REQUEST as exc:  # incl. a URL or header http.client will not send
            fired = dog.stop()
            conn.close()
            raise self._unavailable(what, exc, self.origin, fired) from None
        try:
            self._pump(conn, reader, count, done, progress, what)
            resp = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The registry may have answered (401, 413...) and closed: say what it said.
            resp = self._early_answer(conn, dog, exc, what)
        except _TRANSPORT as exc:
            fired = dog.stop()
            conn.close()
            raise self._unavailable(what, exc, self.origin, fired) from None
        except BaseException:
            # The reader or the progress callback failed: the request is half sent.
            dog.stop()
            conn.close()
            raise
        exchange = _Exchange(conn, resp, self.origin, dog)
        if resp.status not in ok:
            self._fail(exchange, what)
        return resp, self._finish(exchange, MAX_ERROR_BODY, what)

    def _put_head(
        self, conn: http.client.HTTPConnection, method: str, target: str, headers: dict
    ) -> None:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()

    def _pump(
        self,
        conn: http.client.HTTPConnection,
        reader: BinaryIO,
        count: int,
        done: int,
        progress: Progress | None,
        what: str,
    ) -> None:
        left = count
        while left:
            chunk = reader.read(min(BUFFER_SIZE, left))
            if not chunk:
                raise RemoteError(
                    f"{self.settings.url}: {what}: the data to send ended after "
                    f"{count - left} of {count} bytes"
                )
            if len(chunk) > left:
                chunk = chunk[:left]
            conn.send(chunk)
            left -= len(chunk)
            self.bytes_sent += len(chunk)
            if progress is not None:
                progress(done + count - left)

    def _early_answer(
        self, conn: http.client.HTTPConnection, dog: Watchdog, exc: BaseException, what: str
    ) -> http.client.HTTPResponse:
        try:
            resp = conn.getresponse()
        except _TRANSPORT:
            resp = None
        if resp is None or resp.status < 400:
            fired = dog.stop()
            conn.close()
            raise self._unavailable(what, exc, self.origin, fired) from None
        return resp

    def _start_upload(self, what: str) -> str:
        resp, _answer = self._call("POST", f"{self.base}/blobs/uploads/", what, ok=(202,))
        return self._upload_location(resp, f"{self.base}/blobs/uploads/", what)

    def _patch_chunks(
        self,
        location: str,
        reader: BinaryIO,
        size: int,
        chunk_size: int,
        progress: Progress | None,
        what: str,
    ) -> str:
        start = 0
        while start < size:
            count = min(chunk_size, size - start)
            extra = {"Content-Range": f"{start}-{start + count - 1}"}
            resp, _answer = self._send_stream(
                "PATCH", location, reader, count, start, progress, what, (202,), extra
            )
            location = self._upload_location(resp, location, what)
            start += count
            got = (resp.getheader("Range") or "").strip()
            if got and got != f"0-{start - 1}":
                raise self._error(
                    RemoteDataError,
                    what,
                    f"the registry holds {self._peer(got, 40)} after {start} bytes",
                )
        return location

    # --- connections -------------------------------------------------------------------------

    def _take(
        self, origin: Origin, deadline: Deadline, what: str
    ) -> tuple[http.client.HTTPConnection, bool]:
        """The kept-alive connection when it is still usable, else a new one; True when
        kept-alive (a failure may then be the server having closed it)."""
        timeout = self.settings.timeout
        if origin == self.origin and self._conn is not None:
            conn, self._conn = self._conn, None
            if not dropped(conn):
                set_timeout(conn, min(timeout, self._remaining(deadline, what)))
                return conn, True
            conn.close()
        context = self._context
        if origin.scheme == "https" and context is None:
            context = self._context = tls_context(self.settings.ca_file)
        loopback_only = origin.scheme == "http" and not self.settings.allow_http
        try:
            return open_connection(origin, context, timeout, deadline, loopback_only), False
        except NotLoopback as exc:
            raise self._error(
                RemoteError,
                what,
                f"{origin.host} resolves to {exc} here, not to a loopback address; http:// "
                "(the password in clear) is only for a loopback registry: use https:// with "
                "cache.remote.ca_file, or fix the host's name resolution "
                "(or set cache.remote.allow_http: true)",
            ) from None
        except _TRANSPORT as exc:
            raise self._unavailable(what, exc, origin, False) from None

    def _give_back(self, exchange: _Exchange) -> None:
        conn, resp = exchange.conn, exchange.resp
        usable = not exchange.dog.stop() and resp.isclosed() and not resp.will_close
        if usable and exchange.origin == self.origin and self._conn is None:
            self._conn = conn
        else:
            conn.close()

    def _finish(self, exchange: _Exchange, limit: int, what: str, discard: bool = False) -> bytes:
        """Read the answer's body (at most ``limit`` bytes) and give the connection back."""
        resp = exchange.resp
        if resp.length is not None and resp.length > limit:
            if discard:
                self._give_back(exchange)
                return b""
            exchange.dog.stop()
            exchange.conn.close()
            raise self._error(RemoteDataError, what, f"the answer is larger than {limit} bytes")
        try:
            data = resp.read(limit + 1)
        except _TRANSPORT as exc:
            fired = exchange.dog.stop()
            exchange.conn.close()
            raise self._unavailable(what, exc, exchange.origin, fired) from None
        self.bytes_received += len(data)
        if exchange.dog.stop():
            # The watchdog cut the body: a short read that looks like its end is not.
            exchange.conn.close()
            raise self._unavailable(what, socket.timeout(), exchange.origin, True)
        if len(data) > limit and not discard:
            exchange.dog.stop()
            exchange.conn.close()
            raise self._error(RemoteDataError, what, f"the answer is larger than {limit} bytes")
        self._give_back(exchange)
        return data

    def _headers(self, origin: Origin, extra: dict[str, str]) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, **extra}
        # The password goes to the registry only, never to where it redirects.
        if self._auth is not None and origin == self.origin:
            headers["Authorization"] = self._auth
        return headers

    def _remaining(self, deadline: Deadline, what: str) -> float:
        try:
            return deadline.remaining()
        except DeadlinePassed:
            reason = f"no complete answer within {deadline.seconds:g}s"
            if deadline.capped:
                reason = self._over_deadline() or reason
            raise self._error(RemoteUnavailable, what, reason) from None

    def _over_deadline(self) -> str | None:
        """The words for an operation whose own deadline has passed (None: it has not)."""
        end = self.deadline_at
        if end is None or time.monotonic() < end - 0.01:
            return None
        return "the operation's time ran out (cache.remote.max_duration)"

    def _peer(self, text: Any, limit: int = 160) -> str:
        """What a peer said, safe to show: secrets masked before it is escaped and cut."""
        return peer_excerpt(text, self._secrets, limit)

    # --- locations -----------------------------------------------------------------------------

    def _redirect(
        self, origin: Origin, target: str, location: str | None, what: str
    ) -> tuple[Origin, str]:
        """Where a redirect leads, when the rules allow going there."""
        if not location:
            raise self._error(RemoteDataError, what, "a redirect without a Location")
        self._check_ascii(location, what, "a redirect")
        url = urljoin(origin.url + target, location.strip())
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise self._error(RemoteDataError, what, f"a redirect to a bad URL ({shown})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise self._error(RemoteError, what, f"refused a redirect to {shown}")
        new = Origin(scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80))
        if origin.scheme == "https" and scheme == "http":
            raise self._error(RemoteError, what, f"refused a redirect from https to http ({shown})")
        if new != self.origin and scheme != "https":
            raise self._error(
                RemoteError, what, f"refused a redirect to another host without TLS ({shown})"
            )
        return new, _path_and_query(parts)

    def _upload_location(self, resp: http.client.HTTPResponse, current: str, what: str) -> str:
        """The upload's next URL (relative or absolute, its query kept) as a target on the
        registry's own origin; a Location on another host is refused."""
        location = (resp.getheader("Location") or "").strip()
        if not location:
            raise self._error(RemoteDataError, what, "no Location in the upload's answer")
        self._check_ascii(location, what, "an upload location")
        parts = urlsplit(urljoin(self.origin.url + current, location))
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = -1
        if (parts.hostname or "").lower() != self.origin.host or port != self.origin.port:
            raise self._error(
                RemoteError,
                what,
                f"the upload location points to another host ({redact_url(parts.geturl())}); "
                "set http.host or http.relativeurls in the registry's config",
            )
        # An http:// location behind a TLS proxy stays on our https origin: never downgraded.
        return _path_and_query(parts)

    def _next_page(self, link: str | None, current: str) -> str | None:
        match = re.search(r'<([^>]*)>\s*;\s*rel="?next"?', link or "")
        if match is None:
            return None
        self._check_ascii(match.group(1), "list tags", "a next page")
        parts = urlsplit(urljoin(self.origin.url + current, match.group(1)))
        if parts.path != f"{self.base}/tags/list" or (
            parts.netloc and (parts.hostname or "").lower() != self.origin.host
        ):
            raise self._error(RemoteDataError, "list tags", "a next page elsewhere")
        return _path_and_query(parts)

    def _check_ascii(self, url: str, what: str, kind: str) -> None:
        # http.client sends the request line as ASCII: anything else would fail there.
        if not ASCII_URL_RE.fullmatch(url.strip()):
            raise self._error(RemoteDataError, what, f"{kind} to a URL that is not printable ASCII")

    # --- answers and errors --------------------------------------------------------------------

    def _tags_of(self, data: bytes) -> list[str]:
        try:
            doc = loads_strict(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            doc = None
        tags = doc.get("tags") if isinstance(doc, dict) else None
        if tags is None and isinstance(doc, dict):
            return []
        if not isinstance(tags, list) or not all(
            isinstance(t, str) and TAG_RE.fullmatch(t) for t in tags
        ):
            raise self._error(RemoteDataError, "list tags", "the tag list is malformed")
        return tags

    def _check_header_digest(self, resp: http.client.HTTPResponse, digest: str, what: str) -> None:
        said = (resp.getheader("Docker-Content-Digest") or "").strip()
        if said.startswith("sha256:") and said != digest:
            raise self._error(
                RemoteDataError,
                what,
                f"the registry names digest {self._peer(said, 80)}, the bytes are {digest}",
            )

    def _fail(self, exchange: _Exchange, what: str) -> None:
        """Raise the error an answer that is not a success stands for."""
        resp = exchange.resp
        try:
            body = self._finish(exchange, MAX_ERROR_BODY, what, discard=True)
        except RemoteError:
            body = b""
        raise self._status_error(resp, body, what)

    def _status_error(self, resp: http.client.HTTPResponse, body: bytes, what: str) -> RemoteError:
        status = resp.status
        code, text = _registry_error(body, self._secrets)
        said = f"{status} {code}" if code else f"{status}"
        if text:
            said += f": {text}"
        repo = self.settings.repository
        if status == 401:
            return self._error(RemoteAuthError, what, self._unauthorized(resp, said), status, code)
        if status == 403:
            detail = f"wrong credentials or no push rights for {repo} ({said})"
            return self._error(RemoteAuthError, what, detail, status, code)
        if status == 404:
            return self._error(RemoteMiss, what, f"not in the registry ({said})", status, code)
        if status == 405:
            allow = resp.getheader("Allow") or ""
            if allow and "PUT" not in allow.upper():
                detail = (
                    f"the registry accepts no writes now (405, Allow: {self._peer(allow, 40)}): "
                    "read-only mode (its garbage-collection window) or a pull-only endpoint"
                )
                return self._error(RemoteReadOnly, what, detail, status, code)
            if code == "UNSUPPORTED":
                said += "; enable deletes in the registry (storage.delete.enabled: true)"
            return self._error(RemoteError, what, f"refused ({said})", status, code)
        if status == 429 or status >= 500:
            return self._error(RemoteUnavailable, what, f"unavailable ({said})", status, code)
        return self._error(RemoteError, what, f"refused ({said})", status, code)

    def _unauthorized(self, resp: http.client.HTTPResponse, said: str) -> str:
        challenge = (resp.getheader("WWW-Authenticate") or "").strip().lower()
        if challenge.startswith("bearer"):
            return (
                "the registry asks for token (Bearer) auth, which runnerkeep does not speak; "
                "configure htpasswd (basic) auth on it"
            )
        withheld = self.settings.withheld_for
        if self._auth is None and withheld:
            return (
                f"the registry needs credentials; those of cache.remote.credentials_file "
                f"belong to {withheld} (cache.remote.url) and are not sent elsewhere ({said})"
            )
        if self._auth is None:
            return f"the registry needs credentials; set cache.remote.credentials_file ({said})"
        return f"wrong credentials for user {escape_text(self.user)[:60]!s} ({said})"

    def _unavailable(
        self, what: str, exc: BaseException, origin: Origin, fired: bool
    ) -> RemoteUnavailable:
        over = self._over_deadline() if fired or isinstance(exc, _TIMEOUTS) else None
        if over:
            reason = over
        elif fired:
            reason = f"no complete answer within {self.settings.timeout:g}s"
        else:
            reason = transport_reason(exc, origin, self.settings.timeout)
        if origin != self.origin:
            reason += f" (at {redact_url(origin.url)}, where the registry redirected)"
        return self._error(RemoteUnavailable, what, reason)

    def _error(
        self,
        cls: type[RemoteError],
        what: str,
        detail: str,
        status: int | None = None,
        code: str | None = None,
    ) -> RemoteError:
        message = redact_text(f"{self.settings.url}: {what}: {detail}", self._secrets)
        return cls(message, status=status, code=code)


class BlobReader(io.RawIOBase):
    """A blob as it arrives: ``size`` (Content-Length, None when not sent), ``read(n)``,
    ``readinto(buffer)``, ``close()``; a context manager.

    The stream is paced on what arrives (``transport.Pace``): each receive may wait what is
    left of ``timeout + received / MIN_RATE`` (and never past the client's deadline), so the
    size a peer announces buys it no time. The caller verifies the bytes; this only checks
    that as many arrived as were announced."""

    def __init__(self, client: RegistryClient, exchange: _Exchange, digest: str) -> None:
        super().__init__()
        self.digest = digest
        self.size: int | None = exchange.resp.length
        self.received = 0
        self._client = client
        self._timeout = client.settings.timeout
        self._what = f"GET blob {digest}"
        self._pace = Pace(self._timeout, client.deadline_at)
        set_pace(exchange.resp, self._pace)
        self._exchange: _Exchange | None = exchange
        if self.size == 0:
            self._end()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._exchange is None or not len(view):
            return 0
        try:
            count = self._exchange.resp.readinto(view)
        except _TRANSPORT as exc:
            raise self._failure(exc) from None
        return self._count(count)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._exchange is None or size == 0:
            return b""
        try:
            data = self._exchange.resp.read(size)
        except _TRANSPORT as exc:
            raise self._failure(exc) from None
        self._count(len(data))
        return data

    def readall(self) -> bytes:
        chunks = []
        while True:
            chunk = self.read(BUFFER_SIZE)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _count(self, count: int) -> int:
        self.received += count
        self._client.bytes_received += count
        done = count == 0 or (self.size is not None and self.received >= self.size)
        if done and self._exchange is not None:
            self._end()
        return count

    def _end(self) -> None:
        if self._exchange is not None and self._exchange.dog.fired:
            raise self._failure(socket.timeout())  # cut by the deadline, not the stream's end
        if self.size is not None and self.received != self.size:
            raise self._failure(None)
        exchange, self._exchange = self._exchange, None
        if not exchange.resp.isclosed():
            try:
                exchange.resp.read()  # nothing is left: this marks the answer complete
            except _TRANSPORT:
                exchange.conn.close()
                return
        self._client._give_back(exchange)

    def _failure(self, exc: BaseException | None) -> RemoteError:
        """The error for a stream that broke (``exc``) or ended early (None)."""
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.conn.close()
        bound = self._pace.why() if isinstance(exc, _TIMEOUTS) else None
        if bound == "deadline":
            reason = self._client._over_deadline() or "the operation's time ran out"
        elif bound == "rate":
            seconds = time.monotonic() - self._pace.start
            reason = (
                f"not received within {seconds:.1f}s (slower than {MIN_RATE >> 20} MiB/s on "
                "average)"
            )
        elif exc is None:
            reason = "the stream ended"
        else:
            reason = transport_reason(exc, self._client.origin, self._timeout)
        where = f"{reason}, after {self.received}"
        where += f" of {self.size} bytes" if self.size is not None else " bytes"
        return self._client._error(RemoteUnavailable, self._what, where)

    def close(self) -> None:
        if not self.closed:
            exchange, self._exchange = self._exchange, None
            if exchange is not None:
                exchange.conn.close()  # not read to its end: the connection is unusable
        super().close()

    def __repr__(self) -> str:
        return f"BlobReader({self.digest!r}, size={self.size})"


def _check_digest(digest: Any) -> None:
    # Digests often come from a registry's manifest: a bad one is bad remote data.
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        shown = escape_text(digest)[:80] if isinstance(digest, str) else type(digest).__name__
        raise RemoteDataError(f"not a sha256 digest: {shown}")


def _check_reference(reference: Any) -> bool:
    """True for a digest, False for a tag; RemoteDataError / ConfigError for neither."""
    if isinstance(reference, str) and ":" in reference:
        _check_digest(reference)
        return True
    if not isinstance(reference, str) or not TAG_RE.fullmatch(reference):
        shown = escape_text(reference)[:80] if isinstance(reference, str) else "a non-string"
        raise ConfigError(
            f"{shown} is not a registry tag: up to 128 letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return False


def _with_digest(location: str, digest: str) -> str:
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={quote(digest, safe='')}"


def _path_and_query(parts: Any) -> str:
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _registry_error(body: bytes, secrets: list[str]) -> tuple[str | None, str]:
    """(first error code, its message: secrets masked, escaped, shortened) of a Distribution
    error body."""
    try:
        doc = loads_strict(body) if body else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    errors = doc.get("errors") if isinstance(doc, dict) else None
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, dict):
        # Not Distribution's JSON: a proxy's or Go's own words ("Client sent an HTTP request
        # to an HTTPS server."), shown as one short escaped line.
        text = body.decode("utf-8", "replace").strip() if doc is None else ""
        return None, peer_excerpt(text, secrets, 160)
    code = first.get("code")
    code = code if isinstance(code, str) and re.fullmatch(r"[A-Z_]{1,40}", code) else None
    message = first.get("message")
    text = peer_excerpt(message, secrets, 160) if isinstance(message, str) else ""
    return code, text


def _media_type_in(data: bytes) -> str:
    try:
        doc = loads_strict(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    value = doc.get("mediaType") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and MEDIA_TYPE_RE.fullmatch(value) else ""
