"""Rails on what is really removed, and accounting on what the filesystem really reports.

Every check that touches a real system directory here is a dry run or ``check_root`` alone:
nothing outside ``tmp_path`` is ever removed, even if a rail were broken.
"""

from __future__ import annotations

import json
import os

import pytest
from cleanuptest_helpers import files_cleaner, make_file
from runnerkeep.cleanup import run_cleanup, safety
from runnerkeep.cleanup.catalog import TOOLCHAINS
from runnerkeep.cleanup.safety import check_root, expand_roots, home_dirs
from runnerkeep.fsutil import FilesystemUsage, mount_point_of

KB4 = 4096

SYSTEM_SPELLINGS = [
    "/",
    "//",
    "/etc",
    "//etc",
    "///etc/",
    "/etc/",
    "/tmp/../etc",
    "/tmp/./../etc/.",
    "/etc/*",
    "//etc/*",
    "/tmp/../etc/*",
    "/etc/ssl",
    "/etc/ssl/certs",
    "/usr",
    "/usr/",
    "/usr/*",
    "/usr/lib/",
    "/usr/share/*",
    "/usr/local/*",
    "/var",
    "/var/lib",
    "/var/lib/*",
    "/var/lib/../lib/dpkg",
    "/var/*",
    "/opt/*",
    "/boot",
    "/proc/self",
    "/sys/fs/cgroup",
    "/run/*",
    "/home",
    "/home/*",
    "/root",
    "/root/*",
]


OPEN = ("/tmp", "/var/tmp", "/var/log", "/var/cache")


def _expanded(text):
    roots = expand_roots([text])
    return roots if any(c in text for c in "*?[") else [text]


@pytest.mark.parametrize("text", SYSTEM_SPELLINGS)
def test_every_spelling_of_a_system_location_is_refused_as_such(text):
    homes = home_dirs()
    for root in _expanded(text):
        if "/" + os.path.normpath(root).lstrip("/") in OPEN:
            continue  # "/*" and "/var/*" also expand to the roots meant to be cleaned
        reason = check_root(root, [], homes)
        assert reason is not None, f"{text} -> {root} accepted"
        # The reason names the rail, not an accident of spelling (a '//' looks like a symlink).
        assert reason.startswith(("refusing", "resolves to")), (text, root, reason)


def test_globs_expand_to_normalised_roots():
    for root in expand_roots(["//etc/*", "/tmp/../etc/*", "/usr/*/"]):
        assert root == os.path.normpath(root) and not root.startswith("//")


def test_nothing_inside_etc_at_any_depth():
    deep = "/etc/ssl/certs/../private/x/y"
    assert check_root(deep, [], set()).startswith("refusing to clean inside /etc")
    # Not even a catalog cleaner may root itself there.
    assert check_root("/etc/ssl", [], set(), allow_system=True) is not None


def test_symlink_to_etc_as_root_is_refused_for_its_target(tmp_path):
    os.symlink("/etc", tmp_path / "innocent")
    os.symlink(tmp_path / "innocent", tmp_path / "chain")
    for root in (tmp_path / "innocent", tmp_path / "chain", tmp_path / "chain" / "ssl"):
        reason = check_root(str(root), [], set())
        assert reason.startswith("resolves to /etc"), reason


def test_home_dirs_however_written(tmp_path):
    home = tmp_path / "homes" / "alice"
    home.mkdir(parents=True)
    homes = {str(home)}
    for text in (str(home), f"/{home}", f"{home}/", f"{home}/../alice", f"{tmp_path}/homes/./"):
        reason = check_root(text, [], homes)
        assert reason in (
            "refusing to clean a home directory",
            "refusing to clean a parent of home directories",
        ), (text, reason)
    os.symlink(home, tmp_path / "alias")
    assert check_root(str(tmp_path / "alias"), [], homes) == (
        f"resolves to {home}: refusing to clean a home directory"
    )


