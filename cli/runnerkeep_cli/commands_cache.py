"""`runnerkeep cache ...` commands: the verified Docker image cache (docs/cache-format.md)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from typing import Any, Callable

from runnerkeep.cache import (
    ProgressLine,
    cache_settings,
    export_entry,
    import_archive,
    list_entries,
    prune_store,
    resolve_cache_dir,
    restore_entry,
    save_entry,
    verify_store,
)
from runnerkeep.config import load_config
from runnerkeep.errors import EXIT_CHECK_FAILED, EXIT_OK
from runnerkeep.units import format_size, parse_duration, parse_size

from runnerkeep_cli.output import CommandResult, table

HELP = """\
A verified, content-addressed Docker image cache. Every save is checked byte for byte
(layer digests, image set, docker's exit code, stream length) before it is committed;
every restore re-checks every blob while it feeds `docker load`. A restore that finds
nothing usable exits 3: rebuild and save again.
"""


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    parser = groups.add_parser(
        "cache",
        help="verified Docker image cache: save, restore, verify, list, export, import, prune",
        description=HELP,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--dir",
        metavar="DIR",
        help="cache directory (default: $RUNNERKEEP_CACHE_DIR, else config paths.cache_dir)",
    )

    def add(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common, store],
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handler)
        return p

    p = add("save", cmd_save, "save images under a key (docker save, verified, then committed)")
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

    p = add("restore", cmd_restore, "load a key's images into the daemon (exit 3 = miss)")
    p.add_argument("--key", required=True)
    p.add_argument("--dry-run", action="store_true", help="say whether a load would happen")

    p = add("verify", cmd_verify, "re-hash every blob and check every entry (exit 6 if bad)")
    p.add_argument("--key", help="only this key's entry and blobs")
    p.add_argument(
        "--repair", action="store_true", help="move bad entries and blobs to the quarantine"
    )

    add("list", cmd_list, "keys, images, sizes (logical and unique), created, last used")

    p = add("export", cmd_export, "write a key's images as an archive `docker load` accepts")
    p.add_argument("--key", required=True)
    p.add_argument("-o", "--output", required=True, metavar="FILE.tar")

    p = add("import", cmd_import, "verify, then store, an archive (docker-archive or OCI)")
    p.add_argument("--key", required=True)
    p.add_argument("archive", metavar="FILE.tar")

    p = add("prune", cmd_prune, "evict least recently used entries, delete unreferenced blobs")
    p.add_argument("--max-size", metavar="SIZE", help="quota (default: config cache.max_size)")
    p.add_argument("--max-age", metavar="DURATION", help="evict entries unused this long")
    p.add_argument("--dry-run", action="store_true", help="report what would go")


# ---------------------------------------------------------------------------------------
def _context(args: argparse.Namespace) -> tuple[str, dict[str, Any], str]:
    """Store dir, config, state dir. The commands that use ``cache_settings`` (save, verify,
    prune) compute it themselves: without ``cache.max_size`` it measures the disk budget."""
    config = load_config(args.config)
    store_dir = resolve_cache_dir(args.dir, config)
    state_dir = (config.get("paths") or {}).get("state_dir") or "/var/lib/runnerkeep"
    return store_dir, config, state_dir


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


def _warn(report: dict[str, Any]) -> None:
    """One line on stderr per damaged thing a command skipped (stdout stays the report)."""
    for line in report.get("warnings") or []:
        print(f"runnerkeep: warning: {line}", file=sys.stderr)


def _images_text(images: list[dict[str, Any]]) -> str:
    return ", ".join(", ".join(i["tags"]) or i["id"][:19] for i in images)


def cmd_save(args: argparse.Namespace) -> CommandResult:
    store_dir, config, state_dir = _context(args)
    settings = cache_settings(config)
    reserve = parse_size(args.reserve, "--reserve") if args.reserve else settings["reserve"]
    progress = ProgressLine(f"saving {args.key}")
    try:
        with _terminable():
            result = save_entry(
                store_dir,
                args.key,
                args.images,
                reserve=reserve,
                check_space=not args.skip_space_check,
                make_room_config=config,
                make_room_first=args.make_room,
                max_size=settings["max_size"],
                state_dir=state_dir,
                progress=progress,
                dry_run=args.dry_run,
            )
    finally:
        progress.close()
    if result["result"] == "would_save":
        if result.get("would_make_room"):
            text = (
                f"would run the post-build cleanup stage (space short), then save key "
                f"'{args.key}' to {store_dir}"
            )
        else:
            text = f"would save key '{args.key}' to {store_dir} (space ok)"
    elif result["result"] == "unchanged":
        text = f"key '{args.key}' already holds these images ({_images_text(result['images'])})"
    else:
        text = (
            f"saved key '{args.key}': {_images_text(result['images'])}; "
            f"{format_size(result['bytes_written'])} written, "
            f"{format_size(result['bytes_reused'])} already stored, {result['duration']:.1f}s"
        )
    return CommandResult(result, text, EXIT_OK)


def cmd_restore(args: argparse.Namespace) -> CommandResult:
    store_dir, _config, state_dir = _context(args)
    progress = ProgressLine(f"restoring {args.key}")
    try:
        with _terminable():
            result = restore_entry(
                store_dir, args.key, state_dir=state_dir, progress=progress, dry_run=args.dry_run
            )
    finally:
        progress.close()
    if result["result"] == "would_load":
        text = f"would load {format_size(result['bytes_loaded'])} for key '{args.key}'"
    elif result["loaded"]:
        text = (
            f"restored key '{args.key}': loaded {_images_text(result['images'])} "
            f"({format_size(result['bytes_loaded'])}, {result['duration']:.1f}s)"
        )
    else:
        text = f"key '{args.key}': images already present ({_images_text(result['images'])})"
    return CommandResult(result, text, EXIT_OK)


def cmd_verify(args: argparse.Namespace) -> CommandResult:
    store_dir, config, _state = _context(args)
    settings = cache_settings(config)
    progress = ProgressLine("verifying")
    try:
        report = verify_store(
            store_dir,
            args.key,
            workers=settings["verify_workers"],
            repair=args.repair,
            progress=progress,
        )
    finally:
        progress.close()
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
    lines.append("all good" if report["ok"] else "problems found")
    return CommandResult(report, "\n".join(lines), EXIT_OK if report["ok"] else EXIT_CHECK_FAILED)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_list(args: argparse.Namespace) -> CommandResult:
    store_dir, _config, _state = _context(args)
    data = list_entries(store_dir)
    _warn(data)
    if not data["entries"] and not data["store_bytes"]:
        return CommandResult(data, f"no cache entries in {data['dir']}", EXIT_OK)
    rows = []
    for row in data["entries"]:
        if not row["ok"]:
            rows.append([row["key"], "(unreadable entry)", "-", "-", "-", _when(row["last_used"])])
            continue
        rows.append(
            [
                row["key"],
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
    return CommandResult(data, text, EXIT_OK)


def cmd_export(args: argparse.Namespace) -> CommandResult:
    store_dir, _config, state_dir = _context(args)
    progress = ProgressLine(f"exporting {args.key}")
    try:
        with _terminable():
            result = export_entry(
                store_dir, args.key, args.output, state_dir=state_dir, progress=progress
            )
    finally:
        progress.close()
    text = f"exported key '{args.key}' to {result['output']} ({format_size(result['bytes'])})"
    return CommandResult(result, text, EXIT_OK)


def cmd_import(args: argparse.Namespace) -> CommandResult:
    store_dir, _config, state_dir = _context(args)
    progress = ProgressLine(f"importing {args.key}")
    try:
        with _terminable():
            result = import_archive(
                store_dir, args.key, args.archive, state_dir=state_dir, progress=progress
            )
    finally:
        progress.close()
    text = (
        f"imported {args.archive} as key '{args.key}' ({result['format']}): "
        f"{_images_text(result['images'])}; {format_size(result['bytes_written'])} written"
    )
    return CommandResult(result, text, EXIT_OK)


def cmd_prune(args: argparse.Namespace) -> CommandResult:
    store_dir, config, state_dir = _context(args)
    settings = cache_settings(config)
    max_size = parse_size(args.max_size, "--max-size") if args.max_size else settings["max_size"]
    max_age = parse_duration(args.max_age, "--max-age") if args.max_age else settings["max_age"]
    result = prune_store(
        store_dir,
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
