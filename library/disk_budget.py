#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: disk_budget
short_description: Disk budget of a CI runner host (cache quota, cleanup targets, watermarks)
description:
  - >-
    Computes the disk budget of the host from the capacity of the budget filesystem, the
    recorded job peaks (a high percentile, with a floor while the history is short), the image
    cache size and a reserve. Returns the image cache quota, the free space targets of the
    pre and post cleanup stages, and the warning, critical and emergency watermarks in bytes
    and inodes, with the arithmetic in words.
  - Roles set cache quotas and cleanup thresholds from the result instead of hard-coded numbers.
  - The same computation as C(runnerkeep disk budget --json) on the host; read-only.
  - Fails with a clear message when the disk is too small for the budget (never a negative quota).
version_added: "0.1.0"
author:
  - runnerkeep maintainers (@runnerkeep)
options:
  config_file:
    description:
      - The runnerkeep config file (JSON); fragments in C(config.d/) beside it are merged.
      - The default is E(RUNNERKEEP_CONFIG), else C(/etc/runnerkeep/config.json).
    type: path
  disk:
    description:
      - >-
        Settings merged over the C(disk) section of the config file for this call only, for
        example inventory overrides such as C(reserve), C(job_peak_floor), C(cache_quota),
        C(warning_free) or C(path).
    type: dict
    default: {}
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - >-
        The module only reads, in check mode as in a real run: it never writes a setting, a lock
        or a report, and reading the job peak history changes nothing (a damaged history is
        repaired by the next job end, which writes it). It always returns C(changed=false).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: N/A
    details:
      - The module changes nothing, so there is nothing to diff.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - >-
    The O(disk) settings are checked against the config schema (types, ranges, sizes,
    durations, URLs); a bad value fails the task naming the key.
requirements:
  - python >= 3.9 on the managed host
"""

EXAMPLES = r"""
- name: Compute the disk budget
  runnerkeep.runner.disk_budget:
  register: budget

- name: Print the arithmetic
  ansible.builtin.debug:
    msg: "{{ budget.explanation }}"

- name: Budget with an inventory override of the reserve
  runnerkeep.runner.disk_budget:
    disk:
      reserve: 8%
      job_peak_floor: 20GiB
  register: budget
"""

RETURN = r"""
budget:
  description:
    - >-
      The whole budget: every figure below and the inputs (C(path), C(capacity_bytes),
      C(reserve_bytes), C(job_peak_bytes), C(job_peak_source), C(history_jobs), C(cache_bytes),
      C(overrides), C(warnings), ...).
  returned: success
  type: dict
cache_quota_bytes:
  description: Image cache quota.
  returned: success
  type: int
  sample: 116422573548
pre_target_free_bytes:
  description: Free bytes the pre-build cleanup stage stops at.
  returned: success
  type: int
  sample: 53687091200
post_target_free_bytes:
  description: Free bytes the post-build (and emergency) cleanup stage stops at.
  returned: success
  type: int
  sample: 64424509440
pre_target_free_inodes:
  description: Free inodes the pre-build stage stops at (0 when the filesystem has no limit).
  returned: success
  type: int
  sample: 1000000
post_target_free_inodes:
  description: Free inodes the post-build (and emergency) stage stops at.
  returned: success
  type: int
  sample: 1200000
watermarks:
  description:
    - >-
      Per level (C(warning), C(critical), C(emergency)), the free C(bytes) and C(inodes) below
      which the watch enters it.
  returned: success
  type: dict
  sample: {"warning": {"bytes": 35002495180, "inodes": 1038860}}
explanation:
  description: The arithmetic in words, one line per step.
  returned: success
  type: list
  elements: str
exit_code:
  description: The exit code C(runnerkeep disk budget) gives for the same error.
  returned: failed, when the core refused
  type: int
  sample: 2
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.disk.budget import current_budget
    from ansible.module_utils.runnerkeep.module_frame import (
        load_task_config,
        module_options,
        run_module,
    )

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by fail_json in main()
    IMPORT_ERROR = str(exc)

    def module_options(**own):
        """module_frame.module_options without the core: enough for main() to report it."""
        return dict(own, config_file=dict(type="path"))


def run(task):
    """The budget's return values (RETURN); read only, so check mode is the same run."""
    budget = current_budget(load_task_config(task.params, overlay="disk"))
    return dict(
        changed=False,
        budget=budget.as_dict(),
        cache_quota_bytes=budget.cache_quota_bytes,
        pre_target_free_bytes=budget.pre_target_free_bytes,
        post_target_free_bytes=budget.post_target_free_bytes,
        pre_target_free_inodes=budget.pre_target_free_inodes,
        post_target_free_inodes=budget.post_target_free_inodes,
        watermarks=budget.watermarks(),
        explanation=budget.explanation,
    )


def main():
    module = AnsibleModule(
        argument_spec=module_options(
            disk=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}")
    run_module(module, run, "disk budget failed")


if __name__ == "__main__":
    main()
