"""The fleet_cache role on a harness cache host, and runners pointed at it by image_cache.

One provisioned fleet (fleet_cache_fixtures.cache_fleet): rkfc-1 has the push user and the push
port, rkfc-2 the pull user and the pull port. Checked here:
- the registry answers over TLS with the role-made CA, which the runners trust through the role
  (and nothing else trusts);
- Distribution's htpasswd has no per-user rights, so the role's two instances are the rights: the
  pull user is unknown to the push instance (401), and the pull instance refuses every write
  (405, read-only); the push user can write;
- each runner's runnerkeep config names the registry (cache.remote) and the credentials file is
  root:runnerkeep 0640;
- a save on the pushing runner is restored on the pulling one (image ID unchanged);
- the garbage collection runs in a read-only window and sweeps what remote-prune left (the
  pruned index, its image manifests and its layers);
- the budget check reports an over-budget storage; check mode on the cache host changes nothing.
"""

from __future__ import annotations

import json
import re

import pytest
from fleet_cache_fixtures import build_image, image_id, new_key, runnerkeep_json
from harness.fleet_cache import (
    BLOBS_DIR,
    CA_FILE,
    CREDENTIALS_FILE,
    PULL_PORT,
    PUSH_PORT,
    REPOSITORY,
)

pytestmark = pytest.mark.integration

STORE = "/var/cache/runnerkeep/images"

# An HTTP request from a runner with Python's ssl (what runnerkeep uses): prints the status, or
# ERR and the exception's class.
PROBE = r"""
import base64, ssl, sys, urllib.error, urllib.request
url, method, cred, cafile = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=cafile or None)
req = urllib.request.Request(url, method=method)
if cred:
    req.add_header("Authorization", "Basic " + base64.b64encode(cred.encode()).decode())
try:
    with urllib.request.urlopen(req, context=ctx, timeout=10) as answer:
        print(answer.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception as exc:
    reason = getattr(exc, "reason", exc)
    print("ERR", type(reason).__name__)
"""


def probe(
    host, url: str, method: str = "GET", cred: tuple[str, str] | None = None, cafile: str = CA_FILE
) -> str:
    user = f"{cred[0]}:{cred[1]}" if cred else ""
    return host.exec(["python3", "-c", PROBE, url, method, user, cafile]).stdout.strip()


def base(tier, port: int) -> str:
    return f"https://{tier.cache_name}:{port}/v2/"


def test_runners_have_cache_remote_and_private_credentials(cache_fleet):
    tier = cache_fleet
    pusher, puller = tier.fleet.hosts
    for host, push, user in ((pusher, True, tier.push_user), (puller, False, tier.pull_user)):
        fragment = json.loads(host.exec("cat /etc/runnerkeep/config.d/20-cache.json").stdout)
        assert fragment["cache"]["remote"] == {
            "url": tier.url(push),
            "push": push,
            "timeout": 5.0,
            "ca_file": CA_FILE,
            "credentials_file": CREDENTIALS_FILE,
        }
        stat = host.exec(["stat", "-c", "%U %G %a", CREDENTIALS_FILE]).stdout.split()
        assert stat == ["root", "runnerkeep", "640"]
        assert host.exec(["cat", CREDENTIALS_FILE]).stdout == f"{user[0]}:{user[1]}\n"
    ca = tier.cache_exec("cat /etc/docker/registry/tls/ca.crt").stdout
    assert pusher.exec(["cat", CA_FILE]).stdout == ca


def test_the_cache_host_runs_two_instances_and_keeps_its_keys(cache_fleet):
    tier = cache_fleet
    for unit in ("fleet-cache-push", "fleet-cache-pull"):
        assert tier.cache_exec(f"systemctl is-active {unit}").stdout.strip() == "active"
    masked = tier.cache_exec("systemctl is-enabled docker-registry", check=False).stdout.strip()
    assert masked == "masked"  # the package's plain-HTTP unit stays off
    tls = "/etc/docker/registry/tls"
    assert tier.cache_exec(f"stat -c '%U %a' {tls}/ca.key").stdout.split() == ["root", "600"]
    key = tier.cache_exec(f"stat -c '%U %G %a' {tls}/server.key").stdout.split()
    assert key == ["root", "docker-registry", "640"]
    for name in ("push", "pull"):
        conf = tier.cache_exec(f"cat /etc/docker/registry/fleet-cache-{name}.yml").stdout
        assert re.search(r"readonly:\n\s+enabled: (\w+)", conf).group(1) == (
            "true" if name == "pull" else "false"
        )
        assert tier.push_user[1] not in conf and tier.pull_user[1] not in conf
    htpasswd = tier.cache_exec("cat /etc/docker/registry/fleet-cache-push.htpasswd").stdout
    assert htpasswd.startswith(f"{tier.push_user[0]}:$2y$")  # bcrypt
    assert tier.pull_user[0] not in htpasswd


