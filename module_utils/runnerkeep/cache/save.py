"""``cache save`` and ``cache import``: read an archive once, check everything, then commit."""

from __future__ import annotations

import concurrent.futures
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Optional

from .. import __version__, docker_api, docker_cli
from ..docker_api import EngineSocketUnavailable, ImageExport, local_engine_socket
from ..docker_cli import docker_binary
from ..errors import (
    CacheMiss,
    DockerCommandError,
    DockerUnavailableError,
    FreeSpaceError,
    RunnerkeepError,
)
from ..events import record_event
from ..fsutil import filesystem_usage, fsync_dir, same_filesystem
from ..procutil import enlarge_pipe
from ..units import format_size
from .archive_layout import LEGACY_LAYER_TYPE, ParsedArchive, analyze, familiar_ref
from .checks import check_blob_sizes, config_diff_ids, rehash_blobs
from .import_space import ReserveGuard
from .progress import announce_total
from .prune import prune_store, reclaim_unreferenced_blobs, trusted_blob_sizes
from .store import (
    TRUSTED,
    CorruptBlob,
    CorruptEntry,
    Store,
    as_store,
    describe_os_error,
    entry_blobs,
    entry_name,
    is_no_space,
    validate_key,
)
from .tar_reader import ArchiveError, NoSpaceWhileWriting, read_archive_stream

TAR_OVERHEAD_PER_LAYER = 4096  # headers + padding + json/VERSION members, generously
_ID_RE = re.compile(r"^(sha256:)?[0-9a-f]{4,64}$")


class SaveFailed(RunnerkeepError):
    """The save did not produce a complete, verified archive: nothing was committed."""


class CommitCutShort(SaveFailed):
    """The commit failed after blobs may have been moved into place: the entry was not
    written (reclaim_after_failed_commit deletes those blobs)."""


class CommitOutOfSpace(CommitCutShort):
    """The disk filled while blobs were moved into place: some were, the entry was not."""


# ---------------------------------------------------------------------------------------
# free space
# ---------------------------------------------------------------------------------------
def space_plan(
    store: Store, infos: list[dict[str, Any]], reserve: int, engine: dict[str, Any]
) -> list[dict[str, Any]]:
    """Bytes needed per filesystem: new blobs on the cache fs, the legacy engine's temporary
    export on the Docker root fs (summed when they are one filesystem), each plus the reserve.

    Image sizes come from ``docker image inspect``; images sharing an unstored base count it
    twice, so the estimate errs on the safe side."""
    stored = store.list_blobs()
    new_bytes = 0
    export_bytes = 0
    for info in infos:
        layers = (info.get("RootFS") or {}).get("Layers") or []
        size = int(info.get("Size") or 0)
        reused = sum(stored.get(d, 0) for d in set(layers))
        new_bytes += max(0, size - reused) + TAR_OVERHEAD_PER_LAYER * (len(layers) + 1)
        export_bytes += size
    if _engine_major(engine) >= 25:
        export_bytes = 0  # engines >= 25 stream the export without a temp copy
    docker_root = docker_cli.docker_root_of(engine)
    needs = []
    if export_bytes and same_filesystem(store.root, docker_root):
        needs.append((store.root, new_bytes + export_bytes, "new blobs + engine's temp export"))
    else:
        needs.append((store.root, new_bytes, "new blobs"))
        if export_bytes:
            needs.append((docker_root, export_bytes, "engine's temp export (Docker root)"))
    return [space_need(path, need, reserve, what) for path, need, what in needs]


def space_need(path: str, need: int, reserve: int, what: str) -> dict[str, Any]:
    """One filesystem's line of a space plan: ``need`` bytes (``what``) plus the reserve
    against the free space of the filesystem holding ``path``. A pull checks with it too."""
    usage = filesystem_usage(path)
    return {
        "path": path,
        "mount_point": usage.mount_point,
        "free_bytes": usage.free_bytes,
        "needed_bytes": need + reserve,
        "detail": f"{what} {format_size(need)} + reserve {format_size(reserve)}",
        "ok": usage.free_bytes >= need + reserve,
    }


def _engine_major(engine: dict[str, Any]) -> int:
    match = re.match(r"(\d+)", str(engine.get("ServerVersion") or "0"))
    return int(match.group(1)) if match else 0


