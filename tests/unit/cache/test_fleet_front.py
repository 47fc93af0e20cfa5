"""The fleet tier's front doors (issue 12) without a registry: the trust decision for pushing,
provenance, and the wiring of restore -> pull -> restore, save -> push and verify --repair,
with the registry client and pull/push handed in as fakes (the real ones are exercised in
test_fleet_front_registry.py and tests/integration/test_fleet_tier_cli.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from runnerkeep import events, wiring
from runnerkeep.cache import Store
from runnerkeep.cache.trust import (
    MAX_PROVENANCE_CHARS,
    clean_provenance,
    direct_trust,
    provenance_from_env,
    push_decision,
)
from runnerkeep.disk.metrics import fold_events
from runnerkeep.errors import EXIT_CACHE_MISS, CacheMiss, ConfigError, RunnerkeepError
from runnerkeep.remote.errors import RemoteAuthError, RemoteMiss, RemoteUnavailable

URL = "https://cache.example.internal:5000/runnerkeep/images"
PASSWORD = "s3cret-Pa55"


def no_file(path: str) -> bytes:
    raise OSError(2, "No such file")


# -- trust and provenance ----------------------------------------------------------------------
def test_an_untrusted_job_never_pushes_and_says_why():
    allowed, why = push_decision(False, "pr-12-abcd1234", "pull request #12 from a fork")
    assert not allowed
    assert "untrusted" in why and "pr-12-abcd1234" in why and "fork" in why
    assert push_decision(True, "trusted", "GitHub push event") == (
        True,
        "trusted job (GitHub push event)",
    )


def test_direct_trust_outside_ci_is_the_operators_and_inside_ci_the_jobs(tmp_path):
    assert direct_trust({}, no_file)[0] is True
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {
                "pull_request": {
                    "number": 7,
                    "head": {"repo": {"fork": True, "full_name": "evil/x"}},
                    "base": {"repo": {"full_name": "org/x"}},
                }
            }
        )
    )
    env = {
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_REPOSITORY": "org/x",
    }
    trusted, scope, reason = direct_trust(env, lambda p: event.read_bytes())
    assert not trusted and scope.startswith("pr-7-") and "fork" in reason
    # A GitLab job without facts it can read counts as untrusted, never as the operator.
    assert direct_trust({"GITLAB_CI": "true", "CI_MERGE_REQUEST_IID": "x!"}, no_file)[0] is False


def test_provenance_from_github_and_gitlab_environments():
    github = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "org/app",
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_SHA": "a" * 40,
        "GITHUB_RUN_ID": "1234",
    }
    assert provenance_from_env(github, "rk-1") == {
        "host": "rk-1",
        "repository": "org/app",
        "ref": "refs/heads/main",
        "commit": "a" * 40,
        "job": "1234",
    }
    gitlab = {
        "GITLAB_CI": "true",
        "CI_PROJECT_PATH": "grp/app",
        "CI_COMMIT_REF_NAME": "main",
        "CI_COMMIT_SHA": "b" * 40,
        "CI_JOB_ID": "99",
    }
    assert provenance_from_env(gitlab) == {
        "repository": "grp/app",
        "ref": "main",
        "commit": "b" * 40,
        "job": "99",
    }
    assert provenance_from_env({"PATH": "/bin"}, "rk-2") == {"host": "rk-2"}


def test_provenance_from_a_request_is_cleaned_and_bounded():
    dirty = {
        "repository": "org/app\n\x1b[31mFAKE",
        "ref": "x" * 5000,
        "commit": 12,
        "password": PASSWORD,
    }
    clean = clean_provenance(dirty)
    assert set(clean) == {"repository", "ref"}
    assert clean["repository"].isprintable() and "\n" not in clean["repository"]
    assert len(clean["ref"]) == MAX_PROVENANCE_CHARS
    assert clean_provenance("not a dict") == {}


# -- the wiring, with fakes ------------------------------------------------------------------
class FakeClient:
    def __init__(self, manifests=None):
        self.closed = False
        self.manifests = manifests or {}

    def get_manifest(self, reference, accept):
        if reference not in self.manifests:
            raise RemoteMiss(f"manifest {reference} unknown to {URL}")
        return SimpleNamespace(digest=self.manifests[reference])

    def close(self):
        self.closed = True


class Calls:
    """What the fakes were asked to do."""

    def __init__(self):
        self.pulls: list[str] = []
        self.pushes: list[dict] = []
        self.clients: list[FakeClient] = []


def make_fleet(calls, *, push=True, pull_error=None, push_error=None, connect_error=None):
    def connect(settings):
        if connect_error:
            raise connect_error
        client = FakeClient({"k": "sha256:" + "1" * 64})
        calls.clients.append(client)
        return client

    def pull(store, key, client, progress=None, **limits):
        calls.pulls.append(key)
        if pull_error:
            raise pull_error
        return {
            "key": key,
            "blobs_fetched": 2,
            "bytes_fetched": 2048,
            "blobs_present": 1,
            "repaired": ["sha256:" + "2" * 64],
            "index_digest": "sha256:" + "1" * 64,
        }

    def do_push(store, key, client, **options):
        calls.pushes.append({"key": key, **options})
        if push_error:
            raise push_error
        return {"key": key, "index_digest": "sha256:" + "3" * 64, "bytes_sent": 10, "blobs_sent": 1}

    def restore_fleet(store, key, client, progress=None, **limits):
        # restore_from_fleet's sequential path: pull, then restore (no event of its own)
        pulled = pull(store, key, client, progress=progress, **limits)
        result = wiring.restore_entry(store, key, progress=progress)
        return dict(result, pulled=pulled, overlapped=False)

    settings = SimpleNamespace(url=URL, push=push, credentials_file=None)
    return wiring.FleetTier(
        settings, connect=connect, pull=pull, push=do_push, restore_fleet=restore_fleet
    )


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


def fake_restore(outcomes):
    """restore_entry that gives each outcome in turn (an exception is raised)."""
    seen = []

    def restore(store, key, **options):
        seen.append(options)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome, key=key)

    restore.seen = seen
    return restore


HIT = {"result": "hit", "loaded": True, "bytes_loaded": 100, "images": [], "duration": 0.1}


def cache_events(state_dir):
    return [(e["op"], e["result"]) for e in events.read_events(state_dir, "cache")]


def test_a_local_hit_never_reaches_the_registry(monkeypatch, store, state_dir):
    calls = Calls()
    restore = fake_restore([HIT])
    monkeypatch.setattr(wiring, "restore_entry", restore)
    result = wiring.restore_with_remote(store, "k", make_fleet(calls), state_dir=state_dir)
    assert result["result"] == "hit" and "source" not in result
    assert calls.pulls == [] and calls.clients == []
    # The hit is recorded once, as a local restore records it (the watch counts hits).
    (event,) = events.read_events(state_dir, "cache")
    assert (event["op"], event["result"], event["loaded"]) == ("restore", "hit", True)


def test_a_local_miss_pulls_then_restores(monkeypatch, store, state_dir):
    calls = Calls()
    restore = fake_restore([CacheMiss("no cache entry for key 'k'"), HIT])
    monkeypatch.setattr(wiring, "restore_entry", restore)
    result = wiring.restore_with_remote(store, "k", make_fleet(calls), state_dir=state_dir)
    assert calls.pulls == ["k"]
    assert result["source"] == "fleet" and result["remote"] == URL
    assert result["repaired"] is False
    assert result["pulled"]["bytes_fetched"] == 2048
    assert "no cache entry" in result["local_miss"]
    assert calls.clients[0].closed
    # Neither the local try nor restore_from_fleet records an event (the outcome depends on
    # the fleet): the front door records the pull, then the hit, once.
    assert restore.seen[0].get("state_dir") is None
    assert restore.seen[1].get("state_dir") is None
    assert cache_events(state_dir) == [("pull", "pulled"), ("restore", "hit")]


def test_a_corrupt_local_blob_is_repaired_from_the_fleet(monkeypatch, store, state_dir):
    calls = Calls()
    corrupt = CacheMiss("cache entry 'k' rejected and quarantined: blob sha256:22 fails")
    corrupt.corrupt = True  # as restore_entry flags a miss after quarantining
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt, HIT]))
    result = wiring.restore_with_remote(store, "k", make_fleet(calls), state_dir=state_dir)
    assert result["repaired"] is True
    assert result["repaired_blobs"] == ["sha256:" + "2" * 64]
    assert cache_events(state_dir) == [("restore", "corrupt"), ("repair", "repaired")]


def test_the_corrupt_flag_of_the_miss_counts_too(monkeypatch, store):
    calls = Calls()
    corrupt = CacheMiss("bad")
    corrupt.corrupt = True
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt, HIT]))
    assert wiring.restore_with_remote(store, "k", make_fleet(calls))["repaired"] is True


@pytest.mark.parametrize(
    "error",
    [
        RemoteUnavailable(f"cannot reach {URL}: connection refused"),
        RemoteAuthError(f"wrong credentials or no push rights for {URL}"),
        CacheMiss(f"key 'k' is not in the fleet cache {URL}"),
        OSError(28, "No space left on device"),
    ],
    ids=["unreachable", "auth", "remote-miss", "oserror"],
)
def test_a_fleet_failure_is_a_miss_with_both_reasons(monkeypatch, store, state_dir, error):
    calls = Calls()
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for k")]))
    with pytest.raises(CacheMiss) as caught:
        wiring.restore_with_remote(
            store, "k", make_fleet(calls, pull_error=error), state_dir=state_dir
        )
    assert caught.value.exit_code == EXIT_CACHE_MISS
    message = str(caught.value)
    assert "no entry for k" in message and URL in message
    assert PASSWORD not in message
    assert cache_events(state_dir) == [("restore", "miss")]


def test_a_bad_credentials_file_is_a_setting_to_fix(monkeypatch, store):
    calls = Calls()
    bad = ConfigError("cache.remote.credentials_file /x: mode 0644 lets others read it")
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry")]))
    with pytest.raises(ConfigError):
        wiring.restore_with_remote(store, "k", make_fleet(calls, connect_error=bad))


def test_without_a_fleet_tier_restore_is_the_local_one(monkeypatch, store, state_dir):
    restore = fake_restore([CacheMiss("no entry")])
    monkeypatch.setattr(wiring, "restore_entry", restore)
    with pytest.raises(CacheMiss):
        wiring.restore_with_remote(store, "k", wiring.FleetTier(None), state_dir=state_dir)
    assert restore.seen[0]["state_dir"] == state_dir  # the local restore records its miss


def test_a_dry_run_only_asks_whether_the_registry_has_the_key(monkeypatch, store, state_dir):
    calls = Calls()
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry")]))
    result = wiring.restore_with_remote(
        store, "k", make_fleet(calls), state_dir=state_dir, dry_run=True
    )
    assert result["result"] == "would_pull" and result["index_digest"] == "sha256:" + "1" * 64
    assert calls.pulls == [] and cache_events(state_dir) == []
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry")]))
    with pytest.raises(CacheMiss, match="not-there"):
        wiring.restore_with_remote(store, "not-there", make_fleet(calls), dry_run=True)


SAVED = {"result": "saved", "images": [], "bytes_written": 1, "bytes_reused": 0, "duration": 0.1}


def test_a_trusted_save_pushes_after_the_commit(monkeypatch, store, state_dir):
    calls = Calls()
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    result = wiring.save_then_push(
        store,
        "k",
        ["app:ci"],
        make_fleet(calls),
        trust=(True, "trusted", "GitHub push event"),
        provenance={"host": "rk-1", "commit": "c" * 40},
        state_dir=state_dir,
    )
    assert result["push"]["pushed"] is True and result["push"]["decision"] == "pushed"
    assert calls.pushes[0]["scope"] == "trusted"
    assert calls.pushes[0]["provenance"] == {"host": "rk-1", "commit": "c" * 40}
    assert cache_events(state_dir) == [("push", "pushed")]


def test_an_untrusted_save_never_pushes_and_the_event_log_says_why(monkeypatch, store, state_dir):
    calls = Calls()
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    result = wiring.save_then_push(
        store,
        "k",
        ["app:ci"],
        make_fleet(calls),
        trust=(False, "pr-3-abcd1234", "pull request #3 from a fork"),
        state_dir=state_dir,
    )
    assert calls.pushes == [] and calls.clients == []
    assert result["push"]["decision"] == "refused" and "fork" in result["push"]["reason"]
    (event,) = events.read_events(state_dir, "cache")
    assert event["result"] == "push_refused" and "fork" in event["reason"]


def test_a_failed_push_leaves_the_save_standing_with_a_warning_and_a_counter(
    monkeypatch, store, state_dir
):
    calls = Calls()
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    error = RemoteUnavailable(f"cannot reach {URL}: timed out after 30 s")
    result = wiring.save_then_push(
        store,
        "k",
        ["app:ci"],
        make_fleet(calls, push_error=error),
        trust=(True, "trusted", "operator"),
        state_dir=state_dir,
    )
    assert result["result"] == "saved"
    assert result["push"]["decision"] == "failed" and "timed out" in result["push"]["reason"]
    assert any("not pushed" in line for line in result["warnings"])
    assert cache_events(state_dir) == [("push", "push_failed")]
    # The watch's running totals count it (the metric runnerkeep_cache_*_total reads them).
    assert fold_events(state_dir, {})["cache"] == {"push_failed": 1}


def test_push_off_or_a_dry_run_sends_nothing(monkeypatch, store, state_dir):
    calls = Calls()
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    off = wiring.save_then_push(
        store, "k", ["a"], make_fleet(calls, push=False), trust=(True, "trusted", "x")
    )
    assert "push" not in off
    dry = wiring.save_then_push(
        store,
        "k",
        ["a"],
        make_fleet(calls),
        trust=(True, "trusted", "x"),
        state_dir=state_dir,
        dry_run=True,
    )
    assert dry["push"]["decision"] == "would_push"
    assert calls.pushes == [] and calls.clients == [] and cache_events(state_dir) == []


def test_an_explicit_push_by_an_untrusted_job_is_refused(store, state_dir):
    calls = Calls()
    with pytest.raises(wiring.PushRefused, match="untrusted"):
        wiring.push_key(
            store, "k", make_fleet(calls), trust=(False, "mr-1-x", "other"), state_dir=state_dir
        )
    assert calls.pushes == []
    assert cache_events(state_dir) == [("push", "push_refused")]


def test_an_explicit_push_keeps_the_exit_code_of_its_failure(store):
    calls = Calls()
    missing = CacheMiss("no usable local entry for key 'k'")
    with pytest.raises(RunnerkeepError) as caught:
        wiring.push_key(
            store, "k", make_fleet(calls, push_error=missing), trust=(True, "trusted", "x")
        )
    assert caught.value.exit_code == EXIT_CACHE_MISS and URL in str(caught.value)


def test_pull_and_push_need_a_fleet_tier(store):
    with pytest.raises(ConfigError, match=r"cache\.remote\.url"):
        wiring.pull_key(store, "k", wiring.FleetTier(None))
    with pytest.raises(ConfigError, match="--max-age"):
        wiring.prune_remote(make_fleet(Calls()), max_age=None, keep=None, dry_run=True)


def test_verify_repair_pulls_the_bad_trusted_keys_again(store, state_dir):
    calls = Calls()
    report = {
        "ok": False,
        "bad_entries": [
            {"key": "k", "reason": "uses bad blob(s): sha256:22"},
            {"key": "@pr-1-abcd1234@k", "reason": "uses bad blob(s): sha256:22"},
        ],
    }
    wiring.repair_from_fleet(store, report, make_fleet(calls), state_dir=state_dir)
    assert calls.pulls == ["k"]
    assert report["repaired"] == ["k"]
    assert [b["key"] for b in report["not_repaired"]] == ["@pr-1-abcd1234@k"]
    assert report["repaired_ok"] is False
    assert ("repair", "repaired") in cache_events(state_dir)
    only_trusted = {"ok": False, "bad_entries": [{"key": "k", "reason": "bad"}]}
    wiring.repair_from_fleet(store, only_trusted, make_fleet(calls))
    assert only_trusted["repaired_ok"] is True


def test_a_failed_repair_is_reported_not_raised(store):
    calls = Calls()
    report = {"ok": False, "bad_entries": [{"key": "k", "reason": "bad"}]}
    fleet = make_fleet(calls, pull_error=RemoteUnavailable("registry down"))
    wiring.repair_from_fleet(store, report, fleet)
    assert report["repaired"] == [] and "registry down" in report["not_repaired"][0]["reason"]
    assert report["repaired_ok"] is False


def test_fleet_tier_from_config_url_override_and_no_remote():
    config = {"cache": {"remote": {"url": URL, "push": True, "timeout": 5}}}
    fleet = wiring.fleet_tier(config)
    assert fleet.enabled and fleet.url == URL and fleet.push_on_save
    assert not wiring.fleet_tier(config, no_remote=True).enabled
    assert not wiring.fleet_tier({}).enabled
    other = "http://127.0.0.1:5000/rk"
    assert wiring.fleet_tier(config, url=other).url == other
    overridden = wiring.fleet_tier(config, overrides={"push": False, "url": None})
    assert overridden.url == URL and not overridden.push_on_save
    with pytest.raises(ConfigError):
        wiring.fleet_tier({}, url="http://registry.example.com/rk")  # http beyond loopback
