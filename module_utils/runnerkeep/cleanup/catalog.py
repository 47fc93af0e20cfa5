"""The built-in cleaners and the toolchain catalog, as data.

Each cleaner is a dict of settings that ``cleanup.cleaners.<name>`` in the config file overlays
key by key; a config entry with a new name and ``"kind": "files"`` adds a cleaner. ``cost``
orders a stage (cheapest first): cheap, safe, nobody-misses-it work first; things the next job
might want (package caches, images) later; toolchains last.

Keys of a ``files`` cleaner:
  roots       directories (globs allowed) whose entries may go; never the roots themselves
  patterns    globs matched against paths relative to a root, one component per level
              ("*" = each top-level entry, "*/*.gz" = .gz files one level down)
  exclude     globs on entry names never removed (at any matched level)
  min_age     an entry goes only when nothing in it was modified for this long
  files_only  match regular files and symlinks only (rotated logs), not directories
"""

from __future__ import annotations

import copy
from typing import Any

STAGES = ("pre", "post", "emergency")

_HOME_GLOBS = ["/root", "/home/*"]


def _in_homes(rel: str) -> list[str]:
    return [f"{home}/{rel}" for home in _HOME_GLOBS]


BUILTIN_CLEANERS: dict[str, dict[str, Any]] = {
    "tmp": {
        "kind": "files",
        "description": "system temp (/tmp, /var/tmp) entries older than min_age",
        "stages": ["pre", "post", "emergency"],
        "cost": 10,
        "enabled": True,
        "roots": ["/tmp", "/var/tmp"],
        "patterns": ["*"],
        "exclude": [
            ".X11-unix",
            ".ICE-unix",
            ".XIM-unix",
            ".font-unix",
            ".Test-unix",
            "systemd-private-*",
            "snap-private-tmp",
            "runnerkeep*",
        ],
        "min_age": "2d",
        "files_only": False,
    },
    "job-leftovers": {
        "kind": "files",
        "description": "finished jobs' temp and output (Actions _work/_temp, GitLab builds)",
        "stages": ["pre", "post", "emergency"],
        "cost": 20,
        "enabled": True,
        "roots": [
            "/opt/actions-runner/_work/_temp",
            "/actions-runner/_work/_temp",
            *_in_homes("actions-runner/_work/_temp"),
            "/home/gitlab-runner/builds",
        ],
        "patterns": ["*"],
        "exclude": ["_runner_file_commands", "_github_workflow", "_github_home"],
        "min_age": "1h",
        "files_only": False,
    },
    "docker-containers": {
        "kind": "docker-containers",
        "description": "stopped (exited/created/dead) containers older than min_age",
        "stages": ["pre", "post", "emergency"],
        "cost": 30,
        "enabled": True,
        "min_age": "1h",
    },
    "docker-dangling-images": {
        "kind": "docker-dangling-images",
        "description": "untagged images no container uses",
        "stages": ["pre", "post", "emergency"],
        "cost": 40,
        "enabled": True,
        "min_age": "0s",
    },
    "logs": {
        "kind": "files",
        "description": "rotated logs under /var/log (*.1, *.gz, ...) older than min_age",
        "stages": ["post", "emergency"],
        "cost": 50,
        "enabled": True,
        "roots": ["/var/log"],
        "patterns": [
            f"{prefix}{suffix}"
            for prefix in ("", "*/")
            for suffix in ("*.[0-9]", "*.[0-9].log", "*.gz", "*.xz", "*.bz2", "*.zst", "*.old")
        ],
        "exclude": ["runnerkeep"],
        "min_age": "1d",
        "files_only": True,
    },
    "journald": {
        "kind": "journald",
        "description": "journald archived journals vacuumed down to max_size",
        "stages": ["post", "emergency"],
        "cost": 55,
        "enabled": True,
        "max_size": "256M",
    },
    "pkg-apt": {
        "kind": "files",
        "description": "downloaded .deb archives (apt-get clean)",
        "stages": ["post", "emergency"],
        "cost": 60,
        "enabled": True,
        "roots": ["/var/cache/apt/archives"],
        "patterns": ["*.deb", "partial/*"],
        "exclude": ["lock"],
        "min_age": "0s",
        "files_only": False,
    },
    "pkg-pip": {
        "kind": "files",
        "description": "pip caches",
        "stages": ["post", "emergency"],
        "cost": 70,
        "enabled": True,
        "roots": _in_homes(".cache/pip"),
        "patterns": ["*"],
        "exclude": [],
        "min_age": "1d",
        "files_only": False,
    },
    "pkg-npm": {
        "kind": "files",
        "description": "npm and yarn caches",
        "stages": ["post", "emergency"],
        "cost": 71,
        "enabled": True,
        "roots": [
            *_in_homes(".npm/_cacache"),
            *_in_homes(".cache/yarn"),
            "/usr/local/share/.cache/yarn",
        ],
        "patterns": ["*"],
        "exclude": [],
        "min_age": "1d",
        "files_only": False,
    },
    "pkg-go": {
        "kind": "files",
        "description": "Go build cache (go module cache only in emergencies)",
        "stages": ["post", "emergency"],
        "cost": 72,
        "enabled": True,
        "roots": _in_homes(".cache/go-build"),
        "patterns": ["*"],
        "exclude": ["README", "trim.txt"],
        "min_age": "1d",
        "files_only": False,
    },
    "pkg-maven": {
        "kind": "files",
        "description": "Maven local repository entries not touched for min_age",
        "stages": ["post", "emergency"],
        "cost": 73,
        "enabled": True,
        "roots": _in_homes(".m2/repository"),
        "patterns": ["*"],
        "exclude": [],
        "min_age": "7d",
        "files_only": False,
    },
    "pkg-gradle": {
        "kind": "files",
        "description": "Gradle caches not touched for min_age",
        "stages": ["post", "emergency"],
        "cost": 74,
        "enabled": True,
        "roots": _in_homes(".gradle/caches"),
        "patterns": ["*"],
        "exclude": ["journal-1"],
        "min_age": "7d",
        "files_only": False,
    },
    "docker-build-cache": {
        "kind": "docker-build-cache",
        "description": "BuildKit build cache older than min_age",
        "stages": ["post", "emergency"],
        "cost": 80,
        "enabled": True,
        "min_age": "1d",
    },
    "docker-volumes": {
        "kind": "docker-volumes",
        "description": "volumes no container uses (opt-in: volumes may hold data)",
        "stages": ["post", "emergency"],
        "cost": 85,
        "enabled": False,
        "min_age": "0s",
    },
    "docker-images": {
        "kind": "docker-images",
        "description": "images no container uses, least recently used first, older than min_age",
        "stages": ["post", "emergency"],
        "cost": 90,
        "enabled": True,
        "min_age": "2d",
    },
    "toolchains": {
        "kind": "toolchains",
        "description": "large toolchain trees switched on per fleet (see list-cleaners)",
        "stages": ["emergency"],
        "cost": 100,
        "enabled": True,
        "items": [],
        "keep": [],
    },
}

