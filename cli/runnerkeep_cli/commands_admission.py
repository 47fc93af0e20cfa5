"""``runnerkeep admission``: refuse a job the runner cannot fit, drain, come back.

    admission check --job-id ID     the job-start hook (the CI user): ask the root-side service;
                                    exit 4 with one line when the job cannot fit, 0 otherwise
    admission status                the drain record and the admission settings
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
        state = f"DRAINED for {minutes} min: {record['reason']}"
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
