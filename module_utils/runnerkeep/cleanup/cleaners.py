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
from typing import Any, NamedTuple

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
    ref: Any = None  # what ``remove`` needs: a FileRef, a Docker object id, ...
    # Hard-linked inodes only partly met in this item: settled across the run's items in
    # removal order (walk.TreeStats.settle_links), so an inode counts where its last link goes.
    links: dict = field(default_factory=dict, repr=False, compare=False)


class FileRef(NamedTuple):
    """Where a files cleaner's item is, for ``remove``: entry ``name`` of the directory
    ``parent_parts`` beneath ``root``, as planned at ``planned_at`` (what changed since is kept).
    """

    root: str
    parent_parts: list[str]
    name: str
    planned_at: float


class _Patterns(NamedTuple):
    """A files cleaner's matching rules: each pattern split into its components (one per
    directory level), entry names never matched, and whether directories may match."""

    components: list[list[str]]
    exclude: list[str]
    files_only: bool


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
    # {"fs": mount point or None} of the engine's data root, asked once per run (Docker cleaners)
    docker_engine_fs: dict = field(default_factory=dict)


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


def check_pattern(pattern: str, where: str) -> list[str]:
    """The components of a cleaner's pattern; ConfigError when it could leave its root."""
    components = pattern.split("/")
    if pattern.startswith("/") or any(c in ("", ".", "..") for c in components):
        raise ConfigError(
            f"{where}: pattern {pattern!r} must be relative to the root, without '.', '..' or '//'"
        )
    return components


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

    def _one_filesystem(self) -> bool:
        return not self.ctx.section.get("cross_filesystems")

    def _candidates(self) -> list[Item]:
        """Every matching entry old enough, unsorted, hard links not settled yet."""
        items: list[Item] = []
        # Removal keeps whatever changed from now on: it was not seen by this scan.
        planned_at = time.time()
        min_age = self.min_age()
        where = f"cleanup.cleaners.{self.name}.patterns"
        exclude = list(self.settings.get("exclude") or [])
        files_only = bool(self.settings.get("files_only"))
        points = walk.read_mount_points()  # once per plan: a file mount has no mount ID test
        for root, patterns in self._roots():
            rules = _Patterns([check_pattern(p, where) for p in patterns], exclude, files_only)
            self.mount_points[root] = walk.mount_points_beneath(root, points)
            try:
                root_fd = walk.open_root(root)
            except OSError as exc:
                self.refused.append((root, f"cannot open without following symlinks: {exc}"))
                continue
            try:
                items.extend(self._root_candidates(root_fd, root, rules, planned_at, min_age))
            finally:
                os.close(root_fd)
        return items

    def _root_candidates(
        self, root_fd: int, root: str, rules: _Patterns, planned_at: float, min_age: float
    ) -> list[Item]:
        """The entries beneath ``root`` (open on ``root_fd``) matching ``rules``, sized."""
        fs = mount_point_of(root)
        opts = walk.WalkOptions.for_root(
            root_fd,
            protected=self.ctx.protected,
            one_filesystem=self._one_filesystem(),
            mount_points=self.mount_points[root],
        )
        items = []
        matcher = _Matcher(root_fd, root, rules, opts, self.kept, self.errors)
        for parent_parts, name in matcher.matches():
            rel = "/".join([*parent_parts, name])
            if self.keep(rel):
                continue
            path = f"{root}/{rel}"
            stats = self._size_match(root_fd, path, parent_parts, name, opts)
            if stats is None or (stats.inodes == 0 and not stats.links):
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
                    ref=FileRef(root, parent_parts, name, planned_at),
                    links=stats.links,
                )
            )
        return items

    def _size_match(
        self, root_fd: int, path: str, parent_parts: list[str], name: str, opts: walk.WalkOptions
    ) -> walk.TreeStats | None:
        """Size the match ``name`` in ``parent_parts``; None when its directory is gone or
        on another mount (noted as error or kept)."""
        try:
            parent_fd = walk.open_beneath(root_fd, parent_parts, opts)
        except walk.OtherMountError:
            self.kept.append((path, walk.OTHER_MOUNT))
            return None
        except OSError as exc:
            self.errors.append((path, exc.strerror or str(exc)))
            return None
        try:
            stats = walk.size_entry(parent_fd, name, path, opts)
        finally:
            os.close(parent_fd)
        self.errors.extend(stats.errors)
        self.kept.extend(stats.kept)
        return stats

    def remove(self, item: Item) -> Outcome:
        root, parent_parts, name, planned_at = item.ref
        out = Outcome()
        try:
            root_fd = walk.open_root(root)
        except OSError as exc:
            out.errors.append((root, f"cannot open without following symlinks: {exc.strerror}"))
            return out
        try:
            opts = walk.WalkOptions.for_root(
                root_fd,
                protected=self.ctx.protected,
                one_filesystem=self._one_filesystem(),
                seen=self.ctx.seen_removed,
                cutoff=planned_at,
                mount_points=self.mount_points.get(root, frozenset()),
            )
            try:
                parent_fd = walk.open_beneath(root_fd, parent_parts, opts)
            except walk.OtherMountError:
                out.kept.append((item.path, walk.OTHER_MOUNT))
                return out
            except OSError as exc:
                out.errors.append((item.path, exc.strerror or str(exc)))
                return out
            try:
                stats = walk.remove_entry(parent_fd, name, item.path, opts)
            finally:
                os.close(parent_fd)
        finally:
            os.close(root_fd)
        out.bytes, out.inodes = stats.bytes, stats.inodes
        out.errors, out.kept = stats.errors, stats.kept
        out.removed = stats.removed > 0
        return out


