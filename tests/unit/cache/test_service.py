"""The cache service end to end over a real unix socket: SO_PEERCRED, the job registry bound to
a real worker process, scopes, fd passing, and the request deadline against a dripping client.

The service runs in a thread of this process; clients are real child processes (the CLI), so
the peer credentials and the process ancestry the service walks are the kernel's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cachetest_helpers import legacy_archive, random_layer
from runnerkeep.cache import Store, cache_settings, export_entry, import_archive, service
from runnerkeep.cache.store import validate_key
from runnerkeep.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
LAYER_TRUSTED = random_layer(20_000, "trusted")
LAYER_EVIL = random_layer(20_000, "evil")
PYPATH = os.pathsep.join(os.path.join(REPO, p) for p in ("module_utils", "cli", "tests"))
CLIENT_TIMEOUT = 60
# How late past a deadline the service's answer may arrive. The service runs in this process,
# and a busy CI host can stall it for a second or more; a service without the deadline would
# only answer when the dripping request is whole (13.6 s) or not at all (the client's patience).
LATE = 5.0


class Service:
    """A listening socket served by serve_connection, one thread per connection."""

    def __init__(self, tmp_path, deadline=service.REQUEST_DEADLINE, events_dir=None):
        self.key_file = tmp_path / "cache.key"
        self.key_file.write_bytes(os.urandom(32))
        self.socket_path = str(tmp_path / "cache.sock")
        self.config_path = tmp_path / "config.json"
        self.config = {
            "paths": {"cache_dir": str(tmp_path / "store"), "state_dir": str(tmp_path / "state")},
            "cache": {"service_socket": self.socket_path, "key_file": str(self.key_file)},
        }
        self.config_path.write_text(json.dumps(self.config))
        self.store = Store(str(tmp_path / "store"), key_file=str(self.key_file))
        self.registry = service.Registry(str(tmp_path / "service-state"))
        self.deadline = deadline
        self.events_dir = events_dir
        self.responses: list[dict] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        settings = cache_settings(self.config)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return

            def serve(conn=conn):
                with conn:
                    self.responses.append(
                        service.serve_connection(
                            conn,
                            self.store,
                            settings,
                            self.registry,
                            deadline=self.deadline,
                            events_dir=self.events_dir,
                        )
                    )

            threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def svc(tmp_path):
    s = Service(tmp_path)
    yield s
    s.close()


def cli(svc, *words):
    return [sys.executable, "-m", "runnerkeep_cli", *words, "--config", str(svc.config_path)]


def run_under_worker(commands, env_extra=None):
    """Run ``commands`` one after another as children of one stand-in worker process (what the
    runner agent's Runner.Worker is for a job's hook and steps). Returns [(rc, out, err)]."""
    worker = (
        "import json, subprocess, sys\n"
        "out = []\n"
        "for cmd in json.loads(sys.argv[1]):\n"
        f"    r = subprocess.run(cmd, capture_output=True, text=True, timeout={CLIENT_TIMEOUT})\n"
        "    out.append([r.returncode, r.stdout, r.stderr])\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PYTHONPATH": PYPATH, **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-c", worker, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLIENT_TIMEOUT * (len(commands) + 1),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def archive(tmp_path, layers, tag):
    path = tmp_path / f"a-{os.urandom(3).hex()}.tar"
    path.write_bytes(legacy_archive([([tag], layers)]))
    return str(path)


FORK_PR = {"GITHUB_EVENT_NAME": "pull_request", "GITHUB_REPOSITORY": "me/app"}


def fork_event(tmp_path):
    path = tmp_path / "event.json"
    path.write_text(
        json.dumps(
            {
                "pull_request": {
                    "number": 7,
                    "head": {"repo": {"fork": True, "full_name": "evil/app"}},
                    "base": {"repo": {"fork": False, "full_name": "me/app"}},
                }
            }
        )
    )
    return {**FORK_PR, "GITHUB_EVENT_PATH": str(path)}


# -- registration and scopes ----------------------------------------------------------------
def test_fork_pr_import_cannot_change_what_a_trusted_restore_loads(tmp_path, svc):
    trusted = import_archive(svc.store, "app-main", archive(tmp_path, [LAYER_TRUSTED], "app:main"))
    evil = archive(tmp_path, [LAYER_EVIL], "app:main")
    results = run_under_worker(
        [
            cli(svc, "cache", "register-job", "--json"),
            cli(svc, "cache", "import", "--service", "--json", "--key", "app-main", evil),
            # job code trying to register its way to trust: refused (its worker is registered)
            cli(svc, "cache", "register-job", "--json"),
        ],
        env_extra=fork_event(tmp_path),
    )
    (rc1, out1, _), (rc2, out2, err2), (rc3, out3, err3) = results
    assert rc1 == 0 and json.loads(out1)["result"] == "registered"
    assert json.loads(out1)["scope"].startswith("pr-7-")
    assert rc2 == 0, err2
    assert json.loads(out2)["scope"].startswith("pr-7-")
    assert rc3 == 0 and json.loads(out3)["result"] == "not registered"
    assert "registered already" in err3
    # The trusted entry is the one it was; a trusted export still gets it.
    result = export_entry(svc.store, "app-main", str(tmp_path / "out.tar"))
    assert result["entry_digest"] == trusted["entry_digest"] and result["scope"] == "trusted"


def test_trusted_job_saves_to_trusted_and_unregistered_job_does_not(tmp_path, svc):
    good = archive(tmp_path, [LAYER_TRUSTED], "app:main")
    results = run_under_worker(
        [
            cli(svc, "cache", "register-job", "--json"),
            cli(svc, "cache", "import", "--service", "--json", "--key", "app-main", good),
        ],
        env_extra={"GITHUB_EVENT_NAME": "push"},
    )
    assert [r[0] for r in results] == [0, 0], results
    assert json.loads(results[1][1])["scope"] == "trusted"
    assert svc.store.read_entry("app-main")[0]["scope"] == "trusted"
    # A process under no registered worker is "unregistered": its import lands there.
    evil = archive(tmp_path, [LAYER_EVIL], "app:main")
    proc = subprocess.run(
        cli(svc, "cache", "import", "--service", "--json", "--key", "other", evil),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": PYPATH},
        timeout=CLIENT_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["scope"] == "unregistered"
    assert os.path.exists(svc.store.entry_path("@unregistered@other"))
    assert not os.path.exists(svc.store.entry_path("other"))


def test_list_and_export_through_the_service_match_direct_mode(tmp_path, svc):
    import_archive(svc.store, "app-main", archive(tmp_path, [LAYER_TRUSTED], "app:main"))
    env = {**os.environ, "PYTHONPATH": PYPATH}
    via = subprocess.run(
        cli(svc, "cache", "list", "--service", "--json"), capture_output=True, text=True, env=env
    )
    direct = subprocess.run(
        cli(svc, "cache", "list", "--no-service", "--json"), capture_output=True, text=True, env=env
    )
    assert via.returncode == direct.returncode == 0, via.stderr
    assert json.loads(via.stdout)["entries"] == json.loads(direct.stdout)["entries"]
    out = tmp_path / "export.tar"
    exp = subprocess.run(
        cli(svc, "cache", "export", "--service", "--key", "app-main", "-o", str(out)),
        capture_output=True,
        text=True,
        env=env,
    )
    assert exp.returncode == 0, exp.stderr
    assert exp.stdout.startswith("exported key 'app-main' to ")
    assert out.stat().st_size > 20_000
    miss = subprocess.run(
        cli(svc, "cache", "export", "--service", "--key", "nope", "-o", str(tmp_path / "n.tar")),
        capture_output=True,
        text=True,
        env=env,
    )
    assert miss.returncode == 3 and "no cache entry for key 'nope'" in miss.stderr
    assert "Traceback" not in miss.stderr
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-export-")]


# -- the connection itself ------------------------------------------------------------------
def raw_request(svc, payload: bytes, fds=()):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(svc.socket_path)
        if fds:
            socket.send_fds(sock, [payload], list(fds))
        else:
            sock.sendall(payload)
        return json.loads(service._read_response(sock))


def test_dripping_client_is_cut_at_the_deadline(tmp_path):
    svc = Service(tmp_path, deadline=2.0)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            start = time.monotonic()  # before the connect: the service's clock starts later
            sock.connect(svc.socket_path)
            sock.settimeout(0.1)
            answer = b""
            request = b'{"v": 1, "op": "list", "args": {}}'
            for sent, byte in enumerate(request, 1):  # noqa: B007 - checked below
                with contextlib.suppress(OSError):
                    sock.sendall(bytes([byte]))
                with contextlib.suppress(socket.timeout, OSError):
                    answer += sock.recv(4096)
                if answer.endswith(b"\n") or time.monotonic() - start > 10:
                    break
                time.sleep(0.3)
            elapsed = time.monotonic() - start
        response = json.loads(answer)
        assert response["exit_code"] == 2
        assert "no complete request within 2 s" in response["error"]
        assert sent < len(request)  # cut while it still dripped
        assert 2.0 <= elapsed < 2.0 + LATE
    finally:
        svc.close()


def test_silent_client_is_cut_at_the_deadline(tmp_path):
    svc = Service(tmp_path, deadline=1.0)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            start = time.monotonic()  # before the connect: the service's clock starts later
            sock.connect(svc.socket_path)
            sock.settimeout(30)
            response = json.loads(service._read_response(sock))
            assert 1.0 <= time.monotonic() - start < 1.0 + LATE
        assert "no complete request" in response["error"]
    finally:
        svc.close()


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json\n", "not JSON"),
        (b'{"v": 2, "op": "list"}\n', "protocol version"),
        (b'{"v": 1, "op": "prune"}\n', "unknown operation"),
        (b'{"v": 1, "op": "restore", "args": {"key": "../x"}}\n', "invalid cache key"),
        (b'{"v": 1, "op": "restore", "args": {"key": ".hidden"}}\n', "invalid cache key"),
        (b'{"v": 1, "op": "restore", "args": {"key": "-x"}}\n', "invalid cache key"),
        (b'{"v": 1, "op": "save", "args": {"key": "k", "images": "x"}}\n', "images"),
        (b"x" * (service.MAX_REQUEST_BYTES + 10), "larger than"),
    ],
)
def test_bad_requests_get_one_line_errors(svc, payload, message):
    response = raw_request(svc, payload)
    assert response["exit_code"] == 2
    assert message in response["error"]
    assert "Traceback" not in response["error"]


def test_a_much_larger_request_gets_the_one_line_error_not_a_reset(svc):
    """The service stops reading at the limit; what the client still sends is read away after
    the answer, so the client gets the error line instead of ECONNRESET."""
    response = raw_request(svc, b"x" * (8 * service.MAX_REQUEST_BYTES))
    assert response["exit_code"] == 2
    assert "larger than" in response["error"]


def test_a_key_starting_with_a_dot_is_refused_before_the_store_is_touched(tmp_path, svc):
    path = archive(tmp_path, [LAYER_EVIL], "a:b")
    with pytest.raises(ConfigError, match="starting with a letter or digit"):
        import_archive(svc.store, ".hidden", path)
    assert validate_key("a.b-c_d") == "a.b-c_d"
    assert not os.path.exists(svc.store.entry_path("app-main"))


def test_register_job_with_bad_facts_is_refused(svc):
    bad = {"v": 1, "op": "register-job", "args": {"trusted": True, "scope": "pr-1", "reason": ""}}
    response = raw_request(svc, (json.dumps(bad) + "\n").encode())
    assert response["exit_code"] == 2 and "scope 'trusted'" in response["error"]


def test_import_fd_must_be_a_file_or_pipe_open_for_reading(tmp_path, svc):
    line = b'{"v": 1, "op": "import", "args": {"key": "k"}}\n'
    dir_fd = os.open(str(tmp_path), os.O_RDONLY)
    try:
        response = raw_request(svc, line, [dir_fd])
    finally:
        os.close(dir_fd)
    assert "regular file or a pipe" in response["error"]
    write_only = os.open(str(tmp_path / "w"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        response = raw_request(svc, line, [write_only])
    finally:
        os.close(write_only)
    assert "not open for reading" in response["error"]
    assert not os.path.exists(svc.store.entry_path("@unregistered@k"))


def test_import_through_a_pipe_fd(tmp_path, svc):
    data = legacy_archive([(["app:pipe"], [LAYER_TRUSTED])])
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    line = b'{"v": 1, "op": "import", "args": {"key": "piped", "source": "stdin\\n"}}\n'
    try:
        writer.start()
        response = raw_request(svc, line, [read_end])
    finally:
        os.close(read_end)
        writer.join(10)
    assert response["exit_code"] == 0, response
    assert response["data"]["scope"] == "unregistered"
    entry, _ = svc.store.read_entry("@unregistered@piped")
    assert entry["source"] == ["job:stdin?"]


def test_peer_credentials_are_the_kernels():
    a, b = socket.socketpair()
    with a, b:
        assert service.peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())


def test_ancestry_reaches_this_process_from_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(100):
            chain = service.ancestry(child.pid)
            if len(chain) >= 2:
                break
            time.sleep(0.05)
        assert [pid for pid, _ in chain[:2]] == [child.pid, os.getpid()]
    finally:
        child.kill()
        child.wait()


def test_registry_first_registration_wins_and_dead_workers_expire(tmp_path):
    registry = service.Registry(str(tmp_path / "reg"))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = service.proc_stat(child.pid)[1]
        record = {"trusted": False, "scope": "pr-1", "reason": "x"}
        assert registry.register(child.pid, start, record)
        assert not registry.register(child.pid, start, {**record, "trusted": True})
        assert registry.lookup(child.pid, start)["trusted"] is False
    finally:
        child.kill()
        child.wait()
    assert registry.expire() == 1
    assert registry.lookup(child.pid, start) is None


def test_registry_ignores_a_planted_symlink(tmp_path):
    registry = service.Registry(str(tmp_path / "reg"))
    target = tmp_path / "fake.json"
    target.write_text(json.dumps({"trusted": True, "scope": "trusted"}))
    os.makedirs(registry.directory)
    os.symlink(target, os.path.join(registry.directory, "worker-1-1.json"))
    assert registry.lookup(1, "1") is None


def test_hook_registers_the_worker_named_by_pid_and_job_code_cannot_register_above_it(
    tmp_path, svc
):
    """The GitHub hook is a script (sh) under the worker: it names the worker ($PPID). Job code
    later naming a process further up (the runner listener, here this test process) is refused:
    its worker is registered."""
    hook = ["sh", "-c", '"$@" --worker-pid "$PPID"', "hook"]
    results = run_under_worker(
        [
            [*hook, *cli(svc, "cache", "register-job", "--json")],
            cli(svc, "cache", "register-job", "--json", "--worker-pid", str(os.getpid())),
            ["sh", "-c", 'echo "$PPID"'],
        ],
        env_extra=fork_event(tmp_path),
    )
    first, second, worker = results
    assert json.loads(first[1])["result"] == "registered", first
    assert json.loads(first[1])["worker_pid"] == int(worker[1])  # the worker, not the hook's sh
    assert json.loads(second[1])["result"] == "not registered"
    assert "registered already" in second[2]
    # Only the worker's record exists: this process (the "listener") is not registered.
    from runnerkeep.cache.service import proc_stat

    assert svc.registry.lookup(os.getpid(), proc_stat(os.getpid())[1]) is None


def test_root_becomes_the_store_owner_before_touching_it(tmp_path):
    """Root in direct mode acts as the store's owner: what it creates there the service (that
    user) can still replace, and nothing runs as root inside the store."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it checks what root does)")
    from runnerkeep.cache.owner import drop_to_store_owner

    store_dir = tmp_path / "store"
    store_dir.mkdir()
    os.chown(store_dir, 65534, 65534)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through the pipe
        try:
            dropped = drop_to_store_owner(str(store_dir))
            os.write(write, f"{dropped} {os.geteuid()} {os.getuid()} {os.getegid()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as handle:
        assert handle.read() == "True 65534 65534 65534"
    assert drop_to_store_owner(str(tmp_path)) is False  # root's own dir: stays root


# -- a worker is its cgroup and its place under the agent -------------------------------------
ORPHAN_SCRIPT = r"""
import ctypes, json, os, subprocess, sys, time

role, cfg, out = sys.argv[1], sys.argv[2], sys.argv[3]
CLI = [sys.executable, "-m", "runnerkeep_cli"]


def run(words, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    r = subprocess.run(CLI + words + ["--config", cfg], capture_output=True, text=True,
                       env=env, timeout=60)
    return [r.returncode, r.stdout, r.stderr]


def wait_for(path):
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise SystemExit("timed out waiting for " + path)


if role == "reaper":  # a subreaper above the agent: orphans of the job land here
    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    open(out + ".reaper", "w").write(str(os.getpid()))
    agent = subprocess.Popen([sys.executable, __file__, "agent", cfg, out])
    agent.wait(timeout=120)
    for _ in range(1200):  # reap the re-parented orphan
        try:
            if os.waitpid(-1, os.WNOHANG) == (0, 0):
                time.sleep(0.05)
        except ChildProcessError:
            break
elif role == "agent":
    subprocess.run([sys.executable, __file__, "worker", cfg, out], timeout=120)
elif role == "worker":
    hook = run(["cache", "register-job", "--json"])  # the job-start hook: a fork PR
    json.dump(hook, open(out + ".hook", "w"))
    # job code: a child that forks the orphan and exits at once
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    subprocess.run([sys.executable, __file__, "middle", cfg, out], env=env, timeout=60)
    wait_for(out)  # the worker (and its registration) stays alive meanwhile
elif role == "middle":
    subprocess.Popen([sys.executable, __file__, "orphan", cfg, out, str(os.getpid())],
                     start_new_session=True)
elif role == "orphan":
    for _ in range(600):
        if os.getppid() != int(sys.argv[4]):
            break
        time.sleep(0.05)
    result = {"parent": os.getppid()}
    push = {"GITHUB_EVENT_NAME": "push"}
    result["register"] = run(["cache", "register-job", "--json", "--worker-pid",
                              str(os.getpid())], push)
    result["import"] = run(["cache", "import", "--service", "--json", "--key", "app-main",
                            sys.argv[5] if len(sys.argv) > 5 else os.environ["EVIL_ARCHIVE"]])
    json.dump(result, open(out + ".tmp", "w"))
    os.rename(out + ".tmp", out)
"""


def test_orphan_reparented_away_from_its_worker_cannot_register_as_a_trusted_worker(tmp_path, svc):
    """The f1 attack: job code double-forks, the orphan is re-parented to a subreaper (not the
    agent) and registers itself as a new worker with trusted facts. It is in the registered
    worker's cgroup and is no sibling of it: refused, and its import stays out of trusted."""
    trusted = import_archive(svc.store, "app-main", archive(tmp_path, [LAYER_TRUSTED], "app:main"))
    script = tmp_path / "roles.py"
    script.write_text(ORPHAN_SCRIPT)
    out = str(tmp_path / "orphan.json")
    env = {
        **os.environ,
        **fork_event(tmp_path),
        "PYTHONPATH": PYPATH,
        "EVIL_ARCHIVE": archive(tmp_path, [LAYER_EVIL], "app:main"),
    }
    reaper = subprocess.run(
        [sys.executable, str(script), "reaper", str(svc.config_path), out],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert reaper.returncode == 0, reaper.stderr
    hook = json.loads(Path(out + ".hook").read_text())
    assert hook[0] == 0 and json.loads(hook[1])["scope"].startswith("pr-7-"), hook
    result = json.loads(Path(out).read_text())
    assert result["parent"] == int(Path(out + ".reaper").read_text())  # re-parented, not to pid 1
    rc, stdout, stderr = result["register"]
    assert json.loads(stdout)["result"] == "not registered", result
    assert "sibling" in stderr and "Traceback" not in stderr
    rc, stdout, stderr = result["import"]
    assert rc == 0, stderr
    assert json.loads(stdout)["scope"] == "unregistered"
    result = export_entry(svc.store, "app-main", str(tmp_path / "out.tar"))
    assert result["entry_digest"] == trusted["entry_digest"] and result["scope"] == "trusted"


SIBLING_WORKER = (
    "import subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)\n"
    "print(r.returncode, r.stdout.replace('\\n', ' '), flush=True)\n"
    "sys.stdin.read()\n"  # stay alive (registered) until the agent lets go
)


def test_two_concurrent_workers_of_one_agent_both_register(tmp_path, svc):
    """Concurrent workers of one runner agent share its cgroup and are siblings under it: the
    second registration is accepted while the first worker still runs."""
    env = {**os.environ, "PYTHONPATH": PYPATH}
    workers = []
    try:
        for facts in ({"GITHUB_EVENT_NAME": "push"}, fork_event(tmp_path)):
            worker = subprocess.Popen(
                [sys.executable, "-c", SIBLING_WORKER, *cli(svc, "cache", "register-job")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**env, **facts},
            )
            workers.append(worker)
            line = worker.stdout.readline()
            assert line.startswith("0 registered"), line
        scopes = sorted(r["scope"] for r in svc.registry.live_records())
        assert scopes[0].startswith("pr-7-") and scopes[1] == "trusted"
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(30)


def test_a_peer_under_a_registered_worker_but_in_another_cgroup_is_unregistered(
    tmp_path, svc, monkeypatch
):
    """Only root moves a process between cgroups; a process below a worker yet outside its
    cgroup was not started by the runner for that job (e.g. put there by something else)."""
    real = service.process_cgroup
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        for _ in range(100):
            if service.proc_stat(worker.pid):
                break
            time.sleep(0.05)
        start = service.proc_stat(worker.pid)[1]
        record = {"trusted": True, "scope": "trusted", "reason": "x", "cgroup": real(worker.pid)}
        assert svc.registry.register(worker.pid, start, record)
        assert service.job_of(svc.registry, worker.pid)["scope"] == "trusted"
        monkeypatch.setattr(
            service,
            "process_cgroup",
            lambda pid: "0::/elsewhere\n" if pid == worker.pid else real(pid),
        )
        found = service.job_of(svc.registry, worker.pid)
        assert (found["trusted"], found["scope"]) == (False, "unregistered")
    finally:
        worker.stdin.close()
        worker.wait(30)


# -- a job's fd that never moves ----------------------------------------------------------------
IDLE = 1.0


def held_lock_free(store):
    """Whether the exclusive store lock (what prune takes) can be had at once."""
    with store.store_lock(exclusive=True):
        return True


def test_import_from_a_pipe_kept_open_but_never_fed_fails_within_the_deadline(
    tmp_path, svc, monkeypatch
):
    """The f2 attack: the job passes a pipe's read end and keeps the write end open. The service
    gives up after the inactivity timeout, commits nothing and lets go of its locks."""
    monkeypatch.setattr(service, "TRANSFER_IDLE_TIMEOUT", IDLE)
    data = legacy_archive([(["app:stall"], [LAYER_EVIL])])
    read_end, write_end = os.pipe()
    os.write(write_end, data[: len(data) // 2])  # half an archive, then silence
    line = b'{"v": 1, "op": "import", "args": {"key": "stall"}}\n'
    try:
        start = time.monotonic()
        response = raw_request(svc, line, [read_end])
        elapsed = time.monotonic() - start
    finally:
        os.close(read_end)
        os.close(write_end)
    assert response["exit_code"] != 0
    assert "moved no data for 1 s" in response["error"], response
    assert IDLE <= elapsed < IDLE + LATE  # the idle time counts from the last data moved
    assert not os.path.exists(svc.store.entry_path("@unregistered@stall"))
    assert held_lock_free(svc.store)


def test_import_of_a_whole_archive_from_a_pipe_kept_open_is_not_committed(
    tmp_path, svc, monkeypatch
):
    """A complete archive whose pipe never reaches end-of-file is still a stalled transfer: the
    core sees a reset, not an end, so it cannot commit a stream it never saw the end of."""
    monkeypatch.setattr(service, "TRANSFER_IDLE_TIMEOUT", IDLE)
    data = legacy_archive([(["app:stall"], [LAYER_EVIL])])
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=os.write, args=(write_end, data))
    line = b'{"v": 1, "op": "import", "args": {"key": "whole"}}\n'
    try:
        writer.start()
        response = raw_request(svc, line, [read_end])
    finally:
        writer.join(10)
        os.close(read_end)
        os.close(write_end)
    assert "moved no data" in (response["error"] or ""), response
    assert not os.path.exists(svc.store.entry_path("@unregistered@whole"))


def test_export_into_a_pipe_never_drained_fails_within_the_deadline(tmp_path, svc, monkeypatch):
    monkeypatch.setattr(service, "TRANSFER_IDLE_TIMEOUT", IDLE)
    import_archive(svc.store, "big", archive(tmp_path, [random_layer(2_000_000, "big")], "a:b"))
    read_end, write_end = os.pipe()
    line = b'{"v": 1, "op": "export", "args": {"key": "big"}}\n'
    try:
        start = time.monotonic()
        response = raw_request(svc, line, [write_end])
        elapsed = time.monotonic() - start
    finally:
        os.close(read_end)
        os.close(write_end)
    assert response["exit_code"] != 0
    assert "moved no data for 1 s" in response["error"], response
    assert IDLE <= elapsed < IDLE + LATE  # the idle time counts from the last data moved
    assert held_lock_free(svc.store)


# -- the operations' events reach the watch ----------------------------------------------------
def service_operations(tmp_path, svc):
    """A job's import (a pipe), then a restore and an export (into a file) of a key the cache
    does not have, through the service."""
    data = legacy_archive([(["app:ev"], [LAYER_TRUSTED])])
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, data), os.close(write_end)))
    line = b'{"v": 1, "op": "import", "args": {"key": "ev", "source": "pipe"}}\n'
    try:
        writer.start()
        imported = raw_request(svc, line, [read_end])
    finally:
        os.close(read_end)
        writer.join(10)
    missed = raw_request(svc, b'{"v": 1, "op": "restore", "args": {"key": "nope"}}\n')
    out = os.open(tmp_path / "export.tar", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        not_exported = raw_request(
            svc, b'{"v": 1, "op": "export", "args": {"key": "nope"}}\n', [out]
        )
    finally:
        os.close(out)
    codes = [imported["exit_code"], missed["exit_code"], not_exported["exit_code"]]
    assert codes == [0, 3, 3], (imported, missed, not_exported)


EXPECTED = [("import", "saved"), ("restore", "miss"), ("export", "miss")]


def cache_events(state_dir):
    from runnerkeep import events

    return [(e["op"], e["result"]) for e in events.read_events(str(state_dir), "cache")]


def test_service_operations_record_their_events_in_roots_state_dir(tmp_path):
    from runnerkeep.disk.metrics import fold_events

    state = tmp_path / "state"
    state.mkdir()
    svc = Service(tmp_path, events_dir=str(state))
    try:
        service_operations(tmp_path, svc)
    finally:
        svc.close()
    assert cache_events(state) == EXPECTED
    # What the watch counts for runnerkeep_disk_cache_{saves,hits,misses}_total.
    assert fold_events(str(state), {})["cache"] == {"saved": 1, "miss": 2}


def test_the_service_user_spools_its_events_and_the_watch_ingests_them(tmp_path, monkeypatch):
    """The service runs as its own user, not root: its events go to root's spool (the job
    group may create files there), never into root's event log; the watch moves them in."""
    from runnerkeep import events, spool
    from runnerkeep.disk.metrics import fold_events

    state = tmp_path / "state"
    (state / "spool").mkdir(parents=True)
    os.chmod(state / "spool", 0o1730)
    # As for the service user: root's state dir belongs to someone else.
    monkeypatch.setattr(spool, "use_spool", lambda state_dir: True)
    svc = Service(tmp_path, events_dir=str(state))
    try:
        service_operations(tmp_path, svc)
    finally:
        svc.close()
    assert cache_events(state) == []
    assert os.listdir(state / "spool") == [f"events-{os.geteuid()}.jsonl"]
    assert events.ingest_spool(str(state)) == 3  # what each watch cycle does first
    assert cache_events(state) == EXPECTED
    assert fold_events(str(state), {})["cache"] == {"saved": 1, "miss": 2}


def test_without_an_events_dir_the_service_records_nothing(tmp_path, svc):
    service_operations(tmp_path, svc)
    assert not (tmp_path / "state").exists()
