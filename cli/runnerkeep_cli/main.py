"""Entry point: argument parsing, dispatch to the command groups, errors to exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from runnerkeep import __version__
from runnerkeep.errors import EXIT_CODES, EXIT_FAILURE, RunnerkeepError

from runnerkeep_cli.options import common_options
from runnerkeep_cli.output import emit

# Command group -> the module that defines it. Only the group being run is imported (the
# others pull in the whole core: ~0.1 s of every hook's and restore's start-up).
GROUPS = {
    "cache": "runnerkeep_cli.commands_cache",
    "cleanup": "runnerkeep_cli.commands_cleanup",
    "disk": "runnerkeep_cli.commands_disk",
    "self-check": "runnerkeep_cli.commands_host",
}

DESCRIPTION = """\
runnerkeep keeps self-hosted CI runners healthy: a verified Docker image cache,
staged disk cleanup, and disk budgets with monitoring.
"""


def exit_code_help() -> str:
    lines = ["exit codes:"]
    lines += [f"  {code}  {meaning}" for code, meaning in sorted(EXIT_CODES.items())]
    return "\n".join(lines)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that command group (the others are unused)."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="runnerkeep",
        description=DESCRIPTION,
        epilog=exit_code_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"runnerkeep {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    groups.required = True
    for name, module in GROUPS.items():
        if only is None or name == only:
            importlib.import_module(module).register(groups, common, exit_code_help())
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in GROUPS else None)
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        result = args.handler(args)
    except RunnerkeepError as exc:
        return report_error(str(exc), exc.exit_code, as_json)
    except KeyboardInterrupt:
        return report_error("interrupted", 130, as_json)
    except OSError as exc:
        # An OSError that reached here was not anticipated by the core: name the file and errno.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return report_error(f"{exc.strerror or exc}{where}", EXIT_FAILURE, as_json)
    emit(result, as_json)
    return result.exit_code


def report_error(message: str, code: int, as_json: bool) -> int:
    if as_json:
        json.dump({"error": message, "exit_code": code}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    print(f"runnerkeep: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
