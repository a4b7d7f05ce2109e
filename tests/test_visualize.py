"""visualize.py and the metrics behind its figures, on small synthetic data
(no model, no TensorFlow)."""

import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, classification_report, roc_auc_score

import theme
import train_utils
import visualize
import figures
import metrics


def png_size(path):
    """(width, height) of a PNG, after checking it is one and not empty."""
    assert os.path.getsize(path) > 5_000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def random_predictions(num_classes, per_class=8, seed=0, strength=2.0):
    """Labels and softmax probabilities that are right more often than not."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    logits = rng.normal(0, 1, (len(labels), num_classes))
    logits[np.arange(len(labels)), labels] += strength
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def tiny_image(value):
    return np.full((32, 32, 3), value, np.uint8)


NAMES = ("cat", "dog", "a_rather_long_class_name")


def draw_report(report, path):
    """The classification report's PNG, drawn the way figures.render_report draws it."""
    names, values, supports = figures.report_rows(report)
    return visualize.plot_classification_report(
        names, values, supports, len(report["per_class"]), report["accuracy"], path
    )


def draw_every_figure(folder):
    labels, probabilities = random_predictions(len(NAMES))
    counts = {split: {name: n for name, n in zip(NAMES, (30, 20, 10))} for split in ("train", "val", "test")}
    history = {
        "epoch": np.arange(4),
        "loss": np.array([1.2, 0.8, 0.5, 0.4]),
        "val_loss": np.array([1.1, 0.9, 0.7, 0.8]),
        "accuracy": np.array([0.4, 0.6, 0.8, 0.9]),
        "val_accuracy": np.array([0.45, 0.55, 0.7, 0.65]),
    }
    items = [
        figures.GalleryItem(tiny_image(40 * i), NAMES[i % 3], 0.7, NAMES[(i + i // 2) % 3])
        for i in range(5)
    ]
    matrix = metrics.confusion_counts(labels, probabilities, len(NAMES))
    return {
        "dataset_distribution": visualize.plot_dataset_distribution(
            counts, NAMES, folder / "d.png", skipped=2
        ),
        "class_grid": visualize.plot_class_grid(
            [(name, [tiny_image(50), tiny_image(150)]) for name in NAMES], folder / "g.png", note="note"
        ),
        "augmentation_preview": visualize.plot_augmentation_preview(
            np.stack([tiny_image(10), tiny_image(200)]),
            np.stack([np.stack([tiny_image(60), tiny_image(90)])] * 3),
            folder / "a.png",
            row_labels=["cat", "dog"],
        ),
        "training_curves": visualize.plot_training_curves(history, folder / "t.png", finetune_start=2),
        "confusion_matrix": visualize.plot_confusion_matrix(matrix, NAMES, folder / "c.png"),
        "confusion_matrix_normalized": visualize.plot_confusion_matrix(
            matrix, NAMES, folder / "cn.png", normalize=True
        ),
        "classification_report": draw_report(
            metrics.classification_metrics(labels, probabilities, NAMES), folder / "r.png"
        ),
        "roc_auc": visualize.plot_roc_curves(
            metrics.roc_analysis(labels, probabilities, NAMES), NAMES, folder / "roc.png"
        ),
        "prediction_gallery": visualize.plot_prediction_gallery(items, 2, 3, folder / "p.png"),
        "gradcam": visualize.plot_gradcam(
            items, [np.linspace(0, 1, 32 * 32).reshape(32, 32)] * len(items), 2, 3, folder / "gc.png"
        ),
    }


def test_every_plot_function_writes_a_sensible_png(tmp_path):
    drawn = draw_every_figure(tmp_path)

    for name, path in drawn.items():
        width, height = png_size(path)
        assert 400 <= width <= 6000 and 300 <= height <= 6000, (name, width, height)
    # Nothing but the PNGs: the atomic writes left no temporary file behind.
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(path) for path in drawn.values())


def test_saved_heatmap_is_drawn_in_blush_at_print_resolution(tmp_path):
    path = visualize.plot_confusion_matrix(np.eye(2, dtype=int) * 3, ("a", "b"), tmp_path / "m.png")

    with Image.open(path) as image:
        assert image.info["dpi"][0] >= 120
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    # The full cells are a deep red-pink (red well above green and blue),
    # the empty ones white: the blush colour map, not matplotlib's default.
    rose = np.round(np.array(visualize.HEATMAP(1.0)[:3]) * 255).astype(int)
    assert rose[0] > 2 * rose[1] and rose[0] > rose[2]
    assert (np.abs(pixels - rose).max(axis=1) <= 3).mean() > 0.05
    assert (pixels.min(axis=1) >= 250).mean() > 0.3


def test_gallery_frames_correct_green_wrong_red_unlabelled_rose():
    image = tiny_image(128)
    items = [
        figures.GalleryItem(image, "cat", 0.9, true="cat"),
        figures.GalleryItem(image, "dog", 0.6, true="cat"),
        figures.GalleryItem(image, "dog", 0.8),
    ]
    assert [item.verdict for item in items] == ["correct", "wrong", "unlabelled"]

    figure = visualize.gallery_figure(items, rows=2, cols=3, title="t")

    shown = [axes for axes in figure.axes if axes.images]
    assert len(shown) == 3
    assert len(figure.axes) == 3  # the empty second row was dropped
    expected = [theme.CORRECT, theme.WRONG, theme.ROSE]
    for axes, colour in zip(shown, expected):
        spine_colours = {visualize.mcolors.to_hex(spine.get_edgecolor()) for spine in axes.spines.values()}
        assert spine_colours == {colour.lower()}
        assert visualize.mcolors.to_hex(axes.title.get_color()) == colour.lower()
    assert "true: cat" in shown[1].title.get_text() and "pred: dog (60%)" in shown[1].title.get_text()
    # The images are drawn as given: uint8 RGB, not normalized.
    assert shown[0].images[0].get_array().dtype == np.uint8


def test_gallery_selection_modes():
    true = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 1, 0, 1, 0, 1, 2, 2])  # positions 1 and 4 are wrong

    mixed = figures.gallery_indices(true, predicted, 6, "mixed", seed=0)
    assert sorted(mixed[:2]) == [1, 4] and len(mixed) == 6
    assert all(true[i] == predicted[i] for i in mixed[2:])
    # Mistakes first, but not only mistakes when correct ones exist.
    many_wrong = figures.gallery_indices(np.zeros(10, int), np.r_[np.ones(8, int), 0, 0], 4, "mixed", 0)
    assert [int(i >= 8) for i in many_wrong] == [0, 0, 1, 1]
    assert sorted(figures.gallery_indices(true, predicted, 6, "misclassified", 0)) == [1, 4]
    random = figures.gallery_indices(true, predicted, 5, "random", 0)
    assert len(set(random)) == 5 and random == figures.gallery_indices(true, predicted, 5, "random", 0)
    assert figures.gallery_indices(None, predicted, 3, "mixed", 0) == [0, 1, 2]


def test_roc_binary_is_one_curve_matching_scikit_learn(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    positive = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.25, 40), 0, 1)
    probabilities = np.stack([1 - positive, positive], axis=1)

    roc = metrics.roc_analysis(labels, probabilities, ("healthy", "sick"))

    assert roc["binary"] and roc["micro"] is None and roc["macro"] is None
    assert roc["per_class"]["sick"]["auc"] == pytest.approx(roc_auc_score(labels, positive))
    assert roc["per_class"]["healthy"]["auc"] == pytest.approx(roc_auc_score(labels, positive))
    png_size(visualize.plot_roc_curves(roc, ("healthy", "sick"), tmp_path / "roc.png"))


def test_roc_multiclass_matches_scikit_learn():
    labels, probabilities = random_predictions(4, per_class=10, strength=1.0)
    names = ("a", "b", "c", "d")

    roc = metrics.roc_analysis(labels, probabilities, names)

    assert roc["macro"]["auc"] == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    one_hot = np.eye(4)[labels]
    assert roc["micro"]["auc"] == pytest.approx(roc_auc_score(one_hot, probabilities, average="micro"))
    for number, name in enumerate(names):
        assert roc["per_class"][name]["auc"] == pytest.approx(
            roc_auc_score(labels == number, probabilities[:, number])
        )
    assert roc["absent"] == []


def test_a_class_absent_from_the_split_is_noted_not_a_crash(tmp_path):
    labels, probabilities = random_predictions(3)
    names = ("a", "b", "c", "never_seen")
    probabilities = np.hstack([probabilities * 0.9, np.full((len(labels), 1), 0.1)])

    scores = metrics.evaluation_metrics(labels, probabilities, names)

    assert scores["roc_auc"]["per_class"]["never_seen"] is None
    assert scores["roc_auc"]["absent_classes"] == ["never_seen"]
    assert scores["roc_auc"]["macro"] is not None
    assert np.array(scores["confusion_matrix"]["counts"]).sum() == len(labels)
    roc = metrics.roc_analysis(labels, probabilities, names)
    png_size(visualize.plot_roc_curves(roc, names, tmp_path / "roc.png"))
    matrix = metrics.confusion_counts(labels, probabilities, 4)
    png_size(visualize.plot_confusion_matrix(matrix, names, tmp_path / "cm.png", normalize=True))


def test_report_numbers_equal_scikit_learn(tmp_path):
    labels, probabilities = random_predictions(3, per_class=9, strength=0.8)
    predicted = probabilities.argmax(axis=1)
    expected = classification_report(labels, predicted, target_names=NAMES, output_dict=True, zero_division=0)

    scores = metrics.classification_metrics(labels, probabilities, NAMES)
    names, values, supports = figures.report_rows(scores)

    assert names == [*NAMES, "accuracy", "macro avg", "weighted avg"]
    for row, name in enumerate(names):
        if name == "accuracy":
            assert values[row, 2] == pytest.approx(expected["accuracy"])
            assert np.isnan(values[row, :2]).all() and supports[row] == len(labels)
            continue
        reference = expected[name]
        wanted = [reference["precision"], reference["recall"], reference["f1-score"]]
        assert values[row] == pytest.approx(wanted)
        assert supports[row] == reference["support"]
    text = metrics.classification_report_text(labels, probabilities, NAMES)
    assert text.startswith(classification_report(labels, predicted, target_names=NAMES, digits=3, zero_division=0))
    assert f"balanced accuracy {balanced_accuracy_score(labels, predicted):.3f}" in text


def test_confusion_matrix_grows_with_many_classes_and_names_every_class(tmp_path):
    small_labels, small_probabilities = random_predictions(5)
    names = [f"species_{number:02d}_with_a_long_name" for number in range(34)]
    labels, probabilities = random_predictions(34, per_class=3)

    small = png_size(visualize.plot_confusion_matrix(
        metrics.confusion_counts(small_labels, small_probabilities, 5), names[:5], tmp_path / "s.png"
    ))
    large = png_size(visualize.plot_confusion_matrix(
        metrics.confusion_counts(labels, probabilities, 34), names, tmp_path / "l.png"
    ))

    assert large[0] > 2 * small[0] and large[1] > 2 * small[1]
    assert visualize.matrix_cell_font(34) >= 6  # still annotated, still readable


SAVE_FIGURE = visualize.save_figure


def drawn_figure(monkeypatch, plot, *args, **kwargs):
    """The Figure that `plot` draws, caught as it is saved (it is still saved)."""
    caught = []

    def catch(figure, output_path):
        caught.append(figure)
        return SAVE_FIGURE(figure, output_path)

    monkeypatch.setattr(visualize, "save_figure", catch)
    plot(*args, **kwargs)
    assert len(caught) == 1
    return caught[0]


def cell_texts(axes):
    """{(row, column): Text} of a heat table's annotations, each centred on
    its cell; fails when a cell holds two."""
    cells = {}
    for text in axes.texts:
        x, y = text.get_position()
        assert (x % 1, y % 1) == (0.5, 0.5) and text.get_ha() == "center", text
        cell = (int(y), int(x))
        assert cell not in cells, f"two annotations in cell {cell}"
        cells[cell] = text
    return cells


def cell_colours(axes, shape):
    """The colours of a heat table's cells, (rows, columns, 4), as drawn by
    its first mesh."""
    mesh = axes.collections[0]
    mesh.update_scalarmappable()
    return mesh.get_facecolors().reshape(*shape, 4)


def contrast(colour, other):
    """The WCAG contrast ratio of two colours (1 to 21)."""

    def luminance(value):
        channels = np.array(visualize.mcolors.to_rgb(value))
        linear = np.where(channels <= 0.03928, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
        return linear @ np.array([0.2126, 0.7152, 0.0722])

    high, low = sorted((luminance(colour), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def hex_colour(value):
    return visualize.mcolors.to_hex(value)


def tick_texts(labels):
    return [label.get_text() for label in labels]


def test_confusion_counts_are_written_in_every_cell_readable_on_its_colour(tmp_path, monkeypatch):
    # 0 to 24: every shade of the colour map, the mid pinks included.
    matrix = np.arange(25).reshape(5, 5)
    names = [f"class_{number}" for number in range(5)]

    figure = drawn_figure(monkeypatch, visualize.plot_confusion_matrix, matrix, names, tmp_path / "m.png")

    axes = figure.axes[0]
    texts = cell_texts(axes)
    assert sorted(texts) == [(row, column) for row in range(5) for column in range(5)]
    colours = cell_colours(axes, (5, 5))
    for (row, column), text in texts.items():
        assert text.get_text() == str(matrix[row, column])
        assert np.allclose(colours[row, column], visualize.HEATMAP(matrix[row, column] / 24))
        if matrix[row, column] == 0:
            assert hex_colour(text.get_color()) == theme.GRID_TEXT  # quiet
        else:  # at least the 3:1 the hand-picked ink and white gave
            assert contrast(text.get_color(), colours[row, column]) >= 3.0, text
    # Each name under (and beside) the cells of its class.
    assert axes.get_xticks().tolist() == axes.get_yticks().tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert tick_texts(axes.get_xticklabels()) == tick_texts(axes.get_yticklabels()) == names
    assert figure.axes[1].get_ylabel() == "images"  # the colour bar
    png_size(tmp_path / "m.png")


def test_normalized_confusion_matrix_greys_a_class_without_images(tmp_path, monkeypatch):
    matrix = np.array([[5, 1, 0, 2], [0, 0, 0, 0], [1, 0, 6, 1], [0, 3, 0, 4]])  # no images of "b"

    figure = drawn_figure(
        monkeypatch, visualize.plot_confusion_matrix, matrix, list("abcd"), tmp_path / "n.png", normalize=True
    )

    axes = figure.axes[0]
    texts = cell_texts(axes)
    assert sorted(texts) == [(row, column) for row in (0, 2, 3) for column in range(4)]
    for (row, column), text in texts.items():
        fraction = matrix[row, column] / matrix[row].sum()
        assert text.get_text() == ("0" if fraction == 0 else f"{fraction:.2f}")
    colours = cell_colours(axes, (4, 4))
    assert np.allclose(colours[1], visualize.HEATMAP.get_bad())
    assert not np.allclose(colours[[0, 2, 3]], visualize.HEATMAP.get_bad())
    assert "grey rows: no images of that class" in axes.get_title()
    assert figure.axes[1].get_ylabel() == "fraction of the true class"


def test_confusion_matrix_leaves_zeros_blank_beyond_10_classes_and_numbers_beyond_45(tmp_path, monkeypatch):
    labels, probabilities = random_predictions(12, per_class=4)
    matrix = metrics.confusion_counts(labels, probabilities, 12)
    names = [f"class_{number}" for number in range(12)]
    assert (matrix == 0).any() and (matrix > 0).any()

    figure = drawn_figure(monkeypatch, visualize.plot_confusion_matrix, matrix, names, tmp_path / "12.png")

    texts = cell_texts(figure.axes[0])
    assert sorted(texts) == sorted((int(row), int(column)) for row, column in zip(*np.nonzero(matrix)))
    assert all(text.get_text() == str(matrix[cell]) for cell, text in texts.items())

    labels, probabilities = random_predictions(46, per_class=2)
    names = [f"class_{number}" for number in range(46)]
    figure = drawn_figure(
        monkeypatch, visualize.plot_confusion_matrix, metrics.confusion_counts(labels, probabilities, 46),
        names, tmp_path / "46.png",
    )

    assert len(figure.axes[0].texts) == 0
    assert "cells not annotated above 45 classes: counts are in metrics.json" in figure.axes[0].get_title()
    assert tick_texts(figure.axes[0].get_yticklabels()) == names


def test_report_table_writes_every_number_with_summaries_below_a_rule(tmp_path, monkeypatch):
    labels, probabilities = random_predictions(3, per_class=9, strength=0.8)
    report = metrics.classification_metrics(labels, probabilities, NAMES)
    names, values, supports = figures.report_rows(report)

    figure = drawn_figure(monkeypatch, draw_report, report, tmp_path / "r.png")

    axes = figure.axes[0]
    texts = cell_texts(axes)
    wanted = {(row, 3): f"{supports[row]:,}" for row in range(len(names))}
    wanted.update({
        (row, column): f"{values[row, column]:.3f}"
        for row in range(len(names)) for column in range(3) if not np.isnan(values[row, column])
    })
    assert {cell: text.get_text() for cell, text in texts.items()} == wanted
    assert (NAMES.index("cat"), 0) in wanted and (len(NAMES), 0) not in wanted  # accuracy: F1 only
    for (row, column), text in texts.items():
        if column == 3:  # support: ink on petal, not a colour of the scale
            assert hex_colour(text.get_color()) == theme.INK
        else:
            assert contrast(text.get_color(), visualize.HEATMAP(values[row, column])) >= 3.0, text
    assert tick_texts(axes.get_yticklabels()) == names
    weights = [label.get_fontweight() for label in axes.get_yticklabels()]
    assert weights == ["normal"] * len(NAMES) + ["bold"] * 3
    assert [line.get_ydata()[0] for line in axes.lines] == [len(NAMES)]  # the rule under the classes
    assert tick_texts(axes.get_xticklabels()) == ["precision", "recall", "f1-score", "support"]
    assert figure.texts[0].get_text() == f"Classification report · accuracy {report['accuracy']:.3f}"


@pytest.mark.parametrize("num_classes", [3, 20])
def test_distribution_bars_are_the_counts_per_class_and_split(num_classes, tmp_path, monkeypatch):
    names = [f"class_{number}" for number in range(num_classes)]
    counts = {
        split: {name: scale * (number + 1) for number, name in enumerate(names)}
        for split, scale in (("train", 7), ("val", 2), ("test", 1))
    }

    figure = drawn_figure(
        monkeypatch, visualize.plot_dataset_distribution, counts, names, tmp_path / "d.png", skipped=1
    )

    axes = figure.axes[0]
    horizontal = num_classes >= visualize.HORIZONTAL_BARS_FROM
    assert len(axes.containers) == 3
    for split, bars, colour in zip(("train", "val", "test"), axes.containers, ("DEEP_ROSE", "ROSE", "BLUSH")):
        lengths = [bar.get_width() if horizontal else bar.get_height() for bar in bars]
        assert lengths == [counts[split][name] for name in names]
        centres = [bar.get_y() + bar.get_height() / 2 if horizontal else bar.get_x() + bar.get_width() / 2
                   for bar in bars]
        offset = {"train": -0.28, "val": 0.0, "test": 0.28}[split]
        assert np.allclose(centres, np.arange(num_classes) + offset)
        assert {hex_colour(bar.get_facecolor()) for bar in bars} == {getattr(theme, colour)}
    # The counts on the bars, and each split's images in the legend.
    written = [text.get_text() for text in axes.texts]
    assert written == [str(counts[split][name]) for split in ("train", "val", "test") for name in names]
    legend = axes.get_legend()
    assert legend.get_title().get_text() == "split"
    wanted = [f"{split} ({sum(counts[split].values()):,})" for split in counts]
    assert tick_texts(legend.get_texts()) == wanted
    class_labels = axes.get_yticklabels() if horizontal else axes.get_xticklabels()
    assert [text.replace("\n", "") for text in tick_texts(class_labels)] == names


def test_short_labels_wrap_at_separators_and_shorten():
    assert theme.short_label("star_shaped_badge", 12, 2) == "star_shaped_\nbadge"
    assert theme.short_label("cat", 12, 2) == "cat"
    assert theme.short_label("a_very_long_name_indeed", 10, 1) == "a_very_lo…"
    assert all(len(line) <= 12 for line in theme.short_label("x" * 40, 12, 2).split("\n"))


def test_history_csv_is_read_with_epochs_across_phases(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(
        "epoch,accuracy,learning_rate,loss,val_accuracy,val_loss\n"
        "0,0.5,0.001,1.0,0.4,1.2\n"
        "1,0.7,0.0001,0.6,0.6,0.9\n"
    )

    history = train_utils.read_history(path)

    assert history["epoch"].tolist() == [0, 1] and history["val_loss"].tolist() == [1.2, 0.9]
    png_size(visualize.plot_training_curves(history, tmp_path / "curves.png", finetune_start=1))


def test_show_figures_shows_each_saved_png_in_the_given_order_one_window_at_a_time(tmp_path, monkeypatch):
    # Real PNGs from the plot functions, under results/<category>/<stamp>/,
    # given in neither the order they were drawn in nor by name.
    folders = {category: tmp_path / category / "stamp" for category in ("grid", "augment", "curves")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    history = {
        "epoch": np.arange(3), "loss": np.array([1.0, 0.7, 0.6]), "val_loss": np.array([1.1, 0.8, 0.9]),
        "accuracy": np.array([0.5, 0.7, 0.8]), "val_accuracy": np.array([0.4, 0.6, 0.6]),
    }
    drawn = [
        visualize.plot_class_grid([("cat", [tiny_image(90)])], str(folders["grid"] / "b.png")),
        visualize.plot_training_curves(history, str(folders["curves"] / "c.png")),
        visualize.plot_augmentation_preview(
            np.stack([tiny_image(20)]), np.stack([np.stack([tiny_image(200)])]),
            str(folders["augment"] / "a.png"),
        ),
    ]
    paths = [drawn[1], drawn[2], drawn[0]]
    windows = []

    def pyplot_show(block=None):
        # pyplot.show while a window is open: which PNG it shows, and that
        # it is the only window (the previous one was closed first).
        pyplot = visualize.matplotlib.pyplot
        assert len(pyplot.get_fignums()) == 1, "a window opened before the previous one closed"
        assert block is True
        window = pyplot.gcf()
        windows.append((window.canvas.manager.get_window_title(), window.axes[0].images[0].get_array()))

    monkeypatch.setattr(figures, "should_show", lambda mode: (True, None))
    monkeypatch.setattr("matplotlib.pyplot.show", pyplot_show)

    assert figures.show_figures(paths, "1") == paths

    assert [title for title, _ in windows] == ["curves: c.png", "augment: a.png", "grid: b.png"]
    for path, (_, pixels) in zip(paths, windows):
        with Image.open(path) as saved:  # the window shows the file on disk, as saved
            assert np.array_equal(np.round(np.asarray(pixels) * 255), np.asarray(saved.convert("RGBA")))
    assert visualize.matplotlib.pyplot.get_fignums() == []  # the last window closed too
    # A figure not saved (yet) opens no window: showing it fails before any window.
    windows.clear()
    with pytest.raises(FileNotFoundError):
        figures.show_figures([str(tmp_path / "not_saved.png")], "1")
    assert windows == [] and visualize.matplotlib.pyplot.get_fignums() == []


def saved_pngs(folder, count):
    paths = []
    for number in range(count):
        paths.append(str(folder / f"figure{number}.png"))
        Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(paths[-1])
    return paths


def destroyed_windows(monkeypatch, destroyed):
    """pyplot.show as TkAgg's behaves when the window numbers in
    `destroyed` (1-based) are destroyed from outside while shown (Tk raises
    TclError; each TkAgg figure has a Tk application of its own, so the
    next window opens as usual). Returns the list of windows shown."""
    import tkinter

    windows = []

    def pyplot_show(block=None):
        windows.append(visualize.matplotlib.pyplot.gcf().number)
        if len(windows) in destroyed:
            raise tkinter.TclError('can\'t invoke "update" command: application has been destroyed')

    monkeypatch.setattr(figures, "should_show", lambda mode: (True, None))
    monkeypatch.setattr("matplotlib.pyplot.show", pyplot_show)
    return windows


def test_a_window_destroyed_from_outside_goes_on_with_the_next_figure(tmp_path, monkeypatch, capsys):
    """Tk raises TclError once a window was destroyed from outside (not
    closed by the user): one line says so, the next figure opens, no
    traceback, and no figure is left for pyplot's exit handler to fail on."""
    paths = saved_pngs(tmp_path, 3)
    windows = destroyed_windows(monkeypatch, destroyed={2})

    assert figures.show_figures(paths, "1") == [paths[0], paths[2]]

    assert len(windows) == 3  # the third opened after the second was destroyed
    printed = capsys.readouterr().out
    assert ("the window of figure1.png was destroyed from outside (TclError: can't invoke \"update\" command: "
            "application has been destroyed); going on with the next figure") in printed
    assert "showing stopped" not in printed and "Traceback" not in printed
    assert visualize.matplotlib.pyplot.get_fignums() == []


def test_two_windows_in_a_row_that_cannot_be_shown_stop_the_showing(tmp_path, monkeypatch, capsys):
    """The toolkit itself gone (every window fails): two tries, one line
    each, then no more windows."""
    paths = saved_pngs(tmp_path, 4)
    windows = destroyed_windows(monkeypatch, destroyed={1, 2, 3, 4})

    assert figures.show_figures(paths, "1") == []

    assert len(windows) == 2
    printed = capsys.readouterr().out
    assert "showing stopped: no figure window can be shown (TclError" in printed
    assert "every figure is saved all the same" in printed and "Traceback" not in printed
    assert visualize.matplotlib.pyplot.get_fignums() == []


def test_a_display_gone_before_a_window_opens_stops_the_showing_in_one_line(tmp_path, monkeypatch, capsys):
    """Tk cannot even make the window (the display went away): no
    traceback, the showing stops after two tries."""
    import tkinter

    def no_window(*args, **kwargs):
        raise tkinter.TclError("couldn't connect to display \":0\"")

    monkeypatch.setattr(figures, "should_show", lambda mode: (True, None))
    monkeypatch.setattr("matplotlib.pyplot.figure", no_window)

    assert figures.show_figures(saved_pngs(tmp_path, 3), "1") == []
    assert "showing stopped: no figure window can be shown (TclError: couldn't connect" in capsys.readouterr().out


@pytest.mark.parametrize(
    "mode, environ",
    [
        ("0", {"DISPLAY": ":0"}),
        ("auto", {}),
        ("1", {}),
        ("auto", {"DISPLAY": ":0", "CI": "true"}),
    ],
)
def test_headless_or_off_never_shows(mode, environ, monkeypatch, capsys):
    monkeypatch.setattr(figures.sys, "platform", "linux")
    monkeypatch.setattr(visualize, "show_saved_figure", lambda path: pytest.fail("a window opened"))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    assert figures.should_show(mode)[0] is False
    assert figures.show_figures(["figure.png"], mode) == []


def test_display_with_interactive_backend_shows(monkeypatch):
    monkeypatch.setattr(visualize, "interactive_backend", lambda: "tkagg")

    assert figures.should_show("auto", {"DISPLAY": ":0"}) == (True, None)
    assert figures.should_show("1", {"DISPLAY": ":0", "CI": "1"}) == (True, None)
    monkeypatch.setattr(visualize, "interactive_backend", lambda: None)
    shown, reason = figures.should_show("1", {"DISPLAY": ":0"})
    assert not shown and "cannot open windows" in reason


def test_the_reliability_diagram_draws_accuracy_as_accuracy_in_every_bin(tmp_path, monkeypatch):
    """An under-confident bin (accuracy above its mean confidence): nothing
    filled covers its accuracy bar between the confidence and the accuracy;
    an over-confident one keeps its filled gap above the accuracy."""
    import numpy as np

    import visualize

    edges = np.linspace(0, 1, 11)
    count = np.zeros(10, int)
    accuracy, confidence = np.zeros(10), np.zeros(10)
    count[5], accuracy[5], confidence[5] = 10, 0.9, 0.55  # under-confident
    count[9], accuracy[9], confidence[9] = 10, 0.6, 0.95  # over-confident
    bins = {"lower": edges[:-1], "upper": edges[1:], "count": count, "accuracy": accuracy, "confidence": confidence}
    drawn = []
    monkeypatch.setattr(visualize, "save_figure", lambda figure, path: drawn.append(figure) or path)
    visualize.plot_reliability_diagram(bins, 0.1, str(tmp_path / "r.png"))
    top = drawn[0].axes[0]

    def filled_cover(x, low, high):
        """Patches with a visible face over x between low and high, in drawing order."""
        return [patch for patch in top.patches
                if patch.get_x() < x < patch.get_x() + patch.get_width() and patch.get_facecolor()[3] > 0
                and patch.get_y() <= low + 1e-9 and patch.get_y() + patch.get_height() >= high - 1e-9]

    under = filled_cover(0.55, 0.56, 0.89)
    assert len(under) == 1 and under[0].get_height() == pytest.approx(0.9)  # only the accuracy bar
    over = filled_cover(0.95, 0.61, 0.94)
    assert len(over) == 1 and over[0].get_y() == pytest.approx(0.6)  # the filled gap above the accuracy


def test_long_file_names_are_shortened_in_the_middle_so_two_stay_apart(capsys):
    import predict

    names = ["glioma_tumor_Testing_scan_0001.png", "glioma_tumor_Testing_scan_0002.png"]
    short = [theme.short_middle(name, 24) for name in names]
    assert short[0] != short[1] and all(len(text) == 24 and "…" in text for text in short)
    assert short[0].startswith("glioma_tumor") and short[0].endswith("0001.png")
    assert theme.short_middle("cat.png", 24) == "cat.png"
    titles = [figures.GalleryItem(tiny_image(0), "cat", 0.7, caption=name).title for name in names]
    assert titles[0] != titles[1] and titles[0].endswith("0001.png")
    # The terminal's table: the folder's start and the file name's end.
    predict.print_table([["path", "predicted_class", "confidence"],
                         *[[f"/data/new_scans_from_the_clinic/{name}", "cat", "0.7"] for name in names],
                         ["/d/a.png", "dog", "0.6"]])
    printed = capsys.readouterr().out
    assert "/data/new_scans" in printed and "0001.png" in printed and "0002.png" in printed


def test_training_curves_mark_the_first_epochs_at_chance_and_say_they_are_normal(monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(visualize, "save_figure", lambda figure, path: drawn.append(figure) or path)
    history = {
        "epoch": np.arange(8), "loss": np.linspace(1.4, 0.3, 8), "accuracy": np.linspace(0.3, 0.9, 8),
        "val_loss": np.array([1.4, 2.5, 4.0, 9.9, 1.0, 0.8, 0.7, 0.6]),
        "val_accuracy": np.array([0.25, 0.25, 0.25, 0.25, 0.5, 0.7, 0.8, 0.9]),
    }

    visualize.plot_training_curves(history, tmp_path / "at_chance.png", chance=0.25, chance_epochs=4)
    visualize.plot_training_curves(history, tmp_path / "plain.png")

    marked, plain = ([text.get_text() for text in figure.legends[0].get_texts()] for figure in drawn)
    assert marked[0] == ("epochs 1-4: val at chance, normal from\nscratch while BatchNorm settles;\n"
                         "not counted for early stopping")
    assert "chance: always the largest class (25%)" in marked
    # The shaded span covers epochs 1-4 on both panels.
    spans = [patch for axes in drawn[0].axes for patch in axes.patches]
    assert len(spans) == 2 and all(patch.get_x() == 0.5 and patch.get_width() == 4 for patch in spans)
    assert not any("chance" in text for text in plain)
