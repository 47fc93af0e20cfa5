"""The cache scrub (cache verify --max-duration): rotation, resume, budgets, corruption, state,
the period guarantee, locks. Time is simulated (ScrubClock): hashing a blob advances the clock by
its size at a fixed rate; nothing sleeps."""

from __future__ import annotations

import fcntl
import json
import os
import random
import threading

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from runnerkeep.cache import Store, import_archive, prune_store
from runnerkeep.cache import scrub as scrub_mod
from runnerkeep.cache.scrub import (
    STATE_FILE,
    STATUS_FILE,
    ScrubClock,
    read_scrub_status,
    report_lines,
    scrub_store,
)
from runnerkeep.errors import ConfigError, LockHeldError

DAY = 86400.0
START = 1_800_000_000.0
RATE = 1000.0  # simulated hashing speed: bytes per second


class FakeClock(ScrubClock):
    """Wall and monotonic time that move only when told (hashing, sleeping, the test)."""

    def __init__(self, wall: float = START) -> None:
        self.now = wall
        self.mono = 0.0
        self.lock = threading.Lock()
        self.sleeps: list[float] = []
        super().__init__(monotonic=lambda: self.mono, wall=lambda: self.now, sleep=self._sleep)

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds
            self.mono += seconds

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


@pytest.fixture
def clock(monkeypatch):
    """A fake clock; hashing a blob takes size / RATE simulated seconds."""
    fake = FakeClock()
    real_hash = scrub_mod.hash_file
    hashed: list[str] = []

    def timed_hash(path):
        digest, size = real_hash(path)
        hashed.append("sha256:" + os.path.basename(path))
        fake.advance(size / RATE)
        return digest, size

    monkeypatch.setattr(scrub_mod, "hash_file", timed_hash)
    fake.hashed = hashed
    return fake


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    store.ensure()
    return store


def add_blob(store: Store, size: int = 1000, stored_at: float | None = None) -> str:
    data = os.urandom(size)
    digest = sha(data)
    path = store.blob_path(digest)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o444)
    if stored_at is not None:
        os.utime(path, (stored_at, stored_at))
    return digest


def state_of(store: Store) -> dict:
    with open(os.path.join(store.root, STATE_FILE)) as handle:
        return json.load(handle)


def verified_times(store: Store) -> dict[str, float]:
    return {"sha256:" + hex_: when for hex_, when in state_of(store)["blobs"].items()}


def scrub(store: Store, clock: FakeClock, budget: float, **kw):
    kw.setdefault("workers", 1)
    return scrub_store(store, max_duration=budget, clock=clock, **kw)


def rot(store: Store, digest: str) -> None:
    """Damage a blob in place, its mtime kept (rot does not touch it)."""
    path = store.blob_path(digest)
    before = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(10)
        handle.write(b"\xff\x00rot")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- rotation and resume -------------------------------------------------------------------
def test_least_recently_verified_first_and_the_next_run_resumes(store, clock):
    blobs = [add_blob(store, stored_at=START - (10 - i) * DAY) for i in range(5)]  # oldest first
    # Every blob is overdue (stored 6-10 days ago, period 1 day): only the budget limits a run.
    first = scrub(store, clock, budget=1.5, period=DAY)
    assert clock.hashed == blobs[:2]  # each blob takes 1 s: started at 0 s and 1 s
    assert first["blobs_checked"] == 2 and first["stopped"] == "time budget spent"
    clock.advance(3600)
    second = scrub(store, clock, budget=1.5, period=DAY)
    assert clock.hashed == blobs[:4]  # resumed where the first run stopped
    assert second["blobs_checked"] == 2
    times = verified_times(store)
    assert times[blobs[4]] == START - 6 * DAY  # not read yet: still its stored time
    assert all(times[d] > START for d in blobs[:4])
    assert first["oldest_unverified_seconds"] > second["oldest_unverified_seconds"]