def test_dry_run_of_a_glob_root_over_etc_plans_nothing(make_config):
    config = make_config({"t": files_cleaner(["/etc/*", "//etc", "/tmp/../etc/"])})
    report = run_cleanup("post", config, dry_run=True, run_all=True, cleaner_names=["t"])
    cr = report.cleaner("t")
    assert cr.items == [] and report.items_removed == 0
    refused = {r["root"] for r in cr.refused}
    assert "/etc" in refused and "/etc/ssl" in refused
    assert all(not r.startswith("//") for r in refused)


def test_catalog_and_ordinary_roots_stay_allowed_system_ones_do_not(tmp_path):
    homes = home_dirs()
    for name, entry in sorted(TOOLCHAINS.items()):
        root = entry["root"]
        assert check_root(root, [], homes, allow_system=True) in (None, "does not exist"), name
        # The same root in a user's files cleaner would empty /usr/share or /opt.
        assert check_root(root, [], homes) is not None, name
    # allow_system does not open other system directories (journald's roots are configurable).
    for root in ("/usr", "/usr/lib", "/var/lib", "/etc", "/opt/actions-runner", "/"):
        assert check_root(root, [], homes, allow_system=True) is not None, root
    # Ordinary roots, and deep ones below system directories, stay acceptable.
    root = tmp_path / "work" / "_temp"
    root.mkdir(parents=True)
    assert check_root(str(root), [], set()) is None
    assert check_root(f"{root}/", [], set()) is None
    for text in ("/var/cache/apt/archives", "/root/.cache/pip", "/usr/local/share/.cache/yarn"):
        assert check_root(text, [], set()) in (None, "does not exist"), text


def test_own_dirs_and_docker_root_are_refused(tmp_path, make_config):
    config = make_config({})
    for key in ("cache_dir", "state_dir", "log_dir"):
        os.makedirs(config["paths"][key])
    own = safety.own_dirs(config, docker_root=str(tmp_path / "docker"))
    (tmp_path / "docker" / "volumes").mkdir(parents=True)
    cases = {
        config["paths"]["cache_dir"]: "cache dir",
        config["paths"]["state_dir"] + "/job-locks/..": "state dir",
        config["paths"]["log_dir"] + "/": "log dir",
        str(tmp_path / "docker" / "volumes"): "Docker data root",
        "/var/lib/docker/volumes": "Docker data root",  # the default, whatever docker says
    }
    for root, label in cases.items():
        for allow_system in (False, True):
            reason = check_root(root, [], set(), allow_system=allow_system, own=own)
            assert reason is not None and label in reason, (root, reason)
    # The default locations stay guarded even when a caller passes nothing of its own.
    for root in ("/var/lib/docker/volumes", "/var/cache/runnerkeep/images/blobs"):
        assert check_root(root, [], set(), allow_system=True, own={}) is not None, root
    # A symlink into the cache is refused for what it resolves to.
    os.symlink(config["paths"]["cache_dir"], tmp_path / "to-cache")
    assert "cache dir" in check_root(str(tmp_path / "to-cache"), [], set(), own=own)
    # Their neighbours are ordinary roots.
    (tmp_path / "root").mkdir()
    assert check_root(str(tmp_path / "root"), [], set(), own=own) is None


def test_same_filesystem_mount_root_is_found_by_mount_id(tmp_path, monkeypatch):
    root = tmp_path / "bound"
    root.mkdir()
    seen = []

    def fake_is_mount_root(fd):
        seen.append(os.fstat(fd).st_ino)
        return True  # what a bind mount of a directory of the same filesystem looks like

    monkeypatch.setattr(safety.mounts, "is_mount_root", fake_is_mount_root)
    assert not os.path.ismount(root)  # st_dev cannot tell
    assert check_root(str(root), [], set()) == (
        "is a mount point not named in cleanup.allowed_mount_points"
    )
    assert seen == [root.stat().st_ino]  # asked on the root itself, opened without following
    assert check_root(str(root), [f"/{root}/"], set()) is None


# --- accounting -------------------------------------------------------------------------------


