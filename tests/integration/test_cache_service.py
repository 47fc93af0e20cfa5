"""Issue 14 on a runner container: CI jobs reach the image cache only through the cache service.

One runner provisioned with provision.yml; a real unprivileged job user ``runner`` in the job
group. A real runner agent (GitHub's Runner.Worker, gitlab-runner) cannot be downloaded here, so
each job is a stand-in worker: a shell script run as ``runner`` whose children are the job-start
hook's ``runnerkeep cache register-job`` (bound to that script's process, as the real hook binds
to the agent's worker) and then the job's own cache commands. What is asserted:

- a trusted job (push event) saves and restores through the service (as the store's owner);
- a fork pull request's ``cache import --key app-main`` of a retagged archive lands in its own
  scope: a later trusted restore of app-main loads the image saved by the trusted job;
- the job can neither read nor edit the store (permission denied), and an in-place edit by root
  with its plain checksum recomputed is rejected by the entry MAC (exit 3, quarantined).
"""

from __future__ import annotations

import json
import textwrap

import pytest
from harness.fleet import Fleet
from harness.provision import FLEET_VARS, PROVISION

pytestmark = pytest.mark.integration

JOB_USER = "runner"
STORE = "/var/cache/runnerkeep/images"
HOME = f"/home/{JOB_USER}"

BUILD = r"""
set -e
rm -rf /tmp/rk-build && mkdir -p /tmp/rk-build/app /tmp/rk-build/evil
cd /tmp/rk-build/app && head -c 2M /dev/urandom > a.bin
printf 'FROM scratch\nCOPY a.bin /a.bin\n' > Dockerfile
docker build -q -t cs/app:1 . >/dev/null
cd /tmp/rk-build/evil && head -c 1M /dev/urandom > evil.bin
printf 'FROM scratch\nCOPY evil.bin /evil.bin\n' > Dockerfile
docker build -q -t cs/evil:1 . >/dev/null
rm -rf /tmp/rk-build
"""

# The stand-in worker: its first child registers the job (the hook), the rest is the job.
JOB = textwrap.dedent(
    """\
    #!/bin/sh
    # usage: job.sh OUTDIR EVENT [runnerkeep cache args...]
    out="$1"; event="$2"; shift 2
    mkdir -p "$out"
    export GITHUB_REPOSITORY=me/app GITHUB_EVENT_NAME="$event" GITHUB_EVENT_PATH={home}/fork.json
    runnerkeep cache register-job --json > "$out/register.json" 2> "$out/register.err"
    runnerkeep cache "$@" > "$out/out" 2> "$out/err"
    echo $? > "$out/rc"
    """
).format(home=HOME)

FORK_EVENT = {
    "pull_request": {
        "number": 7,
        "head": {"repo": {"fork": True, "full_name": "evil/app"}},
        "base": {"repo": {"fork": False, "full_name": "me/app"}},
    }
}

# Root edits the trusted entry in place, recomputing its plain checksum (what a writer of the
# old group-writable store could do): only the MAC can tell.
FORGE = textwrap.dedent(
    """\
    import hashlib, json, sys
    path = sys.argv[1]
    body = json.load(open(path))
    body["images"][0]["tags"] = ["cs/forged:1"]
    clean = {k: v for k, v in body.items() if k != "checksum"}
    canon = json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()
    body["checksum"] = "sha256:" + hashlib.sha256(canon).hexdigest()
    open(path, "w").write(json.dumps(body))
    """
)


def as_job(host, cmd: str, check: bool = False, timeout: float = 300):
    return host.exec(["su", JOB_USER, "-s", "/bin/sh", "-c", cmd], check=check, timeout=timeout)


def run_job(host, name: str, event: str, *cache_args: str) -> dict:
    out = f"{HOME}/{name}"
    args = " ".join(cache_args)
    as_job(host, f"sh {HOME}/job.sh {out} {event} {args}", timeout=600)
    read = lambda f: host.exec(f"cat {out}/{f}", check=False).stdout  # noqa: E731
    return {
        "register": json.loads(read("register.json") or "{}"),
        "register_err": read("register.err"),
        "rc": int(read("rc").strip() or -1),
        "out": read("out"),
        "err": read("err"),
    }


def image_id(host, ref: str) -> str:
    proc = host.exec(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=False)
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def runner(runner_image):
    fleet = Fleet.start(1, name="rkcs", image=runner_image)
    try:
        host = fleet.hosts[0]
        result = fleet.run_playbook(PROVISION, extra_vars=FLEET_VARS, quiet=True)
        assert result.returncode == 0, result.stdout[-4000:]
        # The roles create the job group; the CI user itself is the runner agent's to create.
        host.exec(f"id {JOB_USER} || useradd -m -g runner -s /bin/sh {JOB_USER}")
        host.exec(f"cat > {HOME}/job.sh && chmod 0755 {HOME}/job.sh", input=JOB)
        host.exec(
            f"cat > {HOME}/fork.json && chmod 0644 {HOME}/fork.json", input=json.dumps(FORK_EVENT)
        )
        host.exec(BUILD, timeout=300)
        yield host
    finally:
        fleet.stop()


