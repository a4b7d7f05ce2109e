"""Runs: each in its own folder, only finished ones published, never mixed.

Two tiny runs on two different folders share one ARTIFACTS_DIR; the tests
then try what went wrong before run folders existed: a model with another
run's companions, a resume with other options, damaged files (a run killed
mid-training beside a published one: test_main.py).
"""

import concurrent.futures
import csv
import json
import os
import shutil
import time

import pytest

import artifacts
import evaluate
import main as main_script
import predict
import run_lock
from conftest import QUICK, TINY, make_flat_dataset, one_line_error, read_json



def predictions(results):
    """predictions.csv of the one predict run under `results`."""
    (stamp,) = os.listdir(results / "predictions")
    with open(results / "predictions" / stamp / "predictions.csv", newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run A on cat/dog, then run B on xray/yak, in one ARTIFACTS_DIR."""
    root = tmp_path_factory.mktemp("runs")
    first = make_flat_dataset(root / "pets", classes=("cat", "dog"), per_class=8)
    second = make_flat_dataset(root / "scans", classes=("xray", "yak"), per_class=8)
    artifacts_dir, results = root / "artifacts", root / "results"
    outputs = ["--artifacts_dir", str(artifacts_dir), "--results_dir", str(results)]
    assert main_script.main(["--image_dir", first, *QUICK, *outputs]) == 0
    assert main_script.main(["--image_dir", second, *QUICK, *outputs]) == 0
    run_a, run_b = artifacts.run_ids(str(artifacts_dir))
    return {
        "root": root, "pets": first, "scans": second, "artifacts": artifacts_dir, "results": results,
        "a": artifacts_dir / "runs" / run_a, "b": artifacts_dir / "runs" / run_b,
    }


def copy_run(folder, destination):
    """A copy of a run folder's model and companions (links resolved)."""
    destination.mkdir(parents=True)
    for name in (artifacts.MODEL_FILE, *artifacts.COMPANION_FILES):
        shutil.copyfile(folder / name, destination / name)
    return destination


@pytest.mark.slow
@pytest.mark.heavy
def test_each_run_has_its_own_folder_and_the_last_finished_one_is_published(two_runs):
    a, b, artifacts_dir = two_runs["a"], two_runs["b"], two_runs["artifacts"]

    assert a.name != b.name
    assert read_json(a / "class_index.json") == {"0": "cat", "1": "dog"}
    assert read_json(b / "class_index.json") == {"0": "xray", "1": "yak"}
    for name in ("best_model.keras", *artifacts.COMPANION_FILES):
        assert os.path.realpath(artifacts_dir / name) == str(b / name)
    for folder in (a, b):
        saved = read_json(folder / "run_config.json")
        assert saved["run"] == folder.name and saved["status"] == "finished"
        assert saved["model_sha256"] == artifacts.file_sha256(folder / "best_model.keras")
    # Each run's results carry its id: nothing of one run is in the other's folders.
    assert sorted(os.listdir(two_runs["results"] / "training_curves")) == sorted([a.name, b.name])


@pytest.mark.slow
def test_model_option_uses_the_companions_beside_it(two_runs, tmp_path):
    results = tmp_path / "results"

    code = predict.main(["--model", str(two_runs["a"] / "best_model.keras"), "--images", two_runs["pets"],
                         "--results_dir", str(results), "--show", "0"])

    assert code == 0
    assert {row[1] for row in predictions(results)[1:]} <= {"cat", "dog"}


@pytest.mark.slow
def test_a_model_with_another_runs_companions_is_refused(two_runs, tmp_path, capsys):
    mixed = copy_run(two_runs["a"], tmp_path / "mixed")
    shutil.copyfile(two_runs["b"] / "best_model.keras", mixed / "best_model.keras")

    code = evaluate.main(["--model", str(mixed / "best_model.keras"), "--image_dir", two_runs["pets"],
                          "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 2
    error = one_line_error(capsys)
    assert str(mixed / "best_model.keras") in error and str(mixed / "run_config.json") in error
    assert "different runs" in error and two_runs["a"].name in error
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda folder: (folder / "run_config.json").write_text('{"image_size": 3'), "run_config.json is not readable JSON"),
        (lambda folder: (folder / "class_index.json").write_text('["cat", "dog"]'), "must hold a JSON dict"),
        (lambda folder: (folder / "class_index.json").write_text('{"0": "cat", "2": "dog"}'), "with no gap"),
        (lambda folder: (folder / "class_index.json").unlink(), "no class_index.json beside the model"),
        (lambda folder: (folder / "best_model.keras").rename(folder / "best_model.h5"), "must be a .keras file"),
    ],
)
def test_damaged_companions_exit_2_with_one_line(two_runs, tmp_path, capsys, damage, message):
    folder = copy_run(two_runs["a"], tmp_path / "copy")
    damage(folder)
    model = folder / "best_model.keras"
    if not model.exists():
        model = folder / "best_model.h5"

    code = evaluate.main(["--model", str(model), "--image_dir", two_runs["pets"],
                          "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 2
    assert message in one_line_error(capsys)


def interrupted_copy(run_folder, artifacts_dir):
    """A resumable copy of a finished run: its model as the resume point
    after epoch 1, state not done."""
    folder = artifacts_dir / "runs" / "20000101-000000"
    shutil.copytree(run_folder, folder)
    saved = read_json(folder / "run_config.json")
    (folder / "run_config.json").write_text(json.dumps({**saved, "status": "training"}))
    resume = folder / "resume"
    resume.mkdir(exist_ok=True)
    shutil.copyfile(folder / "best_model.keras", resume / "epoch-0001-head.keras")
    history = os.path.join(saved["options"]["results_dir"], "training_curves", folder.name, "history.csv")
    state = {"stamp": folder.name, "history_path": history, "phase": "head", "epoch": 0,
             "best_val_loss": 9.0, "model_file": "epoch-0001-head.keras"}
    (resume / "state.json").write_text(json.dumps(state))
    return folder


def edit_state(folder, **changes):
    state = read_json(folder / "resume" / "state.json")
    (folder / "resume" / "state.json").write_text(json.dumps({**state, **changes}))


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, damage, message",
    [
        (["--image_size", "64"], None, "this run used image_size=32; leave --image_size out"),
        (["--alpha", "1.0"], None, "this run used alpha=0.35"),
        (["--learning_rate", "0.1"], None, "this run used learning_rate=0.001"),
        ([], lambda folder: (folder / "split_manifest.csv").unlink(), "split_manifest.csv"),
        ([], lambda folder: (folder / "resume" / "state.json").write_text('{"phase": "he'), "is damaged"),
        ([], lambda folder: (folder / "resume" / "epoch-0001-head.keras").unlink(), "has no resume model"),
        ([], lambda folder: (folder / "run_config.json").write_text("{"), "run_config.json is not readable JSON"),
        ([], lambda folder: edit_state(folder, history_path=str(folder.parent / "someone.csv")), "not this run's"),
        ([], lambda folder: edit_state(folder, best_val_loss="abc"), "is damaged (stamp, history or best val_loss)"),
        ([], lambda folder: edit_state(folder, model_file="../best_model.keras"), "is damaged (phase, epoch or model"),
    ],
)
def test_resume_refuses_other_options_and_damaged_runs(two_runs, tmp_path, monkeypatch, capsys, extra, damage, message):
    monkeypatch.chdir(tmp_path)
    artifacts_dir = tmp_path / "artifacts"
    folder = interrupted_copy(two_runs["a"], artifacts_dir)
    if damage:
        damage(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}

    code = main_script.main(["--resume", "--artifacts_dir", str(artifacts_dir), *extra, "--show", "0"])

    assert code == 2
    assert message in one_line_error(capsys)
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before


def test_resume_takes_the_run_lock_before_it_reads_the_run(saved_model, tmp_path, monkeypatch, capsys):
    """A second --resume of a run another process is resuming is refused by
    the run lock, before it reads the run's state and options (read only
    under the lock, so that what is checked cannot change meanwhile)."""
    monkeypatch.chdir(tmp_path)
    artifacts_dir = tmp_path / "artifacts"
    folder = interrupted_copy(saved_model["run"], artifacts_dir)

    with run_lock.held(str(folder), "training", "--resume"):  # the first --resume, at work
        code = main_script.main(["--resume", "--artifacts_dir", str(artifacts_dir), "--image_size", "64"])
        error = one_line_error(capsys)

    assert code == 2
    assert f"--resume: run {folder.name} is in use by process {os.getpid()}" in error
    assert "image_size" not in error  # the options were not read yet
    assert not (folder / run_lock.LOCK_FILE).exists()


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    assert main_script.main(["--resume", "--artifacts_dir", str(tmp_path / "none")]) == 2
    assert "no interrupted run" in one_line_error(capsys)
    assert main_script.main(["--resume", "20990101-000000", "--artifacts_dir", str(tmp_path / "none")]) == 2
    assert "no run 20990101-000000" in one_line_error(capsys)


def test_run_ids_are_unique_for_runs_started_in_the_same_second(tmp_path):
    now = time.time()

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        created = list(pool.map(lambda _: artifacts.new_run(str(tmp_path / "art"), str(tmp_path / "res"), now=now),
                                range(16)))

    ids = [run_id for run_id, _ in created]
    assert len(set(ids)) == 16
    assert all(os.path.isdir(folder) for _, folder in created)
    assert sorted(os.listdir(tmp_path / "res" / ".stamps")) == sorted(ids)


def test_publishing_never_replaces_a_model_someone_put_in_artifacts_dir(tmp_path, capsys):
    artifacts_dir = tmp_path / "art"
    artifacts_dir.mkdir()
    (artifacts_dir / artifacts.MODEL_FILE).write_text("someone's model")
    run_id, folder = artifacts.new_run(str(artifacts_dir), str(tmp_path / "res"))
    (tmp_path / "art" / "runs" / run_id / artifacts.MODEL_FILE).write_text("new model")

    with pytest.raises(artifacts.CompanionError, match="not a link made by publishing"):
        artifacts.publish(str(artifacts_dir), folder)
    assert (artifacts_dir / artifacts.MODEL_FILE).read_text() == "someone's model"
    assert artifacts.published_run(str(artifacts_dir)) is None
    # main.py says so before training, not after: one line, exit 2.
    data = make_flat_dataset(tmp_path / "data", per_class=5)
    assert main_script.main(["--image_dir", data, "--artifacts_dir", str(artifacts_dir), *TINY]) == 2
    assert "move it away" in one_line_error(capsys)
    assert (artifacts_dir / artifacts.MODEL_FILE).read_text() == "someone's model"


@pytest.mark.slow
def test_evaluate_with_labels_csv_on_the_training_folder_keeps_the_saved_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=10)
    labels = tmp_path / "labels.csv"
    rows = [f"{name}/img_{number:03d}.png,{name}" for name in ("a", "b") for number in range(10)]
    labels.write_text("filename,label\n" + "\n".join(rows) + "\n")
    assert main_script.main(["--image_dir", data, "--labels_csv", str(labels), *QUICK]) == 0

    assert evaluate.main(["--image_dir", data, "--labels_csv", str(labels), "--show", "0",
                          "--results_dir", str(tmp_path / "evaluated")]) == 0

    (stamp,) = os.listdir(tmp_path / "evaluated" / "metrics")
    metrics = read_json(tmp_path / "evaluated" / "metrics" / stamp / "metrics.json")
    with open(tmp_path / "model_artifacts" / "split_manifest.csv", newline="") as handle:
        test_rows = [row for row in csv.reader(handle) if row[2] == "test"]
    assert metrics["evaluated"] == "test split" and metrics["num_samples"] == len(test_rows) == 4
