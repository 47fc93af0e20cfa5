"""How the subsystems reach each other: the one core module that imports cache/, cleanup/ and
disk/ together. The front doors (the CLI, the Ansible modules) take what they need from here
and pass it into the subsystem that needs it; cache/, cleanup/ and disk/ never import each
other (tools/structure_check.py checks it). The three things one needs of another:

- the cache's quota when ``cache.max_size`` is unset: the disk budget's (``cache_settings``);
- a cleanup stage's targets on the budget's filesystem: the disk budget's (``run_cleanup``);
- the cache's ``--make-room``: the post-build cleanup stage (``make_room``); the watch's
  emergency step: the emergency stage (the front door passes ``run_cleanup`` to
  ``disk.watch.run_watch``);
- the watch's cache scrub metrics: the scrub's summary in the store (``scrub_status``).

It also joins the local cache to the fleet tier (issue 12: a registry every runner shares,
``remote/`` and ``cache/remote_push.py`` / ``cache/remote_pull.py``): a restore that misses
locally, or finds a corrupt blob, pulls the key and restores again (``restore_with_remote``);
a trusted save pushes after its local commit (``save_then_push``); ``verify --repair`` pulls
again the keys whose blobs were bad (``repair_from_fleet``). The front doors build the tier
once per command (``fleet_tier``); the cache service gets it handed in (it cannot import
this module) and does the remote work for jobs, which never see the credentials.

Every fleet step runs under one deadline (``cache.remote.max_duration``, handed to the
registry client), and none can fail a command the issue says it must not: a push after a
committed save that fails in any way is a warning (exit 0), a restore's fleet step that fails
in any way is a miss (exit 3). Failures the remote layer does not foresee are caught too
(``_unforeseen``): one line naming the step and the exception's type, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Optional

from .cache import cache_config, scrub
from .cache.restore import restore_entry
from .cache.save import save_entry
from .cache.store import TRUSTED, Store, split_name
from .cache.trust import push_decision
from .cleanup import stages
from .cleanup.report import CleanupReport
from .disk.budget import cache_quota, cleanup_targets
from .errors import CacheMiss, ConfigError, DockerCommandError, RunnerkeepError
from .events import record_event
from .textutil import escape_text

# What ``--make-room`` runs when a save is short of space: (bytes needed, a path on the short
# filesystem) -> the post-build stage's report (cache.save.save_entry's ``make_room``).
MakeRoom = Callable[[Optional[int], Optional[str]], CleanupReport]


def cache_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``cache`` section, its quota the disk budget's when ``cache.max_size`` is unset."""
    return cache_config.cache_settings(config, budget_quota=cache_quota)


def run_cleanup(stage: str, config: dict[str, Any], **options: Any) -> CleanupReport:
    """``cleanup.run_cleanup`` with the disk budget's targets (on a monitored host)."""
    return stages.run_cleanup(stage, config, budget_targets=cleanup_targets, **options)


def make_room(config: dict[str, Any]) -> MakeRoom:
    """The post-build cleanup a save runs on a filesystem that is short (``--make-room``),
    asked to free up to the bytes the save needs there."""

    def post_stage(needed_bytes: int | None, path: str | None) -> CleanupReport:
        return run_cleanup(
            "post",
            config,
            target_free_bytes=needed_bytes,
            paths=[path] if path else None,
            dry_run=False,
        )

    return post_stage


def scrub_status(config: dict[str, Any]) -> Callable[[float], dict[str, Any] | None]:
    """The cache scrub's summary at a time (``cache.scrub.read_scrub_status``: the oldest
    unverified blob's age then, the scrub's totals; None when the store was never scrubbed),
    for the watch's metrics. It only reads: the watch runs as root, the store is its owner's."""
    store_dir = cache_config.resolve_cache_dir(None, config)

    def status(now: float) -> dict[str, Any] | None:
        return scrub.read_scrub_status(store_dir, now)

    return status


# -- the fleet tier ---------------------------------------------------------------------------
# A job's trust as the push decision needs it: (trusted, scope, reason).
Trust = tuple  # tuple[bool, str, str]


