"""export.py: ONNX, LiteRT and SavedModel exports of a tiny trained model,
their parity check, evaluate.py and predict.py running each export, and the
files and options that must stop with one line."""

import os
import re
import shutil

import numpy as np
import pytest

import artifacts
import evaluate
import export
import figures
import main as main_script
import predict
import errors
from conftest import ROOT, TRAINED_CLASSES, make_flat_dataset, read_csv, read_json

CLASSES = TRAINED_CLASSES
EXPORTED = {"onnx": "best_model.onnx", "litert": "best_model.tflite", "saved_model": "saved_model"}


def only_file(folder, category, name):
    """RESULTS/<category>/<the one stamp>/<name>."""
    (stamp,) = os.listdir(os.path.join(folder, category))
    return os.path.join(folder, category, stamp, name)


@pytest.fixture(scope="module")
def trained(trained_run):
    """The session's trained run (conftest.trained_run: main.py --export of
    every format), with its export report; "artifacts" here is its run
    folder, where the exports are."""
    return {**trained_run, "artifacts": trained_run["run"], "report": read_json(trained_run["run"] / export.EXPORT_REPORT_FILE)}


def options(trained, results, *extra):
    return ["--artifacts_dir", str(trained["artifacts"]), "--results_dir", str(results),
            "--rows", "2", "--cols", "3", "--show", "0", *extra]


# ---------------------------------------------------------------- main.py --export


@pytest.mark.slow
def test_main_exports_every_format_into_the_models_folder_and_each_passes_parity(trained):
    folder = trained["artifacts"]
    report = trained["report"]

    for name in EXPORTED.values():
        assert os.path.exists(folder / name)
    assert (folder / "saved_model" / "saved_model.pb").is_file()
    rows = {row["format"]: row for row in report["formats"]}
    assert list(rows) == ["keras", "onnx", "litert", "saved_model"]
    assert report["passed"] and report["evaluated"] == "test split" and report["images"] == 6
    for name, file in EXPORTED.items():
        row = rows[name]
        assert row["parity"] == "passed" and row["file"].rstrip("/") == file
        assert row["top1_agreement"] >= export.MIN_AGREEMENT
        assert row["max_abs_probability_difference"] <= export.MAX_DIFFERENCE
        assert row["accuracy"] == rows["keras"]["accuracy"] and row["accuracy_change"] == 0
        assert row["size_bytes"] > 100_000 and row["ms_per_image"] > 0
    assert rows["keras"]["parity"] == "reference"
    # The table is printed in the export stage, right after the test evaluation.
    stage = trained["printed"].split("==> Exporting the model")[1].split("==>")[0]
    assert "format" in stage and "ms/image" in stage and stage.count("passed") == 3
    assert trained["printed"].index("==> Evaluating the best model") < trained["printed"].index(
        "==> Exporting the model"
    )


@pytest.mark.slow
def test_every_export_takes_raw_uint8_images_like_the_keras_model(trained):
    folder = trained["artifacts"]
    import keras

    model = keras.models.load_model(folder / "best_model.keras")
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    expected = model.predict_on_batch(images)

    for name, file in EXPORTED.items():
        runner = export.load_runner(str(folder / file))
        assert runner.input_shape == (None, 32, 32, 3) and runner.output_shape == (None, 3)
        np.testing.assert_allclose(runner.predict_on_batch(images), expected, atol=export.MAX_DIFFERENCE)
    session = export.load_runner(str(folder / "best_model.onnx")).session
    assert session.get_inputs()[0].type == "tensor(uint8)"


# ---------------------------------------------------------------- running exports


@pytest.fixture(scope="module")
def keras_evaluated(trained, tmp_path_factory):
    """evaluate.py's metrics of the Keras model on the test split: the same
    for every export, so computed once for the module, not once per format."""
    results = tmp_path_factory.mktemp("keras_evaluated")
    assert evaluate.main(["--image_dir", trained["data"], *options(trained, results)]) == 0
    return read_json(only_file(results, "metrics", "metrics.json"))


