"""Serving a multi-label model: evaluate.py re-scores it to main.py's
numbers (its saved split's label sets parsed back), another folder's
multi-label CSV is matched by name, predict.py writes the label sets and a
probability per label, --threshold decides every label, the export keeps
every output, a model from another framework whose sidecar says
multi_label is used as one, and the web page shows each given label with
its sentence (in a real browser).

One tiny multi-label model is trained once for the module (3 labels, 32 px,
2 epochs, no ImageNet weights); it learns nothing, which is fine: these
tests check the plumbing, not the model. The figures and report pages of a
multi-label run are figures.py's and report.py's (their own tests); here
they are left out (`without_pages`) so the serving is tested alone.
"""

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import app
import artifacts
import calibration
import evaluate
import export
import external
import figures
import inference
import label_metrics
import predict
import predictions_csv
import tasks
from conftest import ROOT, TINY, free_ports, one_line_error, read_csv, read_json
from errors import UserError

LABELS = ("blue", "green", "red")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


# ---------------------------------------------------------------- a multi-label folder


def label_image(labels, variant, size=32):
    """A grey image with a coloured band for each of its labels (red left,
    green middle, blue right), with noise."""
    rng = np.random.default_rng(variant)
    pixels = np.full((size, size, 3), 128.0, np.float32)
    for position, name in enumerate(("red", "green", "blue")):
        if name in labels:
            pixels[:, position * size // 3:(position + 1) * size // 3] = COLOURS[name]
    pixels += rng.normal(0, 10, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def label_sets(count, seed=0):
    """`count` label sets over LABELS, every kind of set (the empty one too)."""
    rng = np.random.default_rng(seed)
    kinds = [(), ("red",), ("green",), ("blue",), ("red", "green"), ("green", "blue"), ("red", "blue"),
             ("red", "green", "blue")]
    return [kinds[number % len(kinds)] if number < len(kinds) * 2 else kinds[rng.integers(len(kinds))]
            for number in range(count)]


def write_folder(folder, sets, delimiter=";", header=("filename", "labels"), no_label="", start=0):
    """folder/images/NNN.png for each label set and folder/labels.csv;
    returns (folder, the CSV's path)."""
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = [list(header)]
    for number, labels in enumerate(sets, start=start):
        name = f"images/{number:03d}.png"
        label_image(labels, number).save(os.path.join(folder, name))
        rows.append([name, delimiter.join(labels) if labels else no_label])
    path = os.path.join(folder, "labels.csv")
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return str(folder), path


@contextlib.contextmanager
def without_pages():
    """Figures and report pages left out (see the module's docstring)."""
    import main

    left_out = {figure.stage for figure in figures.FIGURES} | {"Writing the report"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(main, "STAGES", [stage for stage in main.STAGES if stage.name not in left_out])
        patch.setattr(figures, "render_evaluation", lambda *args, **kwargs: [])
        patch.setattr(figures, "render_gallery", lambda *args, **kwargs: ("", []))
        patch.setattr(evaluate, "write_report", lambda *args, **kwargs: "(left out)")
        yield


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    """The module's one multi-label model, trained by main.py on 48 images.
    Keys: data, csv, sets ({relative path: label set}), artifacts, results,
    run (its folder), model (its best_model.keras)."""
    import main

    root = tmp_path_factory.mktemp("multi_label")
    sets = label_sets(48)
    data, labels_csv = write_folder(root / "data", sets)
    printed = io.StringIO()
    with without_pages(), contextlib.redirect_stdout(printed):
        code = main.main([
            "--image_dir", data, "--labels_csv", labels_csv, *TINY, "--epochs", "2",
            "--artifacts_dir", str(root / "artifacts"), "--results_dir", str(root / "results"),
        ])
    assert code == 0, printed.getvalue()[-3000:]
    run = os.path.realpath(root / "artifacts" / "latest")
    return {"root": root, "data": data, "csv": labels_csv, "printed": printed.getvalue(),
            "sets": {f"images/{number:03d}.png": labels for number, labels in enumerate(sets)},
            "artifacts": str(root / "artifacts"), "results": str(root / "results"), "run": run,
            "model": os.path.join(run, artifacts.MODEL_FILE)}


def run_script(script, argv):
    """(exit code, what it printed) of evaluate.py or predict.py's main, its
    pages left out."""
    printed = io.StringIO()
    with without_pages(), contextlib.redirect_stdout(printed):
        code = script.main(argv)
    return code, printed.getvalue()


def newest(folder):
    return os.path.join(folder, sorted(os.listdir(folder))[-1])


def given(cell):
    """A predicted_labels cell's labels, sorted (the cell has them most probable first)."""
    return tuple(sorted(filter(None, cell.split(";"))))


def multi_hot(sets):
    return tasks.MULTI_LABEL.encode(sets, LABELS)


# ---------------------------------------------------------------- fast: the pieces


def fake_trained(folder="", run_config=None, thresholds=None, task=tasks.MULTI_LABEL):
    return inference.TrainedModel(None, "model.keras", LABELS, 32, run_config or {}, folder, task=task,
                                  thresholds=thresholds)


def test_the_saved_splits_label_cells_become_multi_hot_labels_by_the_runs_delimiter(tmp_path):
    manifest = [artifacts.ManifestRow("a.png", "blue|red", "test"), artifacts.ManifestRow("b.png", "", "test"),
                artifacts.ManifestRow("c.png", "green", "train")]
    artifacts.write_companions(str(tmp_path), LABELS, manifest, {"options": {"label_delimiter": "|"}})
    trained = fake_trained(str(tmp_path), {"options": {"label_delimiter": "|"}})
    paths, labels = inference.manifest_images(str(tmp_path / "data"), "test", trained)
    assert [os.path.basename(path) for path in paths] == ["a.png", "b.png"]
    assert labels.tolist() == [[1, 0, 1], [0, 0, 0]]  # an empty cell: an image with no label
    _, every = inference.manifest_images(str(tmp_path / "data"), "all", trained)
    assert every.shape == (3, 3) and every[2].tolist() == [0, 1, 0]


def test_a_saved_split_naming_a_label_the_model_lacks_is_one_line(tmp_path):
    manifest = [artifacts.ManifestRow("a.png", "blue;purple", "test")]
    artifacts.write_companions(str(tmp_path), LABELS, manifest, {})
    with pytest.raises(UserError, match="names label\\(s\\) the model does not know \\(purple\\)"):
        inference.manifest_images(str(tmp_path), "test", fake_trained(str(tmp_path)))


def test_thresholds_come_from_the_run_unless_threshold_gives_one_for_all():
    saved = {"blue": 0.3, "red": 0.7}
    assert inference.decision_thresholds(tasks.MULTI_LABEL, LABELS, saved, None, "m").tolist() == [0.3, 0.5, 0.7]
    assert inference.decision_thresholds(tasks.MULTI_LABEL, LABELS, saved, 0.2, "m").tolist() == [0.2] * 3
    assert inference.decision_thresholds(tasks.SINGLE_LABEL, LABELS, saved, None, "m") is None
    with pytest.raises(UserError, match="gives one class per image .* leave --threshold out"):
        inference.decision_thresholds(tasks.SINGLE_LABEL, LABELS, None, 0.2, "m")


def test_another_folders_csv_takes_the_runs_delimiter_unless_one_is_given():
    trained = fake_trained(run_config={"options": {"label_delimiter": "|", "no_label": "No Finding"}})
    reading = inference.csv_reading(trained)
    assert (reading.separator, reading.no_label, reading.multi_label) == ("|", "No Finding", 1)
    reading = inference.csv_reading(trained, "Image Index", "Finding Labels", ",", "none")
    assert (reading.path_column, reading.label_column, reading.separator, reading.no_label) == (
        "Image Index", "Finding Labels", ",", "none")
    assert inference.csv_reading(fake_trained(task=tasks.SINGLE_LABEL)).multi_label is None


def test_prediction_rows_of_a_multi_label_model():
    probabilities = np.array([[0.9, 0.2, 0.6], [0.1, 0.2, 0.3]])
    bins = calibration.saved_bins(calibration.reliability_bins(*label_metrics.as_binary(
        multi_hot([("blue",), ("red",)] * 10), np.tile(probabilities, (10, 1)))))
    rows = predictions_csv.prediction_rows(["a.png", "b.png"], probabilities, LABELS, 3, multi_hot([("blue", "red"), ()]),
                                     bins, task=tasks.MULTI_LABEL, thresholds=np.array([0.5, 0.5, 0.7]),
                                     separator="|")
    assert rows[0] == ["path", "true_labels", "predicted_labels", "probability_blue", "probability_green",
                       "probability_red", *predictions_csv.LABEL_TRUST_COLUMNS]
    assert rows[1][:3] == ["a.png", "blue|red", "blue"]  # red's 0.6 is under its 0.7
    assert rows[2][:3] == ["b.png", "", ""]  # no label, none predicted
    assert [float(value) for value in rows[1][3:6]] == [0.9, 0.2, 0.6]
    rate, trust = predictions_csv.label_trust(bins, 0.9)
    assert rows[1][6:] == [f"{rate:.4f}", str(trust.images)] and trust.images == 20  # the 0.9s and the 0.1s
    assert rows[2][6:] == ["", ""]
    # Without saved bins the trust columns stay empty.
    assert predictions_csv.prediction_rows(["a.png"], probabilities[:1], LABELS, 3, task=tasks.MULTI_LABEL)[1][-2:] == ["", ""]


def test_a_labels_trust_is_how_often_pairs_at_its_probability_had_the_label():
    truth = multi_hot([("blue",)] * 8 + [()] * 2)[:, :1]
    bins = calibration.saved_bins(calibration.reliability_bins(*label_metrics.as_binary(truth, np.full((10, 1), 0.85))))
    rate, trust = predictions_csv.label_trust(bins, 0.85)
    assert rate == pytest.approx(0.8) and trust.images == 10
    # A "no" answer at 0.15 falls in the same bin: the label was there 20% of those times.
    assert predictions_csv.label_trust(bins, 0.15)[0] == pytest.approx(0.2)
    sentence = app.label_trust_sentence(bins, 0.85)
    assert sentence == ("When it says 85% for a label, the label was there 80% of the time on the test split "
                        "(10 image-label pairs at 80\u201387%).")


def test_export_parity_of_a_multi_label_model_judges_every_label():
    labels = multi_hot([("blue",), ("red", "green"), ()])
    reference = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.7], [0.1, 0.1, 0.1]])
    same = export.agreement(reference + 1e-6, reference, labels)
    assert (same.accuracy, same.top1_agreement) == (1.0, 1.0) and same.max_abs_difference == pytest.approx(1e-6)
    flipped = reference.copy()
    flipped[1, 2] = 0.3  # one of nine yes/no answers differs
    measured = export.agreement(flipped, reference, labels)
    assert measured.top1_agreement == pytest.approx(8 / 9) and measured.accuracy == pytest.approx(2 / 3)
    assert export.parity(measured, quantized=False) == "failed"
    # A rounding-sized difference on a probability that sits on its threshold is a tie, not a failure.
    on_threshold = export.agreement(reference + 5e-7, reference, labels, thresholds=reference[0] + 1e-7)
    assert on_threshold.top1_agreement == 1.0


