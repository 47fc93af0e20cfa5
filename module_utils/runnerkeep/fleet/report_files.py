"""Write the fleet report's three files into one directory, each atomically."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..fsutil import atomic_output
from .render_html import render_html
from .render_markdown import render_markdown
from .report_model import model_json

FILES = {"html": "index.html", "markdown": "fleet-report.md", "json": "fleet-report.json"}


def render_all(model: dict[str, Any]) -> dict[str, str]:
    """{format: file content} for the three formats."""
    return {
        "html": render_html(model),
        "markdown": render_markdown(model),
        "json": model_json(model),
    }


def report_paths(directory: str) -> dict[str, str]:
    return {kind: os.path.join(directory, name) for kind, name in FILES.items()}


def write_report(directory: str, model: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """Render and write the report; ``dry_run`` renders only and touches nothing.

    Returns the paths and which files would change (or changed). A file is replaced whole
    (temp file, fsync, rename), so a reader never sees half a page."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ConfigError(f"fleet report directory {directory} exists and is not a directory")
    paths = report_paths(directory)
    contents = render_all(model)
    changed = [kind for kind in FILES if _differs(paths[kind], contents[kind])]
    if not dry_run and changed:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        for kind in changed:
            _write(paths[kind], contents[kind])
    return {"dir": directory, "paths": paths, "changed_files": changed}


def _differs(path: str, content: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read() != content.encode("utf-8")
    except OSError:
        return True


def _write(path: str, content: str) -> None:
    with atomic_output(path) as fd:
        data = content.encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, 0o644)
