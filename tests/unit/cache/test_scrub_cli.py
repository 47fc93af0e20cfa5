"""`runnerkeep cache verify --max-duration`: the scrub through the CLI, its text, JSON, exit
codes, and cache.scrub_period from the config."""

from __future__ import annotations

import json
import os

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from runnerkeep.cache import Store
from runnerkeep.cache.scrub import STATUS_FILE
from runnerkeep_cli.main import main

LAYER = random_layer(50_000)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNERKEEP_CACHE_DIR", raising=False)
    store = str(tmp_path / "store")
    archive = tmp_path / "a.tar"
    archive.write_bytes(legacy_archive([(["a:1"], [LAYER])]))
    write_config(tmp_path, monkeypatch, {})
    assert main(["cache", "import", "--dir", store, "--key", "a", str(archive)]) == 0
    return tmp_path, store


def write_config(tmp_path, monkeypatch, cache: dict) -> None:
    config = tmp_path / "config.json"
    body = {"paths": {"state_dir": str(tmp_path / "state")}, "cache": cache}
    config.write_text(json.dumps(body))
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(config))


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_scrub_text_and_json(env, capsys):
    _tmp, store = env
    code, out, _ = run(capsys, "cache", "verify", "--dir", store, "--max-duration", "10m")
    assert code == 0
    assert out.startswith("scrubbed ") and "2 blob(s) stored" in out and "all good" in out
    code, out, _ = run(capsys, "cache", "verify", "--dir", store, "--max-duration", "0", "--json")
    report = json.loads(out)
    assert code == 0 and report["scrub"] and report["blobs_checked"] == 0
    assert report["period"] == 7 * 86400  # cache.scrub_period's default
    assert os.path.exists(os.path.join(store, STATUS_FILE))


def test_scrub_finds_rot_exit_6_and_repairs(env, capsys, monkeypatch):
    tmp_path, store = env
    write_config(tmp_path, monkeypatch, {"scrub_period": "1h"})  # everything due
    path = Store(store, key_file=None).blob_path(sha(LAYER))
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.write(b"rot")
    code, out, _ = run(capsys, "cache", "verify", "--dir", store, "--max-duration", "1h")
    assert code == 6 and f"BAD blob {sha(LAYER)}" in out and "problems found" in out
    assert os.path.exists(path)  # reported only, without --repair
    args = ("cache", "verify", "--dir", store, "--max-duration", "1h", "--repair", "--json")
    code, out, _ = run(capsys, *args)
    report = json.loads(out)
    assert code == 6 and report["period"] == 3600 and len(report["quarantined"]) == 2
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (("--max-duration", "soon"), {}, "--max-duration: expected a duration"),
        (("--max-duration", "1h", "--key", "a"), {}, "takes no --key"),
        (("--max-duration", "1h"), {"scrub_period": "0"}, "cache.scrub_period"),
    ],
)
def test_bad_scrub_arguments_are_one_line(env, capsys, monkeypatch, args, config, message):
    tmp_path, store = env
    write_config(tmp_path, monkeypatch, config)
    code, out, err = run(capsys, "cache", "verify", "--dir", store, *args)
    assert code == 2 and message in err and "Traceback" not in err + out
    assert not os.path.exists(os.path.join(store, STATUS_FILE))
