"""Issue 14: a hostile CI job against what root and the service run on a schedule or from hooks.

One runner container provisioned with provision.yml (short unit timeouts, the nightly cleanup
with --all so every cleaner really walks, a webhook URL carrying a token). A real unprivileged
job user ``runner`` in the job group plants every class of the issue wherever it can write
(the spool, /tmp, /var/tmp, its home caches, its work dir): symlinks to root-only files,
FIFOs, /dev/zero, oversized and deeply nested JSON, forged job records with a far-future
start naming processes it does not own, a directory swapped with a symlink in a loop, and an
flock held on every root file it can open. Then root starts the scheduled units and the job
runs its hooks. Afterwards: the guarded tree is byte-identical, every unit finished in time
with no traceback, the forged records held nothing off, and the job can write none of the
store, the state dir or the secrets and read nothing it could not read before.
"""

from __future__ import annotations

import json

import pytest
from harness.fleet import Fleet
from harness.provision import FLEET_VARS, PROVISION
from job_boundary_helpers import (
    GUARDED,
    HOLDER,
    JOB_USER,
    MARKER,
    ROOT_TREES,
    SECRET,
    SECRETS,
    SEED_SENTINEL,
    SNAPSHOT,
    SPOOL,
    STATE,
    STORE,
    SWAPPER,
    WEBHOOK_FILE,
    WEBHOOK_URL,
    plant_script,
)

pytestmark = pytest.mark.integration

UNIT_TIMEOUT = 120  # TimeoutStartSec of the units under attack: the deadline asserted below
UNITS = ("runnerkeep-cleanup.service", "runnerkeep-watch.service")
CACHE_UNIT = "runnerkeep-cache-maintenance.service"
ROOT_JUNK = "/var/tmp/rk-root-junk/old.bin"  # root's own old junk: the cleanup must remove it

PROVISION_VARS = {
    **FLEET_VARS,
    "disk_monitor_webhook_url": WEBHOOK_URL,
    "disk_monitor_webhook_timeout": "1s",
    "disk_monitor_service_timeout": f"{UNIT_TIMEOUT}s",
    "runner_maintenance_nightly_timeout": f"{UNIT_TIMEOUT}s",
    "runner_maintenance_nightly_wait_lock": "20s",
    "runner_maintenance_nightly_args": ["--all"],
}


def as_job(host, cmd: str, check: bool = False, timeout: float = 120):
    return host.exec(["su", JOB_USER, "-s", "/bin/sh", "-c", cmd], check=check, timeout=timeout)


def snapshot(host, paths) -> dict:
    host.exec("cat > /root/snapshot.py", input=SNAPSHOT)
    return json.loads(host.exec(["python3", "/root/snapshot.py", *paths]).stdout)


def readable_by_job(host) -> set[str]:
    listed = as_job(host, "find " + " ".join(ROOT_TREES) + " -readable 2>/dev/null").stdout
    return set(listed.split())


