"""Docker cleaners: stopped containers, dangling images, build cache, unused volumes, and images
by least recent use (after kubelet's image GC and GitLab's runner docker cleanup).

Rules every Docker cleaner keeps:
- an image used by any container (running or stopped, in scope or not) is never removed, and
  removal never uses ``--force`` so the engine refuses too if a container appeared meanwhile;
- an image with any reference matching ``cleanup.protected_images`` is never removed;
- ``cleanup.docker_filters`` (``label=...``) narrows which objects are candidates at all;
- the image cache's blobs are files in its own store dir, not Docker objects: not touched here.

Docker does not record when an image was last used, so runnerkeep keeps its own record,
``<state_dir>/cleanup/image-use.json`` (image id -> last use time). Every real cleanup run
updates it from the containers it sees (a running container's image: now; a stopped one's:
when it finished); ``record_image_use`` lets hooks and the image cache add uses. An image with
no recorded use counts as used when it arrived (last tag time, else creation time).
"""

from __future__ import annotations

import calendar
import contextlib
import fnmatch
import json
import os
import re
from typing import Any

from ..docker_cli import docker_root_dir, run_docker
from ..errors import DockerCommandError
from ..fsutil import atomic_write, mount_point_of
from ..units import parse_size
from .cleaners import Cleaner, Item, Outcome

USE_FILE = os.path.join("cleanup", "image-use.json")
_DOCKER_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?")


def parse_docker_time(text: str | None) -> float:
    """Docker's RFC 3339 timestamps (always UTC in inspect output) -> epoch; 0 when unset."""
    if not text or text.startswith("0001-01-01"):
        return 0.0
    match = _DOCKER_TIME.match(text)
    if not match:
        return 0.0
    parts = [int(x) for x in match.groups()[:6]]
    fraction = float("0." + match.group(7)) if match.group(7) else 0.0
    return calendar.timegm((*parts, 0, 0, 0)) + fraction


def _docker_size(text: str | None) -> int:
    """Docker's human sizes ("1.2GB", "100kB", "0B") -> bytes (decimal units, like Docker)."""
    if not text:
        return 0
    try:
        return parse_size(text.split()[0], "docker size")
    except Exception:
        return 0


