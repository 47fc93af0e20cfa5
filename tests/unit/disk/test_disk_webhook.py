"""Alerts to a webhook on 127.0.0.1: one per transition; a dead one is bounded and harmless."""

from __future__ import annotations

import contextlib
import json
import os
import time

import pytest
from runnerkeep.disk import alerts
from runnerkeep.disk.alerts import post_webhook
from runnerkeep.disk.metrics import metric_value, parse_metrics
from runnerkeep.disk.watch import run_watch
from runnerkeep.errors import ConfigError

GiB = 1024**3


def metrics(config):
    path = os.path.join(config["disk"]["textfile_dir"], "runnerkeep_disk.prom")
    with open(path) as handle:
        return parse_metrics(handle.read())


def test_one_webhook_alert_per_transition(make_config, fake_disk, syslog_calls, webhook):
    config = make_config(webhook_url=webhook.url)
    for free in (60, 24, 20, 14, 13, 4, 3, 60, 60):
        fake_disk.free_bytes = free * GiB
        run_watch(config)
    bodies = webhook.received
    assert [(b["previous"], b["state"]) for b in bodies] == [
        ("ok", "warning"),
        ("warning", "critical"),
        ("critical", "emergency"),
        ("emergency", "ok"),
    ]
    assert all(b["event"] == "disk_state_change" and b["source"] == "runnerkeep" for b in bodies)
    assert bodies[0]["free_bytes"] == 24 * GiB
    assert bodies[0]["watermarks"]["warning"]["bytes"] == 25 * GiB
    samples = metrics(config)
    assert metric_value(samples, "runnerkeep_disk_webhook_up") == 1
    assert (
        metric_value(samples, "runnerkeep_disk_alerts_total", channel="webhook", result="sent") == 4
    )


def test_dead_webhook_is_bounded_and_metrics_still_written(
    make_config, fake_disk, syslog_calls, dead_url
):
    config = make_config(webhook_url=dead_url, webhook_timeout="1s", webhook_retries=2)
    fake_disk.free_bytes = 14 * GiB
    started = time.monotonic()
    result = run_watch(config)
    took = time.monotonic() - started
    assert took < 5
    assert result["state"] == "critical"
    hook = result["alerts"][0]["webhook"]
    assert not hook["ok"] and hook["attempts"] == 3
    assert any("webhook" in e for e in result["errors"])
    samples = metrics(config)
    assert metric_value(samples, "runnerkeep_disk_state", state="critical") == 1
    assert metric_value(samples, "runnerkeep_disk_webhook_up") == 0
    assert (
        metric_value(samples, "runnerkeep_disk_alerts_total", channel="webhook", result="failed")
        == 1
    )
    # The failure is in the log too.
    assert any("webhook" in m and s == "error" for s, m in syslog_calls)


def test_retries_never_exceed_the_deadline():
    import http.server
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            time.sleep(3)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        result = post_webhook(
            f"http://127.0.0.1:{server.server_address[1]}/",
            {"x": 1},
            timeout=1.0,
            retries=10,
            deadline=time.monotonic() + 2.0,
        )
        took = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert not result["ok"]
    assert took < 2.5
    assert result["attempts"] >= 1


def test_any_2xx_status_is_success(webhook):
    result = post_webhook(
        webhook.url.replace("/hook", "/"), {"x": 1}, timeout=1, retries=0,
        deadline=time.monotonic() + 5,
    )  # fmt: skip
    assert result["ok"]  # the sink answers 204 to any path
    assert webhook.received == [{"x": 1}]


