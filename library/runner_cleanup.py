#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: runner_cleanup
short_description: Run a runnerkeep disk cleanup stage (pre, post or emergency) on a CI runner
description:
  - >-
    Runs one cleanup stage on the host, the same engine as C(runnerkeep cleanup --stage STAGE).
    The stage's cleaners run cheapest first and stop as soon as the free space targets (bytes
    and inodes, per filesystem) are met.
  - >-
    The post and emergency stages do not run while a CI job holds the runner lock unless
    O(force=true); with O(when_busy=skip) a busy runner is reported (RV(busy=true)) instead of
    failing.
  - >-
    Never follows symlinks out of a cleaner's roots, never removes the roots themselves,
    refuses C(/), home directories and unlisted mount points, never touches swap, the image
    cache store or the runner's own binaries.
version_added: "0.1.0"
author:
  - runnerkeep maintainers (@runnerkeep)
options:
  stage:
    description: The stage to run.
    type: str
    required: true
    choices: [pre, post, emergency]
  target_free:
    description:
      - >-
        Free bytes wanted on each filesystem concerned, a size (V(20G), V(512MiB)) or a
        percentage (V(15%)).
      - The default is C(cleanup.targets.<stage>.free) in the config file.
    type: str
  target_inodes:
    description:
      - Free inodes wanted on each filesystem concerned, a count or a percentage.
      - The default is C(cleanup.targets.<stage>.inodes) in the config file.
    type: str
  paths:
    description:
      - Limit the run to the filesystems holding these absolute paths.
    type: list
    elements: path
  cleaners:
    description:
      - Run only these cleaners (names as in C(runnerkeep cleanup list-cleaners)).
    type: list
    elements: str
  run_all:
    description: Run every cleaner of the stage fully, ignoring the targets.
    type: bool
    default: false
  force:
    description: Run the post or emergency stage even while a CI job holds the runner lock.
    type: bool
    default: false
  when_busy:
    description:
      - What to do when a CI job holds the runner lock and O(force) is false.
      - V(fail) fails the task.
      - V(skip) returns RV(busy=true), C(skipped=true) and C(changed=false).
    type: str
    default: fail
    choices: [fail, skip]
  config_file:
    description:
      - The runnerkeep config file (JSON); fragments in C(config.d/) beside it are merged.
      - The default is E(RUNNERKEEP_CONFIG), else C(/etc/runnerkeep/config.json).
    type: path
  diff_max_items:
    description:
      - At most this many removed paths in the diff and in RV(removed).
    type: int
    default: 200
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - >-
        A dry run of the same engine: it removes nothing, takes no lock, creates no lock file or
        directory, does not remove stale job locks and does not repair damaged state files.
        RV(removed) and RV(bytes_freed) are what the real run would remove and free.
      - >-
        A CI job holding the runner lock does not stop the prediction; C(report.notes) says that
        the real post or emergency stage would refuse to run.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: full
    details:
      - >-
        The diff lists the removed paths and objects (capped at O(diff_max_items), with a count
        of the rest), in check mode those that would be removed.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - >-
    O(target_free) and O(target_inodes) are checked like C(cleanup.targets.<stage>.free) and
    C(cleanup.targets.<stage>.inodes) in the config file; a bad value fails the task naming the
    option.
requirements:
  - python >= 3.9 on the managed host
  - the docker CLI for the Docker cleaners
"""

EXAMPLES = r"""
- name: Deep clean after hours, skipping runners that are running a job
  runnerkeep.runner.runner_cleanup:
    stage: post
    when_busy: skip
  register: cleanup

- name: What would an emergency clean to 30% free remove?
  runnerkeep.runner.runner_cleanup:
    stage: emergency
    target_free: 30%
  check_mode: true
  diff: true

- name: Only old temp files and stopped containers, whatever the targets
  runnerkeep.runner.runner_cleanup:
    stage: pre
    cleaners: [tmp, docker-containers]
    run_all: true
"""

RETURN = r"""
bytes_freed:
  description:
    - >-
      Bytes the filesystems gave back (statvfs after removal), summed over the filesystems the
      cleaners removed something from, never negative. In check mode, the prediction.
    - RV(cleaners[].bytes_freed) and RV(bytes_freed_claimed) are what the cleaners counted.
  returned: success
  type: int
  sample: 3221225472
inodes_freed:
  description: Inodes the filesystems gave back, measured like RV(bytes_freed).
  returned: success
  type: int
  sample: 5120
bytes_freed_claimed:
  description: Bytes the cleaners counted as freed (in check mode, would free).
  returned: success
  type: int
  sample: 3221225472
inodes_freed_claimed:
  description: Inodes the cleaners counted as freed (in check mode, would free).
  returned: success
  type: int
  sample: 5120
items_removed:
  description: Number of items (paths, containers, images) removed, in check mode that would be.
  returned: success
  type: int
  sample: 42
target_met:
  description: Whether every filesystem concerned now meets the free bytes and inode targets.
  returned: success
  type: bool
  sample: true
