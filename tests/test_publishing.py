"""--publish: a run that scores worse than the published model on the same
test images is kept but not published (auto), always publishes, never
does not, and main.py --publish RUN switches the published model to any
finished run without training.

The runs here are written by hand, as main.py leaves a finished run: a
"good" model that tells the classes apart by their mean colour (right on
every image) and a "bad" one that always answers the same class, so
which is worse is known without training."""

import os
import re

import numpy as np
import pytest

import artifacts
import config
import main as main_script
import publishing
import splits
from conftest import CLASS_COLOURS, QUICK, make_flat_dataset, one_line_error

CLASSES = ("cat", "dog", "fox")


def colour_model(good):
    """A 32 px model on uint8 images: with `good`, the nearest mean class
    colour (each class image is its colour, half of it at half
    brightness: 0.75 of it on average); else always the second class."""
    import keras

    inputs = keras.Input(shape=(32, 32, 3), dtype="uint8", name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0)(inputs))
    dense = keras.layers.Dense(len(CLASSES), activation="softmax")
    model = keras.Model(inputs, dense(pooled))
    means = 0.75 * np.array(CLASS_COLOURS[:len(CLASSES)], dtype=np.float32)
    if good:
        dense.set_weights([means.T / 1000, -(means ** 2).sum(axis=1) / 2000])
    else:
        dense.set_weights([np.zeros((3, len(CLASSES)), np.float32), np.array([0.0, 1.0, 0.0], np.float32)])
    return model