@pytest.fixture(scope="module")
def attacked(runner_image):
    fleet = Fleet.start(1, name="rkjb", image=runner_image)
    try:
        host = fleet.hosts[0]
        result = fleet.run_playbook(PROVISION, extra_vars=PROVISION_VARS, quiet=True)
        assert result.returncode == 0, result.stdout[-4000:]
        host.exec(f"useradd -m -g runner -s /bin/sh {JOB_USER}")
        host.exec(SEED_SENTINEL)
        host.exec(
            f"mkdir -p {ROOT_JUNK.rsplit('/', 1)[0]} && head -c 100000 /dev/urandom > {ROOT_JUNK}"
            f" && touch -d '10 days ago' {ROOT_JUNK} {ROOT_JUNK.rsplit('/', 1)[0]}"
        )
        host.exec("systemctl stop runnerkeep-watch.timer runnerkeep-cleanup.timer")
        before = snapshot(host, GUARDED)
        existed = set(snapshot(host, ROOT_TREES))
        readable_before = readable_by_job(host)

        # The job: a long-lived process of its own (a record may name it), then the plants.
        as_job(host, "nohup sleep 900 >/dev/null 2>&1 &")
        own_pid = int(as_job(host, f"pgrep -u {JOB_USER} -x sleep | head -1", check=True).stdout)
        root_pid = int(host.exec("pgrep -x systemd-journal | head -1 || echo 1").stdout or 1)
        planted = as_job(host, plant_script(4102444800, root_pid, own_pid), timeout=300)
        host.exec("cat > /tmp/swapper.py && chmod 0644 /tmp/swapper.py", input=SWAPPER)
        host.exec("cat > /tmp/holder.py && chmod 0644 /tmp/holder.py", input=HOLDER)
        for a, b in (
            (f"{SPOOL}/swap.d", f"{SPOOL}/swap.alt"),
            ("/tmp/rk-swap", "/tmp/rk-swap.alt"),
            ("/var/tmp/rk-swap", "/var/tmp/rk-swap.alt"),
            ("/home/runner/.cache/pip/rk-swap", "/home/runner/.cache/pip/rk-swap.alt"),
        ):
            as_job(host, f"nohup python3 /tmp/swapper.py {a} {b} 600 >/dev/null 2>&1 &")
        # An flock on every root file the job can open, and on its own spool file.
        lockable = as_job(
            host, f"find {STATE} /etc/runnerkeep -maxdepth 3 -type f -readable 2>/dev/null"
        ).stdout.split()
        as_job(host, f"touch {SPOOL}/held.lock")
        targets = " ".join([*lockable, f"{SPOOL}/held.lock"])
        as_job(host, f"nohup python3 /tmp/holder.py 900 {targets} >/tmp/held.out 2>&1 &")

        # Root's schedule, then the job's own hooks (they run as the job user).
        runs = {}
        for unit in UNITS:
            runs[unit] = host.exec(
                f"systemctl start {unit}", check=False, timeout=UNIT_TIMEOUT + 60
            )
        if host.exec(f"systemctl cat {CACHE_UNIT}", check=False).returncode == 0:
            runs[CACHE_UNIT] = host.exec(f"systemctl start {CACHE_UNIT}", check=False, timeout=600)
        hook = as_job(
            host,
            "GITHUB_RUN_ID=77 GITHUB_JOB=evil "
            "/usr/local/lib/runnerkeep/hooks/github-job-started.sh; echo rc=$?",
            timeout=UNIT_TIMEOUT,
        )
        emergency = host.exec(
            "runnerkeep cleanup run --stage emergency --all", check=False, timeout=UNIT_TIMEOUT
        )
        host.exec(f"pkill -u {JOB_USER} -f swapper.py || true")
        fleet.attack = {
            "before": before,
            "after": snapshot(host, GUARDED),
            "readable_before": readable_before,
            "existed": existed,
            "readable_after": readable_by_job(host),
            "planted": planted,
            "runs": runs,
            "hook": hook,
            "emergency": emergency,
        }
        yield fleet
    finally:
        fleet.stop()


def test_guarded_tree_is_byte_identical(attacked):
    attack = attacked.attack
    changed = {
        path: (attack["before"].get(path), attack["after"].get(path))
        for path in set(attack["before"]) | set(attack["after"])
        if attack["before"].get(path) != attack["after"].get(path)
    }
    assert not changed, changed


