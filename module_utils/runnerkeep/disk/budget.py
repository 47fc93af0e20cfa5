"""The disk budget: how much a job needs, how large the cache may grow, when to warn and act.

Arithmetic (bytes; inodes the same way with their own reserve, floor and peaks), for the
filesystem at ``disk.path`` (default: the one holding ``paths.cache_dir``) with capacity C:

- reserve R = ``disk.reserve`` of C (default 5%): space the OS and the runner itself keep.
- job peak P = the ``disk.peak_percentile`` (p95) of the recorded job peaks (growth during a
  job), when at least ``disk.min_history_jobs`` jobs are recorded; with a shorter history,
  the larger of ``disk.job_peak_floor`` and the largest peak seen so far.
- hysteresis H = ``disk.hysteresis`` of C (default 1%): the watch leaves a state only once free
  space is H above its watermark, so it does not flap.
- watermarks (free space below which the state is entered): emergency = R; critical = R + P
  (the next job may not fit without eating the reserve); warning = R + 2P.
- stage targets (free space a cleanup stage stops at): pre = R + P + H (clears critical: one
  job fits), post = R + 2P + H (clears warning: two jobs fit).
- cache quota = ``disk.cache_share``% (default 50) of what lies above the post target,
  C - (R + 2P + H); the rest is for Docker images, toolchains and job leftovers.

Any value can be pinned in the ``disk`` config section (inventory variables of the role).
A disk where the arithmetic leaves nothing (C <= R + 2P + H) raises ConfigError: there is never
a negative quota. A quota below ``disk.cache_quota_min`` is raised to that minimum, or to all
that lies above the post target when even the minimum does not fit (a fleet-wide minimum meets
one small host): a warning in the explanation and in ``warnings``, not a failure.

When the budget cannot be computed at all, the watch must still see a full disk:
``fallback_budget`` gives safe watermarks from the ``disk.*_free`` overrides when they fit the
disk, else built-in ones (emergency below 1% of C or 100 MiB, whichever is larger, at most 10%
of C; critical twice that, warning three times), with ``error`` set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..config import paths_of, state_dir_of
from ..errors import ConfigError, RunnerkeepError
from ..fsutil import filesystem_usage, mount_point_of, nearest_existing
from ..units import format_size, parse_size_or_percent
from .disk_config import as_int, budget_path, disk_settings, expand, size
from .history import read_history
from .sizing import tree_size

LEVELS = ("ok", "warning", "critical", "emergency")
FALLBACK_EMERGENCY_PCT = 1  # built-in emergency watermark: % of capacity ...
FALLBACK_EMERGENCY_MIN = 100 * 1024**2  # ... or this, whichever is larger ...
FALLBACK_EMERGENCY_CAP_PCT = 10  # ... but never more than this % of a small disk


@dataclass
class BudgetInputs:
    """Everything the arithmetic needs, measured (``measure_inputs``) or given by a test."""

    path: str
    capacity_bytes: int
    capacity_inodes: int
    peaks_bytes: list[int] = field(default_factory=list)
    peaks_inodes: list[int] = field(default_factory=list)
    cache_bytes: int = 0
    free_bytes: int | None = None
    free_inodes: int | None = None
    cache_logical_bytes: int | None = None


@dataclass
class Budget:
    path: str
    capacity_bytes: int
    capacity_inodes: int
    reserve_bytes: int
    reserve_inodes: int
    job_peak_bytes: int
    job_peak_inodes: int
    job_peak_source: str
    history_jobs: int
    hysteresis_bytes: int
    hysteresis_inodes: int
    cache_bytes: int
    cache_quota_bytes: int
    pre_target_free_bytes: int
    post_target_free_bytes: int
    pre_target_free_inodes: int
    post_target_free_inodes: int
    warning_free_bytes: int
    critical_free_bytes: int
    emergency_free_bytes: int
    warning_free_inodes: int
    critical_free_inodes: int
    emergency_free_inodes: int
    free_bytes: int | None = None
    free_inodes: int | None = None
    overrides: list[str] = field(default_factory=list)
    explanation: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Set by ``fallback_budget``: why the real budget could not be computed.
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def watermarks(self) -> dict[str, dict[str, int]]:
        """{level: {"bytes": free bytes below which, "inodes": free inodes below which}}."""
        return {
            level: {
                "bytes": getattr(self, f"{level}_free_bytes"),
                "inodes": getattr(self, f"{level}_free_inodes"),
            }
            for level in LEVELS[1:]
        }

    def stage_targets(self, stage: str) -> tuple[int, int]:
        """(free bytes, free inodes) a cleanup stage should reach; emergency aims at post."""
        if stage == "pre":
            return self.pre_target_free_bytes, self.pre_target_free_inodes
        if stage in ("post", "emergency"):
            return self.post_target_free_bytes, self.post_target_free_inodes
        raise ConfigError(f"unknown cleanup stage {stage!r}: expected pre, post or emergency")

    def explain(self) -> str:
        return "\n".join(self.explanation)


def percentile(values: list[int], pct: float) -> int:
    """Nearest-rank percentile (the value at rank ceil(pct/100 * n)); 0 for no values."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def parse_count_or_percent(value: Any, total: int, what: str) -> int:
    """Inodes: a plain count, or "5%" of ``total``."""
    raw = str(value).strip()
    if raw.endswith("%"):
        return parse_size_or_percent(raw, total, what)
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a count or a percentage, got {value!r}")
    try:
        number = int(float(raw))
    except ValueError:
        raise ConfigError(
            f"{what}: expected a count such as 50000 or a percentage such as 5%, got {value!r}"
        ) from None
    if number < 0:
        raise ConfigError(f"{what}: cannot be negative, got {value!r}")
    return number


