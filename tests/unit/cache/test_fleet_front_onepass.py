"""A restore's local miss goes to the fleet tier in one pass (notes/requests/P1.md): the front
door calls ``restore_from_fleet`` (each layer hashed once and loaded as it arrives), with the
store's disk rules and the requester's scope, and records the pull and one hit; a corrupt
local entry is still repaired by pull_entry (only what is lacking) and restore_entry. The real
one-pass restore needs Docker: tests/integration/test_fleet_tier_cli.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from runnerkeep import events, wiring
from runnerkeep.cache import Store
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.errors import EXIT_CACHE_MISS, CacheMiss, DockerCommandError
from test_fleet_front import HIT, URL, FakeClient, cache_events, fake_restore

ONE_PASS = {
    **HIT,
    "overlapped": True,
    "pulled": {"result": "pulled", "index_digest": "sha256:" + "1" * 64, "bytes_fetched": 4096},
}


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


class Fleet:
    """A fleet tier whose pull and one-pass restore record their calls."""

    def __init__(self, restored=None, error=None):
        self.pulls: list[dict] = []
        self.restores: list[dict] = []
        self.restored = restored or ONE_PASS
        self.error = error

    def pull(self, store, key, client, **options):
        self.pulls.append(options)
        return {"key": key, "bytes_fetched": 1, "repaired": ["sha256:" + "2" * 64]}

    def restore_fleet(self, store, key, client, **options):
        self.restores.append(options)
        if self.error:
            raise self.error
        return {**self.restored, "key": key, "pulled": dict(self.restored["pulled"])}

    def tier(self):
        settings = SimpleNamespace(url=URL, push=False, credentials_file=None)
        return wiring.FleetTier(
            settings,
            connect=lambda s: FakeClient(),
            pull=self.pull,
            restore_fleet=self.restore_fleet,
            limits={"reserve": 7, "max_size": 1000},
        )


def test_a_local_miss_is_restored_in_one_pass(monkeypatch, store, state_dir):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for 'k'")]))
    fleet = Fleet()
    result = wiring.restore_with_remote(store, "k", fleet.tier(), state_dir=state_dir, scope="pr-3")
    assert fleet.pulls == []
    (options,) = fleet.restores
    assert (options["scope"], options["reserve"], options["max_size"]) == ("pr-3", 7, 1000)
    assert result["source"] == "fleet" and result["overlapped"] is True
    assert result["pulled"]["bytes_fetched"] == 4096 and result["repaired"] is False
    assert "no entry for 'k'" in result["local_miss"]
    assert cache_events(state_dir) == [("pull", "pulled"), ("restore", "hit")]
    pull_event = next(iter(events.read_events(state_dir, "cache")))
    assert pull_event["overlapped"] is True and pull_event["bytes_fetched"] == 4096


def test_a_corrupt_local_entry_is_repaired_by_a_pull_of_what_is_lacking(monkeypatch, store):
    corrupt = CacheMiss("blob sha256:22 fails")
    corrupt.corrupt = True
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt, HIT]))
    fleet = Fleet()
    result = wiring.restore_with_remote(store, "k", fleet.tier())
    assert fleet.restores == [] and len(fleet.pulls) == 1
    assert result["repaired"] is True and result["repaired_blobs"] == ["sha256:" + "2" * 64]


def test_a_fleet_miss_of_the_one_pass_restore_is_the_restores_miss(monkeypatch, store, state_dir):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for 'k'")]))
    error = RemoteCacheMiss(f"key 'k' in the fleet cache {URL}: a layer fails its digest", True)
    with pytest.raises(CacheMiss) as caught:
        wiring.restore_with_remote(store, "k", Fleet(error=error).tier(), state_dir=state_dir)
    assert caught.value.exit_code == EXIT_CACHE_MISS
    assert "no entry for 'k'" in str(caught.value) and "fails its digest" in str(caught.value)
    assert cache_events(state_dir) == [("restore", "miss")]


def test_the_engine_failing_the_load_is_not_a_miss(monkeypatch, store, state_dir):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for 'k'")]))
    error = DockerCommandError("docker load finished but the daemon lacks sha256:ab")
    with pytest.raises(DockerCommandError):
        wiring.restore_with_remote(store, "k", Fleet(error=error).tier(), state_dir=state_dir)
    assert cache_events(state_dir) == []
