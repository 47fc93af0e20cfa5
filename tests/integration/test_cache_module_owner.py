# ruff: noqa: F811  (pytest fixtures imported from cache_fixtures)
"""The image_cache module run by root on a store another user owns, as on a provisioned host
(the image_cache role gives the store to the service user): the module works as that user and
still reports like any module (ansible-core reads its own code from the root-only AnsiballZ
payload when the module exits, which a process that dropped to the owner cannot)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest
from cache_fixtures import REPO, MiB, build_image, cache_images, image_id, rmi  # noqa: F401

pytestmark = pytest.mark.integration

OWNER = "nobody"  # any user but root: the module must drop to it, whatever it is
# The host's Python, as on a runner: one under /root (pyenv, this venv) cannot be read by the
# store's owner, so its standard library would fail the module after the drop.
HOST_PYTHON = "/usr/bin/python3"


def ansible_playbook() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    found = beside if os.path.exists(beside) else shutil.which("ansible-playbook")
    assert found, "ansible-playbook not found: install ansible-core in the test environment"
    return found


def playbook(store: str, config: str, image: str, results: str) -> str:
    base = {"dir": store, "config_file": config}
    steps = [
        ("save_check", {"state": "saved", "key": "o", "images": [image]}, {"check_mode": True}),
        ("save", {"state": "saved", "key": "o", "images": [image]}, {}),
        ("rmi", None, {}),
        ("restore", {"state": "restored", "key": "o"}, {}),
        ("miss_fail", {"state": "restored", "key": "none", "fail_on_miss": True}, {}),
        ("verify", {"state": "verified"}, {}),
        ("absent", {"state": "absent", "key": "o"}, {}),
        ("prune", {"state": "pruned"}, {}),
    ]
    tasks = []
    for name, args, extra in steps:
        if args is None:
            tasks.append({"name": name, "command": f"docker rmi {image}", "changed_when": True})
            continue
        task = {"name": name, "image_cache": {**base, **args}, "register": name}
        tasks.append({**task, "ignore_errors": True, **extra})
    names = [n for n, a, _ in steps if a is not None]
    content = "{{ dict(" + ", ".join(f"{n}={n}" for n in names) + ") | to_json }}"
    tasks.append({"name": "results", "copy": {"dest": results, "content": content}})
    return json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], indent=1)


@pytest.fixture
def owned_store():
    """A store the OWNER user owns, under a directory that user may enter."""
    if os.geteuid() != 0:
        pytest.fail("this test runs the module as root, as on a runner host")
    owner = pwd.getpwnam(OWNER)
    top = tempfile.mkdtemp(prefix="rk-owner-")
    try:
        os.chmod(top, 0o755)
        store = os.path.join(top, "store")
        os.mkdir(store, 0o755)
        os.chown(store, owner.pw_uid, owner.pw_gid)
        yield top, store, owner.pw_uid
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_store_owned_by_another_user_is_used_as_that_user(cache_images, owned_store):
    top, store, owner_uid = owned_store
    # A private image: the play removes it and loads it back from the store.
    tag = f"{cache_images['prefix']}/owner-{uuid.uuid4().hex[:8]}:1"
    built = build_image(tag, cache_images["tags"]["base"], [MiB], cache_images["work"])
    config = os.path.join(top, "config.json")
    with open(config, "w", encoding="utf-8") as handle:
        json.dump({"cache": {"reserve": "0"}}, handle)
    results = os.path.join(top, "results.json")
    play = os.path.join(top, "play.yml")
    with open(play, "w", encoding="utf-8") as handle:
        handle.write(playbook(store, config, tag, results))
    env = dict(os.environ)
    env.update(
        ANSIBLE_LIBRARY=os.path.join(REPO, "library"),
        ANSIBLE_MODULE_UTILS=os.path.join(REPO, "module_utils"),
    )
    env.pop("RUNNERKEEP_CACHE_DIR", None)
    cmd = [ansible_playbook(), "-i", "localhost,", "-c", "local", play]
    assert os.path.exists(HOST_PYTHON), f"{HOST_PYTHON} missing: the test needs the host's Python"
    cmd += ["-e", f"ansible_python_interpreter={HOST_PYTHON}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        restored = image_id(tag)
    finally:
        rmi(tag, built)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    with open(results, encoding="utf-8") as handle:
        r = json.load(handle)
    for name, result in r.items():
        assert "module_stderr" not in result, (name, result)
        assert "Traceback" not in json.dumps(result), (name, result)
    assert r["save_check"]["result"] == "would_save" and r["save_check"]["changed"]
    assert r["save"]["result"] == "saved" and r["save"]["bytes_written"] > 0
    assert r["restore"]["hit"] and r["restore"]["loaded"]
    assert restored == built
    assert r["miss_fail"]["failed"] and r["miss_fail"]["exit_code"] == 3
    assert r["miss_fail"]["msg"] and r["miss_fail"]["hit"] is False
    assert r["verify"]["report"]["ok"] and not r["verify"].get("failed")
    assert r["absent"]["changed"]
    assert r["prune"]["changed"] and r["prune"]["bytes_freed"] > 0
    # Everything the module made in the store is the owner's: root never wrote there.
    for dirpath, dirnames, filenames in os.walk(store):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            assert os.lstat(path).st_uid == owner_uid, path
