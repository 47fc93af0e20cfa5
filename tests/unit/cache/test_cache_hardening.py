"""Issue 10 for the image cache: read-only paths change nothing, damaged state never stops it.

Dry runs, check mode and the read-only commands are checked by snapshotting the whole tree
(paths, types, modes, mtimes, contents) before and after, including a store that does not exist
yet. Damaged entries, blobs and lock files (truncated, not UTF-8, wrong types, 1e999, FIFOs,
symlinks, directories) are thrown at list, prune, verify and save: a skip with one warning
line, never a traceback or a hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cachetest_helpers import legacy_archive, random_layer
from deadline import must_finish_within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runnerkeep.cache import Store, import_archive, list_entries, prune_store, verify_store
from runnerkeep.cache import save as save_mod
from runnerkeep.cache.store import entry_checksum
from runnerkeep_cli.main import main

LAYER_A = random_layer(20_000, "a")
LAYER_B = random_layer(30_000, "b")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
LIBRARY = os.path.join(REPO, "library", "image_cache.py")
HANG_GUARD_SECONDS = 20


# -- helpers --------------------------------------------------------------------------------
def snapshot(root: str) -> dict[str, tuple]:
    """Every path under ``root`` (and ``root`` itself): type, mode, mtime, content or target.
    FIFOs are never opened."""
    out: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return out
    paths = [root]
    for dirpath, dirs, files in os.walk(root):
        paths += [os.path.join(dirpath, n) for n in dirs + files]
    for path in paths:
        st_ = os.lstat(path)
        kind = stat.S_IFMT(st_.st_mode)
        if stat.S_ISREG(st_.st_mode):
            with open(path, "rb") as handle:
                content = hashlib.sha256(handle.read()).hexdigest()
        elif stat.S_ISLNK(st_.st_mode):
            content = os.readlink(path)
        else:
            content = None
        out[os.path.relpath(path, root)] = (kind, st_.st_mode & 0o7777, st_.st_mtime_ns, content)
    return out


def put(tmp_path, store_dir: str, key: str, data: bytes) -> dict:
    path = tmp_path / f"in-{os.urandom(3).hex()}.tar"
    path.write_bytes(data)
    return import_archive(store_dir, key, str(path))


def make_store(tmp_path) -> str:
    """Two good entries, then the debris a killed save leaves (a temp dir without its lock, an
    old entry temp), and no lock files: a store restored from a backup, say."""
    store_dir = str(tmp_path / "store")
    put(tmp_path, store_dir, "good", legacy_archive([(["good:1"], [LAYER_A])]))
    put(tmp_path, store_dir, "other", legacy_archive([(["other:1"], [LAYER_B])]))
    store = Store(store_dir)
    old = time.time() - 7200
    dead = os.path.join(store.tmp_dir, "12345-deadbeef")
    os.mkdir(dead)
    with open(os.path.join(dead, "blob-x"), "wb") as handle:
        handle.write(b"half a layer")
    temp_entry = os.path.join(store.entry_dir, ".tmp-old")
    with open(temp_entry, "wb") as handle:
        handle.write(b"{")
    for path in (os.path.join(dead, "blob-x"), dead, temp_entry):
        os.utime(path, (old, old))
    os.unlink(os.path.join(store_dir, "store.lock"))
    shutil.rmtree(store.lock_dir)
    return store_dir


def forged_entry(key: str, **changes) -> bytes:
    """A structurally wrong entry with a valid checksum (anyone can recompute it)."""
    body = {
        "format": 1,
        "key": key,
        "archive_format": "docker-archive",
        "created": time.time(),
        "images": [
            {
                "id": "sha256:" + "a" * 64,
                "tags": ["x:1"],
                "config": {"digest": "sha256:" + "a" * 64, "size": 10},
                "layers": [{"digest": "sha256:" + "b" * 64, "size": 5, "diff_id": "x"}],
                "manifests": [],
            }
        ],
    }
    body.update(changes)
    body["checksum"] = entry_checksum(body)
    return json.dumps(body).encode()


@pytest.fixture
def env(tmp_path, monkeypatch):
    state = tmp_path / "state"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"paths": {"state_dir": str(state)}}))
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(config))
    monkeypatch.delenv("RUNNERKEEP_CACHE_DIR", raising=False)
    return tmp_path


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def fake_docker(monkeypatch):
    """`docker image inspect` and `docker info` answers for a save dry run (no Docker here)."""
    config = json.dumps({"rootfs": {"diff_ids": []}}).encode()

    def inspect_images(refs):
        return [
            {"Id": "sha256:" + hashlib.sha256(config + r.encode()).hexdigest(), "Size": 1000}
            for r in refs
        ]

    monkeypatch.setattr(save_mod, "inspect_images", inspect_images)
    monkeypatch.setattr(
        save_mod, "engine_info", lambda: {"ServerVersion": "27.0", "DockerRootDir": "/nonexistent"}
    )


# -- 1. dry runs and read-only commands change nothing ---------------------------------------
READ_ONLY_COMMANDS = [
    ("cache", "list"),
    ("cache", "list", "--json"),
    ("cache", "verify"),
    ("cache", "prune", "--dry-run", "--max-size", "1"),
    ("cache", "prune", "--dry-run", "--max-age", "1s"),
    ("cache", "save", "--dry-run", "--key", "new", "img:1"),
    ("cache", "save", "--dry-run", "--key", "new", "img:1", "--make-room"),
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
def test_read_only_commands_change_nothing_in_an_existing_store(env, capsys, fake_docker, command):
    store_dir = make_store(env)
    before = snapshot(str(env))
    code, _out, _err = cli(capsys, *command, "--dir", store_dir)
    assert code == 0
    assert snapshot(str(env)) == before


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("shape", ["missing", "empty dir", "missing parent"])
def test_read_only_commands_create_nothing_where_no_store_is(
    env, capsys, fake_docker, command, shape
):
    store_dir = str(env / "parent" / "store") if shape == "missing parent" else str(env / "s")
    if shape == "empty dir":
        os.mkdir(store_dir)
    before = snapshot(str(env))
    code, out, _err = cli(capsys, *command, "--dir", store_dir)
    assert code == 0
    assert snapshot(str(env)) == before
    if command[1] == "prune":
        assert "nothing to prune" in out


def test_cli_prune_on_a_never_written_store_says_nothing_to_prune(env, capsys):
    # Not a dry run: still nothing to create, and no event (nothing happened).
    code, out, _err = cli(capsys, "cache", "prune", "--dir", str(env / "never"))
    assert code == 0 and "nothing to prune" in out
    code, out, _err = cli(capsys, "cache", "prune", "--dir", str(env / "never"), "--json")
    assert code == 0 and json.loads(out)["evicted"] == []
    assert not (env / "never").exists()


def test_verify_of_a_never_written_store_is_not_a_miss(env, capsys):
    code, out, _err = cli(capsys, "cache", "verify", "--dir", str(env / "never"))
    assert code == 0 and "nothing to verify" in out
    assert not (env / "never").exists()


def test_core_dry_runs_keep_stale_temps_and_write_no_lock(tmp_path, fake_docker):
    store_dir = make_store(tmp_path)
    before = snapshot(store_dir)
    save_mod.save_entry(store_dir, "new", ["img:1"], dry_run=True, state_dir=str(tmp_path / "st"))
    prune_store(store_dir, max_size=0, quarantine_retention=0, dry_run=True)
    verify_store(store_dir)
    list_entries(store_dir)
    assert snapshot(store_dir) == before
    assert not (tmp_path / "st").exists()  # no event either
    # The real run still cleans up what the dry runs left alone.
    result = prune_store(store_dir)
    assert "12345-deadbeef" in result["stale_temps_removed"]
    assert not os.path.exists(os.path.join(store_dir, "entries", ".tmp-old"))


# -- 3. damaged entries: skipped with one warning, quarantined by a real prune ---------------
def _fifo(path):
    os.mkfifo(path)


def _dir(path):
    os.mkdir(path)


def _symlink_outside(path):
    target = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(path))), "secret")
    with open(target, "wb") as handle:
        handle.write(forged_entry("bad"))
    os.symlink(target, path)


def _huge(path):
    with open(path, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: costs nothing, must not be read whole


def _bytes(data):
    def write(path):
        with open(path, "wb") as handle:
            handle.write(data)

    return write


DAMAGE = {
    "truncated": _bytes(forged_entry("bad")[:40]),
    "not utf-8": _bytes(b'{"format": 1, "key": "\xff\xfe"}'),
    "list not object": _bytes(b"[1, 2, 3]"),
    "1e999 created": _bytes(forged_entry("bad", created=1e999)),
    "tags not strings": _bytes(forged_entry("bad").replace(b'["x:1"]', b"[1]")),
    "images a string": _bytes(forged_entry("bad", images="abc")),
    "layer without diff_id": _bytes(
        forged_entry(
            "bad",
            images=[
                {
                    "id": "sha256:" + "a" * 64,
                    "tags": [],
                    "config": {"digest": "sha256:" + "a" * 64, "size": 1},
                    "layers": [{"digest": "sha256:" + "b" * 64, "size": 1}],
                }
            ],
        )
    ),
    "size a bool": _bytes(forged_entry("bad").replace(b'"size": 5', b'"size": true')),
    "deep nesting": _bytes(b"[" * 100_000 + b"]" * 100_000),
    "fifo": _fifo,
    "directory": _dir,
    "symlink out": _symlink_outside,
    "huge": _huge,
}


def _fix_checksum_after_replace(path):
    # The byte-level replacements above break the checksum; recompute so that only the types
    # are wrong (the forged-entry attack, not an accident).
    with contextlib.suppress(ValueError, OSError, RecursionError):
        if stat.S_ISREG(os.lstat(path).st_mode) and os.path.getsize(path) < 1 << 20:
            with open(path, "rb") as handle:
                body = json.loads(handle.read())
            if isinstance(body, dict) and "checksum" in body:
                body["checksum"] = entry_checksum(body)
                with open(path, "w") as handle:
                    json.dump(body, handle)


def damage_entry(store_dir: str, how: str) -> str:
    path = os.path.join(store_dir, "entries", "bad.json")
    DAMAGE[how](path)
    _fix_checksum_after_replace(path)
    return path


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_list_skips_a_damaged_entry_with_one_warning(env, capsys, how):
    store_dir = make_store(env)
    damage_entry(store_dir, how)
    before = snapshot(str(env))
    with must_finish_within(HANG_GUARD_SECONDS):
        code, out, err = cli(capsys, "cache", "list", "--dir", store_dir)
    assert code == 0 and "good:1" in out and "other:1" in out
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'bad'" in warnings[0]
    assert snapshot(str(env)) == before


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_prune_dry_run_reports_and_real_prune_quarantines_a_damaged_entry(env, capsys, how):
    store_dir = make_store(env)
    path = damage_entry(store_dir, how)
    before = snapshot(str(env))
    with must_finish_within(HANG_GUARD_SECONDS):
        code, out, err = cli(capsys, "cache", "prune", "--dir", store_dir, "--dry-run")
    assert code == 0 and "evict bad: unreadable entry" in out
    assert len([line for line in err.splitlines() if "warning" in line]) == 1
    assert snapshot(str(env)) == before
    with must_finish_within(HANG_GUARD_SECONDS):
        code, out, err = cli(capsys, "cache", "prune", "--dir", store_dir)
    assert code == 0 and "quarantine" in err
    assert not os.path.lexists(path)
    assert any("bad.json" in n for n in os.listdir(os.path.join(store_dir, "quarantine")))
    assert verify_store(store_dir)["ok"]  # the good entries are intact
    if how == "symlink out":
        assert os.path.exists(env / "secret")  # the link moved, never its target


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_verify_reports_a_damaged_entry_without_traceback(env, capsys, how):
    store_dir = make_store(env)
    damage_entry(store_dir, how)
    before = snapshot(str(env))
    with must_finish_within(HANG_GUARD_SECONDS):
        code, out, _err = cli(capsys, "cache", "verify", "--dir", store_dir)
    assert code == 6 and "BAD entry bad" in out
    assert snapshot(str(env)) == before  # without --repair nothing moves
    with must_finish_within(HANG_GUARD_SECONDS):
        code, out, _err = cli(capsys, "cache", "verify", "--dir", store_dir, "--repair")
    assert code == 6 and "quarantined" in out
    assert cli(capsys, "cache", "verify", "--dir", store_dir)[0] == 0


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_save_works_beside_and_over_a_damaged_entry(env, capsys, how):
    store_dir = make_store(env)
    damage_entry(store_dir, how)
    archive = env / "new.tar"
    archive.write_bytes(legacy_archive([(["new:1"], [LAYER_A, LAYER_B])]))
    with must_finish_within(HANG_GUARD_SECONDS):
        assert (
            cli(capsys, "cache", "import", "--dir", store_dir, "--key", "n", str(archive))[0] == 0
        )
        # Saving under the damaged key itself replaces the damage.
        assert (
            cli(capsys, "cache", "import", "--dir", store_dir, "--key", "bad", str(archive))[0] == 0
        )
    assert verify_store(store_dir)["ok"]


# -- damaged lock files, blobs and temp debris -----------------------------------------------
LOCK_DAMAGE = ["fifo", "directory", "symlink out", "dangling symlink"]


def _plant(path: str, how: str, outside: str) -> None:
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        os.mkdir(path)
    elif how == "symlink out":
        os.symlink(outside, path)
    else:
        os.symlink(outside + "-does-not-exist", path)


@pytest.mark.parametrize("how", LOCK_DAMAGE)
@pytest.mark.parametrize("which", ["store.lock", "locks/k.lock"])
def test_damaged_lock_files_do_not_stop_a_save_and_are_never_followed(tmp_path, how, which):
    store_dir = make_store(tmp_path)
    Store(store_dir).ensure()
    outside = str(tmp_path / "outside")
    with open(outside, "wb") as handle:
        handle.write(b"sentinel")
    before_outside = snapshot(outside)
    _plant(os.path.join(store_dir, which), how, outside)
    with must_finish_within(HANG_GUARD_SECONDS):
        list_entries(store_dir)
        verify_store(store_dir)
        prune_store(store_dir, dry_run=True)
        put(tmp_path, store_dir, "k", legacy_archive([(["k:1"], [LAYER_A])]))
        prune_store(store_dir)
    assert snapshot(outside) == before_outside
    assert not os.path.exists(outside + "-does-not-exist")
    assert stat.S_ISREG(os.lstat(os.path.join(store_dir, which)).st_mode)
    assert verify_store(store_dir)["ok"]


@pytest.mark.parametrize("how", ["fifo", "symlink to a good copy", "directory"])
def test_a_blob_that_is_not_a_regular_file_is_never_used(tmp_path, how):
    store_dir = make_store(tmp_path)
    store = Store(store_dir)
    digest = max(store.list_blobs().items(), key=lambda kv: kv[1])[0]
    path = store.blob_path(digest)
    copy = str(tmp_path / "copy")
    shutil.copyfile(path, copy)
    os.unlink(path)
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        os.mkdir(path)
    else:
        os.symlink(copy, path)  # right bytes, but outside the store: a plant
    with must_finish_within(HANG_GUARD_SECONDS):
        report = verify_store(store_dir)
        assert not report["ok"]
        assert list_entries(store_dir)["entries"]
        # Saving the same layer again puts a real blob in its place.
        put(tmp_path, store_dir, "again", legacy_archive([(["again:1"], [LAYER_A, LAYER_B])]))
        verify_store(store_dir, repair=True)
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert store.blob_size(digest) == os.path.getsize(copy)


def test_a_fifo_planted_as_a_temp_lock_does_not_hang_the_cleanup(tmp_path):
    store_dir = make_store(tmp_path)
    Store(store_dir).ensure()
    fifo = os.path.join(store_dir, "tmp", "999-cafe.lock")
    os.mkfifo(fifo)
    link = os.path.join(store_dir, "tmp", "998-cafe.lock")
    os.symlink(str(tmp_path / "outside"), link)
    with must_finish_within(HANG_GUARD_SECONDS):
        prune_store(store_dir)
    assert not os.path.lexists(fifo) and not os.path.lexists(link)


def test_a_file_where_a_layout_directory_belongs_is_moved_aside(tmp_path):
    store_dir = make_store(tmp_path)
    shutil.rmtree(os.path.join(store_dir, "quarantine"))
    with open(os.path.join(store_dir, "quarantine"), "wb") as handle:
        handle.write(b"not a dir")
    damage_entry(store_dir, "truncated")
    result = prune_store(store_dir)
    assert result["evicted"] == [{"key": "bad", "reason": "unreadable entry"}]
    assert os.path.isdir(os.path.join(store_dir, "quarantine"))
    assert verify_store(store_dir)["ok"]


# -- hypothesis: generated bytes and generated JSON as entries --------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hyp")
    store_dir = str(root / "store")
    put(root, store_dir, "good", legacy_archive([(["good:1"], [LAYER_A])]))
    return store_dir


def _check_readers_survive(store_dir: str, data: bytes) -> None:
    path = os.path.join(store_dir, "entries", "fuzz.json")
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        before = snapshot(store_dir)
        listing = list_entries(store_dir)
        rows = {row["key"]: row for row in listing["entries"]}
        assert rows["good"]["ok"]
        assert not rows["fuzz"]["ok"] and len(listing["warnings"]) == 1
        dry = prune_store(store_dir, dry_run=True)
        assert {"key": "fuzz", "reason": "unreadable entry"} in dry["evicted"]
        report = verify_store(store_dir)
        assert [b["key"] for b in report["bad_entries"]] == ["fuzz"]
        assert snapshot(store_dir) == before
    finally:
        os.unlink(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000))
def test_generated_bytes_as_an_entry_are_a_skip(base_store, data):
    _check_readers_survive(base_store, data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images=JSON, created=JSON, fmt=JSON)
def test_generated_json_in_a_forged_entry_is_a_skip(base_store, images, created, fmt):
    body = {"format": 1, "key": "fuzz", "images": images, "created": created}
    body["archive_format"] = fmt
    body["checksum"] = entry_checksum(body)
    _check_readers_survive(base_store, json.dumps(body).encode())


# -- 4. the image_cache module ----------------------------------------------------------------
MODULE_RUNNER = """
import json, runpy, sys
import ansible.module_utils
import runnerkeep, runnerkeep.cache, runnerkeep.config, runnerkeep.errors, runnerkeep.units
for name, mod in list(sys.modules.items()):
    if name == "runnerkeep" or name.startswith("runnerkeep."):
        sys.modules["ansible.module_utils." + name] = mod
