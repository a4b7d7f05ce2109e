"""main.py end to end, in-process and (for --resume) as a killed process."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import artifacts
import evaluate
import image_io
import main as main_script
import predict
import demo
import errors
from conftest import PRETRAINED, ROOT, TINY, TINY_MODEL, TRAINED_RUN_OPTIONS, head_model, make_flat_dataset, read_csv, read_json


def the_run(artifacts):
    """The one run folder under ARTIFACTS_DIR/runs."""
    (folder,) = (artifacts / "runs").iterdir()
    return folder


def only_run(results, category):
    runs = os.listdir(results / category)
    assert len(runs) == 1, runs
    return results / category / runs[0]


@pytest.mark.slow
def test_training_writes_every_artifact_and_the_model_reloads(trained_run):
    import keras

    data, artifacts, results = trained_run["data"], trained_run["artifacts"], trained_run["results"]
    assert read_json(artifacts / "class_index.json") == {"0": "alpha", "1": "beta", "2": "gamma"}
    config = read_json(artifacts / "run_config.json")
    assert config["image_size"] == 32 and config["backbone"] == "mobilenet_v2"
    assert config["alpha"] == 0.35 and config["weights"] == PRETRAINED and config["seed"] == 42
    assert config["class_names"] == ["alpha", "beta", "gamma"] and config["task"] == "single_label"
    assert config["split_sizes"] == {"train": 24, "val": 6, "test": 6}
    assert set(config["versions"]) == {"tensorflow", "keras"}
    with open(artifacts / "split_manifest.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "class", "split"] and len(rows) == 37
    assert all(os.path.isfile(os.path.join(data, path)) and path.split("/")[0] == label for path, label, _ in rows[1:])

    # The saved model reloads and, on the manifest's test images, gives
    # exactly the metrics the run wrote.
    model = keras.models.load_model(artifacts / "best_model.keras")
    test = [(path, label) for path, label, split in rows[1:] if split == "test"]
    images = np.stack([image_io.load_image(os.path.join(data, path), 32).numpy() for path, _ in test])
    labels = np.array([["alpha", "beta", "gamma"].index(label) for _, label in test])
    probabilities = model.predict(images, verbose=0).astype(np.float64)
    metrics = read_json(only_run(results, "metrics") / "metrics.json")
    assert metrics["num_samples"] == 6 and set(metrics["per_class"]) == {"alpha", "beta", "gamma"}
    assert metrics["accuracy"] == np.mean(probabilities.argmax(axis=1) == labels)
    expected_loss = -np.mean(np.log(np.clip(probabilities[np.arange(6), labels], 1e-7, 1)))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-4)
    assert [row["support"] for row in metrics["per_class"].values()] == [2, 2, 2]
    with open(only_run(results, "training_curves") / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert [row["epoch"] for row in history] == ["0", "1"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    # The finished run left no resume point behind, only its "done" marker.
    run = the_run(artifacts)
    assert read_json(run / "resume" / "state.json") == {"phase": "done"}
    assert os.listdir(run / "resume") == ["state.json"]
    # The checkpoint was moved into place: no staging file is left.
    assert not [name for name in os.listdir(run) if name.startswith(".")]
    # The published paths lead to this run's files, and the results share its id.
    assert os.path.realpath(artifacts / "best_model.keras") == str(run / "best_model.keras")
    assert config["run"] == run.name and config["status"] == "finished"
    assert only_run(results, "metrics").name == run.name
    # Nothing was written inside the dataset.
    assert sorted(os.listdir(data)) == ["alpha", "beta", "gamma"]


@pytest.mark.slow
def test_same_seed_gives_same_split_and_metrics(trained_run, workdir):
    """trained_run's options again, augmentation on, in this process (xdist
    may have built trained_run in the other one): the same split, and every
    number of metrics.json the same to the last digit (--deterministic 1,
    the default)."""
    assert main_script.main(["--image_dir", trained_run["data"], *TRAINED_RUN_OPTIONS, "--show", "0"]) == 0
    manifests = [(folder / "split_manifest.csv").read_text() for folder in (trained_run["artifacts"], workdir / "model_artifacts")]
    metrics = [read_json(only_run(results, "metrics") / "metrics.json") for results in (trained_run["results"], workdir / "results")]
    assert manifests[0] == manifests[1]
    for run in metrics:
        run.pop("model")  # the path of each run's own model
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--batch_size", "0"], "batch_size must be at least 1"),
        (["--image_size", "16"], "image_size must be at least 32"),
        (["--val_split", "0.5", "--test_split", "0.5"], "val_split + test_split must be below 1"),
        (["--weights", "/no/such/file.h5"], "no such file"),
        # The run folder decides where the model goes; --model is for evaluate/predict.
        (["--model", "elsewhere/model.h5"], "unrecognized arguments: --model"),
        (["--epochs", "ten"], "epochs must be an integer"),
        (["--learning"], "unrecognized arguments: --learning"),  # no abbreviations
    ],
)
def test_bad_options_exit_2_with_one_line(workdir, tmp_path, capsys, extra, message):
    data = make_flat_dataset(tmp_path / "data", per_class=4)
    assert main_script.main(["--image_dir", data, *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda root: str(root / "missing"), "image_dir does not exist"),
        (lambda root: (root / "a_file").write_text("x") and str(root / "a_file"), "image_dir is a file, not a folder"),
        (lambda root: (root / "empty").mkdir() or str(root / "empty"), "at least 2"),
        (lambda root: make_flat_dataset(root / "one", classes=("solo",), per_class=5), "at least 2"),
    ],
)
def test_bad_dataset_exits_2_with_one_line(workdir, tmp_path, capsys, build, message):
    assert main_script.main(["--image_dir", build(tmp_path), *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


def test_outputs_inside_the_dataset_are_refused(workdir, tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data", per_class=4)
    assert main_script.main(["--image_dir", data, "--results_dir", os.path.join(data, "out"), *TINY]) == 2
    assert "outside image_dir" in capsys.readouterr().err


def test_imagenet_weights_unavailable_stops_before_training(workdir, tmp_path, capsys, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    data = make_flat_dataset(tmp_path / "data", per_class=6)

    assert main_script.main(["--image_dir", data, "--weights", "imagenet", *TINY_MODEL, "--augment", "0"]) == 2

    error = capsys.readouterr().err
    assert "could not load --weights imagenet" in error and "--weights none" in error
    assert not (workdir / "model_artifacts" / "best_model.keras").exists()


def run_state(artifacts):
    """The resume state of the one run under ARTIFACTS_DIR/runs that has
    one (None before it is written)."""
    return next((artifacts / "runs").glob("*/resume/state.json"), None) if (artifacts / "runs").is_dir() else None


def kill_during(args, workdir, reached):
    """Starts main.py as a real process and SIGKILLs it once the resume
    state satisfies `reached` (a little into the next epoch). Returns the
    state it was killed after."""
    environment = {**os.environ, "PYTHONPATH": ROOT}
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=workdir, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    state_path = None
    while time.time() < deadline and process.poll() is None:
        state_path = run_state(workdir / "model_artifacts")
        if state_path and reached(read_json(state_path)):
            time.sleep(0.3)  # into the next epoch
            break
        time.sleep(0.1)
    assert process.poll() is None, "training ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return read_json(state_path)


def resumed_history(workdir, args):
    assert main_script.main(args + ["--resume"]) == 0
    with open(only_run(workdir / "results", "training_curves") / "history.csv", newline="") as handle:
        history = list(csv.DictReader(handle))
    assert read_json(run_state(workdir / "model_artifacts")) == {"phase": "done"}
    assert main_script.main(args + ["--resume"]) == 2  # nothing left to resume
    return history


def predictions(artifacts_dir, images, results):
    """predict.py's rows for `images` with the model published in ARTIFACTS_DIR."""
    assert predict.main(["--images", images, "--artifacts_dir", str(artifacts_dir), "--results_dir", str(results),
                         "--show", "0"]) == 0
    (stamp,) = os.listdir(results / "predictions")
    return read_csv(results / "predictions" / stamp / "predictions.csv")


