"""The monitoring files hold together: every dashboard query is a rule or a promtool-tested
expression (so promtool has parsed it), every alert has a test where it fires and one where it
stays silent, every recording rule is tested, and every runnerkeep metric they use is one the
code defines. promtool itself runs in tools/check_rules.py (the rules session)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from runnerkeep.disk.metrics import PLANNED_METRICS, WATCH_METRICS

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "monitoring" / "prometheus" / "runnerkeep-rules.yml"
RULE_TESTS = ROOT / "monitoring" / "prometheus" / "runnerkeep-rules.test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "runnerkeep-dashboard.json"
# A metric name: not the tail of a recording rule name (level:metric:operations).
METRIC_NAME = re.compile(r"(?<![\w:])(runnerkeep_[a-z0-9_]+)")
DEFINED = {metric.name for metric in (*WATCH_METRICS, *PLANNED_METRICS)}


def normalized(expr: str) -> str:
    return " ".join(expr.split())


def load_rules() -> list[dict]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def load_tests() -> list[dict]:
    return yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [target["expr"] for target in inner.get("targets", [])]
    return exprs


def exprs_under_test() -> set[str]:
    return {
        normalized(case["expr"])
        for test in load_tests()
        for case in test.get("promql_expr_test", [])
    }


def alert_cases() -> dict[str, list[list]]:
    """alert name -> the exp_alerts lists its tests expect."""
    cases: dict[str, list[list]] = {}
    for test in load_tests():
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


def test_every_dashboard_query_is_a_rule_or_a_tested_expression():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 10
    known = {normalized(rule["expr"]) for rule in load_rules()} | exprs_under_test()
    unchecked = [expr for expr in exprs if normalized(expr) not in known]
    assert unchecked == [], (
        "dashboard queries promtool never parsed: add each to a promql_expr_test in "
        f"{RULE_TESTS.name}: {unchecked}"
    )


def test_the_check_catches_a_query_nothing_tests():
    dashboard = {"panels": [{"targets": [{"expr": "runnerkeep_disk_state_level > 1"}]}]}
    known = {normalized(rule["expr"]) for rule in load_rules()} | exprs_under_test()
    assert [e for e in dashboard_exprs(dashboard) if normalized(e) not in known] == [
        "runnerkeep_disk_state_level > 1"
    ]


def test_the_dashboard_is_importable():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        # Every panel queries the dashboard's Prometheus variable, never a fixed data source.
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert "datasource" in variables
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("alert", [r["alert"] for r in load_rules() if "alert" in r])
def test_every_alert_is_tested_firing_and_silent(alert):
    cases = alert_cases().get(alert, [])
    assert any(cases), f"{alert}: no test where it fires"
    assert any(case == [] for case in cases), f"{alert}: no test where it stays silent"
    for case in cases:
        for expected in case:
            # a firing case checks the texts people read, not only the labels
            assert set(expected.get("exp_annotations", {})) == {"summary", "description"}


@pytest.mark.parametrize("record", [r["record"] for r in load_rules() if "record" in r])
def test_every_recording_rule_is_tested(record):
    assert record in exprs_under_test()


def test_every_alert_has_a_severity_and_texts():
    for rule in load_rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
            assert rule["alert"].startswith("Runnerkeep")


def test_every_runnerkeep_metric_used_is_defined_in_the_code():
    texts = [rule["expr"] for rule in load_rules()]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    texts += dashboard_exprs(dashboard)
    for test in load_tests():
        texts += [series["series"] for series in test.get("input_series", [])]
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert "runnerkeep_disk_state" in used and "runnerkeep_runner_drained" in used
    assert sorted(used - DEFINED) == []


def test_the_metric_name_pattern_skips_recording_rule_names():
    assert METRIC_NAME.findall("runnerkeep:metrics_age:seconds + runnerkeep_build_info") == [
        "runnerkeep_build_info"
    ]


# --- tools/check_rules.py (the promtool runs themselves are the rules session's) ---------------


def load_check_rules():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_rules", ROOT / "tools" / "check_rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_rules_names_the_package_of_a_missing_tool(monkeypatch, capsys):
    tool = load_check_rules()
    monkeypatch.setattr(tool.shutil, "which", lambda name: None)
    assert tool.main([]) == 2
    err = capsys.readouterr().err
    assert "promtool, amtool not found" in err
    assert "apt-get install -y prometheus prometheus-alertmanager" in err


def test_check_rules_runs_every_check_and_fails_when_one_fails(monkeypatch, capsys):
    import subprocess

    tool = load_check_rules()
    monkeypatch.setattr(tool.shutil, "which", lambda name: f"/usr/bin/{name}")
    calls = []

    def fake_run(argv, cwd, timeout, check):
        calls.append(argv)
        failing = argv[:3] == ["promtool", "test", "rules"]
        return subprocess.CompletedProcess(argv, 1 if failing else 0)

    monkeypatch.setattr(tool.subprocess, "run", fake_run)
    assert tool.main([]) == 1
    assert [argv[:3] for argv in calls] == [
        ["promtool", "check", "rules"],
        ["promtool", "test", "rules"],
        ["amtool", "check-config", str(ROOT / "monitoring/alertmanager/runnerkeep-example.yml")],
    ]
    assert str(RULES) in calls[0] and str(RULE_TESTS) not in calls[0]
    assert calls[1][3:] == [str(RULE_TESTS)]
    assert "2 of 3 checks passed" in capsys.readouterr().out


def test_check_rules_passes_when_every_check_passes(monkeypatch):
    import subprocess

    tool = load_check_rules()
    monkeypatch.setattr(tool.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(
        tool.subprocess, "run", lambda argv, **k: subprocess.CompletedProcess(argv, 0)
    )
    assert tool.main([]) == 0
