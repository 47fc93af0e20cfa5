"""``run_cleanup``: run a stage's cleaners cheapest-first until the free-space targets are met.

Targets are per filesystem: free bytes AND free inodes, each a size/count or a percentage of
the filesystem. The filesystems concerned are those named with ``paths`` (any path on them),
else every filesystem the stage's cleaners work on. Before each item the engine asks whether
the item's filesystem still needs space; the first cleaner whose filesystems all meet the
target is skipped, and the run ends when every concerned filesystem meets it. ``run_all``
removes everything eligible regardless.

In a real run, free space is what the filesystem reports (statvfs) after each removal, never
what the cleaners counted: a file held open, a hard link kept elsewhere or a write during the
run make the count wrong, and a stage that trusts it stops short. The report gives both, per
filesystem (``freed_*_claimed`` and ``freed_*_measured``), and ``target_met`` is measured too.
A dry run has nothing to measure: it adds its predictions to the starting figures, so on an
unchanged tree without such surprises the real run removes the same items. A dry run has no
side effects: job locks are only read, no lock or state file is created.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple, Optional

from .. import docker_cli
from ..config import merge_section, state_dir_of
from ..errors import ConfigError, DockerUnavailableError, RunnerkeepError
from ..events import record_event
from ..fsutil import FilesystemUsage, filesystem_usage, mount_point_of, nearest_existing
from ..jobs import max_age_of
from ..spool import spool_dir_of
from ..units import parse_size_or_percent
from . import docker_cleaners
from .catalog import CLEANER_KEYS, SECTION_DEFAULTS, STAGES, builtin_cleaners
from .cleaners import KINDS, Cleaner, Item, RunContext, check_pattern
from .lock import BLOCKED_STAGES, active_jobs, check_job_lock, run_lock
from .report import CleanerReport, CleanupReport
from .safety import home_dirs, own_dirs, protected_inodes

Probe = Callable[[str], FilesystemUsage]

DOCKER_ROOT_TIMEOUT = 5.0  # seconds; a wedged engine must not hold up the files cleaners
SYNCS_MAX = 4  # syncfs calls per filesystem and run when count and statvfs disagree

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


def cleaner_settings(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Built-in cleaners overlaid with ``cleanup.cleaners``; new names add files cleaners."""
    merged = builtin_cleaners()
    configured = section.get("cleaners") or {}
    if not isinstance(configured, dict):
        raise ConfigError("cleanup.cleaners must be a JSON object (cleaner name -> settings)")
    for name, overrides in configured.items():
        merged[name] = _overlay(name, merged.get(name), overrides)
    for name, settings in merged.items():
        _check_settings(name, settings)
    return merged


def _overlay(name: str, builtin: dict[str, Any] | None, overrides: Any) -> dict[str, Any]:
    """The settings of cleaner ``name``: ``overrides`` over the built-in (or new) cleaner."""
    where = f"cleanup.cleaners.{name}"
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where} must be a JSON object")
    unknown = sorted(set(overrides) - CLEANER_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(CLEANER_KEYS))}"
        )
    if builtin is None:
        if overrides.get("kind", "files") != "files":
            raise ConfigError(f"{where}: a new cleaner must be of kind 'files'")
        builtin = dict(NEW_CLEANER_DEFAULTS)
    elif "kind" in overrides and overrides["kind"] != builtin["kind"]:
        raise ConfigError(f"{where}: kind of a built-in cleaner cannot change")
    return {**builtin, **overrides}


def _check_settings(name: str, settings: dict[str, Any]) -> None:
    """ConfigError unless cleaner ``name``'s merged settings name a known kind and stages,
    lists where lists belong and patterns that stay beneath their roots."""
    if settings["kind"] not in {**KINDS, **docker_cleaners.KINDS}:
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


