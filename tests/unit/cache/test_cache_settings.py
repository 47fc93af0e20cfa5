"""Where the store's quota comes from: the config, else the disk budget on a monitored host
(the front doors take the settings from runnerkeep.wiring, which hands the cache the budget's
quota; the cache itself does not import disk/)."""

from __future__ import annotations

from runnerkeep.cache import cache_config
from runnerkeep.disk.budget import current_budget
from runnerkeep.wiring import cache_settings


def config_for(tmp_path, **sections):
    paths = {"cache_dir": str(tmp_path / "cache"), "state_dir": str(tmp_path / "state")}
    return {"paths": paths, **sections}


def test_no_quota_without_config_or_budget(tmp_path):
    settings = cache_settings(config_for(tmp_path))
    assert settings["max_size"] is None
    assert settings["max_size_source"] == "none"


def test_configured_quota_wins(tmp_path):
    config = config_for(tmp_path, cache={"max_size": "5G"}, disk={"path": str(tmp_path)})
    settings = cache_settings(config)
    assert settings["max_size"] == 5 * 1000**3
    assert settings["max_size_source"] == "config"


def test_monitored_host_uses_the_budget_quota(tmp_path):
    config = config_for(
        tmp_path, disk={"path": str(tmp_path), "job_peak_floor": "1MiB", "cache_quota_min": 0}
    )
    settings = cache_settings(config)
    assert settings["max_size"] == current_budget(config).cache_quota_bytes > 0
    assert settings["max_size_source"] == "disk budget"


def test_budget_that_cannot_be_met_leaves_the_cache_without_quota(tmp_path):
    # A 1000 TiB job peak fits no disk here: the watch reports it, the cache keeps working.
    config = config_for(tmp_path, disk={"path": str(tmp_path), "job_peak_floor": "1000TiB"})
    assert cache_settings(config)["max_size"] is None


def test_the_cache_alone_takes_its_quota_only_from_what_it_is_given(tmp_path):
    config = config_for(
        tmp_path, disk={"path": str(tmp_path), "job_peak_floor": "1MiB", "cache_quota_min": 0}
    )
    assert cache_config.cache_settings(config)["max_size"] is None
    asked = []
    settings = cache_config.cache_settings(config, budget_quota=lambda c: asked.append(c) or 7)
    assert asked == [config]
    assert (settings["max_size"], settings["max_size_source"]) == (7, "disk budget")
    configured = config_for(tmp_path, cache={"max_size": "5G"})
    assert cache_config.cache_settings(configured, budget_quota=asked.append)["max_size"] > 0
    assert asked == [config]  # a configured quota never asks the budget


def test_transfer_deadline_reaches_the_service():
    from runnerkeep.cache import service
    from runnerkeep.cache.cache_config import cache_settings

    settings = cache_settings({"cache": {"transfer_deadline": "5m"}})
    assert settings["transfer_deadline"] == 300.0
    assert service._transfer_deadline(settings) == 300.0
    assert cache_settings({})["transfer_deadline"] == 2 * 3600.0
