"""playbooks/fleet_report.yml on the provisioned runner fleet plus one unreachable inventory
host (with a hostile name), and the page opened in Debian's headless Chromium.

The runners get something to show first: job peaks recorded by the disk hooks, a pre-stage
cleanup, a drain record (the file the admission-control part writes) and quarantine lines on
one of them. What this test seeds is removed again: the session fleet is shared.

The browser checks: every inventory host is in the DOM Chromium built (as text, the hostile
name never as markup), no script ran or failed and nothing was fetched (Chromium's console log
on stderr), and the screenshot is a PNG of the window's size that is not blank.

Hostile hosts (no fleet needed): the real module through ansible-playbook on localhost with one
host's fleet-facts output nested 100,000 deep, one with sizes of 10**400 and one with bare URLs;
check mode writes nothing, and both runs keep the other hosts' rows.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PLAYBOOK = "playbooks/fleet_report.yml"
WINDOW = (1280, 2000)
# A hostile inventory name: the page must show it as text.
GONE = "gone<script>alert(1)</script>"
DRAIN = "/var/lib/runnerkeep/drain.json"
QUARANTINE_LOG = "/var/cache/runnerkeep/images/quarantine/log.jsonl"
CHROMIUM_TIMEOUT = 120

JOBS = r"""
set -e
for i in 1 2 3 4 5 6; do
  runnerkeep disk job-start --job-id fleet-report-$i --no-sampler >/dev/null
  head -c $((i * 4))M /dev/zero > /var/cache/runnerkeep/fleet-report-job.bin
  runnerkeep disk job-end --job-id fleet-report-$i >/dev/null
  rm -f /var/cache/runnerkeep/fleet-report-job.bin
done
runnerkeep cleanup --stage pre --all --json >/dev/null
"""


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unreachable_inventory(directory: Path) -> Path:
    path = directory / "unreachable.yml"
    host = {
        "ansible_host": "127.0.0.1",
        "ansible_port": _closed_port(),
        "ansible_user": "root",
        "ansible_connection": "ssh",
    }
    inventory = {"all": {"children": {"runners": {"hosts": {GONE: host}}}}}
    path.write_text(json.dumps(inventory))  # JSON is YAML
    return path


def _seed(fleet) -> None:
    first, second = fleet.hosts[0], fleet.hosts[1]
    first.exec(JOBS, timeout=300)
    drain = {"drained": True, "reason": "job needs 9.0 GiB free on /, 4.1 GiB there"}
    # Drained a minute ago: well inside admission.settle_time (10m), so the runner's watch
    # timer, which runs every minute, cannot bring it back while the report is gathered
    # (drained 15 minutes ago, it did when the host's disk state had been ok that long).
    drain["since"] = time.time() - 60
    second.exec(f"cat > {DRAIN}", input=json.dumps(drain))
    lines = "".join(
        json.dumps({"time": time.time() - n, "what": "blob", "reason": "digest mismatch"}) + "\n"
        for n in range(3)
    )
    # As the store's owner, as verify and the scrub write it: a directory root made there would
    # be one the next provision run gives back to runnerkeep (a change on a second run).
    second.exec(
        f"mkdir -p $(dirname {QUARANTINE_LOG}) && cat >> {QUARANTINE_LOG}",
        input=lines,
        user="runnerkeep",
    )


def _unseed(fleet) -> None:
    fleet.hosts[1].exec(f"rm -f {DRAIN} {QUARANTINE_LOG}", check=False)


class _Dom(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.hosts: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hosts += [value for name, value in attrs if name == "data-host"]

    def handle_data(self, data):
        self.text.append(data)


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "chromium not found: apt-get install chromium (tests/harness/engine.py)"
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT,
        check=False,
    )


def _console_problems(stderr: str) -> list[str]:
    """Lines of Chromium's log that report a script error, a console error or a blocked load."""
    markers = ("Uncaught", "CONSOLE", "Refused to", "net::ERR_")
    return [line for line in stderr.splitlines() if any(m in line for m in markers)]


def _png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct scanlines) of a PNG, read with zlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    channels = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
    stride = 1 + width * channels * depth // 8
    rows = {raw[i : i + stride] for i in range(0, len(raw), stride)}
    return width, height, len(rows)