def test_predict_counts_each_label_and_titles_the_gallery_with_a_given_label():
    trained = fake_trained(thresholds=np.array([0.5, 0.5, 0.9]))
    probabilities = np.array([[0.6, 0.7, 0.8], [0.1, 0.2, 0.3], [0.9, 0.1, 0.95]])
    assert predict.label_counts_line(trained, probabilities) == (
        "labels given: blue 2, green 1, red 1 · no label: 1 of 3 images")
    rows = predictions_csv.rows_of(trained, ["a/1.png", "2.png", "3.png"], probabilities, 3)
    assert [row[1] for row in rows[1:]] == ["green;blue", "", "red;blue"]
    assert predict.gallery_captions(trained, ["a/1.png", "2.png", "3.png"], rows) == [
        "1.png +blue", "2.png: no label", "3.png +blue"]
    items = [figures.GalleryItem(np.zeros((2, 2, 3), np.uint8), LABELS[int(np.argmax(row))], float(row.max()))
             for row in probabilities]
    titled = predict.given_label_items(trained, items, probabilities)
    # red's 0.8 is the most probable of the first image, but under its 0.9: green is the label given.
    assert [(item.predicted, item.confidence) for item in titled] == [("green", 0.7), ("red", 0.3), ("red", 0.95)]