def tree_usage(top):
    """(allocated bytes, inodes) below ``top``, each inode once."""
    seen = set()
    used = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                used += st.st_blocks * 512
    return used, len(seen)


class MeasuringProbe:
    """statvfs stand-in: free space grows by ``share`` of what really left ``top``.

    ``share=1`` is an honest filesystem nobody else writes to; ``share=0.5`` one where half
    of what the cleaners count is not given back (files held open, links kept elsewhere).
    """

    def __init__(self, top, free_bytes, share=1.0):
        self.top = str(top)
        self.mount = mount_point_of(self.top)
        self.free_bytes = free_bytes
        self.share = share
        self.base_bytes, self.base_inodes = tree_usage(self.top)

    def __call__(self, path):
        used, inodes = tree_usage(self.top)
        return FilesystemUsage(
            path=path,
            mount_point=self.mount,
            total_bytes=10**12,
            free_bytes=self.free_bytes + int(self.share * (self.base_bytes - used)),
            total_inodes=10**7,
            free_inodes=10**6 + int(self.share * (self.base_inodes - inodes)),
        )


def two_cleaners(tmp_path):
    data = tmp_path / "data"
    cheap, deep = data / "cheap", data / "deep"
    for root in (cheap, deep):
        for i in range(5):
            make_file(str(root / f"f{i}"), size=KB4, age_days=10 - i)
    return cheap, deep, {"cheap": files_cleaner([cheap], cost=1), "deep": files_cleaner([deep])}


def stage(config, probe, **kw):
    return run_cleanup(
        "post",
        config,
        target_free_bytes=10**6 + 3 * KB4,
        target_free_inodes=0,
        cleaner_names=["cheap", "deep"],
        probe=probe,
        **kw,
    )


