"""Secrets stay secret: URL redaction, the root-only webhook URL file, and no token in anything
the watch says (result/--json, text, syslog, state, metrics, errors)."""

from __future__ import annotations

import json
import os

import pytest
from harness import webhook_sink as sink
from runnerkeep import secrets
from runnerkeep.disk import alerts
from runnerkeep.disk import watch as watch_mod
from runnerkeep.disk.budget import BudgetInputs
from runnerkeep.errors import ConfigError
from runnerkeep_cli import commands_disk
from runnerkeep_cli.main import main

GiB = 1024**3
TOKEN = "s3cr3t-t0ken"


@pytest.mark.parametrize(
    "url, shown",
    [
        (f"https://alert:{TOKEN}@hooks.example:8443/a/b?token={TOKEN}#x", "https://***@hooks.example:8443/***"),
        (f"http://{TOKEN}@127.0.0.1/hook", "http://***@127.0.0.1/***"),
        (f"https://h.example/hook?token={TOKEN}&a=1", "https://h.example/***"),
        (f"https://h.example/api/webhooks/123/{TOKEN}?wait=true", "https://h.example/***"),
        (f"https://h.example/services/T0/B0/{TOKEN}", "https://h.example/***"),
        (f"https://h.example?{TOKEN}", "https://h.example/***"),
        (f"https://h.example/#{TOKEN}", "https://h.example/***"),
        ("http://[::1]:9/x", "http://[::1]:9/***"),
        ("https://h.example", "https://h.example"),
        ("https://h.example/", "https://h.example"),
        ("not a url", "***"),
        ("http://h:notaport/x", "***"),
    ],
)  # fmt: skip
def test_redact_url(url, shown):
    assert secrets.redact_url(url) == shown
    assert TOKEN not in secrets.redact_url(url)


# F3: the token in the PATH (Slack/Discord/Mattermost), with and without a query.
PATH_TOKEN = "SLACKSECRETTOKEN123"
PATH_URLS = [
    f"https://127.0.0.1:9/api/webhooks/123456/{PATH_TOKEN}?wait=true",
    f"https://127.0.0.1:9/api/webhooks/123456/{PATH_TOKEN}",
    f"https://127.0.0.1:9/api/webhooks/123456/{PATH_TOKEN}#frag",
    f"https://u:pw-{PATH_TOKEN}@127.0.0.1:9/hooks/{PATH_TOKEN}?wait=true#f",
]


@pytest.mark.parametrize("url", PATH_URLS)
def test_every_form_of_a_path_token_url_is_masked(url):
    found = secrets.url_secrets(url)
    bare = url.partition("#")[0].partition("?")[0]
    path = bare.split("127.0.0.1:9", 1)[1]
    forms = [
        url,
        url.partition("#")[0],
        bare,
        path,
        PATH_TOKEN,
        secrets.redact_url(url),
        f"<urlopen error for {bare}>",
        f"host 127.0.0.1:9{path} said no",
    ]
    for form in forms:
        redacted = secrets.redact_text(f"x {form} y", found)
        assert PATH_TOKEN not in redacted and "webhooks/123456" not in redacted, form
    assert secrets.redact_url(url) in ("https://127.0.0.1:9/***", "https://***@127.0.0.1:9/***")


def test_short_path_segments_are_words_not_secrets():
    found = secrets.url_secrets(f"https://h.example/api/hooks/{TOKEN}xxxx")
    assert secrets.redact_text("the api hooks ran", found) == "the api hooks ran"


def test_redact_text_masks_every_part_of_the_url():
    url = f"http://alert:{TOKEN}@127.0.0.1:9/hook?token={TOKEN}%21"
    found = secrets.url_secrets(url)
    message = f"POST {url} failed; retry with token={TOKEN}! user alert:{TOKEN}"
    redacted = secrets.redact_text(message, found)
    assert TOKEN not in redacted and redacted.endswith("user ***")
    assert secrets.redact_data({"alerts": [message], "n": 1}, found) == {
        "alerts": [redacted],
        "n": 1,
    }


def secret_file(tmp_path, text, mode=0o600, uid=0):
    path = tmp_path / "secrets.d" / "40-webhook"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, uid, uid)
    return str(path)