def watermarks(reserve: int, peak: int, hysteresis: int, unit: str) -> dict[str, int]:
    """The free-space marks of one unit ("bytes" or "inodes"): R, R + P, R + 2P and the
    pre/post cleanup targets one hysteresis above critical and warning."""
    r, p, h = reserve, peak, hysteresis
    return {
        f"emergency_free_{unit}": r,
        f"critical_free_{unit}": r + p,
        f"warning_free_{unit}": r + 2 * p,
        f"pre_target_free_{unit}": r + p + h,
        f"post_target_free_{unit}": r + 2 * p + h,
    }


def _peak(
    peaks: list[int], floor: int, pct: float, min_jobs: int, describe: Callable[[int], str]
) -> tuple[int, str]:
    """(job peak P, how it was chosen): the ``pct`` percentile of the recorded peaks, or the
    floor (or the largest peak seen) while fewer than ``min_jobs`` are recorded."""
    jobs = len(peaks)
    if jobs >= min_jobs:
        value = percentile(peaks, pct)
        return value, f"p{pct:g} of the last {jobs} job peaks is {describe(value)}"
    seen = max(peaks) if peaks else 0
    value = max(floor, seen)
    history = f"only {jobs} job(s) recorded, fewer than {min_jobs}"
    if seen > floor:
        return (
            value,
            f"{history}; the largest peak seen ({describe(seen)}) exceeds the floor "
            f"{describe(floor)}",
        )
    return value, f"{history}, so the floor {describe(floor)} applies"


def _count(n: int) -> str:
    return f"{n:,} inodes"


# Watermarks and stage targets a ``disk.*_free`` (bytes) or ``disk.*_free_inodes`` pins.
_OVERRIDABLE = (
    "emergency_free",
    "critical_free",
    "warning_free",
    "pre_target_free",
    "post_target_free",
)


@dataclass
class _Workings:
    """What ``compute_budget`` works out step by step, with its explanation in words."""

    values: dict[str, int] = field(default_factory=dict)  # watermarks and stage targets
    words: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


