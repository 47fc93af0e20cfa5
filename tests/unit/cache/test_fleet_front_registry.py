"""`runnerkeep cache push / pull / verify --repair / remote-prune` and the cache service's pull
and push against a real registry (Debian's docker-registry on loopback, TLS and htpasswd
users), through the real client and the real push/pull. No Docker: the entries come from
`cache import` (restore into a daemon is tests/integration/test_fleet_tier_cli.py)."""

from __future__ import annotations

import glob
import json
import os
import socket

import pytest
from cachetest_helpers import legacy_archive, random_layer
from harness.registry import LocalRegistry
from runnerkeep import events
from runnerkeep.cache import Store, service
from runnerkeep_cli.main import main

LAYER = random_layer(2 << 20, "big")
SMALL = random_layer(20_000, "small")


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


@pytest.fixture
def host(tmp_path, monkeypatch, registry, request):
    """A config whose cache.remote is the registry (push credentials, push on), a repository
    of this test's own, and the environment of an operator (no CI facts)."""
    repository = "front/" + request.node.name.lower().replace("_", "-")[:60].strip("-")
    remote = registry.remote_config(repository, registry.push_user, push=True, timeout=10)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "paths": {"state_dir": str(tmp_path / "state")},
                "cache": {"remote": remote, "service_socket": str(tmp_path / "none.sock")},
            }
        )
    )
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("RUNNERKEEP_CONFIG", str(config))
    monkeypatch.setenv("RUNNERKEEP_CACHE_DIR", str(tmp_path / "a"))
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "GITLAB_", "CI_")):
            monkeypatch.delenv(name)
    return {"tmp": tmp_path, "config": config, "remote": remote, "url": remote["url"]}


def run(capsys, *args):
    direct = args[1] not in ("verify", "remote-prune")  # the commands the service offers
    code = main([*args, "--no-service"] if direct else list(args))
    out, err = capsys.readouterr()
    return code, out, err


def seed(host, capsys, key="k"):
    archive = host["tmp"] / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [LAYER, SMALL])]))
    code, _out, err = run(capsys, "cache", "import", "--key", key, str(archive))
    assert code == 0, err


def use_store(monkeypatch, host, name):
    monkeypatch.setenv("RUNNERKEEP_CACHE_DIR", str(host["tmp"] / name))
    return Store(str(host["tmp"] / name), key_file=None)


def rot_biggest_blob(store: Store) -> str:
    blob = max(glob.glob(os.path.join(store.root, "blobs", "sha256", "*")), key=os.path.getsize)
    with open(blob, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"rotten")
    return "sha256:" + os.path.basename(blob)


def test_push_from_one_store_pull_into_another_then_repair(host, capsys, monkeypatch):
    seed(host, capsys)
    code, out, err = run(capsys, "cache", "push", "--key", "k", "--json")
    assert code == 0, err
    pushed = json.loads(out)
    assert pushed["blobs_sent"] == 3 and pushed["remote"] == host["url"]
    assert "trusted" in pushed["decision"]

    second = use_store(monkeypatch, host, "b")
    code, out, err = run(capsys, "cache", "pull", "--key", "k")
    assert code == 0, err
    assert "pulled key 'k'" in out and host["url"] in out
    assert run(capsys, "cache", "verify")[0] == 0

    bad = rot_biggest_blob(second)
    code, out, _err = run(capsys, "cache", "verify", "--repair", "--json")
    report = json.loads(out)
    assert code == 0, out
    assert report["repaired"] == ["k"] and report["not_repaired"] == []
    assert any(b["digest"] == bad for b in report["bad_blobs"])
    assert run(capsys, "cache", "verify")[0] == 0  # whole again
    results = [e["result"] for e in events.read_events(str(host["tmp"] / "state"), "cache")]
    assert "pushed" in results and "pulled" in results and "repaired" in results


def test_a_key_the_registry_lacks_is_a_miss(host, capsys):
    code, out, err = run(capsys, "cache", "pull", "--key", "nope", "--json")
    assert code == 3, err
    assert "nope" in json.loads(out)["error"] and "Traceback" not in err