@pytest.mark.slow
@pytest.mark.heavy
def test_a_run_killed_mid_training_changes_nothing_published_and_resumes(saved_model, workdir, tmp_path):
    """An earlier run (on cat/dog) is published; a run on other images is
    SIGKILLed mid-training: evaluate.py and predict.py give exactly the
    answers they gave before, and --resume finishes the killed run."""
    import keras

    artifacts_dir = workdir / "model_artifacts"
    earlier = shutil.copytree(saved_model["run"], artifacts_dir / "runs" / saved_model["run"].name)
    artifacts.publish(str(artifacts_dir), str(earlier))
    before = predictions(artifacts_dir, saved_model["data"], tmp_path / "before")
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=16)
    store = str(tmp_path / "mlruns")
    args = ["--image_dir", data, "--epochs", "4", "--patience", "20", *TINY, "--augment", "0", "--calibrate", "0",
            "--mlflow", store]

    state = kill_during(args, workdir, lambda state: state.get("epoch", -1) >= 1)

    assert 1 <= state["epoch"] < 3
    # Killed: its own best model is loadable, its folder is kept, and the
    # earlier run is still the published one, answering as before.
    killed = run_state(artifacts_dir).parent.parent
    keras.models.load_model(killed / "best_model.keras")
    assert sorted(artifacts.run_ids(str(artifacts_dir))) == sorted([earlier.name, killed.name])
    assert artifacts.published_run(str(artifacts_dir)) == earlier.name
    assert predictions(artifacts_dir, saved_model["data"], tmp_path / "after") == before
    assert evaluate.main(["--image_dir", saved_model["data"], "--artifacts_dir", str(artifacts_dir),
                          "--results_dir", str(tmp_path / "evaluated"), "--show", "0"]) == 0

    history = resumed_history(workdir, args)
    assert [int(row["epoch"]) for row in history] == list(range(4))
    assert artifacts.published_run(str(artifacts_dir)) == killed.name
    # The resumed run continued its own MLflow run, which holds every epoch.
    import tracking

    client, _ = tracking.client(store)
    (tracked,) = client.search_runs([client.get_experiment_by_name("data").experiment_id])
    assert tracked.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(tracked.info.run_id, "val_loss")) == list(range(4))


