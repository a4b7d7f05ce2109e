"""run_lock.py: a run trained or exported into by one process at a time.

The holder is a real second process that takes the lock the way main.py
and evaluate.py --export do (run_lock.acquire) and waits, without
training; main.py --resume and evaluate.py --export then run in-process
against it and must stop with one line naming its process id."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import evaluate
import inference
import main as main_script
import run_lock
from conftest import ROOT, one_line_error, read_json

HOLD = (
    "import sys, run_lock\n"
    "with run_lock.held(sys.argv[1], sys.argv[2], 'test'):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"
)


class Holder:
    """A process holding the lock of `folder` until it is closed or killed."""

    def __init__(self, folder, doing="training"):
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder), doing], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout.readline().strip() == "locked"
        self.pid = self.process.pid

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def holder():
    holders = []

    def start(folder, doing="training"):
        holders.append(Holder(folder, doing))
        return holders[-1]

    yield start
    for started in holders:
        if started.process.poll() is None:
            started.kill()


def interrupted_run(saved_model, artifacts_dir):
    """A copy of conftest.saved_model's run as a run interrupted after its
    first epoch (its model as the resume point), as main.py leaves a run
    that was killed."""
    folder = artifacts_dir / "runs" / "20000101-000000"
    shutil.copytree(saved_model["run"], folder)
    saved = read_json(folder / "run_config.json")
    (folder / "run_config.json").write_text(json.dumps({**saved, "status": "training"}))
    (folder / "resume").mkdir()
    shutil.copyfile(folder / "best_model.keras", folder / "resume" / "epoch-0001-head.keras")
    state = {"stamp": folder.name, "history_path": os.path.join("results", "training_curves", folder.name, "history.csv"), "phase": "head", "epoch": 0,
             "best_val_loss": 9.0, "model_file": "epoch-0001-head.keras"}
    (folder / "resume" / "state.json").write_text(json.dumps(state))
    return folder


# ---------------------------------------------------------------- the lock itself


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path, holder):
    first = holder(tmp_path)
    lock_text = (tmp_path / run_lock.LOCK_FILE).read_text()
    assert f"process {first.pid} " in lock_text and "training since" in lock_text
    assert run_lock.holder(str(tmp_path)) == lock_text.strip()

    with pytest.raises(run_lock.UserError, match=f"--export: run .* is in use by process {first.pid} "):
        run_lock.acquire(str(tmp_path), "exporting", "--export")

    first.kill()  # kill -9: the kernel releases the lock, the file stays
    assert (tmp_path / run_lock.LOCK_FILE).exists() and run_lock.holder(str(tmp_path)) is None
    with run_lock.held(str(tmp_path), "exporting", "--export"):
        assert f"process {os.getpid()} " in (tmp_path / run_lock.LOCK_FILE).read_text()
        assert run_lock.holder(str(tmp_path)) is not None
    assert not (tmp_path / run_lock.LOCK_FILE).exists()  # a holder that ends removes it


def test_a_holder_that_ends_normally_leaves_the_run_free_and_no_file(tmp_path, holder):
    holder(tmp_path).close()

    assert not (tmp_path / run_lock.LOCK_FILE).exists() and run_lock.holder(str(tmp_path)) is None
    run_lock.release(run_lock.acquire(str(tmp_path), "training", "main.py"))


# ---------------------------------------------------------------- the commands


def test_resume_of_a_run_another_process_trains_exits_2_naming_it(saved_model, tmp_path, holder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's own --results_dir, results, is relative
    artifacts_dir = tmp_path / "artifacts"
    folder = interrupted_run(saved_model, artifacts_dir)
    live = holder(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}

    code = main_script.main(["--resume", "--artifacts_dir", str(artifacts_dir), "--show", "0"])

    assert code == 2
    error = one_line_error(capsys)
    assert f"--resume: run {folder.name} is in use by process {live.pid} " in error and "training since" in error
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
    assert not (tmp_path / "results" / "audit").exists()  # nothing of the live run's results touched


def test_a_second_export_into_one_run_exits_2_naming_the_first(saved_model, tmp_path, holder, capsys):
    artifacts_dir = tmp_path / "artifacts"
    shutil.copytree(saved_model["artifacts"], artifacts_dir, symlinks=True)
    (run,) = os.listdir(artifacts_dir / "runs")
    first = holder(artifacts_dir / "runs" / run, "exporting")

    code = evaluate.main(["--image_dir", saved_model["data"], "--artifacts_dir", str(artifacts_dir),
                          "--results_dir", str(tmp_path / "results"), "--export", "onnx", "--show", "0"])

    assert code == 2
    error = one_line_error(capsys)
    assert f"--export: run {run} is in use by process {first.pid} " in error and "exporting since" in error
    assert not os.path.exists(artifacts_dir / "runs" / run / "best_model.onnx")
    assert not (tmp_path / "results" / "metrics").exists()


@pytest.mark.parametrize("live", [True, False])
def test_evaluating_an_unfinished_run_says_so(saved_model, tmp_path, holder, capsys, live):
    folder = interrupted_run(saved_model, tmp_path / "artifacts")
    training = holder(folder) if live else None

    code = evaluate.main(["--model", str(folder / "best_model.keras"), "--image_dir", saved_model["data"],
                          "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 0
    out = capsys.readouterr().out
    (stamp,) = os.listdir(tmp_path / "results" / "metrics")
    note = read_json(tmp_path / "results" / "metrics" / stamp / "metrics.json")["note"]
    assert f"note: {note}" in out and out.count(note) == 2  # the evaluation stage and the summary
    assert f"run {folder.name} did not finish training" in note and "uncalibrated and never published" in note
    if live:
        assert f"still being trained (process {training.pid} " in note
    else:
        assert f"python main.py --resume {folder.name} --artifacts_dir {tmp_path / 'artifacts'}" in note


def test_a_finished_run_has_no_unfinished_note(saved_model):
    trained = inference.load_trained_model(str(saved_model["run"] / "best_model.keras"))

    assert inference.unfinished_note(trained) is None
