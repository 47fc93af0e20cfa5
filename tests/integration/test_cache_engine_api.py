# ruff: noqa: F811  (pytest fixtures imported from cache_fixtures)
"""The Engine API paths of the cache on the real engine: save reading GET /images/get, its CLI
fallback (a context, a TCP DOCKER_HOST), and the incremental restore that leaves out the layers
the daemon holds. The engine refusing a partial archive is in tests/unit/cache/
test_partial_restore.py (this engine, 20.10 with the legacy image store, never refuses one)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import uuid

import pytest
from cache_fixtures import (  # noqa: F401  (fixtures)
    MiB,
    _base_tarball,
    build_image,
    cli,
    docker,
    entry_of,
    image_id,
    rmi,
)

pytestmark = pytest.mark.integration

ENGINE_SOCKET = "/var/run/docker.sock"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """base (imported), mid FROM base (two layers), app FROM mid (one small layer): mid is the
    part of app a runner typically already holds. Removed at the end."""
    if docker("info", check=False).returncode != 0:
        pytest.fail("these tests need the Docker engine on this machine ('docker info' fails)")
    work = str(tmp_path_factory.mktemp("engine-api-images"))
    prefix = "rkapi-test-" + uuid.uuid4().hex[:8]
    tags = {name: f"{prefix}/{name}:1" for name in ("base", "mid", "app")}
    tarball = os.path.join(work, "base.tar")
    _base_tarball(tarball)
    try:
        with open(tarball, "rb") as handle:
            subprocess.run(
                ["docker", "import", "-", tags["base"]],
                stdin=handle,
                check=True,
                capture_output=True,
            )
        build_image(tags["mid"], tags["base"], [3 * MiB, 2 * MiB], work, run=False)
        build_image(tags["app"], tags["mid"], [MiB // 2], work, run=False)
        yield {"tags": tags, "ids": {name: image_id(tag) for name, tag in tags.items()}}
    finally:
        rmi(tags["app"], tags["mid"], tags["base"])


def content(store: str, key: str) -> list:
    """What an entry says about its images' bytes (not when or how it was made)."""
    return [
        (image["id"], sorted(image["tags"]), image["config"], image["layers"])
        for image in entry_of(store, key)["images"]
    ]


@pytest.fixture
def cli_context(tmp_path):
    """An environment with a docker context selected that reaches this same engine: runnerkeep
    must then use the CLI."""
    config = str(tmp_path / "docker-config")
    os.makedirs(config)
    env = {**os.environ, "DOCKER_CONFIG": config}
    env.pop("DOCKER_HOST", None)
    subprocess.run(
        ["docker", "context", "create", "rk-local", "--docker", f"host=unix://{ENGINE_SOCKET}"],
        env=env,
        check=True,
        capture_output=True,
    )
    return {"DOCKER_CONFIG": config, "DOCKER_CONTEXT": "rk-local"}


