#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: host_layout
short_description: A role's accounts, directories, files and systemd units on a host, in one call
description:
  - >-
    Puts one role's share of a runner host in place in a single module call, in this order:
    groups and system users, directories, the reclaiming of trees a job could write under an
    older layout, files (content rendered by the role, for example with the template lookup),
    secret files, removals, C(NAME=value) lines, then systemd units.
  - >-
    One call instead of one task per file: on a fleet's first run every task costs a round trip
    and some of the controller's CPU per host (docs/scale.md).
  - >-
    Nothing is followed: paths are opened without following links; a file is replaced by
    renaming a temp file written beside it (owner and mode set before its content), so a link in
    the way is replaced, never written through; a link or a file where a directory belongs fails
    the task with what to do.
  - >-
    Units are handled after the files: C(systemctl daemon-reload) when a file under
    C(/etc/systemd/system) changed, then enable or disable, start or stop, and a restart of a
    running unit when one of its O(units[].restart_on) files changed. Where systemd does not run,
    units and the files marked O(files[].systemd) are skipped (the result says C(systemd=false)).
version_added: "0.2.0"
author:
  - runnerkeep maintainers (@runnerkeep)
options:
  groups:
    description: Groups to create when missing.
    type: list
    elements: dict
    default: []
    suboptions:
      name: {description: Group name., type: str, required: true}
      system: {description: A system group., type: bool, default: false}
  users:
    description:
      - >-
        System users to create, or whose primary group, shell and home to correct. Supplementary
        groups are added, never removed. No home directory is created.
    type: list
    elements: dict
    default: []
    suboptions:
      name: {description: User name., type: str, required: true}
      group: {description: Primary group., type: str, required: true}
      groups: {description: Supplementary groups to be a member of., type: list, elements: str, default: []}
      system: {description: A system user., type: bool, default: false}
      shell: {description: Login shell., type: str, default: /usr/sbin/nologin}
      home: {description: Home directory (not created)., type: str, default: /nonexistent}
  directories:
    description: Directories, in order (parents are made C(0755) as needed).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      owner: {description: Owner., type: str, default: root}
      group: {description: Group., type: str, default: root}
      mode:
        description:
          - A quoted octal string such as C("0755") or C("01730"). A number is refused (YAML reads an unquoted 0755 as 493 and 755 as 755).
        type: raw
        required: true
  reclaim:
    description:
      - >-
        Trees a job could write under an older layout, taken back after the directories.
        C(root_state): directories and files a job owned or could write become root's without
        group/other write; links, FIFOs and job locks a job wrote are moved aside.
        C(service_store): links are moved aside, everything else goes to O(reclaim[].owner).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: The tree's root (left alone when it does not exist)., type: path, required: true}
      policy: {description: How to reclaim it., type: str, required: true, choices: [root_state, service_store]}
      aside_dir: {description: Where entries are moved aside (path with / written as %)., type: path, required: true}
      skip: {description: Subtrees of a C(root_state) tree left alone., type: list, elements: path, default: []}
      owner: {description: Owner of a C(service_store) tree's content., type: str, default: root}
      group: {description: Group of a C(service_store) tree's content., type: str, default: root}
  files:
    description:
      - >-
        Files with their content. Without O(files[].content), an existing file only gets its
        owner and mode (one another task creates); it must exist except in check mode.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      content: {description: The whole content (UTF-8)., type: str}
      random_bytes:
        description: Instead of O(files[].content), made once from this many random bytes; an existing file keeps its bytes.
        type: int
      owner: {description: Owner., type: str, default: root}
      group: {description: Group., type: str, default: root}
      mode: {description: 'Quoted octal string such as C("0644"); a number is refused.', type: raw, required: true}
      systemd: {description: Only where systemd runs (unit files)., type: bool, default: false}
  secret_files:
    description: Like O(files), but the content is never shown (no diff, not logged).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      content: {description: The whole content (UTF-8); never logged., type: str}
      random_bytes:
        description: Instead of O(secret_files[].content), made once from this many random bytes (a key); an existing file keeps its bytes.
        type: int
      owner: {description: Owner., type: str, default: root}
      group: {description: Group., type: str, default: root}
      mode: {description: 'Quoted octal string such as C("0644"); a number is refused.', type: raw, required: true}
      systemd: {description: Only where systemd runs., type: bool, default: false}
  absent:
    description: Files or links to remove (a directory there fails the task).
    type: list
    elements: path
    default: []
  lines:
    description:
      - >-
        C(NAME=value) lines in files such as a GitHub runner's C(.env): the last line starting
        with C(NAME=) is replaced, else the line is added. A new file is root's, C(0644); an
        existing one keeps its owner and mode.
    type: list
    elements: dict
    default: []
    suboptions:
      paths: {description: The files (each gets the same lines)., type: list, elements: path, required: true}
      lines: {description: NAME to value., type: dict, required: true}
  units:
    description: systemd units, handled after every file.
    type: list
    elements: dict
    default: []
    suboptions:
      name: {description: Unit name., type: str, required: true}
      enabled: {description: Enabled or disabled; unset leaves it., type: bool}
      state: {description: Running or not; unset leaves it., type: str, choices: [started, stopped]}
      restart_on:
        description: Files (of this call) whose change restarts the unit when it runs.
        type: list
        elements: path
        default: []
  daemon_reload:
    description: Run C(systemctl daemon-reload) even when no unit file changed.
    type: bool
    default: false
  look_for:
    description:
      - >-
        Paths whose existence the result reports in RV(present), read after everything else (so
        a later task can run only where it has something to do).
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - >-
        Reports every change a real run would make (files, owners, modes, accounts, units) and
        writes nothing, runs no command but C(systemctl show).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: full
    details:
      - Content diffs of O(files) and O(lines); O(secret_files) show no content.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - >-
    Set C(no_log) on a task whose O(secret_files) hold a secret. Their content is masked in what
    the task returns, but the invocation the module writes to the host's journal is masked only
    where the secret appears as written, and a secret ending in a newline appears there as
    C(\\n): the roles set C(no_log) when they write one.
requirements:
  - python >= 3.9 on the managed host
  - groupadd, useradd and usermod for O(groups) and O(users); systemctl for O(units)
"""

EXAMPLES = r"""
- name: Put the watch's directories, config fragment and units in place
  runnerkeep.runner.host_layout:
    directories:
      - {path: /var/lib/node_exporter/textfile_collector, mode: "0755"}
    files:
      - path: /etc/runnerkeep/config.d/50-disk.json
        content: "{{ {'disk': {}} | to_nice_json }}\n"
        mode: "0644"
      - path: /etc/systemd/system/runnerkeep-watch.timer
        content: "{{ lookup('ansible.builtin.template', 'runnerkeep-watch.timer.j2') }}"
        mode: "0644"
        systemd: true
    units:
      - name: runnerkeep-watch.timer
        enabled: true
        state: started
        restart_on: [/etc/systemd/system/runnerkeep-watch.timer]
"""

RETURN = r"""
changes:
  description: What changed (or would, in check mode), per path, account (C(user:NAME)) or unit (C(unit:NAME)).
  returned: success
  type: list
  elements: dict
  sample: [{"path": "/etc/runnerkeep/config.json", "changes": ["content"]}]
units:
  description: The actions taken on each unit (C(enable), C(start), C(restart), C(disable), C(stop)).
  returned: success
  type: list
  elements: dict
  sample: [{"name": "runnerkeep-watch.timer", "actions": ["enable", "start"]}]
systemd:
  description: Whether systemd runs on the host (units and O(files[].systemd) files were skipped when not).
  returned: success
  type: bool
present:
  description: For each O(look_for) path, whether it exists (a link counts).
  returned: success
  type: dict
  sample: {"/var/spool/cron/crontabs/root": false}
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.module_frame import run_module
    from ansible.module_utils.runnerkeep.provision.layout import apply_layout

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by fail_json in main()
    IMPORT_ERROR = str(exc)


def _file_options(secret):
    return dict(
        path=dict(type="path", required=True),
        content=dict(type="str", no_log=secret),
        random_bytes=dict(type="int"),
        owner=dict(type="str", default="root"),
        group=dict(type="str", default="root"),
        mode=dict(type="raw", required=True),
        systemd=dict(type="bool", default=False),
    )


def _list(**suboptions):
    return dict(type="list", elements="dict", default=[], options=suboptions)


ARGUMENT_SPEC = dict(
    groups=_list(
        name=dict(type="str", required=True),
        system=dict(type="bool", default=False),
    ),
    users=_list(
        name=dict(type="str", required=True),
        group=dict(type="str", required=True),
        groups=dict(type="list", elements="str", default=[]),
        system=dict(type="bool", default=False),
        shell=dict(type="str", default="/usr/sbin/nologin"),
        home=dict(type="str", default="/nonexistent"),
    ),
    directories=_list(
        path=dict(type="path", required=True),
        owner=dict(type="str", default="root"),
        group=dict(type="str", default="root"),
        mode=dict(type="raw", required=True),
    ),
    reclaim=_list(
        path=dict(type="path", required=True),
        policy=dict(type="str", required=True, choices=["root_state", "service_store"]),
        aside_dir=dict(type="path", required=True),
        skip=dict(type="list", elements="path", default=[]),
        owner=dict(type="str", default="root"),
        group=dict(type="str", default="root"),
    ),
    files=_list(**_file_options(secret=False)),
    # The list's content suboption is secret; the list itself (paths, modes) is not.
    secret_files=dict(_list(**_file_options(secret=True)), no_log=False),
    absent=dict(type="list", elements="path", default=[]),
    lines=_list(
        paths=dict(type="list", elements="path", required=True),
        lines=dict(type="dict", required=True),
    ),
    units=_list(
        name=dict(type="str", required=True),
        enabled=dict(type="bool"),
        state=dict(type="str", choices=["started", "stopped"]),
        restart_on=dict(type="list", elements="path", default=[]),
    ),
    daemon_reload=dict(type="bool", default=False),
    look_for=dict(type="list", elements="path", default=[]),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}")

    def run(argv):
        return module.run_command(argv)

    def work(task):
        return apply_layout(task.params, task.check_mode, module._diff, run)

    run_module(module, work, "host layout failed")


if __name__ == "__main__":
    main()