cleaners:
  description: Per cleaner figures, in the order the cleaners ran.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The cleaner's name.
      type: str
      returned: success
      sample: tmp
    status:
      description: How the cleaner ended.
      type: str
      returned: success
      sample: "stopped: target met"
    bytes_freed:
      description: Bytes the cleaner counted as freed.
      type: int
      returned: success
      sample: 1048576
    inodes_freed:
      description: Inodes the cleaner counted as freed.
      type: int
      returned: success
      sample: 12
    items_removed:
      description: Items the cleaner removed.
      type: int
      returned: success
      sample: 3
    duration:
      description: Seconds the cleaner ran.
      type: float
      returned: success
      sample: 0.02
    errors:
      description: How many errors the cleaner met (the messages are in RV(report)).
      type: int
      returned: success
      sample: 0
removed:
  description: Paths and objects removed (or that would be), at most O(diff_max_items).
  returned: success
  type: list
  elements: str
  sample: ["/tmp/build-1234", "container ci-job-7 (3f2a1b9c0d4e)"]
removed_total:
  description: How many items were removed in all (RV(removed) may be capped).
  returned: success
  type: int
  sample: 42
busy:
  description: True when a CI job holds the runner lock and the stage did not run.
  returned: always
  type: bool
  sample: false
exit_code:
  description: The exit code C(runnerkeep cleanup) gives for the same error (7 when a job holds the lock).
  returned: failed
  type: int
  sample: 7
report:
  description: The full report, as C(runnerkeep cleanup --json) prints it.
  returned: success
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.errors import LockHeldError
    from ansible.module_utils.runnerkeep.module_frame import (
        load_task_config,
        module_options,
        run_module,
    )
    from ansible.module_utils.runnerkeep.schema import check_option
    from ansible.module_utils.runnerkeep.wiring import run_cleanup

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by fail_json in main()
    IMPORT_ERROR = str(exc)

    def module_options(**own):
        """module_frame.module_options without the core: enough for main() to report it."""
        return dict(own, config_file=dict(type="path"))


def _target(value):
    if value is None or value == "":
        return None
    text = str(value).strip()
    return int(text) if text.isdigit() and len(text) <= 19 else text


def _checked_options(params):
    """The options that stand for config keys, checked against the config schema."""
    stage = params["stage"]
    free = _target(params["target_free"])
    inodes = _target(params["target_inodes"])
    if free is not None:
        check_option("cleanup", f"targets.{stage}.free", free, "option target_free")
    if inodes is not None:
        check_option("cleanup", f"targets.{stage}.inodes", inodes, "option target_inodes")
    for path in params["paths"] or []:
        if not os.path.isabs(path):
            raise ValueError(f"option paths: expected absolute paths, got {path!r}")
    return free, inodes


def run(task, diff):
    """The stage's return values; a busy runner is one too with O(when_busy=skip)."""
    params = task.params
    free, inodes = _checked_options(params)
    try:
        report = run_cleanup(
            params["stage"],
            load_task_config(params),
            target_free_bytes=free,
            target_free_inodes=inodes,
            paths=params["paths"] or None,
            dry_run=task.check_mode,
            force=params["force"],
            run_all=params["run_all"],
            cleaner_names=params["cleaners"] or None,
        )
    except LockHeldError as exc:
        if params["when_busy"] != "skip":
            raise
        return dict(changed=False, skipped=True, busy=True, msg=str(exc))
    return stage_result(report, params, diff)


def stage_result(report, params, diff):
    """What the module returns of a stage's report (RETURN)."""
    data = report.as_dict()
    cap = max(params["diff_max_items"], 0)
    removed_all = report.removed_paths()
    removed = removed_all[:cap]
    total = report.items_removed
    result = dict(
        changed=total > 0,
        busy=False,
        bytes_freed=report.bytes_freed,
        inodes_freed=report.inodes_freed,
        bytes_freed_claimed=report.bytes_freed_claimed,
        inodes_freed_claimed=report.inodes_freed_claimed,
        items_removed=total,
        target_met=report.target_met,
        cleaners=[
            {
                "name": c["name"],
                "status": c["status"],
                "bytes_freed": c["bytes_freed"],
                "inodes_freed": c["inodes_freed"],
                "items_removed": c["items_removed"],
                "duration": c["duration"],
                "errors": len(c["errors"]),
            }
            for c in data["cleaners"]
        ],
        removed=removed,
        removed_total=total,
        report=data,
    )
    if diff:
        lines = [f"removed: {p}" for p in removed]
        if total > len(removed):
            lines.append(f"... and {total - len(removed)} more")
        result["diff"] = {
            "before": "",
            "after": "\n".join(lines) + ("\n" if lines else ""),
            "before_header": f"{params['stage']} stage: present",
            "after_header": f"{params['stage']} stage: removed {total} items",
        }
    return result


def main():
    module = AnsibleModule(
        argument_spec=module_options(
            stage=dict(type="str", required=True, choices=["pre", "post", "emergency"]),
            target_free=dict(type="str"),
            target_inodes=dict(type="str"),
            paths=dict(type="list", elements="path"),
            cleaners=dict(type="list", elements="str"),
            run_all=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
            when_busy=dict(type="str", default="fail", choices=["fail", "skip"]),
            diff_max_items=dict(type="int", default=200),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}", busy=False)
    run_module(
        module, lambda task: run(task, module._diff), "cleanup failed", defaults={"busy": False}
    )


if __name__ == "__main__":
    main()
