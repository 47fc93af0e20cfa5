#!/usr/bin/env python3
"""Build ``dist/runnerkeep-runner-VERSION.tar.gz``: the Ansible collection runnerkeep.runner.

The top-level sources stay the source of truth; this script stages them in a temporary
collection tree and runs ``ansible-galaxy collection build`` on it:

    library/*.py              -> plugins/modules/   (imports rewritten to the collection's FQCN)
    module_utils/runnerkeep/  -> plugins/module_utils/runnerkeep/
    roles/                    -> roles/   (plus roles/runner_base/files/runnerkeep.pyz, built here)
    playbooks/*.yml           -> playbooks/   (except the repo-only REPO_ONLY_PLAYBOOKS)
    docs/*.md                 -> docs/
    tests/sanity/ignore-*.txt -> tests/sanity/   (ansible-test sanity's ignores)
    galaxy.yml, meta/runtime.yml, LICENSE, README.md, CHANGELOG.md

ansible-galaxy stamps the build time into the archive and lists files in directory order, so
the tarball it writes is normalized afterwards (FILES.json sorted, MANIFEST.json checksum
recomputed, members sorted with a fixed mtime, gzip without name or time): the same sources
built by the same Python give the same bytes. The zipapp inside carries bytecode for the
building Python, so another Python version gives another (equally valid) tarball.

The output is only replaced when its bytes change. Prints "changed PATH" or "unchanged PATH".
Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "runnerkeep"
NAME = "runner"
OLD_PREFIX = "ansible.module_utils.runnerkeep"
NEW_PREFIX = f"ansible_collections.{NAMESPACE}.{NAME}.plugins.module_utils.runnerkeep"
# Needs tests/validate from a checkout: a repository tool, not part of the collection.
REPO_ONLY_PLAYBOOKS = frozenset({"validate_image.yml"})
ZIPAPP = os.path.join("roles", "runner_base", "files", "runnerkeep.pyz")
TOP_FILES = (
    "galaxy.yml",
    os.path.join("meta", "runtime.yml"),
    "LICENSE",
    "README.md",
    "CHANGELOG.md",
)
SANITY_IGNORE = re.compile(r"ignore-[0-9.]+\.txt")
SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".retry", ".swp")
# 2020-01-01T00:00:00Z, as the zipapp; SOURCE_DATE_EPOCH overrides it.
DEFAULT_MTIME = 1577836800


class BuildError(Exception):
    """A reason the collection cannot be built, said in one line."""


def read_version(path: str, pattern: str, what: str) -> str:
    with open(path, encoding="utf-8") as handle:
        match = re.search(pattern, handle.read(), re.MULTILINE)
    if not match:
        raise BuildError(f"no version found in {what} ({path})")
    return match.group(1)


def checked_version() -> str:
    """The collection version, which must equal the Python package's."""
    core = read_version(
        os.path.join(ROOT, "module_utils", "runnerkeep", "__init__.py"),
        r"^__version__\s*=\s*[\"']([^\"']+)[\"']",
        "runnerkeep.__version__",
    )
    galaxy = read_version(
        os.path.join(ROOT, "galaxy.yml"), r"^version:\s*[\"']?([^\s\"'#]+)", "galaxy.yml"
    )
    if core != galaxy:
        raise BuildError(
            f"galaxy.yml version {galaxy} differs from runnerkeep.__version__ {core}; "
            "make them equal"
        )
    return core


def copy_file(src: str, dest: str) -> None:
    """Copy content and only the owner's execute bit, so the stage does not depend on umask."""
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(src, dest)
    executable = os.stat(src).st_mode & stat.S_IXUSR
    os.chmod(dest, 0o755 if executable else 0o644)


def wanted(name: str) -> bool:
    return not name.endswith(SKIP_SUFFIXES)


