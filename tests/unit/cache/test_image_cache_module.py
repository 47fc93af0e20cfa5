"""image_cache's prune records the event the CLI's `cache prune` records (the same core call,
the same state dir lookup), and neither records one in a dry run / check mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import import_archive
from runnerkeep_cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LIBRARY = os.path.join(ROOT, "library", "image_cache.py")
MODULE_RUNNER = """
import importlib, pkgutil, runpy, sys
import ansible.module_utils
import runnerkeep
for found in pkgutil.walk_packages(runnerkeep.__path__, "runnerkeep."):
    importlib.import_module(found.name)
for name, mod in list(sys.modules.items()):
    if name == "runnerkeep" or name.startswith("runnerkeep."):
        sys.modules["ansible.module_utils." + name] = mod
ansible.module_utils.runnerkeep = runnerkeep
sys.argv = [sys.argv[1], sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
LAYERS = [random_layer(3000, "a.bin"), random_layer(2000, "b.bin")]


def store_and_config(tmp_path, name):
    """A store of two entries and a config whose state dir is this front door's own."""
    top = tmp_path / name
    top.mkdir()
    store = str(top / "store")
    for key, layer in zip(("one", "two"), LAYERS):
        archive = top / f"{key}.tar"
        archive.write_bytes(legacy_archive([([f"{key}:1"], [layer])]))
        import_archive(store, key, str(archive))
    config = top / "config.json"
    config.write_text(json.dumps({"paths": {"state_dir": str(top / "state")}}))
    return store, str(config), top / "state" / "events.jsonl"


def run_module(tmp_path, **args):
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "module_utils"))
    env.pop("RUNNERKEEP_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", MODULE_RUNNER, LIBRARY, str(argfile)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return json.loads(done.stdout)


def prune_events(path):
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "time"} for e in events if e.get("op") == "prune"]


@pytest.fixture(autouse=True)
def _no_cache_dir_env(monkeypatch):
    monkeypatch.delenv("RUNNERKEEP_CACHE_DIR", raising=False)


def test_the_modules_prune_event_is_the_clis(tmp_path, capsys):
    cli_store, cli_config, cli_events = store_and_config(tmp_path, "cli")
    mod_store, mod_config, mod_events = store_and_config(tmp_path, "module")
    args = ["cache", "prune", "--dir", cli_store, "--config", cli_config, "--max-size", "1"]
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = run_module(
        tmp_path, state="pruned", dir=mod_store, config_file=mod_config, max_size="1"
    )
    assert result["changed"] and not result.get("failed"), result
    assert result["bytes_freed"] == printed["bytes_freed"] > 0
    cli, module = prune_events(cli_events), prune_events(mod_events)
    assert len(cli) == 1 and module == cli
    assert cli[0]["kind"] == "cache" and cli[0]["evicted"] == 2


def test_neither_records_a_prune_in_a_dry_run(tmp_path, capsys):
    cli_store, cli_config, cli_events = store_and_config(tmp_path, "cli")
    mod_store, mod_config, mod_events = store_and_config(tmp_path, "module")
    args = ["cache", "prune", "--dir", cli_store, "--config", cli_config, "--max-size", "1"]
    assert main([*args, "--dry-run", "--json"]) == 0
    capsys.readouterr()
    result = run_module(
        tmp_path,
        state="pruned",
        dir=mod_store,
        config_file=mod_config,
        max_size="1",
        _ansible_check_mode=True,
    )
    assert result["changed"] and not result.get("failed"), result
    assert prune_events(cli_events) == prune_events(mod_events) == []
    assert not mod_events.parent.exists()  # check mode made no state dir either
