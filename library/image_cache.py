#!/usr/bin/python
# Copyright: runnerkeep contributors
# Apache-2.0 (see LICENSE)

DOCUMENTATION = r"""
---
module: image_cache
short_description: Verified Docker image cache on a CI runner host (runnerkeep)
description:
  - Saves Docker images into a content-addressed, verified cache on the host, restores them into
    the daemon, verifies the store, prunes it, or removes a key.
  - A save is checked byte for byte before it is committed (layer digests, image set, docker's
    exit status, stream length); a restore re-checks every blob while feeding C(docker load).
  - A restore that finds no usable entry is a I(miss) (C(hit=false)), not a failure, unless
    O(fail_on_miss) is set. Corrupt entries and blobs are moved to the store's quarantine.
  - Same core as the C(runnerkeep cache) CLI; the on-disk format is in docs/cache-format.md.
version_added: "0.1.0"
author: runnerkeep maintainers
options:
  state:
    description:
      - V(saved) saves O(images) under O(key); V(restored) loads the key's images into the daemon;
        V(verified) re-hashes blobs and checks entries; V(pruned) evicts least recently used
        entries and deletes unreferenced blobs; V(absent) removes the key's entry.
    type: str
    choices: [saved, restored, verified, pruned, absent]
    default: restored
  key:
    description: Cache key (letters, digits, C(.), C(_), C(-); at most 128 characters).
    type: str
  images:
    description: Image references to save (O(state=saved)).
    type: list
    elements: str
  dir:
    description:
      - Cache directory. Default from E(RUNNERKEEP_CACHE_DIR), else C(paths.cache_dir) of the
        config file, else C(/var/cache/runnerkeep/images).
    type: path
    aliases: [cache_dir]
  config_file:
    description: runnerkeep config file (default C(/etc/runnerkeep/config.json)).
    type: path
  reserve:
    description: Free space to leave on each filesystem a save writes to (default C(cache.reserve)).
    type: str
  make_room:
    description: When space is short, run the post-build cleanup stage and check again.
    type: bool
    default: false
  max_size:
    description: Store quota for O(state=pruned) (default C(cache.max_size)), e.g. C(50G).
    type: str
  max_age:
    description: Evict entries unused for this long (O(state=pruned)), e.g. C(14d).
    type: str
  repair:
    description: With O(state=verified), move bad entries and blobs to the quarantine.
    type: bool
    default: false
  fail_on_miss:
    description: Fail instead of returning C(hit=false) when a restore misses.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details:
      - Check mode changes nothing in any state (no store layout, lock file, temp cleanup,
        quarantine, load, tag or event) and reports what would be saved, loaded, repaired,
        pruned or removed; a store never written reads as empty.
  diff_mode:
    support: none
notes:
  - Needs the docker CLI on the host; no Python package is required.
"""

EXAMPLES = r"""
- name: Restore the build images (a miss is not an error)
  image_cache:
    state: restored
    key: "build-{{ lockfile_hash }}"
  register: cache

- name: Build when the cache missed
  ansible.builtin.command: docker build -t app:ci .
  when: not cache.hit

- name: Save them
  image_cache:
    state: saved
    key: "build-{{ lockfile_hash }}"
    images: [app:ci, app-tests:ci]
  when: not cache.hit

- name: Weekly housekeeping
  image_cache:
    state: pruned
    max_size: 50G
    max_age: 14d
"""