def copy_tree(src_dir: str, dest_dir: str, allowed_links: frozenset[str] = frozenset()) -> None:
    """Copy regular files of a tree; a symlink is refused unless the build replaces it."""
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filter(wanted, filenames)):
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, src_dir)
            if os.path.islink(src):
                if rel in allowed_links:
                    continue
                raise BuildError(f"{src} is a symlink; the collection holds regular files only")
            copy_file(src, os.path.join(dest_dir, rel))


def rewrite_module(source: str, path: str) -> str:
    """Point a module's core imports at the collection's module_utils and check none is left."""
    rewritten = re.sub(rf"\b{re.escape(OLD_PREFIX)}\b", NEW_PREFIX, source)
    for node in ast.walk(ast.parse(rewritten, filename=path)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name == OLD_PREFIX or name.startswith(OLD_PREFIX + "."):
                raise BuildError(
                    f"{path}: cannot rewrite the import of {name}; "
                    f"use 'from {OLD_PREFIX}.x import y'"
                )
    return rewritten


def stage_modules(stage: str) -> None:
    library = os.path.join(ROOT, "library")
    modules = sorted(n for n in os.listdir(library) if n.endswith(".py"))
    if not modules:
        raise BuildError(f"no modules found in {library}")
    for name in modules:
        src = os.path.join(library, name)
        with open(src, encoding="utf-8") as handle:
            text = rewrite_module(handle.read(), src)
        dest = os.path.join(stage, "plugins", "modules", name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(dest, 0o644)


def check_core_imports(core_dir: str) -> None:
    """Inside the collection the core is importable only through relative imports."""
    for dirpath, dirnames, filenames in os.walk(core_dir):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), filename=path)
            for node in ast.walk(tree):
                absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    absolute.append(node.module)
                for module in absolute:
                    if module.split(".")[0] == "runnerkeep" or module.startswith(OLD_PREFIX):
                        raise BuildError(
                            f"{path}:{node.lineno}: absolute import of {module}; "
                            "the core must import itself relatively (from .x import y)"
                        )


def build_zipapp(dest: str) -> None:
    tool = os.path.join(ROOT, "tools", "build_zipapp.py")
    run([sys.executable, tool, "--output", dest], "tools/build_zipapp.py")


def stage_tree(stage: str) -> None:
    stage_modules(stage)
    core = os.path.join(ROOT, "module_utils", "runnerkeep")
    check_core_imports(core)
    copy_tree(core, os.path.join(stage, "plugins", "module_utils", "runnerkeep"))
    roles_link = os.path.relpath(os.path.join(ROOT, ZIPAPP), os.path.join(ROOT, "roles"))
    copy_tree(os.path.join(ROOT, "roles"), os.path.join(stage, "roles"), frozenset({roles_link}))
    build_zipapp(os.path.join(stage, ZIPAPP))
    playbooks = os.path.join(ROOT, "playbooks")
    for name in sorted(os.listdir(playbooks)):
        if name.endswith(".yml") and name not in REPO_ONLY_PLAYBOOKS:
            copy_file(os.path.join(playbooks, name), os.path.join(stage, "playbooks", name))
    copy_matching("docs", lambda name: name.endswith(".md"), stage)
    # ansible-test sanity reads them there (tools/run_sanity.py).
    copy_matching(os.path.join("tests", "sanity"), SANITY_IGNORE.fullmatch, stage)
    for rel in TOP_FILES:
        copy_file(os.path.join(ROOT, rel), os.path.join(stage, rel))


def copy_matching(rel_dir: str, wanted_name: Callable[[str], object], stage: str) -> None:
    """Files of one repository directory (not its subdirectories) whose name is wanted."""
    source = os.path.join(ROOT, rel_dir)
    if not os.path.isdir(source):
        return
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        if wanted_name(name) and os.path.isfile(path) and not os.path.islink(path):
            copy_file(path, os.path.join(stage, rel_dir, name))


