"""A real CNCF Distribution registry (Debian's ``docker-registry``) on loopback, for the fleet
cache tier's unit tests, integration tests and bench.

    from harness.registry import LocalRegistry

    with LocalRegistry(tls=True, auth=True) as reg:          # starts in about a second
        reg.url                  # 'https://127.0.0.1:PORT' (no trailing slash)
        reg.remote_url("runnerkeep/cache")   # 'https://127.0.0.1:PORT/runnerkeep/cache'
        reg.ca_file              # the throwaway CA (PEM) that signed the server certificate
        reg.push_user, reg.pull_user          # (name, password) tuples
        path = reg.credentials_file(reg.push_user)   # 'USER:PASSWORD' file, mode 0600
        reg.remote_config("runnerkeep/cache", reg.push_user, push=True)
                                 # a dict for the `cache.remote` config section
        reg.restart()            # same port, same storage, same upload secret
        reg.storage_dir          # the registry's filesystem storage root
        reg.log_text()           # what the registry logged (warnings and errors)
        reg.host_port            # '127.0.0.1:PORT', for image references (docker, skopeo)
        reg.cert_dir             # a dir holding ca.crt (skopeo --src-cert-dir/--dest-cert-dir)
        reg.trust_in_docker()    # /etc/docker/certs.d/127.0.0.1:PORT/ca.crt until close()

The Docker engine talks plain HTTP to 127.0.0.0/8 registries by itself (an insecure registry
by default), so ``docker push/pull 127.0.0.1:PORT/repo:tag`` needs no setup without TLS; with
TLS it needs ``trust_in_docker()`` (read per request: no engine restart).

Keyword arguments (all optional):
- ``tls``: serve HTTPS with a certificate for 127.0.0.1, ::1 and localhost, signed by a CA made
  here with the ``openssl`` CLI (EC P-256, valid 2 days, SKI/AKI set so strict verifiers such as
  Python 3.13's accept it).
- ``auth``: htpasswd basic auth with bcrypt users made by ``htpasswd -iBn`` (the password goes
  on stdin): ``users`` (dict name -> password) or, by default, a push user ``pusher`` and a pull
  user ``puller`` with random passwords. Distribution 2.8 accepts basic auth over plain HTTP
  too, so ``auth`` does not need ``tls``.
  NOTE: Distribution's htpasswd has no per-user rights: every user may push, pull and delete.
  A pull-only endpoint is a second instance in read-only mode on the same storage
  (``LocalRegistry(read_only=True, storage=other.storage_dir)``): writes answer 405.
- ``delete`` (default True): ``storage.delete.enabled`` (False: DELETE answers 405 UNSUPPORTED).
- ``read_only``: ``storage.maintenance.readonly`` (the garbage-collection window).
- ``relative_urls``: upload Locations relative (``http.relativeurls``) instead of absolute.
- ``storage``: an existing storage root to serve (kept at stop); default a new temp dir that
  is removed at stop.
- ``extra``: a dict merged into the generated config (top-level keys replaced).

The config is written as JSON (YAML's subset). The registry logs at ``warn`` to
``<workdir>/registry.log``. ``start()`` waits (at most 20 s) until ``GET /v2/`` answers 200 or
401; ``stop()`` ends the process it started (SIGTERM, then SIGKILL after 5 s) and removes what
it made. Only loopback addresses are used.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from typing import Any

START_WAIT = 20.0
STOP_WAIT = 5.0
HOST = "127.0.0.1"


class RegistryStartError(RuntimeError):
    """docker-registry did not come up; the message holds the tail of its log."""


class LocalRegistry:
    """One ``docker-registry serve`` process on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        tls: bool = False,
        auth: bool = False,
        users: dict[str, str] | None = None,
        delete: bool = True,
        read_only: bool = False,
        relative_urls: bool = False,
        storage: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.tls, self.auth, self.delete, self.read_only = tls, auth, delete, read_only
        self.relative_urls = relative_urls
        self.extra = extra or {}
        self.users = dict(users) if users else {}
        if auth and not self.users:
            self.users = {"pusher": secrets.token_urlsafe(12), "puller": secrets.token_urlsafe(12)}
        self.workdir = tempfile.mkdtemp(prefix="rk-registry-")
        self._own_storage = storage is None
        self.storage_dir = storage or os.path.join(self.workdir, "storage")
        self.ca_file: str | None = None
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.http_secret = secrets.token_hex(16)
        self.config_path = os.path.join(self.workdir, "config.yml")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.htpasswd_path = os.path.join(self.workdir, "htpasswd")
        self._docker_trust: list[str] = []

    # --- what tests use ----------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def push_user(self) -> tuple[str, str]:
        name = "pusher" if "pusher" in self.users else sorted(self.users)[0]
        return name, self.users[name]

    @property
    def pull_user(self) -> tuple[str, str]:
        name = "puller" if "puller" in self.users else sorted(self.users)[-1]
        return name, self.users[name]

    @property
    def host_port(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def cert_dir(self) -> str | None:
        """A directory with the CA as ca.crt (the layout skopeo and docker read), or None."""
        if not self.ca_file:
            return None
        path = os.path.join(self.workdir, "certs")
        os.makedirs(path, exist_ok=True)
        shutil.copyfile(self.ca_file, os.path.join(path, "ca.crt"))
        return path

    def trust_in_docker(self, certs_root: str = "/etc/docker/certs.d") -> str:
        """Install the CA for this registry's host:port in the engine's certs.d (removed by
        ``close``); returns the directory made."""
        if not self.ca_file:
            raise RuntimeError("trust_in_docker: this registry has no TLS")
        path = os.path.join(certs_root, self.host_port)
        os.makedirs(path, exist_ok=True)
        shutil.copyfile(self.ca_file, os.path.join(path, "ca.crt"))
        self._docker_trust.append(path)
        return path

    def remote_url(self, repository: str) -> str:
        return f"{self.url}/{repository}"

    def credentials_file(self, user: tuple[str, str], name: str | None = None) -> str:
        """A ``USER:PASSWORD`` file (mode 0600) in the work dir."""
        path = os.path.join(self.workdir, name or f"credentials-{user[0]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{user[0]}:{user[1]}\n")
        os.chmod(path, 0o600)
        return path

    def remote_config(
        self, repository: str, user: tuple[str, str] | None = None, **options: Any
    ) -> dict[str, Any]:
        """A ``cache.remote`` section for this registry (``options`` added: push, timeout...)."""
        section: dict[str, Any] = {"url": self.remote_url(repository)}
        if user is not None:
            section["credentials_file"] = self.credentials_file(user)
        if self.ca_file:
            section["ca_file"] = self.ca_file
        section.update(options)
        return section

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the CA (None without TLS)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        """Write the config (and CA, certificate, htpasswd) and start; a port taken between
        choosing and binding it is retried with another."""
        _require_programs(self.tls, self.auth)
        os.makedirs(self.storage_dir, exist_ok=True)
        if self.tls and self.ca_file is None:
            self._make_tls()
        if self.auth:
            self._make_htpasswd()
        fixed = self.port != 0
        for _attempt in range(3):
            if not fixed:
                self.port = _free_port()
            self._write_config()
            if self._spawn_and_wait():
                return
            if fixed:
                break
        raise RegistryStartError(f"docker-registry did not start:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        """End the process (the port and storage stay for ``start``/``restart``)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WAIT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the work dir (and the storage when it was made here)."""
        self.stop()
        for path in self._docker_trust:
            shutil.rmtree(path, ignore_errors=True)
        self._docker_trust.clear()
        # A storage handed in lives elsewhere and is kept; one made here is inside workdir.
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- pieces ---------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        storage: dict[str, Any] = {
            "filesystem": {"rootdirectory": self.storage_dir},
            "delete": {"enabled": self.delete},
            "maintenance": {
                "uploadpurging": {"enabled": False},
                "readonly": {"enabled": self.read_only},
            },
        }
        http_section: dict[str, Any] = {
            "addr": f"{HOST}:{self.port}",
            "secret": self.http_secret,
            "relativeurls": self.relative_urls,
        }
        if self.tls:
            http_section["tls"] = {
                "certificate": os.path.join(self.workdir, "server.pem"),
                "key": os.path.join(self.workdir, "server.key"),
            }
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": storage,
            "http": http_section,
        }
        if self.auth:
            config["auth"] = {"htpasswd": {"realm": "runnerkeep-test", "path": self.htpasswd_path}}
        config.update(self.extra)
        return config

    def _write_config(self) -> None:
        with open(self.config_path, "w", encoding="utf-8") as handle:
            json.dump(self._config(), handle, indent=1)

    def _spawn_and_wait(self) -> bool:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        give_up = time.monotonic() + START_WAIT
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                self.process = None
                return False
            if self._answers():
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _answers(self) -> bool:
        if self.tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                HOST, self.port, timeout=2, context=self.ssl_context()
            )
        else:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status in (200, 401)
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _make_tls(self) -> None:
        ca_key = os.path.join(self.workdir, "ca.key")
        ca_pem = os.path.join(self.workdir, "ca.pem")
        key = os.path.join(self.workdir, "server.key")
        csr = os.path.join(self.workdir, "server.csr")
        pem = os.path.join(self.workdir, "server.pem")
        ext = os.path.join(self.workdir, "server.ext")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(["req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2",
                  "-subj", "/CN=runnerkeep test CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"])  # fmt: skip
        with open(ext, "w", encoding="utf-8") as handle:
            handle.write(
                "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid,issuer\n"
            )
        _openssl(["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
        _openssl(["x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key,
                  "-CAcreateserial", "-out", pem, "-days", "2", "-extfile", ext])  # fmt: skip
        self.ca_file = ca_pem

    def _make_htpasswd(self) -> None:
        lines = []
        for name, password in sorted(self.users.items()):
            done = subprocess.run(
                ["htpasswd", "-iBn", name],
                input=password,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            lines.append(done.stdout.strip())
        with open(self.htpasswd_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def _require_programs(tls: bool, auth: bool) -> None:
    """RegistryStartError naming the Debian packages when a program is missing (the nox
    sessions install them through harness.engine.ensure_host_programs)."""
    missing = []
    if shutil.which("docker-registry") is None:
        missing.append("docker-registry")
    if tls and shutil.which("openssl") is None:
        missing.append("openssl")
    if auth and shutil.which("htpasswd") is None:
        missing.append("apache2-utils")
    if missing:
        raise RegistryStartError(
            f"the loopback registry needs: apt-get install -y {' '.join(missing)} "
            "(python -m harness.engine installs every program the tests use)"
        )


def _openssl(args: list[str]) -> None:
    subprocess.run(["openssl", *args], capture_output=True, timeout=60, check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
