"""Round-3 attacks on the cache fixes of f8a0781: the prune that follows a pull (or a one-pass
restore) a full disk cut short (remote_pull.reclaim_on_full_disk), an untrusted job's entry
refused when it does not fit beside the trusted entries (save._check_fits_beside_trusted,
prune.trusted_blob_sizes), and the import's reserve guard charging only the bytes it keeps
(import_space.ReserveGuard.charge, called by tar_reader._MemberSink). Strict xfails are breaks
still open (they flip when fixed)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
import tracemalloc

import pytest
from cachetest_helpers import (
    failing_entry_write,
    legacy_archive,
    oci_archive,
    random_layer,
    write_tar,
)
from remote_fakes import registry_with_key
from runnerkeep.cache import Store, import_archive, import_space, list_entries, prune_store
from runnerkeep.cache.remote_pull import PullOutOfSpace, pull_entry
from runnerkeep.cache.store import Store as StoreClass
from runnerkeep.cache.verify import verify_store
from runnerkeep.errors import RunnerkeepError
from runnerkeep.fsutil import FilesystemUsage
from runnerkeep.units import parse_size

KiB = 1024
MiB = 1024 * KiB


def new_store(tmp_path, name: str = "store") -> Store:
    return Store(str(tmp_path / name), key_file=None)


def stored_keys(store: Store) -> list[str]:
    return sorted(e["key"] for e in list_entries(store)["entries"])


def stored_names(store: Store) -> list[str]:
    return store.list_keys()


def import_bytes(tmp_path, store: Store, key: str, data: bytes, **kw) -> dict:
    path = tmp_path / f"{key}-{os.urandom(3).hex()}.tar"
    path.write_bytes(data)
    try:
        return import_archive(store, key, str(path), **kw)
    finally:
        path.unlink()


def one_image(size: int, tag: str) -> bytes:
    return legacy_archive([([f"{tag}:1"], [random_layer(size, tag)])])


def age(store: Store, name: str, seconds_ago: float) -> None:
    """Set the entry's last use (its mtime) ``seconds_ago`` before now."""
    when = time.time() - seconds_ago
    os.utime(store.entry_path(name), (when, when))


def fake_free(monkeypatch, free: int) -> None:
    """The import's reserve guard sees ``free`` bytes free on the cache filesystem."""

    def usage(path):
        return FilesystemUsage(path, "/", 1 << 40, free, 1 << 20, 1 << 20)

    monkeypatch.setattr(import_space, "filesystem_usage", usage)


# --- an untrusted entry beside the trusted ones (save._check_fits_beside_trusted) ----------


def test_an_untrusted_entry_that_fits_beside_the_trusted_ones_is_stored(tmp_path):
    """Control: 1 MiB trusted + 1 MiB untrusted under a 2.5 MiB quota."""
    store = new_store(tmp_path)
    import_bytes(tmp_path, store, "base", one_image(MiB, "b"))
    result = import_bytes(
        tmp_path, store, "pr", one_image(MiB, "p"), scope="pr-1", max_size=int(2.5 * MiB)
    )
    assert result["result"] == "saved"
    assert set(stored_names(store)) == {"base", "@pr-1@pr"}


def test_an_untrusted_entry_that_does_not_fit_beside_the_trusted_ones_is_refused(tmp_path):
    store = new_store(tmp_path)
    import_bytes(tmp_path, store, "base", one_image(2 * MiB, "b"))
    before = store.list_blobs()
    with pytest.raises(RunnerkeepError, match="trusted entries hold") as caught:
        import_bytes(
            tmp_path, store, "pr", one_image(MiB, "p"), scope="pr-1", max_size=int(2.5 * MiB)
        )
    assert "Traceback" not in str(caught.value)
    assert stored_names(store) == ["base"] and store.list_blobs() == before


