"""What a cleanup report says must be what happened, and nobody may write lines into it.

- A file name (chosen by a CI job) with a newline or an ESC sequence stays one escaped line in
  every text the cleanup prints: item lists, errors, refusals, notes, tables, job ids.
- A real run's headline ``bytes_freed``/``inodes_freed`` is what statvfs measured (never
  negative, only on filesystems the cleaners removed something from), with the cleaners' own
  count kept alongside (``*_claimed``); a dry run's stays the prediction.
- The dry run promises what the real run will do: a directory holding something that is kept
  (a FIFO, a mount point) stays in both; a mount point beneath a root, file or directory, is
  kept ("other mount (mount point)"), found from /proc/self/mountinfo, and an ``unlink`` that
  fails with EBUSY (a file mounted on after the scan) is kept, not an error.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from cleanuptest_helpers import FakeProbe, files_cleaner, make_file
from runnerkeep.cleanup import run_cleanup, walk
from runnerkeep.cleanup.report import CleanerReport, CleanupReport
from runnerkeep.fsutil import FilesystemUsage, mount_point_of
from runnerkeep.units import format_size
from runnerkeep_cli.main import main

KB4 = 4096
FORGED = "  [attack] FORGED-etc-shadow  9.9 GiB"


def _lines_forged(text: str) -> list[str]:
    """Lines that a name started: the forged report line, or a name's tail."""
    return [
        line
        for line in text.split("\n")
        if line.startswith(FORGED) or line.startswith("FORGED") or line.startswith("\x1b")
    ]


# -- names cannot forge lines ------------------------------------------------------------------


def test_dry_run_item_list_shows_a_newline_as_an_escape(tmp_path, make_config):
    root = tmp_path / "root"
    make_file(str(root / f"job1\n{FORGED}" / "f"))
    make_file(str(root / "\x1b[2Jclear\x1b]0;title\x07"))
    report = run_cleanup(
        "post",
        make_config({"t": files_cleaner([root])}),
        dry_run=True,
        run_all=True,
        cleaner_names=["t"],
    )
    text = report.text()
    assert _lines_forged(text) == []
    assert f"{root}/job1\\n{FORGED}" in text
    assert "\x1b" not in text and "\x07" not in text
    assert f"{root}/\\x1b[2Jclear\\x1b]0;title\\x07" in text
    # JSON keeps the real name (json.dumps escapes it)
    assert str(root / f"job1\n{FORGED}") in report.removed_paths()


def test_errors_refusals_notes_and_filesystems_are_escaped():
    cr = CleanerReport(name="t\nFORGED", kind="files", status="done")
    cr.errors = [{"path": f"/r/x\n{FORGED}", "error": f"bad\n{FORGED}"}]
    cr.refused = [{"root": f"/r\n{FORGED}", "reason": f"why\n{FORGED}\x1b[0m"}]
    report = CleanupReport(stage="post", cleaners=[cr], notes=[f"note\n{FORGED}"])
    report.filesystems = {
        f"/mnt\n{FORGED}": {
            "before": {"free_bytes": 0, "free_inodes": 0},
            "after": {"free_bytes": 0, "free_inodes": 0},
            "freed_bytes_claimed": 10,
            "freed_inodes_claimed": 1,
            "freed_bytes_measured": 0,
            "freed_inodes_measured": 0,
        }
    }
    text = report.text()
    assert _lines_forged(text) == []
    assert "\x1b" not in text
    # error path and message, refused root and reason, note, mount (table and measured line)
    assert text.count("\\n" + FORGED) == 7
    assert text.count("t\\nFORGED") == 3  # the cleaner's name: table, refusal, error


@pytest.fixture
def cli_config(tmp_path, make_config, monkeypatch):
    root = tmp_path / "root"
    make_file(str(root / f"job\n{FORGED}"))
    config = make_config({"t": files_cleaner([root])})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(cfg))
    return root