ansible.module_utils.runnerkeep = runnerkeep
sys.argv = [sys.argv[1], sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_module(tmp_path, check: bool = False, **args) -> dict:
    payload = dict(args)
    if check:
        payload["_ansible_check_mode"] = True
    # Outside tmp_path, which the tests snapshot.
    argfile = Path(tempfile.mkdtemp()) / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO + "/module_utils", REPO + "/cli"]))
    env.pop("RUNNERKEEP_CACHE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", MODULE_RUNNER, LIBRARY, str(argfile)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    shutil.rmtree(argfile.parent)
    return result


@pytest.fixture
def module_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"paths": {"state_dir": str(tmp_path / "state")}}))
    return str(config)


@pytest.mark.parametrize(
    "args",
    [
        {"state": "pruned", "max_size": "1"},
        {"state": "verified", "repair": True},
        {"state": "absent", "key": "good"},
    ],
    ids=lambda a: a["state"],
)
def test_module_check_mode_changes_nothing(tmp_path, module_config, args):
    store_dir = make_store(tmp_path)
    damage_entry(store_dir, "truncated")
    before = snapshot(str(tmp_path))
    result = run_module(tmp_path, check=True, dir=store_dir, config_file=module_config, **args)
    assert snapshot(str(tmp_path)) == before, result
    if args["state"] != "verified":
        assert result["changed"] is True


