"""main.py -> evaluate.py -> predict.py end to end on one tiny trained model,
plus Grad-CAM and the command-line mistakes that exit with code 2."""

import os

import numpy as np
import pytest

import artifacts
import calibration
import evaluate
import inference
import main as main_script
import predict
import predictions_csv
import figures
import visualize
import gradcam
from conftest import TRAINED_CLASSES, make_flat_dataset, one_line_error, read_csv, read_json, write_class_folder

CLASSES = TRAINED_CLASSES
MAIN_FIGURES = [
    ("dataset_distribution", "dataset_distribution.png"),
    ("class_grid", "class_grid.png"),
    ("augmentation_preview", "augmentation_preview.png"),
    ("training_curves", "training_curves.png"),
    ("confusion_matrix", "confusion_matrix.png"),
    ("confusion_matrix", "confusion_matrix_normalized.png"),
    ("classification_report", "classification_report.png"),
    ("roc_auc", "roc_auc.png"),
    ("calibration", "reliability.png"),
    ("prediction_gallery", "prediction_gallery.png"),
    ("top_losses", "top_losses.png"),
]


def runs_of(results):
    """{category: [stamps]} of a results folder."""
    return {
        category: sorted(os.listdir(results / category))
        for category in sorted(os.listdir(results))
        if not category.startswith(".")  # .stamps: the reserved stamps
    }


def only_stamp(results):
    """The one stamp every category of `results` shares."""
    stamps = {stamp for runs in runs_of(results).values() for stamp in runs}
    assert len(stamps) == 1, runs_of(results)
    return stamps.pop()


@pytest.fixture(scope="module")
def trained(trained_run):
    """The session's trained run (conftest.trained_run)."""
    return trained_run


def common(trained, results, *extra):
    return [
        "--artifacts_dir", str(trained["artifacts"]), "--results_dir", str(results),
        "--rows", "2", "--cols", "3", "--show", "0", *extra,
    ]


@pytest.mark.slow
def test_main_draws_every_stage_under_one_stamp_and_shows_them_in_order(trained):
    results = trained["results"]
    stamp = only_stamp(results)

    expected = [str(results / category / stamp / name) for category, name in MAIN_FIGURES]
    assert trained["shown"] == expected
    for path in expected:
        assert os.path.getsize(path) > 5_000
    report = results / "classification_report" / stamp
    assert (report / "classification_report.txt").read_text().startswith(" " * 10)
    assert read_json(report / "classification_report.json")["num_samples"] == 6
    metrics = read_json(results / "metrics" / stamp / "metrics.json")
    assert set(metrics["roc_auc"]["per_class"]) == set(CLASSES)
    assert np.array(metrics["confusion_matrix"]["counts"]).sum() == metrics["num_samples"] == 6


