"""The multi-label figures: each draws from the right numbers, the figures
that do not fit a task are not drawn, and a single-label run draws what
it drew before."""

import os

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

import figures
import label_metrics
import metrics
import splits
import tasks

NAMES = ("cat", "dog", "bird")


def tiny_pngs(folder, count, seed=0):
    """`count` random 24 px PNGs in `folder`; their paths."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for number in range(count):
        path = os.path.join(folder, f"img_{number:03d}.png")
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def label_evaluation(tmp_path, count=24, seed=0, thresholds=(0.5, 0.4, 0.6)):
    """A multi-label Evaluation of random probabilities, loosely following
    random multi-hot labels (every label present and absent somewhere)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((count, len(NAMES))) < 0.4).astype(np.float32)
    truth[0], truth[1] = 1.0, 0.0
    probabilities = np.clip(0.45 * truth + 0.6 * rng.random(truth.shape), 0, 1).astype(np.float32)
    return metrics.Evaluation(
        tuple(tiny_pngs(tmp_path / "images", count, seed)), truth, probabilities, NAMES, 24, "test split",
        task=tasks.MULTI_LABEL, thresholds=np.array(thresholds), temperature=1.3,
    )


def single_evaluation(tmp_path, count=24, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.arange(count) % len(NAMES)
    probabilities = rng.dirichlet(np.ones(len(NAMES)), size=count).astype(np.float32)
    return metrics.Evaluation(tuple(tiny_pngs(tmp_path / "images", count, seed)), truth, probabilities, NAMES, 24,
                              "test split", temperature=1.3)


LOOK = figures.Look(rows=2, cols=4, gallery="mixed", seed=0, grid_per_class=2, image_size=24, mixup=0.0, cutmix=0.0)


def drawn_names(paths, root):
    """(category, file name) of each drawn path under `root`."""
    return [(os.path.relpath(path, root).split(os.sep)[0], os.path.basename(path)) for path in paths]


# ---------------------------------------------------------------- the figures' data


def test_cooccurrence_counts_images_with_both_labels_and_each_label_on_the_diagonal():
    truth = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]], np.float32)
    table = label_metrics.cooccurrence(truth)
    assert table.tolist() == [[3, 2, 1], [2, 2, 1], [1, 1, 1]]
    assert label_metrics.without_labels(truth) == 2


def test_each_label_s_2x2_table_counts_at_its_own_threshold():
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], np.float32)
    probabilities = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.5], [0.1, 0.9]])
    grids = label_metrics.confusion_grids(truth, probabilities, np.array([0.5, 0.8]))
    # Label 0 at 0.5: yes for images 0 and 2. Label 1 at 0.8: yes for image 3 only.
    assert grids[0].tolist() == [[1, 1], [1, 1]]  # [[TP, missed], [false alarm, TN]]
    assert grids[1].tolist() == [[0, 2], [1, 1]]
    assert grids.sum(axis=(1, 2)).tolist() == [4, 4]


def test_evaluation_grids_use_its_thresholds(tmp_path):
    evaluation = label_evaluation(tmp_path)
    grids = evaluation.confusion_grids()
    truth, predicted = evaluation.true_labels > 0.5, evaluation.probabilities >= np.array([0.5, 0.4, 0.6])
    assert grids[:, 0, 0].tolist() == (truth & predicted).sum(axis=0).tolist()
    assert grids[:, 0, 1].tolist() == (truth & ~predicted).sum(axis=0).tolist()
    assert grids[:, 1, 0].tolist() == (~truth & predicted).sum(axis=0).tolist()


def test_precision_recall_curves_match_scikit_learn_and_mark_the_threshold(tmp_path):
    evaluation = label_evaluation(tmp_path)
    curves = evaluation.precision_recall()
    for number, name in enumerate(NAMES):
        truth, scores = evaluation.true_labels[:, number] > 0.5, evaluation.probabilities[:, number]
        curve = curves[name]
        assert curve["average_precision"] == pytest.approx(average_precision_score(truth, scores))
        assert curve["prevalence"] == pytest.approx(truth.mean())
        answered = scores >= evaluation.label_thresholds[number]
        assert curve["point"] == pytest.approx(((answered & truth).sum() / truth.sum(),
                                                (answered & truth).sum() / answered.sum()))


