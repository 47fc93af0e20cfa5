"""A writer that does not own the state dir spools its events where the watch ingests them:
the config's ``paths.spool_dir``, not ``<state_dir>/spool``."""

from __future__ import annotations

import os

import pytest
from runnerkeep import events, spool


@pytest.fixture
def custom(tmp_path, monkeypatch):
    state = tmp_path / "state"
    (state / "spool").mkdir(parents=True)
    custom_spool = tmp_path / "elsewhere" / "spool"
    custom_spool.mkdir(parents=True)
    os.chmod(custom_spool, 0o1730)
    config = {"paths": {"state_dir": str(state), "spool_dir": str(custom_spool)}}
    # As for a job hook or the cache service user: root's state dir belongs to someone else.
    monkeypatch.setattr(spool, "use_spool", lambda state_dir: True)
    return config, state, custom_spool


def test_a_custom_spool_dir_receives_the_spooled_event_and_the_watch_ingests_it(custom):
    config, state, custom_spool = custom
    events.record_event(
        str(state), "cache", spool_dir=spool.spool_dir_of(config), op="restore", result="hit"
    )
    assert os.listdir(custom_spool) == [f"events-{os.geteuid()}.jsonl"]
    assert os.listdir(state / "spool") == []
    assert list(events.read_events(str(state))) == []
    # What each watch cycle does: events.ingest_spool(state dir, spool.spool_dir_of(config)).
    assert events.ingest_spool(str(state), spool.spool_dir_of(config)) == 1
    [event] = events.read_events(str(state), "cache")
    assert (event["op"], event["result"], event["uid"]) == ("restore", "hit", os.geteuid())
    assert os.listdir(custom_spool) == []


def test_without_a_spool_dir_the_state_dirs_spool_is_used(custom):
    _config, state, custom_spool = custom
    events.record_event(str(state), "cache", op="restore", result="miss")
    assert os.listdir(state / "spool") == [f"events-{os.geteuid()}.jsonl"]
    assert os.listdir(custom_spool) == []
    assert events.ingest_spool(str(state)) == 1


def test_spool_dir_is_not_an_event_field(custom, tmp_path):
    config, state, _custom_spool = custom
    events.record_event(str(state), "job", spool_dir=spool.spool_dir_of(config), job_id="j1")
    events.ingest_spool(str(state), spool.spool_dir_of(config))
    [event] = events.read_events(str(state), "job")
    assert "spool_dir" not in event and event["job_id"] == "j1"


def test_a_writer_owning_the_state_dir_writes_it_whatever_the_spool_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(spool, "use_spool", lambda state_dir: False)
    events.record_event(str(tmp_path), "cache", spool_dir=str(tmp_path / "nowhere"), result="hit")
    assert [e["result"] for e in events.read_events(str(tmp_path), "cache")] == ["hit"]
    assert not (tmp_path / "nowhere").exists()
