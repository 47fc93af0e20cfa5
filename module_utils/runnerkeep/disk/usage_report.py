"""``runnerkeep disk report``: what fills the disks of this runner, measured now.

For each filesystem holding the Docker root, the image cache, runner work dirs and /tmp:
size, free bytes, free inodes; Docker usage by kind (``docker system df``); the image cache's
logical and on-disk size; the largest directories under the configured roots.
Each part fails on its own: a missing engine or unreadable path is reported, the rest goes on.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from ..config import paths_of, state_dir_of
from ..docker_cli import DEFAULT_DOCKER_ROOT, docker_json_lines, docker_root_dir, run_docker
from ..drain import DrainRecordError, read_drain
from ..errors import DockerCommandError, RunnerkeepError
from ..fsutil import filesystem_usage
from ..textutil import escape_text, table
from ..units import format_size
from .disk_config import as_int, disk_settings, expand
from .sizing import largest_dirs, tree_size

DOCKER_KINDS = {
    "Images": "images",
    "Containers": "containers",
    "Local Volumes": "volumes",
    "Build Cache": "build_cache",
}
_HUMAN_RE = re.compile(r"^\s*([\d.]+)\s*([kKMGTP]?i?B)?\s*$")
_HUMAN_UNITS = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "PB": 1000**5,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


def parse_docker_size(text: str) -> int:
    """Docker's human sizes ("1.35GB", "200kB", "0B", "12.5MB (43%)") to bytes (decimal units)."""
    text = (text or "").split("(")[0].strip()
    match = _HUMAN_RE.match(text)
    if not match:
        return 0
    unit = match.group(2) or "B"
    return int(float(match.group(1)) * _HUMAN_UNITS.get(unit, 1))


def docker_root(settings: dict[str, Any]) -> tuple[str, str | None]:
    """(docker root dir, error or None): config, else the engine's answer, else the default."""
    if settings.get("docker_root"):
        return settings["docker_root"], None
    try:
        return docker_root_dir(timeout=10), None
    except RunnerkeepError as exc:
        return DEFAULT_DOCKER_ROOT, str(exc)


def watched_paths(config: dict[str, Any], docker_root_dir: str) -> list[tuple[str, str]]:
    """(role, path) pairs whose filesystems the report and the watch cover."""
    settings = disk_settings(config)
    paths = paths_of(config)
    pairs = [("docker_root", docker_root_dir), ("cache_dir", paths["cache_dir"])]
    pairs += [("work_dir", p) for p in settings["work_dirs"]]
    pairs += [("tmp", "/tmp")]
    if settings["path"]:
        pairs.append(("budget", settings["path"]))
    pairs += [("extra", p) for p in settings["extra_paths"]]
    return [(role, expand(p)) for role, p in pairs]


