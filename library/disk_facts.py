#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: disk_facts
short_description: Disk report of a CI runner host as facts
description:
  - Measures the filesystems holding the Docker root, the image cache, the runner work
    directories and C(/tmp) (size, free bytes, free inodes), Docker usage by kind like
    C(docker system df) with reclaimable bytes, the image cache size (logical and on disk) and
    the largest directories under the configured roots.
  - Returns everything as the fact C(runnerkeep_disk). Read-only; a missing Docker engine or an
    unreadable path is reported in the facts, not a failure.
  - The same report as C(runnerkeep disk report --json) on the host.
version_added: "0.1.0"
author:
  - runnerkeep contributors
options:
  config_file:
    description:
      - The runnerkeep config file (JSON); fragments in C(config.d/) beside it are merged.
      - Defaults to C($RUNNERKEEP_CONFIG) or C(/etc/runnerkeep/config.json).
    type: path
  disk:
    description:
      - Settings merged over the C(disk) section of the config file for this call only
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
    support: full
    description: The module only reads (statvfs, directory sizes, C(docker system df)).
  diff_mode:
    support: none
notes:
  - The I(disk) settings are checked against the config schema (types, ranges, sizes,
    durations, URLs); a bad value fails the task naming the key.
requirements:
  - python >= 3.9 on the managed host
  - the docker CLI for the Docker part (optional)
"""

EXAMPLES = r"""
- name: Gather the disk report
  disk_facts:

- name: Disk report with work dirs, without the Docker part
  disk_facts:
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
  returned: always
  type: complex
  contains:
    runnerkeep_disk:
      description: The disk report.
      returned: always
      type: complex
      contains:
        docker_root:
          description: Docker's data root.
          type: str
          returned: always
          sample: /var/lib/docker
        filesystems:
          description: One entry per filesystem (mount_point, size_bytes, free_bytes, used_bytes,
            size_inodes, free_inodes, roles, paths).
          type: list
          elements: dict
          returned: always
        filesystem_errors:
          description: Paths whose filesystem could not be measured, with the error.
          type: list
          elements: dict
          returned: always
        docker:
          description: C(available), and C(kinds) (images, containers, volumes, build_cache with
            total_count, active, size_bytes, reclaimable_bytes) or C(error); with docker_details
            also C(details) (largest_images, largest_containers, largest_volumes).
          type: dict
          returned: when include_docker
        cache:
          description: Image cache path, exists, logical_bytes, disk_bytes, files.
          type: dict
          returned: always
        largest_dirs:
          description: Per report root, the largest directories (path, disk_bytes).
          type: list
          elements: dict
          returned: when include_largest
        errors:
          description: Problems met (the rest of the report is still valid).
          type: list
          elements: str
          returned: always
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.config import load_config
    from ansible.module_utils.runnerkeep.disk.report import disk_report
    from ansible.module_utils.runnerkeep.errors import RunnerkeepError
    from ansible.module_utils.runnerkeep.schema import validate_config

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by fail_json below
    IMPORT_ERROR = str(exc)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            config_file=dict(type="path"),
            disk=dict(type="dict", default={}),
            include_docker=dict(type="bool", default=True),
            include_largest=dict(type="bool", default=True),
            docker_details=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}")
    try:
        if module.params["disk"]:
            validate_config({"disk": module.params["disk"]}, "option disk")
        config = load_config(module.params["config_file"])
        if module.params["disk"]:
            config["disk"] = dict(config.get("disk") or {}, **module.params["disk"])
        report = disk_report(
            config,
            include_docker=module.params["include_docker"],
            include_largest=module.params["include_largest"],
            docker_verbose=module.params["docker_details"],
        )
    except RunnerkeepError as exc:
        module.fail_json(msg=str(exc), exit_code=exc.exit_code)
    except OSError as exc:
        module.fail_json(msg=f"disk report failed: {exc.strerror or exc} ({exc.filename})")
    except ValueError as exc:
        module.fail_json(msg=f"disk report failed: {exc}")
    except Exception as exc:  # the guard: a bug is one line; -vvv shows the traceback
        module.fail_json(
            msg=f"internal error: {type(exc).__name__}: {exc}", exception=traceback.format_exc()
        )
    module.exit_json(changed=False, ansible_facts={"runnerkeep_disk": report})


if __name__ == "__main__":
    main()
