import json

import pytest
from runnerkeep.config import DEFAULT_PATHS, load_config, merge_section
from runnerkeep.errors import ConfigError


def write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_missing_default_config_means_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNERKEEP_CONFIG", raising=False)
    monkeypatch.setattr("runnerkeep.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.json"))
    assert load_config()["paths"] == DEFAULT_PATHS


def test_explicit_missing_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.json"))


def test_invalid_json_names_the_file(tmp_path):
    path = write(tmp_path / "config.json", "{not json")
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON"):
        load_config(path)


def test_env_var_selects_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "c.json", {"paths": {"cache_dir": "/srv/cache"}})
    monkeypatch.setenv("RUNNERKEEP_CONFIG", path)
    config = load_config()
    assert config["paths"]["cache_dir"] == "/srv/cache"
    assert config["paths"]["state_dir"] == DEFAULT_PATHS["state_dir"]


def test_fragments_override_key_by_key_in_name_order(tmp_path):
    path = write(
        tmp_path / "config.json", {"paths": {"cache_dir": "/a"}, "cache": {"reserve": "1G"}}
    )
    (tmp_path / "config.d").mkdir()
    write(tmp_path / "config.d" / "20-cache.json", {"cache": {"max_size": "5G"}})
    write(tmp_path / "config.d" / "90-local.json", {"cache": {"reserve": "2G"}})
    config = load_config(path)
    assert config["cache"] == {"reserve": "2G", "max_size": "5G"}
    assert config["paths"]["cache_dir"] == "/a"


def test_bad_fragment_is_named(tmp_path):
    path = write(tmp_path / "config.json", {})
    (tmp_path / "config.d").mkdir()
    write(tmp_path / "config.d" / "10-x.json", "[1, 2]")
    with pytest.raises(ConfigError, match=r"10-x\.json must hold a JSON object"):
        load_config(path)


def test_merge_section_rejects_unknown_keys_and_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown key.*reserv.*known keys: max_size, reserve"):
        merge_section({"cache": {"reserv": 1}}, "cache", {"reserve": 0, "max_size": 0})


def test_merge_section_merges_nested_dicts_without_mutating_defaults():
    defaults = {"targets": {"pre": "1G", "post": "5G"}, "enabled": True}
    merged = merge_section({"c": {"targets": {"post": "9G"}}}, "c", defaults)
    assert merged == {"targets": {"pre": "1G", "post": "9G"}, "enabled": True}
    assert defaults["targets"]["post"] == "5G"
