"""The config schema: one typed entry per key, kept equal to the subsystems' defaults, and a
loader that turns any file (wrong types, non-finite numbers, bad bytes, FIFOs, devices, absurd
nesting) into one ConfigError line naming the file, the key and what is expected."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runnerkeep import schema
from runnerkeep.admission import ADMISSION_DEFAULTS
from runnerkeep.cache import CACHE_DEFAULTS
from runnerkeep.cleanup import cleaners as files_cleaners
from runnerkeep.cleanup import docker_cleaners
from runnerkeep.cleanup.catalog import (
    BUILTIN_CLEANERS,
    CLEANER_KEYS,
    SECTION_DEFAULTS,
    TOOLCHAINS,
)
from runnerkeep.cleanup.stages import NEW_CLEANER_DEFAULTS
from runnerkeep.config import DEFAULT_PATHS, MAX_CONFIG_BYTES, load_config
from runnerkeep.disk.disk_config import DISK_DEFAULTS
from runnerkeep.errors import ConfigError
from runnerkeep.schema import check_option, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

SUBSYSTEM_DEFAULTS = {
    "paths": DEFAULT_PATHS,
    "cache": CACHE_DEFAULTS,
    "cleanup": SECTION_DEFAULTS,
    "disk": DISK_DEFAULTS,
    "admission": ADMISSION_DEFAULTS,
}


# --- the schema cannot drift from what the subsystems accept -------------------------------


@pytest.mark.parametrize("section", sorted(SUBSYSTEM_DEFAULTS))
def test_schema_keys_equal_the_subsystem_defaults(section):
    assert set(schema.SECTIONS[section].fields) == set(SUBSYSTEM_DEFAULTS[section])


@pytest.mark.parametrize("section", sorted(SUBSYSTEM_DEFAULTS))
def test_the_defaults_themselves_pass_the_schema(section):
    validate_config({section: SUBSYSTEM_DEFAULTS[section]}, "defaults")


def test_cleaner_schema_matches_the_catalog():
    assert set(schema.CLEANER.fields) == CLEANER_KEYS
    assert set(schema.CLEANER_KINDS) == set(files_cleaners.KINDS) | set(docker_cleaners.KINDS)
    assert set(schema.TOOLCHAIN_NAMES) == set(TOOLCHAINS)
    everything = {**BUILTIN_CLEANERS, "user-defined": NEW_CLEANER_DEFAULTS}
    validate_config({"cleanup": {"cleaners": everything}}, "catalog")


# --- what a wrong value reads like ----------------------------------------------------------

BAD_VALUES = [
    ({"disk": {"syslog": "false"}}, "disk.syslog", "true or false"),
    ({"disk": {"emergency_cleanup": 0}}, "disk.emergency_cleanup", "true or false"),
    ({"cache": {"verify_workers": float("nan")}}, "cache.verify_workers", "whole number"),
    ({"disk": {"peak_percentile": float("inf")}}, "disk.peak_percentile", "number above 0"),
    ({"disk": {"cache_share": 101}}, "disk.cache_share", "from 0 to 100"),
    ({"disk": {"reserve": "101%"}}, "disk.reserve", "percentage from 0% to 100%"),
    ({"disk": {"reserve": "-5%"}}, "disk.reserve", "percentage"),
    ({"cache": {"reserve": -1}}, "cache.reserve", "size"),
    ({"cache": {"reserve": "9" * 400}}, "cache.reserve", "size"),
    ({"cache": {"max_age": "-1d"}}, "cache.max_age", "duration"),
    ({"disk": {"watch_timeout": 0}}, "disk.watch_timeout", "duration above 0"),
    ({"disk": {"watch_timeout": "1e999"}}, "disk.watch_timeout", "duration"),
    ({"paths": {"state_dir": 42}}, "paths.state_dir", "absolute path"),
    ({"paths": {"cache_dir": "var/cache"}}, "paths.cache_dir", "absolute path"),
    ({"paths": {"log_dir": "/var/\x00log"}}, "paths.log_dir", "absolute path"),
    ({"disk": {"work_dirs": "/srv/work"}}, "disk.work_dirs", "a list"),
    ({"disk": {"work_dirs": ["/ok", "rel"]}}, "disk.work_dirs[1]", "absolute path"),
    ({"disk": {"webhook_url": "ftp://hooks.example/x"}}, "disk.webhook_url", "http://"),
    ({"disk": {"webhook_url": "http://"}}, "disk.webhook_url", "with a host"),
    ({"disk": {"webhook_url": "https://h:99999999/"}}, "disk.webhook_url", "URL"),
    ({"disk": {"metrics_file": "../../etc/cron.d/x"}}, "disk.metrics_file", "file name"),
    ({"disk": {"largest_dirs": 2.5}}, "disk.largest_dirs", "whole number"),
    ({"disk": {"history_max_jobs": True}}, "disk.history_max_jobs", "whole number"),
    ({"disk": {"reserv": "5%"}}, "disk.reserv", "one of the keys"),
    ({"clenaup": {}}, "clenaup", "one of the keys admission, cache, cleanup, disk, paths"),
    ({"cleanup": {"cross_filesystems": "no"}}, "cleanup.cross_filesystems", "true or false"),
    ({"cleanup": {"targets": {"pre": {"free": "lots"}}}}, "cleanup.targets.pre.free", "size"),
    ({"cleanup": {"targets": {"later": {}}}}, "cleanup.targets.later", "one of the keys"),
    ({"cleanup": {"cleaners": []}}, "cleanup.cleaners", "cleaner name"),
    ({"cleanup": {"cleaners": {"t": {"roots": ["tmp"]}}}}, "cleanup.cleaners.t.roots[0]", "abs"),
    ({"cleanup": {"cleaners": {"t": {"patterns": ["../x"]}}}}, "cleaners.t.patterns[0]", "glob"),
    ({"cleanup": {"cleaners": {"t": {"enabled": "true"}}}}, "cleaners.t.enabled", "true or"),
    ({"cleanup": {"cleaners": {"t": {"stages": ["nightly"]}}}}, "t.stages[0]", "one of pre"),
    ({"cleanup": {"cleaners": {"t": {"kind": "rm"}}}}, "cleaners.t.kind", "one of files"),
    ({"cleanup": {"cleaners": {"tc": {"items": ["emacs"]}}}}, "tc.items[0]", "one of android"),
    ({"cleanup": {"docker_filters": ["label"]}}, "cleanup.docker_filters[0]", "label=ci"),
    ({"cache": []}, "cache", "section cache"),
    ([], "top level", "JSON object"),
]


@pytest.mark.parametrize(("data", "key", "expected"), BAD_VALUES)
def test_a_bad_value_names_the_source_the_key_and_what_is_expected(data, key, expected):
    with pytest.raises(ConfigError) as exc:
        validate_config(data, "/etc/runnerkeep/config.d/40-disk.json")
    message = str(exc.value)
    assert message.startswith("/etc/runnerkeep/config.d/40-disk.json: ")
    assert key in message and expected in message and "got " in message
    assert "\n" not in message


def test_a_webhook_url_in_an_error_shows_where_it_points_but_not_its_token():
    with pytest.raises(ConfigError) as exc:
        validate_config({"disk": {"webhook_url": "ftp://user:s3cret@hooks.example/T0KEN"}}, "c")
    assert "hooks.example" in str(exc.value)
    assert "s3cret" not in str(exc.value) and "T0KEN" not in str(exc.value)


GOOD_CONFIG = {
    "paths": {"cache_dir": "/srv/cache", "state_dir": "/var/lib/rk", "log_dir": "/var/log/rk"},
    "cache": {"reserve": 1073741824, "max_size": "", "max_age": "30d", "verify_workers": 4},
    "cleanup": {
        "targets": {"post": {"free": "25%", "inodes": 100000}, "pre": None},
        "cleaners": {
            "toolchains": {"items": ["android", "dotnet"], "keep": ["Python/3.12*"]},
            "docker-images": {"min_age": "3d", "emergency_min_age": None},
            "builds": {"roots": ["/srv/builds/*"], "patterns": ["*/*.log"], "min_age": 3600},
        },
        "docker_filters": ["label=ci"],
    },
    "disk": {
        "work_dirs": ["/opt/actions-runner/_work"],
        "webhook_url": "https://hooks.example:8443/T0KEN",
        "peak_percentile": 99.5,
        "reserve_inodes": "5%",
        "job_peak_floor_inodes": "50000",
        "warning_free": "25%",
        "cache_quota": "40GiB",
        "sample_interval": 2.5,
    },
}


def test_a_realistic_config_passes():
    validate_config(GOOD_CONFIG, "c")


def test_check_option_checks_one_dotted_key_and_returns_the_value():
    assert check_option("cleanup", "targets.post.free", "20G", "option target_free") == "20G"
    assert check_option("cleanup", "cleaners.any-name.min_age", "2d", "x") == "2d"
    with pytest.raises(ConfigError, match=r"^option target_free: cleanup\.targets\.pre\.free: "):
        check_option("cleanup", "targets.pre.free", "30 percent", "option target_free")
    with pytest.raises(ConfigError, match=r"option disk: disk\.syslog: expected true or false"):
        check_option("disk", "syslog", "no", "option disk")
    with pytest.raises(KeyError):
        check_option("disk", "no_such_key", 1, "x")


# --- property-based: whatever the values, a ConfigError or acceptance, nothing else ---------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["false", "true", "20G", "101%", "15%", "-1", "7d", "/tmp", "http://h"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
all_keys = [(section, key) for section, obj in schema.SECTIONS.items() for key in obj.fields]


def _accepts_or_config_error(data):
    try:
        validate_config(data, "gen.json")
    except ConfigError as exc:
        assert str(exc).startswith("gen.json: ") and "\n" not in str(exc)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(all_keys), json_values)
def test_any_value_for_any_key_is_accepted_or_a_config_error(section_key, value):
    section, key = section_key
    _accepts_or_config_error({section: {key: value}})


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(schema.CLEANER.fields)),
    json_values,
    st.text(min_size=0, max_size=6),
)
def test_any_cleaner_setting_is_accepted_or_a_config_error(key, value, name):
    _accepts_or_config_error({"cleanup": {"cleaners": {name: {key: value}}}})


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_whole_config_shape_is_accepted_or_a_config_error(data):
    _accepts_or_config_error(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(schema.SECTIONS)), json_values, max_size=4))
def test_any_sections_are_accepted_or_a_config_error(data):
    _accepts_or_config_error(data)


def test_accepted_values_are_ones_the_subsystems_can_use():
    """Values at the edge of what the schema accepts parse in the subsystems' own parsers."""
    from runnerkeep.units import parse_duration, parse_size, parse_size_or_percent

    assert parse_size_or_percent("100%", 1000) == 1000
    assert parse_size(2**63) == 2**63
    assert math.isfinite(parse_duration(100 * 365 * 86400))
    validate_config({"disk": {"reserve": "100%", "hysteresis": "0%"}}, "c")


