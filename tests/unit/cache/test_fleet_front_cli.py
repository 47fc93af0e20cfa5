"""`runnerkeep cache` with a fleet tier, and the cache service's remote work for jobs, without
a registry: options, exit codes, what is printed and recorded (the registry client and the
pull/push are fakes from test_fleet_front)."""

from __future__ import annotations

import glob
import json
import os

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep import events, wiring
from runnerkeep.cache import Store, service
from runnerkeep.errors import CacheMiss, ConfigError
from runnerkeep_cli import commands_cache
from runnerkeep_cli.main import main
from test_fleet_front import HIT, SAVED, URL, Calls, fake_restore, make_fleet

LAYER = random_layer(50_000)


@pytest.fixture
def env(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "paths": {"state_dir": str(tmp_path / "state")},
                "cache": {"service_socket": str(tmp_path / "none.sock")},
            }
        )
    )
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(config))
    monkeypatch.setenv("RUNNERKEEP_CACHE_DIR", str(tmp_path / "store"))
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "GITLAB_", "CI_")):
            monkeypatch.delenv(name)
    return tmp_path


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def use_fleet(monkeypatch, calls, **options):
    fleet = make_fleet(calls, **options)
    monkeypatch.setattr(commands_cache, "fleet_tier", lambda *a, **k: fleet)
    return fleet


@pytest.mark.parametrize(
    "args, words",
    [
        (["cache", "push", "--key", "k"], "needs a fleet tier"),
        (["cache", "pull", "--key", "k"], "needs a fleet tier"),
        (["cache", "remote-prune", "--remote", URL], "--max-age"),
        (["cache", "restore", "--key", "k", "--remote", "http://reg.example.com/rk"], "http://"),
        (["cache", "restore", "--key", "k", "--remote", "ftp://127.0.0.1/rk"], "--remote"),
    ],
    ids=["push", "pull", "prune", "http-not-loopback", "bad-scheme"],
)
def test_usage_and_config_errors_exit_2_with_one_line(env, capsys, args, words):
    code, _out, err = run(capsys, *args)
    assert code == 2, err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_remote_and_no_remote_exclude_each_other(env, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["cache", "restore", "--key", "k", "--remote", URL, "--no-remote"])
    assert caught.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_remote_prune_keep_must_be_a_count(env, capsys):
    with pytest.raises(SystemExit):
        main(["cache", "remote-prune", "--remote", URL, "--keep", "-1"])
    assert "whole number" in capsys.readouterr().err


def test_a_job_cannot_point_the_service_at_another_registry(env, capsys):
    code, _out, err = run(capsys, "cache", "restore", "--key", "k", "--service", "--remote", URL)
    assert code == 2 and "through the cache service" in err


def test_restore_from_the_fleet_reports_the_repair(env, capsys, monkeypatch):
    calls = Calls()
    use_fleet(monkeypatch, calls)
    corrupt = CacheMiss("cache entry 'k' rejected and quarantined: blob sha256:22 is bad")
    corrupt.corrupt = True  # as restore_entry flags a miss after quarantining
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt, dict(HIT, images=[])]))
    code, out, _err = run(capsys, "cache", "restore", "--key", "k", "--no-service")
    assert code == 0 and calls.pulls == ["k"]
    assert "repaired from the fleet tier" in out and URL in out
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([corrupt, dict(HIT, images=[])]))
    code, out, _err = run(capsys, "cache", "restore", "--key", "k", "--no-service", "--json")
    data = json.loads(out)
    assert data["repaired"] is True and data["source"] == "fleet"


def test_restore_misses_when_the_fleet_cannot_help(env, capsys, monkeypatch):
    from runnerkeep.remote.errors import RemoteAuthError

    calls = Calls()
    use_fleet(monkeypatch, calls, pull_error=RemoteAuthError(f"wrong credentials for {URL}"))
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry for 'k'")]))
    code, out, err = run(capsys, "cache", "restore", "--key", "k", "--no-service", "--json")
    assert code == 3 and "wrong credentials" in json.loads(out)["error"]
    assert "Traceback" not in err


def test_an_untrusted_jobs_save_shows_why_it_did_not_push(env, capsys, monkeypatch):
    calls = Calls()
    use_fleet(monkeypatch, calls)
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("CI_PROJECT_ID", "10")
    monkeypatch.setenv("CI_MERGE_REQUEST_IID", "4")
    monkeypatch.setenv("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "99")
    code, out, _err = run(capsys, "cache", "save", "--key", "k", "app:ci", "--no-service")
    assert code == 0 and calls.pushes == []
    assert "not pushed: untrusted job" in out and "project 99" in out
    events_logged = events.read_events(str(env / "state"), "cache")
    assert [(e["op"], e["result"]) for e in events_logged] == [("push", "push_refused")]


def test_a_failed_push_is_a_warning_and_the_save_exits_0(env, capsys, monkeypatch):
    from runnerkeep.remote.errors import RemoteUnavailable

    calls = Calls()
    use_fleet(monkeypatch, calls, push_error=RemoteUnavailable(f"{URL}: connection refused"))
    monkeypatch.setattr(wiring, "save_entry", lambda *a, **k: dict(SAVED))
    code, out, err = run(capsys, "cache", "save", "--key", "k", "app:ci", "--no-service")
    assert code == 0
    assert "runnerkeep: warning:" in err and "connection refused" in err
    assert "push failed (the save stands" in out
    # A trusted operator outside CI pushes with this host as the provenance.
    assert calls.pushes[0]["provenance"]["host"]


def test_an_explicit_push_outside_ci_pushes(env, capsys, monkeypatch):
    calls = Calls()
    use_fleet(monkeypatch, calls)
    code, out, _err = run(capsys, "cache", "push", "--key", "k", "--no-service", "--json")
    assert code == 0 and json.loads(out)["result"] == "pushed" and calls.pushes


def import_and_rot(env, capsys) -> str:
    archive = env / "a.tar"
    archive.write_bytes(legacy_archive([(["a:1"], [LAYER])]))
    assert run(capsys, "cache", "import", "--key", "k", str(archive), "--no-service")[0] == 0
    blob = max(glob.glob(str(env / "store" / "blobs" / "sha256" / "*")), key=os.path.getsize)
    with open(blob, "r+b") as handle:
        handle.write(b"rot")
    return blob


def test_verify_repair_exits_0_when_every_bad_key_came_back(env, capsys, monkeypatch):
    import_and_rot(env, capsys)
    calls = Calls()
    use_fleet(monkeypatch, calls)
    code, out, _err = run(capsys, "cache", "verify", "--repair")
    assert code == 0, out
    assert calls.pulls == ["k"] and "repaired k from the fleet tier" in out


def test_verify_repair_without_a_fleet_still_fails(env, capsys, monkeypatch):
    import_and_rot(env, capsys)
    code, out, _err = run(capsys, "cache", "verify", "--repair", "--no-remote")
    assert code == 6 and "quarantined" in out


# -- the service's side -----------------------------------------------------------------------
SETTINGS = {"reserve": 0, "max_size": None}


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "store"), key_file=None)


