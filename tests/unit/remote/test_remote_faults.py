"""Peers that misbehave: a fake HTTP peer on loopback does what a real registry cannot be made
to do on demand (stall after accepting, drip bytes, cut a blob short, redirect anywhere, lie
about digests, page forever, answer 5xx or a Bearer challenge). Each test asserts what the
client reports, so a missing bound shows as a wrong outcome, not only as a slow test."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time

import pytest
from remote_helpers import answer, blob, fake_client, fake_peer
from runnerkeep.remote import (
    Credentials,
    RegistryClient,
    RemoteAuthError,
    RemoteDataError,
    RemoteError,
    RemoteMiss,
    RemoteUnavailable,
    remote_settings,
)

INDEX = "application/vnd.oci.image.index.v1+json"
SECRET = "Pa55-word-hunter2"
# The longest any fake peer waits before giving up by itself (bounded, never forever).
PEER_PATIENCE = 20


def stall(conn, peer):
    peer.read_head(conn)
    peer.stop.wait(PEER_PATIENCE)  # accepts and reads, never answers


def test_a_peer_that_never_answers_is_unavailable_within_the_timeout():
    with fake_peer(stall) as peer:
        c = fake_client(peer.url, timeout=0.5)
        with pytest.raises(RemoteUnavailable, match=r"no complete answer within 0\.5s|no answer"):
            c.check()


def test_a_dripping_peer_is_cut_at_the_deadline():
    """One byte every 0.25 s: each receive succeeds within the 2 s timeout, so only the
    call's deadline (the watchdog) stops it; unstopped, the answer would be a valid 200.
    A gap is an eighth of the timeout, so a busy host that holds this process (the peer is a
    thread of it) for over a second still delivers every byte in time. The cut comes inside
    the status line (8 of its 17 bytes); a cut after the status code is the next test's."""
    whole = answer("200 OK", {"Content-Type": "application/json", "X-Pad": "p" * 100}, b"{}")

    def drip(conn, peer):
        peer.read_head(conn)
        for byte in whole:
            if peer.stop.wait(0.25):
                return
            conn.sendall(bytes([byte]))

    with fake_peer(drip) as peer:
        c = fake_client(peer.url, timeout=2.0)
        with pytest.raises(RemoteUnavailable, match=r"no complete answer within 2s"):
            c.check()


def test_a_head_cut_after_the_status_code_is_no_answer():
    """The watchdog cuts the head after "200": http.client takes the shut socket for the end
    of the head, and a call that trusted it would report a registry that never answered in
    full as fine. One byte every 0.1 s against a 2 s deadline: the cut lands around byte 20
    of a 150-byte head (earlier on a busy host, which fails the same way)."""
    whole = answer("200 OK", {"Content-Type": "application/json", "X-Pad": "p" * 100}, b"{}")

    def drip(conn, peer):
        peer.read_head(conn)
        for byte in whole:
            if peer.stop.wait(0.1):
                return
            conn.sendall(bytes([byte]))

    with fake_peer(drip) as peer:
        c = fake_client(peer.url, timeout=2.0)
        with pytest.raises(RemoteUnavailable, match=r"no complete answer within 2s"):
            c.check()


