"""Every repository path the docs name exists, so a rename cannot leave the docs behind silently.

Checked in docs/*.md and README.md:
- a backticked path whose first part is a top-level directory of the repository
  (`module_utils/runnerkeep/wiring.py`, `tools/...`, `roles/...`, `docs/...`), or a package of
  the core, as docs/hardening.md writes them (`cleanup/walk.py` = module_utils/runnerkeep/...);
- a backticked bare file name ending in .py (`test_walk_hardening.py`): some file of the tree;
- a relative Markdown link (`[x](docs/metrics.md)`), from the page's own directory.

Not checked: placeholders (`<role>`, `VERSION`, globs), paths on a host or in a store
(`/etc/...`, `config.d/...`, `blobs/sha256/HEX`), files built by the tools (`dist/`), bare
names of files written at run time (`drain.json`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CORE = REPO / "module_utils" / "runnerkeep"
# Made by tools/build_*.py or pip, absent from a fresh clone.
BUILD_OUTPUTS = {"build", "dist"}
SKIPPED_DIRS = {"__pycache__", ".git", ".nox", "node_modules"} | BUILD_OUTPUTS
PLACEHOLDER = re.compile(r"[<>*?\[\]{}]|VERSION|\.\.\.")
BACKTICKED = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def doc_files() -> list[Path]:
    return [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def top_level_dirs() -> set[str]:
    return {
        entry.name
        for entry in REPO.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in BUILD_OUTPUTS
    }


def core_packages() -> set[str]:
    return {entry.name for entry in CORE.iterdir() if (entry / "__init__.py").is_file()}


def tree_file_names() -> set[str]:
    names = set()
    for _dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [
            d
            for d in dirnames
            if d not in SKIPPED_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
        ]
        names.update(filenames)
    return names


def _strip_location(token: str) -> str:
    """`file.py::test_name` and `file.py:123` name the file."""
    token = token.split("::", 1)[0]
    return re.sub(r":\d+$", "", token)


def repo_path_of(token: str, top_dirs: set[str], packages: set[str]) -> str | None:
    """The repository path a backticked token names (relative to the repository), or None when
    it is no repository path; a bare file name is returned as it is."""
    token = _strip_location(token.strip())
    if not token or re.search(r"\s", token) or "://" in token or PLACEHOLDER.search(token):
        return None
    if token[0] in "/~$.-":
        return None
    first, _, rest = token.partition("/")
    if not rest and not token.endswith("/"):
        return token if token.endswith(".py") else None
    if first in top_dirs:
        return token
    if first in packages:
        return f"module_utils/runnerkeep/{token}"
    return None


def missing_paths(
    text: str, doc_dir: Path, top_dirs: set[str], packages: set[str], file_names: set[str]
) -> list[tuple[int, str]]:
    """(line, token) of every path in ``text`` (a Markdown page in ``doc_dir``) that is not in
    the tree."""
    missing = []
    for match in BACKTICKED.finditer(text):
        path = repo_path_of(match.group(1), top_dirs, packages)
        if path is None:
            continue
        exists = (REPO / path).exists() if "/" in path else path in file_names
        if not exists:
            missing.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    for match in LINK.finditer(text):
        target = match.group(1).split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target) or PLACEHOLDER.search(target):
            continue
        if not (doc_dir / target).exists():
            missing.append((text.count("\n", 0, match.start()) + 1, target))
    return missing


def test_every_path_the_docs_name_exists():
    top_dirs, packages, file_names = top_level_dirs(), core_packages(), tree_file_names()
    problems = []
    for doc in doc_files():
        text = doc.read_text(encoding="utf-8")
        for line, token in missing_paths(text, doc.parent, top_dirs, packages, file_names):
            problems.append(f"{doc.relative_to(REPO)}:{line}: {token}")
    assert problems == [], "paths the docs name that are not in the tree:\n" + "\n".join(problems)


def test_the_checker_finds_a_missing_path_and_leaves_placeholders_alone():
    top_dirs, packages, file_names = top_level_dirs(), core_packages(), tree_file_names()
    text = "\n".join(
        [
            "`module_utils/runnerkeep/wiring.py` and `cleanup/walk.py` and `test_docs_paths.py`",
            "`tools/no_such_tool.py`",
            "`cache/archive.py` (split long ago)",
            "`no_such_module.py`",
            "[the metrics](metrics.md) and [gone](gone.md)",
            "`roles/<role>/defaults/main.yml`, `dist/runnerkeep-runner-VERSION.tar.gz`,"
            " `config.d/*.json`, `/etc/runnerkeep/config.json`, `blobs/sha256/HEX`,"
            " `drain.json`, `dist/runnerkeep.pyz`, `runnerkeep cache save`",
            "`tests/unit/core/test_docs_paths.py::test_every_path_the_docs_name_exists`",
        ]
    )
    found = missing_paths(text, REPO / "docs", top_dirs, packages, file_names)
    assert found == [
        (2, "tools/no_such_tool.py"),
        (3, "cache/archive.py"),
        (4, "no_such_module.py"),
        (5, "gone.md"),
    ]


def test_the_docs_name_paths_at_all():
    # The checker would pass on docs it cannot read paths in: it must see the ones we know.
    top_dirs, packages = top_level_dirs(), core_packages()
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = {repo_path_of(m.group(1), top_dirs, packages) for m in BACKTICKED.finditer(text)}
    assert "tests/unit/cache/test_cache_imports.py" in named
    assert "module_utils/runnerkeep/wiring.py" in named
    assert {"cache", "cleanup", "disk"} <= packages
