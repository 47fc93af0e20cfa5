"""`runnerkeep disk ...` commands: report, history, budget, watch, job-start, job-end."""

from __future__ import annotations

import argparse
import json
import sys
import time

from runnerkeep.config import load_config, state_dir_of
from runnerkeep.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError, RunnerkeepError
from runnerkeep.secrets import redact_text
from runnerkeep.spool import spool_dir_of
from runnerkeep.textutil import escape_text
from runnerkeep.units import format_size, parse_duration

from runnerkeep_cli.options import add_command, add_group
from runnerkeep_cli.output import CommandResult, table

DESCRIPTION = """\
Disk budget and monitoring. 'budget' prints the arithmetic (capacity, job peaks, cache,
reserve -> cache quota, cleanup stage targets, watermarks); 'watch' runs one monitoring cycle
(metrics textfile, alerts on state changes, emergency cleanup), or keeps running with --loop
on hosts without systemd. Job hooks call 'job-start' and 'job-end' to record disk peaks.
"""


def register(groups, common: argparse.ArgumentParser, epilog: str) -> None:
    sub = add_group(groups, "disk", "disk report, job peaks, budget and watch", DESCRIPTION, epilog)

    def add(name: str, help_text: str, handler) -> argparse.ArgumentParser:
        return add_command(
            sub,
            name,
            handler,
            help_text,
            parents=[common],
            epilog=epilog,
            description=help_text,
        )

    cmd = add(
        "report",
        "filesystems (size, free bytes/inodes), Docker usage by kind, cache size, largest dirs",
        disk_report,
    )
    cmd.add_argument("--no-docker", action="store_true", help="skip 'docker system df'")
    cmd.add_argument("--no-largest", action="store_true", help="skip the largest-dirs walk")
    cmd.add_argument(
        "--docker-details",
        action="store_true",
        help="also list the largest images, containers and volumes ('docker system df -v')",
    )

    cmd = add("history", "recorded job peaks (newest last) and jobs still running", disk_history)
    cmd.add_argument("--limit", type=int, default=20, metavar="N", help="show the last N jobs")

    add("budget", "the disk budget with its arithmetic in words", disk_budget)

    cmd = add(
        "watch",
        "one watch cycle: metrics, alerts on state change, emergency cleanup",
        disk_watch,
    )
    cmd.add_argument("--loop", action="store_true", help="repeat every --interval until stopped")
    cmd.add_argument(
        "--interval", default="60s", metavar="DURATION", help="time between cycles with --loop"
    )
    cmd.add_argument(
        "--count", type=int, default=None, metavar="N", help="with --loop: stop after N cycles"
    )
    cmd.add_argument(
        "--check",
        action="store_true",
        help=f"exit {EXIT_CHECK_FAILED} when the state is not ok or the disk budget cannot be "
        "computed (default: 0 after a cycle)",
    )

    cmd = add(
        "job-start", "record a job's start and start its background peak sampler", disk_job_start
    )
    cmd.add_argument("--job-id", required=True, metavar="ID")
    cmd.add_argument(
        "--no-sampler", action="store_true", help="record the start only (no background sampler)"
    )

    cmd = add("job-end", "stop the job's sampler and record start/peak/end", disk_job_end)
    cmd.add_argument("--job-id", required=True, metavar="ID")


