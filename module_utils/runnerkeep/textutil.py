"""Plain text tables for human output: the core renders text too (cleanup and disk reports),
and the CLI re-exports ``table`` from here (the core never imports the CLI)."""

from __future__ import annotations


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain left-aligned text table (numbers are pre-formatted by the caller).

    Columns are two spaces apart and each line has its trailing blanks stripped.
    """
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
