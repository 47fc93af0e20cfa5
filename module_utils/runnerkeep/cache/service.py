"""The cache service: one connection from a CI job, served as the store's owner.

systemd's ``runnerkeep-cache.socket`` (Accept=yes) starts ``runnerkeep cache serve-connection``
per connection with the connected socket on fd 0. Protocol (one request per connection)::

    client -> {"v": 1, "op": "save"|"restore"|"import"|"export"|"list"|"register-job",
               "args": {...}}\\n        (import/export: the file's fd with SCM_RIGHTS)
    service -> {"exit_code": N, "data": {...}, "text": "...", "error": "..."}\\n

Who asks is SO_PEERCRED's pid and uid, never anything the client says. The scope a request
works in comes from the job registry: the job-start hook registers its parent (the runner's
worker for this job) with the trust facts the runner set before job code ran; a request's
process is mapped to a job by walking up its ancestry to a registered worker.

The fleet tier (issue 12) is the service's work too: the front door hands in ``fleet``
(``runnerkeep.wiring.FleetTier`` for the host's ``cache.remote``; this package cannot import
wiring). A job's restore falls through to the registry exactly like a direct one; its save
pushes afterwards only when its registered job is trusted; ``push`` and ``pull`` are ops of
their own. The credentials file is read here, as the store's owner: jobs never see it, and
never choose the registry (a request naming another URL is refused), so the host's
credentials cannot be sent where a job points.

Each save, restore, import and export records its ``cache`` event in root's state dir
(``events_dir``, handed in by the front door from ``paths.state_dir``), as a direct command
does: the service user is not root, so ``events.record_event`` drops the line into that
dir's spool (writable for the job group, which the service user is in), and the next watch
cycle ingests it and counts it in the cache metrics. Without ``events_dir`` nothing is recorded.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import select
import socket
import stat
import struct
import threading
import time
from typing import Any, Callable

from ..errors import EXIT_FAILURE, EXIT_OK, ConfigError, RunnerkeepError
from ..procutil import same_process
from .prune import list_entries
from .restore import export_entry_fd, restore_entry
from .save import import_archive_fd, save_entry
from .store import TRUSTED, Store, validate_key, validate_scope
from .trust import UNREGISTERED, clean_provenance

PROTOCOL = 1
OPS = ("save", "restore", "import", "export", "list", "register-job", "push", "pull")
# A request line is small JSON: a client that drips it or never finishes must not hold a
# service instance (and a systemd connection slot) for longer than this.
REQUEST_DEADLINE = 10.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
RESPONSE_SEND_TIMEOUT = 30.0
# What is left of a request after the answer is read away within these bounds.
DISCARD_DEADLINE = 2.0
MAX_DISCARD_BYTES = 16 * MAX_REQUEST_BYTES
MAX_ANCESTRY = 64
MAX_RECORD_BYTES = 16 * 1024
MAX_CGROUP_BYTES = 8 * 1024
MAX_SOURCE_CHARS = 1024
# A job's import/export fd (a pipe it keeps open and never feeds or drains) must not hold the
# service, its key lock and the shared store lock: no byte either way for this long ends the
# transfer, and so does the overall cap (``cache.transfer_deadline`` when the config has it).
TRANSFER_IDLE_TIMEOUT = 60.0
TRANSFER_DEADLINE = 2 * 3600.0
_PUMP_SLICE = 1.0
_PUMP_CHUNK = 1 << 16
DEFAULT_STATE_DIR = "/var/lib/runnerkeep/cache-service"
_RECORD_PREFIX = "worker-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class ProtocolError(ConfigError):
    """A request that is not one (malformed, too big, too slow, wrong fds)."""


class ServiceError(RunnerkeepError):
    """An error the service reported; carries the exit code the direct command would have."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- peers and processes -----------------------------------------------------------------