# --- the loader -------------------------------------------------------------------------------


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"disk": {"syslog": "false"}}', "disk.syslog: expected true or false"),
        (b'{"cache": {"verify_workers": NaN}}', "cache.verify_workers: expected a whole number"),
        (b'{"disk": {"cache_share": Infinity}}', "disk.cache_share: expected a number"),
        (b'{"disk": {"watch_timeout": 1e999}}', "disk.watch_timeout: expected a duration"),
        (b'{"cache": {"reserve": ' + b"9" * 5000 + b"}}", "got a number of 5000 digits"),
        (b'{"paths": {"cache_dir": "\xff"}}', "is not UTF-8 text (invalid byte at offset 25)"),
        (b"[" * 100000, "nested too deeply; expected at most 32 levels"),
        (b'{"a":' * 50000, "nested too deeply"),
        (b'{"disk": {"work_dirs": ["/a\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]}}', None),
        (b"{not json", "is not valid JSON"),
        (b'"just a string"', "must hold a JSON object at the top level"),
    ],
)
def test_load_config_turns_any_bad_file_into_one_config_error(tmp_path, content, expected):
    path = _write(tmp_path / "config.json", content)
    if expected is None:  # brackets inside a string (after an escaped quote) are not nesting
        assert load_config(path)["disk"]["work_dirs"] == ['/a"' + "[" * 34]
        return
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"config file {path}") or str(exc.value).startswith(path)
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_file_larger_than_the_bound_is_refused_before_parsing(tmp_path):
    path = _write(tmp_path / "config.json", b" " * MAX_CONFIG_BYTES + b"{}")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_config(path)