@pytest.mark.slow
@pytest.mark.heavy
def test_a_weights_file_trains_head_then_fine_tunes_and_resumes_there_at_its_lower_rate(workdir, tmp_path):
    """A local weights file: the head first, then fine-tuning at a tenth of
    the rate; killed while fine-tuning, --resume goes on at that rate."""
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=16)
    args = ["--image_dir", data, "--epochs", "1", "--fine_tune_epochs", "3", "--patience", "20",
            *TINY_MODEL, "--augment", "0", "--calibrate", "0", "--weights", PRETRAINED]

    state = kill_during(args, workdir, lambda state: state.get("phase") == "finetune" and state["epoch"] >= 1)

    assert state["phase"] == "finetune" and state["finetune_start"] == 1 and state["epoch"] < 3
    history = resumed_history(workdir, args)
    assert [int(row["epoch"]) for row in history] == list(range(4))
    rates = [float(row["learning_rate"]) for row in history]
    assert rates[1] == pytest.approx(rates[0] / 10, rel=1e-3)  # fine-tuning at a 10x lower rate
    assert all(rate <= rates[0] / 10 * 1.001 for rate in rates[1:])  # also after the resume


def test_the_stages_after_training_load_the_best_model_once_and_predict_each_split_once(tmp_path, monkeypatch):
    import types

    import keras
    import tensorflow as tf

    import calibration
    import inference

    head_model(num_classes=2).save(tmp_path / "best_model.keras")
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1] * 3))).batch(4)
    loads, predictions = [], []
    real_load, real_predict = keras.models.load_model, inference.predict_batches
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(inference, "predict_batches", lambda *a, **k: predictions.append(a) or real_predict(*a, **k))
    run = types.SimpleNamespace(best=None, model_path=str(tmp_path / "best_model.keras"))

    best = main_script.best_model(run)  # calibration
    val_logits, labels = best.logits("val", dataset)
    best.calibrated(2.0)
    probabilities, _ = main_script.best_model(run).probabilities("val", dataset)  # thresholds
    test_probabilities, _ = main_script.best_model(run).probabilities("test", dataset)  # evaluation

    assert len(loads) == 1 and len(predictions) == 2  # val once, test once
    assert main_script.best_model(run) is best and calibration.model_temperature(best.model) == 2.0
    np.testing.assert_array_equal(labels, [0, 1] * 3)
    np.testing.assert_array_equal(probabilities, np.asarray(best.model.predict_on_batch(images), np.float64))
    np.testing.assert_allclose(probabilities, calibration.softmax(val_logits, 2.0), atol=1e-6)
    np.testing.assert_array_equal(test_probabilities, probabilities)


def test_demo_dataset_is_written_once_as_png_class_folders(tmp_path, capsys):
    folder = str(tmp_path / "data" / "demo_digits")

    assert demo.write_demo_dataset(folder) == folder

    classes = sorted(name for name in os.listdir(folder) if not name.startswith("."))
    assert classes == [str(digit) for digit in range(10)]
    assert sum(len(os.listdir(os.path.join(folder, name))) for name in classes) == 1797
    assert not [name for name in os.listdir(tmp_path / "data") if name.startswith(".demo-")]
    stamp = os.path.getmtime(os.path.join(folder, "0", "0000.png"))
    demo.write_demo_dataset(folder)  # complete: left as it is
    assert os.path.getmtime(os.path.join(folder, "0", "0000.png")) == stamp

    unfinished = tmp_path / "other" / "demo_digits"
    unfinished.mkdir(parents=True)
    (unfinished / "mine.txt").write_text("not ours")
    with pytest.raises(errors.UserError, match="not a complete demo dataset"):
        demo.write_demo_dataset(str(unfinished))
    assert (unfinished / "mine.txt").read_text() == "not ours"
