"""What a pull may take and replace (attack16 F2, F6, F9, F12): save's free-space and reserve
check before and while writing, the quota after the commit (never evicting for an untrusted
job), a valid local entry left as it is, dead pulls' temps removed on every path, a runnerkeep
index filtered to this host's platform, a read-only store named."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from fake_engine import FakeEngine
from remote_fakes import OCI_INDEX, FakeRegistry, docker_image, gzip_members
from runnerkeep.cache import Store, import_archive, remote_pull, save
from runnerkeep.cache.checks import load_checked_entry
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.cache.remote_pull import host_architecture, pull_entry
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.cache.remote_restore import restore_from_fleet
from runnerkeep.fsutil import FilesystemUsage

BIG = random_layer(3 << 20, "limits-big")
SMALL = random_layer(20_000, "limits-small")
OTHER = random_layer(1 << 20, "limits-other")
HUGE_RESERVE = 1 << 62


def _store_with(tmp_path, name: str, key: str, images) -> Store:
    store = Store(str(tmp_path / name), key_file=None)
    archive = tmp_path / f"{name}-{key}.tar"
    archive.write_bytes(legacy_archive(images))
    import_archive(store, key, str(archive))
    return store


@pytest.fixture
def registry(tmp_path) -> FakeRegistry:
    """The fleet holds key 'k': app:1 = BIG + SMALL."""
    source = _store_with(tmp_path, "src", "k", [(["app:1"], [BIG, SMALL])])
    fake = FakeRegistry()
    push_entry(source, "k", fake)
    fake.opened.clear()
    return fake


@pytest.fixture
def target(tmp_path) -> Store:
    return Store(str(tmp_path / "dst"), key_file=None)


def _nothing_written(store: Store, keys: list[str]) -> None:
    assert store.list_keys() == keys
    left = os.listdir(store.tmp_dir) if os.path.isdir(store.tmp_dir) else []
    assert [n for n in left if not n.startswith(".")] == []


class _CountingWrites:
    """remote_pull.write_all, counting what a pull wrote."""

    def __init__(self) -> None:
        self.total = 0
        self.write_all = remote_pull.write_all

    def __call__(self, fd: int, view: memoryview) -> None:
        self.total += len(view)
        self.write_all(fd, view)


def _small_disk(monkeypatch, store: Store, free: int) -> None:
    """The store's filesystem has ``free`` bytes minus what lies in the store (statvfs as a
    pull sees it, without filling a real disk)."""

    def usage(path: str) -> FilesystemUsage:
        used = 0
        for dirpath, _dirs, files in os.walk(store.root):
            for name in files:
                used += os.lstat(os.path.join(dirpath, name)).st_size
        return FilesystemUsage(path, "/small", 1 << 30, free - used, 1000, 1000)

    monkeypatch.setattr(save, "filesystem_usage", usage)
    monkeypatch.setattr(remote_pull, "filesystem_usage", usage)


# -- F2: free space and the reserve ----------------------------------------------------------
def test_a_pull_that_would_eat_the_reserve_is_refused_before_anything_is_fetched(registry, target):
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry, reserve=HUGE_RESERVE)
    message = str(caught.value)
    assert "not enough free space to pull, nothing was written" in message
    assert "(filesystem /" in message and "reserve" in message and "needed" in message
    assert "blobs the registry lists" in message
    assert registry.opened == []  # not one blob asked for
    assert not caught.value.corrupt
    _nothing_written(target, [])


def test_a_pull_that_fits_above_the_reserve_is_taken(registry, target, monkeypatch):
    _small_disk(monkeypatch, target, free=(len(BIG) + len(SMALL)) * 2 + (8 << 20))
    pulled = pull_entry(target, "k", registry, reserve=8 << 20)
    assert pulled["result"] == "pulled"
    load_checked_entry(target, "k")


def test_a_gzip_bomb_stops_at_the_reserve_while_inflating(target, monkeypatch):
    """3 MiB of gzip descriptor would fit; it inflates to 40 MiB. The pull stops before the
    filesystem's free space goes below the reserve, and leaves nothing behind."""
    fake = FakeRegistry()
    zeros = bytes(40 << 20)
    digest, _doc, _config = docker_image(fake, [zeros], compressed=[gzip_members(zeros)])
    fake.tags["k"] = digest
    free, reserve = 30 << 20, 20 << 20
    _small_disk(monkeypatch, target, free=free)
    writes = _CountingWrites()
    monkeypatch.setattr(remote_pull, "write_all", writes)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", fake, reserve=reserve)
    message = str(caught.value)
    assert "reserve (cache.reserve)" in message and target.root in message
    assert "/small" in message and not caught.value.corrupt
    assert 0 < writes.total <= free - reserve  # the reserve was never written into
    _nothing_written(target, [])