def test_an_untrusted_resave_over_its_own_entry_at_the_quota_edge_is_stored(tmp_path):
    """The job's old entry's blobs are not the trusted ones: they do not count against it, and
    its replacement (as big as the room left) is stored; the old blobs go."""
    store = new_store(tmp_path)
    quota = int(2.6 * MiB)
    import_bytes(tmp_path, store, "base", one_image(MiB, "b"))
    base_blobs = set(store.list_blobs())
    import_bytes(tmp_path, store, "pr", one_image(MiB, "p1"), scope="pr-1", max_size=quota)
    old = set(store.list_blobs()) - base_blobs
    result = import_bytes(
        tmp_path, store, "pr", one_image(int(1.5 * MiB), "p2"), scope="pr-1", max_size=quota
    )
    assert result["result"] == "saved"
    assert set(stored_names(store)) == {"base", "@pr-1@pr"}
    assert sum(store.list_blobs().values()) <= quota
    assert len(set(store.list_blobs()) & old) < len(old), "the old entry's layer stayed"


def test_an_untrusted_entry_of_layers_the_trusted_entries_hold_costs_only_its_own(tmp_path):
    """The trusted entry's layer is counted once: an untrusted entry of the same image (same
    blobs) needs nothing new and fits a quota the trusted entry almost fills."""
    store = new_store(tmp_path)
    image = one_image(2 * MiB, "same")
    import_bytes(tmp_path, store, "base", image)
    result = import_bytes(tmp_path, store, "pr", image, scope="pr-1", max_size=int(2.2 * MiB))
    assert result["result"] == "saved"
    assert set(stored_names(store)) == {"base", "@pr-1@pr"}


def test_a_store_whose_trusted_entries_are_over_the_quota_refuses_untrusted_writes_clearly(
    tmp_path,
):
    """The quota was lowered below what the trusted entries hold: an untrusted write is
    refused (it could only be kept by evicting a trusted entry), nothing evicted, and the
    message says the trusted entries alone hold more than the quota."""
    store = new_store(tmp_path)
    import_bytes(tmp_path, store, "base", one_image(3 * MiB, "b"))
    with pytest.raises(RunnerkeepError) as caught:
        import_bytes(
            tmp_path, store, "pr", one_image(100 * KiB, "p"), scope="pr-1", max_size=2 * MiB
        )
    message = str(caught.value)
    assert "cache.max_size" in message and "trusted entries hold" in message
    assert stored_names(store) == ["base"]


def test_a_corrupt_trusted_entry_does_not_crash_the_untrusted_check(tmp_path):
    """trusted_blob_sizes over a trusted entry file that is garbage, and one that is a
    directory: the check goes on (a clean answer, no OSError/ValueError traceback)."""
    store = new_store(tmp_path)
    import_bytes(tmp_path, store, "base", one_image(MiB, "b"))
    with open(store.entry_path("junk"), "wb") as out:
        out.write(b"\x00{not json")
    os.mkdir(store.entry_path("adir"))
    try:
        result = import_bytes(
            tmp_path, store, "pr", one_image(MiB, "p"), scope="pr-1", max_size=int(2.5 * MiB)
        )
    except RunnerkeepError as exc:  # a clean refusal would do, a traceback would not
        result = {"result": "refused", "error": str(exc)}
    assert result["result"] in ("saved", "refused")
    assert "base" in stored_names(store)


@pytest.mark.parametrize("who_prunes", ["trusted-write", "scheduled"])
def test_a_later_prune_evicts_the_untrusted_entry_before_a_trusted_one(tmp_path, who_prunes):
    store = new_store(tmp_path)
    quota = int(2.5 * MiB)
    import_bytes(tmp_path, store, "t1", one_image(MiB, "t1"))
    import_bytes(tmp_path, store, "pr", one_image(MiB, "p"), scope="pr-1", max_size=quota)
    age(store, "t1", 300)
    age(store, "@pr-1@pr", 10)  # the job restored its entry since
    if who_prunes == "trusted-write":
        import_bytes(tmp_path, store, "t2", one_image(MiB, "t2"), max_size=quota)
    else:
        import_bytes(tmp_path, store, "t2", one_image(MiB, "t2"))  # a write without quota
        prune_store(store, max_size=quota)
    names = set(stored_names(store))
    assert {"t1", "t2"} <= names, f"a trusted entry went while the job's stayed: {names}"


# --- the import's reserve guard: only bytes kept are charged --------------------------------