def test_stage_goes_on_when_the_filesystem_gives_back_less_than_counted(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    config = make_config(cleaners)
    # Dry run: nothing to measure, the prediction says 3 files are enough.
    dry = stage(config, MeasuringProbe(tmp_path / "data", 10**6, share=0.5), dry_run=True)
    assert dry.items_removed == 3 and dry.target_met
    # Real run: each file frees half its size, so 3 files free 1.5: the stage takes all of
    # cheap (2.5) and then one of deep (3.0), measured.
    report = stage(config, MeasuringProbe(tmp_path / "data", 10**6, share=0.5))
    assert os.listdir(cheap) == []
    assert sorted(os.listdir(deep)) == ["f1", "f2", "f3", "f4"]
    assert report.cleaner("cheap").status == "done"
    assert report.cleaner("deep").status == "stopped: target met"
    assert report.target_met
    fs = report.filesystems[mount_point_of(str(tmp_path))]
    assert fs["freed_bytes_claimed"] == 6 * KB4
    assert fs["freed_bytes_measured"] == 3 * KB4
    assert fs["after"]["free_bytes"] == 10**6 + 3 * KB4


def test_target_met_is_false_when_the_filesystem_frees_nothing(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    report = stage(make_config(cleaners), MeasuringProbe(tmp_path / "data", 10**6, share=0))
    assert os.listdir(cheap) == [] and os.listdir(deep) == []  # it kept trying
    assert report.cleaner("deep").status == "done"
    assert report.bytes_freed_claimed == 10 * KB4  # what the cleaners count ...
    assert report.bytes_freed == 0  # the headline is what the filesystem gave back
    fs = report.filesystems[mount_point_of(str(tmp_path))]
    assert fs["freed_bytes_measured"] == 0  # ... and what the filesystem says
    assert fs["after"]["free_bytes"] == 10**6
    assert report.target_met is False
    text = report.text()
    assert "target NOT met" in text
    assert "the filesystem reports 0 B freed, the cleaners counted 40.0 KiB" in text


def test_honest_filesystem_stops_exactly_at_target(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    report = stage(make_config(cleaners), MeasuringProbe(tmp_path / "data", 10**6))
    assert sorted(os.listdir(cheap)) == ["f3", "f4"] and len(os.listdir(deep)) == 5
    assert report.cleaner("cheap").status == "stopped: target met"
    assert report.cleaner("deep").status == "skipped: target met"
    fs = report.filesystems[mount_point_of(str(tmp_path))]
    assert fs["freed_bytes_measured"] == fs["freed_bytes_claimed"] == 3 * KB4
    assert report.target_met


def test_dry_run_reports_no_measurement(tmp_path, make_config):
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    report = stage(make_config(cleaners), MeasuringProbe(tmp_path / "data", 10**6), dry_run=True)
    fs = json.loads(json.dumps(report.as_dict()))["filesystems"][mount_point_of(str(tmp_path))]
    assert fs["freed_bytes_claimed"] == 3 * KB4
    assert fs["freed_bytes_measured"] is None


# --- dry runs -----------------------------------------------------------------------------------


def snapshot(top):
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_dry_run_leaves_stale_job_locks_and_creates_nothing(tmp_path, make_config):
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    config = make_config(cleaners)
    locks = tmp_path / "state" / "job-locks"
    locks.mkdir(parents=True)
    stale = {"job_id": "dead", "pid": 2**22 + 7, "pid_start": "1", "started": 1.0, "host": "h"}
    (locks / "dead.json").write_text(json.dumps(stale))
    before = snapshot(tmp_path)
    for stage_name in ("pre", "post", "emergency"):
        run_cleanup(stage_name, config, dry_run=True, run_all=True, cleaner_names=["cheap", "deep"])
    assert snapshot(tmp_path) == before  # the stale lock stays, no .guard, no events


@pytest.mark.parametrize("damage", ["fifo", "garbage"])
def test_dry_run_with_budget_targets_leaves_damaged_history_alone(tmp_path, make_config, damage):
    # Targets come from the disk budget, which reads the job-peak history: a dry run (module
    # check mode) must not move a damaged history aside; only a writer repairs it. The front
    # doors run the stage through runnerkeep.wiring, which hands it the budget's targets.
    from runnerkeep.wiring import run_cleanup

    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    config = make_config(cleaners)
    config["disk"] = {"path": str(tmp_path)}
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    history = state / "disk-history.jsonl"
    if damage == "fifo":
        os.mkfifo(history)
    else:
        history.write_bytes(b'\xff\x00garbage\n{"peak_bytes": 1e999}\n')
    before = snapshot(tmp_path)
    report = run_cleanup("post", config, dry_run=True, cleaner_names=["cheap", "deep"])
    assert snapshot(tmp_path) == before
    assert any(t["source"] for t in report.targets.values())
    assert any("disk budget" in t["source"] for t in report.targets.values())


def test_a_cleaner_rooted_in_the_configured_cache_dir_is_refused_end_to_end(tmp_path, make_config):
    # Paths moved in the config (not the default locations) reach the rails through the run.
    config = make_config({"t": files_cleaner([str(tmp_path / "cache" / "blobs")])})
    blob = tmp_path / "cache" / "blobs" / "sha256" / "ab"
    make_file(str(blob), 4096, age_days=30)
    report = run_cleanup("post", config, run_all=True, cleaner_names=["t"])
    cr = report.cleaner("t")
    assert blob.exists()
    assert any("cache dir" in r["reason"] for r in cr.refused), cr.refused


def test_report_names_what_was_kept_and_why(tmp_path, make_config):
    root = tmp_path / "data" / "jobs"
    make_file(str(root / "old" / "a"), size=KB4, age_days=10)
    os.mkfifo(root / "old" / "pipe")
    os.utime(root / "old", (1, 1))
    config = make_config({"t": files_cleaner([root])})
    report = run_cleanup("post", config, run_all=True, cleaner_names=["t"])
    data = json.loads(json.dumps(report.as_dict()))
    cr = next(c for c in data["cleaners"] if c["name"] == "t")
    assert cr["kept"] == len(cr["kept_items"]) >= 1
    assert {"path": str(root / "old" / "pipe"), "reason": "special file"} in cr["kept_items"]
    assert not (root / "old" / "a").exists()
