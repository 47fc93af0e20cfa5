"""The fleet report as one self-contained HTML page: inline CSS and SVG, no script, nothing
fetched (a Content-Security-Policy of ``default-src 'none'`` says so to the browser too).

Every string from a host or the inventory goes through ``text()``: ``escape_text`` (one line,
no control characters) then ``html.escape`` (no markup), in element text and attributes alike.
"""

from __future__ import annotations

import html
from typing import Any

from ..textutil import escape_text
from . import describe

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
LEVEL_COLOURS = {
    "ok": "#2e9e5b",
    "warning": "#d4a017",
    "critical": "#e07020",
    "emergency": "#c62828",
}
RISK_COLOURS = {
    "critical": "#c62828",
    "high": "#e07020",
    "medium": "#d4a017",
    "low": "#5c7cfa",
    "ok": "#2e9e5b",
}
USED = "#9aa3b2"
EMPTY = "#e6e9ef"
BAR_W, BAR_H = 200, 16
CACHE_W = 130
SPARK_W, SPARK_H = 130, 30

STYLE = """
body { font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 20px;
  color: #1d2330; background: #fafbfc; }
h1 { font-size: 22px; margin: 0 0 4px; }
.sub { color: #5a6272; margin-bottom: 16px; }
.chips span { display: inline-block; padding: 3px 10px; margin: 0 6px 6px 0; border-radius: 12px;
  background: #eef1f6; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; vertical-align: top; padding: 8px 6px;
  border-bottom: 1px solid #e3e6ec; }
th { font-size: 12px; color: #5a6272; text-transform: uppercase; letter-spacing: .03em; }
td.host { font-weight: 600; overflow-wrap: anywhere; min-width: 110px; max-width: 170px; }
td.risk { min-width: 170px; max-width: 220px; }
td.host .fig { font-weight: normal; }
div.drained { min-width: 110px; }
.badge { display: inline-block; color: #fff; border-radius: 4px; padding: 1px 7px;
  font-weight: 600; }
.reasons { margin: 4px 0 0; padding-left: 16px; color: #3b4252; }
.fig { color: #3b4252; font-size: 12px; }
.na { color: #8a93a3; }
.drained { color: #c62828; font-weight: 600; }
.down td { background: #fff4f4; }
.legend { margin-top: 14px; color: #5a6272; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }
"""


def text(value: Any) -> str:
    """An untrusted value as safe HTML text (also safe inside a quoted attribute)."""
    return html.escape(escape_text(value), quote=True)


def figure(value: str) -> str:
    css = "fig na" if value == describe.NA else "fig"
    return f'<div class="{css}">{text(value)}</div>'


