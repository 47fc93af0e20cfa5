"""The front doors' part of attack16 F3, F7 and F8 (notes/requests/P1c.md): a fleet restore by
a runner that may push records the key's use on the registry (touch_key), a corrupt local
entry is told by the miss's flag (never its wording), tags held back are a warning line, and
`cache push --verify-remote` reads back what the registry holds. Fakes for the wiring; the
real registry for --verify-remote and the touch."""

from __future__ import annotations

import json

import pytest
import test_fleet_front_registry as on_registry
from runnerkeep import events, wiring
from runnerkeep.cache import Store, remote_push, service
from runnerkeep.errors import CacheMiss
from runnerkeep.remote.errors import RemoteReadOnly
from runnerkeep_cli.commands_cache import push_text, push_warnings, restore_text
from test_fleet_front import HIT, URL, Calls, cache_events, fake_restore, make_fleet
from test_fleet_front_registry import run, seed, use_store

registry = on_registry.registry
host = on_registry.host

TRUSTED = (True, "trusted", "GitHub push event")
FORK = (False, "pr-7-abcd", "pull request #7 from a fork")


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


@pytest.fixture
def touches(monkeypatch):
    seen = []

    def touch(client, key, now):
        seen.append(key)
        return {"key": key, "result": "touched", "index_digest": "sha256:" + "4" * 64}

    monkeypatch.setattr(remote_push, "touch_key", touch)
    return seen


def corrupt_miss():
    miss = CacheMiss("blob sha256:22 fails its digest")
    miss.corrupt = True
    return miss


def test_a_fleet_restore_by_a_runner_that_may_push_touches_the_key(
    monkeypatch, store, state_dir, touches
):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt_miss(), HIT]))
    result = wiring.restore_with_remote(
        store, "k", make_fleet(Calls()), state_dir=state_dir, trust=TRUSTED
    )
    assert touches == ["k"] and result["touched"]["result"] == "touched"
    assert ("touch", "touched") in cache_events(state_dir)


def test_a_fresh_key_is_reported_but_records_no_event(monkeypatch, store, state_dir):
    def touch(client, key, now):
        return {"key": key, "result": "fresh", "index_digest": "sha256:" + "4" * 64}

    monkeypatch.setattr(remote_push, "touch_key", touch)
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt_miss(), HIT]))
    result = wiring.restore_with_remote(
        store, "k", make_fleet(Calls()), state_dir=state_dir, trust=TRUSTED
    )
    assert result["touched"]["result"] == "fresh"
    assert all(op != "touch" for op, _ in cache_events(state_dir))


@pytest.mark.parametrize(
    "trust, push", [(FORK, True), (TRUSTED, False), (None, True)], ids=["fork", "pull-only", "none"]
)
def test_no_touch_without_push_rights(monkeypatch, store, state_dir, touches, trust, push):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt_miss(), HIT]))
    fleet = make_fleet(Calls(), push=push)
    result = wiring.restore_with_remote(store, "k", fleet, state_dir=state_dir, trust=trust)
    assert touches == [] and "touched" not in result
    assert all(op != "touch" for op, _ in cache_events(state_dir))


def test_a_local_hit_touches_nothing(monkeypatch, store, touches):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([HIT]))
    wiring.restore_with_remote(store, "k", make_fleet(Calls()), trust=TRUSTED)
    assert touches == []


@pytest.mark.parametrize(
    "error",
    [RemoteReadOnly(f"{URL}: the registry is read-only"), ValueError("odd")],
    ids=["read-only", "unforeseen"],
)
def test_a_failed_touch_never_fails_the_restore(monkeypatch, store, state_dir, error):
    def touch(client, key, now):
        raise error

    monkeypatch.setattr(remote_push, "touch_key", touch)
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt_miss(), HIT]))
    result = wiring.restore_with_remote(
        store, "k", make_fleet(Calls()), state_dir=state_dir, trust=TRUSTED
    )
    assert result["result"] == "hit" and result["touched"]["result"] == "touch_failed"
    assert result["touched"]["reason"] and "Traceback" not in result["touched"]["reason"]
    assert ("touch", "touch_failed") in cache_events(state_dir)


def test_a_miss_is_corrupt_by_its_flag_not_its_wording(monkeypatch, store, state_dir):
    worded = CacheMiss("cache entry 'k' rejected and quarantined: looks corrupt")
    worded.corrupt = False
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([worded, HIT]))
    result = wiring.restore_with_remote(
        store, "k", make_fleet(Calls(), push=False), state_dir=state_dir
    )
    assert result["repaired"] is False
    assert ("restore", "corrupt") not in cache_events(state_dir)