def test_webhook_url_file_first_line(tmp_path):
    path = secret_file(tmp_path, f"https://a:{TOKEN}@h.example/x\nignored\n")
    url = secrets.webhook_url({"webhook_url": None, "webhook_url_file": path})
    assert url == f"https://a:{TOKEN}@h.example/x"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_webhook_url_file_readable_by_others_is_refused(tmp_path, mode):
    path = secret_file(tmp_path, f"https://a:{TOKEN}@h.example/x\n", mode=mode)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        secrets.webhook_url({"webhook_url_file": path})
    assert path in str(info.value) and TOKEN not in str(info.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_webhook_url_file_of_another_owner_is_refused(tmp_path):
    path = secret_file(tmp_path, "https://h.example/x\n", uid=65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        secrets.webhook_url({"webhook_url_file": path})


def test_webhook_url_file_symlink_fifo_and_bad_url(tmp_path):
    target = secret_file(tmp_path, "https://h.example/x\n")
    link = str(tmp_path / "link")
    os.symlink(target, link)
    with pytest.raises(ConfigError, match="symlink"):
        secrets.webhook_url({"webhook_url_file": link})
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="FIFO"):
        secrets.webhook_url({"webhook_url_file": fifo})
    bad = secret_file(tmp_path, f"ftp://a:{TOKEN}@h.example/x\n")
    with pytest.raises(ConfigError, match="webhook_url") as info:
        secrets.webhook_url({"webhook_url_file": bad})
    assert TOKEN not in str(info.value)
    with pytest.raises(ConfigError, match="both set"):
        secrets.webhook_url({"webhook_url": "https://h.example/", "webhook_url_file": target})


# --- the watch says nothing of the token ---------------------------------------------------


@pytest.fixture
def watch_env(tmp_path, monkeypatch):
    calls: list[tuple] = []
    monkeypatch.setattr(watch_mod.alerts, "syslog", lambda *a, **k: calls.append((a, k)) or "test")
    disk = {"free": 14 * GiB}

    def measure(config):
        return BudgetInputs(
            path="/fake",
            capacity_bytes=100 * GiB,
            capacity_inodes=1_000_000,
            peaks_bytes=[],
            peaks_inodes=[],
            cache_bytes=0,
            cache_logical_bytes=0,
            free_bytes=disk["free"],
            free_inodes=900_000,
        )

    monkeypatch.setattr(watch_mod, "measure_inputs", measure)

    def config(**extra):
        return {
            "paths": {
                "cache_dir": str(tmp_path / "cache"),
                "state_dir": str(tmp_path / "state"),
                "log_dir": str(tmp_path / "log"),
            },
            "disk": {
                "textfile_dir": str(tmp_path / "textfile"),
                "watch_docker": False,
                "syslog": True,
                "emergency_cleanup": False,
                "job_peak_floor": "10GiB",
                "cache_quota_min": 0,
                "webhook_timeout": "1s",
                "webhook_retries": 0,
                **extra,
            },
        }

    return config, calls, tmp_path


def everything_said(result, calls, tmp_path) -> str:
    said = [json.dumps(result), commands_disk._watch_text(result), repr(calls)]
    for root, _dirs, files in os.walk(tmp_path):
        for name in files:
            path = os.path.join(root, name)
            if "secrets.d" not in path and not os.path.islink(path):
                with open(path, "rb") as handle:
                    said.append(handle.read().decode(errors="replace"))
    return "\n".join(said)


def test_a_failing_webhook_with_a_token_leaks_it_nowhere(watch_env, monkeypatch):
    config, calls, tmp_path = watch_env
    url = f"http://alert:{TOKEN}@127.0.0.1:9/hook?token={TOKEN}"

    def failing(url, body, **kwargs):  # an error text that quotes the URL, as urllib's can
        return {"ok": False, "attempts": 1, "status": None, "error": f"bad answer from {url}"}

    monkeypatch.setattr(alerts, "_post", failing)
    path = secret_file(tmp_path, url + "\n")
    result = watch_mod.run_watch(config(webhook_url_file=path))
    assert result["state"] == "critical" and result["alerts"][0]["webhook"]["ok"] is False
    said = everything_said(result, calls, tmp_path)
    assert TOKEN not in said
    assert "http://***@127.0.0.1:9/***" in said  # where it points is still shown


@pytest.mark.parametrize("url", PATH_URLS)
def test_a_path_token_leaks_nowhere_the_watch_speaks(watch_env, monkeypatch, url):
    config, calls, tmp_path = watch_env
    bare = url.partition("#")[0].partition("?")[0]

    def failing(url, body, **kwargs):  # quotes the URL in every form an error could
        return {"ok": False, "attempts": 1, "status": None, "error": f"{url} | {bare}"}

    monkeypatch.setattr(alerts, "_post", failing)
    path = secret_file(tmp_path, url + "\n")
    result = watch_mod.run_watch(config(webhook_url_file=path))
    assert result["alerts"][0]["webhook"]["ok"] is False
    said = everything_said(result, calls, tmp_path)
    assert PATH_TOKEN not in said and "webhooks/123456" not in said
    assert "127.0.0.1:9/***" in said  # where it points is still shown


def test_the_inline_url_is_redacted_too_and_sent_in_full(watch_env):
    config, calls, tmp_path = watch_env
    with sink.webhook_sink() as server:
        url = server.url.replace("http://", f"http://alert:{TOKEN}@") + f"?token={TOKEN}"
        result = watch_mod.run_watch(config(webhook_url=url))
        assert len(server.received) == 1  # the real URL was used
    assert result["alerts"][0]["webhook"]["ok"] is True
    assert TOKEN not in everything_said(result, calls, tmp_path)


def test_an_unusable_secret_file_is_a_cycle_error_not_a_stopped_watch(watch_env):
    config, calls, tmp_path = watch_env
    path = secret_file(tmp_path, f"http://a:{TOKEN}@h.example/\n", mode=0o644)
    result = watch_mod.run_watch(config(webhook_url_file=path))
    assert result["state"] == "critical"  # measured and decided all the same
    assert any("chmod 600" in e and path in e for e in result["errors"])
    assert TOKEN not in everything_said(result, calls, tmp_path)


def test_watch_json_cli_output_has_no_token(watch_env, monkeypatch, capsys):
    config, _calls, tmp_path = watch_env
    url = f"http://alert:{TOKEN}@127.0.0.1:9/hook"
    monkeypatch.setattr(
        alerts,
        "_post",
        lambda url, body, **k: {"ok": False, "attempts": 1, "status": None, "error": url},
    )
    cfg = tmp_path / "config.json"
    data = config(webhook_url_file=secret_file(tmp_path, url + "\n"))
    cfg.write_text(json.dumps(data))
    for extra in (["--json"], []):
        main(["disk", "watch", "--config", str(cfg), *extra])
        out = capsys.readouterr()
        assert TOKEN not in out.out + out.err


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_a_secret_path_that_is_no_regular_file_is_not_told_to_chown_it(tmp_path, kind):
    """chown/chmod of /dev/zero would break the machine: the fix is another path."""
    if kind == "device":
        path = "/dev/zero"
    elif kind == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path, 0o600)
    else:
        path = str(tmp_path / "dir")
        os.mkdir(path, 0o700)
    with pytest.raises(ConfigError) as info:
        secrets.read_secret_file(path, "disk.webhook_auth_header_file")
    message = str(info.value)
    assert message.startswith(f"disk.webhook_auth_header_file: {path} is ")
    assert "not a regular file" in message
    assert "point disk.webhook_auth_header_file at a regular file owned by root with mode 600" in (
        message
    )
    assert "chown" not in message and "chmod" not in message


