"""The record of what one host_layout call changed (or would change, in check mode)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import RunnerkeepError

SYSTEMD_UNIT_DIR = "/etc/systemd/system"


def printable(path: str) -> str:
    """``path`` as text a report can carry: a name a job wrote need not be UTF-8 (its bytes
    are shown as \\xNN escapes)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


class LayoutError(RunnerkeepError):
    """The host is not in a state the call may fix on its own; the message says what to do."""


class Changes:
    """Per path, what changed; the paths whose content changed; the diffs asked for."""

    def __init__(self, check_mode: bool, want_diff: bool) -> None:
        self.check_mode = check_mode
        self.want_diff = want_diff
        self.by_path: dict[str, list[str]] = {}
        self.content_changed: set[str] = set()
        self.diffs: list[dict[str, Any]] = []

    def note(self, path: str, what: str) -> None:
        self.by_path.setdefault(printable(path), []).append(printable(what))

    def note_content(self, path: str) -> None:
        """A file was written, created or removed: units restart on it, systemd reloads."""
        self.content_changed.add(path)

    def diff(self, path: str, before: str, after: str) -> None:
        if self.want_diff:
            name = printable(path)
            self.diffs.append(
                {"before_header": name, "after_header": name, "before": before, "after": after}
            )

    @property
    def changed(self) -> bool:
        return bool(self.by_path)

    def unit_files_changed(self) -> bool:
        return any(p.startswith(SYSTEMD_UNIT_DIR + "/") for p in self.content_changed)

    def as_list(self) -> list[dict[str, Any]]:
        return [{"path": p, "changes": c} for p, c in self.by_path.items()]
