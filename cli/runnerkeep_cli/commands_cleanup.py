"""`runnerkeep cleanup ...` commands.

    runnerkeep cleanup --stage post [--target-free 20%] [--dry-run] [--json]   (the short form)
    runnerkeep cleanup run --stage pre|post|emergency [options]               (the same, explicit)
    runnerkeep cleanup job-start [--job-id ID] [--pid PID] [--no-pre]         (runner hook)
    runnerkeep cleanup job-end [--job-id ID] [--no-post]                      (runner hook)
    runnerkeep cleanup status                                                  (job locks)
    runnerkeep cleanup list-cleaners

``cleanup`` itself takes the run options and runs a stage when no subcommand is given, so the
issue's literal ``runnerkeep cleanup --stage post`` works; ``run`` exists for scripts that want
the explicit verb. On the ``run`` subparser the options default to SUPPRESS so values given
before the subcommand are not overwritten by the subparser's defaults.
"""

from __future__ import annotations

import argparse
import os
import time

from runnerkeep.cleanup import (
    active_jobs,
    list_cleaners,
    release_job_lock,
    take_job_lock,
    wait_for_jobs,
)
from runnerkeep.cleanup.catalog import STAGES, TOOLCHAINS
from runnerkeep.config import load_config, state_dir_of
from runnerkeep.errors import EXIT_LOCKED, EXIT_OK, ConfigError, LockHeldError
from runnerkeep.spool import spool_dir_of
from runnerkeep.textutil import escape_text
from runnerkeep.units import parse_duration
from runnerkeep.wiring import run_cleanup

from runnerkeep_cli.options import add_command, common_options
from runnerkeep_cli.output import CommandResult, table

JOB_ID_ENV = ("RUNNERKEEP_JOB_ID", "CI_JOB_ID", "GITHUB_RUN_ID")

RUN_EPILOG = """\
stages (each runs its cleaners cheapest-first and stops once the targets are met):
  pre        cheap and safe: temp, job leftovers, stopped containers, dangling images
  post       deep: also logs, package caches, build cache, least-recently-used images
  emergency  every enabled cleaner until the target is met

targets are per filesystem: --target-free 20G or 15%, --target-inodes 100000 or 10%;
defaults come from cleanup.targets.<stage> in the config file. --all ignores targets.
with a subcommand, put options after it: runnerkeep cleanup run --stage post --json
"""