def compute_budget(inputs: BudgetInputs, settings: dict[str, Any]) -> Budget:
    """The arithmetic on fixed inputs; raises ConfigError when the budget cannot be met."""
    percentile_rank, min_jobs, share = _checked_settings(inputs, settings)
    work = _Workings()
    reserve, peak, hysteresis = _byte_marks(inputs, settings, percentile_rank, min_jobs, work)
    room = _room_above_post_target(inputs, reserve, peak, hysteresis, work)
    quota = _cache_quota(inputs, settings, share, room, work)
    reserve_inodes, peak_inodes, hysteresis_inodes = _inode_marks(
        inputs, settings, percentile_rank, min_jobs, work
    )
    _check_order(work.values, inputs.capacity_bytes, inputs.path)
    if inputs.free_bytes is not None:
        work.words.append(
            f"Now: {format_size(inputs.free_bytes)} free"
            + (f", {inputs.free_inodes:,} inodes free." if inputs.free_inodes is not None else ".")
        )
    return Budget(
        path=inputs.path,
        capacity_bytes=inputs.capacity_bytes,
        capacity_inodes=inputs.capacity_inodes,
        reserve_bytes=reserve,
        reserve_inodes=reserve_inodes,
        job_peak_bytes=peak,
        job_peak_inodes=peak_inodes,
        job_peak_source="percentile" if len(inputs.peaks_bytes) >= min_jobs else "floor",
        history_jobs=len(inputs.peaks_bytes),
        hysteresis_bytes=hysteresis,
        hysteresis_inodes=hysteresis_inodes,
        cache_bytes=inputs.cache_bytes,
        cache_quota_bytes=quota,
        free_bytes=inputs.free_bytes,
        free_inodes=inputs.free_inodes,
        overrides=work.overrides,
        explanation=work.words,
        warnings=work.warnings,
        **work.values,
    )


def _checked_settings(inputs: BudgetInputs, settings: dict[str, Any]) -> tuple[float, int, float]:
    """(peak percentile, minimum history, cache share %), each checked; and a capacity > 0."""
    if inputs.capacity_bytes <= 0:
        raise ConfigError(f"disk budget: {inputs.path} reports a capacity of 0 bytes")
    percentile_rank = float(settings["peak_percentile"])
    if not 0 < percentile_rank <= 100:
        raise ConfigError(f"disk.peak_percentile must be in (0, 100], got {percentile_rank:g}")
    min_jobs = as_int(settings["min_history_jobs"], "disk.min_history_jobs", 1)
    share = float(settings["cache_share"])
    if not 0 <= share <= 100:
        raise ConfigError(f"disk.cache_share must be a percentage 0..100, got {share:g}")
    return percentile_rank, min_jobs, share


def _byte_marks(
    inputs: BudgetInputs,
    settings: dict[str, Any],
    percentile_rank: float,
    min_jobs: int,
    work: _Workings,
) -> tuple[int, int, int]:
    """(reserve R, job peak P, hysteresis H) in bytes; the byte watermarks and stage targets
    (overrides applied) go into ``work.values``."""
    fmt = format_size
    capacity = inputs.capacity_bytes
    reserve = parse_size_or_percent(settings["reserve"], capacity, "disk.reserve")
    hysteresis = parse_size_or_percent(settings["hysteresis"], capacity, "disk.hysteresis")
    floor = size(settings, "job_peak_floor")
    peak, peak_words = _peak(list(inputs.peaks_bytes), floor, percentile_rank, min_jobs, fmt)
    r, p, h = reserve, peak, hysteresis  # the letters of the explanation
    work.words += [
        f"Filesystem {inputs.path}: capacity C = {fmt(capacity)} ({capacity:,} bytes).",
        f"Reserve R = {settings['reserve']} of C = {fmt(r)}.",
        f"Job peak P: {peak_words}; P = {fmt(p)}.",
        f"Hysteresis H = {settings['hysteresis']} of C = {fmt(h)}.",
    ]
    work.values.update(watermarks(r, p, h, "bytes"))
    work.words.append(
        f"Watermarks: emergency below R = {fmt(r)} free; critical below R + P = {fmt(r + p)}; "
        f"warning below R + 2P = {fmt(r + 2 * p)}."
    )
    work.words.append(
        f"Cleanup targets: pre stage frees up to R + P + H = {fmt(r + p + h)} free (one job fits); "
        f"post and emergency stages up to R + 2P + H = {fmt(r + 2 * p + h)} free (two jobs fit)."
    )
    _apply_overrides(settings, capacity, "bytes", work)
    return reserve, peak, hysteresis