def test_the_service_pushes_a_trusted_jobs_save_with_its_registered_provenance(store, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(service, "save_entry", lambda *a, **k: dict(SAVED))
    job = {
        "trusted": True,
        "scope": "trusted",
        "reason": "GitHub push event",
        "provenance": {"repository": "org/app", "commit": "c" * 40},
    }
    args = {"key": "k", "images": ["app:ci"]}
    fleet = make_fleet(calls)
    result = service.dispatch("save", args, [], "trusted", store, SETTINGS, job=job, fleet=fleet)
    assert result["push"]["pushed"] is True
    provenance = calls.pushes[0]["provenance"]
    assert provenance["repository"] == "org/app" and provenance["host"]


def test_the_service_never_pushes_an_untrusted_jobs_save(store, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(service, "save_entry", lambda *a, **k: dict(SAVED))
    job = {"trusted": False, "scope": "pr-5-abcd1234", "reason": "pull request #5 from a fork"}
    fleet = make_fleet(calls)
    args = {"key": "k", "images": ["app:ci"]}
    result = service.dispatch("save", args, [], job["scope"], store, SETTINGS, job=job, fleet=fleet)
    assert calls.pushes == [] and result["push"]["decision"] == "refused"
    with pytest.raises(wiring.PushRefused):
        service.dispatch(
            "push", {"key": "k"}, [], job["scope"], store, SETTINGS, job=job, fleet=fleet
        )
    # An unregistered caller (no job record) is untrusted too.
    unregistered = {"trusted": False, "scope": "unregistered", "reason": "no job registration"}
    with pytest.raises(wiring.PushRefused):
        service.dispatch(
            "push", {"key": "k"}, [], "unregistered", store, SETTINGS, job=unregistered, fleet=fleet
        )
    assert calls.pushes == []


def test_a_jobs_restore_through_the_service_falls_through_to_the_fleet(store, monkeypatch):
    calls = Calls()
    monkeypatch.setattr(wiring, "restore_entry", fake_restore([CacheMiss("no entry"), HIT]))
    result = service.dispatch(
        "restore", {"key": "k"}, [], "pr-5-abcd1234", store, SETTINGS, fleet=make_fleet(calls)
    )
    assert result["source"] == "fleet" and calls.pulls == ["k"]
    # Opting out keeps to the local store.
    monkeypatch.setattr(service, "restore_entry", fake_restore([CacheMiss("no entry")]))
    with pytest.raises(CacheMiss):
        service.dispatch(
            "restore",
            {"key": "k", "no_remote": True},
            [],
            "trusted",
            store,
            SETTINGS,
            fleet=make_fleet(calls),
        )
    assert calls.pulls == ["k"]


def test_a_job_cannot_name_the_registry_and_push_needs_one(store):
    calls = Calls()
    with pytest.raises(service.ProtocolError, match="cannot choose the registry"):
        service.dispatch(
            "restore",
            {"key": "k", "remote": "https://evil.example/x"},
            [],
            "trusted",
            store,
            SETTINGS,
            fleet=make_fleet(calls),
        )
    with pytest.raises(ConfigError, match="no fleet tier"):
        service.dispatch("pull", {"key": "k"}, [], "trusted", store, SETTINGS)
    assert calls.clients == []


def test_the_scrub_with_repair_pulls_the_entries_it_quarantined(env, capsys, monkeypatch):
    import_and_rot(env, capsys)
    calls = Calls()
    use_fleet(monkeypatch, calls)
    code, out, _err = run(capsys, "cache", "verify", "--repair", "--max-duration", "1h")
    assert code == 0, out
    assert calls.pulls == ["k"] and "repaired k from the fleet tier" in out


def test_bad_entry_names_of_a_verify_and_of_a_scrub():
    verify = {"bad_entries": [{"key": "a"}, {"key": "@pr-1-abcd1234@b"}]}
    assert wiring.bad_entry_names(verify) == ["@pr-1-abcd1234@b", "a"]
    scrub = {
        "scrub": True,
        "quarantined": [
            "/s/quarantine/20261203T115500Z-42-blob-" + "a" * 64,
            "/s/quarantine/20261203T115500Z-42-entry-my-entry-key.json",
        ],
    }
    assert wiring.bad_entry_names(scrub) == ["my-entry-key"]
