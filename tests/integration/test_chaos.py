"""Chaos on one runner container: maintenance and watch under a writing job, flapping mounts
and a tarpit webhook (issue 10, last test of "Tests that must exist and pass").

One provisioned runner (systemd as PID 1, the roles' real units) with a 128 MiB tmpfs at
/srv/jobs as its job area and budget filesystem:

- ``/srv/jobs/work`` is the root of the cleaner ``chaos-jobs`` (post and emergency stages,
  min_age 1h) and holds old junk, a large old job directory ``old-big``, a symlink and a
  hard link out of the root, and two bind mounts of the sentinel ``/srv/jobs/keep`` (same
  filesystem, so the same st_dev): ``old-bind`` for the whole run, ``flap`` mounted and
  unmounted every second by a bounded loop.
- ``/srv/jobs/fill`` is the root of ``chaos-fill`` (emergency stage only, min_age 0): the big
  file that pushes the disk past the emergency watermark lives there.
- Sentinels outside every root: ``/srv/jobs/keep`` (the job tmpfs) and
  ``/var/lib/chaos-sentinel`` (the container's root filesystem), hashed before and after
  (paths, modes, contents, symlink targets).
- The webhook is a tarpit on the runner's loopback that accepts, reads and drips one byte a
  second without ever finishing a response; ``disk.watch_timeout`` is 10 s.

The nightly cleanup service starts (as its timer would) while a "job" waits for the removal of
``old-big`` to begin and then writes fresh files into it; watch cycles run during the cleanup,
after the disk is filled past the emergency watermark, and after the emergency cleanup.

Afterwards: both sentinels are unchanged, every file the job wrote still exists, every watch
cycle returned within watch_timeout + 5 s, the emergency cleanup ran and freed the disk, no unit
logged a Python traceback, and the mount table is as it was. Every failed check is collected
and reported together, so one run tells what is left to fix.

The watch timer is stopped and its service started by hand, once per cycle, as the timer does:
a timer tick in the middle would make the measured cycle times ambiguous.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from harness.fleet import HostCommandError
from harness.provision import provision

pytestmark = pytest.mark.integration

MiB = 1024**2
JOBS = "/srv/jobs"
WORK = f"{JOBS}/work"
FILL = f"{JOBS}/fill"
KEEP = f"{JOBS}/keep"
OUTSIDE = "/var/lib/chaos-sentinel"
CHAOS = "/root/chaos"  # the test's own scripts and records, outside every root
METRICS = "/var/lib/prometheus/node-exporter/runnerkeep_disk.prom"
TARPIT_PORT = 18077
WATCH_TIMEOUT = 10.0
# The deadline is the feature: a cycle may overrun watch_timeout by process start-up, the
# emergency cleanup of a nearly empty tmpfs and docker exec, not by a webhook.
CYCLE_SLACK = 5.0
# Past this the cycle is stopped (systemctl stop) so that one hang does not cost minutes.
CYCLE_KILL_AFTER = WATCH_TIMEOUT + 12.0
UNITS = ("runnerkeep-watch.service", "runnerkeep-cleanup.service")

SETUP_SH = f"""\
set -eu
old='10 days ago'
mkdir -p {WORK} {FILL} {KEEP}/deep/er {OUTSIDE}/sub {CHAOS}
for i in $(seq 1 12); do head -c $((i * 997)) /dev/urandom > {KEEP}/f$i; done
printf 'sentinel leaf\\n' > {KEEP}/deep/er/leaf
chmod 0600 {KEEP}/deep/er/leaf
chmod 0750 {KEEP}/deep
ln -s f1 {KEEP}/link-inside
for i in $(seq 1 8); do head -c 4096 /dev/urandom > {OUTSIDE}/sub/g$i; done
printf 'outside\\n' > {OUTSIDE}/readme
chmod 0640 {OUTSIDE}/readme

# Old junk the post stage must remove (proof that it ran).
for i in $(seq 1 20); do
  mkdir {WORK}/old-junk-$i
  head -c 2048 /dev/urandom > {WORK}/old-junk-$i/blob
done
# Links out of the root: the links go, never what they point to.
ln {KEEP}/f2 {WORK}/old-junk-1/hardlink-to-sentinel
ln -s {OUTSIDE} {WORK}/old-link-abs
ln -s ../keep {WORK}/old-link-rel
# The large old job directory a job will write into while it is being removed.
python3 - <<'EOF'
import os
for d in range(60):
    sub = "{WORK}/old-big/sub-%02d" % d
    os.makedirs(sub)
    for f in range(80):
        with open("%s/old-%02d.o" % (sub, f), "wb") as handle:
            handle.write(b"stale build output\\n")
