"""Incremental restore: layers the daemon holds are left out of the archive sent to the engine.

The engine here is tests/unit/cache/fake_engine.py (its docstring says why a fake is needed:
the real engine 20.10 never refuses a partial archive, and is shared with other tests). The
real engine's side is tests/integration/test_cache_engine_api.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import pytest
from cachetest_helpers import config_for, legacy_archive, random_layer, sha
from fake_engine import FakeEngine
from runnerkeep import docker_api
from runnerkeep.cache.archive_writer import entry_archive_length
from runnerkeep.cache.partial import blobs_held, chain_ids, entry_chains, held_chains
from runnerkeep.cache.restore import restore_entry
from runnerkeep.cache.save import import_archive
from runnerkeep.cache.store import Store
from runnerkeep.errors import EXIT_CACHE_MISS, CacheMiss, DockerCommandError

BASE = [random_layer(96 * 1024, "b0"), random_layer(64 * 1024, "b1")]
APP = random_layer(16 * 1024, "app")


@pytest.fixture
def engine_dir(monkeypatch):
    # A short path: unix socket names are limited to 108 bytes.
    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_engine(engine_dir):
    engines = []

    def make(refuse_partial: bool = False, base_present: bool = True) -> FakeEngine:
        engine = FakeEngine(os.path.join(engine_dir, "engine.sock"), refuse_partial)
        if base_present:
            engine.add_image(config_for(BASE, "base"), ["base:1"])
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    archive = tmp_path / "app.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [*BASE, APP])]))
    import_archive(store, "k", str(archive))
    return store


APP_ID = sha(config_for([*BASE, APP], "0"))  # legacy_archive labels image 0 "0"


class Progress:
    def __init__(self) -> None:
        self.total = None
        self.seen: list[int] = []

    def __call__(self, done: int) -> None:
        self.seen.append(done)


def blob_member(layer: bytes) -> str:
    return "blobs/sha256/" + sha(layer)[7:]


def test_layers_the_daemon_holds_are_not_sent(store, make_engine):
    engine = make_engine()
    progress = Progress()
    result = restore_entry(store, "k", progress=progress)
    entry, _ = store.read_entry("k")
    assert result["loaded"] and result["loaded_via"] == "engine-api"
    assert result["layers_left_out"] == 2
    assert result["bytes_left_out"] == len(BASE[0]) + len(BASE[1])
    [load] = engine.loads
    # Content-Length was right: the engine read exactly what was announced, and the result
    # reports those bytes
    assert load["received"] == load["announced"] == result["bytes_loaded"]
    left_out = {sha(layer) for layer in BASE}
    assert result["bytes_loaded"] == entry_archive_length(entry, left_out)
    assert result["bytes_loaded"] <= entry_archive_length(entry) - result["bytes_left_out"]
    assert blob_member(APP) in load["members"]
    assert not {blob_member(layer) for layer in BASE} & set(load["members"])
    assert "manifest.json" in load["members"]
    # the right image, tagged
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]
    # the progress line knew the bytes to send, and got there
    assert progress.total == result["bytes_loaded"] == progress.seen[-1]


def test_an_engine_refusing_a_partial_archive_gets_the_whole_one(store, make_engine):
    engine = make_engine(refuse_partial=True)
    result = restore_entry(store, "k")
    entry, _ = store.read_entry("k")
    assert len(engine.loads) == 2
    first, second = engine.loads
    assert not first.get("loaded") and blob_member(BASE[0]) not in first["members"]
    assert second["loaded"] and blob_member(BASE[0]) in second["members"]
    assert result["bytes_left_out"] == 0
    assert result["bytes_loaded"] == entry_archive_length(entry) == second["received"]
    assert "not found" in result["partial_refused"]
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]


def test_without_the_base_the_whole_archive_is_sent_once(store, make_engine):
    engine = make_engine(base_present=False)
    result = restore_entry(store, "k")
    entry, _ = store.read_entry("k")
    [load] = engine.loads
    assert load["received"] == entry_archive_length(entry) == result["bytes_loaded"]
    assert result["bytes_left_out"] == 0 and "partial_refused" not in result
    assert APP_ID in engine.images


def flip_a_byte(store: Store, digest: str) -> None:
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(700)
        byte = handle.read(1)
        handle.seek(700)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_blob_of_a_layer_left_out_does_not_matter(store, make_engine):
    engine = make_engine()
    flip_a_byte(store, sha(BASE[0]))
    result = restore_entry(store, "k")
    assert result["loaded"] and result["layers_left_out"] == 2
    assert APP_ID in engine.images
    assert os.path.exists(store.blob_path(sha(BASE[0])))  # never read, so not quarantined


def test_a_damaged_blob_that_is_sent_is_still_a_miss(store, make_engine):
    engine = make_engine()
    flip_a_byte(store, sha(APP))
    with pytest.raises(CacheMiss, match="quarantined") as caught:
        restore_entry(store, "k")
    assert caught.value.exit_code == EXIT_CACHE_MISS
    [load] = engine.wait_for_loads(1)
    assert load["received"] < load["announced"]  # cut before manifest.json
    assert APP_ID not in engine.images
    assert not os.path.exists(store.blob_path(sha(APP)))  # quarantined


def test_a_dry_run_says_what_would_be_left_out_and_loads_nothing(store, make_engine):
    engine = make_engine()
    result = restore_entry(store, "k", dry_run=True)
    assert result["result"] == "would_load"
    assert result["bytes_left_out"] == len(BASE[0]) + len(BASE[1])
    entry, _ = store.read_entry("k")
    left_out = blobs_held(entry, held_chains(engine.path, entry_chains(entry)))
    assert result["bytes_loaded"] == entry_archive_length(entry, left_out)
    assert engine.loads == [] and not any("POST" in line for line in engine.requests)
    # the estimate is what the restore then sends (attack15 #14: blob bytes, not the archive)
    real = restore_entry(store, "k")
    assert real["bytes_loaded"] == result["bytes_loaded"] == engine.loads[0]["received"]
    assert real["bytes_left_out"] == result["bytes_left_out"]


def test_a_dry_run_without_anything_held_estimates_the_whole_archive(store, make_engine):
    engine = make_engine(base_present=False)
    result = restore_entry(store, "k", dry_run=True)
    entry, _ = store.read_entry("k")
    assert result["bytes_left_out"] == 0
    assert result["bytes_loaded"] == entry_archive_length(entry)
    assert restore_entry(store, "k")["bytes_loaded"] == result["bytes_loaded"]
    assert engine.loads[0]["received"] == result["bytes_loaded"]


def test_chain_ids_follow_the_image_spec():
    a, b, c = (sha(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


def layer(digest: str, size: int = 10) -> dict:
    return {"digest": digest, "diff_id": digest, "size": size, "media_type": "x"}


def image(config: str, layers: list[str]) -> dict:
    return {
        "id": config,
        "tags": [],
        "config": {"digest": config, "size": 5},
        "layers": [layer(d) for d in layers],
        "manifests": [],
    }


def test_a_blob_is_left_out_only_where_every_image_using_it_has_its_chain_held():
    l1, l2, l3 = (sha(x) for x in (b"1", b"2", b"3"))
    # X is [l1, l2, l3]; Y starts with l2 itself, a different chain than l2 on top of l1
    entry = {"images": [image(sha(b"X"), [l1, l2, l3]), image(sha(b"Y"), [l2])]}
    held = set(chain_ids([l1, l2]))  # the daemon holds X's first two layers
    assert blobs_held(entry, held) == {l1: 10}  # l2 is needed by Y, l3 by X
    assert blobs_held(entry, held | {l2}) == {l1: 10, l2: 10}
    assert blobs_held(entry, set()) == {}
    # configs are always sent, even when a digest also names a held layer
    entry = {"images": [image(l1, [l1])]}
    assert blobs_held(entry, {l1}) == {}


def test_the_daemon_is_asked_only_until_every_chain_is_found(make_engine):
    engine = make_engine(base_present=False)
    base_id = engine.add_image(config_for(BASE, "base"), ["base:1"])
    for index in range(20):
        engine.add_image(config_for([random_layer(100, f"x{index}")], str(index)), [])
    entry = {"images": [image(sha(b"cfg"), [sha(BASE[0]), sha(BASE[1])])]}
    wanted = entry_chains(entry)
    assert held_chains(engine.path, wanted) == wanted
    assert engine.inspects == 1  # the base came first in the daemon's list
    # without the base, every image is looked at and nothing found
    del engine.images[base_id]
    engine.inspects = 0
    assert held_chains(engine.path, wanted) == set()
    assert engine.inspects == 20


# -- answers of another shape (attack15 #9: a RootFS that is a list was an AttributeError) --
ODD_ID = "sha256:" + "e" * 64


@pytest.mark.parametrize(
    "odd",
    [
        {"RootFS": ["odd"]},
        {"RootFS": {"Layers": "sha256:" + "f" * 64}},
        {"RootFS": {"Layers": [1, 2]}},
        {"RepoTags": "base:1"},
        {"Size": "big"},
        {"Size": True},
    ],
)
def test_an_image_answer_of_another_shape_means_the_whole_archive(store, make_engine, odd):
    engine = make_engine()
    # listed first, so the search for held layers meets it before the base image
    engine.images = {ODD_ID: {"Id": ODD_ID, "RepoTags": [], **odd}, **engine.images}
    engine.images[ODD_ID].setdefault("RepoTags", [])
    result = restore_entry(store, "k")
    entry, _ = store.read_entry("k")
    assert result["loaded"] and result["bytes_left_out"] == 0
    assert result["bytes_loaded"] == entry_archive_length(entry) == engine.loads[0]["received"]
    assert APP_ID in engine.images


def test_an_odd_answer_about_the_entrys_own_image_is_a_docker_error(store, make_engine):
    engine = make_engine()
    engine.add_image(config_for([*BASE, APP], "0"), ["app:1"])
    engine.images[APP_ID]["RootFS"] = "layers"
    with pytest.raises(DockerCommandError, match=r"malformed \(RootFS is not an object\)"):
        restore_entry(store, "k")


@pytest.mark.parametrize(
    "call, answer",
    [
        (docker_api.list_image_ids, [{"Id": 5}]),
        (docker_api.list_image_ids, ["sha256:" + "a" * 64]),
        (docker_api.engine_info, {"ServerVersion": 27}),
        (docker_api.engine_info, {"DockerRootDir": ["/var/lib/docker"]}),
    ],
)
def test_engine_answers_of_another_shape_are_docker_errors(monkeypatch, call, answer):
    monkeypatch.setattr(docker_api, "get_json", lambda path, target, method="GET": (200, answer))
    with pytest.raises(DockerCommandError, match="malformed"):
        call("/nonexistent.sock")


def test_an_error_in_an_export_stream_of_another_shape_is_still_said():
    said = docker_api._stream_error(b'tar bytes{"errorDetail":"disk gone","x":1}\n')
    assert said == "disk gone"
    assert docker_api._stream_error(b'{"errorDetail":{"message":"m"}}') == "m"