def test_cli_text_is_escaped_and_json_keeps_the_name(cli_config, capsys):
    root = cli_config
    args = ["cleanup", "--stage", "post", "--dry-run", "--all", "--cleaner", "t"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert _lines_forged(out) == []
    assert f"{root}/job\\n{FORGED}" in out
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cleaners"][0]["items"][0]["path"] == f"{root}/job\n{FORGED}"


def test_cli_job_id_is_escaped(cli_config, capsys):
    job = f"j1\n{FORGED}"
    assert main(["cleanup", "job-start", "--job-id", job, "--no-pre"]) == 0
    out = capsys.readouterr().out
    assert _lines_forged(out) == [] and "j1\\n" + FORGED in out
    main(["cleanup", "status"])
    out = capsys.readouterr().out
    assert _lines_forged(out) == [] and "j1\\n" + FORGED in out
    assert main(["cleanup", "job-end", "--job-id", job, "--no-post"]) == 0
    out = capsys.readouterr().out
    assert _lines_forged(out) == [] and "j1\\n" + FORGED in out


# -- the headline is measured ------------------------------------------------------------------


class ShareProbe(FakeProbe):
    """FakeProbe whose filesystem gives back only ``share`` of what left the tree, less
    ``written`` bytes someone else wrote meanwhile (inodes alike, ``written_inodes``)."""

    def __init__(self, path, share=1.0, written=0, written_inodes=0):
        super().__init__(path, free_bytes=10**9)
        self.share, self.written, self.written_inodes = share, written, written_inodes

    def __call__(self, path):
        real = super().__call__(path)
        first = self.calls == 1
        freed = real.free_bytes - self.free_bytes
        freed_inodes = real.free_inodes - self.free_inodes
        return FilesystemUsage(
            path=path,
            mount_point=self.mount,
            total_bytes=self.total_bytes,
            free_bytes=self.free_bytes + int(self.share * freed) - (0 if first else self.written),
            total_inodes=self.total_inodes,
            free_inodes=self.free_inodes
            + int(self.share * freed_inodes)
            - (0 if first else self.written_inodes),
        )


def _seeded(tmp_path, make_config, files=8):
    root = tmp_path / "data" / "root"
    for i in range(files):
        make_file(str(root / f"f{i}"), size=KB4, age_days=1 + i)
    return make_config({"t": files_cleaner([root])})


def _run(config, probe, dry_run=False):
    return run_cleanup(
        "post", config, run_all=True, cleaner_names=["t"], probe=probe, dry_run=dry_run
    )


def test_real_run_headline_is_what_the_filesystem_gave_back(tmp_path, make_config):
    config = _seeded(tmp_path, make_config)
    report = _run(config, ShareProbe(tmp_path / "data", share=0.5))
    assert report.items_removed == 8
    assert report.bytes_freed_claimed == 8 * KB4
    assert report.bytes_freed == 4 * KB4  # statvfs, not the count
    assert report.inodes_freed_claimed == 8 and report.inodes_freed == 4
    data = report.as_dict()
    assert data["bytes_freed"] == 4 * KB4 and data["bytes_freed_claimed"] == 8 * KB4
    assert data["inodes_freed"] == 4 and data["inodes_freed_claimed"] == 8
    fs = data["filesystems"][mount_point_of(str(tmp_path))]
    assert fs["freed_bytes_measured"] == data["bytes_freed"]
    headline = report.text().split("\n")
    assert any(
        line.startswith(f"freed {format_size(4 * KB4)} and 4 inodes in 8 items")
        and f"(cleaners counted {format_size(8 * KB4)})" in line
        for line in headline
    )


def test_real_run_headline_is_never_negative(tmp_path, make_config):
    config = _seeded(tmp_path, make_config)
    # a job wrote more than the cleanup freed
    report = _run(config, ShareProbe(tmp_path / "data", written=10**6, written_inodes=100))
    assert report.items_removed == 8
    assert report.bytes_freed == 0 and report.inodes_freed == 0
    assert report.bytes_freed_claimed == 8 * KB4
    assert f"freed 0 B and 0 inodes in 8 items (cleaners counted {format_size(8 * KB4)})" in (
        report.text()
    )


def test_honest_filesystem_headline_has_no_note_and_dry_run_is_the_prediction(
    tmp_path, make_config
):
    config = _seeded(tmp_path, make_config)
    dry = _run(config, ShareProbe(tmp_path / "data", share=0.0), dry_run=True)
    assert dry.bytes_freed == dry.bytes_freed_claimed == 8 * KB4
    assert dry.as_dict()["bytes_freed"] == 8 * KB4
    assert "(cleaners counted" not in dry.text()
    assert f"would free {format_size(8 * KB4)} and 8 inodes in 8 items;" in dry.text()
    real = _run(config, ShareProbe(tmp_path / "data"))
    assert real.bytes_freed == real.bytes_freed_claimed == 8 * KB4
    assert "(cleaners counted" not in real.text()


def test_a_filesystem_the_cleaners_did_not_touch_is_not_credited():
    cr = CleanerReport(name="t", kind="files", bytes_freed=100, inodes_freed=1)

    def fs(claimed, measured, inodes_claimed, inodes_measured):
        return {
            "freed_bytes_claimed": claimed,
            "freed_inodes_claimed": inodes_claimed,
            "freed_bytes_measured": measured,
            "freed_inodes_measured": inodes_measured,
        }

    report = CleanupReport(stage="post", cleaners=[cr])
    report.filesystems = {
        "/a": fs(100, 90, 1, 1),
        "/b": fs(0, 10**9, 0, 500),  # someone else deleted there: not this run's doing
        "/c": fs(50, -70, 1, -3),  # someone else wrote more: 0, not minus
    }
    assert report.bytes_freed == 90 and report.inodes_freed == 1
    report.dry_run = True
    assert report.bytes_freed == 100 and report.inodes_freed == 1


# -- dry run = real run: kept entries keep their directories -----------------------------------


def test_directories_holding_a_kept_entry_are_not_promised(tmp_path, make_config):
    root = tmp_path / "root"
    make_file(str(root / "mixed" / "file"), size=KB4)
    os.mkfifo(root / "mixed" / "pipe")
    os.makedirs(root / "only-pipe" / "sub")
    os.mkfifo(root / "only-pipe" / "sub" / "pipe")
    config = make_config({"t": files_cleaner([root])})
    kwargs = {"run_all": True, "cleaner_names": ["t"]}
    dry = run_cleanup("post", config, dry_run=True, **kwargs)
    real = run_cleanup("post", config, **kwargs)
    assert (root / "mixed" / "pipe").exists() and (root / "only-pipe" / "sub").is_dir()
    assert not (root / "mixed" / "file").exists()
    dry_items = [(i["path"], i["inodes"]) for i in dry.cleaner("t").items]
    real_items = [(i["path"], i["inodes"]) for i in real.cleaner("t").items]
    assert dry_items == real_items == [(str(root / "mixed"), 1)]
    assert dry.inodes_freed == real.inodes_freed_claimed == 1
    assert dry.bytes_freed == real.bytes_freed_claimed


# -- mount points from /proc/self/mountinfo ----------------------------------------------------


def test_mountinfo_mount_points_are_decoded(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_bytes(
        b"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        b"90 27 0:45 /f1 /srv/r\\040oot/a\\012b rw - tmpfs tmpfs rw\n"
        b"91 27 0:45 / /srv/back\\134slash\\011tab rw shared:1 - tmpfs tmpfs rw\n"
        b"92 27 0:45 / /srv/caf\\351 rw - tmpfs tmpfs rw\n"
        b"short line\n"
    )
    assert walk.read_mount_points(str(info)) == [
        "/proc",
        "/srv/r oot/a\nb",
        "/srv/back\\slash\ttab",
        os.fsdecode(b"/srv/caf\xe9"),
    ]
    assert walk.read_mount_points(str(tmp_path / "missing")) == []


def test_mount_points_beneath_a_root_are_identities_of_what_is_there(tmp_path):
    root = tmp_path / "root"
    make_file(str(root / "a\nb"))
    os.makedirs(root / "d")
    make_file(str(tmp_path / "rootx" / "b"))
    points = [
        str(root),  # the root itself: the rails' business
        str(root / "a\nb"),
        str(root / "d") + "/",
        str(tmp_path / "rootx" / "b"),  # a sibling sharing the prefix
        str(root / "gone"),
        "/proc",
    ]
    found = walk.mount_points_beneath(str(root), points)
    ident = {(s.st_dev, s.st_ino) for s in (os.lstat(root / "a\nb"), os.lstat(root / "d"))}
    assert found == ident


@pytest.fixture
def mounted(monkeypatch):
    """Names whose inode is in the returned set are on another mount (a bind-mounted file),
    as ``mount_id_at`` tells; everything else is on the walk's mount."""
    inodes: set = set()
    real = walk.mount_id_at

    def fake(dir_fd, name):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return 10**6 if st.st_ino in inodes else real(dir_fd, name)

    monkeypatch.setattr(walk, "mount_id_at", fake)
    return inodes


def _opts(fd, points, **kw):
    return walk.WalkOptions.for_root(fd, mount_points=frozenset(points), workers=1, **kw)


def test_a_file_mount_point_is_kept_in_sizing_and_removal(tmp_path, mounted):
    root = tmp_path / "root"
    make_file(str(root / "job" / "mnt"), size=10 * KB4)
    make_file(str(root / "job" / "own"), size=KB4)
    make_file(str(root / "top"), size=KB4)
    points = set()
    for name in ("job/mnt", "top"):
        st = os.lstat(root / name)
        mounted.add(st.st_ino)
        points.add((st.st_dev, st.st_ino))
    fd = walk.open_root(str(root))
    try:
        sized = walk.size_entry(fd, "job", str(root / "job"), _opts(fd, points))
        top = walk.size_entry(fd, "top", str(root / "top"), _opts(fd, points))
        assert (str(root / "job" / "mnt"), walk.OTHER_MOUNT) in sized.kept
        assert sized.inodes == 1 and sized.bytes == KB4  # "own"; "job" stays, holding "mnt"
        assert top.inodes == 0 and top.kept == [(str(root / "top"), walk.OTHER_MOUNT)]
        removed = walk.remove_entry(fd, "job", str(root / "job"), _opts(fd, points))
        gone_top = walk.remove_entry(fd, "top", str(root / "top"), _opts(fd, points))
    finally:
        os.close(fd)
    assert removed.errors == [] and gone_top.errors == []
    assert (str(root / "job" / "mnt"), walk.OTHER_MOUNT) in removed.kept
    assert gone_top.kept == [(str(root / "top"), walk.OTHER_MOUNT)]
    assert (removed.bytes, removed.inodes) == (sized.bytes, sized.inodes)
    assert sorted(os.listdir(root / "job")) == ["mnt"] and (root / "top").exists()


def test_the_source_of_a_bind_mounted_file_is_not_kept(tmp_path):
    # Same (st_dev, st_ino) as a listed mount point, but on the walk's own mount.
    root = tmp_path / "root"
    make_file(str(root / "source"))
    st = os.lstat(root / "source")
    points = {(st.st_dev, st.st_ino)}
    fd = walk.open_root(str(root))
    try:
        out = walk.remove_entry(fd, "source", str(root / "source"), _opts(fd, points))
    finally:
        os.close(fd)
    assert out.kept == [] and out.removed == 1 and not (root / "source").exists()


def test_unlink_busy_is_kept_as_a_mount_point_not_an_error(tmp_path, monkeypatch):
    root = tmp_path / "root"
    make_file(str(root / "job" / "late-mount"))
    make_file(str(root / "job" / "other"))
    make_file(str(root / "late-top"))
    real_unlink = os.unlink

    def busy(name, *args, **kwargs):
        if str(name).startswith("late"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), name)
        return real_unlink(name, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", busy)
    fd = walk.open_root(str(root))
    try:
        tree = walk.remove_entry(fd, "job", str(root / "job"), _opts(fd, ()))
        top = walk.remove_entry(fd, "late-top", str(root / "late-top"), _opts(fd, ()))
    finally:
        os.close(fd)
    assert tree.errors == [] and top.errors == []
    assert (str(root / "job" / "late-mount"), walk.OTHER_MOUNT) in tree.kept
    assert top.kept == [(str(root / "late-top"), walk.OTHER_MOUNT)]
    assert sorted(os.listdir(root / "job")) == ["late-mount"]


def test_cleaner_plan_keeps_mount_points_listed_in_mountinfo(tmp_path, make_config, monkeypatch):
    root = tmp_path / "root"
    make_file(str(root / "fb"), size=KB4)
    make_file(str(root / "d1" / "fb2"), size=10 * KB4)
    make_file(str(root / "plain"), size=KB4)
    inodes = {os.lstat(root / n).st_ino for n in ("fb", "d1/fb2")}
    listed = [str(root / "fb"), str(root / "d1" / "fb2")]
    monkeypatch.setattr(walk, "read_mount_points", lambda path=walk.MOUNTINFO: listed)
    real = walk.mount_id_at

    def fake(dir_fd, name):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return 10**6 if st.st_ino in inodes else real(dir_fd, name)

    monkeypatch.setattr(walk, "mount_id_at", fake)
    config = make_config({"t": files_cleaner([root])})
    kwargs = {"run_all": True, "cleaner_names": ["t"]}
    dry = run_cleanup("post", config, dry_run=True, **kwargs)
    real_run = run_cleanup("post", config, **kwargs)
    assert [i["path"] for i in dry.cleaner("t").items] == [str(root / "plain")]
    assert [i["path"] for i in real_run.cleaner("t").items] == [str(root / "plain")]
    kept = {k["path"]: k["reason"] for k in dry.cleaner("t").kept_items}
    assert kept[str(root / "fb")] == kept[str(root / "d1" / "fb2")] == walk.OTHER_MOUNT
    assert real_run.cleaner("t").errors == []
    assert sorted(os.listdir(root)) == ["d1", "fb"]
