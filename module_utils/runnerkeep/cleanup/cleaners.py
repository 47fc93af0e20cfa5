"""Cleaner families: the common interface, filesystem cleaners, journald and toolchains.

A cleaner ``plan()``s a list of items in removal order (each with the bytes and inodes removing
it frees and the filesystem it frees them on) and ``remove()``s one item at a time, so the stage
engine can stop between any two items once the targets are met. A dry run is the plan; the
real run removes the same items in the same order.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..fsutil import mount_point_of
from ..units import parse_duration, parse_size
from . import walk
from .catalog import TOOLCHAINS
from .safety import check_root, expand_roots


@dataclass
class Item:
    """One thing a cleaner would remove: a path (file or tree) or a Docker object."""

    path: str
    bytes: int
    inodes: int
    fs: str | None
    last_used: float = 0.0
    kind: str = "path"
    ref: Any = None
    # Hard-linked inodes only partly met in this item: settled across the run's items in
    # removal order (walk.TreeStats.settle_links), so an inode counts where its last link goes.
    links: dict = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "inodes": self.inodes, "kind": self.kind}


@dataclass
class Outcome:
    """What removing one item actually freed."""

    bytes: int = 0
    inodes: int = 0
    removed: bool = False
    errors: list = field(default_factory=list)  # [(path, message)]
    kept: list = field(default_factory=list)


@dataclass
class RunContext:
    """Everything a cleaner needs from the run: settings, clock, protected inodes, stage."""

    config: dict[str, Any]
    section: dict[str, Any]
    stage: str
    dry_run: bool = False
    protected: frozenset = frozenset()
    homes: set = field(default_factory=set)
    now: float = field(default_factory=time.time)
    # {(st_dev, st_ino): links} of hard-linked inodes met by the items planned so far
    seen: dict = field(default_factory=dict)
    # {(st_dev, st_ino): links} of hard-linked inodes this run unlinked a link of
    seen_removed: dict = field(default_factory=dict)
    state_dir: str = ""
    # runnerkeep's own directories and the Docker root: never roots of a files cleaner
    own_dirs: dict = field(default_factory=dict)


class Cleaner:
    """Base: ``name``, ``settings`` (merged config), the run context."""

    kind = "base"

    def __init__(self, name: str, settings: dict[str, Any], ctx: RunContext):
        self.name = name
        self.settings = settings
        self.ctx = ctx
        self.refused: list[tuple[str, str]] = []  # (root, reason)
        self.errors: list[tuple[str, str]] = []  # planning errors (path, message)
        self.kept: list[tuple[str, str]] = []
        # root -> {(st_dev, st_ino)} of the mount points beneath it, listed when planning
        self.mount_points: dict[str, frozenset] = {}

    @property
    def cost(self) -> int:
        return int(self.settings.get("cost", 50))

    @property
    def enabled(self) -> bool:
        return bool(self.settings.get("enabled", True))

    def min_age(self) -> float:
        key = "emergency_min_age" if self.ctx.stage == "emergency" else "min_age"
        value = self.settings.get(key)
        if value is None:
            value = self.settings.get("min_age", 0)
        return parse_duration(value, f"cleanup.cleaners.{self.name}.{key}")

    def filesystems(self) -> set[str]:
        """Mount points this cleaner frees space on (to decide whether it is needed at all)."""
        return set()

    def plan(self) -> list[Item]:
        raise NotImplementedError

    def remove(self, item: Item) -> Outcome:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.settings}


def check_pattern(pattern: str, where: str) -> list[str]:
    comps = pattern.split("/")
    if pattern.startswith("/") or any(c in ("", ".", "..") for c in comps):
        raise ConfigError(
            f"{where}: pattern {pattern!r} must be relative to the root, without '.', '..' or '//'"
        )
    return comps


class FilesCleaner(Cleaner):
    """Entries beneath configured roots matching patterns, older than min_age, oldest first."""

    kind = "files"
    allow_system_roots = False
    order = "oldest"

    def specs(self) -> list[tuple[str, list[str]]]:
        """(root glob, patterns) pairs."""
        patterns = self.settings.get("patterns") or ["*"]
        return [(root, patterns) for root in self.settings.get("roots") or []]

    def keep(self, rel: str) -> bool:
        return False

    def _roots(self) -> list[tuple[str, list[str]]]:
        out = []
        for root_glob, patterns in self.specs():
            for root in expand_roots([root_glob]):
                reason = check_root(
                    root,
                    self.ctx.section.get("allowed_mount_points") or [],
                    self.ctx.homes,
                    allow_system=self.allow_system_roots,
                    own=self.ctx.own_dirs,
                )
                if reason == "does not exist":
                    continue
                if reason:
                    self.refused.append((root, reason))
                    continue
                out.append((root, patterns))
        return out

    def filesystems(self) -> set[str]:
        found = set()
        for root_glob, _patterns in self.specs():
            for root in expand_roots([root_glob]):
                if os.path.isdir(root):
                    found.add(mount_point_of(root))
        return found

    def plan(self) -> list[Item]:
        items = self._sort(self._candidates())
        self._settle_links(items)
        return items

    def _sort(self, items: list[Item]) -> list[Item]:
        if self.order == "largest":
            items.sort(key=lambda i: (-i.bytes, i.path))
        else:
            items.sort(key=lambda i: (i.last_used, i.path))
        return items

    def _settle_links(self, items: list[Item]) -> None:
        """Count each hard-linked inode in the item (in removal order) that holds its last
        link; an inode with a link outside every chosen item frees nothing and counts nowhere."""
        for item in items:
            if item.links:
                stats = walk.TreeStats(bytes=item.bytes, inodes=item.inodes, links=item.links)
                stats.settle_links(self.ctx.seen)
                item.bytes, item.inodes, item.links = stats.bytes, stats.inodes, {}

    def _candidates(self) -> list[Item]:
        """Every matching entry old enough, unsorted, hard links not settled yet."""
        items: list[Item] = []
        # Removal keeps whatever changed from now on: it was not seen by this scan.
        planned_at = time.time()
        min_age = self.min_age()
        where = f"cleanup.cleaners.{self.name}.patterns"
        exclude = list(self.settings.get("exclude") or [])
        files_only = bool(self.settings.get("files_only"))
        cross = bool(self.ctx.section.get("cross_filesystems"))
        points = walk.read_mount_points()  # once per plan: a file mount has no mount ID test
        for root, patterns in self._roots():
            comp_lists = [check_pattern(p, where) for p in patterns]
            self.mount_points[root] = walk.mount_points_beneath(root, points)
            try:
                root_fd = walk.open_root(root)
            except OSError as exc:
                self.refused.append((root, f"cannot open without following symlinks: {exc}"))
                continue
            try:
                fs = mount_point_of(root)
                opts = walk.WalkOptions.for_root(
                    root_fd,
                    protected=self.ctx.protected,
                    one_filesystem=not cross,
                    mount_points=self.mount_points[root],
                )
                matches = self._match(root_fd, root, comp_lists, exclude, files_only, opts)
                for parent_parts, name in matches:
                    rel = "/".join([*parent_parts, name])
                    if self.keep(rel):
                        continue
                    path = f"{root}/{rel}"
                    try:
                        pfd = walk.open_beneath(root_fd, parent_parts, opts)
                    except walk.OtherMountError:
                        self.kept.append((path, walk.OTHER_MOUNT))
                        continue
                    except OSError as exc:
                        self.errors.append((path, exc.strerror or str(exc)))
                        continue
                    try:
                        stats = walk.size_entry(pfd, name, path, opts)
                    finally:
                        os.close(pfd)
                    self.errors.extend(stats.errors)
                    self.kept.extend(stats.kept)
                    if stats.inodes == 0 and not stats.links:
                        continue  # kept or gone (a hard link's inode still counts as found)
                    if self.ctx.now - stats.newest_mtime < min_age:
                        continue
                    items.append(
                        Item(
                            path=path,
                            bytes=stats.bytes,
                            inodes=stats.inodes,
                            fs=fs,
                            last_used=stats.newest_mtime,
                            ref=(root, parent_parts, name, planned_at),
                            links=stats.links,
                        )
                    )
            finally:
                os.close(root_fd)
        return items

    def _match(self, root_fd, root, comp_lists, exclude, files_only, opts):
        """(parent_parts, name) of entries matching any pattern; nested matches dropped."""
        listings: dict[tuple, list] = {}

        def listing(parts: tuple) -> list:
            if parts in listings:
                return listings[parts]
            result = []
            try:
                fd = walk.open_beneath(root_fd, list(parts), opts)
            except walk.OtherMountError:
                self.kept.append(("/".join([root, *parts]), walk.OTHER_MOUNT))
                listings[parts] = result
                return result
            except OSError as exc:
                self.errors.append(("/".join([root, *parts]), exc.strerror or str(exc)))
                listings[parts] = result
                return result
            try:
                with os.scandir(fd) as it:
                    entries = list(it)
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        path = "/".join([root, *parts, entry.name])
                        self.errors.append((path, exc.strerror or str(exc)))
                        continue
                    if opts.mount_point(fd, entry.name, st):
                        self.kept.append(("/".join([root, *parts, entry.name]), walk.OTHER_MOUNT))
                        continue
                    result.append((entry.name, st))
            except OSError as exc:
                self.errors.append(("/".join([root, *parts]), exc.strerror or str(exc)))
            finally:
                os.close(fd)
            listings[parts] = result
            return result

        found: set[tuple] = set()
        for comps in comp_lists:
            frontier = [()]
            for level, comp in enumerate(comps):
                last = level == len(comps) - 1
                nxt = []
                for parts in frontier:
                    for name, st in listing(parts):
                        if not fnmatch.fnmatchcase(name, comp):
                            continue
                        if any(fnmatch.fnmatchcase(name, ex) for ex in exclude):
                            continue
                        if (st.st_dev, st.st_ino) in opts.protected:
                            self.kept.append(("/".join([root, *parts, name]), "protected"))
                            continue
                        mode = st.st_mode
                        if last:
                            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                                found.add((*parts, name))
                            elif stat.S_ISDIR(mode) and not files_only:
                                if opts.one_filesystem and st.st_dev != opts.dev:
                                    path = "/".join([root, *parts, name])
                                    self.kept.append((path, walk.OTHER_FS))
                                    continue
                                found.add((*parts, name))
                        elif stat.S_ISDIR(mode) and (
                            not opts.one_filesystem or st.st_dev == opts.dev
                        ):
                            nxt.append((*parts, name))
                frontier = nxt
        ordered = sorted(found)
        result = []
        chosen: set[tuple] = set()
        for rel in ordered:
            if any(rel[:i] in chosen for i in range(1, len(rel))):
                continue
            chosen.add(rel)
            result.append((list(rel[:-1]), rel[-1]))
        return result

    def remove(self, item: Item) -> Outcome:
        root, parent_parts, name, planned_at = item.ref
        out = Outcome()
        cross = bool(self.ctx.section.get("cross_filesystems"))
        try:
            root_fd = walk.open_root(root)
        except OSError as exc:
            out.errors.append((root, f"cannot open without following symlinks: {exc.strerror}"))
            return out
        try:
            opts = walk.WalkOptions.for_root(
                root_fd,
                protected=self.ctx.protected,
                one_filesystem=not cross,
                seen=self.ctx.seen_removed,
                cutoff=planned_at,
                mount_points=self.mount_points.get(root, frozenset()),
            )
            try:
                pfd = walk.open_beneath(root_fd, parent_parts, opts)
            except walk.OtherMountError:
                out.kept.append((item.path, walk.OTHER_MOUNT))
                return out
            except OSError as exc:
                out.errors.append((item.path, exc.strerror or str(exc)))
                return out
            try:
                stats = walk.remove_entry(pfd, name, item.path, opts)
            finally:
                os.close(pfd)
        finally:
            os.close(root_fd)
        out.bytes, out.inodes = stats.bytes, stats.inodes
        out.errors, out.kept = stats.errors, stats.kept
        out.removed = stats.removed > 0
        return out


class ToolchainsCleaner(FilesCleaner):
    """Catalog trees (``TOOLCHAINS``) switched on by name; largest first."""

    kind = "toolchains"
    allow_system_roots = True
    order = "largest"

    def specs(self) -> list[tuple[str, list[str]]]:
        out = []
        for name in self.settings.get("items") or []:
            entry = TOOLCHAINS.get(name)
            if entry is None:
                raise ConfigError(
                    f"cleanup.cleaners.{self.name}.items: unknown toolchain {name!r}; "
                    f"known: {', '.join(sorted(TOOLCHAINS))}"
                )
            out.append((entry["root"], entry["patterns"]))
        return out

    def keep(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pat) for pat in self.settings.get("keep") or [])

    def min_age(self) -> float:
        return 0.0


class JournaldCleaner(FilesCleaner):
    """Archived journal files, oldest first, until the journals fit in ``max_size``.

    Removing archived journal files is exactly what ``journalctl --vacuum-size`` does; doing it
    here lets the dry run list the files and the report count them. Active journals stay.
    """

    kind = "journald"
    allow_system_roots = True

    def specs(self) -> list[tuple[str, list[str]]]:
        roots = self.settings.get("roots") or ["/var/log/journal", "/run/log/journal"]
        return [(root, ["*/*.journal", "*/*.journal~"]) for root in roots]

    def plan(self) -> list[Item]:
        limit = parse_size(self.settings.get("max_size", "256M"), "journald.max_size")
        saved = self.settings.get("min_age")
        self.settings = {**self.settings, "min_age": 0}
        try:
            files = self._sort(self._candidates())
        finally:
            self.settings = {**self.settings, "min_age": saved}
        total = sum(i.bytes for i in files)
        chosen = []
        for item in files:  # oldest first
            if total <= limit:
                break
            name = item.ref[2]
            if "@" not in name and not name.endswith("~"):
                continue  # active journal
            chosen.append(item)
            total -= item.bytes
        self._settle_links(chosen)
        return chosen


KINDS = {"files": FilesCleaner, "toolchains": ToolchainsCleaner, "journald": JournaldCleaner}
