"""Basic auth and TLS against real registries: what Distribution 2.8's htpasswd allows (plain
HTTP included; no per-user rights), the pull-only endpoint that is possible (a read-only
instance on the same storage), CA trust, and a password that never shows."""

from __future__ import annotations

import io

import pytest
from harness.registry import LocalRegistry
from remote_helpers import REPO, blob, client_for
from runnerkeep.remote import (
    Credentials,
    RegistryClient,
    RemoteAuthError,
    RemoteError,
    RemoteReadOnly,
    RemoteUnavailable,
    remote_settings,
)

INDEX = "application/vnd.oci.image.index.v1+json"


def settings_for(reg: LocalRegistry, **options):
    return remote_settings({"remote": {"url": reg.remote_url(REPO), "timeout": 5, **options}})


def test_htpasswd_works_over_plain_http(auth_registry):
    """Distribution 2.8 does not insist on TLS for htpasswd (the fleet role still uses TLS)."""
    assert auth_registry.scheme == "http"
    with client_for(auth_registry, auth_registry.push_user) as c:
        c.check()


def test_no_credentials_is_an_auth_error_naming_the_fix(auth_registry):
    with client_for(auth_registry) as c, pytest.raises(RemoteAuthError) as caught:
        c.check()
    assert caught.value.status == 401
    assert "set cache.remote.credentials_file" in str(caught.value)


def test_a_wrong_password_is_an_auth_error_that_never_shows_it(auth_registry):
    wrong = "Wr0ng-Passw0rd-hunter2"
    c = RegistryClient(settings_for(auth_registry), Credentials("pusher", wrong))
    for call in (c.check, lambda: c.get_manifest("k", (INDEX,)), c.list_tags):
        with pytest.raises(RemoteAuthError) as caught:
            call()
        error = caught.value
        assert "wrong credentials for user pusher" in str(error)
        for text in (str(error), repr(error), repr(error.args), repr(c)):
            assert wrong not in text
            assert "Basic " not in text and "Authorization" not in text
    data, digest = blob(100)
    with pytest.raises(RemoteAuthError) as caught:
        c.upload_blob(digest, io.BytesIO(data), len(data))
    assert wrong not in str(caught.value)


def test_htpasswd_has_no_per_user_rights_the_pull_user_can_push(auth_registry):
    """Distribution's htpasswd authenticates; it does not authorise. Every user may push and
    delete, so the pull credentials are push credentials on the same endpoint."""
    with client_for(auth_registry, auth_registry.pull_user) as c:
        data, digest = blob(500)
        c.upload_blob(digest, io.BytesIO(data), len(data))
        assert c.blob_size(digest) == 500
        c.delete_manifest(c.put_manifest("pulled-user-pushed", INDEX, b'{"schemaVersion":2}'))


def test_a_pull_only_endpoint_is_a_read_only_instance_on_the_same_storage(auth_registry):
    """What is possible with Distribution alone: the push users reach a read-write instance,
    the pull users a second one in read-only mode over the same storage (its own htpasswd)."""
    with client_for(auth_registry, auth_registry.push_user) as pusher:
        data, digest = blob(800)
        pusher.upload_blob(digest, io.BytesIO(data), len(data))
        tag = pusher.put_manifest("shared-key", INDEX, b'{"schemaVersion":2,"manifests":[]}')
    pull_only = LocalRegistry(
        auth=True,
        users={"puller": "pull-pw-1234"},
        read_only=True,
        storage=auth_registry.storage_dir,
    )
    with pull_only, client_for(pull_only, pull_only.pull_user) as puller:
        assert puller.get_manifest("shared-key", (INDEX,)).digest == tag
        with puller.open_blob(digest) as stream:
            assert stream.read() == data
        more, more_digest = blob(10)
        with pytest.raises(RemoteReadOnly):
            puller.upload_blob(more_digest, io.BytesIO(more), 10)
        with pytest.raises(RemoteReadOnly):
            puller.delete_manifest(tag)
        # what the push side adds later is served at once (no blob descriptor cache here)
        late, late_digest = blob(700)
        with client_for(auth_registry, auth_registry.push_user) as pusher:
            pusher.upload_blob(late_digest, io.BytesIO(late), len(late))
        assert puller.blob_size(late_digest) == 700
        # the push user's password is not valid there
        wrong = RegistryClient(puller.settings, Credentials(*auth_registry.push_user))
        with pytest.raises(RemoteAuthError):
            wrong.check()


