"""runnerkeep.wiring: what the front doors hand one subsystem of another."""

from __future__ import annotations

from runnerkeep import wiring
from runnerkeep.disk import budget


def test_make_room_is_the_post_stage_with_the_budget_targets(monkeypatch):
    calls = []

    def run_cleanup(stage, config, **options):
        calls.append((stage, config, options))
        return "report"

    monkeypatch.setattr(wiring.stages, "run_cleanup", run_cleanup)
    config = {"cleanup": {}}
    assert wiring.make_room(config)(10, "/cache") == "report"
    assert wiring.make_room(config)(None, None) == "report"
    common = {"dry_run": False, "budget_targets": budget.cleanup_targets}
    assert calls == [
        ("post", config, {"target_free_bytes": 10, "paths": ["/cache"], **common}),
        ("post", config, {"target_free_bytes": None, "paths": None, **common}),
    ]


def test_run_cleanup_and_cache_settings_hand_over_the_budget(monkeypatch):
    seen = []
    monkeypatch.setattr(wiring.stages, "run_cleanup", lambda *a, **k: seen.append(k) or "r")
    assert wiring.run_cleanup("pre", {}, force=True) == "r"
    assert seen == [{"budget_targets": budget.cleanup_targets, "force": True}]
    monkeypatch.setattr(wiring, "cache_quota", lambda config: 123)
    settings = wiring.cache_settings({})
    assert (settings["max_size"], settings["max_size_source"]) == (123, "disk budget")


def test_no_budget_on_an_unmonitored_host():
    assert budget.cache_quota({}) is None
    assert budget.cleanup_targets("post", {}) is None