RETURN = r"""
hit:
  description: For restored, true when the images are present in the daemon afterwards.
  returned: state=restored
  type: bool
result:
  description: What happened (saved, unchanged, would_save, hit, miss, would_load, ...).
  returned: always
  type: str
loaded:
  description: Whether a docker load ran (false on the fast path).
  returned: state=restored
  type: bool
loaded_via:
  description: >-
    How the images were loaded when a load ran: C(engine-api) (the archive written straight
    into the local Engine API socket) or C(docker-cli) (through C(docker load), used when a
    Docker context or a non-unix DOCKER_HOST is set).
  returned: state=restored and a load ran
  type: str
  sample: engine-api
bytes_written:
  description: Bytes of new blobs written to the store.
  returned: state=saved
  type: int
bytes_reused:
  description: Bytes of blobs already stored and shared.
  returned: state=saved
  type: int
bytes_freed:
  description: Bytes deleted by the prune.
  returned: state=pruned
  type: int
entry_digest:
  description: sha256 of the entry file (the commit point).
  returned: when an entry exists
  type: str
report:
  description: Full report of verify or prune.
  returned: state=verified or state=pruned
  type: dict
cache_dir:
  description: The cache directory used.
  returned: always
  type: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.runnerkeep.cache import (
        Store,
        cache_settings,
        prune_store,
        remove_key,
        resolve_cache_dir,
        restore_entry,
        save_entry,
        verify_store,
    )
    from ansible.module_utils.runnerkeep.cache.owner import drop_to_store_owner
    from ansible.module_utils.runnerkeep.config import load_config
    from ansible.module_utils.runnerkeep.errors import CacheMiss, RunnerkeepError
    from ansible.module_utils.runnerkeep.schema import check_option
    from ansible.module_utils.runnerkeep.units import parse_duration, parse_size

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - shown to the user by fail_json
    IMPORT_ERROR = str(exc)


def run(module):
    p = module.params
    config = load_config(p["config_file"])
    for name in ("reserve", "max_size", "max_age"):  # options that stand for cache.* keys
        if p[name]:
            check_option("cache", name, p[name], f"option {name}")
    cache_dir = resolve_cache_dir(p["dir"], config)
    # The entries' HMAC key (cache.key_file): a key this module ignored would let it accept
    # forged entries and write unsigned ones every later reader rejects.
    store_dir = Store(cache_dir, key_file=cache_settings(config)["key_file"])
    # Root acts in the store as its owner (runnerkeep), never as root: files it created there
    # would be ones the service and the maintenance timer cannot replace.
    drop_to_store_owner(cache_dir)
    state_dir = (config.get("paths") or {}).get("state_dir")
    check = module.check_mode
    state = p["state"]
    out = {"changed": False, "cache_dir": cache_dir}

    if state == "saved":
        settings = cache_settings(config)
        reserve = parse_size(p["reserve"], "reserve") if p["reserve"] else settings["reserve"]
        result = save_entry(
            store_dir,
            p["key"],
            p["images"],
            reserve=reserve,
            make_room_config=config,
            make_room_first=p["make_room"],
            max_size=settings["max_size"],
            state_dir=None if check else state_dir,
            dry_run=check,
        )
        _warn(module, result)
        out.update(result)
        out["changed"] = result["result"] in ("saved", "would_save")
    elif state == "restored":
        try:
            # No state_dir in check mode: a miss would otherwise be recorded as an event.
            result = restore_entry(
                store_dir, p["key"], state_dir=None if check else state_dir, dry_run=check
            )
        except CacheMiss as exc:
            if p["fail_on_miss"]:
                module.fail_json(
                    msg=str(exc), hit=False, result="miss", exit_code=exc.exit_code, **out
                )
            out.update(hit=False, result="miss", loaded=False, msg=str(exc))
            return out
        out.update(result)
        out["hit"] = True
        out["changed"] = bool(result.get("loaded") or result.get("retagged")) or (
            result["result"] == "would_load"
        )
    elif state == "verified":
        report = verify_store(
            store_dir,
            p["key"],
            workers=cache_settings(config)["verify_workers"],
            repair=p["repair"] and not check,
        )
        out.update(report=report, result="ok" if report["ok"] else "bad")
        out["changed"] = bool(report["quarantined"])
        if not report["ok"]:
            bad = [b["key"] for b in report["bad_entries"]] + [
                b["digest"] for b in report["bad_blobs"]
            ]
            module.fail_json(msg="cache verify found problems: " + ", ".join(bad), **out)
    elif state == "pruned":
        settings = cache_settings(config)
        max_size = parse_size(p["max_size"], "max_size") if p["max_size"] else settings["max_size"]
        max_age = parse_duration(p["max_age"], "max_age") if p["max_age"] else settings["max_age"]
        report = prune_store(
            store_dir,
            max_size=max_size,
            max_age=max_age,
            quarantine_retention=settings["quarantine_retention"],
            dry_run=check,
            state_dir=None if check else state_dir,  # the same event the CLI's prune records
        )
        _warn(module, report)
        out.update(report=report, result="pruned", bytes_freed=report["bytes_freed"])
        out["changed"] = bool(report["evicted"] or report["blobs_deleted"])
    elif state == "absent":
        result = remove_key(store_dir, p["key"], dry_run=check)
        out.update(result="absent", changed=result["removed"])
    return out


def _warn(module, report):
    for line in report.get("warnings") or []:
        module.warn(line)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(
                type="str",
                default="restored",
                choices=["saved", "restored", "verified", "pruned", "absent"],
            ),
            key=dict(type="str", no_log=False),
            images=dict(type="list", elements="str"),
            dir=dict(type="path", aliases=["cache_dir"]),
            config_file=dict(type="path"),
            reserve=dict(type="str"),
            make_room=dict(type="bool", default=False),
            max_size=dict(type="str"),
            max_age=dict(type="str"),
            repair=dict(type="bool", default=False),
            fail_on_miss=dict(type="bool", default=False),
        ),
        required_if=[
            ("state", "saved", ("key", "images")),
            ("state", "restored", ("key",)),
            ("state", "absent", ("key",)),
        ],
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="runnerkeep core (module_utils/runnerkeep) missing: " + IMPORT_ERROR)
    try:
        result = run(module)
    except RunnerkeepError as exc:
        module.fail_json(msg=str(exc), exit_code=exc.exit_code, cache_dir=module.params["dir"])
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        module.fail_json(
            msg=f"image cache: {exc.strerror or exc}{where}", cache_dir=module.params["dir"]
        )
    except (ValueError, TypeError, KeyError) as exc:
        # A core bug or input the core did not catch: one clear line, the trace for -vvv.
        module.fail_json(
            msg=f"image cache: unexpected {type(exc).__name__}: {exc}",
            exception=traceback.format_exc(),
            cache_dir=module.params["dir"],
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
