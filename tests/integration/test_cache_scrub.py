"""The nightly cache scrub on a provisioned runner (systemd as PID 1, the role's real units).

provision.yml installs the image_cache role's maintenance unit, which runs
``cache verify --max-duration ... --repair`` as the store's owner, then prune. After a save, the
blobs are dated 30 days back (never scrubbed, long overdue) and one layer is damaged in place;
starting the unit (what the nightly timer does) re-hashes them, quarantines the bad layer and its
entry (the quarantine log the fleet report counts), and leaves its state in the store, owned by
the service user.
"""

from __future__ import annotations

import json
import re

import pytest
from harness.provision import provision

pytestmark = pytest.mark.integration

UNIT = "runnerkeep-cache-maintenance"

# One image of two layers, built FROM scratch inside the runner's own engine (no registry).
BUILD = r"""
set -e
rm -rf /tmp/rk-scrub && mkdir -p /tmp/rk-scrub && cd /tmp/rk-scrub
head -c 2M /dev/urandom > a.bin && head -c 1M /dev/urandom > b.bin
printf 'FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n' > Dockerfile
docker build -q -t scrub/app:1 . >/dev/null
cd / && rm -rf /tmp/rk-scrub
"""

# Damage the biggest blob in place (its mtime kept, as rot would) and date every blob 30 days
# back. Prints the damaged blob's name.
DAMAGE = r"""
set -e
cd "$1/blobs/sha256"
big="$(ls -S | head -n 1)"
stamp="$(stat -c %y "$big")"
chmod u+w "$big"
printf 'rot' | dd of="$big" bs=1 seek=4096 conv=notrunc status=none
chmod 0444 "$big"
touch -d "$stamp" "$big"
find . -type f -exec touch -d '30 days ago' {} +
echo "$big"
"""


def test_the_nightly_scrub_finds_quarantines_and_counts_rot(make_fleet):
    fleet = make_fleet(1)
    result = provision(fleet)
    assert result.returncode == 0, result.stdout[-3000:]
    host = fleet.hosts[0]
    unit = host.exec(f"systemctl cat {UNIT}.service").stdout
    assert "--max-duration" in unit and "--repair" in unit
    store = re.search(r"cache verify --dir (\S+)", unit).group(1)
    assert "OnCalendar=daily" in host.exec(f"systemctl cat {UNIT}.timer").stdout

    host.exec(BUILD, timeout=300)
    saved = host.exec("runnerkeep cache save --key scrub-test scrub/app:1 --json", timeout=300)
    assert json.loads(saved.stdout)["result"] == "saved"
    bad = host.exec(["sh", "-c", DAMAGE, "damage", store]).stdout.strip()

    run = host.exec(f"systemctl start {UNIT}.service", check=False, timeout=600)
    journal = host.exec(f"journalctl -u {UNIT} --no-pager | tail -30", check=False).stdout
    assert run.returncode == 0, journal
    assert "scrubbed" in journal and f"BAD blob sha256:{bad}" in journal

    status = json.loads(host.exec(f"cat {store}/scrub-status.json").stdout)
    assert status["totals"]["corruptions"] == 1
    assert status["totals"]["blobs"] >= 2  # the config and the good layer at least
    owner = host.exec(f"stat -c %U {store}/scrub-state.json {store}/scrub-status.json").stdout
    assert set(owner.split()) == {"runnerkeep"}  # written as the store's owner, not root
    log = [
        json.loads(line)
        for line in host.exec(f"cat {store}/quarantine/log.jsonl").stdout.splitlines()
    ]
    assert {(r["what"], "(scrub)" in r["reason"]) for r in log} == {
        ("blob", True),
        ("entry", True),
    }
    restored = host.exec("runnerkeep cache restore --key scrub-test", check=False)
    assert restored.returncode == 3  # the damaged entry is gone: a miss, never a bad load