def test_wrong_credentials_are_a_miss_that_names_them_and_hides_the_password(
    host, capsys, registry
):
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    wrong = host["tmp"] / "wrong.credentials"
    wrong.write_text(f"{registry.push_user[0]}:not-the-password-x1\n")
    os.chmod(wrong, 0o600)
    config = json.loads(host["config"].read_text())
    config["cache"]["remote"]["credentials_file"] = str(wrong)
    host["config"].write_text(json.dumps(config))
    code, out, err = run(capsys, "cache", "pull", "--key", "k", "--dir", str(host["tmp"] / "c"))
    assert code == 3
    assert "credentials" in err.lower()
    for secret in ("not-the-password-x1", registry.push_user[1], registry.pull_user[1]):
        assert secret not in out + err


def test_an_untrusted_ci_job_may_pull_but_its_push_is_refused(host, capsys, monkeypatch):
    seed(host, capsys)
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("CI_PROJECT_ID", "10")
    monkeypatch.setenv("CI_MERGE_REQUEST_IID", "4")
    monkeypatch.setenv("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "99")
    code, _out, err = run(capsys, "cache", "push", "--key", "k")
    assert code == 1 and "untrusted job" in err and "project 99" in err
    # Into an empty store: a pull of a key the local store holds valid leaves it as it is.
    code, _out, err = run(capsys, "cache", "pull", "--key", "k", "--dir", str(host["tmp"] / "e"))
    assert code == 3 and "not in the fleet cache" in err  # nothing was pushed


def test_remote_prune_dry_run_then_for_real(host, capsys):
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    code, out, err = run(capsys, "cache", "remote-prune", "--keep", "0", "--dry-run")
    assert code == 0, err and "would delete k" in out
    code, out, err = run(capsys, "cache", "remote-prune", "--keep", "0", "--json")
    assert code == 0, err
    assert [item["key"] for item in json.loads(out)["deleted"]] == ["k"]
    code, _out, _err = run(capsys, "cache", "pull", "--key", "k", "--dir", str(host["tmp"] / "d"))
    assert code == 3


# -- the service does the remote work for jobs ------------------------------------------------
def serve_one(host, request: dict) -> dict:
    """One connection served by `cache serve-connection`, the connection on fd 0."""
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    saved = os.dup(0)
    try:
        client.sendall((json.dumps({"v": 1, **request}) + "\n").encode())
        os.dup2(server.fileno(), 0)
        server.close()
        argv = ["cache", "serve-connection", "--config", str(host["config"])]
        code = main([*argv, "--state-dir", str(host["tmp"] / "service-state")])
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    with client:
        client.settimeout(60)
        response = json.loads(service._read_response(client))
    assert code == 0
    return response


def test_the_service_pulls_for_any_job_and_pushes_for_none_unregistered(host, capsys, monkeypatch):
    seed(host, capsys)
    assert run(capsys, "cache", "push", "--key", "k")[0] == 0
    monkeypatch.setenv("RUNNERKEEP_CACHE_DIR", str(host["tmp"] / "svc"))
    pulled = serve_one(host, {"op": "pull", "args": {"key": "k"}})
    assert pulled["exit_code"] == 0, pulled
    assert pulled["data"]["blobs_fetched"] == 3
    assert Store(str(host["tmp"] / "svc"), key_file=None).list_keys() == ["k"]
    # This test process registered no job: it is untrusted, and never pushes.
    refused = serve_one(host, {"op": "push", "args": {"key": "k"}})
    assert refused["exit_code"] == 1 and "untrusted job" in refused["error"]
    pointed = serve_one(host, {"op": "pull", "args": {"key": "k", "remote": "https://x.example/y"}})
    assert pointed["exit_code"] == 2 and "cannot choose the registry" in pointed["error"]


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers (a hung registry)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.parametrize("how", ["refused", "silent"])
def test_a_restore_falls_through_to_a_miss_when_the_registry_is_gone(
    host, capsys, silent_port, how
):
    """The local store is empty, so the restore asks the registry; one that refuses, or never
    answers (timeout 1 s), is a miss naming why: the job rebuilds."""
    port = silent_port if how == "silent" else _free_port()
    config = json.loads(host["config"].read_text())
    config["cache"]["remote"]["timeout"] = 1
    host["config"].write_text(json.dumps(config))
    url = f"https://127.0.0.1:{port}/front/gone"
    code, out, err = run(capsys, "cache", "restore", "--key", "k", "--remote", url, "--json")
    assert code == 3, err
    message = json.loads(out)["error"]
    assert url in message and "no cache at" in message
    # A hung peer is named by the bound it broke (the whole answer's, or one socket step's).
    assert ("refused" if how == "refused" else "answer within 1s") in message
    assert "Traceback" not in err


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
