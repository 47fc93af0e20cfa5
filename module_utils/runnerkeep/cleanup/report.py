"""What a cleanup run did (or, dry run, would do): per cleaner and per filesystem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..textutil import table
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
    predicted state. ``bytes_freed`` is what the cleaners counted; per filesystem,
    ``freed_bytes_claimed`` repeats that count and ``freed_bytes_measured`` is what statvfs
    says was given back (None in a dry run), the figure ``target_met`` is decided on.
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
    def bytes_freed(self) -> int:
        return sum(c.bytes_freed for c in self.cleaners)

    @property
    def inodes_freed(self) -> int:
        return sum(c.inodes_freed for c in self.cleaners)

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
            if measured is None or measured >= claimed:
                continue
            out.append(
                f"{mount}: the filesystem reports {format_size(max(measured, 0))} freed, "
                f"the cleaners counted {format_size(claimed)} (files still open, hard links "
                "elsewhere, or new writes)"
            )
        return out

    def text(self, show_items: int = 20) -> str:
        verb = "would free" if self.dry_run else "freed"
        lines = [
            f"cleanup stage {self.stage}{' (dry run)' if self.dry_run else ''}"
            f"{' (forced)' if self.forced else ''}{' (all cleaners)' if self.run_all else ''}"
        ]
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
                format_size(self.bytes_freed),
                str(self.inodes_freed),
                str(self.items_removed),
                str(sum(len(c.errors) for c in self.cleaners)),
                f"{self.duration:.2f}s",
            ]
        )
        lines.append(table(rows, header))
        lines.append("")
        fs_rows = []
        for mount, info in sorted(self.filesystems.items()):
            before, after = info.get("before", {}), info.get("after", {})
            target = self.targets.get(mount, {})
            fs_rows.append(
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
        if fs_rows:
            lines.append(
                table(
                    fs_rows,
                    [
                        "filesystem",
                        "free before",
                        "free after",
                        "target",
                        "inodes before",
                        "inodes after",
                        "target",
                    ],
                )
            )
        lines.extend(self._measured_lines())
        lines.append(
            f"{verb} {format_size(self.bytes_freed)} and {self.inodes_freed} inodes in "
            f"{self.items_removed} items; target {'met' if self.target_met else 'NOT met'}"
        )
        if self.dry_run and show_items:
            listed = [(c.name, i) for c in self.cleaners for i in c.items]
            if listed:
                lines.append("")
                lines.append("would remove:")
                for name, item in listed[:show_items]:
                    lines.append(f"  [{name}] {item['path']}  {format_size(item['bytes'])}")
                if len(listed) > show_items:
                    lines.append(f"  ... and {len(listed) - show_items} more (--json lists all)")
        problems = [(c.name, e) for c in self.cleaners for e in c.errors]
        refusals = [(c.name, r) for c in self.cleaners for r in c.refused]
        for name, ref in refusals:
            lines.append(f"refused [{name}] {ref['root']}: {ref['reason']}")
        for name, err in problems[:10]:
            lines.append(f"error [{name}] {err.get('path', '')}: {err.get('error', '')}")
        if len(problems) > 10:
            lines.append(f"... and {len(problems) - 10} more errors (--json lists all)")
        for msg in self.notes:
            lines.append(f"note: {msg}")
        return "\n".join(lines)