def test_alerts_a_dead_webhook_missed_are_sent_next_cycle_in_order(
    make_config, fake_disk, syslog_calls, dead_url, webhook
):
    # 5 s per attempt: the dead port refuses at once, and a live send (a fresh child process on
    # a busy 2-core machine) must not be cut short by the attempt timeout.
    config = make_config(webhook_url=dead_url, webhook_timeout="5s", webhook_retries=0)
    for free in (24, 14):  # ok -> warning -> critical while the receiver is down
        fake_disk.free_bytes = free * GiB
        result = run_watch(config)
        assert not result["alerts"][-1]["webhook"]["ok"]
    assert metric_value(metrics(config), "runnerkeep_disk_webhook_pending") == 2
    # a third cycle with it still down: one attempt, both alerts still waiting
    result = run_watch(config)
    assert any("2 alert(s) waiting" in e for e in result["errors"])
    assert metric_value(metrics(config), "runnerkeep_disk_webhook_pending") == 2

    # the receiver is back (here: the config points at a live one); no new transition
    config["disk"]["webhook_url"] = webhook.url
    result = run_watch(config)
    assert [(b["previous"], b["state"], b["resent"]) for b in webhook.received] == [
        ("ok", "warning", True),
        ("warning", "critical", True),
    ]
    assert not any("webhook" in e for e in result["errors"])
    samples = metrics(config)
    assert metric_value(samples, "runnerkeep_disk_webhook_pending") == 0
    assert metric_value(samples, "runnerkeep_disk_webhook_up") == 1
    assert (
        metric_value(samples, "runnerkeep_disk_alerts_total", channel="webhook", result="resent")
        == 2
    )
    # nothing is sent twice
    run_watch(config)
    assert len(webhook.received) == 2


# --- Slack-compatible text, the auth header, no redirects -------------------------------------