@pytest.mark.parametrize("state", ["pruned", "verified", "absent"])
def test_module_check_mode_creates_no_store(tmp_path, module_config, state):
    before = snapshot(str(tmp_path))
    key = None if state == "verified" else "k"
    result = run_module(
        tmp_path,
        check=True,
        state=state,
        key=key,
        dir=str(tmp_path / "s"),
        config_file=module_config,
    )
    assert not result.get("failed"), result
    assert snapshot(str(tmp_path)) == before


def test_module_prune_records_the_event_the_cli_records(tmp_path, module_config):
    store_dir = make_store(tmp_path)
    damage_entry(store_dir, "fifo")
    result = run_module(
        tmp_path, state="pruned", max_size="1", dir=store_dir, config_file=module_config
    )
    assert result["changed"] and not result.get("failed"), result
    assert any("'bad'" in str(w) for w in result["warnings"])
    lines = (tmp_path / "state" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    prune = [e for e in events if e.get("op") == "prune"]
    assert prune and prune[-1]["kind"] == "cache" and prune[-1]["evicted"] == 3


def test_module_turns_bad_settings_into_a_clear_failure(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"cache": {"verify_workers": "lots"}}))
    result = run_module(
        tmp_path, state="verified", dir=str(tmp_path / "s"), config_file=str(config)
    )
    assert result["failed"] and "verify_workers" in result["msg"]


