"""host_layout (library/host_layout.py, module_utils/runnerkeep/provision/) under attack on a
real runner container: a hostile CI job (user ``rkjob`` in the job group ``runner``) and a
hostile or sloppy host.

One provisioned host serves the whole file. Attacks that need runner_base's own state dir run
the role; the others call the module directly on scratch trees under /srv laid out like
runner_base's call (the tree's root and its aside dir as ``directories``, then ``reclaim``).

Each test asserts the safe outcome. The 21 breaks this file found when it was written (a job's
setuid file made root's, hard links chowned outside the tree, runs stuck for good on long,
taken or deep names, links followed in a runner dir, modes read wrong, ...) are fixed; the
tests stay as their regression tests.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.fleet import Fleet, RunnerHost
from harness.provision import FLEET_VARS, provision

pytestmark = pytest.mark.integration

JOB = "rkjob"  # the hostile CI job's user, in the job group
STATE = "/var/lib/runnerkeep"
ASIDE = f"{STATE}/migrated-aside"
RESULT = "/root/rk-host-layout-result.json"
# find(1) options that leave out what reclaim leaves alone in the state dir.
PRUNE = (
    f"-path {ASIDE} -prune -o -path {STATE}/spool -prune -o -path {STATE}/cache-service -prune -o"
)
TINY = "/srv/tiny"  # a 1 MiB tmpfs: the full-disk case
# What the check below walks: runner_base's state dir, config and install dir.
WATCHED = f"{STATE} /etc/runnerkeep /etc/tmpfiles.d /usr/local/lib/runnerkeep /usr/local/bin"
# The units that write into the state dir on their own (a tree compared before and after must
# not change under the test's feet).
TIMERS = "runnerkeep-watch.timer runnerkeep-cleanup.timer runnerkeep-cache-maintenance.timer"

LAYOUT_PLAY = """\
- name: host_layout under attack
  hosts: runners
  gather_facts: false
  tasks:
    - name: Call host_layout
      runnerkeep.runner.host_layout:
{args}
      register: rk_layout
      ignore_errors: true
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{{{ rk_layout | to_json }}}}"
        dest: {result}
        mode: "0600"
      check_mode: false