def test_budget_zero_reads_nothing_but_keeps_the_state(store, clock):
    old = add_blob(store, stored_at=START - 30 * DAY)
    report = scrub(store, clock, budget=0)
    assert clock.hashed == []
    assert report["blobs_checked"] == 0 and report["stopped"] == "time budget spent"
    assert report["new_blobs"] == 1 and verified_times(store) == {old: START - 30 * DAY}
    assert report["oldest_unverified_seconds"] == 30 * DAY
    assert report["overdue_blobs"] == 1


def test_a_tiny_budget_still_reads_one_blob(store, clock):
    blobs = [add_blob(store, stored_at=START - 20 * DAY) for _ in range(3)]
    report = scrub(store, clock, budget=0.001, workers=2)
    assert 1 <= report["blobs_checked"] <= 2  # what was started before the budget ran out
    assert set(clock.hashed) <= set(blobs)


def test_a_huge_budget_reads_what_is_due_and_its_share_not_the_whole_store(store, clock):
    fresh = [add_blob(store, stored_at=START - 3600) for _ in range(14)]
    report = scrub(store, clock, budget=1e9, period=7 * DAY)
    # Nothing is due; one night's share of a 7-day period is 1/7 of the bytes: 2 of 14 blobs.
    assert report["blobs_checked"] == 2 and report["stopped"] == "up to date"
    assert set(clock.hashed) <= set(fresh)
    old = [add_blob(store, stored_at=START - 8 * DAY) for _ in range(5)]
    clock.advance(DAY)
    report = scrub(store, clock, budget=1e9, period=7 * DAY)
    assert set(old) <= set(clock.hashed[2:])  # every overdue blob, whatever the share
    assert report["overdue_blobs"] == 0


# -- corruption ------------------------------------------------------------------------------
def test_a_corrupt_blob_is_quarantined_with_its_entries_and_counted(tmp_path, clock):
    store_dir = str(tmp_path / "store")
    base, top = random_layer(3000, "base"), random_layer(2000, "top")
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [base, top])]))
    import_archive(store_dir, "app", str(archive), state_dir=str(tmp_path / "state"))
    store = Store(store_dir, key_file=None)
    rot(store, sha(base))
    report = scrub(store, clock, budget=1e9, period=DAY, repair=True, workers=2)
    assert not report["ok"]
    assert [bad["digest"] for bad in report["bad_blobs"]] == [sha(base)]
    assert not os.path.exists(store.blob_path(sha(base)))
    assert store.list_keys() == []  # the entry using it went too
    with open(os.path.join(store.quarantine_dir, "log.jsonl")) as handle:
        log = [json.loads(line) for line in handle]
    assert sorted(record["what"] for record in log) == ["blob", "entry"]
    assert all("(scrub)" in record["reason"] for record in log)
    assert report["totals"]["corruptions"] == 1
    assert sha(base) not in verified_times(store)  # gone from the store, gone from the state
    status = read_scrub_status(store_dir, clock.now)
    assert status["corruptions_total"] == 1


def test_without_repair_a_corrupt_blob_stays_first_in_line(store, clock):
    bad = add_blob(store, stored_at=START - 10 * DAY)
    good = add_blob(store, stored_at=START - 9 * DAY)
    rot(store, bad)
    report = scrub(store, clock, budget=1e9, period=DAY)
    assert [b["digest"] for b in report["bad_blobs"]] == [bad] and report["quarantined"] == []
    assert os.path.exists(store.blob_path(bad))
    assert verified_times(store)[bad] == START - 10 * DAY  # keeps its old time
    clock.advance(3600)
    clock.hashed.clear()
    again = scrub(store, clock, budget=0.5, period=DAY)
    assert clock.hashed == [bad] and again["totals"]["corruptions"] == 2
    assert verified_times(store)[good] > START