def test_module_check_mode_restore_of_a_missing_key_creates_nothing(tmp_path, module_config):
    # An existing store without store.lock: a restore in check mode must not create it, and
    # must record no miss event.
    store_dir = make_store(tmp_path)
    lock = Path(store_dir) / "store.lock"
    if lock.exists():
        lock.unlink()
    before = snapshot(str(tmp_path))
    result = run_module(
        tmp_path, check=True, state="restored", key="nope", dir=store_dir, config_file=module_config
    )
    assert not result.get("failed"), result
    assert result["hit"] is False
    assert snapshot(str(tmp_path)) == before


def test_module_declares_full_check_mode():
    text = Path(LIBRARY).read_text(encoding="utf-8")
    assert "support: full" in text and "support: partial" not in text


@pytest.mark.parametrize(
    ("option", "value"), [("max_size", "9" * 400), ("max_age", "forever"), ("reserve", "-5G")]
)
def test_module_options_are_checked_against_the_schema(tmp_path, module_config, option, value):
    result = run_module(
        tmp_path,
        state="pruned",
        dir=str(tmp_path / "s"),
        config_file=module_config,
        **{option: value},
    )
    assert result["failed"], result
    assert f"option {option}" in result["msg"] and "Traceback" not in result["msg"]


def test_a_store_lock_held_for_ever_is_a_miss_for_restore_not_a_hang(tmp_path, monkeypatch):
    import fcntl

    from runnerkeep.cache import restore as restore_mod
    from runnerkeep.cache import store as store_mod
    from runnerkeep.errors import CacheMiss

    store_dir = make_store(tmp_path)
    monkeypatch.setattr(store_mod, "STORE_LOCK_WAIT", 0.3)
    holder = os.open(os.path.join(store_dir, "store.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file description: a real conflict
        started = time.monotonic()
        with pytest.raises(CacheMiss, match="locked by another process"):
            restore_mod.restore_entry(store_dir, "good")
        assert time.monotonic() - started < 5
    finally:
        os.close(holder)