def _apply_overrides(settings: dict[str, Any], capacity: int, unit: str, work: _Workings) -> None:
    """Pin the watermarks and stage targets the config sets (``disk.*_free[_inodes]``)."""
    for key in _OVERRIDABLE:
        setting = key if unit == "bytes" else f"{key}_inodes"
        if settings[setting] is None:
            continue
        what = f"disk.{setting}"
        if unit == "bytes":
            value = parse_size_or_percent(settings[setting], capacity, what)
            shown = format_size(value)
        else:
            value = parse_count_or_percent(settings[setting], capacity, what)
            shown = f"{value:,}"
        work.values[f"{key}_{unit}"] = value
        work.overrides.append(setting)
        work.words.append(f"Override: {what} = {settings[setting]} -> {shown}.")


def _room_above_post_target(
    inputs: BudgetInputs, reserve: int, peak: int, hysteresis: int, work: _Workings
) -> int:
    """What lies above the post-stage target (where the cache quota comes from); > 0."""
    fmt = format_size
    post_target = work.values["post_target_free_bytes"]
    room = inputs.capacity_bytes - post_target
    if room <= 0:
        raise ConfigError(
            f"disk budget cannot be met on {inputs.path}: capacity {fmt(inputs.capacity_bytes)} "
            f"is not larger than the post-stage target {fmt(post_target)} (reserve "
            f"{fmt(reserve)} + 2 x job peak {fmt(peak)} + hysteresis {fmt(hysteresis)}); give "
            "the runner a larger disk or lower "
            "disk.reserve / disk.job_peak_floor / the overrides"
        )
    return room


def _cache_quota(
    inputs: BudgetInputs, settings: dict[str, Any], share: float, room: int, work: _Workings
) -> int:
    """The cache quota: pinned by ``disk.cache_quota``, else ``share``% of ``room`` (raised to
    ``disk.cache_quota_min`` where that fits); with what the store holds now."""
    fmt = format_size
    if settings["cache_quota"] is not None:
        quota = parse_size_or_percent(
            settings["cache_quota"], inputs.capacity_bytes, "disk.cache_quota"
        )
        work.overrides.append("cache_quota")
        work.words.append(
            f"Cache quota pinned by disk.cache_quota = {settings['cache_quota']} -> {fmt(quota)}."
        )
        if quota > room:
            work.words.append(
                f"Note: that quota exceeds the {fmt(room)} above the post target; "
                "a full cache will keep the disk in warning."
            )
    else:
        quota = _shared_quota(settings, share, room, work)
    work.words.append(
        f"The cache store now holds {fmt(inputs.cache_bytes)}"
        + (f" ({inputs.cache_bytes * 100.0 / quota:.0f}% of its quota)." if quota else ".")
    )
    if inputs.cache_bytes > quota:
        work.words.append(
            f"The cache is {fmt(inputs.cache_bytes - quota)} over quota: "
            "'runnerkeep cache prune' trims it."
        )
    return quota


