"""Attacks on ``cache import``'s reserve guard and quota (import_space.ReserveGuard,
save.import_archive_fd, the service's dispatch): a real small filesystem (tmpfs in a private
mount namespace) with archives bigger than the room, archives made of many small members,
an endless stream, the quota against an untrusted job, and imports racing a prune. Strict
xfails are breaks still open (they flip when fixed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import threading
import time

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import Store, import_archive, list_entries, prune_store, service
from runnerkeep.cache.cache_config import cache_settings
from runnerkeep.cache.save import import_archive_fd
from runnerkeep.cache.verify import verify_store
from runnerkeep.errors import ConfigError, RunnerkeepError

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PYTHONPATH = os.pathsep.join([os.path.join(ROOT, "module_utils"), os.path.join(ROOT, "cli"), HERE])

# Run inside the namespace with the tmpfs at argv[1]; prints one JSON line: what happened.
IMPORT_ON_SMALL_FS = """
import json, os, sys
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import Store, import_archive, list_entries
from runnerkeep.errors import RunnerkeepError

mount, archive, reserve = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(os.path.join(mount, "store"), key_file=None)
store.ensure()
def usage():
    info = os.statvfs(mount)
    return info.f_bavail * info.f_frsize, info.f_favail
free_before, inodes_before = usage()
outcome = {"free_before": free_before, "inodes_before": inodes_before, "error": None}
try:
    outcome["result"] = import_archive(store, "k", archive, reserve=reserve)["result"]
except RunnerkeepError as exc:
    outcome["error"] = type(exc).__name__ + ": " + str(exc)