def test_many_small_members_adding_up_past_the_reserve_are_refused(tmp_path, monkeypatch):
    """Small members (<= 1 MiB) are held in memory for the commit: each is charged. 12 of
    1 MiB with 8 MiB free above the reserve: refused, nothing stored, no temp left."""
    store = new_store(tmp_path)
    store.ensure()
    members = [(f"junk/{i:03d}", os.urandom(MiB)) for i in range(12)]
    data = write_tar(members)
    reserve = 64 * MiB
    fake_free(monkeypatch, reserve + 8 * MiB)
    with pytest.raises(RunnerkeepError, match="reserve") as caught:
        import_bytes(tmp_path, store, "k", data, reserve=reserve)
    assert "nothing was stored" in str(caught.value)
    assert store.list_keys() == [] and store.list_blobs() == {}
    assert [n for n in os.listdir(store.tmp_dir) if not n.endswith(".lock")] == []


def test_an_archive_of_stored_layers_imports_with_no_room_above_the_reserve(tmp_path, monkeypatch):
    """OCI members named by a stored digest are only hashed and cost nothing: a 6 MiB layer
    already stored re-imports with 1 MiB free above the reserve (room for the small members)."""
    store = new_store(tmp_path)
    archive = oci_archive([("app:1", [random_layer(6 * MiB)])])
    import_bytes(tmp_path, store, "a", archive)
    fake_free(monkeypatch, 100 * MiB + MiB)
    result = import_bytes(tmp_path, store, "b", archive, reserve=100 * MiB)
    assert result["result"] == "saved" and result["bytes_written"] == 0


def test_a_member_named_for_a_stored_blob_with_other_bytes_is_refused(tmp_path, monkeypatch):
    """A member named blobs/sha256/<a stored digest> is only hashed, not charged: if its
    bytes are not that blob the import must refuse it, not store a layer it never wrote."""
    store = new_store(tmp_path)
    layer = random_layer(2 * MiB, "real")
    archive = oci_archive([("app:1", [layer])])
    import_bytes(tmp_path, store, "a", archive)
    forged = archive.replace(layer, os.urandom(len(layer)))
    assert len(forged) == len(archive) and forged != archive
    fake_free(monkeypatch, 100 * MiB + MiB)
    blobs_before = store.list_blobs()
    with pytest.raises(RunnerkeepError):
        import_bytes(tmp_path, store, "b", forged, reserve=100 * MiB)
    assert store.list_keys() == ["a"] and store.list_blobs() == blobs_before
    assert verify_store(store)["ok"] is True


def test_a_new_large_member_is_charged_as_it_is_written(tmp_path, monkeypatch):
    """A 6 MiB new layer with 4 MiB free above the reserve: refused before the disk is
    spent (the guard stops the temp write), nothing stored."""
    store = new_store(tmp_path)
    archive = oci_archive([("app:1", [random_layer(6 * MiB)])])
    fake_free(monkeypatch, 100 * MiB + 4 * MiB)
    with pytest.raises(RunnerkeepError, match="reserve"):
        import_bytes(tmp_path, store, "k", archive, reserve=100 * MiB)
    assert store.list_keys() == [] and store.list_blobs() == {}


def test_a_legacy_archive_of_stored_layers_imports_with_no_room_above_the_reserve(
    tmp_path, monkeypatch
):
    store = new_store(tmp_path)
    archive = one_image(6 * MiB, "legacy")
    import_bytes(tmp_path, store, "a", archive)
    fake_free(monkeypatch, 100 * MiB + MiB)
    result = import_bytes(tmp_path, store, "b", archive, reserve=100 * MiB)
    assert result["result"] == "saved" and result["bytes_written"] == 0


