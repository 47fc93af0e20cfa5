"""Alerts through the monitoring stack users already run, end to end.

A runner container with a 64 MiB tmpfs at /srv/small as its budget filesystem runs
`runnerkeep disk watch` (the zipapp, as runner_base installs it) and Debian's
prometheus-node-exporter, whose textfile collector serves the watch's metrics file. On this
machine, a real Prometheus (Debian's ``prometheus``, a plain process with a temp config and data
dir, listening on loopback) scrapes the container over the Docker bridge and evaluates
monitoring/prometheus/runnerkeep-rules.yml; a real Alertmanager (``prometheus-alertmanager``,
loopback, no cluster port) routes with monitoring/alertmanager/runnerkeep-example.yml to a
webhook receiver on loopback. Filling the runner's disk makes RunnerkeepDiskCritical arrive at
the receiver; freeing it resolves it.

Only the rules' ``for:`` hold times are cut to 1s, and scrape and evaluation run every second,
so the test takes seconds, not minutes; every wait is bounded. The runner image may lack
prometheus-node-exporter: then it is installed with apt at
test time, which needs the Debian mirror.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import runnerkeep
import yaml
from harness import REPO_ROOT
from harness._docker import docker
from harness.webhook_sink import webhook_sink

pytestmark = pytest.mark.integration

MiB = 1024**2
MONITORING = Path(REPO_ROOT) / "monitoring"
PYZ = Path(REPO_ROOT) / "dist" / "runnerkeep.pyz"
NODE_EXPORTER_PORT = 9100
CONFIG = "/root/rk/config.json"
RK_CONFIG = {
    "paths": {
        "cache_dir": "/srv/small/cache",
        "state_dir": "/root/rk/state",
        "log_dir": "/root/rk/log",
    },
    # The budget of tests/integration/test_disk_monitor_role.py on the same 64 MiB disk:
    # warning below ~19 MiB free, critical below ~13 MiB, emergency below ~6 MiB.
    "disk": {
        "path": "/srv/small",
        "reserve": "10%",
        "job_peak_floor": "8MiB",
        "job_peak_floor_inodes": 1000,
        "cache_quota_min": 0,
        "watch_docker": False,
        "emergency_cleanup": False,
        "syslog": False,
    },
}
WAIT_SECONDS = 40


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    """``check()``'s first truthy value, polled every 0.5 s; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.5) + 2):
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f}s", pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def shortened_rules(tmp_path: Path) -> Path:
    """The shipped rules with every ``for:`` hold time cut to 1s."""
    text = (MONITORING / "prometheus" / "runnerkeep-rules.yml").read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^(\s+for: )\S+$", r"\g<1>1s", text)
    assert count >= 5
    path = tmp_path / "runnerkeep-rules.yml"
    path.write_text(text, encoding="utf-8")
    return path


def alertmanager_config(tmp_path: Path, receiver_url: str) -> Path:
    """The example config: its routes and inhibitions, our receiver, one-second grouping."""
    example = MONITORING / "alertmanager" / "runnerkeep-example.yml"
    config = yaml.safe_load(example.read_text(encoding="utf-8"))
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    (receiver,) = config["receivers"]
    receiver["webhook_configs"][0]["url"] = receiver_url
    path = tmp_path / "alertmanager.yml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def prometheus_config(tmp_path: Path, target: str, am_port: int, runner: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(shortened_rules(tmp_path))],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": "node",
                # only the textfile collector: what runnerkeep writes
                "params": {"collect[]": ["textfile"]},
                "static_configs": [{"targets": [target], "labels": {"runner": runner}}],
            }
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


class Server:
    """A Prometheus or Alertmanager process this test started, ended by its own Popen."""

    def __init__(self, argv: list[str], log: Path, port: int) -> None:
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def ready(self) -> None:
        def answer() -> bool:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            return http_get(self.url + "/-/ready")[0] == 200

        wait_for(f"answer from {self.url}", answer)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def start_alertmanager(tmp_path: Path, receiver_url: str, servers: list[Server]) -> Server:
    assert shutil.which("prometheus-alertmanager"), (
        "prometheus-alertmanager not found: apt-get install -y prometheus-alertmanager"
    )
    port = free_port()
    argv = [
        "prometheus-alertmanager",
        f"--config.file={alertmanager_config(tmp_path, receiver_url)}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single instance on loopback
        "--log.level=warn",
    ]
    server = Server(argv, tmp_path / "alertmanager.log", port)
    servers.append(server)
    server.ready()
    return server


def start_prometheus(tmp_path: Path, config: Path, port: int, servers: list[Server]) -> Server:
    assert shutil.which("prometheus"), "prometheus not found: apt-get install -y prometheus"
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    server = Server(argv, tmp_path / "prometheus.log", port)
    servers.append(server)
    server.ready()
    return server


