#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: disk_facts
short_description: Disk report of a CI runner host as facts
description:
  - >-
    Measures the filesystems holding the Docker root, the image cache, the runner work
    directories and C(/tmp) (size, free bytes, free inodes), Docker usage by kind like
    C(docker system df) with reclaimable bytes, the image cache size (logical and on disk) and
    the largest directories under the configured roots.
  - >-
    Returns everything as the fact C(runnerkeep_disk). Read-only; a missing Docker engine or an
    unreadable path is reported in the facts, not a failure.
  - The same report as C(runnerkeep disk report --json) on the host.
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
        Settings merged over the C(disk) section of the config file for this call only
        (for example C(work_dirs), C(report_roots), C(largest_dirs)).
    type: dict
    default: {}
  include_docker:
    description:
      - Ask the Docker engine for its usage by kind (C(docker system df)).
    type: bool
    default: true
  docker_details:
    description:
      - Also list the largest images, containers and volumes (C(docker system df -v)).
    type: bool
    default: false
  include_largest:
    description:
      - Walk the report roots for the largest directories.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - >-
        The module only reads (statvfs, directory sizes, C(docker system df)), in check mode as
        in a real run, and always returns C(changed=false).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: N/A
    details:
      - The module changes nothing, so there is nothing to diff.
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
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
  - the docker CLI for the Docker part (optional)
"""

EXAMPLES = r"""
- name: Gather the disk report
  runnerkeep.runner.disk_facts:

- name: Disk report with work dirs, without the Docker part
  runnerkeep.runner.disk_facts:
    include_docker: false
    disk:
      work_dirs:
        - /opt/actions-runner/_work

- name: Show free space per filesystem
  ansible.builtin.debug:
    msg: "{{ item.mount_point }}: {{ item.free_bytes | human_readable }} free"
  loop: "{{ ansible_facts.runnerkeep_disk.filesystems }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: success
  type: dict
  contains:
    runnerkeep_disk:
      description: The disk report.
      returned: success
      type: dict
      contains:
        docker_root:
          description: Docker's data root (C(/var/lib/docker) when the engine does not answer).
          type: str
          returned: success
          sample: /var/lib/docker
        filesystems:
          description:
            - >-
              One entry per filesystem (C(mount_point), C(size_bytes), C(free_bytes),
              C(used_bytes), C(size_inodes), C(free_inodes), C(roles), C(paths)).
          type: list
          elements: dict
          returned: success
        filesystem_errors:
          description: Paths whose filesystem could not be measured (C(path), C(error)).
          type: list
          elements: dict
          returned: success
        docker:
          description:
            - >-
              C(available), and C(kinds) (images, containers, volumes, build_cache with
              total_count, active, size_bytes, reclaimable_bytes) or C(error); with
              O(docker_details=true) also C(details) (largest images, containers and volumes)
              or C(details_error).
          type: dict
          returned: when O(include_docker=true)
        cache:
          description:
            - >-
              The image cache: C(path), C(exists), C(logical_bytes), C(disk_bytes), C(files),
              C(errors).
          type: dict
          returned: success
        largest_dirs:
          description:
            - >-
              Per report root: C(root), C(exists), and when it exists C(disk_bytes), C(dirs)
              (the largest directories) and C(error_count).
          type: list
          elements: dict
          returned: when O(include_largest=true)
        errors:
          description: Problems met (the rest of the report is still valid).
          type: list
          elements: str
          returned: success
        duration_seconds:
          description: Seconds the report took.
          type: float
          returned: success
          sample: 0.412
exit_code:
  description: The exit code C(runnerkeep disk report) gives for the same error.
  returned: failed, when the core refused
  type: int
  sample: 2
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.disk.usage_report import disk_report
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
    """The report as the runnerkeep_disk fact; read only, so check mode is the same run."""
    params = task.params
    report = disk_report(
        load_task_config(params, overlay="disk"),
        include_docker=params["include_docker"],
        include_largest=params["include_largest"],
        docker_verbose=params["docker_details"],
    )
    return dict(changed=False, ansible_facts={"runnerkeep_disk": report})


def main():
    module = AnsibleModule(
        argument_spec=module_options(
            disk=dict(type="dict", default={}),
            include_docker=dict(type="bool", default=True),
            include_largest=dict(type="bool", default=True),
            docker_details=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}")
    run_module(module, run, "disk report failed")


if __name__ == "__main__":
    main()