def test_a_regular_secret_file_with_a_bad_mode_still_gets_the_chmod_fix(tmp_path):
    path = secret_file(tmp_path, "X-Token: abcdefgh\n", mode=0o640)
    with pytest.raises(ConfigError, match=f"run: chmod 600 {path}$"):
        secrets.read_secret_file(path, "disk.webhook_auth_header_file")


# -- a peer's words (attack16 F5): masked before they are escaped and cut ----------------------
PEER_SECRETS = [
    "back\\slash-pw-42",
    "quo\"te's-pw-1234",
    "\u00fcnic\u00f8de-\u5bc6\u7801-pw",
    "Zq7-very-long-fleet-password-0123456789",
    "tab\there-pw-5678",
]


def _pieces(secret):
    """What must not survive of ``secret``: any leading piece of 8+ characters, raw or
    escaped."""
    from runnerkeep.textutil import escape_text

    found = {secret[:n] for n in range(min(8, len(secret)), len(secret) + 1)}
    return found | {escape_text(p) for p in found}


@pytest.mark.parametrize(
    "secret", PEER_SECRETS, ids=["backslash", "quotes", "unicode", "long", "tab"]
)
def test_a_peer_echo_never_shows_the_secret_or_a_piece_of_it(secret):
    import base64

    token = base64.b64encode(f"ci:{secret}".encode()).decode()
    secrets_ = [secret, token]
    texts = [
        f"bad password {secret}",
        "x" * 150 + f" password {secret} and more",  # the whole secret crosses the 160 cut
        "y" * 120 + f" got Basic {token}",
        f"password {secret[: len(secret) - 3]}",  # the peer cut it itself
        f"password {secret[:10]} then more words",
        f"Authorization: Basic {token[:30]}",
        (f"echo {secret} " * 20)[:200],
    ]
    for text in texts:
        shown = secrets.peer_excerpt(text, secrets_, 160)
        assert len(shown) <= 160 and "\n" not in shown
        for piece in _pieces(secret) | {token[:n] for n in range(8, len(token) + 1)}:
            assert piece not in shown, (text, shown)


def test_a_peer_excerpt_keeps_ordinary_words_and_escapes_controls():
    shown = secrets.peer_excerpt("blob unknown to registry\x1b[31m", ["Zq7-very-long-pw"], 160)
    assert shown == "blob unknown to registry\\x1b[31m"
    assert secrets.peer_excerpt("a" * 300, [], 160) == "a" * 160
