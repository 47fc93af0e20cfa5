"""Issue 14: entries carry an HMAC with a host key, and are scoped by the writer's trust.

A plain checksum anyone can recompute; the MAC they cannot. A job's save or import lands in its
own scope; a trusted reader never sees it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import Store, export_entry, import_archive, list_entries, sign_entries
from runnerkeep.cache import restore as restore_mod
from runnerkeep.cache.entrymac import KeyUnavailable, load_entry_key
from runnerkeep.cache.store import CorruptEntry, entry_checksum, entry_name, split_name
from runnerkeep.errors import CacheMiss, ConfigError

LAYER_TRUSTED = random_layer(20_000, "trusted")
LAYER_EVIL = random_layer(20_000, "evil")


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "cache.key"
    path.write_bytes(os.urandom(32))
    return str(path)


@pytest.fixture
def store(tmp_path, key_file):
    return Store(str(tmp_path / "store"), key_file=key_file)


def put(tmp_path, store, key, layers, tag, scope="trusted"):
    path = tmp_path / f"in-{os.urandom(3).hex()}.tar"
    path.write_bytes(legacy_archive([([tag], layers)]))
    return import_archive(store, key, str(path), scope=scope)


def entry_file(store, name):
    return store.entry_path(name)


def exported_tags(tmp_path, store, key, scope="trusted"):
    out = tmp_path / f"out-{os.urandom(3).hex()}.tar"
    result = export_entry(store, key, str(out), scope=scope)
    return result


# -- the MAC ------------------------------------------------------------------------------
def test_entries_are_written_with_a_mac(tmp_path, store):
    put(tmp_path, store, "app-main", [LAYER_TRUSTED], "app:main")
    body = json.loads(Path(entry_file(store, "app-main")).read_bytes())
    assert body["mac"].startswith("hmac-sha256:")
    assert body["scope"] == "trusted"


def test_edit_with_recomputed_checksum_is_a_miss_and_quarantined(tmp_path, store):
    put(tmp_path, store, "app-main", [LAYER_TRUSTED], "app:main")
    path = entry_file(store, "app-main")
    body = json.loads(Path(path).read_bytes())
    body["images"][0]["tags"] = ["evil:latest"]
    body["checksum"] = entry_checksum(body)  # what a job could always do
    with open(path, "w") as handle:
        json.dump(body, handle)
    with pytest.raises(CorruptEntry, match="MAC"):
        store.read_entry("app-main")
    with pytest.raises(CacheMiss, match="quarantined"):
        export_entry(store, "app-main", str(tmp_path / "x.tar"))
    assert not os.path.exists(path)
    assert any("entry-app-main" in n for n in os.listdir(store.quarantine_dir))


def test_unsigned_entry_is_rejected_once_a_key_exists(tmp_path, store, key_file):
    unsigned = Store(store.root, key_file=None)
    put(tmp_path, unsigned, "old", [LAYER_TRUSTED], "app:old")
    assert "mac" not in json.loads(Path(entry_file(store, "old")).read_bytes())
    with pytest.raises(CorruptEntry, match="MAC"):
        store.read_entry("old")
    # ... while a store without a key (single-user machine) reads it as before
    assert unsigned.read_entry("old")[0]["key"] == "old"


def test_entry_signed_with_another_key_is_rejected(tmp_path, store):
    other_key = tmp_path / "other.key"
    other_key.write_bytes(os.urandom(32))
    put(tmp_path, Store(store.root, key_file=str(other_key)), "k", [LAYER_TRUSTED], "a:1")
    with pytest.raises(CorruptEntry, match="MAC"):
        store.read_entry("k")


def test_sign_entries_signs_good_entries_and_quarantines_bad_ones(tmp_path, store):
    unsigned = Store(store.root, key_file=None)
    put(tmp_path, unsigned, "good", [LAYER_TRUSTED], "app:good")
    put(tmp_path, unsigned, "bad", [LAYER_EVIL], "app:bad")
    entry, _ = unsigned.read_entry("bad")
    layer = entry["images"][0]["layers"][0]["digest"]
    blob = unsigned.blob_path(layer)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as handle:  # one flipped byte, size unchanged
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    mtime = os.stat(entry_file(store, "good")).st_mtime - 1000
    os.utime(entry_file(store, "good"), (mtime, mtime))
    report = sign_entries(store)
    assert report["signed"] == ["good"]
    assert [b["key"] for b in report["bad"]] == ["bad"]
    assert store.read_entry("good")[0]["key"] == "good"
    assert os.stat(entry_file(store, "good")).st_mtime == mtime  # "last used" kept
    assert not os.path.exists(entry_file(store, "bad"))
    again = sign_entries(store)
    assert again["signed"] == [] and again["already_signed"] == 1


def test_sign_entries_needs_a_key(tmp_path):
    with pytest.raises(ConfigError, match="no cache key"):
        sign_entries(Store(str(tmp_path / "s"), key_file=str(tmp_path / "absent")))


def test_unreadable_key_refuses_the_store(tmp_path, key_file):
    """A user who cannot read the key (a job) must not use the store unverified."""
    os.chmod(key_file, 0o400)
    os.chmod(tmp_path, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        message = b"no error"
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            load_entry_key(key_file)
        except KeyUnavailable as exc:
            message = str(exc).encode()
        except BaseException as exc:
            message = repr(exc).encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as handle:
        said = handle.read().decode()
    assert "not readable by this user" in said and "cache service" in said


@pytest.mark.parametrize("content", [b"", b"short"])
def test_short_key_is_refused(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(KeyUnavailable, match="bytes"):
        load_entry_key(str(path))


def test_key_file_symlink_or_fifo_is_refused(tmp_path, key_file):
    link = tmp_path / "link"
    link.symlink_to(key_file)
    with pytest.raises(KeyUnavailable):
        load_entry_key(str(link))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeyUnavailable):
        load_entry_key(str(fifo))  # and it did not block


def test_absent_key_file_means_unsigned(tmp_path):
    assert load_entry_key(str(tmp_path / "absent")) is None


# -- names and scopes ---------------------------------------------------------------------
def test_scoped_names_never_collide_with_trusted_keys():
    assert entry_name("app-main") == "app-main"
    assert entry_name("app-main", "pr-12-abcdef01") == "@pr-12-abcdef01@app-main"
    assert split_name("@pr-12-abcdef01@app-main") == ("pr-12-abcdef01", "app-main")
    for bad in ("@trusted@app-main", "@PR@x", "@pr-1@", "@pr-1@a/b", "a@b", "@@x"):
        with pytest.raises(ConfigError):
            split_name(bad)
    with pytest.raises(ConfigError):
        entry_name("x", "../etc")


def test_untrusted_import_does_not_touch_the_trusted_key(tmp_path, store):
    trusted = put(tmp_path, store, "app-main", [LAYER_TRUSTED], "app:main")
    evil = put(tmp_path, store, "app-main", [LAYER_EVIL], "app:main", scope="pr-7-aaaaaaaa")
    assert evil["entry_digest"] != trusted["entry_digest"]
    result = export_entry(store, "app-main", str(tmp_path / "t.tar"))
    assert result["scope"] == "trusted"
    assert result["entry_digest"] == trusted["entry_digest"]
    entry, _ = store.read_entry("app-main")
    layers = [layer["digest"] for layer in entry["images"][0]["layers"]]
    evil_entry, _ = store.read_entry("@pr-7-aaaaaaaa@app-main")
    assert not set(layers) & {x["digest"] for x in evil_entry["images"][0]["layers"]}


def test_untrusted_restore_prefers_its_scope_then_falls_back_to_trusted(tmp_path, store):
    trusted = put(tmp_path, store, "app-main", [LAYER_TRUSTED], "app:main")
    fallback = export_entry(store, "app-main", str(tmp_path / "a.tar"), scope="pr-7-aaaaaaaa")
    assert fallback["scope"] == "trusted"
    assert fallback["entry_digest"] == trusted["entry_digest"]
    own = put(tmp_path, store, "app-main", [LAYER_EVIL], "app:main", scope="pr-7-aaaaaaaa")
    mine = export_entry(store, "app-main", str(tmp_path / "b.tar"), scope="pr-7-aaaaaaaa")
    assert (mine["scope"], mine["entry_digest"]) == ("pr-7-aaaaaaaa", own["entry_digest"])
    # another pull request sees the trusted entry, not pr-7's
    other = export_entry(store, "app-main", str(tmp_path / "c.tar"), scope="pr-8-aaaaaaaa")
    assert other["entry_digest"] == trusted["entry_digest"]


def test_trusted_restore_never_loads_an_untrusted_entry(tmp_path, store, monkeypatch):
    put(tmp_path, store, "only-pr", [LAYER_EVIL], "app:pr", scope="pr-7-aaaaaaaa")
    monkeypatch.setattr(restore_mod, "daemon_images", lambda ids: {})
    with pytest.raises(CacheMiss):
        restore_mod.restore_entry(store, "only-pr", dry_run=True)
    result = restore_mod.restore_entry(store, "only-pr", scope="pr-7-aaaaaaaa", dry_run=True)
    assert result["result"] == "would_load" and result["scope"] == "pr-7-aaaaaaaa"


def test_entry_copied_across_scopes_is_rejected(tmp_path, store):
    put(tmp_path, store, "app-main", [LAYER_EVIL], "app:main", scope="pr-7-aaaaaaaa")
    os.replace(entry_file(store, "@pr-7-aaaaaaaa@app-main"), entry_file(store, "app-main"))
    with pytest.raises(CorruptEntry, match="scope"):
        Store(store.root, key_file=None).read_entry("app-main")  # even without a key
    with pytest.raises(CorruptEntry):
        store.read_entry("app-main")


def test_list_shows_a_job_trusted_and_its_own_scope_only(tmp_path, store):
    put(tmp_path, store, "app-main", [LAYER_TRUSTED], "app:main")
    put(tmp_path, store, "app-main", [LAYER_EVIL], "app:main", scope="pr-7-aaaaaaaa")
    put(tmp_path, store, "other", [LAYER_EVIL], "app:o", scope="pr-8-aaaaaaaa")
    seen = {(r["key"], r["scope"]) for r in list_entries(store, scope="pr-7-aaaaaaaa")["entries"]}
    assert seen == {("app-main", "trusted"), ("app-main", "pr-7-aaaaaaaa")}
    trusted_view = list_entries(store, scope="trusted")["entries"]
    assert {(r["key"], r["scope"]) for r in trusted_view} == {("app-main", "trusted")}
    assert len(list_entries(store)["entries"]) == 3  # the owner sees everything


def test_sign_entries_of_a_store_not_yet_written_is_ok(tmp_path, key_file):
    report = sign_entries(Store(str(tmp_path / "new"), key_file=key_file))
    assert report["ok"] is True and report["signed"] == []