@pytest.fixture
def tcp_engine():
    """DOCKER_HOST=tcp://127.0.0.1:PORT reaching this engine: a loopback TCP -> unix socket
    relay, for the test's lifetime only."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.5)
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            client.settimeout(None)
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            engine.connect(ENGINE_SOCKET)
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_api_save_has_the_same_content_as_a_cli_save(images, cli, tmp_path, cli_context):
    app = images["tags"]["app"]
    api_store, cli_store = str(tmp_path / "api"), str(tmp_path / "cli")
    code, api = cli.json("cache", "save", "--dir", api_store, "--key", "k", app)
    assert code == 0, api
    code, via_cli = cli.json(
        "cache", "save", "--dir", cli_store, "--key", "k", app, env=cli_context
    )
    assert code == 0, via_cli
    assert (api["saved_via"], via_cli["saved_via"]) == ("engine-api", "docker-cli")
    assert content(api_store, "k") == content(cli_store, "k")
    assert content(api_store, "k")[0][0] == images["ids"]["app"]
    blobs = lambda store: sorted(os.listdir(os.path.join(store, "blobs", "sha256")))  # noqa: E731
    assert blobs(api_store) == blobs(cli_store)


def test_save_with_a_tcp_docker_host_goes_through_the_cli(images, cli, tmp_path, tcp_engine):
    app = images["tags"]["app"]
    store = str(tmp_path / "store")
    code, result = cli.json(
        "cache", "save", "--dir", store, "--key", "k", app, env={"DOCKER_HOST": tcp_engine}
    )
    assert code == 0, result
    assert result["saved_via"] == "docker-cli"
    assert content(store, "k")[0][0] == images["ids"]["app"]


@pytest.fixture
def app_saved(images, cli, tmp_path):
    """app saved under key "app"; then app removed from the daemon while mid (and base) stay."""
    # A spare copy: a test may leave the first store unable to give the image back.
    store, spare = str(tmp_path / "store"), str(tmp_path / "spare")
    for where in (store, spare):
        code, saved = cli.json(
            "cache", "save", "--dir", where, "--key", "app", images["tags"]["app"]
        )
        assert code == 0 and saved["saved_via"] == "engine-api", saved
    rmi(images["tags"]["app"])
    assert image_id(images["tags"]["app"]) is None
    assert image_id(images["tags"]["mid"]) == images["ids"]["mid"]
    yield store
    if image_id(images["tags"]["app"]) is None:  # leave the module's images as they were
        code, restored = cli.json("cache", "restore", "--dir", spare, "--key", "app")
        assert code == 0, restored


def test_restore_with_the_base_present_sends_only_the_missing_layers(images, cli, app_saved):
    entry = entry_of(app_saved, "app")
    layers = entry["images"][0]["layers"]
    whole = sum(layer["size"] for layer in layers) + entry["images"][0]["config"]["size"]
    code, estimate = cli.json("cache", "restore", "--dir", app_saved, "--key", "app", "--dry-run")
    assert code == 0 and estimate["result"] == "would_load", estimate
    assert image_id(images["tags"]["app"]) is None  # the dry run loaded nothing
    code, result = cli.json("cache", "restore", "--dir", app_saved, "--key", "app")
    assert code == 0, result
    assert result["loaded"] and result["loaded_via"] == "engine-api"
    # the dry run tells the bytes the restore then sends (attack15 #14: it told blob bytes)
    assert estimate["bytes_loaded"] == result["bytes_loaded"]
    assert estimate["bytes_left_out"] == result["bytes_left_out"]
    assert image_id(images["tags"]["app"]) == images["ids"]["app"]
    # every layer of mid (base's included) left out; the app's own layer and config sent
    assert result["layers_left_out"] == len(layers) - 1
    assert result["bytes_left_out"] == sum(layer["size"] for layer in layers[:-1])
    assert (
        layers[-1]["size"] < result["bytes_loaded"] < whole - result["bytes_left_out"] + 64 * 1024
    )
    # the image runs: its filesystem has every layer
    out = docker("run", "--rm", images["tags"]["app"], "/bin/sh", "-c", "echo ok")
    assert out.stdout.strip() == "ok"


def flip_a_byte(store: str, digest: str) -> None:
    path = os.path.join(store, "blobs", "sha256", digest.split(":", 1)[1])
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_blob_of_a_layer_the_daemon_holds_does_not_matter(images, cli, app_saved):
    base_layer = entry_of(app_saved, "app")["images"][0]["layers"][1]["digest"]
    flip_a_byte(app_saved, base_layer)
    code, result = cli.json("cache", "restore", "--dir", app_saved, "--key", "app")
    assert code == 0, result
    assert result["bytes_left_out"] > 0
    assert image_id(images["tags"]["app"]) == images["ids"]["app"]


def test_a_damaged_blob_that_is_sent_is_still_a_miss(images, cli, app_saved):
    app_layer = entry_of(app_saved, "app")["images"][0]["layers"][-1]["digest"]
    flip_a_byte(app_saved, app_layer)
    proc = cli("cache", "restore", "--dir", app_saved, "--key", "app")
    assert proc.returncode == 3, proc.stderr
    assert "quarantined" in proc.stderr
    assert image_id(images["tags"]["app"]) is None  # nothing tagged
    assert not os.path.exists(os.path.join(app_saved, "blobs", "sha256", app_layer[7:]))
