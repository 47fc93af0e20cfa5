"""What a command hands back to ``main``: data for ``--json``, text for people, an exit code."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from runnerkeep.textutil import neutralize_controls, table

__all__ = ["CommandResult", "emit", "table"]


@dataclass
class CommandResult:
    data: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    exit_code: int = 0


def emit(result: CommandResult, as_json: bool) -> None:
    if as_json:
        json.dump(result.data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif result.text:
        text = neutralize_controls(result.text)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
