"""POST /images/load: how much of the engine's answer a load waits for.

Engine 20.10 says "Loaded image: REF" once an image is loaded and tagged, and then removes its
unpacked copy of the archive before it closes the connection. A load that knows which lines
mean "done" stops there; without them it reads the answer to its end, as ``docker load`` does.
The engine here is a scripted one on a unix socket: it reads the request, sends the lines it is
given and then holds the connection open until the test ends (the engine cleaning up).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading

import pytest
from runnerkeep import docker_api
from runnerkeep.docker_api import EngineStalled, load_image_archive
from runnerkeep.errors import DockerCommandError

BODY = b"x" * 4096


def stream(text: str) -> bytes:
    return json.dumps({"stream": text}).encode() + b"\r\n"


class ScriptedEngine:
    """Answers one POST: status line and headers, then ``lines``; then holds the connection
    (``close_after``: closes it instead). Records the request head and the body it read."""

    def __init__(self, path: str, lines: list[bytes], close_after: bool = False) -> None:
        self.lines = lines
        self.close_after = close_after
        self.head = b""
        self.body = b""
        self.release = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            self.head, _, self.body = data.partition(b"\r\n\r\n")
            length = int(self.head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(self.body) < length:
                self.body += conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
            for line in self.lines:
                conn.sendall(line)
            if not self.close_after:
                self.release.wait(30)

    def close(self) -> None:
        self.release.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def engine_at(monkeypatch):
    monkeypatch.setattr(docker_api, "ANSWER_TIMEOUT", 1.0)
    directory = tempfile.mkdtemp(prefix="rk-load-", dir="/tmp")  # short: a socket path <= 108
    engines = []

    def make(lines: list[bytes], close_after: bool = False) -> tuple[str, ScriptedEngine]:
        path = os.path.join(directory, "engine.sock")
        engines.append(ScriptedEngine(path, lines, close_after))
        return path, engines[-1]

    yield make
    for engine in engines:
        engine.close()
    shutil.rmtree(directory, ignore_errors=True)


def send(fd: int) -> int:
    return os.write(fd, BODY)


def test_the_load_returns_once_every_image_is_said_to_be_loaded(engine_at):
    path, engine = engine_at([stream("Loaded image: app:1\n"), stream("Loaded image: app:2\n")])
    # The engine holds the connection (its clean-up) past ANSWER_TIMEOUT: a load waiting for
    # the end of the answer would be EngineStalled.
    said = load_image_archive(
        path, len(BODY), send, done_when={"Loaded image: app:1", "Loaded image: app:2"}
    )
    assert "Loaded image: app:2" in said
    assert engine.body == BODY
    assert engine.head.startswith(b"POST /images/load?quiet=1 HTTP/1.0\r\n")


def test_a_line_still_missing_means_waiting_for_the_end(engine_at):
    path, _engine = engine_at([stream("Loaded image: app:1\n")])
    with pytest.raises(EngineStalled, match="did not answer the image load within 1s"):
        load_image_archive(
            path, len(BODY), send, done_when={"Loaded image: app:1", "Loaded image: app:2"}
        )


def test_without_lines_to_wait_for_the_answer_is_read_to_its_end(engine_at):
    path, _engine = engine_at([stream("Loaded image: app:1\n")])
    with pytest.raises(EngineStalled):
        load_image_archive(path, len(BODY), send)


def test_an_error_after_the_lines_is_still_a_failure(engine_at):
    # The error comes in the same piece as the last expected line: it is not skipped over.
    error = json.dumps({"errorDetail": {"message": "no space"}, "error": "no space"}).encode()
    path, _engine = engine_at([stream("Loaded image: app:1\n") + error + b"\r\n"], close_after=True)
    with pytest.raises(DockerCommandError, match="docker load failed: no space"):
        load_image_archive(path, len(BODY), send, done_when={"Loaded image: app:1"})


def test_image_ids_said_in_one_message_count_each(engine_at):
    ids = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    text = "".join(f"Loaded image ID: {image_id}\n" for image_id in ids)
    path, _engine = engine_at([stream(text)])
    said = load_image_archive(
        path, len(BODY), send, done_when={f"Loaded image ID: {image_id}" for image_id in ids}
    )
    assert ids[1] in said


def test_an_answer_read_to_its_end_keeps_every_message(engine_at):
    lines = [b"not json\r\n", stream("Loaded image: app:1\n")]
    path, _engine = engine_at(lines, close_after=True)
    assert load_image_archive(path, len(BODY), send) == "not json; Loaded image: app:1"
