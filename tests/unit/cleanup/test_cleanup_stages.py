"""Stage engine: cheapest-first order, stop at target (bytes and inodes), dry run == real run."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from cleanuptest_helpers import FakeProbe, age_tree, files_cleaner, make_file
from runnerkeep.cleanup import CleanupReport, run_cleanup, walk
from runnerkeep.cleanup.catalog import BUILTIN_CLEANERS
from runnerkeep.errors import ConfigError
from runnerkeep.events import read_events

KB4 = 4096


def seed(root, n, size=KB4, start_age=10):
    """n files, the i-th older than the next (file 0 the oldest)."""
    for i in range(n):
        make_file(str(root / f"f{i:03d}"), size=size, age_days=start_age + n - i)


def two_cleaners(tmp_path):
    cheap, deep = tmp_path / "cheap", tmp_path / "deep"
    seed(cheap, 5)
    seed(deep, 5)
    return (
        cheap,
        deep,
        {
            "cheap": files_cleaner([cheap], cost=1),
            "deep": files_cleaner([deep], cost=2),
        },
    )


def test_stage_runs_cheapest_first_and_stops_at_target(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    probe = FakeProbe(tmp_path, free_bytes=1_000_000)
    # Need 3 files' worth: the 3 oldest in the cheap cleaner go, nothing else.
    target = 1_000_000 + 3 * KB4
    report = run_cleanup(
        "post",
        make_config(cleaners),
        target_free_bytes=target,
        target_free_inodes=0,
        cleaner_names=["cheap", "deep"],
        probe=probe,
    )
    assert [c.name for c in report.cleaners] == ["cheap", "deep"]
    assert sorted(os.listdir(cheap)) == ["f003", "f004"]  # the oldest went first
    assert len(os.listdir(deep)) == 5
    assert report.cleaner("cheap").status == "stopped: target met"
    assert report.cleaner("deep").status == "skipped: target met"
    assert report.target_met
    assert report.bytes_freed == 3 * KB4


def test_cost_order_is_configurable(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    cleaners["deep"]["cost"] = 0
    report = run_cleanup(
        "post",
        make_config(cleaners),
        target_free_bytes=1_000_000 + KB4,
        cleaner_names=["cheap", "deep"],
        probe=FakeProbe(tmp_path, free_bytes=1_000_000),
    )
    assert [c.name for c in report.cleaners] == ["deep", "cheap"]
    assert len(os.listdir(cheap)) == 5 and len(os.listdir(deep)) == 4


def test_moves_to_next_cleaner_when_first_is_not_enough(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    report = run_cleanup(
        "post",
        make_config(cleaners),
        target_free_bytes=1_000_000 + 7 * KB4,
        cleaner_names=["cheap", "deep"],
        probe=FakeProbe(tmp_path, free_bytes=1_000_000),
    )
    assert os.listdir(cheap) == []
    assert sorted(os.listdir(deep)) == ["f002", "f003", "f004"]
    assert report.cleaner("cheap").status == "done"
    assert report.cleaner("deep").status == "stopped: target met"


def test_inode_target_keeps_going_after_bytes_are_met(tmp_path, make_config):
    _cheap, deep, cleaners = two_cleaners(tmp_path)
    probe = FakeProbe(tmp_path, free_bytes=10**9, free_inodes=100)
    report = run_cleanup(
        "post",
        make_config(cleaners),
        target_free_bytes=1000,  # long met
        target_free_inodes=107,  # needs 7 inodes
        cleaner_names=["cheap", "deep"],
        probe=probe,
    )
    assert report.inodes_freed == 7
    assert len(os.listdir(deep)) == 3


def test_target_already_met_removes_nothing(tmp_path, make_config):
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    report = run_cleanup(
        "post",
        make_config(cleaners),
        target_free_bytes="10%",
        target_free_inodes="1%",
        cleaner_names=["cheap", "deep"],
        probe=FakeProbe(tmp_path, free_bytes=200, total_bytes=1000, free_inodes=10**6),
    )
    assert report.items_removed == 0
    assert report.target_met
    assert {c.status for c in report.cleaners} == {"skipped: target met"}


def test_run_all_ignores_targets(tmp_path, make_config):
    cheap, deep, cleaners = two_cleaners(tmp_path)
    report = run_cleanup(
        "post",
        make_config(cleaners),
        run_all=True,
        cleaner_names=["cheap", "deep"],
        probe=FakeProbe(tmp_path, free_bytes=10**12),
    )
    assert report.items_removed == 10
    assert os.listdir(cheap) == [] and os.listdir(deep) == []


def test_targets_default_from_config_per_stage(tmp_path, make_config):
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    config = make_config(cleaners, targets={"post": {"free": 1_000_000 + 2 * KB4, "inodes": 0}})
    report = run_cleanup(
        "post",
        config,
        cleaner_names=["cheap", "deep"],
        probe=FakeProbe(tmp_path, free_bytes=1_000_000),
    )
    assert report.items_removed == 2
    fs = next(iter(report.targets))
    assert report.targets[fs] == {
        "free_bytes": 1_000_000 + 2 * KB4,
        "free_inodes": 0,
        "source": "config",
    }


def test_a_stage_given_no_budget_targets_never_reads_the_budget(tmp_path, make_config):
    """cleanup/ does not import disk/: the budget's targets are only what it is handed."""
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    config = make_config(cleaners)
    config["disk"] = {"path": str(tmp_path), "job_peak_floor": "1MiB", "cache_quota_min": 0}
    report = run_cleanup("post", config, cleaner_names=["cheap", "deep"], dry_run=True)
    assert {t["source"] for t in report.targets.values()} == {"default"}
    asked = []

    def budget_targets(stage, given):
        asked.append((stage, given is config))
        return None

    run_cleanup(
        "post", config, cleaner_names=["cheap"], dry_run=True, budget_targets=budget_targets
    )
    assert asked == [("post", True)]


