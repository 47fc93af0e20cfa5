"""Scripts a hostile CI job runs on a runner container, and root's view of the host.

Kept apart from the test so each script reads as what it is: plain shell or Python run in the
container, the attacker's as user ``runner``, the snapshots as root.
"""

from __future__ import annotations

import textwrap

JOB_USER = "runner"
SPOOL = "/var/lib/runnerkeep/spool"
STATE = "/var/lib/runnerkeep"
STORE = "/var/cache/runnerkeep/images"
SECRETS = "/etc/runnerkeep/secrets.d"
WEBHOOK_FILE = f"{SECRETS}/40-webhook"
SECRET = "s3cr3t-t0ken"
WEBHOOK_URL = f"http://alert:{SECRET}@127.0.0.1:9/hook?token={SECRET}"
SENTINEL = "/srv/sentinel"
# Written into a root-only (0600) sentinel file: found in anything the job can read = copied out.
MARKER = "rk-root-only-marker-5f1c2e"
# What must be byte-identical (content, mode, owner) after the attack and the scheduled runs.
GUARDED = (SENTINEL, "/etc/passwd", "/etc/shadow", "/root/.bashrc", "/root/.profile")
# Where root's files live: the job may read no more of them afterwards than before.
ROOT_TREES = (STATE, STORE, "/etc/runnerkeep", "/var/log/runnerkeep", SENTINEL)

SNAPSHOT = textwrap.dedent(
    """
    import hashlib, json, os, stat, sys
    out = {}
    def one(path):
        st = os.lstat(path)
        rec = [stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, stat.S_IFMT(st.st_mode)]
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                rec.append(hashlib.sha256(f.read()).hexdigest())
        elif stat.S_ISLNK(st.st_mode):
            rec.append(os.readlink(path))
        out[path] = rec
    for top in sys.argv[1:]:
        if not os.path.lexists(top):
            out[top] = None
            continue
        one(top)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                one(os.path.join(root, name))
    print(json.dumps(out, sort_keys=True))
    """
)

SEED_SENTINEL = f"""
set -e
mkdir -p {SENTINEL}/sub
echo {MARKER} > {SENTINEL}/secret.bin && chmod 0600 {SENTINEL}/secret.bin
echo 'export SAFE=1' > {SENTINEL}/rc.sh && chmod 0644 {SENTINEL}/rc.sh
echo data > {SENTINEL}/sub/keep.txt
touch -d '30 days ago' {SENTINEL}/secret.bin {SENTINEL}/rc.sh {SENTINEL}/sub/keep.txt {SENTINEL}/sub
touch /root/.bashrc /root/.profile
"""

# renameat2(RENAME_EXCHANGE) in a loop: a directory and a symlink out trade places for as long as
# root may be walking (bounded by the deadline argument).
SWAPPER = textwrap.dedent(
    """
    import ctypes, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    a, b, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        libc.renameat2(-100, a, -100, b, 2)
    """
)

# Holds an exclusive flock on every file named (any open fd will do: read-only is enough).
HOLDER = textwrap.dedent(
    """
    import fcntl, sys, time
    held = []
    for path in sys.argv[2:]:
        try:
            f = open(path, "rb")
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(f)
        except OSError:
            pass
    print(len(held), flush=True)
    time.sleep(float(sys.argv[1]))
    """
)


def plant_script(far_future: int, root_pid: int, own_pid: int) -> str:
    """Every plant of the issue, in every place the job user can write that root reads.

    Runs as the job user; each plant is best effort (``|| true``): what the layout forbids is
    asserted separately.
    """
    out = f"{SENTINEL}/secret.bin"
    old = "touch -h -d '10 days ago'"
    lock = (
        '{{"job_id": "{id}", "pid": {pid}, "start_time": {t}, "started": {t}, '
        '"uid": 0, "host": "x", "trusted": true}}'
    )
    lines = ["set +e", f"cd {SPOOL} || exit 1"]
    # Symlinks under every name a record, a lock or a log might have, to root-only files.
    for name in (
        "job-forged.json", "events.jsonl", "disk-history.jsonl", "cleanup.lock",
        "store.lock", "watch-state.json", "job-locks", "quarantine", "log.jsonl",
    ):  # fmt: skip
        lines.append(f"ln -s {out} {name} 2>/dev/null")
    lines += [
        f"ln -s {SENTINEL} dir-link.json",
        "mkfifo fifo.json fifo.jsonl 2>/dev/null",
        "ln -s /dev/zero endless.json",
        "truncate -s 256M oversized.json",
        "python3 -c 'import sys; sys.stdout.write(\"[\" * 5000000)' > deep.json",
        # Forged job records: far-future start, naming root's process, our own with a lie.
        "echo '" + lock.format(id="gh-forged-pid1", pid=1, t=far_future) + "' > job-pid1.json",
        "echo '"
        + lock.format(id="gh-forged-root", pid=root_pid, t=far_future)
        + "' > job-root.json",
        "echo '" + lock.format(id="gh-forged-own", pid=own_pid, t=far_future) + "' > job-own.json",
        # A subdirectory to swap with a symlink out.
        "mkdir -p swap.d && ln -s " + SENTINEL + " swap.alt",
    ]
    # The cleaner roots a job can write: /tmp, /var/tmp, its home caches, its work dir.
    for base in (
        "/tmp",
        "/var/tmp",
        "/home/runner/.cache/pip",
        "/home/runner/actions-runner/_work/_temp",
    ):
        lines += [
            f"mkdir -p {base}/rk-evil/inner {base}/rk-swap",
            f"ln -s {SENTINEL} {base}/rk-evil/to-sentinel",
            f"ln -s {out} {base}/rk-evil/inner/to-secret",
            f"ln -s {SENTINEL} {base}/rk-swap.alt",
            f"mkfifo {base}/rk-evil/fifo",
            f"{old} {base}/rk-evil/to-sentinel {base}/rk-evil/inner/to-secret {base}/rk-evil/fifo",
            f"{old} {base}/rk-evil/inner {base}/rk-evil {base}/rk-swap {base}/rk-swap.alt",
        ]
    return "\n".join(lines) + "\nexit 0\n"
