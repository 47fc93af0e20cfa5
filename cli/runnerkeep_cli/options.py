"""Options every command takes: --json, --config and --debug."""

from __future__ import annotations

import argparse
from typing import Any, Callable


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
    # main() reads --debug from argv itself (it must also cover failures before parsing), so
    # the option is only accepted here, never stored: SUPPRESS keeps a global --debug intact.
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the Python traceback of an internal error (also $RUNNERKEEP_DEBUG=1)",
    )
    return common


def add_group(groups: Any, name: str, help_text: str, description: str, epilog: str) -> Any:
    """A command group whose subcommand is required; returns its subparsers action (for
    ``add_command``)."""
    parser = groups.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
    return sub


def add_command(
    sub: Any,
    name: str,
    handler: Callable[[argparse.Namespace], Any],
    help_text: str,
    *,
    parents: list[argparse.ArgumentParser],
    epilog: str,
    description: str | None = None,
    hidden: bool = False,
) -> argparse.ArgumentParser:
    """Add one command (``sub`` is a subparsers action) the way every group adds its commands:
    its parents (the common options first), help, epilog as written, and the handler main()
    calls. ``hidden`` leaves an internal command out of the listing."""
    listed = {} if hidden else {"help": help_text}
    parser = sub.add_parser(
        name,
        parents=parents,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **listed,
    )
    parser.set_defaults(handler=handler)
    return parser