def test_an_unreadable_blob_is_a_corruption(store, clock, monkeypatch):
    broken = add_blob(store, stored_at=START - 10 * DAY)
    timed = scrub_mod.hash_file

    def eio(path):
        if path == store.blob_path(broken):
            raise OSError(5, "Input/output error", path)
        return timed(path)

    monkeypatch.setattr(scrub_mod, "hash_file", eio)
    report = scrub(store, clock, budget=1e9, period=DAY, repair=True)
    assert report["bad_blobs"][0]["reason"].startswith(f"blob {broken} cannot be read")
    assert not os.path.exists(store.blob_path(broken))


# -- the state ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "damage",
    [b"{not json", b'{"format": 1, "blobs": []}', b'{"format": 9, "blobs": {}}', b"\x00" * 64],
)
def test_a_damaged_state_starts_over_from_the_oldest(store, clock, damage):
    blobs = [add_blob(store, stored_at=START - (5 - i) * DAY) for i in range(3)]
    scrub(store, clock, budget=1e9, period=DAY)
    with open(os.path.join(store.root, STATE_FILE), "wb") as handle:
        handle.write(damage)
    clock.advance(60)
    clock.hashed.clear()
    report = scrub(store, clock, budget=1.5, period=DAY)
    assert report["state_reset"]
    assert clock.hashed == blobs[:2]  # from the oldest stored, as if never scrubbed
    assert any(".corrupt-" in name for name in os.listdir(store.root))  # moved aside
    assert set(verified_times(store)) == set(blobs)


def test_a_symlink_or_fifo_in_place_of_the_state_is_not_followed(store, clock, tmp_path):
    add_blob(store, stored_at=START - DAY)
    target = tmp_path / "elsewhere.json"
    target.write_text('{"format": 1, "blobs": {}}')
    os.symlink(target, os.path.join(store.root, STATE_FILE))
    report = scrub(store, clock, budget=1e9)
    assert report["state_reset"] and target.read_text() == '{"format": 1, "blobs": {}}'
    os.unlink(os.path.join(store.root, STATE_FILE))
    os.mkfifo(os.path.join(store.root, STATE_FILE))
    assert scrub(store, clock, budget=1e9)["state_reset"]  # does not block on the FIFO


def test_unusable_records_are_dropped_and_enter_again_as_stored(store, clock):
    blob = add_blob(store, stored_at=START - 2 * DAY)
    with open(os.path.join(store.root, STATE_FILE), "w") as handle:
        json.dump(
            {
                "format": 1,
                "blobs": {blob[7:]: "yesterday", "not-hex": 5.0},
                "totals": {"blobs": -1, "bytes": "x"},
                "last_run": "never",
            },
            handle,
        )
    report = scrub(store, clock, budget=0)
    assert not report["state_reset"]
    assert verified_times(store) == {blob: START - 2 * DAY}
    assert report["totals"] == {"blobs": 0, "bytes": 0, "corruptions": 0}


def test_new_blobs_enter_at_their_stored_time_and_removed_blobs_leave(store, clock):
    first = add_blob(store, stored_at=START - 3 * DAY)
    scrub(store, clock, budget=0)
    clock.advance(DAY)
    second = add_blob(store, stored_at=clock.now - 60)
    future = add_blob(store, stored_at=clock.now + 10 * DAY)  # a clock that was ahead
    os.unlink(store.blob_path(first))
    report = scrub(store, clock, budget=0)
    assert report["new_blobs"] == 2 and report["removed_blobs"] == 1
    assert verified_times(store) == {second: clock.now - 60, future: clock.now}


