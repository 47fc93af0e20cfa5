"""The admission service's protocol: peer credentials from the kernel, bounded requests, one
answer per connection, and a hook side that fails open (Unreachable) on every kind of silence."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest
from runnerkeep import admission_service as svc
from runnerkeep.errors import RunnerkeepError


def served(request: bytes, handler, deadline=2.0, close=True):
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.sendall(request)
        if close:
            client.shutdown(socket.SHUT_WR)
        response = svc.serve_connection(server, handler, deadline)
        sent = client.recv(65536)
    finally:
        client.close()
        server.close()
    assert json.loads(sent) == json.loads(json.dumps(response, default=str))
    return response


def admit_request(job_id="gh-1"):
    return (json.dumps({"v": 1, "op": "admit", "args": {"job_id": job_id}}) + "\n").encode()


def test_the_handler_gets_the_kernels_peer_not_what_the_client_says():
    seen = []

    def handler(pid, uid, job_id):
        seen.append((pid, uid, job_id))
        return {"admitted": True, "line": ""}

    response = served(admit_request("gl-7"), handler)
    assert response == {"exit_code": 0, "data": {"admitted": True, "line": ""}, "error": None}
    assert seen == [(os.getpid(), os.getuid(), "gl-7")]


def test_a_peer_the_kernel_cannot_name_is_refused(monkeypatch):
    monkeypatch.setattr(svc, "peer_credentials", lambda sock: (0, 1000, 1000))
    response = served(admit_request(), lambda *a: pytest.fail("handled"))
    assert response["exit_code"] == 2 and "cannot be named" in response["error"]


@pytest.mark.parametrize(
    ("request_bytes", "message"),
    [
        (b"nonsense\n", "not JSON"),
        (b'{"v": 2, "op": "admit"}\n', "protocol version 1"),
        (b'{"v": 1, "op": "drain"}\n', "unknown operation"),
        (b'{"v": 1, "op": "admit", "args": []}\n', "args must be an object"),
        (b'{"v": 1, "op": "admit", "args": {"job_id": 5}}\n', "job_id must be a string"),
        (b'{"v": 1, "op": "ad', "closed before a complete request"),
        (b"x" * (svc.MAX_REQUEST_BYTES + 10), "request larger than"),
    ],
)
def test_bad_requests_get_one_line_and_no_handler(request_bytes, message):
    response = served(request_bytes, lambda *a: pytest.fail("handled"))
    assert response["exit_code"] == 2 and message in response["error"]
    assert "\n" not in response["error"]


def test_a_request_that_never_ends_is_cut_at_the_deadline():
    response = served(b'{"v": 1', lambda *a: pytest.fail("handled"), deadline=0.3, close=False)
    assert "no complete request within 0.3 s" in response["error"]


def test_a_crashing_handler_is_one_line_never_a_traceback():
    def handler(pid, uid, job_id):
        raise KeyError("boom")

    response = served(admit_request(), handler)
    assert response["exit_code"] == 1
    assert response["error"] == "internal error in the admission service: KeyError: 'boom'"


def test_a_core_error_keeps_its_exit_code():
    class Locked(RunnerkeepError):
        exit_code = 7

    def handler(pid, uid, job_id):
        raise Locked("the admission lock is held")

    response = served(admit_request(), handler)
    assert response == {"exit_code": 7, "data": None, "error": "the admission lock is held"}


# --- the hook's side -----------------------------------------------------------------------


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "admission.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    yield path, sock
    sock.close()


def serve_once(sock, answer: bytes | None):
    def run():
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            if answer is not None:
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)
            else:
                conn.recv(1)  # silent until the client gives up

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_ask_returns_the_answer(listener):
    path, sock = listener
    answer = {"exit_code": 0, "data": {"admitted": False, "line": "no"}, "error": None}
    thread = serve_once(sock, json.dumps(answer).encode() + b"\n")
    assert svc.ask(path, "gh-1", timeout=5) == {"admitted": False, "line": "no"}
    thread.join(5)


def test_ask_through_the_real_server(listener):
    path, sock = listener

    def run():
        conn, _ = sock.accept()
        with conn:
            svc.serve_connection(conn, lambda pid, uid, job: {"admitted": True, "pid": pid})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert svc.ask(path, "gh-1", timeout=5) == {"admitted": True, "pid": os.getpid()}
    thread.join(5)


def test_no_service_is_unreachable(tmp_path):
    with pytest.raises(svc.Unreachable, match="cannot reach the admission service"):
        svc.ask(str(tmp_path / "none.sock"), "gh-1", timeout=2)


def test_a_silent_service_is_unreachable_at_the_deadline(listener):
    path, sock = listener
    thread = serve_once(sock, None)
    with pytest.raises(svc.Unreachable, match=r"no answer within 0\.5 s"):
        svc.ask(path, "gh-1", timeout=0.5)
    thread.join(5)


@pytest.mark.parametrize(
    "answer", [b"", b"garbage", b'{"exit_code": "0"}', b'{"exit_code": 0, "data": {}}']
)
def test_garbage_answers_are_unreachable(listener, answer):
    path, sock = listener
    thread = serve_once(sock, answer)
    with pytest.raises(svc.Unreachable):
        svc.ask(path, "gh-1", timeout=5)
    thread.join(5)


def test_a_reported_error_is_raised_escaped(listener):
    path, sock = listener
    answer = {"exit_code": 1, "data": None, "error": "drain.json damaged\x1b[2J"}
    thread = serve_once(sock, json.dumps(answer).encode())
    with pytest.raises(RunnerkeepError) as raised:
        svc.ask(path, "gh-1", timeout=5)
    assert not isinstance(raised.value, svc.Unreachable)
    assert "\x1b" not in str(raised.value)
    thread.join(5)


def test_is_socket(listener, tmp_path):
    path, _sock = listener
    assert svc.is_socket(path)
    assert not svc.is_socket(str(tmp_path))
    assert not svc.is_socket(str(tmp_path / "missing"))