def build_cleaners(
    section: dict[str, Any], ctx: RunContext, stage: str | None = None
) -> list[Cleaner]:
    all_kinds = {**KINDS, **docker_cleaners.KINDS}
    out = []
    for name, settings in cleaner_settings(section).items():
        if stage is not None and stage not in (settings.get("stages") or []):
            continue
        out.append(all_kinds[settings["kind"]](name, settings, ctx))
    out.sort(key=lambda cleaner: (cleaner.cost, cleaner.name))
    return out


def list_cleaners(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cleaner with its effective settings, in cost order (for ``list-cleaners``)."""
    section = cleanup_section(config)
    ctx = RunContext(config=config, section=section, stage="post")
    return [
        {"name": c.name, **{k: v for k, v in c.settings.items()}}
        for c in build_cleaners(section, ctx)
    ]


# Where a stage's targets may come from the disk budget: (stage, config) -> (filesystem, free
# bytes, free inodes), or None when there is no budget for this host. The front doors pass
# disk.budget.cleanup_targets (runnerkeep.wiring); cleanup does not import disk/.
BudgetTargets = Callable[[str, dict[str, Any]], Optional[tuple[str, int, int]]]


def no_budget_targets(stage: str, config: dict[str, Any]) -> None:
    """The ``BudgetTargets`` of a run given none: configured or built-in targets only."""
    return None


def _target_specs(
    stage: str,
    config: dict[str, Any],
    target_free_bytes: Any,
    target_free_inodes: Any,
    budget_targets: BudgetTargets,
) -> Callable[[str], tuple[Any, Any, str]]:
    """Where each filesystem's targets come from, first found wins: the argument, the
    ``cleanup.targets.<stage>`` the user configured, the disk budget (only on the budget's own
    filesystem: its figures are absolute bytes for that disk), the built-in percentages."""
    configured = ((config.get("cleanup") or {}).get("targets") or {}).get(stage) or {}
    builtin = SECTION_DEFAULTS["targets"][stage]
    budget = None
    if target_free_bytes is None or target_free_inodes is None:
        budget = budget_targets(stage, config)

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
    cleaner_names: list[str] | None = None,
    budget_targets: BudgetTargets | None = None,
    probe: Probe | None = None,
    now: float | None = None,
) -> CleanupReport:
    """Run ``stage`` ("pre", "post" or "emergency"); see the module docstring.

    ``target_free_bytes``/``target_free_inodes`` override ``cleanup.targets.<stage>`` (ints,
    or strings such as "20G" or "15%"); ``paths`` limits the run to the filesystems holding
    them; ``cleaner_names`` limits it to the named cleaners (the CLI's ``--cleaner``);
    ``budget_targets`` gives the disk budget's targets (the front doors pass
    ``disk.budget.cleanup_targets``; None: no budget); ``probe`` replaces
    ``filesystem_usage`` (tests). Raises LockHeldError when a job holds the lock
    (post/emergency, no ``force``) or another cleanup is running, ConfigError for bad settings.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    started = time.monotonic()
    section = cleanup_section(config)
    state_dir = state_dir_of(config)
    lock_max_age = max_age_of(config)
    report = CleanupReport(stage=stage, dry_run=dry_run, forced=force, run_all=run_all)
    report.jobs = _jobs_seen(report, config, lock_max_age)
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
    cleaners = _stage_cleaners(section, ctx, cleaner_names)
    # The rails refuse roots in runnerkeep's own directories and the Docker data root
    # (FilesCleaner passes ctx.own_dirs to check_root); the engine is asked only when a
    # filesystem cleaner will run.
    walks_files = any(c.enabled and c.kind in KINDS for c in cleaners)
    ctx.own_dirs = own_dirs(config, _docker_root() if walks_files else None)

    with contextlib.nullcontext() if dry_run else run_lock(state_dir):
        wanted = _Wanted(target_free_bytes, target_free_inodes, paths)
        stage_run = _StageRun(report, ctx, cleaners, lock_max_age, budget_targets)
        stage_run.run(probe or filesystem_usage, wanted)
    report.duration = time.monotonic() - started
    return report


def _jobs_seen(report: CleanupReport, config: dict[str, Any], lock_max_age: float) -> list:
    """The live jobs; a real post/emergency run refuses (LockHeldError) while one holds the
    lock unless forced, a dry run only reads them and notes that the real run would refuse."""
    if not report.dry_run:
        return check_job_lock(
            state_dir_of(config),
            report.stage,
            report.forced,
            lock_max_age,
            spool_dir=spool_dir_of(config),
        )
    live = _jobs(config, lock_max_age, dry_run=True)
    if live and report.stage in BLOCKED_STAGES and not report.forced:
        report.notes.append(
            f"{len(live)} CI job(s) hold the runner lock: the real {report.stage} stage would "
            "refuse to run without --force"
        )
    return live


def _stage_cleaners(
    section: dict[str, Any], ctx: RunContext, cleaner_names: list[str] | None
) -> list[Cleaner]:
    """The stage's cleaners in cost order, only the named ones when names are given."""
    cleaners = build_cleaners(section, ctx, ctx.stage)
    if not cleaner_names:
        return cleaners
    unknown = sorted(set(cleaner_names) - {c.name for c in build_cleaners(section, ctx)})
    if unknown:
        raise ConfigError(f"unknown cleaner(s): {', '.join(unknown)}")
    return [c for c in cleaners if c.name in cleaner_names]


def _docker_root() -> str | None:
    """The engine's data root, or None when no engine answers (the default is guarded anyway)."""
    try:
        return docker_cli.docker_root_dir(timeout=DOCKER_ROOT_TIMEOUT)
    except (RunnerkeepError, OSError, ValueError, AttributeError):
        return None


def _jobs(config: dict[str, Any], max_age: float, dry_run: bool) -> list[dict[str, Any]]:
    """Live jobs (root's locks and the spool's records); a dry run only reads."""
    live, _stale = active_jobs(
        state_dir_of(config), max_age, remove_stale=not dry_run, spool_dir=spool_dir_of(config)
    )
    return live


class Ledger:
    """Per filesystem: the target, what the cleaners counted, and whether the target is met.

    A real run asks the filesystem (``probe``, statvfs) every time: a cleaner's count can be
    wrong (a file held open by a process, a hard link kept elsewhere, a file rewritten during
    the run), statvfs cannot. When the count says "met" and statvfs does not, the filesystem is
    synced once (btrfs and ext4 may publish freed blocks only at the next commit) and asked
    again. A dry run has nothing to measure: it adds its predictions to the starting figures.
    """

    def __init__(self, probe: Probe, dry_run: bool, run_all: bool):
        self.probe = probe
        self.dry_run = dry_run
        self.run_all = run_all
        self.before: dict[str, FilesystemUsage] = {}
        self.targets: dict[str, tuple[int, int]] = {}
        self.claimed_bytes: dict[str, int] = {}
        self.claimed_inodes: dict[str, int] = {}
        self._synced_at: dict[str, tuple[int, int]] = {}
        self._syncs: dict[str, int] = {}

    def add(self, fs: str, target: Callable[[FilesystemUsage], tuple[int, int]]) -> None:
        usage = self.probe(fs)
        self.before[fs] = usage
        self.targets[fs] = target(usage)
        self.claimed_bytes[fs] = 0
        self.claimed_inodes[fs] = 0

    def __contains__(self, fs: object) -> bool:
        return fs in self.targets

    def count(self, fs: str, freed_bytes: int, freed_inodes: int) -> None:
        self.claimed_bytes[fs] += freed_bytes
        self.claimed_inodes[fs] += freed_inodes

    def estimate(self, fs: str) -> FilesystemUsage:
        base = self.before[fs]
        return dataclasses.replace(
            base,
            free_bytes=base.free_bytes + self.claimed_bytes[fs],
            free_inodes=base.free_inodes + self.claimed_inodes[fs],
        )

    def usage(self, fs: str) -> FilesystemUsage:
        """Free space now: measured in a real run, predicted in a dry run."""
        if self.dry_run:
            return self.estimate(fs)
        measured = self.probe(fs)
        if self._meets(fs, measured) or not self._meets(fs, self.estimate(fs)):
            return measured
        claimed = (self.claimed_bytes[fs], self.claimed_inodes[fs])
        if self._synced_at.get(fs) == claimed or self._syncs.get(fs, 0) >= SYNCS_MAX:
            return measured  # the filesystem has spoken (a held-open file frees nothing)
        self._synced_at[fs] = claimed
        self._syncs[fs] = self._syncs.get(fs, 0) + 1
        sync_filesystem(fs)
        return self.probe(fs)

    def _meets(self, fs: str, usage: FilesystemUsage) -> bool:
        target_bytes, target_inodes = self.targets[fs]
        return usage.free_bytes >= target_bytes and usage.free_inodes >= target_inodes

    def needs(self, fs: str | None) -> bool:
        """Whether removing more on ``fs`` is still wanted (always, with ``run_all``)."""
        if fs is None or fs not in self.targets:
            return False
        if self.run_all:
            return True
        return not self._meets(fs, self.usage(fs))

    def summary(self, fs: str) -> tuple[bool, dict[str, Any]]:
        """(target met, the report's entry for ``fs``): before, after, claimed and measured."""
        before = self.before[fs]
        after = self.usage(fs)
        entry: dict[str, Any] = {
            "before": before.as_dict(),
            "after": after.as_dict(),
            "freed_bytes_claimed": self.claimed_bytes[fs],
            "freed_inodes_claimed": self.claimed_inodes[fs],
            "freed_bytes_measured": None,
            "freed_inodes_measured": None,
        }
        if not self.dry_run:
            entry["freed_bytes_measured"] = after.free_bytes - before.free_bytes
            entry["freed_inodes_measured"] = after.free_inodes - before.free_inodes
        return self._meets(fs, after), entry


def sync_filesystem(path: str) -> None:
    """``syncfs`` the filesystem holding ``path`` (best effort: only to get honest figures)."""
    if _syncfs is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        _syncfs(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_syncfs = _load_syncfs()


class _Wanted(NamedTuple):
    """What the caller asked for: target overrides (None: configured) and the paths whose
    filesystems are concerned (None: every one the cleaners work on)."""

    free_bytes: int | str | None
    free_inodes: int | str | None
    paths: list[str] | None


JOB_STARTED = "skipped: a job started"


class _StageRun:
    """One stage run: each cleaner, in cost order, gets its turn while a filesystem it works on
    still needs space; the ``Ledger`` keeps the targets, the freed counts and "target met".

    Steps: ``run`` sets up the ledger (the filesystems concerned and their targets), then for
    each cleaner ``_why_not`` (disabled, unavailable, target met, a job started) or
    ``_run_cleaner`` (plan, then ``_remove_item`` one by one while ``needs``) and
    ``_record_event``; ``_finish`` writes each filesystem's before/after into the report.
    """

    def __init__(
        self,
        report: CleanupReport,
        ctx: RunContext,
        cleaners: list[Cleaner],
        lock_max_age: float,
        budget_targets: BudgetTargets | None = None,
    ) -> None:
        self.report = report
        self.ctx = ctx
        self.cleaners = cleaners
        self.lock_max_age = lock_max_age
        self.budget_targets = budget_targets or no_budget_targets
        self.items_max = int(ctx.section.get("report_items_max") or 10000)
        self.interrupted = False  # a CI job took the lock: the remaining cleaners are skipped
        self.cleaner_filesystems: dict[str, Any] = {}
        self.ledger: Ledger | None = None

    def run(self, probe: Probe, wanted: _Wanted) -> None:
        self.cleaner_filesystems = _cleaner_filesystems(self.cleaners)
        self.ledger = self._ledger(probe, wanted)
        for index, cleaner in enumerate(self.cleaners):
            cleaner_report = CleanerReport(name=cleaner.name, kind=cleaner.kind)
            self.report.cleaners.append(cleaner_report)
            why_not = self._why_not(cleaner, cleaner_report, first=index == 0)
            if why_not:
                cleaner_report.status = why_not
                continue
            self._run_cleaner(cleaner, cleaner_report, self.ledger)
            self._record_event(cleaner_report)
        self._finish(self.ledger)

    def _ledger(self, probe: Probe, wanted: _Wanted) -> Ledger:
        """A ledger of every filesystem concerned, each with its target measured now."""
        concerned = _concerned_filesystems(wanted.paths, self.cleaner_filesystems)
        specs = _target_specs(
            self.report.stage,
            self.ctx.config,
            wanted.free_bytes,
            wanted.free_inodes,
            self.budget_targets,
        )
        ledger = Ledger(probe, self.report.dry_run, self.report.run_all)
        for fs in sorted(concerned):
            ledger.add(fs, _target_parser(fs, specs, self.report))
        return ledger

    def _why_not(self, cleaner: Cleaner, cleaner_report: CleanerReport, first: bool) -> str | None:
        """Why ``cleaner`` does not run at all (its status), or None when it runs."""
        if self.interrupted:
            return JOB_STARTED
        skip = self._skip_reason(cleaner, cleaner_report)
        if skip:
            return skip
        if not first and self._job_started():
            self.interrupted = True
            self.report.notes.append("a CI job took the runner lock: remaining cleaners skipped")
            return JOB_STARTED
        return None

    def _skip_reason(self, cleaner: Cleaner, cleaner_report: CleanerReport) -> str | None:
        """Why ``cleaner`` is not needed or cannot run: disabled, unavailable, target met."""
        if not cleaner.enabled:
            return "disabled"
        filesystems = self.cleaner_filesystems.get(cleaner.name)
        if isinstance(filesystems, Exception):
            self._note_unavailable(filesystems, cleaner_report)
            return "unavailable"
        ledger = self.ledger
        relevant = {fs for fs in filesystems or () if fs in ledger}
        if not relevant:
            if filesystems:
                return "skipped: nothing on the filesystems concerned"
            return "skipped: no roots"
        if not any(ledger.needs(fs) for fs in relevant):
            return "skipped: target met"
        return None

    def _note_unavailable(self, error: Exception, cleaner_report: CleanerReport) -> None:
        if isinstance(error, DockerUnavailableError):
            # No engine on this host is a fact, not an error of the run: noted once.
            note = f"Docker cleaners skipped: {error}"
            if note not in self.report.notes:
                self.report.notes.append(note)
        else:
            cleaner_report.errors.append({"path": "", "error": str(error)})

    def _job_started(self) -> bool:
        """A CI job took the runner lock since the run began (real post/emergency runs only)."""
        report = self.report
        if report.dry_run or report.stage not in BLOCKED_STAGES or report.forced:
            return False
        return bool(_jobs(self.ctx.config, self.lock_max_age, dry_run=False))

    def _run_cleaner(self, cleaner: Cleaner, cleaner_report: CleanerReport, ledger: Ledger) -> None:
        """Plan, then remove item by item while the item's filesystem still needs space."""
        started = time.monotonic()
        try:
            items = cleaner.plan()
        except ConfigError:
            raise
        except RunnerkeepError as exc:
            cleaner_report.status = "error"
            cleaner_report.errors.append({"path": "", "error": str(exc)})
            cleaner_report.duration = time.monotonic() - started
            return
        cleaner_report.refused = [{"root": r, "reason": why} for r, why in cleaner.refused]
        cleaner_report.errors.extend({"path": p, "error": e} for p, e in cleaner.errors)
        cleaner_report.keep(cleaner.kept)
        cleaner_report.status = "done"
        for item in items:
            if item.fs not in ledger:
                continue
            if not ledger.needs(item.fs):
                cleaner_report.status = "stopped: target met"
                break
            removed = _remove_item(cleaner, item, cleaner_report, ledger.dry_run)
            if removed is not None:
                ledger.count(item.fs, removed[0], removed[1])
                self._count_removed(cleaner_report, item, *removed)
        cleaner_report.duration = time.monotonic() - started

    def _count_removed(
        self, cleaner_report: CleanerReport, item: Item, freed: int, inodes: int, gone: bool
    ) -> None:
        cleaner_report.bytes_freed += freed
        cleaner_report.inodes_freed += inodes
        if gone:
            cleaner_report.items_removed += 1
            cleaner_report.items_total += 1
            if len(cleaner_report.items) < self.items_max:
                cleaner_report.items.append(
                    {"path": item.path, "bytes": freed, "inodes": inodes, "kind": item.kind}
                )

    def _record_event(self, cleaner_report: CleanerReport) -> None:
        if self.report.dry_run:
            return
        record_event(
            self.ctx.state_dir,
            "cleanup",
            spool_dir=spool_dir_of(self.ctx.config),
            cleaner=cleaner_report.name,
            bytes_freed=cleaner_report.bytes_freed,
            inodes_freed=cleaner_report.inodes_freed,
            items_removed=cleaner_report.items_removed,
            stage=self.report.stage,
        )

    def _finish(self, ledger: Ledger) -> None:
        """Each filesystem's before/after, claimed and measured; target met on every one."""
        met = True
        for fs in sorted(ledger.targets):
            fs_met, entry = ledger.summary(fs)
            met = met and fs_met
            self.report.filesystems[fs] = entry
        self.report.target_met = met


def _cleaner_filesystems(cleaners: list[Cleaner]) -> dict[str, Any]:
    """Each enabled cleaner's filesystems, or the error that says why it cannot tell."""
    found: dict[str, Any] = {}
    for cleaner in cleaners:
        if not cleaner.enabled:
            continue
        try:
            found[cleaner.name] = cleaner.filesystems()
        except ConfigError:
            raise
        except RunnerkeepError as exc:
            found[cleaner.name] = exc  # reported when the cleaner's turn comes
    return found


def _concerned_filesystems(paths: list[str] | None, cleaner_fs: dict[str, Any]) -> set[str]:
    """The filesystems named with ``paths``, else every one the cleaners work on."""
    if paths:
        return {mount_point_of(nearest_existing(p)) for p in paths}
    requested: set[str] = set()
    for filesystems in cleaner_fs.values():
        if isinstance(filesystems, set):
            requested |= filesystems
    return requested


def _target_parser(
    fs: str, specs: Callable[[str], tuple[Any, Any, str]], report: CleanupReport
) -> Callable[[FilesystemUsage], tuple[int, int]]:
    """Turns ``fs``'s target specs into (bytes, inodes) against its size; notes them."""

    def parse(usage: FilesystemUsage) -> tuple[int, int]:
        free_spec, inode_spec, source = specs(fs)
        target_bytes = 0
        target_inodes = 0
        if free_spec is not None:
            target_bytes = parse_size_or_percent(free_spec, usage.total_bytes, "target free bytes")
        if inode_spec is not None:
            target_inodes = parse_size_or_percent(
                inode_spec, usage.total_inodes, "target free inodes"
            )
        report.targets[fs] = {
            "free_bytes": target_bytes,
            "free_inodes": target_inodes,
            "source": source,
        }
        return target_bytes, target_inodes

    return parse


def _remove_item(
    cleaner: Cleaner, item: Item, cleaner_report: CleanerReport, dry_run: bool
) -> tuple[int, int, bool] | None:
    """(bytes, inodes, removed) the cleaner counts for ``item``; None when removal failed."""
    if dry_run:
        return item.bytes, item.inodes, True
    try:
        outcome = cleaner.remove(item)
    except RunnerkeepError as exc:
        cleaner_report.errors.append({"path": item.path, "error": str(exc)})
        return None
    cleaner_report.errors.extend({"path": p, "error": e} for p, e in outcome.errors)
    cleaner_report.keep(outcome.kept)
    return outcome.bytes, outcome.inodes, outcome.removed
