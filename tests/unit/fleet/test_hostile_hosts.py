"""One hostile host against the controller's fleet report (attack 15, cases 6, 7, 10, 13).

Every host's fleet-facts output is untrusted: it is parsed by the core's strict, bounded JSON
reader, numbers an int cannot hold are n/a, and each host's row is built (and rendered once)
under a guard, so a host can only fail its own row, never the report of the others.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from fleet_samples import NOW, facts, registered
from runnerkeep.fleet import describe, host_facts, report_model
from runnerkeep.fleet.render_html import render_html
from runnerkeep.fleet.render_markdown import cell, render_markdown
from runnerkeep.fleet.report_model import build_model, host_input
from test_fleet_module import run_module

HUGE = 10**400


def raw(stdout: str) -> dict:
    return {"rc": 0, "stdout": stdout, "stderr": "", "changed": False}


def hostile_results() -> dict[str, dict]:
    huge_budget = dict(facts()["budget"], capacity_bytes=HUGE, free_bytes=HUGE)
    float_budget = dict(facts()["budget"], capacity_bytes=1e300, free_bytes=1e300)
    return {
        "runner-good": registered(facts()),
        "runner-deep": raw("[" * 100_000 + "]" * 100_000),
        "runner-deep-object": raw('{"format": 1, "budget": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "runner-nan": raw('{"format": 1, "budget": {"free_bytes": NaN}}'),
        "runner-huge": registered(facts(budget=huge_budget)),
        "runner-huge-cache": registered(facts(cache={"disk_bytes": HUGE, "entries": HUGE})),
        "runner-huge-peak": registered(facts(history={"jobs": [{"peak_bytes": HUGE}]})),
        "runner-float": registered(
            facts(
                budget=float_budget,
                cache={"disk_bytes": 1e300},
                history={"jobs": [{"peak_bytes": 1e300}]},
                last_cleanup={"time": 1e300, "bytes_freed": 1e300},
            )
        ),
    }


def whole_report(results: dict[str, dict]) -> dict:
    hosts = {name: host_input(result) for name, result in results.items()}
    model = build_model(hosts, now=NOW)
    render_html(model)
    render_markdown(model)
    json.dumps(model, allow_nan=False)
    return model


def rows_by_name(model: dict) -> dict[str, dict]:
    return {row["name"]: row for row in model["hosts"]}


def test_deep_json_is_that_hosts_error_only():
    model = whole_report(hostile_results())
    rows = rows_by_name(model)
    assert rows["runner-good"]["status"] == "ok"
    assert rows["runner-good"]["disk"]["capacity_bytes"] == facts()["budget"]["capacity_bytes"]
    for name in ("runner-deep", "runner-deep-object", "runner-nan"):
        assert rows[name]["status"] == "error", rows[name]
        assert "JSON" in rows[name]["message"], rows[name]


def test_numbers_above_int64_are_not_available():
    assert report_model._int(2**63 - 1) == 2**63 - 1
    assert report_model._int(2**63) is None
    assert report_model._int(HUGE) is None
    assert report_model._int(1e300) is None
    assert report_model._int(float("nan")) is None
    assert report_model._int(float("-inf")) is None
    rows = rows_by_name(whole_report(hostile_results()))
    # An integer beyond int64 anywhere: the facts are forged or broken, the host an error row.
    for name in ("runner-huge", "runner-huge-cache", "runner-huge-peak"):
        assert rows[name]["status"] == "error", rows[name]
        assert "a number above" in rows[name]["message"]
    # A finite float that large is a figure the report cannot use: n/a, the row still there.
    floats = rows["runner-float"]
    assert floats["status"] == "ok"
    assert floats["disk"]["capacity_bytes"] is None and floats["disk"]["free_bytes"] is None
    assert floats["cache"]["bytes"] is None and floats["job_peaks"]["values"] == []
    assert floats["last_cleanup"] == {"time": None, "stage": None, "bytes_freed": None}
    assert rows["runner-good"]["status"] == "ok"


def test_a_model_given_huge_numbers_directly_still_renders():
    huge_budget = dict(facts()["budget"], capacity_bytes=HUGE, free_bytes=HUGE)
    entry = {"status": "ok", "facts": facts(budget=huge_budget, cache={"disk_bytes": HUGE})}
    model = build_model({"h": entry, "g": host_input(registered(facts()))}, now=NOW)
    render_html(model)
    render_markdown(model)
    row = rows_by_name(model)["h"]
    assert row["status"] == "ok" and row["disk"]["capacity_bytes"] is None


def test_a_row_that_fails_is_that_hosts_error_row(monkeypatch):
    real = report_model.cache_part

    def buggy(found):
        if found.get("hostname") == "evil":
            raise OverflowError("int too large to convert to float")
        return real(found)

    monkeypatch.setattr(report_model, "cache_part", buggy)
    results = {
        "runner-good": registered(facts()),
        "runner-evil": registered(facts(hostname="evil")),
    }
    rows = rows_by_name(whole_report(results))
    assert rows["runner-good"]["status"] == "ok"
    evil = rows["runner-evil"]
    assert evil["status"] == "error"
    assert "facts unusable" in evil["message"] and "OverflowError" in evil["message"]
    assert evil["risk"]["level"] != "ok"


def test_a_row_that_cannot_be_rendered_is_that_hosts_error_row(monkeypatch):
    real = describe.cache_text

    def buggy(cache):
        if cache.get("dir") == "/evil":
            raise OverflowError("int too large to convert to float")
        return real(cache)

    monkeypatch.setattr(describe, "cache_text", buggy)
    evil = facts(cache={"dir": "/evil", "disk_bytes": 1})
    results = {"runner-good": registered(facts()), "runner-evil": registered(evil)}
    model = whole_report(results)
    rows = rows_by_name(model)
    assert rows["runner-good"]["status"] == "ok"
    assert rows["runner-evil"]["status"] == "error"
    assert "runner-evil" in render_markdown(model)


def test_a_result_that_cannot_be_classified_is_an_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    found = host_input({"rc": 1, "stderr": deep})
    assert found["status"] == "error"


def test_the_module_writes_the_others_rows_in_check_mode_too(tmp_path):
    results = hostile_results()
    dest = tmp_path / "report"
    result = run_module(tmp_path, check=True, results=results, dest=str(dest))
    assert not result.get("failed"), result
    assert not dest.exists()
    statuses = {host["name"]: host["status"] for host in result["hosts"]}
    assert statuses["runner-good"] == "ok"
    assert statuses["runner-deep"] == "error" and statuses["runner-huge"] == "error"
    result = run_module(tmp_path, results=results, dest=str(dest))
    assert result["changed"] is True, result
    assert "runner-good" in (dest / "index.html").read_text()


# --- case 10: a damaged state file is a failed part, not "nothing recorded" --------------------


@pytest.fixture
def host(tmp_path):
    state = tmp_path / "state"
    cache = tmp_path / "cache"
    state.mkdir()
    (cache / "entries").mkdir(parents=True)
    (cache / "quarantine").mkdir()
    config = {
        "paths": {"state_dir": str(state), "cache_dir": str(cache), "log_dir": str(tmp_path)},
        "disk": {"job_peak_floor": "1MiB", "job_peak_floor_inodes": 10, "cache_quota_min": "1MiB"},
    }
    return config, state, cache


def test_unreadable_events_and_quarantine_log_are_errors(host):
    config, state, cache = host
    os.mkfifo(state / "events.jsonl")
    os.mkfifo(cache / "quarantine" / "log.jsonl")
    found = host_facts.gather_host_facts(config, include_docker=False)
    assert set(found["last_cleanup"]) == {"error"}, found["last_cleanup"]
    assert "FIFO" in found["last_cleanup"]["error"]
    assert set(found["corruption"]) == {"error"}, found["corruption"]
    row = report_model.host_row("h", {"status": "ok", "facts": found}, NOW)
    assert row["corruption"]["count"] is None
    assert any(error.startswith("corruption:") for error in row["errors"])


def test_a_quarantine_log_symlink_is_an_error_with_good_events(host):
    config, state, cache = host
    (state / "events.jsonl").write_text(json.dumps({"time": NOW, "kind": "cache"}) + "\n")
    (cache / "elsewhere.jsonl").write_text("")
    os.symlink(cache / "elsewhere.jsonl", cache / "quarantine" / "log.jsonl")
    found = host_facts.gather_host_facts(config, include_docker=False)
    assert found["last_cleanup"] is None
    assert set(found["corruption"]) == {"error"}, found["corruption"]
    assert "symlink" in found["corruption"]["error"]


def test_an_events_file_past_its_bound_is_an_error(host, monkeypatch):
    config, state, _cache = host
    line = json.dumps({"time": NOW, "kind": "cleanup", "stage": "post", "bytes_freed": 1})
    (state / "events.jsonl").write_text((line + "\n") * 50)
    monkeypatch.setattr(host_facts.events, "READ_BOUND", len(line) * 3)
    found = host_facts.gather_host_facts(config, include_docker=False)
    assert set(found["last_cleanup"]) == {"error"}, found["last_cleanup"]
    assert set(found["corruption"]) == {"error"}, found["corruption"]


def test_a_damaged_watch_state_is_an_error(host):
    config, state, _cache = host
    os.mkfifo(state / "disk-watch.json")
    found = host_facts.gather_host_facts(config, include_docker=False)
    assert set(found["watch"]) == {"error"}, found["watch"]


# --- case 13: no link from host data in the Markdown ---------------------------------------

AUTOLINK = re.compile(r"(?i)(://|www\.|[a-z0-9]@[a-z0-9])")


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example/x",
        "see HTTP://evil.example",
        "ftp://evil.example",
        "www.evil.example/login",
        "WWW.evil.example",
        "mail ops@evil.example",
        "xmpp:ops@evil.example",
    ],
)
def test_markdown_cells_carry_no_bare_link(value):
    text = cell(value)
    assert not AUTOLINK.search(text), text
    # What a reader sees is still the text: only an invisible joiner was added.
    assert text.replace("\u2060", "").replace("\\", "") == value


def test_a_hostile_host_name_makes_no_link_in_the_report():
    results = {"https://evil.example/x": registered(facts(version="www.evil.example"))}
    page = render_markdown(whole_report(results))
    assert not AUTOLINK.search(page), page


def test_single_unusable_lines_are_counted_and_the_rest_used(host):
    config, state, cache = host
    good = json.dumps({"time": NOW, "kind": "cache", "result": "corrupt"})
    (state / "events.jsonl").write_text(good + "\n{torn\n" + good + "\n")
    (cache / "quarantine" / "log.jsonl").write_text('{"time": NaN}\n')
    found = host_facts.gather_host_facts(config, include_docker=False)
    assert found["corruption"]["corrupt_events"] == 2
    assert found["corruption"]["skipped"] == 2
