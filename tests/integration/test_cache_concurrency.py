# ruff: noqa: F811  (pytest fixtures imported from cache_fixtures)
"""Kills and concurrency on the real engine: SIGKILL at many byte offsets, SIGTERM, two saves of
one key, prune beside save."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from cache_fixtures import (  # noqa: F401  (fixtures)
    cache_images,
    cli,
    entry_of,
    image_id,
    rmi,
    tmp_leftovers,
)

pytestmark = pytest.mark.integration
KILL_POINTS = 32


def temp_bytes(store: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(os.path.join(store, "tmp")):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def kill_at(proc, store: str, offset: int, deadline: float = 20.0) -> bool:
    """SIGKILL ``proc`` once the store's temp bytes reach ``offset``; False if it finished."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if temp_bytes(store) >= offset:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.kill()
    proc.wait()
    return True


def test_sigkill_during_save_at_many_offsets(cache_images, cli, tmp_path):
    """A real save process SIGKILLed when the store's temp bytes reach each of 32 offsets."""
    from runnerkeep.cache import prune_store, restore_entry, verify_store

    tags, ids = cache_images["tags"], cache_images["ids"]
    store = str(tmp_path / "store")
    assert cli("cache", "save", "--dir", store, "--key", "k", tags["a"]).returncode == 0
    # Bytes that reach temp files: layers above 1 MiB that the shared base does not hold.
    written = {}
    for name in ("a", "b"):
        scratch = str(tmp_path / f"scratch-{name}")
        assert cli("cache", "save", "--dir", scratch, "--key", "s", tags[name]).returncode == 0
        layers = entry_of(scratch, "s")["images"][0]["layers"][1:]
        written[name] = sum(layer["size"] for layer in layers if layer["size"] > 1 << 20)
    killed = 0
    timings = {"save": 0.0, "restore": 0.0}
    for i in range(KILL_POINTS):
        # Always the image the entry does not hold, so every save is a real one.
        name = "a" if entry_of(store, "k")["images"][0]["id"] == ids["b"] else "b"
        # Drop blobs no entry uses, so the new image's layers are really written again.
        prune_store(store)
        offset = max(1, int(written[name] * (i + 0.5) / KILL_POINTS))
        t0 = time.monotonic()
        proc = cli.popen("cache", "save", "--dir", store, "--key", "k", tags[name])
        if kill_at(proc, store, offset):
            killed += 1
        timings["save"] += time.monotonic() - t0
        # verify passes after every kill
        report = verify_store(store)
        assert report["ok"], (i, report)
        # restore yields the old or the new images, never a broken load
        current = entry_of(store, "k")["images"][0]["id"]
        assert current in (ids["a"], ids["b"])
        t0 = time.monotonic()
        rmi(tags["a"] if current == ids["a"] else tags["b"])
        result = restore_entry(store, "k")
        timings["restore"] += time.monotonic() - t0
        assert result["loaded"], (i, result)
        assert image_id(tags["a"]) == ids["a"] and image_id(tags["b"]) == ids["b"]
    print("timings", timings)
    assert killed >= 30, killed
    # the next run removes the temp data the killed processes left behind
    proc = cli("cache", "save", "--dir", store, "--key", "k", tags["b"])
    assert proc.returncode == 0, proc.stderr
    assert tmp_leftovers(store) == []


def test_sigterm_during_save_removes_temp_data(cache_images, cli, tmp_path):
    store = str(tmp_path / "store")
    assert (
        cli("cache", "save", "--dir", store, "--key", "k", cache_images["tags"]["a"]).returncode
        == 0
    )
    before = Path(os.path.join(store, "entries", "k.json")).read_bytes()
    proc = cli.popen("cache", "save", "--dir", store, "--key", "k", cache_images["tags"]["b"])
    end = time.monotonic() + 20
    while temp_bytes(store) < 500_000 and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.0005)
    if proc.poll() is not None:
        pytest.skip("the save finished before SIGTERM could be sent")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert tmp_leftovers(store) == []
    assert Path(os.path.join(store, "entries", "k.json")).read_bytes() == before


def test_concurrent_saves_of_one_key(cache_images, cli, tmp_path):
    tags, ids = cache_images["tags"], cache_images["ids"]
    store = str(tmp_path / "store")
    procs = [
        cli.popen("cache", "save", "--dir", store, "--key", "k", tags[name])
        for name in ("a", "b", "a", "b")
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert entry_of(store, "k")["images"][0]["id"] in (ids["a"], ids["b"])
    code, report = cli.json("cache", "verify", "--dir", store)
    assert code == 0 and report["ok"], report
    assert tmp_leftovers(store) == []


def test_prune_beside_save(cache_images, cli, tmp_path):
    tags, ids = cache_images["tags"], cache_images["ids"]
    store = str(tmp_path / "store")
    assert cli("cache", "save", "--dir", store, "--key", "old", tags["a"]).returncode == 0
    for max_size in ("0", "1"):  # evict everything it sees, delete all unreferenced blobs
        rmi_key = f"new{max_size}"
        save = cli.popen("cache", "save", "--dir", store, "--key", rmi_key, tags["b"])
        time.sleep(0.05)
        prune = cli.popen("cache", "prune", "--dir", store, "--max-size", max_size)
        for proc in (save, prune):
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        code, report = cli.json("cache", "verify", "--dir", store)
        assert code == 0 and report["ok"], report
        if os.path.exists(os.path.join(store, "entries", rmi_key + ".json")):
            # prune ran first (or the save was protected): the entry must be whole
            rmi(tags["b"])
            code, r = cli.json("cache", "restore", "--dir", store, "--key", rmi_key)
            assert code == 0, r
        else:
            assert image_id(ids["b"]) == ids["b"]
    assert image_id(tags["b"]) == ids["b"]
