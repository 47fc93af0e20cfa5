"""verify_store with max_duration is the scrub; without it, the full verify is unchanged and
leaves no scrub state behind."""

from __future__ import annotations

import os

import pytest
from cachetest_helpers import sha
from runnerkeep.cache import Store, verify_store
from runnerkeep.cache.scrub import STATE_FILE, STATUS_FILE, read_scrub_status
from runnerkeep.errors import ConfigError


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    store.ensure()
    for size in (100, 200, 300):
        data = os.urandom(size)
        with open(store.blob_path(sha(data)), "wb") as handle:
            handle.write(data)
    return store


def test_max_duration_runs_the_scrub(store):
    report = verify_store(store, max_duration=3600, scrub_period=86400, workers=1)
    assert report["scrub"] and report["ok"]
    # A one-day period with the default one-day gap: every blob is due on the first run.
    assert report["blobs_checked"] == 3 and report["bytes_checked"] == 600
    assert read_scrub_status(store.root)["blobs_verified_total"] == 3


def test_max_duration_with_a_key_is_refused(store):
    with pytest.raises(ConfigError, match="takes no --key"):
        verify_store(store, "app", max_duration=60)
    assert not os.path.exists(os.path.join(store.root, STATE_FILE))


def test_the_full_verify_leaves_no_scrub_state(store):
    report = verify_store(store, repair=True)
    assert "scrub" not in report and report["blobs_checked"] == 3
    for name in (STATE_FILE, STATUS_FILE):
        assert not os.path.exists(os.path.join(store.root, name))