def _add_run_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--stage", choices=STAGES, default=default(None), help="the stage to run (required)"
    )
    parser.add_argument(
        "--target-free",
        metavar="SIZE|PCT",
        default=default(None),
        help="free bytes wanted on each filesystem concerned (e.g. 20G, 15%%)",
    )
    parser.add_argument(
        "--target-inodes",
        metavar="N|PCT",
        default=default(None),
        help="free inodes wanted on each filesystem concerned (e.g. 200000, 10%%)",
    )
    parser.add_argument(
        "--path",
        dest="paths",
        action="append",
        metavar="MOUNT",
        default=default(None),
        help="only the filesystem holding MOUNT (repeatable); default: all the stage touches",
    )
    parser.add_argument(
        "--cleaner",
        dest="cleaner_names",
        action="append",
        metavar="NAME",
        default=default(None),
        help="run only this cleaner (repeatable; see list-cleaners)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=default(False),
        help="list exactly what would be removed, remove nothing",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        default=default(False),
        help="run post/emergency even while a CI job holds the runner lock",
    )
    parser.add_argument(
        "--all",
        dest="run_all",
        action="store_true",
        default=default(False),
        help="run every cleaner of the stage fully, ignoring targets",
    )
    parser.add_argument(
        "--wait-lock",
        metavar="DURATION",
        default=default(None),
        help="wait up to DURATION (e.g. 6h) for running jobs to end before starting",
    )
    parser.add_argument(
        "--show-items",
        type=int,
        metavar="N",
        default=default(20),
        help="dry run: list up to N items in the text report (default 20; --json lists all)",
    )


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    parser = groups.add_parser(
        "cleanup",
        parents=[common],
        help="staged disk cleanup (pre/post/emergency), job lock hooks",
        description="Run a cleanup stage (runnerkeep cleanup --stage post), or a subcommand.",
        epilog=RUN_EPILOG + "\n" + epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_options(parser, suppress=False)
    parser.set_defaults(handler=cleanup_run)
    sub = parser.add_subparsers(dest="command", metavar="[SUBCOMMAND]")
    sub.required = False
    # 'cleanup' takes the common options itself, so a subcommand's own defaults must not
    # overwrite what was given before it (`cleanup --json status`).
    common = common_options(only_when_given=True)

    run = add_command(
        sub,
        "run",
        cleanup_run,
        "run a stage (same as the options on 'cleanup' itself)",
        parents=[common],
        epilog=RUN_EPILOG + "\n" + epilog,
    )
    _add_run_options(run, suppress=True)

    start = add_command(
        sub,
        "job-start",
        cleanup_job_start,
        "runner hook at job start: take the job lock, then run the pre stage",
        parents=[common],
        epilog=epilog,
    )
    _add_job_options(start)
    start.add_argument(
        "--pid",
        type=int,
        help="a process that lives as long as the job (hooks pass $PPID); default: our parent",
    )
    start.add_argument("--no-pre", action="store_true", help="take the lock only")

    end = add_command(
        sub,
        "job-end",
        cleanup_job_end,
        "runner hook at job end: release the job lock, then run the post stage",
        parents=[common],
        epilog=epilog,
    )
    _add_job_options(end)
    end.add_argument("--no-post", action="store_true", help="release the lock only")

    add_command(
        sub,
        "status",
        cleanup_status,
        "show the job locks (exit 7 when a job holds the lock)",
        parents=[common],
        epilog=epilog,
    )

    add_command(
        sub,
        "list-cleaners",
        cleanup_list,
        "list the cleaners with their effective settings, in cost order",
        parents=[common],
        epilog=epilog,
    )


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job-id",
        help="job identifier (default: $RUNNERKEEP_JOB_ID, $CI_JOB_ID or $GITHUB_RUN_ID)",
    )
    parser.add_argument("--target-free", metavar="SIZE|PCT", help="target for the stage run")
    parser.add_argument("--target-inodes", metavar="N|PCT", help="inode target for the stage")


def _job_id(args: argparse.Namespace) -> str:
    if args.job_id:
        return args.job_id
    for name in JOB_ID_ENV:
        if os.environ.get(name):
            value = os.environ[name]
            if name == "GITHUB_RUN_ID" and os.environ.get("GITHUB_JOB"):
                value += "-" + os.environ["GITHUB_JOB"]
            return value
    raise ConfigError("no job id: pass --job-id or set RUNNERKEEP_JOB_ID (or CI_JOB_ID)")


def _run_stage(args: argparse.Namespace, config: dict, stage: str, **extra) -> CommandResult:
    report = run_cleanup(
        stage,
        config,
        target_free_bytes=_int_or_str(getattr(args, "target_free", None)),
        target_free_inodes=_int_or_str(getattr(args, "target_inodes", None)),
        paths=getattr(args, "paths", None),
        dry_run=getattr(args, "dry_run", False),
        force=getattr(args, "force", False),
        run_all=getattr(args, "run_all", False),
        cleaner_names=getattr(args, "cleaner_names", None),
        **extra,
    )
    text = report.text(show_items=getattr(args, "show_items", 20))
    return CommandResult(report.as_dict(), text, EXIT_OK)


def _int_or_str(value):
    if value is None:
        return None
    return int(value) if str(value).isdigit() else value


def cleanup_run(args: argparse.Namespace) -> CommandResult:
    stage = getattr(args, "stage", None)
    if not stage:
        raise ConfigError(
            "cleanup needs --stage pre|post|emergency (or a subcommand: run, job-start, "
            "job-end, status, list-cleaners)"
        )
    config = load_config(args.config)
    wait = getattr(args, "wait_lock", None)
    if wait and not getattr(args, "force", False) and not getattr(args, "dry_run", False):
        state_dir = state_dir_of(config)
        spool_dir = spool_dir_of(config)
        if not wait_for_jobs(state_dir, parse_duration(wait, "--wait-lock"), spool_dir=spool_dir):
            live, _ = active_jobs(state_dir, spool_dir=spool_dir)
            jobs = ", ".join(escape_text(job.get("job_id")) for job in live)
            raise LockHeldError(f"CI job(s) {jobs} still hold the runner lock after {wait}")
    return _run_stage(args, config, stage)