def space_message(plan: list[dict[str, Any]], doing: str = "save") -> str:
    """Why the space plan refuses: each short filesystem, its free space, the need, the reserve."""
    parts = [
        f"{p['path']} (filesystem {p['mount_point']}): {format_size(p['free_bytes'])} free "
        f"({p['free_bytes']} bytes), {format_size(p['needed_bytes'])} needed "
        f"({p['needed_bytes']} bytes: {p['detail']})"
        for p in plan
        if not p["ok"]
    ]
    return f"not enough free space to {doing}, nothing was written: " + "; ".join(parts)


_space_message = space_message  # the name the save code and its tests use


# What --make-room runs: (bytes needed, a path on the short filesystem) -> the post-build
# stage's report. The front doors pass it in (runnerkeep.wiring.make_room): the cache does not
# import cleanup/.
MakeRoom = Callable[[Optional[int], Optional[str]], Any]


def make_room(clean_up: MakeRoom | None, plan: list[dict[str, Any]] | None = None) -> list:
    """Run the post-build cleanup (``clean_up``) on each filesystem that is short, asking it
    to free up to the bytes the save needs there."""
    if clean_up is None:
        raise FreeSpaceError("--make-room is unavailable: no cleanup stage was given to this save")
    reports = []
    for need in [p for p in plan or [{}] if not p.get("ok")]:
        try:
            reports.append(clean_up(need.get("needed_bytes"), need.get("path")))
        except RunnerkeepError as exc:
            raise FreeSpaceError(
                (_space_message(plan) if plan else "not enough free space")
                + f"; --make-room could not clean up: {exc}"
            ) from None
    return reports


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------
def inspect_images(refs: list[str]) -> list[dict[str, Any]]:
    """`docker image inspect` of each ref: through the local socket when the CLI would use it
    (no CLI start-up, ~40 ms), else through the CLI."""
    socket_path = local_engine_socket()
    if socket_path is not None:
        try:
            return docker_api.inspect_images(socket_path, refs)
        except EngineSocketUnavailable:
            pass  # the CLI reports an unreachable engine in its own words
    return docker_cli.inspect_images(refs)


def engine_info() -> dict[str, Any]:
    """`docker info`, the same way as inspect_images."""
    socket_path = local_engine_socket()
    if socket_path is not None:
        try:
            return docker_api.engine_info(socket_path)
        except EngineSocketUnavailable:
            pass
    return docker_cli.engine_info()


def resolve_images(refs: list[str]) -> tuple[list[dict[str, Any]], set[str], dict[str, str]]:
    """inspect each ref: its info, the set of image IDs asked for, tag -> ID to be found."""
    if not refs:
        raise SaveFailed("name at least one image to save")
    try:
        infos = inspect_images(refs)
    except DockerCommandError as exc:
        raise SaveFailed(f"cannot save: {exc}") from None
    ids = set()
    tags: dict[str, str] = {}
    for ref, info in zip(refs, infos):
        ids.add(info["Id"])
        if "@" in ref:
            continue
        bare = ref[len("sha256:") :] if ref.startswith("sha256:") else ref
        if _ID_RE.match(ref) and info["Id"][len("sha256:") :].startswith(bare):
            continue  # saved by ID: no tag to expect
        tags[familiar_ref(ref)] = info["Id"]
    return infos, ids, tags