def _shared_quota(settings: dict[str, Any], share: float, room: int, work: _Workings) -> int:
    fmt = format_size
    quota = int(room * share / 100.0)
    work.words.append(
        f"Cache quota = {share:g}% of what lies above the post target, "
        f"{share:g}% x (C - {fmt(work.values['post_target_free_bytes'])}) = "
        f"{share:g}% x {fmt(room)} "
        f"= {fmt(quota)}."
    )
    quota_min = size(settings, "cache_quota_min")
    if quota >= quota_min:
        return quota
    # A fleet-wide minimum meeting one small host: a warning, not a failure.
    quota = min(quota_min, room)
    warning = (
        f"the cache quota of {share:g}% would be below disk.cache_quota_min "
        f"{fmt(quota_min)}; "
        + (
            "raised to that minimum (less room for Docker images and job leftovers)"
            if quota == quota_min
            else f"the minimum does not fit this disk: clamped to all that lies above "
            f"the post target, {fmt(quota)}"
        )
        + "; give the runner a larger disk or lower disk.cache_quota_min"
    )
    work.warnings.append(warning)
    work.words.append(f"Warning: {warning}.")
    return quota


def _inode_marks(
    inputs: BudgetInputs,
    settings: dict[str, Any],
    percentile_rank: float,
    min_jobs: int,
    work: _Workings,
) -> tuple[int, int, int]:
    """(reserve, job peak, hysteresis) in inodes, with the inode watermarks and targets in
    ``work.values``; all 0 on a filesystem without an inode limit."""
    capacity = inputs.capacity_inodes
    if capacity <= 0:
        for key in ("emergency", "critical", "warning", "pre_target", "post_target"):
            work.values[f"{key}_free_inodes"] = 0
        work.words.append("Inodes: this filesystem reports no inode limit; no inode watermarks.")
        return 0, 0, 0
    reserve = parse_count_or_percent(settings["reserve_inodes"], capacity, "disk.reserve_inodes")
    # Inode hysteresis: the same percentage as for bytes; 1% when bytes use a fixed size.
    hyst = str(settings["hysteresis"]).strip()
    hysteresis = parse_count_or_percent(
        hyst if hyst.endswith("%") else "1%", capacity, "disk.hysteresis"
    )
    floor = parse_count_or_percent(
        settings["job_peak_floor_inodes"], capacity, "disk.job_peak_floor_inodes"
    )
    peak, peak_words = _peak(list(inputs.peaks_inodes), floor, percentile_rank, min_jobs, _count)
    r, p, h = reserve, peak, hysteresis  # the letters of the explanation
    work.values.update(watermarks(r, p, h, "inodes"))
    work.words.append(
        f"Inodes: capacity {capacity:,}; reserve {settings['reserve_inodes']} = {r:,}; job peak: "
        f"{peak_words}; hysteresis {h:,}. Watermarks: emergency below {r:,}, critical below "
        f"{r + p:,}, warning below {r + 2 * p:,} free inodes; "
        f"targets pre {r + p + h:,}, "
        f"post {r + 2 * p + h:,}."
    )
    _apply_overrides(settings, capacity, "inodes", work)
    if work.values["post_target_free_inodes"] >= capacity:
        raise ConfigError(
            f"disk budget cannot be met on {inputs.path}: it has {capacity:,} inodes, "
            "not more than the "
            f"post-stage inode target {work.values['post_target_free_inodes']:,}; lower "
            "disk.reserve_inodes / disk.job_peak_floor_inodes"
        )
    return reserve, peak, hysteresis


