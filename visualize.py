"""How every figure looks: the blush theme and every plot.

Plot functions take data and an output path, draw on a standalone
matplotlib Figure (never pyplot: drawing never opens a window and works on
any backend, headless included), save the PNG atomically and return its
path. What each figure shows, and when saved figures are shown, is
figures.py's, which opens them through `show_saved_figure` here. This is
the only module that imports matplotlib and seaborn (seaborn only when a heat table or bar chart is drawn: it
brings pandas and SciPy, about 2 s, which a command that stops at a bad
option should not wait for).
"""

import contextlib
import functools
import os

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import lines as mlines
from matplotlib import patches as mpatches
from matplotlib import ticker
from matplotlib.figure import Figure

import artifacts
import theme

# ---------------------------------------------------------------- theme

# The theme's plain values are theme.py's; these two need matplotlib.
HEATMAP = mcolors.LinearSegmentedColormap.from_list("blush", list(theme.HEATMAP_STOPS)).with_extremes(
    bad=theme.HEATMAP_BAD)
THEME = {**theme.RC, "axes.prop_cycle": matplotlib.cycler(color=theme.LINE_COLOURS)}


def blush_scale(count=11):
    """`count` hex colours of the blush scale (HEATMAP), lightest first,
    from just above white to theme.WINE: the hues of the app's page theme, so the
    page wears the figures' colours."""
    return tuple(mcolors.to_hex(HEATMAP(position)) for position in np.linspace(0.06, 1.0, count))


def themed(function):
    """Draws `function`'s figure with the blush theme's settings."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(THEME):
            return function(*args, **kwargs)

    return wrapper


def save_figure(figure, output_path):
    """Saves a Figure as PNG atomically; returns the path."""
    artifacts.atomic_write(
        output_path,
        lambda temp_path: figure.savefig(temp_path, format="png", bbox_inches="tight", pad_inches=0.2),
    )
    return output_path


def label_class_axis(axes, axis, class_names, room=0.0, first=0.0):
    """Class names as tick labels, the first at `first` (0.5 on a seaborn
    heatmap, whose cells span whole units), then one per unit. On x: level
    (wrapped on two lines) when every name fits the `room` (inches) each
    tick has, else one line rotated 45 degrees (90 beyond 25 classes). On
    y: one line."""
    positions = np.arange(len(class_names)) + first
    if axis == "y":
        axes.set_yticks(positions, [theme.short_label(name, 24, 1) for name in class_names])
        return
    wrapped = [theme.short_label(name, 12, 2) for name in class_names]
    longest = max(len(line) for label in wrapped for line in label.split("\n"))
    if not any(label.endswith("…") for label in wrapped) and longest * theme.CHARACTER_WIDTH <= 0.9 * room:
        axes.set_xticks(positions, wrapped)
    elif len(class_names) <= 25:
        axes.set_xticks(positions, [theme.short_label(name, 24, 1) for name in class_names],
                        rotation=45, ha="right", rotation_mode="anchor")
    else:
        axes.set_xticks(positions, [theme.short_label(name, 24, 1) for name in class_names], rotation=90)


# ---------------------------------------------------------------- 1. distribution


# Above this many classes the bars turn horizontal, so names read level.
HORIZONTAL_BARS_FROM = 16


@themed
def plot_dataset_distribution(counts, class_names, output_path, skipped=0):
    """Grouped bars of images per class and split, counts on the bars
    (horizontal bars, one row per class, beyond a few classes).

    `counts` is {split: {class: images}} (DatasetIndex.counts()); `skipped`
    the number of files the audit left out. Returns the PNG path.
    """
    import seaborn

    splits = [split for split in ("train", "val", "test") if split in counts]
    totals = np.array([sum(counts[split][name] for split in splits) for name in class_names])
    ratio = totals.max() / max(totals.min(), 1)
    num_classes = len(class_names)
    horizontal = num_classes >= HORIZONTAL_BARS_FROM
    if horizontal:
        size = (10.5, min(0.45 * num_classes + 2.2, 60))
    else:
        size = (max(7.5, 0.9 * num_classes + 3), 5.4)
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    # Long form, a bar per split and class; each split's hue is its legend entry.
    names = [name for split in splits for name in class_names]
    images = [counts[split][name] for split in splits for name in class_names]
    legend = [f"{split} ({sum(counts[split][name] for name in class_names):,})" for split in splits]
    seaborn.barplot(x=images if horizontal else names, y=names if horizontal else images,
                    hue=np.repeat(legend, num_classes), order=class_names, width=0.84, errorbar=None,
                    palette=[theme.SPLIT_COLOURS[split] for split in splits], saturation=1, edgecolor=theme.WINE,
                    linewidth=0.6, orient="h" if horizontal else "v", ax=axes)
    for bars in axes.containers:
        axes.bar_label(bars, padding=2, fontsize=theme.FONT_SIZES["small"])
    if horizontal:
        label_class_axis(axes, "y", class_names)
        axes.set_ylim(num_classes - 0.4, -0.6)  # first class on top
        axes.margins(x=0.1)  # room for the counts right of the longest bar
        axes.xaxis.grid(True)
        axes.set_xlabel("Images")
        axes.set_ylabel("Class")
    else:
        label_class_axis(axes, "x", class_names, room=(size[0] - 2.5) / num_classes)
        axes.set_xlim(-0.6, num_classes - 0.4)
        axes.margins(y=0.12)  # room for the counts above the tallest bar
        axes.yaxis.grid(True)
        axes.set_xlabel("Class")
        axes.set_ylabel("Images")
    axes.set_axisbelow(True)
    axes.legend(title="split", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle(f"Images per class · imbalance ratio {ratio:.1f} : 1")
    note = f"{int(totals.sum()):,} images in {num_classes} classes · ratio = largest / smallest class · "
    note += f"{skipped} unreadable file{'s' if skipped != 1 else ''} skipped by the audit"
    axes.set_title(note, color=theme.MUTED)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 2. class grid


def hide_ticks(axes):
    axes.set_xticks([])
    axes.set_yticks([])


def frame(axes, colour, width):
    for spine in axes.spines.values():
        spine.set_visible(True)
        spine.set_color(colour)
        spine.set_linewidth(width)


@themed
def plot_class_grid(examples, output_path, note="", captions=None, title="Example images per class"):
    """A row of example images per class, class names as row labels.

    `examples` is [(class name, [uint8 (H, W, 3) images])]; `captions`, if
    given, one list of texts per row, written under the images (a
    multi-label image's label set). Returns the path.
    """
    num_rows = len(examples)
    num_cols = max(len(images) for _, images in examples)
    tile = 1.35 if num_rows <= 12 else 1.0
    # Room under each row for its captions' lines.
    lines = 0 if captions is None else max(caption.count("\n") + 1 for row in captions for caption in row)
    figure = Figure(figsize=(num_cols * tile + 1.8, num_rows * (tile + 0.16 * lines) + 1.0), layout="constrained")
    grid = figure.subplots(num_rows, num_cols, squeeze=False)
    for row, (name, images) in enumerate(examples):
        for column in range(num_cols):
            axes = grid[row][column]
            hide_ticks(axes)
            if column < len(images):
                axes.imshow(images[column])
                frame(axes, theme.BLUSH, 1.0)
                if captions is not None:
                    axes.set_xlabel(captions[row][column], fontsize=theme.FONT_SIZES["small"], color=theme.MUTED)
            else:
                axes.axis("off")
        grid[row][0].set_ylabel(
            theme.short_label(name, width=16), rotation=0, ha="right", va="center",
            fontsize=theme.FONT_SIZES["label"], labelpad=8,
        )
    figure.suptitle(title)
    if note:
        figure.supxlabel(note, fontsize=theme.FONT_SIZES["small"] + 1, color=theme.MUTED)
    return save_figure(figure, output_path)


@themed
def plot_near_copies(groups, output_path, note=""):
    """A row per group of near-copies, its images side by side, each titled
    with its split, class and file name, so a user can judge whether the
    group is one picture saved several times (or a false merge).

    `groups` is [[(uint8 (H, W, 3) image, caption)]]. Returns the path.
    """
    num_rows = len(groups)
    num_cols = max(len(members) for members in groups)
    tile = 1.6
    figure = Figure(figsize=(num_cols * tile + 1.0, num_rows * (tile + 0.35) + 1.0), layout="constrained")
    grid = figure.subplots(num_rows, num_cols, squeeze=False)
    for row, members in enumerate(groups):
        for column in range(num_cols):
            axes = grid[row][column]
            hide_ticks(axes)
            if column < len(members):
                image, caption = members[column]
                axes.imshow(image)
                axes.set_title(caption, fontsize=theme.FONT_SIZES["small"], color=theme.MUTED)
                frame(axes, theme.BLUSH, 1.0)
            else:
                axes.axis("off")
        grid[row][0].set_ylabel(f"group {row + 1}", rotation=0, ha="right", va="center",
                                fontsize=theme.FONT_SIZES["label"], labelpad=8)
    figure.suptitle("Near-copies kept together")
    if note:
        figure.supxlabel(note, fontsize=theme.FONT_SIZES["small"] + 1, color=theme.MUTED)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 3. augmentation


@themed
def plot_augmentation_preview(originals, augmented, output_path, note="", row_labels=None, column_titles=None):
    """Each row: one training image, then its augmented versions.

    `originals` is uint8 (K, H, W, 3); `augmented` uint8 (V, K, H, W, 3),
    version by version as the training pipeline produced them; `row_labels`
    (classes) go left of the rows, `column_titles` (one a version) above. Returns the path.
    """
    num_images, num_versions = len(originals), len(augmented)
    tile = 1.45
    figure = Figure(figsize=((num_versions + 1) * tile + 1.6, num_images * tile + 1.2), layout="constrained")
    grid = figure.subplots(num_images, num_versions + 1, squeeze=False)
    for row in range(num_images):
        for column in range(num_versions + 1):
            axes = grid[row][column]
            hide_ticks(axes)
            if column == 0:
                axes.imshow(originals[row])
                frame(axes, theme.DEEP_ROSE, 2.5)
                if row_labels is not None:
                    axes.set_ylabel(theme.short_label(row_labels[row], 16), rotation=0, ha="right",
                                    va="center", labelpad=8)
            else:
                axes.imshow(augmented[column - 1][row])
                frame(axes, theme.BLUSH, 1.0)
            if row == 0:
                titles = column_titles or [f"augmented {number + 1}" for number in range(num_versions)]
                axes.set_title("original" if column == 0 else titles[column - 1],
                               fontsize=theme.FONT_SIZES["tick"], color=theme.DEEP_ROSE if column == 0 else theme.INK)
    figure.suptitle("Augmentation preview")
    if note:
        figure.supxlabel(note, fontsize=theme.FONT_SIZES["small"] + 1, color=theme.MUTED)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 4. training curves


@themed
def plot_training_curves(history, output_path, finetune_start=None, chance=None, chance_epochs=0):
    """Loss and accuracy per epoch, train vs val, from the history CSV.

    `history` is {column: array} (train_utils.read_history: 0-based `epoch`,
    `loss`, `val_loss`, `accuracy`, `val_accuracy`); `finetune_start` the
    first fine-tuning epoch (0-based) or None. The best epoch (lowest
    val_loss, the one saved as best_model.keras) is starred. `chance`: the
    val accuracy of always answering the largest class (a dotted line), and
    `chance_epochs` first epochs at it are shaded and said to be normal:
    from scratch they look broken while BatchNorm settles. Returns the path.
    """
    epochs = np.asarray(history["epoch"], dtype=int) + 1
    best = int(np.nanargmin(history["val_loss"]))
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    panels = figure.subplots(1, 2)
    for axes, metric, name in zip(panels, ("loss", "accuracy"), ("Loss", "Accuracy")):
        if chance_epochs:
            mark_epochs_at_chance(axes, chance_epochs)
        if finetune_start is not None and finetune_start < len(epochs):
            axes.axvspan(finetune_start + 0.5, epochs[-1] + 0.5, color=theme.PETAL, zorder=0,
                         label=f"fine-tuning (from epoch {finetune_start + 1})")
            axes.axvline(finetune_start + 0.5, color=theme.ROSE, linestyle=":", linewidth=1.5)
        axes.plot(epochs, history[metric], color=theme.DEEP_ROSE, marker="o", markersize=3.5,
                  linewidth=2, label="train")
        axes.plot(epochs, history[f"val_{metric}"], color=theme.PINK, marker="o", markersize=3.5,
                  linewidth=2, linestyle="--", label="val")
        axes.axvline(epochs[best], color=theme.WINE, linestyle="--", linewidth=0.9, alpha=0.5)
        axes.scatter([epochs[best]], [history[f"val_{metric}"][best]], marker="*", s=220,
                     color=theme.WINE, zorder=5, label=f"best epoch {epochs[best]} (lowest val loss)")
        axes.set_title(name, fontsize=theme.FONT_SIZES["label"] + 1, fontweight="bold")
        axes.set_xlabel("Epoch")
        axes.set_ylabel(name)
        axes.set_xlim(0.5, epochs[-1] + 0.5)
        # Plain numbers: an offset ("+2.302" above the axis) is easy to miss.
        axes.yaxis.get_major_formatter().set_useOffset(False)
        if len(epochs) <= 12:
            axes.set_xticks(epochs)
        else:
            axes.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        axes.grid(True)
        axes.set_axisbelow(True)
    panels[1].yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    panels[1].set_ylim(min(0.0, np.nanmin(history["accuracy"])), 1.02)
    if chance is not None:
        panels[1].axhline(chance, color=theme.MUTED, linestyle=":", linewidth=1.2,
                          label=f"chance: always the largest class ({chance:.0%})")
    handles, labels = panels[1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper")
    figure.suptitle("Training curves")
    figure.supxlabel(
        f"best epoch {epochs[best]}: val loss {theme.score(history['val_loss'][best])}, "
        f"val accuracy {theme.score(history['val_accuracy'][best])} · "
        f"{len(epochs)} epoch{'s' if len(epochs) != 1 else ''}",
        fontsize=theme.FONT_SIZES["subtitle"], color=theme.MUTED,
    )
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 4b. learning-rate range test


@themed
def plot_lr_finder(rates, losses, smoothed, suggested, valley, output_path, subtitle=""):
    """The learning-rate range test: each step's loss (faint) and its
    smoothed curve against the learning rate on a log axis, the valley the
    suggestion comes from shaded, the suggested rate marked and labelled.

    `rates`, `losses`, `smoothed`: one value per step; `suggested`: the
    suggestion's step; `valley`: its (first, last) step. The y axis spans
    the smoothed curve before its last five steps, up to 4x its minimum (where the test stops), so the
    last exploding batches do not flatten the rest (they leave the top). Returns the path.
    """
    rates, losses, smoothed = (np.asarray(values, dtype=float) for values in (rates, losses, smoothed))
    finite = smoothed[np.isfinite(smoothed)]
    figure = Figure(figsize=(9, 5.6), layout="constrained")
    axes = figure.subplots()
    axes.axvspan(rates[valley[0]], rates[valley[1]], color=theme.PETAL, zorder=0,
                 label="the longest descent (valley)")
    axes.plot(rates, losses, color=theme.BLUSH, linewidth=1, label="loss of each step")
    axes.plot(rates, smoothed, color=theme.DEEP_ROSE, linewidth=2.2, label="smoothed loss")
    rate, loss = rates[suggested], smoothed[suggested]
    axes.scatter([rate], [loss], marker="*", s=260, color=theme.WINE, zorder=5, label=f"suggestion {rate:.2g}")
    axes.annotate(f"suggested\n{rate:.2g}", (rate, loss), xytext=(16, 34), textcoords="offset points",
                  ha="left", color=theme.WINE, fontweight="bold",
                  arrowprops={"arrowstyle": "-", "color": theme.WINE, "linewidth": 0.9})
    lowest = int(np.nanargmin(smoothed))
    axes.scatter([rates[lowest]], [smoothed[lowest]], marker="o", s=40, color=theme.ROSE, zorder=4,
                 label=f"lowest smoothed loss, at {rates[lowest]:.2g}")
    axes.set_xscale("log")
    # Up to the highest smoothed loss before the last five steps (fastai's
    # plot leaves those out), at most 4x the minimum: the descent fills it.
    shown = smoothed[:-5] if len(smoothed) > 10 else smoothed
    bottom, top = finite.min(), min(np.nanmax(np.where(np.isfinite(shown), shown, np.nan)), 4 * finite.min())
    axes.set_ylim(bottom - 0.08 * (top - bottom), top + 0.08 * (top - bottom))
    axes.set_xlabel("Learning rate (log scale)")
    axes.set_ylabel("Training loss")
    axes.grid(True)
    axes.set_axisbelow(True)
    axes.legend(loc="upper left")
    figure.suptitle("Learning-rate range test")
    if subtitle:
        axes.set_title(subtitle, color=theme.MUTED, wrap=True)
    return save_figure(figure, output_path)


def mark_epochs_at_chance(axes, count):
    """Shades the first `count` epochs, whose val accuracy was no better
    than chance, on a training-curves panel, its legend entry saying why
    (in the legend: text inside the panel would cross the curves)."""
    epochs = f"epochs 1-{count}" if count > 1 else "epoch 1"
    axes.axvspan(0.5, count + 0.5, color=theme.GRID, zorder=0,
                 label=f"{epochs}: val at chance, normal from\nscratch while BatchNorm settles;\n"
                       "not counted for early stopping")


# ---------------------------------------------------------------- 5. confusion matrix


# seaborn writes white on cells darker than a relative luminance of 0.408:
# on the blush map from 0.44 of the scale, on mid pinks where white has under
# half ink's contrast (2.6:1 against 5.5:1). Ink stays up to this share.
WHITE_TEXT_FROM = 0.52


def heat_cells(axes, values, fmt, font, top=1.0, hidden=False, colours=(theme.INK, theme.WHITE), **options):
    """Draws the cells of `values` that are not `hidden` (a mask) nor NaN on
    `axes` with seaborn.heatmap, in the blush colours from 0 to `top`, each
    with its value (`fmt`, `font` points) in the first of `colours` on light
    cells, the second on dark ones (a layer each). The other cells stay
    transparent: what is drawn below shows. `options` go to seaborn.heatmap."""
    import seaborn

    dark = values >= WHITE_TEXT_FROM * top
    for cells, colour in ((~dark, colours[0]), (dark, colours[1])):
        seaborn.heatmap(values, mask=hidden | ~cells, vmin=0, vmax=top, annot=True, fmt=fmt,
                        cmap=HEATMAP.with_extremes(bad="none"), annot_kws={"fontsize": font, "color": colour},
                        cbar=False, xticklabels=False, yticklabels=False, ax=axes, **options)


def matrix_cell_font(num_classes):
    """Annotation font size for an n x n heatmap; None: too many to annotate."""
    sizes = ((10, 10), (20, 8), (45, 6.5))  # (up to this many classes, points)
    return next((points for most, points in sizes if num_classes <= most), None)


@themed
def plot_confusion_matrix(matrix, class_names, output_path, normalize=False, subtitle=""):
    """A heatmap of the confusion matrix (rows true, columns predicted).

    `normalize=True` divides each row by its total (recall on the
    diagonal); a class with no images shows grey. Cells are annotated with
    text that contrasts with their colour; the figure grows with the number
    of classes so names stay legible. Returns the path.
    """
    import seaborn

    matrix = np.asarray(matrix)
    num_classes = len(class_names)
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)
        top = 1.0
    else:
        values = matrix.astype(int)
        top = max(1.0, float(matrix.max()))
    cell = 0.6 if num_classes <= 12 else 0.4
    side = max(5.5, num_classes * cell + 2.5)
    figure = Figure(figsize=(side + 1.6, side + 0.6), layout="constrained")
    axes = figure.add_subplot()
    borders = {"square": True, "linewidths": 1.0, "linecolor": theme.WHITE}
    # Every cell and the colour bar; NaN (a class with no images) in the
    # colour map's "bad" grey. The numbers go over them.
    seaborn.heatmap(values, vmin=0, vmax=top, cmap=HEATMAP, xticklabels=False, yticklabels=False, ax=axes,
                    cbar_kws={"shrink": 0.8, "pad": 0.02,
                              "label": "fraction of the true class" if normalize else "images"},
                    **borders)
    font = matrix_cell_font(num_classes)
    zeros = matrix == 0
    if font:
        heat_cells(axes, values, ".2f" if normalize else "d", font, top, hidden=zeros, **borders)
    if font and num_classes <= 10:  # blank zeros keep a big matrix readable
        heat_cells(axes, values, ".0f", font, top, hidden=~zeros, colours=(theme.GRID_TEXT, theme.GRID_TEXT), **borders)
    label_class_axis(axes, "x", class_names, room=(side - 2.5) / num_classes, first=0.5)
    label_class_axis(axes, "y", class_names, first=0.5)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    figure.suptitle("Confusion matrix · " + ("normalized by true class" if normalize else "counts"))
    details = subtitle
    if not font:
        details += " · cells not annotated above 45 classes: counts are in metrics.json"
    if normalize and np.isnan(values).any():
        details += " · grey rows: no images of that class"
    axes.set_title(details.strip(" ·"), color=theme.MUTED)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 6. report


@themed
def plot_classification_report(names, values, supports, num_classes, accuracy, output_path, subtitle="",
                               metric_names=("precision", "recall", "f1-score"), extra=None, title=None,
                               row_kind="Class"):
    """A heat-table: per row (`names`) precision, recall and F1 (`values`,
    (rows, 3), NaN where undefined; other columns: `metric_names`) and
    support, then `extra` when given ((column name, values with NaN where
    none), uncoloured like the support); the first `num_classes` rows are
    classes (`row_kind`), the rest (accuracy, averages:
    figures.report_rows) go in bold below a rule. `accuracy` titles it
    (`title` instead, when given). Returns the path."""
    import seaborn

    num_rows, num_metrics = len(names), len(metric_names)
    plain = [("support", np.reshape(supports, -1).astype(float), ",.0f")] + ([(*extra, ".2f")] if extra else [])
    num_columns = num_metrics + len(plain)
    figure = Figure(figsize=(7.2 + 1.1 * (num_columns - 4), 0.34 * num_rows + 1.9), layout="constrained")
    axes = figure.add_subplot()
    blank = np.full((num_rows, 1), np.nan)
    # The metrics in blush (undefined ones, NaN, left white), then the
    # support (and extra) column uncoloured on petal: one table, a layer each.
    heat_cells(axes, np.hstack([values] + [blank] * len(plain)), ".3f", theme.FONT_SIZES["tick"])
    for column, (_, numbers, fmt) in enumerate(plain):
        cells = [blank] * (num_metrics + column) + [np.reshape(numbers, (-1, 1))] + [blank] * (len(plain) - column - 1)
        seaborn.heatmap(np.hstack(cells), cmap=[theme.PETAL], annot=True, fmt=fmt,
                        annot_kws={"fontsize": theme.FONT_SIZES["tick"], "color": theme.INK},
                        cbar=False, xticklabels=False, yticklabels=False, ax=axes)
    axes.axhline(num_classes, color=theme.INK, linewidth=1.4)
    axes.set_xticks(np.arange(num_columns) + 0.5, [*metric_names, *(name for name, _, _ in plain)])
    axes.xaxis.tick_top()
    axes.xaxis.set_label_position("top")
    axes.set_yticks(np.arange(num_rows) + 0.5, [theme.short_label(name, width=24, max_lines=1) for name in names])
    for label in axes.get_yticklabels()[num_classes:]:
        label.set_fontweight("bold")
    axes.tick_params(length=0)
    axes.set_xlabel("Metric", color=theme.MUTED)
    axes.set_ylabel(row_kind, color=theme.MUTED)
    figure.suptitle(title or f"Classification report · accuracy {theme.score(accuracy)}")
    if subtitle:
        figure.supxlabel(subtitle, fontsize=theme.FONT_SIZES["subtitle"], color=theme.MUTED)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 7. ROC


@themed
def plot_roc_curves(roc, class_names, output_path, subtitle="", title=None,
                    absent_note="class(es) absent from these images"):
    """One-vs-rest ROC per class plus micro and macro averages, AUC in the
    legend; for two classes one ROC of the second class. `roc` is
    metrics.roc_analysis' dict; absent classes are noted. Returns the
    path."""
    entries = 0
    many = len(class_names) > 12
    figure = Figure(figsize=(11.5 if many else 9.5, 6.6), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color=theme.MUTED, linestyle=":", linewidth=1, label="chance (AUC = 0.5)")
    if roc["binary"]:
        positive, negative = class_names[1], class_names[0]
        curve = roc["per_class"][positive]
        if curve is not None:
            axes.plot(curve["fpr"], curve["tpr"], color=theme.DEEP_ROSE, linewidth=2.5,
                      label=f"{theme.short_label(positive, 30, 1)} vs {theme.short_label(negative, 30, 1)} "
                      f"(AUC = {curve['auc']:.3f})")
            axes.fill_between(curve["fpr"], curve["tpr"], color=theme.BLUSH, alpha=0.35, step="post")
            entries += 1
    else:
        for number, (name, curve) in enumerate(roc["per_class"].items()):
            if curve is None:
                continue
            axes.plot(curve["fpr"], curve["tpr"], linewidth=1.3, alpha=0.9,
                      color=theme.LINE_COLOURS[number % len(theme.LINE_COLOURS)],
                      linestyle=theme.LINE_STYLES[(number // len(theme.LINE_COLOURS)) % len(theme.LINE_STYLES)],
                      label=f"{theme.short_label(name, 22, 1)} (AUC = {curve['auc']:.3f})")
            entries += 1
        for key, colour, style in (("micro", theme.WINE, "--"), ("macro", theme.ROSE, "-.")):
            curve = roc[key]
            if curve is not None:
                axes.plot(curve["fpr"], curve["tpr"], color=colour, linestyle=style, linewidth=3,
                          label=f"{key}-average (AUC = {curve['auc']:.3f})")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.02)
    axes.set_aspect("equal")
    axes.grid(True)
    axes.set_axisbelow(True)
    axes.set_xlabel("False positive rate")
    axes.set_ylabel("True positive rate")
    legend_font = theme.FONT_SIZES["small"] if entries > 12 else theme.FONT_SIZES["tick"]
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=legend_font,
                ncols=2 if entries > 22 else 1)
    figure.suptitle(title or ("ROC curve" if roc["binary"] else "ROC curves · one-vs-rest"))
    details = subtitle
    if roc["absent"]:
        absent = ", ".join(roc["absent"][:8]) + (" …" if len(roc["absent"]) > 8 else "")
        details += f" · no ROC for {absent_note}: {absent}"
    if details:
        axes.set_title(details.strip(" ·"), color=theme.MUTED, wrap=True)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 7b. reliability


@themed
def plot_reliability_diagram(bins, ece, output_path, subtitle="", counted="Images",
                             confidence_label="Confidence (probability of the predicted class)"):
    """A reliability diagram (Guo et al., 2017): per confidence bin, the
    accuracy as a bar beside the diagonal of perfect calibration, the gap
    to the bin's mean confidence hatched (above the bar where the model is
    over-confident, over the bar's top where it is under-confident, each
    named in the legend), and below, the images per bin with their counts.

    `bins` is calibration.reliability_bins' dict; `ece` the expected
    calibration error for the title; `counted` what the bins count and
    `confidence_label` what their confidence is (a multi-label model's:
    (image, label) pairs and the probability of the yes/no answer given).
    Returns the path.
    """
    lower, upper, count = bins["lower"], bins["upper"], np.asarray(bins["count"])
    centres, widths = (lower + upper) / 2, upper - lower
    filled = count > 0
    accuracy, confidence = bins["accuracy"][filled], bins["confidence"][filled]
    figure = Figure(figsize=(7.8, 7.6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color=theme.MUTED, linestyle=":", linewidth=1.3, label="perfect calibration")
    top.bar(centres[filled], accuracy, widths[filled], color=theme.ROSE, edgecolor=theme.WINE, linewidth=0.8,
            label="accuracy of the bin (the bar's top)")
    # The gap between the bar's top and the mean confidence: above the bar
    # (over-confident) a pale hatched box; inside the bar (under-confident)
    # light hatching over the bar, which still reaches the accuracy.
    over, gaps = confidence > accuracy, []
    for shown, face, legend_face, hatch_colour, hatch, label in (
        (over, mcolors.to_rgba(theme.BLUSH, 0.6), mcolors.to_rgba(theme.BLUSH, 0.6), theme.DEEP_ROSE, "///",
         "over-confident: confidence above accuracy"),
        (~over, (0, 0, 0, 0), theme.ROSE, theme.WHITE, "\\\\\\", "under-confident: accuracy above confidence"),
    ):
        if shown.any():
            top.bar(centres[filled][shown], np.abs(confidence - accuracy)[shown], widths[filled][shown],
                    bottom=np.minimum(confidence, accuracy)[shown], color=face, edgecolor=hatch_colour,
                    linewidth=0, hatch=hatch)
            gaps.append(mpatches.Patch(facecolor=legend_face, edgecolor=hatch_colour, hatch=hatch, label=label))
    top.scatter(centres[filled], confidence, marker="_", s=160, color=theme.WINE, linewidths=2, zorder=4,
                label="mean confidence of the bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy")
    top.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    top.grid(True)
    top.set_axisbelow(True)
    top.legend(handles=top.get_legend_handles_labels()[0] + gaps, loc="upper left")
    bars = bottom.bar(centres, count, widths, color=theme.BLUSH, edgecolor=theme.WINE, linewidth=0.6)
    bottom.bar_label(bars, labels=[str(n) if n else "" for n in count], padding=2,
                     fontsize=theme.FONT_SIZES["small"])
    bottom.set_ylim(0, max(1, count.max()) * 1.3)
    bottom.set_ylabel(counted)
    bottom.set_xlabel(confidence_label)
    bottom.xaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    bottom.set_xticks(np.linspace(0, 1, 6))
    bottom.yaxis.grid(True)
    bottom.set_axisbelow(True)
    figure.suptitle(f"Reliability diagram · calibration error (ECE) {theme.percent(ece)}")
    if subtitle:
        top.set_title(subtitle, color=theme.MUTED, wrap=True)
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- 8-9. galleries


def overlay_rgba(heatmap):
    """Grad-CAM heat as an RGBA layer for a grey image: deep rose and
    nearly opaque where the model looked, faint where it did not."""
    rgba = HEATMAP(heatmap)
    rgba[..., 3] = 0.15 + 0.7 * heatmap
    return rgba


def greyscale(image):
    """uint8 RGB -> float luminance in [0, 1]: the heat reads clearly on it."""
    return (np.asarray(image, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def gradcam_overlay(image, heatmap):
    """The right half of a Grad-CAM tile as an array: the heat
    (overlay_rgba) over a grey copy of uint8 RGB `image`, alpha-composited
    as the figure draws it. Returns uint8 HxWx3 (the app shows it)."""
    grey = greyscale(image)[..., None]
    rgba = overlay_rgba(np.asarray(heatmap, np.float64))
    alpha = rgba[..., 3:4]
    blended = rgba[..., :3] * alpha + grey * (1.0 - alpha)
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def gallery_figure(items, rows, cols, title, subtitle=""):
    """The Figure of a rows x cols gallery of `items` (figures.GalleryItem:
    .image uint8 RGB, .verdict, .title); tests inspect it. Rows left empty
    by too few items are dropped."""
    rows = max(1, min(rows, -(-len(items) // cols)))
    figure = Figure(figsize=(cols * 2.0 + 0.3, rows * 2.35 + 1.0), layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False)
    for position, axes in enumerate(grid.flat):
        hide_ticks(axes)
        if position >= len(items):
            axes.axis("off")
            continue
        item = items[position]
        colour = theme.VERDICT_COLOURS[item.verdict]
        axes.imshow(item.image)
        frame(axes, colour, 4.0)
        axes.set_title(item.title, color=colour, fontsize=theme.FONT_SIZES["small"] + 0.5,
                       fontweight="bold" if item.verdict == "wrong" else "normal")
    if not items:
        grid.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center",
                          transform=grid.flat[0].transAxes, color=theme.MUTED)
    figure.suptitle(title)
    if subtitle:
        figure.supxlabel(subtitle, fontsize=theme.FONT_SIZES["subtitle"] - 1, color=theme.MUTED)
    return figure


@themed
def plot_prediction_gallery(items, rows, cols, output_path, title="Prediction gallery", subtitle=""):
    """rows x cols images titled with true class, predicted class and
    confidence, framed green when correct, red when wrong (rose when no
    label is known). Returns the path."""
    return save_figure(gallery_figure(items, rows, cols, title, subtitle), output_path)


@themed
def plot_top_losses(items, rows, cols, output_path, subtitle=""):
    """The most confidently wrong images, worst first, titled like the
    prediction gallery (true class, predicted class, confidence, and the
    probability of the true class as a caption). Returns the path."""
    figure = gallery_figure(items, rows, cols, "Top losses · the most confidently wrong", subtitle)
    return save_figure(figure, output_path)


def gradcam_figure(items, heatmaps, rows, cols, subtitle=""):
    """The Figure of a Grad-CAM gallery: per item the image in its own
    colours, then the heat over it in grey, titled and framed like the
    prediction gallery."""
    rows = max(1, min(rows, -(-len(items) // cols)))
    figure = Figure(figsize=(cols * 3.3 + 0.3, rows * 1.9 + 1.1), layout="constrained")
    cells = figure.subfigures(rows, cols, squeeze=False, wspace=0.02, hspace=0.02)
    for position, cell in enumerate(cells.flat):
        if position >= len(items):
            continue
        item = items[position]
        colour = theme.VERDICT_COLOURS[item.verdict]
        image_axes, heat_axes = cell.subplots(1, 2)
        image_axes.imshow(item.image)
        heat_axes.imshow(greyscale(item.image), cmap="gray", vmin=0, vmax=1)
        heat_axes.imshow(overlay_rgba(heatmaps[position]))
        for axes in (image_axes, heat_axes):
            hide_ticks(axes)
            frame(axes, colour, 3.0)
        if np.ptp(heatmaps[position]) < 0.05:  # every spot weighed the same
            heat_axes.set_xlabel("flat: no spot stands out", fontsize=theme.FONT_SIZES["small"] - 1, color=theme.MUTED)
        cell.suptitle(item.title, color=colour, fontsize=theme.FONT_SIZES["small"] + 0.5,
                      fontweight="bold" if item.verdict == "wrong" else "normal")
    figure.suptitle("Grad-CAM · where the model looked")
    if subtitle:
        figure.supxlabel(subtitle, fontsize=theme.FONT_SIZES["subtitle"] - 1, color=theme.MUTED)
    return figure


@themed
def plot_gradcam(items, heatmaps, rows, cols, output_path, subtitle=""):
    """Each gallery image beside its Grad-CAM heatmap (values in [0, 1],
    the image's size) over a grey copy. Returns the path."""
    return save_figure(gradcam_figure(items, heatmaps, rows, cols, subtitle), output_path)


# ---------------------------------------------------------------- multi-label


@themed
def plot_label_distribution(counts, class_names, cooccurrence, output_path, no_label=None, subtitle=""):
    """A multi-label dataset at a glance: left, images per label and split
    (horizontal bars, counts on them; `no_label`, {split: images with no
    label}, as a last row when any); right, the co-occurrence heat table
    (`cooccurrence`, labels x labels: images with both labels; the
    diagonal, each label's images). `counts` is {split: {label: images}}
    (DatasetIndex.counts()). Returns the path."""
    import seaborn

    splits = [split for split in ("train", "val", "test") if split in counts]
    rows = list(class_names)
    counts = {split: dict(counts[split]) for split in splits}
    if no_label and any(no_label.values()):
        rows.append("(no label)")
        for split in splits:
            counts[split]["(no label)"] = no_label.get(split, 0)
    num_labels, num_rows = len(class_names), len(rows)
    cell = 0.62 if num_labels <= 12 else 0.42
    side = max(4.2, num_labels * cell + 1.6)
    figure = Figure(figsize=(6.0 + side + 1.4, max(4.8, side + 1.2, 0.5 * num_rows + 2.0)), layout="constrained")
    bars, table = figure.subplots(1, 2, width_ratios=(6.0, side))
    images = [counts[split][name] for split in splits for name in rows]
    legend = [f"{split}" for split in splits]
    seaborn.barplot(x=images, y=[name for _ in splits for name in rows], hue=np.repeat(legend, num_rows),
                    order=rows, width=0.84, errorbar=None, palette=[theme.SPLIT_COLOURS[split] for split in splits],
                    saturation=1, edgecolor=theme.WINE, linewidth=0.6, orient="h", ax=bars)
    for container in bars.containers:
        bars.bar_label(container, padding=2, fontsize=theme.FONT_SIZES["small"])
    label_class_axis(bars, "y", rows)
    bars.set_ylim(num_rows - 0.4, -0.6)  # first label on top
    bars.margins(x=0.12)
    bars.xaxis.grid(True)
    bars.set_axisbelow(True)
    bars.set_xlabel("Images with the label")
    bars.set_ylabel("")
    bars.legend(title="split", loc="best")  # where it covers no bar
    bars.set_title("Label frequency per split\n(an image counts once for each of its labels)", color=theme.INK)
    matrix = np.asarray(cooccurrence)
    top = max(1.0, float(matrix.max()))
    borders = {"square": True, "linewidths": 1.0, "linecolor": theme.WHITE}
    seaborn.heatmap(matrix, vmin=0, vmax=top, cmap=HEATMAP, xticklabels=False, yticklabels=False, ax=table,
                    cbar_kws={"shrink": 0.7, "pad": 0.02, "label": "images with both labels"}, **borders)
    font = matrix_cell_font(num_labels)
    if font:
        heat_cells(table, matrix.astype(float), ".0f", font, top, **borders)
    for position in range(num_labels):  # the diagonal: each label alone, framed
        table.add_patch(mpatches.Rectangle((position, position), 1, 1, fill=False,
                                                     edgecolor=theme.WINE, linewidth=1.6))
    label_class_axis(table, "x", class_names, room=cell, first=0.5)
    label_class_axis(table, "y", class_names, first=0.5)
    table.set_title("Co-occurrence: images that have both labels\n(framed diagonal: each label's images)",
                    color=theme.INK)
    figure.suptitle(f"Labels per image · {num_labels} labels")
    if subtitle:
        figure.supxlabel(subtitle, fontsize=theme.FONT_SIZES["subtitle"] - 0.5, color=theme.MUTED)
    return save_figure(figure, output_path)


@themed
def plot_label_confusion(grids, class_names, thresholds, output_path, subtitle=""):
    """A small annotated 2x2 heat table per label (label_metrics.
    confusion_grids: rows the truth, columns the answer at the label's
    threshold, named in its title), each cell its count and its name (true
    positive, missed, false alarm, true negative). Returns the path."""
    import seaborn

    grids = np.asarray(grids)
    count = len(class_names)
    cols = min(count, 4)
    rows = -(-count // cols)
    figure = Figure(figsize=(cols * 3.1 + 0.6, rows * 3.2 + 1.3), layout="constrained")
    panels = figure.subplots(rows, cols, squeeze=False)
    names = np.array([["true positive", "missed"], ["false alarm", "true negative"]])
    for number, axes in enumerate(panels.flat):
        if number >= count:
            axes.axis("off")
            continue
        grid = grids[number]
        top = max(1.0, float(grid.max()))
        annotations = np.array([[f"{grid[r, c]:,}\n{names[r, c]}" for c in range(2)] for r in range(2)])
        dark = grid >= WHITE_TEXT_FROM * top
        for cells, colour in ((~dark, theme.INK), (dark, theme.WHITE)):
            seaborn.heatmap(grid, mask=~cells, vmin=0, vmax=top, cmap=HEATMAP.with_extremes(bad="none"),
                            annot=annotations, fmt="",
                            annot_kws={"fontsize": theme.FONT_SIZES["tick"], "color": colour}, cbar=False,
                            square=True, linewidths=1.0, linecolor=theme.WHITE, ax=axes)
        axes.set_xticks([0.5, 1.5], ["yes", "no"])
        axes.set_yticks([0.5, 1.5], ["has it", "has not"], rotation=0)
        axes.tick_params(length=0)
        axes.set_xlabel("model says", fontsize=theme.FONT_SIZES["small"], color=theme.MUTED)
        axes.set_ylabel("truth", fontsize=theme.FONT_SIZES["small"], color=theme.MUTED)
        axes.set_title(f"{theme.short_label(class_names[number], 22, 1)}\nthreshold {thresholds[number]:.2f}",
                       fontsize=theme.FONT_SIZES["label"])
    figure.suptitle("Per-label confusion · each label is a yes/no question")
    if subtitle:
        figure.supxlabel(subtitle, fontsize=theme.FONT_SIZES["subtitle"] - 0.5, color=theme.MUTED)
    return save_figure(figure, output_path)


@themed
def plot_precision_recall(curves, output_path, subtitle=""):
    """Each label's precision-recall curve (label_metrics.
    precision_recall_curves) with its average precision in the legend, its
    threshold's point marked, and its prevalence (the precision of
    answering yes to every image) as a dotted line in its colour. Returns
    the path."""
    figure = Figure(figsize=(10.5, 6.6), layout="constrained")
    axes = figure.add_subplot()
    absent = []
    for number, (name, curve) in enumerate(curves.items()):
        if curve is None:
            absent.append(name)
            continue
        colour = theme.LINE_COLOURS[number % len(theme.LINE_COLOURS)]
        style = theme.LINE_STYLES[(number // len(theme.LINE_COLOURS)) % len(theme.LINE_STYLES)]
        axes.step(curve["recall"], curve["precision"], where="post", color=colour, linestyle=style, linewidth=1.6,
                  label=f"{theme.short_label(name, 22, 1)} (AP = {curve['average_precision']:.3f})")
        axes.axhline(curve["prevalence"], color=colour, linestyle=":", linewidth=1.0, alpha=0.8)
        axes.scatter(*curve["point"], s=60, color=colour, edgecolor=theme.WINE, zorder=4)
    # Legend entries for the marks every label shares, in neutral colours.
    axes.scatter([], [], s=60, color=theme.WHITE, edgecolor=theme.WINE, label="its threshold's point")
    axes.plot([], [], color=theme.MUTED, linestyle=":", label="its prevalence (a model with no eyes)")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.03)
    axes.set_xlabel("Recall (share of the images with the label that are found)")
    axes.set_ylabel("Precision (share of the 'yes' answers that are right)")
    axes.xaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    axes.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    axes.grid(True)
    axes.set_axisbelow(True)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle("Precision-recall curves · per label")
    details = subtitle
    if absent:
        details += " · no curve for label(s) no image here has: " + ", ".join(absent[:8])
    if details:
        axes.set_title(details.strip(" ·"), color=theme.MUTED, wrap=True)
    return save_figure(figure, output_path)


# The most label lines a multi-label gallery tile writes; the rest are counted.
TILE_LINES = 6


def label_set_gallery_figure(items, rows, cols, title, subtitle=""):
    """The Figure of a rows x cols gallery of multi-label `items`
    (figures.LabelSetItem: .image, .verdict, .marks [(label, probability,
    kind)], .caption): each image framed in its verdict's colour (green:
    the exact set, red: any label wrong or missed), its labels written
    under it one a line, each in its kind's marker and colour
    (theme.LABEL_MARKS), and a legend of the kinds below."""
    rows = max(1, min(rows, -(-len(items) // cols)))
    lines = max([min(len(item.marks), TILE_LINES) + bool(item.caption) for item in items] + [1])
    text_height = 0.17 * lines + 0.08
    figure = Figure(figsize=(cols * 2.0 + 0.3, rows * (2.0 + text_height) + 1.3), layout="constrained")
    grid = figure.subplots(2 * rows, cols, squeeze=False, height_ratios=[2.0, text_height] * rows)
    for position in range(rows * cols):
        image_axes, text_axes = grid[2 * (position // cols)][position % cols], grid[2 * (position // cols) + 1][position % cols]
        hide_ticks(image_axes)
        text_axes.axis("off")
        if position >= len(items):
            image_axes.axis("off")
            continue
        item = items[position]
        image_axes.imshow(item.image)
        frame(image_axes, theme.VERDICT_COLOURS[item.verdict], 4.0)
        texts = [(f"{theme.LABEL_MARKS[kind][0]} {theme.short_label(name, 16, 1)} {probability:.0%}",
                  theme.LABEL_MARKS[kind][1], kind) for name, probability, kind in item.marks]
        if len(texts) > TILE_LINES:
            hidden = [kind for _, _, kind in texts[TILE_LINES - 1 :]]
            counted = ", ".join(f"{hidden.count(kind)} {kind}" for kind in theme.LABEL_MARKS if kind in hidden)
            texts = texts[: TILE_LINES - 1] + [(f"+ {counted}", theme.MUTED, "more")]
        if not texts:  # no label predicted, and (when known) none missed
            texts = [("no label predicted" + (" (it has none)" if item.verdict == "correct" else ""),
                      theme.CORRECT if item.verdict == "correct" else theme.MUTED, "none")]
        if item.caption:
            texts.append((theme.short_middle(item.caption, 24), theme.MUTED, "caption"))
        for line, (text, colour, kind) in enumerate(texts):
            text_axes.text(0.02, 1.0 - line / lines, text, transform=text_axes.transAxes, va="top", ha="left",
                           color=colour, fontsize=theme.FONT_SIZES["small"] + 0.5,
                           fontweight="bold" if kind in ("wrong", "missed") else "normal")
    if not items:
        grid[0][0].text(0.5, 0.5, "nothing to show", ha="center", va="center",
                        transform=grid[0][0].transAxes, color=theme.MUTED)
    kinds = sorted({kind for item in items for _, _, kind in item.marks}, key=list(theme.LABEL_MARKS).index)
    handles = [mlines.Line2D([], [], linestyle="none", marker=f"${theme.LABEL_MARKS[kind][0]}$",
                                       markersize=7, color=theme.LABEL_MARKS[kind][1]) for kind in kinds]
    frames = [("correct", "frame: every label right"), ("wrong", "frame: some label wrong or missed")]
    frames = [(verdict, text) for verdict, text in frames if any(item.verdict == verdict for item in items)]
    handles += [mpatches.Patch(facecolor="none", edgecolor=theme.VERDICT_COLOURS[verdict], linewidth=2.5)
                for verdict, _ in frames]
    labels = [theme.LABEL_MARKS[kind][2] for kind in kinds] + [text for _, text in frames]
    if handles:
        # Below the tiles on one line, the subtitle as its title (a
        # supxlabel would sit on top of it).
        legend = figure.legend(handles, labels, loc="outside lower center", ncols=len(handles),
                               fontsize=theme.FONT_SIZES["small"] + 0.5, handlelength=1.2, title=subtitle or None,
                               title_fontproperties={"size": theme.FONT_SIZES["subtitle"] - 1})
        legend.get_title().set_color(theme.MUTED)
    elif subtitle:
        figure.supxlabel(subtitle, fontsize=theme.FONT_SIZES["subtitle"] - 1, color=theme.MUTED)
    figure.suptitle(title)
    return figure


@themed
def plot_label_set_gallery(items, rows, cols, output_path, title="Prediction gallery", subtitle=""):
    """rows x cols images with their predicted labels (label_set_gallery_figure:
    right, wrong and missed labels told apart). Returns the path."""
    return save_figure(label_set_gallery_figure(items, rows, cols, title, subtitle), output_path)


# ---------------------------------------------------------------- model comparison


@themed
def plot_model_comparison(rows, output_path, subtitle=""):
    """The model comparison at a glance: test accuracy and macro F1 per
    model (best on top), and test accuracy against inference time per
    image, so the trade-off shows. `rows` are compare.ranked rows (keys
    backbone, run, test_accuracy, macro_f1, inference_ms_per_image, and
    source: "external" marks a model from another framework, labelled so,
    its bars hatched and its point a diamond). Returns the path."""
    count = len(rows)
    figure = Figure(figsize=(13, max(4.2, 0.55 * count + 2.4)), layout="constrained")
    bars, scatter = figure.subplots(1, 2, width_ratios=(1, 1.1))
    foreign = [row.get("source") == "external" for row in rows]
    labels = [
        f"{row['backbone']}\n{'external · ' if outside else ''}{row['run']}" for row, outside in zip(rows, foreign)
    ]
    positions = np.arange(count)
    height = 0.38
    accuracy = [row["test_accuracy"] for row in rows]
    macro_f1 = [row["macro_f1"] for row in rows]
    for offset, values, colour, label, form in ((-height / 2, accuracy, theme.DEEP_ROSE, "test accuracy", "{:.3f}"),
                                                (height / 2, macro_f1, theme.BLUSH, "macro F1", "{:.3f}")):
        drawn = bars.barh(positions + offset, values, height, color=colour, edgecolor=theme.WINE, linewidth=0.6,
                          label=label)
        bars.bar_label(drawn, labels=[form.format(value) for value in values], padding=2,
                       fontsize=theme.FONT_SIZES["small"])
        for patch, outside in zip(drawn.patches, foreign):
            if outside:
                patch.set_hatch("///")
    bars.set_yticks(positions, labels, fontsize=theme.FONT_SIZES["tick"])
    bars.set_ylim(count - 0.4, -0.6)  # best on top
    bars.set_xlim(0, 1.15)  # room for the values right of a full bar
    bars.xaxis.set_major_formatter(ticker.PercentFormatter(1.0))
    bars.xaxis.grid(True)
    bars.set_axisbelow(True)
    bars.set_title("Test accuracy and macro F1 (best first)")
    # Below the axes: inside, it would cover the values of the last bars.
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, fontsize=theme.FONT_SIZES["small"])

    times = [row["inference_ms_per_image"] for row in rows]
    for number, row in enumerate(rows):
        colour = theme.LINE_COLOURS[number % len(theme.LINE_COLOURS)]
        where = f"external, {row['run']}" if foreign[number] else row["run"]
        scatter.scatter(times[number], accuracy[number], s=90, color=colour, edgecolor=theme.WINE, zorder=3,
                        marker="D" if foreign[number] else "o", label=f"{row['rank']}. {row['backbone']} ({where})")
        # The rank, not the name: names of close points overlap; the legend names them.
        scatter.annotate(str(row["rank"]), (times[number], accuracy[number]), textcoords="offset points",
                         xytext=(7, 5), fontsize=theme.FONT_SIZES["tick"], fontweight="bold", color=theme.INK)
    scatter.set_xlabel("Inference ms per image (batch 32, this machine)")
    scatter.set_ylabel("Test accuracy")
    low, high = min(accuracy), max(accuracy)
    spread = max(high - low, 0.05)
    bottom, top = max(0.0, low - 0.25 * spread), min(1.0, high + 0.25 * spread)
    scatter.set_ylim(bottom, top + 0.08 * (top - bottom))  # room for the rank above a point at the top
    # Ticks only within [bottom, top], never above 100%, with as many
    # decimals as their step needs (close accuracies: 98.0%, 98.5%, ...).
    ticks = [tick for tick in ticker.MaxNLocator(nbins=6).tick_values(bottom, top) if bottom - 1e-9 <= tick <= top + 1e-9]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 0.01
    scatter.yaxis.set_major_locator(ticker.FixedLocator(ticks))
    scatter.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=max(0, -int(np.floor(np.log10(step * 100 + 1e-12))))))
    scatter.set_xlim(0, max(times) * 1.25)
    scatter.grid(True)
    scatter.set_axisbelow(True)
    scatter.set_title("Accuracy against inference time (up and left is better)")
    scatter.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=theme.FONT_SIZES["small"])
    figure.suptitle("Model comparison" + (f" · {subtitle}" if subtitle else ""))
    return save_figure(figure, output_path)


# ---------------------------------------------------------------- windows
# What showing a saved figure needs from matplotlib; when and in what order
# figures are shown is figures.py's question (show_figures).


def backend_name():
    return matplotlib.get_backend()


def interactive_backend():
    """The name of matplotlib's backend if it opens windows, else None.

    Resolving the backend picks a GUI one when a display is present, Agg
    when not (or whatever MPLBACKEND forces)."""
    from matplotlib.backends import BackendFilter, backend_registry

    name = matplotlib.get_backend().lower()
    interactive = {backend.lower() for backend in backend_registry.list_builtin(BackendFilter.INTERACTIVE)}
    return name if name in interactive else None


def show_saved_figure(path):
    """Opens one saved PNG in a window and blocks until it is closed.
    Raises WindowGone when the window was destroyed from outside, or when
    no window can open (the toolkit is gone)."""
    import matplotlib.pyplot as pyplot

    image = pyplot.imread(path)
    height, width = image.shape[:2]
    scale = min(1.0, 1500 / width, 950 / height)  # fit a laptop screen
    try:
        # A window toolkit that is gone fails already here (Tk cannot
        # connect to the display).
        figure = pyplot.figure(figsize=(width * scale / 100, height * scale / 100), dpi=100)
    except window_errors() as error:
        raise WindowGone(f"{type(error).__name__}: {error}") from None
    category = os.path.basename(os.path.dirname(os.path.dirname(path)))
    if figure.canvas.manager is not None:
        figure.canvas.manager.set_window_title(f"{category}: {os.path.basename(path)}")
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(image)
    axes.axis("off")
    try:
        pyplot.show(block=True)
        pyplot.close(figure)
    except window_errors() as error:
        # The window was destroyed from outside (its toolkit is gone, not
        # closed by the user). pyplot.close drops the figure before it
        # destroys the window (which fails the same way), so nothing is left
        # for pyplot's exit handler to fail on.
        with contextlib.suppress(*window_errors()):
            pyplot.close(figure)
        raise WindowGone(f"{type(error).__name__}: {error}") from None


class WindowGone(Exception):
    """A figure window was destroyed from outside while it was shown."""


def window_errors():
    """What the window toolkit raises once its window was destroyed from
    outside: Tk's TclError (TkAgg, matplotlib's usual backend)."""
    try:
        import tkinter
    except ImportError:
        return ()
    return (tkinter.TclError,)


@themed
def plot_cross_validation(rows, metric_labels, output_path, subtitle=""):
    """Cross-validation at a glance: per metric, each backbone's mean over
    the folds with a ±1 std error bar, on the validation folds and the test
    split. `rows` are cross_validation.summary_rows. Returns the path."""
    series = sorted({(row["backbone"], row["split"]) for row in rows}, key=lambda key: (key[0], key[1] != "val"))
    figure = Figure(figsize=(max(3.0, 1.1 * len(series) + 0.6) * len(metric_labels) + 1, 4.4), layout="constrained")
    panels = figure.subplots(1, len(metric_labels), squeeze=False)[0]
    for axes, metric in zip(panels, metric_labels):
        for number, (backbone, split) in enumerate(series):
            row = next(row for row in rows if (row["backbone"], row["split"], row["metric"]) == (backbone, split, metric))
            if row["mean"] is None:
                continue
            axes.bar(number, row["mean"], 0.7, yerr=row["std"] or 0, capsize=5, edgecolor=theme.WINE, linewidth=0.6,
                     color=theme.BLUSH if split == "val" else theme.DEEP_ROSE, error_kw={"ecolor": theme.INK, "linewidth": 1.2})
            axes.annotate(f"{row['mean']:.3f}\n±{row['std'] or 0:.3f}", (number, row["mean"] + (row["std"] or 0)),
                          textcoords="offset points", xytext=(0, 3), ha="center", fontsize=theme.FONT_SIZES["small"])
        axes.set_xticks(range(len(series)), [f"{theme.short_label(backbone, 12, 2)}\n{'val folds' if split == 'val' else 'test'}"
                                             for backbone, split in series], fontsize=theme.FONT_SIZES["tick"])
        axes.set_title(metric)
        axes.margins(y=0.25)
        axes.yaxis.grid(True)
        axes.set_axisbelow(True)
    figure.suptitle("Cross-validation" + (f" · {subtitle}" if subtitle else ""))
    figure.supxlabel("bars: mean over the folds · whiskers: ±1 standard deviation · light: each fold's own "
                     "validation fold, dark: the held-out test split", fontsize=theme.FONT_SIZES["subtitle"] - 1, color=theme.MUTED)
    return save_figure(figure, output_path)