def check_image_set(parsed: ParsedArchive, ids: set[str], tags: dict[str, str]) -> None:
    got = {image["id"] for image in parsed.images}
    if got != ids:
        missing = sorted(ids - got)
        extra = sorted(got - ids)
        raise ArchiveError(
            "the archive does not hold the images asked for"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    by_id: dict[str, set[str]] = {}
    for image in parsed.images:
        by_id.setdefault(image["id"], set()).update(image["tags"])
    for tag, image_id in tags.items():
        if tag not in by_id.get(image_id, set()):
            raise ArchiveError(f"the archive does not tag image {image_id} as {tag}")


def _entry_is_current(store: Store, key: str, ids: set[str], tags: dict[str, str]) -> dict | None:
    try:
        entry, digest = store.read_entry(key)
    except (CacheMiss, CorruptEntry):
        return None
    images = {image["id"]: set(image["tags"]) for image in entry["images"]}
    if set(images) != ids or any(tag not in images.get(i, ()) for tag, i in tags.items()):
        return None
    try:
        check_blob_sizes(store, key, entry)
    except (CorruptEntry, CorruptBlob):
        return None
    return {"entry": entry, "entry_digest": digest}


def _new_entry(
    key: str,
    archive_format: str,
    images: list[dict[str, Any]],
    source: list[str],
    scope: str = TRUSTED,
) -> dict[str, Any]:
    """An entry as written to entries/NAME.json (without checksum and mac), created now."""
    return {
        "format": 1,
        "key": key,
        "scope": scope,
        "archive_format": archive_format,
        "created": time.time(),
        "images": images,
        "source": source,
        "runnerkeep_version": __version__,
    }


def commit_parsed(
    store: Store,
    key: str,
    parsed: ParsedArchive,
    area: str,
    source: list[str],
    scope: str = TRUSTED,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Move new blobs into place, then write the entry (the commit point). An entry bigger
    than the whole quota ``max_size`` is refused first: storing it would evict every other
    entry and still leave the store over its quota. An untrusted job's entry must fit in the
    quota beside the trusted entries: the prune after it never evicts a trusted entry, and
    the next scheduled prune must not either."""
    _check_fits_the_quota(key, parsed, max_size)
    if scope != TRUSTED:
        _check_fits_beside_trusted(store, key, parsed, max_size)
    written = reused = 0
    try:
        for digest, member in parsed.blobs.items():
            if store.has_blob(digest):
                reused += member.size
                if member.temp_path:
                    os.unlink(member.temp_path)
                continue
            if member.temp_path:
                store.commit_blob_file(member.temp_path, digest)
            elif member.data is not None:
                store.write_blob_bytes(member.data, digest, area)
            else:
                raise CommitCutShort(
                    f"blob {digest} was stored when the save started and is gone now "
                    "(quarantined by a concurrent restore?); save again"
                )
            written += member.size
        fsync_dir(store.blob_dir)
        entry = _new_entry(key, parsed.format, parsed.images, source, scope)
        digest = store.write_entry(entry)
    except OSError as exc:
        if is_no_space(exc):
            raise CommitOutOfSpace(
                f"no space left in the cache directory {store.root} while committing "
                f"key '{key}': {exc.strerror}; the previous entry is untouched"
            ) from None
        raise CommitCutShort(
            f"cannot write to the cache directory {store.root} while committing key "
            f"'{key}': {describe_os_error(exc)}; the previous entry is untouched"
        ) from None
    return {
        "entry": entry,
        "entry_digest": digest,
        "bytes_written": written,
        "bytes_reused": reused,
    }


def _check_fits_the_quota(key: str, parsed: ParsedArchive, max_size: int | None) -> None:
    if max_size is None:
        return
    size = sum(member.size for member in parsed.blobs.values())
    if size > max_size:
        raise SaveFailed(
            f"key '{key}' is {format_size(size)} ({size} bytes), more than the whole quota "
            f"(cache.max_size) {format_size(max_size)} of the cache: nothing was stored and "
            "nothing evicted; raise cache.max_size or cache fewer images under the key"
        )


def _check_fits_beside_trusted(
    store: Store, key: str, parsed: ParsedArchive, max_size: int | None
) -> None:
    if max_size is None:
        return
    trusted = trusted_blob_sizes(store)
    new = sum(m.size for digest, m in parsed.blobs.items() if digest not in trusted)
    held = sum(trusted.values())
    if held + new > max_size:
        raise SaveFailed(
            f"key '{key}' of an untrusted job needs {format_size(new)} ({new} bytes) and the "
            f"trusted entries hold {format_size(held)} of the quota (cache.max_size) "
            f"{format_size(max_size)}: an untrusted job's entry never evicts a trusted one, "
            "so nothing was stored; raise cache.max_size or cache fewer images under the key"
        )


def reclaim_after_failed_commit(store: Store, exc: BaseException) -> None:
    """After a commit cut short (the locks released): the blobs it moved into place go
    (prune.reclaim_unreferenced_blobs)."""
    if isinstance(exc, CommitCutShort):
        reclaim_unreferenced_blobs(store)


def keep_quota(store: Store, name: str, scope: str, max_size: int | None) -> dict[str, Any] | None:
    """After a write's commit, the store back under its quota, the new entry kept. An
    untrusted job's write never evicts a trusted entry."""
    if max_size is None:
        return None
    return prune_store(store, max_size=max_size, protect={name}, keep_trusted=scope != TRUSTED)


def _reuse_candidates(store: Store, infos: list[dict[str, Any]]) -> dict[int, set[str]]:
    """size -> digests of the stored layers the engine lists for the images."""
    layers = [d for info in infos for d in (info.get("RootFS") or {}).get("Layers") or []]
    return _by_size((d, store.blob_size(d)) for d in layers)


def _by_size(blobs: Iterable[tuple[str, int | None]]) -> dict[int, set[str]]:
    """size -> digests, from (digest, size) pairs (a size of None: not stored)."""
    candidates: dict[int, set[str]] = {}
    for digest, size in blobs:
        if size is not None:
            candidates.setdefault(size, set()).add(digest)
    return candidates


def _stream_docker_save(
    store: Store,
    refs: list[str],
    area: str,
    candidates: dict[int, set[str]],
    progress: Callable[[int], None] | None,
    hash_pool: concurrent.futures.Executor,
) -> tuple[ParsedArchive, str]:
    """The images' archive read once (tar_reader) and analyzed: (what it held, how it was read).

    Straight from the engine's socket (``GET /images/get``) when the CLI would use that socket
    anyway: `docker save` would copy every byte once more through its own process and a pipe.
    With a context, TCP, TLS or ssh, `docker save` it is."""
    socket_path = local_engine_socket()
    if socket_path is not None:
        try:
            export = docker_api.export_images(socket_path, refs)
        except EngineSocketUnavailable:
            pass  # the CLI reports an unreachable engine in its own words
        except DockerCommandError as exc:
            raise SaveFailed(str(exc)) from None
        else:
            return _read_engine_export(export, store, area, candidates, progress, hash_pool), (
                "engine-api"
            )
    return _read_cli_save(store, refs, area, candidates, progress, hash_pool), "docker-cli"


def _read_engine_export(
    export: ImageExport,
    store: Store,
    area: str,
    candidates: dict[int, set[str]],
    progress: Callable[[int], None] | None,
    hash_pool: concurrent.futures.Executor,
) -> ParsedArchive:
    """Read the engine's export to its end, then analyze what it held."""
    with export:
        try:
            stats = read_archive_stream(
                export, store, area, candidates, progress, hash_pool=hash_pool
            )
        except ArchiveError as exc:
            # An engine that fails mid-export writes its error into the stream: say it.
            said = export.engine_error()
            raise SaveFailed(
                f"docker save produced a bad archive: {exc}"
                + (f"; the engine said: {said}" if said else "")
            ) from None
        except ConnectionError as exc:
            raise SaveFailed(f"the engine's export broke off: {exc}") from None
    try:
        return analyze(stats)
    except ArchiveError as exc:
        raise SaveFailed(f"docker save produced a bad archive: {exc}") from None


def _read_cli_save(
    store: Store,
    refs: list[str],
    area: str,
    candidates: dict[int, set[str]],
    progress: Callable[[int], None] | None,
    hash_pool: concurrent.futures.Executor,
) -> ParsedArchive:
    """Run `docker save` and read its stdout once (tar_reader), then analyze what it held."""
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            [docker_binary(), "save", *refs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errfile,
            bufsize=0,
        )
        enlarge_pipe(proc.stdout.fileno())
        try:
            try:
                stats = read_archive_stream(
                    proc.stdout, store, area, candidates, progress, hash_pool=hash_pool
                )
            except ArchiveError as exc:
                # A short stream usually means docker failed: say what docker said.
                exit_code = _wait_briefly(proc)
                raise SaveFailed(
                    f"docker save produced a bad archive: {exc}" + _docker_said(exit_code, errfile)
                ) from None
            exit_code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if exit_code != 0:
            said = _docker_said(exit_code, errfile)
            raise SaveFailed(f"docker save failed (exit {exit_code})" + said)
        try:
            return analyze(stats)
        except ArchiveError as exc:
            raise SaveFailed(f"docker save produced a bad archive: {exc}") from None


def _wait_briefly(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def _docker_said(rc: int | None, errfile) -> str:
    errfile.seek(0)
    text = errfile.read().decode("utf-8", "replace").strip()
    out = ""
    if rc not in (None, 0):
        out += f"; docker exited {rc}"
    if text:
        out += f"; docker said: {text[-2000:]}"
        if "Cannot connect to the Docker daemon" in text:
            raise DockerUnavailableError(f"the Docker engine does not answer: {text}")
    return out


@dataclass
class _ImagesToSave:
    """The images a save was asked for, as the daemon describes them."""

    refs: list[str]
    infos: list[dict[str, Any]]  # `docker image inspect`, one per ref
    ids: set[str]  # the image IDs the archive must hold
    tags: dict[str, str]  # tag -> image ID the archive must carry


@dataclass
class _SpaceRule:
    """How a save makes sure it fits: check or not, the reserve, whether to clean up first."""

    check: bool
    reserve: int
    make_room_first: bool
    make_room: MakeRoom | None
    engine: Any  # `docker info`, or the RunnerkeepError asking for it raised (None: not asked)


def save_entry(
    store_dir: str | Store,
    key: str,
    refs: list[str],
    *,
    scope: str = TRUSTED,
    reserve: int = 0,
    check_space: bool = True,
    make_room: MakeRoom | None = None,
    make_room_first: bool = False,
    max_size: int | None = None,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Save ``refs`` under ``key`` in ``scope`` (an untrusted job's saves never touch the
    trusted entry). Nothing is committed unless every check passed."""
    validate_key(key)
    name = entry_name(key, scope)
    start = time.monotonic()
    store = as_store(store_dir)
    images, engine = _inspect_images_and_engine(refs, check_space)
    space = _SpaceRule(check_space, reserve, make_room_first, make_room, engine)
    if dry_run:
        return _dry_run_save(store, key, name, images, space)
    try:
        result = _save_locked(store, key, name, images, space, progress, scope, max_size)
    except RunnerkeepError as exc:
        reclaim_after_failed_commit(store, exc)
        _event(state_dir, op="save", result="failed", key=key, error=str(exc), start=start)
        raise
    result["key"] = key
    result["scope"] = scope
    result["duration"] = round(time.monotonic() - start, 3)
    if max_size is not None and result["result"] == "saved":
        result["prune"] = keep_quota(store, name, scope, max_size)
    _event(
        state_dir,
        op="save",
        result=result["result"],
        key=key,
        bytes_written=result["bytes_written"],
        bytes_reused=result["bytes_reused"],
        start=start,
    )
    return result


def _inspect_images_and_engine(refs: list[str], check_space: bool) -> tuple[_ImagesToSave, Any]:
    """The images asked for, and the engine's info when a space check needs it."""
    # `docker info` (for the space check) runs beside `docker image inspect`: through the CLI
    # each is a round trip of ~0.1 s, and a save of stored blobs should cost no more than
    # docker save.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        engine_future = pool.submit(engine_info) if check_space else None
        try:
            infos, ids, tags = resolve_images(refs)  # DockerUnavailableError when no daemon
        finally:
            engine = _engine_result(engine_future)
    return _ImagesToSave(list(refs), infos, ids, tags), engine


def _engine_result(future: concurrent.futures.Future | None) -> Any:
    """The engine info, or the exception it raised (re-raised only if a space check needs it)."""
    if future is None:
        return None
    try:
        return future.result()
    except RunnerkeepError as exc:
        return exc


def _save_locked(
    store: Store,
    key: str,
    name: str,
    images: _ImagesToSave,
    space: _SpaceRule,
    progress: Callable[[int], None] | None,
    scope: str,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Under the key and store locks, the cheapest save that is right: nothing (the entry is
    current), an entry over stored blobs, or a full read of the images' archive."""
    store.ensure()
    with store.key_lock(name), store.store_lock():
        store.remove_stale_temps()
        current = _entry_is_current(store, name, images.ids, images.tags)
        if current:
            store.touch_entry(name)
            return _unchanged_result(current)
        stored = _save_from_store(store, key, images.refs, images.infos, images.tags, scope)
        if stored:
            return stored
        plan = _make_sure_it_fits(store, images.infos, space)
        announce_total(progress, sum(int(info.get("Size") or 0) for info in images.infos))
        result = _save_from_docker(store, key, images, progress, scope, max_size)
        result["space"] = plan
        return result


def _unchanged_result(current: dict[str, Any]) -> dict[str, Any]:
    return {
        "result": "unchanged",
        "entry_digest": current["entry_digest"],
        "bytes_written": 0,
        "bytes_reused": sum(entry_blobs(current["entry"]).values()),
        "images": _image_summary(current["entry"]),
    }


def _make_sure_it_fits(
    store: Store, infos: list[dict[str, Any]], space: _SpaceRule
) -> list[dict[str, Any]]:
    """The space plan (empty when not checked); FreeSpaceError when a filesystem is short even
    after --make-room's cleanup."""
    if not space.check:
        return []
    if isinstance(space.engine, BaseException):
        raise space.engine
    plan = space_plan(store, infos, space.reserve, space.engine)
    if not all(p["ok"] for p in plan) and space.make_room_first:
        make_room(space.make_room, plan)
        plan = space_plan(store, infos, space.reserve, space.engine)
    if not all(p["ok"] for p in plan):
        raise FreeSpaceError(_space_message(plan))
    return plan


def _dry_run_save(
    store: Store, key: str, name: str, images: _ImagesToSave, space: _SpaceRule
) -> dict[str, Any]:
    """What a save would do, found by reading only: no store layout, lock file, temp cleanup,
    cleanup run or event (a store never written to reads as empty)."""
    with store.read_lock():
        current = _entry_is_current(store, name, images.ids, images.tags)
        if current:
            return {**_unchanged_result(current), "key": key, "dry_run": True}
        plan: list[dict[str, Any]] = []
        would_make_room = False
        if space.check:
            if isinstance(space.engine, BaseException):
                raise space.engine
            plan = space_plan(store, images.infos, space.reserve, space.engine)
            if not all(p["ok"] for p in plan):
                if not space.make_room_first:
                    raise FreeSpaceError(_space_message(plan))
                would_make_room = True  # the real save runs the cleanup, then checks again
    return {
        "result": "would_save",
        "key": key,
        "space": plan,
        "would_make_room": would_make_room,
        "bytes_written": 0,
        "bytes_reused": 0,
        "images": sorted(images.ids),
        "dry_run": True,
    }


def _save_from_store(
    store: Store,
    key: str,
    refs: list[str],
    infos: list[dict[str, Any]],
    tags: dict[str, str],
    scope: str = TRUSTED,
) -> dict[str, Any] | None:
    """Commit an entry without `docker save` when every blob of the images is already stored.

    An image ID is the sha256 of its config, the config lists the layers' diff_ids, and a stored
    uncompressed layer is named by its diff_id: the ID pins every byte. The stored blobs are
    re-hashed (about 0.3 s per GiB on two threads, against ~7 s for `docker save` of a GiB), so
    a blob damaged on disk is never written into a new entry: it is quarantined and the caller
    falls back to a full save, which stores it again."""
    images = _images_from_store(store, infos, tags)
    if images is None:
        return None
    layer_digests = dict.fromkeys(layer["digest"] for image in images for layer in image["layers"])
    # An unreadable blob (or one no longer a regular file) is as unusable as a damaged one.
    rehashed = rehash_blobs(store, layer_digests, workers=2)
    bad = [digest for digest, found in rehashed.items() if not found.matches]
    for digest in bad:
        store.quarantine("blob", store.blob_path(digest), f"blob {digest} fails its sha256 check")
    if bad:
        return None
    entry = _new_entry(key, "docker-archive", images, list(refs), scope)
    digest = store.write_entry(entry)
    return {
        "result": "saved",
        "from_store": True,
        "entry_digest": digest,
        "bytes_written": 0,
        "bytes_reused": sum(entry_blobs(entry).values()),
        "format": "docker-archive",
        "images": _image_summary(entry),
    }


def _images_from_store(
    store: Store, infos: list[dict[str, Any]], tags: dict[str, str]
) -> list[dict[str, Any]] | None:
    """The entry's images built from stored configs and layers (sizes only, not yet re-hashed);
    None when any config or layer is not stored or does not match what the daemon says."""
    images = []
    seen = set()
    for info in infos:
        image_id = info["Id"]
        if image_id in seen:
            continue
        seen.add(image_id)
        try:
            diff_ids, config_size = config_diff_ids(store, image_id)
        except (FileNotFoundError, CorruptEntry, CorruptBlob):
            # Not stored, or not an ID that is a config digest (e.g. containerd image store).
            return None
        if diff_ids != (info.get("RootFS") or {}).get("Layers"):
            return None
        layers = []
        for diff_id in diff_ids:
            size = store.blob_size(diff_id)
            if size is None:
                return None
            layers.append(
                {
                    "digest": diff_id,
                    "size": size,
                    "diff_id": diff_id,
                    "media_type": LEGACY_LAYER_TYPE,
                }
            )
        images.append(
            {
                "id": image_id,
                "tags": sorted(tag for tag, tagged in tags.items() if tagged == image_id),
                "config": {"digest": image_id, "size": config_size},
                "layers": layers,
                "manifests": [],
            }
        )
    return images


def _save_from_docker(
    store: Store,
    key: str,
    images: _ImagesToSave,
    progress: Callable[[int], None] | None,
    scope: str = TRUSTED,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Read `docker save` once into the temp area, check it, commit it. A second read only when
    a layer guessed to be stored (by its size) was not."""
    candidates = _reuse_candidates(store, images.infos)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as hash_pool:
        for attempt in (1, 2):
            with store.temp_area() as area:
                parsed, via = _read_docker_save(
                    store, images.refs, area, candidates, progress, hash_pool
                )
                if parsed.lost_needed and attempt == 1:
                    # A layer's size matched a stored blob but its content did not: read the
                    # stream again, writing every layer.
                    candidates = {}
                    continue
                check_image_set(parsed, images.ids, images.tags)
                committed = commit_parsed(
                    store, key, parsed, area, list(images.refs), scope, max_size
                )
                break
    return {
        "result": "saved",
        "entry_digest": committed["entry_digest"],
        "bytes_written": committed["bytes_written"],
        "bytes_reused": committed["bytes_reused"],
        "bytes_read": parsed.bytes_read,
        "saved_via": via,
        "format": parsed.format,
        "images": _image_summary(committed["entry"]),
    }


def _read_docker_save(
    store: Store,
    refs: list[str],
    area: str,
    candidates: dict[int, set[str]],
    progress: Callable[[int], None] | None,
    hash_pool: concurrent.futures.Executor,
) -> tuple[ParsedArchive, str]:
    """``_stream_docker_save`` with running out of space said as a SaveFailed."""
    try:
        return _stream_docker_save(store, refs, area, candidates, progress, hash_pool)
    except NoSpaceWhileWriting as exc:
        raise SaveFailed(f"{exc}; the previous entry is untouched") from None
    except OSError as exc:
        if is_no_space(exc):
            raise SaveFailed(
                f"no space left in {store.root}: {exc.strerror}; the previous entry is untouched"
            ) from None
        raise


def import_archive(
    store_dir: str | Store,
    key: str,
    path: str,
    *,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    reserve: int = 0,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Verify, then store, an archive file that came from elsewhere. A bad one stores nothing."""
    validate_key(key)
    entry_name(key, scope)
    try:
        handle: BinaryIO = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise SaveFailed(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        return import_archive_fd(
            store_dir,
            key,
            handle.fileno(),
            os.path.abspath(path),
            scope=scope,
            state_dir=state_dir,
            progress=progress,
            reserve=reserve,
            max_size=max_size,
        )


def import_archive_fd(
    store_dir: str | Store,
    key: str,
    fd: int,
    source: str,
    *,
    scope: str = TRUSTED,
    state_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    reserve: int = 0,
    max_size: int | None = None,
) -> dict[str, Any]:
    """Verify, then store, the archive read from ``fd`` (the cache service reads a job's file
    or pipe through the fd the job passed; it never opens the job's path). ``source`` is what
    the entry records as where it came from. As a save: the import stops, storing nothing,
    before it would leave less than ``reserve`` free (``import_space``), and the store is
    pruned back under ``max_size`` after the commit (the new entry kept)."""
    validate_key(key)
    name = entry_name(key, scope)
    start = time.monotonic()
    store = as_store(store_dir)
    store.ensure()
    handle: BinaryIO = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
    _announce_file_size(progress, fd)
    try:
        with handle, store.key_lock(name), store.store_lock():
            store.remove_stale_temps()
            reader = _ImportReader(handle, store, source, reserve, progress)
            # A wrong guess (lost_needed) is read again without guessing, which cannot miss.
            for guess_stored in (reader.rereadable, False):
                with store.temp_area() as area:
                    parsed = reader.read(area, guess_stored)
                    if not parsed.lost_needed:
                        committed = commit_parsed(
                            store, key, parsed, area, [source], scope, max_size
                        )
                        break
                reader.rewind()
    except RunnerkeepError as exc:
        reclaim_after_failed_commit(store, exc)
        _event(state_dir, op="import", result="failed", key=key, error=str(exc), start=start)
        raise
    pruned = keep_quota(store, name, scope, max_size)
    _event(
        state_dir,
        op="import",
        result="saved",
        key=key,
        bytes_written=committed["bytes_written"],
        bytes_reused=committed["bytes_reused"],
        start=start,
    )
    return {
        "result": "saved",
        "key": key,
        "scope": scope,
        "format": parsed.format,
        "entry_digest": committed["entry_digest"],
        "bytes_written": committed["bytes_written"],
        "bytes_reused": committed["bytes_reused"],
        "images": _image_summary(committed["entry"]),
        "duration": round(time.monotonic() - start, 3),
        "prune": pruned,
    }


class _ImportReader:
    """An import's archive read and checked into a temp area. A regular file can be read
    again, so a legacy ``layer.tar`` (its name carries no digest) as big as a stored blob is
    first only hashed, as a save does with the layers the engine lists: re-importing stored
    layers then writes nothing, even on a disk with no room above the reserve. If a guess
    was wrong (``lost_needed``) the caller rewinds and reads again without guessing."""

    def __init__(
        self,
        handle: BinaryIO,
        store: Store,
        source: str,
        reserve: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.handle = handle
        self.store = store
        self.source = source
        self.reserve = reserve
        self.progress = progress
        self.start = _file_offset(handle.fileno())
        self.rereadable = self.start is not None

    def read(self, area: str, guess_stored: bool) -> ParsedArchive:
        # What an unnamed member may be: any stored blob of its size.
        candidates = _by_size(self.store.list_blobs().items()) if guess_stored else None
        guard = ReserveGuard(self.store.root, self.reserve, self.source)
        try:
            stats = read_archive_stream(
                self.handle, self.store, area, candidates, self.progress, charge=guard.charge
            )
            return analyze(stats)
        except ArchiveError as exc:
            raise SaveFailed(f"{self.source} was refused, nothing stored: {exc}") from None
        except NoSpaceWhileWriting as exc:
            raise SaveFailed(str(exc)) from None

    def rewind(self) -> None:
        os.lseek(self.handle.fileno(), self.start or 0, os.SEEK_SET)


def _file_offset(fd: int) -> int | None:
    """Where a regular file's read starts; None for a pipe or socket (read once only)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None


def _announce_file_size(progress: Callable[[int], None] | None, fd: int) -> None:
    """A regular file's size is the archive's: the progress line's total (a pipe has none)."""
    try:
        info = os.fstat(fd)
    except OSError:
        return
    if stat.S_ISREG(info.st_mode):
        announce_total(progress, info.st_size)


def _image_summary(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": image["id"],
            "tags": image["tags"],
            "layers": len(image["layers"]),
            "size": image["config"]["size"] + sum(layer["size"] for layer in image["layers"]),
        }
        for image in entry["images"]
    ]


def _event(state_dir: str | None, start: float, **fields: Any) -> None:
    if state_dir:
        record_event(state_dir, "cache", duration=round(time.monotonic() - start, 3), **fields)