def sidecar_file(folder, **fields):
    model = os.path.join(folder, "model.onnx")
    with open(model, "wb") as handle:
        handle.write(b"not read by read_sidecar")
    values = {"classes": list(LABELS), "preprocessing": "raw", "output": "logits", **fields}
    with open(external.sidecar_path(model), "w", encoding="utf-8") as handle:
        json.dump(values, handle)
    return model


def test_a_sidecar_may_say_multi_label_with_thresholds(tmp_path):
    sidecar = external.read_sidecar(sidecar_file(str(tmp_path), multi_label=True, thresholds={"red": 0.3}))
    assert sidecar.multi_label and sidecar.thresholds == {"red": 0.3}
    assert "multi-label" in sidecar.describe()
    assert not external.read_sidecar(sidecar_file(str(tmp_path))).multi_label


@pytest.mark.parametrize("fields, message", [
    ({"multi_label": "yes"}, 'field "multi_label" must be true'),
    ({"thresholds": {"red": 0.3}}, 'field "thresholds" is for a multi-label model'),
    ({"multi_label": True, "thresholds": {"purple": 0.3}}, "names purple, not in its classes"),
    ({"multi_label": True, "thresholds": {"red": 2}}, "must map labels to numbers from 0 to 1"),
])
def test_a_bad_multi_label_sidecar_field_is_one_line(tmp_path, fields, message):
    with pytest.raises(UserError, match=message):
        external.read_sidecar(sidecar_file(str(tmp_path), **fields))


