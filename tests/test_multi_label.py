"""Multi-label images, the core: the labels CSV's forms decide the task once,
label sets are split by iterative stratification (groups whole), and the
loss, thresholds and scores of a multi-label model."""

import csv
import os

import numpy as np
import pytest

import balance
import data_loader
import label_metrics
import label_sets
import metrics
import splits
import tasks
import train_utils
from conftest import make_multi_label_dataset, multi_label_image
from errors import UserError


def index_of(root, csv_path, **options):
    reading = splits.dataset_files.LabelReading(**{key: value for key, value in options.items()
                                                    if key in ("path_column", "label_column", "delimiter",
                                                               "multi_label", "no_label")})
    rest = {key: value for key, value in options.items() if key in ("group_by", "classes")}
    return splits.index_dataset(root, 0.2, 0.2, seed=1, labels_csv=csv_path, near_duplicates_mode="off",
                                reading=reading, **rest)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return str(path)


# ---------------------------------------------------------------- reading the CSV


def test_a_cell_with_several_labels_makes_a_multi_label_index_with_multi_hot_labels(tmp_path):
    root, csv_path, sets = make_multi_label_dataset(tmp_path / "data", count=40)
    index = index_of(root, csv_path)

    assert index.task is tasks.MULTI_LABEL
    assert index.class_names == ("cat", "dog", "fox")
    assert sum(index.sizes().values()) == 40
    given = {f"images/img_{n:03d}.png": labels for n, labels in enumerate(sets)}
    for split in ("train", "val", "test"):
        paths, labels = index.split(split)
        assert labels.dtype == np.float32 and labels.shape == (len(paths), 3)
        for path, row in zip(paths, labels):
            expected = given[os.path.relpath(path, root).replace(os.sep, "/")]
            assert tuple(name for name, on in zip(index.class_names, row) if on) == expected
    # counts are each label's positives; the empty set is an image too
    assert sum(index.counts()["train"].values()) == int(index.split("train")[1].sum())
    assert any(not sample.labels for sample in index.samples)


def test_the_one_column_per_label_form_reads_1_as_present_and_0_blank_and_minus_1_as_absent(tmp_path):
    root, _, _ = make_multi_label_dataset(tmp_path / "data", count=24)
    rows = [[f"images/img_{n:03d}.png", "1" if n % 2 else "0", "-1" if n % 3 == 0 else "1", "" if n % 4 else "1"]
            for n in range(24)]
    index = index_of(root, write_csv(tmp_path / "wide.csv", ["filename", "Atelectasis", "Cardiomegaly", "Edema"], rows))

    assert index.task is tasks.MULTI_LABEL
    assert index.class_names == ("Atelectasis", "Cardiomegaly", "Edema")
    labels = {sample.path: set(sample.labels) for sample in index.samples}
    assert labels["images/img_000.png"] == {"Edema"}  # 0, -1 (uncertain: absent), 1
    assert labels["images/img_001.png"] == {"Atelectasis", "Cardiomegaly"}
    assert any("-1 (uncertain) are absent" in note for note in index.notes)


def test_an_nih_shaped_csv_trains_with_named_columns_no_finding_and_patients_as_groups(tmp_path):
    root, _, sets = make_multi_label_dataset(tmp_path / "data", count=48)
    rows = [[f"images/img_{n:03d}.png", "|".join(labels) or "No Finding", f"P{n // 3:03d}"]
            for n, labels in enumerate(sets)]
    csv_path = write_csv(tmp_path / "Data_Entry.csv", ["Image Index", "Finding Labels", "Patient ID"], rows)

    index = index_of(root, csv_path, path_column="Image Index", label_column="Finding Labels", delimiter="|",
                     no_label="No Finding", group_by="Patient ID")

    assert index.task is tasks.MULTI_LABEL and index.class_names == ("cat", "dog", "fox")
    assert "No Finding" not in index.class_names
    split_of_patient = {}
    for sample in index.samples:
        assert split_of_patient.setdefault(sample.group, sample.split) == sample.split  # a patient is never split
    assert len(split_of_patient) == 16


@pytest.mark.parametrize("options, message", [
    ({"path_column": "Image"}, "labels_csv has no column 'Image' (--path_column); its columns are filename, labels"),
    ({"label_column": "Findings"}, "labels_csv has no column 'Findings' (--label_column)"),
    ({"multi_label": 0}, "--multi_label 0, but labels_csv row"),
])
def test_a_column_or_task_that_cannot_be_used_is_one_line(tmp_path, options, message):
    root, csv_path, _ = make_multi_label_dataset(tmp_path / "data", count=16)
    with pytest.raises(UserError) as raised:
        index_of(root, csv_path, **options)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_every_row_without_a_label_is_refused_in_one_line(tmp_path):
    root, _, _ = make_multi_label_dataset(tmp_path / "data", count=8)
    csv_path = write_csv(tmp_path / "empty.csv", ["filename", "label"],
                         [[f"images/img_{n:03d}.png", ""] for n in range(8)])
    with pytest.raises(UserError, match=r"^labels_csv gives no label to any of its 8 row\(s\)"):
        index_of(root, csv_path)


