"""Where the fleet cache tier is and how to reach it: the ``cache.remote`` config section.

Config (``/etc/runnerkeep/config.d/20-cache.json``, the image_cache role writes it)::

    "cache": {"remote": {
        "url": "https://cache.example:5000/runnerkeep/cache",   # https://HOST[:PORT]/REPOSITORY
        "credentials_file": "/etc/runnerkeep/secrets.d/registry",  # USER:PASSWORD, one line
        "ca_file": "/etc/runnerkeep/fleet-ca.pem",  # the registry's CA (system CAs also count)
        "push": false,          # save pushes after the local commit (trusted jobs only)
        "timeout": "30s",       # every socket operation, and every non-streaming call as a whole
        "max_duration": "30m",  # a pull, push, prune (a restore's fleet step) as a whole
        "allow_http": false     # http:// to a host that is not loopback
    }}

``url`` unset, empty or null: no remote. ``--remote URL`` replaces ``url`` (the other keys
still apply, except that ``credentials_file`` is only used for the configured url's
``scheme://host:port``: a URL handed in for another registry gets no password, so a typo or a
planted URL cannot collect it), ``--no-remote`` ignores the section.

The URL never holds credentials (``https://user:pw@...`` is refused: they would show in
``ps``, logs and ``--json``). REPOSITORY is an OCI repository name
(``[a-z0-9]+([._-][a-z0-9]+)*`` components joined by ``/``). ``http://`` is accepted only for a
loopback host (127.0.0.0/8, ::1, localhost) unless ``allow_http`` is true: basic auth over
plain HTTP hands the password to anyone on the path. A name (localhost) is checked by its
addresses when the client connects: every one must be loopback, and the connection goes to
the addresses checked.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..units import parse_duration

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0
DEFAULT_MAX_DURATION = 1800.0
MAX_MAX_DURATION = 86400.0
# Distribution refuses repository names longer than this.
MAX_REPOSITORY_LEN = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# A host as urlsplit hands it over: a DNS name or an IPv4/IPv6 literal (brackets removed).
_HOST_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]+")
KEYS = ("url", "credentials_file", "ca_file", "push", "timeout", "allow_http", "max_duration")


@dataclass(frozen=True)
class RemoteSettings:
    """A checked remote: what RegistryClient needs, nothing secret (credentials are read
    from ``credentials_file`` by ``credentials.read_credentials``)."""

    url: str
    scheme: str
    host: str
    port: int
    repository: str
    credentials_file: str | None = None
    ca_file: str | None = None
    push: bool = False
    timeout: float = DEFAULT_TIMEOUT
    allow_http: bool = False
    # The origin the configured credentials belong to, when --remote named another registry
    # and they were withheld (the auth error then says so).
    withheld_for: str | None = None
    # A whole operation's bound (seconds): the front doors give the client this deadline.
    max_duration: float = DEFAULT_MAX_DURATION

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` (IPv6 in brackets): where the API lives."""
        return f"{self.scheme}://{_netloc(self.host, self.port)}"


def remote_settings(
    cache_config: dict[str, Any], url: str | None = None, no_remote: bool = False
) -> RemoteSettings | None:
    """The remote of the merged ``cache`` section (the whole config is accepted too), with
    ``url`` (``--remote``) replacing its url; None when ``no_remote`` or no url is set.

    ConfigError names the field and the fix."""
    if no_remote:
        return None
    section = _remote_section(cache_config)
    given = url if url not in (None, "") else section.get("url")
    if given in (None, ""):
        return None
    source = "--remote" if url not in (None, "") else "cache.remote.url"
    scheme, host, port, repository = parse_remote_url(given, source)
    allow_http = _bool(section, "allow_http", False)
    if scheme == "http" and not allow_http and not is_loopback(host):
        raise ConfigError(
            f"{source}: http:// is only for a loopback registry ({host} is not one); use "
            "https:// with the registry's CA in cache.remote.ca_file, or set "
            "cache.remote.allow_http: true to send the password in clear over the network"
        )
    credentials_file = _path(section, "credentials_file")
    withheld_for = _credentials_origin(
        section, scheme, host, port, overridden=given != section.get("url")
    )
    if withheld_for is not None:
        credentials_file = None
    return RemoteSettings(
        url=given,
        scheme=scheme,
        host=host,
        port=port,
        repository=repository,
        credentials_file=credentials_file,
        withheld_for=withheld_for,
        ca_file=_path(section, "ca_file"),
        push=_bool(section, "push", False),
        timeout=_timeout(section.get("timeout")),
        allow_http=allow_http,
        max_duration=_max_duration(section.get("max_duration")),
    )