EOF
mkdir {WORK}/old-bind {WORK}/flap
find {KEEP} {OUTSIDE} {WORK} -exec touch -h -d "$old" {{}} +
# Same filesystem, different mount: st_dev cannot tell it from the root's own tree.
mount --bind {KEEP} {WORK}/old-bind
"""

HASH_PY = """\
import hashlib, json, os, stat, sys

def digest(path, st):
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            return "sha256:" + hashlib.sha256(handle.read()).hexdigest()
    return ""

tree = {}
for top in sys.argv[1:]:
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(path)
            tree[path] = "%o %s" % (st.st_mode, digest(path, st))
print(json.dumps(tree, sort_keys=True))
"""

# Accepts, reads whatever the client sends, and drips a response one byte a second that never
# ends. Bounded: each connection at most PER_CONN seconds, the server at most LIFE seconds.
TARPIT_PY = f"""\
import socket, sys, threading, time
port, life, per_conn = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
log = open("{CHAOS}/tarpit.log", "a", buffering=1)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(64)
srv.settimeout(0.5)
end = time.monotonic() + life
head = b"HTTP/1.1 200 OK\\r\\nX-Drip: "

def drip(conn):
    stop = min(end, time.monotonic() + per_conn)
    conn.settimeout(0.2)
    sent = 0
    try:
        while time.monotonic() < stop:
            try:
                if conn.recv(65536) == b"" and sent:
                    break
            except socket.timeout:
                pass
            conn.sendall(head[sent:sent + 1] if sent < len(head) else b"a")
            sent += 1
            time.sleep(1)
    except OSError:
        pass
    finally:
        conn.close()

while time.monotonic() < end:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    log.write("%.3f connection\\n" % time.time())
    threading.Thread(target=drip, args=(conn,), daemon=True).start()
"""

# Bind-mounts the sentinel into the root and unmounts it, about once a second. Bounded by
# rounds and seconds; leaves nothing mounted when it ends.
FLAP_SH = f"""\
rounds=$1
end=$(( $(date +%s) + $2 ))
t={WORK}/flap
i=0
n=0
while [ $i -lt $rounds ] && [ $(date +%s) -lt $end ]; do
  i=$((i + 1))
  if [ ! -d $t ]; then
    mkdir $t && touch -d '10 days ago' $t   # the cleanup may remove the bare mount point
  fi
  if mount --bind {KEEP} $t 2>/dev/null; then
    n=$((n + 1))
    echo $n > {CHAOS}/flap-count
  fi
  sleep 0.5
  for k in 1 2 3; do mountpoint -q $t || break; umount $t; done
  sleep 0.5
done
for k in 1 2 3; do mountpoint -q $t || break; umount -l $t; done
echo done >> {CHAOS}/flap-count
"""

# The job: waits (bounded) until the removal of old-big has begun, then writes fresh files into
# it and its remaining subdirectories, fast at first (to land inside the removal walk), then
# slower. Every file it managed to create is recorded: none may be lost.
WRITER_PY = f"""\
import os, sys, time
big = "{WORK}/old-big"
written = open("{CHAOS}/job-written.txt", "a", buffering=1)
state = open("{CHAOS}/job-state.txt", "w", buffering=1)
write_seconds, max_files = float(sys.argv[1]), int(sys.argv[2])

def entries():
    try:
        return sorted(os.listdir(big))
    except OSError:
        return []

start = len(entries())
state.write("ready %d\\n" % start)
give_up = time.monotonic() + 90
while time.monotonic() < give_up:
    now = entries()
    if len(now) < start:
        break
    time.sleep(0.002)
else:
    state.write("timeout\\n")
    sys.exit(0)
state.write("started %.3f entries=%d\\n" % (time.time(), len(now)))
stop = time.monotonic() + write_seconds
count = 0
attempt = 0
while time.monotonic() < stop and attempt < max_files:
    dirs = [big] + [os.path.join(big, name) for name in entries() if name.startswith("sub-")]
    target = os.path.join(dirs[(attempt * 37) % len(dirs)], "job-%05d.out" % attempt)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"fresh job output %d\\n" % attempt)
        finally:
            os.close(fd)
        written.write(target + "\\n")
        count += 1
    except OSError:
        pass  # the directory went before the job got there: nothing written, nothing to keep
    attempt += 1
    time.sleep(0.001 if attempt < 400 else 0.05)