def cleanup_job_start(args: argparse.Namespace) -> CommandResult:
    config = load_config(args.config)
    job_id = _job_id(args)
    record = take_job_lock(state_dir_of(config), job_id, args.pid, spool_dir=spool_dir_of(config))
    data = {"job_id": job_id, "lock": record}
    if record.get("recorded") is False:  # the core has said why, on stderr
        text = f"job {escape_text(job_id)}: job lock not recorded"
    else:
        text = f"job {escape_text(job_id)} holds the runner lock (pid {record['pid']})"
    if args.no_pre:
        return CommandResult(data, text, EXIT_OK)
    result = _run_stage(args, config, "pre")
    result.data = {**data, "report": result.data}
    result.text = text + "\n" + result.text
    return result


def cleanup_job_end(args: argparse.Namespace) -> CommandResult:
    config = load_config(args.config)
    job_id = _job_id(args)
    record = release_job_lock(state_dir_of(config), job_id, spool_dir=spool_dir_of(config))
    released = record is not None and record.get("released") is not False
    data = {"job_id": job_id, "released": released}
    if released:
        text = f"job {escape_text(job_id)} released the runner lock"
    elif record is not None:  # the core has said why, on stderr
        text = f"job {escape_text(job_id)}: the runner lock could not be removed (stale later)"
    else:
        text = f"job {escape_text(job_id)} held no lock (nothing to release)"
    if args.no_post:
        return CommandResult(data, text, EXIT_OK)
    live, _ = active_jobs(state_dir_of(config), spool_dir=spool_dir_of(config))
    if live:
        data["post"] = "skipped: other jobs hold the lock"
        text += f"\npost stage skipped: {len(live)} other job(s) still running"
        return CommandResult(data, text, EXIT_OK)
    result = _run_stage(args, config, "post")
    result.data = {**data, "report": result.data}
    result.text = text + "\n" + result.text
    return result


def cleanup_status(args: argparse.Namespace) -> CommandResult:
    config = load_config(args.config)
    live, stale = active_jobs(state_dir_of(config), spool_dir=spool_dir_of(config))
    now = time.time()
    rows = [
        [
            str(job.get("job_id")),
            str(job.get("pid")),
            f"{now - float(job.get('started', now)):.0f}s",
            "root" if job.get("uid") is None else f"spool (uid {job['uid']})",
        ]
        for job in live
    ]
    text = (
        table(rows, ["job", "pid", "running for", "recorded by"])
        if rows
        else "no job holds the lock"
    )
    for job in stale:
        text += (
            f"\nremoved stale lock of job {escape_text(job.get('job_id'))}: "
            f"{escape_text(job.get('stale'))}"
        )
    data = {"busy": bool(live), "jobs": live, "stale_removed": stale}
    return CommandResult(data, text, EXIT_LOCKED if live else EXIT_OK)


def cleanup_list(args: argparse.Namespace) -> CommandResult:
    config = load_config(args.config)
    cleaners = list_cleaners(config)
    rows = []
    for cleaner in cleaners:
        where = cleaner.get("roots") or []
        if cleaner["kind"] == "toolchains":
            where = cleaner.get("items") or ["(none switched on)"]
        elif cleaner["kind"].startswith("docker"):
            where = ["docker engine"]
        rows.append(
            [
                cleaner["name"],
                cleaner["kind"],
                ",".join(cleaner.get("stages") or []),
                str(cleaner.get("cost")),
                "yes" if cleaner.get("enabled") else "no",
                str(cleaner.get("min_age", cleaner.get("max_size", ""))),
                " ".join(where)[:60],
            ]
        )
    text = table(rows, ["cleaner", "kind", "stages", "cost", "enabled", "age/size", "where"])
    text += "\n\ntoolchain catalog (cleanup.cleaners.toolchains.items): " + ", ".join(
        f"{name} ({entry['size_hint']})" for name, entry in sorted(TOOLCHAINS.items())
    )
    return CommandResult({"cleaners": cleaners, "toolchains": TOOLCHAINS}, text, EXIT_OK)