def test_the_reserve_refusal_names_the_room_that_was_left_above_the_reserve(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    archive = oci_archive([("app:1", [random_layer(6 * MiB)])])
    fake_free(monkeypatch, 100 * MiB + MiB)
    with pytest.raises(RunnerkeepError, match="reserve") as caught:
        import_bytes(tmp_path, store, "k", archive, reserve=100 * MiB)
    message = str(caught.value)
    left = message.rsplit("(", 1)[1].split(" left for it")[0]
    assert parse_size(left.replace(" ", ""), "left") <= 2 * MiB, message


def test_an_archive_of_many_small_members_does_not_grow_the_services_memory(tmp_path):
    store = new_store(tmp_path)
    store.ensure()
    junk = [(f"junk/{i:03d}", os.urandom(MiB)) for i in range(48)]
    data = write_tar([*junk, ("manifest.json", b"[]")])
    path = tmp_path / "junk.tar"
    path.write_bytes(data)
    del data, junk
    tracemalloc.start()
    try:
        with contextlib.suppress(RunnerkeepError):  # refused is fine: what did it hold first
            import_archive(store, "k", str(path))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * MiB, f"the import held {peak / MiB:.0f} MiB of a 48 MiB archive"


# --- a pull the disk cut short (remote_pull.reclaim_on_full_disk) ---------------------------


def test_a_pull_cut_short_reclaims_its_blobs_and_spares_every_other_entry(tmp_path, monkeypatch):
    """The reclaim is a plain prune: blobs of the failed pull go, every stored entry (trusted
    and untrusted) and its blobs stay, verify is clean."""
    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(300 * KiB, "r")])])
    target = new_store(tmp_path, "dst")
    import_bytes(tmp_path, target, "base", one_image(200 * KiB, "b"))
    import_bytes(tmp_path, target, "pr", one_image(200 * KiB, "p"), scope="pr-1")
    blobs_before = target.list_blobs()
    failing_entry_write(monkeypatch, target.root)
    with pytest.raises(PullOutOfSpace):
        pull_entry(target, "k", registry)
    monkeypatch.undo()
    assert set(stored_names(target)) == {"base", "@pr-1@pr"}
    assert target.list_blobs() == blobs_before
    assert verify_store(target)["ok"] is True


def test_a_pull_cut_short_in_its_temp_area_reclaims_harmlessly(tmp_path, monkeypatch):
    """ENOSPC while a layer is written to the temp area (nothing committed yet): a miss, the
    temp area gone, stored entries untouched."""
    from runnerkeep.cache import remote_pull

    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(300 * KiB, "r")])])
    target = new_store(tmp_path, "dst")
    import_bytes(tmp_path, target, "base", one_image(200 * KiB, "b"))
    blobs_before = target.list_blobs()
    real = remote_pull.write_all

    def write_all(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(remote_pull, "write_all", write_all)
    try:
        with pytest.raises(RunnerkeepError, match=r"(?i)space"):
            pull_entry(target, "k", registry)
    finally:
        monkeypatch.setattr(remote_pull, "write_all", real)
    assert stored_names(target) == ["base"] and target.list_blobs() == blobs_before
    assert [n for n in os.listdir(target.tmp_dir) if not n.endswith(".lock")] == []


def test_the_reclaim_after_a_pull_spares_an_import_between_its_blobs_and_entry(
    tmp_path, monkeypatch
):
    """Pull 'k' fails at its entry write while import 'b' has moved its blobs in and not yet
    written its entry: the reclaim prune does not wait for b's shared lock (the pull misses at
    once), b comes out whole, and the next prune deletes what the pull left."""
    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(300 * KiB, "r")])])
    store = new_store(tmp_path, "dst")
    store.ensure()
    real = StoreClass.write_entry
    b_in_window, pull_failed = threading.Event(), threading.Event()

    def write_entry(self, entry):
        if entry["key"] == "k":
            pull_failed.set()  # its reclaim prune comes next, outside the pull's locks
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        b_in_window.set()
        pull_failed.wait(10)
        threading.Event().wait(0.5)  # the reclaim prune has had time to try
        return real(self, entry)

    monkeypatch.setattr(StoreClass, "write_entry", write_entry)
    path = tmp_path / "b.tar"
    path.write_bytes(one_image(300 * KiB, "bb"))
    results: dict[str, object] = {}

    def run_import():
        try:
            results["b"] = import_archive(store, "b", str(path))
        except RunnerkeepError as exc:
            results["b"] = exc

    def run_pull():
        try:
            results["k"] = pull_entry(store, "k", registry)
        except RunnerkeepError as exc:
            results["k"] = exc

    b = threading.Thread(target=run_import, daemon=True)
    b.start()
    assert b_in_window.wait(10)
    k = threading.Thread(target=run_pull, daemon=True)
    k.start()
    k.join(20)
    b.join(20)
    assert isinstance(results["k"], PullOutOfSpace)
    assert isinstance(results["b"], dict) and results["b"]["result"] == "saved", results["b"]
    monkeypatch.undo()
    assert stored_names(store) == ["b"]
    assert verify_store(store)["ok"] is True
    prune_store(store)  # the scheduled prune
    report = verify_store(store)
    assert report["ok"] is True and report["unreferenced_blobs"] == 0, report
    assert stored_names(store) == ["b"]


