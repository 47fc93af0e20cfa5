"""``runnerkeep fleet-facts``: everything the fleet report needs from this host, in one call."""

from __future__ import annotations

import argparse

from runnerkeep.config import load_config
from runnerkeep.errors import EXIT_OK
from runnerkeep.textutil import escape_text
from runnerkeep.units import format_size

from runnerkeep_cli.output import CommandResult, table

DESCRIPTION = """\
Everything playbooks/fleet_report.yml gathers from a runner, in one read-only pass: disk
report (without the largest-dirs walk), budget and watermarks, the watch's state, cache size
and entries, job peaks, last cleanup, cache corruptions and the drain state. A part that
cannot be read is reported as an error of its own; the others are still there.
"""


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    parser = groups.add_parser(
        "fleet-facts",
        parents=[common],
        help="this host's facts for the fleet report (use --json)",
        description=DESCRIPTION,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--no-docker", action="store_true", help="skip 'docker system df'")
    parser.set_defaults(handler=fleet_facts)


def fleet_facts(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.fleet.host_facts import gather_host_facts

    facts = gather_host_facts(load_config(args.config), include_docker=not args.no_docker)
    return CommandResult(facts, facts_text(facts), EXIT_OK)


def facts_text(facts: dict) -> str:
    """A short human summary; the JSON is what the fleet report reads."""
    budget = facts.get("budget") or {}
    cache = facts.get("cache") or {}
    drain = facts.get("drain")
    rows = [
        ["free", _size(budget.get("free_bytes")) + _on(budget.get("path"))],
        ["warning below", _size(budget.get("warning_free_bytes"))],
        ["cache", f"{_size(cache.get('disk_bytes'))} of {_size(budget.get('cache_quota_bytes'))}"],
        ["watch state", str((facts.get("watch") or {}).get("state", "n/a"))],
        ["drained", "n/a" if not drain else str(drain.get("drained", "n/a"))],
    ]
    errors = [
        f"{part}: {value['error']}"
        for part, value in facts.items()
        if isinstance(value, dict) and isinstance(value.get("error"), str)
    ]
    text = table(rows, ["fact", "value"])
    return text + "".join(f"\nerror: {escape_text(e)}" for e in errors)


def _on(path) -> str:
    return f" on {escape_text(path)}" if isinstance(path, str) else ""


def _size(value) -> str:
    return format_size(value) if isinstance(value, int) and not isinstance(value, bool) else "n/a"