class _Matcher:
    """Finds the entries beneath one root that match a files cleaner's patterns.

    A pattern is matched one component per directory level (``*/*.gz``: each top-level
    directory, then the ``.gz`` files in it); each directory is listed once however many
    patterns pass through it. Protected entries, mount points and (on one filesystem) other
    filesystems are kept, with the reason, in ``kept``; what cannot be read goes to ``errors``.
    """

    def __init__(
        self,
        root_fd: int,
        root: str,
        rules: _Patterns,
        opts: walk.WalkOptions,
        kept: list[tuple[str, str]],
        errors: list[tuple[str, str]],
    ) -> None:
        self.root_fd = root_fd
        self.root = root
        self.rules = rules
        self.opts = opts
        self.kept = kept
        self.errors = errors
        self.listings: dict[tuple, list[tuple[str, os.stat_result]]] = {}

    def matches(self) -> list[tuple[list[str], str]]:
        """(parent_parts, name) of entries matching any pattern; nested matches dropped."""
        found: set[tuple] = set()
        for components in self.rules.components:
            frontier: list[tuple] = [()]
            for level, component in enumerate(components):
                last = level == len(components) - 1
                deeper: list[tuple] = []
                for parts in frontier:
                    for name, st in self._listing(parts):
                        if self._wanted(name, component):
                            self._match_entry(parts, name, st, last, found, deeper)
                frontier = deeper
        return _outermost(found)

    def _wanted(self, name: str, component: str) -> bool:
        if not fnmatch.fnmatchcase(name, component):
            return False
        return not any(fnmatch.fnmatchcase(name, excluded) for excluded in self.rules.exclude)

    def _match_entry(
        self, parts: tuple, name: str, st: os.stat_result, last: bool, found: set, deeper: list
    ) -> None:
        """A name matching its component: found (last component), a directory to go down
        into (``deeper``), or kept."""
        opts = self.opts
        if (st.st_dev, st.st_ino) in opts.protected:
            self.kept.append(("/".join([self.root, *parts, name]), "protected"))
            return
        mode = st.st_mode
        same_filesystem = not opts.one_filesystem or st.st_dev == opts.dev
        if not last:
            if stat.S_ISDIR(mode) and same_filesystem:
                deeper.append((*parts, name))
        elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
            found.add((*parts, name))
        elif stat.S_ISDIR(mode) and not self.rules.files_only:
            if same_filesystem:
                found.add((*parts, name))
            else:
                self.kept.append(("/".join([self.root, *parts, name]), walk.OTHER_FS))

    def _listing(self, parts: tuple) -> list[tuple[str, os.stat_result]]:
        """(name, lstat) of each entry of the directory ``parts``, listed once per plan."""
        if parts not in self.listings:
            self.listings[parts] = self._list(parts)
        return self.listings[parts]

    def _list(self, parts: tuple) -> list[tuple[str, os.stat_result]]:
        where = "/".join([self.root, *parts])
        try:
            fd = walk.open_beneath(self.root_fd, list(parts), self.opts)
        except walk.OtherMountError:
            self.kept.append((where, walk.OTHER_MOUNT))
            return []
        except OSError as exc:
            self.errors.append((where, exc.strerror or str(exc)))
            return []
        result = []
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    self.errors.append((f"{where}/{entry.name}", exc.strerror or str(exc)))
                    continue
                if self.opts.mount_point(fd, entry.name, st):
                    self.kept.append((f"{where}/{entry.name}", walk.OTHER_MOUNT))
                    continue
                result.append((entry.name, st))
        except OSError as exc:
            self.errors.append((where, exc.strerror or str(exc)))
        finally:
            os.close(fd)
        return result


def _outermost(found: set[tuple]) -> list[tuple[list[str], str]]:
    """(parent parts, name) of each match not inside another match, in path order."""
    result = []
    chosen: set[tuple] = set()
    for rel in sorted(found):
        if any(rel[:i] in chosen for i in range(1, len(rel))):
            continue
        chosen.add(rel)
        result.append((list(rel[:-1]), rel[-1]))
    return result


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
            name = item.ref.name
            if "@" not in name and not name.endswith("~"):
                continue  # active journal
            chosen.append(item)
            total -= item.bytes
        self._settle_links(chosen)
        return chosen


KINDS = {"files": FilesCleaner, "toolchains": ToolchainsCleaner, "journald": JournaldCleaner}
