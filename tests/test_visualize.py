"""visualize.py and the metrics behind its figures, on small synthetic data
(no model, no TensorFlow)."""

import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import classification_report, roc_auc_score

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
        visualize.GalleryItem(tiny_image(40 * i), NAMES[i % 3], 0.7, NAMES[(i + i // 2) % 3])
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
        "classification_report": visualize.plot_classification_report(
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
    figures = draw_every_figure(tmp_path)

    for name, path in figures.items():
        width, height = png_size(path)
        assert 400 <= width <= 6000 and 300 <= height <= 6000, (name, width, height)
    # Nothing but the PNGs: the atomic writes left no temporary file behind.
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(path) for path in figures.values())


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
        visualize.GalleryItem(image, "cat", 0.9, true="cat"),
        visualize.GalleryItem(image, "dog", 0.6, true="cat"),
        visualize.GalleryItem(image, "dog", 0.8),
    ]
    assert [item.verdict for item in items] == ["correct", "wrong", "unlabelled"]

    figure = visualize.gallery_figure(items, rows=2, cols=3, title="t")

    shown = [axes for axes in figure.axes if axes.images]
    assert len(shown) == 3
    assert len(figure.axes) == 3  # the empty second row was dropped
    expected = [visualize.CORRECT, visualize.WRONG, visualize.ROSE]
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
    names, values, supports = visualize.report_rows(scores)

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
    assert text == classification_report(labels, predicted, target_names=NAMES, digits=4, zero_division=0)


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


def test_short_labels_wrap_at_separators_and_shorten():
    assert visualize.short_label("star_shaped_badge", 12, 2) == "star_shaped_\nbadge"
    assert visualize.short_label("cat", 12, 2) == "cat"
    assert visualize.short_label("a_very_long_name_indeed", 10, 1) == "a_very_lo…"
    assert all(len(line) <= 12 for line in visualize.short_label("x" * 40, 12, 2).split("\n"))


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


def test_show_figures_opens_saved_files_in_order_one_at_a_time(tmp_path, monkeypatch):
    paths = [str(tmp_path / f"{name}.png") for name in ("first", "second", "third")]
    for path in paths[:2]:
        Image.new("RGB", (8, 8)).save(path)
    shown = []

    def record(path):
        assert os.path.isfile(path), f"{path} shown before it was saved"
        shown.append(path)

    monkeypatch.setattr(visualize, "should_show", lambda mode: (True, None))
    monkeypatch.setattr(visualize, "show_saved_figure", record)

    with pytest.raises(AssertionError, match="third.png shown before it was saved"):
        visualize.show_figures(paths, "1")
    Image.new("RGB", (8, 8)).save(paths[2])
    shown.clear()

    assert visualize.show_figures(paths, "1") == paths
    assert shown == paths


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
    monkeypatch.setattr(visualize.sys, "platform", "linux")
    monkeypatch.setattr(visualize, "show_saved_figure", lambda path: pytest.fail("a window opened"))
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    assert visualize.should_show(mode)[0] is False
    assert visualize.show_figures(["figure.png"], mode) == []


def test_display_with_interactive_backend_shows(monkeypatch):
    monkeypatch.setattr(visualize, "interactive_backend", lambda: "tkagg")

    assert visualize.should_show("auto", {"DISPLAY": ":0"}) == (True, None)
    assert visualize.should_show("1", {"DISPLAY": ":0", "CI": "1"}) == (True, None)
    monkeypatch.setattr(visualize, "interactive_backend", lambda: None)
    show, reason = visualize.should_show("1", {"DISPLAY": ":0"})
    assert not show and "cannot open windows" in reason
