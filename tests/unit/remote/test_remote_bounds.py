"""The bounds a hostile or broken peer cannot move (attack16 F1, F4, F11, F13): a blob stream
paced on the bytes that actually arrive (never on the size the peer announced), a deadline
for a whole operation, no watchdog timer beyond its cap, odd headers as bad data, http:// to
loopback only by address, and the CA file read like the credentials file. Each test asserts
what the client reports; durations are bounded by the fake peers' patience, never asserted."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

import pytest
from remote_helpers import answer, blob, fake_client, fake_peer
from runnerkeep.errors import ConfigError
from runnerkeep.remote import (
    RegistryClient,
    RemoteDataError,
    RemoteError,
    RemoteUnavailable,
    remote_settings,
    transport,
)
from runnerkeep.remote.remote_config import DEFAULT_MAX_DURATION

REPO = "runnerkeep/cache"
PEER_PATIENCE = 20


def drip_blob(announced: int, every: float = 0.05):
    """A blob answer announcing ``announced`` bytes, then one byte every ``every`` s."""

    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n\r\n".encode())
        for _ in range(int(PEER_PATIENCE / every)):
            if peer.stop.wait(every):
                return
            conn.sendall(b"z")

    return handler


# --- F1: the rate floor is measured, never derived from a declared size ------------------------


def test_a_huge_announced_size_buys_a_dripping_peer_no_time():
    """Content-Length 10**12 and one byte per 0.05 s: before, the bound was
    timeout + size / 1 MiB/s (11 days; the peer's patience ended first and the stream just
    "ended"); now the floor counts what arrived and cuts it after about the timeout."""
    with fake_peer(drip_blob(10**12)) as peer:
        c = fake_client(peer.url, timeout=0.5)
        _data, digest = blob(1)
        with c.open_blob(digest) as stream, pytest.raises(RemoteUnavailable) as caught:
            while stream.read(1 << 20):
                pass
    assert "slower than 1 MiB/s" in str(caught.value)
    assert "of 1000000000000 bytes" in str(caught.value)


def test_a_watchdog_is_never_armed_beyond_its_cap():
    """threading's timers overflow beyond ~9e9 s and their thread dies with a traceback on
    stderr (and the call is left without a watchdog): every timer is capped."""
    errors = []
    hook, threading.excepthook = threading.excepthook, errors.append
    conn = type("Conn", (), {"sock": None})()
    try:
        dog = transport.Watchdog(conn, 1e17)
        time.sleep(0.05)  # let the timer thread start (it would die at once)
        assert dog._timer.interval <= transport.MAX_WATCH
        assert dog.stop() is False
    finally:
        threading.excepthook = hook
    assert errors == []


def slow_answers(delay: float, status: str = "200 OK"):
    def handler(conn, peer):
        while not peer.stop.is_set():
            if not peer.read_head(conn):
                return
            if peer.stop.wait(delay):
                return
            conn.sendall(answer(status, {"Content-Type": "application/json"}, b"{}"))

    return handler


def test_the_client_deadline_ends_a_whole_operation():
    """Every call answers within its own timeout (0.2 s of 2 s), as in attack16 t17; the
    operation's deadline still ends the run of calls."""
    with fake_peer(slow_answers(0.2)) as peer:
        c = fake_client(peer.url, timeout=2.0)
        done = 0
        with c.deadline(1.0), pytest.raises(RemoteUnavailable) as caught:
            for done in range(100):  # noqa: B007 - counted below
                c.check()
        assert done < 20
        assert "max_duration" in str(caught.value)
        c.check()  # outside the block the deadline is gone again


def test_the_client_deadline_cuts_a_stream_that_keeps_the_rate():
    """A stream far above the rate floor, too long for the operation's deadline."""

    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        for _ in range(int(PEER_PATIENCE / 0.05)):
            if peer.stop.wait(0.05):
                return
            conn.sendall(b"y" * (256 << 10))

    with fake_peer(handler) as peer:
        settings = remote_settings({"remote": {"url": f"{peer.url}/{REPO}", "timeout": 2}})
        c = RegistryClient(settings, deadline=time.monotonic() + 0.6)
        _data, digest = blob(1)
        with c.open_blob(digest) as stream, pytest.raises(RemoteUnavailable) as caught:
            while stream.read(1 << 20):
                pass
    assert "max_duration" in str(caught.value)
    assert stream.received < 1000000000


def test_max_duration_is_a_checked_setting_with_a_default():
    base = {"url": "https://cache.example/r"}
    assert remote_settings({"remote": base}).max_duration == DEFAULT_MAX_DURATION == 1800
    assert remote_settings({"remote": {**base, "max_duration": "10m"}}).max_duration == 600
    for bad in ("abc", -1, 0, "2d", True, [1]):
        with pytest.raises(ConfigError, match=r"cache\.remote\.max_duration"):
            remote_settings({"remote": {**base, "max_duration": bad}})


