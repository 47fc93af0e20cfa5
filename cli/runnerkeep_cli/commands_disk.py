"""`runnerkeep disk ...` commands."""

from __future__ import annotations

import argparse


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    parser = groups.add_parser(
        "disk",
        help="disk commands",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    sub.required = True
