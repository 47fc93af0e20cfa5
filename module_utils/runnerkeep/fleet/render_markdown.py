"""The fleet report as Markdown: a summary, one table row per host (riskiest first), and the
reasons behind each host's risk.

A host or inventory string is escaped for Markdown (``cell``): one line (``escape_text``), no
HTML (``<``, ``>``, ``&`` as entities, since Markdown passes HTML through), and the characters
that would end a table cell or start emphasis, code or a link backslash-escaped.
"""

from __future__ import annotations

import html
import re
from typing import Any

from ..textutil import escape_text
from . import describe

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
HEADER = [
    "#",
    "host",
    "risk",
    "state",
    "free",
    "cache / quota",
    "job peaks",
    "drained",
    "corruptions",
    "last cleanup",
]


def cell(value: Any) -> str:
    """An untrusted value as inert Markdown inline text."""
    one_line = escape_text(value)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def render_markdown(model: dict[str, Any]) -> str:
    now = model["generated_at"]
    lines = [
        f"# {cell(model['title'])}",
        "",
        f"Generated {cell(describe.when(now))}; hosts sorted by risk, riskiest first.",
        "",
        _summary(model["summary"]),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += [_row(row, now) for row in model["hosts"]]
    lines += ["", "## Why", ""]
    for row in model["hosts"]:
        reasons = "; ".join(cell(r) for r in row["risk"]["reasons"]) or "nothing found"
        lines.append(f"- **{cell(row['name'])}** ({cell(row['risk']['level'])}): {reasons}")
    lines += ["", "n/a: the host does not report this figure."]
    return "\n".join(lines) + "\n"


def _summary(summary: dict[str, Any]) -> str:
    parts = [
        f"{summary['hosts']} hosts",
        f"{summary['reachable']} reporting",
        f"{summary['unreachable']} unreachable",
        f"{summary['without_facts']} without facts",
        f"{summary['drained']} drained",
        f"{summary['suspect_disks']} suspect disks",
    ]
    return ", ".join(parts) + "."


def _row(row: dict[str, Any], now: float) -> str:
    risk = f"{row['risk']['level']} ({row['risk']['score']})"
    if row["status"] != "ok":
        message = f"{row['status']}: {row['message'] or 'no message'}"
        cells = [str(row["rank"]), row["name"], risk, row["status"], message]
        cells += [""] * (len(HEADER) - len(cells))
    else:
        cells = [
            str(row["rank"]),
            row["name"],
            risk,
            describe.state_text(row),
            describe.free_text(row["disk"]),
            describe.cache_text(row["cache"]),
            describe.peaks_text(row["job_peaks"]),
            describe.drain_text(row["drain"], now),
            describe.corruption_text(row["corruption"]),
            describe.cleanup_text(row["last_cleanup"], now),
        ]
    return "| " + " | ".join(cell(c) for c in cells) + " |"