def test_a_label_with_images_in_test_only_is_refused_and_one_too_rare_for_every_split_is_named(tmp_path):
    root, _, sets = make_multi_label_dataset(tmp_path / "data", count=40)
    rows = [[f"images/img_{n:03d}.png", ";".join(labels + (("owl",) if n in (3, 4) else ())),
             "test" if n in (3, 4) else ""] for n, labels in enumerate(sets)]
    with pytest.raises(UserError, match=r"^label 'owl' has no image in the train split \(2 in test\)"):
        index_of(root, write_csv(tmp_path / "owl.csv", ["filename", "labels", "split"], rows))

    rows = [[f"images/img_{n:03d}.png", ";".join(labels + (("owl",) if n == 5 else ()))] for n, labels in enumerate(sets)]
    index = index_of(root, write_csv(tmp_path / "rare.csv", ["filename", "labels"], rows))
    assert any(warning.startswith("1 label(s) too rare to be in every split") and "owl (" in warning
               for warning in index.warnings)


def test_the_delimiter_decides_and_a_delimiter_that_splits_nothing_is_a_warning(tmp_path):
    root, _, sets = make_multi_label_dataset(tmp_path / "data", count=24)
    one_each = [[f"images/img_{n:03d}.png", labels[0] if labels else "cat"] for n, labels in enumerate(sets)]
    csv_path = write_csv(tmp_path / "one.csv", ["filename", "label"], one_each)

    index = index_of(root, csv_path, delimiter="|")
    assert index.task is tasks.SINGLE_LABEL
    assert any("--label_delimiter '|' splits no label cell" in warning for warning in index.warnings)
    assert index_of(root, csv_path, multi_label=1).task is tasks.MULTI_LABEL

    piped = [[f"images/img_{n:03d}.png", "|".join(labels) or "cat"] for n, labels in enumerate(sets)]
    index = index_of(root, write_csv(tmp_path / "piped.csv", ["filename", "label"], piped))
    assert index.task is tasks.SINGLE_LABEL  # the default delimiter is ';': a hint, not a guess
    assert any("give --label_delimiter '|' for a multi-label run" in warning for warning in index.warnings)


def test_classes_keeps_some_labels_and_an_unknown_one_is_refused(tmp_path):
    root, csv_path, _ = make_multi_label_dataset(tmp_path / "data", count=24)
    index = index_of(root, csv_path, classes=("fox", "cat"))
    assert index.class_names == ("fox", "cat")
    assert all(set(sample.labels) <= {"fox", "cat"} for sample in index.samples)
    with pytest.raises(UserError, match=r"^--classes names 'owl', which is not a label here"):
        index_of(root, csv_path, classes=("owl",))


# ---------------------------------------------------------------- the split


def test_iterative_stratification_gives_every_split_its_share_of_every_label_and_keeps_units_whole():
    rng = np.random.default_rng(0)
    counts = (rng.random((300, 6)) < [0.5, 0.3, 0.1, 0.05, 0.3, 0.2]).astype(float)
    counts[:60] *= 2  # 60 units of two identical images
    sizes = np.where(np.arange(300) < 60, 2, 1)
    placed = label_sets.iterative_stratification(counts, sizes, [0.6, 0.2, 0.2], np.random.default_rng(1))

    assert placed.shape == (300,) and set(placed) == {0, 1, 2}
    totals = counts.sum(axis=0)
    for split, share in enumerate([0.6, 0.2, 0.2]):
        got = counts[placed == split].sum(axis=0)
        assert np.all(np.abs(got - share * totals) <= np.maximum(2.5, 0.1 * totals))
    assert abs(sizes[placed == 0].sum() - 0.6 * sizes.sum()) < 0.06 * sizes.sum()


def test_the_split_of_label_sets_puts_every_label_and_the_empty_set_in_every_split(tmp_path):
    root, csv_path, _ = make_multi_label_dataset(tmp_path / "data", count=80)
    index = index_of(root, csv_path)
    for split in ("train", "val", "test"):
        _, labels = index.split(split)
        assert labels.sum(axis=0).min() > 0
        assert (labels.sum(axis=1) == 0).any()


# ---------------------------------------------------------------- training and deciding