# Toolchain catalog: name -> (parent root, entry patterns). Switched on by name in
# cleanup.cleaners.toolchains.items; "hostedtoolcache" removes tool versions not matching
# cleanup.cleaners.toolchains.keep ("Python/3.12*", "node/20.*").
TOOLCHAINS: dict[str, dict[str, Any]] = {
    "dotnet": {"root": "/usr/share", "patterns": ["dotnet"], "size_hint": "3G"},
    "android": {"root": "/usr/local/lib", "patterns": ["android"], "size_hint": "9G"},
    "ghc": {"root": "/opt", "patterns": ["ghc"], "size_hint": "5G"},
    "ghcup": {"root": "/usr/local", "patterns": [".ghcup"], "size_hint": "5G"},
    "swift": {"root": "/usr/share", "patterns": ["swift"], "size_hint": "2G"},
    "codeql": {"root": "/opt/hostedtoolcache", "patterns": ["CodeQL"], "size_hint": "1.5G"},
    "powershell": {"root": "/usr/local/share", "patterns": ["powershell"], "size_hint": "1G"},
    "chromium": {"root": "/usr/local/share", "patterns": ["chromium"], "size_hint": "0.5G"},
    "julia": {"root": "/usr/local", "patterns": ["julia*"], "size_hint": "1G"},
    "hostedtoolcache": {"root": "/opt/hostedtoolcache", "patterns": ["*/*"], "size_hint": "var"},
}

SECTION_DEFAULTS: dict[str, Any] = {
    "targets": {
        "pre": {"free": "10%", "inodes": "5%"},
        "post": {"free": "20%", "inodes": "10%"},
        "emergency": {"free": "10%", "inodes": "5%"},
    },
    "cleaners": {},
    "allowed_mount_points": ["/tmp", "/var/tmp", "/var/log"],
    "protected_paths": [
        "/var/lib/docker",
        "/opt/actions-runner/bin",
        "/opt/actions-runner/externals",
        "/actions-runner/bin",
        "/actions-runner/externals",
        "/home/*/actions-runner/bin",
        "/home/*/actions-runner/externals",
        "/usr/bin/gitlab-runner",
        "/usr/lib/gitlab-runner",
        "/usr/local/bin/runnerkeep",
    ],
    "protected_images": [
        "*actions-runner*",
        "gitlab/gitlab-runner*",
        "registry.gitlab.com/gitlab-org/gitlab-runner*",
        "*runnerkeep*",
    ],
    "docker_filters": [],
    "cross_filesystems": False,
    "swaps_file": "/proc/swaps",
    "lock_max_age": "24h",
    "report_items_max": 10000,
}

CLEANER_KEYS = {
    "kind",
    "description",
    "stages",
    "cost",
    "enabled",
    "roots",
    "patterns",
    "exclude",
    "min_age",
    "emergency_min_age",
    "files_only",
    "max_size",
    "items",
    "keep",
}


def builtin_cleaners() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(BUILTIN_CLEANERS)
