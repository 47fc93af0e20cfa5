# ruff: noqa: F811  (pytest fixtures imported from cache_fixtures)
"""The Ansible module image_cache against the host engine, in one playbook run (ansible-core
from the test environment; skipped when it is not installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from cache_fixtures import REPO, cache_images, image_id, rmi  # noqa: F401

pytestmark = pytest.mark.integration


def playbook(store: str, image: str, results: str) -> str:
    """The play as JSON (valid YAML): each step registers its result; all are written out."""
    base = {"dir": store}
    steps = [
        ("save_check", {"state": "saved", "key": "m", "images": [image]}, {"check_mode": True}),
        ("save", {"state": "saved", "key": "m", "images": [image]}, {}),
        ("save_again", {"state": "saved", "key": "m", "images": [image]}, {}),
        ("rmi", None, {}),
        ("restore_check", {"state": "restored", "key": "m"}, {"check_mode": True}),
        ("restore", {"state": "restored", "key": "m"}, {}),
        ("miss", {"state": "restored", "key": "nothing"}, {}),
        (
            "miss_fail",
            {"state": "restored", "key": "nothing", "fail_on_miss": True},
            {"ignore_errors": True},
        ),
        ("verify", {"state": "verified"}, {}),
        ("prune_check", {"state": "pruned", "max_size": "0"}, {"check_mode": True}),
        ("absent", {"state": "absent", "key": "m"}, {}),
        ("prune", {"state": "pruned"}, {}),
        ("bad_key", {"state": "saved", "key": "a/b", "images": ["x"]}, {"ignore_errors": True}),
    ]
    tasks = []
    for name, args, extra in steps:
        if args is None:
            tasks.append({"name": name, "command": f"docker rmi {image}", "changed_when": True})
            continue
        tasks.append({"name": name, "image_cache": {**base, **args}, "register": name, **extra})
    names = [n for n, a, _ in steps if a is not None]
    content = "{{ dict(" + ", ".join(f"{n}={n}" for n in names) + ") | to_json }}"
    tasks.append({"name": "results", "copy": {"dest": results, "content": content}})
    return json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}], indent=1)


def ansible_playbook() -> str:
    found = shutil.which("ansible-playbook") or os.path.join(
        os.path.dirname(sys.executable), "ansible-playbook"
    )
    if not os.path.exists(found):
        pytest.skip("ansible-core is not installed in this environment")
    return found


def test_module_states(cache_images, tmp_path):
    tags, ids = cache_images["tags"], cache_images["ids"]
    store = str(tmp_path / "store")
    results = tmp_path / "results.json"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"paths": {"state_dir": str(tmp_path / "state")}, "cache": {"reserve": "0"}})
    )
    play = tmp_path / "play.yml"
    play.write_text(playbook(store, tags["a"], str(results)))
    env = dict(os.environ)
    env.update(
        ANSIBLE_LIBRARY=os.path.join(REPO, "library"),
        ANSIBLE_MODULE_UTILS=os.path.join(REPO, "module_utils"),
        RUNNERKEEP_CONFIG=str(config),
    )
    cmd = [ansible_playbook(), "-i", "localhost,", "-c", "local", str(play)]
    cmd += ["-e", f"ansible_python_interpreter={sys.executable}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    finally:
        if image_id(tags["a"]) is None:  # put A back for the other tests
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "runnerkeep_cli",
                    "cache",
                    "restore",
                    "--dir",
                    store,
                    "--key",
                    "m",
                ],
                env={
                    **env,
                    "PYTHONPATH": os.path.join(REPO, "module_utils")
                    + os.pathsep
                    + os.path.join(REPO, "cli"),
                },
                capture_output=True,
            )
    r = json.loads(results.read_text())
    assert r["save_check"]["changed"] and r["save_check"]["result"] == "would_save"
    assert r["save"]["changed"] and r["save"]["bytes_written"] > 0
    assert r["save"]["entry_digest"].startswith("sha256:")
    assert not r["save_again"]["changed"] and r["save_again"]["result"] == "unchanged"
    assert r["restore_check"]["result"] == "would_load"
    assert r["restore"]["hit"] and r["restore"]["loaded"] and r["restore"]["changed"]
    assert image_id(tags["a"]) == ids["a"]
    assert r["miss"]["hit"] is False and not r["miss"].get("failed")
    assert r["miss_fail"]["failed"] and "no cache entry" in r["miss_fail"]["msg"]
    assert r["verify"]["report"]["ok"]
    assert r["prune_check"]["changed"] and r["prune_check"]["bytes_freed"] > 0
    assert r["absent"]["changed"]
    assert r["prune"]["changed"] and r["prune"]["bytes_freed"] > 0
    assert r["bad_key"]["failed"] and "invalid cache key" in r["bad_key"]["msg"]
