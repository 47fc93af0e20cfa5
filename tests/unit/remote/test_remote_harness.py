"""The LocalRegistry harness other tests and the bench build on: what it makes, that a
non-Python client (curl) trusts its CA, restart and clean-up."""

from __future__ import annotations

import io
import os
import stat
import subprocess

import pytest
from harness.registry import LocalRegistry
from remote_helpers import blob, client_for


def curl_status(reg: LocalRegistry, *extra: str) -> str:
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", reg.ca_file, *extra,
         f"{reg.url}/v2/"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout


def test_tls_auth_registry_as_curl_sees_it(tls_registry):
    assert curl_status(tls_registry) == "401"
    assert curl_status(tls_registry, "-u", "{}:{}".format(*tls_registry.push_user)) == "200"
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.host_port == f"127.0.0.1:{tls_registry.port}"


def test_credentials_files_are_private(tls_registry):
    path = tls_registry.credentials_file(tls_registry.pull_user)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as handle:
        assert handle.read() == "{}:{}\n".format(*tls_registry.pull_user)
    section = tls_registry.remote_config("a/b", tls_registry.push_user, push=True)
    assert section["url"] == f"{tls_registry.url}/a/b" and section["push"] is True
    assert section["ca_file"] == tls_registry.ca_file


def test_cert_dir_and_docker_trust(tls_registry, tmp_path):
    with open(tls_registry.ca_file, "rb") as handle:
        ca = handle.read()
    with open(os.path.join(tls_registry.cert_dir, "ca.crt"), "rb") as handle:
        assert handle.read() == ca
    made = tls_registry.trust_in_docker(certs_root=str(tmp_path))
    assert made == str(tmp_path / tls_registry.host_port)
    assert (tmp_path / tls_registry.host_port / "ca.crt").read_bytes() == ca


def test_restart_keeps_port_and_data_and_close_cleans_up(tmp_path):
    reg = LocalRegistry()
    with reg, client_for(reg) as c:
        data, digest = blob(4096)
        c.upload_blob(digest, io.BytesIO(data), len(data))
        port = reg.port
        reg.restart()
        assert reg.port == port and c.blob_size(digest) == 4096
        workdir = reg.workdir
        pid = reg.process.pid
    assert reg.process is None and not os.path.exists(workdir)
    assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped


def test_a_given_storage_is_kept(tmp_path):
    storage = tmp_path / "storage"
    with LocalRegistry(storage=str(storage)) as reg, client_for(reg) as c:
        data, digest = blob(100)
        c.upload_blob(digest, io.BytesIO(data), len(data))
    assert any(storage.rglob("data"))


def test_a_missing_registry_program_is_named_with_its_package(monkeypatch):
    import shutil

    from harness import registry as harness_registry

    monkeypatch.setattr(shutil, "which", lambda name: None)
    reg = LocalRegistry(tls=True, auth=True)
    try:
        with pytest.raises(harness_registry.RegistryStartError) as caught:
            reg.start()
    finally:
        reg.close()
    assert "apt-get install -y docker-registry openssl apache2-utils" in str(caught.value)
