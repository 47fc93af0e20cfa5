"""Host-level commands: ``runnerkeep self-check``."""

from __future__ import annotations

import argparse

from runnerkeep.errors import EXIT_CHECK_FAILED, EXIT_OK
from runnerkeep.selfcheck import run_self_check

from runnerkeep_cli.options import add_command
from runnerkeep_cli.output import CommandResult, table


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    add_command(
        groups,
        "self-check",
        self_check,
        "check that this host can run runnerkeep (python, config, directories, Docker)",
        parents=[common],
        epilog=epilog,
    )


def self_check(args: argparse.Namespace) -> CommandResult:
    report = run_self_check(args.config)
    rows = [[c["name"], "ok" if c["ok"] else "FAIL", c["detail"]] for c in report["checks"]]
    text = table(rows, ["check", "result", "detail"])
    text += "\n" + ("all checks passed" if report["ok"] else "some checks FAILED")
    return CommandResult(report, text, EXIT_OK if report["ok"] else EXIT_CHECK_FAILED)
