"""Faults of the fleet cache tier on the harness network: the real registry (roles/fleet_cache)
on the cache host, the real CLI on provisioned runners (fleet_cache_fixtures.cache_fleet).

rkfc-1 pushes (push user, push port); rkfc-2 pulls (pull user, pull port). A test that needs
rkfc-2 to push, or wrong credentials, gives the CLI another config through $RUNNERKEEP_CONFIG (a
copy of the runner's config with its own cache.remote and credentials file).

The invariant in every fault: what a runner restores is either the key's exact image or a miss
(exit 3) naming why; nothing unverified is committed to the local store or loaded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager

import pytest
from fleet_cache_fixtures import build_image, image_id, new_key, runnerkeep_json
from harness.fleet import CACHE_HOST_STORAGE
from harness.fleet_cache import BLOBS_DIR, PULL_PORT, REPOSITORY_DIR

pytestmark = pytest.mark.integration

STORE = "/var/cache/runnerkeep/images"
# Beside the role's config: the CLI reads the credentials as the store's group, like the role's.
ALT = "/etc/runnerkeep-alt"


def entry_exists(host, key: str) -> bool:
    return host.exec(["test", "-e", f"{STORE}/entries/{key}.json"], check=False).returncode == 0


def drop_local(host, key: str, tag: str) -> None:
    """Forget ``key`` locally and the image in the daemon (an empty host for that key)."""
    host.exec(["rm", "-f", f"{STORE}/entries/{key}.json"])
    host.exec(["docker", "rmi", "-f", tag], check=False)


def saved_and_pushed(host, key: str, tag: str, sizes: str = "2M 1M") -> str:
    built = build_image(host, tag, sizes)
    code, saved = runnerkeep_json(host, "cache", "save", "--key", key, tag, timeout=600)
    assert code == 0 and saved["push"]["pushed"] is True, saved
    return built


def assert_miss(host, key: str, tag: str, code: int, report: dict, *words: str) -> None:
    text = json.dumps(report)
    assert code == 3, text
    for word in words:
        assert re.search(word, text, re.I), text
    assert "Traceback" not in text
    assert not entry_exists(host, key)  # nothing committed
    assert image_id(host, tag) is None  # nothing loaded


@contextmanager
def alt_config(host, url: str, user: str, password: str, push: bool):
    """$RUNNERKEEP_CONFIG for the runner's config with another cache.remote (credentials
    root:runnerkeep 0640, as the role writes them)."""
    host.exec(
        f"rm -rf {ALT} && mkdir -p {ALT}/config.d && cp /etc/runnerkeep/config.json {ALT}/ "
        f"&& cp /etc/runnerkeep/config.d/*.json {ALT}/config.d/"
    )
    fragment = json.loads(host.exec(f"cat {ALT}/config.d/20-cache.json").stdout)
    fragment["cache"]["remote"].update(url=url, push=push, credentials_file=f"{ALT}/credentials")
    host.exec(
        [
            "sh",
            "-c",
            f"umask 077; cat > {ALT}/credentials && chgrp runnerkeep {ALT}/credentials"
            f" && chmod 0640 {ALT}/credentials",
        ],
        input=f"{user}:{password}\n",
    )
    host.exec(["sh", "-c", f"cat > {ALT}/config.d/20-cache.json"], input=json.dumps(fragment))
    try:
        yield ["env", f"RUNNERKEEP_CONFIG={ALT}/config.json"]
    finally:
        host.exec(f"rm -rf {ALT}")


def run_json(host, prefix: list[str], *args: str, timeout: float = 300):
    proc = host.exec([*prefix, "runnerkeep", *args, "--json"], check=False, timeout=timeout)
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        report = {"_stdout": proc.stdout}
    report["_stderr"] = proc.stderr
    return proc.returncode, report


def test_two_runners_push_the_same_key_at_once(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("race"), "fleet/race:1"
    built = build_image(one, tag, "6M 3M")
    # The same image on the second runner: its archive, so both push the same blobs.
    archive = one.exec(["sh", "-c", f"docker save {tag} | base64 -w0"], timeout=120).stdout
    two.exec(["sh", "-c", "base64 -d | docker load -q"], input=archive, timeout=120)
    for host in (one, two):
        code, saved = runnerkeep_json(host, "cache", "save", "--no-remote", "--key", key, tag)
        assert code == 0, saved["_stderr"]
    with alt_config(two, tier.url(True), *tier.push_user, push=True) as env:
        results: dict[str, tuple[int, dict]] = {}

        def push(name, host, prefix):
            results[name] = run_json(host, prefix, "cache", "push", "--key", key)

        threads = [
            threading.Thread(target=push, args=("one", one, [])),
            threading.Thread(target=push, args=("two", two, env)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    for name, (code, report) in results.items():
        assert code == 0, (name, report)
    assert len(results) == 2
    # The key is whole in the registry: an empty daemon restores the exact image.
    drop_local(two, key, tag)
    code, restored = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert code == 0 and restored["source"] == "fleet", restored
    assert image_id(two, tag) == built


def upload_bytes(tier) -> int:
    """Bytes of the uploads in flight in the registry's storage."""
    proc = tier.cache_exec(f"du -sb {REPOSITORY_DIR}/_uploads 2>/dev/null | cut -f1", check=False)
    return int(proc.stdout.strip() or 0)


