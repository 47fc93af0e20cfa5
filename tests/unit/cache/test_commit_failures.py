"""A commit cut short by a failing disk (EIO at the entry write, after the blobs were moved
into place), not only a full one: the blobs go with the failed write, the error names the
cache directory. A fake write_entry: a real disk cannot be made to fail at one write on
demand here."""

from __future__ import annotations

import errno

import pytest
from cachetest_helpers import failing_entry_write, legacy_archive, random_layer
from remote_fakes import registry_with_key
from runnerkeep.cache import Store, import_archive
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.errors import RunnerkeepError

KiB = 1024


def test_an_import_whose_entry_write_fails_with_eio_leaves_no_blob(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"), key_file=None)
    archive = tmp_path / "a.tar"
    archive.write_bytes(legacy_archive([(["a:1"], [random_layer(200 * KiB)])]))
    failing_entry_write(monkeypatch, store.root, errno.EIO)
    with pytest.raises(RunnerkeepError, match=r"cannot write to the cache directory .* 'k'"):
        import_archive(store, "k", str(archive))
    assert store.list_keys() == [] and store.list_blobs() == {}


def test_a_pull_whose_entry_write_fails_with_eio_leaves_no_blob(tmp_path, monkeypatch):
    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(200 * KiB)])])
    target = Store(str(tmp_path / "dst"), key_file=None)
    failing_entry_write(monkeypatch, target.root, errno.EIO)
    with pytest.raises(OSError):
        pull_entry(target, "k", registry)
    assert target.list_keys() == [] and target.list_blobs() == {}


def test_a_store_left_as_it_was_keeps_the_previous_entry(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"), key_file=None)
    first, second = tmp_path / "1.tar", tmp_path / "2.tar"
    first.write_bytes(legacy_archive([(["a:1"], [random_layer(100 * KiB, "1")])]))
    second.write_bytes(legacy_archive([(["a:2"], [random_layer(100 * KiB, "2")])]))
    import_archive(store, "k", str(first))
    kept = dict(store.list_blobs())
    failing_entry_write(monkeypatch, store.root, errno.EIO)
    with pytest.raises(RunnerkeepError, match="previous entry is untouched"):
        import_archive(store, "k", str(second))
    assert store.list_keys() == ["k"] and store.list_blobs() == kept
