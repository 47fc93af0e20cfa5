#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: fleet_report
short_description: Write the runnerkeep fleet report (HTML, Markdown, JSON) on the controller
description:
  - >-
    Takes what C(runnerkeep fleet-facts --json) printed on every runner (the registered results
    of that command, unreachable hosts included), ranks the hosts by risk and writes one
    self-contained HTML page, the same data as Markdown and as JSON into O(dest).
  - >-
    Risk adds up what was found on a host: disk state against its budget's watermarks
    (emergency, critical, warning, or one job peak from warning), unreachable or without facts,
    drained, cache corruptions (a suspect disk from 3 on), a budget that could not be computed,
    a cache above its quota, parts of the facts that failed.
  - >-
    The page has no script and fetches nothing (inline CSS and SVG; a Content-Security-Policy
    forbids the rest): per host a bar of free space against the watermarks, the cache against
    its quota and a sparkline of the recorded job peaks. Every string from a host is escaped;
    the Markdown carries no link made from host text (bare URLs are broken by a word joiner).
  - >-
    Every host's output is untrusted: it is parsed with the core's strict JSON reader (no
    NaN/Infinity, bounded size and nesting, no integer above 2**63-1), a figure the report
    cannot use is n/a, and each host's row is built under its own guard, so a host whose facts
    cannot be used is listed as C(error) and the report of the other hosts is still written, in
    check mode too.
  - Run it on the controller (C(localhost)); playbooks/fleet_report.yml gathers and calls it.
version_added: "0.1.0"
author:
  - runnerkeep maintainers (@runnerkeep)
options:
  results:
    description:
      - >-
        Inventory host name to the registered result of C(runnerkeep fleet-facts --json) on that
        host (C(rc), C(stdout), C(stderr); C(unreachable) and C(msg) for an unreachable host). A
        host whose value is empty or missing facts is listed as not gathered.
    type: dict
    required: true
  dest:
    description:
      - >-
        Directory that receives C(index.html), C(fleet-report.md) and C(fleet-report.json)
        (created when missing). Each file is replaced atomically.
    type: path
    required: true
  title:
    description:
      - Title of the page and of the Markdown report.
    type: str
    default: runnerkeep fleet report
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - >-
        In check mode the report is built and compared with the files in O(dest); nothing is
        written, not even the directory.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
    details:
      - The report changes with every run (it carries its time); no diff is returned.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - >-
    A runner whose runnerkeep is too old for C(fleet-facts) is listed with the command's error,
    not dropped.
requirements:
  - python >= 3.9 on the controller
"""

EXAMPLES = r"""
- name: Write the fleet report from the gathered facts
  runnerkeep.runner.fleet_report:
    results: "{{ fleet_report_results }}"
    dest: /srv/www/fleet

- name: Report with a title of its own
  runnerkeep.runner.fleet_report:
    results: "{{ fleet_report_results }}"
    dest: "{{ playbook_dir }}/fleet-report"
    title: CI runners, region eu-west
  register: fleet_report

- name: Show the riskiest host
  ansible.builtin.debug:
    msg: "{{ fleet_report.hosts[0].name }}: {{ fleet_report.hosts[0].reasons }}"
"""

RETURN = r"""
dir:
  description: The report directory, absolute.
  returned: success
  type: str
  sample: /home/ops/fleet-report
paths:
  description: The three files (C(html), C(markdown), C(json)), written or (check mode) not.
  returned: success
  type: dict
  sample: {"html": "/home/ops/fleet-report/index.html"}
changed_files:
  description: Which of the three formats differ from the files that were there.
  returned: success
  type: list
  elements: str
  sample: [html, markdown, json]
summary:
  description:
    - >-
      Counts over the fleet: C(hosts), C(reachable), C(unreachable), C(without_facts),
      C(drained), C(suspect_disks), and C(by_risk) (hosts per risk level).
  returned: success
  type: dict
hosts:
  description: The hosts, riskiest first.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Inventory name.
      type: str
      returned: success
    status:
      description: >-
        C(ok), C(unreachable), C(error) (the command failed or its facts were unusable) or
        C(not gathered).
      type: str
      returned: success
    risk_level:
      description: C(critical), C(high), C(medium), C(low) or C(ok).
      type: str
      returned: success
    risk_score:
      description: The sum of what was found (the sort key).
      type: int
      returned: success
    reasons:
      description: What was found, in words.
      type: list
      elements: str
      returned: success
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.fleet.report_files import write_report
    from ansible.module_utils.runnerkeep.fleet.report_model import build_model, host_input
    from ansible.module_utils.runnerkeep.module_frame import run_module

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by fail_json in main()
    IMPORT_ERROR = str(exc)


def host_summary(row):
    return {
        "name": row["name"],
        "status": row["status"],
        "risk_level": row["risk"]["level"],
        "risk_score": row["risk"]["score"],
        "reasons": row["risk"]["reasons"],
    }


def run(task):
    """Write the report (nothing in check mode) and return what RETURN lists."""
    params = task.params
    hosts = {name: host_input(result) for name, result in params["results"].items()}
    model = build_model(hosts, title=params["title"])
    written = write_report(params["dest"], model, dry_run=task.check_mode)
    return dict(
        changed=bool(written["changed_files"]),
        dir=written["dir"],
        paths=written["paths"],
        changed_files=written["changed_files"],
        summary=model["summary"],
        hosts=[host_summary(row) for row in model["hosts"]],
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            results=dict(type="dict", required=True),
            dest=dict(type="path", required=True),
            title=dict(type="str", default="runnerkeep fleet report"),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}")
    run_module(module, run, "fleet report not written")


if __name__ == "__main__":
    main()
