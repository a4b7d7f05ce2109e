"""The kind of task: decided once where the labels are read, saved with the
run, read back with the model, and asked by the places that differ (the
head's activation, the rule that turns probabilities into labels)."""

import dataclasses
import os
import shutil

import numpy as np
import pytest

import artifacts
import calibration
import evaluate
import inference
import metrics
import model_builder
import splits
import tasks
from conftest import make_flat_dataset, one_line_error
from errors import UserError


def test_a_folder_of_class_folders_is_single_label_and_the_head_asks_the_task(tmp_path):
    index = splits.index_dataset(make_flat_dataset(tmp_path / "data", per_class=6), 0.2, 0.2, seed=1)
    assert index.task is tasks.SINGLE_LABEL

    model = model_builder.build_classifier(2, image_size=32, alpha=0.35, weights="none", task=index.task)
    assert model_builder.output_activation(model) == tasks.SINGLE_LABEL.activation == "softmax"
    # Calibration rebuilds the head with the model's own activation.
    calibrated = calibration.with_temperature(model, 2.0)
    assert model_builder.output_activation(calibrated) == "softmax"


def test_the_evaluation_decides_by_the_task_s_rule():
    probabilities = np.array([[0.1, 0.9], [0.8, 0.2], [0.4, 0.6]], np.float32)
    evaluation = metrics.Evaluation(("a", "b", "c"), np.array([1, 0, 0]), probabilities, ("x", "y"), 32, "test")
    np.testing.assert_array_equal(evaluation.predicted, [1, 0, 1])

    class Cautious(tasks.Task):  # another rule: the first class unless the second is sure
        def predicted(self, probabilities, thresholds=None):
            return (np.asarray(probabilities)[:, 1] > 0.75).astype(int)

    other = dataclasses.replace(evaluation, task=Cautious("cautious", "for the test", "softmax"))
    np.testing.assert_array_equal(other.predicted, [1, 0, 0])


def test_a_saved_task_is_read_back_and_an_unknown_one_refused():
    assert tasks.saved_task({}) is tasks.SINGLE_LABEL  # saved before tasks were recorded
    assert tasks.saved_task({"task": "single_label"}) is tasks.SINGLE_LABEL
    assert tasks.saved_task({"task": "multi_label"}) is tasks.MULTI_LABEL
    with pytest.raises(UserError, match=r"^RUN/run_config.json says the model was trained for the task 'segmentation'"):
        tasks.saved_task({"task": "segmentation"}, "RUN/run_config.json")


@pytest.mark.slow
def test_a_model_of_a_task_this_version_does_not_know_is_one_line(saved_model, tmp_path, capsys):
    artifacts_dir = shutil.copytree(saved_model["artifacts"], tmp_path / "artifacts", symlinks=True)
    run = os.path.join(artifacts_dir, "runs", os.listdir(os.path.join(artifacts_dir, "runs"))[0])
    assert inference.load_trained_model(os.path.join(run, artifacts.MODEL_FILE)).task is tasks.SINGLE_LABEL
    saved = artifacts.read_run_config(run)
    artifacts.write_json(os.path.join(run, artifacts.RUN_CONFIG_FILE), {**saved, "task": "segmentation"})

    code = evaluate.main(["--image_dir", saved_model["data"], "--artifacts_dir", str(artifacts_dir),
                          "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 2
    assert "trained for the task 'segmentation', which this version does not know" in one_line_error(capsys)
