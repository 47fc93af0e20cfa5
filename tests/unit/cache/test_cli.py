"""`runnerkeep cache` CLI without Docker: import, list, verify, export, prune, exit codes."""

from __future__ import annotations

import json
import os

import pytest
from cachetest_helpers import legacy_archive, oci_archive, random_layer
from runnerkeep_cli.main import main

LAYER = random_layer(200_000)
OTHER = random_layer(300_000)


@pytest.fixture
def env(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"paths": {"state_dir": str(tmp_path / "state")}}))
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(config))
    monkeypatch.delenv("RUNNERKEEP_CACHE_DIR", raising=False)
    return tmp_path


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_list_verify_export_prune(env, capsys):
    store = str(env / "store")
    archive = env / "a.tar"
    archive.write_bytes(legacy_archive([(["a:1"], [LAYER])]))
    oci = env / "o.tar"
    oci.write_bytes(oci_archive([("o:1", [LAYER, OTHER])]))
    assert run(capsys, "cache", "import", "--dir", store, "--key", "a", str(archive))[0] == 0
    code, out, _ = run(capsys, "cache", "import", "--dir", store, "--key", "o", str(oci), "--json")
    assert code == 0 and json.loads(out)["format"] == "oci"
    code, out, _ = run(capsys, "cache", "list", "--dir", store, "--json")
    listing = json.loads(out)
    assert [e["key"] for e in listing["entries"]] == ["a", "o"]
    code, out, _ = run(capsys, "cache", "list", "--dir", store)
    assert "a:1" in out and "o:1" in out
    assert run(capsys, "cache", "verify", "--dir", store)[0] == 0
    exported = str(env / "out.tar")
    assert run(capsys, "cache", "export", "--dir", store, "--key", "o", "-o", exported)[0] == 0
    assert os.path.getsize(exported) > 500_000
    code, out, _ = run(capsys, "cache", "prune", "--dir", store, "--max-size", "1", "--dry-run")
    assert code == 0 and "would free" in out
    code, out, _ = run(capsys, "cache", "prune", "--dir", store, "--max-size", "1", "--json")
    assert code == 0 and len(json.loads(out)["evicted"]) == 2
    events = (env / "state" / "events.jsonl").read_text()
    assert '"op": "import"' in events and '"op": "prune"' in events


def test_dir_from_environment(env, capsys, monkeypatch):
    store = env / "envstore"
    monkeypatch.setenv("RUNNERKEEP_CACHE_DIR", str(store))
    archive = env / "a.tar"
    archive.write_bytes(legacy_archive([(["a:1"], [LAYER])]))
    assert run(capsys, "cache", "import", "--key", "a", str(archive))[0] == 0
    assert (store / "entries" / "a.json").exists()


def test_exit_codes(env, capsys):
    store = str(env / "store")
    code, _, err = run(capsys, "cache", "restore", "--dir", store, "--key", "a/b")
    assert code == 2 and "invalid cache key" in err
    code, _, _ = run(capsys, "cache", "restore", "--dir", store, "--key", "missing")
    assert code == 3
    bad = env / "bad.tar"
    bad.write_bytes(b"\0" * 100)
    code, out, err = run(
        capsys, "cache", "import", "--dir", store, "--key", "x", str(bad), "--json"
    )
    assert code == 1 and "refused" in json.loads(out)["error"]
    archive = env / "a.tar"
    archive.write_bytes(legacy_archive([(["a:1"], [LAYER])]))
    assert run(capsys, "cache", "import", "--dir", store, "--key", "a", str(archive))[0] == 0
    blob_dir = os.path.join(store, "blobs", "sha256")
    biggest = max(os.listdir(blob_dir), key=lambda n: os.path.getsize(os.path.join(blob_dir, n)))
    path = os.path.join(blob_dir, biggest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"X")
    code, out, _ = run(capsys, "cache", "verify", "--dir", store)
    assert code == 6 and "BAD blob" in out
    code, out, _ = run(capsys, "cache", "verify", "--dir", store, "--repair")
    assert code == 6 and "quarantined" in out
    assert run(capsys, "cache", "verify", "--dir", store)[0] == 0
    assert run(capsys, "cache", "restore", "--dir", store, "--key", "a")[0] == 3