def test_a_label_no_image_has_gets_no_curve():
    truth = np.array([[1, 0], [0, 0], [1, 0]], np.float32)
    probabilities = np.array([[0.8, 0.1], [0.2, 0.3], [0.6, 0.2]])
    assert label_metrics.precision_recall_curves(truth, probabilities, ("a", "b"), np.array([0.5, 0.5]))["b"] is None
    roc = label_metrics.roc_curves(truth, probabilities, ("a", "b"))
    assert roc["per_class"]["b"] is None and roc["absent"] == ["b"]


def test_per_label_roc_matches_scikit_learn_with_micro_and_macro(tmp_path):
    evaluation = label_evaluation(tmp_path)
    roc = evaluation.roc()
    truth = evaluation.true_labels > 0.5
    aucs = [roc_auc_score(truth[:, number], evaluation.probabilities[:, number]) for number in range(len(NAMES))]
    assert [roc["per_class"][name]["auc"] for name in NAMES] == pytest.approx(aucs)
    assert roc["macro"]["auc"] == pytest.approx(np.mean(aucs))
    assert roc["micro"]["auc"] == pytest.approx(roc_auc_score(truth.ravel(), evaluation.probabilities.ravel()))
    assert roc["binary"] is False


def test_a_tile_tells_right_wrong_and_missed_labels_apart():
    marks = label_metrics.label_marks(np.array([1, 0, 1]), np.array([0.9, 0.7, 0.2]), NAMES, np.array([0.5] * 3))
    assert marks == [("cat", pytest.approx(0.9), "right"), ("dog", pytest.approx(0.7), "wrong"),
                     ("bird", pytest.approx(0.2), "missed")]
    unknown = label_metrics.label_marks(None, np.array([0.9, 0.7, 0.2]), NAMES, np.array([0.5] * 3))
    assert [kind for _, _, kind in unknown] == ["predicted", "predicted"]
    item = figures.LabelSetItem(image=np.zeros((4, 4, 3), np.uint8), marks=tuple(marks))
    assert item.verdict == "wrong" and item.predicted == ("cat", "dog")
    assert "missed: bird" in item.title
    right = figures.LabelSetItem(image=np.zeros((4, 4, 3), np.uint8), marks=(("cat", 0.9, "right"),))
    assert right.verdict == "correct"
    assert figures.LabelSetItem(image=np.zeros((4, 4, 3), np.uint8), marks=(), labelled=False).verdict == "unlabelled"


def test_the_gallery_s_mistakes_are_images_with_any_label_wrong_or_missed():
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], np.float32)
    predicted = np.array([[True, False], [True, False], [False, False], [True, True]])
    assert figures.image_mistakes(truth, predicted).tolist() == [False, True, False, True]
    chosen = figures.gallery_indices(truth, predicted, 4, "misclassified", seed=0)
    assert sorted(chosen) == [1, 3]
    mixed = figures.gallery_indices(truth, predicted, 2, "mixed", seed=0)
    assert set(mixed) & {1, 3} and set(mixed) & {0, 2}


def test_the_report_rows_are_the_labels_then_the_averages_with_ap_and_thresholds(tmp_path):
    evaluation = label_evaluation(tmp_path)
    scores = evaluation.metrics()
    names, values, supports, thresholds = figures.label_report_rows(scores)
    assert names == [*NAMES, "micro avg", "macro avg", "weighted avg"]
    assert values[:3, 3].tolist() == pytest.approx([scores["per_class"][name]["average_precision"] for name in NAMES])
    assert values[4, 3] == pytest.approx(scores["mAP"])
    assert np.isnan(values[3, 3]) and np.isnan(thresholds[3:]).all()
    assert thresholds[:3].tolist() == pytest.approx([0.5, 0.4, 0.6])
    assert supports[:3] == (evaluation.true_labels > 0.5).sum(axis=0).tolist()


def test_summary_line_of_a_multi_label_evaluation_reads_its_scores(tmp_path):
    evaluation = label_evaluation(tmp_path)
    line = figures.summary_line(evaluation)
    scores = evaluation.metrics()
    assert line.startswith("test split, 24 images · ")
    assert f"micro-F1 {scores['micro_avg']['f1']:.3f}" in line and f"exact set {scores['subset_accuracy']:.3f}" in line


