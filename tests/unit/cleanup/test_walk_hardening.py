"""The cleanup walker cannot leave its roots: ages re-checked at removal, honest hard links,
bounded descriptors with a checked climb through "..", mount IDs at every directory opened.

Each test runs on a real temp tree; mounts are simulated by giving chosen directories another
mount ID (the real bind mounts are in tests/integration/test_cleanup_hostile_walk.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cleanuptest_helpers import age_tree, make_file
from runnerkeep.cleanup import walk
from runnerkeep.cleanup.cleaners import FilesCleaner, RunContext

REPO = Path(__file__).resolve().parents[3]


def cleaner(root, **settings):
    base = {"roots": [str(root)], "patterns": ["*"], "min_age": "2d"}
    base.update(settings)
    return FilesCleaner("t", base, RunContext(config={}, section={}, stage="post"))


def tick():
    """Let the filesystem clock move past the plan's time (timestamps come from a coarse
    clock), so what the test writes next is unambiguously newer than the scan."""
    time.sleep(0.05)


def blocks(path):
    return os.lstat(path).st_blocks * 512


@pytest.fixture
def share_at_once(monkeypatch):
    monkeypatch.setattr(walk, "SHARE_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(walk, "SHARE_FRONTIER", 4)


# -- age is re-checked at removal ------------------------------------------------------------


def test_entries_written_after_the_plan_are_kept_with_their_parents(tmp_path):
    root = tmp_path / "jobs"
    job = root / "job1"
    for rel in ("a/b/old1", "a/b/old2", "a/old3", "x/old4", "x/old5", "c/old6"):
        make_file(str(job / rel), size=5000)
    age_tree(str(root), 10)
    c = cleaner(root)
    items = c.plan()
    assert [i.path for i in items] == [str(job)]

    tick()
    make_file(str(job / "a" / "b" / "new"), size=3000)  # a job writes into the old tree
    with open(job / "x" / "old4", "ab") as handle:  # and appends to an old file
        handle.write(b"more")
    outcome = c.remove(items[0])

    assert (job / "a" / "b" / "new").read_bytes() == b"x" * 3000
    assert (job / "x" / "old4").read_bytes() == b"x" * 5000 + b"more"
    assert not (job / "c").exists() and not (job / "x" / "old5").exists()
    assert not (job / "a" / "old3").exists()
    assert sorted(os.listdir(job)) == ["a", "x"]  # the directories holding them stay
    kept = dict(outcome.kept)
    assert kept[str(job / "x" / "old4")] == walk.CHANGED
    assert kept[str(job / "a" / "b")] == walk.CHANGED  # its listing changed: kept whole
    assert outcome.errors == []
    assert outcome.removed


def test_directory_filled_during_removal_is_kept_not_an_error(tmp_path, monkeypatch):
    root = tmp_path / "jobs"
    for rel in ("job1/c/old1", "job1/c/old2", "job1/d/old3"):
        make_file(str(root / rel))
    age_tree(str(root), 10)
    c = cleaner(root)
    (item,) = c.plan()

    def writer(path, names):
        # the listing of c is taken: a file appears that the walk will never see
        if path.endswith("/job1/c"):
            make_file(os.path.join(path, "late"), size=10)

    monkeypatch.setattr(walk, "_listing_hook", writer)
    outcome = c.remove(item)
    assert (root / "job1" / "c" / "late").exists()
    assert not (root / "job1" / "c" / "old1").exists() and not (root / "job1" / "d").exists()
    assert outcome.errors == []
    assert (str(root / "job1" / "c"), walk.NOT_EMPTY) in outcome.kept


# -- hard links --------------------------------------------------------------------------------


def hard_link_jobs(tmp_path):
    """job1 holds a big file with a second link in job2 (both removed) and a file whose other
    link is outside the roots (never freed)."""
    root = tmp_path / "jobs"
    outside = tmp_path / "outside"
    make_file(str(root / "job1" / "big"), size=2_000_000)
    make_file(str(root / "job1" / "small"), size=20_000)
    make_file(str(root / "job2" / "junk"), size=50_000)
    make_file(str(root / "job3" / "shared"), size=700_000)
    make_file(str(root / "job3" / "own"), size=30_000)
    os.link(root / "job1" / "big", root / "job2" / "big-again")
    outside.mkdir()
    os.link(root / "job3" / "shared", outside / "keep")
    age_tree(str(root), 10)
    return root, outside


def test_hard_links_are_counted_where_the_last_link_goes(tmp_path):
    root, outside = hard_link_jobs(tmp_path)
    dirs = sum(blocks(root / j) for j in ("job1", "job2", "job3"))
    files = sum(blocks(root / p) for p in ("job1/big", "job1/small", "job2/junk", "job3/own"))
    c = cleaner(root)
    items = c.plan()
    planned = sum(i.bytes for i in items)
    assert planned == dirs + files  # big once, the file linked from outside not at all
    assert sum(i.inodes for i in items) == 3 + 4

    outcomes = [c.remove(item) for item in items]
    freed = sum(o.bytes for o in outcomes)
    assert abs(freed - planned) <= planned // 100
    assert freed == dirs + files
    assert all(o.removed and not o.errors for o in outcomes)
    assert (outside / "keep").read_bytes() == b"x" * 700_000
    assert os.stat(outside / "keep").st_nlink == 1
    assert not root.joinpath("job3").exists()


def test_hard_linked_files_as_items_are_planned_and_counted_once(tmp_path):
    root = tmp_path / "logs"
    make_file(str(root / "a.log"), size=300_000)
    os.link(root / "a.log", root / "b.log")
    make_file(str(root / "c.log"), size=100_000)
    os.link(root / "c.log", tmp_path / "c-elsewhere")
    age_tree(str(root), 10)
    c = cleaner(root, patterns=["*.log"], files_only=True)
    items = c.plan()
    assert sorted(i.path for i in items) == [str(root / n) for n in ("a.log", "b.log", "c.log")]
    planned = sum(i.bytes for i in items)
    assert planned == blocks(root / "a.log")
    freed = sum(c.remove(i).bytes for i in items)
    assert freed == planned
    assert os.listdir(root) == [] and (tmp_path / "c-elsewhere").exists()


def test_removing_a_link_whose_inode_lives_on_frees_nothing(tmp_path):
    root, _outside = hard_link_jobs(tmp_path)
    fd = walk.open_root(str(root / "job3"))
    try:
        stats = walk.remove_entry(
            fd, "shared", str(root / "job3/shared"), walk.WalkOptions(dev=os.fstat(fd).st_dev)
        )
    finally:
        os.close(fd)
    assert (stats.bytes, stats.inodes, stats.removed) == (0, 0, 1)
    assert not (root / "job3" / "shared").exists()


def test_items_not_chosen_do_not_complete_a_hard_link(tmp_path):
    # The second link is in a job too young to be removed: the old job's link frees nothing.
    root = tmp_path / "jobs"
    make_file(str(root / "old" / "big"), size=1_000_000)
    age_tree(str(root / "old"), 10)
    (root / "young").mkdir()
    os.link(root / "old" / "big", root / "young" / "big")
    c = cleaner(root)
    items = c.plan()
    assert [i.path for i in items] == [str(root / "old")]
    assert items[0].bytes == blocks(root / "old")


@pytest.mark.parametrize("outside_link", [False, True])
def test_forked_sizing_merges_link_counts(tmp_path, share_at_once, outside_link):
    root = tmp_path / "tree"
    for g in range(8):
        (root / f"g{g}" / "sub").mkdir(parents=True)
    (root / "g0" / "sub" / "big").write_bytes(b"b" * 1_000_000)
    for g in range(1, 8):
        os.link(root / "g0" / "sub" / "big", root / f"g{g}" / "sub" / "big")
    if outside_link:
        os.link(root / "g0" / "sub" / "big", tmp_path / "outside-link")
    dir_bytes = sum(os.stat(p).st_blocks * 512 for p, _d, _f in os.walk(root))
    big = blocks(root / "g0" / "sub" / "big")
    for workers in (1, 3):
        opts = walk.WalkOptions(dev=os.stat(root).st_dev, workers=workers)
        stats = walk.size_tree(str(root), opts)
        assert stats.errors == []
        if outside_link:
            assert stats.bytes == dir_bytes and stats.inodes == 17
            assert list(stats.links.values()) == [[8, 9, big // 512]]
        else:
            assert stats.bytes == dir_bytes + big and stats.inodes == 18
            assert stats.links == {}


# -- bounded file descriptors ------------------------------------------------------------------

DEEP_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    from runnerkeep.cleanup import walk

    walk.SHARE_AFTER_SECONDS = 0.0
    walk.SHARE_FRONTIER = 4
    top, depth = sys.argv[1], int(sys.argv[2])
    os.mkdir(top)
    for branch in range(6):
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
        for level in range(depth if branch < 2 else 3):
            name = "d" if level else f"b{branch}"
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            if level % 7 == 0:
                for file_name, payload in (("f", b""), ("g", b"x" * 5000)):
                    ffd = os.open(file_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                    os.write(ffd, payload)
                    os.close(ffd)
        os.close(fd)
    # the systemd default; the walks below need far fewer, whatever the depth
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    alone = walk.size_tree(top, walk.WalkOptions(dev=os.stat(top).st_dev, workers=1))
    shared = walk.size_tree(top, walk.WalkOptions(dev=os.stat(top).st_dev, workers=3))
    parent, name = os.path.split(top)
    pfd = walk.open_root(parent)
    removed = walk.remove_entry(pfd, name, top, walk.WalkOptions(dev=os.fstat(pfd).st_dev))
    print(json.dumps({
        "sized": [alone.bytes, alone.inodes, len(alone.errors), alone.errors[:2]],
        "shared": [shared.bytes, shared.inodes, len(shared.errors), shared.errors[:2]],
        "removed": [removed.bytes, removed.inodes, len(removed.errors), removed.errors[:2]],
        "exists": os.path.lexists(top),
    }))
    """
)


