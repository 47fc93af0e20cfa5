"""cache.remote: the URL form, the http-only-on-loopback rule, the other keys, and the schema
that load_config applies to the section."""

from __future__ import annotations

import pytest
from runnerkeep.errors import ConfigError
from runnerkeep.remote.remote_config import (
    DEFAULT_TIMEOUT,
    RemoteSettings,
    is_loopback,
    parse_remote_url,
    remote_settings,
)
from runnerkeep.schema import validate_config


def settings_of(**section) -> RemoteSettings | None:
    return remote_settings({"remote": section})


def test_a_full_section_is_parsed():
    got = settings_of(
        url="https://cache.example:5000/runnerkeep/cache",
        credentials_file="/etc/runnerkeep/secrets.d/registry",
        ca_file="/etc/runnerkeep/fleet-ca.pem",
        push=True,
        timeout="2m",
    )
    assert got == RemoteSettings(
        url="https://cache.example:5000/runnerkeep/cache",
        scheme="https",
        host="cache.example",
        port=5000,
        repository="runnerkeep/cache",
        credentials_file="/etc/runnerkeep/secrets.d/registry",
        ca_file="/etc/runnerkeep/fleet-ca.pem",
        push=True,
        timeout=120.0,
        allow_http=False,
    )
    assert got.origin == "https://cache.example:5000"


def test_defaults_port_and_timeout():
    got = settings_of(url="https://Cache.Example/a")
    assert (got.port, got.host, got.timeout, got.push) == (
        443,
        "cache.example",
        DEFAULT_TIMEOUT,
        False,
    )
    assert settings_of(url="http://127.0.0.1/a").port == 80


def test_ipv6_literal():
    got = settings_of(url="http://[::1]:5000/x")
    assert (got.host, got.port, got.origin) == ("::1", 5000, "http://[::1]:5000")


@pytest.mark.parametrize("config", [{}, {"remote": None}, {"remote": {}}, {"remote": {"url": ""}}])
def test_no_url_is_no_remote(config):
    assert remote_settings(config) is None


def test_no_remote_wins_and_the_override_replaces_the_url():
    config = {"remote": {"url": "https://a.example/one", "push": True, "timeout": 5}}
    assert remote_settings(config, no_remote=True) is None
    assert remote_settings(config, url="https://b.example/two", no_remote=True) is None
    got = remote_settings(config, url="https://b.example/two")
    assert (got.host, got.repository, got.push, got.timeout) == ("b.example", "two", True, 5.0)
    # --remote alone, without a section, is enough
    assert remote_settings({}, url="https://b.example/two").repository == "two"


def test_the_whole_config_is_accepted_too():
    config = {"cache": {"remote": {"url": "https://a.example/one"}}}
    assert remote_settings(config).repository == "one"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "[::1]"])
def test_http_is_fine_on_loopback(host):
    assert settings_of(url=f"http://{host}:5000/cache").scheme == "http"


@pytest.mark.parametrize("host", ["10.0.0.5", "cache.example", "[fe80::1]", "0.0.0.0"])
def test_http_elsewhere_is_refused_unless_allowed(host):
    with pytest.raises(ConfigError, match="http:// is only for a loopback registry"):
        settings_of(url=f"http://{host}:5000/cache")
    assert settings_of(url=f"http://{host}:5000/cache", allow_http=True).allow_http is True


def test_the_override_is_named_in_its_error():
    with pytest.raises(ConfigError, match=r"^--remote: http:// is only"):
        remote_settings({}, url="http://cache.example/c")


@pytest.mark.parametrize(
    "url, says",
    [
        ("https://user:hunter2secret@cache.example/c", "holds credentials"),
        ("https://token@cache.example/c", "holds credentials"),
        ("ftp://cache.example/c", "scheme must be https"),
        ("cache.example/c", "scheme must be https"),
        ("https://cache.example", "names no repository"),
        ("https://cache.example/", "names no repository"),
        ("https://cache.example/Upper/Case", "not a repository name"),
        ("https://cache.example/a//b", "not a repository name"),
        ("https://cache.example/a/../b", "not a repository name"),
        ("https://cache.example/a-/b", "not a repository name"),
        ("https://cache.example/" + "a" * 256, "not a repository name"),
        ("https://cache.example/c?x=1", "no query or fragment"),
        ("https://cache.example/c#f", "no query or fragment"),
        ("https://cache.example:99999/c", "port"),
        ("https://cache.example:abc/c", "port"),
        ("https://cache.example:0/c", "port 0"),
        ("https://ca che.example/c", "expected a URL"),
        ("https://cache.example/c\n", "expected a URL"),
        ("https://bad_host!/c", "no valid host"),
        ("", "expected a URL"),
    ],
)
def test_bad_urls_are_one_line_errors_without_the_secret(url, says):
    with pytest.raises(ConfigError, match=says) as caught:
        parse_remote_url(url)
    message = str(caught.value)
    assert "\n" not in message and "hunter2secret" not in message
    assert message.startswith("cache.remote.url: ")