def test_a_directory_as_config_is_refused(tmp_path):
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError, match="is a directory; expected a regular JSON file"):
        load_config(str(tmp_path / "config.json"))


def test_a_bad_fragment_is_named_with_its_key(tmp_path):
    path = _write(tmp_path / "config.json", json.dumps({"disk": {"syslog": True}}))
    (tmp_path / "config.d").mkdir()
    bad = _write(tmp_path / "config.d" / "40-disk.json", '{"disk": {"webhook_retries": -1}}')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{bad}: disk.webhook_retries: expected a whole number")


def test_a_valid_config_with_a_utf8_bom_and_fragments_still_loads(tmp_path):
    path = _write(tmp_path / "config.json", b"\xef\xbb\xbf" + json.dumps(GOOD_CONFIG).encode())
    (tmp_path / "config.d").mkdir()
    _write(tmp_path / "config.d" / "50-cleanup.json", '{"cleanup": {"lock_max_age": "12h"}}')
    config = load_config(path)
    assert config["cleanup"]["lock_max_age"] == "12h"
    assert config["disk"]["peak_percentile"] == 99.5


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_load_config_on_random_bytes_raises_only_config_error(tmp_path, content):
    path = _write(tmp_path / "config.json", content)
    with contextlib.suppress(ConfigError):
        load_config(path)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(json_values)
def test_load_config_on_any_json_document_raises_only_config_error(tmp_path, value):
    path = _write(tmp_path / "config.json", json.dumps(value))
    with contextlib.suppress(ConfigError):
        load_config(path)


