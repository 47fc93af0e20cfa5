"""What a cleanup run did (or, dry run, would do): per cleaner and per filesystem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..textutil import escape_text, table
from ..units import format_size

KEPT_ITEMS_MAX = 200  # entries a report names as kept, per cleaner; the count is exact


@dataclass
class CleanerReport:
    name: str
    kind: str
    status: str = "pending"
    bytes_freed: int = 0
    inodes_freed: int = 0
    items_removed: int = 0
    duration: float = 0.0
    items: list = field(default_factory=list)  # [{path, bytes, inodes, kind}]
    items_total: int = 0  # how many items there were (``items`` may be capped)
    errors: list = field(default_factory=list)  # [{path, error}]
    refused: list = field(default_factory=list)  # [{root, reason}]
    kept: int = 0  # entries deliberately left (protected, special, other mount, young)
    kept_items: list = field(default_factory=list)  # [{path, reason}], the first KEPT_ITEMS_MAX

    def keep(self, kept: list) -> None:
        """Count entries left in place on purpose and say which and why (capped)."""
        self.kept += len(kept)
        room = KEPT_ITEMS_MAX - len(self.kept_items)
        self.kept_items.extend({"path": p, "reason": why} for p, why in kept[: max(room, 0)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "bytes_freed": self.bytes_freed,
            "inodes_freed": self.inodes_freed,
            "items_removed": self.items_removed,
            "duration": round(self.duration, 3),
            "items": self.items,
            "items_total": self.items_total,
            "errors": self.errors,
            "refused": self.refused,
            "kept": self.kept,
            "kept_items": self.kept_items,
        }


@dataclass
class CleanupReport:
    """The result of ``run_cleanup``; ``as_dict()`` is the JSON the CLI and module return.

    In a dry run ``bytes_freed``/``inodes_freed``/``items_removed`` are what the real run would
    free and ``items`` lists exactly what would go; ``filesystems[*].after`` is then the
    predicted state. In a real run ``bytes_freed``/``inodes_freed`` are what statvfs says was
    given back (``freed_*_measured``, the figures ``target_met`` is decided on), summed over
    the filesystems the cleaners removed something from, each at least 0: a count cannot see
    a file held open or a hard link kept elsewhere. ``bytes_freed_claimed`` and
    ``inodes_freed_claimed`` are what the cleaners counted (in a dry run, the same figures).
    """

    stage: str
    dry_run: bool = False
    forced: bool = False
    run_all: bool = False
    duration: float = 0.0
    targets: dict = field(default_factory=dict)  # mount -> {free_bytes, free_inodes}
    # mount -> {before: {...}, after: {...}, freed_{bytes,inodes}_{claimed,measured}}
    filesystems: dict = field(default_factory=dict)
    target_met: bool = False
    cleaners: list = field(default_factory=list)  # [CleanerReport]
    notes: list = field(default_factory=list)  # run-level messages
    jobs: list = field(default_factory=list)  # job locks seen (forced runs, dry runs)

    @property
    def bytes_freed_claimed(self) -> int:
        return sum(c.bytes_freed for c in self.cleaners)

    @property
    def inodes_freed_claimed(self) -> int:
        return sum(c.inodes_freed for c in self.cleaners)

    @property
    def bytes_freed(self) -> int:
        """Measured in a real run (see the class docstring), predicted in a dry run."""
        if self.dry_run:
            return self.bytes_freed_claimed
        return self._measured("bytes")

    @property
    def inodes_freed(self) -> int:
        if self.dry_run:
            return self.inodes_freed_claimed
        return self._measured("inodes")

    def _measured(self, unit: str) -> int:
        """What the filesystems gave back, where the cleaners removed anything; another
        filesystem's change (someone else's writes or deletes) is not this run's doing."""
        total = 0
        for info in self.filesystems.values():
            touched = info.get("freed_bytes_claimed") or info.get("freed_inodes_claimed")
            measured = info.get(f"freed_{unit}_measured")
            if touched and measured is not None:
                total += max(measured, 0)
        return total

    @property
    def items_removed(self) -> int:
        return sum(c.items_removed for c in self.cleaners)

    def cleaner(self, name: str) -> CleanerReport | None:
        return next((c for c in self.cleaners if c.name == name), None)

    def removed_paths(self) -> list[str]:
        return [item["path"] for c in self.cleaners for item in c.items]

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "dry_run": self.dry_run,
            "forced": self.forced,
            "run_all": self.run_all,
            "duration": round(self.duration, 3),
            "bytes_freed": self.bytes_freed,
            "inodes_freed": self.inodes_freed,
            "bytes_freed_claimed": self.bytes_freed_claimed,
            "inodes_freed_claimed": self.inodes_freed_claimed,
            "items_removed": self.items_removed,
            "target_met": self.target_met,
            "targets": self.targets,
            "filesystems": self.filesystems,
            "cleaners": [c.as_dict() for c in self.cleaners],
            "errors": [{"cleaner": c.name, **e} for c in self.cleaners for e in c.errors],
            "notes": self.notes,
            "jobs": self.jobs,
        }

    def _measured_lines(self) -> list[str]:
        """Where the filesystem gave back less than the cleaners counted (real runs only)."""
        out = []
        for mount, info in sorted(self.filesystems.items()):
            measured = info.get("freed_bytes_measured")
            claimed = info.get("freed_bytes_claimed", 0)
            if measured is None or max(measured, 0) >= claimed:
                continue  # nothing to say (a run that counted nothing did free nothing)
            out.append(
                f"{escape_text(mount)}: the filesystem reports "
                f"{format_size(max(measured, 0))} freed, "
                f"the cleaners counted {format_size(claimed)} (files still open, hard links "
                "elsewhere, or new writes)"
            )
        return out

    def _counted_note(self) -> str:
        """The cleaners' own count, when the measured headline differs from it by over 1%."""
        claimed = self.bytes_freed_claimed
        if self.dry_run or abs(self.bytes_freed - claimed) <= claimed // 100:
            return ""
        return f" (cleaners counted {format_size(claimed)})"

    def text(self, show_items: int = 20) -> str:
        """The human report: per cleaner, per filesystem, the headline, then what would go
        (dry run), refusals, errors and notes. Every untrusted string is escaped."""
        lines = [self._title(), self._cleaner_table(), ""]
        filesystems = self._filesystem_table()
        if filesystems:
            lines.append(filesystems)
        lines.extend(self._measured_lines())
        lines.append(self._headline())
        if self.dry_run and show_items:
            lines.extend(self._would_remove_lines(show_items))
        lines.extend(self._problem_lines())
        lines.extend(f"note: {escape_text(msg)}" for msg in self.notes)
        return "\n".join(lines)

    def _title(self) -> str:
        return (
            f"cleanup stage {escape_text(self.stage)}{' (dry run)' if self.dry_run else ''}"
            f"{' (forced)' if self.forced else ''}{' (all cleaners)' if self.run_all else ''}"
        )

    def _cleaner_table(self) -> str:
        header = ["cleaner", "status", "bytes", "inodes", "items", "errors", "time"]
        rows = [
            [
                c.name,
                c.status,
                format_size(c.bytes_freed),
                str(c.inodes_freed),
                str(c.items_removed),
                str(len(c.errors)),
                f"{c.duration:.2f}s",
            ]
            for c in self.cleaners
        ]
        rows.append(
            [
                "TOTAL",
                "",
                format_size(self.bytes_freed_claimed),
                str(self.inodes_freed_claimed),
                str(self.items_removed),
                str(sum(len(c.errors) for c in self.cleaners)),
                f"{self.duration:.2f}s",
            ]
        )
        return table(rows, header)

    def _filesystem_table(self) -> str:
        """Free space and inodes before, after and wanted per filesystem; "" when none."""
        rows = []
        for mount, info in sorted(self.filesystems.items()):
            before, after = info.get("before", {}), info.get("after", {})
            target = self.targets.get(mount, {})
            rows.append(
                [
                    mount,
                    format_size(before.get("free_bytes", 0)),
                    format_size(after.get("free_bytes", 0)),
                    format_size(target.get("free_bytes", 0)),
                    str(before.get("free_inodes", 0)),
                    str(after.get("free_inodes", 0)),
                    str(target.get("free_inodes", 0)),
                ]
            )
        if not rows:
            return ""
        header = ["filesystem", "free before", "free after", "target"]
        return table(rows, [*header, "inodes before", "inodes after", "target"])

    def _headline(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"{verb} {format_size(self.bytes_freed)} and {self.inodes_freed} inodes in "
            f"{self.items_removed} items{self._counted_note()}; "
            f"target {'met' if self.target_met else 'NOT met'}"
        )

    def _would_remove_lines(self, show_items: int) -> list[str]:
        """The first ``show_items`` items a dry run would remove."""
        listed = [(c.name, i) for c in self.cleaners for i in c.items]
        if not listed:
            return []
        lines = ["", "would remove:"]
        for name, item in listed[:show_items]:
            lines.append(
                f"  [{escape_text(name)}] {escape_text(item['path'])}  {format_size(item['bytes'])}"
            )
        if len(listed) > show_items:
            lines.append(f"  ... and {len(listed) - show_items} more (--json lists all)")
        return lines

    def _problem_lines(self) -> list[str]:
        """Every refused root, then the first 10 errors."""
        lines = []
        for name, ref in [(c.name, r) for c in self.cleaners for r in c.refused]:
            lines.append(
                f"refused [{escape_text(name)}] {escape_text(ref['root'])}: "
                f"{escape_text(ref['reason'])}"
            )
        problems = [(c.name, e) for c in self.cleaners for e in c.errors]
        for name, err in problems[:10]:
            lines.append(
                f"error [{escape_text(name)}] {escape_text(err.get('path', ''))}: "
                f"{escape_text(err.get('error', ''))}"
            )
        if len(problems) > 10:
            lines.append(f"... and {len(problems) - 10} more errors (--json lists all)")
        return lines
