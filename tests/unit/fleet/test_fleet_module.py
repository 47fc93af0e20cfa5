"""library/fleet_report.py run as Ansible runs it: writes the three files, check mode writes
nothing, a bad destination is one line, and the CLI's fleet-facts handler prints the facts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from fleet_samples import UNREACHABLE, facts, registered

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LIBRARY = os.path.join(ROOT, "library", "fleet_report.py")

# Map the core under ansible.module_utils (what AnsiballZ does), then run the module.
MODULE_RUNNER = """
import runpy, sys
import ansible.module_utils
import runnerkeep, runnerkeep.errors, runnerkeep.fleet.report_files, runnerkeep.fleet.report_model
for name, mod in list(sys.modules.items()):
    if name == "runnerkeep" or name.startswith("runnerkeep."):
        sys.modules["ansible.module_utils." + name] = mod
ansible.module_utils.runnerkeep = runnerkeep
sys.argv = [sys.argv[1], sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_module(tmp_path, check: bool = False, **args) -> dict:
    payload = dict(args)
    if check:
        payload["_ansible_check_mode"] = True
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "module_utils"))
    done = subprocess.run(
        [sys.executable, "-c", MODULE_RUNNER, LIBRARY, str(argfile)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return json.loads(done.stdout)


RESULTS = {
    "runner-1": registered(facts(free_gib=3)),
    "runner-2": registered(facts()),
    "runner-3": UNREACHABLE,
}


def test_module_writes_the_report(tmp_path):
    dest = tmp_path / "report"
    result = run_module(tmp_path, results=RESULTS, dest=str(dest), title="eu-west")
    assert result["changed"] is True, result
    assert sorted(os.listdir(dest)) == ["fleet-report.json", "fleet-report.md", "index.html"]
    assert [h["name"] for h in result["hosts"]] == ["runner-1", "runner-3", "runner-2"]
    assert result["hosts"][1]["status"] == "unreachable"
    assert result["summary"]["unreachable"] == 1
    assert "<title>eu-west</title>" in (dest / "index.html").read_text()


def test_check_mode_writes_nothing(tmp_path):
    dest = tmp_path / "report"
    result = run_module(tmp_path, check=True, results=RESULTS, dest=str(dest))
    assert result["changed"] is True
    assert not dest.exists()
    assert result["paths"]["html"] == str(dest / "index.html")


def test_a_destination_that_is_a_file_fails_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("x")
    result = run_module(tmp_path, results=RESULTS, dest=str(tmp_path / "taken"))
    assert result["failed"] is True
    assert "is not a directory" in result["msg"] and "\n" not in result["msg"]


def test_the_cli_handler_prints_the_facts(tmp_path, capsys):
    from runnerkeep_cli import commands_fleet
    from runnerkeep_cli.options import common_options
    from runnerkeep_cli.output import emit

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "paths": {"state_dir": str(tmp_path / "s"), "cache_dir": str(tmp_path / "c")},
                "disk": {"job_peak_floor": "1MiB", "cache_quota_min": "1MiB"},
            }
        )
    )
    parser = argparse.ArgumentParser(prog="runnerkeep")
    commands_fleet.register(parser.add_subparsers(dest="group"), common_options(), "")
    args = parser.parse_args(["fleet-facts", "--json", "--no-docker", "--config", str(config)])
    result = args.handler(args)
    emit(result, as_json=True)
    printed = json.loads(capsys.readouterr().out)
    assert printed["format"] == 1 and printed["budget"]["free_bytes"] > 0
    assert "docker" not in printed["disk"]
    assert "free" in result.text and "watch state" in result.text