def query(prometheus: Server, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(
        prometheus.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    )
    return json.loads(body)["data"]["result"] if status == 200 else []


def notifications(sink: Any, alertname: str, status: str) -> list[dict[str, Any]]:
    """The alerts of ``alertname`` in ``status`` the receiver got from Alertmanager."""
    return [
        alert
        for body in list(sink.received)
        for alert in body.get("alerts", [])
        if alert["labels"].get("alertname") == alertname and alert["status"] == status
    ]


def setup_runner(host: Any) -> None:
    """node_exporter running with its textfile collector, and the runnerkeep zipapp."""
    host.exec(
        "command -v prometheus-node-exporter >/dev/null || "
        "(apt-get update -qq && apt-get install -y -qq --no-install-recommends "
        "prometheus-node-exporter) >/tmp/node-exporter-install.log 2>&1 "
        "|| { tail -20 /tmp/node-exporter-install.log; exit 1; }",
        timeout=300,
    )
    host.exec("systemctl start prometheus-node-exporter")
    assert PYZ.is_file(), "build the zipapp first: python3 tools/build_zipapp.py"
    host.copy_to(PYZ, "/root/runnerkeep.pyz")
    host.exec(f"mkdir -p /root/rk && cat > {CONFIG}", input=json.dumps(RK_CONFIG))


def watch(host: Any) -> str:
    """One watch cycle on the runner; the state it decided."""
    proc = host.exec(
        f"python3 /root/runnerkeep.pyz disk watch --config {CONFIG} --json", check=False
    )
    return json.loads(proc.stdout)["state"]


def fill_to(host: Any, free_mib: int) -> None:
    host.exec(
        'mkdir -p /srv/small/junk && python3 -c \'import os; s=os.statvfs("/srv/small"); '
        f"need=s.f_bavail*s.f_frsize-{free_mib * MiB}; "
        'open("/srv/small/junk/fill", "wb").write(b"x"*need)\''
    )


def test_a_full_runner_disk_alerts_through_prometheus_and_alertmanager(
    make_fleet, tmp_path, servers
):
    fleet = make_fleet(1, extra_tmpfs={"/srv/small": "64m"})
    host = fleet.hosts[0]
    setup_runner(host)
    address = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", host.container
    ).stdout.strip()
    target = f"{address}:{NODE_EXPORTER_PORT}"
    assert watch(host) == "ok"
    # node_exporter serves the watch's file
    wait_for(
        "runnerkeep metrics from node_exporter",
        lambda: b"runnerkeep_disk_state_level 0" in http_get(f"http://{target}/metrics")[1],
    )

    with webhook_sink() as sink:
        alertmanager = start_alertmanager(tmp_path, sink.url, servers)
        config = prometheus_config(tmp_path, target, int(alertmanager.url.rsplit(":", 1)[1]),
                                   host.name)  # fmt: skip
        prometheus = start_prometheus(tmp_path, config, free_port(), servers)

        # Scraped, with the labels Prometheus adds, and the build info with it.
        wait_for(
            "disk state ok in Prometheus",
            lambda: query(prometheus, f'runnerkeep_disk_state_level{{runner="{host.name}"}} == 0'),
        )
        (build,) = query(prometheus, "runnerkeep_build_info")
        assert build["metric"]["version"] == runnerkeep.__version__
        assert build["metric"]["instance"] == target
        # The rules are loaded and, on a healthy disk, nothing fires.
        groups = json.loads(http_get(prometheus.url + "/api/v1/rules")[1])["data"]["groups"]
        assert {group["name"] for group in groups} == {"runnerkeep.recording", "runnerkeep.alerts"}
        time.sleep(3)  # several evaluations and Alertmanager group waits
        assert not query(prometheus, 'ALERTS{alertname=~"RunnerkeepDisk.*"}')
        assert sink.received == []

        # The disk fills: the watch says critical, the alert reaches the receiver.
        fill_to(host, 10)
        assert watch(host) == "critical"
        (fired,) = wait_for(
            "RunnerkeepDiskCritical at the receiver",
            lambda: notifications(sink, "RunnerkeepDiskCritical", "firing"),
        )
        assert fired["labels"]["instance"] == target
        assert fired["labels"]["runner"] == host.name
        assert fired["labels"]["severity"] == "critical"
        assert fired["annotations"]["summary"] == (
            f"{target}: runner disk below the critical watermark"
        )
        assert not notifications(sink, "RunnerkeepDiskWarning", "firing")

        # Space comes back: the watch says ok, the alert resolves at the receiver.
        host.exec("rm -rf /srv/small/junk")
        assert watch(host) == "ok"
        (resolved,) = wait_for(
            "RunnerkeepDiskCritical resolved at the receiver",
            lambda: notifications(sink, "RunnerkeepDiskCritical", "resolved"),
        )
        assert resolved["labels"]["instance"] == target
        assert not query(prometheus, 'ALERTS{alertname=~"RunnerkeepDisk.*"}')