def render_html(model: dict[str, Any]) -> str:
    now = model["generated_at"]
    rows = "\n".join(host_row_html(row, now) for row in model["hosts"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{text(model["title"])}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{text(model["title"])}</h1>
<div class="sub">generated {text(describe.when(now))}; hosts sorted by risk, riskiest first</div>
{_summary(model["summary"])}
<table id="hosts">
<thead><tr><th>#</th><th>host</th><th>risk</th><th>free space vs watermarks</th>
<th>cache vs quota</th><th>job peaks</th><th>drained</th><th>corruptions</th>
<th>last cleanup</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
{_legend()}
</body>
</html>
"""


def _summary(summary: dict[str, Any]) -> str:
    chips = [
        f"{summary['hosts']} hosts",
        f"{summary['reachable']} reporting",
        f"{summary['unreachable']} unreachable",
        f"{summary['without_facts']} without facts",
        f"{summary['drained']} drained",
        f"{summary['suspect_disks']} suspect disks",
    ]
    chips += [f"risk {level}: {n}" for level, n in summary["by_risk"].items() if n]
    return '<div class="chips">' + "".join(f"<span>{text(c)}</span>" for c in chips) + "</div>"


def host_row_html(row: dict[str, Any], now: float) -> str:
    risk = row["risk"]
    colour = RISK_COLOURS[risk["level"]]
    reasons = "".join(f"<li>{text(r)}</li>" for r in risk["reasons"])
    risk_cell = (
        f'<span class="badge" style="background:{colour}">{text(risk["level"])}</span> '
        f'<span class="fig">score {risk["score"]}</span>'
        + (f'<ul class="reasons">{reasons}</ul>' if reasons else "")
    )
    name = f'<td class="host" data-host="{text(row["name"])}">{text(row["name"])}'
    if row["version"]:
        name += f'<div class="fig">runnerkeep {text(row["version"])}</div>'
    name += "</td>"
    if row["status"] != "ok":
        message = f"{row['status']}: {row['message'] or 'no message'}"
        return (
            f'<tr class="down"><td>{row["rank"]}</td>{name}<td class="risk">{risk_cell}</td>'
            f'<td colspan="6">{figure(message)}</td></tr>'
        )
    cells = [
        _disk_cell(row["disk"]),
        _cache_cell(row["cache"]),
        _peaks_cell(row["job_peaks"]),
        _drain_cell(row["drain"], now),
        figure(describe.corruption_text(row["corruption"])),
        figure(describe.cleanup_text(row["last_cleanup"], now)),
    ]
    return (
        f'<tr><td>{row["rank"]}</td>{name}<td class="risk">{risk_cell}</td>'
        + "".join(f"<td>{c}</td>" for c in cells)
        + "</tr>"
    )


def _disk_cell(disk: dict[str, Any]) -> str:
    words = figure(describe.free_text(disk)) + figure("below: " + describe.marks_text(disk))
    if disk["path"]:
        words += figure(f"on {disk['path']}")
    return disk_bar(disk) + words


def disk_bar(disk: dict[str, Any]) -> str:
    """Used and free space across the bar's width (capacity); a tick at each watermark, where
    free space would fall below it."""
    capacity, free = disk["capacity_bytes"], disk["free_bytes"]
    if not capacity or free is None:
        return ""
    scale = BAR_W / capacity
    used_w = max(0.0, min(BAR_W, (capacity - free) * scale))
    colour = LEVEL_COLOURS.get(disk["level"] or "ok", LEVEL_COLOURS["ok"])
    parts = [
        f'<rect width="{BAR_W}" height="{BAR_H}" fill="{EMPTY}"/>',
        f'<rect width="{used_w:.1f}" height="{BAR_H}" fill="{USED}"/>',
        f'<rect x="{used_w:.1f}" width="{BAR_W - used_w:.1f}" height="{BAR_H}" fill="{colour}"/>',
    ]
    for level in ("warning", "critical", "emergency"):
        mark = disk["watermarks"][level]
        if mark is None:
            continue
        x = max(0.0, min(BAR_W, (capacity - mark) * scale))
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="-3" y2="{BAR_H + 3}" '
            f'stroke="{LEVEL_COLOURS[level]}" stroke-width="2">'
            f"<title>{text(level)} below {text(describe.size(mark))} free</title></line>"
        )
    label = text(f"{describe.free_text(disk)}; state {disk['level'] or describe.NA}")
    return _svg(BAR_W, BAR_H + 6, "".join(parts), label, offset=3)


def _cache_cell(cache: dict[str, Any]) -> str:
    return cache_bar(cache) + figure(describe.cache_text(cache))


def cache_bar(cache: dict[str, Any]) -> str:
    size, quota = cache["bytes"], cache["quota_bytes"]
    if size is None or not quota:
        return ""
    scale = CACHE_W / max(size, quota)
    colour = LEVEL_COLOURS["emergency"] if size > quota else "#4c6ef5"
    parts = [
        f'<rect width="{quota * scale:.1f}" height="{BAR_H}" fill="{EMPTY}"/>',
        f'<rect width="{size * scale:.1f}" height="{BAR_H}" fill="{colour}"/>',
        f'<line x1="{quota * scale:.1f}" x2="{quota * scale:.1f}" y1="-3" y2="{BAR_H + 3}" '
        'stroke="#1d2330" stroke-width="2"/>',
    ]
    return _svg(CACHE_W, BAR_H + 6, "".join(parts), text(describe.cache_text(cache)), offset=3)


def _peaks_cell(peaks: dict[str, Any]) -> str:
    return sparkline(peaks) + figure(describe.peaks_text(peaks))


def sparkline(peaks: dict[str, Any]) -> str:
    """The recorded job peaks, oldest to newest; a dashed line at the budget's job peak."""
    values = peaks["values"]
    if not values:
        return ""
    budget = peaks["budget_peak_bytes"] or 0
    top = max(*values, budget) or 1
    step = SPARK_W / max(1, len(values) - 1)

    def y(value: int) -> float:
        return SPARK_H - 2 - (SPARK_H - 4) * value / top

    points = " ".join(f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts = []
    if budget:
        parts.append(
            f'<line x1="0" x2="{SPARK_W}" y1="{y(budget):.1f}" y2="{y(budget):.1f}" '
            'stroke="#c62828" stroke-dasharray="3 3" stroke-width="1"/>'
        )
    if len(values) == 1:
        parts.append(f'<circle cx="{SPARK_W / 2}" cy="{y(values[0]):.1f}" r="2.5" fill="#4c6ef5"/>')
    else:
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="#4c6ef5" stroke-width="1.5"/>'
        )
    return _svg(SPARK_W, SPARK_H, "".join(parts), text(describe.peaks_text(peaks)))


def _drain_cell(drain: dict[str, Any], now: float) -> str:
    words = describe.drain_text(drain, now)
    if drain["drained"]:
        return f'<div class="fig drained">{text(words)}</div>'
    return figure(words)


def _svg(width: int, height: int, body: str, label: str, offset: int = 0) -> str:
    """An inline SVG; ``label`` is already escaped text."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 {-offset} {width} {height}" role="img" aria-label="{label}">'
        f"<title>{label}</title>{body}</svg>"
    )


def _legend() -> str:
    items = "".join(
        f'<i style="background:{LEVEL_COLOURS[level]}"></i>{level} mark'
        for level in ("warning", "critical", "emergency")
    )
    return (
        '<div class="legend">Free space bar: grey is used, coloured is free (its colour is the '
        f"disk state); ticks are the watermarks:{items}. Cache bar: the line is the quota. "
        "Job peaks: newest on the right; dashed line is the budget's job peak. "
        "n/a: the host does not report this figure.</div>"
    )