# ---------------------------------------------------------------- slow: the trained model


@pytest.mark.slow
def test_evaluate_rescores_the_published_model_to_main_pys_test_numbers(ml_run, tmp_path):
    code, printed = run_script(evaluate, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(tmp_path),
                                          "--show", "0"])
    assert code == 0, printed[-3000:]
    trained_scores = read_json(newest(os.path.join(ml_run["results"], "metrics")) + "/metrics.json")
    scores = read_json(newest(str(tmp_path / "metrics")) + "/metrics.json")
    assert scores["task"] == "multi_label" and scores["num_samples"] == trained_scores["num_samples"]
    for key in ("per_class", "micro_avg", "macro_avg", "mAP", "subset_accuracy", "hamming_loss", "thresholds"):
        assert scores[key] == trained_scores[key], key
    headline = label_metrics.headline(scores)
    assert f"    {headline} (test split)" in printed.splitlines()
    assert f"test {headline}" in ml_run["printed"]  # main.py printed the same line
    saved = read_json(os.path.join(ml_run["run"], artifacts.RUN_CONFIG_FILE))["thresholds"]
    assert "thresholds (the run's, chosen by validation F1): " + ", ".join(
        f"{name} {saved[name]:.2f}" for name in LABELS) in printed


@pytest.mark.slow
def test_the_saved_split_is_parsed_back_into_each_images_label_set(ml_run):
    trained = inference.load_trained_model(ml_run["model"])
    assert trained.task is tasks.MULTI_LABEL and len(trained.thresholds) == 3
    paths, labels = inference.manifest_images(ml_run["data"], "all", trained)
    assert len(paths) == len(ml_run["sets"])
    expected = multi_hot([ml_run["sets"][os.path.relpath(path, ml_run["data"])] for path in paths])
    assert np.array_equal(labels, expected)
    assert not labels.any(axis=1).all()  # the images with no label came back as such