def test_a_multi_label_run_trains_on_binary_cross_entropy_and_refuses_class_balancing():
    import keras

    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]], np.float32)
    plain = balance.for_run("auto", None, labels, ("a", "b", "c"), batch_size=2, label_smoothing=0.1)
    assert isinstance(plain.loss, keras.losses.BinaryCrossentropy) and plain.one_hot == 0
    assert "binary cross-entropy per label" in plain.line
    focal = balance.for_run("focal", None, labels, ("a", "b", "c"), batch_size=2)
    assert isinstance(focal.loss, keras.losses.BinaryFocalCrossentropy)
    for mode in ("weights", "oversample"):
        with pytest.raises(UserError, match=f"^--balance {mode} is for one class per image"):
            balance.for_run(mode, None, labels, ("a", "b", "c"), batch_size=2)
    with pytest.raises(UserError, match="^a multi-label run cannot train on several workers"):
        balance.for_run("auto", None, labels, ("a", "b", "c"), batch_size=2, workers=2)
    assert train_utils.accuracy_metric(plain.loss).__class__.__name__ == "BinaryAccuracy"
    # chance: answering each label's more common value (absent for a, b, c here: 1/2, 1/2, 3/4 right)
    assert train_utils.majority_share(labels) == pytest.approx((0.5 + 0.5 + 0.75) / 3)


def test_the_pipeline_gives_multi_hot_float_labels_and_mixes_them(tmp_path):
    root, csv_path, _ = make_multi_label_dataset(tmp_path / "data", count=16)
    index = index_of(root, csv_path)
    paths, labels = index.split("train")
    dataset = data_loader.make_dataset(paths, labels, image_size=32, batch_size=4, training=True, mix=(0.4, 0.0))
    images, batch = next(iter(dataset))
    assert images.shape[1:] == (32, 32, 3) and batch.shape == (4, 3) and batch.dtype.name == "float32"
    assert float(batch.numpy().min()) >= 0.0 and float(batch.numpy().max()) <= 1.0


def test_each_label_s_threshold_maximizes_its_validation_f1():
    truth = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 1]], np.float32)
    probabilities = np.array([[0.30, 0.1], [0.35, 0.2], [0.1, 0.9], [0.2, 0.6], [0.4, 0.7]])
    thresholds = label_metrics.choose_thresholds(truth, probabilities)
    # label 0: every positive is at 0.30-0.40, every negative below: 0.30 separates them
    assert thresholds[0] == pytest.approx(0.30)
    assert thresholds[1] == pytest.approx(0.7)  # 0.6 is a negative
    assert np.array_equal(label_metrics.thresholds_of(("a", "b"), {"a": 0.3}), [0.3, 0.5])
    assert np.array_equal(label_metrics.thresholds_of(("a", "b"), {"a": 0.3}, threshold=0.8), [0.8, 0.8])


def test_the_scores_are_scikit_learn_s_and_the_baselines_are_the_constant_answers():
    from sklearn.metrics import average_precision_score, f1_score, hamming_loss

    rng = np.random.default_rng(3)
    truth = (rng.random((50, 4)) < [0.6, 0.3, 0.2, 0.1]).astype(np.float32)
    probabilities = np.clip(truth * 0.6 + rng.random((50, 4)) * 0.5, 0, 1)
    thresholds = np.array([0.5, 0.55, 0.6, 0.5])
    evaluation = metrics.Evaluation(tuple(f"p{n}" for n in range(50)), truth, probabilities, ("a", "b", "c", "d"),
                                    32, "test", task=tasks.MULTI_LABEL, thresholds=thresholds)
    scores = evaluation.metrics()
    predicted = probabilities >= thresholds
    assert scores["micro_avg"]["f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert scores["macro_avg"]["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert scores["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert scores["mAP"] == pytest.approx(np.mean([average_precision_score(truth[:, i], probabilities[:, i])
                                                   for i in range(4)]))
    assert scores["subset_accuracy"] == pytest.approx(np.mean((predicted == truth).all(axis=1)))
    assert scores["per_class"]["c"]["threshold"] == 0.6
    base = scores["baselines"]
    assert base["majority_labels"] == (["a"] if truth[:, 0].mean() > 0.5 else [])
    assert base["prevalence_map"] == pytest.approx(truth.mean(axis=0).mean())
    assert 0 <= scores["calibration"]["ece"] <= 1
    assert metrics.baseline_warning(scores) is None
    assert evaluation.headline(scores).startswith("micro-F1 ")
    # Ranking every image the same is no better than prevalence: the warning says so.
    flat = metrics.Evaluation(evaluation.paths, truth, np.full_like(probabilities, 0.3), evaluation.class_names, 32,
                              "test", task=tasks.MULTI_LABEL)
    assert metrics.baseline_warning(flat.metrics()).startswith("WARNING: the model is no better than a constant answer")


def test_the_top_losses_and_most_confused_of_a_multi_label_model_name_labels():
    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.9, 0.95], [0.1, 0.6]])
    evaluation = metrics.Evaluation(("a", "b", "c", "d"), truth, probabilities, ("x", "y"), 32, "test",
                                    task=tasks.MULTI_LABEL)
    assert list(evaluation.top_losses()) == [1, 3]  # image b (both labels wrong) first; a and c are right
    assert evaluation.most_confused() == [("y", 1, 1), ("x", 0, 1)]  # y: missed on b, added to d


def test_a_mosaic_holds_its_labels_cells():
    image = np.asarray(multi_label_image(("cat",), ["cat", "dog"], 1, 32))
    assert image.shape == (32, 32, 3)