def test_targets_default_from_the_disk_budget_on_its_filesystem(tmp_path, make_config):
    """A monitored host (config has a `disk` section) stops where the disk budget says (the
    front doors run the stage through runnerkeep.wiring, which hands it the budget's targets)."""
    from runnerkeep.disk.budget import current_budget
    from runnerkeep.wiring import run_cleanup

    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    config = make_config(cleaners)
    config["disk"] = {"path": str(tmp_path), "job_peak_floor": "1MiB", "cache_quota_min": 0}
    budget = current_budget(config)
    report = run_cleanup("post", config, cleaner_names=["cheap", "deep"], dry_run=True)
    fs = next(iter(report.targets))
    assert report.targets[fs] == {
        "free_bytes": budget.post_target_free_bytes,
        "free_inodes": budget.post_target_free_inodes,
        "source": "disk budget",
    }
    # An explicit argument still wins over the budget.
    report = run_cleanup(
        "post",
        config,
        cleaner_names=["cheap"],
        dry_run=True,
        target_free_bytes=123,
        target_free_inodes=4,
    )
    assert report.targets[fs] == {"free_bytes": 123, "free_inodes": 4, "source": "argument"}


def test_stage_membership(tmp_path, make_config):
    _cheap, deep, cleaners = two_cleaners(tmp_path)
    cleaners["deep"]["stages"] = ["post"]
    report = run_cleanup(
        "pre", make_config(cleaners), run_all=True, cleaner_names=["cheap", "deep"]
    )
    assert [c.name for c in report.cleaners] == ["cheap"]
    assert len(os.listdir(deep)) == 5


def test_paths_limit_the_filesystems(tmp_path, make_config):
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    report = run_cleanup(
        "post",
        make_config(cleaners),
        run_all=True,
        paths=["/proc"],
        cleaner_names=["cheap", "deep"],
    )
    assert report.items_removed == 0
    assert {c.status for c in report.cleaners} == {"skipped: nothing on the filesystems concerned"}


def tree(root, dirs=20, files=30):
    for d in range(dirs):
        for f in range(files):
            make_file(str(root / f"job{d:02d}" / "sub" / f"file{f}"), size=100 + 997 * f)
    age_tree(str(root), 5)


