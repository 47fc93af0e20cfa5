"""Store, import/export, verify, quarantine, prune, keys, stale temps, space plan (no Docker)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cachetest_helpers import legacy_archive, oci_archive, random_layer, sha
from runnerkeep.cache import (
    CorruptBlob,
    Store,
    export_entry,
    import_archive,
    list_entries,
    prune_store,
    remove_key,
    validate_key,
    verify_store,
)
from runnerkeep.cache.archive_writer import entry_archive_length, write_entry_archive
from runnerkeep.cache.checks import load_checked_entry
from runnerkeep.cache.save import SaveFailed, _space_message, space_plan
from runnerkeep.cache.tar_reader import SMALL_MEMBER
from runnerkeep.errors import CacheMiss, ConfigError

BASE = random_layer(SMALL_MEMBER + 50_000, "base")
MID = random_layer(30_000, "mid")
TOP_A = random_layer(SMALL_MEMBER + 10_000, "a")
TOP_B = random_layer(40_000, "b")


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "store")


def put(tmp_path, store_dir, key, data: bytes) -> dict:
    path = tmp_path / f"in-{os.urandom(3).hex()}.tar"
    path.write_bytes(data)
    return import_archive(store_dir, key, str(path), state_dir=str(tmp_path / "state"))


def blob_file(store_dir, digest):
    return Store(store_dir).blob_path(digest)


# -- keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["a", "build-1.2_x", "A" * 128, "v1.0"])
def test_valid_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "a/b", "..", ".", "a b", "A" * 129, "x\n", "../etc", "é", ".hidden", "-x"]
)
def test_bad_keys_refused_and_nothing_written(tmp_path, store_dir, key):
    with pytest.raises(ConfigError, match="invalid cache key"):
        put(tmp_path, store_dir, key, legacy_archive([(["a:1"], [MID])]))
    assert not os.path.exists(os.path.join(store_dir, "entries")) or not os.listdir(
        os.path.join(store_dir, "entries")
    )


# -- import / export round trip and sharing -------------------------------------------------
def test_import_export_round_trip_legacy(tmp_path, store_dir):
    data = legacy_archive([(["app:1"], [BASE, MID, TOP_A])])
    result = put(tmp_path, store_dir, "k1", data)
    assert result["format"] == "docker-archive"
    out = tmp_path / "out.tar"
    export_entry(store_dir, "k1", str(out))
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert names[-1] == "manifest.json"  # written last
    assert manifest[0]["RepoTags"] == ["app:1"]
    # the exported archive imports again to the same images
    again = import_archive(store_dir, "k2", str(out))
    assert again["images"][0]["id"] == result["images"][0]["id"]
    assert again["bytes_written"] == 0


def test_oci_import_and_export(tmp_path, store_dir):
    put(tmp_path, store_dir, "oci", oci_archive([("app:2", [BASE, TOP_B])]))
    out = tmp_path / "o.tar"
    export_entry(store_dir, "oci", str(out))
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "index.json" in names and "oci-layout" in names and names[-1] == "manifest.json"


@pytest.mark.parametrize("fmt", ["legacy", "oci"])
def test_archive_length_is_known_before_writing(tmp_path, store_dir, fmt):
    # restore sends the archive as an HTTP body whose Content-Length is computed up front
    if fmt == "legacy":
        data = legacy_archive([(["a:1"], [BASE, MID, TOP_A]), (["b:1"], [BASE, TOP_B])])
    else:
        data = oci_archive([("app:2", [BASE, TOP_B])])
    put(tmp_path, store_dir, "k", data)
    entry, _ = Store(store_dir).read_entry("k")
    out = tmp_path / "out.tar"
    export_entry(store_dir, "k", str(out))
    assert entry_archive_length(entry) == out.stat().st_size


def test_archive_can_leave_out_blobs_the_daemon_holds(tmp_path, store_dir):
    # an incremental restore sends every member but the layers left out; the length matches
    put(tmp_path, store_dir, "k", legacy_archive([(["a:1"], [BASE, MID, TOP_A])]))
    store = Store(store_dir)
    entry, _ = store.read_entry("k")
    base = sha(BASE)
    os.unlink(store.blob_path(base))  # never opened: a missing blob would fail the write
    out = tmp_path / "partial.tar"
    with open(out, "wb") as handle:
        written = write_entry_archive(entry, store, handle.fileno(), leave_out={base})
    assert written == out.stat().st_size == entry_archive_length(entry, leave_out={base})
    assert written < entry_archive_length(entry)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert "blobs/sha256/" + base[7:] not in names
    assert "blobs/sha256/" + sha(TOP_A)[7:] in names and names[-1] == "manifest.json"
    assert "blobs/sha256/" + base[7:] in manifest[0]["Layers"]  # still named


def test_shared_base_stored_once(tmp_path, store_dir):
    put(tmp_path, store_dir, "a", legacy_archive([(["a:1"], [BASE, MID, TOP_A])]))
    second = put(tmp_path, store_dir, "b", legacy_archive([(["b:1"], [BASE, MID, TOP_B])]))
    assert second["bytes_reused"] == len(BASE) + len(MID)
    unique = len(BASE) + len(MID) + len(TOP_A) + len(TOP_B)
    listing = list_entries(store_dir)
    configs = listing["store_bytes"] - unique
    assert 0 < configs < 4096
    rows = {r["key"]: r for r in listing["entries"]}
    assert rows["a"]["unique_bytes"] == len(TOP_A) + rows["a"]["logical_bytes"] - (
        len(BASE) + len(MID) + len(TOP_A)
    )


def test_bad_archive_refused_and_nothing_stored(tmp_path, store_dir):
    data = bytearray(legacy_archive([(["a:1"], [BASE, MID])]))
    pos = bytes(data).index(BASE[5000:5040])
    data[pos] ^= 1
    with pytest.raises(SaveFailed, match="refused"):
        put(tmp_path, store_dir, "bad", bytes(data))
    store = Store(store_dir)
    assert store.list_keys() == []
    assert store.list_blobs() == {}
    assert os.listdir(store.tmp_dir) == []


def test_truncated_archive_refused_previous_entry_kept(tmp_path, store_dir):
    good = put(tmp_path, store_dir, "k", legacy_archive([(["a:1"], [MID])]))
    data = legacy_archive([(["a:2"], [BASE, TOP_A])])
    with pytest.raises(SaveFailed):
        put(tmp_path, store_dir, "k", data[: len(data) // 2])
    _entry, digest = Store(store_dir).read_entry("k")
    assert digest == good["entry_digest"]
    assert verify_store(store_dir)["ok"]


# -- corruption: verify reports, restore/export path rejects and quarantines ----------------
def _two_keys(tmp_path, store_dir):
    put(tmp_path, store_dir, "a", legacy_archive([(["a:1"], [BASE, TOP_A])]))
    put(tmp_path, store_dir, "b", legacy_archive([(["b:1"], [MID, TOP_B])]))
    return Store(store_dir)


def _flip(path, offset):
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def _entry(store, key):
    return json.loads(Path(store.entry_path(key)).read_bytes())


def corrupt_layer(store):
    _flip(store.blob_path(sha(TOP_A)), len(TOP_A) // 2)
    return sha(TOP_A)


def corrupt_config(store):
    digest = _entry(store, "a")["images"][0]["config"]["digest"]
    _flip(store.blob_path(digest), 5)
    return digest


def corrupt_entry(store):
    _flip(store.entry_path("a"), 40)
    return None


def truncate_blob(store):
    path = store.blob_path(sha(BASE))
    os.chmod(path, 0o644)
    os.truncate(path, 1000)
    return sha(BASE)


def missing_blob(store):
    os.unlink(store.blob_path(sha(BASE)))
    return sha(BASE)


def swapped_entry(store):
    data = Path(store.entry_path("b")).read_bytes()
    with open(store.entry_path("a"), "wb") as handle:
        handle.write(data)
    return None


CORRUPTIONS = [
    corrupt_layer,
    corrupt_config,
    corrupt_entry,
    truncate_blob,
    missing_blob,
    swapped_entry,
]


@pytest.mark.parametrize("damage", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corruption_reported_by_verify(tmp_path, store_dir, damage):
    store = _two_keys(tmp_path, store_dir)
    bad_blob = damage(store)
    report = verify_store(store_dir)
    assert not report["ok"]
    assert [b["key"] for b in report["bad_entries"]] == ["a"]
    if bad_blob and damage is not missing_blob:
        assert [b["digest"] for b in report["bad_blobs"]] == [bad_blob]
    assert verify_store(store_dir, "b")["ok"]


@pytest.mark.parametrize("damage", CORRUPTIONS, ids=lambda f: f.__name__)
def test_corruption_is_a_miss_and_quarantined(tmp_path, store_dir, damage):
    store = _two_keys(tmp_path, store_dir)
    damage(store)
    with pytest.raises(CacheMiss, match="quarantined"):
        export_entry(store_dir, "a", str(tmp_path / "x.tar"))
    assert not os.path.exists(tmp_path / "x.tar")
    assert not os.path.exists(store.entry_path("a"))
    quarantined = os.listdir(store.quarantine_dir)
    assert "log.jsonl" in quarantined and any("entry" in n for n in quarantined)
    assert os.listdir(store.tmp_dir) == []
    # the other key still exports, and a fresh import of "a" replaces the quarantined entry
    export_entry(store_dir, "b", str(tmp_path / "b.tar"))
    put(tmp_path, store_dir, "a", legacy_archive([(["a:1"], [BASE, TOP_A])]))
    assert verify_store(store_dir)["ok"]


def test_corrupt_blob_stops_stream_before_manifest(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    corrupt_layer(store)
    entry, _ = Store(store_dir).read_entry("a")
    out = io.BytesIO()
    fd_path = tmp_path / "stream"
    with open(fd_path, "wb") as handle, pytest.raises(CorruptBlob):
        write_entry_archive(entry, store, handle.fileno())
    assert b"manifest.json" not in fd_path.read_bytes()
    del out


def test_load_checked_entry_checks_config_against_layers(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    entry, _ = load_checked_entry(store, "a")
    assert entry["key"] == "a"


def test_verify_repair_quarantines(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    corrupt_layer(store)
    report = verify_store(store_dir, repair=True)
    assert len(report["quarantined"]) == 2
    assert verify_store(store_dir)["ok"]


# -- prune ----------------------------------------------------------------------------------
def test_prune_lru_and_garbage(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    put(tmp_path, store_dir, "c", legacy_archive([(["c:1"], [BASE, MID])]))
    now = time.time()
    os.utime(store.entry_path("a"), (now - 300, now - 300))  # least recently used
    os.utime(store.entry_path("b"), (now - 200, now - 200))
    size_c = len(BASE) + len(MID) + 2000
    dry = prune_store(store_dir, max_size=size_c, dry_run=True)
    assert [e["key"] for e in dry["evicted"]] == ["a", "b"]
    assert store.list_keys() == ["a", "b", "c"]
    result = prune_store(store_dir, max_size=size_c)
    assert store.list_keys() == ["c"]
    assert result["blobs_deleted"] == 4  # TOP_A, TOP_B and two configs
    assert verify_store(store_dir)["ok"]
    assert verify_store(store_dir)["unreferenced_blobs"] == 0


def test_prune_max_age_and_protect(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    old = time.time() - 10 * 86400
    for key in ("a", "b"):
        os.utime(store.entry_path(key), (old, old))
    result = prune_store(store_dir, max_age=86400, protect={"b"})
    assert [e["key"] for e in result["evicted"]] == ["a"]
    assert store.list_keys() == ["b"]


def test_remove_key_then_prune(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    assert remove_key(store_dir, "a")["removed"]
    assert prune_store(store_dir)["blobs_deleted"] == 3
    assert store.list_keys() == ["b"]


# -- stale temp files -------------------------------------------------------------------------
CHILD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from runnerkeep.cache.store import Store
s = Store(sys.argv[1])
with s.temp_area() as area:
    open(area + "/blob-x", "wb").write(b"x" * 100000)
    print("ready", flush=True)
    time.sleep(60)
"""