def test_the_registry_restarted_mid_push(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("cut-push"), "fleet/cut-push:1"
    built = build_image(one, tag, "48M 4M")
    code, saved = runnerkeep_json(one, "cache", "save", "--no-remote", "--key", key, tag)
    assert code == 0, saved["_stderr"]
    outcome: dict[str, tuple[int, dict]] = {}
    pusher = threading.Thread(
        target=lambda: outcome.update(first=runnerkeep_json(one, "cache", "push", "--key", key))
    )
    pusher.start()
    deadline = time.monotonic() + 120
    while upload_bytes(tier) < 1024 * 1024 and pusher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted_mid_push = pusher.is_alive() and upload_bytes(tier) > 0
    tier.cache_exec("systemctl restart fleet-cache-push")
    pusher.join(timeout=600)
    assert restarted_mid_push, "the push ended before the registry restarted"
    code, report = outcome["first"]
    if code != 0:  # the cut push failed cleanly, and the key is not half there
        assert "Traceback" not in json.dumps(report)
        drop_local(two, key, tag)
        code3, missed = runnerkeep_json(two, "cache", "restore", "--key", key)
        assert_miss(two, key, tag, code3, missed)
        code, report = runnerkeep_json(one, "cache", "push", "--key", key)  # the retry
    assert code == 0, report
    drop_local(two, key, tag)
    code, restored = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert code == 0 and restored["source"] == "fleet", restored
    assert image_id(two, tag) == built


def pulled_bytes(host) -> int:
    proc = host.exec(f"du -sb {STORE}/tmp 2>/dev/null | cut -f1", check=False)
    return int(proc.stdout.strip() or 0)


def test_the_registry_restarted_mid_pull(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("cut-pull"), "fleet/cut-pull:1"
    built = saved_and_pushed(one, key, tag, "64M 2M")
    drop_local(two, key, tag)
    outcome: dict[str, tuple[int, dict]] = {}
    puller = threading.Thread(
        target=lambda: outcome.update(first=runnerkeep_json(two, "cache", "restore", "--key", key))
    )
    puller.start()
    # Blob bytes arriving in the runner's temp area: the pull is under way.
    deadline = time.monotonic() + 120
    seen = False
    while puller.is_alive() and time.monotonic() < deadline:
        if pulled_bytes(two) > 1024 * 1024:
            seen = True
            break
        time.sleep(0.05)
    tier.cache_exec("systemctl restart fleet-cache-pull")
    puller.join(timeout=600)
    assert seen, "the pull ended before the registry restarted"
    code, report = outcome["first"]
    if code != 0:
        assert_miss(two, key, tag, code, report)
    else:  # the client came back after the restart: then the image is the exact one
        assert image_id(two, tag) == built
    drop_local(two, key, tag)
    code, restored = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert code == 0 and restored["source"] == "fleet", restored
    assert image_id(two, tag) == built


@contextmanager
def registry_disk_nearly_full(tier, room: int = 2 * 1024 * 1024):
    filler = f"{CACHE_HOST_STORAGE}/filler"
    avail = int(tier.cache_exec(f"df -B1 --output=avail {CACHE_HOST_STORAGE} | tail -1").stdout)
    tier.cache_exec(f"fallocate -l {max(avail - room, 0)} {filler}")
    try:
        yield
    finally:
        tier.cache_exec(f"rm -f {filler}")


def test_the_registry_disk_full(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("full"), "fleet/full:1"
    built = build_image(one, tag, "12M 1M")
    with registry_disk_nearly_full(tier):
        # A save with push on: the local save stands, the push fails with a warning.
        code, saved = runnerkeep_json(one, "cache", "save", "--key", key, tag, timeout=600)
        assert code == 0, saved
        assert saved["push"]["pushed"] is False, saved
        assert entry_exists(one, key)
        drop_local(two, key, tag)
        code, missed = runnerkeep_json(two, "cache", "restore", "--key", key)
        assert_miss(two, key, tag, code, missed)
    # Space back: the next push carries the key.
    code, pushed = runnerkeep_json(one, "cache", "push", "--key", key)
    assert code == 0, pushed
    code, restored = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert code == 0 and restored["source"] == "fleet", restored
    assert image_id(two, tag) == built


def test_a_blob_corrupted_in_the_registry_is_a_miss(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("rot"), "fleet/rot:1"
    saved_and_pushed(one, key, tag, "3M 1M")
    layers = re.findall(
        r"sha256:([0-9a-f]{64})", one.exec(f"cat {STORE}/entries/{key}.json").stdout
    )
    sizes = {
        d: int(tier.cache_exec(f"stat -c %s {BLOBS_DIR}/{d[:2]}/{d}/data", check=False).stdout or 0)
        for d in set(layers)
    }
    biggest = max(sizes, key=sizes.get)
    blob = f"{BLOBS_DIR}/{biggest[:2]}/{biggest}/data"
    # Same size, other bytes: only a digest check sees it.
    tier.cache_exec(f"printf 'rotten' | dd of={blob} bs=1 seek=4096 conv=notrunc status=none")
    drop_local(two, key, tag)
    code, report = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert_miss(two, key, tag, code, report, "digest|corrupt|verif")


def test_a_manifest_replaced_with_another_keys_is_a_miss(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, other = new_key("swap"), new_key("swap-other")
    saved_and_pushed(one, key, "fleet/swap:1", "1M")
    saved_and_pushed(one, other, "fleet/swap-other:1", "1M")
    tags = f"{REPOSITORY_DIR}/_manifests/tags"
    tier.cache_exec(f"cp {tags}/{other}/current/link {tags}/{key}/current/link")
    drop_local(two, key, "fleet/swap:1")
    two.exec(["docker", "rmi", "-f", "fleet/swap-other:1"], check=False)
    code, report = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert_miss(two, key, "fleet/swap:1", code, report, key)
    assert image_id(two, "fleet/swap-other:1") is None  # the other key's image not loaded either


def test_wrong_credentials_are_a_miss_without_the_password(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("creds"), "fleet/creds:1"
    saved_and_pushed(one, key, tag, "1M")
    drop_local(two, key, tag)
    bad = "Not-The-Password-42"
    with alt_config(two, tier.url(False), tier.pull_user[0], bad, push=False) as env:
        code, report = run_json(two, env, "cache", "restore", "--key", key)
    assert_miss(two, key, tag, code, report, "wrong credentials")
    text = json.dumps(report)
    assert bad not in text and tier.pull_user[1] not in text


def test_a_runner_without_push_rights_cannot_push(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("no-rights"), "fleet/no-rights:1"
    build_image(two, tag, "1M")
    # Its role config: pull port, push off. A save stays local and says it did not push.
    code, saved = runnerkeep_json(two, "cache", "save", "--key", key, tag)
    assert code == 0, saved
    assert not (saved.get("push") or {}).get("pushed"), saved
    # An explicit push through the read-only pull instance is refused.
    code, report = runnerkeep_json(two, "cache", "push", "--key", key)
    assert code != 0, report
    # Its pull user on the push port: not a user there.
    code, report = runnerkeep_json(two, "cache", "push", "--key", key, "--remote", tier.url(True))
    assert code != 0 and re.search("credentials|push rights", json.dumps(report)), report
    assert tier.pull_user[1] not in json.dumps(report)
    # Nothing of it reached the registry.
    code, report = runnerkeep_json(one, "cache", "pull", "--key", key)
    assert code == 3, report


def test_an_unreachable_registry_is_a_miss_within_the_timeout(cache_fleet):
    tier = cache_fleet
    one, two = tier.fleet.hosts
    key, tag = new_key("dark"), "fleet/dark:1"
    saved_and_pushed(one, key, tag, "1M")
    drop_local(two, key, tag)
    address = two.exec(["getent", "hosts", tier.cache_name]).stdout.split()[0]
    rule = ["OUTPUT", "-d", address, "-p", "tcp", "--dport", str(PULL_PORT), "-j", "DROP"]
    two.exec(["iptables", "-I", *rule])
    try:
        # Dropped packets: only the configured timeout (5 s per operation) ends the attempt; the
        # exec's own timeout bounds the test.
        code, report = runnerkeep_json(two, "cache", "restore", "--key", key, timeout=120)
    finally:
        two.exec(["iptables", "-D", *rule], check=False)
    assert_miss(two, key, tag, code, report, "within 5s")
    code, restored = runnerkeep_json(two, "cache", "restore", "--key", key)
    assert code == 0 and restored["source"] == "fleet", restored
