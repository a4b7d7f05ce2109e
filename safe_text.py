"""How is a string written safely into markdown, a CSV cell or a terminal?

A class or file name is the user's text: it may hold `|`, `<script>`, a
markdown link, a newline, an ESC sequence that clears the screen, or a
spreadsheet formula. Every writer of the project routes such text through
one of these functions, so a name is shown as the characters it is and
never acts as markup, a command or a formula:

- `markdown`: one line of literal text in markdown (a table cell, a status
  line): HTML escaped, markdown's active characters backslash-escaped,
  line breaks made spaces.
- `csv_cell` / `csv_text`: OWASP's guard against CSV formula injection: a
  text cell a spreadsheet would run (it starts with = + - @, a tab or a
  carriage return) is written with a leading single quote; `csv_text`
  undoes it exactly, so a cell the tool reads back (the split manifest,
  the folds) round-trips.
- `terminal`: text printable on a terminal: control characters (ESC, the
  bell, a line break inside a name) shown as escapes like `\\x1b`, bytes
  that are not UTF-8 as U+FFFD.

Imports nothing from the project and nothing heavy: every floor can use it.
"""

import html
import re

# Characters markdown would read as markup inside a line: code, emphasis,
# links and images, table cells, strikethrough, and the backslash itself.
# (< > & are HTML-escaped instead.) `_` only where it can open or close
# emphasis: inside a word (mobilenet_v2) it is text, and stays readable.
_MARKDOWN_ACTIVE = re.compile(r"[\\`*\[\]|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x85\u2028\u2029]+")
# The first characters that make a spreadsheet (Excel, LibreOffice, Google
# Sheets) read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A guarded cell: one or more quotes, then a formula start. The writer adds
# one quote to any cell of quotes-then-formula-start (also one that already
# starts with a quote), so the reader removing one quote is exact.
_GUARDED = re.compile(r"'+[=+\-@\t\r]")
_QUOTED_FORMULA = re.compile(r"'*[=+\-@\t\r]")
# C0 controls, DEL and C1 controls (ESC is \x1b, CSI \x9b), and the
# bidirectional overrides that make a name read backwards.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def markdown(value):
    """`value` (any object, as str) as one line of literal markdown text:
    safe in a table cell or a paragraph, never a link, tag or new row."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = _CONTROL.sub("", text)
    text = html.escape(text, quote=False)
    return _MARKDOWN_ACTIVE.sub(lambda found: "\\" + found.group(0), text)


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value):
    """`value` as written into a CSV cell: a text a spreadsheet would run as
    a formula gets a leading single quote; numbers (also "-0.5" as text)
    and every other value are written as they are."""
    if not isinstance(value, str) or not _QUOTED_FORMULA.match(value) or _is_number(value):
        return value
    return "'" + value


def csv_text(cell):
    """The text a `csv_cell` was made from: undoes its quote, exactly."""
    return cell[1:] if _GUARDED.match(cell) else cell


def terminal(value):
    """`value` (any object, as str) printable on a terminal as what it is:
    control characters as Python escapes (ESC[2J prints as \\x1b[2J, a
    line break inside a name as \\n), undecodable bytes as U+FFFD."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _CONTROL.sub(lambda found: repr(found.group(0))[1:-1], text)