outcome["free_after"], outcome["inodes_after"] = usage()
outcome["entries"] = [e["key"] for e in list_entries(store)["entries"]]
outcome["blobs"] = len(store.list_blobs())
print(json.dumps(outcome))
"""


def import_on_small_fs(tmp_path, archive: bytes, reserve: int, options: str) -> dict:
    """Import ``archive`` into a store on a fresh tmpfs mounted with ``options`` (private
    mount namespace: the mount goes with the process)."""
    archive_path = tmp_path / "archive.tar"
    archive_path.write_bytes(archive)
    mount = tmp_path / "mnt"
    mount.mkdir()
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, RUNNERKEEP_RUN_DIR=str(tmp_path / "run"))
    proc = subprocess.run(
        [
            *("unshare", "-m", "--propagation", "private", "sh", "-c"),
            'mount -t tmpfs -o "$1" tmpfs "$2" && exec "$3" -c "$4" "$2" "$5" "$6"',
            *("sh", options, str(mount), sys.executable, IMPORT_ON_SMALL_FS),
            *(str(archive_path), str(reserve)),
        ],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"Traceback" not in proc.stderr
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def small_layers(count: int, size: int) -> list[bytes]:
    """Layers of ``size`` random bytes (tar overhead keeps each under 1 MiB when size is)."""
    return [random_layer(size, name=f"f{index}") for index in range(count)]


# --- a real small filesystem ------------------------------------------------------------------


def test_big_layers_bigger_than_the_room_stop_and_leave_the_fs_as_it_was(tmp_path):
    archive = legacy_archive([(["big:1"], small_layers(3, 30 * MiB))])  # ~90 MiB, 64 MiB fs
    outcome = import_on_small_fs(tmp_path, archive, 8 * MiB, "size=64m")
    assert outcome["error"].startswith("FreeSpaceError: ") and "reserve" in outcome["error"]
    assert outcome["entries"] == [] and outcome["blobs"] == 0
    assert outcome["free_after"] >= outcome["free_before"] - MiB


def test_many_small_layers_do_not_take_the_disk_below_the_reserve(tmp_path):
    reserve = 32 * MiB
    archive = legacy_archive([(["small:1"], small_layers(48, MiB - 16 * 1024))])  # ~47 MiB
    outcome = import_on_small_fs(tmp_path, archive, reserve, "size=64m")
    if outcome["error"] is None:
        assert outcome["free_after"] >= reserve, (
            f"import stored, {outcome['free_after'] / MiB:.1f} MiB left, reserve 32 MiB"
        )
    else:
        assert outcome["error"].startswith("FreeSpaceError: ")


def test_a_commit_that_runs_out_of_space_leaves_the_space_it_found(tmp_path):
    archive = legacy_archive([(["small:1"], small_layers(80, MiB - 16 * 1024))])  # ~79 MiB
    outcome = import_on_small_fs(tmp_path, archive, 8 * MiB, "size=64m")
    assert outcome["error"] is not None and outcome["entries"] == []
    assert outcome["free_after"] >= outcome["free_before"] - MiB, outcome
    assert outcome["blobs"] == 0


def test_many_tiny_layers_leave_the_inodes_they_found(tmp_path):
    archive = legacy_archive([(["tiny:1"], small_layers(300, 64))])
    outcome = import_on_small_fs(tmp_path, archive, MiB, "size=64m,nr_inodes=150")
    assert outcome["error"] is not None and outcome["entries"] == []
    assert outcome["inodes_after"] >= outcome["inodes_before"] - 2, outcome


# --- an endless stream ------------------------------------------------------------------------


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT)


def endless_feeder(write_end: int, head: bytes, seconds: float) -> threading.Thread:
    """Writes ``head`` then zeros for ``seconds``, at most ~6 MiB/s (bounded: the test's
    stand-in for a slow stream that never ends)."""

    def run():
        try:
            os.write(write_end, head)
            zeros = b"\0" * 65536
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                os.write(write_end, zeros)
                time.sleep(0.01)
        except OSError:
            pass  # the reader gave up: what the test wants
        finally:
            os.close(write_end)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_services_transfer_deadline_ends_an_endless_pipe(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    # One member far larger than the test feeds: the stream stays inside it (zeros after a
    # whole archive would be refused as a trailer long before the deadline).
    head = _member_header("layer.tar", 10**11)
    read_end, write_end = os.pipe()
    feeder = endless_feeder(write_end, head, 30)
    settings = {"reserve": 0, "max_size": None, "transfer_deadline": 1}
    started = time.monotonic()
    try:
        with pytest.raises(service.TransferStalled):
            service.dispatch("import", {"key": "e"}, [read_end], "pr-1", store, settings)
    finally:
        os.close(read_end)
        feeder.join(40)
    assert time.monotonic() - started < 15
    assert list_entries(store)["entries"] == []
    # The store's locks went with it: an exclusive prune gets them at once.
    assert prune_store(store, max_size=0)["evicted"] == []


def test_an_archive_of_endless_zeros_ends(tmp_path):
    script = (
        "import sys\n"
        "from runnerkeep.cache import Store, import_archive\n"
        "from runnerkeep.errors import RunnerkeepError\n"
        "try:\n"
        "    import_archive(Store(sys.argv[1], key_file=None), 'z', '/dev/zero')\n"
        "except RunnerkeepError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, RUNNERKEEP_RUN_DIR=str(tmp_path / "run"))
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "store")], env=env, stdout=subprocess.PIPE
    )
    try:
        out, _err = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail("the import of /dev/zero still ran after 8 s")
    assert b"refused:" in out


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reserve", [None, -1, "-1MiB", "NaN", "1e999", True, [], "10%", 1.5e400], ids=repr
)
def test_a_bad_reserve_is_a_config_error_before_any_import(reserve):
    with pytest.raises(ConfigError, match=r"cache\.reserve"):
        cache_settings({"cache": {"reserve": reserve}})


def test_reserve_zero_turns_the_guard_off_and_the_import_is_stored(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    path = tmp_path / "a.tar"
    path.write_bytes(legacy_archive([(["a:1"], [random_layer(MiB)])]))
    result = import_archive(store, "a", str(path), reserve=0)
    assert result["result"] == "saved"
    assert verify_store(store)["ok"] is True


# --- the quota ------------------------------------------------------------------------------


def archive_file(tmp_path, name: str, size: int) -> str:
    path = tmp_path / f"{name}.tar"
    path.write_bytes(legacy_archive([([f"{name}:1"], [random_layer(size)])]))
    return str(path)


def test_an_untrusted_import_never_evicts_a_trusted_entry(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    import_archive(store, "base", archive_file(tmp_path, "base", 2 * MiB))
    fd = os.open(archive_file(tmp_path, "job", 2 * MiB), os.O_RDONLY)
    settings = {"reserve": 0, "max_size": 3 * MiB}
    try:  # refused (as a pull that only fits by evicting), or stored beside it: both fine
        service.dispatch("import", {"key": "evil"}, [fd], "pr-7", store, settings)
    except RunnerkeepError:
        pass
    finally:
        os.close(fd)
    assert "base" in {e["key"] for e in list_entries(store)["entries"]}


def test_an_entry_bigger_than_the_whole_quota_does_not_empty_the_store(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    import_archive(store, "keep", archive_file(tmp_path, "keep", MiB // 2))
    try:
        result = import_archive(
            store, "huge", archive_file(tmp_path, "huge", 5 * MiB), max_size=MiB
        )
    except RunnerkeepError:
        result = None
    keys = {e["key"] for e in list_entries(store)["entries"]}
    assert "keep" in keys, (result or {}).get("prune")


# --- imports racing a prune ----------------------------------------------------------------------


def test_imports_racing_prunes_never_leave_an_entry_without_its_blobs(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    archives = [archive_file(tmp_path, f"r{i}", 2 * MiB) for i in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def prune_loop():
        try:
            for _ in range(400):
                if stop.is_set():
                    return
                prune_store(store, max_size=3 * MiB)
        except BaseException as exc:
            errors.append(exc)

    pruner = threading.Thread(target=prune_loop, daemon=True)
    pruner.start()
    try:
        for round_ in range(3):
            for index, path in enumerate(archives):
                import_archive(store, f"r{index}", path, max_size=5 * MiB)
                assert verify_store(store)["ok"] is True, (round_, index)
    finally:
        stop.set()
        pruner.join(30)
    assert not errors, errors
    assert verify_store(store)["ok"] is True


def test_the_guard_leaves_no_temp_area_behind_after_a_stop(tmp_path):
    """A stopped import's temp area goes with it: no dead temp for verify --repair to find."""
    store = Store(str(tmp_path / "store"), key_file=None)
    path = archive_file(tmp_path, "big", 12 * MiB)
    free = os.statvfs(str(tmp_path))
    with pytest.raises(RunnerkeepError, match="less than the reserve"):
        import_archive(store, "big", path, reserve=free.f_bavail * free.f_frsize - 2 * MiB)
    leftovers = [os.path.join(d, f) for d, _dirs, files in os.walk(store.tmp_dir) for f in files]
    assert leftovers == []


