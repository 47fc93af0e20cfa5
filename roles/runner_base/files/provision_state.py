"""provision.yml's check-first fast path: is this host exactly as the last full run left it?

Usage:
  python3 provision_state.py inputs PATH...              (controller) digest of the playbook's
                                                         inputs: every file under PATHs
  python3 provision_state.py check STAMP FINGERPRINT SPEC [--check-mode]
  python3 provision_state.py record STAMP FINGERPRINT SPEC FLEET

A full provision run ends by recording, in STAMP (root 0600), the FINGERPRINT of its inputs (the
controller's digest of the roles and playbook and this host's variables), the FLEET figures the
admission config was built from, and a digest of what the roles manage on this host, read back
live: every file, link and directory named by SPEC (type, mode, owner, content hash; secrets by
size and mtime only), the units' enabled/active states, the users and groups. `check` computes
the same digest now and answers {"converged": true} only when the fingerprint and the digest are
both unchanged and the invariants hold (the store holds only the service user's entries and no
symlink; root's state holds only root's files and directories). It also returns the recorded
fleet figures and this runner's drain state (SPEC's drain_cmd), from which the playbook decides
the fleet guard's part. Any doubt is "not converged": the full run follows, and it repairs. A
host that is not converged loses its stamp at once (not in check mode), so a run that fails half
way is never taken for converged.

Prints one JSON line; exits 1 with a one-line reason on bad usage.
"""

from __future__ import annotations

import fnmatch
import glob
import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
import tempfile

STAMP_FORMAT = 1
CHUNK = 1 << 20


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(path: str, secret: bool = False) -> list:
    """What the roles decide about one path: type, mode, owner, and content or link target."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [path, "missing"]
    entry = [path, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
    if stat.S_ISLNK(st.st_mode):
        entry.append(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        entry.append([st.st_size, st.st_mtime_ns] if secret else file_sha256(path))
    return entry


def walk(root: str) -> list[str]:
    """Every path under root (root included), links not followed, in a stable order."""
    if not os.path.isdir(root) or os.path.islink(root):
        return [root]
    found = [root]
    for top, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.join(top, name) for name in sorted(dirs + files)]
    return found


def systemd_states(units: list[str]) -> list[str]:
    if not units or not os.path.isdir("/run/systemd/system"):
        return ["no systemd"]
    out = []
    for verb in ("is-enabled", "is-active"):
        proc = subprocess.run(
            ["systemctl", verb, *units], capture_output=True, text=True, check=False
        )
        out.append(proc.stdout)
    return out


def accounts(users: list[str], groups: list[str]) -> list:
    out = []
    for name in users:
        try:
            pw = pwd.getpwnam(name)
            out.append([name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell])
        except KeyError:
            out.append([name, "missing"])
    for name in groups:
        try:
            gr = grp.getgrnam(name)
            out.append([name, gr.gr_gid, sorted(gr.gr_mem)])
        except KeyError:
            out.append([name, "missing"])
    return out


def state_digest(spec: dict) -> str:
    """sha256 over everything SPEC names, as it is on this host now."""
    parts: list = []
    secret = spec.get("secret_globs", [])
    for pattern in spec.get("trees", []):
        for root in sorted(glob.glob(pattern)) or [pattern]:
            for path in walk(root):
                hidden = any(fnmatch.fnmatch(path, g) for g in secret)
                parts.append(describe(path, secret=hidden))
    for pattern in spec.get("paths", []):
        for path in sorted(glob.glob(pattern)) or [pattern]:
            parts.append(describe(path, secret=any(fnmatch.fnmatch(path, g) for g in secret)))
    parts.append(systemd_states(spec.get("units", [])))
    parts.append(accounts(spec.get("users", []), spec.get("groups", [])))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def foreign_in_store(store: dict) -> str:
    """The first entry of the store that is a symlink or not the service user's ('' if none)."""
    try:
        uid = pwd.getpwnam(store["user"]).pw_uid
        gid = grp.getgrnam(store["group"]).gr_gid
    except KeyError:
        return f"no user/group {store['user']}:{store['group']}"
    for path in walk(store["path"]):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"{path} missing"
        if stat.S_ISLNK(st.st_mode) or st.st_uid != uid or st.st_gid != gid:
            return path
    return ""


