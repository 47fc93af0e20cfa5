"""Which restores may write straight into the engine's socket: only where the CLI would."""

from __future__ import annotations

import json
import os

import pytest
from runnerkeep.docker_api import (
    DEFAULT_SOCKET,
    EngineSocketUnavailable,
    load_image_archive,
    local_engine_socket,
)


@pytest.fixture
def docker_env(tmp_path, monkeypatch):
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))

    def set_context(name):
        (tmp_path / "config.json").write_text(json.dumps({"currentContext": name}))

    return set_context


def test_default_is_the_local_socket(docker_env):
    assert local_engine_socket() == DEFAULT_SOCKET


def test_docker_host_unix_socket_is_used(docker_env, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    assert local_engine_socket() == "/run/user/1000/docker.sock"


@pytest.mark.parametrize("host", ["tcp://10.0.0.5:2376", "ssh://ci@builder", "npipe:////./pipe/x"])
def test_remote_docker_host_goes_through_the_cli(docker_env, monkeypatch, host):
    monkeypatch.setenv("DOCKER_HOST", host)
    assert local_engine_socket() is None


def test_selected_context_goes_through_the_cli(docker_env, monkeypatch):
    monkeypatch.setenv("DOCKER_CONTEXT", "remote")
    assert local_engine_socket() is None
    monkeypatch.setenv("DOCKER_CONTEXT", "default")
    assert local_engine_socket() == DEFAULT_SOCKET


def test_context_in_the_cli_config_goes_through_the_cli(docker_env, monkeypatch):
    docker_env("rootless")
    assert local_engine_socket() is None
    # DOCKER_HOST wins over the configured context, as it does for the CLI
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert local_engine_socket() == "/var/run/docker.sock"
    docker_env("default")
    monkeypatch.delenv("DOCKER_HOST")
    assert local_engine_socket() == DEFAULT_SOCKET


def test_unreadable_cli_config_is_ignored(docker_env, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert local_engine_socket() == DEFAULT_SOCKET


def test_missing_socket_is_unavailable_and_nothing_is_written(tmp_path):
    written = []
    with pytest.raises(EngineSocketUnavailable, match=r"no-engine\.sock"):
        load_image_archive(str(tmp_path / "no-engine.sock"), 10, written.append)
    assert written == []


def test_send_buffer_is_enlarged_beyond_the_default():
    import socket

    from runnerkeep.docker_api import enlarge_send_buffer

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        granted = enlarge_send_buffer(left, 8 << 20)
    if os.geteuid() == 0:  # SO_SNDBUFFORCE: past net.core.wmem_max
        assert granted >= 8 << 20
    else:  # SO_SNDBUF: up to net.core.wmem_max
        with open("/proc/sys/net/core/wmem_max") as handle:
            assert granted >= min(8 << 20, int(handle.read()))
