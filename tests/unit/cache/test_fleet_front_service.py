"""The cache service does the fleet tier's work for jobs, end to end over a real unix socket
with real job processes (the CLI under a stand-in worker) and a real loopback registry: a
trusted job's push carries the provenance its job-start hook registered; a fork's job may
pull but its push is refused with the reason; no job can point the service elsewhere."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest
from cachetest_helpers import random_layer
from harness.registry import LocalRegistry
from runnerkeep import wiring
from runnerkeep.cache import Store, cache_settings, import_archive, service
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.remote.credentials import read_credentials
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings
from test_service import archive, cli, fork_event, run_under_worker

LAYER = random_layer(40_000, "fleet")
GITHUB_PUSH = {
    "GITHUB_EVENT_NAME": "push",
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "me/app",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_SHA": "f" * 40,
    "GITHUB_RUN_ID": "4242",
}


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


class FleetService:
    """serve_connection on a listening socket (one thread per connection), with the fleet
    tier of ``remote`` handed in as `cache serve-connection` hands in the host's."""

    def __init__(self, tmp_path, remote: dict) -> None:
        self.socket_path = str(tmp_path / "cache.sock")
        self.config_path = tmp_path / "config.json"
        key_file = tmp_path / "cache.key"
        key_file.write_bytes(os.urandom(32))
        config = {
            "paths": {"cache_dir": str(tmp_path / "store"), "state_dir": str(tmp_path / "state")},
            "cache": {"service_socket": self.socket_path, "key_file": str(key_file)},
        }
        self.config_path.write_text(json.dumps(config))
        self.settings = cache_settings(config)
        self.store = Store(str(tmp_path / "store"), key_file=str(key_file))
        self.registry = service.Registry(str(tmp_path / "service-state"))
        self.fleet = wiring.FleetTier(remote_settings({"remote": remote}))
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            service.serve_connection(
                conn, self.store, self.settings, self.registry, fleet=self.fleet
            )

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def remote(tmp_path, registry):
    return registry.remote_config("svc/" + tmp_path.name.lower()[:40], registry.push_user)


@pytest.fixture
def svc(tmp_path, remote):
    s = FleetService(tmp_path, remote)
    yield s
    s.close()


def index_annotations(remote: dict, key: str) -> dict:
    settings = remote_settings({"remote": remote})
    with RegistryClient(settings, read_credentials(settings.credentials_file)) as client:
        manifest = client.get_manifest(key, ("application/vnd.oci.image.index.v1+json",))
    return json.loads(manifest.data).get("annotations") or {}


def test_a_trusted_jobs_push_carries_its_registered_provenance(tmp_path, svc, remote):
    hook = ["sh", "-c", '"$@" --worker-pid "$PPID"', "hook"]
    results = run_under_worker(
        [
            [*hook, *cli(svc, "cache", "register-job", "--json")],
            cli(
                svc,
                "cache",
                "import",
                "--service",
                "--key",
                "k",
                archive(tmp_path, [LAYER], "app:1"),
            ),
            cli(svc, "cache", "push", "--service", "--key", "k", "--json"),
        ],
        env_extra=GITHUB_PUSH,
    )
    registered, imported, pushed = results
    assert json.loads(registered[1])["trusted"] is True, registered
    assert imported[0] == 0, imported
    assert pushed[0] == 0, pushed
    assert json.loads(pushed[1])["blobs_sent"] == 2
    annotations = index_annotations(remote, "k")
    assert annotations["io.runnerkeep.provenance.repository"] == "me/app"
    assert annotations["io.runnerkeep.provenance.commit"] == "f" * 40
    assert annotations["io.runnerkeep.provenance.job"] == "4242"
    assert annotations["io.runnerkeep.provenance.ref"] == "refs/heads/main"


def test_a_forks_job_pulls_but_never_pushes(tmp_path, svc, remote, registry):
    # What a trusted runner pushed earlier (straight to the registry).
    source = Store(str(tmp_path / "elsewhere"), key_file=None)
    import_archive(source, "base", archive(tmp_path, [LAYER], "base:1"))
    settings = remote_settings({"remote": remote})
    with RegistryClient(settings, read_credentials(settings.credentials_file)) as client:
        push_entry(source, "base", client)

    hook = ["sh", "-c", '"$@" --worker-pid "$PPID"', "hook"]
    evil = archive(tmp_path, [random_layer(10_000, "evil")], "evil:1")
    results = run_under_worker(
        [
            [*hook, *cli(svc, "cache", "register-job", "--json")],
            cli(svc, "cache", "pull", "--service", "--key", "base", "--json"),
            cli(svc, "cache", "import", "--service", "--key", "evil", evil),
            cli(svc, "cache", "push", "--service", "--key", "evil"),
            cli(
                svc,
                "cache",
                "pull",
                "--service",
                "--key",
                "base",
                "--remote",
                "https://evil.example/x",
            ),
        ],
        env_extra=fork_event(tmp_path),
    )
    registered, pulled, imported, push, pointed = results
    assert json.loads(registered[1])["trusted"] is False, registered
    assert pulled[0] == 0 and json.loads(pulled[1])["result"] == "pulled", pulled
    # The pulled key is the fleet's (trusted); the fork's own save stays in its scope.
    keys = svc.store.list_keys()
    assert "base" in keys and next(k for k in keys if k != "base").startswith("@pr-7-")
    assert imported[0] == 0, imported
    assert push[0] == 1 and "untrusted job" in push[2] and "fork" in push[2], push
    assert pointed[0] == 2 and "through the cache service" in pointed[2], pointed
    tags = RegistryClient(settings, read_credentials(settings.credentials_file)).list_tags()
    assert tags == ["base"]
