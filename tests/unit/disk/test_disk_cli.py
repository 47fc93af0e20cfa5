"""`runnerkeep disk ...` through main(): exit codes, --json, text."""

from __future__ import annotations

import json

from runnerkeep_cli.main import main


def write_config(tmp_path, **disk):
    config = {
        "paths": {
            "cache_dir": str(tmp_path / "cache"),
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
        },
        "disk": {
            "textfile_dir": str(tmp_path / "tf"),
            "watch_docker": False,
            "syslog": False,
            "job_peak_floor": "1MiB",
            "cache_quota_min": 0,
            **disk,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_budget_text_and_json(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["disk", "budget", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "Reserve R = 5% of C" in out and "cache quota" in out and "warning below" in out
    assert main(["disk", "budget", "--json", "--config", cfg]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cache_quota_bytes"] > 0 and data["explanation"]


def test_budget_that_cannot_be_met_exits_2_with_the_reason(tmp_path, capsys):
    cfg = write_config(tmp_path, reserve="99%")
    assert main(["disk", "budget", "--config", cfg]) == 2
    assert "disk budget cannot be met" in capsys.readouterr().err


def test_unknown_disk_setting_is_a_usage_error(tmp_path, capsys):
    cfg = write_config(tmp_path, reservee="5%")
    assert main(["disk", "budget", "--config", cfg]) == 2
    assert "reservee" in capsys.readouterr().err


def test_job_start_end_history(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["disk", "job-start", "--job-id", "j-1", "--no-sampler", "--config", cfg]) == 0
    assert main(["disk", "history", "--config", cfg]) == 0
    assert "running: j-1" in capsys.readouterr().out
    assert main(["disk", "job-end", "--job-id", "j-1", "--json", "--config", cfg]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["job_id"] == "j-1" and record["peak_bytes"] >= 0
    assert main(["disk", "history", "--json", "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert main(["disk", "job-end", "--job-id", "j-1", "--config", cfg]) == 2


def test_watch_once_and_loop(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["disk", "watch", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "disk state: ok" in out and "metrics:" in out
    assert (tmp_path / "tf" / "runnerkeep_disk.prom").exists()
    assert (
        main(["disk", "watch", "--loop", "--count", "2", "--interval", "0.1s", "--config", cfg])
        == 0
    )
    assert capsys.readouterr().out.count("disk state: ok") == 2


def test_watch_check_flag_fails_when_not_ok(tmp_path, capsys):
    # A warning watermark above the free space of any real disk puts the watch in warning.
    cfg = write_config(
        tmp_path, warning_free="99%", critical_free="2%", emergency_free="1%", cache_quota="1M"
    )
    assert main(["disk", "watch", "--check", "--config", cfg]) == 6
    assert "disk state: warning (was ok)" in capsys.readouterr().out


def test_report_no_docker(tmp_path, capsys):
    cfg = write_config(tmp_path, report_roots=[str(tmp_path)])
    assert main(["disk", "report", "--no-docker", "--json", "--config", cfg]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "docker" not in data and data["filesystems"]


def test_job_end_with_a_damaged_job_record_warns_and_exits_0(tmp_path, capsys):
    # A job hook must never fail a CI job over damaged state: the peak is simply not recorded.
    cfg = write_config(tmp_path)
    assert main(["disk", "job-start", "--job-id", "j-1", "--no-sampler", "--config", cfg]) == 0
    jobs = [p for p in tmp_path.rglob("*j-1*") if p.is_file() and p.suffix == ".json"]
    assert jobs, list(tmp_path.rglob("*"))
    for job in jobs:
        job.write_bytes(b"\xff\xfe{not json")
    capsys.readouterr()
    assert main(["disk", "job-end", "--job-id", "j-1", "--json", "--config", cfg]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["recorded"] is False
    assert "warning" in out.err and "Traceback" not in out.err
    assert main(["disk", "history", "--json", "--config", cfg]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 0


def test_watch_hands_its_emergency_step_the_budgeted_cleanup_stage(tmp_path, capsys, monkeypatch):
    # disk/ does not import cleanup/: the CLI passes runnerkeep.wiring.run_cleanup (the stage
    # with the budget's targets) into the watch, which calls it on entering emergency.
    from runnerkeep import wiring

    calls = []

    def run_cleanup(stage, config, **options):
        calls.append((stage, options["paths"], options["force"]))
        raise wiring.stages.ConfigError("stage stopped here")

    monkeypatch.setattr(wiring, "run_cleanup", run_cleanup)
    cfg = write_config(
        tmp_path, warning_free="99%", critical_free="98%", emergency_free="97%", cache_quota="1M"
    )
    assert main(["disk", "watch", "--json", "--config", cfg]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["state"] == "emergency"
    assert [(stage, len(paths), force) for stage, paths, force in calls] == [
        ("emergency", 1, False)
    ]
    assert "stage stopped here" in result["emergency_cleanup"]["error"]
