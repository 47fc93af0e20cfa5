"""Human text output: one escaping function for untrusted strings, and plain text tables.

The core renders text too (cleanup and disk reports), and the CLI re-exports ``table`` from
here (the core never imports the CLI).

A file name is chosen by whoever created the file, often a CI job: a newline in it would start
a line of its own in a report (a forged "removed" or "error" line), an ESC sequence would drive
the terminal, and bytes that are not UTF-8 (kept by ``os.fsdecode`` as lone surrogates) crash a
strict UTF-8 stdout. So every path or other untrusted string shown to people goes through
``escape_text`` first, and ``table`` does it for every cell.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\t": "\\t", "\\": "\\\\"}
# Unicode categories that cannot be shown as themselves: controls, line and paragraph
# separators, format characters (bidi overrides, zero-width), surrogates, unassigned.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cf", "Cs", "Co", "Cn"})


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF and unicodedata.category(char) == "Cc":  # C0, DEL, C1
        return f"\\x{code:02x}"
    if unicodedata.category(char) in _HIDDEN_CATEGORIES:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return char


def escape_text(value: object) -> str:
    """``value`` as one printable line: control characters (C0, DEL, C1) as ``\\n``, ``\\t``
    or ``\\xNN``, bytes that were not UTF-8 as ``\\xNN``, other invisible characters as
    ``\\uNNNN``, and the backslash doubled so an escape cannot be faked by a name."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text  # the common case: nothing to do
    return "".join(_escape_char(char) for char in text)


def neutralize_controls(text: str) -> str:
    """``text`` with line breaks and tabs kept and every other invisible character escaped.

    The last line of defence for whole blocks of human output: whatever a command forgot to
    pass through ``escape_text``, no ESC sequence, carriage return or bidi override reaches the
    terminal. (A forged line break is only prevented by ``escape_text`` on the string itself.)
    """
    if text.isprintable():
        return text
    return "".join(
        char if char in "\n\t" or char.isprintable() else _escape_char(char) for char in text
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain left-aligned text table (numbers are pre-formatted by the caller).

    Every cell is escaped (``escape_text``): a cell is always one line. Columns are two spaces
    apart and each line has its trailing blanks stripped.
    """
    header = [escape_text(h) for h in header]
    cells = [[escape_text(c) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
