"""Docker cleaners against a fake ``docker`` CLI (canned answers, every call logged).

The real engine is exercised in tests/integration/test_cleanup_docker.py; these cover what is
unsafe to do on a shared engine (build cache prune, volumes) and the parsing of Docker output.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import pytest
from runnerkeep.cleanup import run_cleanup
from runnerkeep.cleanup.docker_cleaners import _docker_size, parse_docker_time

FAKE = r"""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
root = os.environ["FAKE_DOCKER_ROOT"]
def out(text):
    sys.stdout.write(text)
    sys.exit(0)
if args[:1] == ["info"]:
    out(json.dumps({"DockerRootDir": root, "ServerVersion": "fake"}))
if args[:3] == ["system", "df", "-v"]:
    out(json.dumps({
        "Images": [], "Containers": [],
        "Volumes": [{"Name": "v-old", "Size": "10MB"}, {"Name": "v-small", "Size": "1kB"}],
        "BuildCache": [
            {"ID": "a", "Size": "1.5MB", "LastUsedAt": "2020-01-01T00:00:00.123456789Z",
             "InUse": False},
            {"ID": "b", "Size": "2MB", "LastUsedAt": "2999-01-01T00:00:00Z", "InUse": False},
            {"ID": "c", "Size": "5MB", "LastUsedAt": "2020-01-01T00:00:00Z", "InUse": True},
        ],
    }))
if args[:2] == ["builder", "prune"]:
    out("ID\tRECLAIMABLE\tSIZE\na\ttrue\t1.5MB\nTotal:\t1.5MB\n")
if args[:2] == ["volume", "ls"]:
    out("v-old\nv-small\n")
if args[:2] == ["volume", "rm"]:
    out(args[2] + "\n")
if args[:1] == ["ps"]:
    out("")
sys.stderr.write("fake docker: unexpected " + " ".join(args) + "\n")
sys.exit(1)
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "docker.log"
    root = tmp_path / "docker-root"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_ROOT", str(root))

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


def test_build_cache_and_volumes(make_config, fake_docker):
    config = make_config({"docker-volumes": {"enabled": True}})
    names = ["docker-build-cache", "docker-volumes"]
    dry = run_cleanup("post", config, run_all=True, dry_run=True, cleaner_names=names)
    assert dry.cleaner("docker-build-cache").bytes_freed == 1_500_000  # old, unused only
    assert [i["path"] for i in dry.cleaner("docker-volumes").items] == [
        "volume v-old",
        "volume v-small",
    ]
    assert not any(c[:2] in (["builder", "prune"], ["volume", "rm"]) for c in fake_docker())

    real = run_cleanup("post", config, run_all=True, cleaner_names=names)
    assert real.cleaner("docker-build-cache").bytes_freed == 1_500_000
    assert real.cleaner("docker-volumes").bytes_freed == 10_001_000
    calls = fake_docker()
    assert ["builder", "prune", "-f", "--filter", "until=24h"] in calls
    assert ["volume", "rm", "v-old"] in calls and ["volume", "rm", "v-small"] in calls
    assert not any("--force" in c for c in calls)


def test_volumes_are_opt_in(make_config, fake_docker):
    report = run_cleanup("post", make_config({}), run_all=True, cleaner_names=["docker-volumes"])
    assert report.cleaner("docker-volumes").status == "disabled"
    assert not any(c[:1] == ["volume"] for c in fake_docker())


def test_docker_filters_reach_the_cli(make_config, fake_docker):
    config = make_config({"docker-volumes": {"enabled": True}}, docker_filters=["label=ci=1"])
    run_cleanup("post", config, run_all=True, dry_run=True, cleaner_names=["docker-volumes"])
    ls = next(c for c in fake_docker() if c[:2] == ["volume", "ls"])
    assert ls[-2:] == ["--filter", "label=ci=1"]


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2020-01-01T00:00:00Z", 1577836800.0),
        ("2020-01-01T00:00:00.5Z", 1577836800.5),
        ("2020-01-01 00:00:00 +0000 UTC", 1577836800.0),
        ("0001-01-01T00:00:00Z", 0.0),
        ("", 0.0),
        (None, 0.0),
        ("garbage", 0.0),
    ],
)
def test_parse_docker_time(text, epoch):
    assert parse_docker_time(text) == pytest.approx(epoch)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1.5MB", 1_500_000), ("100kB", 100_000), ("0B", 0), ("2GB (50%)", 2 * 10**9), ("", 0)],
)
def test_docker_human_sizes(text, size):
    assert _docker_size(text) == size
