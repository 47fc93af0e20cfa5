"""The image_cache module's `remote` and `no_remote` options against a real loopback registry
(TLS, htpasswd): verify + repair pulls bad keys again, check mode writes nothing and fetches
nothing, a bad `remote` key fails the task naming it. No Docker needed."""

from __future__ import annotations

import glob
import json
import os

import pytest
from cachetest_helpers import legacy_archive, random_layer
from harness.registry import LocalRegistry
from runnerkeep.cache import Store, import_archive, verify_store
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.remote.credentials import read_credentials
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings
from test_image_cache_module import run_module

LAYER = random_layer(300_000, "m.bin")


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


@pytest.fixture
def pushed(tmp_path, registry):
    """A store holding key `one`, pushed to a repository of this test's own; the `remote`
    option that reaches it; a config without any remote."""
    store = str(tmp_path / "store")
    archive = tmp_path / "one.tar"
    archive.write_bytes(legacy_archive([(["one:1"], [LAYER])]))
    import_archive(store, "one", str(archive))
    remote = registry.remote_config("module/" + tmp_path.name.lower()[:40], registry.push_user)
    settings = remote_settings({"remote": remote})
    with RegistryClient(settings, read_credentials(settings.credentials_file)) as client:
        push_entry(store, "one", client)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"paths": {"state_dir": str(tmp_path / "state")}}))
    return {"store": store, "remote": remote, "config": str(config)}


def rot(store: str) -> None:
    blob = max(glob.glob(os.path.join(store, "blobs", "sha256", "*")), key=os.path.getsize)
    with open(blob, "r+b") as handle:
        handle.seek(100)
        handle.write(b"rot")


def test_verify_with_repair_pulls_the_bad_key_again(tmp_path, pushed):
    rot(pushed["store"])
    args = dict(state="verified", dir=pushed["store"], config_file=pushed["config"], repair=True)
    result = run_module(tmp_path, **args, remote=pushed["remote"])
    assert not result.get("failed"), result
    assert result["result"] == "repaired" and result["repaired"] == ["one"]
    assert result["changed"] is True
    assert verify_store(pushed["store"])["ok"]
    # Without the fleet tier the same damage fails the task.
    rot(pushed["store"])
    failed = run_module(tmp_path, **args, remote=pushed["remote"], no_remote=True)
    assert failed["failed"] and "cache verify found problems" in failed["msg"]


def test_check_mode_asks_the_registry_and_writes_nothing(tmp_path, pushed):
    empty = str(tmp_path / "empty-store")
    args = dict(state="restored", key="one", dir=empty, config_file=pushed["config"])
    result = run_module(tmp_path, **args, remote=pushed["remote"], _ansible_check_mode=True)
    assert not result.get("failed"), result
    assert result["result"] == "would_pull" and result["hit"] is True
    assert not os.path.exists(empty)
    assert not os.path.exists(tmp_path / "state")
    missing = run_module(
        tmp_path, **dict(args, key="two"), remote=pushed["remote"], _ansible_check_mode=True
    )
    assert missing["hit"] is False and missing["result"] == "miss"
    assert "two" in missing["msg"] and not os.path.exists(empty)


def test_check_mode_repair_neither_quarantines_nor_pulls(tmp_path, pushed):
    rot(pushed["store"])
    args = dict(state="verified", dir=pushed["store"], config_file=pushed["config"], repair=True)
    result = run_module(tmp_path, **args, remote=pushed["remote"], _ansible_check_mode=True)
    assert result["failed"]  # nothing quarantined, nothing pulled: the damage stays
    assert Store(pushed["store"], key_file=None).list_keys() == ["one"]
    assert not verify_store(pushed["store"])["ok"]


def test_a_bad_remote_option_fails_the_task_naming_it(tmp_path, pushed):
    args = dict(state="restored", key="one", dir=pushed["store"], config_file=pushed["config"])
    result = run_module(tmp_path, **args, remote=dict(pushed["remote"], pasword="x"))
    assert result["failed"] and "pasword" in result["msg"] and result["exit_code"] == 2
    result = run_module(tmp_path, **args, remote={"url": "http://registry.example.com/rk"})
    assert result["failed"] and "http://" in result["msg"]