@pytest.mark.slow
def test_threshold_decides_every_label_in_evaluate_and_predict(ml_run, tmp_path):
    code, _ = run_script(evaluate, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(tmp_path / "e"),
                                    "--show", "0", "--threshold", "0.25"])
    assert code == 0
    assert read_json(newest(str(tmp_path / "e" / "metrics")) + "/metrics.json")["thresholds"] == dict.fromkeys(LABELS, 0.25)
    for threshold in ("0", "1"):
        results = tmp_path / f"p{threshold}"
        code, printed = run_script(predict, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(results),
                                             "--images", os.path.join(ml_run["data"], "images"), "--show", "0",
                                             "--threshold", threshold])
        assert code == 0, printed[-2000:]
        rows = read_csv(newest(str(results / "predictions")) + "/predictions.csv")
        assert {given(row[1]) for row in rows[1:]} == {LABELS if threshold == "0" else ()}


@pytest.mark.slow
def test_predict_writes_label_sets_and_a_probability_per_label(ml_run, tmp_path):
    images = os.path.join(ml_run["data"], "images")
    code, printed = run_script(predict, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(tmp_path),
                                         "--images", images, "--show", "0"])
    assert code == 0, printed[-2000:]
    rows = read_csv(newest(str(tmp_path / "predictions")) + "/predictions.csv")
    assert rows[0] == ["path", "predicted_labels", *(f"probability_{name}" for name in LABELS),
                       *predictions_csv.LABEL_TRUST_COLUMNS]
    assert len(rows) == 1 + len(ml_run["sets"])
    trained = inference.load_trained_model(ml_run["model"])
    # The model's own probabilities (the CSV's are rounded to 6 digits; a
    # threshold is one of the validation probabilities, and this model
    # answers every image nearly alike).
    _, probabilities, _ = inference.predict_files(trained.model, [row[0] for row in rows[1:]], 32, 8)
    counts = dict.fromkeys(LABELS, 0)
    for row, row_probabilities in zip(rows[1:], probabilities):
        assert np.allclose([float(value) for value in row[2:5]], row_probabilities, atol=1e-6)
        labels = tuple(name for name, p, t in zip(LABELS, row_probabilities, trained.thresholds) if p >= t)
        assert given(row[1]) == labels
        assert len(list(filter(None, row[5].split(";")))) == len(labels)  # a trust value per given label
        for name in labels:
            counts[name] += 1
    assert "labels given: " in printed
    line = next(line for line in printed.splitlines() if "labels given: " in line)
    for name, count in counts.items():
        assert f"{name} {count}" in line
    # The labelled split: the true label sets beside the predicted ones.
    code, _ = run_script(predict, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(tmp_path / "l"),
                                   "--image_dir", ml_run["data"], "--show", "0"])
    assert code == 0
    rows = read_csv(newest(str(tmp_path / "l" / "predictions")) + "/predictions.csv")
    assert rows[0][:3] == ["path", "true_labels", "predicted_labels"]
    assert all(set(filter(None, row[1].split(";"))) == set(ml_run["sets"][row[0]]) for row in rows[1:])


def nih_folder(root, sets):
    """Another folder, NIH-shaped: 'Image Index', 'Finding Labels' joined by
    '|', 'No Finding' for an image with none."""
    return write_folder(root, sets, delimiter="|", header=("Image Index", "Finding Labels"), no_label="No Finding",
                        start=100)


@pytest.mark.slow
def test_another_folders_csv_is_matched_by_label_name(ml_run, tmp_path, capsys):
    sets = [("red",), ("blue", "green"), (), ("green",), ("red", "blue"), ()]
    folder, labels_csv = nih_folder(tmp_path / "nih", sets)
    columns = ["--path_column", "Image Index", "--label_column", "Finding Labels", "--label_delimiter", "|",
               "--no_label", "No Finding"]
    trained = inference.load_trained_model(ml_run["model"])
    images = inference.labelled_images(folder, trained, "test", labels_csv, reading=inference.csv_reading(
        trained, "Image Index", "Finding Labels", "|", "No Finding"))
    assert np.array_equal(images.labels, multi_hot(sets)) and images.other_folder
    code, printed = run_script(evaluate, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(tmp_path / "r"),
                                          "--image_dir", folder, "--labels_csv", labels_csv, "--show", "0", *columns])
    assert code == 0, printed[-2000:]
    scores = read_json(newest(str(tmp_path / "r" / "metrics")) + "/metrics.json")
    assert scores["num_samples"] == len(sets) and scores["evaluated"] == "all images"
    assert {name: row["support"] for name, row in scores["per_class"].items()} == {"blue": 2, "green": 2, "red": 2}
    # A label the model does not know: one line, exit 2.
    unknown, unknown_csv = nih_folder(tmp_path / "unknown", [("red",), ("purple", "green")])
    capsys.readouterr()
    code, _ = run_script(evaluate, ["--artifacts_dir", ml_run["artifacts"], "--results_dir", str(tmp_path / "u"),
                                    "--image_dir", unknown, "--labels_csv", unknown_csv, "--show", "0", *columns])
    assert code == 2
    assert "label(s) not in the model's class index: purple (the model knows: blue, green, red)" in one_line_error(capsys)


