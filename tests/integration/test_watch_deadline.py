"""The watch's deadline against a DNS server that never answers, and cooldowns on a really
read-only state dir (root, private network and mount namespaces, no Docker).

Each case runs a small Python script under ``unshare -n -m --propagation private``: loopback
only, ``/etc/resolv.conf`` bind-mounted (in that namespace only) to point at a UDP socket on
127.0.0.1:53 that reads queries and never answers. The webhook URL names a host, so every
attempt starts with a lookup that glibc would wait on for minutes (``timeout:30``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GiB = 1024**3

# Runs inside the namespaces. argv: config path, output path, mode ("dns" or "ro").
SCRIPT = textwrap.dedent(
    """
    import json, socket, sys, threading, time
    sys.path[:0] = [sys.argv[4] + "/module_utils", sys.argv[4] + "/cli"]
    from runnerkeep.disk import watch
    from runnerkeep.disk.budget import BudgetInputs

    GiB = 1024 ** 3
    config = json.load(open(sys.argv[1]))
    queries = []

    def silent_dns():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 53))
        while True:
            sock.recvfrom(4096)
            queries.append(time.monotonic())

    threading.Thread(target=silent_dns, daemon=True).start()
    time.sleep(0.1)
    watch.measure_inputs = lambda cfg: BudgetInputs(
        path="/fake", capacity_bytes=100 * GiB, capacity_inodes=10**6, peaks_bytes=[],
        peaks_inodes=[], cache_bytes=0, cache_logical_bytes=0, free_bytes=2 * GiB,
        free_inodes=900000,
    )
    cleaned = []
    def cleanup(stage, cfg, **kw):
        cleaned.append(time.monotonic())
        return {}

    started = time.monotonic()
    result = watch.run_watch(config, cleanup_func=cleanup)
    took = time.monotonic() - started
    json.dump({
        "took": took,
        "queries": [q - started for q in queries],
        "cleaned": [c - started for c in cleaned],
        "alerts": [a["event"] for a in result["alerts"]],
        "webhook": [a.get("webhook") for a in result["alerts"]],
        "state": result["state"],
        "errors": result["errors"],
    }, open(sys.argv[2], "w"))
    """
)

WRAPPER = """
set -e
ip link set lo up
mount --bind "$RESOLV" /etc/resolv.conf
mount --bind "$NSSWITCH" /etc/nsswitch.conf
if [ -n "$READ_ONLY" ]; then
    mount --bind "$READ_ONLY" "$READ_ONLY"
    mount -o remount,bind,ro "$READ_ONLY"
fi
for run in $RUNS; do
    "$PYTHON" "$SCRIPT" "$CONFIG" "$OUT.$run" x "$REPO"
done
"""


def _can_unshare() -> bool:
    return os.geteuid() == 0 and all(shutil.which(p) for p in ("unshare", "ip", "mount"))


@pytest.fixture
def namespace_runner(tmp_path):
    if not _can_unshare():
        pytest.skip("needs root, unshare(1), ip(8) and mount(8)")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:3\n")
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("hosts: files dns\n")
    script = tmp_path / "cycle.py"
    script.write_text(SCRIPT)

    def run(config: dict, runs: int = 1, read_only: str = "", env: dict | None = None):
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        out = tmp_path / "out"
        environ = {
            **os.environ,
            "RESOLV": str(resolv),
            "NSSWITCH": str(nsswitch),
            "READ_ONLY": read_only,
            "RUNS": " ".join(str(i) for i in range(runs)),
            "PYTHON": sys.executable,
            "SCRIPT": str(script),
            "CONFIG": str(config_path),
            "OUT": str(out),
            "REPO": str(REPO),
            **(env or {}),
        }
        proc = subprocess.run(
            ["unshare", "-n", "-m", "--propagation", "private", "sh", "-c", WRAPPER],
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        return [json.loads((tmp_path / f"out.{i}").read_text()) for i in range(runs)]

    return run


def _config(tmp_path, **disk) -> dict:
    return {
        "paths": {
            "cache_dir": str(tmp_path / "cache"),
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
        },
        "disk": {
            "textfile_dir": str(tmp_path / "textfile"),
            "watch_docker": False,
            "syslog": False,
            "job_peak_floor": "10GiB",
            "cache_quota_min": 0,
            "emergency_cleanup": True,
            **disk,
        },
    }


def test_a_silent_dns_server_cannot_stretch_the_cycle(tmp_path, namespace_runner):
    config = _config(
        tmp_path,
        webhook_url="http://alerts.runnerkeep-test.internal:8080/hook",
        watch_timeout="3s",
        webhook_timeout="2s",
        webhook_retries=2,
    )
    (out,) = namespace_runner(config)
    assert out["took"] < 3 + 2, out
    assert out["queries"], "the webhook lookup never reached the silent DNS server"
    assert out["state"] == "emergency"
    assert out["cleaned"] and out["cleaned"][0] < out["queries"][0]
    assert out["alerts"] == ["disk_state_change", "emergency_cleanup"]
    assert not out["webhook"][0]["ok"]


def test_a_read_only_state_dir_does_not_alert_or_clean_twice(tmp_path, namespace_runner):
    state = tmp_path / "state"
    state.mkdir()
    config = _config(tmp_path, emergency_cleanup_cooldown="1h")
    runs = namespace_runner(
        config,
        runs=2,
        read_only=str(state),
        env={"RUNNERKEEP_RUN_DIR": str(tmp_path / "run")},
    )
    assert runs[0]["alerts"] == ["disk_state_change", "emergency_cleanup"]
    assert any("cannot save watch state" in e for e in runs[0]["errors"])
    assert runs[1]["alerts"] == [] and runs[1]["cleaned"] == []
    assert runs[1]["state"] == "emergency"
    assert os.listdir(state) == []