def filesystems(pairs: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One entry per filesystem (by mount point), naming every role/path it holds; errors apart."""
    by_mount: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, str]] = []
    for role, path in pairs:
        try:
            usage = filesystem_usage(path)
        except OSError as exc:
            errors.append({"path": path, "role": role, "error": exc.strerror or str(exc)})
            continue
        entry = by_mount.get(usage.mount_point)
        if entry is None:
            entry = by_mount[usage.mount_point] = {
                "mount_point": usage.mount_point,
                "size_bytes": usage.total_bytes,
                "free_bytes": usage.free_bytes,
                "used_bytes": usage.total_bytes - usage.free_bytes,
                "size_inodes": usage.total_inodes,
                "free_inodes": usage.free_inodes,
                "roles": [],
                "paths": [],
            }
        if role not in entry["roles"]:
            entry["roles"].append(role)
        if path not in entry["paths"]:
            entry["paths"].append(path)
    return sorted(by_mount.values(), key=lambda e: e["mount_point"]), errors


def docker_usage(timeout: float = 60.0) -> dict[str, Any]:
    """``docker system df`` by kind: count, active, size and reclaimable bytes."""
    rows = docker_json_lines(["system", "df", "--format", "{{json .}}"], timeout=timeout)
    kinds: dict[str, Any] = {}
    for row in rows:
        kind = DOCKER_KINDS.get(row.get("Type", ""), str(row.get("Type", "")).lower())
        kinds[kind] = {
            "total_count": as_int(row.get("TotalCount") or 0, "TotalCount"),
            "active": as_int(row.get("Active") or 0, "Active"),
            "size_bytes": parse_docker_size(row.get("Size", "")),
            "reclaimable_bytes": parse_docker_size(row.get("Reclaimable", "")),
        }
    return kinds


def docker_details(limit: int = 10, timeout: float = 120.0) -> dict[str, Any]:
    """``docker system df -v``: the largest images (unique bytes), containers and volumes."""
    out = run_docker(["system", "df", "-v", "--format", "{{json .}}"], timeout=timeout).stdout
    try:
        data = json.loads(out or "{}")
    except ValueError as exc:
        raise DockerCommandError(f"'docker system df -v' printed invalid JSON: {exc}") from None
    images = [
        {
            "image": f"{image.get('Repository')}:{image.get('Tag')}",
            "id": str(image.get("ID", ""))[:19],
            "size_bytes": parse_docker_size(image.get("Size", "")),
            "unique_bytes": parse_docker_size(image.get("UniqueSize", "")),
            "shared_bytes": parse_docker_size(image.get("SharedSize", "")),
            "containers": as_int(image.get("Containers") or 0, "Containers"),
        }
        for image in data.get("Images") or []
    ]
    containers = [
        {
            "name": container.get("Names"),
            "image": container.get("Image"),
            "state": container.get("State"),
            "size_bytes": parse_docker_size(container.get("Size", "")),
        }
        for container in data.get("Containers") or []
    ]
    volumes = [
        {
            "name": volume.get("Name"),
            "links": as_int(volume.get("Links") or 0, "Links"),
            "size_bytes": parse_docker_size(volume.get("Size", "")),
        }
        for volume in data.get("Volumes") or []
    ]

    def top(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        return sorted(items, key=lambda item: -item[key])[:limit]

    return {
        "largest_images": top(images, "unique_bytes"),
        "largest_containers": top(containers, "size_bytes"),
        "largest_volumes": top(volumes, "size_bytes"),
        "build_cache_entries": len(data.get("BuildCache") or []),
    }


def cache_usage(cache_dir: str) -> dict[str, Any]:
    size = tree_size(cache_dir)
    return {
        "path": cache_dir,
        "exists": size.exists,
        "logical_bytes": size.logical_bytes,
        "disk_bytes": size.disk_bytes,
        "files": size.files,
        "errors": size.errors[:20],
    }


def disk_report(
    config: dict[str, Any],
    *,
    include_docker: bool = True,
    include_largest: bool = True,
    docker_verbose: bool = False,
) -> dict[str, Any]:
    """The whole report as a JSON-able dict; never raises for one failing part."""
    started = time.monotonic()
    settings = disk_settings(config)
    paths = paths_of(config)
    errors: list[str] = []
    # How many entries each "largest" list keeps (Docker details and directories).
    limit = as_int(settings["largest_dirs"], "disk.largest_dirs", 1)
    root, root_error = docker_root(settings)
    if root_error:
        errors.append(f"docker: {root_error}")
    fs, fs_errors = filesystems(watched_paths(config, root))
    errors += [f"{e['path']}: {e['error']}" for e in fs_errors]
    report: dict[str, Any] = {
        "docker_root": root,
        "filesystems": fs,
        "filesystem_errors": fs_errors,
        "cache": cache_usage(expand(paths["cache_dir"])),
    }
    if include_docker:
        report["docker"] = _docker_part(root_error, docker_verbose, limit, errors)
    if include_largest:
        report["largest_dirs"] = _largest_dirs_part(settings, limit)
    report["drain"] = _drain_part(config, errors)
    report["errors"] = errors
    report["duration_seconds"] = round(time.monotonic() - started, 3)
    return report


def _drain_part(config: dict[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """Admission control's drain record (None: never drained); a damaged one is an error."""
    try:
        return read_drain(state_dir_of(config))
    except DrainRecordError as exc:
        errors.append(f"drain: {exc}")
        return {"error": str(exc)}


def _docker_part(
    root_error: str | None, verbose: bool, limit: int, errors: list[str]
) -> dict[str, Any]:
    """Docker's usage by kind (and with ``verbose`` the largest images, containers, volumes)."""
    if root_error and "not installed" in root_error:
        return {"available": False, "error": root_error}
    try:
        docker: dict[str, Any] = {"available": True, "kinds": docker_usage()}
    except RunnerkeepError as exc:
        if not root_error:
            errors.append(f"docker: {exc}")
        return {"available": False, "error": str(exc)}
    # The details fail on their own: the usage by kind measured above stays.
    if verbose:
        try:
            docker["details"] = docker_details(limit)
        except RunnerkeepError as exc:
            docker["details_error"] = str(exc)
            errors.append(f"docker: {exc}")
    return docker


def _largest_dirs_part(settings: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """The largest directories under each report root (default: the work dirs and /tmp)."""
    roots = settings["report_roots"]
    if roots is None:
        roots = [*settings["work_dirs"], "/tmp"]
    depth = as_int(settings["largest_dirs_depth"], "disk.largest_dirs_depth", 1)
    largest = []
    for root_dir in roots:
        root_dir = expand(root_dir)
        if not os.path.isdir(root_dir):
            largest.append({"root": root_dir, "exists": False, "dirs": []})
            continue
        dirs, total = largest_dirs(root_dir, depth=depth, limit=limit)
        largest.append(
            {
                "root": root_dir,
                "exists": True,
                "disk_bytes": total.disk_bytes,
                "dirs": dirs,
                "error_count": len(total.errors),
            }
        )
    return largest


def render_report(report: dict[str, Any]) -> str:
    """The report for people."""
    lines = _render_filesystems(report)
    docker = report.get("docker")
    if docker is not None:
        lines.append("")
        lines += _render_docker(docker, report["docker_root"])
    lines += _render_cache(report["cache"])
    lines += _render_drain(report.get("drain"))
    for entry in report.get("largest_dirs", []):
        lines.append("")
        lines += _render_largest(entry)
    if report["errors"]:
        lines.append("")
        lines += [f"error: {escape_text(e)}" for e in report["errors"]]
    return "\n".join(lines)


def _render_drain(record: dict[str, Any] | None) -> list[str]:
    if not record or "error" in record:
        return []  # never drained; an unusable record is in the errors
    if not record["drained"]:
        return ["", "runner: taking jobs"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["since"]))
    return ["", f"runner: DRAINED since {when} ({escape_text(record['reason'])})"]


def _render_filesystems(report: dict[str, Any]) -> list[str]:
    rows = [
        [
            fs["mount_point"],
            format_size(fs["size_bytes"]),
            format_size(fs["free_bytes"]),
            f"{fs['free_inodes']}/{fs['size_inodes']}",
            ",".join(fs["roles"]),
        ]
        for fs in report["filesystems"]
    ]
    lines = ["Filesystems:", table(rows, ["mount", "size", "free", "free inodes", "holds"])]
    for err in report.get("filesystem_errors", []):
        lines.append(
            f"  unreadable: {escape_text(err['path'])} ({err['role']}): {escape_text(err['error'])}"
        )
    return lines


def _render_docker(docker: dict[str, Any], docker_root_dir: str) -> list[str]:
    if not docker.get("available"):
        return [f"Docker usage: unavailable ({docker.get('error')})"]
    rows = [
        [
            kind,
            str(usage["total_count"]),
            str(usage["active"]),
            format_size(usage["size_bytes"]),
            format_size(usage["reclaimable_bytes"]),
        ]
        for kind, usage in docker["kinds"].items()
    ]
    lines = [
        f"Docker usage (root {docker_root_dir}):",
        table(rows, ["kind", "count", "active", "size", "reclaimable"]),
    ]
    details = docker.get("details")
    if details and details["largest_images"]:
        lines.append("Largest images (unique bytes):")
        for image in details["largest_images"]:
            used = f", used by {image['containers']}" if image["containers"] else ""
            lines.append(
                f"  {format_size(image['unique_bytes']):>10}  "
                f"{escape_text(image['image'])}{escape_text(used)}"
            )
    if details and details["largest_volumes"]:
        lines.append("Largest volumes:")
        for volume in details["largest_volumes"]:
            lines.append(
                f"  {format_size(volume['size_bytes']):>10}  {escape_text(volume['name'])}"
            )
    return lines


def _render_cache(cache: dict[str, Any]) -> list[str]:
    if not cache["exists"]:
        return ["", f"Image cache {cache['path']}: does not exist yet"]
    return [
        "",
        f"Image cache {cache['path']}: {format_size(cache['logical_bytes'])} logical, "
        f"{format_size(cache['disk_bytes'])} on disk, {cache['files']} files",
    ]


def _render_largest(entry: dict[str, Any]) -> list[str]:
    if not entry["exists"]:
        return [f"Largest under {escape_text(entry['root'])}: (does not exist)"]
    lines = [
        f"Largest under {escape_text(entry['root'])} ({format_size(entry['disk_bytes'])} total):"
    ]
    for item in entry["dirs"]:
        lines.append(f"  {format_size(item['disk_bytes']):>10}  {escape_text(item['path'])}")
    return lines