def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process; None when gone, a zombie or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read(4096).decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    if len(rest) < 20 or rest[0] in ("Z", "X"):
        return None
    try:
        return int(rest[1]), rest[19]
    except ValueError:
        return None


def process_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def ancestry(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of ``pid`` and its ancestors, nearest first, up to init. A parent
    younger than its child is a recycled pid (the real parent died): the walk stops there."""
    chain: list[tuple[int, str]] = []
    current = pid
    for _ in range(MAX_ANCESTRY):
        info = proc_stat(current)
        if info is None:
            break
        ppid, start = info
        if chain and int(start) > int(chain[-1][1]):
            break
        chain.append((current, start))
        if ppid <= 0 or current == 1:
            break
        current = ppid
    return chain


def process_cgroup(pid: int) -> str | None:
    """The whole of /proc/PID/cgroup: a process cannot leave its cgroup by re-parenting, so
    this ties a request or a registration to the runner's job unit (only root moves it)."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as handle:
            data = handle.read(MAX_CGROUP_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_CGROUP_BYTES:
        return None
    return data.decode("utf-8", "replace")


# -- the job registry --------------------------------------------------------------------
class Registry:
    """One small JSON file per registered worker, ``worker-PID-START.json``, in a directory
    only the service user can write. Created with link() so the first registration wins."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _dir_fd(self) -> int:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise RunnerkeepError(
                f"cache service state dir {self.directory}: {exc.strerror}"
            ) from None
        return os.open(self.directory, _DIR_FLAGS)

    @staticmethod
    def _name(pid: int, start: str) -> str:
        return f"{_RECORD_PREFIX}{pid}-{start}.json"

    def live_records(self) -> list[dict[str, Any]]:
        """The records of workers still running (the same pid with the recorded start)."""
        records = []
        dfd = self._dir_fd()
        try:
            for name in os.listdir(dfd):
                parsed = _parse_record_name(name)
                if parsed is None or not same_process(*parsed):
                    continue
                record = _read_record(dfd, name)
                if record is not None:
                    records.append(record)
        finally:
            os.close(dfd)
        return records

    def lookup(self, pid: int, start: str) -> dict[str, Any] | None:
        dfd = self._dir_fd()
        try:
            return _read_record(dfd, self._name(pid, start))
        finally:
            os.close(dfd)

    def register(self, pid: int, start: str, record: dict[str, Any]) -> bool:
        """False when this worker is registered already."""
        data = json.dumps(record, sort_keys=True).encode()
        dfd = self._dir_fd()
        tmp = f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd
            )
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self._name(pid, start), src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileExistsError:
                return False
            os.fsync(dfd)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            os.close(dfd)

    def expire(self) -> int:
        """Remove the records of workers that ended (their pid is gone or reused)."""
        removed = 0
        dfd = self._dir_fd()
        try:
            for name in os.listdir(dfd):
                parsed = _parse_record_name(name)
                if parsed is None or same_process(*parsed):
                    continue
                try:
                    os.unlink(name, dir_fd=dfd)
                    removed += 1
                except FileNotFoundError:
                    pass
        finally:
            os.close(dfd)
        return removed


def _parse_record_name(name: str) -> tuple[int, str] | None:
    if not (name.startswith(_RECORD_PREFIX) and name.endswith(".json")):
        return None
    pid, _, start = name[len(_RECORD_PREFIX) : -len(".json")].partition("-")
    if not (pid.isdigit() and start.isdigit()):
        return None
    return int(pid), start


def _read_record(dfd: int, name: str) -> dict[str, Any] | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # a symlink or worse where a record belongs: no registration
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD_BYTES:
            return None
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("trusted"), bool):
        return None
    try:
        validate_scope(record.get("scope"))
    except ConfigError:
        return None
    return record


def job_of(registry: Registry, pid: int) -> dict[str, Any]:
    """The registration governing process ``pid``: the OUTERMOST registered ancestor, so a
    process inside a job can never shadow its job's registration with one of its own."""
    found = None
    for ancestor, start in ancestry(pid):
        record = registry.lookup(ancestor, start)
        if record is not None:
            found = record
    if found is None:
        return {"trusted": False, "scope": UNREGISTERED, "reason": "no job registration"}
    cgroup = process_cgroup(pid)
    if cgroup is None or cgroup != found.get("cgroup"):
        # Under a worker yet outside its cgroup: not a process the runner started for the job.
        return {"trusted": False, "scope": UNREGISTERED, "reason": "outside its worker's cgroup"}
    return found


def scope_of(registry: Registry, pid: int) -> str:
    record = job_of(registry, pid)
    return TRUSTED if record["trusted"] else record["scope"]


def register_job(registry: Registry, peer_pid: int, peer_uid: int, args: dict[str, Any]) -> dict:
    """Bind the trust facts to the job's worker: ``worker_pid`` when given (the GitHub hook
    passes its $PPID, the Runner.Worker), else the caller's parent (GitLab's pre-build snippet
    runs in the job's shell). Refused when any process above the caller is registered
    already: job code always runs below its registered worker, so it can neither change its
    job's trust nor register a process further up (which would govern later jobs)."""
    trusted = args.get("trusted")
    scope = args.get("scope")
    reason = args.get("reason")
    if not isinstance(trusted, bool) or not isinstance(reason, str):
        raise ProtocolError("register-job needs trusted (true/false) and reason")
    validate_scope(scope)
    if trusted != (scope == TRUSTED):
        raise ProtocolError("register-job: a trusted job has scope 'trusted', no other does")
    chain = ancestry(peer_pid)
    above = chain[1:]
    if not above:
        raise RunnerkeepError("register-job: the caller's parent process is gone")
    for ancestor, ancestor_start in above:
        if registry.lookup(ancestor, ancestor_start) is not None:
            raise RunnerkeepError(
                f"register-job refused: process {ancestor} is registered already (a job "
                "cannot change its trust once its job-start hook ran)"
            )
    wanted = _int_arg(args, "worker_pid")
    matches = [item for item in above if wanted is None or item[0] == wanted]
    if not matches:
        raise RunnerkeepError(f"register-job: process {wanted} is not an ancestor of the caller")
    worker, start = matches[0]
    if worker == 1:
        raise RunnerkeepError("register-job: the worker cannot be init")
    if process_uid(worker) != peer_uid:
        raise RunnerkeepError("register-job: the worker runs as another user than the caller")
    parent = _parent_of(chain, worker)
    cgroup = process_cgroup(worker)
    if cgroup is None or process_cgroup(peer_pid) != cgroup:
        raise RunnerkeepError("register-job: the caller is not in its worker's cgroup")
    registry.expire()
    _check_cgroup_siblings(registry, worker, cgroup, parent)
    record = {
        "pid": worker,
        "start_time": start,
        "cgroup": cgroup,
        "parent_pid": parent[0],
        "parent_start_time": parent[1],
        "uid": peer_uid,
        "trusted": trusted,
        "scope": scope,
        "reason": reason[:200],
        "registered": time.time(),
        # Where the job's builds come from (repository, ref, commit, job id), read by the hook
        # before job code ran, like the trust facts: the provenance of what the job pushes.
        "provenance": clean_provenance(args.get("provenance")),
    }
    if not registry.register(worker, start, record):
        raise RunnerkeepError(f"register-job refused: worker {worker} is registered already")
    return {"result": "registered", "worker_pid": worker, "trusted": trusted, "scope": scope}


def _parent_of(chain: list[tuple[int, str]], worker: int) -> tuple[int, str]:
    """The worker's parent (the runner agent): pid and start time, from the same walk."""
    pids = [pid for pid, _ in chain]
    index = pids.index(worker)
    if index + 1 >= len(chain):
        raise RunnerkeepError(f"register-job: the parent of worker {worker} is gone")
    return chain[index + 1]


def _check_cgroup_siblings(
    registry: Registry, worker: int, cgroup: str, parent: tuple[int, str]
) -> None:
    """A second live worker in one cgroup must be a sibling of one registered there: a child
    of the same live agent. Job code can leave its worker's ancestry (its parent exits, it is
    re-parented to init or a subreaper) but not its cgroup, and it cannot make the agent fork.
    pid 1 reaps every orphan, so "both are children of pid 1" proves nothing."""
    for record in registry.live_records():
        if record.get("cgroup") != cgroup or record.get("pid") == worker:
            continue
        their_parent = (record.get("parent_pid"), record.get("parent_start_time"))
        if parent[0] != 1 and their_parent == parent and same_process(*parent):
            continue
        raise RunnerkeepError(
            f"register-job refused: worker {record.get('pid')} of this cgroup is registered "
            "already and the caller's worker is not its sibling under the runner agent"
        )


# -- one connection ------------------------------------------------------------------------
def read_request(
    sock: socket.socket, deadline: float = REQUEST_DEADLINE
) -> tuple[dict[str, Any], list[int]]:
    """The request and the fds that came with it; ProtocolError when it is not complete
    within ``deadline`` seconds in all (however slowly it drips), too big, or malformed."""
    end = time.monotonic() + deadline
    buf = bytearray()
    fds: list[int] = []
    try:
        while b"\n" not in buf:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"no complete request within {deadline:g} s")
            sock.settimeout(remaining)
            try:
                data, ancdata, flags, _addr = sock.recvmsg(
                    4096, socket.CMSG_SPACE(4 * struct.calcsize("i"))
                )
            except socket.timeout:
                raise ProtocolError(f"no complete request within {deadline:g} s") from None
            fds.extend(_fds_in(ancdata))
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError("too many file descriptors in the request")
            if not data:
                raise ProtocolError("the connection closed before a complete request")
            buf += data
            if len(buf) > MAX_REQUEST_BYTES:
                raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes")
        request = _parse_request(bytes(buf[: buf.index(b"\n")]))
        if len(fds) > 1:
            raise ProtocolError("at most one file descriptor per request")
        return request, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _fds_in(ancdata: list) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


def _parse_request(line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("the request is not JSON") from None
    if not isinstance(request, dict) or request.get("v") != PROTOCOL:
        raise ProtocolError(f"unknown request (protocol version {PROTOCOL} expected)")
    if request.get("op") not in OPS:
        raise ProtocolError(f"unknown operation {request.get('op')!r}")
    if not isinstance(request.get("args", {}), dict):
        raise ProtocolError("args must be an object")
    request.setdefault("args", {})
    return request


def check_passed_fd(fd: int, writable: bool) -> None:
    """The job's file for import/export: a regular file or a pipe, opened the right way round
    (never a device, socket or directory the service would act on)."""
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise ProtocolError("the file passed must be a regular file or a pipe")
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    wanted = (os.O_WRONLY, os.O_RDWR) if writable else (os.O_RDONLY, os.O_RDWR)
    if mode not in wanted:
        way = "writing" if writable else "reading"
        raise ProtocolError(f"the file passed is not open for {way}")


def _int_arg(args: dict[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{name} must be a non-negative integer")
    return value


def _bool_arg(args: dict[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be true or false")
    return value


def _key_arg(args: dict[str, Any]) -> str:
    key = args.get("key")
    if not isinstance(key, str):
        raise ProtocolError("key missing")
    return validate_key(key)


def _source_arg(args: dict[str, Any]) -> str:
    source = args.get("source")
    if not isinstance(source, str):
        return "fd"
    # Recorded in the entry as metadata only: printable, bounded.
    clean = "".join(c if c.isprintable() else "?" for c in source[:MAX_SOURCE_CHARS])
    return f"job:{clean}"


def _remote_args(args: dict[str, Any], fleet: Any) -> Any:
    """The fleet tier for this request: None when the host has none or the job opted out.
    A job never names the registry: the service would send the host's credentials there."""
    if args.get("remote") is not None:
        raise ProtocolError("a job cannot choose the registry: the service uses cache.remote")
    if _bool_arg(args, "no_remote") or fleet is None or not getattr(fleet, "enabled", False):
        return None
    return fleet


def _job_trust(job: dict[str, Any] | None, scope: str) -> tuple[bool, str, str]:
    """(trusted, scope, reason) of the requesting job, as its registration says."""
    if job is None:
        return scope == TRUSTED, scope, "scope of the request"
    return bool(job.get("trusted")), scope, str(job.get("reason") or "")


def _job_provenance(job: dict[str, Any] | None) -> dict[str, str]:
    facts = clean_provenance((job or {}).get("provenance"))
    facts["host"] = socket.gethostname()
    return facts


def _fleet_op(
    op: str,
    key: str,
    args: dict[str, Any],
    scope: str,
    store: Store,
    events_dir: str | None,
    job: dict[str, Any] | None,
    fleet: Any,
) -> dict[str, Any]:
    """``push`` (a trusted job only: the decision is the fleet tier's) and ``pull``."""
    remote = _remote_args(args, fleet)
    if remote is None:
        raise ConfigError(f"cache {op}: this host has no fleet tier (cache.remote) configured")
    if op == "pull":
        # The job's scope: an untrusted job's pull never evicts another entry to make room.
        return remote.pull(store, key, state_dir=events_dir, scope=scope)
    return remote.push(
        store,
        key,
        trust=_job_trust(job, scope),
        provenance=_job_provenance(job),
        state_dir=events_dir,
        verify_remote=_bool_arg(args, "verify_remote"),
    )


def dispatch(
    op: str,
    args: dict[str, Any],
    fds: list[int],
    scope: str,
    store: Store,
    settings: dict[str, Any],
    events_dir: str | None = None,
    *,
    job: dict[str, Any] | None = None,
    fleet: Any = None,
) -> dict[str, Any]:
    """Run one operation for a job of ``scope``; returns its data (raises like the core). Its
    event goes to ``events_dir`` (root's state dir; None: no event). ``job``: the requester's
    registration (trust, reason, provenance); ``fleet``: the host's fleet tier (None: none)."""
    if op in ("import", "export"):
        if len(fds) != 1:
            raise ProtocolError(f"{op} needs the file passed as a descriptor")
        check_passed_fd(fds[0], writable=op == "export")
    elif fds:
        raise ProtocolError(f"{op} takes no file descriptor")
    if op == "list":
        return list_entries(store, scope=scope)
    key = _key_arg(args)
    if op in ("push", "pull"):
        return _fleet_op(op, key, args, scope, store, events_dir, job, fleet)
    if op == "restore":
        remote = _remote_args(args, fleet)
        dry_run = _bool_arg(args, "dry_run")
        if remote is None:
            return restore_entry(store, key, scope=scope, state_dir=events_dir, dry_run=dry_run)
        # The job's trust: a job that may push records the key's use after a fleet restore.
        return remote.restore(
            store,
            key,
            scope=scope,
            state_dir=events_dir,
            dry_run=dry_run,
            trust=_job_trust(job, scope),
        )
    if op == "export":
        with transfer(fds[0], to_job=True, deadline=_transfer_deadline(settings)) as fd:
            return export_entry_fd(store, key, fd, scope=scope, state_dir=events_dir)
    if op == "import":
        with transfer(fds[0], to_job=False, deadline=_transfer_deadline(settings)) as fd:
            return import_archive_fd(
                store,
                key,
                fd,
                _source_arg(args),
                scope=scope,
                state_dir=events_dir,
                reserve=settings["reserve"],
                max_size=settings["max_size"],
            )
    images = args.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise ProtocolError("save needs images: a list of image references")
    if _bool_arg(args, "make_room"):
        raise ConfigError("--make-room is not available through the cache service")
    # A job may ask for more free space to be left, never for less than the host's setting.
    reserve = max(_int_arg(args, "reserve") or 0, settings["reserve"])
    remote = _remote_args(args, fleet)
    dry_run = _bool_arg(args, "dry_run")
    result = save_entry(
        store,
        key,
        images,
        scope=scope,
        reserve=reserve,
        check_space=not _bool_arg(args, "skip_space_check"),
        max_size=settings["max_size"],
        state_dir=events_dir,
        dry_run=dry_run,
    )
    if remote is not None:
        _push_after_save(remote, store, key, result, events_dir, _job_trust(job, scope), job)
    return result


def _push_after_save(
    remote: Any,
    store: Store,
    key: str,
    result: dict[str, Any],
    events_dir: str | None,
    trust: tuple[bool, str, str],
    job: dict[str, Any] | None,
) -> None:
    """The push after a job's save: only a trusted job's, never failing the save."""
    pushed = remote.push_after_save(
        store,
        key,
        result,
        trust=trust,
        provenance=_job_provenance(job),
        state_dir=events_dir,
        dry_run=result.get("result") == "would_save",
    )
    if pushed is not None:
        result["push"] = pushed
        if pushed.get("warning"):
            result["warnings"] = [*(result.get("warnings") or []), pushed["warning"]]


# -- bounded data transfer with the job's fd ---------------------------------------------------
class TransferStalled(RunnerkeepError):
    """The job's file stopped moving (or the transfer ran past its cap): nothing committed."""


def _transfer_deadline(settings: dict[str, Any]) -> float:
    value = settings.get("transfer_deadline")
    return float(value) if isinstance(value, (int, float)) and value > 0 else TRANSFER_DEADLINE


class _Pump:
    """Copies between the job's fd and one end of a socketpair on a thread, polling the job's
    fd with a deadline; the core reads or writes the other end as a plain fd. On a stall the
    core's end is reset: its next read or write fails (ECONNRESET/EPIPE), never a clean EOF, so
    a cut-short archive is never taken for a complete one and no entry is committed."""

    def __init__(self, job_fd: int, to_job: bool, idle: float, deadline: float) -> None:
        self.job_fd = job_fd
        self.to_job = to_job
        self.idle = idle
        self.end = time.monotonic() + deadline
        self.deadline = deadline
        self.core, self.pump = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.stop = threading.Event()
        self.error: str | None = None
        self.fifo = stat.S_ISFIFO(os.fstat(job_fd).st_mode)
        self.thread = threading.Thread(target=self._run, name="cache-transfer", daemon=True)

    def _wait_job(self, event: int) -> None:
        """Until the job's fd is ready for ``event``; TransferStalled past either deadline."""
        poller = select.poll()
        poller.register(self.job_fd, event | select.POLLHUP | select.POLLERR)
        idle_end = time.monotonic() + self.idle
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= self.end:
                raise TransferStalled(f"transfer took longer than {self.deadline:g} s")
            if now >= idle_end:
                raise TransferStalled(
                    f"the file passed moved no data for {self.idle:g} s (a pipe kept open "
                    "but not fed or drained?)"
                )
            wait = min(_PUMP_SLICE, idle_end - now, self.end - now)
            if poller.poll(max(1, int(wait * 1000))):
                return
        raise TransferStalled("transfer stopped")

    def _run(self) -> None:
        try:
            if self.to_job:
                self._to_job()
            else:
                self._from_job()
        except (TransferStalled, OSError) as exc:
            # Stopped because the core failed first: the core's error is the one to report.
            if not self.stop.is_set():
                self.error = str(exc) if isinstance(exc, TransferStalled) else _fd_failed(exc)
            self._reset_core()
        else:
            with contextlib.suppress(OSError):
                self.pump.close()

    def _from_job(self) -> None:
        while True:
            self._wait_job(select.POLLIN)
            data = os.read(self.job_fd, _PUMP_CHUNK)
            if not data:
                self.pump.shutdown(socket.SHUT_WR)  # the job's EOF, passed on as EOF
                return
            self.pump.sendall(data)  # the core's own pace: no deadline on the job here

    def _to_job(self) -> None:
        self.pump.settimeout(_PUMP_SLICE)
        while not self.stop.is_set():
            try:
                data = self.pump.recv(_PUMP_CHUNK)
            except socket.timeout:
                continue
            if not data:
                return  # the core finished and everything reached the job
            self._write_job(memoryview(data))
        raise TransferStalled("transfer stopped")

    def _write_job(self, data: memoryview) -> None:
        # POLLOUT on a pipe promises room for PIPE_BUF bytes only: larger writes could block.
        step = select.PIPE_BUF if self.fifo else len(data)
        while data:
            self._wait_job(select.POLLOUT)
            written = os.write(self.job_fd, data[:step])
            data = data[written:]

    def _reset_core(self) -> None:
        # Unread data in the closing end makes the kernel reset the other one: the core's
        # pending read fails instead of seeing an end-of-file.
        with contextlib.suppress(OSError):
            self.core.setblocking(False)
            self.core.send(b"\0")
        with contextlib.suppress(OSError):
            self.pump.close()

    def finish(self, core_ok: bool) -> None:
        """Wait for the pump (an export's last bytes to reach the job); stop it when the core
        failed. Raises TransferStalled when the job's side stalled or failed."""
        if core_ok and self.to_job:
            with contextlib.suppress(OSError):
                self.core.shutdown(socket.SHUT_WR)
        else:
            self.stop.set()
            with contextlib.suppress(OSError):
                self.core.shutdown(socket.SHUT_RDWR)
        self.thread.join()
        self.core.close()
        if self.error:
            raise TransferStalled(f"transfer aborted, nothing stored or sent in full: {self.error}")


def _fd_failed(exc: OSError) -> str:
    return f"the file passed failed: {exc.strerror or exc}"


@contextlib.contextmanager
def transfer(
    job_fd: int, to_job: bool, deadline: float = TRANSFER_DEADLINE, idle: float | None = None
):
    """An fd the core can read (import) or write (export) as if it were the job's, with the
    job's side bounded by an inactivity timeout and an overall deadline."""
    pump = _Pump(job_fd, to_job, TRANSFER_IDLE_TIMEOUT if idle is None else idle, deadline)
    pump.thread.start()
    try:
        yield pump.core.fileno()
    except BaseException:
        pump.finish(core_ok=False)  # a stall's message replaces the core's reset error
        raise
    pump.finish(core_ok=True)


def serve_connection(
    sock: socket.socket,
    store: Store,
    settings: dict[str, Any],
    registry: Registry,
    formatter: Callable[[str, dict[str, Any], dict[str, Any]], str] | None = None,
    deadline: float = REQUEST_DEADLINE,
    events_dir: str | None = None,
    fleet: Any = None,
) -> dict[str, Any]:
    """Serve the one request on ``sock`` and send its response; returns the response. Every
    failure is a response with an exit code and a one-line error, never a traceback.
    ``events_dir``: root's state dir, where the operation's event is recorded (the module
    docstring says how it reaches the watch). ``fleet``: the host's fleet tier (the module
    docstring says what the service does with it)."""
    fds: list[int] = []
    response: dict[str, Any]
    try:
        pid, uid, _gid = peer_credentials(sock)
        request, fds = read_request(sock, deadline)
        op, args = request["op"], request["args"]
        if op == "register-job":
            data = register_job(registry, pid, uid, args)
        else:
            job = job_of(registry, pid)
            scope = TRUSTED if job["trusted"] else job["scope"]
            data = dispatch(
                op, args, fds, scope, store, settings, events_dir=events_dir, job=job, fleet=fleet
            )
        text = formatter(op, args, data) if formatter else ""
        response = {"exit_code": EXIT_OK, "data": data, "text": text, "error": None}
    except RunnerkeepError as exc:
        response = {"exit_code": exc.exit_code, "data": None, "text": "", "error": str(exc)}
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        message = f"{exc.strerror or exc}{where}"
        response = {"exit_code": EXIT_FAILURE, "data": None, "text": "", "error": message}
    except Exception as exc:  # the guard: a job gets one line, never a traceback
        message = f"internal error in the cache service: {type(exc).__name__}: {exc}"
        response = {"exit_code": EXIT_FAILURE, "data": None, "text": "", "error": message}
    finally:
        for fd in fds:
            os.close(fd)
    _send_response(sock, response)
    _discard_input(sock)
    return response


def _discard_input(sock: socket.socket) -> None:
    """After the answer: end our side, then read away what the client still sends (an
    oversized request's rest), bounded. Closing a unix socket with unread input resets the
    client's end, and the client would see ECONNRESET instead of the one-line error."""
    end = time.monotonic() + DISCARD_DEADLINE
    total = 0
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        while total < MAX_DISCARD_BYTES:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            data = sock.recv(1 << 16)  # not recvmsg: fds sent along are dropped by the kernel
            if not data:
                return
            total += len(data)


def send_error(sock: socket.socket, exc: RunnerkeepError) -> None:
    """Answer with an error before any request was read (e.g. the service's config is bad)."""
    _send_response(sock, {"exit_code": exc.exit_code, "data": None, "text": "", "error": str(exc)})


def _send_response(sock: socket.socket, response: dict[str, Any]) -> None:
    data = (json.dumps(response, sort_keys=True, default=str) + "\n").encode()
    try:
        sock.settimeout(RESPONSE_SEND_TIMEOUT)
        sock.sendall(data)
    except OSError:
        pass  # the client went away; nothing else to tell it


# -- the client side -----------------------------------------------------------------------
def call_service(
    socket_path: str,
    op: str,
    args: dict[str, Any],
    fd: int | None = None,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Send one request; the response's data, or ServiceError with the exit code and message
    the direct command would have given. No timeout on the answer: a restore takes minutes."""
    line = (json.dumps({"v": PROTOCOL, "op": op, "args": args}) + "\n").encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            raise ServiceError(
                f"cannot reach the cache service at {socket_path}: {exc.strerror or exc}",
                EXIT_FAILURE,
            ) from None
        if fd is None:
            sock.sendall(line)
        else:
            socket.send_fds(sock, [line], [fd])
        sock.settimeout(None)
        raw = _read_response(sock)
    finally:
        sock.close()
    try:
        response = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ServiceError("the cache service sent no valid answer", EXIT_FAILURE) from None
    if not isinstance(response, dict) or type(response.get("exit_code")) is not int:
        raise ServiceError("the cache service sent no valid answer", EXIT_FAILURE)
    if response.get("error") or response["exit_code"] != EXIT_OK:
        raise ServiceError(str(response.get("error") or "failed"), response["exit_code"])
    data = response.get("data")
    return data if isinstance(data, dict) else {}


def _read_response(sock: socket.socket) -> bytes:
    chunks = []
    total = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise ServiceError("the cache service's answer is too large", EXIT_FAILURE)
        chunks.append(chunk)
    if not chunks:
        raise ServiceError(
            "the cache service closed the connection without an answer", EXIT_FAILURE
        )
    return b"".join(chunks)


def is_socket(path: str | None) -> bool:
    try:
        return bool(path) and stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def store_writable_directly(store_dir: str) -> bool:
    """Root and the store's owner use the store directly; anyone else goes through the
    service. A store that does not exist yet is a single-user machine's: direct."""
    if os.geteuid() == 0:
        return True
    try:
        return os.stat(store_dir).st_uid == os.geteuid()
    except FileNotFoundError:
        return True
    except OSError as exc:
        return exc.errno not in (errno.EACCES, errno.EPERM)
