"""A Docker engine that stops answering never makes save, save --dry-run or restore hang.

Attack15 #1-#4: an engine that accepts and never answers, or stalls at the headers, in the
middle of a body or after it, made the Engine-API paths wait forever (a hung restore held the
store lock, so prune waited its full 900 s behind it). Every exchange now has ANSWER_TIMEOUT
(the CLI's 120 s) and the two streams STREAM_IDLE_TIMEOUT (60 s); here they are made small so
the tests take seconds.

Why a fake engine (tests/unit/cache/fake_engine.py, and a socket that never accepts): the real
daemon cannot be made to stall on demand, at a chosen point of a chosen request, without
stopping it for everyone on the machine.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import threading

import pytest
from cachetest_helpers import config_for, legacy_archive, random_layer, sha
from fake_engine import FakeEngine
from runnerkeep import docker_api
from runnerkeep.cache.restore import restore_entry
from runnerkeep.cache.save import SaveFailed, import_archive, save_entry
from runnerkeep.cache.store import Store
from runnerkeep.errors import EXIT_FAILURE, RunnerkeepError
from runnerkeep_cli.main import main

LAYERS = [random_layer(300 * 1024, "s0"), random_layer(1200 * 1024, "s1")]
ARCHIVE = legacy_archive([(["app:1"], LAYERS)])
APP_ID = sha(config_for(LAYERS, "0"))
BOUND = 30.0  # seconds: a run still going after this is hung (the timeouts here are ~1 s)


@pytest.fixture
def engine_dir(monkeypatch):
    path = tempfile.mkdtemp(prefix="rk-stall-", dir="/tmp")  # unix socket names: 108 bytes
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    monkeypatch.setattr(docker_api, "ANSWER_TIMEOUT", 1.0)
    monkeypatch.setattr(docker_api, "STREAM_IDLE_TIMEOUT", 0.5)
    # The default send buffer (~200 KiB), not 8 MiB: a load of this 1.5 MiB archive must fill
    # it and wait on the engine, as a real multi-GiB restore does.
    monkeypatch.setattr(docker_api, "enlarge_send_buffer", lambda sock: 0)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def engine(engine_dir):
    engine = FakeEngine(os.path.join(engine_dir, "engine.sock"))
    engine.add_image(config_for(LAYERS, "0"), ["app:1"])
    engine.set_export(ARCHIVE)
    yield engine
    engine.close()


@pytest.fixture
def never_accepts(engine_dir):
    """A socket whose backlog takes the connection and nobody ever accepts it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(engine_dir, "engine.sock"))
    sock.listen(8)
    yield sock
    sock.close()


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


@pytest.fixture
def stored(tmp_path, store):
    """The store holding key k (APP_ID), which the engine lacks."""
    archive = tmp_path / "app.tar"
    archive.write_bytes(ARCHIVE)
    import_archive(store, "k", str(archive))
    return store


def bounded(call):
    """call() in a thread: its exception (or result). Fails instead of hanging the suite."""
    out: dict = {}

    def run():
        try:
            out["result"] = call()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), "hung: the engine's stall was waited for without bound"
    return out.get("error", out.get("result"))


def store_lock_is_free(store: Store) -> bool:
    path = os.path.join(store.root, "store.lock")
    if not os.path.exists(path):
        return True  # never locked
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def nothing_left(store: Store) -> bool:
    if not os.path.isdir(store.root):
        return True
    entries = os.listdir(os.path.join(store.root, "entries"))
    temps = [n for n in os.listdir(os.path.join(store.root, "tmp")) if not n.endswith(".lock")]
    return entries == [] and os.listdir(store.blob_dir) == [] and temps == []


def names_the_engine(exc: BaseException, engine_dir: str) -> bool:
    return f"unix://{engine_dir}/engine.sock" in str(exc)


# -- save ---------------------------------------------------------------------------------
def test_save_against_an_engine_that_never_accepts(store, never_accepts, engine_dir):
    exc = bounded(lambda: save_entry(store, "k", ["app:1"], check_space=False))
    assert isinstance(exc, SaveFailed), exc
    assert "did not answer GET /images/app:1/json within 1s" in str(exc)
    assert names_the_engine(exc, engine_dir)
    assert nothing_left(store)


@pytest.mark.parametrize(
    "part, stage, says",
    [
        ("/images/app:1/json", "head", "did not answer GET /images/app:1/json"),
        ("/images/app:1/json", "mid", "did not answer GET /images/app:1/json"),
        ("/images/app:1/json", "after", "did not answer GET /images/app:1/json"),
        ("/images/get", "head", "did not answer GET /images/get?names=app%3A1"),
        ("/images/get", "mid", "stopped sending the image export (nothing for 0.5s)"),
        ("/images/get", "after", "stopped sending the image export"),
    ],
)
def test_save_against_an_engine_that_stalls(store, engine, engine_dir, part, stage, says):
    engine.set_stall(part, stage)
    exc = bounded(lambda: save_entry(store, "k", ["app:1"], check_space=False))
    assert isinstance(exc, RunnerkeepError), exc
    assert says in str(exc) and names_the_engine(exc, engine_dir)
    assert nothing_left(store)
    assert store_lock_is_free(store)