def test_dry_run_lists_exactly_what_the_real_run_removes(tmp_path, make_config):
    root = tmp_path / "root"
    tree(root)
    cleaners = {"t": files_cleaner([root])}
    probe = FakeProbe(tmp_path, free_bytes=10**6)
    kwargs = {"target_free_bytes": 10**6 + 150_000, "cleaner_names": ["t"], "probe": probe}
    dry = run_cleanup("post", make_config(cleaners), dry_run=True, **kwargs)
    assert len(os.listdir(root)) == 20  # nothing removed by the dry run
    real = run_cleanup("post", make_config(cleaners), **kwargs)
    dry_items = [(i["path"], i["bytes"]) for i in dry.cleaner("t").items]
    real_items = [(i["path"], i["bytes"]) for i in real.cleaner("t").items]
    assert 0 < len(dry_items) < 20
    assert [p for p, _ in dry_items] == [p for p, _ in real_items]
    assert abs(real.bytes_freed - dry.bytes_freed) <= 0.01 * dry.bytes_freed
    assert real.inodes_freed == dry.inodes_freed
    assert len(os.listdir(root)) == 20 - len(dry_items)


def test_dry_run_sizes_match_du(tmp_path):
    root = tmp_path / "root"
    tree(root, dirs=5, files=40)
    os.link(root / "job00" / "sub" / "file1", root / "job01" / "hardlink")
    os.symlink("/etc", root / "job02" / "link")
    stats = walk.size_tree(str(root))
    du = subprocess.run(["du", "-s", "-B1", str(root)], capture_output=True, text=True)
    assert stats.bytes == int(du.stdout.split()[0])
    found = subprocess.run(["find", str(root)], capture_output=True, text=True)
    assert stats.inodes == len(found.stdout.splitlines()) - 1  # the hard link counted once


def test_dry_run_report_lists_paths_with_bytes(tmp_path, make_config):
    root = tmp_path / "root"
    make_file(str(root / "a"), size=10_000)
    report = run_cleanup(
        "post",
        make_config({"t": files_cleaner([root])}),
        dry_run=True,
        run_all=True,
        cleaner_names=["t"],
    )
    data = report.as_dict()
    item = data["cleaners"][0]["items"][0]
    assert item["path"] == str(root / "a") and item["bytes"] >= 10_000
    assert data["dry_run"] is True
    assert set(data) >= {
        "bytes_freed",
        "inodes_freed",
        "items_removed",
        "target_met",
        "filesystems",
        "cleaners",
        "errors",
        "duration",
    }
    fs = next(iter(data["filesystems"].values()))
    assert fs["after"]["free_bytes"] == fs["before"]["free_bytes"] + data["bytes_freed"]
    json.dumps(data)
    assert "would remove:" in report.text()


def test_real_run_records_events(tmp_path, make_config):
    root = tmp_path / "root"
    seed(root, 3)
    config = make_config({"t": files_cleaner([root])})
    report = run_cleanup("post", config, run_all=True, cleaner_names=["t"])
    events = list(read_events(config["paths"]["state_dir"], "cleanup"))
    assert len(events) == 1
    assert events[0]["cleaner"] == "t" and events[0]["stage"] == "post"
    # Events carry what each cleaner counted; the report's headline is the statvfs measurement.
    assert events[0]["bytes_freed"] == report.bytes_freed_claimed > 0
    assert events[0]["inodes_freed"] == 3
    run_cleanup("post", config, run_all=True, cleaner_names=["t"], dry_run=True)
    assert len(list(read_events(config["paths"]["state_dir"], "cleanup"))) == 1


def test_config_errors(tmp_path, make_config):
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(ConfigError, match="unknown key"):
        run_cleanup("post", make_config({"t": {**files_cleaner([root]), "colour": 1}}))
    with pytest.raises(ConfigError, match="unknown stage"):
        run_cleanup("post", make_config({"t": files_cleaner([root], stages=["later"])}))
    with pytest.raises(ConfigError, match="unknown stage"):
        run_cleanup("nightly", make_config({}))
    with pytest.raises(ConfigError, match="unknown cleaner"):
        run_cleanup("post", make_config({}), cleaner_names=["nope"])
    with pytest.raises(ConfigError, match="kind"):
        run_cleanup("post", make_config({"tmp": {"kind": "journald"}}))
    with pytest.raises(ConfigError, match="unknown toolchain"):
        run_cleanup(
            "emergency",
            make_config({"toolchains": {"items": ["cobol"]}}),
            cleaner_names=["toolchains"],
            run_all=True,
        )