def fallback_budget(inputs: BudgetInputs, settings: dict[str, Any], error: str) -> Budget:
    """Safe watermarks for when ``compute_budget`` fails: the watch must still tell a full disk
    from an empty one and run the emergency cleanup (``error`` says why; never raises)."""
    capacity = max(1, inputs.capacity_bytes)
    capacity_inodes = max(0, inputs.capacity_inodes)
    words = [
        f"The disk budget cannot be computed: {error}",
        "The watch uses fallback watermarks until the config fits this disk.",
    ]
    byte_marks, byte_source = _fallback_marks(settings, capacity, "")
    words.append(f"Bytes ({byte_source}): " + _describe_marks(byte_marks, format_size))
    inode_marks = {"emergency": 0, "critical": 0, "warning": 0}
    if capacity_inodes > 0:
        inode_marks, inode_source = _fallback_marks(settings, capacity_inodes, "_inodes")
        words.append(f"Inodes ({inode_source}): " + _describe_marks(inode_marks, _count))
    hysteresis = _fallback_hysteresis(settings, capacity)
    hysteresis_inodes = capacity_inodes // 100
    values = {}
    for unit, marks, hyst in (
        ("bytes", byte_marks, hysteresis),
        ("inodes", inode_marks, hysteresis_inodes),
    ):
        for level, mark in marks.items():
            values[f"{level}_free_{unit}"] = mark
        # Emergency cleanup aims past the warning mark: every level cleared.
        values[f"pre_target_free_{unit}"] = marks["critical"] + hyst if marks["critical"] else 0
        values[f"post_target_free_{unit}"] = marks["warning"] + hyst if marks["warning"] else 0
    return Budget(
        path=inputs.path,
        capacity_bytes=inputs.capacity_bytes,
        capacity_inodes=inputs.capacity_inodes,
        reserve_bytes=byte_marks["emergency"],
        reserve_inodes=inode_marks["emergency"],
        job_peak_bytes=0,
        job_peak_inodes=0,
        job_peak_source="unknown",
        history_jobs=len(inputs.peaks_bytes),
        hysteresis_bytes=hysteresis,
        hysteresis_inodes=hysteresis_inodes,
        cache_bytes=inputs.cache_bytes,
        cache_quota_bytes=0,
        free_bytes=inputs.free_bytes,
        free_inodes=inputs.free_inodes,
        explanation=words,
        warnings=[f"disk budget: {error}"],
        error=error,
        **values,
    )


