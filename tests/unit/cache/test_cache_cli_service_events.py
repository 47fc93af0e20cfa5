"""`runnerkeep cache serve-connection` (the CLI handler behind runnerkeep-cache@.service)
records each operation's cache event in root's state dir, or the service user's spool."""

from __future__ import annotations

import json
import os
import socket

import pytest
from runnerkeep import events, spool
from runnerkeep.cache import service
from runnerkeep.disk.metrics import fold_events
from runnerkeep_cli.main import main


@pytest.fixture
def config_path(tmp_path):
    key_file = tmp_path / "cache.key"
    key_file.write_bytes(os.urandom(32))
    path = tmp_path / "config.json"
    config = {
        "paths": {"cache_dir": str(tmp_path / "store"), "state_dir": str(tmp_path / "state")},
        "cache": {"key_file": str(key_file)},
    }
    path.write_text(json.dumps(config))
    (tmp_path / "state").mkdir()
    return path


def serve_one(tmp_path, config_path, request: bytes) -> dict:
    """One connection served by the CLI handler, the connection on fd 0 as systemd gives it."""
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    saved = os.dup(0)
    try:
        client.sendall(request)
        os.dup2(server.fileno(), 0)
        server.close()
        code = main(
            [
                "cache",
                "serve-connection",
                "--config",
                str(config_path),
                "--state-dir",
                str(tmp_path / "service-state"),
            ]
        )
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    with client:
        client.settimeout(30)
        response = json.loads(service._read_response(client))
    assert code == 0
    return response


RESTORE_MISS = b'{"v": 1, "op": "restore", "args": {"key": "nope"}}\n'


def cache_events(state_dir) -> list[tuple[str, str]]:
    return [(e["op"], e["result"]) for e in events.read_events(str(state_dir), "cache")]


def test_a_restore_through_the_service_records_its_event_in_roots_state_dir(tmp_path, config_path):
    response = serve_one(tmp_path, config_path, RESTORE_MISS)
    assert response["exit_code"] == 3, response
    assert cache_events(tmp_path / "state") == [("restore", "miss")]
    assert fold_events(str(tmp_path / "state"), {})["cache"] == {"miss": 1}


def test_the_service_user_spools_the_event_and_the_watch_ingests_it(
    tmp_path, config_path, monkeypatch
):
    state = tmp_path / "state"
    (state / "spool").mkdir()
    os.chmod(state / "spool", 0o1730)
    # As for the service user: root's state dir belongs to someone else.
    monkeypatch.setattr(spool, "use_spool", lambda state_dir: True)
    response = serve_one(tmp_path, config_path, RESTORE_MISS)
    assert response["exit_code"] == 3, response
    assert cache_events(state) == []
    assert os.listdir(state / "spool") == [f"events-{os.geteuid()}.jsonl"]
    assert events.ingest_spool(str(state)) == 1
    assert cache_events(state) == [("restore", "miss")]