def finished_run(artifacts_dir, data, good, seed=42, status="finished"):
    """A run folder as main.py leaves a finished run of `data` (split with
    `seed`). Returns its run id."""
    index = splits.index_dataset(data, 0.15, 0.3, seed=seed)
    run_id, folder = artifacts.new_run(str(artifacts_dir), str(artifacts_dir.parent / "results"))
    path = artifacts.save_model(colour_model(good), os.path.join(folder, artifacts.MODEL_FILE))
    run_config = {
        "image_size": 32, "backbone": "mobilenet_v2", "alpha": 1.0, "weights": "none", "seed": seed,
        "image_dir": index.root, "class_names": list(index.class_names), "run": run_id, "status": status,
        "options": {**config.saved_options(config.DEFAULTS), "image_dir": index.root, "image_size": 32},
        "model_sha256": artifacts.file_sha256(path),
    }
    artifacts.write_companions(folder, index.class_names, splits.manifest_rows(index), run_config)
    return run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A good and a bad finished run of one folder, nothing published."""
    root = tmp_path_factory.mktemp("publishing")
    data = make_flat_dataset(root / "data", classes=CLASSES, per_class=10)
    artifacts_dir = root / "model_artifacts"
    return {"data": data, "artifacts": artifacts_dir, "good": finished_run(artifacts_dir, data, good=True),
            "bad": finished_run(artifacts_dir, data, good=False)}


def decide(policy, runs, run_id):
    folder = os.path.join(artifacts.runs_folder(str(runs["artifacts"])), run_id)
    return publishing.decide(policy, str(runs["artifacts"]), folder, runs["data"], batch_size=8)


def published(runs):
    return artifacts.published_run(str(runs["artifacts"]))


def test_auto_keeps_a_worse_run_unpublished_and_says_how_to_publish_it(runs):
    assert decide("auto", runs, runs["good"]).published  # nothing published before: published
    decision = decide("auto", runs, runs["bad"])

    assert not decision.published and published(runs) == runs["good"]
    first, second = decision.lines
    # Both scores side by side, on the same test images (9 of 30: test_split 0.3), and the command.
    assert first.startswith("not published (--publish auto): accuracy 0.333 for this run, 1.000 for the "
                            f"published run {runs['good']}, on the same 9 test images")
    assert second.endswith(f"python main.py --publish {runs['bad']} --artifacts_dir {runs['artifacts']}")


def test_auto_publishes_a_run_that_is_not_worse(runs):
    artifacts.publish(str(runs["artifacts"]), os.path.join(artifacts.runs_folder(str(runs["artifacts"])),
                                                           runs["bad"]))
    decision = decide("auto", runs, runs["good"])

    assert decision.published and published(runs) == runs["good"]
    assert "accuracy 1.000 for this run, 0.333 for the published run" in decision.lines[0]


def test_always_publishes_a_worse_run_and_never_keeps_even_a_better_one(runs):
    decide("always", runs, runs["good"])
    assert decide("always", runs, runs["bad"]).published and published(runs) == runs["bad"]

    decision = decide("never", runs, runs["good"])

    assert not decision.published and published(runs) == runs["bad"]
    assert decision.lines[0] == f"not published (--publish never): the published model is still run {runs['bad']}"


def test_a_run_of_another_folder_is_published_without_comparing(runs, tmp_path):
    artifacts_dir = runs["artifacts"]
    decide("always", runs, runs["good"])
    other = finished_run(artifacts_dir, make_flat_dataset(tmp_path / "other", classes=CLASSES, per_class=10),
                         good=False)
    try:
        decision = decide("auto", runs, other)
        assert decision.published and published(runs) == other
        assert decision.lines[0].startswith(f"the published run {runs['good']} is not compared: it was trained "
                                            "on another folder")
    finally:
        decide("always", runs, runs["good"])


def test_publish_run_switches_the_published_model_without_training(runs, capsys):
    outputs = ["--artifacts_dir", str(runs["artifacts"])]
    decide("always", runs, runs["good"])

    assert main_script.main(["--publish", runs["bad"], *outputs]) == 0
    assert published(runs) == runs["bad"]
    assert main_script.main(["--publish", runs["good"], *outputs]) == 0

    assert published(runs) == runs["good"]
    out = capsys.readouterr().out
    assert f"-> run {runs['good']}" in out and f"before: run {runs['bad']}" in out and "nothing was trained" in out
    assert "Epoch" not in out


def test_publish_run_refuses_an_unknown_or_unfinished_run_in_one_line(runs, capsys):
    outputs = ["--artifacts_dir", str(runs["artifacts"])]
    decide("always", runs, runs["good"])
    unfinished = finished_run(runs["artifacts"], runs["data"], good=True, status="training")

    assert main_script.main(["--publish", "20990101-000000", *outputs]) == 2
    assert "no run 20990101-000000 in" in one_line_error(capsys)
    assert main_script.main(["--publish", "alwyas", *outputs]) == 2
    assert "--publish takes auto, always, never or a finished run's id" in one_line_error(capsys)
    assert main_script.main(["--publish", unfinished, *outputs]) == 2
    assert f"run {unfinished} did not finish training (status training)" in one_line_error(capsys)
    assert main_script.main(["--publish", runs["bad"], "--epochs", "3", *outputs]) == 2
    assert "trains nothing: leave out --epochs" in one_line_error(capsys)
    assert published(runs) == runs["good"]


@pytest.mark.slow
def test_a_quick_try_does_not_replace_the_good_model(runs, tmp_path, capsys):
    """main.py end to end: a one-epoch run (its head trained once over the
    stand-in backbone) on the folder whose good model is published, which
    does not beat the good model's 1.000, is kept, not published, and its
    summary says so with both scores and the command."""
    decide("always", runs, runs["good"])
    outputs = ["--artifacts_dir", str(runs["artifacts"]), "--results_dir", str(tmp_path / "results")]

    assert main_script.main(["--image_dir", runs["data"], "--test_split", "0.3", *QUICK, *outputs]) == 0

    out = capsys.readouterr().out
    summary = out[out.index("==> Summary"):]
    (stamp,) = re.findall(r"^Run (\S+): ", out, re.M)
    assert published(runs) == runs["good"]
    assert "(kept, not published)" in summary
    assert f"1.000 for the published run {runs['good']}, on the same 9 test images" in summary
    assert f"python main.py --publish {stamp} --artifacts_dir" in summary
