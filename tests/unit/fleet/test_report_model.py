"""The fleet model: classifying what each host sent, scoring risk, sorting, missing fields."""

from __future__ import annotations

import json

import pytest
from fleet_samples import NOW, UNREACHABLE, facts, registered
from runnerkeep.fleet.report_model import (
    SUSPECT_DISK_CORRUPTIONS,
    build_model,
    host_input,
    host_row,
)


def model_of(results: dict) -> dict:
    return build_model({name: host_input(r) for name, r in results.items()}, now=NOW)


def test_host_input_classifies_every_kind_of_result():
    assert host_input(registered(facts()))["status"] == "ok"
    assert host_input(UNREACHABLE) == {
        "status": "unreachable",
        "message": UNREACHABLE["msg"],
    }
    prefixed = dict(UNREACHABLE, msg="Task failed: " + UNREACHABLE["msg"])
    assert host_input(prefixed)["message"] == UNREACHABLE["msg"]
    failed = host_input({"rc": 2, "stdout": "", "stderr": "usage: ...\nruntime: bad choice"})
    assert failed == {"status": "error", "message": "runtime: bad choice"}
    assert host_input({"rc": 0, "stdout": "not json"})["status"] == "error"
    assert host_input({"rc": 0, "stdout": json.dumps({"format": 99})})["status"] == "error"
    assert host_input({"rc": 0, "stdout": "[1, 2]"})["status"] == "error"
    assert host_input({})["status"] == "not gathered"
    assert host_input(None)["status"] == "not gathered"
    assert host_input({"skipped": True})["status"] == "not gathered"


def test_hosts_are_sorted_riskiest_first():
    results = {
        "a-healthy": registered(facts(free_gib=40)),
        "b-warning": registered(facts(free_gib=12)),
        "c-emergency": registered(facts(free_gib=1)),
        "d-gone": UNREACHABLE,
        "e-drained": registered(
            facts(drain={"drained": True, "reason": "job needs 4 GiB", "since": NOW - 60})
        ),
        "f-critical": registered(facts(free_gib=8)),
    }
    rows = model_of(results)["hosts"]
    order = [row["name"] for row in rows]
    assert order == ["c-emergency", "f-critical", "d-gone", "e-drained", "b-warning", "a-healthy"]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5, 6]
    levels = {row["name"]: row["risk"]["level"] for row in rows}
    assert levels["c-emergency"] == "critical"
    assert levels["a-healthy"] == "ok"
    assert rows[-1]["risk"]["reasons"] == []


def test_equal_scores_sort_by_name():
    rows = model_of({"zz": registered(facts()), "aa": registered(facts())})["hosts"]
    assert [row["name"] for row in rows] == ["aa", "zz"]


def test_disk_level_takes_inodes_and_the_watch_state_into_account():
    few_inodes = facts()
    few_inodes["budget"]["free_inodes"] = 305_000  # below critical (310k), above emergency
    assert host_row("h", host_input(registered(few_inodes)), NOW)["disk"]["level"] == "critical"
    stale_watch = facts(watch={"state": "warning"})
    assert host_row("h", host_input(registered(stale_watch)), NOW)["disk"]["level"] == "warning"


def test_one_job_peak_from_warning_is_a_low_risk():
    # 16 GiB free, warning at 13 GiB, job peak 4 GiB: the next job reaches warning.
    row = host_row("h", host_input(registered(facts(free_gib=16))), NOW)
    assert row["disk"]["level"] == "ok"
    assert row["risk"]["level"] == "low"
    assert "warning mark" in row["risk"]["reasons"][0]


def test_repeated_corruption_flags_a_suspect_disk():
    one = facts(corruption={"corrupt_events": 1, "quarantined": 1, "last_time": NOW - 5})
    many = facts(
        corruption={
            "corrupt_events": 1,
            "quarantined": SUSPECT_DISK_CORRUPTIONS,
            "last_time": NOW - 5,
        }
    )
    row_one = host_row("h", host_input(registered(one)), NOW)
    row_many = host_row("h", host_input(registered(many)), NOW)
    assert row_one["corruption"] == {
        "count": 1,
        "quarantined": 1,
        "suspect_disk": False,
        "last_time": NOW - 5,
    }
    assert row_many["corruption"]["suspect_disk"] is True
    assert row_many["risk"]["score"] > row_one["risk"]["score"]
    summary = model_of({"x": registered(many), "y": registered(one)})["summary"]
    assert summary["suspect_disks"] == 1


def test_unreachable_and_failed_hosts_are_listed_with_their_message():
    model = model_of(
        {"up": registered(facts()), "down": UNREACHABLE, "old": {"rc": 2, "stdout": ""}}
    )
    rows = {row["name"]: row for row in model["hosts"]}
    assert rows["down"]["status"] == "unreachable"
    assert "Connection refused" in rows["down"]["risk"]["reasons"][0]
    assert rows["old"]["status"] == "error"
    assert rows["down"]["disk"]["free_bytes"] is None
    assert model["summary"]["unreachable"] == 1
    assert model["summary"]["without_facts"] == 1
    assert model["summary"]["reachable"] == 1


def test_missing_parts_are_none_not_errors():
    bare = {"format": 1}
    row = host_row("bare", host_input(registered(bare)), NOW)
    assert row["status"] == "ok"
    assert row["disk"]["free_bytes"] is None and row["disk"]["level"] is None
    assert row["cache"]["bytes"] is None and row["cache"]["quota_bytes"] is None
    assert row["job_peaks"]["values"] == []
    assert row["drain"]["drained"] is None
    assert row["corruption"]["count"] is None
    assert row["last_cleanup"] is None
    assert "budget error: no budget" in row["risk"]["reasons"]


@pytest.mark.parametrize(
    "bad",
    [
        {"budget": {"free_bytes": "lots", "capacity_bytes": True, "warning_free_bytes": -1}},
        {"budget": "not a dict", "history": {"jobs": "nope"}, "drain": {"drained": "yes"}},
        {"history": {"jobs": [{"peak_bytes": float("nan")}, 7, {"peak_bytes": 5}]}},
        {"corruption": {"error": "cannot read"}, "watch": {"state": "panic"}},
        {"last_cleanup": {"time": "yesterday", "stage": 3, "bytes_freed": None}},
    ],
)
def test_fields_of_the_wrong_type_are_ignored(bad):
    row = host_row("h", host_input(registered(facts(**bad))), NOW)
    assert isinstance(row["risk"]["score"], int)
    for value in (row["disk"]["free_bytes"], row["disk"]["capacity_bytes"]):
        assert value is None or isinstance(value, int)
    assert all(isinstance(v, int) for v in row["job_peaks"]["values"])
    assert row["drain"]["drained"] in (None, True, False)


def test_part_errors_are_reasons():
    row = host_row("h", host_input(registered(facts(cache={"error": "permission denied"}))), NOW)
    assert "cache: permission denied" in row["errors"]
    assert "cache: permission denied" in row["risk"]["reasons"]


def test_the_model_is_json_and_keeps_hostile_names_raw():
    hostile = '<script>alert("x")</script>'
    model = model_of({hostile: registered(facts())})
    assert json.loads(json.dumps(model))["hosts"][0]["name"] == hostile