def disk_report(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.disk import usage_report

    data = usage_report.disk_report(
        load_config(args.config),
        include_docker=not args.no_docker,
        include_largest=not args.no_largest,
        docker_verbose=args.docker_details,
    )
    return CommandResult(data, usage_report.render_report(data), EXIT_OK)


def disk_history(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.disk.history import read_history_report, running_jobs

    config = load_config(args.config)
    state_directory = state_dir_of(config)
    records, skipped = read_history_report(state_directory)
    shown = records[-args.limit :] if args.limit > 0 else records
    running = running_jobs(state_directory, spool_dir_of(config))
    rows = [_history_row(r) for r in shown]
    text = f"{len(records)} job(s) recorded in {state_directory}"
    if rows:
        text += "\n" + table(rows, ["start", "job", "took", "peak", "peak inodes", "left at end"])
    for job in running:
        who = f" (uid {job['uid']})" if job.get("uid") is not None else ""
        text += (
            f"\nrunning: {escape_text(job['job_id'])}{who} since {time.ctime(job['start_time'])}"
        )
    if skipped.damaged:
        text += "\nwarning: " + skipped.describe()
    data = {
        "state_dir": state_directory,
        "count": len(records),
        "jobs": shown,
        "running": running,
        "skipped_records": skipped.skipped,
    }
    return CommandResult(data, text, EXIT_OK)


def _history_row(record: dict) -> list[str]:
    """One table row; the reader guarantees the types, an older record may lack fields."""
    start = record.get("start_time")
    left = None
    if "end_used_bytes" in record and "start_used_bytes" in record:
        left = record["end_used_bytes"] - record["start_used_bytes"]
    took = record.get("duration_seconds")
    return [
        "?" if start is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(start)),
        str(record.get("job_id", "?")),
        "?" if took is None else f"{took:.0f}s",
        format_size(record["peak_bytes"]),
        f"{record.get('peak_inodes', 0):,}",
        "?" if left is None else format_size(left),
    ]


def disk_budget(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.disk.budget import current_budget

    result = current_budget(load_config(args.config))
    rows = [
        ["cache quota", format_size(result.cache_quota_bytes), ""],
        [
            "pre-stage target",
            format_size(result.pre_target_free_bytes),
            f"{result.pre_target_free_inodes:,}",
        ],
        [
            "post-stage target",
            format_size(result.post_target_free_bytes),
            f"{result.post_target_free_inodes:,}",
        ],
    ]
    for level, mark in result.watermarks().items():
        rows.append([f"{level} below", format_size(mark["bytes"]), f"{mark['inodes']:,}"])
    text = result.explain() + "\n\n" + table(rows, ["", "free bytes", "free inodes"])
    return CommandResult(result.as_dict(), text, EXIT_OK)


def _watch_text(result: dict) -> str:
    if result.get("skipped"):
        return f"skipped: {result['reason']}"
    line = f"disk state: {result['state']}"
    if result["changed"]:
        line += f" (was {result['previous']})"
    if result.get("free_bytes") is not None:
        line += f"; {format_size(result['free_bytes'])} free on {result['path']}"
    if result.get("budget_error"):
        line += (
            "; BUDGET ERROR: fallback watermarks"
            if result.get("free_bytes") is not None
            else "; BUDGET ERROR: nothing measured, state is the last one known"
        )
    lines = [line]
    for alert in result["alerts"]:
        hook = alert.get("webhook")
        status = "" if hook is None else (" [webhook ok]" if hook["ok"] else " [webhook FAILED]")
        lines.append(f"alert: {alert['message']}{status}")
    drain = result.get("drain") or {}
    if drain.get("action"):
        lines.append(f"drain: {drain['action']}")
    if result["metrics_file"]:
        lines.append(f"metrics: {result['metrics_file']}")
    lines += [f"error: {e}" for e in result["errors"]]
    return "\n".join(lines)


def _watch_cycle(config: dict) -> dict:
    """One watch cycle; its emergency step runs the cleanup core's stage (budget targets)."""
    from runnerkeep.admission import watch_drain
    from runnerkeep.disk.watch import run_watch
    from runnerkeep.wiring import run_cleanup, scrub_status

    return run_watch(
        config,
        cleanup_func=run_cleanup,
        drain_func=watch_drain,
        scrub_status=scrub_status(config),
    )


def disk_watch(args: argparse.Namespace) -> CommandResult:
    if not args.loop:
        result = _watch_cycle(load_config(args.config))
        return CommandResult(result, _watch_text(result), _check_code(args, result))
    interval = parse_duration(args.interval, "--interval")
    if interval <= 0:
        raise ConfigError("--interval must be greater than 0")
    cycles = 0
    result: dict = {}
    while args.count is None or cycles < args.count:
        started = time.monotonic()
        try:
            # Re-read the config every cycle: a role may have changed it.
            result = _watch_cycle(load_config(args.config))
            text = _watch_text(result)
        except (RunnerkeepError, OSError) as exc:
            # A bad config or a failed cycle is reported; the loop keeps watching.
            result = {"error": _redacted(exc)}
            text = f"error: {result['error']}"
        except Exception as exc:
            # A bug in one cycle must not end the watching: one line, and the next cycle.
            result = {"error": f"{exc.__class__.__name__}: {_redacted(exc)}"}
            text = f"error: unexpected {result['error']} (run once with --debug for details)"
        cycles += 1
        if args.json:
            # One JSON object per line and cycle, so a supervisor's log stays machine-readable.
            print(json.dumps(result, sort_keys=True, default=str), flush=True)
        else:
            print(time.strftime("%Y-%m-%dT%H:%M:%S ") + text.replace("\n", "\n  "), flush=True)
        if args.count is not None and cycles >= args.count:
            break
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    sys.stdout.flush()
    if args.json:
        return CommandResult({"cycles": cycles, "last_state": result.get("state")}, "", EXIT_OK)
    return CommandResult({}, f"{cycles} watch cycle(s) run", EXIT_OK)


def _redacted(exc: BaseException) -> str:
    """An error of a watch cycle without the webhook URL's secrets (the journal reads it)."""
    from runnerkeep.disk import watch as watch_mod

    return redact_text(exc, watch_mod.last_secrets)


def _check_code(args: argparse.Namespace, result: dict) -> int:
    """--check: a state that is not ok, or a budget that failed, is a failed check."""
    if not args.check:
        return EXIT_OK
    if result.get("state") not in ("ok", None) or result.get("budget_error"):
        return EXIT_CHECK_FAILED
    return EXIT_OK


def disk_job_start(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.disk.history import job_start

    result = job_start(load_config(args.config), args.job_id, spawn=not args.no_sampler)
    job = result["job"]
    text = (
        f"job {escape_text(args.job_id)}: {format_size(job['start_used_bytes'])} used on "
        f"{escape_text(job['path'])}"
    )
    if result["sampler_pid"]:
        text += f"; peak sampler pid {result['sampler_pid']}"
    return CommandResult(result, text, EXIT_OK)


def disk_job_end(args: argparse.Namespace) -> CommandResult:
    from runnerkeep.disk.history import job_end

    record = job_end(load_config(args.config), args.job_id)
    if record.get("recorded") is False:
        print(f"runnerkeep: warning: {record['warning']}", file=sys.stderr)
        return CommandResult(record, "", EXIT_OK)
    text = (
        f"job {escape_text(args.job_id)}: peak +{format_size(record['peak_bytes'])} "
        f"(+{record['peak_inodes']:,} inodes) over {record['duration_seconds']:.0f}s; "
        f"{format_size(record['end_used_bytes'] - record['start_used_bytes'])} left at the end"
    )
    if record.get("spooled"):
        text += "; left in the spool for the disk watch"
    return CommandResult(record, text, EXIT_OK)