def test_units_finish_in_time_without_traceback(attacked):
    host = attacked.hosts[0]
    for unit, run in attacked.attack["runs"].items():
        shown = host.exec(f"systemctl show -p Result -p ExecMainStatus {unit}").stdout
        journal = host.exec(f"journalctl -u {unit} --no-pager", check=False).stdout
        assert run.returncode == 0, f"{unit}: {shown}\n{journal[-3000:]}"
        assert "Result=success" in shown, f"{unit}: {shown}\n{journal[-3000:]}"
        assert "Result=timeout" not in shown
        assert "Traceback" not in journal, journal[-3000:]
    assert "rc=0" in attacked.attack["hook"].stdout, attacked.attack["hook"].stderr
    assert "Traceback" not in attacked.attack["hook"].stderr, attacked.attack["hook"].stderr
    emergency = attacked.attack["emergency"]
    assert emergency.returncode == 0, emergency.stdout[-2000:] + emergency.stderr[-2000:]
    assert "Traceback" not in emergency.stderr


def test_forged_job_records_hold_off_no_stage(attacked):
    host = attacked.hosts[0]
    # The nightly post stage ran (the forged far-future records did not make it wait and give
    # up) and removed root's own old junk.
    journal = host.exec("journalctl -u runnerkeep-cleanup.service --no-pager", check=False).stdout
    assert "cleanup stage post" in journal, journal[-3000:]
    assert host.exec(f"test -e {ROOT_JUNK}", check=False).returncode != 0, journal[-3000:]
    status = host.exec("runnerkeep cleanup status --json", check=False)
    jobs = json.dumps(json.loads(status.stdout or "{}"))
    for forged in ("gh-forged-pid1", "gh-forged-root", "gh-forged-own"):
        assert forged not in jobs, status.stdout


def test_job_cannot_write_store_state_or_secrets(attacked):
    host = attacked.hosts[0]
    for directory in (STORE, STATE, f"{STATE}/job-locks", SECRETS, "/etc/runnerkeep/config.d"):
        probe = as_job(host, f"touch {directory}/rk-probe")
        assert probe.returncode != 0, f"the job could create a file in {directory}"
    for path in (STORE, SECRETS):
        assert as_job(host, f"ls {path}").returncode != 0, f"the job can list {path}"
    # The spool is the one place it may drop records, without listing others'.
    assert as_job(host, f"touch {SPOOL}/rk-probe-own").returncode == 0
    assert as_job(host, f"ls {SPOOL}").returncode != 0
    layout = host.exec(
        f"stat -c '%n %U:%G %a' {STORE} {STATE} {SPOOL} {SECRETS} {STATE}/cache-service"
    ).stdout.splitlines()
    assert layout == [
        f"{STORE} runnerkeep:runnerkeep 750",
        f"{STATE} root:root 755",
        f"{SPOOL} root:runner 1730",
        f"{SECRETS} root:root 700",
        f"{STATE}/cache-service runnerkeep:runnerkeep 700",
    ]


def test_job_cannot_read_the_webhook_url(attacked):
    host = attacked.hosts[0]
    assert host.exec(f"stat -c '%U:%G %a' {WEBHOOK_FILE}").stdout.split() == ["root:root", "600"]
    assert as_job(host, f"cat {WEBHOOK_FILE}").returncode != 0
    fragments = as_job(host, "cat /etc/runnerkeep/config.json /etc/runnerkeep/config.d/*.json")
    assert fragments.returncode == 0 and SECRET not in fragments.stdout
    found = as_job(host, f"grep -rl {SECRET} /etc /var/lib /var/log /tmp /run 2>/dev/null")
    assert not found.stdout.strip(), found.stdout
    journal = host.exec("journalctl --no-pager", check=False).stdout
    assert SECRET not in journal


def test_job_reads_nothing_new(attacked):
    # Nothing of root's that the job could not read became readable (rotation, chmod through a
    # link); root's new state files are world-readable by design (state dir 0755, no secrets).
    attack = attacked.attack
    gained = (attack["readable_after"] - attack["readable_before"]) & attack["existed"]
    assert not gained, sorted(gained)
    # Nor was root-only content copied out to anything the job can read.
    copied = as_job(
        attacked.hosts[0], f"grep -rl {MARKER} /etc /var /tmp /run /home /srv 2>/dev/null"
    )
    assert not copied.stdout.strip(), copied.stdout