@pytest.fixture(scope="module")
def ml_export(ml_run, tmp_path_factory):
    """evaluate.py --export onnx on a copy of the module's run. Keys: run
    (the copy's folder), model (its .keras), onnx, printed."""
    root = tmp_path_factory.mktemp("exported")
    run = shutil.copytree(ml_run["run"], root / "artifacts" / "runs" / os.path.basename(ml_run["run"]))
    model = str(run / artifacts.MODEL_FILE)
    code, printed = run_script(evaluate, ["--model", model, "--results_dir", str(root / "results"), "--show", "0",
                                          "--export", "onnx"])
    assert code == 0, printed[-3000:]
    return {"run": run, "model": model, "onnx": str(run / "best_model.onnx"), "printed": printed}


@pytest.mark.slow
def test_the_onnx_export_keeps_every_labels_probability(ml_run, ml_export):
    report = read_json(ml_export["run"] / export.EXPORT_REPORT_FILE)
    assert report["passed"] and report["task"] == "multi_label"
    onnx_row = next(row for row in report["formats"] if row["format"] == "onnx")
    assert onnx_row["parity"] == "passed" and onnx_row["max_abs_probability_difference"] <= export.MAX_DIFFERENCE
    # The export is a multi-label model too: the same labels, thresholds and probabilities.
    keras_model = inference.load_trained_model(ml_export["model"])
    onnx_model = inference.load_trained_model(ml_export["onnx"])
    assert onnx_model.task is tasks.MULTI_LABEL and np.array_equal(onnx_model.thresholds, keras_model.thresholds)
    paths = [os.path.join(ml_run["data"], path) for path in list(ml_run["sets"])[:8]]
    _, from_onnx, _ = inference.predict_files(onnx_model.model, paths, 32, 8)
    _, from_keras, _ = inference.predict_files(keras_model.model, paths, 32, 8)
    assert from_onnx.shape == (8, 3) and np.max(np.abs(from_onnx - from_keras)) <= export.MAX_DIFFERENCE


@pytest.mark.slow
def test_a_sidecar_that_says_multi_label_is_evaluated_and_predicted_as_one(ml_export, tmp_path):
    # Our export, as if from another framework: uint8 pixels in, sigmoid probabilities out.
    model = str(tmp_path / "elsewhere.onnx")
    shutil.copy(ml_export["onnx"], model)

    def sidecar(**fields):
        with open(external.sidecar_path(model), "w", encoding="utf-8") as handle:
            json.dump({"classes": list(LABELS), "preprocessing": "raw", "output": "probabilities", **fields}, handle)

    sidecar(multi_label=True, thresholds={"red": 0.2})
    trained = inference.load_trained_model(model)
    assert trained.task is tasks.MULTI_LABEL and trained.thresholds.tolist() == [0.5, 0.5, 0.2]
    folder, labels_csv = write_folder(tmp_path / "other", [("red",), ("green", "blue"), (), ("blue",)])
    code, printed = run_script(evaluate, ["--model", model, "--image_dir", folder, "--labels_csv", labels_csv,
                                          "--results_dir", str(tmp_path / "e"), "--show", "0"])
    assert code == 0, printed[-2000:]
    scores = read_json(newest(str(tmp_path / "e" / "metrics")) + "/metrics.json")
    assert scores["task"] == "multi_label" and scores["thresholds"] == {"blue": 0.5, "green": 0.5, "red": 0.2}
    assert f"thresholds (its sidecar {external.sidecar_path(model)})" in printed
    code, _ = run_script(predict, ["--model", model, "--images", os.path.join(folder, "images"),
                                   "--results_dir", str(tmp_path / "p"), "--show", "0", "--threshold", "0"])
    assert code == 0
    rows = read_csv(newest(str(tmp_path / "p" / "predictions")) + "/predictions.csv")
    assert rows[0][1] == "predicted_labels" and {given(row[1]) for row in rows[1:]} == {LABELS}
    # Without "multi_label" the same file is a model of one class per image (its outputs then read as logits).
    sidecar(output="logits")
    single = inference.load_trained_model(model)
    assert single.task is tasks.SINGLE_LABEL and single.thresholds is None
    code, _ = run_script(predict, ["--model", model, "--images", os.path.join(folder, "images"),
                                   "--results_dir", str(tmp_path / "s"), "--show", "0"])
    assert code == 0
    assert read_csv(newest(str(tmp_path / "s" / "predictions")) + "/predictions.csv")[0][1] == "predicted_class"


