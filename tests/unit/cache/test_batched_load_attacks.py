"""Attacks on the batched one-pass restore (cache/batched_load.py) that need an engine the
real one cannot play: one that stalls (before reading, mid-body, after the body without an
answer, on the stand-ins' removal), one that breaks off a blob mid-batch, and one whose load
of a later batch fails for a reason that has nothing to do with the layers it leaves out.
Deadlines are shortened so a stall costs about a second; each restore runs on a thread joined
with a bound, so a hang fails the test instead of blocking the run."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

import pytest
from cachetest_helpers import random_layer, sha
from fake_engine import STALL_LIMIT, FakeEngine
from remote_fakes import FakeRegistry, registry_with_key
from runnerkeep import docker_api
from runnerkeep.cache import Store, batched_load
from runnerkeep.cache.remote_restore import restore_from_fleet
from runnerkeep.errors import DockerCommandError, RunnerkeepError

LAYERS = [random_layer(300_000, f"layer{i}") for i in range(5)]
BATCH = 600_000  # batches [0, 1], [2, 3], [4]
HANG = 60.0  # seconds after which a restore counts as hung (the shortened deadlines are ~1 s)


@pytest.fixture(autouse=True)
def small_batches_short_deadlines(monkeypatch):
    monkeypatch.setattr(batched_load, "BATCH_BYTES", BATCH)
    monkeypatch.setattr(docker_api, "ANSWER_TIMEOUT", 1.0)
    monkeypatch.setattr(docker_api, "STREAM_IDLE_TIMEOUT", 1.0)


def make_engine(monkeypatch, cls=FakeEngine, **options) -> FakeEngine:
    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    return cls(os.path.join(path, "engine.sock"), **options)


def close(engine: FakeEngine) -> None:
    engine.close()
    shutil.rmtree(os.path.dirname(engine.path), ignore_errors=True)


@pytest.fixture
def engine(monkeypatch):
    fake = make_engine(monkeypatch)
    yield fake
    close(fake)


@pytest.fixture
def registry(tmp_path):
    fake = registry_with_key(tmp_path, [(["app:1"], LAYERS)])
    fake.opened.clear()
    return fake


@pytest.fixture
def target(tmp_path):
    return Store(str(tmp_path / "dst"), key_file=None)


def bounded_restore(target: Store, registry: FakeRegistry) -> tuple[dict | None, BaseException]:
    """restore_from_fleet on a thread joined within HANG: (result, exception raised)."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = restore_from_fleet(target, "k", registry)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), "the restore hung past every deadline"
    return outcome.get("result"), outcome.get("error")


@pytest.mark.parametrize("stage", ["head", "mid", "after"])
def test_an_engine_stalling_on_the_loads_ends_the_restore_with_a_clear_error(
    registry, engine, target, stage
):
    """head: the engine never reads a load; mid: it stops reading half way; after: it reads
    every body and never answers. The restore ends (no hang) with a runnerkeep error, nothing
    committed locally, no image left."""
    engine.set_stall("/images/load", stage)
    result, error = bounded_restore(target, registry)
    assert result is None
    assert isinstance(error, RunnerkeepError), repr(error)
    assert target.list_keys() == [] and target.list_blobs() == {}
    assert engine.images == {}


class DeafToDeletes(FakeEngine):
    """An engine that takes a DELETE and never answers it (until closed)."""

    def remove(self, image_id: str) -> bool:
        self.released.wait(STALL_LIMIT)
        return False


def test_an_engine_stalling_on_the_stand_ins_removal_still_restores(monkeypatch, registry, target):
    engine = make_engine(monkeypatch, cls=DeafToDeletes)
    try:
        result, error = bounded_restore(target, registry)
        assert error is None, repr(error)
        assert result["overlapped"] is True and result["load_batches"] == 3
        assert target.list_keys() == ["k"]
        assert len(engine.images) == 3  # the two stand-ins stayed: the host's cleanup's
        assert any("DELETE" in line for line in engine.requests)
    finally:
        close(engine)


def test_a_blob_breaking_off_in_the_middle_batch_leaves_nothing(registry, engine, target):
    registry.break_after[sha(LAYERS[3])] = 0  # its tar header is already sent
    result, error = bounded_restore(target, registry)
    assert result is None
    assert isinstance(error, RunnerkeepError), repr(error)
    assert engine.images == {} and len(engine.deleted) == 1  # the first stand-in removed
    assert target.list_keys() == [] and target.list_blobs() == {}


class FullEngine(FakeEngine):
    """An engine whose disk fills up while it unpacks the second load (and stays full)."""

    def load(self, body: bytes, announced: int) -> tuple[bool, str]:
        if self.loads:
            self.loads.append({"announced": announced, "received": len(body), "members": []})
            return False, "write /var/lib/docker/overlay2/x/diff/a: no space left on device"
        return super().load(body, announced)


def test_an_engine_error_on_a_later_batch_is_reported_not_taken_as_a_refusal(
    monkeypatch, registry, target
):
    engine = make_engine(monkeypatch, cls=FullEngine)
    try:
        result, error = bounded_restore(target, registry)
        assert isinstance(error, DockerCommandError), repr(result)
        assert "no space left on device" in str(error)
        layers = {sha(layer) for layer in LAYERS}
        fetched = [digest for digest in registry.opened if digest in layers]
        assert sorted(fetched) == sorted(layers)  # each layer downloaded once
    finally:
        close(engine)


def test_an_engine_that_wants_every_layer_costs_no_second_download(monkeypatch, registry, target):
    engine = make_engine(monkeypatch, refuse_partial=True)
    try:
        result, error = bounded_restore(target, registry)
        assert error is None, repr(error)
        assert result["overlapped"] is False and result["loaded"] is True
        layers = {sha(layer) for layer in LAYERS}
        fetched = [digest for digest in registry.opened if digest in layers]
        assert sorted(fetched) == sorted(layers)  # each layer downloaded once
    finally:
        close(engine)