def _builtin_marks(capacity: int, unit: str) -> dict[str, int]:
    if unit:  # inodes: 1% of them
        emergency = capacity // 100
    else:
        emergency = max(capacity * FALLBACK_EMERGENCY_PCT // 100, FALLBACK_EMERGENCY_MIN)
        emergency = min(emergency, capacity * FALLBACK_EMERGENCY_CAP_PCT // 100)
    emergency = max(1, emergency)
    return {"emergency": emergency, "critical": 2 * emergency, "warning": 3 * emergency}


def _fallback_marks(
    settings: dict[str, Any], capacity: int, unit: str
) -> tuple[dict[str, int], str]:
    """The ``disk.*_free`` overrides when all that are set parse and fit, else built-ins."""
    marks = _builtin_marks(capacity, unit)
    pinned = []
    for level in ("emergency", "critical", "warning"):
        key = f"{level}_free{unit}"
        if settings.get(key) is None:
            continue
        parse = parse_count_or_percent if unit else parse_size_or_percent
        try:
            marks[level] = parse(settings[key], capacity, f"disk.{key}")
        except (ConfigError, ValueError, TypeError):
            return _builtin_marks(capacity, unit), "built-in: the overrides cannot be read"
        pinned.append("disk." + key)
    if not 0 < marks["emergency"] < marks["critical"] < marks["warning"] < capacity:
        return _builtin_marks(capacity, unit), "built-in: the overrides do not fit this disk"
    if not pinned:
        return marks, "built-in"
    return marks, ", ".join(pinned) + (", built-in for the rest" if len(pinned) < 3 else "")


def _fallback_hysteresis(settings: dict[str, Any], capacity: int) -> int:
    try:
        value = parse_size_or_percent(settings.get("hysteresis"), capacity, "disk.hysteresis")
    except (ConfigError, ValueError, TypeError):
        return capacity // 100
    return value if 0 <= value < capacity // 4 else capacity // 100


def _describe_marks(marks: dict[str, int], fmt) -> str:
    return (
        f"emergency below {fmt(marks['emergency'])}, critical below {fmt(marks['critical'])}, "
        f"warning below {fmt(marks['warning'])} free."
    )


def _check_order(values: dict[str, int], capacity: int, path: str) -> None:
    for unit in ("bytes", "inodes"):
        emergency, critical, warning = (
            values[f"{level}_free_{unit}"] for level in ("emergency", "critical", "warning")
        )
        if unit == "inodes" and emergency == critical == warning == 0:
            continue
        if not emergency < critical < warning:
            raise ConfigError(
                f"disk budget on {path}: watermarks must satisfy emergency < critical < warning "
                f"free {unit}, got {emergency:,} / {critical:,} / {warning:,}; "
                "check the disk.*_free overrides"
            )
        if values[f"post_target_free_{unit}"] < values[f"pre_target_free_{unit}"]:
            raise ConfigError(
                f"disk budget on {path}: the post-stage target must not be below the pre-stage "
                f"target ({unit}); check disk.pre_target_free / disk.post_target_free"
            )
    if values["warning_free_bytes"] >= capacity:
        raise ConfigError(
            f"disk budget on {path}: the warning watermark "
            f"{format_size(values['warning_free_bytes'])} "
            f"is not below the capacity {format_size(capacity)}"
        )


def measure_inputs(config: dict[str, Any]) -> BudgetInputs:
    """Capacity and free space now, the recorded job peaks, the cache store's on-disk size."""
    settings = disk_settings(config)
    path = expand(budget_path(config))
    try:
        usage = filesystem_usage(path)
    except OSError as exc:
        raise ConfigError(
            f"disk budget: cannot read the filesystem of {path}: {exc.strerror}"
        ) from None
    max_jobs = as_int(settings["history_max_jobs"], "disk.history_max_jobs", 1)
    records = read_history(state_dir_of(config))[-max_jobs:]
    cache = tree_size(expand(paths_of(config)["cache_dir"]))
    return BudgetInputs(
        path=path,
        capacity_bytes=usage.total_bytes,
        capacity_inodes=usage.total_inodes,
        peaks_bytes=[r["peak_bytes"] for r in records],
        peaks_inodes=[int(r.get("peak_inodes") or 0) for r in records],
        cache_bytes=cache.disk_bytes,
        cache_logical_bytes=cache.logical_bytes,
        free_bytes=usage.free_bytes,
        free_inodes=usage.free_inodes,
    )


def current_budget(config: dict[str, Any]) -> Budget:
    """The budget for this host now: what cleanup, the cache precheck and the watch read."""
    return compute_budget(measure_inputs(config), disk_settings(config))


# What the other subsystems read of the budget, handed to them by the front doors
# (runnerkeep.wiring): the cache's quota and a cleanup stage's targets. Only hosts with a
# ``disk`` section (written by the disk_monitor role) have a budget: it is sized from that
# host's job history, which only a monitored host records.


def cache_quota(config: dict[str, Any]) -> int | None:
    """The budget's cache quota in bytes (``cache.max_size`` unset), None where no budget
    applies: an unmonitored host, or a disk too small for a budget (the watch and disk_monitor
    report that; the cache keeps working without a quota rather than refusing every save)."""
    if "disk" not in config:
        return None
    try:
        return current_budget(config).cache_quota_bytes
    except (RunnerkeepError, OSError):
        return None


def cleanup_targets(stage: str, config: dict[str, Any]) -> tuple[str, int, int] | None:
    """(filesystem, free bytes, free inodes) the budget sets for a cleanup ``stage``, or None
    where no budget applies (as ``cache_quota``)."""
    if "disk" not in config:
        return None
    try:
        budget = current_budget(config)
    except (RunnerkeepError, OSError):
        return None
    free, inodes = budget.stage_targets(stage)
    return mount_point_of(nearest_existing(budget.path)), free, inodes