@contextlib.contextmanager
def recording_server(status=204, location=None, require=None):
    """A loopback server that records (headers, body) of each POST and answers ``status``;
    with ``require`` (name, value), 401 to a POST without that header, as an authenticated
    receiver does."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length))
            self.server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            allowed = require is None or self.headers.get(require[0]) == require[1]
            self.send_response(status if allowed else 401)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def post(url, body, **kwargs):
    return post_webhook(url, body, timeout=5, retries=0, deadline=time.monotonic() + 10, **kwargs)


def test_the_watch_alert_carries_a_slack_text(make_config, fake_disk, syslog_calls, webhook):
    config = make_config(webhook_url=webhook.url)
    fake_disk.free_bytes = 24 * GiB
    run_watch(config)
    body = webhook.received[0]
    # Slack's escaping: "->" shows as "->" in the chat
    escaped = body["message"].replace(">", "&gt;")
    assert body["text"] == f":warning: runnerkeep on {body['host']}: {escaped}"
    assert body["message"].startswith("disk ok -> warning on /fake: 24.0 GiB free")


def test_slack_text_is_one_escaped_line_with_the_state_icon():
    body = {"state": "emergency", "host": "r1", "message": "disk <x> & y\nz"}
    assert alerts.slack_text(body) == ":fire: runnerkeep on r1: disk &lt;x&gt; &amp; y z"
    resent = alerts.slack_text({"state": "ok", "host": "r1", "message": "m", "resent": True})
    assert resent == ":white_check_mark: runnerkeep on r1 (sent again: the webhook missed it): m"
    assert alerts.slack_text({"event": "x", "message": "m"}).startswith(":information_source:")


def test_a_body_with_its_own_text_or_no_message_is_sent_as_it_is():
    assert alerts.with_text({"x": 1}) == {"x": 1}
    assert alerts.with_text({"message": "m", "text": "mine"}) == {"message": "m", "text": "mine"}
    body = {"message": "m", "state": "warning", "host": "h"}
    assert alerts.with_text(body)["text"] == ":warning: runnerkeep on h: m"
    assert "text" not in body  # a copy: the pending queue keeps the body as the watch made it


def test_the_auth_header_goes_with_the_post():
    with recording_server() as server:
        result = post(
            server.url, {"message": "m"}, auth_header=("Authorization", "Bearer tok-123456")
        )
        other = post(server.url, {"message": "m"}, auth_header=("X-Token", "abcdef"))
        none = post(server.url, {"message": "m"})
    assert result["ok"] and other["ok"] and none["ok"]
    headers = [h for h, _body in server.requests]
    assert headers[0]["authorization"] == "Bearer tok-123456"
    assert headers[1]["x-token"] == "abcdef" and "authorization" not in headers[1]
    assert "authorization" not in headers[2] and "x-token" not in headers[2]
    assert all(h["content-type"] == "application/json" for h in headers)


def test_a_redirect_is_not_followed_so_the_credential_stays():
    header = ("Authorization", "Bearer t0k3n")
    with recording_server() as elsewhere, recording_server(302, elsewhere.url) as server:
        result = post(server.url, {"message": "m"}, auth_header=header)
    assert not result["ok"]
    assert result["status"] == 302 and result["error"] == "HTTP 302"
    assert len(server.requests) == 1
    assert elsewhere.requests == []


def test_the_header_value_is_redacted_from_what_comes_back(monkeypatch):
    monkeypatch.setattr(
        alerts, "_post", lambda *a, **k: {"ok": False, "error": "refused Bearer s3cr3t-t0k3n"}
    )
    result = post(
        "http://127.0.0.1:1/hook", {}, auth_header=("Authorization", "Bearer s3cr3t-t0k3n")
    )
    assert "s3cr3t" not in json.dumps(result)
    assert alerts.header_secrets(("Authorization", "Bearer s3cr3t")) == ["Bearer s3cr3t", "s3cr3t"]
    assert alerts.header_secrets(None) == []


def secret_file(tmp_path, text, mode=0o600):
    path = tmp_path / "auth"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize(
    ("line", "header"),
    [
        ("Bearer abc.def\n", ("Authorization", "Bearer abc.def")),
        ("X-Gotify-Key: abcdef\nignored", ("X-Gotify-Key", "abcdef")),
        ("Authorization: Basic dXNlcjpwdw==", ("Authorization", "Basic dXNlcjpwdw==")),
        ("  token-without-scheme  ", ("Authorization", "token-without-scheme")),
    ],
)
def test_the_auth_header_file_gives_a_header(tmp_path, line, header):
    settings = {"webhook_auth_header_file": secret_file(tmp_path, line)}
    assert alerts.webhook_auth_header(settings) == header


def test_no_auth_header_file_is_no_header():
    assert alerts.webhook_auth_header({}) is None
    assert alerts.webhook_auth_header({"webhook_auth_header_file": ""}) is None


@pytest.mark.parametrize(
    ("text", "mode", "says"),
    [
        ("Bearer hunter2-secret", 0o644, "group or other"),
        ("", 0o600, "holds no header value"),
        ("X-Token:   ", 0o600, "holds no header value"),
        ("Bearer hunter2\x01secret", 0o600, "control characters"),
        ("Content-Length: 5", 0o600, "sets Content-Length"),
    ],
)
def test_an_unusable_auth_header_file_is_a_config_error_without_its_content(
    tmp_path, text, mode, says
):
    path = secret_file(tmp_path, text, mode)
    with pytest.raises(ConfigError) as caught:
        alerts.webhook_auth_header({"webhook_auth_header_file": path})
    message = str(caught.value)
    assert says in message and path in message
    assert "hunter2" not in message
    assert message.startswith("disk.webhook_auth_header_file: ")


def test_a_missing_auth_header_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        alerts.webhook_auth_header({"webhook_auth_header_file": str(tmp_path / "nope")})


# --- the watch sends the header: URL and header are one target ------------------------------

TOKEN = "s3cr3t-xyz-0123456789"


def everything_written(config, result, syslog_calls) -> str:
    """All the watch showed or kept: its --json result, state dir, metrics and syslog lines."""
    texts = [json.dumps(result), json.dumps(syslog_calls)]
    for directory in (config["paths"]["state_dir"], config["disk"]["textfile_dir"]):
        for base, _dirs, files in os.walk(directory):
            for name in files:
                with open(os.path.join(base, name), "rb") as handle:
                    texts.append(handle.read().decode("utf-8", errors="replace"))
    return "\n".join(texts)


def test_the_watch_posts_with_the_auth_header_and_never_shows_it(
    make_config, fake_disk, syslog_calls, tmp_path
):
    from runnerkeep.disk import watch as watch_mod

    header_file = secret_file(tmp_path, "Bearer wrong-token-00000000\n")
    with recording_server(require=("Authorization", f"Bearer {TOKEN}")) as server:
        config = make_config(
            webhook_url=server.url,
            webhook_auth_header_file=header_file,
            webhook_timeout="5s",
            webhook_retries=0,
        )
        fake_disk.free_bytes = 24 * GiB  # ok -> warning: one alert, refused (wrong token)
        first = run_watch(config)
        assert not first["alerts"][0]["webhook"]["ok"]
        assert first["alerts"][0]["webhook"]["status"] == 401
        with open(header_file, "w", encoding="utf-8") as handle:
            handle.write(f"Bearer {TOKEN}\n")
        fake_disk.free_bytes = 14 * GiB  # warning -> critical: the missed one resent, then this
        second = run_watch(config)
    assert [h.get("authorization") for h, _body in server.requests] == [
        "Bearer wrong-token-00000000",
        f"Bearer {TOKEN}",
        f"Bearer {TOKEN}",
    ]
    assert [(b["state"], b.get("resent", False)) for _h, b in server.requests[1:]] == [
        ("warning", True),
        ("critical", False),
    ]
    assert second["alerts"][-1]["webhook"]["ok"]
    assert not any("webhook" in e for e in second["errors"])
    assert metric_value(metrics(config), "runnerkeep_disk_webhook_up") == 1
    # The CLI redacts what it prints with the cycle's secrets: the header's are among them.
    assert TOKEN in watch_mod.last_secrets
    assert TOKEN not in everything_written(config, second, syslog_calls)


@pytest.mark.parametrize(
    ("make_header_file", "says"),
    [
        (lambda tmp: secret_file(tmp, f"Bearer {TOKEN}", 0o644), "accessible to group or other"),
        (lambda tmp: "/dev/zero", "is a device, not a regular file"),
        (lambda tmp: (os.mkfifo(tmp / "fifo", 0o600), str(tmp / "fifo"))[1], "is a FIFO"),
        (lambda tmp: str(tmp / "missing"), "does not exist"),
    ],
)
def test_an_unusable_header_file_is_one_webhook_config_error_and_no_post(
    make_config, fake_disk, syslog_calls, tmp_path, make_header_file, says
):
    header_file = make_header_file(tmp_path)
    with recording_server() as server:
        config = make_config(webhook_url=server.url, webhook_auth_header_file=header_file)
        fake_disk.free_bytes = 24 * GiB
        result = run_watch(config)
    assert server.requests == []  # never a POST without the credential the config asks for
    webhook_errors = [e for e in result["errors"] if e.startswith("webhook: ")]
    assert len(webhook_errors) == 1
    assert webhook_errors[0].startswith("webhook: disk.webhook_auth_header_file: ")
    assert says in webhook_errors[0] and header_file in webhook_errors[0]
    # The disk is still watched: the state moved, syslog has the alert, metrics are written.
    assert result["state"] == "warning"
    assert any("warning" in m for _s, m in syslog_calls)
    assert metric_value(metrics(config), "runnerkeep_disk_state", state="warning") == 1
    assert TOKEN not in everything_written(config, result, syslog_calls)


def test_the_target_holds_url_and_header_and_their_secrets(tmp_path):
    settings = {
        "webhook_url": "https://hooks.example/services/T0/B0/url-token-abcdef",
        "webhook_auth_header_file": secret_file(tmp_path, f"X-Key: {TOKEN}"),
    }
    target = alerts.webhook_target(settings)
    assert target.url == settings["webhook_url"]
    assert target.auth_header == ("X-Key", TOKEN)
    assert TOKEN in target.secrets() and "url-token-abcdef" in target.secrets()
    assert TOKEN not in repr(target) and "url-token" not in repr(target)
    # no URL: no target, and the header file is not even read
    assert alerts.webhook_target({"webhook_auth_header_file": "/dev/zero"}) is None
