"""The cleanup walker against a hostile host, as root in a private mount namespace on tmpfs.

- Same-filesystem bind mounts inside a root (same st_dev, another mount ID), present before
  the run and mounted in the middle of the walk: the sentinel trees they show are hashed
  before and after and must not change; the outcome says "other mount (mount point)".
- A writer process keeps creating files inside an old job directory while it is removed:
  every file it wrote after the scan must still be there.

Each scenario runs as one child process under ``unshare -m --propagation private`` (its
mounts vanish with it) and prints what it saw as JSON.
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

COMMON = textwrap.dedent(
    """
    import hashlib, json, os, subprocess, sys, time
    from runnerkeep.cleanup import walk
    from runnerkeep.cleanup.cleaners import FilesCleaner, RunContext

    base = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", base], check=True)
    DAY = 86400

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)

    def age(top, days):
        t = time.time() - days * DAY
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            for name in filenames + dirnames:
                os.utime(os.path.join(dirpath, name), (t, t), follow_symlinks=False)
        os.utime(top, (t, t))

    def tree_hash(top):
        digest = hashlib.sha256()
        for dirpath, dirnames, filenames in sorted(os.walk(top)):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    digest.update(path.encode() + b"\\0" + handle.read())
            digest.update(dirpath.encode())
        return digest.hexdigest()

    def cleaner(root, **settings):
        conf = {"roots": [root], "patterns": ["*"], "min_age": "2d", **settings}
        return FilesCleaner("t", conf, RunContext(config={}, section={}, stage="post"))
    """
)

BIND_SCRIPT = COMMON + textwrap.dedent(
    """
    jobs = base + "/jobs"
    sentinels = [base + "/sentinel", base + "/sentinel2"]
    for s in sentinels:
        for i in range(20):
            write(f"{s}/d{i % 4}/f{i}", os.urandom(3000))
        age(s, 30)
    for j in range(4):
        for i in range(10):
            write(f"{jobs}/job{j}/w/f{i}", b"j" * 2000)
    os.makedirs(jobs + "/job1/w/mnt")
    os.makedirs(jobs + "/job2/late")
    os.makedirs(jobs + "/mnt-top")
    age(jobs, 10)
    subprocess.run(["mount", "--bind", sentinels[0], jobs + "/job1/w/mnt"], check=True)
    subprocess.run(["mount", "--bind", sentinels[0], jobs + "/mnt-top"], check=True)
    same_dev = os.stat(jobs + "/mnt-top").st_dev == os.stat(jobs).st_dev
    before = [tree_hash(s) for s in sentinels]

    c = cleaner(jobs)
    items = c.plan()
    planned = {i.path: i.bytes for i in items}
    sized = walk.size_tree(jobs)

    def mount_mid_walk(path, names):
        # the listing of job2 is taken: its empty "late" becomes a mount before it is entered
        if path.endswith("/job2") and not os.path.ismount(path + "/late"):
            subprocess.run(["mount", "--bind", sentinels[1], path + "/late"], check=True)

    walk._listing_hook = mount_mid_walk
    outcomes = [c.remove(item) for item in items]
    walk._listing_hook = None
    print(json.dumps({
        "same_dev": same_dev,
        "before": before,
        "after": [tree_hash(s) for s in sentinels],
        "planned": planned,
        "plan_kept": c.kept,
        "sized_kept": sized.kept,
        "kept": [k for o in outcomes for k in o.kept],
        "errors": [e for o in outcomes for e in o.errors] + c.errors,
        "left": sorted(os.listdir(jobs)),
    }))
    """
)

WRITER = textwrap.dedent(
    """
    import os, sys, time
    job, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    deadline = time.monotonic() + 20
    n = 0
    with open(log, "a") as out:
        while not os.path.exists(stop) and time.monotonic() < deadline and n < 20000:
            n += 1
            # Mostly into the old subdirectories (their parents stay old, so the walk goes
            # through them while this writes), some straight into five old directories and
            # into new directories of its own.
            d = f"{job}/d{n % 40}/sub"
            if n % 5 == 0:
                d = f"{job}/d{n % 5}"
            elif n % 7 == 0:
                d = f"{job}/d{n % 40}/sub/new{n % 3}"
                try:
                    os.mkdir(d)
                except FileExistsError:
                    pass
                except OSError:
                    continue
            path = f"{d}/w{n}"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError:
                continue  # its directory was removed meanwhile: nothing written, nothing lost
            os.write(fd, path.encode())
            os.close(fd)
            out.write(path + "\\n")
            out.flush()
            time.sleep(0.0005)
    """
)

RACE_SCRIPT = COMMON + textwrap.dedent(
    """
    log, writer_py = sys.argv[2], sys.argv[3]
    jobs = base + "/jobs"
    job = jobs + "/job1"
    for d in range(40):
        for i in range(60):
            write(f"{job}/d{d}/f{i}", b"o" * 500)
            if i % 3 == 0:
                write(f"{job}/d{d}/sub/g{i}", b"o" * 500)
    age(jobs, 10)
    c = cleaner(jobs)
    (item,) = c.plan()
    time.sleep(0.05)  # a clock tick: everything written from now on is newer than the scan
    stop = base + "/stop"
    writer = subprocess.Popen([sys.executable, writer_py, job, log, stop])
    while not os.path.exists(log) or os.path.getsize(log) < 2000:
        time.sleep(0.01)  # the writer is under way
        if writer.poll() is not None:
            break

    def dawdle(path, names):
        time.sleep(0.005)  # stretch the removal so the writer runs through all of it

    def lines():
        with open(log) as handle:
            return len(handle.read().split())

    walk._listing_hook = dawdle
    at_start = lines()
    outcome = c.remove(item)
    walk._listing_hook = None
    written_during = lines() - at_start
    open(stop, "w").close()
    writer.wait(timeout=60)
    with open(log) as handle:
        written = handle.read().split()
    lost = []
    for path in written:
        try:
            with open(path, "rb") as handle:
                if handle.read() != path.encode():
                    lost.append(path)
        except OSError:
            lost.append(path)
    old_left = sum(
        1 for dirpath, _d, files in os.walk(job) for name in files if not name.startswith("w")
    )
    print(json.dumps({
        "written": len(written),
        "written_during": written_during,
        "lost": lost[:20],
        "lost_count": len(lost),
        "old_left": old_left,
        "old_total": 40 * 60 + 40 * 20,
        "errors": outcome.errors[:20],
        "kept_reasons": sorted({reason for _p, reason in outcome.kept}),
    }))
    """
)


def run_in_namespace(tmp_path, script, *args):
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs root, unshare(1) and mount(8)")
    base = tmp_path / "fs"
    base.mkdir()
    path = tmp_path / "scenario.py"
    path.write_text(script)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(path), str(base), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "module_utils")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_bind_mounts_inside_a_root_are_never_entered(tmp_path):
    seen = run_in_namespace(tmp_path, BIND_SCRIPT)
    assert seen["same_dev"]  # st_dev alone cannot tell these mounts apart
    assert seen["after"] == seen["before"]  # the sentinel trees are untouched
    other = "other mount (mount point)"
    jobs = str(tmp_path / "fs" / "jobs")
    assert [jobs + "/job1/w/mnt", other] in seen["sized_kept"]
    assert [jobs + "/mnt-top", other] in seen["sized_kept"]
    assert [jobs + "/mnt-top", other] in seen["plan_kept"]
    assert jobs + "/mnt-top" not in seen["planned"]  # a mount is never an item
    assert [jobs + "/job1/w/mnt", other] in seen["kept"]
    assert [jobs + "/job2/late", other] in seen["kept"]  # mounted in the middle of the walk
    assert seen["errors"] == []
    assert seen["left"] == ["job1", "job2", "mnt-top"]  # job0 and job3 are gone


def test_writer_racing_the_removal_loses_nothing(tmp_path):
    log = tmp_path / "written.log"
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    seen = run_in_namespace(tmp_path, RACE_SCRIPT, str(log), str(writer))
    assert seen["written_during"] >= 50  # the writer really ran during the removal
    assert seen["lost_count"] == 0, seen["lost"]
    assert seen["old_left"] < seen["old_total"] // 2  # and the old files did go
    assert seen["errors"] == []
    assert "changed after the scan" in seen["kept_reasons"]
