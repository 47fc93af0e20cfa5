"""``runnerkeep fleet-facts``: one read-only pass over a host's state; a part that fails is an
error of its own; the drain record and the corruption counts are read as documented."""

from __future__ import annotations

import json
import os

import pytest
from runnerkeep.fleet import host_facts
from runnerkeep.fleet.host_facts import gather_host_facts, last_cleanup, read_drain
from runnerkeep.fleet.report_model import build_model, host_input


@pytest.fixture
def host(tmp_path):
    state = tmp_path / "state"
    cache = tmp_path / "cache"
    state.mkdir()
    (cache / "entries").mkdir(parents=True)
    config = {
        "paths": {"state_dir": str(state), "cache_dir": str(cache), "log_dir": str(tmp_path)},
        "disk": {"job_peak_floor": "1MiB", "job_peak_floor_inodes": 10, "cache_quota_min": "1MiB"},
    }
    return config, state, cache


def snapshot(root) -> dict:
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            info = os.lstat(path)
            found[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


def test_facts_of_a_fresh_host_have_every_part(host):
    config, _state, _cache = host
    facts = gather_host_facts(config, include_docker=False)
    assert facts["format"] == host_facts.FACTS_FORMAT
    for part in ("disk", "budget", "cache", "history", "corruption"):
        assert isinstance(facts[part], dict) and not facts[part].get("error"), part
    assert facts["drain"] is None and facts["watch"] is None and facts["last_cleanup"] is None
    assert facts["budget"]["free_bytes"] > 0
    assert facts["cache"]["entries"] == 0
    assert "explanation" not in facts["budget"]
    json.dumps(facts)


def test_facts_read_history_events_quarantine_and_drain(host):
    config, state, cache = host
    (cache / "entries" / "app.json").write_text("{}")
    history = [{"start_time": 1000.0 + i, "peak_bytes": 10 * (i + 1)} for i in range(3)]
    (state / "disk-history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    events = [
        {"time": 10.0, "kind": "cleanup", "stage": "pre", "bytes_freed": 5},
        {"time": 2000.0, "kind": "cleanup", "stage": "post", "bytes_freed": 100},
        {"time": 2010.0, "kind": "cleanup", "stage": "post", "bytes_freed": 23},
        {"time": 2020.0, "kind": "cache", "result": "corrupt", "op": "restore"},
    ]
    (state / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (cache / "quarantine").mkdir()
    quarantined = [{"time": 2021.0, "what": "blob"}, {"time": 2022.0, "what": "entry"}]
    (cache / "quarantine" / "log.jsonl").write_text(
        "".join(json.dumps(q) + "\n" for q in quarantined) + "garbage\n"
    )
    (state / "drain.json").write_text(
        json.dumps({"drained": True, "reason": "job needs 9 GiB on /", "since": 1999.0})
    )
    before = snapshot(state.parent)
    facts = gather_host_facts(config, include_docker=False)
    assert snapshot(state.parent) == before, "fleet-facts must not write anything"
    assert facts["cache"]["entries"] == 1
    assert [j["peak_bytes"] for j in facts["history"]["jobs"]] == [10, 20, 30]
    assert facts["last_cleanup"] == {
        "time": 2010.0,
        "stage": "post",
        "bytes_freed": 123,
        "cleaners": 2,
    }
    assert facts["corruption"] == {
        "corrupt_events": 1,
        "quarantined": 2,
        "quarantined_blobs": 1,
        "last_time": 2022.0,
        "skipped": 1,  # the quarantine log's "garbage" line
    }
    assert facts["drain"] == {"drained": True, "reason": "job needs 9 GiB on /", "since": 1999.0}
    row = build_model({"h": host_input({"rc": 0, "stdout": json.dumps(facts)})})["hosts"][0]
    assert row["drain"]["drained"] is True and row["corruption"]["count"] == 2


def test_a_part_that_fails_is_an_error_and_the_others_stay(host, monkeypatch):
    config, _state, _cache = host

    def broken(_config):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(host_facts, "_budget", broken)
    facts = gather_host_facts(config, include_docker=False)
    assert facts["budget"] == {"error": "internal error: RuntimeError: boom\\nsecond line"}
    assert not facts["disk"].get("error") and not facts["history"].get("error")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, None),
        ('{"drained": false}', {"drained": False, "reason": None, "since": None}),
        ('{"drained": "yes"}', "error"),
        ("not json", "error"),
        ('{"drained": true, "reason": "a\\nb\\u001b[31m", "since": "later"}', "escaped"),
    ],
)
def test_the_drain_record(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "drain.json").write_text(content)
    found = read_drain(str(tmp_path))
    if expected == "error":
        assert set(found) == {"error"}
    elif expected == "escaped":
        assert found == {"drained": True, "reason": "a\\nb\\x1b[31m", "since": None}
    else:
        assert found == expected
    if content is not None:
        assert (tmp_path / "drain.json").read_text() == content, "a reader never repairs"


def test_a_drain_symlink_is_not_followed(tmp_path):
    (tmp_path / "elsewhere.json").write_text('{"drained": true}')
    os.symlink(tmp_path / "elsewhere.json", tmp_path / "drain.json")
    assert set(read_drain(str(tmp_path))) == {"error"}


def test_last_cleanup_takes_the_newest_run_only():
    events = [
        {"time": 0.0, "kind": "cleanup", "stage": "post", "bytes_freed": 1000},
        {"time": 5000.0, "kind": "cleanup", "stage": "post", "bytes_freed": 7},
        {"time": 5001.0, "kind": "job", "peak_bytes": 3},
        {"time": 5002.0, "kind": "cleanup", "stage": "post", "bytes_freed": True},
    ]
    assert last_cleanup(events) == {
        "time": 5002.0,
        "stage": "post",
        "bytes_freed": 7,
        "cleaners": 2,
    }
    assert last_cleanup([]) is None


def test_the_state_dir_comes_from_the_core_config_only():
    """The fleet reader takes root's state dir from ``config.state_dir_of`` alone, not from
    disk_config (whose old ``state_dir`` is gone: a fallback to it was dead code)."""
    import ast

    from runnerkeep import config

    with open(host_facts.__file__, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = {
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level
    }
    assert "disk.disk_config" not in imported
    assert host_facts.state_dir_of is config.state_dir_of
