"""``run_cleanup``: run a stage's cleaners cheapest-first until the free-space targets are met.

Targets are per filesystem: free bytes AND free inodes, each a size/count or a percentage of
the filesystem. The filesystems concerned are those named with ``paths`` (any path on them),
else every filesystem the stage's cleaners work on. Before each item the engine asks whether
the item's filesystem still needs space; the first cleaner whose filesystems all meet the
target is skipped, and the run ends when every concerned filesystem meets it. ``run_all``
removes everything eligible regardless.

Free space after a removal is estimated as ``max(statvfs now, statvfs before + bytes counted)``:
statvfs catches space freed by others, the count covers filesystems that release blocks
lazily (ext4 frees them at journal commit). A dry run uses the same estimate with its
predictions, so on an unchanged tree the real run removes the same items.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable

from ..config import DEFAULT_PATHS, merge_section
from ..errors import ConfigError, DockerUnavailableError, RunnerkeepError
from ..events import record_event
from ..fsutil import FilesystemUsage, filesystem_usage, mount_point_of
from ..units import parse_duration, parse_size_or_percent
from . import docker_cleaners
from .catalog import CLEANER_KEYS, SECTION_DEFAULTS, STAGES, builtin_cleaners
from .cleaners import KINDS, Cleaner, RunContext, check_pattern
from .lock import BLOCKED_STAGES, active_jobs, check_job_lock, run_lock
from .report import CleanerReport, CleanupReport
from .safety import home_dirs, protected_inodes

Probe = Callable[[str], FilesystemUsage]

NEW_CLEANER_DEFAULTS: dict[str, Any] = {
    "kind": "files",
    "description": "user-defined cleaner",
    "stages": ["post", "emergency"],
    "cost": 75,
    "enabled": True,
    "roots": [],
    "patterns": ["*"],
    "exclude": [],
    "min_age": "1d",
    "files_only": False,
}


def cleanup_section(config: dict[str, Any]) -> dict[str, Any]:
    return merge_section(config, "cleanup", SECTION_DEFAULTS)


def state_dir_of(config: dict[str, Any]) -> str:
    return (config.get("paths") or {}).get("state_dir") or DEFAULT_PATHS["state_dir"]


def cleaner_settings(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Built-in cleaners overlaid with ``cleanup.cleaners``; new names add files cleaners."""
    defs = builtin_cleaners()
    user = section.get("cleaners") or {}
    if not isinstance(user, dict):
        raise ConfigError("cleanup.cleaners must be a JSON object (cleaner name -> settings)")
    all_kinds = {**KINDS, **docker_cleaners.KINDS}
    for name, over in user.items():
        where = f"cleanup.cleaners.{name}"
        if not isinstance(over, dict):
            raise ConfigError(f"{where} must be a JSON object")
        unknown = sorted(set(over) - CLEANER_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(CLEANER_KEYS))}"
            )
        base = defs.get(name)
        if base is None:
            if over.get("kind", "files") != "files":
                raise ConfigError(f"{where}: a new cleaner must be of kind 'files'")
            base = dict(NEW_CLEANER_DEFAULTS)
        elif "kind" in over and over["kind"] != base["kind"]:
            raise ConfigError(f"{where}: kind of a built-in cleaner cannot change")
        defs[name] = {**base, **over}
    for name, settings in defs.items():
        if settings["kind"] not in all_kinds:
            raise ConfigError(f"cleanup.cleaners.{name}: unknown kind {settings['kind']!r}")
        bad = sorted(set(settings.get("stages") or []) - set(STAGES))
        if bad:
            raise ConfigError(
                f"cleanup.cleaners.{name}.stages: unknown stage(s) {', '.join(bad)}; "
                f"stages are {', '.join(STAGES)}"
            )
        for key in ("roots", "patterns", "exclude", "stages", "items", "keep"):
            if key in settings and not isinstance(settings[key], list):
                raise ConfigError(f"cleanup.cleaners.{name}.{key} must be a list")
        for pattern in settings.get("patterns") or []:
            check_pattern(pattern, f"cleanup.cleaners.{name}.patterns")
    return defs