def test_3000_deep_tree_is_sized_and_removed_under_1024_open_files(tmp_path):
    top = tmp_path / "deep"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", DEEP_SCRIPT, str(top), "3000"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "module_utils")},
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = json.loads(proc.stdout)
        assert result["sized"][2:] == [0, []]
        assert result["shared"] == result["sized"]  # forked helpers are bounded too
        assert result["removed"][2:] == [0, []]
        assert result["removed"][:2] == result["sized"][:2]  # the dry run predicted it
        assert result["sized"][1] == 1 + 2 * 3000 + 4 * 3 + 2 * 2 * 429 + 4 * 2
        assert not result["exists"]
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


def chain(root, depth, sibling_every=0):
    """root/d1/d2/.../d<depth> (distinct names so a path tells its depth); returns the paths."""
    paths = []
    here = root
    for level in range(1, depth + 1):
        here = here / f"d{level}"
        here.mkdir(parents=True)
        if sibling_every and level % sibling_every == 0:
            (here / "sib").write_bytes(b"s" * 100)
        paths.append(here)
    return paths


def test_descriptors_stay_within_the_window(tmp_path, monkeypatch):
    root = tmp_path / "root"
    chain(root / "t", 300)
    before = len(os.listdir("/proc/self/fd"))
    most = []

    def count(path, names):
        most.append(len(os.listdir("/proc/self/fd")) - before)

    monkeypatch.setattr(walk, "_listing_hook", count)
    sized = walk.size_tree(str(root / "t"), walk.WalkOptions(dev=os.stat(root).st_dev, workers=1))
    fd = walk.open_root(str(root))
    try:
        removed = walk.remove_entry(
            fd, "t", str(root / "t"), walk.WalkOptions(dev=os.fstat(fd).st_dev)
        )
    finally:
        os.close(fd)
    assert max(most) <= 64 + 4  # walk.FD_WINDOW and the few a walk step holds
    assert removed.errors == sized.errors == []
    assert (removed.bytes, removed.inodes) == (sized.bytes, sized.inodes)
    assert not (root / "t").exists()


