#!/usr/bin/env python3
"""What a fleet run costs per host (`nox -s scale -- --runners N`): controller and remote CPU.

    python tools/scale.py --runners 3                  # one fleet of 3
    python tools/scale.py --runners 1,3,10 --json build/scale.json
    python tools/scale.py --runners 3,10 --baseline docs/scale-before.json --check-targets

For each N, N runner containers (tests/harness/fleet.py) are started and these runs measured:
provision (first run, then a no-change second run), maintain.yml, fleet_report.yml, and a
fleet-wide cache save + restore (cache_save.yml / cache_restore.yml of one small image).

On this machine every container shares the same cores, so wall time for N hosts says little
about a real fleet. What carries over:
- controller CPU: user+sys of ansible-playbook, its forks and its SSH clients. This process is
  a child subreaper, so ControlPersist masters (which daemonize) are reparented here; after each
  run they are told to exit and reaped, and RUSAGE_CHILDREN's delta holds all of them;
- remote CPU per host: the container's cgroup CPU counter (cgroup v1 cpuacct.usage, v2
  cpu.stat usage_usec), read on this machine under /sys/fs/cgroup.
The marginal cost per host is the slope between the two largest N measured (3 and 10).
An idle window before the runs gives each host's background CPU rate (timers, dockerd): the
noise floor of the remote figures, reported and not subtracted.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness._docker import docker_bin  # noqa: E402
from harness.fleet import Fleet, FleetError, HostCommandError, RunnerHost  # noqa: E402
from harness.provision import FLEET_VARS  # noqa: E402

PHASES = (
    "provision_first",
    "provision_again",
    "maintain",
    "fleet_report",
    "cache_save",
    "cache_restore",
)
CACHE_KEY = "scale-probe"
CACHE_IMAGE = "scale/probe:1"
# One small image (FROM scratch, one random layer), built in each runner's own engine: no
# registry needed, and big enough that a restore really loads and verifies a layer.
BUILD_PROBE = f"""
set -e
rm -rf /tmp/scale-probe && mkdir -p /tmp/scale-probe && cd /tmp/scale-probe
head -c 4M /dev/urandom > blob.bin
printf 'FROM scratch\\nCOPY blob.bin /blob.bin\\n' > Dockerfile
docker build -q -t {CACHE_IMAGE} . >/dev/null
cd / && rm -rf /tmp/scale-probe
"""
IDLE_SECONDS = 5.0
REAP_SECONDS = 15.0
PR_SET_CHILD_SUBREAPER = 36
_RECAP_RE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$")

# Targets of issue 13 (checked when 3 and 10 are in the same run): marginal controller CPU
# per host of a no-change / first provision run, and maintain.yml's wall time on 10 runners.
TARGETS = (
    ("provision_again", "controller_cpu_s_per_host", 1.0),
    ("provision_first", "controller_cpu_s_per_host", 2.0),
)
MAINTAIN_WALL_10 = 60.0


class ScaleError(RuntimeError):
    """The measurement could not be made (message says what and what to do)."""


# ------------------------------------------------------------------ controller CPU


def become_subreaper() -> bool:
    """Make orphaned descendants (daemonized SSH masters) children of this process."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def children_cpu() -> float:
    """user+sys seconds of every child reaped so far (and their reaped descendants)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child_pids() -> list[int]:
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            pids.append(int(entry.name))
    return pids


def close_ssh_masters(control_dir: Path) -> None:
    """Ask each ControlPersist master under ``control_dir`` to exit, so its CPU is counted."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "scale-probe"],
            capture_output=True,
            timeout=15,
            check=False,
        )


def reap_orphans(deadline_s: float = REAP_SECONDS) -> None:
    """Wait for every child left (the masters told to exit); TERM the ones that linger."""
    end = time.monotonic() + deadline_s
    termed = False
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        if time.monotonic() > end:
            if termed:
                return
            for pid in _child_pids():  # only our own children, by id
                os.kill(pid, signal.SIGTERM)
            termed, end = True, time.monotonic() + 5
        time.sleep(0.05)


# ---------------------------------------------------------------------- remote CPU