def foreign_in_state(state: dict) -> str:
    """The first entry of root's state that a job could have planted or may write ('' if none)."""
    skip = tuple(state.get("skip", []))
    for path in walk(state["path"]):
        if any(path == s or path.startswith(s.rstrip("/") + "/") for s in skip):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # the watch replaced a file meanwhile: nothing planted
        kind = stat.S_IFMT(st.st_mode)
        if kind not in (stat.S_IFDIR, stat.S_IFREG) or st.st_uid != 0 or st.st_gid != 0:
            return path
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return path
    return ""


def read_stamp(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            stamp = json.load(fh)
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) and stamp.get("format") == STAMP_FORMAT else {}


def write_stamp(path: str, stamp: dict) -> None:
    """Atomically, root 0600 (a stamp others could write would switch the repair off)."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".provision-state.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(stamp, fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def drained(spec: dict) -> bool | None:
    """The runner's drain state as the role reads it: unreadable counts as drained."""
    cmd = spec.get("drain_cmd")
    if not cmd:
        return None
    if not os.access(cmd[0], os.X_OK):
        # Not installed: no admission runs here, so nothing holds the runner drained (the
        # watch reads a record an earlier install left once runnerkeep is back).
        return False
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if proc.returncode != 0:
        return True
    try:
        return bool((json.loads(proc.stdout).get("drain") or {}).get("drained", False))
    except (ValueError, AttributeError):
        return True


def check(stamp_path: str, fingerprint: str, spec: dict, check_mode: bool) -> dict:
    stamp = read_stamp(stamp_path)
    reason = ""
    if not stamp:
        reason = "no stamp of a full run"
    elif stamp.get("fingerprint") != fingerprint:
        reason = "inputs changed (roles, playbook or variables)"
    else:
        planted = foreign_in_store(spec["store"]) or foreign_in_state(spec["state"])
        if planted:
            reason = f"not the owner's or planted: {planted}"
        elif stamp.get("digest") != state_digest(spec):
            reason = "managed files, units or accounts differ from the last full run"
    if reason and stamp and not check_mode:
        os.unlink(stamp_path)
    return {
        "converged": not reason,
        "reason": reason or "as the last full run left it",
        "fleet": stamp.get("fleet"),
        "drained": drained(spec),
        # Handed back so the playbook keeps the fingerprint it checked without computing it
        # again (it templates every role variable), and whether runner_base must install Docker.
        "fingerprint": fingerprint,
        "docker_cli": os.path.exists("/usr/bin/docker"),
    }


def inputs(paths: list[str]) -> dict:
    digest = hashlib.sha256()
    for root in paths:
        real = os.path.realpath(root)
        files = [real] if os.path.isfile(real) else []
        for top, dirs, names in os.walk(real, followlinks=True):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.join(top, n) for n in sorted(names) if not n.endswith(".pyc")]
        for path in files:
            digest.update(os.path.relpath(path, real).encode() + b"\0")
            digest.update(file_sha256(path).encode())
    return {"inputs": digest.hexdigest()}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "inputs":
        print(json.dumps(inputs(argv[1:])))
        return 0
    if len(argv) not in (4, 5) or argv[0] not in ("check", "record"):
        sys.stderr.write(
            "usage: provision_state.py inputs PATH... | check STAMP FP SPEC [--check-mode]"
            " | record STAMP FP SPEC FLEET\n"
        )
        return 1
    verb, stamp_path, fingerprint, raw = argv[:4]
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        sys.stderr.write(f"provision_state: SPEC is not JSON ({exc})\n")
        return 1
    if verb == "check":
        print(json.dumps(check(stamp_path, fingerprint, spec, "--check-mode" in argv[4:])))
        return 0
    try:
        fleet = json.loads(argv[4]) if len(argv) == 5 else None
    except ValueError as exc:
        sys.stderr.write(f"provision_state: FLEET is not JSON ({exc})\n")
        return 1
    stamp = {
        "format": STAMP_FORMAT,
        "fingerprint": fingerprint,
        "digest": state_digest(spec),
        "fleet": fleet,
    }
    write_stamp(stamp_path, stamp)
    print(json.dumps({"recorded": True}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except OSError as exc:
        sys.stderr.write(f"provision_state: {exc}\n")
        sys.exit(1)