def test_service_is_installed_as_designed(runner):
    host = runner
    assert host.exec("systemctl is-active runnerkeep-cache.socket").stdout.strip() == "active"
    sock = host.exec("stat -c '%U %G %a' /run/runnerkeep/cache.sock").stdout.split()
    assert sock == ["runnerkeep", "runner", "660"]
    assert host.exec(f"stat -c '%U %G %a' {STORE}").stdout.split() == [
        "runnerkeep",
        "runnerkeep",
        "750",
    ]
    key = host.exec("stat -c '%U %a %s' /etc/runnerkeep/cache.key").stdout.split()
    assert key == ["runnerkeep", "400", "32"]
    unit = host.exec("systemctl cat runnerkeep-cache@.service").stdout
    for line in (
        "User=runnerkeep",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ):
        assert line in unit


def test_trusted_job_saves_and_restores_through_the_service(runner):
    host = runner
    saved = run_job(host, "push-save", "push", "save", "--json", "--key", "app-main", "cs/app:1")
    assert saved["register"].get("result") == "registered", saved
    assert saved["register"]["trusted"] is True
    assert saved["rc"] == 0, saved["err"]
    result = json.loads(saved["out"])
    assert result["result"] == "saved" and result["scope"] == "trusted"
    # Written by the service as the store's owner, readable by no job.
    owners = host.exec(f"find {STORE}/entries -name 'app-main.json' -printf '%u %m'").stdout
    assert owners == "runnerkeep 644"
    good = image_id(host, "cs/app:1")
    host.exec("docker rmi -f cs/app:1")
    restored = run_job(host, "push-restore", "push", "restore", "--key", "app-main")
    assert restored["rc"] == 0, restored["err"]
    assert restored["out"].startswith("restored key 'app-main': loaded cs/app:1")
    assert image_id(host, "cs/app:1") == good


def test_fork_pr_import_over_a_trusted_key_does_not_change_a_trusted_restore(runner):
    host = runner
    good = image_id(host, "cs/app:1")
    assert good
    # The attacker's archive: another image under the trusted tag.
    host.exec("docker tag cs/evil:1 cs/app:1")
    host.exec(f"docker save cs/app:1 -o {HOME}/evil.tar && chmod 0644 {HOME}/evil.tar")
    host.exec(f"docker tag {good} cs/app:1")
    imported = run_job(
        host,
        "fork-import",
        "pull_request",
        "import",
        "--json",
        "--key",
        "app-main",
        f"{HOME}/evil.tar",
    )
    assert imported["register"]["trusted"] is False, imported
    assert imported["rc"] == 0, imported["err"]
    assert json.loads(imported["out"])["scope"].startswith("pr-7-")
    host.exec("docker rmi -f cs/app:1")
    restored = run_job(host, "trusted-after-fork", "push", "restore", "--json", "--key", "app-main")
    assert restored["rc"] == 0, restored["err"]
    assert json.loads(restored["out"])["scope"] == "trusted"
    assert image_id(host, "cs/app:1") == good


def test_job_cannot_read_or_edit_the_store(runner):
    host = runner
    listing = as_job(host, f"ls {STORE}/entries")
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    edit = as_job(host, f"echo '{{}}' > {STORE}/entries/app-main.json")
    assert edit.returncode != 0 and "Permission denied" in edit.stderr
    key = as_job(host, "cat /etc/runnerkeep/cache.key")
    assert key.returncode != 0 and "Permission denied" in key.stderr
    direct = as_job(host, "runnerkeep cache list --no-service")
    assert direct.returncode == 2 and "not accessible to this user" in direct.stderr


def test_root_side_edit_with_recomputed_checksum_is_rejected_by_the_mac(runner):
    host = runner
    host.exec("cat > /root/forge.py", input=FORGE)
    host.exec(f"python3 /root/forge.py {STORE}/entries/app-main.json")
    restored = run_job(host, "after-forge", "push", "restore", "--key", "app-main")
    assert restored["rc"] == 3, restored
    assert "MAC" in restored["err"] and "quarantined" in restored["err"]
    assert "Traceback" not in restored["err"]
    gone = host.exec(f"test -e {STORE}/entries/app-main.json", check=False)
    assert gone.returncode != 0
    assert host.exec(f"ls {STORE}/quarantine").stdout.count("entry-app-main") >= 1
