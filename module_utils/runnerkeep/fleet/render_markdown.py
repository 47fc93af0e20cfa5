"""The fleet report as Markdown: a summary, one table row per host (riskiest first), and the
reasons behind each host's risk.

A host or inventory string is escaped for Markdown (``cell``): one line (``escape_text``), no
HTML (``<``, ``>``, ``&`` as entities, since Markdown passes HTML through), and the characters
that would end a table cell or start emphasis, code or a link backslash-escaped. GitHub also
links bare text (``https://...``, ``www.``, ``user@host``): a word joiner (U+2060, invisible)
goes into each of those so host data never becomes a link.
"""

from __future__ import annotations

import html
import re
from typing import Any

from ..textutil import escape_text
from . import describe

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
# What GFM's autolink extension starts a link at: any scheme's "://", "www." and the "@" of an
# address (mailto:, xmpp: and bare e-mail). The joiner goes right after ":", "www" and "@".
_AUTOLINK_START = re.compile(r"(?i):(?=//)|www(?=\.)|@")
WORD_JOINER = "\u2060"
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
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))
    return _AUTOLINK_START.sub(lambda m: m.group(0) + WORD_JOINER, escaped)


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
    lines += [host_row_markdown(row, now) for row in model["hosts"]]
    lines += ["", "## Why", ""]
    lines += [why_line(row) for row in model["hosts"]]
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


def why_line(row: dict[str, Any]) -> str:
    reasons = "; ".join(cell(r) for r in row["risk"]["reasons"]) or "nothing found"
    return f"- **{cell(row['name'])}** ({cell(row['risk']['level'])}): {reasons}"


def host_row_markdown(row: dict[str, Any], now: float) -> str:
    """One host's table row (``why_line`` is its reasons line)."""
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
