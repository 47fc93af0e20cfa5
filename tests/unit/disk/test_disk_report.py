"""The disk report parts: sizing, largest dirs, Docker sizes, filesystems, degraded Docker."""

from __future__ import annotations

import os
import sys

from runnerkeep.disk.sizing import largest_dirs, tree_size
from runnerkeep.disk.usage_report import disk_report, filesystems, parse_docker_size, render_report


def test_parse_docker_size():
    assert parse_docker_size("0B") == 0
    assert parse_docker_size("200kB") == 200_000
    assert parse_docker_size("1.35GB") == 1_350_000_000
    assert parse_docker_size("12.5MB (43%)") == 12_500_000
    assert parse_docker_size("") == 0


def test_tree_size_counts_hardlinks_once_and_skips_symlink_targets(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_bytes(b"x" * 10_000)
    os.link(root / "a" / "f", root / "a" / "g")
    outside = tmp_path / "outside"
    outside.write_bytes(b"y" * 50_000)
    os.symlink(outside, root / "link")
    size = tree_size(str(root))
    assert size.exists
    assert size.files == 2  # f (once) and the symlink itself
    assert 10_000 <= size.logical_bytes < 20_000
    assert size.disk_bytes >= 8192


def test_tree_size_of_missing_dir(tmp_path):
    size = tree_size(str(tmp_path / "nope"))
    assert not size.exists and size.disk_bytes == 0


def test_largest_dirs_rolls_up_to_depth(tmp_path):
    root = tmp_path / "work"
    (root / "big" / "deep" / "deeper").mkdir(parents=True)
    (root / "big" / "deep" / "deeper" / "f").write_bytes(os.urandom(300_000))
    (root / "small").mkdir()
    (root / "small" / "f").write_bytes(os.urandom(10_000))
    dirs, total = largest_dirs(str(root), depth=2, limit=10)
    paths = [d["path"] for d in dirs]
    assert paths[0] == str(root / "big")
    assert str(root / "big" / "deep") in paths
    assert str(root / "big" / "deep" / "deeper") not in paths  # below the depth: rolled up
    sizes = {d["path"]: d["disk_bytes"] for d in dirs}
    assert sizes[str(root / "big" / "deep")] >= 300_000
    assert sizes[str(root / "big")] >= sizes[str(root / "big" / "deep")]
    assert sizes[str(root / "small")] >= 10_000
    assert total.disk_bytes >= 310_000


def _nest(root: str, levels: int) -> None:
    """``root/d/d/.../d``, ``levels`` deep, made through directory descriptors."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def _unnest(root: str, levels: int) -> None:
    """Remove what ``_nest`` made, deepest first (shutil.rmtree recurses per level too)."""
    fds = [os.open(root, os.O_RDONLY)]
    try:
        for _ in range(levels - 1):
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        while fds:
            parent = fds.pop()
            os.rmdir("d", dir_fd=parent)
            os.close(parent)
    finally:
        for fd in fds:
            os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit_is_sized(tmp_path):
    # A CI user can make such a tree under /tmp or a work dir; os.fwalk before Python 3.13
    # recursed once per level and the report ended in RecursionError.
    root = tmp_path / "deep"
    root.mkdir()
    levels = sys.getrecursionlimit() + 100
    _nest(str(root), levels)
    try:
        size = tree_size(str(root))
        assert (size.dirs, size.errors) == (levels + 1, [])
        dirs, total = largest_dirs(str(root), depth=2, limit=5)
        assert total.dirs == levels + 1
        assert [d["path"] for d in dirs] == [str(root / "d"), str(root / "d" / "d")]
    finally:
        _unnest(str(root), levels)


def test_filesystems_group_by_mount_point(tmp_path):
    fs, errors = filesystems([("a", str(tmp_path)), ("b", str(tmp_path / "missing/child"))])
    assert not errors
    assert len(fs) == 1 and fs[0]["roles"] == ["a", "b"]
    assert fs[0]["free_bytes"] <= fs[0]["size_bytes"]


def test_report_without_docker(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    config = make_config(report_roots=[str(tmp_path)], largest_dirs=3)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "blob").write_bytes(b"z" * 5000)
    report = disk_report(config)
    assert report["docker"]["available"] is False
    assert "docker CLI is not installed" in report["docker"]["error"]
    assert report["cache"]["logical_bytes"] == 5000
    assert report["largest_dirs"][0]["root"] == str(tmp_path)
    roles = {r for fs in report["filesystems"] for r in fs["roles"]}
    assert {"docker_root", "cache_dir", "tmp"} <= roles
    text = render_report(report)
    assert "Docker usage: unavailable" in text and "Image cache" in text


def test_docker_details_from_df_verbose(monkeypatch):
    import json
    import subprocess

    from runnerkeep.disk import usage_report as report

    sample = {
        "Images": [
            {"Repository": "a", "Tag": "1", "ID": "sha256:aaa", "Size": "1.5GB",
             "UniqueSize": "1GB", "SharedSize": "500MB", "Containers": "2"},
            {"Repository": "b", "Tag": "2", "ID": "sha256:bbb", "Size": "3GB",
             "UniqueSize": "3GB", "SharedSize": "0B", "Containers": "0"},
        ],
        "Containers": [{"Names": "c1", "Image": "a:1", "State": "exited", "Size": "12MB"}],
        "Volumes": [{"Name": "v", "Links": "0", "Size": "2.5GB"}],
        "BuildCache": [{}, {}],
    }  # fmt: skip

    def fake_run(args, timeout=0, check=True):
        assert args[:3] == ["system", "df", "-v"]
        return subprocess.CompletedProcess(args, 0, json.dumps(sample), "")

    monkeypatch.setattr(report, "run_docker", fake_run)
    details = report.docker_details(limit=1)
    assert details["largest_images"] == [
        {"image": "b:2", "id": "sha256:bbb", "size_bytes": 3 * 10**9, "unique_bytes": 3 * 10**9,
         "shared_bytes": 0, "containers": 0}
    ]  # fmt: skip
    assert details["largest_containers"][0]["size_bytes"] == 12 * 10**6
    assert details["largest_volumes"][0]["name"] == "v"
    assert details["build_cache_entries"] == 2


def test_largest_dirs_named_by_a_job_cannot_forge_report_lines(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "/nonexistent")
    forged = tmp_path / "job\n  99.9 GiB  etc-shadow"
    forged.mkdir()
    (forged / "f").write_bytes(b"x" * 100_000)
    report = disk_report(make_config(report_roots=[str(tmp_path)], largest_dirs=3))
    text = render_report(report)
    assert not any(line.strip().startswith("99.9 GiB") for line in text.splitlines())
    assert "job\\n  99.9 GiB  etc-shadow" in text