def test_a_body_without_a_length_cut_by_the_deadline_is_no_answer():
    """A body that ends with the connection (no Content-Length): the watchdog's cut looks
    like its end. The head comes at once, the body drips past the 2 s deadline."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"

    def drip(conn, peer):
        peer.read_head(conn)
        conn.sendall(head)
        for byte in b"{" + b" " * 200 + b"}":
            if peer.stop.wait(0.1):
                return
            conn.sendall(bytes([byte]))

    with fake_peer(drip) as peer:
        c = fake_client(peer.url, timeout=2.0)
        with pytest.raises(RemoteUnavailable, match=r"no complete answer within 2s"):
            c.check()


def test_a_refused_connection_is_unavailable():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    c = fake_client(f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteUnavailable, match=r"connection refused by 127\.0\.0\.1"):
        c.check()
    assert c.bytes_sent == 0


def test_a_hanging_name_lookup_is_bounded(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow.example":
            time.sleep(3)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    c = RegistryClient(
        remote_settings({"remote": {"url": "https://slow.example/r", "timeout": 0.3}})
    )
    with pytest.raises(RemoteUnavailable, match=r"no answer within 0\.3s"):
        c.check()


def test_a_name_that_does_not_resolve(monkeypatch):
    def fail(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    c = RegistryClient(remote_settings({"remote": {"url": "https://nowhere.example/r"}}))
    with pytest.raises(RemoteUnavailable, match=r"cannot resolve nowhere\.example"):
        c.check()


# --- blobs that go wrong on the way -----------------------------------------------------------


def test_a_blob_that_stops_mid_stream_is_unavailable():
    def handler(conn, peer):
        peer.read_head(conn)
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {10_000_000}\r\n\r\n".encode()
        conn.sendall(head + b"x" * 1000)
        peer.stop.wait(PEER_PATIENCE)

    with fake_peer(handler) as peer:
        c = fake_client(peer.url, timeout=0.5)
        _data, digest = blob(1)
        stream = c.open_blob(digest)
        assert stream.size == 10_000_000
        with pytest.raises(RemoteUnavailable) as caught:
            while stream.read(1 << 20):
                pass
        # The 1000 bytes that came are not handed out: the read that wanted more failed.
        assert "no answer within 0.5s, after 0 of 10000000 bytes" in str(caught.value)
        stream.close()


def test_a_blob_cut_short_is_unavailable_never_short_data():
    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"y" * 2000)

    with fake_peer(handler) as peer:
        c = fake_client(peer.url)
        _data, digest = blob(1)
        buffer = bytearray(1 << 20)
        with c.open_blob(digest) as stream, pytest.raises(RemoteUnavailable, match="of 5000"):
            while stream.readinto(buffer):
                pass


def test_a_tls_blob_cut_short_without_close_notify_is_unavailable(tls_registry):
    """Over TLS a peer that just drops the connection (no close_notify) mid-blob is a short
    stream, never a complete one."""

    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"t" * 100_000)
        os.close(conn.detach())  # drop the TCP connection under TLS, no close_notify

    with fake_peer(handler, tls_from=tls_registry) as peer:
        c = fake_client(peer.url, ca_file=tls_registry.ca_file)
        _data, digest = blob(1)
        buffer = bytearray(1 << 16)
        with c.open_blob(digest) as stream, pytest.raises(RemoteUnavailable, match="of 300000"):
            while stream.readinto(buffer):
                pass
        assert stream.received <= 100_000


def test_a_dripping_blob_is_cut_by_the_rate_floor():
    """Content-Length 200 at one byte per 0.05 s (10 s in all): the blob's allowance is
    timeout + size / MIN_RATE, about 0.5 s."""

    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
        for _ in range(200):
            if peer.stop.wait(0.05):
                return
            conn.sendall(b"z")

    with fake_peer(handler) as peer:
        c = fake_client(peer.url, timeout=0.5)
        _data, digest = blob(1)
        with c.open_blob(digest) as stream, pytest.raises(RemoteUnavailable) as caught:
            while stream.read(100):
                pass
    assert "slower than 1 MiB/s" in str(caught.value)


def test_a_blob_without_a_length_is_read_to_its_end_and_paced():
    data = b"chunked-body" * 1000

    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(data), 5000):
            part = data[start : start + 5000]
            conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.sendall(b"0\r\n\r\n")

    with fake_peer(handler) as peer:
        c = fake_client(peer.url)
        with c.open_blob("sha256:" + hashlib.sha256(data).hexdigest()) as stream:
            assert stream.size is None
            assert stream.read() == data


# --- statuses ----------------------------------------------------------------------------------


def status_peer(status: str, headers=None, body: bytes = b""):
    def handler(conn, peer):
        while not peer.stop.is_set():
            if not peer.read_head(conn):
                return
            conn.sendall(answer(status, headers, body))

    return handler


@pytest.mark.parametrize(
    "status, code",
    [
        ("503 Service Unavailable", "UNAVAILABLE"),
        ("500 Internal Server Error", "UNKNOWN"),
        ("502 Bad Gateway", None),
        ("429 Too Many Requests", "TOOMANYREQUESTS"),
    ],
)
def test_server_errors_are_unavailable(status, code):
    body = b'{"errors":[{"code":"%s","message":"try later"}]}' % (code or "X").encode()
    peer_of = fake_peer(status_peer(status, {"Content-Type": "application/json"}, body))
    with peer_of as peer, pytest.raises(RemoteUnavailable) as caught:
        fake_client(peer.url).get_manifest("k", (INDEX,))
    assert caught.value.status == int(status.split()[0])


def test_a_bearer_challenge_says_token_auth_is_not_spoken():
    headers = {"WWW-Authenticate": 'Bearer realm="https://auth.example/token"'}
    with (
        fake_peer(status_peer("401 Unauthorized", headers)) as peer,
        pytest.raises(RemoteAuthError, match="token \\(Bearer\\) auth"),
    ):
        fake_client(peer.url).check()


def test_403_is_an_auth_error_naming_push_rights():
    body = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}'
    says = "no push rights for runnerkeep/cache"
    with (
        fake_peer(status_peer("403 Forbidden", {}, body)) as peer,
        pytest.raises(RemoteAuthError, match=says) as e,
    ):
        fake_client(peer.url).put_manifest("k", INDEX, b"{}")
    assert e.value.code == "DENIED"


def test_a_registry_echoing_the_password_is_redacted():
    """Nothing the client says may hold the password, even when the peer quotes it back."""
    body = (f'{{"errors":[{{"code":"DENIED","message":"bad password {SECRET}"}}]}}').encode()
    with fake_peer(status_peer("400 Bad Request", {}, body)) as peer:
        c = fake_client(peer.url, creds=Credentials("pusher", SECRET))
        with pytest.raises(RemoteError) as caught:
            c.check()
    assert SECRET not in str(caught.value) and "***" in str(caught.value)


def test_a_huge_error_body_is_not_read_whole():
    body = b"E" * (8 << 20)
    with fake_peer(status_peer("404 Not Found", {}, body)) as peer:
        c = fake_client(peer.url)
        with pytest.raises(RemoteMiss):
            c.get_manifest("k", (INDEX,))
    assert c.bytes_received <= 64 * 1024 + 1


def test_an_oversized_manifest_is_refused():
    big = b"{" + b" " * (5 << 20) + b"}"
    with (
        fake_peer(status_peer("200 OK", {"Content-Type": INDEX}, big)) as peer,
        pytest.raises(RemoteDataError, match="larger than 4194304 bytes"),
    ):
        fake_client(peer.url).get_manifest("k", (INDEX,))

    def no_length(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        conn.sendall(big)

    with fake_peer(no_length) as peer:
        c = fake_client(peer.url)
        with pytest.raises(RemoteDataError, match="larger than"):
            c.get_manifest("k", (INDEX,))
        assert c.bytes_received <= (4 << 20) + 1


def test_a_digest_header_that_disagrees_is_bad_data():
    data = b'{"schemaVersion":2}'
    lie = "sha256:" + "0" * 64
    headers = {"Content-Type": INDEX, "Docker-Content-Digest": lie}
    with (
        fake_peer(status_peer("200 OK", headers, data)) as peer,
        pytest.raises(RemoteDataError, match="names digest sha256:0000"),
    ):
        fake_client(peer.url).get_manifest("k", (INDEX,))


def test_a_manifest_served_for_another_digest_is_bad_data():
    data = b'{"schemaVersion":2,"other":"key"}'
    asked = "sha256:" + hashlib.sha256(b"what we asked for").hexdigest()
    with (
        fake_peer(status_peer("200 OK", {"Content-Type": INDEX}, data)) as peer,
        pytest.raises(RemoteDataError, match="the bytes served hash to"),
    ):
        fake_client(peer.url).get_manifest(asked, (INDEX,))


def test_a_media_type_missing_from_the_header_comes_from_the_body():
    data = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}'
    with fake_peer(status_peer("200 OK", {}, data)) as peer:
        assert fake_client(peer.url).get_manifest("k", (INDEX,)).media_type == INDEX


def test_a_peer_that_closes_after_each_answer_is_reconnected():
    def one_answer(conn, peer):
        if peer.read_head(conn):
            conn.sendall(answer("200 OK", {}, b"{}"))  # keep-alive implied, then closed

    with fake_peer(one_answer) as peer:
        c = fake_client(peer.url)
        for _ in range(4):
            c.check()
        assert len(peer.requests) == 4


# --- pagination and locations ----------------------------------------------------------------


def test_pagination_that_loops_is_bad_data():
    link = {"Link": '</v2/runnerkeep/cache/tags/list?n=1&last=a>; rel="next"'}
    with (
        fake_peer(status_peer("200 OK", link, b'{"tags":["a"]}')) as peer,
        pytest.raises(RemoteDataError, match="pagination does not end"),
    ):
        fake_client(peer.url).list_tags()


def test_pagination_elsewhere_is_refused():
    link = {"Link": '<https://evil.example/v2/runnerkeep/cache/tags/list?n=1>; rel="next"'}
    with (
        fake_peer(status_peer("200 OK", link, b'{"tags":["a"]}')) as peer,
        pytest.raises(RemoteDataError, match="a next page elsewhere"),
    ):
        fake_client(peer.url).list_tags()


def test_a_malformed_tag_list_is_bad_data():
    with (
        fake_peer(status_peer("200 OK", {}, b'{"tags":["ok","../bad"]}')) as peer,
        pytest.raises(RemoteDataError, match="malformed"),
    ):
        fake_client(peer.url).list_tags()


def test_an_upload_location_on_another_host_is_refused():
    where = {"Location": "http://198.51.100.7:5000/v2/runnerkeep/cache/blobs/uploads/u?_state=s"}
    with fake_peer(status_peer("202 Accepted", where)) as peer:
        data, digest = blob(10)
        with pytest.raises(RemoteError, match="points to another host") as caught:
            fake_client(peer.url).upload_blob(digest, io.BytesIO(data), 10)
    assert "_state" not in str(caught.value)


def test_the_upload_location_keeps_its_query_and_gets_the_digest():
    def handler(conn, peer):
        while not peer.stop.is_set():
            head = peer.read_head(conn)
            if not head:
                return
            if head.startswith("POST"):
                conn.sendall(answer("202 Accepted", {"Location": "/upload/u1?_state=abc"}))
            else:
                length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
                peer.bodies.append(peer.read_body(conn, length))
                conn.sendall(answer("201 Created", {}))

    with fake_peer(handler) as peer:
        data, digest = blob(3000)
        fake_client(peer.url).upload_blob(digest, io.BytesIO(data), len(data))
    assert peer.bodies == [data]
    put = peer.requests[1].split("\r\n")[0]
    assert put == f"PUT /upload/u1?_state=abc&digest={digest.replace(':', '%3A')} HTTP/1.1"


# --- redirects ---------------------------------------------------------------------------------


def redirect_peer(location_of):
    """Answers every request with a 307 to ``location_of(peer)``."""

    def handler(conn, peer):
        while not peer.stop.is_set():
            if not peer.read_head(conn):
                return
            conn.sendall(answer("307 Temporary Redirect", {"Location": location_of(peer)}))

    return handler


def serve_blob(data: bytes):
    def handler(conn, peer):
        while not peer.stop.is_set():
            if not peer.read_head(conn):
                return
            conn.sendall(answer("200 OK", {}, data))

    return handler


def test_a_redirect_on_the_same_origin_is_followed_with_credentials():
    data, digest = blob(100)

    def handler(conn, peer):
        while not peer.stop.is_set():
            head = peer.read_head(conn)
            if not head:
                return
            if "/moved/" in head.split("\r\n")[0]:
                conn.sendall(answer("200 OK", {}, data))
            else:
                conn.sendall(answer("307 Temporary Redirect", {"Location": "/moved/blob"}))

    with fake_peer(handler) as peer:
        c = fake_client(peer.url, creds=Credentials("u", SECRET))
        with c.open_blob(digest) as stream:
            assert stream.read() == data
    assert all("Authorization: Basic" in head for head in peer.requests)


def test_a_redirect_to_another_host_over_tls_drops_the_credentials(tls_registry):
    data, digest = blob(100)
    with fake_peer(serve_blob(data), tls_from=tls_registry) as storage:
        to = f"{storage.url}/bucket/blob?X-Amz-Signature=deadbeef"
        with fake_peer(redirect_peer(lambda _p: to), tls_from=tls_registry) as reg:
            c = fake_client(reg.url, ca_file=tls_registry.ca_file, creds=Credentials("u", SECRET))
            with c.open_blob(digest) as stream:
                assert stream.read() == data
            assert c.blob_size(digest) == 100
    assert all("Authorization" in head for head in reg.requests)
    assert storage.requests and not any("Authorization" in h for h in storage.requests)
    assert storage.requests[0].startswith("GET /bucket/blob?X-Amz-Signature=deadbeef ")


@pytest.mark.parametrize(
    "location, says",
    [
        ("http://127.0.0.1:{other}/x", "another host without TLS"),
        ("ftp://127.0.0.1/x", "refused a redirect to ftp"),
        ("file:///etc/passwd", "refused a redirect"),
        ("http://user:pw@127.0.0.1:{other}/x", "refused a redirect"),
    ],
)
def test_redirects_to_plain_elsewhere_are_refused(location, says):
    with fake_peer(serve_blob(b"x")) as other:
        where = location.format(other=other.port)
        with fake_peer(redirect_peer(lambda _p: where)) as peer:
            _data, digest = blob(1)
            with pytest.raises(RemoteError, match=says) as caught:
                fake_client(peer.url).open_blob(digest)
        assert not other.requests
    assert "pw" not in str(caught.value)


def test_https_to_http_is_refused(tls_registry):
    with fake_peer(serve_blob(b"x")) as plain:
        where = f"http://127.0.0.1:{plain.port}/x"
        with fake_peer(redirect_peer(lambda _p: where), tls_from=tls_registry) as peer:
            _data, digest = blob(1)
            c = fake_client(peer.url, ca_file=tls_registry.ca_file)
            with pytest.raises(RemoteError, match="from https to http"):
                c.open_blob(digest)
        assert not plain.requests


def test_more_than_three_redirects_are_refused():
    with fake_peer(redirect_peer(lambda p: f"/hop/{len(p.requests)}")) as peer:
        _data, digest = blob(1)
        with pytest.raises(RemoteError, match="more than 3 redirects"):
            fake_client(peer.url).blob_size(digest)
    assert len(peer.requests) == 4


def test_writes_never_follow_redirects():
    with (
        fake_peer(redirect_peer(lambda _p: "/elsewhere")) as peer,
        pytest.raises(RemoteError, match="unexpected redirect"),
    ):
        fake_client(peer.url).put_manifest("k", INDEX, b"{}")
    assert peer.requests[0].startswith("PUT /v2/runnerkeep/cache/manifests/k ")
    assert not any("/elsewhere" in head for head in peer.requests)
