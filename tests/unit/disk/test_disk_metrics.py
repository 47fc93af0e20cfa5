"""The textfile format: rendered text parses back; escaping; atomic replacement."""

from __future__ import annotations

import os

import pytest
from runnerkeep.disk.metrics import MetricSet, metric_value, parse_metrics, write_textfile


def test_render_and_parse_back():
    m = MetricSet()
    m.add("runnerkeep_x_bytes", 12, {"mountpoint": "/"}, help="x")
    m.add("runnerkeep_x_bytes", 3.5, {"mountpoint": "/var/lib/docker"})
    m.add("runnerkeep_hits_total", 7, kind="counter", help="hits")
    m.add("runnerkeep_odd", 1, {"path": 'a "quoted"\\path\nnext'})
    text = m.render()
    samples = parse_metrics(text)
    assert metric_value(samples, "runnerkeep_x_bytes", mountpoint="/") == 12
    assert metric_value(samples, "runnerkeep_x_bytes", mountpoint="/var/lib/docker") == 3.5
    assert metric_value(samples, "runnerkeep_hits_total") == 7
    assert metric_value(samples, "runnerkeep_odd", path='a "quoted"\\path\nnext') == 1
    lines = text.splitlines()
    # One HELP and one TYPE per family, before its samples.
    assert lines.count("# TYPE runnerkeep_x_bytes gauge") == 1
    assert lines.index("# TYPE runnerkeep_hits_total counter") < lines.index(
        "runnerkeep_hits_total 7"
    )
    assert text.endswith("\n")


def test_invalid_names_and_lines_are_rejected():
    with pytest.raises(ValueError):
        MetricSet().add("bad-name", 1)
    with pytest.raises(ValueError):
        parse_metrics("runnerkeep_x{a=unquoted} 1\n")
    with pytest.raises(ValueError):
        parse_metrics("runnerkeep_x 1\nrunnerkeep_x 2\n")


def test_write_textfile_is_atomic_and_leaves_no_temp(tmp_path):
    directory = tmp_path / "tf"
    path = write_textfile(str(directory), "runnerkeep_disk.prom", "a 1\n")
    write_textfile(str(directory), "runnerkeep_disk.prom", "a 2\n")
    with open(path) as handle:
        assert handle.read() == "a 2\n"
    assert os.listdir(directory) == ["runnerkeep_disk.prom"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
