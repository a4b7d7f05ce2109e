"""safe_text.py: a user's class or file name written into markdown, a CSV
cell and a terminal as the text it is, and the tool's own CSVs read back
exactly; cross_validation's summary.md and folds.csv through it."""

import re

import pytest

import artifacts
import cross_validation
import safe_text

FORMULAS = ["=cmd|' -C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'=already quoted", "''-x"]
PLAIN = ["cat", "-5", "-0.25", "1e-3", "'quoted", "", "a=b", "mobilenet_v2"]


def markdown_cells(line):
    """The cells of a markdown table row: split on the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


@pytest.mark.parametrize("text", FORMULAS)
def test_a_cell_a_spreadsheet_would_run_is_quoted_and_read_back_exactly(text):
    cell = safe_text.csv_cell(text)
    assert cell == "'" + text
    assert safe_text.csv_text(cell) == text


@pytest.mark.parametrize("text", PLAIN)
def test_other_cells_and_numbers_are_written_as_they_are(text):
    assert safe_text.csv_cell(text) == text
    assert safe_text.csv_text(text) == text


def test_values_that_are_not_text_are_left_to_the_csv_writer():
    assert [safe_text.csv_cell(value) for value in (-1, -0.5, None)] == [-1, -0.5, None]


@pytest.mark.parametrize("text, shown", [
    ("a | b | c", r"a \| b \| c"),
    ("[pwn](javascript:alert(1))", r"\[pwn\](javascript:alert(1))"),
    ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("two\nlines\r\nhere", "two lines here"),
    ("`code` *b* _i_ ~~s~~ \\", r"\`code\` \*b\* \_i\_ \~\~s\~\~ \\"),
    ("mobilenet_v2 & co", "mobilenet_v2 &amp; co"),
])
def test_markdown_is_one_line_of_literal_text(text, shown):
    assert safe_text.markdown(text) == shown


@pytest.mark.parametrize("name, shown", [
    ("\x1b[2Jclear.png", r"\x1b[2Jclear.png"),
    ("a\nb\tc\x07", r"a\nb\tc\x07"),
    ("\x9b31m", r"\x9b31m"),
    ("evil\u202egnp.exe", r"evil\u202egnp.exe"),
    ("caf\udce9", "caf\ufffd"),
    ("été", "été"),
])
def test_terminal_text_shows_control_characters_as_escapes(name, shown):
    assert safe_text.terminal(name) == shown
    assert safe_text.terminal(shown) == shown  # printing it again changes nothing


def test_the_cross_validation_summary_keeps_a_hostile_name_in_its_cell():
    name = "a | b\n[x](javascript:alert(1)) <b>"
    rows = [{"backbone": name, "split": "val", "metric": label, "folds": 2, "mean": 0.5, "std": 0.1,
             "ci95_low": 0.4, "ci95_high": 0.6} for _, label, _ in cross_validation.METRICS]
    per_fold = [{"backbone": name, "fold": 1, "run": "run|x", "split": "val", "images": 4,
                 **{key: 0.5 for key, _, _ in cross_validation.METRICS}}]

    text = cross_validation.markdown_summary(rows, per_fold, f"lowest val_loss: {name}", [f"of {name}"])

    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) + 2 + len(per_fold)  # no newline started a row
    assert {len(markdown_cells(line)) for line in table[:2 + len(rows)]} == {6}
    assert {len(markdown_cells(line)) for line in table[2 + len(rows):]} == {5 + len(cross_validation.METRICS)}
    assert "<b>" not in text and "[x](" not in text


def test_folds_with_a_formula_class_name_round_trip(tmp_path):
    rows = [cross_validation.FOLDS_HEADER, ("=cmd|' -C calc'!A0/-1.png", "=cmd|' -C calc'!A0", "@g", "1")]
    artifacts.write_csv(str(tmp_path / cross_validation.FOLDS_FILE), rows)

    assert cross_validation.read_folds(str(tmp_path)) == rows
    written = (tmp_path / cross_validation.FOLDS_FILE).read_text(encoding="utf-8")
    assert "'=cmd" in written and ",'@g," in written
