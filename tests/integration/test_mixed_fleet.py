"""A mixed fleet: one runner of each Debian release runnerkeep supports, provisioned together.

Debian 11 (bullseye, Python 3.9, systemd 247, Docker 20.10), 12 (bookworm) and 13 (trixie,
Python 3.13, systemd 257, Docker 26) run the same provision.yml in one play: all green, and a
second run changes nothing on any host. Then on every host, as a CI job would meet it:

- a cache round trip: two images sharing a base saved by root's CLI, removed, restored with
  their IDs, ``cache verify`` clean; and one image saved and restored by an unprivileged job
  through the socket-activated cache service;
- a cleanup stage: ``runnerkeep cleanup --stage post`` removes a dangling image (its bytes are
  in the report, the image is gone, the fresh cached images stay), and the hardened nightly
  unit runs the same stage with success;
- a watch cycle: the hardened watch unit (what the timer starts) writes the metrics textfile,
  stamped after the start, with state ok and the cache and cleanup counters of the steps above.

The roles' ``meta/main.yml`` list exactly these three releases as their platforms.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from harness import REPO_ROOT
from harness.fleet import Fleet, RunnerHost
from harness.image import RELEASES
from harness.provision import provision

pytestmark = pytest.mark.integration

METRICS = "/var/lib/prometheus/node-exporter/runnerkeep_disk.prom"
UNIT_DIR = "/etc/systemd/system"
JOB_USER = "runner"
HOME = f"/home/{JOB_USER}"
MiB = 1024**2
MB = 1000**2  # docker reports image sizes in decimal units

# Two images sharing a base, built FROM scratch inside the runner's own engine (no registry).
BUILD = r"""
set -e
rm -rf /tmp/mx-build && mkdir -p /tmp/mx-build/base /tmp/mx-build/app
cd /tmp/mx-build/base && head -c 3M /dev/urandom > a.bin && head -c 2M /dev/urandom > b.bin
printf 'FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n' > Dockerfile
docker build -q -t mixed/base:1 . >/dev/null 2>&1
cd /tmp/mx-build/app && head -c 1M /dev/urandom > c.bin
printf 'FROM mixed/base:1\nCOPY c.bin /c.bin\n' > Dockerfile
docker build -q -t mixed/app:1 . >/dev/null 2>&1
printf 'FROM scratch\nCOPY c.bin /job.bin\n' > Dockerfile
docker build -q -t mixed/job:1 . >/dev/null 2>&1
cd / && rm -rf /tmp/mx-build
"""

# The same tag built twice: the first build is left dangling, 4 MiB for the cleanup to free.
DANGLING = r"""
set -e
rm -rf /tmp/mx-dangle && mkdir -p /tmp/mx-dangle && cd /tmp/mx-dangle
printf 'FROM scratch\nCOPY d.bin /d.bin\n' > Dockerfile
head -c 4M /dev/urandom > d.bin && docker build -q -t mixed/dangle:1 . >/dev/null 2>&1
docker image inspect --format '{{.Id}}' mixed/dangle:1
head -c 4M /dev/urandom > d.bin && docker build -q -t mixed/dangle:1 . >/dev/null 2>&1
cd / && rm -rf /tmp/mx-dangle
"""

# A stand-in CI job (a real runner agent cannot be downloaded here): its first child registers
# the job with the cache service, as the job-start hook does, the rest is the job's cache step.
JOB = textwrap.dedent(
    """\
    #!/bin/sh
    # usage: job.sh OUTDIR [runnerkeep cache args...]
    out="$1"; shift
    mkdir -p "$out"
    export GITHUB_REPOSITORY=me/app GITHUB_EVENT_NAME=push
    runnerkeep cache register-job --json > "$out/register.json" 2> "$out/register.err"
    runnerkeep cache "$@" > "$out/out" 2> "$out/err"
    echo $? > "$out/rc"
    """
)


# ------------------------------------------------------------------------------ helpers


def recap(output: str) -> dict[str, dict[str, int]]:
    """ansible-playbook's PLAY RECAP as {host: {ok: n, changed: n, failed: n, ...}}."""
    hosts: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            hosts[match.group(1)] = {
                k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))
            }
    return hosts


def host_facts(host: RunnerHost) -> dict[str, str]:
    """What the host really runs: Debian codename and version, python3, systemd, Docker."""
    script = (
        '. /etc/os-release; echo "$VERSION_CODENAME"; cat /etc/debian_version; '
        "python3 -c 'import platform; print(platform.python_version())'; "
        "systemctl --version | sed -n '1s/^systemd \\([0-9]*\\).*/\\1/p'; "
        "docker version --format '{{.Server.Version}}'"
    )
    lines = host.exec(script, timeout=60).stdout.split("\n")
    keys = ("codename", "debian", "python", "systemd", "docker")
    return dict(zip(keys, (line.strip() for line in lines)))