def test_stale_temps_of_killed_process_removed_live_ones_kept(tmp_path, store_dir):
    module_utils = os.path.join(os.path.dirname(__file__), "..", "..", "..", "module_utils")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_dir, module_utils], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        store = Store(store_dir)
        assert store.remove_stale_temps() == []  # alive: kept
        assert store.temp_bytes() == 100000
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert len(store.remove_stale_temps()) == 1
        assert os.listdir(store.tmp_dir) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_verify_repair_removes_the_temps_of_a_killed_process(tmp_path, store_dir):
    _two_keys(tmp_path, store_dir)
    module_utils = os.path.join(os.path.dirname(__file__), "..", "..", "..", "module_utils")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_dir, module_utils], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        child.wait()
        store = Store(store_dir)
        assert verify_store(store_dir)["stale_temps_removed"] == []  # a check writes nothing
        assert store.temp_bytes() == 100000
        report = verify_store(store_dir, repair=True)
        assert report["ok"] and len(report["stale_temps_removed"]) == 1
        assert store.temp_bytes() == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- entries are the commit point ---------------------------------------------------------------
def test_entry_checksum_and_key_checked(tmp_path, store_dir):
    store = _two_keys(tmp_path, store_dir)
    entry = _entry(store, "a")
    entry["images"][0]["tags"] = ["evil:1"]
    with open(store.entry_path("a"), "w") as handle:
        json.dump(entry, handle)
    with pytest.raises(Exception, match="checksum"):
        store.read_entry("a")


