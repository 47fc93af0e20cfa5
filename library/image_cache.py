#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: image_cache
short_description: Verified Docker image cache on a CI runner host (runnerkeep)
description:
  - >-
    Saves Docker images into a content-addressed, verified cache on the host, restores them into
    the daemon, verifies the store, prunes it, or removes a key.
  - >-
    A save is checked byte for byte before it is committed (layer digests, image set, docker's
    exit status, stream length); a restore re-checks every blob while feeding the daemon.
  - >-
    A restore that finds no usable entry is a miss (RV(hit=false)), not a failure, unless
    O(fail_on_miss=true). Corrupt entries and blobs are moved to the store's quarantine.
  - >-
    With a fleet tier (C(cache.remote) of the config, or O(remote)), a restore that misses
    locally or finds a corrupt blob pulls the key from the registry, every byte verified before
    the local commit, and restores it (RV(source=fleet), RV(repaired)); a save pushes after its
    local commit when C(push) is on (a failed push is a warning, not a failure); O(repair)
    pulls again the keys whose blobs were bad.
  - >-
    The same core as the C(runnerkeep cache) CLI; the on-disk format is in
    C(docs/cache-format.md).
version_added: "0.1.0"
author:
  - runnerkeep maintainers (@runnerkeep)
options:
  state:
    description:
      - V(saved) saves O(images) under O(key).
      - V(restored) loads the key's images into the daemon.
      - V(verified) re-hashes blobs and checks entries (all of them, or the O(key) given).
      - >-
        V(pruned) evicts least recently used entries (O(max_size), O(max_age)) and deletes
        unreferenced blobs.
      - V(absent) removes the key's entry; its blobs go at the next prune unless shared.
    type: str
    choices: [saved, restored, verified, pruned, absent]
    default: restored
  key:
    description:
      - Cache key (letters, digits, C(.), C(_), C(-); starting with a letter or digit; at most 128
        characters).
      - Required with O(state=saved), O(state=restored) and O(state=absent).
    type: str
  images:
    description:
      - Image references to save. Required with O(state=saved).
    type: list
    elements: str
  dir:
    description:
      - >-
        Cache directory. The default is E(RUNNERKEEP_CACHE_DIR), else C(paths.cache_dir) of the
        config file, else C(/var/cache/runnerkeep/images).
    type: path
    aliases: [cache_dir]
  config_file:
    description:
      - The runnerkeep config file (JSON); fragments in C(config.d/) beside it are merged.
      - The default is E(RUNNERKEEP_CONFIG), else C(/etc/runnerkeep/config.json).
    type: path
  reserve:
    description:
      - >-
        Free space to leave on each filesystem a save writes to, for example V(10G) or V(5%).
        The default is C(cache.reserve) of the config file.
    type: str
  make_room:
    description:
      - When a save finds too little space, run the post-build cleanup stage and check again.
    type: bool
    default: false
  max_size:
    description:
      - >-
        Store quota for O(state=pruned), for example V(50G). The default is C(cache.max_size) of
        the config file.
    type: str
  max_age:
    description:
      - >-
        With O(state=pruned), evict entries unused for this long, for example V(14d). The default
        is C(cache.max_age) of the config file.
    type: str
  repair:
    description:
      - With O(state=verified), move bad entries and blobs to the quarantine.
    type: bool
    default: false
  fail_on_miss:
    description:
      - Fail instead of returning RV(hit=false) when a restore misses.
    type: bool
    default: false
  remote:
    description:
      - >-
        The fleet tier, laid over C(cache.remote) of the config file key by key: C(url)
        (V(https://HOST[:PORT]/REPOSITORY); C(http://) only for a loopback registry or with
        C(allow_http)), C(credentials_file) (a file holding C(USER:PASSWORD), readable by the
        store's owner only; never the password itself), C(ca_file) (the registry's CA),
        C(push) (push after each save; default false), C(timeout) (seconds per network
        operation; default 30), C(max_duration) (how long a pull, push or prune may take as a
        whole; default 30m) and C(allow_http) (default false).
      - An unknown key or a bad value fails the task naming it.
    type: dict
  no_remote:
    description:
      - Leave the fleet tier out (the local store only), whatever the config says.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - >-
        Check mode changes nothing in any state (no store layout, lock file, temp cleanup,
        quarantine, docker load, tag or event) and reports what would be saved (RV(result=would_save)),
        loaded (RV(result=would_load)), pruned or removed; a store never written reads as empty.
      - >-
        With O(state=verified) and O(repair=true) the bad entries and blobs are reported and the
        task fails (as a real run does when no fleet tier repairs them), but nothing is moved
        to the quarantine or pulled.
      - >-
        With a fleet tier, check mode never writes to the registry and fetches nothing: a
        restore that misses locally asks the registry whether it holds the key
        (RV(result=would_pull)), a save reports in RV(push) the decision C(would_push) or why it
        would not push.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
    details:
      - No diff is returned; RV(result) and RV(report) say what changed or would change.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - >-
    O(reserve), O(max_size) and O(max_age) are checked like the C(cache) keys of the config
    file; a bad value fails the task naming the option.
  - Entries are signed with the key in C(cache.key_file) when the config sets one.
  - >-
    Root never works in the store as root: when the store belongs to another user (the
    C(runnerkeep.runner.image_cache) role gives it to the service user), the work runs in a
    child process that becomes that user (keeping the C(docker) group) and sends the result back.
requirements:
  - python >= 3.9 on the managed host
  - the docker CLI (or the local Docker Engine API socket) on the managed host
"""

EXAMPLES = r"""
- name: Restore the build images (a miss is not an error)
  runnerkeep.runner.image_cache:
    state: restored
    key: "build-{{ lockfile_hash }}"
  register: cache

- name: Build when the cache missed
  ansible.builtin.command: docker build -t app:ci .
  when: not cache.hit

- name: Save them
  runnerkeep.runner.image_cache:
    state: saved
    key: "build-{{ lockfile_hash }}"
    images: [app:ci, app-tests:ci]
  when: not cache.hit

- name: Restore through the fleet tier (a local miss or a corrupt blob is pulled)
  runnerkeep.runner.image_cache:
    state: restored
    key: "build-{{ lockfile_hash }}"
    remote:
      url: https://cache.example.internal:5000/runnerkeep/images
      credentials_file: /etc/runnerkeep/fleet-cache.credentials
      ca_file: /etc/runnerkeep/fleet-cache-ca.pem

- name: Save and push to the fleet tier
  runnerkeep.runner.image_cache:
    state: saved
    key: "build-{{ lockfile_hash }}"
    images: [app:ci]
    remote:
      push: true

- name: Weekly housekeeping
  runnerkeep.runner.image_cache:
    state: pruned
    max_size: 50G
    max_age: 14d
"""

RETURN = r"""
result:
  description:
    - What happened.
    - >-
      O(state=saved) gives V(saved), V(unchanged) or V(would_save); O(state=restored) V(hit),
      V(miss), V(would_load) or V(would_pull); O(state=verified) V(ok), V(repaired) (every bad
      key pulled again from the fleet tier) or V(bad); O(state=pruned) V(pruned);
      O(state=absent) V(absent).
  returned: success
  type: str
  sample: hit
cache_dir:
  description: The cache directory used.
  returned: always
  type: str
  sample: /var/cache/runnerkeep/images
hit:
  description: True when the key's images are in the daemon afterwards (or would be, in check mode).
  returned: O(state=restored)
  type: bool
  sample: true
loaded:
  description: Whether a load into the daemon ran (false when the images were already there).
  returned: O(state=restored)
  type: bool
  sample: false
loaded_via:
  description:
    - >-
      How the images were loaded: V(engine-api) (the archive written straight into the local
      Engine API socket) or V(docker-cli) (through C(docker load), used when a Docker context or
      a non-unix E(DOCKER_HOST) is set).
  returned: O(state=restored) and a load ran
  type: str
  sample: engine-api
bytes_loaded:
  description: Bytes sent to the daemon (in check mode, that would be).
  returned: O(state=restored) and not a miss
  type: int
  sample: 734003200
retagged:
  description: Tags put back on images that were present without them (empty in check mode).
  returned: O(state=restored), when the images were already in the daemon
  type: list
  elements: str
  sample: ["app:ci"]
key:
  description: The cache key.
  returned: O(state=saved), O(state=restored) unless a miss
  type: str
  sample: build-3f2a1b
entry_digest:
  description: The sha256 of the entry file (the commit point).
  returned: when the entry exists (not with RV(result=would_save) or a miss)
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
images:
  description:
    - >-
      The entry's images. With RV(result=would_save), the image IDs that would be saved
      (strings); otherwise one dict per image (C(id), C(tags), and for a save C(layers) and
      C(size)).
  returned: O(state=saved), O(state=restored) unless a miss
  type: list
  sample: [{"id": "sha256:0b1f6b4c1d3e", "tags": ["app:ci"]}]
bytes_written:
  description: Bytes of new blobs written to the store.
  returned: O(state=saved)
  type: int
  sample: 52428800
bytes_reused:
  description: Bytes of blobs already stored and shared.
  returned: O(state=saved)
  type: int
  sample: 681574400
space:
  description:
    - >-
      Per filesystem the save writes to, the free space check (C(path), C(mount_point),
      C(free_bytes), C(needed_bytes), C(detail), C(ok)).
  returned: O(state=saved), when a new entry is written or would be
  type: list
  elements: dict
would_make_room:
  description: Whether the real save would first run the post-build cleanup (O(make_room=true)).
  returned: O(state=saved) in check mode, when the entry would be saved
  type: bool
  sample: false
prune:
  description: The report of the prune to C(cache.max_size) that follows a save.
  returned: O(state=saved) and RV(result=saved)
  type: dict
duration:
  description: Seconds the operation took.
  returned: O(state=saved) or O(state=restored), except check mode predictions
  type: float
  sample: 1.532
dry_run:
  description: True when the result is a check mode prediction.
  returned: check mode, with O(state=saved), or with O(state=absent) when the key exists
  type: bool
  sample: true
bytes_freed:
  description: Bytes the prune deleted (in check mode, would delete).
  returned: O(state=pruned)
  type: int
  sample: 1073741824
report:
  description:
    - >-
      The full verify report (C(ok), C(bad_entries), C(bad_blobs), C(quarantined), ...) or prune
      report (C(evicted), C(blobs_deleted), C(bytes_freed), C(size_before), C(size_after), ...).
  returned: O(state=verified) or O(state=pruned)
  type: dict
source:
  description: V(fleet) when the restore pulled the key from the fleet tier first.
  returned: O(state=restored), when the key came from the fleet tier
  type: str
  sample: fleet
repaired:
  description:
    - >-
      With O(state=restored), true when the local entry or a blob was corrupt (quarantined)
      and the key was fetched again from the fleet tier. With O(state=verified) and
      O(repair=true), the keys pulled again (also in RV(report)).
  returned: O(state=restored) from the fleet tier, or O(state=verified) with a fleet tier
  type: raw
  sample: true
pulled:
  description: What the fleet tier sent (C(index_digest), C(blobs_fetched), C(bytes_fetched)).
  returned: O(state=restored), when the key came from the fleet tier
  type: dict
touched:
  description:
    - >-
      The key's use recorded on the registry after a restore from the fleet tier
      (C(result): V(touched), V(fresh) when recorded within the hour, V(not_runnerkeep), or
      V(touch_failed) with C(reason); a failure never fails the restore), so C(cache
      remote-prune) keeps what runners use.
  returned: O(state=restored) from the fleet tier, when C(remote.push) is on and the job is trusted
  type: dict
  sample: {"result": "touched", "used": "2026-12-03T13:00:00Z"}
not_retagged:
  description:
    - >-
      Tags of an entry pulled from the fleet tier that were not applied because the name
      already names another image on this engine.
  returned: O(state=restored)
  type: list
  elements: str
  sample: []
local_miss:
  description: Why the local store could not serve the key before the fleet tier did.
  returned: O(state=restored), when the fleet tier was asked
  type: str
  sample: "no cache entry for key 'build-3f2a1b'"
push:
  description:
    - >-
      The push after a save (C(pushed), C(decision): V(pushed), V(failed), V(refused) for an
      untrusted job, or V(would_push) in check mode; C(reason); C(index_digest) and
      C(bytes_sent) when pushed). A failed push is also a warning; the save stands.
  returned: O(state=saved) with a fleet tier whose C(push) is on
  type: dict
  sample: {"pushed": true, "decision": "pushed", "bytes_sent": 0}
exit_code:
  description: The exit code C(runnerkeep cache) gives for the same error (3 for a miss).
  returned: failed, when the core refused
  type: int
  sample: 3
busy:
  description:
    - >-
      True when the task failed because another process holds a lock it needs (the store's;
      RV(exit_code) is 7): a later run can succeed.
  returned: failed, when a lock is held
  type: bool
  sample: true
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.cache import (
        Store,
        access_settings,
        prune_store,
        remove_key,
        resolve_cache_dir,
        verify_store,
    )
    from ansible.module_utils.runnerkeep.cache.owner import drop_to_store_owner
    from ansible.module_utils.runnerkeep.config import state_dir_of
    from ansible.module_utils.runnerkeep.errors import CacheMiss
    from ansible.module_utils.runnerkeep.module_frame import (
        TaskFailed,
        in_child,
        load_task_config,
        module_options,
        run_module,
    )
    from ansible.module_utils.runnerkeep.schema import check_option
    from ansible.module_utils.runnerkeep.units import parse_duration, parse_size
    from ansible.module_utils.runnerkeep.cache.trust import direct_trust, provenance_from_env
    from ansible.module_utils.runnerkeep.wiring import (
        cache_settings,
        fleet_tier,
        make_room,
        repair_from_fleet,
        restore_with_remote,
        save_then_push,
    )

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by fail_json in main()
    IMPORT_ERROR = str(exc)

    def module_options(**own):
        """module_frame.module_options without the core: enough for main() to report it."""
        return dict(own, config_file=dict(type="path"))


def run(task):
    """The task's return values; raises TaskFailed or a core error when it fails."""
    params = task.params
    config = load_task_config(params)
    for name in ("reserve", "max_size", "max_age"):  # options that stand for cache.* keys
        if params[name]:
            check_option("cache", name, params[name], f"option {name}")
    cache_dir = resolve_cache_dir(params["dir"], config)
    # The entries' HMAC key (cache.key_file): a key this module ignored would let it accept
    # forged entries and write unsigned ones every later reader rejects.
    store = Store(cache_dir, key_file=access_settings(config)["key_file"])

    def work(child_task):
        return run_state(child_task, config, cache_dir, store)

    if not owned_by_another_user(cache_dir):
        return work(task)
    # Root acts in the store as its owner (runnerkeep), never as root: files it created there
    # would be ones the service and the maintenance timer cannot replace.
    return in_child(
        task,
        work,
        become=lambda: drop_to_store_owner(cache_dir),
        what="image cache failed",
        who=f"the process working as the owner of {cache_dir}",
    )


def owned_by_another_user(cache_dir):
    """Whether drop_to_store_owner would drop: root, and a store another user owns."""
    if os.geteuid() != 0:
        return False
    try:
        return os.stat(cache_dir).st_uid != 0
    except OSError:
        return False


def run_state(task, config, cache_dir, store):
    """The work of O(state), as the store's owner."""
    p = task.params
    # No state dir in check mode: a miss or a prune would otherwise be recorded as an event.
    state_dir = task.event_dir(state_dir_of(config))
    out = {"changed": False, "cache_dir": cache_dir}
    # The fleet tier's settings only; its credentials are read (as this user) when needed.
    fleet = fleet_tier(config, no_remote=p["no_remote"], overrides=p["remote"] or None)
    work = {
        "saved": saved,
        "restored": restored,
        "verified": verified,
        "pruned": pruned,
        "absent": absent,
    }[p["state"]]
    return work(task, config, store, state_dir, fleet, out)


def saved(task, config, store, state_dir, fleet, out):
    p = task.params
    settings = cache_settings(config)
    reserve = parse_size(p["reserve"], "reserve") if p["reserve"] else settings["reserve"]
    result = save_then_push(
        store,
        p["key"],
        p["images"],
        fleet,
        trust=direct_trust(os.environ, read_small_file),
        provenance=provenance_from_env(os.environ, socket.gethostname()),
        reserve=reserve,
        make_room=make_room(config),
        make_room_first=p["make_room"],
        max_size=settings["max_size"],
        state_dir=state_dir,
        dry_run=task.check_mode,
    )
    task.warn(result.get("warnings"))
    out.update(result)
    out["changed"] = result["result"] in ("saved", "would_save") or bool(
        (result.get("push") or {}).get("pushed")
    )
    return out


def read_small_file(path):
    """The CI event payload the trust decision reads (trust.direct_trust bounds its size)."""
    with open(path, "rb") as handle:
        return handle.read(16 * 1024 * 1024 + 1)


def restored(task, config, store, state_dir, fleet, out):
    p = task.params
    try:
        # A runner that may push records the key's use on the registry after a fleet restore.
        trust = direct_trust(os.environ, read_small_file) if fleet.enabled else None
        result = restore_with_remote(
            store, p["key"], fleet, state_dir=state_dir, dry_run=task.check_mode, trust=trust
        )
    except CacheMiss as exc:
        if p["fail_on_miss"]:
            raise TaskFailed(
                str(exc), **out, hit=False, result="miss", exit_code=exc.exit_code
            ) from None
        out.update(hit=False, result="miss", loaded=False, msg=str(exc))
        return out
    out.update(result)
    out["hit"] = True
    out["changed"] = bool(result.get("loaded") or result.get("retagged")) or (
        result["result"] in ("would_load", "would_pull")
    )
    return out


def verified(task, config, store, state_dir, fleet, out):
    p = task.params
    repair = p["repair"] and not task.check_mode
    report = verify_store(
        store,
        p["key"],
        workers=cache_settings(config)["verify_workers"],
        repair=repair,
    )
    if repair and fleet.enabled and not report["ok"]:
        repair_from_fleet(store, report, fleet, state_dir=state_dir)
        out["repaired"] = report["repaired"]
    whole = report["ok"] or bool(report.get("repaired_ok"))
    out.update(report=report, result="ok" if report["ok"] else "repaired" if whole else "bad")
    out["changed"] = bool(report["quarantined"] or report.get("stale_temps_removed"))
    if not whole:
        bad = [b["key"] for b in report["bad_entries"]] + [b["digest"] for b in report["bad_blobs"]]
        raise TaskFailed("cache verify found problems: " + ", ".join(bad), **out)
    return out


def pruned(task, config, store, state_dir, fleet, out):
    p = task.params
    settings = cache_settings(config)
    max_size = parse_size(p["max_size"], "max_size") if p["max_size"] else settings["max_size"]
    max_age = parse_duration(p["max_age"], "max_age") if p["max_age"] else settings["max_age"]
    report = prune_store(
        store,
        max_size=max_size,
        max_age=max_age,
        quarantine_retention=settings["quarantine_retention"],
        dry_run=task.check_mode,
        state_dir=state_dir,  # the same event the CLI's prune records
    )
    task.warn(report.get("warnings"))
    out.update(report=report, result="pruned", bytes_freed=report["bytes_freed"])
    out["changed"] = bool(report["evicted"] or report["blobs_deleted"])
    return out


def absent(task, config, store, state_dir, fleet, out):
    result = remove_key(store, task.params["key"], dry_run=task.check_mode)
    out.update(result="absent", changed=result["removed"])
    return out


def main():
    module = AnsibleModule(
        argument_spec=module_options(
            state=dict(
                type="str",
                default="restored",
                choices=["saved", "restored", "verified", "pruned", "absent"],
            ),
            key=dict(type="str", no_log=False),
            images=dict(type="list", elements="str"),
            dir=dict(type="path", aliases=["cache_dir"]),
            reserve=dict(type="str"),
            make_room=dict(type="bool", default=False),
            max_size=dict(type="str"),
            max_age=dict(type="str"),
            repair=dict(type="bool", default=False),
            fail_on_miss=dict(type="bool", default=False),
            remote=dict(type="dict"),
            no_remote=dict(type="bool", default=False),
        ),
        required_if=[
            ("state", "saved", ("key", "images")),
            ("state", "restored", ("key",)),
            ("state", "absent", ("key",)),
        ],
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=f"cannot import the runnerkeep core: {IMPORT_ERROR}")
    run_module(module, run, "image cache failed", defaults={"cache_dir": module.params["dir"]})


if __name__ == "__main__":
    main()
