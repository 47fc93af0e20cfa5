"""Glob roots over system dirs and same-filesystem bind mounts as roots, for real (as root).

Everything runs in a child process in its own private mount namespace (``unshare -m
--propagation private``): the child mounts a tmpfs over ``/etc``, ``/usr/share``, ``/var/lib``,
``/opt`` and ``/home`` *inside that namespace only*, refuses to go on unless each one really is
a fresh tmpfs there, fills them with old files, and then runs real (not dry) cleanup stages
whose roots are written every hostile way. The real host directories are never visible to the
cleanup, and every mount vanishes with the child.
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

SHADOWED = ["/etc", "/usr/share", "/var/lib", "/opt", "/home"]

CHILD = textwrap.dedent(
    r"""
    import hashlib, json, os, subprocess, sys, time

    work, parent_ns, shadowed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if os.readlink("/proc/self/ns/mnt") == parent_ns:
        sys.exit("not in a private mount namespace: refusing to mount anything")

    def mount_tmpfs(path):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", path], check=True)

    def fstype(path):
        with open("/proc/self/mountinfo") as handle:
            for line in reversed(handle.read().splitlines()):
                fields = line.split()
                if fields[4] == path:
                    return fields[fields.index("-") + 1]
        return None

    for path in shadowed:
        mount_tmpfs(path)
        if fstype(path) != "tmpfs" or os.listdir(path):
            sys.exit(f"{path} is not a fresh tmpfs in this namespace: refusing to go on")
    mount_tmpfs(work)  # the throwaway tree: a bind mount in it is on the same filesystem

    old = time.time() - 90 * 86400

    def plant(path, data=b"precious"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.utime(path, (old, old))

    for rel in ("ssl/certs/ca.pem", "passwd", "deep/a/b/c.conf", "runnerkeep/config.json"):
        plant("/etc/" + rel)
    plant("/usr/share/doc/pkg/README")
    plant("/usr/share/dotnet/sdk/lib.dll", b"x" * 65536)
    plant("/var/lib/dpkg/status")
    plant("/var/lib/docker/volumes/v/_data/db")
    plant("/opt/tool/bin/tool")
    plant("/home/alice/notes.txt")
    plant(work + "/real/src/old.bin")
    os.makedirs(work + "/bound")
    subprocess.run(["mount", "--bind", work + "/real/src", work + "/bound"], check=True)
    os.symlink("/etc", work + "/etc-link")

    def sentinel():
        digest = {}
        for top in shadowed:
            for dirpath, dirnames, filenames in os.walk(top):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    with open(path, "rb") as handle:
                        digest[path] = hashlib.sha256(handle.read()).hexdigest()
        return digest

    before = sentinel()
    sys.path.insert(0, sys.argv[4])
    from runnerkeep.cleanup import run_cleanup

    def config(cleaners, **section):
        return {
            "paths": {
                "state_dir": work + "/state",
                "cache_dir": work + "/cache",
                "log_dir": work + "/logs",
            },
            "cleanup": {"cleaners": cleaners, **section},
        }

    hostile = [
        "/etc/*", "//etc", "/tmp/../etc", "/etc/", "//etc/*", "/etc/ssl", "/etc/deep/a",
        "/usr/share", "/usr/share/*", "/var/lib/*", "//var/lib/", "/var/lib/docker/volumes",
        "/opt", "/opt/*",
        "/home/*", "/home", work + "/etc-link", work + "/../" + os.path.basename(work)
        + "/etc-link/ssl",
    ]
    evil = {
        "kind": "files", "roots": hostile, "patterns": ["*"], "min_age": "0s",
        "stages": ["pre", "post", "emergency"],
    }
    toolchains = {"items": ["dotnet"], "stages": ["post"]}
    # Naming the shadowing mounts lets the catalog's /usr/share root in; it must not open
    # any system directory to the hostile cleaner.
    glob_config = config(
        {"evil": evil, "toolchains": toolchains}, allowed_mount_points=shadowed
    )
    glob_run = run_cleanup(
        "post", glob_config, run_all=True, cleaner_names=["evil", "toolchains"]
    ).as_dict()
    after = sentinel()

    bound = {
        "kind": "files", "roots": [work + "/bound"], "patterns": ["*"], "min_age": "0s",
        "stages": ["post"],
    }
    refused_run = run_cleanup(
        "post", config({"b": bound}), run_all=True, cleaner_names=["b"]
    ).as_dict()
    kept = os.path.exists(work + "/real/src/old.bin")
    named = config({"b": bound}, allowed_mount_points=[work + "/bound"])
    allowed_run = run_cleanup("post", named, run_all=True, cleaner_names=["b"]).as_dict()
    removed = not os.path.exists(work + "/real/src/old.bin")
    print(json.dumps({
        "glob_run": glob_run, "before": before, "after": after,
        "refused_run": refused_run, "kept_while_refused": kept,
        "allowed_run": allowed_run, "removed_once_named": removed,
        "bound_is_ismount": os.path.ismount(work + "/bound"),
    }))
    """
)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mount namespaces and tmpfs need root")
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    work = tmp_path_factory.mktemp("hostile-rails")
    proc = subprocess.run(
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
            json.dumps(SHADOWED),
            MODULE_UTILS,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_glob_roots_over_system_dirs_are_refused_and_nothing_there_changes(outcome):
    run = outcome["glob_run"]
    evil = next(c for c in run["cleaners"] if c["name"] == "evil")
    assert evil["items"] == [] and evil["items_removed"] == 0
    refused = {r["root"]: r["reason"] for r in evil["refused"]}
    for root in (
        "/etc",
        "/etc/ssl",
        "/etc/deep",
        "/etc/deep/a",
        "/etc/runnerkeep",
        "/usr/share",
        "/usr/share/doc",
        "/usr/share/dotnet",
        "/opt",
        "/var/lib/dpkg",
        "/var/lib/docker",
        "/var/lib/docker/volumes",
        "/var/lib",
        "/opt/tool",
        "/home",
        "/home/alice",
    ):
        assert root in refused, root
    links = [r for r in refused if r.endswith("etc-link") or r.endswith("etc-link/ssl")]
    assert len(links) == 2
    assert all(refused[r].startswith("resolves to /etc") for r in links)
    assert not any(r.startswith("//") for r in refused)
    # The catalog's dotnet went (a toolchain cleaner may name it); nothing else changed.
    expected = {p: h for p, h in outcome["before"].items() if not p.startswith("/usr/share/dotnet")}
    assert outcome["after"] == expected
    toolchains = next(c for c in run["cleaners"] if c["name"] == "toolchains")
    assert [i["path"] for i in toolchains["items"]] == ["/usr/share/dotnet"]


def test_same_filesystem_bind_mount_as_root_is_refused_unless_named(outcome):
    assert outcome["bound_is_ismount"] is False  # the device number cannot see it
    cleaner = outcome["refused_run"]["cleaners"][0]
    assert [r["reason"] for r in cleaner["refused"]] == [
        "is a mount point not named in cleanup.allowed_mount_points"
    ]
    assert outcome["kept_while_refused"]
    assert outcome["allowed_run"]["cleaners"][0]["refused"] == []
    assert outcome["removed_once_named"]