def test_tls_with_the_role_made_ca(cache_fleet):
    tier = cache_fleet
    puller = tier.fleet.hosts[1]
    assert probe(puller, base(tier, PULL_PORT), cred=tier.pull_user) == "200"
    assert probe(puller, base(tier, PULL_PORT)) == "401"
    assert probe(puller, base(tier, PULL_PORT), cred=(tier.pull_user[0], "wrong")) == "401"
    # Without the role's CA the certificate is not trusted.
    answer = probe(puller, base(tier, PULL_PORT), cred=tier.pull_user, cafile="")
    assert answer.startswith("ERR SSL"), answer


def test_the_pull_user_cannot_push_and_the_push_user_can(cache_fleet):
    tier = cache_fleet
    host = tier.fleet.hosts[1]
    upload = f"/v2/{REPOSITORY}/blobs/uploads/"
    push_port = f"https://{tier.cache_name}:{PUSH_PORT}{upload}"
    pull_port = f"https://{tier.cache_name}:{PULL_PORT}{upload}"
    assert probe(host, push_port, "POST", tier.pull_user) == "401"  # unknown to the push instance
    assert probe(host, pull_port, "POST", tier.pull_user) == "405"  # read-only instance
    assert probe(host, pull_port, "POST", tier.push_user) == "405"  # whoever asks
    assert probe(host, push_port, "POST", tier.push_user) == "202"
    deleted = f"https://{tier.cache_name}:{PULL_PORT}/v2/{REPOSITORY}/manifests/sha256:{'0' * 64}"
    assert probe(host, deleted, "DELETE", tier.push_user) == "405"


def test_a_save_on_the_pusher_is_restored_on_the_puller(cache_fleet):
    tier = cache_fleet
    pusher, puller = tier.fleet.hosts
    key, tag = new_key("role"), "fleet/role-app:1"
    built = build_image(pusher, tag)
    code, saved = runnerkeep_json(pusher, "cache", "save", "--key", key, tag)
    assert code == 0, saved["_stderr"]
    assert saved["push"]["pushed"] is True, saved
    assert image_id(puller, tag) is None
    code, restored = runnerkeep_json(puller, "cache", "restore", "--key", key)
    assert code == 0, restored["_stderr"]
    assert restored["source"] == "fleet" and restored["loaded"] is True
    assert image_id(puller, tag) == built


def prune_and_collect(tier, name: str) -> dict:
    """Push an old and a newer key, remote-prune all but the newest key, run the collection
    (what the timer starts). Returns what the checks need."""
    pusher = tier.fleet.hosts[0]
    # Pushed within the same second, keys are ordered by name: the old one first.
    old_key, kept_key = new_key(f"{name}-a-old"), new_key(f"{name}-b-kept")
    old_tag, kept_tag = f"fleet/{name}-old:1", f"fleet/{name}-kept:1"
    build_image(pusher, old_tag, "1500K")
    build_image(pusher, kept_tag, "1200K")
    for key, tag in ((old_key, old_tag), (kept_key, kept_tag)):
        code, saved = runnerkeep_json(pusher, "cache", "save", "--key", key, tag)
        assert code == 0 and saved["push"]["pushed"] is True, saved
    old_blobs = layer_digests(pusher, old_key)
    assert all(in_registry(tier, d) for d in old_blobs)

    code, pruned = runnerkeep_json(
        pusher, "cache", "remote-prune", "--remote", tier.url(True), "--keep", "1"
    )
    # Other tests' keys are older: only the newest key stays.
    assert code == 0, pruned["_stderr"]
    deleted = {d["key"]: d["digest"] for d in pruned["deleted"]}
    assert old_key in deleted and kept_key not in deleted, pruned
    index = deleted[old_key].split(":", 1)[1]
    assert in_registry(tier, index)

    since = tier.cache_exec("date +%s").stdout.strip()
    tier.cache_exec("systemctl start fleet-cache-gc.service", timeout=300)
    journal = tier.cache_exec(
        f"journalctl -u fleet-cache-gc --since @{since} --no-pager -o cat"
    ).stdout
    return {
        "journal": journal,
        "index": index,
        "old_blobs": old_blobs,
        "kept_key": kept_key,
        "kept_tag": kept_tag,
    }