def _cgroup_candidates(container_id: str, pid: int) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    paths = [
        base / "cpuacct" / "docker" / container_id / "cpuacct.usage",
        base / "cpu,cpuacct" / "docker" / container_id / "cpuacct.usage",
        base / "system.slice" / f"docker-{container_id}.scope" / "cpu.stat",
        base / "docker" / container_id / "cpu.stat",
    ]
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            hid, ctrls, rel = line.split(":", 2)
            if hid == "0":
                paths.append(base / rel.lstrip("/") / "cpu.stat")
            elif "cpuacct" in ctrls.split(","):
                paths.append(base / "cpuacct" / rel.lstrip("/") / "cpuacct.usage")
    except (OSError, ValueError):
        pass
    return paths


def cgroup_counter(host: RunnerHost) -> Path:
    """The file holding ``host``'s container CPU time on this machine."""
    proc = subprocess.run(
        [docker_bin(), "inspect", "--format", "{{.Id}} {{.State.Pid}}", host.container],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise ScaleError(f"docker inspect {host.container} failed: {proc.stderr.strip()}")
    cid, pid = proc.stdout.split()
    for path in _cgroup_candidates(cid, int(pid)):
        if path.is_file():
            return path
    raise ScaleError(
        f"no CPU counter for {host.container} under /sys/fs/cgroup (looked for cpuacct.usage "
        "and cpu.stat of docker/<id>): run where the engine's cgroups are visible"
    )


def read_cpu_seconds(counter: Path) -> float:
    """CPU seconds in a cgroup v1 cpuacct.usage (ns) or v2 cpu.stat (usage_usec) file."""
    text = counter.read_text()
    if counter.name == "cpuacct.usage":
        return int(text.strip()) / 1e9
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ScaleError(f"{counter}: no usage_usec line")


# ------------------------------------------------------------------------ measuring


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counts per host: {host: {ok, changed, unreachable, failed, ...}}."""
    counts: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        m = _RECAP_RE.match(line.strip()) if in_recap else None
        if m:
            counts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return counts


class Meter:
    """Measures runs on one fleet: wall, controller CPU, each host's container CPU."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.counters = {h.name: cgroup_counter(h) for h in fleet.hosts}

    def remote(self) -> dict[str, float]:
        return {name: read_cpu_seconds(path) for name, path in self.counters.items()}

    def idle_rate(self, seconds: float = IDLE_SECONDS) -> float:
        """Mean background CPU seconds per second per host (the remote noise floor)."""
        before = self.remote()
        time.sleep(seconds)
        after = self.remote()
        return sum(after[h] - before[h] for h in before) / len(before) / seconds

    def measure(self, phase: str, run: Callable[[], subprocess.CompletedProcess]) -> dict:
        close_ssh_masters(self.fleet.workdir / "cp")
        reap_orphans()
        remote0, cpu0, t0 = self.remote(), children_cpu(), time.monotonic()
        proc = run()
        wall = time.monotonic() - t0
        close_ssh_masters(self.fleet.workdir / "cp")
        reap_orphans()
        cpu, remote1 = children_cpu() - cpu0, self.remote()
        remote = {h: round(remote1[h] - remote0[h], 3) for h in remote0}
        recap = parse_recap(proc.stdout)
        figures = {
            "rc": proc.returncode,
            "wall_s": round(wall, 2),
            "controller_cpu_s": round(cpu, 3),
            "remote_cpu_s": remote,
            "remote_cpu_total_s": round(sum(remote.values()), 3),
            "recap": {h: recap.get(h, {}) for h in remote},
            # Other work on this machine slows the runs (and the controller's polling costs CPU
            # while it waits): the 1-minute load average when the run ended, for the record.
            "loadavg_1m": round(os.getloadavg()[0], 1),
        }
        print(
            f"scale: N={len(remote)} {phase}: rc={proc.returncode} wall {wall:.1f}s, "
            f"controller {cpu:.2f}s, remote {figures['remote_cpu_total_s']:.2f}s",
            flush=True,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            print(f"scale: {phase} failed (rc={proc.returncode}):\n{tail}", file=sys.stderr)
        return figures


def _on_each_host(fleet: Fleet, script: str) -> None:
    with ThreadPoolExecutor(max_workers=min(8, len(fleet.hosts))) as pool:
        list(pool.map(lambda h: h.exec(script, timeout=300), fleet.hosts))


def measure_fleet(fleet: Fleet, phases: tuple[str, ...] = PHASES) -> dict[str, Any]:
    """Every phase on ``fleet``, in order; a phase whose playbook fails is recorded as such."""
    quiet = {"quiet": True}
    meter = Meter(fleet)
    out: dict[str, Any] = {"n": len(fleet.hosts), "idle_remote_cpu_s_per_host_per_s": 0.0}
    out["idle_remote_cpu_s_per_host_per_s"] = round(meter.idle_rate(), 4)
    report_dir = fleet.workdir / "fleet-report"
    cache_vars = {"cache_key": CACHE_KEY, "cache_images": [CACHE_IMAGE]}
    runs: dict[str, Callable[[], subprocess.CompletedProcess]] = {
        "provision_first": lambda: fleet.run_playbook(
            "playbooks/provision.yml", extra_vars=FLEET_VARS, **quiet
        ),
        "provision_again": lambda: fleet.run_playbook(
            "playbooks/provision.yml", extra_vars=FLEET_VARS, **quiet
        ),
        "maintain": lambda: fleet.run_playbook("playbooks/maintain.yml", **quiet),
        "fleet_report": lambda: fleet.run_playbook(
            "playbooks/fleet_report.yml", extra_vars={"fleet_report_dir": str(report_dir)}, **quiet
        ),
        "cache_save": lambda: fleet.run_playbook(
            "playbooks/cache_save.yml", extra_vars=cache_vars, **quiet
        ),
        "cache_restore": lambda: fleet.run_playbook(
            "playbooks/cache_restore.yml", extra_vars={"cache_key": CACHE_KEY}, **quiet
        ),
    }
    out["phases"] = {}
    for phase in phases:
        if phase == "cache_save":
            _on_each_host(fleet, BUILD_PROBE)
        if phase == "cache_restore":  # an empty daemon: the restore really loads
            _on_each_host(fleet, f"docker rmi -f {CACHE_IMAGE} >/dev/null")
        out["phases"][phase] = meter.measure(phase, runs[phase])
    return out


# ------------------------------------------------------------------------- figures


def per_host(run: dict, phase: str, key: str) -> float:
    fig = run["phases"][phase]
    value = fig["remote_cpu_total_s"] if key == "remote" else fig[key]
    return value / run["n"]


def marginal(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Slope per host between the two largest fleets: (cost(b) - cost(a)) / (b - a)."""
    sized = sorted(runs, key=lambda r: r["n"])
    if len(sized) < 2 or sized[-1]["n"] == sized[-2]["n"]:
        return {}
    a, b = sized[-2], sized[-1]
    span = b["n"] - a["n"]
    out = {}
    for phase in b["phases"]:
        if phase not in a["phases"]:
            continue
        pa, pb = a["phases"][phase], b["phases"][phase]
        out[phase] = {
            "from_n": a["n"],
            "to_n": b["n"],
            "controller_cpu_s_per_host": round(
                (pb["controller_cpu_s"] - pa["controller_cpu_s"]) / span, 3
            ),
            "remote_cpu_s_per_host": round(
                (pb["remote_cpu_total_s"] - pa["remote_cpu_total_s"]) / span, 3
            ),
            "wall_s_per_host": round((pb["wall_s"] - pa["wall_s"]) / span, 2),
        }
    return out


def check_targets(result: dict, baseline: dict | None) -> list[dict]:
    """Each target of issue 13 with its measured value and whether it is met."""
    slopes = result.get("marginal", {})
    checks = []
    for phase, key, limit in TARGETS:
        value = slopes.get(phase, {}).get(key)
        checks.append(
            {
                "target": f"{phase} marginal {key} <= {limit}",
                "value": value,
                "met": value is not None and value <= limit,
            }
        )
    ten = next((r for r in result["runs"] if r["n"] == 10), None)
    if ten and "maintain" in ten["phases"]:
        wall = ten["phases"]["maintain"]["wall_s"]
        checks.append(
            {
                "target": f"maintain wall on 10 runners < {MAINTAIN_WALL_10}s",
                "value": wall,
                "met": wall < MAINTAIN_WALL_10 and ten["phases"]["maintain"]["rc"] == 0,
            }
        )
    before = (baseline or {}).get("marginal", {}).get("provision_again", {})
    now = slopes.get("provision_again", {}).get("remote_cpu_s_per_host")
    if before and now is not None:
        limit = before["remote_cpu_s_per_host"] / 2
        checks.append(
            {
                "target": f"provision_again marginal remote CPU <= half of before ({limit:.3f})",
                "value": now,
                "met": now <= limit,
            }
        )
    return checks


def table(result: dict, baseline: dict | None = None) -> str:
    """The curve (per N and phase) and the marginal costs, as text."""
    lines = [
        f"{'N':>3} {'phase':<16} {'rc':>3} {'wall s':>8} {'ctl CPU s':>10} {'ctl/host':>9} "
        f"{'remote s':>9} {'rem/host':>9} {'changed':>8}"
    ]
    for run in sorted(result["runs"], key=lambda r: r["n"]):
        for phase, fig in run["phases"].items():
            changed = sum(c.get("changed", 0) for c in fig["recap"].values())
            lines.append(
                f"{run['n']:>3} {phase:<16} {fig['rc']:>3} {fig['wall_s']:>8.1f} "
                f"{fig['controller_cpu_s']:>10.2f} "
                f"{per_host(run, phase, 'controller_cpu_s'):>9.2f} "
                f"{fig['remote_cpu_total_s']:>9.2f} {per_host(run, phase, 'remote'):>9.2f} "
                f"{changed:>8}"
            )
        lines.append(
            f"{run['n']:>3} idle background CPU per host: "
            f"{run['idle_remote_cpu_s_per_host_per_s']:.3f} s/s"
        )
    slopes = result.get("marginal", {})
    old = (baseline or {}).get("marginal", {})
    if slopes:
        lines.append("")
        lines.append("marginal cost per host (slope between the two largest N):")
        for phase, s in slopes.items():
            was = old.get(phase)
            extra = ""
            if was:
                extra = (
                    f"   (before: ctl {was['controller_cpu_s_per_host']:.2f}s, "
                    f"remote {was['remote_cpu_s_per_host']:.2f}s)"
                )
            lines.append(
                f"  {phase:<16} ctl {s['controller_cpu_s_per_host']:.2f}s  "
                f"remote {s['remote_cpu_s_per_host']:.2f}s  wall {s['wall_s_per_host']:.2f}s"
                + extra
            )
    for check in result.get("targets", []):
        mark = "met" if check["met"] else "MISSED"
        lines.append(f"target {check['target']}: {check['value']} -> {mark}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--runners {text!r}: want N or N,N,... (e.g. 1,3,10)"
        ) from None
    if not sizes or any(n < 1 or n > 50 for n in sizes):
        raise argparse.ArgumentTypeError(f"--runners {text!r}: each N between 1 and 50")
    return sizes


def _commit() -> str:
    """The checkout's commit, for the record ("unknown" without git or outside a checkout)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return proc.stdout.strip() or "unknown"


def run(sizes: list[int], phases: tuple[str, ...], label: str) -> dict:
    """Start one fleet per size, measure it, tear it down; the results with their slopes."""
    if not become_subreaper():
        print("scale: not a child subreaper: SSH masters' CPU is not counted", file=sys.stderr)
    result: dict[str, Any] = {"label": label, "commit": _commit(), "cpus": os.cpu_count()}
    result["runs"] = []
    for n in sizes:
        with Fleet.start(n, name=f"sc{n}") as fleet:
            result["runs"].append(measure_fleet(fleet, phases))
    result["marginal"] = marginal(result["runs"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--runners", type=_sizes, default=[3], help="N or N,N,... (1,3,10)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    parser.add_argument("--label", default="", help="a name for this run (e.g. before/after)")
    parser.add_argument("--baseline", type=Path, help="an earlier --json: before/after figures")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}"
    )
    parser.add_argument(
        "--check-targets", action="store_true", help="exit 1 when a target of issue 13 is missed"
    )
    args = parser.parse_args(argv)
    phases = tuple(p for p in args.phases.split(",") if p)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}: choose from {', '.join(PHASES)}")
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(args.baseline.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--baseline {args.baseline}: cannot read it as JSON ({exc})")
    try:
        result = run(args.runners, phases, args.label)
    except (ScaleError, FleetError, HostCommandError) as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 2
    result["targets"] = check_targets(result, baseline)
    print(table(result, baseline))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"scale: figures written to {args.json}")
    failed = [p for r in result["runs"] for p, f in r["phases"].items() if f["rc"] != 0]
    if failed:
        print(f"scale: runs that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.check_targets and not all(c["met"] for c in result["targets"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
