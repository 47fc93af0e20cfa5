import json
import os
import subprocess
import sys
import zipfile

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


def test_zipapp_modules_load_from_bytecode_and_fall_back_to_source(tmp_path):
    out = tmp_path / "runnerkeep.pyz"
    build = [sys.executable, os.path.join(ROOT, "tools", "build_zipapp.py"), "--output", str(out)]
    subprocess.run(build, capture_output=True, text=True, check=True)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import runnerkeep.cache.restore as m; "
        "print(m.__spec__.origin)"
    )
    env = {"PATH": os.environ["PATH"]}
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(out)], capture_output=True, text=True, env=env, check=True
    )
    assert ran.stdout.strip().endswith("runnerkeep/cache/restore.pyc")
    # Bytecode from another Python (wrong magic number) is ignored: the source is compiled.
    other = tmp_path / "other.pyz"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".pyc"):
                data = b"\x00\x00\r\n" + data[4:]
            dst.writestr(info, data)
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(other)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert ran.stdout.strip().endswith("runnerkeep/cache/restore.py")