# --- TLS ---------------------------------------------------------------------------------------


def test_tls_with_the_ca_file(tls_registry):
    with client_for(tls_registry, tls_registry.push_user) as c:
        data, digest = blob(1_500_000)
        c.upload_blob(digest, io.BytesIO(data), len(data))
        c.upload_blob(*blob_and_digest_chunked(c), chunk_size=40_000)
        with c.open_blob(digest) as stream:
            assert stream.read() == data


def blob_and_digest_chunked(c):
    data, digest = blob(100_000)
    return digest, io.BytesIO(data), len(data)


def test_tls_without_the_ca_is_unavailable_and_says_to_set_ca_file(tls_registry):
    settings = settings_for(tls_registry)
    c = RegistryClient(settings, Credentials(*tls_registry.push_user))
    with pytest.raises(RemoteUnavailable) as caught:
        c.check()
    message = str(caught.value)
    assert "TLS: the certificate of 127.0.0.1 is not trusted" in message
    assert "set cache.remote.ca_file" in message
    assert tls_registry.push_user[1] not in message


def test_tls_with_another_ca_is_refused(tls_registry):
    with LocalRegistry(tls=True) as other:
        c = RegistryClient(
            settings_for(tls_registry, ca_file=other.ca_file), Credentials(*tls_registry.push_user)
        )
        with pytest.raises(RemoteUnavailable, match="not trusted"):
            c.check()


def test_plain_http_to_a_tls_port_and_tls_to_a_plain_port_fail_cleanly(tls_registry, auth_registry):
    http_to_tls = RegistryClient(
        remote_settings(
            {"remote": {"url": f"http://127.0.0.1:{tls_registry.port}/r", "timeout": 5}}
        )
    )
    with pytest.raises(RemoteError, match="HTTP request to an HTTPS server") as caught:
        http_to_tls.check()
    assert caught.value.status == 400
    tls_to_http = RegistryClient(
        remote_settings(
            {"remote": {"url": f"https://127.0.0.1:{auth_registry.port}/r", "timeout": 5}}
        )
    )
    with pytest.raises(RemoteUnavailable, match="TLS failed"):
        tls_to_http.check()


def test_a_ca_file_that_is_not_a_certificate_is_a_config_error(tmp_path, tls_registry):
    from runnerkeep.errors import ConfigError

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"ca_file: .* is not a PEM CA certificate"):
        RegistryClient(settings_for(tls_registry, ca_file=str(bad)))
    with pytest.raises(ConfigError, match="does not exist"):
        RegistryClient(settings_for(tls_registry, ca_file=str(tmp_path / "absent.pem")))


def test_one_tls_connection_serves_a_whole_session(tls_registry, monkeypatch):
    from runnerkeep.remote import registry

    opened = []
    real = registry.open_connection
    monkeypatch.setattr(
        registry, "open_connection", lambda *a, **k: opened.append(1) or real(*a, **k)
    )
    with client_for(tls_registry, tls_registry.push_user) as c:
        c.check()
        data, digest = blob(2_000_000)
        assert c.blob_size(digest) is None
        c.upload_blob(digest, io.BytesIO(data), len(data))
        with c.open_blob(digest) as stream:
            assert stream.read() == data
        assert c.blob_size(digest) == len(data)
        c.list_tags()
    assert len(opened) == 1


def test_an_override_url_gets_no_configured_password_and_the_error_says_why(auth_registry):
    section = auth_registry.remote_config(REPO, auth_registry.push_user)
    section["url"] = "http://127.0.0.1:9/configured"  # the configured registry is elsewhere
    settings = remote_settings({"remote": section}, url=auth_registry.remote_url(REPO))
    assert settings.credentials_file is None
    with RegistryClient(settings) as c, pytest.raises(RemoteAuthError) as caught:
        c.check()
    assert "belong to http://127.0.0.1:9 (cache.remote.url) and are not sent elsewhere" in str(
        caught.value
    )
