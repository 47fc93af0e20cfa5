import json
import os
import subprocess
import sys

import pytest
from runnerkeep import __version__
from runnerkeep.errors import EXIT_CODES
from runnerkeep_cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"runnerkeep {__version__}"


def test_help_documents_every_exit_code_and_group(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in out
    for group in ("cache", "cleanup", "disk", "self-check"):
        assert group in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_config_gives_exit_2_and_json_error(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text("{")
    code = main(["self-check", "--json", "--config", str(bad)])
    # self-check reports a bad config as a failed check, not a crash
    report = json.loads(capsys.readouterr().out)
    assert code == 6
    assert any(c["name"] == "config" and not c["ok"] for c in report["checks"])


def test_self_check_reports_missing_directories(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"paths": {"cache_dir": str(tmp_path / "missing")}}))
    main(["self-check", "--json", "--config", str(config)])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert not checks["cache_dir"]["ok"]
    assert "does not exist" in checks["cache_dir"]["detail"]


def test_zipapp_is_reproducible_and_runs(tmp_path):
    out = tmp_path / "runnerkeep.pyz"
    build = [sys.executable, os.path.join(ROOT, "tools", "build_zipapp.py"), "--output", str(out)]
    first = subprocess.run(build, capture_output=True, text=True, check=True)
    data = out.read_bytes()
    second = subprocess.run(build, capture_output=True, text=True, check=True)
    assert first.stdout.startswith("changed") and second.stdout.startswith("unchanged")
    assert out.read_bytes() == data
    # Runs from a directory without the source tree, like on a runner host.
    ran = subprocess.run(
        [sys.executable, str(out), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        check=True,
    )
    assert ran.stdout.strip() == f"runnerkeep {__version__}"