class FleetTier:
    """The fleet tier as one command sees it: its settings (None: no remote, or --no-remote)
    and how to reach it. ``connect``, ``pull``, ``restore_fleet``, ``push`` and ``prune``
    default to the real registry client and ``cache.remote_pull`` / ``remote_restore`` /
    ``remote_push`` / ``remote_prune``; tests hand in others.
    ``limits``: the store's disk rules a pull keeps (``cache_settings``' ``reserve`` and
    ``max_size``), or a callable giving them, called once when a pull first needs them (the
    quota may measure the disk budget: a command that never pulls never pays for it)."""

    def __init__(
        self,
        settings: Any,
        *,
        connect: Callable[[Any], Any] | None = None,
        pull: Callable[..., dict[str, Any]] | None = None,
        push: Callable[..., dict[str, Any]] | None = None,
        prune: Callable[..., dict[str, Any]] | None = None,
        limits: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        restore_fleet: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self._limits = limits
        self._restore_fleet = restore_fleet
        self._connect = connect or _connect_registry
        self._pull = pull
        self._push = push
        self._prune = prune

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    @property
    def url(self) -> str:
        return str(getattr(self.settings, "url", "") or "")

    @property
    def push_on_save(self) -> bool:
        return bool(getattr(self.settings, "push", False))

    @contextlib.contextmanager
    def client(self):
        """A registry client for one operation (credentials read now, as the store's owner)."""
        client = self._connect(self.settings)
        try:
            yield client
        finally:
            close = getattr(client, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    def limits(self) -> tuple[int, int | None]:
        """(reserve, max_size) a pull keeps: free space left, the store's quota (None: none)."""
        if callable(self._limits):
            self._limits = self._limits()
        limits = self._limits or {}
        max_size = limits.get("max_size")
        return int(limits.get("reserve") or 0), None if max_size is None else int(max_size)

    def pull_entry(
        self, store: Store, key: str, client: Any, progress=None, scope: str = TRUSTED
    ) -> dict[str, Any]:
        if self._pull is None:
            from .cache.remote_pull import pull_entry

            self._pull = pull_entry
        reserve, max_size = self.limits()
        return self._pull(
            store, key, client, progress=progress, reserve=reserve, max_size=max_size, scope=scope
        )

    def restore_from_fleet(
        self, store: Store, key: str, client: Any, progress=None, scope: str = TRUSTED
    ) -> dict[str, Any]:
        if self._restore_fleet is None:
            from .cache.remote_restore import restore_from_fleet

            self._restore_fleet = restore_from_fleet
        reserve, max_size = self.limits()
        return self._restore_fleet(
            store, key, client, progress=progress, reserve=reserve, max_size=max_size, scope=scope
        )

    def push_entry(self, store: Store, key: str, client: Any, **options: Any) -> dict[str, Any]:
        if self._push is None:
            from .cache.remote_push import push_entry

            self._push = push_entry
        return self._push(store, key, client, **options)

    def prune_tags(self, client: Any, **options: Any) -> dict[str, Any]:
        if self._prune is None:
            from .cache.remote_prune import remote_prune

            self._prune = remote_prune
        return self._prune(client, **options)

    # What the cache service calls (it is handed this object: cache/ cannot import wiring).
    def restore(self, store: Store, key: str, **options: Any) -> dict[str, Any]:
        return restore_with_remote(store, key, self, **options)

    def push_after_save(
        self, store: Store, key: str, saved: dict[str, Any], **options: Any
    ) -> dict[str, Any] | None:
        return push_after_save(store, key, saved, self, **options)

    def push(self, store: Store, key: str, **options: Any) -> dict[str, Any]:
        return push_key(store, key, self, **options)

    def pull(self, store: Store, key: str, **options: Any) -> dict[str, Any]:
        return pull_key(store, key, self, **options)


def _connect_registry(settings: Any) -> Any:
    from .remote.credentials import read_credentials
    from .remote.registry import RegistryClient

    path = getattr(settings, "credentials_file", None)
    credentials = read_credentials(path) if path else None
    # The whole operation (a pull, a push, a prune) ends within max_duration.
    deadline = time.monotonic() + float(getattr(settings, "max_duration", 1800.0))
    return RegistryClient(settings, credentials, deadline=deadline)


def fleet_tier(
    config: dict[str, Any],
    url: str | None = None,
    no_remote: bool = False,
    overrides: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> FleetTier:
    """The fleet tier of ``cache.remote`` (``url``: the ``--remote`` override; ``overrides``:
    an Ansible task's ``remote`` option over the config's keys; ``limits``: the caller's
    ``cache_settings(config)`` when it has them, else they are computed at the first pull).
    ConfigError (exit 2) for a bad URL or setting; nothing is read from the network or the
    credentials file yet."""
    section = dict(config.get("cache") or {})
    if no_remote or not (url or section.get("remote") or overrides):
        return FleetTier(None)  # no remote: nothing of remote/ is even imported
    from .remote.remote_config import remote_settings

    if overrides:
        merged = dict(section.get("remote") or {})
        merged.update({k: v for k, v in overrides.items() if v is not None})
        section["remote"] = merged
    settings = remote_settings(section, url=url, no_remote=no_remote)
    return FleetTier(settings, limits=limits or (lambda: cache_settings(config)))


def _failure(exc: BaseException, url: str = "") -> str:
    """One line for a failed remote step (the remote errors never carry a password), without
    the registry's URL when the caller's words already name it."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc) or type(exc).__name__
    return text[len(url) + 2 :] if url and text.startswith(f"{url}: ") else text


def _unforeseen(exc: BaseException, step: str) -> str:
    """One line for an exception the remote layer did not foresee (a bug, or a peer's answer
    no check knew of): the step and the type; never a traceback."""
    detail = escape_text(str(exc))[:160]
    return f"{step} failed unexpectedly ({type(exc).__name__}{': ' + detail if detail else ''})"


def _event(state_dir: str | None, **fields: Any) -> None:
    if state_dir:
        record_event(state_dir, "cache", **fields)


def restore_with_remote(
    store: Store,
    key: str,
    fleet: FleetTier | None,
    *,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    dry_run: bool = False,
    trust: Trust | None = None,
) -> dict[str, Any]:
    """A local hit is done. A local miss pulls the key from the fleet tier and restores
    again; a corrupt local entry or blob (quarantined by the restore) is fetched again the
    same way and reported as ``repaired``. A miss in the fleet tier, bad data from it, or a
    registry that cannot be reached is a CacheMiss (exit 3): the job rebuilds. ``trust``:
    the requester's (the push decision's); a runner that may push records the key's use on
    the registry after a fleet restore (``touched``; None: never)."""
    if fleet is None or not fleet.enabled:
        return restore_entry(
            store, key, scope=scope, state_dir=state_dir, progress=progress, dry_run=dry_run
        )
    start = time.monotonic()
    try:
        # No event from the local try: whether it is a miss depends on the fleet tier.
        result = restore_entry(store, key, scope=scope, progress=progress, dry_run=dry_run)
        if not dry_run:
            _hit_event(state_dir, key, result)
        return result
    except CacheMiss as local:
        corrupt = bool(getattr(local, "corrupt", False))
        local_reason = str(local)
    if dry_run:
        return _would_pull(key, fleet, local_reason)
    if corrupt:
        # A repair fetches only what the store lacks (the quarantined blobs), then restores.
        _event(state_dir, op="restore", result="corrupt", key=key, reason=local_reason)
        pulled = _pull_or_miss(store, key, fleet, local_reason, state_dir, start, progress, scope)
        _event(
            state_dir,
            op="repair",
            result="repaired",
            key=key,
            bytes_fetched=pulled.get("bytes_fetched", 0),
        )
        result = restore_entry(store, key, scope=scope, state_dir=state_dir, progress=progress)
    else:
        where = (local_reason, state_dir, start)
        result = _restore_from_fleet(store, key, fleet, where, progress, scope)
        pulled = result.pop("pulled", None) or {}
    result.update(
        source="fleet",
        remote=fleet.url,
        local_miss=local_reason,
        repaired=corrupt,
        repaired_blobs=list(pulled.get("repaired") or []),
        pulled=_pull_summary(pulled),
        duration=round(time.monotonic() - start, 3),
    )
    if trust is not None and fleet.push_on_save and push_decision(*trust)[0]:
        result["touched"] = _touch(key, fleet, state_dir)
    return result


def _touch(key: str, fleet: FleetTier, state_dir: str | None) -> dict[str, Any]:
    """Record on the registry that the key was used (remote-prune keeps what runners use).
    Only a runner that may push does it (a pull-only endpoint refuses the write); at most one
    write an hour (touch_key); a failure never fails the restore: it is reported."""
    from .cache.remote_push import touch_key

    try:
        with fleet.client() as client:
            touched = touch_key(client, key, time.time())
    except Exception as exc:  # recording the use never fails the restore
        foreseen = isinstance(exc, (RunnerkeepError, OSError))
        failure = _failure(exc, fleet.url) if foreseen else _unforeseen(exc, "the touch")
        touched = {"key": key, "result": "touch_failed", "reason": failure}
    if touched.get("result") in ("touched", "touch_failed"):
        # a write to the registry, or a failed one; a fresh key (used within the hour) is
        # the common case and no news
        _event(state_dir, op="touch", result=touched["result"], key=key)
    return touched


def _hit_event(state_dir: str | None, key: str, result: dict[str, Any]) -> None:
    """The event a local hit records (the one restore_entry records with a state dir)."""
    _event(
        state_dir,
        op="restore",
        result="hit",
        key=key,
        loaded=result.get("loaded", False),
        bytes_loaded=result.get("bytes_loaded", 0),
        bytes_left_out=result.get("bytes_left_out", 0),
        duration=result.get("duration", 0.0),
        # only when there are some, as restore_entry records it
        **({"not_retagged": result["not_retagged"]} if result.get("not_retagged") else {}),
    )


def _restore_from_fleet(
    store: Store,
    key: str,
    fleet: FleetTier,
    where: tuple[str, str | None, float],
    progress: Callable[[int], None] | None,
    scope: str,
) -> dict[str, Any]:
    """A local miss restored from the fleet tier in one pass (``restore_from_fleet``: with
    nothing of the key on the host each layer is hashed once and loaded as it arrives; else
    pull then restore). It records no event of its own: the pull's and the hit's are
    recorded here (one hit for a fleet-served restore, no miss). ``where``: the local
    miss's reason, the state dir, the restore's start."""
    local_reason, state_dir, start = where

    def step(client: Any) -> dict[str, Any]:
        return fleet.restore_from_fleet(store, key, client, progress=progress, scope=scope)

    result = _pull_or_miss(store, key, fleet, local_reason, state_dir, start, progress, step=step)
    pulled = result.get("pulled") or {}
    _event(
        state_dir,
        op="pull",
        result="pulled",
        key=key,
        bytes_fetched=pulled.get("bytes_fetched", 0),
        overlapped=bool(result.get("overlapped")),
    )
    _hit_event(state_dir, key, result)
    return result


def _pull_or_miss(
    store: Store,
    key: str,
    fleet: FleetTier,
    local_reason: str,
    state_dir: str | None,
    start: float,
    progress: Callable[[int], None] | None,
    scope: str = TRUSTED,
    step: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """pull_entry (or ``step`` with the client), any failure of it as the restore's CacheMiss
    (one line, with both reasons), except the engine's (exit 1, as a local restore's).
    ``scope``: the requester's (an untrusted job's pull never evicts to make room)."""
    error_type = None
    failure = ""
    try:
        with fleet.client() as client:
            if step is not None:
                return step(client)
            return fleet.pull_entry(store, key, client, progress=progress, scope=scope)
    except DockerCommandError:
        raise  # the engine failed the load: not the fleet tier's miss
    except (RunnerkeepError, OSError) as exc:
        if isinstance(exc, ConfigError) and not isinstance(exc, CacheMiss):
            raise  # a setting to fix (credentials file, URL): exit 2, as for any bad setting
        failure = _failure(exc, fleet.url)
    except Exception as exc:  # the promise: a fleet step that fails is a miss
        failure, error_type = _unforeseen(exc, "the pull"), type(exc).__name__
    reason = f"{local_reason}; fleet tier {fleet.url}: {failure}"
    _event(
        state_dir,
        op="restore",
        result="miss",
        key=key,
        reason=reason,
        duration=round(time.monotonic() - start, 3),
        **({"error_type": error_type} if error_type else {}),
    )
    raise CacheMiss(reason)


def _pull_summary(pulled: dict[str, Any]) -> dict[str, Any]:
    return {
        name: pulled.get(name)
        for name in ("index_digest", "blobs_fetched", "bytes_fetched", "blobs_present")
    }


def _would_pull(key: str, fleet: FleetTier, local_reason: str) -> dict[str, Any]:
    """A dry run's answer on a local miss: whether the fleet tier has the key (a read only:
    nothing is fetched, written or loaded). CacheMiss when it has not."""
    from .cache.remote_layout import INDEX_TYPES, MANIFEST_TYPES

    try:
        with fleet.client() as client:
            manifest = client.get_manifest(key, MANIFEST_TYPES + INDEX_TYPES)
    except (RunnerkeepError, OSError) as exc:
        if isinstance(exc, ConfigError) and not isinstance(exc, CacheMiss):
            raise
        raise CacheMiss(
            f"{local_reason}; fleet tier {fleet.url}: {_failure(exc, fleet.url)}"
        ) from None
    except Exception as exc:
        unforeseen = _unforeseen(exc, "the registry's answer")
        raise CacheMiss(f"{local_reason}; fleet tier {fleet.url}: {unforeseen}") from None
    return {
        "key": key,
        "result": "would_pull",
        "loaded": False,
        "bytes_loaded": 0,
        "remote": fleet.url,
        "local_miss": local_reason,
        "index_digest": getattr(manifest, "digest", None),
    }


def pull_key(
    store: Store,
    key: str,
    fleet: FleetTier,
    *,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    scope: str = TRUSTED,
) -> dict[str, Any]:
    """``cache pull``: fetch the key into the local store, every byte verified before the
    commit (result ``present`` when the store already holds a valid entry of it: nothing
    fetched). Any failure (no such key, bad data, registry unreachable, refused, no room)
    is a CacheMiss (exit 3) and commits nothing. ``scope``: the requester's (the store's
    quota is kept after the commit; an untrusted job's pull never evicts to make room)."""
    _require(fleet, "cache pull")
    start = time.monotonic()
    try:
        with fleet.client() as client:
            pulled = fleet.pull_entry(store, key, client, progress=progress, scope=scope)
    except (RunnerkeepError, OSError) as exc:
        if isinstance(exc, ConfigError) and not isinstance(exc, CacheMiss):
            raise
        reason = f"key '{key}' not pulled from {fleet.url}: {_failure(exc, fleet.url)}"
        _event(state_dir, op="pull", result="pull_failed", key=key, reason=reason)
        raise CacheMiss(reason) from None
    except Exception as exc:
        reason = f"key '{key}' not pulled from {fleet.url}: {_unforeseen(exc, 'the pull')}"
        _event(
            state_dir,
            op="pull",
            result="pull_failed",
            key=key,
            reason=reason,
            error_type=type(exc).__name__,
        )
        raise CacheMiss(reason) from None
    result = {"key": key, "result": "pulled", "remote": fleet.url, **pulled}
    result["duration"] = round(time.monotonic() - start, 3)
    _event(
        state_dir,
        op="pull",
        result=result["result"],  # pulled, or present (a valid local entry: nothing fetched)
        key=key,
        bytes_fetched=pulled.get("bytes_fetched", 0),
        duration=result["duration"],
    )
    return result


