#!/usr/bin/env python3
"""The fleet cache tier's demo (issue 12): 3 runners and a cache host, one build serves them all.

1. start 3 runner containers and a cache host; provision the runners (provision.yml) and the
   registry (playbooks/fleet_cache.yml: TLS with the role-made CA, a push and a pull user);
   runner 1 gets the push user, runners 2 and 3 the pull user;
2. runner 1 builds an image and saves it: the save pushes it to the fleet tier;
3. runner 2, which never built it, restores the key from the fleet tier (image ID unchanged);
4. runner 3 restores it too, then a blob of its local copy rots: the next restore quarantines
   the bad blob, fetches it again by digest from the fleet and succeeds (`repaired`);
5. a summary, then the fleet is torn down.

    python3 tools/demo_fleet_cache.py [--keep]

Needs the Docker engine, ansible-core and dist/runnerkeep.pyz (python3 tools/build_zipapp.py).
Exit 0 when every step did what it says.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness.engine import ensure_engine  # noqa: E402
from harness.fleet import Fleet, RunnerHost  # noqa: E402
from harness.fleet_cache import FleetCache  # noqa: E402
from harness.image import ensure_runner_image  # noqa: E402

KEY = "demo-app-v1"
TAG = "demo/fleet-app:1"
STORE = "/var/cache/runnerkeep/images"

BUILD = r"""
set -e
rm -rf /tmp/demo-fleet && mkdir -p /tmp/demo-fleet && cd /tmp/demo-fleet
head -c 16M /dev/urandom > tools.bin
head -c 6M /dev/urandom > libs.bin
head -c 2M /dev/urandom > app.bin
printf 'FROM scratch\nCOPY tools.bin /opt/\nCOPY libs.bin /opt/\nCOPY app.bin /srv/\n' > Dockerfile
docker build -q -t demo/fleet-app:1 . >/dev/null
cd / && rm -rf /tmp/demo-fleet
"""

# Rot the biggest blob of the key's local copy in place (same size, other bytes).
ROT = r"""
set -e
cd "$1/blobs/sha256"
big="$(ls -S | head -n 1)"
chmod u+w "$big"
printf 'bit rot' | dd of="$big" bs=1 seek=4096 conv=notrunc status=none
chmod 0444 "$big"
echo "$big"
"""


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(host: RunnerHost, *args: str) -> tuple[int, dict[str, Any]]:
    proc = host.exec(["runnerkeep", *args, "--json"], check=False, timeout=600)
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        report = {}
    if proc.returncode != 0:
        print(f"   {host.name}: runnerkeep {' '.join(args)} -> exit {proc.returncode}")
        print("   " + (proc.stderr.strip() or proc.stdout.strip())[-800:])
    return proc.returncode, report


def image_id(host: RunnerHost) -> str:
    proc = host.exec(["docker", "image", "inspect", "--format", "{{.Id}}", TAG], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def run_demo(fleet: Fleet) -> list[tuple[str, bool, str]]:
    """The demo's steps on a started fleet; returns (what, ok, detail) per check."""
    results: list[tuple[str, bool, str]] = []
    one, two, three = fleet.hosts

    step("provision the runners and the fleet cache registry (TLS, push and pull users)")
    tier = FleetCache.for_fleet(fleet, push_hosts=[one.name], timeout=10)
    t0 = time.monotonic()
    played = tier.provision(quiet=True)
    results.append(
        (
            "provisioned (runners and the fleet cache registry)",
            played.returncode == 0,
            f"{time.monotonic() - t0:.0f}s",
        )
    )
    if played.returncode != 0:
        print(played.stdout[-4000:])
        return results
    print(f"   registry: {tier.url(True)} (push), {tier.url(False)} (pull)")

    step(f"{one.name}: build {TAG} and save it as {KEY} (the save pushes)")
    one.exec(BUILD, timeout=600)
    built = image_id(one)
    code, saved = cli(one, "cache", "save", "--key", KEY, TAG)
    push = saved.get("push") or {}
    results.append(
        (
            f"{one.name} saved and pushed",
            code == 0 and push.get("pushed") is True,
            f"{push.get('blobs_sent', '?')} blobs, {push.get('bytes_sent', 0) / 2**20:.1f} MiB",
        )
    )

    step(f"{two.name}: restore {KEY} (never built here: from the fleet tier)")
    code, restored = cli(two, "cache", "restore", "--key", KEY)
    results.append(
        (
            f"{two.name} restored from the fleet",
            code == 0 and restored.get("source") == "fleet" and image_id(two) == built,
            f"image {image_id(two)[:19]}",
        )
    )

    step(f"{three.name}: restore {KEY}, rot a local blob, restore again (repair from the fleet)")
    code, first = cli(three, "cache", "restore", "--key", KEY)
    results.append(
        (
            f"{three.name} restored from the fleet",
            code == 0 and first.get("source") == "fleet",
            f"image {image_id(three)[:19]}",
        )
    )
    bad = three.exec(["sh", "-c", ROT, "rot", STORE]).stdout.strip()
    print(f"   rotted blob sha256:{bad[:16]}... in {three.name}'s store")
    three.exec(["docker", "rmi", "-f", TAG], check=False)
    code, repaired = cli(three, "cache", "restore", "--key", KEY)
    results.append(
        (
            f"{three.name} repaired from the fleet",
            code == 0 and bool(repaired.get("repaired")) and image_id(three) == built,
            f"repaired {repaired.get('repaired')}",
        )
    )
    code, _ = cli(three, "cache", "verify")
    results.append((f"{three.name} store verifies clean", code == 0, "cache verify"))
    return results


def summary(results: list[tuple[str, bool, str]]) -> bool:
    step("summary")
    for what, ok, detail in results:
        print(f"   [{'ok' if ok else 'FAIL'}] {what}: {detail}")
    return all(ok for _, ok, _ in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the fleet running")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    ensure_engine()
    image = ensure_runner_image()
    fleet = Fleet.start(3, name="rkdemo", image=image, cache_host=True, keep=args.keep)
    try:
        results = run_demo(fleet)
    finally:
        if args.keep:
            print(f"\n--keep: fleet {fleet.fleet_id} left running ({fleet.inventory})")
        else:
            fleet.stop()
    ok = summary(results)
    print(f"\nfleet cache demo {'passed' if ok else 'FAILED'} in {time.monotonic() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
