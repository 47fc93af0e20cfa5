"""The one job record format (runnerkeep.jobs) that the job lock and the job-peak history share."""

from __future__ import annotations

import os
import time

import pytest
from runnerkeep import jobs
from runnerkeep.cleanup import lock
from runnerkeep.disk import history
from runnerkeep.errors import ConfigError


def test_a_new_record_of_a_living_process_is_a_running_job():
    record = jobs.new_record("j-1", os.getpid())
    assert jobs.valid_record(record) == record
    assert record["pid_start"]
    assert jobs.stale_reason(record, jobs.DEFAULT_MAX_AGE, time.time()) is None
    # The job lock writes exactly this record.
    assert lock.new_record is jobs.new_record


def test_clock_skew_and_max_age_are_one_rule_for_locks_and_done_records(tmp_path):
    now = time.time()
    record = jobs.new_record("j-1", os.getpid(), now + jobs.CLOCK_SKEW + 1)
    assert jobs.stale_reason(record, jobs.DEFAULT_MAX_AGE, now) == "started in the future"
    assert history.CLOCK_SKEW == jobs.CLOCK_SKEW
    assert jobs.max_age_of({}) == jobs.DEFAULT_MAX_AGE == 24 * 3600.0
    assert jobs.max_age_of({"cleanup": {"lock_max_age": "1h"}}) == 3600.0
    with pytest.raises(ConfigError, match=r"cleanup\.lock_max_age"):
        jobs.max_age_of({"cleanup": {"lock_max_age": "soon"}})


def test_a_forged_record_is_not_a_job():
    assert jobs.valid_record({"job_id": True, "pid": 1, "started": 1.0}) is None
    assert jobs.valid_record({"job_id": "x", "pid": "1", "started": 1.0}) is None
    no_start = {"job_id": "x", "pid": os.getpid(), "pid_start": None, "started": time.time()}
    assert jobs.stale_reason(no_start, 3600, time.time()) == (
        "cannot be checked: no process start time"
    )


def test_the_built_in_max_age_is_the_configured_default():
    from runnerkeep.cleanup.catalog import SECTION_DEFAULTS
    from runnerkeep.units import parse_duration

    assert parse_duration(SECTION_DEFAULTS["lock_max_age"], "x") == jobs.DEFAULT_MAX_AGE
    assert jobs.max_age_of({"cleanup": dict(SECTION_DEFAULTS)}) == jobs.DEFAULT_MAX_AGE