# -- F2: the quota ---------------------------------------------------------------------------
def test_a_trusted_pull_keeps_the_store_under_its_quota_as_save_does(registry, target, tmp_path):
    old = _store_with(tmp_path, "dst", "old", [(["old:1"], [OTHER])])
    assert old.root == target.root
    quota = len(BIG) + len(SMALL) + (64 << 10)
    pulled = pull_entry(target, "k", registry, max_size=quota)
    assert [evicted["key"] for evicted in pulled["prune"]["evicted"]] == ["old"]
    assert target.list_keys() == ["k"]
    assert sum(target.list_blobs().values()) <= quota
    load_checked_entry(target, "k")


def test_an_untrusted_jobs_pull_never_evicts_to_fit(registry, target, tmp_path):
    _store_with(tmp_path, "dst", "old", [(["old:1"], [OTHER])])
    quota = len(BIG) + len(SMALL) + (64 << 10)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry, max_size=quota, scope="pr-7")
    message = str(caught.value)
    assert "quota (cache.max_size)" in message and "untrusted job (pr-7)" in message
    assert registry.opened == []
    _nothing_written(target, ["old"])
    load_checked_entry(target, "old")


def test_an_untrusted_jobs_pull_that_fits_the_quota_is_taken(registry, target):
    pulled = pull_entry(target, "k", registry, max_size=64 << 20, scope="pr-7")
    assert pulled["result"] == "pulled" and pulled["prune"] is None
    assert target.list_keys() == ["k"]


def test_an_untrusted_jobs_gzip_pull_stops_at_the_quota_while_inflating(target, tmp_path):
    _store_with(tmp_path, "dst", "old", [(["old:1"], [OTHER])])
    fake = FakeRegistry()
    zeros = bytes(8 << 20)
    digest, _doc, _config = docker_image(fake, [zeros], compressed=[gzip_members(zeros)])
    fake.tags["k"] = digest
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", fake, max_size=len(OTHER) + (2 << 20), scope="pr-7")
    assert "quota (cache.max_size)" in str(caught.value)
    _nothing_written(target, ["old"])


# -- F9: a valid local entry stays --------------------------------------------------------------
def test_a_pull_of_a_key_held_valid_is_a_no_op_reporting_present(registry, target):
    pull_entry(target, "k", registry)
    _entry, before = target.read_entry("k")
    registry.opened.clear()
    pulled = pull_entry(target, "k", registry)
    assert pulled["result"] == "present" and pulled["entry_digest"] == before
    assert pulled["blobs_fetched"] == 0 and registry.opened == []
    assert target.read_entry("k")[1] == before


@pytest.mark.parametrize("scope", ["trusted", "pr-7"])
def test_a_pull_never_rolls_back_a_newer_local_entry(registry, target, tmp_path, scope):
    newer = _store_with(tmp_path, "dst", "k", [(["app:2"], [OTHER])])
    _entry, before = newer.read_entry("k")
    pulled = pull_entry(target, "k", registry, scope=scope)
    assert pulled["result"] == "present"
    entry, after = target.read_entry("k")
    assert after == before and entry["images"][0]["tags"] == ["app:2"]
    assert registry.opened == []


def test_a_damaged_local_entry_is_still_replaced(registry, target):
    pull_entry(target, "k", registry)
    os.unlink(target.blob_path(sha(SMALL)))
    registry.opened.clear()
    pulled = pull_entry(target, "k", registry)
    assert pulled["result"] == "pulled" and registry.opened == [sha(SMALL)]
    load_checked_entry(target, "k")


# -- F6: a dead pull's temps ------------------------------------------------------------------
def _dead_temp_area(store: Store) -> str:
    store.ensure()
    area = os.path.join(store.tmp_dir, "999999-deadbeef")
    os.mkdir(area)
    with open(os.path.join(area, "blob"), "wb") as handle:
        handle.write(b"x" * 4096)
    fd = os.open(area + ".lock", os.O_RDWR | os.O_CREAT, 0o664)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.close(fd)  # its owner died: the lock is free
    return area