def test_fleet_report_in_headless_chromium(provisioned_fleet, tmp_path):
    fleet = provisioned_fleet
    _seed(fleet)
    try:
        report_dir = tmp_path / "report"
        run = fleet.run_playbook(
            PLAYBOOK,
            "-i",
            str(_unreachable_inventory(tmp_path)),
            extra_vars={"fleet_report_dir": str(report_dir)},
            timeout=600,
        )
    finally:
        _unseed(fleet)
    assert run.returncode == 0, run.stdout + run.stderr
    names = [host.name for host in fleet.hosts] + [GONE]

    model = json.loads((report_dir / "fleet-report.json").read_text())
    rows = {row["name"]: row for row in model["hosts"]}
    assert sorted(rows) == sorted(names)
    assert rows[GONE]["status"] == "unreachable"
    for host in fleet.hosts:
        assert rows[host.name]["status"] == "ok", rows[host.name]
        assert rows[host.name]["disk"]["free_bytes"] > 0
        assert rows[host.name]["cache"]["quota_bytes"] > 0
    seeded, drained = rows[fleet.hosts[0].name], rows[fleet.hosts[1].name]
    assert len(seeded["job_peaks"]["values"]) >= 6
    assert seeded["last_cleanup"]["stage"] == "pre"
    assert drained["drain"]["drained"] is True
    assert drained["corruption"] == {
        "count": 3,
        "quarantined": 3,
        "suspect_disk": True,
        "last_time": drained["corruption"]["last_time"],
    }
    # Drained with a suspect disk outranks a healthy runner; nothing is dropped.
    order = [row["name"] for row in model["hosts"]]
    assert order.index(fleet.hosts[1].name) < order.index(fleet.hosts[0].name)
    markdown = (report_dir / "fleet-report.md").read_text()
    assert all(f"| {row['rank']} |" in markdown for row in model["hosts"])

    page = (report_dir / "index.html").resolve()
    profile = tmp_path / "chromium-profile"
    dom_run = _chromium("--dump-dom", page.as_uri(), profile=profile)
    assert dom_run.returncode == 0, dom_run.stderr[-3000:]
    dom = _Dom()
    dom.feed(dom_run.stdout)
    assert sorted(dom.hosts) == sorted(names)
    assert "script" not in dom.tags, "the hostile host name became markup"
    assert any(GONE in text for text in dom.text)
    # A disk and a cache bar per runner; the runner with job peaks has their sparkline.
    assert dom.tags.count("svg") == 2 * len(fleet.hosts) + 1
    assert "polyline" in dom.tags
    assert _console_problems(dom_run.stderr) == []

    screenshot = tmp_path / "fleet-report.png"
    shot = _chromium(
        f"--screenshot={screenshot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
        page.as_uri(),
        profile=profile,
    )
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert _console_problems(shot.stderr) == []
    width, height, distinct_rows = _png_facts(screenshot)
    assert (width, height) == WINDOW
    assert distinct_rows > 100, "the screenshot is (nearly) blank"
    print(f"\nfleet report screenshot: {screenshot}")


REPO = Path(__file__).resolve().parents[2]
HOSTILE_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Fleet report with hostile hosts
      runnerkeep.runner.fleet_report:
        results: "{{ hostile_results }}"
        dest: "{{ report_dest }}"
      register: report
    - name: Keep what the module said (a test artefact, written in check mode too)
      ansible.builtin.copy:
        content: "{{ report | to_json }}"
        dest: "{{ result_file }}"
      check_mode: false
"""


def _facts_stdout(**changes) -> str:
    facts = {"format": 1, "version": "0.1.0", "time": time.time() - 30}
    facts["budget"] = {
        "capacity_bytes": 100 << 30,
        "free_bytes": 40 << 30,
        "warning_free_bytes": 13 << 30,
        "critical_free_bytes": 9 << 30,
        "emergency_free_bytes": 5 << 30,
    }
    facts.update(changes)
    return json.dumps(facts)


def _hostile_results() -> dict:
    def result(stdout: str) -> dict:
        return {"rc": 0, "stdout": stdout, "stderr": "", "changed": False}

    huge = {"capacity_bytes": 10**400, "free_bytes": 1, "warning_free_bytes": 1}
    link = {"drained": True, "reason": "see https://evil.example/x or www.evil.example"}
    return {
        "runner-good": result(_facts_stdout()),
        "runner-deep": result("[" * 100_000 + "]" * 100_000),
        "runner-huge": result(_facts_stdout(budget=huge, cache={"disk_bytes": 10**400})),
        "runner-link": result(_facts_stdout(drain=link)),
    }


def _run_hostile_play(tmp_path: Path, dest: Path, check: bool) -> dict:
    playbook = shutil.which("ansible-playbook") or os.path.join(
        os.path.dirname(sys.executable), "ansible-playbook"
    )
    play = tmp_path / "hostile.yml"
    play.write_text(HOSTILE_PLAY)
    result_file = tmp_path / ("check.json" if check else "run.json")
    extra = tmp_path / "extra.json"
    variables = {"hostile_results": _hostile_results(), "report_dest": str(dest)}
    variables["result_file"] = str(result_file)
    extra.write_text(json.dumps(variables))  # 10**400 travels inside a string, as a host sends it
    cmd = [playbook, "-i", "localhost,", "-c", "local", str(play), "-e", f"@{extra}"]
    cmd += ["-e", f"ansible_python_interpreter={sys.executable}"]
    cmd += ["--check"] if check else []
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    run = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    return json.loads(result_file.read_text())


def test_hostile_hosts_cost_only_their_own_rows(tmp_path):
    dest = tmp_path / "report"
    checked = _run_hostile_play(tmp_path, dest, check=True)
    assert not dest.exists(), "check mode wrote the report"
    statuses = {host["name"]: host["status"] for host in checked["hosts"]}
    assert statuses == {
        "runner-good": "ok",
        "runner-deep": "error",
        "runner-huge": "error",
        "runner-link": "ok",
    }

    written = _run_hostile_play(tmp_path, dest, check=False)
    assert written["changed"] is True
    model = json.loads((dest / "fleet-report.json").read_text())
    rows = {row["name"]: row for row in model["hosts"]}
    assert rows["runner-good"]["disk"]["free_bytes"] == 40 << 30
    assert rows["runner-deep"]["message"].startswith("fleet-facts printed no usable JSON")
    assert "a number above" in rows["runner-huge"]["message"]
    markdown = (dest / "fleet-report.md").read_text()
    assert "runner-link" in markdown and "evil" in markdown
    assert not re.search(r"(?i)://|www\.", markdown), "host text became a link"
    assert "runner-good" in (dest / "index.html").read_text()
