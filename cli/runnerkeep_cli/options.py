"""Options every command takes: --json and --config."""

from __future__ import annotations

import argparse


def common_options(only_when_given: bool = False) -> argparse.ArgumentParser:
    """A parent parser with the common options.

    ``only_when_given`` is for subcommands of a command that takes the options itself: their
    defaults are SUPPRESS, so ``cleanup --json status`` keeps the ``--json`` given first.
    """
    default = argparse.SUPPRESS if only_when_given else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if only_when_given else False,
        help="print a machine-readable JSON report on stdout",
    )
    common.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="config file (default: $RUNNERKEEP_CONFIG or /etc/runnerkeep/config.json)",
    )
    return common