def test_a_blob_pruned_while_the_scrub_runs_leaves_the_state(tmp_path, clock):
    """A prune waiting for the store gets it between two rounds; the blobs it deleted are gone
    for the scrub, not corrupt."""
    store_dir = str(tmp_path / "store")
    layers = [random_layer(20_000, f"l{i}") for i in range(4)]
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], layers)]))
    import_archive(store_dir, "app", str(archive), state_dir=str(tmp_path / "state"))
    store = Store(store_dir, key_file=None)
    for digest in store.list_blobs():
        os.utime(store.blob_path(digest), (START - 9 * DAY, START - 9 * DAY))
    pruned: dict = {}
    pruner = threading.Thread(target=lambda: pruned.update(prune_store(store, max_size=0)))

    def first_round_ends(seconds):
        if not pruner.is_alive() and not pruned:
            pruner.start()
            pruner.join(timeout=30)  # the prune takes the store lock the scrub just let go
        clock.advance(seconds)

    clock.sleep = first_round_ends
    clock.hashed.clear()
    # A 20 kB layer takes 20 s at RATE: the first round (ROUND_SECONDS = 10) ends after its
    # first layer (and the small config, if that came first).
    report = scrub(store, clock, budget=1e9, period=DAY)
    assert pruned["blobs_deleted"] == 5 and 1 <= len(clock.hashed) <= 2
    assert report["ok"] and report["bad_blobs"] == [] and report["blobs"] == 0
    assert report["removed_blobs"] == 5
    assert verified_times(store) == {}


def test_a_store_that_stays_locked_ends_the_run_and_keeps_what_was_read(store, clock):
    blobs = [add_blob(store, size=8000, stored_at=START - (30 - i) * DAY) for i in range(4)]
    rounds = []
    real_lock = store.store_lock

    def lock_once():
        rounds.append(1)
        if len(rounds) > 1:
            raise LockHeldError("store.lock is locked by another process for more than 900s")
        return real_lock()

    store.store_lock = lock_once
    report = scrub(store, clock, budget=1e9, period=DAY)
    assert report["stopped"] == "the store stayed locked"
    assert report["blobs_checked"] == 2  # one round: 8 s each, rounds of ROUND_SECONDS
    times = verified_times(store)
    assert [times[d] > START for d in blobs] == [True, True, False, False]


