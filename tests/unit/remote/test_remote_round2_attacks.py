"""Round-2 attacks on 9295d8a (a call the watchdog cut is never taken for an answer: after the
head in ``_exchange``, after the body in ``_finish``, at a blob stream's ``_end``): the fix
must not turn a normal fast answer into a failure. A scripted loopback peer answers quickly
in every shape a registry uses: kept-alive connections over many calls, HEAD, 202/201/204
with no body, a body without a length ended by the close, a redirect, an empty blob; and a
fired watchdog of one call must not leak into the next on a reused connection."""

from __future__ import annotations

import hashlib
import io

import pytest
from remote_helpers import REPO, answer, blob, fake_client, fake_peer
from runnerkeep.remote import RemoteUnavailable

EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


def serve(routes, keep_alive: bool = True):
    """A handler answering each request head by ``routes(method, path, peer, conn)`` -> bytes
    (None: close without answering), on one kept-alive connection while ``keep_alive``."""

    def handler(conn, peer):
        for _ in range(500):  # bounded: one test makes far fewer calls
            head = peer.read_head(conn)
            if not head:
                return
            method, path = head.split(" ")[:2]
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _sep, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                peer.bodies.append(peer.read_body(conn, length))
            out = routes(method, path, peer, conn)
            if out is None:
                return
            conn.sendall(out)
            if not keep_alive:
                return

    return handler


def test_many_fast_calls_on_one_kept_alive_connection_all_succeed():
    data, digest = blob(1000)

    def routes(method, path, peer, conn):
        if path == "/v2/":
            return answer("200 OK", {"Content-Type": "application/json"}, b"{}")
        if method == "HEAD":
            # A HEAD's answer: the blob's length, no body.
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n"
            return (head + f"Docker-Content-Digest: {digest}\r\n\r\n").encode()
        return answer("200 OK", {"Docker-Content-Digest": digest}, data)

    with fake_peer(serve(routes)) as peer:
        client = fake_client(peer.url, timeout=2.0)
        for _ in range(40):
            client.check()
            assert client.blob_size(digest) == len(data)
            with client.open_blob(digest) as reader:
                assert reader.read() == data
        client.close()
        assert len(peer.conns) == 1  # the connection was reused, never taken for cut


def test_answers_with_no_body_are_answers():
    """202 (upload start, DELETE), 201 (the closing PUT) with Content-Length 0, and 204."""
    data, digest = blob(3000)
    base = f"/v2/{REPO}"

    def routes(method, path, peer, conn):
        if method == "POST":
            return answer("202 Accepted", {"Location": f"{base}/blobs/uploads/u1"})
        if method == "PUT":
            return answer("201 Created", {"Docker-Content-Digest": digest})
        if method == "DELETE":
            return b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    with fake_peer(serve(routes)) as peer:
        client = fake_client(peer.url, timeout=2.0)
        for _ in range(10):
            client.upload_blob(digest, io.BytesIO(data), len(data))
            client.delete_blob(digest)
        assert peer.bodies.count(data) == 10
        client.close()


def test_a_body_without_a_length_ended_by_the_close_is_an_answer():
    def routes(method, path, peer, conn):
        return (
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"a":1}'
        )

    with fake_peer(serve(routes, keep_alive=False)) as peer:
        client = fake_client(peer.url, timeout=2.0)
        for _ in range(5):
            client.check()


def test_a_followed_redirect_and_an_empty_blob_are_answers():
    data, digest = blob(5000)

    def routes(method, path, peer, conn):
        if path.endswith(f"/blobs/{digest}"):
            return answer("307 Temporary Redirect", {"Location": "/store/x"}, b"moved")
        if path.endswith(f"/blobs/{EMPTY}"):
            return answer("200 OK", {"Docker-Content-Digest": EMPTY})
        return answer("200 OK", {}, data)

    with fake_peer(serve(routes)) as peer:
        client = fake_client(peer.url, timeout=2.0)
        for _ in range(5):
            with client.open_blob(digest) as reader:
                assert reader.read() == data
            with client.open_blob(EMPTY) as reader:
                assert reader.size == 0 and reader.read() == b""


def test_a_cut_call_leaves_the_next_call_on_a_new_connection_a_clean_answer():
    """The first answer stalls past the timeout (the watchdog fires: an error); the next
    call must not see that watchdog's flag: it gets its own connection and its answer."""
    calls = []

    def routes(method, path, peer, conn):
        calls.append(path)
        if len(calls) == 1:
            peer.stop.wait(3)  # past the client's 0.5 s
            return None
        return answer("200 OK", {}, b"{}")

    with fake_peer(serve(routes)) as peer:
        client = fake_client(peer.url, timeout=0.5)
        with pytest.raises(RemoteUnavailable):
            client.check()
        for _ in range(5):
            client.check()