# -- free-space plan -----------------------------------------------------------------------------
def test_space_plan_sums_same_filesystem_and_names_it(tmp_path, store_dir):
    store = Store(store_dir)
    store.ensure()
    infos = [{"Size": 10**15, "RootFS": {"Layers": ["sha256:" + "0" * 64]}}]
    engine = {"ServerVersion": "20.10.24", "DockerRootDir": str(tmp_path)}
    plan = space_plan(store, infos, 100, engine)
    assert len(plan) == 1 and not plan[0]["ok"]
    assert plan[0]["needed_bytes"] >= 2 * 10**15 + 100  # blobs + legacy temp export + reserve
    message = _space_message(plan)
    assert store_dir in message and "free" in message and "needed" in message
    engine25 = {"ServerVersion": "25.0.1", "DockerRootDir": str(tmp_path)}
    plan25 = space_plan(store, infos, 0, engine25)
    assert plan25[0]["needed_bytes"] < 2 * 10**15


def test_space_plan_counts_stored_layers_as_free(tmp_path, store_dir):
    put(tmp_path, store_dir, "a", legacy_archive([(["a:1"], [BASE])]))
    store = Store(store_dir)
    infos = [{"Size": len(BASE), "RootFS": {"Layers": [sha(BASE)]}}]
    engine = {"ServerVersion": "26.0.0", "DockerRootDir": "/"}
    plan = space_plan(store, infos, 0, engine)
    assert plan[0]["needed_bytes"] < 10_000