"""

ROLE_PLAY = """\
- name: Roles under attack
  hosts: runners
  gather_facts: true
  roles:
{roles}
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def layout_fleet(runner_image: str, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """One provisioned runner with a job user; the timers that write state are stopped."""
    keep = bool(request.config.getoption("--keep-fleet", default=False))
    fleet = Fleet.start(1, name="rkhl", image=runner_image, keep=keep, extra_tmpfs={TINY: "1m"})
    try:
        result = provision(fleet, quiet=True)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        host = fleet.hosts[0]
        host.exec(f"useradd -m -g runner -s /bin/sh {JOB}")
        host.exec(f"systemctl stop {TIMERS} runnerkeep-watch.service", check=False)
        yield fleet
    finally:
        if keep:
            print(f"\n--keep-fleet: fleet {fleet.fleet_id} left running ({fleet.inventory})")
        else:
            fleet.stop()


@pytest.fixture
def host(layout_fleet: Fleet) -> RunnerHost:
    return layout_fleet.hosts[0]


# --------------------------------------------------------------------------- helpers


def sh(host: RunnerHost, cmd: str, **kwargs: Any) -> str:
    return host.exec(cmd, **kwargs).stdout


def as_job(host: RunnerHost, cmd: str, check: bool = True) -> str:
    return host.exec(cmd, user=JOB, check=check).stdout


def layout(
    fleet: Fleet, tmp_path: Path, args: dict[str, Any] | str, check: bool = False
) -> dict[str, Any]:
    """The module's result for ``args`` (a dict, or raw YAML as an operator would write it)."""
    text = json.dumps(args) if isinstance(args, dict) else textwrap.dedent(args)
    play = tmp_path / f"layout-{len(list(tmp_path.glob('layout-*')))}.yml"
    play.write_text(LAYOUT_PLAY.format(args=textwrap.indent(text, " " * 8), result=RESULT))
    run = fleet.run_playbook(str(play), check=check, quiet=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    result = json.loads(sh(fleet.hosts[0], f"cat {RESULT}"))
    result["output"] = output
    return result


def one_line_failure(result: dict[str, Any], *words: str) -> str:
    assert result.get("failed"), result
    msg = str(result.get("msg", ""))
    assert msg and "\n" not in msg.strip(), msg
    assert "Traceback" not in msg and "internal error" not in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def run_roles(fleet: Fleet, tmp_path: Path, *roles: str, check: bool = False, **vars: Any) -> int:
    """Run the roles (with FLEET_VARS and ``vars``); the host's count of changed tasks."""
    listed = "\n".join(
        f"    - role: runnerkeep.runner.{name}\n      vars: {json.dumps({**FLEET_VARS, **vars})}"
        for name in roles
    )
    play = tmp_path / f"roles-{len(list(tmp_path.glob('roles-*')))}.yml"
    play.write_text(ROLE_PLAY.format(roles=listed))
    run = fleet.run_playbook(str(play), check=check, quiet=True)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "Traceback" not in output, output[-4000:]
    found = re.search(r"^\S+\s+: ok=\d+\s+changed=(\d+)", run.stdout, re.M)
    assert found, run.stdout[-2000:]
    return int(found.group(1))


def tree(host: RunnerHost, paths: str) -> str:
    """Type, inode, mode, owner, links, size, mtime and link target of every path below."""
    return sh(host, f"find {paths} -printf '%p %y %i %m %u:%g %n %s %T@ %l\\n' | sort")


def fingerprint(host: RunnerHost, path: str) -> str:
    """A file's owner, mode, inode and bytes (or a directory tree's): what must not change."""
    return sh(
        host,
        f"find {path} -printf '%p %y %i %m %u:%g %s %l\\n' | sort; "
        f"find {path} -type f -exec sha256sum {{}} + | sort",
    )


def old_layout_tree(host: RunnerHost, root: str) -> None:
    """``root`` as an older layout left it: root's, group ``runner``, 2775 (jobs write it)."""
    sh(host, f"rm -rf {root} && mkdir -p {root} && chgrp runner {root} && chmod 2775 {root}")


def scratch_reclaim(root: str) -> dict[str, Any]:
    """runner_base's call for its state dir, on a scratch tree."""
    return {
        "directories": [{"path": root, "mode": "0755"}, {"path": f"{root}/aside", "mode": "0700"}],
        "reclaim": [{"path": root, "policy": "root_state", "aside_dir": f"{root}/aside"}],
    }


def assert_converges(fleet: Fleet, tmp_path: Path, args: dict[str, Any]) -> None:
    """A run succeeds and the next one finds nothing to do."""
    first = layout(fleet, tmp_path, args)
    assert not first.get("failed"), first.get("msg")
    second = layout(fleet, tmp_path, args)
    assert not second.get("failed"), second.get("msg")
    assert second["changed"] is False, second["changes"]


# --------------------------------------------------------------------------- files and links


def test_links_and_fifos_in_the_way_of_files_are_replaced_never_written_through(
    layout_fleet, host, tmp_path
):
    """Links (to a sentinel, to /etc/shadow) and a FIFO where the module writes a config
    fragment, a unit file, a key and a runner's .env: each is replaced by the file, the targets
    stay byte-identical, and a second run changes nothing."""
    sh(host, "rm -rf /srv/hl /srv/hl-sentinel && mkdir -p /srv/hl/conf.d /srv/hl/keys")
    sh(host, "printf 'sentinel\\n' > /srv/hl-sentinel && chmod 0640 /srv/hl-sentinel")
    sh(host, "ln -s /srv/hl-sentinel /srv/hl/conf.d/50-x.json && mkfifo /srv/hl/conf.d/60-y.json")
    sh(host, "ln -s /etc/shadow /srv/hl/keys/cache.key")
    sh(host, "ln -sf /srv/hl-sentinel /etc/systemd/system/rk-hl-attack.service")
    as_job(host, "mkdir -p ~/runner1 && ln -s /srv/hl-sentinel ~/runner1/.env")
    before = fingerprint(host, "/srv/hl-sentinel") + fingerprint(host, "/etc/shadow")
    unit = "[Unit]\nDescription=rk attack\n[Service]\nExecStart=/bin/true\n"
    args = {
        "files": [
            {"path": "/srv/hl/conf.d/50-x.json", "content": "{}\n", "mode": "0644"},
            {"path": "/srv/hl/conf.d/60-y.json", "content": "{}\n", "mode": "0644"},
            {
                "path": "/etc/systemd/system/rk-hl-attack.service",
                "content": unit,
                "mode": "0644",
                "systemd": True,
            },
        ],
        "secret_files": [{"path": "/srv/hl/keys/cache.key", "random_bytes": 32, "mode": "0400"}],
        "lines": [{"paths": [f"/home/{JOB}/runner1/.env"], "lines": {"HOOK": "/x.sh"}}],
    }
    try:
        first = layout(layout_fleet, tmp_path, args)
        assert not first.get("failed"), first.get("msg")
        assert fingerprint(host, "/srv/hl-sentinel") + fingerprint(host, "/etc/shadow") == before
        kinds = sh(
            host,
            "stat -c '%n %F %U %a %s' /srv/hl/conf.d/50-x.json /srv/hl/conf.d/60-y.json "
            f"/srv/hl/keys/cache.key /etc/systemd/system/rk-hl-attack.service "
            f"/home/{JOB}/runner1/.env",
        ).splitlines()
        assert [line.split()[1:] for line in kinds] == [
            ["regular", "file", "root", "644", "3"],
            ["regular", "file", "root", "644", "3"],
            ["regular", "file", "root", "400", "32"],
            ["regular", "file", "root", "644", str(len(unit))],
            ["regular", "file", "root", "644", str(len("HOOK=/x.sh\n"))],
        ], kinds
        second = layout(layout_fleet, tmp_path, args)
        assert second["changed"] is False, second["changes"]
    finally:
        sh(host, "rm -f /etc/systemd/system/rk-hl-attack.service && systemctl daemon-reload")


def test_a_link_or_file_where_a_directory_belongs_is_refused_in_one_line(
    layout_fleet, host, tmp_path
):
    """A secrets dir swapped for a link to a sentinel dir: refused, the sentinel untouched."""
    sh(host, "rm -rf /srv/hl-dir /srv/hl-dir-sentinel && mkdir -p /srv/hl-dir /srv/hl-dir-sentinel")
    sh(host, "chown 1000:1000 /srv/hl-dir-sentinel && chmod 0777 /srv/hl-dir-sentinel")
    sh(host, "ln -s /srv/hl-dir-sentinel /srv/hl-dir/secrets.d && touch /srv/hl-dir/plain")
    before = fingerprint(host, "/srv/hl-dir-sentinel")
    for path, words in (
        ("/srv/hl-dir/secrets.d", ("symlink where a directory belongs", "/srv/hl-dir/secrets.d")),
        ("/srv/hl-dir/plain", ("not a directory", "/srv/hl-dir/plain")),
    ):
        result = layout(layout_fleet, tmp_path, {"directories": [{"path": path, "mode": "0700"}]})
        one_line_failure(result, *words)
    assert fingerprint(host, "/srv/hl-dir-sentinel") == before


def test_env_lines_do_not_follow_a_runner_dir_the_job_swapped_for_a_link(
    layout_fleet, host, tmp_path
):
    """The job owns its home: it moves its runner dir away and links the name to a root-only
    dir holding another program's .env. That file must not change."""
    sh(
        host,
        "rm -rf /opt/rk-app && mkdir -p /opt/rk-app "
        "&& printf 'DB_PASSWORD=s3cret\\n' > /opt/rk-app/.env",
    )
    sh(host, "chmod 0600 /opt/rk-app/.env")
    as_job(
        host,
        "rm -rf ~/runner2 ~/runner2.real && mkdir ~/runner2.real && ln -s /opt/rk-app ~/runner2",
    )
    before = fingerprint(host, "/opt/rk-app")
    result = layout(
        layout_fleet,
        tmp_path,
        {"lines": [{"paths": [f"/home/{JOB}/runner2/.env"], "lines": {"HOOK": "/x.sh"}}]},
    )
    assert fingerprint(host, "/opt/rk-app") == before, result.get("changes") or result.get("msg")


# --------------------------------------------------------------------------- bad parameters


BAD_PARAMETERS = [
    pytest.param(
        {"files": [{"path": "/srv/bad/a.json", "content": "{}\n", "mode": "999"}]},
        ("mode", "999"),
        id="mode-999",
    ),
    pytest.param(
        {"files": [{"path": "/srv/bad/a.json", "content": "{}\n", "mode": "u+rwx"}]},
        ("mode", "u+rwx"),
        id="mode-symbolic",
    ),
    pytest.param(
        {"files": [{"content": "{}\n", "mode": "0644"}]},
        ("path",),
        id="missing-path",
    ),
    pytest.param(
        {
            "files": [
                {"path": "/srv/bad/a.json", "content": "{}\n", "mode": "0644", "owner": "nobody-rk"}
            ]
        },
        ("nobody-rk",),
        id="unknown-owner",
    ),
    pytest.param(
        {"units": [{"name": "rk-no-such.service", "enabled": True, "state": "started"}]},
        ("rk-no-such.service",),
        id="unknown-unit",
    ),
    pytest.param(
        {"reclaim": [{"path": "/srv/bad", "policy": "everything", "aside_dir": "/srv/x"}]},
        ("policy",),
        id="unknown-policy",
    ),
    pytest.param(
        {"secret_files": [{"path": "/srv/bad/k", "random_bytes": -1, "mode": "0400"}]},
        ("random_bytes",),
        id="negative-random-bytes",
    ),
    pytest.param(
        {"files": [{"path": "relative.conf", "content": "x\n", "mode": "0644"}]},
        ("relative.conf", "absolute"),
        id="relative-path",
    ),
    pytest.param(
        {"lines": [{"paths": ["/srv/bad/env"], "lines": {"A": "x\nLD_PRELOAD=/tmp/e.so"}}]},
        ("A",),
        id="line-value-with-newline",
    ),
]


@pytest.mark.parametrize("args, words", BAD_PARAMETERS)
def test_bad_parameters_fail_in_one_clear_line(layout_fleet, host, tmp_path, args, words):
    sh(host, "rm -rf /srv/bad /root/relative.conf && mkdir -p /srv/bad")
    result = layout(layout_fleet, tmp_path, args)
    one_line_failure(result, *words)
    assert (
        sh(host, "find /srv/bad -mindepth 1; ls /root/relative.conf 2>/dev/null", check=False) == ""
    )


def test_a_mode_given_as_an_unquoted_yaml_int_never_gives_others_write(
    layout_fleet, host, tmp_path
):
    """``mode: 755`` unquoted (an int) is 0755 or refused in one line; never a file others
    may write."""
    sh(host, "rm -rf /srv/modeint && mkdir -p /srv/modeint")
    result = layout(
        layout_fleet,
        tmp_path,
        """\
        files:
          - path: /srv/modeint/a.sh
            content: "#!/bin/sh\\n"
            mode: 755
        """,
    )
    if result.get("failed"):
        one_line_failure(result, "mode")
        return
    assert sh(host, "stat -c %a /srv/modeint/a.sh").strip() == "755"


def test_a_role_mode_written_as_unquoted_yaml_octal_never_opens_the_file(
    layout_fleet, host, tmp_path
):
    """An operator writes ``disk_monitor_config_mode: 0640`` in group_vars (YAML: an int).
    Safe: the fragment is 0640 as ansible.builtin.file reads an int, or the role refuses the
    mode; never writable by group or others."""
    fragment = "/etc/runnerkeep/config.d/40-disk.json"
    play = tmp_path / "dm-int.yml"
    play.write_text(
        ROLE_PLAY.format(
            roles="    - role: runnerkeep.runner.disk_monitor\n"
            f"      vars:\n        disk_monitor_config_mode: 0640\n"
            f"        disk_monitor_settings: {json.dumps(FLEET_VARS['disk_monitor_settings'])}\n"
        )
    )
    try:
        run = layout_fleet.run_playbook(str(play), quiet=True)
        mode = sh(host, f"stat -c %a {fragment}").strip()
        if run.returncode != 0:
            assert "mode" in run.stdout and "Traceback" not in run.stdout, run.stdout[-3000:]
        assert int(mode, 8) & 0o022 == 0, f"{fragment} is {mode}"
        assert mode in ("640", "644"), mode
    finally:
        run_roles(layout_fleet, tmp_path, "disk_monitor")
        host.exec(f"systemctl stop {TIMERS} runnerkeep-watch.service", check=False)


# --------------------------------------------------------------------------- full disk


def fill_tiny(host: RunnerHost) -> None:
    """The 1 MiB tmpfs with one file, ``old``, and the rest filled."""
    sh(host, f"rm -rf {TINY}/* && printf 'old\\n' > {TINY}/conf.json")
    sh(host, f"dd if=/dev/zero of={TINY}/fill bs=4k 2>/dev/null", check=False)
    assert sh(host, f"df --output=avail {TINY} | tail -1").strip() == "0"


FULL_DISK_WRITE = {
    "files": [{"path": f"{TINY}/conf.json", "content": "x" * 200_000, "mode": "0644"}]
}


def test_a_full_disk_fails_the_write_and_leaves_the_old_file_whole(layout_fleet, host, tmp_path):
    fill_tiny(host)
    result = layout(layout_fleet, tmp_path, FULL_DISK_WRITE)
    one_line_failure(result, "No space left")
    assert sh(host, f"cat {TINY}/conf.json") == "old\n"
    assert sh(host, f"ls -A {TINY}").split() == ["conf.json", "fill"]
    sh(host, f"rm -f {TINY}/fill")
    assert_converges(layout_fleet, tmp_path, FULL_DISK_WRITE)
    assert sh(host, f"stat -c %s {TINY}/conf.json").strip() == "200000"


def test_a_full_disk_failure_names_the_file_it_was_writing(layout_fleet, host, tmp_path):
    fill_tiny(host)
    try:
        one_line_failure(layout(layout_fleet, tmp_path, FULL_DISK_WRITE), f"{TINY}/conf.json")
    finally:
        sh(host, f"rm -f {TINY}/fill")


# --------------------------------------------------------------------------- old layouts


def test_check_mode_on_a_drifted_old_layout_host_changes_nothing_then_the_role_converges(
    layout_fleet, host, tmp_path
):
    """The state dir as an older layout left it (2775, group runner) with a job's plants:
    links to /etc/shadow and to a sentinel dir, a FIFO, a far-future job lock, a job-owned
    nested dir and a world-writable file; the config drifted. --check reports changes and
    changes nothing; the real run moves the plants aside and takes the rest back without
    touching the targets; the next run changes nothing."""
    sh(host, f"chgrp runner {STATE} && chmod 2775 {STATE}")
    sh(
        host,
        "rm -rf /srv/state-sentinel && mkdir /srv/state-sentinel && touch /srv/state-sentinel/f",
    )
    sh(host, f"chown -R {JOB}:runner /srv/state-sentinel && chmod 0775 /srv/state-sentinel")
    as_job(
        host,
        f"cd {STATE} && ln -s /etc/shadow history.jsonl && mkfifo events.jsonl "
        "&& mkdir -p job-locks jobdir/deeper && ln -s /srv/state-sentinel jobdir/deeper/sub "
        '&& printf \'{"job": "forged", "started": 4102444800}\' > job-locks/forged.json '
        "&& printf x > jobdir/open && chmod 0666 jobdir/open && chmod 0777 jobdir",
    )
    sh(
        host,
        "chmod 0666 /etc/runnerkeep/config.json "
        "&& echo '#drift' >> /etc/tmpfiles.d/runnerkeep.conf",
    )
    outside = fingerprint(host, "/srv/state-sentinel") + fingerprint(host, "/etc/shadow")
    before = tree(host, WATCHED)

    assert run_roles(layout_fleet, tmp_path, "runner_base", check=True) > 0
    assert tree(host, WATCHED) == before

    assert run_roles(layout_fleet, tmp_path, "runner_base") > 0
    assert fingerprint(host, "/srv/state-sentinel") + fingerprint(host, "/etc/shadow") == outside
    assert sh(host, f"find {STATE} {PRUNE} ! -type f ! -type d -print") == ""
    assert (
        sh(host, f"find {STATE} {PRUNE} \\( ! -user root -o ! -group root -o -perm /022 \\) -print")
        == ""
    )
    assert not sh(host, f"ls {STATE}/job-locks")
    aside = sh(host, f"ls {ASIDE}").split()
    for name in ("history.jsonl", "events.jsonl", "job-locks%forged.json", "jobdir%deeper%sub"):
        assert f"var%lib%runnerkeep%{name}" in aside, aside
    assert sh(host, "stat -c %a /etc/runnerkeep/config.json").strip() == "644"

    assert run_roles(layout_fleet, tmp_path, "runner_base") == 0


def test_a_job_swapping_dirs_for_links_during_the_reclaim_changes_nothing_outside(
    layout_fleet, host, tmp_path
):
    """While runner_base reclaims the old-layout state dir, the job swaps each of 200 dirs it
    owns for a link to a dir it owns outside and back, in a loop (bounded: 40 s, or 300 refusals
    in a row once the dir is root's). Nothing outside may change owner or mode."""
    sh(host, f"chgrp runner {STATE} && chmod 2775 {STATE}")
    sh(host, "rm -rf /srv/race-target && mkdir /srv/race-target && touch /srv/race-target/f")
    sh(host, f"chown -R {JOB}:runner /srv/race-target && chmod 2770 /srv/race-target")
    as_job(
        host, f"cd {STATE} && for i in $(seq 200); do mkdir -p race$i/in && touch race$i/in/f; done"
    )
    loop = textwrap.dedent(
        f"""\
        import os, time
        os.chdir({STATE!r})
        end, refused, swaps = time.monotonic() + 40, 0, 0
        while time.monotonic() < end and refused < 300:
            for i in range(1, 201):
                try:
                    os.rename(f"race{{i}}", f".r{{i}}")
                    os.symlink("/srv/race-target", f"race{{i}}")
                    os.unlink(f"race{{i}}")
                    os.rename(f".r{{i}}", f"race{{i}}")
                    swaps, refused = swaps + 1, 0
                except OSError:
                    refused += 1
        open("/tmp/rk-race-done", "w").write(str(swaps))
        """
    )
    host.exec(["sh", "-c", "rm -f /tmp/rk-race-done; cat > /tmp/rk-race.py"], input=loop)
    outside = fingerprint(host, "/srv/race-target")
    host.exec("setsid python3 /tmp/rk-race.py >/dev/null 2>&1 < /dev/null &", user=JOB)
    assert run_roles(layout_fleet, tmp_path, "runner_base") > 0
    swaps = sh(
        host,
        "for i in $(seq 450); do [ -e /tmp/rk-race-done ] && break; sleep 0.1; done; "
        "cat /tmp/rk-race-done",
    )
    assert int(swaps) > 0, "the job's loop never swapped a dir"
    assert fingerprint(host, "/srv/race-target") == outside
    assert (
        sh(
            host,
            f"find {STATE} {PRUNE} \\( ! -type f ! -type d -o ! -user root -o -perm /022 \\) "
            "-print",
        )
        == ""
    )
    assert run_roles(layout_fleet, tmp_path, "runner_base") == 0
    sh(host, f"rm -rf {STATE}/race* {STATE}/.r*")


def test_a_setuid_program_a_job_left_in_the_old_state_dir_never_becomes_root_setuid(
    layout_fleet, host, tmp_path
):
    sh(host, f"chgrp runner {STATE} && chmod 2775 {STATE}")
    as_job(host, f"cp /usr/bin/id {STATE}/evil && chmod 4755 {STATE}/evil")
    as_job(
        host,
        f"mkdir -p {STATE}/jobbin && cp /usr/bin/id {STATE}/jobbin/evil2 "
        f"&& chmod 6755 {STATE}/jobbin/evil2",
    )
    try:
        run_roles(layout_fleet, tmp_path, "runner_base")
        setuid = sh(
            host, f"find {STATE} -path {ASIDE} -prune -o -type f -perm /6000 -user root -print"
        )
        ran = as_job(host, f"{STATE}/evil -u; {STATE}/jobbin/evil2 -u", check=False).split()
        assert setuid == "" and "0" not in ran, (
            f"setuid root: {setuid!r}; the job ran with euid {ran}"
        )
    finally:
        sh(host, f"rm -rf {STATE}/evil {STATE}/jobbin")


def test_a_hard_link_to_a_root_file_outside_keeps_that_file_as_it_was(layout_fleet, host, tmp_path):
    """A job can hard-link a file it does not own where fs.protected_hardlinks=0 (the kernel's
    default without systemd's sysctl); here root makes the links (this host protects them)."""
    sh(host, "printf 'secret\\n' > /etc/rk-hl-sentinel && chown root:shadow /etc/rk-hl-sentinel")
    sh(host, "chmod 0640 /etc/rk-hl-sentinel")
    old_layout_tree(host, "/srv/old-hl")
    old_layout_tree(host, "/srv/store-hl")
    sh(host, "ln /etc/rk-hl-sentinel /srv/old-hl/link && ln /etc/rk-hl-sentinel /srv/store-hl/link")
    before = fingerprint(host, "/etc/rk-hl-sentinel")
    args = scratch_reclaim("/srv/old-hl")
    args["directories"].append(
        {"path": "/srv/store-hl", "owner": "runnerkeep", "group": "runnerkeep", "mode": "0750"}
    )
    args["reclaim"].append(
        {
            "path": "/srv/store-hl",
            "policy": "service_store",
            "aside_dir": "/srv/old-hl/aside",
            "owner": "runnerkeep",
            "group": "runnerkeep",
        }
    )
    try:
        result = layout(layout_fleet, tmp_path, args)
        assert not result.get("failed"), result.get("msg")
        assert fingerprint(host, "/etc/rk-hl-sentinel") == before
    finally:
        sh(host, "rm -rf /srv/old-hl /srv/store-hl && chown root:shadow /etc/rk-hl-sentinel")


def test_a_link_with_a_long_name_is_moved_aside_and_the_run_converges(layout_fleet, host, tmp_path):
    old_layout_tree(host, "/srv/old-long")
    as_job(host, f"ln -s /etc/shadow /srv/old-long/{'L' * 250}")
    assert_converges(layout_fleet, tmp_path, scratch_reclaim("/srv/old-long"))
    assert sh(host, "find /srv/old-long -path /srv/old-long/aside -prune -o -type l -print") == ""


def test_a_name_taken_in_the_aside_dir_does_not_stop_the_reclaim(layout_fleet, host, tmp_path):
    old_layout_tree(host, "/srv/old-clash")
    as_job(
        host,
        "cd /srv/old-clash && mkdir -p aside/srv%old-clash%lnk/x && ln -s /etc/shadow lnk",
    )
    assert_converges(layout_fleet, tmp_path, scratch_reclaim("/srv/old-clash"))
    assert sh(host, "find /srv/old-clash -path /srv/old-clash/aside -prune -o -type l -print") == ""


def test_a_deep_tree_is_taken_back_and_the_run_converges(layout_fleet, host, tmp_path):
    old_layout_tree(host, "/srv/old-deep")
    host.exec(
        [
            "python3",
            "-c",
            "import os\nos.chdir('/srv/old-deep')\n"
            "for _ in range(1100):\n    os.mkdir('d', 0o777)\n    os.chdir('d')\n"
            "os.symlink('/etc/shadow', 'bottom')\n",
        ],
        user=JOB,
    )
    assert_converges(layout_fleet, tmp_path, scratch_reclaim("/srv/old-deep"))
    left = sh(
        host,
        "find /srv/old-deep -path /srv/old-deep/aside -prune "
        "-o \\( ! -user root -o -type l \\) -print",
    )
    assert left == ""


# --------------------------------------------------------------------------- a job left running

LINGER = """\
import os, time
{setup}
open("/tmp/rk-linger-ready", "w").close()
end = time.monotonic() + 60
while not os.path.exists("/tmp/rk-linger-go") and time.monotonic() < end:
    time.sleep(0.05)
try:
    {act}
    outcome = "done"
except OSError as exc:
    outcome = exc.strerror
open("/tmp/rk-linger-done", "w").write(outcome)
"""


def reclaim_with_a_job_left_running(
    fleet: Fleet, host: RunnerHost, tmp_path: Path, setup: str, act: str
) -> str:
    """A job process (setsid, as a job leaves one behind) does ``setup`` before runner_base
    reclaims the old layout and ``act`` after it; what ``act`` met ("done" or the error)."""
    script = LINGER.format(setup=setup, act=act)
    host.exec(["sh", "-c", "rm -f /tmp/rk-linger-*; cat > /tmp/rk-linger.py"], input=script)
    host.exec("setsid python3 /tmp/rk-linger.py >/dev/null 2>&1 </dev/null &", user=JOB)
    sh(host, "for i in $(seq 100); do [ -e /tmp/rk-linger-ready ] && break; sleep 0.1; done")
    assert sh(host, "ls /tmp/rk-linger-ready").strip(), "the job's process did not start"
    run_roles(fleet, tmp_path, "runner_base")
    sh(host, "touch /tmp/rk-linger-go")
    return sh(
        host,
        "for i in $(seq 100); do [ -e /tmp/rk-linger-done ] && break; sleep 0.1; done; "
        "cat /tmp/rk-linger-done",
    )


def test_a_job_process_left_in_the_old_store_cannot_write_it_after_the_reclaim(
    layout_fleet, host, tmp_path
):
    store = "/var/cache/runnerkeep/images"
    sh(host, f"chgrp runner {store} && chmod 2775 {store}")
    try:
        met = reclaim_with_a_job_left_running(
            layout_fleet,
            host,
            tmp_path,
            setup=f"os.makedirs('{store}/jobsub', exist_ok=True)\n"
            f"os.chmod('{store}/jobsub', 0o777)\nos.chdir('{store}/jobsub')",
            act="os.symlink('/etc/runnerkeep/cache.key', 'planted')",
        )
        modes = sh(host, f"find {store} -mindepth 1 -perm /022 -printf '%p %m\\n'")
        assert met != "done" and modes == "", f"the job's process: {met}; writable: {modes}"
    finally:
        sh(host, f"rm -rf {store}/jobsub")


def test_a_state_file_a_job_holds_open_is_not_kept_as_roots(layout_fleet, host, tmp_path):
    sh(host, f"chgrp runner {STATE} && chmod 2775 {STATE}")
    path = f"{STATE}/job-state.json"
    try:
        reclaim_with_a_job_left_running(
            layout_fleet,
            host,
            tmp_path,
            setup=f"fd = os.open('{path}', os.O_WRONLY | os.O_CREAT, 0o644)\n"
            "os.write(fd, b'{\"ok\": true}\\n')",
            act="os.write(fd, b'{\"forged\": true}\\n')",
        )
        owned = sh(host, f"stat -c %U {path} 2>/dev/null; cat {path} 2>/dev/null", check=False)
        assert "forged" not in owned, f"root's {path} now holds: {owned}"
    finally:
        sh(host, f"rm -f {path}")


# --------------------------------------------------------------------------- the store, secrets


def test_an_old_layout_store_goes_to_the_service_and_its_links_aside_across_filesystems(
    layout_fleet, host, tmp_path
):
    """The store (its own tmpfs here, so a link moved aside to the state dir crosses
    filesystems) as an older layout left it, with a job's links and a job-owned subtree."""
    store = "/var/cache/runnerkeep/images"
    sh(host, f"chgrp runner {store} && chmod 2775 {store}")
    sh(host, "printf 'sentinel\\n' > /srv/store-sentinel && chmod 0644 /srv/store-sentinel")
    as_job(
        host,
        f"cd {store} && ln -s /srv/store-sentinel index.json && mkdir -p blobs/sha256 "
        "&& printf x > blobs/sha256/aa && ln -s /etc/shadow blobs/sha256/bb && mkfifo fifo",
    )
    outside = fingerprint(host, "/srv/store-sentinel") + fingerprint(host, "/etc/shadow")
    try:
        assert run_roles(layout_fleet, tmp_path, "runner_base") > 0
        assert (
            fingerprint(host, "/srv/store-sentinel") + fingerprint(host, "/etc/shadow") == outside
        )
        assert sh(host, f"find {store} -type l") == ""
        assert sh(host, f"find {store} \\( ! -user runnerkeep -o ! -group runnerkeep \\)") == ""
        assert sh(host, f"stat -c '%a %U' {store}").split() == ["750", "runnerkeep"]
        aside = sh(host, f"find {ASIDE} -name 'var%cache%runnerkeep%images%*' -printf '%f %l\\n'")
        assert "var%cache%runnerkeep%images%index.json /srv/store-sentinel" in aside, aside
        assert "var%cache%runnerkeep%images%blobs%sha256%bb /etc/shadow" in aside, aside
        assert run_roles(layout_fleet, tmp_path, "runner_base") == 0
    finally:
        sh(host, f"rm -rf {store}/blobs {store}/fifo")


def test_secret_content_never_reaches_the_output_even_with_diff(layout_fleet, host, tmp_path):
    secret = "https://hooks.example/T0KEN-rk-attack-5150"
    args = {
        "secret_files": [{"path": "/srv/hl-secret/hook", "content": f"{secret}\n", "mode": "0600"}],
        "directories": [{"path": "/srv/hl-secret", "mode": "0700"}],
    }
    sh(host, "rm -rf /srv/hl-secret")
    for check in (True, False):
        play = tmp_path / f"secret-{check}.yml"
        text = textwrap.indent(json.dumps(args), " " * 8)
        play.write_text(LAYOUT_PLAY.format(args=text, result=RESULT))
        run = layout_fleet.run_playbook(str(play), "--diff", "-vvv", check=check, quiet=True)
        assert run.returncode == 0, run.stdout[-3000:]
        assert "T0KEN-rk-attack" not in run.stdout + run.stderr
        assert "T0KEN-rk-attack" not in sh(host, f"cat {RESULT}")
    assert sh(host, "cat /srv/hl-secret/hook") == f"{secret}\n"
    assert sh(host, "stat -c '%a %U' /srv/hl-secret/hook").split() == ["600", "root"]


# --------------------------------------------------------------------------- every role


ROLES = ("runner_base", "image_cache", "runner_maintenance", "disk_monitor")
ROLE_TREES = (
    "/etc/runnerkeep /etc/systemd/system /usr/local/lib/runnerkeep/hooks /usr/local/bin "
    f"/home/{JOB}/actions-runner /srv/drift-sentinel"
)
UNITS = "runnerkeep-watch.timer runnerkeep-cache.socket runnerkeep-cleanup.timer"


def unit_states(host: RunnerHost) -> str:
    return sh(host, f"systemctl is-enabled {UNITS}; systemctl is-active {UNITS}", check=False)


def test_check_mode_of_every_role_on_a_drifted_host_changes_nothing_then_they_converge(
    layout_fleet, host, tmp_path
):
    """Drift in what each role's host_layout call owns: a fragment opened to all and edited,
    another removed, the cache key readable by all, a unit file swapped for a link to a
    sentinel, a socket disabled, a timer stopped, a hook opened to all, a runner's .env
    without the hook lines. The four roles in --check report changes and change nothing
    (files, owners, modes, units); the real run repairs all of it; the next run changes
    nothing."""
    runner_dirs = {"runner_maintenance_github_runner_dirs": [f"/home/{JOB}/actions-runner"]}
    as_job(host, "mkdir -p ~/actions-runner && printf 'RUNNER_NAME=rk\\n' > ~/actions-runner/.env")
    sh(host, "printf 'sentinel\\n' > /srv/drift-sentinel")
    sh(
        host,
        "cd /etc/runnerkeep/config.d && chmod 0666 40-disk.json && echo '{}' > 40-disk.json "
        "&& rm 20-cache.json && chmod 0644 ../cache.key "
        "&& chmod 0777 /usr/local/lib/runnerkeep/hooks/github-job-started.sh "
        "&& ln -sf /srv/drift-sentinel /etc/systemd/system/runnerkeep-watch.timer "
        "&& systemctl disable runnerkeep-cache.socket 2>/dev/null",
    )
    before, units = tree(host, ROLE_TREES), unit_states(host)
    try:
        assert run_roles(layout_fleet, tmp_path, *ROLES, check=True, **runner_dirs) > 0
        assert tree(host, ROLE_TREES) == before
        assert unit_states(host) == units

        assert run_roles(layout_fleet, tmp_path, *ROLES, **runner_dirs) > 0
        assert sh(host, "cat /srv/drift-sentinel") == "sentinel\n"
        modes = sh(
            host,
            "cd /etc/runnerkeep && stat -c '%n %a %F' config.d/40-disk.json config.d/20-cache.json "
            "cache.key /etc/systemd/system/runnerkeep-watch.timer",
        ).splitlines()
        assert [m.split(" ", 2)[1:] for m in modes] == [
            ["644", "regular file"],
            ["644", "regular file"],
            ["400", "regular file"],
            ["644", "regular file"],
        ], modes
        env = sh(
            host, f"stat -c %U /home/{JOB}/actions-runner/.env; cat /home/{JOB}/actions-runner/.env"
        )
        assert env.startswith(f"{JOB}\nRUNNER_NAME=rk\nACTIONS_RUNNER_HOOK_JOB_STARTED="), env
        assert "enabled" in sh(host, "systemctl is-enabled runnerkeep-cache.socket", check=False)

        assert run_roles(layout_fleet, tmp_path, *ROLES, **runner_dirs) == 0
    finally:
        host.exec(f"systemctl stop {TIMERS} runnerkeep-watch.service", check=False)


# --------------------------------------------------------------------------- names and managed dirs


def test_a_name_that_is_not_utf8_is_moved_aside_and_the_run_succeeds(layout_fleet, host, tmp_path):
    old_layout_tree(host, "/srv/old-bytes")
    host.exec(
        [
            "python3",
            "-c",
            "import os\nos.chdir('/srv/old-bytes')\n"
            "os.symlink('/etc/shadow', b'link\\xff\\xfe')\nos.mkdir(b'dir\\xff')\n",
        ],
        user=JOB,
    )
    args = scratch_reclaim("/srv/old-bytes")
    first = layout(layout_fleet, tmp_path, args)
    assert not first.get("failed"), first.get("msg")
    assert sh(host, "find /srv/old-bytes -path /srv/old-bytes/aside -prune -o -type l -print") == ""
    assert layout(layout_fleet, tmp_path, args)["changed"] is False


def test_a_link_where_a_managed_dir_of_the_state_dir_belongs_is_refused_never_followed(
    layout_fleet, host, tmp_path
):
    """In the old layout the job swaps the spool for a link to a dir of its own: runner_base
    stops with what to do (nothing is created or chowned through the link); once the link is
    removed the role converges."""
    sh(host, f"chgrp runner {STATE} && chmod 2775 {STATE}")
    sh(host, "rm -rf /srv/spool-target && mkdir /srv/spool-target")
    sh(host, f"chown {JOB}:runner /srv/spool-target && chmod 0777 /srv/spool-target")
    as_job(host, f"cd {STATE} && mv spool spool.job && ln -s /srv/spool-target spool")
    outside = fingerprint(host, "/srv/spool-target")
    play = tmp_path / "spool.yml"
    play.write_text(ROLE_PLAY.format(roles="    - role: runnerkeep.runner.runner_base"))
    try:
        run = layout_fleet.run_playbook(str(play), quiet=True)
        assert run.returncode != 0
        assert f"{STATE}/spool is a symlink where a directory belongs" in run.stdout, run.stdout
        assert "Traceback" not in run.stdout + run.stderr
        assert fingerprint(host, "/srv/spool-target") == outside
    finally:
        sh(host, f"rm -f {STATE}/spool && mv {STATE}/spool.job {STATE}/spool")
    run_roles(layout_fleet, tmp_path, "runner_base")
    assert run_roles(layout_fleet, tmp_path, "runner_base") == 0


def test_an_empty_cache_key_is_not_kept_by_image_cache(layout_fleet, host, tmp_path):
    key = "/etc/runnerkeep/cache.key"
    sh(host, f": > {key}")
    play = tmp_path / "key.yml"
    play.write_text(ROLE_PLAY.format(roles="    - role: runnerkeep.runner.image_cache"))
    try:
        run = layout_fleet.run_playbook(str(play), quiet=True)
        size = int(sh(host, f"stat -c %s {key}"))
        refused = run.returncode != 0 and key in run.stdout
        assert size == 32 or refused, f"rc={run.returncode}, {key} holds {size} bytes"
    finally:
        sh(host, f"rm -f {key}")
        run_roles(layout_fleet, tmp_path, "image_cache")
        host.exec(f"systemctl stop {TIMERS}", check=False)


# --------------------------------------------------------------------------- two runs at once

# host_layout's core as the module runs it (the installed release), started twice at once
# behind a barrier: two provisioning runs that reach one host together (an operator's and a
# pipeline's). Through ansible-playbook the overlap would depend on start-up timing.
TWICE = """\
import os, sys, time
sys.path.insert(0, "/usr/local/lib/runnerkeep/lib")
from runnerkeep.provision.layout import apply_layout
root = "/srv/old-twice"
params = {{
    "directories": [
        {{"path": root, "mode": "0755", "owner": "root", "group": "root"}},
        {{"path": root + "/aside", "mode": "0700", "owner": "root", "group": "root"}},
    ],
    "reclaim": [{{"path": root, "policy": "root_state", "aside_dir": root + "/aside", "skip": []}}],
}}
while not os.path.exists("/tmp/rk-twice-go"):
    time.sleep(0.01)
try:
    apply_layout(params, False, False, lambda argv: (0, "", ""))
    print("ok")
except Exception as exc:
    print("{{}}: {{}}".format(type(exc).__name__, exc))
"""


def test_two_runs_at_once_both_succeed(layout_fleet, host, tmp_path):
    old_layout_tree(host, "/srv/old-twice")
    as_job(host, "cd /srv/old-twice && for i in $(seq 5000); do ln -s /etc/shadow l$i; done")
    host.exec(["sh", "-c", "rm -f /tmp/rk-twice-go; cat > /tmp/rk-twice.py"], input=TWICE.format())
    out = sh(
        host,
        "rm -f /tmp/rk-twice-?; "
        "for n in 1 2; do (python3 /tmp/rk-twice.py > /tmp/rk-twice-$n &); done; "
        "sleep 1; touch /tmp/rk-twice-go; for i in $(seq 600); do "
        "[ -s /tmp/rk-twice-1 ] && [ -s /tmp/rk-twice-2 ] && break; sleep 0.1; done; "
        "cat /tmp/rk-twice-1 /tmp/rk-twice-2",
        timeout=120,
    )
    assert out.split() == ["ok", "ok"], out
    assert sh(host, "find /srv/old-twice -path /srv/old-twice/aside -prune -o -type l -print") == ""


# --------------------------------------------------------------------------- the fixes, attacked


def test_temp_names_a_job_made_in_its_runner_dir_do_not_stop_the_env_lines(
    layout_fleet, host, tmp_path
):
    as_job(
        host, "rm -rf ~/runner5 && mkdir ~/runner5 && printf 'RUNNER_NAME=rk\\n' > ~/runner5/.env"
    )
    host.exec(
        [
            "python3",
            "-c",
            f"import os\nos.chdir('/home/{JOB}/runner5')\nme = os.getpid()\n"
            "for n in range(me, me + 20000):\n    open(f'.rk-layout-{n}-.env', 'w').close()\n",
        ],
        user=JOB,
    )
    args = {"lines": [{"paths": [f"/home/{JOB}/runner5/.env"], "lines": {"HOOK": "/x.sh"}}]}
    try:
        result = layout(layout_fleet, tmp_path, args)
        assert not result.get("failed"), result.get("msg")
        assert sh(host, f"cat /home/{JOB}/runner5/.env") == "RUNNER_NAME=rk\nHOOK=/x.sh\n"
    finally:
        as_job(host, "rm -rf ~/runner5")


def test_check_mode_creates_no_lock_file(layout_fleet, host, tmp_path):
    lock = "/run/runnerkeep-host-layout.lock"
    sh(host, f"rm -f {lock}")
    result = layout(
        layout_fleet,
        tmp_path,
        {"directories": [{"path": "/srv/hl-nolock", "mode": "0755"}]},
        check=True,
    )
    assert result["changed"] is True, result
    assert sh(host, f"ls -d {lock} /srv/hl-nolock 2>/dev/null", check=False) == ""


def test_a_sparse_job_file_does_not_fill_the_state_disk_during_the_reclaim(
    layout_fleet, host, tmp_path
):
    root = f"{TINY}/old-sparse"
    sh(host, f"rm -rf {TINY}/*")
    old_layout_tree(host, root)
    as_job(host, f"truncate -s 10M {root}/history.jsonl")
    try:
        assert_converges(layout_fleet, tmp_path, scratch_reclaim(root))
        left = sh(host, f"find {root} -path {root}/aside -prune -o ! -user root -print")
        assert left == "", left
    finally:
        sh(host, f"rm -rf {root}")