def test_gc_runs_in_a_read_only_window_and_sweeps_a_pruned_index(cache_fleet):
    tier = cache_fleet
    puller = tier.fleet.hosts[1]
    gc = prune_and_collect(tier, "gc")
    journal = gc["journal"]
    assert journal.index("push instance readonly") < journal.index("push instance readwrite")
    assert "blob eligible for deletion" in journal, journal[-2000:]
    assert not in_registry(tier, gc["index"]), journal[-2000:]  # the pruned index is swept
    assert tier.cache_exec("systemctl is-active fleet-cache-push").stdout.strip() == "active"
    assert tier.cache_exec("test -e /run/fleet-cache/push.env", check=False).returncode != 0

    # The kept key is whole: an empty daemon restores it from the fleet.
    puller.exec(["docker", "rmi", "-f", gc["kept_tag"]], check=False)
    code, restored = runnerkeep_json(puller, "cache", "restore", "--key", gc["kept_key"])
    assert code == 0 and restored["source"] == "fleet", restored
    # And the push instance takes writes again.
    upload = f"https://{tier.cache_name}:{PUSH_PORT}/v2/{REPOSITORY}/blobs/uploads/"
    assert probe(puller, upload, "POST", tier.push_user) == "202"


# The collection runs without --delete-untagged (in Distribution 2.8 it deletes the image
# manifests inside every index): a pruned key's layers go because remote-prune also deletes the
# image manifests only pruned indexes list.
def test_gc_sweeps_the_layers_of_a_pruned_key(cache_fleet):
    tier = cache_fleet
    gc = prune_and_collect(tier, "gcl")
    assert not any(in_registry(tier, d) for d in gc["old_blobs"]), gc["journal"][-2000:]


def test_the_budget_check_reports_an_over_budget_storage(cache_fleet):
    tier = cache_fleet
    metrics = "/var/lib/prometheus/node-exporter"
    tier.cache_exec(f"mkdir -p {metrics}")
    run = tier.cache_exec("systemctl start fleet-cache-budget.service", check=False, timeout=120)
    journal = tier.cache_exec("journalctl -u fleet-cache-budget --no-pager -o cat").stdout
    # The fixture's budget is 1 MiB: the tests' pushes are over it.
    assert run.returncode != 0, journal
    assert "over budget" in journal and "remote-prune" in journal
    prom = tier.cache_exec(f"cat {metrics}/fleet_cache.prom").stdout
    used = int(re.search(r"^runnerkeep_fleet_cache_storage_bytes (\d+)$", prom, re.M).group(1))
    assert used > 1024 * 1024
    assert re.search(r"^runnerkeep_fleet_cache_budget_bytes 1048576$", prom, re.M)
    assert tier.cache_exec("systemctl is-enabled fleet-cache-budget.timer").stdout.strip() == (
        "enabled"
    )


def test_check_mode_on_the_cache_host_changes_nothing(cache_fleet):
    tier = cache_fleet
    before = tier.cache_exec(
        "cd /etc/docker/registry && sha256sum *.yml *.htpasswd tls/server.crt tls/ca.crt"
    ).stdout
    result = tier.fleet.run_playbook(
        "playbooks/fleet_cache.yml", check=True, limit="cache_hosts", quiet=True
    )
    assert result.returncode == 0, result.stdout[-3000:]
    recap = re.search(rf"{tier.cache_name}\s+:.*", result.stdout).group(0)
    assert "changed=0" in recap and "failed=0" in recap, result.stdout[-3000:]
    after = tier.cache_exec(
        "cd /etc/docker/registry && sha256sum *.yml *.htpasswd tls/server.crt tls/ca.crt"
    ).stdout
    assert before == after


def layer_digests(host, key: str) -> list[str]:
    """The blobs (sha256 hex: configs and layers) of ``key``'s entry in ``host``'s local store."""
    entry = json.loads(host.exec(["cat", f"{STORE}/entries/{key}.json"]).stdout)
    digests = set()
    for image in entry["images"]:
        digests.add(image["config"]["digest"])
        digests.update(layer["digest"] for layer in image["layers"])
    return sorted(d.split(":", 1)[1] for d in digests)


def in_registry(tier, digest_hex: str) -> bool:
    path = f"{BLOBS_DIR}/{digest_hex[:2]}/{digest_hex}/data"
    return tier.cache_exec(["test", "-f", path], check=False).returncode == 0