def test_builtin_cleaners_are_named_and_cover_the_issue():
    names = set(BUILTIN_CLEANERS)
    assert {
        "tmp",
        "job-leftovers",
        "logs",
        "journald",
        "pkg-apt",
        "pkg-pip",
        "pkg-npm",
        "pkg-go",
        "pkg-maven",
        "pkg-gradle",
        "toolchains",
        "docker-containers",
        "docker-dangling-images",
        "docker-build-cache",
        "docker-volumes",
        "docker-images",
    } <= names
    assert BUILTIN_CLEANERS["docker-volumes"]["enabled"] is False  # opt-in
    pre = [n for n, c in BUILTIN_CLEANERS.items() if "pre" in c["stages"]]
    assert set(pre) == {"tmp", "job-leftovers", "docker-containers", "docker-dangling-images"}


def test_journald_removes_oldest_archived_until_under_max_size(tmp_path, make_config):
    jroot = tmp_path / "journal"
    mid = jroot / "0123abcd"
    make_file(str(mid / "system.journal"), size=8 * KB4, age_days=0)
    for i in range(4):
        make_file(str(mid / f"system@abc-{i:04d}.journal"), size=8 * KB4, age_days=10 - i)
    cleaner = {"roots": [str(jroot)], "max_size": 3 * 8 * KB4 + 100}
    report = run_cleanup(
        "post", make_config({"journald": cleaner}), cleaner_names=["journald"], run_all=True
    )
    assert sorted(os.listdir(mid)) == [
        "system.journal",
        "system@abc-0002.journal",
        "system@abc-0003.journal",
    ]
    assert report.cleaner("journald").items_removed == 2


def test_toolchains_catalog_and_keep_list(tmp_path, make_config, monkeypatch):
    from runnerkeep.cleanup import catalog

    htc = tmp_path / "hostedtoolcache"
    make_file(str(htc / "Python" / "3.12.1" / "x64" / "bin"), size=50_000)
    make_file(str(htc / "Python" / "3.8.18" / "x64" / "bin"), size=60_000)
    make_file(str(htc / "node" / "18.1.0" / "x64" / "bin"), size=70_000)
    monkeypatch.setitem(
        catalog.TOOLCHAINS, "hostedtoolcache", {"root": str(htc), "patterns": ["*/*"]}
    )
    config = make_config({"toolchains": {"items": ["hostedtoolcache"], "keep": ["Python/3.12*"]}})
    report = run_cleanup("emergency", config, cleaner_names=["toolchains"], run_all=True)
    assert (htc / "Python" / "3.12.1").exists()
    assert not (htc / "Python" / "3.8.18").exists()
    assert not (htc / "node" / "18.1.0").exists()
    # Largest first.
    assert [i["path"].split("/")[-1] for i in report.cleaner("toolchains").items] == [
        "18.1.0",
        "3.8.18",
    ]


def test_report_text_table(tmp_path, make_config):
    _cheap, _deep, cleaners = two_cleaners(tmp_path)
    report = run_cleanup(
        "post",
        make_config(cleaners),
        target_free_bytes=1_000_000 + KB4,
        cleaner_names=["cheap", "deep"],
        probe=FakeProbe(tmp_path, free_bytes=1_000_000),
    )
    text = report.text()
    assert isinstance(report, CleanupReport)
    assert "cheap" in text and "stopped: target met" in text and "TOTAL" in text
    assert "target met" in text.splitlines()[-1]


def test_host_without_docker_notes_it_once(tmp_path, make_config, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    report = run_cleanup(
        "post",
        make_config({}),
        run_all=True,
        dry_run=True,
        cleaner_names=["docker-containers", "docker-images"],
    )
    assert {c.status for c in report.cleaners} == {"unavailable"}
    assert report.as_dict()["errors"] == []
    assert len([n for n in report.notes if "Docker cleaners skipped" in n]) == 1
