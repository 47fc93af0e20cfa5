"""Sizing a big tree with forked helpers gives exactly the figures of a one-process walk.

The helpers are real forked processes; sharing is forced on small trees by setting the
start delay to zero and the frontier size low.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from runnerkeep.cleanup import walk


@pytest.fixture
def share_at_once(monkeypatch):
    monkeypatch.setattr(walk, "SHARE_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(walk, "SHARE_FRONTIER", 4)


def record_helpers(monkeypatch, log):
    """Each helper appends its pid to ``log`` (a file: helpers are other processes)."""

    def hook():
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    monkeypatch.setattr(walk, "_helper_hook", hook)


def build_tree(root, groups=6, dirs=5, files=12):
    """Uneven subtrees, hard links across them, symlinks, a FIFO, a protected file."""
    for g in range(groups):
        for d in range(dirs + g):
            leaf = root / f"g{g}" / f"d{d}" / "leaf"
            leaf.mkdir(parents=True)
            for f in range(files):
                (leaf / f"f{f}").write_bytes(b"x" * (f * 700 + g))
    os.link(root / "g0/d0/leaf/f3", root / "g5/d1/leaf/hard")
    os.link(root / "g0/d0/leaf/f3", root / "g3/d2/hard2")
    os.symlink("/etc", root / "g2" / "link-to-etc")
    os.mkfifo(root / "g4" / "fifo")
    (root / "g1" / "protected").write_bytes(b"p" * 9000)
    st = os.stat(root / "g1" / "protected")
    return frozenset({(st.st_dev, st.st_ino)})


def size(root, workers, protected=frozenset()):
    opts = walk.WalkOptions(dev=os.stat(root).st_dev, workers=workers, protected=protected)
    return walk.size_tree(str(root), opts)


def test_shared_walk_matches_one_process_and_du(tmp_path, share_at_once, monkeypatch):
    root = tmp_path / "tree"
    protected = build_tree(root)
    log = tmp_path / "helpers.log"
    record_helpers(monkeypatch, log)

    alone = size(root, workers=1, protected=protected)
    assert not log.exists()  # one process: no helper forked
    shared = size(root, workers=3, protected=protected)

    helpers = log.read_text().split()
    assert 1 <= len(helpers) <= 2 and str(os.getpid()) not in helpers
    assert (shared.bytes, shared.inodes) == (alone.bytes, alone.inodes)
    assert shared.newest_mtime == alone.newest_mtime
    assert sorted(shared.kept) == sorted(alone.kept)
    assert {reason for _p, reason in shared.kept} == {"protected", "special file"}
    assert shared.errors == alone.errors == []
    # du counts the protected file and the FIFO; the walker keeps them out.
    du = subprocess.run(["du", "-s", "-B1", str(root)], capture_output=True, text=True, check=True)
    protected_blocks = os.stat(root / "g1" / "protected").st_blocks * 512
    assert shared.bytes == int(du.stdout.split()[0]) - protected_blocks


def test_hard_link_met_by_two_processes_counts_once(tmp_path, share_at_once, monkeypatch):
    root = tmp_path / "tree"
    for g in range(8):
        (root / f"g{g}" / "sub").mkdir(parents=True)
    (root / "g0" / "sub" / "big").write_bytes(b"b" * 1_000_000)
    for g in range(1, 8):
        os.link(root / "g0" / "sub" / "big", root / f"g{g}" / "sub" / "big")
    log = tmp_path / "listings.log"
    me = os.getpid()

    def slow_parent(path, names):
        # who listed each directory holding the link; the parent dawdles so helpers get work
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {path}\n")
        if os.getpid() == me:
            time.sleep(0.05)

    monkeypatch.setattr(walk, "_listing_hook", slow_parent)
    shared = size(root, workers=3)

    listers = {line.split()[0] for line in log.read_text().splitlines() if line.endswith("/sub")}
    assert len(listers) >= 2  # the link was met by more than one process
    inode_blocks = os.stat(root / "g0" / "sub" / "big").st_blocks * 512
    assert shared.inodes == 1 + 8 * 2 + 1  # root, g*, g*/sub, the one inode
    dir_bytes = sum(os.stat(p).st_blocks * 512 for p, _d, _f in os.walk(root))
    assert shared.bytes == dir_bytes + inode_blocks


def test_helper_killed_mid_walk_is_sized_again_in_one_process(tmp_path, share_at_once, monkeypatch):
    root = tmp_path / "tree"
    build_tree(root)
    alone = size(root, workers=1)

    # A real SIGKILL of the helper (as the OOM killer would send), before it reports.
    monkeypatch.setattr(walk, "_helper_hook", lambda: os.kill(os.getpid(), signal.SIGKILL))
    shared = size(root, workers=2)

    assert (shared.bytes, shared.inodes) == (alone.bytes, alone.inodes)
    assert [msg for _p, msg in shared.errors] == [
        "a sizing helper process failed; sized again in one process"
    ]


def test_files_vanishing_in_helpers_are_reported_and_the_walk_goes_on(
    tmp_path, share_at_once, monkeypatch
):
    root = tmp_path / "tree"
    build_tree(root)
    log = tmp_path / "helpers.log"
    record_helpers(monkeypatch, log)
    gone = []

    def vanish(path, names):
        # runs in whichever process lists the directory: the file goes after the listing
        if path.endswith("/leaf") and "f5" in names:
            os.unlink(os.path.join(path, "f5"))
            gone.append(path)

    monkeypatch.setattr(walk, "_listing_hook", vanish)
    shared = size(root, workers=2)

    leaves = sorted(str(p) for p in root.glob("g*/d*/leaf"))
    assert sorted(p for p, _m in shared.errors) == [leaf + "/f5" for leaf in leaves]
    assert {m for _p, m in shared.errors} == {"No such file or directory"}
    assert log.exists()
    # the counts are those of the tree as it is now
    monkeypatch.setattr(walk, "_listing_hook", None)
    now = size(root, workers=1)
    assert (shared.bytes, shared.inodes) == (now.bytes, now.inodes)