HOLD = 4.0  # seconds another holder keeps the shared store lock


def hold_shared_store_lock(store: Store) -> tuple[threading.Event, threading.Thread]:
    """A restore or push of another key holding the shared store lock for HOLD seconds."""
    holding = threading.Event()

    def hold():
        with store.store_lock():
            holding.set()
            time.sleep(HOLD)

    worker = threading.Thread(target=hold, daemon=True)
    worker.start()
    assert holding.wait(5)
    return holding, worker


def test_a_pull_cut_short_misses_at_once_while_another_key_holds_the_store(tmp_path, monkeypatch):
    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(200 * KiB, "r")])])
    target = new_store(tmp_path, "dst")
    target.ensure()
    failing_entry_write(monkeypatch, target.root)
    _holding, worker = hold_shared_store_lock(target)
    started = time.monotonic()
    try:
        with pytest.raises(PullOutOfSpace):
            pull_entry(target, "k", registry)
        took = time.monotonic() - started
    finally:
        worker.join(HOLD + 5)
    assert took < 1.5, f"the pull's miss took {took:.1f} s behind the other holder"


def test_an_import_cut_short_fails_at_once_while_another_key_holds_the_store(tmp_path, monkeypatch):
    store = new_store(tmp_path)
    store.ensure()
    failing_entry_write(monkeypatch, store.root)
    _holding, worker = hold_shared_store_lock(store)
    started = time.monotonic()
    try:
        with pytest.raises(RunnerkeepError, match="no space"):
            import_bytes(tmp_path, store, "k", one_image(200 * KiB, "k"))
        took = time.monotonic() - started
    finally:
        worker.join(HOLD + 5)
    assert took < 1.5, f"the import's failure took {took:.1f} s behind the other holder"


def test_the_blobs_of_a_pull_cut_short_are_gone_once_the_holder_lets_go(tmp_path, monkeypatch):
    """Whatever the wait, the blobs do not stay for ever: once the other holder is done the
    reclaim (or the next prune) removes them and verify finds nothing unreferenced."""
    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(200 * KiB, "r")])])
    target = new_store(tmp_path, "dst")
    target.ensure()
    failing_entry_write(monkeypatch, target.root)
    _holding, worker = hold_shared_store_lock(target)
    try:
        with pytest.raises(PullOutOfSpace):
            pull_entry(target, "k", registry)
    finally:
        worker.join(HOLD + 5)
    monkeypatch.undo()
    prune_store(target)
    assert target.list_blobs() == {}
    assert json.loads(json.dumps(verify_store(target)))["ok"] is True


# --- the one-pass restore the disk cuts short (remote_restore._overlapped) -----------------


@pytest.fixture
def engine(monkeypatch):
    import shutil
    import tempfile

    from fake_engine import FakeEngine

    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")  # unix socket names are short
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    fake = FakeEngine(os.path.join(path, "engine.sock"))
    yield fake
    fake.close()
    shutil.rmtree(path, ignore_errors=True)


def test_a_one_pass_restore_cut_short_at_its_entry_write_leaves_no_blob(
    tmp_path, monkeypatch, engine
):
    """The layers went into the engine as they arrived, then the entry write hit ENOSPC: a
    miss (no traceback), no entry, the blobs it moved in reclaimed, other entries intact.
    (The engine keeps the verified images it loaded; the job is told it missed.)"""
    from runnerkeep.cache.remote_restore import restore_from_fleet

    registry = registry_with_key(tmp_path, [(["app:1"], [random_layer(300 * KiB, "r")])])
    target = new_store(tmp_path, "dst")
    import_bytes(tmp_path, target, "base", one_image(200 * KiB, "b"))
    blobs_before = target.list_blobs()
    failing_entry_write(monkeypatch, target.root)
    with pytest.raises(PullOutOfSpace, match="no space"):
        restore_from_fleet(target, "k", registry)
    assert stored_names(target) == ["base"]
    assert target.list_blobs() == blobs_before, "the one-pass restore's blobs stayed"
    assert engine.images, "the one-pass path was not taken (no load reached the engine)"
