"""The HTML and Markdown renderers: every host shown, hostile strings inert, n/a for gaps."""

from __future__ import annotations

import html.parser
import json
import re

import pytest
from fleet_samples import NOW, UNREACHABLE, facts, registered
from runnerkeep.fleet.render_html import render_html
from runnerkeep.fleet.render_markdown import cell, render_markdown
from runnerkeep.fleet.report_files import FILES, write_report
from runnerkeep.fleet.report_model import build_model, host_input

HOSTILE = [
    '<script>alert("pwned")</script>',
    "<img src=x onerror=alert(1)>",
    'evil" onmouseover="alert(1)',
    "bad\nline | cell ` code ** [link](http://x)",
    "esc\x1b[31mred\u202eevil",
]


class _Collector(html.parser.HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parsed(page: str) -> _Collector:
    collector = _Collector()
    collector.feed(page)
    return collector


def fleet_model(names=None) -> dict:
    results = {
        "healthy": registered(facts()),
        "full": registered(facts(free_gib=2)),
        "gone": UNREACHABLE,
        "drained": registered(
            facts(drain={"drained": True, "reason": "job needs 9 GiB", "since": NOW - 600})
        ),
        "bare": registered({"format": 1}),
    }
    for name in names or []:
        results[name] = registered(facts(drain={"drained": True, "reason": name, "since": NOW}))
    return build_model({n: host_input(r) for n, r in results.items()}, now=NOW)


def test_the_page_is_self_contained_and_has_no_script():
    page = render_html(fleet_model())
    seen = parsed(page)
    assert "script" not in seen.tags
    assert not re.search(r"(?:src|href)\s*=", page), "the page must fetch nothing"
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert "default-src 'none'" in page
    assert seen.tags.count("svg") >= 3


def test_every_host_is_on_the_page_in_risk_order():
    model = fleet_model()
    page = render_html(model)
    hosts = [v for k, v in parsed(page).attrs if k == "data-host"]
    assert hosts == [row["name"] for row in model["hosts"]]
    assert hosts[0] == "full" and hosts[-1] == "healthy"


def test_unreachable_hosts_are_listed_with_the_reason():
    page = render_html(fleet_model())
    text = " ".join(parsed(page).text)
    assert "unreachable: Failed to connect" in text
    assert "1 unreachable" in text


def test_missing_figures_show_as_na():
    model = fleet_model()
    bare = next(r for r in model["hosts"] if r["name"] == "bare")
    assert bare["disk"]["free_bytes"] is None
    page = render_html(build_model({"bare": host_input(registered({"format": 1}))}, now=NOW))
    assert page.count('class="fig na"') >= 4
    markdown = render_markdown(
        build_model({"bare": host_input(registered({"format": 1}))}, now=NOW)
    )
    assert "n/a" in markdown


def test_sparkline_bars_and_watermark_ticks_are_drawn():
    page = render_html(fleet_model())
    assert "<polyline" in page
    assert page.count("<line") >= 3
    assert "warning below" in page


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_host_names_and_reasons_are_text_in_html(hostile):
    page = render_html(fleet_model([hostile]))
    seen = parsed(page)
    assert seen.tags.count("script") == 0
    assert "img" not in seen.tags
    assert not any(name.startswith("on") for name, _value in seen.attrs)
    assert "\x1b" not in page and "\u202e" not in page
    # The name is still there, as text a reader can see (one line, controls escaped).
    assert any("alert" in t or "esc" in t or "line" in t for t in seen.text)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_host_names_are_inert_in_markdown(hostile):
    markdown = render_markdown(fleet_model([hostile]))
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    # Header + 6 hosts: a name with '|' or a newline cannot add a cell or a row.
    assert len(rows) == 7
    assert all(row.count(" | ") == rows[0].count(" | ") for row in rows)
    assert "<script" not in markdown and "<img" not in markdown
    assert "\x1b" not in markdown and "\u202e" not in markdown


def test_markdown_cell_escapes_what_markdown_would_read():
    assert cell("a|b") == "a\\|b"
    assert cell("<b>") == "&lt;b&gt;"
    assert cell("[x](y)") == "\\[x\\]\\(y\\)"
    assert cell("two\nlines") == "two\\\\nlines"


def test_markdown_lists_every_host_with_its_reasons():
    model = fleet_model()
    markdown = render_markdown(model)
    for row in model["hosts"]:
        assert f"| {row['rank']} | {cell(row['name'])} |" in markdown
    assert "drained: job needs 9 GiB" in markdown


def test_write_report_writes_three_files_and_check_mode_writes_nothing(tmp_path):
    model = fleet_model()
    target = tmp_path / "out"
    dry = write_report(str(target), model, dry_run=True)
    assert not target.exists()
    assert sorted(dry["changed_files"]) == ["html", "json", "markdown"]
    done = write_report(str(target), model)
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES.values())
    assert json.loads((target / "fleet-report.json").read_text())["hosts"][0]["name"] == "full"
    assert done["paths"]["html"] == str(target / "index.html")
    again = write_report(str(target), model)
    assert again["changed_files"] == []
    assert not [p for p in target.iterdir() if p.name.startswith(".tmp-")]


def test_write_report_refuses_a_file_as_directory(tmp_path):
    from runnerkeep.errors import ConfigError

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        write_report(str(tmp_path / "file"), fleet_model())