def test_a_pull_that_misses_still_removes_a_dead_pulls_temps(target):
    area = _dead_temp_area(target)
    with pytest.raises(RemoteCacheMiss):
        pull_entry(target, "absent", FakeRegistry())
    assert not os.path.exists(area) and not os.path.exists(area + ".lock")


def test_a_pull_of_a_present_key_removes_a_dead_pulls_temps(registry, target):
    pull_entry(target, "k", registry)
    area = _dead_temp_area(target)
    assert pull_entry(target, "k", registry)["result"] == "present"
    assert not os.path.exists(area)


def test_a_live_pulls_temps_are_kept(registry, target):
    target.ensure()
    with target.temp_area() as live:
        with pytest.raises(RemoteCacheMiss):
            pull_entry(target, "absent", registry)
        assert os.path.isdir(live)


# -- F12: this host's platform ----------------------------------------------------------------
def _foreign_arch() -> str:
    return "arm64" if host_architecture() != "arm64" else "amd64"


def _set_platforms(registry: FakeRegistry, arches: list[str]) -> None:
    media, data = registry.manifests[registry.tags["k"]]
    index = json.loads(data)
    for item, arch in zip(index["manifests"], arches):
        item["platform"] = {"architecture": arch, "os": "linux"}
    registry.put_json("k", media, index)


def test_a_runnerkeep_index_of_another_platform_is_a_miss_naming_it(registry, target):
    _set_platforms(registry, [_foreign_arch()])
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    message = str(caught.value)
    assert f"no linux/{host_architecture()} image" in message
    assert f"linux/{_foreign_arch()}" in message
    assert registry.opened == []
    _nothing_written(target, [])


def test_a_runnerkeep_index_gives_only_this_hosts_images(tmp_path, target):
    source = _store_with(tmp_path, "two", "k", [(["app:1"], [BIG]), (["tool:2"], [SMALL])])
    fake = FakeRegistry()
    push_entry(source, "k", fake)
    media, _data = fake.manifests[fake.tags["k"]]
    assert media == OCI_INDEX
    _set_platforms(fake, [_foreign_arch(), host_architecture()])
    pulled = pull_entry(target, "k", fake)
    assert [image["tags"] for image in pulled["images"]] == [["tool:2"]]
    assert not target.has_blob(sha(BIG))


# -- Nit: a read-only store ---------------------------------------------------------------------
def test_a_read_only_store_is_a_miss_naming_the_directory(registry, target, monkeypatch):
    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(target, "ensure", read_only)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert target.root in str(caught.value) and "Read-only" in str(caught.value)


# -- the one-pass restore keeps the same rules ----------------------------------------------------
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


def test_a_one_pass_restore_is_refused_before_anything_is_fetched_or_loaded(
    registry, engine, target
):
    with pytest.raises(RemoteCacheMiss) as caught:
        restore_from_fleet(target, "k", registry, reserve=HUGE_RESERVE)
    assert "not enough free space to pull" in str(caught.value)
    assert registry.opened == [] and engine.images == {}
    _nothing_written(target, [])


def test_a_one_pass_restore_keeps_the_quota(registry, engine, target, tmp_path):
    _store_with(tmp_path, "dst", "old", [(["old:1"], [OTHER])])
    quota = len(BIG) + len(SMALL) + (64 << 10)
    result = restore_from_fleet(target, "k", registry, max_size=quota)
    assert result["overlapped"] is True
    assert [e["key"] for e in result["pulled"]["prune"]["evicted"]] == ["old"]
    assert target.list_keys() == ["k"]


def test_a_one_pass_restore_for_an_untrusted_job_never_evicts(registry, engine, target, tmp_path):
    _store_with(tmp_path, "dst", "old", [(["old:1"], [OTHER])])
    quota = len(BIG) + len(SMALL) + (64 << 10)
    with pytest.raises(RemoteCacheMiss) as caught:
        restore_from_fleet(target, "k", registry, max_size=quota, scope="pr-7")
    assert "evicts nothing" in str(caught.value) and engine.images == {}
    _nothing_written(target, ["old"])
