"""``runnerkeep admission``: refuse a job the runner cannot fit, drain, come back.

    admission check --job-id ID     the job-start hook (the CI user): ask the root-side service;
                                    exit 4 with one line when the job cannot fit, 0 otherwise
    admission status                the drain record and the admission settings
    admission drain --reason TEXT   (root) drain this runner by hand; only undrain ends it
    admission undrain               (root) bring a drained runner back, whoever drained it
    admission serve-connection      (internal) one connection of runnerkeep-admission.socket

``check`` fails open: no service, a service that does not answer within ``admission.deadline``
(plus a margin), a bad config or a damaged drain record print one line on stderr and exit 0,
so the job runs. Refusing jobs is for a runner known to be short; a broken check must not
stop a fleet that has disk to spare.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

from runnerkeep.config import load_config, state_dir_of
from runnerkeep.errors import EXIT_NO_SPACE, EXIT_OK, RunnerkeepError
from runnerkeep.textutil import escape_text

from runnerkeep_cli.options import add_command, add_group
from runnerkeep_cli.output import CommandResult, table

DESCRIPTION = """\
Admission control: at job start, compare the job's need (the disk budget's job peak on top of
the reserve) with free bytes and inodes on the job's filesystems; when short, run the pre and
the emergency cleanup stage; when still short, fail the job with one line and drain the
runner (its agent's systemd unit is stopped after the job ends; the disk watch starts it
again once free space has stayed above the warning watermark for admission.settle_time).
"""

DRAIN_DESCRIPTION = """\
Drain this runner by hand (a disk to replace, a host to patch): from now on every job is
refused at start with the reason given, and the agent's unit (admission.agent_unit) is stopped
at once when no job runs, else by the disk watch once the running jobs end. The watch never
brings an operator's drain back and the fleet guard does not apply: `runnerkeep admission
undrain` ends it. Exit 0 when drained (or already), 1 with one line on an error.
"""


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    sub = add_group(groups, "admission", "refuse jobs that cannot fit; drain", DESCRIPTION, epilog)
    p = add_command(
        sub,
        "check",
        admission_check,
        "job-start hook: may this job run here? (exit 4: no)",
        parents=[common],
        epilog=epilog,
    )
    p.add_argument("--job-id", default="", help="the job's id (for the log)")
    p.add_argument("--socket", metavar="PATH", help="service socket (config admission.socket)")
    add_command(
        sub,
        "status",
        admission_status,
        "the drain record and the admission settings",
        parents=[common],
        epilog=epilog,
    )
    p = add_command(
        sub,
        "drain",
        admission_drain,
        "drain this runner by hand (maintenance): refuse jobs, stop the agent when idle",
        parents=[common],
        epilog=epilog,
        description=DRAIN_DESCRIPTION,
    )
    p.add_argument("--reason", required=True, help="why (shown to refused jobs and in reports)")
    p.add_argument("--check", action="store_true", help="say what would be done, change nothing")
    p = add_command(
        sub,
        "undrain",
        admission_undrain,
        "bring a drained runner back: start the agent, admit jobs again",
        parents=[common],
        epilog=epilog,
    )
    p.add_argument("--check", action="store_true", help="say what would be done, change nothing")
    add_command(
        sub,
        "serve-connection",
        admission_serve_connection,
        "(internal) serve one connection of runnerkeep-admission.socket on fd 0",
        parents=[common],
        epilog=epilog,
        hidden=True,
    )


def _fail_open(why: str) -> CommandResult:
    line = f"runnerkeep: admission check unavailable: {escape_text(why)}; the job runs"
    print(line, file=sys.stderr)
    return CommandResult({"admitted": None, "error": why}, "", EXIT_OK)


def admission_check(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.admission import admission_settings
    from runnerkeep.admission_service import ANSWER_MARGIN, Unreachable, ask

    try:
        config = load_config(args.config)
        settings = admission_settings(config)
    except RunnerkeepError as exc:
        return _fail_open(str(exc))
    if not settings["enabled"]:
        return CommandResult({"admitted": True, "line": "admission control is off"}, "")
    try:
        if os.geteuid() == 0:
            data = _admit_here(config, os.getpid())
        else:
            socket_path = args.socket or settings["socket"]
            data = ask(socket_path, args.job_id, settings["deadline"] + ANSWER_MARGIN)
    except Unreachable as exc:
        return _fail_open(str(exc))
    except RunnerkeepError as exc:
        return _fail_open(str(exc))
    line = escape_text(str(data.get("line") or ""))
    if data["admitted"]:
        if line:
            print(line, file=sys.stderr)
        return CommandResult(data, "", EXIT_OK)
    return CommandResult(data, line, EXIT_NO_SPACE)


def _admit_here(config: dict[str, Any], pid: int) -> dict[str, Any]:
    """Root's own check (no service needed), and the service's work for one peer."""
    from runnerkeep.admission import Tools, admit_locked, requester_pids
    from runnerkeep.cache.service import ancestry
    from runnerkeep.wiring import run_cleanup

    requester = requester_pids(ancestry(pid))
    return admit_locked(config, requester, Tools(run_cleanup=run_cleanup)).as_dict()


def admission_serve_connection(args: argparse.Namespace) -> CommandResult:
    """fd 0 is the connection (StandardInput=socket); nothing else may go to stdout."""
    from runnerkeep.admission_service import serve_connection

    sock = socket.socket(fileno=os.dup(0))
    try:
        # The config is read per request: a hook never gets an answer from an old config.
        serve_connection(sock, lambda pid, uid, job_id: _admit_here(load_config(args.config), pid))
    finally:
        sock.close()
    return CommandResult({}, "", EXIT_OK)


def admission_status(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.admission import admission_settings
    from runnerkeep.drain import read_drain

    config = load_config(args.config)
    settings = admission_settings(config)
    record = read_drain(state_dir_of(config))  # a damaged record: the error, exit 1
    data = {"drain": record, "settings": settings}
    if record is None:
        state = "not drained (never was)"
    elif record["drained"]:
        minutes = int((time.time() - record["since"]) // 60)
        by = " by an operator" if record["by"] == "operator" else ""
        state = f"DRAINED{by} for {minutes} min: {record['reason']}"
    else:
        state = f"not drained ({record['reason'] or 'never was'})"
    rows = [
        ["state", escape_text(state)],
        ["agent unit", str(settings["agent_unit"] or "(none: jobs refused, runner not drained)")],
        ["settle time", f"{settings['settle_time']:g} s"],
        ["fleet guard", _guard_text(settings)],
        ["socket", settings["socket"]],
    ]
    return CommandResult(data, table(rows, ["admission", "value"]), EXIT_OK)


def _guard_text(settings: dict[str, Any]) -> str:
    if settings["max_drained"] is None:
        return "off"
    return (
        f"at most {settings['max_drained']} runner(s) drained; "
        f"{settings['fleet_drained']} other(s) drained at the role's last count"
    )


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise RunnerkeepError(f"admission {what} changes root's drain record: run it as root")


def admission_drain(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.admission import drain_by_operator

    if not args.check:
        _require_root("drain")
    result = drain_by_operator(load_config(args.config), args.reason, check=args.check)
    return CommandResult(result, _operator_text(result, args.check), EXIT_OK)


def admission_undrain(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.admission import undrain_by_operator

    if not args.check:
        _require_root("undrain")
    result = undrain_by_operator(load_config(args.config), check=args.check)
    return CommandResult(result, _operator_text(result, args.check), EXIT_OK)


def _operator_text(result: dict[str, Any], check: bool) -> str:
    state = f"drained ({escape_text(result['reason'])})" if result["drained"] else "not drained"
    prefix = "check: " if check else ""
    return f"{prefix}{state}: {escape_text(str(result['action']))}"