def build_cleaners(
    section: dict[str, Any], ctx: RunContext, stage: str | None = None
) -> list[Cleaner]:
    all_kinds = {**KINDS, **docker_cleaners.KINDS}
    out = []
    for name, settings in cleaner_settings(section).items():
        if stage is not None and stage not in (settings.get("stages") or []):
            continue
        out.append(all_kinds[settings["kind"]](name, settings, ctx))
    out.sort(key=lambda c: (c.cost, c.name))
    return out


def list_cleaners(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cleaner with its effective settings, in cost order (for ``list-cleaners``)."""
    section = cleanup_section(config)
    ctx = RunContext(config=config, section=section, stage="post")
    return [
        {"name": c.name, **{k: v for k, v in c.settings.items()}}
        for c in build_cleaners(section, ctx)
    ]


def _target_specs(
    stage: str, config: dict[str, Any], target_free_bytes: Any, target_free_inodes: Any
) -> Callable[[str], tuple[Any, Any, str]]:
    """Where each filesystem's targets come from, first found wins: the argument, the
    ``cleanup.targets.<stage>`` the user configured, the disk budget (only on the budget's own
    filesystem: its figures are absolute bytes for that disk), the built-in percentages."""
    configured = ((config.get("cleanup") or {}).get("targets") or {}).get(stage) or {}
    builtin = SECTION_DEFAULTS["targets"][stage]
    budget = None
    if target_free_bytes is None or target_free_inodes is None:
        budget = _budget_targets(stage, config)

    def specs(fs: str) -> tuple[Any, Any, str]:
        from_budget = budget if budget and budget[0] == fs else None
        picked = []
        for given, key, index in (
            (target_free_bytes, "free", 1),
            (target_free_inodes, "inodes", 2),
        ):
            if given is not None:
                picked.append((given, "argument"))
            elif configured.get(key) is not None:
                picked.append((configured[key], "config"))
            elif from_budget is not None:
                picked.append((from_budget[index], "disk budget"))
            else:
                picked.append((builtin[key], "default"))
        sources = sorted({source for _, source in picked})
        return picked[0][0], picked[1][0], " + ".join(sources)

    return specs


def _budget_targets(stage: str, config: dict[str, Any]) -> tuple[str, int, int] | None:
    """(filesystem, free bytes, free inodes) the disk budget sets for ``stage``, or None.

    Only hosts with a ``disk`` section (written by the disk_monitor role) use the budget: it is
    sized from that host's job history, which only a monitored host records. None also when no
    budget can be computed here (a disk too small for it: the watch reports that).
    """
    if "disk" not in config:
        return None
    try:
        from ..disk.budget import current_budget

        budget = current_budget(config)
    except (ImportError, RunnerkeepError, OSError):
        return None
    free, inodes = budget.stage_targets(stage)
    return mount_point_of(_existing(budget.path)), free, inodes


def run_cleanup(
    stage: str,
    config: dict[str, Any],
    *,
    target_free_bytes: int | str | None = None,
    target_free_inodes: int | str | None = None,
    paths: list[str] | None = None,
    dry_run: bool = False,
    force: bool = False,
    run_all: bool = False,
    only: list[str] | None = None,
    probe: Probe | None = None,
    now: float | None = None,
) -> CleanupReport:
    """Run ``stage`` ("pre", "post" or "emergency"); see the module docstring.

    ``target_free_bytes``/``target_free_inodes`` override ``cleanup.targets.<stage>`` (ints,
    or strings such as "20G" or "15%"); ``paths`` limits the run to the filesystems holding
    them; ``only`` limits it to the named cleaners; ``probe`` replaces ``filesystem_usage``
    (tests). Raises LockHeldError when a job holds the lock (post/emergency, no ``force``) or
    another cleanup is running, ConfigError for bad settings.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    started = time.monotonic()
    probe = probe or filesystem_usage
    section = cleanup_section(config)
    state_dir = state_dir_of(config)
    lock_max_age = parse_duration(section.get("lock_max_age", "24h"), "cleanup.lock_max_age")
    report = CleanupReport(stage=stage, dry_run=dry_run, forced=force, run_all=run_all)

    if dry_run:
        live, _ = active_jobs(state_dir, lock_max_age)
        report.jobs = live
        if live and stage in BLOCKED_STAGES and not force:
            report.notes.append(
                f"{len(live)} CI job(s) hold the runner lock: the real {stage} stage would "
                "refuse to run without --force"
            )
    else:
        report.jobs = check_job_lock(state_dir, stage, force, lock_max_age)

    ctx = RunContext(
        config=config,
        section=section,
        stage=stage,
        dry_run=dry_run,
        protected=protected_inodes(config, section),
        homes=home_dirs(),
        now=time.time() if now is None else now,
        state_dir=state_dir,
    )
    cleaners = build_cleaners(section, ctx, stage)
    if only:
        unknown = sorted(set(only) - {c.name for c in build_cleaners(section, ctx)})
        if unknown:
            raise ConfigError(f"unknown cleaner(s): {', '.join(unknown)}")
        cleaners = [c for c in cleaners if c.name in only]

    lock_cm = contextlib.nullcontext() if dry_run else run_lock(state_dir)
    with lock_cm:
        _run(report, cleaners, ctx, probe, paths, target_free_bytes, target_free_inodes, section)
    report.duration = time.monotonic() - started
    return report


def _run(report, cleaners, ctx, probe, paths, target_free_bytes, target_free_inodes, section):
    stage, dry_run, run_all = report.stage, report.dry_run, report.run_all
    cleaner_fs: dict[str, set] = {}
    for cleaner in cleaners:
        if not cleaner.enabled:
            continue
        try:
            cleaner_fs[cleaner.name] = cleaner.filesystems()
        except ConfigError:
            raise
        except RunnerkeepError as exc:
            cleaner_fs[cleaner.name] = exc  # reported below
    if paths:
        requested = {mount_point_of(_existing(p)) for p in paths}
    else:
        requested = set()
        for fss in cleaner_fs.values():
            if isinstance(fss, set):
                requested |= fss

    target_specs = _target_specs(stage, ctx.config, target_free_bytes, target_free_inodes)
    before: dict[str, FilesystemUsage] = {}
    targets: dict[str, tuple[int, int]] = {}
    for fs in sorted(requested):
        usage = probe(fs)
        before[fs] = usage
        free_spec, inode_spec, source = target_specs(fs)
        tb = (
            parse_size_or_percent(free_spec, usage.total_bytes, "target free bytes")
            if free_spec is not None
            else 0
        )
        ti = (
            parse_size_or_percent(inode_spec, usage.total_inodes, "target free inodes")
            if inode_spec is not None
            else 0
        )
        targets[fs] = (tb, ti)
        report.targets[fs] = {"free_bytes": tb, "free_inodes": ti, "source": source}
    freed_b = dict.fromkeys(requested, 0)
    freed_i = dict.fromkeys(requested, 0)

    def current(fs: str) -> tuple[int, int]:
        base = before[fs]
        if dry_run:
            return base.free_bytes + freed_b[fs], base.free_inodes + freed_i[fs]
        now_usage = probe(fs)
        return (
            max(now_usage.free_bytes, base.free_bytes + freed_b[fs]),
            max(now_usage.free_inodes, base.free_inodes + freed_i[fs]),
        )

    def needs(fs: str | None) -> bool:
        if fs is None or fs not in targets:
            return False
        if run_all:
            return True
        fb, fi = current(fs)
        tb, ti = targets[fs]
        return fb < tb or fi < ti

    items_max = int(section.get("report_items_max") or 10000)
    lock_max_age = parse_duration(section.get("lock_max_age", "24h"), "cleanup.lock_max_age")
    interrupted = False
    for index, cleaner in enumerate(cleaners):
        cr = CleanerReport(name=cleaner.name, kind=cleaner.kind)
        report.cleaners.append(cr)
        if interrupted:
            cr.status = "skipped: a job started"
            continue
        if not cleaner.enabled:
            cr.status = "disabled"
            continue
        fss = cleaner_fs.get(cleaner.name)
        if isinstance(fss, Exception):
            cr.status = "unavailable"
            if isinstance(fss, DockerUnavailableError):
                # No engine on this host is a fact, not an error of the run: noted once.
                note = f"Docker cleaners skipped: {fss}"
                if note not in report.notes:
                    report.notes.append(note)
            else:
                cr.errors.append({"path": "", "error": str(fss)})
            continue
        relevant = {f for f in fss if f in requested}
        if not relevant:
            cr.status = (
                "skipped: nothing on the filesystems concerned" if fss else "skipped: no roots"
            )
            continue
        if not any(needs(f) for f in relevant):
            cr.status = "skipped: target met"
            continue
        if index and not dry_run and stage in BLOCKED_STAGES and not report.forced:
            live, _ = active_jobs(ctx.state_dir, lock_max_age)
            if live:
                interrupted = True
                cr.status = "skipped: a job started"
                report.notes.append("a CI job took the runner lock: remaining cleaners skipped")
                continue
        t0 = time.monotonic()
        try:
            items = cleaner.plan()
        except ConfigError:
            raise
        except RunnerkeepError as exc:
            cr.status = "error"
            cr.errors.append({"path": "", "error": str(exc)})
            cr.duration = time.monotonic() - t0
            continue
        cr.refused = [{"root": r, "reason": why} for r, why in cleaner.refused]
        cr.errors.extend({"path": p, "error": e} for p, e in cleaner.errors)
        cr.kept = len(cleaner.kept)
        cr.status = "done"
        for item in items:
            if item.fs not in requested:
                continue
            if not needs(item.fs):
                cr.status = "stopped: target met"
                break
            if dry_run:
                freed, inodes, removed = item.bytes, item.inodes, True
            else:
                try:
                    outcome = cleaner.remove(item)
                except RunnerkeepError as exc:
                    cr.errors.append({"path": item.path, "error": str(exc)})
                    continue
                freed, inodes, removed = outcome.bytes, outcome.inodes, outcome.removed
                cr.errors.extend({"path": p, "error": e} for p, e in outcome.errors)
                cr.kept += len(outcome.kept)
            freed_b[item.fs] += freed
            freed_i[item.fs] += inodes
            cr.bytes_freed += freed
            cr.inodes_freed += inodes
            if removed:
                cr.items_removed += 1
                cr.items_total += 1
                if len(cr.items) < items_max:
                    cr.items.append(
                        {"path": item.path, "bytes": freed, "inodes": inodes, "kind": item.kind}
                    )
        cr.duration = time.monotonic() - t0
        if not dry_run:
            record_event(
                ctx.state_dir,
                "cleanup",
                cleaner=cleaner.name,
                bytes_freed=cr.bytes_freed,
                inodes_freed=cr.inodes_freed,
                items_removed=cr.items_removed,
                stage=stage,
            )

    met = True
    for fs in sorted(requested):
        fb, fi = current(fs)
        tb, ti = targets[fs]
        met = met and fb >= tb and fi >= ti
        if dry_run:
            after = before[fs].as_dict()
            after.update(free_bytes=fb, free_inodes=fi)
        else:
            after = probe(fs).as_dict()
        report.filesystems[fs] = {"before": before[fs].as_dict(), "after": after}
    report.target_met = met


def _existing(path: str) -> str:
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe
