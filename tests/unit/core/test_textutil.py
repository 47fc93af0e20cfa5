"""escape_text: an untrusted string (a file name) is always one printable line, unambiguously;
table() escapes every cell, so no cell can add a line to a report."""

from __future__ import annotations

import os
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from runnerkeep.textutil import escape_text, neutralize_controls, table


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("job\n  [attack] FORGED", "job\\n  [attack] FORGED"),
        ("a\tb", "a\\tb"),
        ("a\rb", "a\\x0db"),
        ("\x1b[2J\x1b]0;title\x07", "\\x1b[2J\\x1b]0;title\\x07"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b31m", "c1\\x85\\x9b31m"),  # NEL and the 8-bit CSI
        (os.fsdecode(b"caf\xe9-\xff.log"), "caf\\xe9-\\xff.log"),  # not UTF-8
        ("back\\slash", "back\\\\slash"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("café ü 日本 ☃ spaced name", "café ü 日本 ☃ spaced name"),  # printable: as is
    ],
)
def test_escape_text(raw, shown):
    assert escape_text(raw) == shown


def test_escape_text_takes_any_value():
    assert escape_text(None) == "None"
    assert escape_text(42) == "42"


def _visible(text: str) -> bool:
    return all(
        unicodedata.category(c) not in {"Cc", "Zl", "Zp", "Cf", "Cs", "Co", "Cn"} for c in text
    )


@given(st.text())
def test_every_string_becomes_one_visible_line(text):
    shown = escape_text(text)
    assert _visible(shown)
    assert len(shown.splitlines()) <= 1
    shown.encode("utf-8")  # strict UTF-8 stdout: never a lone surrogate


@given(st.binary())
def test_every_file_name_becomes_one_visible_line(name):
    shown = escape_text(os.fsdecode(name))
    assert _visible(shown)
    shown.encode("utf-8")
    assert "\n" not in shown


@given(st.text(), st.text())
def test_escaping_is_unambiguous(a, b):
    if a != b:
        assert escape_text(a) != escape_text(b)


def test_table_cells_cannot_add_lines():
    rows = [["/r/job1\n  [attack] FORGED  9.9 GiB", "1"], ["\x1b[31mred", "2"]]
    text = table(rows, ["path", "n"])
    lines = text.split("\n")
    assert len(lines) == 3
    assert lines[1].startswith("/r/job1\\n  [attack] FORGED")
    assert "\x1b" not in text
    # columns are aligned on the escaped text
    assert lines[1].rindex("1") == lines[2].rindex("2") == lines[0].rindex("n")


def test_neutralize_controls_keeps_lines_and_tabs_and_escapes_the_rest():
    text = "line one\tcol\nline \x1b[31mtwo\r\u202e\udcff"
    out = neutralize_controls(text)
    assert out.split("\n") == ["line one\tcol", "line \\x1b[31mtwo\\x0d\\u202e\\xff"]
    assert neutralize_controls("plain \\n text\n") == "plain \\n text\n"  # no double escaping


def test_cli_text_output_never_carries_a_raw_escape_sequence(tmp_path, capsys):
    from runnerkeep_cli.output import CommandResult, emit

    emit(CommandResult({}, "cache key \x1b]0;owned\x07 restored"), as_json=False)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]0;owned\\x07" in out