# A FIFO without a writer blocks open(); /dev/zero never ends. Run them in a child process
# with a deadline and a memory cap, so today's hang or memory growth fails instead of blocking.
_LOAD = (
    "import sys\n"
    "from runnerkeep.config import load_config\n"
    "from runnerkeep.errors import ConfigError\n"
    "try:\n"
    "    load_config(sys.argv[1])\n"
    "except ConfigError as exc:\n"
    "    print(exc)\n"
    "    sys.exit(2)\n"
)


def _load_in_child(path):
    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "module_utils")}
    return subprocess.run(
        [sys.executable, "-c", _LOAD, path],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        preexec_fn=cap_memory,
    )


def test_a_fifo_as_config_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = str(tmp_path / "config.json")
    os.mkfifo(fifo)
    done = _load_in_child(fifo)
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == f"config file {fifo} is a FIFO; expected a regular JSON file"


def test_dev_zero_as_config_is_refused_without_reading_it():
    done = _load_in_child("/dev/zero")
    assert done.returncode == 2, done.stderr
    assert "is a character device; expected a regular JSON file" in done.stdout


def test_a_fifo_fragment_is_refused_too(tmp_path):
    _write(tmp_path / "config.json", "{}")
    (tmp_path / "config.d").mkdir()
    os.mkfifo(tmp_path / "config.d" / "60-x.json")
    done = _load_in_child(str(tmp_path / "config.json"))
    assert done.returncode == 2, done.stderr
    assert "60-x.json is a FIFO" in done.stdout


# --- the Ansible modules' options map onto the schema ----------------------------------------

LIBRARY = os.path.join(ROOT, "library")
MODULE_RUNNER = """
import runpy, sys
import ansible.module_utils
import runnerkeep, runnerkeep.config, runnerkeep.errors, runnerkeep.schema
import runnerkeep.cleanup, runnerkeep.disk.budget, runnerkeep.disk.usage_report
for name, mod in list(sys.modules.items()):
    if name == "runnerkeep" or name.startswith("runnerkeep."):
        sys.modules["ansible.module_utils." + name] = mod
ansible.module_utils.runnerkeep = runnerkeep
sys.argv = [sys.argv[1], sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_module(name, tmp_path, **args):
    argfile = tmp_path / f"{name}-args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "module_utils"))
    done = subprocess.run(
        [sys.executable, "-c", MODULE_RUNNER, os.path.join(LIBRARY, f"{name}.py"), str(argfile)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def module_config(tmp_path):
    path = tmp_path / "config.json"
    dirs = ("cache_dir", "state_dir", "log_dir")
    path.write_text(json.dumps({"paths": {d: str(tmp_path / d) for d in dirs}}))
    return str(path)


@pytest.mark.parametrize(
    ("disk", "expected"),
    [
        ({"syslog": "false"}, "option disk: disk.syslog: expected true or false"),
        ({"reserve": "9" * 400}, "option disk: disk.reserve: expected a size"),
        ({"work_dirs": ["/srv/\x00work"]}, "option disk: disk.work_dirs[0]: expected an abs"),
        ({"peak_percentile": "95"}, "option disk: disk.peak_percentile: expected a number"),
    ],
)
@pytest.mark.parametrize("name", ["disk_budget", "disk_facts"])
def test_disk_module_options_are_checked_against_the_schema(
    tmp_path, module_config, name, disk, expected
):
    result = run_module(name, tmp_path, config_file=module_config, disk=disk)
    assert result.get("failed") is True, result
    assert result["msg"].startswith(expected), result["msg"]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("target_free", "30 percent", "option target_free: cleanup.targets.post.free: expected"),
        ("target_free", "120%", "option target_free: cleanup.targets.post.free: expected"),
        ("target_inodes", "1e999%", "option target_inodes: cleanup.targets.post.inodes: expe"),
        ("paths", ["relative/dir"], "cleanup failed: option paths: expected absolute paths"),
    ],
)
def test_runner_cleanup_options_are_checked_against_the_schema(
    tmp_path, module_config, option, value, expected
):
    result = run_module(
        "runner_cleanup",
        tmp_path,
        stage="post",
        config_file=module_config,
        _ansible_check_mode=True,
        **{option: value},
    )
    assert result.get("failed") is True, result
    assert result["msg"].startswith(expected), result["msg"]


@pytest.mark.parametrize("name", ["disk_budget", "disk_facts", "runner_cleanup"])
def test_a_fifo_config_fails_the_module_with_one_line(tmp_path, name):
    fifo = str(tmp_path / "config.json")
    os.mkfifo(fifo)
    args = {"config_file": fifo, **({"stage": "pre"} if name == "runner_cleanup" else {})}
    result = run_module(name, tmp_path, **args)
    assert result.get("failed") is True, result
    assert result["msg"] == f"config file {fifo} is a FIFO; expected a regular JSON file"
