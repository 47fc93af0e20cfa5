"""An import from a regular file guesses that a legacy layer.tar as big as a stored blob is
that blob (only hashing it); a wrong guess is read again, writing every layer. A pipe is read
once, without guessing."""

from __future__ import annotations

import os
import threading

from cachetest_helpers import legacy_archive, random_layer, sha
from runnerkeep.cache import Store, import_archive, tar_reader
from runnerkeep.cache.save import import_archive_fd
from runnerkeep.cache.verify import verify_store

MiB = 1 << 20


def store_of(tmp_path) -> Store:
    return Store(str(tmp_path / "store"), key_file=None)


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_layer_as_big_as_a_stored_blob_but_other_bytes_is_stored_whole(tmp_path):
    store = store_of(tmp_path)
    first, other = random_layer(2 * MiB, "first"), random_layer(2 * MiB, "other")
    assert len(first) == len(other) and sha(first) != sha(other)
    import_archive(store, "a", write(tmp_path, "a.tar", legacy_archive([(["a:1"], [first])])))
    result = import_archive(
        store, "b", write(tmp_path, "b.tar", legacy_archive([(["b:1"], [other])]))
    )
    assert result["result"] == "saved" and result["bytes_written"] >= len(other)
    assert sha(other) in store.list_blobs()
    report = verify_store(store)
    assert report["ok"] and report["entries_checked"] == 2


def test_a_re_import_of_stored_layers_from_a_file_writes_no_layer(tmp_path, monkeypatch):
    store = store_of(tmp_path)
    layer = random_layer(3 * MiB, "l")
    path = write(tmp_path, "a.tar", legacy_archive([(["a:1"], [layer])]))
    import_archive(store, "a", path)
    temps = []
    real = tar_reader.create_temp_blob

    def counted(area):
        temps.append(area)
        return real(area)

    monkeypatch.setattr(tar_reader, "create_temp_blob", counted)
    result = import_archive(store, "again", path)
    assert result["result"] == "saved" and result["bytes_reused"] >= len(layer)
    assert temps == [], "the stored layer was written to a temp file again"


def test_a_pipe_is_read_once_and_stored_whole(tmp_path):
    store = store_of(tmp_path)
    layer = random_layer(3 * MiB, "p")
    data = legacy_archive([(["a:1"], [layer])])
    import_archive(store, "a", write(tmp_path, "a.tar", data))
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        result = import_archive_fd(store, "piped", read_fd, "pipe")
    finally:
        os.close(read_fd)
        writer.join(10)
    assert result["result"] == "saved"
    assert verify_store(store)["ok"]
