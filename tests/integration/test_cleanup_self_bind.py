"""A cleaner root bind-mounted onto itself is cleaned; a root bind-mounted from elsewhere is not.

systemd bind-mounts every ``ReadWritePaths=`` entry of a unit with ``ProtectSystem=strict`` onto
itself, so in the hardened nightly cleanup, watch and admission units each plain cleaner root is
such a mount point. The rails refused them all ("a mount point not named in
cleanup.allowed_mount_points"), so those units freed nothing from file cleaners. A self bind
mount brings nothing from elsewhere into the tree; a bind mount of another directory does, and
stays refused.

Everything runs in a child process in its own private mount namespace (``unshare -m
--propagation private``) on a throwaway tmpfs; every mount vanishes with the child.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

MODULE_UTILS = str(Path(__file__).resolve().parents[2] / "module_utils")

CHILD = textwrap.dedent(
    r"""
    import json, os, subprocess, sys, time

    work, parent_ns = sys.argv[1], sys.argv[2]
    if os.readlink("/proc/self/ns/mnt") == parent_ns:
        sys.exit("not in a private mount namespace: refusing to mount anything")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", work], check=True)
    from runnerkeep.cleanup import run_cleanup

    old = time.time() - 30 * 86400

    def plant(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"x" * 8192)
        os.utime(path, (old, old))

    def bind(source, target):
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", source, target], check=True)

    def clean(root):
        cleaner = {"kind": "files", "roots": [root], "patterns": ["*"], "min_age": "1d",
                   "stages": ["post"]}
        config = {"paths": {"state_dir": work + "/state", "cache_dir": work + "/cache",
                            "log_dir": work + "/log"},
                  "cleanup": {"cleaners": {"c": cleaner}}}
        return run_cleanup("post", config, run_all=True, cleaner_names=["c"]).as_dict()

    # What systemd does for ReadWritePaths=WORK/self: the directory onto itself.
    plant(work + "/self/old.bin")
    bind(work + "/self", work + "/self")
    self_run = clean(work + "/self")

    # A host's bind mount of another directory (precious data) at a cleaner root.
    plant(work + "/precious/keep.bin")
    bind(work + "/precious", work + "/foreign")
    foreign_run = clean(work + "/foreign")

    # Another directory bound onto itself first, then shown elsewhere: still foreign there.
    plant(work + "/other/keep.bin")
    bind(work + "/other", work + "/other")
    bind(work + "/other", work + "/elsewhere")
    elsewhere_run = clean(work + "/elsewhere")

    print(json.dumps({
        "self_run": self_run,
        "self_left": os.listdir(work + "/self"),
        "foreign_run": foreign_run,
        "precious_left": os.listdir(work + "/precious"),
        "elsewhere_run": elsewhere_run,
        "other_left": os.listdir(work + "/other"),
    }))
    """
)


def _refusals(run: dict) -> str:
    return json.dumps(run.get("refused") or run.get("notes") or run)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
def test_self_bind_root_is_cleaned_and_foreign_bind_root_is_not(tmp_path):
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is missing; the harness installs it")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": MODULE_UTILS, "RUNNERKEEP_RUN_DIR": str(tmp_path / "run")}
    done = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            CHILD,
            str(work),
            os.readlink("/proc/self/ns/mnt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["self_left"] == [], _refusals(result["self_run"])
    assert result["self_run"]["items_removed"] == 1
    assert result["precious_left"] == ["keep.bin"]
    assert result["foreign_run"]["items_removed"] == 0
    assert "mount point" in json.dumps(result["foreign_run"])
    assert result["other_left"] == ["keep.bin"]
    assert result["elsewhere_run"]["items_removed"] == 0
