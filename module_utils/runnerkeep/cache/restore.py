"""``cache restore`` and ``cache export``: stream an entry out, verifying every byte on the way."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from typing import Any, Callable

from .. import docker_api
from ..docker_api import (
    EngineSocketUnavailable,
    EngineStalled,
    load_image_archive,
    local_engine_socket,
)
from ..docker_cli import docker_binary, engine_info, run_docker
from ..errors import CacheMiss, DockerCommandError, LockHeldError, RunnerkeepError
from ..events import record_event
from ..fsutil import atomic_output
from ..procutil import enlarge_pipe
from .archive_layout import familiar_ref
from .archive_writer import entry_archive_length, write_entry_archive
from .checks import load_checked_entry, quarantine_for
from .partial import blobs_held, entry_chains, held_chains
from .progress import announce_total
from .store import (
    TRUSTED,
    CorruptBlob,
    CorruptEntry,
    Store,
    as_store,
    entry_name,
    validate_key,
)


class _Misses:
    """The misses of one restore or export: each is recorded as a ``cache`` event (when there
    is a state dir) and returned as the CacheMiss to raise."""

    def __init__(self, op: str, state_dir: str | None, start: float) -> None:
        self.op = op
        self.state_dir = state_dir
        self.start = start

    def miss(self, key: str, reason: str, corrupt: bool = False) -> CacheMiss:
        if self.state_dir:
            record_event(
                self.state_dir,
                "cache",
                op=self.op,
                result="corrupt" if corrupt else "miss",
                key=key,
                reason=reason,
                duration=round(time.monotonic() - self.start, 3),
            )
        miss = CacheMiss(reason)
        # The front door tells a corrupt local entry (repair from the fleet) from an absent one
        # by this flag, as on remote_layout.RemoteCacheMiss, not by the message's wording.
        miss.corrupt = corrupt
        return miss

    def reject(
        self,
        store: Store,
        name: str,
        exc: Exception,
        how: str = "rejected",
        quarantine: bool = True,
    ) -> CacheMiss:
        """A corrupt entry or blob is a miss: move it aside and return the miss to raise."""
        if quarantine:
            quarantine_for(store, name, exc)
        reason = f"cache entry '{name}' {how} and quarantined: {exc}"
        return self.miss(name, reason, corrupt=True)


def readable_name(store: Store, key: str, scope: str) -> str:
    """The entry a job of ``scope`` restores: a trusted job only the trusted entry; an
    untrusted one its own scope's entry when there is one, else the trusted entry (read-only,
    like actions/cache for pull requests)."""
    if scope == TRUSTED:
        return entry_name(key)
    own = entry_name(key, scope)
    return own if os.path.lexists(store.entry_path(own)) else entry_name(key)


def daemon_images(ids: list[str]) -> dict[str, list[str]]:
    """image ID -> its RepoTags, for the IDs the daemon holds: through the local socket when the
    CLI would use it (a few ms instead of the CLI's start-up), else through the CLI."""
    socket_path = local_engine_socket()
    if socket_path is not None:
        try:
            return _daemon_images_from_socket(socket_path, ids)
        except EngineSocketUnavailable:
            pass  # the CLI reports an unreachable engine in its own words
    return _daemon_images_from_cli(ids)


def _daemon_images_from_socket(socket_path: str, ids: list[str]) -> dict[str, list[str]]:
    present = {}
    for image_id in ids:
        info = docker_api.inspect_image(socket_path, image_id)
        if info is not None:
            present[info["Id"]] = list(info.get("RepoTags") or [])
    return present


def _daemon_images_from_cli(ids: list[str]) -> dict[str, list[str]]:
    proc = run_docker(["image", "inspect", *ids], check=False)
    if proc.returncode != 0 and "No such" not in proc.stderr:
        engine_info()  # raises DockerUnavailableError when the engine does not answer
        raise DockerCommandError(f"'docker image inspect' failed: {proc.stderr.strip()}")
    try:
        found = json.loads(proc.stdout or "[]")
    except ValueError:
        found = []
    return {item["Id"]: list(item.get("RepoTags") or []) for item in found}


def _ensure_tags(entry: dict[str, Any], present: dict[str, list[str]]) -> list[str]:
    """True fast path: every saved ID is present; (re)point any missing tag, cheaply."""
    retagged = []
    for image in entry["images"]:
        for tag in image["tags"]:
            if tag not in present.get(image["id"], []):
                _tag(image["id"], tag)
                retagged.append(tag)
    return retagged


def engine_tags(entry: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The entry as its tags may reach the engine, and the tags held back. An entry pulled from
    the fleet tier carries tags no digest binds to the key (the index's annotation): such a tag
    is applied only when the name is absent on the engine or already names one of the entry's
    images, so restoring one key never re-points another image's name (``FROM debian:...``).
    An entry saved on this host is returned as it is."""
    provenance = entry.get("provenance")
    if not (isinstance(provenance, dict) and provenance.get("pulled_from")):
        return entry, []
    ids = {image["id"] for image in entry["images"]}
    held_back: list[str] = []
    images = []
    for image in entry["images"]:
        kept = []
        for tag in image["tags"]:
            target = _tag_target(tag)
            if target is None or target in ids:
                kept.append(tag)
            elif tag not in held_back:
                held_back.append(tag)
        images.append({**image, "tags": kept})
    return {**entry, "images": images}, held_back


def _tag_target(tag: str) -> str | None:
    """The image ID the engine's tag ``tag`` names, None when no image has that tag (a name
    that only matches an ID prefix is not a tag: tagging creates it)."""
    for image_id, tags in daemon_images([tag]).items():
        if familiar_ref(tag) in tags:
            return image_id
    return None


def _tag(image_id: str, tag: str) -> None:
    socket_path = local_engine_socket()
    if socket_path is not None:
        try:
            docker_api.tag_image(socket_path, image_id, tag)
            return
        except EngineSocketUnavailable:
            pass
    run_docker(["tag", image_id, tag])


def restore_entry(
    store_dir: str | Store,
    key: str,
    *,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Make the entry's images present in the daemon. CacheMiss (exit 3) when there is no usable
    entry; a corrupt entry or blob is quarantined first. ``scope``: the requester's (see
    readable_name)."""
    validate_key(key)
    entry_name(key, scope)
    start = time.monotonic()
    store = as_store(store_dir)
    if dry_run:
        state_dir = None  # a dry run records no event
    misses = _Misses("restore", state_dir, start)
    if not store.exists():
        raise misses.miss(key, f"no cache at {store.root}")
    with _restore_lock(store, key, dry_run, misses):
        name = readable_name(store, key, scope)
        stored, digest = _checked_entry_or_miss(store, key, name, misses, quarantine=not dry_run)
        ids = [image["id"] for image in stored["images"]]
        present = daemon_images(ids)
        entry, not_retagged = engine_tags(stored)
        result: dict[str, Any] = {
            "key": key,
            "scope": stored.get("scope", TRUSTED),
            "entry_digest": digest,
            "images": [{"id": i["id"], "tags": i["tags"]} for i in stored["images"]],
            "not_retagged": not_retagged,
        }
        if all(i in present for i in ids):
            retagged = [] if dry_run else _ensure_tags(entry, present)
            result.update(result="hit", loaded=False, retagged=retagged, bytes_loaded=0)
        elif dry_run:
            held = _blobs_held_if_local(entry)  # asking the daemon changes nothing
            result.update(
                result="would_load",
                loaded=False,
                # what the load would send: the archive _send_archive (or the CLI) writes
                bytes_loaded=entry_archive_length(entry, held),
                bytes_left_out=sum(held.values()),
            )
            return result
        else:
            loaded = _load_missing_images(store, name, entry, ids, progress, misses)
            result.update(result="hit", loaded=True, **loaded)
        if not dry_run:
            store.touch_entry(name)
    result["duration"] = round(time.monotonic() - start, 3)
    if state_dir and not dry_run:
        # not_retagged only when there are some: the events of every other restore stay as they were
        held_back = {"not_retagged": not_retagged} if not_retagged else {}
        record_event(
            state_dir,
            "cache",
            op="restore",
            result="hit",
            key=key,
            loaded=result["loaded"],
            bytes_loaded=result["bytes_loaded"],
            bytes_left_out=result.get("bytes_left_out", 0),
            duration=result["duration"],
            **held_back,
        )
    return result


def _restore_lock(
    store: Store, key: str, dry_run: bool, misses: _Misses
) -> contextlib.AbstractContextManager:
    """The store lock a restore holds, taken now: shared, or for a dry run the read lock, which
    creates nothing (not even the lock file). A store locked for longer than any save or prune
    takes is a miss: the job rebuilds."""
    held = contextlib.ExitStack()
    try:
        held.enter_context(store.read_lock() if dry_run else store.store_lock())
    except LockHeldError as exc:
        raise misses.miss(key, str(exc)) from None
    return held


def _checked_entry_or_miss(
    store: Store, key: str, name: str, misses: _Misses, quarantine: bool = True
) -> tuple[dict[str, Any], str]:
    """load_checked_entry, its failures as the CacheMiss to raise (a bad entry quarantined)."""
    try:
        return load_checked_entry(store, name)
    except CacheMiss as exc:
        raise misses.miss(key, str(exc)) from None
    except (CorruptEntry, CorruptBlob) as exc:
        raise misses.reject(store, name, exc, quarantine=quarantine) from None


def _load_missing_images(
    store: Store,
    name: str,
    entry: dict[str, Any],
    ids: list[str],
    progress: Callable[[int], None] | None,
    misses: _Misses,
) -> dict[str, Any]:
    """Stream the entry into the daemon, then check it holds every image and re-point the tags:
    _load's account of it. A blob found bad on the way is a miss (quarantined, nothing
    tagged)."""
    try:
        loaded = _load(store, entry, progress)
    except CorruptBlob as exc:
        raise misses.reject(store, name, exc, how="rejected during load (nothing tagged)") from None
    present = daemon_images(ids)
    missing = [i for i in ids if i not in present]
    if missing:
        raise DockerCommandError(f"docker load finished but the daemon lacks {', '.join(missing)}")
    _ensure_tags(entry, present)
    return loaded


def _load(store: Store, entry: dict[str, Any], progress) -> dict[str, Any]:
    """Stream the entry into the engine: bytes_loaded (sent), loaded_via ("engine-api" or
    "docker-cli"), and bytes_left_out / layers_left_out (layers the daemon held)."""
    socket_path = local_engine_socket()
    if socket_path is not None:
        try:
            return _load_through_socket(socket_path, store, entry, progress)
        except EngineSocketUnavailable:
            pass  # the CLI reports an unreachable engine in its own words
    announce_total(progress, entry_archive_length(entry))
    sent = _load_through_cli(store, entry, progress)
    return {"bytes_loaded": sent, "loaded_via": "docker-cli", "bytes_left_out": 0}


def _load_through_socket(
    socket_path: str, store: Store, entry: dict[str, Any], progress
) -> dict[str, Any]:
    """Into ``POST /images/load``: first without the layers the daemon holds (see partial.py);
    if the engine refuses that archive (an engine that wants every blob, or a base image removed
    since we looked), the whole archive. CorruptBlob from either send is the caller's miss."""
    left_out = _blobs_the_daemon_holds(socket_path, entry)
    refused = None
    if left_out:
        try:
            sent = _send_archive(socket_path, store, entry, progress, left_out)
            return {
                "bytes_loaded": sent,
                "loaded_via": "engine-api",
                "bytes_left_out": sum(left_out.values()),
                "layers_left_out": len(left_out),
            }
        except EngineStalled:
            raise  # an engine that stopped would stop again: the whole archive cannot help
        except DockerCommandError as exc:
            refused = str(exc)
    sent = _send_archive(socket_path, store, entry, progress, {})
    loaded = {"bytes_loaded": sent, "loaded_via": "engine-api", "bytes_left_out": 0}
    if refused:
        loaded["partial_refused"] = refused
    return loaded


def _blobs_held_if_local(entry: dict[str, Any]) -> dict[str, int]:
    """What a restore would leave out (only the socket path leaves anything out)."""
    socket_path = local_engine_socket()
    if socket_path is None:
        return {}
    try:
        return _blobs_the_daemon_holds(socket_path, entry)
    except EngineSocketUnavailable:
        return {}


def _blobs_the_daemon_holds(socket_path: str, entry: dict[str, Any]) -> dict[str, int]:
    try:
        return blobs_held(entry, held_chains(socket_path, entry_chains(entry)))
    except EngineStalled:
        raise  # not an engine that would not say: one that does not answer at all
    except DockerCommandError:
        # The engine would not say (or said it in a shape we cannot read): the whole archive,
        # which only costs time.
        return {}


def _send_archive(
    socket_path: str, store: Store, entry: dict[str, Any], progress, left_out: dict[str, int]
) -> int:
    length = entry_archive_length(entry, left_out)
    announce_total(progress, length)
    # Raises unless the body written is exactly ``length`` bytes.
    load_image_archive(
        socket_path,
        length,
        lambda fd: write_entry_archive(entry, store, fd, progress, leave_out=left_out),
        done_when=loaded_lines(entry),
    )
    return length


def loaded_lines(entry: dict[str, Any]) -> set[str]:
    """What the engine says once it has loaded and tagged the last of the entry's images: a
    line per tag ("Loaded image: REF"), or, when no image has a tag, a line per image ID. Empty
    (read the whole answer) when that is not known: with some images tagged and some not,
    the untagged ones get no line, and a tag named twice would be said before the second."""
    images = entry["images"]
    tags = [familiar_ref(tag) for image in images for tag in image["tags"]]
    if not tags:
        return {f"Loaded image ID: {image['id']}" for image in images}
    if any(not image["tags"] for image in images) or len(set(tags)) != len(tags):
        return set()
    return {f"Loaded image: {tag}" for tag in tags}


def _load_through_cli(store: Store, entry: dict[str, Any], progress) -> int:
    with tempfile.TemporaryFile() as outfile:
        proc = subprocess.Popen(
            [docker_binary(), "load"],
            stdin=subprocess.PIPE,
            stdout=outfile,
            stderr=subprocess.STDOUT,
            bufsize=0,
        )
        enlarge_pipe(proc.stdin.fileno())
        try:
            sent = write_entry_archive(entry, store, proc.stdin.fileno(), progress)
        except CorruptBlob:
            # Kill before the archive ends: the daemon sees a cut stream without manifest.json
            # and tags nothing.
            proc.kill()
            proc.wait()
            raise
        except BrokenPipeError:
            proc.wait()
            raise DockerCommandError(f"docker load stopped early: {_said(outfile)}") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        rc = proc.wait()
        if rc != 0:
            raise DockerCommandError(f"docker load failed (exit {rc}): {_said(outfile)}")
        return sent


def _said(outfile) -> str:
    outfile.seek(0)
    return outfile.read().decode("utf-8", "replace").strip()[-2000:]


def export_entry(
    store_dir: str | Store,
    key: str,
    output: str,
    *,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the entry as a plain archive `docker load` accepts; atomically (temp + rename)."""
    validate_key(key)
    store = as_store(store_dir)
    if not store.exists():
        misses = _Misses("export", state_dir, time.monotonic())
        raise misses.miss(key, f"no cache at {store.root}")
    output = os.path.abspath(output)
    with atomic_output(output, prefix=".tmp-export-") as fd:
        result = export_entry_fd(
            store, key, fd, scope=scope, state_dir=state_dir, progress=progress
        )
    result["output"] = output
    return result


def export_entry_fd(
    store_dir: str | Store,
    key: str,
    fd: int,
    *,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the entry's archive into ``fd`` (a file or pipe the caller opened: the cache
    service writes into a job's file without opening the job's path)."""
    validate_key(key)
    entry_name(key, scope)
    start = time.monotonic()
    store = as_store(store_dir)
    misses = _Misses("export", state_dir, start)
    if not store.exists():
        raise misses.miss(key, f"no cache at {store.root}")
    with store.store_lock():
        name = readable_name(store, key, scope)
        entry, digest = _checked_entry_or_miss(store, key, name, misses)
        announce_total(progress, entry_archive_length(entry))
        try:
            size = write_entry_archive(entry, store, fd, progress)
        except CorruptBlob as exc:
            raise misses.reject(store, name, exc) from None
        store.touch_entry(name)
    return {
        "key": key,
        "scope": entry.get("scope", TRUSTED),
        "result": "exported",
        "bytes": size,
        "entry_digest": digest,
        "duration": round(time.monotonic() - start, 3),
    }


__all__ = ["RunnerkeepError", "export_entry", "export_entry_fd", "restore_entry"]