def _credentials_origin(
    section: dict[str, Any], scheme: str, host: str, port: int, overridden: bool
) -> str | None:
    """The configured url's origin when an override points elsewhere and the configured
    credentials must stay home; None when they may be used."""
    configured = section.get("url")
    if not overridden or not section.get("credentials_file") or configured in (None, ""):
        return None
    home_scheme, home_host, home_port, _repository = parse_remote_url(configured)
    if (home_scheme, home_host, home_port) == (scheme, host, port):
        return None
    return RemoteSettings(configured, home_scheme, home_host, home_port, "x").origin


def _remote_section(cache_config: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(cache_config, dict):
        raise ConfigError("the cache config section must be a JSON object")
    if "remote" not in cache_config and isinstance(cache_config.get("cache"), dict):
        cache_config = cache_config["cache"]  # the whole config was handed in
    section = cache_config.get("remote") or {}
    if not isinstance(section, dict):
        raise ConfigError("cache.remote: expected a JSON object with url, credentials_file, ...")
    unknown = sorted(str(key) for key in section if key not in KEYS)
    if unknown:
        raise ConfigError(
            f"cache.remote: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(KEYS)}"
        )
    return section


def parse_remote_url(url: Any, source: str = "cache.remote.url") -> tuple[str, str, int, str]:
    """(scheme, host, port, repository) of ``https://HOST[:PORT]/REPOSITORY``; ConfigError
    (which never repeats userinfo) for anything else."""
    form = "https://HOST[:PORT]/REPOSITORY, e.g. https://cache.example:5000/runnerkeep/cache"
    if not isinstance(url, str) or not url or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise ConfigError(f"{source}: expected a URL {form}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{source}: not a URL with a valid port; expected {form}") from None
    if parts.scheme not in ("https", "http"):
        raise ConfigError(f"{source}: the scheme must be https:// (or http:// on loopback)")
    if "@" in parts.netloc:
        raise ConfigError(
            f"{source}: the URL holds credentials; remove them and put USER:PASSWORD in the "
            "file named by cache.remote.credentials_file"
        )
    host = parts.hostname or ""
    if not _HOST_RE.fullmatch(host) or (":" in host and not _is_ip(host)):
        raise ConfigError(f"{source}: no valid host; expected {form}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(f"{source}: no query or fragment allowed; expected {form}")
    repository = parts.path[1:] if parts.path.startswith("/") else ""
    repository = repository[:-1] if repository.endswith("/") else repository
    check_repository(repository, source)
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if not 0 < port < 65536:
        raise ConfigError(f"{source}: port {port} is not from 1 to 65535")
    return parts.scheme, host.lower(), port, repository


def check_repository(repository: str, source: str = "cache.remote.url") -> None:
    """ConfigError unless ``repository`` is an OCI repository name Distribution accepts."""
    if not repository:
        raise ConfigError(
            f"{source}: the URL names no repository; append one, e.g. "
            "https://cache.example:5000/runnerkeep/cache"
        )
    if len(repository) > MAX_REPOSITORY_LEN or not REPOSITORY_RE.fullmatch(repository):
        shown = repository if len(repository) <= 80 else repository[:77] + "..."
        raise ConfigError(
            f"{source}: {shown!r} is not a repository name: lowercase letters and digits, "
            "separated by '.', '_', '__' or '-' within a component and '/' between components"
        )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost (a name: the client checks each of its addresses when
    it connects, and connects only to loopback ones)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bool(section: dict[str, Any], key: str, default: bool) -> bool:
    value = section.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"cache.remote.{key}: expected true or false, got {value!r}"[:200])
    return value


def _path(section: dict[str, Any], key: str) -> str | None:
    value = section.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise ConfigError(f"cache.remote.{key}: expected an absolute path, or null")
    return value


def _duration(value: Any, default: float, limit: float, complaint: str) -> float:
    """Seconds from a duration (30s, 5m) or a number; ``complaint`` when it is not one above 0
    and at most ``limit``."""
    if value in (None, ""):
        return default
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        seconds = float(parse_duration(value))
    except (ConfigError, ValueError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= limit:
        raise ConfigError(complaint)
    return seconds


def _timeout(value: Any) -> float:
    return _duration(
        value,
        DEFAULT_TIMEOUT,
        MAX_TIMEOUT,
        "cache.remote.timeout: expected a duration above 0 and at most 1h, such as 30s "
        "or a number of seconds",
    )


def _max_duration(value: Any) -> float:
    return _duration(
        value,
        DEFAULT_MAX_DURATION,
        MAX_MAX_DURATION,
        "cache.remote.max_duration: expected a duration above 0 and at most 24h, such as "
        "30m (how long a pull, push or prune may take as a whole)",
    )
