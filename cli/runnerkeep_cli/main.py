"""Entry point: argument parsing, dispatch to the command groups, errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import traceback

from runnerkeep import __version__
from runnerkeep.errors import EXIT_CODES, EXIT_FAILURE, RunnerkeepError
from runnerkeep.textutil import escape_text

from runnerkeep_cli.options import common_options
from runnerkeep_cli.output import emit

# Command group -> the module that defines it. Only the group being run is imported (the
# others pull in the whole core: ~0.1 s of every hook's and restore's start-up).
GROUPS = {
    "admission": "runnerkeep_cli.commands_admission",
    "cache": "runnerkeep_cli.commands_cache",
    "cleanup": "runnerkeep_cli.commands_cleanup",
    "disk": "runnerkeep_cli.commands_disk",
    "fleet-facts": "runnerkeep_cli.commands_fleet",
    "self-check": "runnerkeep_cli.commands_host",
}

DEBUG_ENV = "RUNNERKEEP_DEBUG"
# 128 + SIGPIPE: what a shell reports for a command whose reader went away (`... | head`).
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130

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
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"print the Python traceback of an internal error (also ${DEBUG_ENV}=1)",
    )
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    groups.required = True
    for name, module in GROUPS.items():
        if only is None or name == only:
            importlib.import_module(module).register(groups, common, exit_code_help())
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; no exception leaves this function except argparse's SystemExit."""
    _tolerant_streams()
    argv = sys.argv[1:] if argv is None else argv
    debug = debug_requested(argv)
    try:
        code = _run(argv)
        _flush(sys.stdout)
    except SystemExit:
        _flush_quietly()
        raise
    except BrokenPipeError:
        return _broken_pipe()
    except KeyboardInterrupt:
        return _safe_report("interrupted", EXIT_INTERRUPTED, _words(argv, "--json"))
    except Exception as exc:  # the guard: every failure becomes one line, never a traceback
        if debug:
            traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc}"
        if not debug:
            message += " (run again with --debug for the traceback)"
        return _safe_report(message, EXIT_FAILURE, _words(argv, "--json"))
    return code


def _run(argv: list[str]) -> int:
    parser = build_parser(argv[0] if argv and argv[0] in GROUPS else None)
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        result = args.handler(args)
    except BrokenPipeError:
        raise
    except RunnerkeepError as exc:
        return report_error(str(exc), exc.exit_code, as_json)
    except KeyboardInterrupt:
        return report_error("interrupted", EXIT_INTERRUPTED, as_json)
    except OSError as exc:
        # An OSError that reached here was not anticipated by the core: name the file and errno.
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return report_error(f"{exc.strerror or exc}{where}", EXIT_FAILURE, as_json)
    emit(result, as_json)
    return result.exit_code


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` anywhere before ``--`` (global or after a command), or $RUNNERKEEP_DEBUG=1.

    Read from argv rather than from parsed arguments so that it also covers failures before
    or during parsing, and a subcommand's default cannot hide a global ``--debug``.
    """
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return _words(argv, "--debug")


def _words(argv: list[str], option: str) -> bool:
    """Whether ``option`` was given (before ``--``, after which words are operands)."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return option in words


def _tolerant_streams() -> None:
    """Names that are not valid UTF-8 (surrogate-escaped) or not encodable in the locale are
    printed as backslash escapes instead of raising UnicodeEncodeError half-way through."""
    for stream in (sys.stdout, sys.stderr):
        # A stream a caller replaced with something that is not a text file stays as given.
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.reconfigure(errors="backslashreplace")


def _flush(stream) -> None:
    if stream is not None:
        stream.flush()


def _flush_quietly() -> None:
    try:
        _flush(sys.stdout)
    except BrokenPipeError:
        _broken_pipe()
    except (OSError, ValueError):
        pass


def _broken_pipe() -> int:
    """The reader of stdout went away: stop quietly. Pointing stdout at /dev/null keeps the
    interpreter's final flush from failing again and printing "Exception ignored"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_BROKEN_PIPE


def _safe_report(message: str, code: int, as_json: bool) -> int:
    try:
        return report_error(message, code, as_json)
    except BrokenPipeError:
        return _broken_pipe()


def report_error(message: str, code: int, as_json: bool) -> int:
    if as_json:
        json.dump({"error": message, "exit_code": code}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    # Messages carry paths and names a CI job may have chosen: one escaped line, always.
    print(f"runnerkeep: error: {escape_text(message)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