def test_one_scrub_at_a_time(store, clock):
    add_blob(store)
    fd = os.open(os.path.join(store.root, "scrub.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockHeldError, match="another cache scrub"):
            scrub(store, clock, budget=1)
    finally:
        os.close(fd)


def test_no_store_is_created_and_bad_arguments_are_refused(tmp_path, clock):
    missing = str(tmp_path / "none")
    assert scrub_store(missing, max_duration=10, clock=clock)["empty"]
    assert not os.path.exists(missing)
    with pytest.raises(ConfigError, match="negative"):
        scrub_store(missing, max_duration=-1, clock=clock)
    with pytest.raises(ConfigError, match="scrub_period"):
        scrub_store(missing, max_duration=1, period=0, clock=clock)


# -- the status the watch reads ---------------------------------------------------------------
def test_the_status_age_grows_when_the_scrub_stops(store, clock):
    assert read_scrub_status(store.root, START) is None  # never scrubbed: no metric
    add_blob(store, stored_at=START - DAY)
    scrub(store, clock, budget=1e9, period=7 * DAY)
    status = read_scrub_status(store.root, clock.now)
    assert status["oldest_unverified_seconds"] < 5  # the share read it just now
    later = read_scrub_status(store.root, clock.now + 9 * DAY)
    assert later["oldest_unverified_seconds"] == pytest.approx(9 * DAY, abs=5)
    assert later["blobs_verified_total"] == status["blobs_verified_total"]


def test_an_empty_store_has_nothing_unverified(store, clock):
    scrub(store, clock, budget=1)
    assert read_scrub_status(store.root, START + DAY)["oldest_unverified_seconds"] == 0


def test_a_damaged_status_reads_as_none_and_is_left_in_place(store, clock):
    path = os.path.join(store.root, STATUS_FILE)
    with open(path, "w") as handle:
        handle.write('{"format": 1, "totals": {"blobs": "many"}}')
    assert read_scrub_status(store.root, START) is None
    assert os.path.exists(path)  # the watch (root) never moves a file in the store


# -- the period guarantee ---------------------------------------------------------------------
def _simulate(store, clock, days, budget, period, jitter, rng, churn=True):
    """Nightly runs with jitter, blobs saved and pruned between them. Returns the largest age
    of any stored blob at any run start, and the bytes each run read."""
    worst, reads = 0.0, []
    for _day in range(days):
        if churn:
            for _ in range(rng.randint(0, 3)):
                add_blob(store, size=rng.randint(500, 3000), stored_at=clock.now - 60)
            stored = sorted(store.list_blobs())
            for digest in rng.sample(stored, k=min(len(stored), rng.randint(0, 2))):
                os.unlink(store.blob_path(digest))
        if os.path.exists(os.path.join(store.root, STATE_FILE)):
            times = verified_times(store)
            ages = [clock.now - times[d] for d in store.list_blobs() if d in times]
            worst = max([worst, *ages])
        report = scrub(store, clock, budget=budget, period=period)
        reads.append(report["bytes_checked"])
        clock.advance(DAY + rng.uniform(-jitter, jitter))
    return worst, reads


def test_every_blob_is_read_within_the_period_when_runs_happen_nightly(store, clock):
    rng = random.Random(13)
    for _ in range(40):  # a store filled at once, all of it stored a week ago
        add_blob(store, size=rng.randint(500, 3000), stored_at=START - 7 * DAY + 60)
    worst, reads = _simulate(store, clock, 60, 600, 7 * DAY, jitter=3 * 3600, rng=rng)
    assert worst <= 7 * DAY
    store_bytes = sum(store.list_blobs().values())
    # Spread out: after the first week no night reads more than half of the store.
    assert max(reads[7:]) < store_bytes / 2
    assert read_scrub_status(store.root, clock.now)["overdue_blobs"] == 0


def test_a_budget_too_small_for_the_period_shows_in_the_age(store, clock):
    rng = random.Random(7)
    for _ in range(30):
        add_blob(store, size=2000, stored_at=START - 60)
    # 2 s a night reads one 2 kB blob: 30 blobs need 30 nights, the period is 7.
    _simulate(store, clock, 20, 2, 7 * DAY, jitter=0, rng=rng, churn=False)
    status = read_scrub_status(store.root, clock.now)
    assert status["oldest_unverified_seconds"] > 8 * DAY  # the scrub-overdue alert fires
    assert status["overdue_blobs"] > 0


def test_rounds_let_go_of_the_store_lock(store, clock):
    for _ in range(6):
        add_blob(store, size=8000, stored_at=START - 30 * DAY)  # 8 s each
    scrub(store, clock, budget=1e9, period=DAY)
    # 48 s of reading in rounds of at most ROUND_SECONDS (plus the blob in flight): a pause
    # between every two rounds, when a waiting prune takes the store.
    assert clock.sleeps and len(clock.sleeps) >= 2
    assert all(pause == scrub_mod.ROUND_PAUSE for pause in clock.sleeps)


def test_report_lines(store, clock):
    bad = add_blob(store, stored_at=START - 10 * DAY)
    add_blob(store, stored_at=START - 10 * DAY)
    rot(store, bad)
    lines = report_lines(scrub(store, clock, budget=1e9, period=7 * DAY, repair=True))
    assert lines[0].startswith("scrubbed 2 blob(s), 2.0 KiB in 2.0s (up to date); 1 blob(s) stored")
    assert lines[0].endswith("0 overdue (period 7.0d)")
    assert lines[1].startswith(f"BAD blob {bad}: blob {bad} fails its sha256 check")
    assert lines[2].startswith("quarantined ") and lines[-1] == "problems found"
    missing = scrub_store(store.root + "-none", max_duration=1, clock=clock)
    assert report_lines(missing) == [f"nothing to scrub: no blobs in {store.root}-none"]
