"""Files bind-mounted into a cleanup root, as root in a private mount namespace on tmpfs.

A *file* mount point has no directory descriptor to compare mount IDs on, and ``unlink`` of it
fails with EBUSY. The sentinel files bind-mounted into the root (from the same tmpfs, so the
same ``st_dev``, and from another tmpfs) must stay untouched; the dry run must list exactly what
the real run removes, neither may count the mounted bytes, and the real run must report the
mount points as kept ("other mount (mount point)"), not as errors. A file mounted after the
plan is kept too (EBUSY at ``unlink``). The whole run goes through the CLI, as a host runs it.

Each scenario runs as one child process under ``unshare -m --propagation private`` (its mounts
vanish with it) and prints what it saw as JSON.
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

REPO = Path(__file__).resolve().parents[2]
OTHER = "other mount (mount point)"

SCRIPT = textwrap.dedent(
    """
    import hashlib, io, json, os, subprocess, sys, time
    from contextlib import redirect_stdout
    from runnerkeep.cleanup import walk
    from runnerkeep_cli.main import main

    base = sys.argv[1]
    late = sys.argv[2] == "late"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", base], check=True)
    other = base + "/other"
    os.makedirs(other)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", other], check=True)

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)

    def digest(paths):
        out = {}
        for p in paths:
            with open(p, "rb") as handle:
                out[p] = hashlib.sha256(handle.read()).hexdigest()
        return out

    sentinels = [base + "/sentinel/f1", base + "/sentinel/big", other + "/far"]
    for i, s in enumerate(sentinels):
        write(s, os.urandom(300_000 * (i + 1)))
    root = base + "/root"
    targets = [root + "/fb", root + "/d1/fb2", root + "/d2/far", root + "/name with\\nnewline"]
    for t in targets:
        write(t, b"")
    write(root + "/plain", b"p" * 8192)
    write(root + "/d1/own", b"o" * 8192)
    pairs = list(zip([sentinels[0], sentinels[1], sentinels[2], sentinels[0]], targets))
    if not late:
        for src, dst in pairs:
            subprocess.run(["mount", "--bind", src, dst], check=True)
    before = digest(sentinels)
    config = {
        "paths": {k: base + "/" + k for k in ("state_dir", "cache_dir", "log_dir")},
        "cleanup": {
            "cleaners": {"t": {"kind": "files", "roots": [root], "patterns": ["*"],
                               "min_age": "0s", "stages": ["post"]}},
            "allowed_mount_points": [root],
        },
    }
    with open(base + "/config.json", "w") as handle:
        json.dump(config, handle)

    def cli(*args):
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["cleanup", "--stage", "post", "--all", "--cleaner", "t",
                         "--config", base + "/config.json", *args])
        return code, out.getvalue()

    code, text = cli("--dry-run", "--json")
    assert code == 0, text
    dry = json.loads(text)
    if late:  # mounted between the plan and the removal: unlink says EBUSY
        real_unlink = os.unlink
        mounted = []

        def unlink_after_mount(name, *a, **kw):
            if not mounted:
                for src, dst in pairs:
                    subprocess.run(["mount", "--bind", src, dst], check=True)
                mounted.append(True)
            return real_unlink(name, *a, **kw)

        os.unlink = unlink_after_mount
    code, text = cli("--json")
    assert code == 0, text
    real = json.loads(text)
    still = sorted(os.path.relpath(os.path.join(d, n), root)
                   for d, ds, fs in os.walk(root) for n in ds + fs)
    print(json.dumps({
        "before": before, "after": digest(sentinels), "root": root,
        "dry": dry, "real": real, "left": still,
    }))
    """
)


def run_in_namespace(tmp_path, *args):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs root, unshare(1) and mount(8)")
    base = tmp_path / "fs"
    base.mkdir()
    path = tmp_path / "scenario.py"
    path.write_text(SCRIPT)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(path), str(base), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'module_utils'}:{REPO / 'cli'}"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def _items(report):
    return sorted((i["path"], i["bytes"], i["inodes"]) for i in report["cleaners"][0]["items"])


def _kept(report):
    return {k["path"]: k["reason"] for k in report["cleaners"][0]["kept_items"]}


def test_bind_mounted_files_are_kept_and_the_dry_run_is_the_real_run(tmp_path):
    seen = run_in_namespace(tmp_path, "before")
    root = seen["root"]
    dry, real = seen["dry"], seen["real"]
    assert seen["after"] == seen["before"]  # the sentinel files are untouched
    mounted = [f"{root}/fb", f"{root}/d1/fb2", f"{root}/d2/far", f"{root}/name with\nnewline"]
    for report in (dry, real):
        kept = _kept(report)
        assert all(kept.get(path) == OTHER for path in mounted), kept
        assert report["errors"] == []
    # Only what is really removable is listed, sized alike: d1 loses "own" but stays (it
    # holds a mount), d2 holds nothing else and is no item at all.
    assert _items(dry) == _items(real)
    assert [(p, i) for p, _b, i in _items(dry)] == [(f"{root}/d1", 1), (f"{root}/plain", 1)]
    assert dry["bytes_freed"] < 100_000  # the mounted sentinels (1.8 MB) are never counted
    assert real["bytes_freed_claimed"] == dry["bytes_freed"]
    assert abs(real["bytes_freed"] - dry["bytes_freed"]) <= 0.01 * dry["bytes_freed"] + 4096
    assert sorted(seen["left"]) == sorted(
        ["d1", "d1/fb2", "d2", "d2/far", "fb", "name with\nnewline"]
    )


def test_files_mounted_after_the_plan_are_kept_not_errors(tmp_path):
    seen = run_in_namespace(tmp_path, "late")
    root = seen["root"]
    real = seen["real"]
    assert seen["after"] == seen["before"]
    assert real["errors"] == []  # EBUSY at unlink: kept, not an error
    kept = _kept(real)
    for path in (f"{root}/fb", f"{root}/d1/fb2", f"{root}/d2/far"):
        assert kept.get(path) == OTHER, kept
    assert "fb" in seen["left"] and "d1/fb2" in seen["left"]
    assert "plain" not in seen["left"] and "d1/own" not in seen["left"]