def test_gradcam_targets_a_chosen_label_or_each_image_s_most_probable_predicted_label():
    items = [figures.LabelSetItem(np.zeros((4, 4, 3), np.uint8), (("dog", 0.9, "right"), ("cat", 0.6, "wrong"))),
             figures.LabelSetItem(np.zeros((4, 4, 3), np.uint8), (("bird", 0.3, "missed"),))]
    assert figures.gradcam_targets(NAMES, items) == [1, 2]
    assert figures.gradcam_targets(NAMES, items, labels="bird") == [2, 2]
    assert figures.gradcam_targets(NAMES, items, labels=[0, "dog"]) == [0, 1]
    single = [figures.GalleryItem(np.zeros((4, 4, 3), np.uint8), "dog", 0.8)]
    assert figures.gradcam_targets(NAMES, single) == [1]


# ---------------------------------------------------------------- which figures are drawn


def test_a_multi_label_evaluation_draws_only_the_figures_that_fit_it(tmp_path):
    evaluation = label_evaluation(tmp_path)
    drawn = figures.render_evaluation(evaluation, str(tmp_path / "results"), "stamp", LOOK)
    assert drawn_names(drawn, tmp_path / "results") == [
        ("label_confusion", "label_confusion.png"),
        ("classification_report", "classification_report.png"),
        ("precision_recall", "precision_recall.png"),
        ("roc_auc", "roc_auc.png"),
        ("calibration", "reliability.png"),
        ("prediction_gallery", "prediction_gallery.png"),
        ("top_losses", "top_losses.png"),
    ]
    for path in drawn:
        assert os.path.getsize(path) > 10_000
    folder = tmp_path / "results" / "classification_report" / "stamp"
    text = (folder / "classification_report.txt").read_text()
    assert "threshold" in text and "Labels most often wrong" in text


def test_a_single_label_evaluation_draws_what_it_drew_before(tmp_path):
    drawn = figures.render_evaluation(single_evaluation(tmp_path), str(tmp_path / "results"), "stamp", LOOK)
    assert drawn_names(drawn, tmp_path / "results") == [
        ("confusion_matrix", "confusion_matrix.png"),
        ("confusion_matrix", "confusion_matrix_normalized.png"),
        ("classification_report", "classification_report.png"),
        ("roc_auc", "roc_auc.png"),
        ("calibration", "reliability.png"),
        ("prediction_gallery", "prediction_gallery.png"),
        ("top_losses", "top_losses.png"),
    ]


def test_which_dataset_figures_fit_which_task():
    fitting = {task.name: [figure.category for figure in figures.figures_of(figures.DATASET) if figure.fits(task)]
               for task in (tasks.SINGLE_LABEL, tasks.MULTI_LABEL)}
    assert fitting == {
        "single_label": ["dataset_distribution", "class_grid", "near_copies", "augmentation_preview"],
        "multi_label": ["label_distribution", "class_grid", "near_copies", "augmentation_preview"],
    }


def test_the_gallery_of_a_multi_label_evaluation_writes_every_label_in_its_kind_s_colour(tmp_path):
    import theme
    import visualize

    evaluation = label_evaluation(tmp_path)
    indices = figures.gallery_indices(evaluation.true_labels, evaluation.predicted, 4, "mixed", 0)
    items = figures.evaluation_items(evaluation, indices)
    figure = visualize.label_set_gallery_figure(items, 1, 4, "Prediction gallery", "subtitle")
    texts = [text for axes in figure.axes for text in axes.texts]
    for item in items:
        for name, probability, kind in item.marks:
            line = f"{theme.LABEL_MARKS[kind][0]} {name} {probability:.0%}"
            assert any(text.get_text() == line and text.get_color() == theme.LABEL_MARKS[kind][1] for text in texts)
    legend = figure.legends[0]
    shown = {kind for item in items for _, _, kind in item.marks}
    assert {theme.LABEL_MARKS[kind][2] for kind in shown} <= {text.get_text() for text in legend.get_texts()}
    assert legend.get_title().get_text() == "subtitle"


# ---------------------------------------------------------------- the dataset figures


