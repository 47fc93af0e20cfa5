"""``cache import`` keeps the disk's reserve and the store's quota, as a save does: an import
that would leave less than ``cache.reserve`` free stops and stores nothing (the archive may be
a pipe of unknown length: the guard works while reading), and the store is pruned back under
``cache.max_size`` after the commit, the new entry kept. Both front doors pass the settings:
root's CLI and the cache service a job asks."""

from __future__ import annotations

import os
import threading

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import Store, import_archive, list_entries, service
from runnerkeep.cache.import_space import RESTAT_STEP
from runnerkeep.cache.save import import_archive_fd
from runnerkeep.errors import FreeSpaceError
from runnerkeep.fsutil import filesystem_usage

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


def archive_file(tmp_path, name: str, layer_bytes: int) -> str:
    path = tmp_path / f"{name}.tar"
    path.write_bytes(legacy_archive([([f"{name}:1"], [random_layer(layer_bytes)])]))
    return str(path)


def reserve_leaving(path: str, room: int) -> int:
    """A reserve that leaves only ``room`` bytes an import may use on ``path``'s filesystem
    (measured now: the real free space, nothing faked)."""
    return filesystem_usage(path).free_bytes - room


def test_an_import_that_would_eat_the_reserve_stops_and_stores_nothing(tmp_path, store):
    archive = archive_file(tmp_path, "big", 3 * RESTAT_STEP)
    store.ensure()
    with pytest.raises(FreeSpaceError) as caught:
        import_archive(store, "big", archive, reserve=reserve_leaving(store.root, 4 * MiB))
    message = str(caught.value)
    assert "the import of " + archive in message and "less than the reserve" in message
    assert "nothing was stored" in message
    assert list_entries(store)["entries"] == []
    assert store.list_blobs() == {}
    walked = os.walk(store.root)
    left = sum(os.path.getsize(os.path.join(d, f)) for d, _dirs, files in walked for f in files)
    assert left < MiB  # no temp blob of the cut-off import is left behind


def test_a_pipe_of_unknown_length_is_held_by_the_same_guard(tmp_path, store):
    data = legacy_archive([(["piped:1"], [random_layer(3 * RESTAT_STEP)])])
    store.ensure()
    read_end, write_end = os.pipe()

    def feed():
        try:
            with open(write_end, "wb") as pipe:
                pipe.write(data)
        except BrokenPipeError:  # the import stopped reading: what the test wants
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with pytest.raises(FreeSpaceError, match="less than the reserve"):
            import_archive_fd(
                store, "piped", read_end, "a pipe", reserve=reserve_leaving(store.root, 4 * MiB)
            )
    finally:
        os.close(read_end)
        feeder.join(10)
    assert list_entries(store)["entries"] == []


def test_an_import_that_fits_is_stored(tmp_path, store):
    archive = archive_file(tmp_path, "small", MiB)
    result = import_archive(store, "small", archive, reserve=MiB)
    assert result["result"] == "saved" and result["prune"] is None
    assert [e["key"] for e in list_entries(store)["entries"]] == ["small"]


def test_the_store_is_pruned_back_under_the_quota_keeping_the_new_entry(tmp_path, store):
    import_archive(store, "old", archive_file(tmp_path, "old", 2 * MiB))
    result = import_archive(store, "new", archive_file(tmp_path, "new", 2 * MiB), max_size=3 * MiB)
    assert [e["key"] for e in result["prune"]["evicted"]] == ["old"]
    keys = [e["key"] for e in list_entries(store)["entries"]]
    assert keys == ["new"]
    assert sum(store.list_blobs().values()) <= 3 * MiB


@pytest.mark.parametrize(
    ("settings", "expect_error"),
    [({"reserve": None, "max_size": None}, True), ({"reserve": 0, "max_size": 3 * MiB}, False)],
)
def test_the_cache_service_passes_the_hosts_limits(tmp_path, store, settings, expect_error):
    import_archive(store, "old", archive_file(tmp_path, "old", 2 * MiB))
    archive = archive_file(tmp_path, "job", 2 * MiB)
    if expect_error:
        settings = {"reserve": reserve_leaving(store.root, MiB // 2), "max_size": None}
    fd = os.open(archive, os.O_RDONLY)
    try:
        if expect_error:
            with pytest.raises(FreeSpaceError, match="less than the reserve"):
                service.dispatch("import", {"key": "job"}, [fd], "trusted", store, settings)
            return
        result = service.dispatch("import", {"key": "job"}, [fd], "trusted", store, settings)
    finally:
        os.close(fd)
    assert result["result"] == "saved"
    assert [e["key"] for e in list_entries(store)["entries"]] == ["job"]


def test_an_untrusted_writes_prune_evicts_untrusted_entries_never_trusted_ones(tmp_path, store):
    """The rule save and import share (save.keep_quota): a job's write may push out other
    untrusted entries, never the trusted ones."""
    from runnerkeep.cache.save import keep_quota

    import_archive(store, "base", archive_file(tmp_path, "base", 2 * MiB))
    import_archive(store, "old", archive_file(tmp_path, "old", 2 * MiB), scope="pr-1")
    import_archive(store, "new", archive_file(tmp_path, "new", 2 * MiB), scope="pr-2")
    report = keep_quota(store, "@pr-2@new", "pr-2", 3 * MiB)
    assert [e["key"] for e in report["evicted"]] == ["@pr-1@old"]
    names = {e["key"] for e in list_entries(store)["entries"]}
    assert "base" in names
    trusted = keep_quota(store, "base", "trusted", 3 * MiB)
    assert [e["key"] for e in trusted["evicted"]] == ["@pr-2@new"]