@pytest.mark.slow
def test_the_page_answers_every_label_at_or_above_its_threshold(ml_run):
    served = app.load_served("run", ml_run["model"], threshold=0.3)
    assert served.trained.thresholds.tolist() == [0.3] * 3 and served.bins is not None
    photo = os.path.join(ml_run["data"], "images", "007.png")
    result = app.answer_files(served, [photo], top_k=1)
    answer = result.answers[0]
    assert [label.name for label in answer.labels] == [name for name, _ in answer.top]  # every label, best first
    assert len(answer.top) == 3 and answer.trust == ""
    for label in answer.labels:
        assert label.given == (label.probability >= 0.3)
        assert label.trust == (app.label_trust_sentence(served.bins, label.probability) if label.given else "")
    given = [label.name for label in answer.labels if label.given]
    assert result.rows[1][1] == ";".join(given)
    card = app.model_card(served, ml_run["artifacts"])
    assert "| labels (3, several per image) | blue, green, red |" in card
    assert "| thresholds | blue 0.30, green 0.30, red 0.30 |" in card and "| test exact label set |" in card


@pytest.mark.slow
def test_the_page_in_a_real_browser_shows_each_given_label_with_its_sentence(ml_run, tmp_path):
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no playwright")
    port = free_ports()[0]
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "app.py"), "--artifacts_dir", ml_run["artifacts"], "--port", str(port),
         "--threshold", "0.3"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    output = []
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    photo = os.path.join(ml_run["data"], "images", "007.png")
    try:
        deadline = time.monotonic() + 180
        while not any(line.startswith("Open http") for line in output):
            assert process.poll() is None and time.monotonic() < deadline, "".join(output)[-3000:]
            time.sleep(0.2)
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = chromium.new_page(viewport={"width": 1200, "height": 900})
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
                page.set_input_files("#images input[type=file]", [photo])
                page.wait_for_selector(".answer-labels", timeout=60_000)
                page.wait_for_selector("#table", state="visible", timeout=30_000)
                shown = page.inner_text(".answer-labels")
                below = page.inner_text(".labels-below")
                card = page.inner_text("#card")
                shot = tmp_path / "multi_label_app.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                chromium.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
        reader.join(timeout=10)
    served = app.load_served("run", ml_run["model"], threshold=0.3)
    answer = app.answer_files(served, [photo], top_k=3).answers[0]
    given = [label for label in answer.labels if label.given]
    assert ("Labels found" in shown) == bool(given)
    for label in given:
        assert f"{label.name} {label.probability:.0%} (threshold 30%)" in shown and label.trust in shown
    for label in answer.labels:
        if not label.given:
            assert f"{label.name} {label.probability:.0%}" in below
    assert "thresholds" in card and Image.open(shot).size[0] == 1200
    if os.environ.get("MULTI_LABEL_APP_SCREENSHOT"):  # to look at it
        shutil.copy(shot, os.environ["MULTI_LABEL_APP_SCREENSHOT"])
