"""An import from a regular file guesses that a legacy layer.tar as big as a stored blob is
that blob (only hashing it); a wrong guess is read again, writing every layer. A pipe is read
once, without guessing."""

from __future__ import annotations

import os
import threading

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from runnerkeep.cache import Store, import_archive, tar_reader
from runnerkeep.cache.save import import_archive_fd
from runnerkeep.cache.verify import verify_store
from runnerkeep.errors import RunnerkeepError

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


def big_config_archive(layer: bytes) -> bytes:
    """A legacy archive whose config is over 1 MiB (a long label): only hashed on a guess."""
    import json

    from cachetest_helpers import config_for, write_tar

    config = config_for([layer], "x" * (3 * MiB // 2))
    name = sha(config)[7:] + ".json"
    manifest = [{"Config": name, "RepoTags": ["big:1"], "Layers": ["l1/layer.tar"]}]
    members = [("l1/layer.tar", layer), (name, config)]
    return write_tar([*members, ("manifest.json", json.dumps(manifest).encode())])


def test_a_stored_config_is_read_back_from_the_store_and_checked(tmp_path):
    store = store_of(tmp_path)
    layer = random_layer(200 * 1024, "c")
    path = write(tmp_path, "big.tar", big_config_archive(layer))
    import_archive(store, "first", path)
    assert import_archive(store, "again", path)["result"] == "saved"
    # The stored copy of the config rots (same size, still valid JSON): a re-import that only
    # hashed the archive's copy must not take the stored one unchecked.
    (config_digest,) = [d for d, size in store.list_blobs().items() if size > MiB]
    blob = store.blob_path(config_digest)
    with open(blob, "rb") as handle:
        data = bytearray(handle.read())
    data[data.index(b"xxxx")] = ord("y")
    os.chmod(blob, 0o644)
    with open(blob, "wb") as out:
        out.write(data)
    with pytest.raises(RunnerkeepError, match="damaged: run `runnerkeep cache verify --repair`"):
        import_archive(store, "third", path)
    assert "third" not in store.list_keys()