@pytest.mark.slow
def test_evaluate_reproduces_mains_test_metrics(trained, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shown = []
    monkeypatch.setattr(figures, "should_show", lambda mode: (True, None))
    monkeypatch.setattr(visualize, "show_saved_figure", shown.append)

    code = evaluate.main(["--image_dir", trained["data"], *common(trained, results)[:-2], "--show", "1"])

    assert code == 0
    stamp = only_stamp(results)
    assert set(runs_of(results)) == {
        "metrics", "confusion_matrix", "classification_report", "roc_auc", "calibration",
        "prediction_gallery", "top_losses", "report",
    }
    mains = read_json(trained["results"] / "metrics" / only_stamp(trained["results"]) / "metrics.json")
    ours = read_json(results / "metrics" / stamp / "metrics.json")
    assert ours["evaluated"] == "test split" and ours["num_samples"] == mains["num_samples"] == 6
    assert ours["accuracy"] == mains["accuracy"]
    assert ours["loss"] == pytest.approx(mains["loss"], rel=1e-5)
    assert ours["confusion_matrix"] == mains["confusion_matrix"]
    assert ours["calibration"] == pytest.approx(mains["calibration"], rel=1e-5)
    assert ours["tta"] == mains["tta"] == 1 and ours["tta_augmentation"] is None
    assert [os.path.relpath(path, results) for path in shown] == [
        os.path.join(category, stamp, name) for category, name in MAIN_FIGURES[4:]
    ]


@pytest.mark.slow
def test_predict_on_a_labelled_folder_draws_gallery_and_gradcam(trained, tmp_path):
    results = tmp_path / "results"

    code = predict.main(
        ["--image_dir", trained["data"], "--gradcam", "1", "--split", "all", *common(trained, results)]
    )

    assert code == 0
    stamp = only_stamp(results)
    assert runs_of(results) == {name: [stamp] for name in ("gradcam", "prediction_gallery", "predictions", "report")}
    assert os.path.getsize(results / "gradcam" / stamp / "gradcam.png") > 5_000
    rows = read_csv(results / "predictions" / stamp / "predictions.csv")
    assert rows[0] == ["path", "true_class", "predicted_class", "confidence", "top2_class",
                       "top2_confidence", "top3_class", "top3_confidence", *predictions_csv.TRUST_COLUMNS]
    assert len(rows) == 1 + 36
    assert all(row[0].split("/")[0] == row[1] for row in rows[1:])  # relative path, its class
    # The trust columns: the saved test bins at each row's confidence.
    bins = read_json(trained["run"] / artifacts.TEST_RELIABILITY_FILE)["bins"]
    for row in rows[1:]:
        assert float(row[3]) >= float(row[5]) >= float(row[7])
        trust = calibration.trust_at(bins, float(row[3]))
        assert row[8:] == [predictions_csv.TOO_FEW if trust.accuracy is None else f"{trust.accuracy:.4f}", str(trust.images)]


@pytest.mark.slow
def test_predict_images_writes_a_row_per_readable_image_and_lists_the_rest(trained, tmp_path, capsys, monkeypatch):
    from PIL import Image

    folder = tmp_path / "photos"
    write_class_folder(folder / "nested", 0, 3)
    single = write_class_folder(tmp_path / "single", 1, 1, extension="jpg")[0]
    (folder / "broken.png").write_bytes(b"not an image at all")
    write_class_folder(folder / "huge", 1, 1, size=48)  # over the pixel limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    missing = str(tmp_path / "nowhere.jpg")
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    results = tmp_path / "results"

    code = predict.main(["--images", str(folder), single, missing, str(loop), "--top_k", "2",
                         *common(trained, results)])

    assert code == 0
    stamp = only_stamp(results)
    assert sorted(runs_of(results)) == ["prediction_gallery", "predictions", "report"]
    rows = read_csv(results / "predictions" / stamp / "predictions.csv")
    assert rows[0] == ["path", "predicted_class", "confidence", "top2_class", "top2_confidence",
                       *predictions_csv.TRUST_COLUMNS]
    assert len(rows) == 1 + 4 and rows[-1][0] == single
    assert all(row[1] in CLASSES and 0 < float(row[2]) <= 1 for row in rows[1:])
    skipped = read_csv(results / "predictions" / stamp / "skipped.csv")
    too_large = "too large: 48x48 = 2,304 pixels, over Pillow's decompression-bomb limit of 2,000 (not decoded)"
    assert skipped[1:] == [
        [missing, "no such file or folder"],
        [str(loop), "a symbolic link loop: it leads back to itself, never to a file"],
        [str(folder / "broken.png"), "not an image: text file"],
        [str(folder / "huge" / "img_000.png"), too_large],
    ]
    output = capsys.readouterr().out
    assert "broken.png (not an image: text file)" in output and "nowhere.jpg (no such file or folder)" in output
    assert f"img_000.png ({too_large})" in output and "loop.jpg (a symbolic link loop: it leads back" in output


@pytest.mark.slow
def test_a_new_folder_is_matched_to_the_models_classes_by_name(trained, tmp_path, capsys):
    new = tmp_path / "new"
    write_class_folder(new / "gamma", 2, 2, start=50)
    write_class_folder(new / "alpha", 0, 3, start=50)
    results = tmp_path / "results"

    assert evaluate.main(["--image_dir", str(new), *common(trained, results)]) == 0

    metrics = read_json(results / "metrics" / only_stamp(results) / "metrics.json")
    assert metrics["evaluated"] == "all images" and metrics["num_samples"] == 5
    assert metrics["per_class"]["alpha"]["support"] == 3 and metrics["per_class"]["beta"]["support"] == 0
    assert metrics["roc_auc"]["absent_classes"] == ["beta"]

    write_class_folder(new / "delta", 1, 1)
    capsys.readouterr()
    assert evaluate.main(["--image_dir", str(new), *common(trained, tmp_path / "r2")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "delta" in error and "class index" in error


@pytest.mark.parametrize("script", [evaluate, predict])
def test_no_model_is_one_line_and_exit_2(script, tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data", per_class=2)

    code = script.main(["--image_dir", data, "--artifacts_dir", str(tmp_path / "none"),
                        "--results_dir", str(tmp_path / "results")])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no model at" in error and "main.py" in error and "--model" in error
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("script", [evaluate, predict, main_script])
@pytest.mark.parametrize("option", ["--rows", "--cols"])
def test_rows_or_cols_below_one_exit_2(script, option, tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data", per_class=2)

    code = script.main(["--image_dir", data, option, "0", "--results_dir", str(tmp_path / "results")])

    assert code == 2
    assert f"{option[2:]} must be between 1 and" in capsys.readouterr().err


def test_a_loss_of_zero_is_never_negative_zero_in_metrics_or_the_printed_line():
    import math

    import metrics

    # Every image predicted with certainty: -mean(log 1) is -0.0.
    evaluation = metrics.Evaluation(
        paths=("a.png", "b.png"), true_labels=np.array([0, 1]), probabilities=np.eye(2),
        class_names=("cat", "dog"), image_size=32, description="all images",
    )
    scores = evaluation.metrics()
    assert math.copysign(1, scores["loss"]) == 1 and math.copysign(1, scores["calibration"]["nll"]) == 1
    line = metrics.calibration_line(scores["calibration"])
    assert "NLL 0.000" in line and "-0.000" not in line


@pytest.mark.slow
def test_gradcam_heatmap_has_the_image_size_and_values_in_0_1():
    from backbones import BACKBONES
    from model_builder import build_classifier

    model = build_classifier(num_classes=3, image_size=64, alpha=0.35, weights="none")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    layer = BACKBONES["mobilenet_v2"]["last_conv_layer"]

    heatmaps = gradcam.gradcam_heatmaps(model, images, [0, 1, 2], layer)

    assert heatmaps.shape == (3, 64, 64) and heatmaps.dtype == np.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    # Each map is scaled to its own peak (or is all zeros: nothing pushed
    # towards the class).
    assert all(np.isclose(heatmap.max(), 1, atol=0.02) or heatmap.max() == 0 for heatmap in heatmaps)


@pytest.mark.slow
def test_main_calibrates_the_model_it_publishes_and_tracks_the_run(trained):
    import keras

    import artifacts
    import calibration
    import tracking

    stamp = only_stamp(trained["results"])
    folder = trained["artifacts"] / "runs" / stamp
    run_config = read_json(folder / "run_config.json")
    published = trained["artifacts"] / "best_model.keras"
    # The published file is the calibrated one, and its hash is recorded.
    assert run_config["model_sha256"] == artifacts.file_sha256(published)
    fitted = run_config["calibration"]
    assert fitted["fitted_on"] == "val" and fitted["images"] == 6
    assert fitted["val_nll_after"] <= fitted["val_nll_before"] + 1e-9
    model = keras.models.load_model(published)
    assert calibration.model_temperature(model) == pytest.approx(fitted["temperature"])
    metrics = read_json(trained["results"] / "metrics" / stamp / "metrics.json")
    assert metrics["calibration"]["temperature"] == pytest.approx(fitted["temperature"])
    assert set(metrics["calibration"]) >= {"temperature", "ece", "ece_uncalibrated", "brier", "nll"}
    assert metrics["calibration"]["nll"] == pytest.approx(metrics["loss"])
    report = read_json(trained["results"] / "classification_report" / stamp / "classification_report.json")
    mistakes = metrics["num_samples"] - np.trace(np.array(metrics["confusion_matrix"]["counts"]))
    assert sum(pair["count"] for pair in report["most_confused"]) == mistakes

    client, _ = tracking.client(str(trained["mlruns"]))
    (run,) = client.search_runs([client.get_experiment_by_name("data").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == run_config["mlflow"]["run_id"]
    assert run.data.params["epochs"] == "2" and run.data.params["image_size"] == "32"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 1]
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test_ece"] == pytest.approx(metrics["calibration"]["ece"])
    figures = {item.path for item in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {f"figures/{category}" for category, _ in MAIN_FIGURES}
    model_files = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert model_files == {"model/best_model.keras", "model/class_index.json", "model/run_config.json",
                           "model/split_manifest.csv"}


@pytest.mark.slow
def test_evaluate_with_tta_records_it_and_draws_the_same_figures(trained, tmp_path):
    results = tmp_path / "results"

    code = evaluate.main(["--image_dir", trained["data"], "--tta", "3", *common(trained, results)])

    assert code == 0
    metrics = read_json(results / "metrics" / only_stamp(results) / "metrics.json")
    assert metrics["tta"] == 3 and metrics["num_samples"] == 6
    assert metrics["tta_augmentation"] == {"flip": "horizontal", "rotation": 0.0, "zoom": 0.0,
                                           "translation": 0.1, "contrast": 0.0, "brightness": None,
                                           "shear": 0.0, "fill_mode": "reflect",
                                           # TTA stays the basic warp whatever the run's policy.
                                           "augment_policy": "basic", "erasing": 0.0}
    assert metrics["calibration"]["ece_uncalibrated"] is None  # not recoverable from averages
    assert os.path.getsize(results / "calibration" / only_stamp(results) / "reliability.png") > 5_000


@pytest.mark.slow
def test_a_model_saved_before_calibration_still_evaluates_and_predicts(trained, tmp_path):
    """Models saved before temperature scaling existed have the softmax in
    their last Dense and no temperature: they load and work everywhere."""
    import shutil

    import artifacts
    from test_calibration import old_head_model

    folder = tmp_path / "old_run"
    shutil.copytree(trained["artifacts"] / "runs" / only_stamp(trained["results"]), folder,
                    ignore=shutil.ignore_patterns("resume", "*.keras"))
    artifacts.save_model(old_head_model(num_classes=len(CLASSES)), str(folder / "best_model.keras"))
    run_config = read_json(folder / "run_config.json")
    run_config.pop("model_sha256")
    artifacts.write_json(str(folder / "run_config.json"), run_config)
    model = str(folder / "best_model.keras")
    results = tmp_path / "results"

    assert evaluate.main(["--image_dir", trained["data"], "--model", model, *common(trained, results)]) == 0
    assert predict.main(["--image_dir", trained["data"], "--model", model, "--gradcam", "1",
                         *common(trained, tmp_path / "predicted")]) == 0

    metrics = read_json(results / "metrics" / only_stamp(results) / "metrics.json")
    assert metrics["calibration"]["temperature"] is None
    assert metrics["calibration"]["ece"] == metrics["calibration"]["ece_uncalibrated"]
    assert os.path.getsize(tmp_path / "predicted" / "gradcam" / only_stamp(tmp_path / "predicted") / "gradcam.png") > 5_000


@pytest.mark.slow
def test_evaluating_a_run_another_process_holds_writes_nothing_into_it(saved_model, tmp_path, capsys):
    """A run still training (its lock held, its status "training"):
    evaluate.py scores it but saves no reliability bins into it, saying so
    in one line; once the lock is free the same command saves them."""
    import shutil

    import run_lock

    run = tmp_path / "artifacts" / "runs" / saved_model["run"].name
    shutil.copytree(saved_model["run"], run)
    run_config = read_json(run / artifacts.RUN_CONFIG_FILE)
    artifacts.write_json(str(run / artifacts.RUN_CONFIG_FILE), {**run_config, "status": "training"})
    saved = run / artifacts.TEST_RELIABILITY_FILE
    command = ["--model", str(run / artifacts.MODEL_FILE), "--show", "0"]

    holder = run_lock.acquire(str(run), "training", "--resume")  # as main.py holds a run it trains
    try:
        assert evaluate.main([*command, "--results_dir", str(tmp_path / "held")]) == 0
        assert not saved.exists()
    finally:
        run_lock.release(holder)
    printed = capsys.readouterr().out
    (note,) = [line for line in printed.splitlines() if "reliability bins not saved" in line]
    assert f"run {run.name} is in use by process {os.getpid()}" in note and "training since" in note

    assert evaluate.main([*command, "--results_dir", str(tmp_path / "free")]) == 0
    assert read_json(saved)["run"] == run_config["run"] and not (run / run_lock.LOCK_FILE).exists()


def test_a_trust_cell_with_too_few_test_images_says_so_not_blank():
    # 12 test images at 0.95 (enough), 3 at 0.55 (too few), none elsewhere.
    confidence = np.array([0.95] * 12 + [0.55] * 3)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    bins = calibration.saved_bins(calibration.reliability_bins(np.zeros(15, dtype=int), probabilities))

    assert predictions_csv.trust_cells(bins, 0.96) == ["1.0000", "12"]
    assert predictions_csv.trust_cells(bins, 0.56) == [predictions_csv.TOO_FEW, "3"]
    assert predictions_csv.trust_cells(None, 0.56) == ["", ""]  # no saved test evaluation: the terminal says so


def test_trust_looked_up_for_many_rows_at_once_is_trust_at_of_each():
    # trusts_of makes predictions.csv's trust columns for a big folder; it
    # must give what trust_at gives one confidence at a time, on the bins'
    # edges, at 0 and 1 too, and so the rows are the same as row by row.
    confidence = np.array([0.95] * 12 + [0.55] * 3 + [0.8] * 6)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    bins = calibration.saved_bins(calibration.reliability_bins(np.zeros(21, dtype=int), probabilities))
    asked = np.concatenate([[0.0, 1.0, 0.5, 0.55, 0.95], np.linspace(0, 1, len(bins) + 1),
                            np.random.default_rng(0).random(200)])
    assert predictions_csv.trusts_of(bins, asked) == [calibration.trust_at(bins, value) for value in asked]

    rows = predictions_csv.prediction_rows([f"{n}.png" for n in range(len(asked))], np.stack([asked, 1 - asked], axis=1),
                                     ("a", "b"), 2, bins=bins)
    for row, value in zip(rows[1:], asked):
        assert row[-2:] == predictions_csv.trust_cells(bins, max(value, 1 - value))


def test_a_mistyped_images_folder_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    (tmp_path / "new_photos").mkdir()
    (tmp_path / "one.png").write_bytes(b"")
    monkeypatch.setattr(inference, "load_trained_model", lambda *a, **k: pytest.fail("the model was loaded"))
    results = str(tmp_path / "res")

    assert predict.main(["--images", str(tmp_path / "new_photso"), "--results_dir", results]) == 2
    error = one_line_error(capsys)
    assert f"did you mean {tmp_path / 'new_photos'}?" in error and "new_photso" in error
    # Nothing that exists at all: refused too.
    assert predict.main(["--images", str(tmp_path / "gone.png"), "--results_dir", results]) == 2
    assert "no such file or folder" in one_line_error(capsys)
    # A missing file beside others is skipped and listed later, not refused here.
    predict.check_images_exist([str(tmp_path / "one.png"), str(tmp_path / "gone.png")])