state.write("done attempts=%d written=%d\\n" % (attempt, count))
"""

MISSING_PY = """\
import os, sys
paths = [line.strip() for line in open(sys.argv[1]) if line.strip()]
missing = [p for p in paths if not os.path.lexists(p)]
print(len(paths))
print("\\n".join(missing))
"""


def _chaos_config(builtin: list[str]) -> dict[str, Any]:
    # Only the two test cleaners run: the built-ins would touch the container's /tmp, logs and
    # inner Docker, which this test does not watch.
    cleaners: dict[str, Any] = {name: {"enabled": False} for name in builtin}
    cleaners["chaos-jobs"] = {
        "kind": "files",
        "description": "old job directories on the job tmpfs",
        "stages": ["post", "emergency"],
        "cost": 5,
        "enabled": True,
        "roots": [WORK],
        "patterns": ["*"],
        "exclude": [],
        "min_age": "1h",
        "files_only": False,
    }
    cleaners["chaos-fill"] = {
        "kind": "files",
        "description": "the file that fills the job tmpfs",
        "stages": ["emergency"],
        "cost": 50,
        "enabled": True,
        "roots": [FILL],
        "patterns": ["*"],
        "exclude": [],
        "min_age": "0s",
        "emergency_min_age": "0s",
        "files_only": False,
    }
    return {
        # 100%: the post stage can never reach its target, so it walks every cleaner.
        "cleanup": {"targets": {"post": {"free": "100%"}}, "cleaners": cleaners},
        "disk": {
            "path": JOBS,
            # 128 MiB: R = 12.8 MiB, P = floor 8 MiB: emergency below 12.8 MiB free,
            # warning below 28.8 MiB.
            "reserve": "10%",
            "job_peak_floor": "8MiB",
            "job_peak_floor_inodes": 1000,
            "cache_quota_min": 0,
            "webhook_url": f"http://127.0.0.1:{TARPIT_PORT}/hook",
            "webhook_timeout": "5s",
            "webhook_retries": 2,
            "watch_timeout": f"{int(WATCH_TIMEOUT)}s",
            "emergency_cleanup": True,
        },
    }


def _write(host, path: str, text: str) -> None:
    host.exec(f"cat > {path}", input=text)


def _tree(host) -> dict[str, str]:
    return json.loads(host.exec(f"python3 {CHAOS}/hash.py {KEEP} {OUTSIDE}").stdout)


def _mount_points(host) -> list[str]:
    return sorted(host.exec("awk '{print $5}' /proc/self/mountinfo").stdout.split())


def _start_transient(host, unit: str, max_seconds: int, *argv: str) -> None:
    """A bounded background process under systemd (RuntimeMaxSec is the outer bound)."""
    host.exec(
        [
            "systemd-run",
            "--quiet",
            f"--unit={unit}",
            f"--property=RuntimeMaxSec={max_seconds}",
            *argv,
        ]
    )


def _wait_inactive(host, unit: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = host.exec(f"systemctl is-active {unit}", check=False).stdout.strip()
        if state not in ("active", "activating", "deactivating", "reloading"):
            return True
        time.sleep(0.5)
    return False


def _wait_for(host, cmd: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if host.exec(cmd, check=False).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def _metrics(host) -> dict[str, float]:
    """``{'name{labels}': value}`` from the watch's textfile, read as a scraper would.

    Parsed here rather than with the core's parser: the test must judge the runner's output
    even while the core on this machine is half-way through a change."""
    samples = {}
    for line in host.exec(f"cat {METRICS}", check=False).stdout.splitlines():
        key, _, value = line.rpartition(" ")
        if key and not line.startswith("#"):
            try:
                samples[key] = float(value)
            except ValueError:
                continue
    return samples


def _watch_cycle(host, label: str) -> dict[str, Any]:
    """Start the watch service as its timer does; how long it took and what it left."""
    started = time.monotonic()
    hung = False
    try:
        host.exec("systemctl start runnerkeep-watch.service", check=False, timeout=CYCLE_KILL_AFTER)
    except HostCommandError:
        hung = True
        host.exec("systemctl stop runnerkeep-watch.service", check=False, timeout=60)
    took = time.monotonic() - started
    samples = _metrics(host)
    states = [
        s
        for s in ("ok", "warning", "critical", "emergency")
        if samples.get(f'runnerkeep_disk_state{{state="{s}"}}') == 1
    ]
    return {
        "label": label,
        "seconds": round(took, 2),
        "hung": hung,
        "state": states[0] if len(states) == 1 else None,
        "metric_duration": samples.get("runnerkeep_disk_watch_duration_seconds"),
        "emergency_cleanups": samples.get("runnerkeep_disk_emergency_cleanups_total"),
    }


def _fill_past_emergency(host) -> None:
    # Leave 4 MiB free: below the 12.8 MiB emergency watermark.
    host.exec(
        'python3 -c \'import os; s = os.statvfs("/srv/jobs"); '
        f"print(s.f_bavail * s.f_frsize - {4 * MiB})' "
        f"| xargs -I{{}} fallocate -l {{}} {FILL}/big"
    )


def _tree_diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    lines = [f"missing {p}" for p in sorted(set(before) - set(after))]
    lines += [f"new {p}" for p in sorted(set(after) - set(before))]
    lines += [
        f"changed {p}: {before[p]} -> {after[p]}"
        for p in sorted(set(before) & set(after))
        if before[p] != after[p]
    ]
    return lines


def test_maintenance_and_watch_survive_a_writing_job_flapping_mounts_and_a_tarpit(make_fleet):
    t_start = time.monotonic()
    fleet = make_fleet(1, extra_tmpfs={JOBS: "128m"})
    host = fleet.hosts[0]
    # The cleaners below are configured after provisioning: the hardened units
    # (ProtectSystem=strict) may write only where they are told, so the job disk is named here.
    writable = {"runner_maintenance_writable_paths": [JOBS], "disk_monitor_writable_paths": [JOBS]}
    result = provision(fleet, "-e", json.dumps(writable), quiet=True)
    assert result.returncode == 0, result.stdout[-3000:]
    t_provisioned = time.monotonic()

    host.exec("systemctl stop runnerkeep-watch.timer")
    host.exec(f"mkdir -p {CHAOS}")
    for name, text in (
        ("hash.py", HASH_PY),
        ("tarpit.py", TARPIT_PY),
        ("flap.sh", FLAP_SH),
        ("writer.py", WRITER_PY),
        ("missing.py", MISSING_PY),
        ("setup.sh", SETUP_SH),
    ):
        _write(host, f"{CHAOS}/{name}", text)
    mounts_before = _mount_points(host)
    host.exec(f"sh {CHAOS}/setup.sh")
    listed = json.loads(host.exec("runnerkeep cleanup list-cleaners --json").stdout)
    builtin = [cleaner["name"] for cleaner in listed["cleaners"]]
    config = json.dumps(_chaos_config(builtin), indent=1)
    _write(host, "/etc/runnerkeep/config.d/90-chaos.json", config)
    host.exec("runnerkeep cleanup list-cleaners --json >/dev/null")  # the config is accepted
    sentinel_before = _tree(host)
    assert len(sentinel_before) > 20, sentinel_before
    assert f"{WORK}/old-bind" in _mount_points(host)

    tarpit = ("python3", f"{CHAOS}/tarpit.py", str(TARPIT_PORT), "230", "90")
    _start_transient(host, "chaos-tarpit", 240, *tarpit)
    # ss, not a probe connection: every connection the tarpit sees is counted as the watch's.
    listening = f"ss -Hltn | grep -q '127.0.0.1:{TARPIT_PORT} '"
    assert _wait_for(host, listening, 15), "the tarpit did not start listening"
    _start_transient(host, "chaos-writer", 150, "python3", f"{CHAOS}/writer.py", "20", "1000")
    assert _wait_for(host, f"grep -q ready {CHAOS}/job-state.txt", 15), "the job did not start"
    _start_transient(host, "chaos-flap", 70, "sh", f"{CHAOS}/flap.sh", "45", "50")

    # The maintenance timer's service, then a watch cycle while it, the job and the mounts run.
    host.exec("systemctl start --no-block runnerkeep-cleanup.service")
    cycles = [_watch_cycle(host, "during the post stage")]
    post_finished = _wait_inactive(host, "runnerkeep-cleanup.service", 120)

    # Old junk for the emergency stage to remove, then the disk past the emergency watermark.
    host.exec(
        f"for i in 1 2 3 4 5; do mkdir -p {WORK}/late-junk-$i && "
        f"head -c 2048 /dev/urandom > {WORK}/late-junk-$i/blob; done && "
        f"find {WORK}/late-junk-* -exec touch -h -d '10 days ago' {{}} +"
    )
    _fill_past_emergency(host)
    cycles.append(_watch_cycle(host, "disk past the emergency watermark"))
    cycles.append(_watch_cycle(host, "after the emergency cleanup"))

    # The background loops are bounded; wait for them to end before judging.
    writer_done = _wait_inactive(host, "chaos-writer.service", 90)
    flap_done = _wait_inactive(host, "chaos-flap.service", 90)
    host.exec(f"umount {WORK}/old-bind", check=False)
    t_chaos_done = time.monotonic()

    problems: list[str] = []

    # Sentinels: nothing outside the roots changed, through the bind mounts, links or races.
    sentinel_after = _tree(host)
    diff = _tree_diff(sentinel_before, sentinel_after)
    if diff:
        problems.append(
            f"sentinel trees changed ({len(diff)} entries):\n  " + "\n  ".join(diff[:25])
        )

    # The job's files: every one it wrote after the cleanup began is still there.
    job_state = host.exec(f"cat {CHAOS}/job-state.txt", check=False).stdout
    checked = host.exec(
        f"touch {CHAOS}/job-written.txt && python3 {CHAOS}/missing.py {CHAOS}/job-written.txt"
    ).stdout.splitlines()
    written, missing = int(checked[0]), [line for line in checked[1:] if line]
    if "started" not in job_state or written == 0:
        problems.append(f"the job never raced the removal of old-big: {job_state!r}")
    if missing:
        problems.append(
            f"{len(missing)} of {written} files the job wrote during the cleanup were removed, "
            f"e.g. {missing[:5]}"
        )

    # The cleanup did run (the test is not vacuous), and kept off the mounts it met.
    leftover_junk = host.exec(
        f"ls -d {WORK}/old-junk-* {WORK}/old-link-* 2>/dev/null", check=False
    ).stdout.split()
    if not post_finished:
        problems.append("the post stage (runnerkeep-cleanup.service) did not finish in 120 s")
    if leftover_junk:
        problems.append(f"the post stage left old junk in its root: {leftover_junk[:5]}")

    # The watch: each cycle within its deadline, and the emergency cleanup ran and freed space.
    bound = WATCH_TIMEOUT + CYCLE_SLACK
    for cycle in cycles:
        if cycle["hung"] or cycle["seconds"] > bound:
            problems.append(
                f"watch cycle '{cycle['label']}' took {cycle['seconds']} s"
                f"{' and was stopped' if cycle['hung'] else ''} (bound {bound} s)"
            )
        elif cycle["metric_duration"] is not None and cycle["metric_duration"] > bound:
            problems.append(
                f"watch cycle '{cycle['label']}' reports "
                f"runnerkeep_disk_watch_duration_seconds {cycle['metric_duration']} > {bound}"
            )
    emergency = cycles[1]
    if emergency["state"] != "emergency" or not emergency["emergency_cleanups"]:
        problems.append(
            f"the cycle after the fill did not enter emergency and run the emergency cleanup: "
            f"{emergency}"
        )
    left_after_emergency = host.exec(
        f"ls -d {FILL}/big {WORK}/late-junk-* 2>/dev/null", check=False
    ).stdout.split()
    if left_after_emergency:
        problems.append(f"the emergency cleanup did not remove {left_after_emergency}")
    if cycles[2]["state"] != "ok":
        problems.append(f"the watch did not return to ok after the emergency: {cycles[2]}")
    tarpit_hits = host.exec(f"cat {CHAOS}/tarpit.log", check=False).stdout.count("connection")
    if tarpit_hits == 0:
        problems.append("the watch never called the tarpit webhook (alerts not exercised)")

    # No traceback from any runnerkeep unit.
    for unit in UNITS:
        log = host.exec(f"journalctl -u {unit} --no-pager -o cat", check=False).stdout
        if "Traceback" in log:
            problems.append(f"{unit} logged a Python traceback:\n{log[-2000:]}")

    # The chaos actually happened, and nothing is left mounted.
    flap = host.exec(f"cat {CHAOS}/flap-count", check=False).stdout.split()
    if not writer_done or not flap_done:
        problems.append(f"background loops still running (writer {writer_done}, flap {flap_done})")
    if len(flap) < 2 or not flap[0].isdigit() or int(flap[0]) < 10:
        problems.append(f"the mount loop mounted fewer than 10 times: {flap}")
    mounts_after = _mount_points(host)
    if mounts_after != mounts_before:
        extra = sorted(set(mounts_after) - set(mounts_before))
        gone = sorted(set(mounts_before) - set(mounts_after))
        problems.append(f"mount table changed: left behind {extra}, gone {gone}")

    unit_results = host.exec(
        "systemctl show -p Id -p Result -p ExecMainStatus " + " ".join(UNITS), check=False
    ).stdout
    summary = (
        f"provision {t_provisioned - t_start:.0f} s, chaos {t_chaos_done - t_provisioned:.0f} s; "
        f"job: {job_state.strip()!r}, {written} files recorded; mounts flapped {flap}; "
        f"tarpit connections {tarpit_hits}; cycles {cycles}; units:\n{unit_results}"
    )
    print(summary)
    assert not problems, "\n".join(problems) + "\n\n" + summary