def test_a_slow_import_survives_verify_repair_and_prune_running_meanwhile(tmp_path):
    """A pipe fed in pieces (the import holds its temp area for ~1 s) while verify --repair
    and a prune loop run: neither takes the live temp area; the entry is stored whole."""
    store = Store(str(tmp_path / "store"), key_file=None)
    import_archive(store, "other", archive_file(tmp_path, "other", MiB))
    data = legacy_archive([(["slow:1"], [random_layer(3 * MiB)])])
    read_end, write_end = os.pipe()

    def feed():
        try:
            for offset in range(0, len(data), 256 * 1024):
                os.write(write_end, data[offset : offset + 256 * 1024])
                time.sleep(0.08)
        finally:
            os.close(write_end)

    stop = threading.Event()
    repaired: list[dict] = []

    def housekeeping():
        for _ in range(200):
            if stop.is_set():
                return
            repaired.append(verify_store(store, repair=True))
            prune_store(store, max_size=100 * MiB)

    threads = [threading.Thread(target=t, daemon=True) for t in (feed, housekeeping)]
    for thread in threads:
        thread.start()
    try:
        result = import_archive_fd(store, "slow", read_end, "a slow pipe", max_size=100 * MiB)
    finally:
        stop.set()
        os.close(read_end)
        for thread in threads:
            thread.join(30)
    assert result["result"] == "saved"
    assert repaired and all(report["ok"] for report in repaired)
    assert not any(report["stale_temps_removed"] for report in repaired)
    assert verify_store(store, key="slow")["ok"] is True
    assert {e["key"] for e in list_entries(store)["entries"]} == {"other", "slow"}