def who(host: RunnerHost, facts: dict[str, dict[str, str]]) -> str:
    """A host as failure messages name it: inventory name, Debian release, its python."""
    f = facts.get(host.name, {})
    return (
        f"{host.name} (Debian {host.release} {f.get('debian', '?')}, python {f.get('python', '?')},"
        f" systemd {f.get('systemd', '?')}, docker {f.get('docker', '?')})"
    )


def host_of(fleet: Fleet, release: str) -> RunnerHost:
    return next(h for h in fleet.hosts if h.release == release)


def image_id(host: RunnerHost, ref: str) -> str:
    proc = host.exec(["docker", "image", "inspect", "--format", "{{.Id}}", ref], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def run_json(host: RunnerHost, cmd: str, where: str, timeout: float = 300) -> dict:
    """Run a ``--json`` command on the host; fail naming the host when it exits non-zero."""
    proc = host.exec(cmd, check=False, timeout=timeout)
    assert proc.returncode == 0, f"{where}: `{cmd}` exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def run_job(host: RunnerHost, name: str, *cache_args: str) -> dict:
    """The stand-in job as the CI user; its register output, exit code, stdout and stderr."""
    out = f"{HOME}/{name}"
    argv = " ".join(cache_args)
    host.exec(
        ["su", JOB_USER, "-s", "/bin/sh", "-c", f"sh {HOME}/job.sh {out} {argv}"], timeout=600
    )
    read = lambda f: host.exec(f"cat {out}/{f}", check=False).stdout  # noqa: E731
    return {
        "register": json.loads(read("register.json") or "{}"),
        "register_err": read("register.err"),
        "rc": int(read("rc").strip() or -1),
        "out": read("out"),
        "err": read("err"),
    }


def start_unit(host: RunnerHost, unit: str, where: str) -> None:
    """``systemctl start`` a oneshot unit (returns when it finished) and check it succeeded."""
    run = host.exec(["systemctl", "start", unit], check=False, timeout=600)
    journal = host.exec(f"journalctl -u {unit} --no-pager | tail -20", check=False).stdout
    assert run.returncode == 0, f"{where}: {unit} failed: {run.stderr}\n{journal}"
    result = host.exec(["systemctl", "show", "-p", "Result", "--value", unit]).stdout.strip()
    assert result == "success", f"{where}: {unit} Result={result}\n{journal}"


def metrics(text: str) -> dict[str, float]:
    """Prometheus text format as {'name{labels}': value} (comments skipped)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def facts(mixed_fleet: Fleet) -> dict[str, dict[str, str]]:
    found = {h.name: host_facts(h) for h in mixed_fleet.hosts}
    for h in mixed_fleet.hosts:
        print(f"mixed fleet: {who(h, found)}")
    return found


@pytest.fixture(scope="module")
def provisioned(mixed_fleet: Fleet, facts: dict[str, dict[str, str]]) -> Fleet:
    """The mixed fleet after one provision.yml run over all three hosts together (all green)."""
    result = provision(mixed_fleet, quiet=True)
    counts = recap(result.stdout)
    bad = [
        who(h, facts) + f": {counts.get(h.name)}"
        for h in mixed_fleet.hosts
        if counts.get(h.name, {}).get("failed", 1) or counts.get(h.name, {}).get("unreachable", 1)
    ]
    assert result.returncode == 0 and not bad, (
        "provision.yml on the mixed fleet failed on:\n"
        + "\n".join(bad)
        + f"\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    )
    mixed_fleet.first_provision = result
    for host in mixed_fleet.hosts:
        host.exec(f"id {JOB_USER} || useradd -m -g runner -s /bin/sh {JOB_USER}")
        host.exec(f"cat > {HOME}/job.sh && chmod 0755 {HOME}/job.sh", input=JOB)
    return mixed_fleet


# ------------------------------------------------------------------------------ tests


def test_each_host_runs_its_release(mixed_fleet: Fleet, facts: dict[str, dict[str, str]]) -> None:
    assert sorted(h.release for h in mixed_fleet.hosts) == sorted(RELEASES)
    for host in mixed_fleet.hosts:
        found = facts[host.name]
        assert found["codename"] == host.release, (
            f"{who(host, facts)}: /etc/os-release says {found}"
        )
        python = ".".join(found["python"].split(".")[:2])
        assert python == RELEASES[host.release].python, f"{who(host, facts)}: python {python}"
        assert found["docker"], f"{who(host, facts)}: the inner engine does not answer"


def test_provision_is_green_and_a_second_run_changes_nothing(
    provisioned: Fleet, facts: dict[str, dict[str, str]]
) -> None:
    first = recap(provisioned.first_provision.stdout)
    for host in provisioned.hosts:
        assert first[host.name]["ok"] > 0, f"{who(host, facts)}: {first[host.name]}"
    second = provision(provisioned, quiet=True)
    counts = recap(second.stdout)
    assert second.returncode == 0, f"second provision.yml run failed:\n{second.stdout[-6000:]}"
    changed = {
        who(h, facts): counts[h.name]
        for h in provisioned.hosts
        if counts[h.name]["changed"] or counts[h.name]["failed"]
    }
    assert not changed, f"the second run changed or failed hosts: {changed}\n{second.stdout}"


@pytest.mark.parametrize("release", list(RELEASES))
def test_units_load_without_complaint(
    provisioned: Fleet, facts: dict[str, dict[str, str]], release: str
) -> None:
    """systemd ignores unit options it does not know (with a warning): every release's systemd
    must read every runnerkeep unit and its hardening without one, and nothing has failed."""
    host = host_of(provisioned, release)
    where = who(host, facts)
    units = host.exec(f"ls {UNIT_DIR} | grep '^runnerkeep-.*\\.\\(service\\|socket\\|timer\\)$'")
    names = units.stdout.split()
    assert {"runnerkeep-watch.service", "runnerkeep-cleanup.service"} <= set(names), names
    for unit in names:
        verify = host.exec(["systemd-analyze", "verify", f"{UNIT_DIR}/{unit}"], check=False)
        complaints = (verify.stdout + verify.stderr).strip()
        assert verify.returncode == 0 and not complaints, f"{where}: {unit}: {complaints}"
    failed = host.exec(["systemctl", "--failed", "--no-legend", "--plain"]).stdout.strip()
    assert failed == "", f"{where}: failed units:\n{failed}"


@pytest.mark.parametrize("release", list(RELEASES))
def test_cache_cleanup_and_watch_on_every_release(
    provisioned: Fleet, facts: dict[str, dict[str, str]], release: str
) -> None:
    host = host_of(provisioned, release)
    where = who(host, facts)
    host.exec(BUILD, timeout=600)
    _cache_round_trip(host, where)
    _job_round_trip(host, where)
    freed = _cleanup_stage(host, where)
    _watch_cycle(host, where, freed)


def _cache_round_trip(host: RunnerHost, where: str) -> None:
    ids = {ref: image_id(host, ref) for ref in ("mixed/base:1", "mixed/app:1")}
    assert all(ids.values()), f"{where}: test images not built: {ids}"
    saved = run_json(
        host, "runnerkeep cache save --json --key mixed mixed/base:1 mixed/app:1", where
    )
    assert saved["result"] == "saved", f"{where}: {saved}"
    host.exec("docker rmi -f mixed/app:1 mixed/base:1")
    assert not image_id(host, "mixed/app:1"), f"{where}: mixed/app:1 still present before restore"
    restored = run_json(host, "runnerkeep cache restore --json --key mixed", where)
    assert restored["result"] == "hit" and restored["loaded"] is True, f"{where}: {restored}"
    for ref, original in ids.items():
        assert image_id(host, ref) == original, f"{where}: {ref} restored with another ID"
    verify = run_json(host, "runnerkeep cache verify --json", where)
    assert verify["ok"] and verify["entries_checked"] >= 1, f"{where}: {verify}"
    missing = host.exec("runnerkeep cache restore --key never-saved", check=False)
    assert missing.returncode == 3, f"{where}: a miss exited {missing.returncode}"


def _job_round_trip(host: RunnerHost, where: str) -> None:
    """An unprivileged job saves and restores through the socket-activated cache service."""
    original = image_id(host, "mixed/job:1")
    saved = run_job(host, "save", "save", "--json", "--key", "job", "mixed/job:1")
    assert saved["register"].get("trusted") is True, f"{where}: {saved}"
    assert saved["rc"] == 0, f"{where}: job save exited {saved['rc']}: {saved['err']}"
    assert json.loads(saved["out"])["result"] == "saved", f"{where}: {saved['out']}"
    host.exec("docker rmi -f mixed/job:1")
    restored = run_job(host, "restore", "restore", "--json", "--key", "job")
    assert restored["rc"] == 0, f"{where}: job restore exited {restored['rc']}: {restored['err']}"
    assert json.loads(restored["out"])["loaded"] is True, f"{where}: {restored['out']}"
    assert image_id(host, "mixed/job:1") == original, f"{where}: job image restored wrong"


def _cleanup_stage(host: RunnerHost, where: str) -> int:
    """The post stage frees a dangling image and keeps the fresh images; returns bytes freed."""
    dangling = host.exec(DANGLING, timeout=300).stdout.split()[-1]
    assert dangling.startswith("sha256:") and image_id(host, dangling) == dangling, where
    report = run_json(host, "runnerkeep cleanup --stage post --all --json", where, timeout=600)
    cleaner = next(c for c in report["cleaners"] if c["name"] == "docker-dangling-images")
    short = dangling.split(":", 1)[1][:12]
    removed = [item for item in cleaner["items"] if short in item["path"]]
    assert removed and removed[0]["bytes"] >= 4 * MB, f"{where}: {cleaner}"
    assert report["bytes_freed"] >= 4 * MB, f"{where}: freed {report['bytes_freed']}"
    assert not image_id(host, dangling), f"{where}: the dangling image is still there"
    for ref in ("mixed/base:1", "mixed/app:1", "mixed/job:1", "mixed/dangle:1"):
        assert image_id(host, ref), f"{where}: the post stage removed the fresh image {ref}"
    # The nightly unit runs the same stage under its hardening.
    start_unit(host, "runnerkeep-cleanup.service", where)
    return int(cleaner["bytes_freed"])


def _watch_cycle(host: RunnerHost, where: str, freed: int) -> None:
    """The watch unit's cycle writes fresh metrics holding what the steps above did."""
    started = float(host.exec("date +%s.%N").stdout)
    start_unit(host, "runnerkeep-watch.service", where)
    text = host.exec(f"cat {METRICS}", check=False).stdout
    assert text, f"{where}: no metrics textfile at {METRICS}"
    m = metrics(text)
    stamp = m.get("runnerkeep_disk_watch_last_run_timestamp_seconds", 0)
    assert stamp >= started - 1, (
        f"{where}: metrics not rewritten by this cycle ({stamp} < {started})"
    )
    expected = {
        'runnerkeep_disk_state{state="ok"}': 1,
        "runnerkeep_docker_up": 1,
        "runnerkeep_disk_budget_up": 1,
        "runnerkeep_disk_watch_errors": 0,
    }
    wrong = {k: m.get(k) for k, v in expected.items() if m.get(k) != v}
    assert not wrong, f"{where}: metrics {wrong}, expected {expected}"
    assert m.get("runnerkeep_cache_saves_total", 0) >= 1, f"{where}: the save is not counted"
    assert m.get("runnerkeep_cache_hits_total", 0) >= 1, f"{where}: the restore is not counted"
    assert m.get("runnerkeep_cache_misses_total", 0) >= 1, f"{where}: the miss is not counted"
    dangling_freed = m.get('runnerkeep_cleanup_bytes_freed_total{cleaner="docker-dangling-images"}')
    assert dangling_freed is not None and dangling_freed >= freed, f"{where}: {dangling_freed}"
    cache_size = m.get('runnerkeep_disk_cache_size_bytes{kind="disk"}', 0)
    assert cache_size > 5 * MiB, f"{where}: cache size {cache_size} after two saves"


def test_role_platforms_are_exactly_the_mixed_fleet() -> None:
    """Each role's meta/main.yml claims the releases this file tests, no more, no fewer."""
    for meta in sorted(Path(REPO_ROOT, "roles").glob("*/meta/main.yml")):
        platforms = yaml.safe_load(meta.read_text())["galaxy_info"]["platforms"]
        assert platforms == [{"name": "Debian", "versions": list(RELEASES)}], (meta, platforms)


def test_debootstrap_mirror_is_the_one_apt_uses(tmp_path: Path) -> None:
    """The images bootstrap from the Debian archive this machine's apt names (deb822 or one-line
    sources), never from a security, third-party or disabled entry."""
    from harness.image import apt_mirror

    (tmp_path / "sources.list.d").mkdir()
    assert apt_mirror(tmp_path) is None
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] https://download.example/linux/debian bookworm stable\n"
    )
    (tmp_path / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\n# URIs: http://comment.example/debian\n"
        "URIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n"
    )
    assert apt_mirror(tmp_path) is None
    (tmp_path / "sources.list").write_text(
        "deb https://download.example/linux/debian bookworm stable\n"
        "deb http://plain.example/debian bookworm-updates main\n"
        "deb http://plain.example/debian bookworm main contrib\n"
    )
    assert apt_mirror(tmp_path) == "http://plain.example/debian"
    (tmp_path / "sources.list").write_text("")
    (tmp_path / "sources.list.d" / "b.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
