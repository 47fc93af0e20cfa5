"""A read that fails mid-archive closes every temp file it opened: an unlinked temp file held
open keeps its space for as long as the process lives (the cache service's is long). The
fsync thread is held back here so the closes queue up, as they do on a slow disk."""

from __future__ import annotations

import io
import os
import threading

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import tar_reader
from runnerkeep.cache.store import Store
from runnerkeep.cache.tar_reader import SMALL_MEMBER, ArchiveError, read_archive_stream


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_a_cut_archive_leaves_no_temp_file_open(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"), key_file=None)
    store.ensure()
    layers = [random_layer(SMALL_MEMBER + 4096, f"l{i}") for i in range(6)]
    data = legacy_archive([(["a:1"], layers)])
    cut = data[: len(data) * 3 // 4]
    gate = threading.Event()
    real = tar_reader._sync_close

    def slow_sync_close(fd: int) -> None:
        gate.wait(5)  # the disk is slow: later fsyncs wait in the queue
        real(fd)

    monkeypatch.setattr(tar_reader, "_sync_close", slow_sync_close)
    before = open_fds()
    threading.Timer(0.5, gate.set).start()
    with pytest.raises(ArchiveError), store.temp_area() as area:
        read_archive_stream(io.BytesIO(cut), store, area)
    gate.set()
    assert open_fds() - before == set(), "temp files of the failed read are still open"