# -- save when every blob is already stored (no docker save needed) ------------------------------
def test_save_from_store_writes_only_the_entry(tmp_path, store_dir):
    from runnerkeep.cache.save import _save_from_store

    put(tmp_path, store_dir, "a", legacy_archive([(["a:1"], [BASE, TOP_A])]))
    store = Store(store_dir)
    entry = _entry(store, "a")
    image = entry["images"][0]
    infos = [{"Id": image["id"], "RootFS": {"Layers": [x["diff_id"] for x in image["layers"]]}}]
    before = store.list_blobs()
    result = _save_from_store(store, "copy", ["a:1"], infos, {"a:1": image["id"]})
    assert result["from_store"] and result["bytes_written"] == 0
    assert store.list_blobs() == before
    copy = _entry(store, "copy")
    assert copy["images"][0]["layers"] == image["layers"]
    assert copy["images"][0]["tags"] == ["a:1"]
    assert verify_store(store_dir)["ok"]
    # a damaged stored layer is never put into a new entry: quarantined, fall back to docker save
    corrupt_layer(store)
    assert _save_from_store(store, "copy2", ["a:1"], infos, {"a:1": image["id"]}) is None
    assert not store.has_blob(sha(TOP_A))
    # an image whose layers are not all stored also falls back
    infos[0]["RootFS"]["Layers"].append(sha(MID))
    assert _save_from_store(store, "copy3", ["a:1"], infos, {}) is None


def test_make_room_runs_post_cleanup_on_short_filesystems():
    # The cache does not import cleanup/: the front door hands make_room the post stage
    # (runnerkeep.wiring.make_room; tests/unit/core/test_wiring.py checks that one).
    from runnerkeep.cache.save import make_room

    calls = []

    def clean_up(needed_bytes, path):
        calls.append((needed_bytes, path))
        return {"freed": 0}

    plan = [
        {
            "path": "/cache",
            "ok": False,
            "needed_bytes": 10,
            "free_bytes": 1,
            "mount_point": "/",
            "detail": "x",
        },
        {
            "path": "/docker",
            "ok": True,
            "needed_bytes": 5,
            "free_bytes": 9,
            "mount_point": "/",
            "detail": "y",
        },
    ]
    assert make_room(clean_up, plan) == [{"freed": 0}]
    assert calls == [(10, "/cache")]


def test_make_room_unavailable_without_a_cleanup_stage():
    from runnerkeep.cache.save import make_room
    from runnerkeep.errors import FreeSpaceError

    with pytest.raises(FreeSpaceError, match="unavailable"):
        make_room(None, [{"ok": False, "path": "/x", "needed_bytes": 1}])


def test_a_failing_cleanup_stage_is_a_free_space_error():
    from runnerkeep.cache.save import make_room
    from runnerkeep.errors import FreeSpaceError, LockHeldError

    def clean_up(needed_bytes, path):
        raise LockHeldError("a CI job holds the runner lock")

    short = {"ok": False, "path": "/x", "needed_bytes": 9, "free_bytes": 1}
    short.update(mount_point="/", detail="blobs")
    with pytest.raises(FreeSpaceError, match="could not clean up: a CI job holds"):
        make_room(clean_up, [short])


def test_group_shared_store_keeps_subdirs_group_writable(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o2775)
    store = Store(str(root))
    store.ensure()
    for sub in ("blobs", "blobs/sha256", "entries", "locks", "tmp", "quarantine"):
        assert os.stat(root / sub).st_mode & 0o7777 == 0o2775, sub
    with store.temp_area() as area:
        assert os.stat(area).st_mode & 0o7777 == 0o2775
    with store.key_lock("k"):
        pass
    assert os.stat(root / "locks" / "k.lock").st_mode & 0o777 in (0o644, 0o664)
