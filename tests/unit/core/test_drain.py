"""The drain record (drain.json), the fleet guard and the agent unit's name."""

from __future__ import annotations

import json
import os
import stat

import pytest
from runnerkeep import drain
from runnerkeep.errors import ConfigError
from runnerkeep.fleet.host_facts import read_drain as fleet_read_drain


def test_no_record_is_not_drained(tmp_path):
    assert drain.read_drain(str(tmp_path)) is None
    assert drain.is_drained(str(tmp_path)) is False


def test_written_record_reads_back_root_0644_and_atomic(tmp_path):
    record = drain.new_record(True, "free bytes on /: needs 9 GiB", "gitlab-runner.service", 100.0)
    path = drain.write_drain(str(tmp_path), record)
    assert drain.read_drain(str(tmp_path)) == {
        "drained": True,
        "reason": "free bytes on /: needs 9 GiB",
        "since": 100.0,
        "unit": "gitlab-runner.service",
        "by": "admission",
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [n for n in os.listdir(tmp_path) if n != "drain.json"] == []  # no temp file left
    assert drain.is_drained(str(tmp_path)) is True


def test_a_record_from_before_operator_drains_was_written_by_admission(tmp_path):
    (tmp_path / "drain.json").write_text(
        '{"drained": true, "reason": "free bytes on /: x", "since": 3, "unit": "a.service"}'
    )
    assert drain.read_drain(str(tmp_path))["by"] == drain.BY_ADMISSION


def test_the_fleet_report_reads_the_same_record(tmp_path):
    drain.write_drain(str(tmp_path), drain.new_record(True, "why", "a.service", 5.0))
    assert fleet_read_drain(str(tmp_path)) == {
        "drained": True,
        "reason": "why",
        "since": 5.0,
        "unit": "a.service",
    }


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"drained": "false", "reason": "", "since": 1, "unit": ""}',
        b'{"drained": false, "reason": 3, "since": 1, "unit": ""}',
        b'{"drained": false, "reason": "", "since": NaN, "unit": ""}',
        b'{"drained": false, "reason": "", "unit": ""}',
        b'{"drained": false, "reason": "", "since": 1, "unit": 7}',
        b'{"drained": true, "reason": "", "since": 1, "unit": "", "by": "the job"}',
        b'{"drained": true, "reason": "", "since": 1, "unit": "", "by": null}',
    ],
)
def test_a_damaged_record_is_an_error_never_not_drained(tmp_path, content):
    (tmp_path / "drain.json").write_bytes(content)
    with pytest.raises(drain.DrainRecordError, match="drain state is unknown"):
        drain.read_drain(str(tmp_path))
    with pytest.raises(drain.DrainRecordError):
        drain.is_drained(str(tmp_path))
    assert (tmp_path / "drain.json").read_bytes() == content  # a reader never repairs


def test_a_record_without_unit_has_none(tmp_path):
    (tmp_path / "drain.json").write_text('{"drained": true, "reason": "r", "since": 5}')
    assert drain.read_drain(str(tmp_path))["unit"] == ""


def test_a_symlinked_record_is_an_error_and_not_followed(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"drained": False, "reason": "", "since": 1.0, "unit": ""}))
    os.symlink(target, tmp_path / "drain.json")
    with pytest.raises(drain.DrainRecordError):
        drain.read_drain(str(tmp_path))


def test_a_fifo_record_is_an_error_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "drain.json")
    with pytest.raises(drain.DrainRecordError):
        drain.read_drain(str(tmp_path))


def test_writing_replaces_a_planted_symlink_never_writes_through_it(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep")
    os.symlink(target, tmp_path / "drain.json")
    drain.write_drain(str(tmp_path), drain.new_record(False, "", "", 1.0))
    assert target.read_text() == "keep"
    assert not os.path.islink(tmp_path / "drain.json")


def test_an_invalid_record_is_never_written(tmp_path):
    with pytest.raises(drain.RunnerkeepError):
        drain.write_drain(str(tmp_path), {"drained": "yes"})
    assert not (tmp_path / "drain.json").exists()


def test_reason_is_one_escaped_bounded_line():
    record = drain.new_record(True, "a\nb\x1b[31m" + "x" * 1000, "", 1.0)
    assert "\n" not in record["reason"] and "\x1b" not in record["reason"]
    assert len(record["reason"]) == drain.MAX_REASON


def test_short_reason_is_what_and_where():
    assert drain.short_reason("free bytes on /data: needs 9 GiB") == "free bytes on /data"


@pytest.mark.parametrize(
    ("max_drained", "others", "allowed"),
    [(None, 100, True), (2, 0, True), (2, 1, True), (2, 2, False), (0, 0, False), (1, 5, False)],
)
def test_fleet_guard(max_drained, others, allowed):
    ok, why = drain.may_drain(max_drained, others)
    assert ok is allowed
    assert (why == "") is allowed
    if not allowed:
        assert "fleet guard" in why and str(others) in why


@pytest.mark.parametrize(
    "unit",
    ["gitlab-runner.service", "actions.runner.org-repo.host.service", "actions.runner.*.service"],
)
def test_unit_names_accepted(unit):
    assert drain.check_unit(unit) == unit


@pytest.mark.parametrize(
    "unit", ["", "-H host.service", "a b.service", "../x.service", "x.socket", 5, None, "a;b"]
)
def test_unit_names_refused(unit):
    with pytest.raises(ConfigError, match=r"admission\.agent_unit"):
        drain.check_unit(unit)


def test_systemctl_never_raises_without_systemctl(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, line = drain.systemctl("stop", "x.service")
    assert ok is False and "systemctl stop x.service" in line
    assert drain.unit_active("x.service") is None


def test_systemctl_reports_its_answer(monkeypatch, tmp_path):
    fake = tmp_path / "systemctl"
    fake.write_text(
        '#!/bin/sh\necho "$@" >> "$0.log"\n[ "$1" = is-active ] && echo inactive\n'
        '[ "$1" = is-active ] && exit 3\nexit 0\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert drain.systemctl("stop", "a.service") == (True, "exit 0")
    assert drain.unit_active("a.service") is False
    assert (tmp_path / "systemctl.log").read_text().splitlines() == [
        "stop -- a.service",
        "is-active -- a.service",
    ]