@pytest.fixture(scope="module")
def keras_predicted(trained, tmp_path_factory):
    """predict.py's rows of the Keras model on the beta images: the same
    for every export, so computed once for the module, not once per format."""
    results = tmp_path_factory.mktemp("keras_predicted")
    assert predict.main(["--images", os.path.join(trained["data"], "beta"), *options(trained, results)]) == 0
    return read_csv(only_file(results, "predictions", "predictions.csv"))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPORTED))
def test_evaluate_runs_an_export_with_the_keras_models_metrics(trained, keras_evaluated, name, tmp_path):
    export_results = tmp_path / "export"
    model = str(trained["artifacts"] / EXPORTED[name])

    assert evaluate.main(["--image_dir", trained["data"], "--model", model, *options(trained, export_results)]) == 0

    ours = read_json(only_file(export_results, "metrics", "metrics.json"))
    keras_metrics = keras_evaluated
    assert ours["model"] == model and ours["evaluated"] == "test split"
    assert ours["accuracy"] == keras_metrics["accuracy"]
    assert ours["confusion_matrix"] == keras_metrics["confusion_matrix"]
    assert ours["loss"] == pytest.approx(keras_metrics["loss"], abs=1e-4)
    assert os.path.getsize(only_file(export_results, "prediction_gallery", "prediction_gallery.png")) > 5_000


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPORTED))
def test_predict_with_an_export_gives_the_keras_models_classes(trained, keras_predicted, name, tmp_path):
    images = os.path.join(trained["data"], "beta")
    export_results = tmp_path / "export"
    model = str(trained["artifacts"] / EXPORTED[name])

    assert predict.main(["--images", images, "--model", model, *options(trained, export_results)]) == 0

    keras_rows = keras_predicted
    export_rows = read_csv(only_file(export_results, "predictions", "predictions.csv"))
    assert len(export_rows) == len(keras_rows) == 1 + 12
    for ours, theirs in zip(export_rows[1:], keras_rows[1:]):
        assert ours[:2] == theirs[:2]  # path, predicted class
        assert float(ours[2]) == pytest.approx(float(theirs[2]), abs=1e-4)


# ---------------------------------------------------------------- quantization, mixed precision


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_litert_reports_the_accuracy_change_instead_of_judging(trained, quantize, tmp_path, capsys):
    copy = tmp_path / "model"
    shutil.copytree(trained["artifacts"], copy, ignore=shutil.ignore_patterns("resume", "audit_cache"))

    code = evaluate.main([
        "--image_dir", trained["data"], "--model", str(copy / "best_model.keras"), "--artifacts_dir", str(copy),
        "--results_dir", str(tmp_path / "results"), "--show", "0", "--export", "litert", "--quantize", quantize,
    ])

    assert code == 0
    report = read_json(copy / export.EXPORT_REPORT_FILE)
    row = report["formats"][-1]
    assert row["format"] == "litert" and row["quantization"] == quantize
    assert row["file"] == f"best_model_{quantize}.tflite" and (copy / row["file"]).is_file()
    assert row["parity"] == "not judged" and report["passed"]
    keras_row = report["formats"][0]
    assert row["accuracy_change"] == pytest.approx(row["accuracy"] - keras_row["accuracy"])
    assert 0 <= row["top1_agreement"] <= 1 and row["max_abs_probability_difference"] >= 0
    # 70% of 36 images train; int8 calibrates on them (fewer than CALIBRATION_IMAGES here).
    assert report["calibration_images"] == (24 if quantize == "int8" else 0)
    assert row["size_bytes"] < keras_row["size_bytes"]
    assert f"litert ({quantize})" in capsys.readouterr().out
    # The earlier exports stay recorded beside the new one, all of this model.
    recorded = report["exports"]
    assert set(recorded) == {*EXPORTED.values(), row["file"]}
    assert {entry["model_sha256"] for entry in recorded.values()} == {artifacts.file_sha256(copy / "best_model.keras")}


