"""Errors raised by the core and the process exit codes they map to.

The exit codes are a contract with CI jobs and hooks (documented in ``runnerkeep --help``):
a job branches on them, e.g. ``runnerkeep cache restore ... || [ $? -eq 3 ] && rebuild``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CACHE_MISS = 3
EXIT_NO_SPACE = 4
EXIT_DOCKER_UNAVAILABLE = 5
EXIT_CHECK_FAILED = 6
EXIT_LOCKED = 7

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "the operation failed (the message says what and why)",
    EXIT_USAGE: "bad arguments or configuration",
    EXIT_CACHE_MISS: "cache miss: no entry for the key, or it was rejected as corrupt (rebuild)",
    EXIT_NO_SPACE: "not enough free space: nothing was written",
    EXIT_DOCKER_UNAVAILABLE: "the Docker engine does not answer",
    EXIT_CHECK_FAILED: "a check found problems (verify, self-check, watermark)",
    EXIT_LOCKED: "a CI job holds the runner lock (use --force to override)",
}


class RunnerkeepError(Exception):
    """Base of every error the core raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_FAILURE


class ConfigError(RunnerkeepError):
    """Bad arguments or configuration; the message names the setting and what is expected."""

    exit_code = EXIT_USAGE


class FreeSpaceError(RunnerkeepError):
    """A filesystem lacks the bytes an operation needs; raised before anything is written."""

    exit_code = EXIT_NO_SPACE


class DockerUnavailableError(RunnerkeepError):
    """The docker CLI is missing or the engine does not answer."""

    exit_code = EXIT_DOCKER_UNAVAILABLE


class DockerCommandError(RunnerkeepError):
    """A docker CLI command failed; the message carries its stderr."""

    exit_code = EXIT_FAILURE


class CacheMiss(RunnerkeepError):
    """No usable cache entry: a normal outcome, the job rebuilds."""

    exit_code = EXIT_CACHE_MISS


class LockHeldError(RunnerkeepError):
    """A CI job holds the runner lock."""

    exit_code = EXIT_LOCKED
