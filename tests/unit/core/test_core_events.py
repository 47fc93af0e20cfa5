import os

from runnerkeep import events


def test_events_round_trip_and_filter(tmp_path):
    events.record_event(str(tmp_path), "cache", result="hit")
    events.record_event(str(tmp_path), "cleanup", cleaner="tmp", bytes_freed=10)
    assert [e["result"] for e in events.read_events(str(tmp_path), "cache")] == ["hit"]
    assert len(list(events.read_events(str(tmp_path)))) == 2


def test_torn_line_is_skipped(tmp_path):
    events.record_event(str(tmp_path), "cache", result="hit")
    with open(events.events_path(str(tmp_path)), "a") as handle:
        handle.write('{"kind": "cache", "res')
    assert len(list(events.read_events(str(tmp_path)))) == 1


def test_log_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "MAX_BYTES", 2000)
    for i in range(200):
        events.record_event(str(tmp_path), "cache", n=i)
    assert os.path.getsize(events.events_path(str(tmp_path))) <= 2000 + 200
    numbers = [e["n"] for e in events.read_events(str(tmp_path))]
    assert numbers[-1] == 199 and numbers == sorted(numbers)


def test_unwritable_state_dir_does_not_raise(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    events.record_event(str(blocker / "sub"), "cache", result="miss")
