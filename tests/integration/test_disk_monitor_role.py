"""The role disk_monitor on a runner container (systemd as PID 1, real timers).

One host with a 64 MiB tmpfs at /srv/small as the budget filesystem. After provision.yml
(runner_base) and the role: the watch timer is enabled and listed by ``systemctl list-timers``;
filling /srv/small step by step and starting runnerkeep-watch.service (what the timer does)
moves the state through warning -> critical -> emergency; the metrics file shows each state;
a webhook receiver on the container's own loopback gets exactly one alert per transition; the
emergency stage frees space and the state returns to ok.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from harness.provision import provision

pytestmark = pytest.mark.integration

MiB = 1024**2
METRICS = "/var/lib/prometheus/node-exporter/runnerkeep_disk.prom"
HOOK_PORT = 18099
RECEIVER = textwrap.dedent(
    """
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with open("/root/alerts.jsonl", "ab") as f:
                f.write(body + b"\\n")
            self.send_response(204)
            self.end_headers()
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _playbook(tmp_path) -> str:
    play = [
        {
            "name": "Disk monitor",
            "hosts": "runners",
            "become": True,
            "gather_facts": False,
            "roles": [
                {
                    "role": "disk_monitor",
                    "vars": {
                        "disk_monitor_webhook_url": f"http://127.0.0.1:{HOOK_PORT}/alerts",
                        "disk_monitor_webhook_timeout": "2s",
                        "disk_monitor_webhook_retries": 1,
                        # The test adds a cleaner root there after the role ran: the hardened
                        # watch unit (ProtectSystem=strict) writes only where it is told.
                        "disk_monitor_writable_paths": ["/srv/small"],
                        "disk_monitor_settings": {
                            "path": "/srv/small",
                            "reserve": "10%",
                            "job_peak_floor": "8MiB",
                            "job_peak_floor_inodes": 1000,
                            "cache_quota_min": 0,
                        },
                    },
                }
            ],
        },
        {
            "name": "Disk facts",
            "hosts": "runners",
            "become": True,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Gather the disk report",
                    "disk_facts": {"docker_details": True, "disk": {"extra_paths": ["/srv/small"]}},
                },
                {
                    "name": "The small disk and the inner engine are in the facts",
                    "ansible.builtin.assert": {
                        "that": [
                            "'/srv/small' in (ansible_facts.runnerkeep_disk.filesystems"
                            " | map(attribute='mount_point'))",
                            "ansible_facts.runnerkeep_disk.docker.available",
                        ]
                    },
                },
            ],
        },
    ]
    path = tmp_path / "disk_monitor.yml"
    path.write_text(json.dumps(play))  # JSON is YAML
    return str(path)


def _metric_state(host) -> str:
    text = host.exec(f"cat {METRICS}").stdout
    states = [
        line.split('state="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("runnerkeep_disk_state{") and line.endswith(" 1")
    ]
    assert len(states) == 1, text
    return states[0]


def test_role_installs_the_timer_and_the_watch_walks_the_watermarks(make_fleet, tmp_path):
    fleet = make_fleet(1, extra_tmpfs={"/srv/small": "64m"})
    host = fleet.hosts[0]
    # Provision without the watch: this test applies disk_monitor itself, check mode first.
    result = provision(fleet, "-e", "disk_monitor_enabled=false")  # a string: roles use | bool
    assert result.returncode == 0, result.stdout[-3000:]
    playbook = _playbook(tmp_path)
    # Check mode first: nothing installed yet, and the run still succeeds without changes.
    checked = fleet.run_playbook(playbook, check=True, quiet=True)
    assert checked.returncode == 0, checked.stdout[-3000:]
    assert host.exec("test -e /etc/systemd/system/runnerkeep-watch.timer", check=False).returncode
    result = fleet.run_playbook(playbook)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Reserve R = 10% of C = 6.4 MiB" in result.stdout  # the budget arithmetic is shown
    again = fleet.run_playbook(playbook, quiet=True)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-2000:]

    timers = host.exec("systemctl list-timers --all --no-pager").stdout
    assert "runnerkeep-watch.timer" in timers
    assert host.exec("systemctl is-enabled runnerkeep-watch.timer").stdout.strip() == "enabled"
    assert host.exec("systemctl is-active runnerkeep-watch.timer").stdout.strip() == "active"

    # Only the tmp cleaner, rooted in the small disk, for the emergency stage in this test.
    host.exec("mkdir -p /srv/small/junk")
    from runnerkeep.cleanup.catalog import builtin_cleaners

    cleaners = {name: {"enabled": False} for name in builtin_cleaners() if name != "tmp"}
    cleaners["tmp"] = {"roots": ["/srv/small/junk"], "min_age": "0s", "emergency_min_age": "0s"}
    host.exec(
        "cat > /etc/runnerkeep/config.d/90-test.json",
        input=json.dumps({"cleanup": {"cleaners": cleaners}}),
    )
    host.exec("cat > /root/receiver.py", input=RECEIVER)
    host.exec(["sh", "-c", f"nohup python3 /root/receiver.py {HOOK_PORT} >/dev/null 2>&1 &"])
    host.exec(
        f"for i in $(seq 50); do python3 -c 'import socket; socket.create_connection("
        f'("127.0.0.1", {HOOK_PORT}), 1)\' && exit 0; sleep 0.1; done; exit 1'
    )
    # Stop the timer so only our explicit cycles run.
    host.exec("systemctl stop runnerkeep-watch.timer")
    host.exec("systemctl start runnerkeep-watch.service")
    assert _metric_state(host) == "ok"

    def fill_to(free_mib: int, n: int) -> None:
        host.exec(
            'python3 -c \'import os; s=os.statvfs("/srv/small"); '
            f"need=s.f_bavail*s.f_frsize-{free_mib * MiB}; "
            f'open("/srv/small/junk/f{n}", "wb").write(b"x"*need)\''
        )

    for n, (free_mib, expected) in enumerate(((18, "warning"), (10, "critical"), (3, "emergency"))):
        fill_to(free_mib, n)
        host.exec("systemctl start runnerkeep-watch.service", timeout=300)
        assert _metric_state(host) == expected
    host.exec("systemctl start runnerkeep-watch.service", timeout=300)
    assert _metric_state(host) == "ok"
    metrics = host.exec(f"cat {METRICS}").stdout
    assert "runnerkeep_disk_emergency_cleanups_total 1" in metrics

    bodies = [json.loads(line) for line in host.exec("cat /root/alerts.jsonl").stdout.splitlines()]
    changes = [(b["previous"], b["state"]) for b in bodies if b["event"] == "disk_state_change"]
    assert changes == [
        ("ok", "warning"),
        ("warning", "critical"),
        ("critical", "emergency"),
        ("emergency", "ok"),
    ]
    cleanups = [b for b in bodies if b["event"] == "emergency_cleanup"]
    assert len(cleanups) == 1 and cleanups[0]["cleanup"]["ok"], cleanups

    # Disabling the role removes the timer.
    result = fleet.run_playbook(playbook, extra_vars={"disk_monitor_enabled": False}, quiet=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "runnerkeep-watch" not in host.exec("systemctl list-timers --all --no-pager").stdout