@pytest.mark.parametrize(
    "part, stage",
    [("/images/app:1/json", "head"), ("/images/app:1/json", "mid"), ("/info", "after")],
)
def test_a_save_dry_run_against_an_engine_that_stalls(store, engine, engine_dir, part, stage):
    engine.set_stall(part, stage)
    exc = bounded(lambda: save_entry(store, "k", ["app:1"], dry_run=True))
    assert isinstance(exc, RunnerkeepError), exc
    assert f"did not answer GET {part}" in str(exc) and names_the_engine(exc, engine_dir)
    assert not os.path.exists(store.root)  # a dry run creates nothing


def test_a_save_dry_run_against_an_engine_that_never_accepts(store, never_accepts, engine_dir):
    exc = bounded(lambda: save_entry(store, "k", ["app:1"], dry_run=True))
    assert isinstance(exc, RunnerkeepError) and names_the_engine(exc, engine_dir), exc
    assert not os.path.exists(store.root)


# -- restore ------------------------------------------------------------------------------
def test_restore_against_an_engine_that_never_accepts(stored, never_accepts, engine_dir):
    exc = bounded(lambda: restore_entry(stored, "k"))
    assert isinstance(exc, RunnerkeepError), exc
    assert f"did not answer GET /images/{APP_ID}/json within 1s" in str(exc)
    assert store_lock_is_free(stored)


@pytest.mark.parametrize(
    "part, stage, says",
    [
        (f"/images/{APP_ID}/json", "head", f"did not answer GET /images/{APP_ID}/json"),
        ("/images/json", "mid", "did not answer GET /images/json?all=1"),
        ("/images/json", "after", "did not answer GET /images/json?all=1"),
        ("/images/load", "head", "stopped reading the image archive (nothing for 0.5s)"),
        ("/images/load", "mid", "stopped reading the image archive"),
        ("/images/load", "after", "did not answer the image load within 1s of its end"),
    ],
    # The image ID is random per process: ids by position keep parallel workers' lists equal.
    ids=["inspect-head", "list-mid", "list-after", "load-head", "load-mid", "load-after"],
)
def test_restore_against_an_engine_that_stalls(stored, engine, engine_dir, part, stage, says):
    del engine.images[APP_ID]  # the engine lacks the image: restore loads it
    engine.set_stall(part, stage)
    exc = bounded(lambda: restore_entry(stored, "k"))
    assert isinstance(exc, RunnerkeepError), exc
    assert says in str(exc) and names_the_engine(exc, engine_dir)
    assert store_lock_is_free(stored)  # prune is not kept waiting (attack15 #4)
    assert APP_ID not in engine.images
    # a stalled load is not sent again as the whole archive (it would stall again)
    assert sum("POST /images/load" in line for line in engine.requests) <= 1


def test_a_restore_dry_run_against_an_engine_that_stalls(stored, engine, engine_dir):
    del engine.images[APP_ID]
    engine.set_stall("/images/json", "head")
    exc = bounded(lambda: restore_entry(stored, "k", dry_run=True))
    assert isinstance(exc, RunnerkeepError) and names_the_engine(exc, engine_dir), exc
    assert "did not answer GET /images/json?all=1" in str(exc)


# -- through the command line: one line, the exit code of a failed docker command ---------
@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text('{"paths": {"state_dir": "%s"}}' % (tmp_path / "state"))
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(config))
    monkeypatch.delenv("RUNNERKEEP_CACHE_DIR", raising=False)


def one_line_failure(capsys, *args) -> str:
    code = bounded(lambda: main(list(args)))
    out, err = capsys.readouterr()
    assert code == EXIT_FAILURE, (code, out, err)
    assert "Traceback" not in out + err and "internal error" not in out + err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_the_cli_says_a_stalled_export_in_one_line(capsys, cli_env, store, engine, engine_dir):
    engine.set_stall("/images/get", "mid")
    err = one_line_failure(
        capsys, "cache", "save", "--no-service", "--dir", store.root, "--key", "k", "app:1"
    )
    assert "stopped sending the image export" in err and engine_dir in err
    assert nothing_left(store)


def test_the_cli_says_a_stalled_restore_in_one_line(capsys, cli_env, stored, engine, engine_dir):
    del engine.images[APP_ID]
    engine.set_stall("/images/load", "after")
    err = one_line_failure(
        capsys, "cache", "restore", "--no-service", "--dir", stored.root, "--key", "k"
    )
    assert "did not answer the image load" in err and engine_dir in err
    assert store_lock_is_free(stored)