def test_max_duration_is_in_the_config_schema():
    from runnerkeep.schema import check_option

    check_option("cache", "remote.max_duration", "20m", "t")
    with pytest.raises(ConfigError):
        check_option("cache", "remote.max_duration", "soon", "t")


# --- F11: odd headers are bad data, never an internal error ------------------------------------


def header_peer(status: str, headers: dict):
    def handler(conn, peer):
        while not peer.stop.is_set():
            if not peer.read_head(conn):
                return
            conn.sendall(answer(status, headers))

    return handler


def test_a_content_length_that_is_not_ascii_digits_is_bad_data():
    """'²'.isdigit() is True and int('²') raises ValueError: the length is parsed strictly."""
    for length in ("\u00b2".encode(), b"12a", b"-1", b"1" * 30):

        def odd(conn, peer, length=length):
            while not peer.stop.is_set():
                if not peer.read_head(conn):
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\n")
                return

        with fake_peer(odd) as peer:
            c = fake_client(peer.url)
            with pytest.raises(RemoteDataError, match="no Content-Length"):
                c.blob_size(blob(1)[1])


@pytest.mark.parametrize("location", ["/v2/evil/blobs/\u00e9", "http://\u00f0xample.com/b"])
def test_a_redirect_to_a_non_ascii_url_is_bad_data(location):
    raw = location.encode("utf-8")

    def handler(conn, peer):
        peer.read_head(conn)
        conn.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nContent-Length: 0\r\nLocation: " + raw)
        conn.sendall(b"\r\n\r\n")

    with fake_peer(handler) as peer:
        c = fake_client(peer.url)
        with pytest.raises(RemoteDataError, match="not printable ASCII"):
            c.open_blob(blob(1)[1])


def test_an_upload_location_that_is_not_ascii_is_bad_data():
    def handler(conn, peer):
        peer.read_head(conn)
        head = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n"
        conn.sendall(head + b"Location: /v2/r/blobs/uploads/\xe9\r\n\r\n")

    with fake_peer(handler) as peer:
        c = fake_client(peer.url)
        data, digest = blob(10)
        with pytest.raises(RemoteDataError, match="not printable ASCII"):
            c.upload_blob(digest, __import__("io").BytesIO(data), len(data))


def test_a_next_page_link_that_is_not_ascii_is_bad_data():
    def handler(conn, peer):
        peer.read_head(conn)
        body = b'{"name":"r","tags":["a"]}'
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nLink: </v2/runnerkeep/cache/tags/list?n=1"
            b'&last=\xe9>; rel="next"\r\n\r\n' % len(body) + body
        )

    with fake_peer(handler) as peer, pytest.raises(RemoteDataError, match="not printable ASCII"):
        fake_client(peer.url).list_tags()


def test_a_request_http_client_refuses_to_encode_is_a_remote_error():
    """Whatever slips past the URL checks: http.client's UnicodeEncodeError (a ValueError) is
    inside the transport guard."""
    with fake_peer(header_peer("200 OK", {})) as peer:
        c = fake_client(peer.url)
        with pytest.raises(RemoteUnavailable, match="cannot be sent"):
            c._call("GET", "/v2/\u00e9", "GET odd")
        with pytest.raises(RemoteUnavailable, match="cannot be sent"):
            c._send_stream("PUT", "/v2/\u00e9", None, 0, 0, None, "PUT odd", (201,))


# --- F13: http:// is for loopback addresses, whatever the name --------------------------------


def test_localhost_resolving_elsewhere_is_refused_and_never_connected(monkeypatch):
    real = socket.getaddrinfo
    connected = []

    def lying(host, port, *args, **kwargs):
        if host == "localhost":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.255.255.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lying)
    monkeypatch.setattr(transport, "_open_socket", lambda *a: connected.append(a))
    # The lookup runs on a thread the call waits for up to the timeout: a busy host can keep
    # that thread from running for a second, so the timeout is long (the lie comes at once).
    settings = remote_settings({"remote": {"url": "http://localhost:5000/r", "timeout": 30}})
    with pytest.raises(RemoteError) as caught:
        RegistryClient(settings).check()
    assert "localhost resolves to 10.255.255.1" in str(caught.value)
    assert "not to a loopback address" in str(caught.value)
    assert connected == []