@pytest.mark.slow
def test_float32_model_keeps_the_weights_and_computes_in_float32():
    import keras

    from model_builder import build_classifier

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_classifier(3, image_size=32, alpha=0.35, weights="none")
    finally:
        keras.mixed_precision.set_global_policy("float32")

    rebuilt = export.float32_model(mixed)

    assert export.is_mixed(mixed) and not export.is_mixed(rebuilt)
    assert rebuilt.input.dtype == "uint8"
    for ours, theirs in zip(rebuilt.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    assert export.float32_model(rebuilt) is rebuilt


# ---------------------------------------------------------------- parity failure


@pytest.mark.slow
def test_an_export_failing_parity_exits_1_and_is_renamed(trained, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "model"
    shutil.copytree(trained["artifacts"], copy, ignore=shutil.ignore_patterns("resume", "audit_cache"))
    assert (copy / "best_model.onnx").is_file()  # a good earlier export, about to be replaced
    load_runner = export.load_runner

    class Shuffled:
        """The real runner with its probabilities moved one class along."""

        def __init__(self, runner):
            self.runner, self.input_shape, self.output_shape = runner, runner.input_shape, runner.output_shape

        def predict_on_batch(self, images):
            return np.roll(self.runner.predict_on_batch(images), 1, axis=1)

    monkeypatch.setattr(export, "load_runner", lambda path: Shuffled(load_runner(path)))

    code = evaluate.main([
        "--image_dir", trained["data"], "--model", str(copy / "best_model.keras"), "--artifacts_dir", str(copy),
        "--results_dir", str(tmp_path / "results"), "--show", "0", "--export", "onnx",
    ])

    assert code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "export check failed" in error and "best_model.onnx.failed" in error
    assert not (copy / "best_model.onnx").exists() and (copy / "best_model.onnx.failed").is_file()
    report = read_json(copy / export.EXPORT_REPORT_FILE)
    row = report["formats"][1]
    assert row["parity"] == "failed" and row["file"] == "best_model.onnx.failed" and not report["passed"]
    assert row["max_abs_probability_difference"] > export.MAX_DIFFERENCE
    # The file that failed no longer loads as an ONNX model by its name.
    assert export.model_format(str(copy / row["file"])) == "keras"
    assert set(report["exports"]) == {"best_model.tflite", "saved_model"}  # no record of it either


# ---------------------------------------------------------------- exports tied to their model


@pytest.mark.slow
def test_every_export_is_recorded_with_the_sha256_of_its_model_and_its_own(trained):
    folder, report = trained["artifacts"], trained["report"]
    model_sha256 = read_json(folder / "run_config.json")["model_sha256"]

    assert report["model_sha256"] == model_sha256 == artifacts.file_sha256(folder / "best_model.keras")
    assert set(report["exports"]) == set(EXPORTED.values())
    for name, entry in report["exports"].items():
        assert entry["model"] == "best_model.keras" and entry["model_sha256"] == model_sha256
        assert entry["sha256"] == export.export_sha256(str(folder / name)) and entry["parity"] == "passed"


def run_copy(trained, destination):
    shutil.copytree(trained["artifacts"], destination, ignore=shutil.ignore_patterns("resume"))
    return destination


def replace_the_model(folder):
    """As --resume does: another best_model.keras, its hash in run_config.json."""
    with open(folder / "best_model.keras", "ab") as handle:
        handle.write(b"\0")
    saved = read_json(folder / "run_config.json")
    artifacts.write_json(str(folder / "run_config.json"),
                         {**saved, "model_sha256": artifacts.file_sha256(folder / "best_model.keras")})
    return "best_model.onnx", "was exported from another model than"


def foreign_file_beside(folder):
    shutil.copyfile(folder / "best_model.onnx", folder / "other.onnx")
    return "other.onnx", "is not recorded as an export of"


def export_replaced(folder):
    (folder / "saved_model" / "fingerprint.pb").write_bytes(b"changed")
    return "saved_model", "is not the file exported from"


@pytest.mark.slow
@pytest.mark.parametrize("change", [replace_the_model, foreign_file_beside, export_replaced])
def test_an_export_not_tied_to_the_model_beside_it_is_refused_naming_both(trained, tmp_path, capsys, change):
    folder = run_copy(trained, tmp_path / "run")
    name, message = change(folder)

    code = predict.main(["--model", str(folder / name), "--images", os.path.join(trained["data"], "beta"),
                         "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert f"the model {folder / name} " in error and str(folder / "best_model.keras") in error
    assert not (tmp_path / "results" / "predictions").exists()


@pytest.mark.slow
def test_an_export_goes_into_the_run_the_model_was_loaded_from(trained, tmp_path, monkeypatch):
    """evaluate.py --export while another run is published: the export goes
    into the run evaluate.py loaded, not the one published meanwhile."""
    artifacts_dir = tmp_path / "artifacts"
    loaded, other = artifacts_dir / "runs" / "20000101-000001", artifacts_dir / "runs" / "20000101-000002"
    onnx = shutil.copyfile(trained["artifacts"] / "best_model.onnx", tmp_path / "converted.onnx")
    for folder in (loaded, other):
        run_copy(trained, folder)
        for name in (*EXPORTED.values(), export.EXPORT_REPORT_FILE):
            shutil.rmtree(folder / name) if (folder / name).is_dir() else os.remove(folder / name)
    artifacts.publish(str(artifacts_dir), str(loaded))
    render = figures.render_evaluation

    def another_run_published_meanwhile(*args, **kwargs):
        artifacts.publish(str(artifacts_dir), str(other))
        return render(*args, **kwargs)

    monkeypatch.setattr(figures, "render_evaluation", another_run_published_meanwhile)
    # The conversion is the only part left out: the ONNX file the converter made before.
    monkeypatch.setattr(export, "export_model", lambda model, fmt, path, *rest: shutil.copyfile(onnx, path))

    code = evaluate.main(["--image_dir", trained["data"], "--artifacts_dir", str(artifacts_dir),
                          "--results_dir", str(tmp_path / "results"), "--show", "0", "--export", "onnx"])

    assert code == 0
    assert os.readlink(artifacts_dir / "latest") == "runs/20000101-000002"
    assert (loaded / "best_model.onnx").is_file() and not (other / "best_model.onnx").exists()
    assert not (other / export.EXPORT_REPORT_FILE).exists()
    report = read_json(loaded / export.EXPORT_REPORT_FILE)
    assert report["model"] == str(loaded / "best_model.keras") and report["passed"]
    assert report["exports"]["best_model.onnx"]["model_sha256"] == artifacts.file_sha256(loaded / "best_model.keras")


@pytest.mark.slow
def test_a_missing_export_says_where_the_exports_are(trained, tmp_path, capsys):
    artifacts_dir = shutil.copytree(trained["root"] / "artifacts", tmp_path / "artifacts", symlinks=True)

    code = predict.main(["--model", str(artifacts_dir / "best_model.onnx"), "--images", trained["data"],
                         "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"no model at {artifacts_dir / 'best_model.onnx'}" in error
    assert f"the published run's is {artifacts_dir / 'latest' / 'best_model.onnx'}" in error


def test_the_docs_point_at_exports_where_they_are_written():
    """Exports are written into their run's folder: an example --model path
    to one names runs/RUN/ or latest/, never ARTIFACTS_DIR itself."""
    pages = ["README.md", *(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs")))]
    examples = []
    for page in pages:
        if page.endswith(".md"):
            with open(os.path.join(ROOT, page), encoding="utf-8") as handle:
                examples += re.findall(r"--model (model_artifacts/\S+)", handle.read())
    exports = [path for path in examples if export.model_format(path.rstrip("/`")) != "keras" or "saved_model" in path]
    assert exports, examples
    assert [path for path in exports if not path.startswith(("model_artifacts/latest/", "model_artifacts/runs/"))] == []


# ---------------------------------------------------------------- int8 calibration's folder


def test_int8_calibration_uses_the_folder_that_holds_the_training_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    rows = [artifacts.ManifestRow("a/1.png", "a", "train"), artifacts.ManifestRow("a/2.png", "a", "test")]
    artifacts.write_companions(model, ("a",), rows, {})
    moved = tmp_path / "moved"
    (moved / "a").mkdir(parents=True)
    (moved / "a" / "1.png").write_bytes(b"x")
    (tmp_path / "other" / "a").mkdir(parents=True)

    where, paths = export.manifest_training_paths(str(model), [None, str(moved), str(tmp_path / "gone")])
    assert where == str(moved) and paths == [str(moved / "a" / "1.png")]
    with pytest.raises(errors.UserError, match=r"no folder holds them: .*other \(1 of 1 missing"):
        export.manifest_training_paths(str(model), [str(tmp_path / "other"), str(tmp_path / "gone")], "gone")


@pytest.mark.slow
def test_int8_without_the_training_images_stops_before_evaluating(saved_model, tmp_path, capsys):
    folder = shutil.copytree(saved_model["run"], tmp_path / "run")
    saved = read_json(folder / "run_config.json")
    artifacts.write_json(str(folder / "run_config.json"), {**saved, "image_dir": str(tmp_path / "moved_away")})
    elsewhere = make_flat_dataset(tmp_path / "elsewhere", classes=("cat", "dog"), per_class=2)

    code = evaluate.main(["--model", str(folder / "best_model.keras"), "--image_dir", elsewhere,
                          "--results_dir", str(tmp_path / "results"), "--show", "0",
                          "--export", "litert", "--quantize", "int8"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no folder holds them" in error and "moved_away" in error
    assert not (tmp_path / "results" / "metrics").exists()  # refused before the evaluation


# ---------------------------------------------------------------- foreign and corrupt files


def model_folder(root, image_size=32, classes=CLASSES):
    """A folder with the companions of a model (no model yet)."""
    folder = root / "model"
    folder.mkdir()
    artifacts.write_companions(folder, classes, [], {"image_size": image_size})
    return folder


@pytest.mark.parametrize("name", ["best_model.onnx", "best_model.tflite"])
@pytest.mark.parametrize("script", [evaluate, predict])
def test_a_corrupt_export_is_one_line_and_exit_2(script, name, tmp_path, workdir, capsys):
    folder = model_folder(tmp_path)
    (folder / name).write_bytes(np.random.default_rng(0).bytes(4096))
    data = make_flat_dataset(tmp_path / "data", classes=CLASSES, per_class=2)
    where = ["--images", data] if script is predict else ["--image_dir", data]

    assert script.main(["--model", str(folder / name), *where, "--show", "0"]) == 2

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "could not load" in error and name in error


def test_an_empty_saved_model_folder_is_one_line_and_exit_2(tmp_path, workdir, capsys):
    folder = model_folder(tmp_path)
    (folder / "saved_model").mkdir()
    data = make_flat_dataset(tmp_path / "data", classes=CLASSES, per_class=2)

    assert predict.main(["--model", str(folder / "saved_model"), "--images", data, "--show", "0"]) == 2

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "not a SavedModel folder" in error and "saved_model.pb" in error


def small_model(image_size, classes, dtype="uint8"):
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype=dtype, name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("image_size", "classes", "dtype", "message"),
    [
        (48, 3, "uint8", "takes 48 px images but its run_config.json says 32"),
        (32, 5, "uint8", "names 3 classes but the model"),
        (32, 3, "float32", "its input is float32 [N, 32, 32, 3], expected uint8"),
    ],
)
def test_a_foreign_onnx_model_is_one_line_and_exit_2(image_size, classes, dtype, message, tmp_path, workdir, capsys):
    folder = model_folder(tmp_path)
    model = small_model(image_size, classes, dtype)
    model(np.zeros((1, image_size, image_size, 3), dtype), training=False)
    export.export_model(model, "onnx", str(folder / "best_model.onnx"))

    data = make_flat_dataset(tmp_path / "data", classes=CLASSES, per_class=2)
    code = predict.main(["--model", str(folder / "best_model.onnx"), "--images", data, "--show", "0"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


# ---------------------------------------------------------------- options


def test_gradcam_with_an_export_is_one_line_and_exit_2(tmp_path, capsys):
    code = predict.main(["--model", str(tmp_path / "best_model.onnx"), "--images", str(tmp_path), "--gradcam", "1"])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--gradcam 1 needs the Keras model" in error


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize", "int8"], "quantize applies to the LiteRT export"),
        (["--export", "onnx", "--quantize", "float16"], "quantize applies to the LiteRT export"),
        (["--export", "onnx", "--model", "m.tflite"], "--export exports a Keras model"),
    ],
)
def test_export_option_mistakes_exit_2(extra, message, tmp_path, capsys):
    assert evaluate.main(["--image_dir", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("script", [evaluate, main_script])
def test_an_unknown_export_format_exits_2(script, capsys):
    assert script.main(["--export", "onnx,coreml"]) == 2

    error = capsys.readouterr().err
    assert "Received: export=onnx,coreml" in error and error.count("\n") == 1


def test_export_list_keeps_order_and_drops_repeats():
    args = evaluate.build_parser().parse_args(["--export", "saved_model, onnx,onnx"])

    assert args.export == ("saved_model", "onnx")


# ---------------------------------------------------------------- pieces


def test_export_paths_sit_beside_the_model_and_formats_come_from_the_path(tmp_path):
    model = str(tmp_path / "run" / "best_model.keras")

    assert export.export_path(model, "onnx") == str(tmp_path / "run" / "best_model.onnx")
    assert export.export_path(model, "litert") == str(tmp_path / "run" / "best_model.tflite")
    assert export.export_path(model, "litert", "int8") == str(tmp_path / "run" / "best_model_int8.tflite")
    assert export.export_path(model, "saved_model") == str(tmp_path / "run" / "saved_model")
    (tmp_path / "run" / "saved_model").mkdir(parents=True)
    assert [export.model_format(path) for path in (
        model, str(tmp_path / "a.ONNX"), str(tmp_path / "a.tflite"), str(tmp_path / "run" / "saved_model"),
        str(tmp_path / "a.onnx.failed"),
    )] == ["keras", "onnx", "litert", "saved_model", "keras"]


def test_parity_rule_at_its_thresholds():
    reference = np.array([[0.7, 0.2, 0.1]] * 1000)
    labels = np.zeros(1000, int)

    close = export.agreement(reference + [[-1e-4, 1e-4, 0]], reference, labels)
    assert close.top1_agreement == 1 and export.parity(close, quantized=False) == "passed"
    off = export.agreement(reference + [[-2e-4, 2e-4, 0]], reference, labels)
    assert export.parity(off, quantized=False) == "failed"
    assert export.parity(off, quantized=True) == "not judged"
    flipped = reference.copy()
    flipped[:2] = [0.2, 0.7, 0.1]  # 2 of 1000 top-1 classes differ: 99.8% < 99.9%
    comparison = export.agreement(flipped, reference, labels)
    assert comparison.top1_agreement == 0.998 and comparison.accuracy == 0.998
    assert export.parity(comparison, quantized=False) == "failed"


class FakeRunner:
    def __init__(self, classes=3):
        self.calls, self.classes = [], classes

    def predict_on_batch(self, images):
        self.calls.append(len(images))
        return np.tile(np.eye(self.classes)[0], (len(images), 1))


def test_side_by_side_runs_each_batch_through_every_runner_after_a_warm_up():
    batches = [(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4)), (np.zeros((2, 8, 8, 3), np.uint8), np.arange(2))]
    runners = {"keras": FakeRunner(), "onnx": FakeRunner()}

    probabilities, labels, milliseconds, batch_size = export.run_side_by_side(runners, batches)

    assert [runner.calls for runner in runners.values()] == [[4, 4, 2], [4, 4, 2]]  # warm-up first
    assert probabilities["onnx"].shape == (6, 3) and labels.tolist() == [0, 1, 2, 3, 0, 1]
    assert batch_size == 4 and all(value >= 0 for value in milliseconds.values())


def test_mark_failed_renames_files_and_folders_replacing_an_earlier_failure(tmp_path):
    (tmp_path / "best_model.onnx").write_text("new")
    (tmp_path / "best_model.onnx.failed").write_text("old")
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model.failed").mkdir()

    assert export.mark_failed(str(tmp_path / "best_model.onnx")) == str(tmp_path / "best_model.onnx.failed")
    assert export.mark_failed(str(tmp_path / "saved_model")) == str(tmp_path / "saved_model.failed")

    assert sorted(os.listdir(tmp_path)) == ["best_model.onnx.failed", "saved_model.failed"]
    assert (tmp_path / "best_model.onnx.failed").read_text() == "new"


def test_atomic_write_folder_replaces_the_old_folder_only_when_the_write_succeeds(tmp_path):
    target = tmp_path / "saved_model"

    def write(text):
        return lambda folder: open(os.path.join(folder, "saved_model.pb"), "w").write(text)

    artifacts.atomic_write_folder(str(target), write("first"))
    artifacts.atomic_write_folder(str(target), write("second"))
    assert (target / "saved_model.pb").read_text() == "second"

    def fail(folder):
        write("half")(folder)
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError):
        artifacts.atomic_write_folder(str(target), fail)
    assert (target / "saved_model.pb").read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["saved_model"]  # no staging folder left


def test_a_folder_that_is_not_ours_is_never_replaced(tmp_path):
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "notes.txt").write_text("mine")

    with pytest.raises(errors.UserError, match="is not a SavedModel"):
        export.check_replaceable(str(tmp_path / "saved_model"))
    export.check_replaceable(str(tmp_path / "elsewhere"))  # nothing there: fine


def test_report_table_and_failure_line():
    report = {
        "formats": [
            {"format": "keras", "quantization": None, "file": "best_model.keras", "size_bytes": 5_000_000,
             "accuracy": 0.9, "accuracy_change": 0.0, "top1_agreement": 1.0,
             "max_abs_probability_difference": 0.0, "ms_per_image": 2.5, "parity": "reference"},
            {"format": "onnx", "quantization": None, "file": "best_model.onnx.failed", "size_bytes": 1_500_000,
             "accuracy": 0.5, "accuracy_change": -0.4, "top1_agreement": 0.5,
             "max_abs_probability_difference": 0.6, "ms_per_image": 0.5, "parity": "failed"},
            {"format": "saved_model", "file": "saved_model", "parity": "failed", "error": "ValueError: boom"},
        ]
    }

    lines = export.report_lines(report)

    assert lines[0].split() == ["format", "file", "size", "accuracy", "vs", "keras", "agreement", "max", "|dp|",
                                "ms/image", "parity"]
    assert lines[2].split() == ["onnx", "best_model.onnx.failed", "1.4", "MB", "0.5000", "-0.4000", "50.00%",
                                "6.0e-01", "0.50", "failed"]
    assert lines[3].endswith("failed (conversion)")
    message = export.failure_message(report, "export_report.json")
    assert "\n" not in message and "onnx agrees on 50.00%" in message and "renamed to best_model.onnx.failed" in message
    assert "saved_model could not be converted" in message