@pytest.mark.parametrize("mode", ["remove", "size"])
def test_a_directory_moved_mid_walk_stops_the_climb(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(walk, "FD_WINDOW", 4, raising=False)
    root = tmp_path / "root"
    paths = chain(root / "t", 40, sibling_every=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("sib", "d11", "decoy"):  # what the walk would find in d10 if it went on here
        (outside / name).write_bytes(b"precious")
    d10, d11 = paths[9], paths[10]
    moved = []

    def move(path, names):
        # deep below d11, whose parent's descriptor is closed by now: d11 leaves for outside
        if path.endswith("/d30") and not moved:
            os.rename(d11, outside / "moved")
            moved.append(path)

    monkeypatch.setattr(walk, "_listing_hook", move)
    fd = walk.open_root(str(root))
    try:
        if mode == "remove":
            stats = walk.remove_entry(
                fd, "t", str(root / "t"), walk.WalkOptions(dev=os.fstat(fd).st_dev)
            )
        else:
            stats = walk.size_entry(
                fd, "t", str(root / "t"), walk.WalkOptions(dev=os.fstat(fd).st_dev, workers=1)
            )
    finally:
        os.close(fd)
    assert moved
    assert [m for p, m in stats.errors if p == str(d10)] == [
        "moved during the walk ('..' is not the directory it was); the rest was left alone"
    ]
    for name in ("sib", "d11", "decoy"):
        assert (outside / name).read_bytes() == b"precious"
    assert d10.is_dir()  # never continued by path: the climb stopped
    assert (root / "t").is_dir()


# -- mount boundaries are mount IDs ------------------------------------------------------------


@pytest.fixture
def fake_mount(monkeypatch):
    """Directories whose inode is in the returned set report another mount ID (a same-
    filesystem bind mount: same st_dev, other mount)."""
    inodes: set = set()
    real = getattr(walk, "_mount_id", None)

    def fake(fd):
        return 99999 if os.fstat(fd).st_ino in inodes else real(fd)

    monkeypatch.setattr(walk, "_mount_id", fake, raising=False)
    return inodes


def test_same_device_other_mount_is_never_entered(tmp_path, fake_mount, share_at_once):
    root = tmp_path / "jobs"
    for j in range(6):
        make_file(str(root / f"job{j}" / "w" / "f"), size=4000)
    make_file(str(root / "job2" / "w" / "mnt" / "sentinel"), size=4000)
    make_file(str(root / "mnt-top" / "sentinel"), size=4000)
    make_file(str(root / "job4" / "mnt-deep" / "x" / "sentinel"), size=4000)
    age_tree(str(root), 10)
    for rel in ("job2/w/mnt", "mnt-top", "job4/mnt-deep"):
        fake_mount.add(os.stat(root / rel).st_ino)

    # sizing alone, in one process and with forked helpers
    for workers in (1, 3):
        opts = walk.WalkOptions(dev=os.stat(root).st_dev, workers=workers)
        stats = walk.size_tree(str(root), opts)
        reasons = {p: r for p, r in stats.kept}
        assert reasons == {
            str(root / rel): walk.OTHER_MOUNT for rel in ("job2/w/mnt", "mnt-top", "job4/mnt-deep")
        }

    # matching (a pattern through the mount), planning and removal
    c = cleaner(root, patterns=["*", "job4/mnt-deep/x"])
    items = c.plan()
    assert str(root / "mnt-top") not in [i.path for i in items]
    assert (str(root / "job4/mnt-deep"), walk.OTHER_MOUNT) in c.kept
    outcomes = [c.remove(i) for i in items]
    kept = [k for o in outcomes for k in o.kept]
    assert (str(root / "job2/w/mnt"), walk.OTHER_MOUNT) in kept
    assert all(not o.errors for o in outcomes)
    for rel in ("job2/w/mnt", "mnt-top", "job4/mnt-deep/x"):
        assert (root / rel / "sentinel").read_bytes() == b"x" * 4000
    assert not (root / "job0").exists()


def test_item_parent_on_another_mount_is_kept(tmp_path, fake_mount):
    root = tmp_path / "jobs"
    make_file(str(root / "a" / "b" / "f.log"))
    age_tree(str(root), 10)
    c = cleaner(root, patterns=["a/b/*.log"])
    (item,) = c.plan()
    fake_mount.add(os.stat(root / "a").st_ino)  # mounted between plan and removal
    outcome = c.remove(item)
    assert (root / "a" / "b" / "f.log").exists()
    assert outcome.kept == [(str(root / "a/b/f.log"), walk.OTHER_MOUNT)]
    assert not outcome.removed
