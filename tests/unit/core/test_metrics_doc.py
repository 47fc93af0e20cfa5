"""docs/metrics.md is what tools/metrics_doc.py generates from the metric tables, and the
runnerkeep_build_info metric says which runnerkeep and Python wrote the file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import runnerkeep
from runnerkeep.disk.metrics import (
    PLANNED_METRICS,
    WATCH_METRICS,
    WatchReadings,
    event_totals,
    metric_value,
    parse_metrics,
    watch_metric_set,
)

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / "tools" / "metrics_doc.py"
DOC = ROOT / "docs" / "metrics.md"


def load_tool():
    spec = importlib.util.spec_from_file_location("metrics_doc", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_is_what_the_tool_generates():
    assert DOC.read_text(encoding="utf-8") == load_tool().render(), (
        "docs/metrics.md is stale: run python3 tools/metrics_doc.py"
    )


def test_every_metric_has_one_row_with_its_type_and_labels():
    text = load_tool().render()
    for metric in (*WATCH_METRICS, *PLANNED_METRICS):
        rows = [line for line in text.splitlines() if line.startswith(f"| `{metric.name}` |")]
        assert len(rows) == 1, metric.name
        cells = [cell.strip() for cell in rows[0].strip("|").split(" | ")]
        assert cells[1] == metric.kind
        assert cells[2] == (", ".join(f"`{x}`" for x in metric.labels) or "-")


def test_a_pipe_in_a_help_text_does_not_break_the_table():
    tool = load_tool()
    metric = WATCH_METRICS[0].__class__("x_total", "counter", "a | b", ("l",), lambda r: [])
    row = tool.table((metric,))[2]
    assert row == "| `x_total` | counter | `l` | a \\| b |"


def test_check_mode_fails_on_a_stale_reference(tmp_path, monkeypatch):
    tool = load_tool()
    stale = tmp_path / "metrics.md"
    stale.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(tool, "DOC", str(stale))
    assert tool.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "old\n"  # --check writes nothing
    assert tool.main([]) == 0
    assert tool.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == tool.render()


def test_the_tool_runs_as_a_script():
    proc = subprocess.run(
        [sys.executable, str(TOOL), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_planned_metrics_are_not_written_by_the_watch_yet():
    watch_names = {metric.name for metric in WATCH_METRICS}
    for metric in PLANNED_METRICS:
        # A built part moves its row into the table that writes it: never in both.
        assert metric.name not in watch_names
        assert metric.writer.endswith("(planned)")
        assert list(metric.samples(None)) == []


def test_build_info_names_the_version_and_the_python():
    readings = WatchReadings(state={"state": "ok"}, counters=event_totals({}))
    samples = parse_metrics(watch_metric_set(readings).render())
    python = "{}.{}.{}".format(*sys.version_info[:3])
    version = runnerkeep.__version__
    assert metric_value(samples, "runnerkeep_build_info", version=version, python=python) == 1
    assert [labels for name, labels in samples if name == "runnerkeep_build_info"] == [
        (("python", python), ("version", runnerkeep.__version__))
    ]
