"""cache save reads the archive straight from the engine's socket (GET /images/get) when the
CLI would use that socket; otherwise through `docker save`. Same checks either way.

The engine is tests/unit/cache/fake_engine.py (its docstring says why a fake is needed: an
export that breaks off with the engine's error in the stream cannot be made to happen on the
real, shared engine). The real engine's side is tests/integration/test_cache_engine_api.py.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
import threading

import pytest
from cachetest_helpers import config_for, legacy_archive, random_layer, sha
from fake_engine import FakeEngine
from runnerkeep import docker_api
from runnerkeep.cache import save as save_mod
from runnerkeep.cache.archive_layout import analyze
from runnerkeep.cache.save import SaveFailed, save_entry
from runnerkeep.cache.store import Store
from runnerkeep.cache.tar_reader import read_archive_stream

LAYERS = [random_layer(300 * 1024, "l0"), random_layer(1200 * 1024, "l1")]
ARCHIVE = legacy_archive([(["app:1"], LAYERS)])
APP_ID = sha(config_for(LAYERS, "0"))


@pytest.fixture
def engine_dir(monkeypatch):
    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")  # unix socket names: 108 bytes
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def engine(engine_dir):
    engine = FakeEngine(os.path.join(engine_dir, "engine.sock"))
    engine.add_image(config_for(LAYERS, "0"), ["app:1"])
    engine.set_export(ARCHIVE)
    yield engine
    engine.close()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


def nothing_committed(store: Store) -> bool:
    entries = os.listdir(os.path.join(store.root, "entries"))
    blobs = os.listdir(store.blob_dir)
    temps = [n for n in os.listdir(os.path.join(store.root, "tmp")) if not n.endswith(".lock")]
    return entries == [] and blobs == [] and temps == []


@pytest.fixture
def cli_save(monkeypatch):
    """`docker save` and `docker image inspect` replaced by the same archive read from memory:
    what the CLI path would have read; records that it was used."""
    used = []

    def read_cli_save(store, refs, area, candidates, progress, hash_pool):
        used.append(list(refs))
        stats = read_archive_stream(io.BytesIO(ARCHIVE), store, area, candidates, progress)
        return analyze(stats)

    def inspect_images(refs):
        return [{"Id": APP_ID, "RepoTags": ["app:1"], "RootFS": {"Layers": []}} for _ in refs]

    monkeypatch.setattr(save_mod, "_read_cli_save", read_cli_save)
    monkeypatch.setattr(save_mod.docker_cli, "inspect_images", inspect_images)
    return used


def test_save_reads_the_engines_socket(store, engine, cli_save):
    result = save_entry(store, "k", ["app:1"], check_space=False)
    assert result["result"] == "saved" and result["saved_via"] == "engine-api"
    assert cli_save == []
    entry, _ = store.read_entry("k")
    assert [image["id"] for image in entry["images"]] == [APP_ID]
    assert [layer["digest"] for layer in entry["images"][0]["layers"]] == [sha(x) for x in LAYERS]
    for layer in LAYERS:
        with open(store.blob_path(sha(layer)), "rb") as handle:
            assert handle.read() == layer
    # inspect and export went through the socket, the export as HTTP/1.0 (no chunk framing)
    assert "GET /images/app:1/json HTTP/1.0" in engine.requests
    assert "GET /images/get?names=app%3A1 HTTP/1.0" in engine.requests


def test_the_space_check_asks_the_engine_through_the_socket(store, engine, cli_save):
    result = save_entry(store, "k", ["app:1"], check_space=True)
    assert result["saved_via"] == "engine-api"
    assert "GET /info HTTP/1.0" in engine.requests
    assert result["space"][0]["path"] == store.root and result["space"][0]["ok"]


def test_an_export_that_breaks_off_says_the_engines_error_and_commits_nothing(store, engine):
    engine.set_export(ARCHIVE, cut=700 * 1024, error="write /var/lib/docker/tmp: no space")
    with pytest.raises(SaveFailed, match="the engine said: write /var/lib/docker/tmp: no space"):
        save_entry(store, "k", ["app:1"], check_space=False)
    assert nothing_committed(store)


def test_a_cut_export_without_an_error_is_refused(store, engine):
    engine.set_export(ARCHIVE, cut=len(ARCHIVE) - 2048)
    with pytest.raises(SaveFailed, match="bad archive"):
        save_entry(store, "k", ["app:1"], check_space=False)
    assert nothing_committed(store)


def test_a_missing_image_is_named(store, engine):
    with pytest.raises(SaveFailed, match="No such image: nothere:1"):
        save_entry(store, "k", ["nothere:1"], check_space=False)
    assert not any("/images/get" in line for line in engine.requests)


def test_an_export_the_engine_refuses_is_a_failed_save(store, engine):
    engine.set_export(None)
    with pytest.raises(SaveFailed, match="docker save failed: reference does not exist"):
        save_entry(store, "k", ["app:1"], check_space=False)
    assert nothing_committed(store)


def test_a_ref_cannot_add_to_the_request(store, engine):
    with pytest.raises(SaveFailed):
        save_entry(store, "k", ["app:1 HTTP/1.0\r\nX-Evil: 1\r\n\r\nGET /x"], check_space=False)
    [line] = [line for line in engine.requests if "Evil" in line]
    assert line.startswith("GET /images/app:1%20HTTP/1.0%0D%0AX-Evil:%201%0D%0A%0D%0AGET%20/x/")


@pytest.mark.parametrize("host", ["tcp://127.0.0.1:2375", "ssh://ci@builder"])
def test_a_remote_engine_is_saved_through_the_cli(store, engine, cli_save, monkeypatch, host):
    monkeypatch.setenv("DOCKER_HOST", host)
    result = save_entry(store, "k", ["app:1"], check_space=False)
    assert result["saved_via"] == "docker-cli" and cli_save == [["app:1"]]
    assert engine.requests == []
    assert [image["id"] for image in store.read_entry("k")[0]["images"]] == [APP_ID]


def test_a_context_is_saved_through_the_cli(store, engine, cli_save, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONTEXT", "builder")
    result = save_entry(store, "k", ["app:1"], check_space=False)
    assert result["saved_via"] == "docker-cli" and engine.requests == []


def test_an_unreachable_socket_falls_back_to_the_cli(store, cli_save, monkeypatch, engine_dir):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{engine_dir}/nobody.sock")
    result = save_entry(store, "k", ["app:1"], check_space=False)
    assert result["saved_via"] == "docker-cli" and cli_save == [["app:1"]]


def test_export_reads_fill_the_readers_buffer():
    """The engine writes 32 KiB pieces; each read returns a whole buffer (MSG_WAITALL), so the
    reader hashes on its second thread instead of inline (it offloads big reads only)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    data = os.urandom(3 * (1 << 20) + 100)

    def engine_side():
        with theirs:
            for start in range(0, len(data), 32 << 10):
                theirs.sendall(data[start : start + (32 << 10)])

    writer = threading.Thread(target=engine_side)
    writer.start()
    export = docker_api.ImageExport(ours, b"head")
    view = memoryview(bytearray(1 << 20))
    sizes, got = [], bytearray()
    with export:
        while True:
            count = export.readinto(view)
            if not count:
                break
            sizes.append(count)
            got += view[:count]
    writer.join()
    assert got == b"head" + data
    assert sizes == [4, 1 << 20, 1 << 20, 1 << 20, 100]


def test_the_engines_error_is_found_in_the_stream_tail():
    tail = b"\0" * 300 + b'{"errorDetail":{"message":"disk full"},"error":"disk full"}\r\n'
    assert docker_api._stream_error(tail) == "disk full"
    assert docker_api._stream_error(b"\0" * 1024) is None
