"""`runnerkeep cache ...` commands: the verified Docker image cache (docs/cache-format.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, Callable

from runnerkeep.cache import (
    ProgressLine,
    SaveFailed,
    Store,
    access_settings,
    export_entry,
    import_archive,
    list_entries,
    prune_store,
    resolve_cache_dir,
    service,
    sign_entries,
    verify_store,
)
from runnerkeep.cache.owner import drop_to_store_owner
from runnerkeep.cache.scrub import report_lines as scrub_report_lines
from runnerkeep.cache.trust import direct_trust, provenance_from_env, trust_from_env
from runnerkeep.config import load_config, state_dir_of
from runnerkeep.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError, RunnerkeepError
from runnerkeep.fsutil import atomic_output
from runnerkeep.units import format_size, parse_duration, parse_size
from runnerkeep.wiring import (
    FleetTier,
    cache_settings,
    fleet_tier,
    make_room,
    prune_remote,
    pull_key,
    push_key,
    repair_from_fleet,
    restore_with_remote,
    save_then_push,
)

from runnerkeep_cli.options import add_command, add_group
from runnerkeep_cli.output import CommandResult, table

HELP = """\
A verified, content-addressed Docker image cache. Every save is checked byte for byte
(layer digests, image set, docker's exit code, stream length) before it is committed;
every restore re-checks every blob while it feeds `docker load`. A restore that finds
nothing usable exits 3: rebuild and save again.

With a fleet tier (config cache.remote, or --remote https://HOST[:PORT]/REPOSITORY), a
restore that misses locally, or finds a corrupt blob, pulls the key from the registry (every
byte verified before the local commit) and restores it; a trusted save with
cache.remote.push pushes after its commit. Untrusted jobs may pull, never push.
"""


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    sub = add_group(
        groups,
        "cache",
        "verified Docker image cache: save, restore, verify, list, export, import, prune, "
        "push, pull",
        HELP,
        epilog,
    )
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--dir",
        metavar="DIR",
        help="cache directory (default: $RUNNERKEEP_CACHE_DIR, else config paths.cache_dir)",
    )

    via = argparse.ArgumentParser(add_help=False)
    mode = via.add_mutually_exclusive_group()
    mode.add_argument(
        "--service",
        dest="service",
        action="store_const",
        const=True,
        default=None,
        help="go through the cache service (default: when its socket exists and this user "
        "cannot write the store)",
    )
    mode.add_argument(
        "--no-service",
        dest="service",
        action="store_const",
        const=False,
        help="use the store directly, never the cache service",
    )

    remote = _remote_options()
    remote_url = _remote_options(allow_off=False)

    def add(
        name: str,
        handler: Callable,
        help_text: str,
        job_op: bool = False,
        hidden: bool = False,
        fleet: argparse.ArgumentParser | None = None,
    ) -> argparse.ArgumentParser:
        parents = [common, store, via] if job_op else [common, store]
        parents += [fleet] if fleet is not None else []
        return add_command(
            sub,
            name,
            handler,
            help_text,
            parents=parents,
            epilog=epilog,
            description=help_text,
            hidden=hidden,
        )

    p = add(
        "save",
        cache_save,
        "save images under a key (docker save, verified, then committed; pushed to the "
        "fleet tier after the commit when cache.remote.push is on and the job is trusted)",
        job_op=True,
        fleet=remote,
    )
    p.add_argument("--key", required=True, help="cache key: letters, digits, . _ - (max 128)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image references to save")
    p.add_argument(
        "--make-room",
        action="store_true",
        help="when space is short, run the post-build cleanup stage and check again",
    )
    p.add_argument(
        "--skip-space-check",
        action="store_true",
        help="do not refuse on the free-space estimate (writes still stop cleanly on ENOSPC)",
    )
    p.add_argument("--reserve", metavar="SIZE", help="free space to leave (config cache.reserve)")
    p.add_argument("--dry-run", action="store_true", help="check space, write nothing")

    p = add(
        "restore",
        cache_restore,
        "load a key's images into the daemon (a local miss or corrupt blob is pulled from the "
        "fleet tier when one is configured; exit 3 = miss)",
        job_op=True,
        fleet=remote,
    )
    p.add_argument("--key", required=True)
    p.add_argument("--dry-run", action="store_true", help="say whether a load would happen")

    p = add(
        "verify",
        cache_verify,
        "re-hash every blob and check every entry (exit 6 if bad)",
        fleet=remote,
    )
    p.add_argument("--key", help="only this key's entry and blobs")
    p.add_argument(
        "--repair",
        action="store_true",
        help="move bad entries and blobs to the quarantine, then pull the bad keys again from "
        "the fleet tier when one is configured (exit 0 when every one is whole again)",
    )
    p.add_argument(
        "--max-duration",
        metavar="DURATION",
        help="scrub: re-hash the least recently verified blobs for at most this long (30m, 1h), "
        "so that every blob is re-read within cache.scrub_period (the role's nightly timer)",
    )

    add(
        "list",
        cache_list,
        "keys, images, sizes (logical and unique), created, last used",
        job_op=True,
    )

    p = add(
        "export",
        cache_export,
        "write a key's images as an archive `docker load` accepts",
        job_op=True,
    )
    p.add_argument("--key", required=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE.tar")

    p = add(
        "import",
        cache_import,
        "verify, then store, an archive (docker-archive or OCI)",
        job_op=True,
    )
    p.add_argument("--key", required=True)
    p.add_argument("archive", metavar="FILE.tar")

    p = add(
        "push",
        cache_push,
        "upload a key to the fleet tier: only the blobs the registry lacks, then the key's "
        "index (trusted jobs only; exit 0 when the key is in the registry)",
        job_op=True,
        fleet=remote_url,
    )
    p.add_argument("--key", required=True)
    p.add_argument(
        "--verify-remote",
        action="store_true",
        help="read back the blobs the registry says it has and replace bad ones",
    )

    p = add(
        "pull",
        cache_pull,
        "fetch a key from the fleet tier into the local store, every byte verified before the "
        "commit (exit 3 when the registry has no such key, or serves bad data)",
        job_op=True,
        fleet=remote_url,
    )
    p.add_argument("--key", required=True)

    p = add(
        "remote-prune",
        cache_remote_prune,
        "delete key tags from the fleet tier, least recently pushed first (the registry's "
        "garbage collection frees the blobs)",
        fleet=remote_url,
    )
    p.add_argument("--max-age", metavar="DURATION", help="delete keys pushed longer ago (30d)")
    p.add_argument("--keep", metavar="N", type=_count, help="keep the N most recently pushed")
    p.add_argument("--dry-run", action="store_true", help="report what would be deleted")

    p = add("prune", cache_prune, "evict least recently used entries, delete unreferenced blobs")
    p.add_argument("--max-size", metavar="SIZE", help="quota (default: config cache.max_size)")
    p.add_argument("--max-age", metavar="DURATION", help="evict entries unused this long")
    p.add_argument("--dry-run", action="store_true", help="report what would go")

    add(
        "sign-entries",
        cache_sign_entries,
        "sign the entries written before the store had a key (blobs re-hashed first; "
        "bad ones quarantined)",
    )

    p = add(
        "register-job",
        cache_register_job,
        "job-start hook: register this job's trust (from the runner's environment) with the "
        "cache service, bound to the job's worker process (--worker-pid, else the parent)",
    )
    p.add_argument("--socket", metavar="PATH", help="service socket (config cache.service_socket)")
    p.add_argument(
        "--worker-pid",
        type=int,
        metavar="PID",
        help="the job's worker process (the GitHub hook passes $PPID); default: this "
        "command's parent",
    )

    p = add(
        "serve-connection",
        cache_serve_connection,
        "internal: serve the cache service connection on fd 0 (runnerkeep-cache@.service)",
        hidden=True,
    )
    p.add_argument(
        "--state-dir",
        default=service.DEFAULT_STATE_DIR,
        metavar="DIR",
        help="the service's own state (job registry)",
    )


def _remote_options(allow_off: bool = True) -> argparse.ArgumentParser:
    """``--remote URL`` (and ``--no-remote``): the fleet tier of this command."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--remote",
        metavar="URL",
        help="fleet tier https://HOST[:PORT]/REPOSITORY (default: config cache.remote.url; "
        "credentials only from cache.remote.credentials_file, never the URL)",
    )
    if allow_off:
        group.add_argument(
            "--no-remote",
            action="store_true",
            help="leave the fleet tier out (local store only)",
        )
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return value


# ---------------------------------------------------------------------------------------
def _fleet(args: argparse.Namespace, config: dict[str, Any]) -> FleetTier:
    """The fleet tier of this command (after the drop to the store's owner: the credentials
    file is read as that user, later, only when the registry is needed)."""
    return fleet_tier(config, getattr(args, "remote", None), getattr(args, "no_remote", False))


def _through_service(args: argparse.Namespace) -> dict[str, Any]:
    """The fleet options a job may pass to the service: opting out, never another URL (the
    service would send the host's credentials wherever a job pointed it)."""
    if getattr(args, "remote", None):
        raise ConfigError(
            "--remote cannot be used through the cache service: it uses the host's configured "
            "cache.remote (leave out --remote, or run as the store's owner with --no-service)"
        )
    return {"no_remote": True} if getattr(args, "no_remote", False) else {}


def _trust_and_provenance() -> tuple[tuple[bool, str, str], dict[str, str]]:
    """This direct caller's trust (the push decision) and the provenance of what it pushes."""
    trust = direct_trust(os.environ, _read_event_file)
    return trust, provenance_from_env(os.environ, socket.gethostname())


def _context(args: argparse.Namespace) -> tuple[Store, dict[str, Any], str]:
    """Store (with the entry key file), config, state dir. The commands that use
    ``cache_settings`` (save, verify, prune) compute it themselves: without
    ``cache.max_size`` it measures the disk budget."""
    config = load_config(args.config)
    store = Store(resolve_cache_dir(args.dir, config), key_file=access_settings(config)["key_file"])
    if getattr(args, "service", None) is not True:
        # Root in direct mode acts as the store's owner (runnerkeep), never as root.
        drop_to_store_owner(store.root)
    if not hasattr(args, "service"):  # commands the service does not offer
        _check_access(store)
    return store, config, state_dir_of(config)


def _service_socket(args: argparse.Namespace, store: Store, config: dict[str, Any]) -> str | None:
    """The service socket when this command goes through the service, else None (direct)."""
    socket_path = access_settings(config)["service_socket"]
    if args.service is True:
        return socket_path
    if (
        args.service is None
        and service.is_socket(socket_path)
        and not service.store_writable_directly(store.root)
    ):
        return socket_path
    _check_access(store)
    return None


def _check_access(store: Store) -> None:
    """A store this user cannot enter would read as empty: say what is wrong instead."""
    if os.path.exists(store.root) and not os.access(store.root, os.R_OK | os.X_OK):
        raise ConfigError(
            f"the cache store {store.root} is not accessible to this user: use the cache "
            "service (leave out --no-service)"
        )


@contextlib.contextmanager
def _terminable():
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so temp data is removed on the way."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _long_running(label: str) -> Iterator[ProgressLine]:
    """A progress line on a terminal while the work runs (closed however it ends); SIGTERM
    unwinds like Ctrl-C, so temp data is removed on the way."""
    progress = ProgressLine(label)
    try:
        with _terminable():
            yield progress
    finally:
        progress.close()


def _warn(report: dict[str, Any]) -> None:
    """One line on stderr per damaged thing a command skipped (stdout stays the report)."""
    for line in report.get("warnings") or []:
        print(f"runnerkeep: warning: {line}", file=sys.stderr)


def _images_text(images: list[dict[str, Any]]) -> str:
    return ", ".join(", ".join(i["tags"]) or i["id"][:19] for i in images)


def cache_save(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    socket_path = _service_socket(args, store, config)
    reserve = parse_size(args.reserve, "--reserve") if args.reserve else None
    if socket_path:
        request = {
            "key": args.key,
            "images": args.images,
            "make_room": args.make_room,
            "skip_space_check": args.skip_space_check,
            "reserve": reserve,
            "dry_run": args.dry_run,
            **_through_service(args),
        }
        result = service.call_service(socket_path, "save", request)
        _warn(result)
        return CommandResult(result, save_text(args.key, store.root, result), EXIT_OK)
    settings = cache_settings(config)
    fleet = _fleet(args, config)
    trust, provenance = _trust_and_provenance()
    with _long_running(f"saving {args.key}") as progress:
        result = save_then_push(
            store,
            args.key,
            args.images,
            fleet,
            trust=trust,
            provenance=provenance,
            reserve=settings["reserve"] if reserve is None else reserve,
            check_space=not args.skip_space_check,
            make_room=make_room(config),
            make_room_first=args.make_room,
            max_size=settings["max_size"],
            state_dir=state_dir,
            progress=progress,
            dry_run=args.dry_run,
        )
    _warn(result)
    return CommandResult(result, save_text(args.key, store.root, result), EXIT_OK)


def save_text(key: str, store_dir: str, result: dict[str, Any]) -> str:
    text = _save_line(key, store_dir, result)
    pushed = result.get("push")
    if isinstance(pushed, dict):
        text += "\n" + push_line(key, pushed)
    return text


def push_line(key: str, pushed: dict[str, Any]) -> str:
    """The push decision after a save, and why."""
    decision = pushed.get("decision")
    if decision == "pushed":
        return (
            f"pushed key '{key}' to {pushed.get('remote')} "
            f"({format_size(pushed.get('bytes_sent') or 0)} sent; {pushed.get('reason')})"
        )
    if decision == "would_push":
        return f"would push key '{key}' to {pushed.get('remote')} ({pushed.get('reason')})"
    if decision == "refused":
        return f"key '{key}' {pushed.get('reason')}"
    return (
        "push failed (the save stands; the next save or `cache push` retries): "
        f"{pushed.get('reason')}"
    )


def _save_line(key: str, store_dir: str, result: dict[str, Any]) -> str:
    if result["result"] == "would_save":
        if result.get("would_make_room"):
            return (
                f"would run the post-build cleanup stage (space short), then save key "
                f"'{key}' to {store_dir}"
            )
        return f"would save key '{key}' to {store_dir} (space ok)"
    if result["result"] == "unchanged":
        return f"key '{key}' already holds these images ({_images_text(result['images'])})"
    return (
        f"saved key '{key}': {_images_text(result['images'])}; "
        f"{format_size(result['bytes_written'])} written, "
        f"{format_size(result['bytes_reused'])} already stored, {result['duration']:.1f}s"
    )


def cache_restore(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    socket_path = _service_socket(args, store, config)
    if socket_path:
        request = {"key": args.key, "dry_run": args.dry_run, **_through_service(args)}
        result = service.call_service(socket_path, "restore", request)
        return CommandResult(result, restore_text(args.key, result), EXIT_OK)
    fleet = _fleet(args, config)
    trust = _trust_and_provenance()[0] if fleet.enabled else None
    with _long_running(f"restoring {args.key}") as progress:
        result = restore_with_remote(
            store,
            args.key,
            fleet,
            state_dir=state_dir,
            progress=progress,
            dry_run=args.dry_run,
            trust=trust,
        )
    return CommandResult(result, restore_text(args.key, result), EXIT_OK)


def restore_text(key: str, result: dict[str, Any]) -> str:
    text = _restore_line(key, result)
    if result.get("source") == "fleet":
        pulled = result.get("pulled") or {}
        how = "repaired from" if result.get("repaired") else "pulled from"
        text += (
            f"\n{how} the fleet tier {result.get('remote')}: "
            f"{format_size(pulled.get('bytes_fetched') or 0)} fetched "
            f"({pulled.get('blobs_fetched') or 0} blobs; local: {result.get('local_miss')})"
        )
    if result.get("not_retagged"):
        text += (
            "\nwarning: not re-tagged (the name holds another image here; the fleet's entry "
            f"may not re-point it): {', '.join(result['not_retagged'])}"
        )
    return text


def _restore_line(key: str, result: dict[str, Any]) -> str:
    if result["result"] == "would_pull":
        return (
            f"would pull key '{key}' from the fleet tier {result.get('remote')} "
            f"(local: {result.get('local_miss')})"
        )
    if result["result"] == "would_load":
        return f"would load {format_size(result['bytes_loaded'])} for key '{key}'"
    if result["loaded"]:
        return (
            f"restored key '{key}': loaded {_images_text(result['images'])} "
            f"({format_size(result['bytes_loaded'])}, {result['duration']:.1f}s)"
        )
    return f"key '{key}': images already present ({_images_text(result['images'])})"


def cache_verify(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    store_dir = store.root
    settings = cache_settings(config)
    fleet = _fleet(args, config) if args.repair else None
    max_duration = None
    if args.max_duration is not None:
        max_duration = parse_duration(args.max_duration, "--max-duration")
    progress = ProgressLine("verifying")
    try:
        report = verify_store(
            store,
            args.key,
            workers=settings["verify_workers"],
            repair=args.repair,
            progress=progress,
            max_duration=max_duration,
            scrub_period=settings["scrub_period"],
        )
    finally:
        progress.close()
    if fleet is not None and fleet.enabled and not report["ok"]:
        with _long_running("repairing from the fleet tier") as pulling:
            repair_from_fleet(store, report, fleet, state_dir=state_dir, progress=pulling)
    if report.get("scrub"):
        code = EXIT_OK if report["ok"] or report.get("repaired_ok") else EXIT_CHECK_FAILED
        lines = scrub_report_lines(report) + _repair_lines(report)
        return CommandResult(report, "\n".join(lines), code)
    if report.get("empty"):
        text = f"nothing to verify: no cache entries or blobs in {report.get('dir', store_dir)}"
        return CommandResult(report, text, EXIT_OK)
    lines = [
        f"checked {report['entries_checked']} entries, {report['blobs_checked']} blobs, "
        f"{format_size(report['bytes_checked'])} in {report['duration']:.1f}s"
    ]
    for bad in report["bad_entries"]:
        lines.append(f"BAD entry {bad['key']}: {bad['reason']}")
    for bad in report["bad_blobs"]:
        lines.append(f"BAD blob {bad['digest']}: {bad['reason']}")
    if report["unreferenced_blobs"]:
        lines.append(f"{report['unreferenced_blobs']} unreferenced blob(s) (prune removes them)")
    for moved in report["quarantined"]:
        lines.append(f"quarantined {moved}")
    if report.get("stale_temps_removed"):
        count = len(report["stale_temps_removed"])
        lines.append(f"removed {count} temp area(s) of operations that died")
    lines += _repair_lines(report)
    whole = report["ok"] or bool(report.get("repaired_ok"))
    if report["ok"]:
        lines.append("all good")
    else:
        lines.append(
            "problems found; all repaired from the fleet tier" if whole else "problems found"
        )
    return CommandResult(report, "\n".join(lines), EXIT_OK if whole else EXIT_CHECK_FAILED)


def _repair_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"repaired {key} from the fleet tier" for key in report.get("repaired") or []]
    lines += [f"NOT repaired {b['key']}: {b['reason']}" for b in report.get("not_repaired") or []]
    return lines


def cache_push(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    socket_path = _service_socket(args, store, config)
    if socket_path:
        request = {"key": args.key, **_through_service(args)}
        if args.verify_remote:
            request["verify_remote"] = True
        result = service.call_service(socket_path, "push", request)
        _warn({"warnings": push_warnings(result)})
        return CommandResult(result, push_text(args.key, result), EXIT_OK)
    fleet = _fleet(args, config)
    trust, provenance = _trust_and_provenance()
    with _long_running(f"pushing {args.key}") as progress:
        result = push_key(
            store,
            args.key,
            fleet,
            trust=trust,
            provenance=provenance,
            state_dir=state_dir,
            progress=progress,
            verify_remote=args.verify_remote,
        )
    _warn({"warnings": push_warnings(result)})
    return CommandResult(result, push_text(args.key, result), EXIT_OK)


def push_text(key: str, result: dict[str, Any]) -> str:
    text = (
        f"pushed key '{key}' to {result.get('remote')}: {result.get('blobs_sent', 0)} blobs "
        f"sent ({format_size(result.get('bytes_sent') or 0)}), {result.get('blobs_present', 0)} "
        f"already there; index {result.get('index_digest')} ({result.get('decision')})"
    )
    healed = result.get("healed") or []
    if healed:
        text += f"\nhealed {len(healed)} blob(s) the registry served damaged: {' '.join(healed)}"
    return text


def push_warnings(result: dict[str, Any]) -> list[str]:
    """One line per blob ``--verify-remote`` found bad on the registry and could not replace
    (Distribution keeps its stored copy of a blob on upload)."""
    return [
        f"the registry still serves {item.get('digest')} damaged: {item.get('reason')} "
        "(delete the blob's data file on the cache host, then push again)"
        for item in result.get("not_healed") or []
        if isinstance(item, dict)
    ]


def cache_pull(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    socket_path = _service_socket(args, store, config)
    if socket_path:
        request = {"key": args.key, **_through_service(args)}
        result = service.call_service(socket_path, "pull", request)
        return CommandResult(result, pull_text(args.key, result), EXIT_OK)
    fleet = _fleet(args, config)
    with _long_running(f"pulling {args.key}") as progress:
        result = pull_key(store, args.key, fleet, state_dir=state_dir, progress=progress)
    return CommandResult(result, pull_text(args.key, result), EXIT_OK)


def pull_text(key: str, result: dict[str, Any]) -> str:
    if result.get("result") == "present":
        return f"key '{key}' is already in the local store (valid entry): nothing pulled"
    text = (
        f"pulled key '{key}' from {result.get('remote')}: {result.get('blobs_fetched', 0)} "
        f"blobs fetched ({format_size(result.get('bytes_fetched') or 0)}), "
        f"{result.get('blobs_present', 0)} already stored"
    )
    if result.get("repaired"):
        text += f"; repaired {len(result['repaired'])} blob(s) the store had quarantined"
    return text


def cache_remote_prune(args: argparse.Namespace) -> CommandResult:
    _store, config, _state = _context(args)
    max_age = parse_duration(args.max_age, "--max-age") if args.max_age else None
    fleet = _fleet(args, config)
    result = prune_remote(fleet, max_age=max_age, keep=args.keep, dry_run=args.dry_run)
    deleted = result.get("deleted") or []
    verb = "would delete" if args.dry_run else "deleted"
    lines = [f"{verb} {_pruned_name(item)}" for item in deleted]
    lines.append(
        f"{verb} {len(deleted)} key(s) of {result.get('remote')}; {result.get('kept', 0)} kept"
    )
    return CommandResult(result, "\n".join(lines), EXIT_OK)


def _pruned_name(item: Any) -> str:
    return str(item.get("key", item)) if isinstance(item, dict) else str(item)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cache_list(args: argparse.Namespace) -> CommandResult:
    store, config, _state = _context(args)
    socket_path = _service_socket(args, store, config)
    data = service.call_service(socket_path, "list", {}) if socket_path else list_entries(store)
    _warn(data)
    return CommandResult(data, list_text(data), EXIT_OK)


def list_text(data: dict[str, Any]) -> str:
    if not data["entries"] and not data["store_bytes"]:
        return f"no cache entries in {data['dir']}"
    rows = []
    for row in data["entries"]:
        key = row["key"] if row.get("scope", "trusted") == "trusted" else _scoped(row)
        if not row["ok"]:
            rows.append([key, "(unreadable entry)", "-", "-", "-", _when(row["last_used"])])
            continue
        rows.append(
            [
                key,
                _images_text(row["images"]),
                format_size(row["logical_bytes"]),
                format_size(row["unique_bytes"]),
                _when(row["created"]),
                _when(row["last_used"]),
            ]
        )
    text = table(rows, ["key", "images", "size", "unique", "created", "last used"])
    text += (
        f"\n{len(rows)} entries; {format_size(data['logical_bytes'])} logical, "
        f"{format_size(data['store_bytes'])} on disk in {data['dir']}"
    )
    return text


def _scoped(row: dict[str, Any]) -> str:
    return f"{row['key']} [{row['scope']}]"


def cache_export(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    socket_path = _service_socket(args, store, config)
    if socket_path:
        result = _export_through(socket_path, args.key, args.output)
        return CommandResult(result, export_text(args.key, result), EXIT_OK)
    with _long_running(f"exporting {args.key}") as progress:
        result = export_entry(store, args.key, args.output, state_dir=state_dir, progress=progress)
    return CommandResult(result, export_text(args.key, result), EXIT_OK)


def _export_through(socket_path: str, key: str, output: str) -> dict[str, Any]:
    """The job creates the file (as itself, next to the output) and passes its fd; the
    service writes into it. Renamed into place only when the service says it succeeded."""
    output = os.path.abspath(output)
    with atomic_output(output, prefix=".tmp-export-") as fd:
        result = service.call_service(socket_path, "export", {"key": key}, fd=fd)
    result["output"] = output
    return result


def export_text(key: str, result: dict[str, Any]) -> str:
    return f"exported key '{key}' to {result['output']} ({format_size(result['bytes'])})"


def cache_import(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    socket_path = _service_socket(args, store, config)
    if socket_path:
        try:
            fd = os.open(args.archive, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SaveFailed(f"cannot read {args.archive}: {exc.strerror}") from None
        try:
            request = {"key": args.key, "source": os.path.abspath(args.archive)}
            result = service.call_service(socket_path, "import", request, fd=fd)
        finally:
            os.close(fd)
        return CommandResult(result, import_text(args.key, args.archive, result), EXIT_OK)
    settings = cache_settings(config)
    with _long_running(f"importing {args.key}") as progress:
        result = import_archive(
            store,
            args.key,
            args.archive,
            state_dir=state_dir,
            progress=progress,
            reserve=settings["reserve"],
            max_size=settings["max_size"],
        )
    return CommandResult(result, import_text(args.key, args.archive, result), EXIT_OK)


def import_text(key: str, archive: str, result: dict[str, Any]) -> str:
    return (
        f"imported {archive} as key '{key}' ({result['format']}): "
        f"{_images_text(result['images'])}; {format_size(result['bytes_written'])} written"
    )


def cache_prune(args: argparse.Namespace) -> CommandResult:
    store, config, state_dir = _context(args)
    settings = cache_settings(config)
    max_size = parse_size(args.max_size, "--max-size") if args.max_size else settings["max_size"]
    max_age = parse_duration(args.max_age, "--max-age") if args.max_age else settings["max_age"]
    result = prune_store(
        store,
        max_size=max_size,
        max_age=max_age,
        quarantine_retention=settings["quarantine_retention"],
        dry_run=args.dry_run,
        state_dir=state_dir,
    )
    _warn(result)
    if result.get("empty"):
        return CommandResult(result, f"nothing to prune: {result['dir']} is empty", EXIT_OK)
    verb = "would free" if args.dry_run else "freed"
    lines = [f"evict {e['key']}: {e['reason']}" for e in result["evicted"]]
    if not result["evicted"] and not result["blobs_deleted"]:
        lines.append("nothing to prune")
    lines.append(
        f"{verb} {format_size(result['bytes_freed'])} ({result['blobs_deleted']} blobs); "
        f"store now {format_size(result['size_after'])}"
    )
    return CommandResult(result, "\n".join(lines), EXIT_OK)


def cache_sign_entries(args: argparse.Namespace) -> CommandResult:
    store, config, _state = _context(args)
    report = sign_entries(store, workers=cache_settings(config)["verify_workers"])
    lines = [f"signed {name}" for name in report["signed"]]
    lines += [f"BAD entry {bad['key']}: {bad['reason']} (quarantined)" for bad in report["bad"]]
    lines.append(
        f"{len(report['signed'])} signed, {report['already_signed']} already signed, "
        f"{len(report['bad'])} quarantined in {report['dir']}"
    )
    return CommandResult(report, "\n".join(lines), EXIT_OK if report["ok"] else EXIT_CHECK_FAILED)


def _read_event_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.read(fd, 16 * 1024 * 1024 + 1)
    finally:
        os.close(fd)


def cache_register_job(args: argparse.Namespace) -> CommandResult:
    """Never fails the job: a registration that cannot be made leaves the job untrusted
    ("unregistered"), which costs cache hits, not safety."""
    config = load_config(args.config)
    socket_path = args.socket or access_settings(config)["service_socket"]
    trusted, scope, reason = trust_from_env(os.environ, _read_event_file)
    data: dict[str, Any] = {"trusted": trusted, "scope": scope, "reason": reason}
    if not service.is_socket(socket_path):
        data["result"] = "no cache service"
        return CommandResult(data, f"no cache service at {socket_path}: nothing registered")
    try:
        # The provenance of what this job may push, read now like the trust facts: before
        # any job code ran.
        request = {
            **data,
            "worker_pid": args.worker_pid,
            "provenance": provenance_from_env(os.environ),
        }
        data.update(service.call_service(socket_path, "register-job", request))
    except RunnerkeepError as exc:
        print(f"runnerkeep: warning: job not registered: {exc}", file=sys.stderr)
        data["result"] = "not registered"
        data["error"] = str(exc)
        return CommandResult(data, "job not registered (it counts as untrusted)")
    kind = "trusted" if trusted else f"untrusted, scope {scope}"
    return CommandResult(data, f"registered job (worker {data['worker_pid']}): {kind} ({reason})")


def cache_serve_connection(args: argparse.Namespace) -> CommandResult:
    """fd 0 is the connection (StandardInput=socket). Nothing may go to stdout: it is the
    connection too; the response is the only thing written."""
    sock = socket.socket(fileno=os.dup(0))
    try:
        try:
            config = load_config(args.config)
            store = Store(
                resolve_cache_dir(None, config), key_file=access_settings(config)["key_file"]
            )
            settings = cache_settings(config)
            # The host's fleet tier: the service does the remote work, jobs never see the
            # credentials (read later, as the store's owner, only when the registry is needed).
            fleet = fleet_tier(config, limits=settings)
        except RunnerkeepError as exc:
            service.send_error(sock, exc)
            return CommandResult({}, "", EXIT_OK)
        # Root's state dir: the service user spools each operation's event, the watch counts it.
        service.serve_connection(
            sock,
            store,
            settings,
            service.Registry(args.state_dir),
            formatter=_service_text,
            events_dir=state_dir_of(config),
            fleet=fleet,
        )
    finally:
        sock.close()
    return CommandResult({}, "", EXIT_OK)


def _service_text(op: str, request: dict[str, Any], data: dict[str, Any]) -> str:
    key = request.get("key", "")
    if op == "save":
        return save_text(key, data.get("dir", ""), data)
    if op == "restore":
        return restore_text(key, data)
    if op == "list":
        return list_text(data)
    if op == "import":
        return import_text(key, request.get("source", "archive"), data)
    if op == "push":
        return push_text(key, data)
    if op == "pull":
        return pull_text(key, data)
    return ""
