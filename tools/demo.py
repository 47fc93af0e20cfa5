#!/usr/bin/env python3
"""The main job (`nox -s demo`): a 3-runner containerized fleet, provisioned and exercised.

1. start 3 runner containers (systemd + Docker + sshd, size-limited disks) and provision them;
2. runner 1, the verified cache: save, a fast restore, a corrupted entry rejected as a miss,
   a re-save, and a full restore into an empty daemon;
3. runner 2, staged cleanup: seed junk, dry run, then a post stage that stops at its target;
4. runner 3, disk budget with its arithmetic and one watch cycle's metrics;
5. a summary per host (disk report), then the fleet is torn down.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness.engine import ensure_engine  # noqa: E402
from harness.fleet import Fleet, RunnerHost  # noqa: E402
from harness.image import ensure_runner_image  # noqa: E402
from harness.provision import provision as run_provision  # noqa: E402

# Two images that share a base: base (2 layers) and app = base + 1 layer, built offline in the
# runner's own engine (FROM scratch, random files), so no registry is needed.
BUILD_IMAGES = r"""
set -e
rm -rf /tmp/demo-build && mkdir -p /tmp/demo-build/base /tmp/demo-build/app
cd /tmp/demo-build/base
head -c 24M /dev/urandom > tools.bin
head -c 8M /dev/urandom > libs.bin
printf 'FROM scratch\nCOPY tools.bin /opt/tools.bin\nCOPY libs.bin /opt/libs.bin\n' > Dockerfile
docker build -q -t demo/base:1 . >/dev/null
cd /tmp/demo-build/app
head -c 12M /dev/urandom > app.bin
printf 'FROM demo/base:1\nCOPY app.bin /srv/app.bin\n' > Dockerfile
docker build -q -t demo/app:1 . >/dev/null
rm -rf /tmp/demo-build
"""

# Junk a runner accumulates: old temp files, job leftovers, rotated logs, a dangling image.
SEED_JUNK = r"""
set -e
mkdir -p /tmp/old-job-1 /tmp/old-job-2 /var/log/demo
head -c 40M /dev/zero > /tmp/old-job-1/artifact.tar
head -c 30M /dev/zero > /tmp/old-job-2/coverage.dat
for i in $(seq 1 200); do echo junk > /tmp/old-job-2/f$i; done
head -c 10M /dev/zero > /var/log/demo/app.log.1
head -c 10M /dev/zero > /var/log/demo/app.log.2.gz
touch -d '20 days ago' /tmp/old-job-1 /tmp/old-job-1/*
touch -d '10 days ago' /tmp/old-job-2 /tmp/old-job-2/*
touch -d '10 days ago' /var/log/demo/app.log.1 /var/log/demo/app.log.2.gz
head -c 5M /dev/zero > /tmp/fresh-file-of-a-running-job
"""


def heading(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def rk(host: RunnerHost, args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the runnerkeep CLI on a host (the same command a CI job or timer runs)."""
    proc = host.exec(f"runnerkeep {args}", check=False, timeout=600)
    if check and proc.returncode != 0:
        raise SystemExit(
            f"demo: 'runnerkeep {args}' failed on {host.name} (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc


def rk_json(host: RunnerHost, args: str, check: bool = True) -> tuple[int, dict]:
    proc = rk(host, f"{args} --json", check=check)
    return proc.returncode, json.loads(proc.stdout or "{}")


def timed(host: RunnerHost, args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = rk(host, args, check=False)
    return proc, time.monotonic() - started


def provision(fleet: Fleet) -> None:
    heading("provision.yml on 3 runners")
    started = time.monotonic()
    result = run_provision(fleet, quiet=True)
    if result.returncode != 0:
        raise SystemExit(f"demo: provision.yml failed:\n{result.stdout}\n{result.stderr}")
    recap = result.stdout.split("PLAY RECAP", 1)[1].strip().splitlines()[1:]
    for line in recap:
        print("  " + re.sub(r"\s+", " ", line.strip()))
    print(f"  provisioned in {time.monotonic() - started:.0f}s")


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def demo_cache(host: RunnerHost) -> list[str]:
    heading(f"{host.name}: verified image cache")
    host.exec(BUILD_IMAGES, timeout=300)
    key = "demo-build"

    proc, took = timed(host, f"cache save --key {key} demo/base:1 demo/app:1")
    print(f"  save: exit {proc.returncode} in {took:.1f}s: {first_line(proc.stdout + proc.stderr)}")

    proc, took = timed(host, f"cache restore --key {key}")
    print(f"  restore with the images already in the daemon: exit {proc.returncode} in {took:.2f}s")
    fast_restore = took

    # Corrupt the largest blob in the store: a flipped byte, as a bad disk or a cut copy would.
    blob = host.exec(
        "find /var/cache/runnerkeep/images -type f -path '*blobs*' -printf '%s %p\\n' "
        "| sort -n | tail -1 | cut -d' ' -f2"
    ).stdout.strip()
    host.exec(
        f"python3 -c \"f=open('{blob}','r+b'); f.seek(1000); b=f.read(1); f.seek(1000); "
        f'f.write(bytes([b[0]^1])); f.close()"'
    )
    host.exec("docker rmi -f demo/app:1 demo/base:1 >/dev/null")
    proc, took = timed(host, f"cache restore --key {key}")
    verdict = "a miss, the job would rebuild" if proc.returncode == 3 else "UNEXPECTED"
    print(
        f"  restore after flipping one byte of {os.path.basename(blob)[:19]}...: "
        f"exit {proc.returncode} ({verdict})"
    )
    print(f"    {first_line(proc.stderr or proc.stdout)}")
    quarantined = host.exec(
        "find /var/cache/runnerkeep/images -path '*quarantine*' -type f | wc -l"
    ).stdout.strip()
    print(f"    files in quarantine: {quarantined}")

    # The job rebuilds and saves again; the next job restores into an empty daemon.
    host.exec(BUILD_IMAGES, timeout=300)
    proc, took = timed(host, f"cache save --key {key} demo/base:1 demo/app:1")
    print(f"  re-save after rebuild: exit {proc.returncode} in {took:.1f}s")
    host.exec("docker rmi -f demo/app:1 demo/base:1 >/dev/null")
    proc, took = timed(host, f"cache restore --key {key}")
    loaded = host.exec("docker image ls --format '{{.Repository}}:{{.Tag}}' | grep demo/ | sort")
    print(
        f"  restore into an empty daemon: exit {proc.returncode} in {took:.1f}s, "
        f"images: {', '.join(loaded.stdout.split())}"
    )
    proc = rk(host, "cache verify", check=False)
    print(f"  verify: exit {proc.returncode}: {first_line(proc.stdout + proc.stderr)}")
    listing = rk(host, "cache list").stdout
    print("  " + listing.strip().replace("\n", "\n  "))
    return [f"cache: fast restore {fast_restore:.2f}s, corrupt entry -> miss (exit 3)"]


def demo_cleanup(host: RunnerHost) -> list[str]:
    heading(f"{host.name}: staged cleanup")
    host.exec(SEED_JUNK)
    free = int(host.exec("df -B1 --output=avail /tmp | tail -1").stdout)
    # Ask for 35 MiB more than is free now: the oldest entry (40 MiB) meets it, so the stage
    # stops there and the younger old entry stays.
    target = free + 35 * 1024 * 1024
    code, dry = rk_json(host, f"cleanup --stage post --target-free {target} --path /tmp --dry-run")
    print(
        f"  dry run (target: {target // 2**20} MiB free on /tmp): exit {code}, "
        f"would free {dry.get('bytes_freed', 0) // 2**20} MiB"
    )
    proc = rk(host, f"cleanup --stage post --target-free {target} --path /tmp", check=False)
    print("  " + proc.stdout.strip().replace("\n", "\n  "))
    for path, why in (
        ("/tmp/old-job-1", "oldest, removed first"),
        ("/tmp/old-job-2", "old, but the target was met before it"),
        ("/tmp/fresh-file-of-a-running-job", "younger than the minimum age"),
    ):
        present = host.exec(f"test -e {path}", check=False).returncode == 0
        print(f"  {path}: {'kept' if present else 'removed'} ({why})")
    return [f"cleanup: post stage exit {proc.returncode}"]


def demo_disk(host: RunnerHost) -> list[str]:
    heading(f"{host.name}: one watch cycle")
    print("  " + rk(host, "disk watch").stdout.strip().replace("\n", "\n  "))
    metrics = host.exec("cat /var/lib/prometheus/node-exporter/runnerkeep_disk.prom").stdout
    shown = [line for line in metrics.splitlines() if line and not line.startswith("#")]
    print("  metrics (first 15 samples):")
    for line in shown[:15]:
        print("    " + line)
    return [f"watch: {len(shown)} metric samples written"]


def host_summary(host: RunnerHost) -> str:
    """The host's own disk report: filesystems, free bytes and inodes, Docker usage by kind."""
    proc = rk(host, "disk report --no-largest", check=False)
    body = (proc.stdout or proc.stderr).strip().replace("\n", "\n  ")
    return f"{host.name} (disk report, exit {proc.returncode}):\n  {body}"


def main() -> int:
    ensure_engine()
    ensure_runner_image()
    started = time.monotonic()
    heading("starting a 3-runner fleet")
    with Fleet.start(
        3, name="demo", docker_disk="2g", cache_disk="1g", extra_tmpfs={"/tmp": "512m"}
    ) as fleet:
        print(f"  {', '.join(h.name for h in fleet.hosts)} up in {time.monotonic() - started:.0f}s")
        provision(fleet)
        notes = {}
        notes[fleet.hosts[0].name] = demo_cache(fleet.hosts[0])
        notes[fleet.hosts[1].name] = demo_cleanup(fleet.hosts[1])
        notes[fleet.hosts[2].name] = demo_disk(fleet.hosts[2])
        heading("fleet summary")
        for host in fleet.hosts:
            print(host_summary(host))
            for note in notes.get(host.name, []):
                print(f"  {note}")
            print("  disk budget:")
            print("    " + rk(host, "disk budget").stdout.strip().replace("\n", "\n    "))
    print(f"\nfleet torn down; demo took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