def test_tags_held_back_are_a_warning_line():
    result = dict(HIT, images=[{"id": "sha256:1", "tags": ["app:1"]}], not_retagged=["debian:12"])
    text = restore_text("k", result)
    assert text.splitlines()[-1] == (
        "warning: not re-tagged (the name holds another image here; the fleet's entry may not "
        "re-point it): debian:12"
    )
    assert "warning" not in restore_text("k", dict(result, not_retagged=[]))


def test_the_hit_event_of_a_local_hit_names_tags_held_back(monkeypatch, store, state_dir):
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([dict(HIT, not_retagged=["x:1"])]))
    wiring.restore_with_remote(store, "k", make_fleet(Calls()), state_dir=state_dir)
    (event,) = events.read_events(state_dir, "cache")
    assert event["not_retagged"] == ["x:1"]


# -- cache push --verify-remote -----------------------------------------------------------------
def test_verify_remote_reaches_the_push_and_not_healed_is_recorded(store, state_dir):
    calls = Calls()
    fleet = make_fleet(calls)
    wiring.push_key(store, "k", fleet, trust=TRUSTED, state_dir=state_dir)
    assert "verify_remote" not in calls.pushes[0]  # a plain push's call as it was
    bad = [{"digest": "sha256:" + "5" * 64, "reason": "still serves 3 bad bytes"}]

    def push(store, key, client, **options):
        calls.pushes.append(options)
        return {"index_digest": "sha256:" + "3" * 64, "healed": [], "not_healed": bad}

    fleet._push = push
    result = wiring.push_key(
        store, "k", fleet, trust=TRUSTED, state_dir=state_dir, verify_remote=True
    )
    assert calls.pushes[-1]["verify_remote"] is True
    last = list(events.read_events(state_dir, "cache"))[-1]
    assert (last["result"], last["not_healed"]) == ("pushed", 1)
    (line,) = push_warnings(result)
    assert "sha256:" + "5" * 64 in line and "still serves 3 bad bytes" in line


def test_healed_blobs_are_named_in_the_text():
    result = {"remote": URL, "index_digest": "sha256:9", "healed": ["sha256:a", "sha256:b"]}
    assert push_text("k", result).splitlines()[-1] == (
        "healed 2 blob(s) the registry served damaged: sha256:a sha256:b"
    )
    assert len(push_text("k", dict(result, healed=[])).splitlines()) == 1


class FleetStandIn:
    enabled = True

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def push(self, store, key, **options):
        self.calls.append(("push", options))
        return {"key": key, "result": "pushed"}

    def restore(self, store, key, **options):
        self.calls.append(("restore", options))
        return {"key": key, "result": "hit"}


def test_the_service_hands_on_verify_remote_and_the_jobs_trust(store, state_dir):
    fleet = FleetStandIn()
    settings = {"reserve": 0, "max_size": None, "transfer_deadline": 60}
    job = {"trusted": True, "scope": "trusted", "reason": "push event"}
    args = {"key": "k", "verify_remote": True}
    service.dispatch("push", args, [], "trusted", store, settings, state_dir, job=job, fleet=fleet)
    service.dispatch("restore", {"key": "k"}, [], "trusted", store, settings, job=job, fleet=fleet)
    (_, pushed), (_, restored) = fleet.calls
    assert pushed["verify_remote"] is True
    assert restored["trust"] == (True, "trusted", "push event")


def test_cli_push_verify_remote_reads_back_what_the_registry_holds(host, capsys):
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    code, out, err = run(capsys, "cache", "push", "--key", "k", "--verify-remote", "--json")
    assert code == 0, err
    pushed = json.loads(out)
    assert pushed["blobs_verified"] >= 2 and pushed["healed"] == [] and pushed["not_healed"] == []


def test_cli_restore_from_the_fleet_touches_the_key(host, capsys, monkeypatch):
    """The fleet path of a real restore needs Docker (tests/integration/test_fleet_tier_cli.py);
    here the restore itself is a stand-in, the registry and touch_key are real."""
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    use_store(monkeypatch, host, "b")
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt_miss(), HIT]))
    monkeypatch.setattr(remote_push, "TOUCH_INTERVAL", 0)
    code, out, err = run(capsys, "cache", "restore", "--key", "k", "--json")
    assert code == 0, err
    touched = json.loads(out)["touched"]
    assert touched["result"] == "touched" and touched["used"]
