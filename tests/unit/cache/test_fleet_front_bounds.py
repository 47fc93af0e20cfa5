"""The fleet tier's front doors keep the issue's promises whatever the remote step raises
(attack16 F11) and within one deadline (F1): a push that fails after a committed save is a
warning (exit 0, event push_failed), a restore's fleet step that fails is a miss (exit 3),
pull/push/prune fail with one line; every operation's client carries cache.remote's
max_duration as its deadline, and a restore against a registry that answers every call just
in time still ends as a miss."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from runnerkeep import events, wiring
from runnerkeep.cache import Store
from runnerkeep.errors import EXIT_CACHE_MISS, CacheMiss, RunnerkeepError
from runnerkeep.remote import remote_settings
from runnerkeep.remote.registry import RegistryClient
from test_fleet_front import SAVED, Calls, cache_events, fake_restore, make_fleet

UNFORESEEN = [
    UnicodeEncodeError("ascii", "\u00e9", 0, 1, "ordinal not in range(128)"),
    ValueError("invalid literal for int() with base 10: '\u00b2'"),
    KeyError("layers"),
    OverflowError("timestamp out of range for platform time_t"),
]
IDS = ["unicode", "value", "key", "overflow"]


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


def event_types(state_dir):
    return [e.get("error_type") for e in events.read_events(state_dir, "cache")]


@pytest.mark.parametrize("error", UNFORESEEN, ids=IDS)
def test_any_failure_of_the_push_after_a_committed_save_is_a_warning(
    monkeypatch, store, state_dir, error
):
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    result = wiring.save_then_push(
        store,
        "k",
        ["app:ci"],
        make_fleet(Calls(), push_error=error),
        trust=(True, "trusted", "operator"),
        state_dir=state_dir,
    )
    assert result["result"] == "saved"
    assert result["push"]["decision"] == "failed"
    warning = result["warnings"][-1]
    assert "saved but not pushed" in warning and type(error).__name__ in warning
    assert "\n" not in warning
    assert cache_events(state_dir) == [("push", "push_failed")]
    assert event_types(state_dir) == [type(error).__name__]


@pytest.mark.parametrize("error", UNFORESEEN, ids=IDS)
def test_any_failure_of_a_restores_fleet_step_is_a_miss(monkeypatch, store, state_dir, error):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for k")]))
    with pytest.raises(CacheMiss) as caught:
        wiring.restore_with_remote(
            store, "k", make_fleet(Calls(), pull_error=error), state_dir=state_dir
        )
    assert caught.value.exit_code == EXIT_CACHE_MISS
    message = str(caught.value)
    assert "no entry for k" in message and "the pull failed unexpectedly" in message
    assert type(error).__name__ in message and "\n" not in message
    assert cache_events(state_dir) == [("restore", "miss")]
    assert event_types(state_dir) == [type(error).__name__]


@pytest.mark.parametrize("error", UNFORESEEN, ids=IDS)
def test_pull_push_and_prune_fail_with_one_line(store, state_dir, error):
    with pytest.raises(CacheMiss, match="the pull failed unexpectedly"):
        wiring.pull_key(store, "k", make_fleet(Calls(), pull_error=error), state_dir=state_dir)
    with pytest.raises(RunnerkeepError, match="the push failed unexpectedly") as pushed:
        wiring.push_key(
            store,
            "k",
            make_fleet(Calls(), push_error=error),
            trust=(True, "trusted", "operator"),
            state_dir=state_dir,
        )
    assert pushed.value.exit_code == 1
    fleet = make_fleet(Calls())

    def prune(client, **options):
        raise error

    fleet._prune = prune
    with pytest.raises(RunnerkeepError, match="the prune failed unexpectedly"):
        wiring.prune_remote(fleet, max_age=None, keep=1, dry_run=True)
    assert [r for _op, r in cache_events(state_dir)] == ["pull_failed", "push_failed"]


def test_the_real_client_gets_the_operations_deadline():
    section = {"url": "https://cache.example/r", "max_duration": "90s"}
    settings = remote_settings({"remote": section})
    before = time.monotonic()
    client = wiring._connect_registry(settings)
    assert isinstance(client, RegistryClient)
    assert before + 90 <= client.deadline_at <= time.monotonic() + 90
    assert wiring.fleet_tier({"cache": {"remote": section}}).settings.max_duration == 90


class JustInTime:
    """A loopback 'registry' answering every request 0.15 s late (well within the 2 s
    timeout): only the operation's deadline can end a run of calls to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            for _ in range(200):
                try:
                    if not conn.recv(65536) or self.stop.wait(0.15):
                        return
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


def test_a_restore_falls_through_to_a_miss_within_max_duration(monkeypatch, store, state_dir):
    """attack16 t17's shape: many calls, each in time; the restore's fleet step still ends
    as a miss naming max_duration (before: it ran every call to its end)."""
    peer = JustInTime()
    calls = []

    def pull(store, key, client, progress=None, **limits):
        for _ in range(100):  # a pull of many layers, each fetched in time
            client.check()
            calls.append(1)
        return {}

    try:
        section = {"url": f"http://127.0.0.1:{peer.port}/r", "timeout": 2, "max_duration": 1}
        fleet = wiring.FleetTier(remote_settings({"remote": section}), restore_fleet=pull)
        monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for k")]))
        with pytest.raises(CacheMiss, match="max_duration") as caught:
            wiring.restore_with_remote(store, "k", fleet, state_dir=state_dir)
    finally:
        peer.close()
    assert caught.value.exit_code == EXIT_CACHE_MISS
    assert len(calls) < 100
    assert cache_events(state_dir) == [("restore", "miss")]