def _require(fleet: FleetTier | None, what: str) -> None:
    if fleet is None or not fleet.enabled:
        raise ConfigError(
            f"{what} needs a fleet tier: set cache.remote.url in the config or give --remote URL"
        )


def push_key(
    store: Store,
    key: str,
    fleet: FleetTier,
    *,
    trust: Trust,
    provenance: dict[str, str] | None = None,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    verify_remote: bool = False,
) -> dict[str, Any]:
    """``cache push``: upload what the registry lacks, then the key's index. An untrusted job
    is refused (PushRefused); a failed upload raises (exit 1, or 3 when the local entry is
    missing or corrupt: nothing to push). ``verify_remote``: read back the blobs the registry
    says it holds and replace bad ones (``healed``; ``not_healed`` when it keeps serving bad
    bytes: the index is pushed all the same, the caller warns)."""
    _require(fleet, "cache push")
    allowed, why = push_decision(*trust)
    if not allowed:
        _event(state_dir, op="push", result="push_refused", key=key, reason=why, scope=trust[1])
        raise PushRefused(why)
    try:
        pushed = _push(store, key, fleet, provenance, progress, verify_remote)
    except Exception as exc:
        foreseen = isinstance(exc, (RunnerkeepError, OSError))
        failure = _failure(exc, fleet.url) if foreseen else _unforeseen(exc, "the push")
        reason = f"key '{key}' not pushed to {fleet.url}: {failure}"
        kind = {} if foreseen else {"error_type": type(exc).__name__}
        _event(state_dir, op="push", result="push_failed", key=key, reason=reason, **kind)
        error = RunnerkeepError(reason)
        # A local entry that is missing or corrupt stays a miss (3): there was nothing to push.
        error.exit_code = getattr(exc, "exit_code", error.exit_code) if foreseen else 1
        raise error from None
    not_healed = len(pushed.get("not_healed") or [])
    _event(
        state_dir,
        op="push",
        result="pushed",
        key=key,
        bytes_sent=pushed.get("bytes_sent", 0),
        **({"not_healed": not_healed} if not_healed else {}),
    )
    return {"key": key, "result": "pushed", "remote": fleet.url, "decision": why, **pushed}