def load_image_use(state_dir: str) -> dict[str, float]:
    try:
        with open(os.path.join(state_dir, USE_FILE), encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def record_image_use(state_dir: str, uses: dict[str, float]) -> None:
    """Merge image id -> use time into the record (keeps the latest time per image)."""
    if not uses:
        return
    current = load_image_use(state_dir)
    changed = False
    for image_id, when in uses.items():
        if when > current.get(image_id, 0.0):
            current[image_id] = when
            changed = True
    if changed:
        path = os.path.join(state_dir, USE_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps(current, indent=1, sort_keys=True).encode())


class DockerCleaner(Cleaner):
    """Shared pieces: the engine's filesystem, scope filters, the container inventory."""

    kind = "docker"

    def _filters(self) -> list[str]:
        out = []
        for docker_filter in self.ctx.section.get("docker_filters") or []:
            out += ["--filter", docker_filter]
        return out

    def filesystems(self) -> set[str]:
        fs = self._engine_fs()
        return {fs} if fs else set()

    def _engine_fs(self) -> str | None:
        """The filesystem of the engine's data root (asked once per run), None when absent."""
        known = self.ctx.docker_engine_fs
        if "fs" not in known:
            root = docker_root_dir()
            known["fs"] = mount_point_of(root) if os.path.isdir(root) else None
        return known["fs"]

    def containers(self) -> list[dict[str, Any]]:
        """Every container (not only those in scope): images they use are never removed."""
        ids = run_docker(["ps", "-a", "-q", "--no-trunc"]).stdout.split()
        if not ids:
            return []
        proc = run_docker(["container", "inspect", *ids], check=False)
        try:
            data = json.loads(proc.stdout or "[]")
        except ValueError:
            data = []
        if not self.ctx.dry_run:
            uses = {}
            for container in data:
                state = container.get("State") or {}
                when = (
                    self.ctx.now
                    if state.get("Running")
                    else parse_docker_time(state.get("FinishedAt"))
                    or parse_docker_time(container.get("Created"))
                )
                image = container.get("Image")
                if image:
                    uses[image] = max(uses.get(image, 0.0), when)
            if self.ctx.state_dir:
                with contextlib.suppress(OSError):
                    record_image_use(self.ctx.state_dir, uses)
        return data

    def used_images(self) -> set[str]:
        images = (container.get("Image") for container in self.containers())
        return {image for image in images if image}

    def system_df(self) -> dict[str, Any]:
        out = run_docker(["system", "df", "-v", "--format", "{{json .}}"]).stdout
        try:
            return json.loads(out)
        except ValueError:
            return {}


class ContainersCleaner(DockerCleaner):
    kind = "docker-containers"

    def plan(self) -> list[Item]:
        fs = self._engine_fs()
        scoped = set(run_docker(["ps", "-a", "-q", "--no-trunc", *self._filters()]).stdout.split())
        min_age = self.min_age()
        items = []
        stopped = [
            container
            for container in self.containers()
            if container.get("Id") in scoped
            and (container.get("State") or {}).get("Status") in ("exited", "created", "dead")
        ]
        if not stopped:
            return []
        sizes = {}
        proc = run_docker(
            ["container", "inspect", "--size", *[c["Id"] for c in stopped]], check=False
        )
        try:
            for container in json.loads(proc.stdout or "[]"):
                sizes[container["Id"]] = int(container.get("SizeRw") or 0)
        except ValueError:
            pass
        for container in stopped:
            state = container.get("State") or {}
            ended = parse_docker_time(state.get("FinishedAt")) or parse_docker_time(
                container.get("Created")
            )
            if self.ctx.now - ended < min_age:
                continue
            name = (container.get("Name") or "").lstrip("/")
            container_id = container["Id"]
            items.append(
                Item(
                    path=f"container {name} ({container_id[:12]})",
                    bytes=sizes.get(container_id, 0),
                    inodes=0,
                    fs=fs,
                    last_used=ended,
                    kind="container",
                    ref=container_id,
                )
            )
        items.sort(key=lambda i: (i.last_used, i.path))
        return items

    def remove(self, item: Item) -> Outcome:
        proc = run_docker(["rm", item.ref], check=False)
        if proc.returncode != 0:
            return Outcome(errors=[(item.path, proc.stderr.strip())])
        return Outcome(bytes=item.bytes, removed=True)


class ImagesCleaner(DockerCleaner):
    """Tagged images no container uses, least recently used first, older than min_age."""

    kind = "docker-images"
    dangling = False

    def _protected(self, refs: list[str]) -> bool:
        patterns = self.ctx.section.get("protected_images") or []
        for ref in refs:
            bare = ref.split("@")[0]
            repo = bare.rsplit(":", 1)[0] if ":" in bare.split("/")[-1] else bare
            for pattern in patterns:
                if fnmatch.fnmatchcase(ref, pattern) or fnmatch.fnmatchcase(repo, pattern):
                    return True
        return False

    def plan(self) -> list[Item]:
        fs = self._engine_fs()
        args = ["image", "ls", "-q", "--no-trunc", *self._filters()]
        if self.dangling:
            args += ["--filter", "dangling=true"]
        ids = sorted(set(run_docker(args).stdout.split()))
        if not ids:
            return []
        used = self.used_images()
        ids = [i for i in ids if i not in used]
        if not ids:
            return []
        proc = run_docker(["image", "inspect", *ids], check=False)
        try:
            inspected = json.loads(proc.stdout or "[]")
        except ValueError:
            inspected = []
        unique = {}
        for image in self.system_df().get("Images") or []:
            unique[image.get("ID")] = _docker_size(image.get("UniqueSize"))
        uses = load_image_use(self.ctx.state_dir) if self.ctx.state_dir else {}
        min_age = self.min_age()
        items = []
        for image in inspected:
            image_id = image.get("Id")
            refs = list(image.get("RepoTags") or [])
            if not self.dangling and not refs:
                continue  # dangling: the dangling-images cleaner's business
            if self._protected(refs + list(image.get("RepoDigests") or [])):
                self.kept.append((", ".join(refs) or image_id, "protected image"))
                continue
            arrived = parse_docker_time(
                (image.get("Metadata") or {}).get("LastTagTime")
            ) or parse_docker_time(image.get("Created"))
            last_use = uses.get(image_id) or arrived
            if self.ctx.now - last_use < min_age:
                continue
            size = unique.get(image_id, int(image.get("Size") or 0))
            label = ", ".join(refs) if refs else image_id[7:19]
            items.append(
                Item(
                    path=f"image {label}",
                    bytes=size,
                    inodes=0,
                    fs=fs,
                    last_used=last_use,
                    kind="image",
                    ref=(image_id, refs),
                )
            )
        items.sort(key=lambda i: (i.last_used, i.path))
        return items

    def remove(self, item: Item) -> Outcome:
        image_id, refs = item.ref
        # Untag each reference, then the id; never --force (the engine refuses in-use images).
        errors = []
        proc = run_docker(["rmi", *refs] if refs else ["rmi", image_id], check=False)
        if proc.returncode != 0:
            errors.append((item.path, proc.stderr.strip()))
        if run_docker(["image", "inspect", image_id], check=False).returncode == 0:
            proc = run_docker(["rmi", image_id], check=False)
            if proc.returncode != 0:
                errors.append((item.path, proc.stderr.strip()))
                return Outcome(errors=errors)
        return Outcome(bytes=item.bytes, removed=True, errors=[])


class DanglingImagesCleaner(ImagesCleaner):
    kind = "docker-dangling-images"
    dangling = True


class BuildCacheCleaner(DockerCleaner):
    """BuildKit cache records not used for min_age: one prune with an ``until`` filter."""

    kind = "docker-build-cache"

    def plan(self) -> list[Item]:
        min_age = self.min_age()
        total = 0
        count = 0
        for record in self.system_df().get("BuildCache") or []:
            if record.get("InUse") in (True, "true"):
                continue
            last = parse_docker_time(record.get("LastUsedAt")) or parse_docker_time(
                record.get("CreatedAt")
            )
            if self.ctx.now - last < min_age:
                continue
            total += _docker_size(record.get("Size"))
            count += 1
        if not count:
            return []
        hours = max(int(min_age // 3600), 0)
        return [
            Item(
                path=f"build cache: {count} records unused for {hours}h",
                bytes=total,
                inodes=0,
                fs=self._engine_fs(),
                kind="build-cache",
                ref=hours,
            )
        ]

    def remove(self, item: Item) -> Outcome:
        args = ["builder", "prune", "-f"]
        if item.ref:
            args += ["--filter", f"until={item.ref}h"]
        try:
            out = run_docker(args, timeout=600).stdout
        except DockerCommandError as exc:
            return Outcome(errors=[(item.path, str(exc))])
        total = re.search(r"Total(?: reclaimed space)?:\s*(\S+)", out)
        freed = _docker_size(total.group(1)) if total else item.bytes
        return Outcome(bytes=freed, removed=True)


class VolumesCleaner(DockerCleaner):
    """Volumes no container references (opt-in)."""

    kind = "docker-volumes"

    def plan(self) -> list[Item]:
        names = run_docker(
            ["volume", "ls", "-q", "--filter", "dangling=true", *self._filters()]
        ).stdout.split()
        if not names:
            return []
        volumes = self.system_df().get("Volumes") or []
        sizes = {volume.get("Name"): _docker_size(volume.get("Size")) for volume in volumes}
        fs = self._engine_fs()
        return [
            Item(
                path=f"volume {name}",
                bytes=sizes.get(name, 0),
                inodes=0,
                fs=fs,
                kind="volume",
                ref=name,
            )
            for name in sorted(names)
        ]

    def remove(self, item: Item) -> Outcome:
        proc = run_docker(["volume", "rm", item.ref], check=False)
        if proc.returncode != 0:
            return Outcome(errors=[(item.path, proc.stderr.strip())])
        return Outcome(bytes=item.bytes, removed=True)


KINDS = {
    "docker-containers": ContainersCleaner,
    "docker-dangling-images": DanglingImagesCleaner,
    "docker-images": ImagesCleaner,
    "docker-build-cache": BuildCacheCleaner,
    "docker-volumes": VolumesCleaner,
}