def find_ansible_galaxy(explicit: str | None) -> str:
    candidates = [
        explicit,
        os.path.join(os.path.dirname(sys.executable), "ansible-galaxy"),
        os.path.join(ROOT, ".nox", "unit", "bin", "ansible-galaxy"),
        shutil.which("ansible-galaxy"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)  # it runs with another working directory
    raise BuildError("ansible-galaxy not found: install ansible-core or pass --ansible-galaxy PATH")


def run(cmd: list[str], what: str, cwd: str | None = None) -> str:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{what} could not run: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BuildError(f"{what} failed (exit {done.returncode}): {' / '.join(detail[-3:])}")
    return done.stdout


def galaxy_build(galaxy: str, stage: str, out_dir: str) -> str:
    run(
        [galaxy, "collection", "build", "--force", "--output-path", out_dir, stage],
        "ansible-galaxy",
        cwd=out_dir,
    )
    built = [n for n in os.listdir(out_dir) if n.endswith(".tar.gz")]
    if len(built) != 1:
        raise BuildError(
            f"ansible-galaxy left {built or 'nothing'} in {out_dir}, expected one tarball"
        )
    return os.path.join(out_dir, built[0])


def json_bytes(data: object) -> bytes:
    # ansible-galaxy's own formatting, so the normalized manifests read as it writes them.
    return json.dumps(data, indent=True).encode("utf-8")


def read_members(path: str) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(path, "r:gz") as archive:
        for info in archive.getmembers():
            if not (info.isfile() or info.isdir()):
                raise BuildError(f"unexpected member {info.name} (type {info.type!r}) in {path}")
            handle = archive.extractfile(info) if info.isfile() else None
            members[info.name] = (info, handle.read() if handle else None)
    return members


def normalized_manifests(
    members: dict[str, tuple[tarfile.TarInfo, bytes | None]],
) -> dict[str, bytes]:
    files = json.loads(members["FILES.json"][1] or b"{}")
    files["files"].sort(key=lambda entry: (entry["name"] != ".", entry["name"]))
    files_json = json_bytes(files)
    manifest = json.loads(members["MANIFEST.json"][1] or b"{}")
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    return {"MANIFEST.json": json_bytes(manifest), "FILES.json": files_json}


def normalize_tarball(path: str, mtime: int) -> bytes:
    """The tarball's bytes with every build-time and directory-order trace removed."""
    members = read_members(path)
    manifests = normalized_manifests(members)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        order = ["MANIFEST.json", "FILES.json", *sorted(set(members) - set(manifests))]
        for name in order:
            old, data = members[name]
            data = manifests.get(name, data)
            info = tarfile.TarInfo(name)
            info.type = old.type
            info.mode = old.mode
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.size = len(data) if data is not None else 0
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def write_if_changed(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def source_mtime() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return DEFAULT_MTIME
    if not value.isdigit():
        raise BuildError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds; unset it or fix it"
        )
    return int(value)


def build(output_dir: str, galaxy: str | None) -> tuple[str, bool]:
    """Build the collection into output_dir; returns (path, changed)."""
    version = checked_version()
    mtime = source_mtime()
    galaxy_bin = find_ansible_galaxy(galaxy)
    with tempfile.TemporaryDirectory(prefix="runnerkeep-collection-") as tmp:
        stage = os.path.join(tmp, "ansible_collections", NAMESPACE, NAME)
        stage_tree(stage)
        out = os.path.join(tmp, "out")
        os.makedirs(out)
        data = normalize_tarball(galaxy_build(galaxy_bin, stage, out), mtime)
    path = os.path.join(output_dir, f"{NAMESPACE}-{NAME}-{version}.tar.gz")
    return path, write_if_changed(path, data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "dist"))
    parser.add_argument(
        "--ansible-galaxy", help="ansible-galaxy to use (default: beside this Python)"
    )
    args = parser.parse_args()
    try:
        path, changed = build(os.path.abspath(args.output_dir), args.ansible_galaxy)
    except (BuildError, OSError, SyntaxError, ValueError, KeyError, tarfile.TarError) as exc:
        print(f"build_collection: error: {exc}", file=sys.stderr)
        return 1
    print(f"{'changed' if changed else 'unchanged'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
