"""Alerts to a webhook on 127.0.0.1: one per transition; a dead one is bounded and harmless."""

from __future__ import annotations

import os
import time

from runnerkeep.disk.alerts import post_webhook
from runnerkeep.disk.metrics import metric_value, parse_metrics
from runnerkeep.disk.watch import run_watch

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