def multi_label_folder(root, count=36, seed=0):
    """A folder of tiny PNGs and labels.csv with several labels per cell
    (some images with none), split given."""
    rng = np.random.default_rng(seed)
    tiny_pngs(root / "images", count, seed)
    rows = ["filename,labels,split"]
    for number in range(count):
        chosen = [name for name in NAMES if rng.random() < 0.45] if number % 9 else []
        if number < len(NAMES):
            chosen = [NAMES[number], NAMES[(number + 1) % len(NAMES)]]
        split = ("train", "train", "train", "val", "test")[number % 5]
        rows.append(f"images/img_{number:03d}.png,{';'.join(chosen)},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(root), str(root / "labels.csv")


@pytest.fixture(scope="module")
def label_index(tmp_path_factory):
    root, labels_csv = multi_label_folder(tmp_path_factory.mktemp("multi") / "data")
    index = splits.index_dataset(root, 0.2, 0.2, seed=0, labels_csv=labels_csv, cache_dir=None)
    assert index.task is tasks.MULTI_LABEL
    return index


def test_the_label_distribution_draws_the_counts_and_co_occurrence_of_every_split(label_index, tmp_path, monkeypatch):
    import visualize

    seen = {}
    real = visualize.plot_label_distribution

    def spy(counts, class_names, cooccurrence, output_path, no_label=None, subtitle=""):
        seen.update(counts=counts, cooccurrence=cooccurrence, no_label=no_label, subtitle=subtitle)
        return real(counts, class_names, cooccurrence, output_path, no_label=no_label, subtitle=subtitle)

    monkeypatch.setattr(visualize, "plot_label_distribution", spy)
    path = figures.render_label_distribution(label_index, str(tmp_path))
    assert os.path.getsize(path) > 10_000
    every = np.concatenate([label_index.split(split)[1] for split in ("train", "val", "test")]) > 0.5
    assert np.array_equal(seen["cooccurrence"], every.T.astype(int) @ every.astype(int))
    assert seen["counts"] == label_index.counts()
    empty = {split: sum(1 for sample in label_index.samples if sample.split == split and not sample.names)
             for split in ("train", "val", "test")}
    assert seen["no_label"] == empty and sum(empty.values()) > 0
    assert f"{sum(empty.values())} with no label" in seen["subtitle"]


def test_the_class_grid_shows_an_image_under_each_of_its_labels_with_its_label_set(label_index, tmp_path, monkeypatch):
    import visualize

    seen = {}
    monkeypatch.setattr(visualize, "plot_class_grid", lambda examples, path, **kwargs: seen.update(
        examples=examples, **kwargs) or path)
    figures.render_class_grid(label_index, 24, 2, 0, str(tmp_path))
    _, labels = label_index.split("train")
    names = label_index.class_names
    picks = figures.pick_training_images(labels, len(names), 2, 0)
    assert [name for name, _ in seen["examples"]] == list(names)
    for number, chosen in enumerate(picks):
        assert len(chosen) == 2 and all(labels[i, number] == 1 for i in chosen)
        for caption, i in zip(seen["captions"][number], chosen):
            assert names[number] in caption and caption.count("+") == int(labels[i].sum()) - 1
    assert seen["title"] == "Example images per label"


def test_the_dataset_figures_of_a_multi_label_folder_are_drawn(label_index, tmp_path):
    import augment

    look = figures.Look(rows=2, cols=4, gallery="mixed", seed=0, grid_per_class=2, image_size=24, mixup=0.2,
                        cutmix=0.0, augmentation=augment.AugmentConfig())
    drawn = [path for figure in figures.figures_of(figures.DATASET) if figure.fits(label_index.task)
             and figure.is_wanted(look) for path in figures.draw(figure, label_index, str(tmp_path), "stamp", look)]
    assert [os.path.basename(path) for path in drawn] == [
        "label_distribution.png", "class_grid.png", "augmentation_preview.png"]
    for path in drawn:
        assert os.path.getsize(path) > 10_000


# ---------------------------------------------------------------- Grad-CAM for a label


@pytest.mark.slow
def test_gradcam_of_a_sigmoid_model_answers_for_the_label_asked(tmp_path):
    import gradcam
    import model_builder

    model = model_builder.build_classifier(
        num_classes=3, image_size=32, weights="none", backbone="mobilenet_v2", alpha=0.35, task=tasks.MULTI_LABEL)
    layer = model_builder.gradcam_layer(model, "mobilenet_v2")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    one_for_all = gradcam.gradcam_heatmaps(model, images, 2, layer)
    per_image = gradcam.gradcam_heatmaps(model, images, [2, 2], layer)
    assert one_for_all.shape == (2, 32, 32)
    assert np.allclose(one_for_all, per_image)
    assert 0.0 <= one_for_all.min() and one_for_all.max() <= 1.0