class PushRefused(RunnerkeepError):
    """An untrusted job asked to push: it may pull from the fleet tier, never push to it."""


def _push(
    store: Store,
    key: str,
    fleet: FleetTier,
    provenance: dict[str, str] | None,
    progress: Callable[[int], None] | None,
    verify_remote: bool = False,
) -> dict[str, Any]:
    # verify_remote only when asked: a plain push's call stays as it was
    extra = {"verify_remote": True} if verify_remote else {}
    with fleet.client() as client:
        return fleet.push_entry(
            store,
            key,
            client,
            scope=TRUSTED,
            provenance=provenance or None,
            progress=progress,
            **extra,
        )


def push_after_save(
    store: Store,
    key: str,
    saved: dict[str, Any],
    fleet: FleetTier | None,
    *,
    trust: Trust,
    provenance: dict[str, str] | None = None,
    state_dir: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """The push that follows a save when ``push`` is on: what was decided and why (None: no
    fleet tier or push off). A failed push never fails the save: it is reported (``warning``),
    recorded (event ``push_failed``, counted by the watch) and retried by the next save or
    ``cache push``. An untrusted job's save never pushes (event ``push_refused``)."""
    if fleet is None or not fleet.enabled or not fleet.push_on_save:
        return None
    allowed, why = push_decision(*trust)
    if not allowed:
        if not dry_run:
            _event(state_dir, op="push", result="push_refused", key=key, reason=why)
        return {"pushed": False, "decision": "refused", "reason": why}
    if dry_run:
        # Knowing what would travel needs the entry this dry run did not write: say no more.
        return {"pushed": False, "decision": "would_push", "reason": why, "remote": fleet.url}
    try:
        pushed = _push(store, key, fleet, provenance, None)
    except Exception as exc:  # the save is committed: no failure of the push may undo that
        foreseen = isinstance(exc, (RunnerkeepError, OSError))
        failure = _failure(exc, fleet.url) if foreseen else _unforeseen(exc, "the push")
        reason = f"key '{key}' saved but not pushed to {fleet.url}: {failure}"
        kind = {} if foreseen else {"error_type": type(exc).__name__}
        _event(state_dir, op="push", result="push_failed", key=key, reason=reason, **kind)
        return {"pushed": False, "decision": "failed", "reason": reason, "warning": reason}
    _event(state_dir, op="push", result="pushed", key=key, bytes_sent=pushed.get("bytes_sent", 0))
    summary = {name: pushed.get(name) for name in ("index_digest", "bytes_sent", "blobs_sent")}
    return {"pushed": True, "decision": "pushed", "reason": why, "remote": fleet.url, **summary}


def save_then_push(
    store: Store,
    key: str,
    images: list[str],
    fleet: FleetTier | None,
    *,
    trust: Trust,
    provenance: dict[str, str] | None = None,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    dry_run: bool = False,
    **save_options: Any,
) -> dict[str, Any]:
    """``save_entry``, then ``push_after_save`` (its report under ``push``; a warning in
    ``warnings`` when the push failed)."""
    result = save_entry(
        store, key, images, scope=scope, state_dir=state_dir, dry_run=dry_run, **save_options
    )
    pushed = push_after_save(
        store,
        key,
        result,
        fleet,
        trust=trust,
        provenance=provenance,
        state_dir=state_dir,
        dry_run=dry_run,
    )
    if pushed is not None:
        result["push"] = pushed
        if pushed.get("warning"):
            result["warnings"] = [*(result.get("warnings") or []), pushed["warning"]]
    return result


def repair_from_fleet(
    store: Store,
    report: dict[str, Any],
    fleet: FleetTier | None,
    *,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """After ``verify --repair`` (or the scrub with ``--repair``) quarantined what was bad:
    pull again, by key, every trusted entry it found bad (only the quarantined blobs travel).
    Adds ``repaired`` (keys) and ``not_repaired`` ({key, reason}) to the report;
    ``repaired_ok`` when every bad entry is whole again."""
    repaired: list[str] = []
    not_repaired: list[dict[str, str]] = []
    names = bad_entry_names(report)
    for name in names:
        try:
            scope, key = split_name(name)
        except ConfigError:
            continue
        if fleet is None or not fleet.enabled:
            not_repaired.append({"key": name, "reason": "no fleet tier configured"})
        elif scope != TRUSTED:
            reason = f"an entry of scope {scope} (the fleet tier holds trusted entries only)"
            not_repaired.append({"key": name, "reason": reason})
        else:
            try:
                pull_key(store, key, fleet, state_dir=state_dir, progress=progress)
                repaired.append(key)
                _event(state_dir, op="repair", result="repaired", key=key)
            except CacheMiss as exc:
                not_repaired.append({"key": name, "reason": str(exc)})
    report["repaired"] = repaired
    report["not_repaired"] = not_repaired
    report["repaired_ok"] = bool(names) and not not_repaired
    return report


def bad_entry_names(report: dict[str, Any]) -> list[str]:
    """The entries a verify found bad; for the scrub (which reports what it moved, not why),
    the entries it quarantined (``STAMP-PID-entry-NAME.json``, ``Store.quarantine``)."""
    names = [str(bad.get("key", "")) for bad in report.get("bad_entries") or []]
    if report.get("scrub"):
        for path in report.get("quarantined") or []:
            _stamp, sep, rest = os.path.basename(str(path)).partition("-entry-")
            if sep and rest.endswith(".json"):
                names.append(rest[: -len(".json")])
    return sorted(set(names))


def prune_remote(
    fleet: FleetTier, *, max_age: float | None, keep: int | None, dry_run: bool
) -> dict[str, Any]:
    """``cache remote-prune``: delete the key tags least recently pushed first."""
    _require(fleet, "cache remote-prune")
    if max_age is None and keep is None:
        raise ConfigError("cache remote-prune needs --max-age DURATION or --keep N (or both)")
    try:
        with fleet.client() as client:
            result = fleet.prune_tags(
                client, max_age=max_age, keep=keep, dry_run=dry_run, now=time.time()
            )
    except (RunnerkeepError, OSError):
        raise
    except Exception as exc:
        failure = _unforeseen(exc, "the prune")
        raise RunnerkeepError(f"fleet tier {fleet.url}: {failure}") from None
    result.setdefault("remote", fleet.url)
    return result
