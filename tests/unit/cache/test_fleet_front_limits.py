"""The front doors hand a pull the store's disk rules and the requester's scope (attack16 F2/F9
on the cache side, notes/requests/P1b.md): ``cache.reserve`` and ``cache.max_size`` from the
config, the job's scope from the service, and say "present" when the store already holds a
valid entry of the key. Fakes for the wiring; the real registry for the CLI's refusals."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import test_fleet_front_registry as on_registry
from runnerkeep import events, wiring
from runnerkeep.cache import Store, service
from runnerkeep.errors import EXIT_CACHE_MISS, CacheMiss
from runnerkeep_cli.commands_cache import pull_text
from test_fleet_front import URL, FakeClient, cache_events, fake_restore
from test_fleet_front_registry import run, seed, use_store

# The real registry and a host configured for it (the fixtures of test_fleet_front_registry).
registry = on_registry.registry
host = on_registry.host

PULLED = {"key": "k", "blobs_fetched": 1, "bytes_fetched": 10, "blobs_present": 0}


class Recorder:
    """A pull_entry that records the keyword arguments it was given."""

    def __init__(self, answer=None):
        self.calls: list[dict] = []
        self.answer = answer or PULLED

    def __call__(self, store, key, client, **options):
        self.calls.append(options)
        return dict(self.answer)


def fleet_of(config, pull):
    tier = wiring.fleet_tier(config)
    tier._connect = lambda settings: FakeClient()
    tier._pull = pull
    return tier


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


CONFIG = {"cache": {"remote": {"url": URL}, "reserve": "1MiB", "max_size": "10MiB"}}


def test_a_pull_keeps_the_configs_reserve_and_quota_and_the_requesters_scope(store):
    pull = Recorder()
    wiring.pull_key(store, "k", fleet_of(CONFIG, pull), scope="pr-7-abcd")
    assert pull.calls[0]["reserve"] == 1 << 20
    assert pull.calls[0]["max_size"] == 10 << 20
    assert pull.calls[0]["scope"] == "pr-7-abcd"
    wiring.pull_key(store, "k", fleet_of(CONFIG, pull))
    assert pull.calls[1]["scope"] == "trusted"  # the operator's pull


def test_a_restores_fall_through_pull_keeps_them_too(monkeypatch, store):
    pull = Recorder()
    fleet = fleet_of(CONFIG, pull)
    # A corrupt local entry: the repair pulls only what is lacking, then restores.
    corrupt = CacheMiss("bad blob")
    corrupt.corrupt = True
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt, {}]))
    wiring.restore_with_remote(store, "k", fleet, scope="pr-7-abcd")
    assert pull.calls[0]["scope"] == "pr-7-abcd" and pull.calls[0]["reserve"] == 1 << 20


def test_the_limits_are_computed_once_and_only_when_a_pull_needs_them(store):
    asked = []

    def limits():
        asked.append(1)
        return {"reserve": 5, "max_size": None}

    pull = Recorder()
    settings = SimpleNamespace(url=URL, push=False, credentials_file=None)
    fleet = wiring.FleetTier(settings, connect=lambda s: FakeClient(), pull=pull, limits=limits)
    assert asked == []
    wiring.pull_key(store, "k", fleet)
    wiring.pull_key(store, "k", fleet)
    assert asked == [1]
    assert (pull.calls[1]["reserve"], pull.calls[1]["max_size"]) == (5, None)


def test_a_key_already_held_is_present_in_the_result_the_event_and_the_text(store, state_dir):
    present = {**PULLED, "result": "present", "index_digest": None, "blobs_fetched": 0}
    result = wiring.pull_key(store, "k", fleet_of(CONFIG, Recorder(present)), state_dir=state_dir)
    assert result["result"] == "present"
    assert cache_events(state_dir) == [("pull", "present")]
    assert pull_text("k", result) == (
        "key 'k' is already in the local store (valid entry): nothing pulled"
    )


class FleetStandIn:
    """What the service is handed as its fleet tier: records the pull's arguments."""

    enabled = True

    def __init__(self):
        self.pulls: list[dict] = []

    def pull(self, store, key, **options):
        self.pulls.append(options)
        return {"key": key, "result": "pulled"}


def test_the_service_pulls_with_the_jobs_scope(store, state_dir):
    fleet = FleetStandIn()
    settings = {"reserve": 0, "max_size": None, "transfer_deadline": 60}
    job = {"trusted": False, "scope": "pr-9-ffff", "reason": "fork"}
    service.dispatch(
        "pull", {"key": "k"}, [], "pr-9-ffff", store, settings, state_dir, job=job, fleet=fleet
    )
    assert fleet.pulls[0]["scope"] == "pr-9-ffff"


def test_the_cli_pull_keeps_the_configured_reserve(host, capsys, monkeypatch):
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    config = json.loads(host["config"].read_text())
    config["cache"]["reserve"] = "1000000TiB"  # no disk leaves that free
    host["config"].write_text(json.dumps(config))
    use_store(monkeypatch, host, "b")
    code, out, err = run(capsys, "cache", "pull", "--key", "k")
    assert code == EXIT_CACHE_MISS, out + err
    assert "reserve" in out + err and "Traceback" not in err


def test_the_cli_says_present_for_a_second_pull(host, capsys, monkeypatch):
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    use_store(monkeypatch, host, "b")
    assert run(capsys, "cache", "pull", "--key", "k")[0] == 0
    code, out, err = run(capsys, "cache", "pull", "--key", "k")
    assert code == 0, err
    assert "already in the local store (valid entry): nothing pulled" in out
    results = [e["result"] for e in events.read_events(str(host["tmp"] / "state"), "cache")]
    assert results[-1] == "present"
