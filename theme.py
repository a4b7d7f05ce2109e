"""What the blush theme is: its colours, fonts and sizes as plain values.

visualize.py draws every figure with them (adding what needs matplotlib:
the heat colour map, the line colour cycle); the report page (report.py)
and the web page (app.py) wear the same colours without importing
matplotlib. Also how a class name is shortened to fit a label, and how a
score or a calibration error is written.
"""

import re

# White through blush pink to deep rose; text in a dark plum, softer than
# black on the pinks.
WHITE = "#ffffff"
PETAL = "#fdf1f4"
BLUSH = "#f6c6d3"
PINK = "#ea92ad"
ROSE = "#cf5b84"
DEEP_ROSE = "#9c2757"
WINE = "#5c1636"
INK = "#3a1d2a"
MUTED = "#8a6472"
GRID = "#f2dde4"
GRID_TEXT = "#c9a9b4"  # zeros in a heatmap: present but quiet
# Correct/wrong keep their universal meaning, in tones that sit with the pinks.
CORRECT = "#2e8b57"
WRONG = "#d1263b"
VERDICT_COLOURS = {"correct": CORRECT, "wrong": WRONG, "unlabelled": ROSE}
# A multi-label gallery tile, label by label: right (predicted and true),
# wrong (predicted, not true), missed (true, not predicted; amber, apart
# from both), predicted (no truth known); each with a marker, so colour is
# never the only sign.
MISSED = "#c77c0e"
LABEL_MARKS = {
    "right": ("✓", CORRECT, "right: predicted and true"),
    "wrong": ("✗", WRONG, "wrong: predicted, not true"),
    "missed": ("○", MISSED, "missed: true, not predicted"),
    "predicted": ("•", ROSE, "predicted (true labels unknown)"),
}
SPLIT_COLOURS = {"train": DEEP_ROSE, "val": ROSE, "test": BLUSH}
# Distinct line colours for many curves, all warm, cycled with line styles.
LINE_COLOURS = (
    "#9c2757", "#e07a5f", "#6d3b8c", "#cf5b84", "#b5651d",
    "#c9184a", "#8d6a9f", "#f08080", "#5c1636", "#d4869c",
)
LINE_STYLES = ("-", "--", "-.", ":")
# The heat scale's stops, white to WINE; missing cells grey.
HEATMAP_STOPS = (WHITE, "#fbe3ea", "#f4b3c6", "#e4799a", "#c4456f", "#8e1d4c", WINE)
HEATMAP_BAD = "#eeeeee"
DPI = 130
FONT_SIZES = {"title": 14, "subtitle": 10.5, "label": 10.5, "tick": 9, "small": 8}

# matplotlib's rc settings of the theme (visualize.THEME adds the line colour cycle).
RC = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.facecolor": WHITE,
    "savefig.facecolor": WHITE,
    "axes.facecolor": WHITE,
    "axes.edgecolor": "#c8a0af",
    "axes.labelcolor": INK,
    "axes.titlecolor": INK,
    "axes.titlesize": FONT_SIZES["subtitle"],
    "axes.labelsize": FONT_SIZES["label"],
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.color": GRID,
    "grid.linewidth": 0.8,
    "text.color": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "xtick.labelsize": FONT_SIZES["tick"],
    "ytick.labelsize": FONT_SIZES["tick"],
    "legend.fontsize": FONT_SIZES["tick"],
    "legend.frameon": False,
    "figure.titlesize": FONT_SIZES["title"],
    "figure.titleweight": "bold",
    "font.family": "DejaVu Sans",
}


# How a number is written wherever it is shown (terminal, report page,
# figures, web page), so that one quantity reads the same everywhere: a
# score between 0 and 1 (accuracy, F1, ROC AUC, mAP, a baseline) and a
# loss with three decimals (0.963), a calibration error as a percentage
# (6.4%). Files meant for programs (CSV, JSON) keep every digit.


def score(value):
    """0.963 (three decimals; "n/a" for None): accuracy, F1, AUC, a loss."""
    return "n/a" if value is None else f"{value:.3f}"


def percent(value):
    """6.4% (one decimal; "n/a" for None): a calibration error (ECE)."""
    return "n/a" if value is None else f"{value:.1%}"


def short_middle(text, width):
    """`text` in at most `width` characters, shortened in the middle
    ('glioma_tum…_0012.png'): file names and paths differ mostly at their
    ends (a number, the extension) and begin with a shared prefix, so
    cutting either end would make two of them read alike."""
    text = str(text)
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail:]


def short_label(name, width=14, max_lines=2):
    """A class name in at most `max_lines` lines of at most `width`
    characters, broken after a space, _ or - where possible (class names
    are often snake_case), shortened with an ellipsis beyond that."""
    text = str(name)
    if max_lines == 1 or len(text) <= width:
        return text if len(text) <= width else text[: width - 1] + "…"
    lines, current = [], ""
    for piece in re.findall(r"[^\s_-]+[\s_-]*|[\s_-]+", text):
        if current and len(current) + len(piece.rstrip()) > width:
            lines.append(current)
            current = ""
        while len(piece) > width:  # one word longer than a line
            lines.append(piece[:width])
            piece = piece[width:]
        current += piece
    lines.append(current)
    if len(lines) > max_lines:
        rest = "".join(lines[max_lines - 1 :])
        lines = lines[: max_lines - 1] + [rest[: width - 1] + "…"]
    return "\n".join(line.rstrip() for line in lines)


# Width of one character of tick label text, in inches (DejaVu Sans, 9 pt).
CHARACTER_WIDTH = 0.075