@pytest.mark.parametrize(
    "repository",
    ["a", "runnerkeep/cache", "a.b_c__d-e--f/x9", "library/ubuntu", "a/b/c/d"],
)
def test_good_repository_names(repository):
    assert parse_remote_url(f"https://r.example/{repository}")[3] == repository


def test_a_trailing_slash_is_dropped():
    assert parse_remote_url("https://r.example/a/b/")[3] == "a/b"


@pytest.mark.parametrize(
    "section, says",
    [
        (
            {"url": "https://a.example/c", "push": "yes"},
            "cache.remote.push: expected true or false",
        ),
        ({"url": "https://a.example/c", "allow_http": 1}, "allow_http: expected true or false"),
        ({"url": "https://a.example/c", "timeout": 0}, "cache.remote.timeout"),
        ({"url": "https://a.example/c", "timeout": "forever"}, "cache.remote.timeout"),
        ({"url": "https://a.example/c", "timeout": float("nan")}, "cache.remote.timeout"),
        ({"url": "https://a.example/c", "timeout": "2h"}, "at most 1h"),
        ({"url": "https://a.example/c", "credentials_file": "rel/path"}, "absolute path"),
        ({"url": "https://a.example/c", "ca_file": 5}, "absolute path"),
        ({"url": "https://a.example/c", "password": "x"}, "unknown key"),
        ({"url": 42}, "expected a URL"),
    ],
)
def test_bad_keys(section, says):
    with pytest.raises(ConfigError, match=says):
        remote_settings({"remote": section})


def test_a_section_that_is_not_an_object():
    with pytest.raises(ConfigError, match=r"cache\.remote: expected a JSON object"):
        remote_settings({"remote": "https://a.example/c"})


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("LOCALHOST")
    assert not is_loopback("128.0.0.1") and not is_loopback("localhost.example")


# --- the schema load_config applies ---------------------------------------------------------


def test_the_schema_takes_a_full_section():
    validate_config(
        {
            "cache": {
                "remote": {
                    "url": "https://cache.example:5000/runnerkeep/cache",
                    "credentials_file": "/etc/runnerkeep/secrets.d/registry",
                    "ca_file": "/etc/runnerkeep/fleet-ca.pem",
                    "push": True,
                    "timeout": "30s",
                    "allow_http": False,
                }
            }
        },
        "config.json",
    )
    validate_config({"cache": {"remote": None}}, "config.json")
    validate_config({"cache": {"remote": {"url": ""}}}, "config.json")


@pytest.mark.parametrize(
    "remote, key",
    [
        ({"push": "false"}, "cache.remote.push"),
        ({"timeout": -1}, "cache.remote.timeout"),
        ({"url": "not a url"}, "cache.remote.url"),
        ({"credentials_file": "relative"}, "cache.remote.credentials_file"),
        ({"user": "x"}, "cache.remote.user"),
        ("https://a.example/c", "cache.remote"),
    ],
)
def test_the_schema_names_the_bad_key(remote, key):
    with pytest.raises(ConfigError, match=f"config.json: {key}: expected"):
        validate_config({"cache": {"remote": remote}}, "config.json")


def test_the_schema_does_not_echo_a_url_with_credentials():
    with pytest.raises(ConfigError) as caught:
        validate_config({"cache": {"remote": {"url": "xx://u:hunter2secret@h/c"}}}, "f")
    assert "hunter2secret" not in str(caught.value)


# --- the configured credentials stay with the configured registry ---------------------------

HOME = {"url": "https://home.example:5000/cache", "credentials_file": "/etc/rk/registry"}


def test_an_override_for_another_registry_gets_no_credentials():
    got = remote_settings({"remote": HOME}, url="https://elsewhere.example:5000/cache")
    assert got.credentials_file is None
    assert got.withheld_for == "https://home.example:5000"
    # another port or scheme is another registry too
    assert remote_settings({"remote": HOME}, url="https://home.example/c").credentials_file is None
    local = {**HOME, "url": "https://127.0.0.1:5000/c"}
    assert remote_settings({"remote": local}, url="http://127.0.0.1:5000/c").withheld_for


def test_an_override_on_the_same_registry_keeps_them():
    for url in ("https://home.example:5000/other/repo", "https://HOME.example:5000/cache/"):
        got = remote_settings({"remote": HOME}, url=url)
        assert got.credentials_file == "/etc/rk/registry" and got.withheld_for is None
    assert remote_settings({"remote": HOME}).credentials_file == "/etc/rk/registry"


def test_without_a_configured_url_the_credentials_go_with_the_override():
    section = {"credentials_file": "/etc/rk/registry"}
    got = remote_settings({"remote": section}, url="https://any.example/c")
    assert got.credentials_file == "/etc/rk/registry" and got.withheld_for is None