def test_localhost_resolving_to_loopback_is_used_at_that_address():
    with fake_peer(header_peer("200 OK", {})) as peer:
        url = f"http://localhost:{peer.port}/{REPO}"
        RegistryClient(remote_settings({"remote": {"url": url, "timeout": 2}})).check()
        assert peer.requests and peer.requests[0].startswith("GET /v2/ ")


def test_allow_http_skips_the_loopback_check(monkeypatch):
    elsewhere = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))]
    monkeypatch.setattr(transport, "resolve", lambda *a: elsewhere)
    section = {"url": "http://registry.example/r", "allow_http": True, "timeout": 1}
    c = RegistryClient(remote_settings({"remote": section}))
    conn, _reused = c._take(c.origin, transport.Deadline(1.0), "x")  # not yet connected
    assert conn.rk_addresses == elsewhere
    c = RegistryClient(remote_settings({"remote": {**section, "url": "http://localhost/r"}}))
    c.settings = c.settings.__class__(**{**c.settings.__dict__, "allow_http": False})
    with pytest.raises(RemoteError, match="not to a loopback address"):
        c._take(c.origin, transport.Deadline(1.0), "x")


# --- F4: the CA file is read like the credentials file ------------------------------------------


@pytest.fixture()
def ca_pem(tls_registry, tmp_path):
    path = tmp_path / "ca.pem"
    with open(tls_registry.ca_file, "rb") as source:
        path.write_bytes(source.read())
    path.chmod(0o644)
    return path


def test_a_fifo_as_ca_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        transport.tls_context(str(fifo))


def test_a_symlinked_ca_file_is_refused(ca_pem, tmp_path):
    link = tmp_path / "link.pem"
    link.symlink_to(ca_pem)
    with pytest.raises(ConfigError, match="symlink"):
        transport.tls_context(str(link))


@pytest.mark.parametrize("mode, says", [(0o666, "writable by its group"), (0o646, "other users")])
def test_a_ca_file_others_may_write_is_refused(ca_pem, mode, says):
    ca_pem.chmod(mode)
    with pytest.raises(ConfigError, match=says):
        transport.tls_context(str(ca_pem))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_ca_file_owned_by_another_user_is_refused(ca_pem):
    os.chown(ca_pem, 1000, 1000)
    with pytest.raises(ConfigError, match="owned by uid 1000"):
        transport.tls_context(str(ca_pem))


def test_a_large_ca_file_is_refused(tmp_path):
    big = tmp_path / "big.pem"
    with open(big, "wb") as f:
        f.truncate(transport.MAX_CA_BYTES + 1)
    big.chmod(0o644)
    with pytest.raises(ConfigError, match="larger than"):
        transport.tls_context(str(big))


def test_ssl_gets_the_ca_as_data_never_the_path(ca_pem, monkeypatch):
    calls = []
    real = ssl.SSLContext.load_verify_locations

    def spy(self, cafile=None, capath=None, cadata=None):
        calls.append((cafile, capath, cadata))
        return real(self, cafile, capath, cadata)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", spy)
    transport.tls_context(str(ca_pem))
    assert calls and calls[-1][0] is None and calls[-1][1] is None
    assert "BEGIN CERTIFICATE" in calls[-1][2]


# --- F5: an echoed password: no piece of it survives, escaped or cut ------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "back\\slash-pw-42",
        'quo"te-pw-12345678',
        "\u00fcnic\u00f8de-pw-\u5bc6\u7801",
        "Zq7-" + "l" * 60,
    ],
    ids=["backslash", "quote", "unicode", "long"],
)
def test_a_registry_echoing_credentials_never_shows_a_piece_of_them(password):
    import base64
    import json

    from runnerkeep.remote import Credentials
    from runnerkeep.textutil import escape_text

    token = base64.b64encode(f"ci:{password}".encode()).decode()
    # Each secret once whole in the text, once crossing the 160-character cut.
    messages = [
        "z" * 100 + f" got Basic {token} for password {password}",
        "z" * 138 + f" password {password} got {token}",
        "z" * 140 + f" got {token} for password {password}",
    ]
    for message in messages:
        body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": message}]}).encode()
        with fake_peer(header_peer_body("401 Unauthorized", body)) as peer:
            c = fake_client(peer.url, creds=Credentials("ci", password))
            with pytest.raises(RemoteError) as caught:
                c.check()
        shown = str(caught.value)
        for secret in (password, token):
            for n in range(8, len(secret) + 1):
                assert secret[:n] not in shown and escape_text(secret[:n]) not in shown, shown


def header_peer_body(status: str, body: bytes):
    def handler(conn, peer):
        while not peer.stop.is_set():
            if not peer.read_head(conn):
                return
            conn.sendall(answer(status, {"Content-Type": "application/json"}, body))

    return handler
