"""The CI job lock (start/end across processes, stale detection) and the CLI front door."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from cleanuptest_helpers import files_cleaner, make_file
from runnerkeep.cleanup import active_jobs, job_lock, release_job_lock, run_cleanup, take_job_lock
from runnerkeep.cleanup.lock import lock_dir, run_lock
from runnerkeep.errors import EXIT_LOCKED, LockHeldError
from runnerkeep_cli.main import main


@pytest.fixture
def junk(tmp_path, make_config):
    root = tmp_path / "root"
    make_file(str(root / "a"))
    make_file(str(root / "b"))
    # Zero targets: runs without --cleaner/--all must never touch this machine's real dirs.
    zero = {"free": 0, "inodes": 0}
    targets = {"pre": zero, "post": zero, "emergency": zero}
    return root, make_config({"t": files_cleaner([root])}, targets=targets)


def state(config):
    return config["paths"]["state_dir"]


def test_job_lock_blocks_post_and_emergency_not_pre(junk):
    root, config = junk
    take_job_lock(state(config), "job-1", pid=os.getpid())
    for stage in ("post", "emergency"):
        with pytest.raises(LockHeldError, match="job-1"):
            run_cleanup(stage, config, run_all=True, cleaner_names=["t"])
    assert len(os.listdir(root)) == 2
    report = run_cleanup("pre", config, run_all=True, cleaner_names=["t"])
    assert report.items_removed == 2


def test_force_overrides_the_job_lock(junk):
    _root, config = junk
    with job_lock(state(config), "job-2"):
        report = run_cleanup("post", config, run_all=True, cleaner_names=["t"], force=True)
    assert report.items_removed == 2
    assert report.jobs and report.jobs[0]["job_id"] == "job-2"


def test_dry_run_during_a_job_notes_the_lock(junk):
    _root, config = junk
    with job_lock(state(config), "job-3"):
        report = run_cleanup("post", config, run_all=True, cleaner_names=["t"], dry_run=True)
    assert report.items_removed == 2  # would remove
    assert any("hold the runner lock" in n for n in report.notes)


def test_job_end_releases_and_is_idempotent(junk):
    _root, config = junk
    record = take_job_lock(state(config), "gh/123:build", pid=os.getpid())
    files = os.listdir(lock_dir(state(config)))
    assert "gh_123_build.json" in files
    with open(os.path.join(lock_dir(state(config)), "gh_123_build.json")) as handle:
        assert json.load(handle)["job_id"] == "gh/123:build"
    assert record["pid"] == os.getpid()
    assert release_job_lock(state(config), "gh/123:build")["job_id"] == "gh/123:build"
    assert release_job_lock(state(config), "gh/123:build") is None
    assert run_cleanup("post", config, run_all=True, cleaner_names=["t"]).items_removed == 2


def test_stale_lock_of_a_dead_process_is_removed(junk):
    _root, config = junk
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    take_job_lock(state(config), "dead-job", pid=proc.pid)
    live, stale = active_jobs(state(config))
    assert live == []
    assert stale[0]["job_id"] == "dead-job" and "gone" in stale[0]["stale"]
    assert not os.listdir(lock_dir(state(config))) or os.listdir(lock_dir(state(config))) == [
        ".guard"
    ]
    assert run_cleanup("post", config, run_all=True, cleaner_names=["t"]).items_removed == 2


def test_lock_older_than_max_age_is_stale(junk):
    _root, config = junk
    take_job_lock(state(config), "ancient", pid=os.getpid(), now=time.time() - 2 * 86400)
    live, stale = active_jobs(state(config), max_age=86400)
    assert live == [] and "older than" in stale[0]["stale"]


def test_lock_spans_processes(junk, tmp_path):
    """job-start in one process, a cleanup in another sees it, job-end in a third frees it."""
    _root, config = junk
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "RUNNERKEEP_CONFIG": str(cfg),
    }
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:

        def cli(*args):
            return subprocess.run(
                [sys.executable, "-m", "runnerkeep_cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        started = cli(
            "cleanup", "job-start", "--job-id", "77", "--pid", str(holder.pid), "--no-pre"
        )
        assert started.returncode == 0, started.stderr
        blocked = cli("cleanup", "--stage", "post", "--cleaner", "t", "--all")
        assert blocked.returncode == EXIT_LOCKED
        assert "holds the runner lock" in blocked.stderr
        status = cli("cleanup", "status", "--json")
        assert status.returncode == EXIT_LOCKED and json.loads(status.stdout)["busy"] is True
        ended = cli("cleanup", "job-end", "--job-id", "77", "--no-post")
        assert ended.returncode == 0
        ran = cli("cleanup", "run", "--stage", "post", "--cleaner", "t", "--all", "--json")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["items_removed"] == 2
    finally:
        holder.kill()
        holder.wait()


def test_two_cleanup_runs_do_not_overlap(junk):
    _root, config = junk
    with run_lock(state(config)), pytest.raises(LockHeldError, match="another cleanup run"):
        run_cleanup("pre", config, run_all=True, cleaner_names=["t"])


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def cli_config(junk, tmp_path, monkeypatch):
    root, config = junk
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(cfg))
    return root, config


def test_cli_literal_form_from_the_issue(cli_config, capsys):
    root, _config = cli_config
    code, out, _ = run_cli(
        capsys, "cleanup", "--stage", "post", "--dry-run", "--json", "--all", "--cleaner", "t"
    )
    assert code == 0
    data = json.loads(out)
    assert data["dry_run"] and data["items_removed"] == 2
    assert sorted(i["path"] for i in data["cleaners"][0]["items"]) == [
        str(root / "a"),
        str(root / "b"),
    ]
    assert len(os.listdir(root)) == 2


def test_cli_run_subcommand_and_human_table(cli_config, capsys):
    root, _config = cli_config
    code, out, _ = run_cli(
        capsys, "cleanup", "run", "--stage", "post", "--target-free", "100%", "--cleaner", "t"
    )
    assert code == 0
    assert "cleaner" in out and "TOTAL" in out and "target NOT met" in out
    assert os.listdir(root) == []


def test_cli_needs_a_stage(cli_config, capsys):
    code, _out, err = run_cli(capsys, "cleanup")
    assert code == 2 and "--stage" in err


def test_cli_job_start_runs_pre_and_job_end_runs_post(cli_config, capsys, monkeypatch):
    _root, config = cli_config
    monkeypatch.setenv("CI_JOB_ID", "4242")
    code, out, _ = run_cli(capsys, "cleanup", "job-start", "--pid", str(os.getpid()), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["job_id"] == "4242" and data["report"]["stage"] == "pre"
    live, _ = active_jobs(state(config))
    assert [r["job_id"] for r in live] == ["4242"]
    code, out, _ = run_cli(capsys, "cleanup", "job-end", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["released"] and data["report"]["stage"] == "post"
    assert active_jobs(state(config))[0] == []


def test_cli_list_cleaners(cli_config, capsys):
    code, out, _ = run_cli(capsys, "cleanup", "list-cleaners")
    assert code == 0
    assert "docker-images" in out and "toolchain catalog" in out and "t " in out


@pytest.mark.parametrize(
    "argv",
    [
        ["cleanup", "--json", "status"],
        ["cleanup", "status", "--json"],
        ["cleanup", "--json", "list-cleaners"],
    ],
)
def test_cli_options_count_before_or_after_the_subcommand(cli_config, capsys, argv):
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert isinstance(json.loads(out), dict)


def test_cli_config_before_the_subcommand_is_used(cli_config, capsys, tmp_path):
    code, _out, err = run_cli(
        capsys, "cleanup", "--config", str(tmp_path / "nowhere.json"), "status"
    )
    assert code == 2 and "nowhere.json" in err
