"""A pulled entry's tags come from the index's annotation, which no digest binds to the key:
restoring it may create a name or keep one on the entry's own images, never re-point a name
another image holds (attack16 F3). An entry saved on this host keeps re-pointing its tags.
Also: the miss a restore raises after quarantining says ``corrupt`` (the front door's repair)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from cachetest_helpers import config_for, legacy_archive, random_layer, sha
from fake_engine import FakeEngine
from remote_fakes import FakeRegistry
from runnerkeep.cache import Store, import_archive
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.cache.restore import restore_entry
from runnerkeep.errors import CacheMiss

LAYER = random_layer(30_000, "app")
APP_ID = sha(config_for([LAYER], "0"))
OTHER = config_for([random_layer(20_000, "base")], "base")


@pytest.fixture
def engine(monkeypatch):
    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")  # unix socket names are short
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    fake = FakeEngine(os.path.join(path, "engine.sock"))
    yield fake
    fake.close()
    shutil.rmtree(path, ignore_errors=True)


def _saved(tmp_path, name: str, tags: list[str]) -> Store:
    store = Store(str(tmp_path / name), key_file=None)
    archive = tmp_path / f"{name}.tar"
    archive.write_bytes(legacy_archive([(tags, [LAYER])]))
    import_archive(store, "k", str(archive))
    return store


def _pulled(tmp_path, tags: list[str]) -> Store:
    """Key k as a runner pulls it: its index names ``tags`` (what a rewritten annotation says)."""
    registry = FakeRegistry()
    push_entry(_saved(tmp_path, "src", tags), "k", registry)
    target = Store(str(tmp_path / "dst"), key_file=None)
    pull_entry(target, "k", registry)
    return target


def _tag_requests(engine) -> list[str]:
    return [line for line in engine.requests if "/tag?" in line]


def test_a_pulled_entry_never_re_points_a_name_another_image_holds(tmp_path, engine):
    base_id = engine.add_image(OTHER, ["base:bookworm"])
    engine.add_image(config_for([LAYER], "0"), [])
    store = _pulled(tmp_path, ["app:1", "base:bookworm"])
    state = tmp_path / "state"
    result = restore_entry(store, "k", state_dir=str(state))
    assert result["not_retagged"] == ["base:bookworm"]
    assert result["retagged"] == ["app:1"]
    assert engine.images[base_id]["RepoTags"] == ["base:bookworm"]
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]
    assert all("repo=base" not in line for line in _tag_requests(engine))
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    [restore] = [e for e in events if e.get("op") == "restore"]
    assert restore["not_retagged"] == ["base:bookworm"]


def test_a_pulled_entry_loads_without_a_foreign_name_in_the_archive(tmp_path, engine):
    engine.add_image(OTHER, ["base:bookworm"])
    store = _pulled(tmp_path, ["app:1", "base:bookworm"])
    result = restore_entry(store, "k")
    assert result["loaded"] is True and result["not_retagged"] == ["base:bookworm"]
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]
    [base] = [i for i in engine.images.values() if i["Id"] != APP_ID]
    assert base["RepoTags"] == ["base:bookworm"]


def test_a_pulled_entry_keeps_names_on_its_own_images(tmp_path, engine):
    engine.add_image(config_for([LAYER], "0"), ["app:1"])
    store = _pulled(tmp_path, ["app:1", "app:latest"])
    result = restore_entry(store, "k")
    assert result["not_retagged"] == [] and result["retagged"] == ["app:latest"]
    assert engine.images[APP_ID]["RepoTags"] == ["app:1", "app:latest"]


def test_an_entry_saved_here_still_re_points_its_tags(tmp_path, engine):
    engine.add_image(OTHER, ["base:bookworm"])
    engine.add_image(config_for([LAYER], "0"), [])
    store = _saved(tmp_path, "local", ["app:1", "base:bookworm"])
    result = restore_entry(store, "k")
    assert result["not_retagged"] == []
    assert result["retagged"] == ["app:1", "base:bookworm"]
    assert "base:bookworm" in engine.images[APP_ID]["RepoTags"]


def test_the_miss_after_quarantine_says_corrupt(tmp_path, engine):
    store = _saved(tmp_path, "local", ["app:1"])
    path = Path(store.blob_path(sha(LAYER)))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CacheMiss) as caught:
        restore_entry(store, "k")
    assert caught.value.corrupt is True and "quarantined" in str(caught.value)
    with pytest.raises(CacheMiss) as again:
        restore_entry(store, "k")
    assert again.value.corrupt is False
