"""A run killed after its last epoch, at any stage boundary, is finished by
`main.py --resume`: calibrated, published, evaluated, exported.

The first kill is a real SIGKILL of main.py, the moment it prints
"==> Calibrating the confidences". The other boundaries come from one
run: at the end of every stage after training the test copies the run's
folders (ARTIFACTS_DIR and RESULTS_DIR), which is exactly what a SIGKILL at
that boundary leaves on disk (every write is atomic, nothing is flushed at
exit, the run lock's file stays, unlocked). The copies whose kept files
are the same (the boundaries between stages that only write figures,
metrics or the report) are resumed once, in-process (`one_per_kept_state`),
and --export is checked at one boundary (the run's options only matter to
the stages after training, `with_export`). Trained once per mode, so the
sweep stays cheap: the --folds 2 run is also the one checked end to end
(its summary, rescoring, a resume with other options refused).
"""

import contextlib
import csv
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

import artifacts
import console
import errors
import cross_validation
import main as main_script
import resume
import run_lock
from conftest import ROOT, TINY, make_flat_dataset, one_line_error, read_json

QUICK_RUN = [*TINY, "--epochs", "1", "--augment", "0", "--grid_per_class", "1", "--rows", "1", "--cols", "2"]


def run_states(artifacts_dir):
    """{run id: its resume state} of the runs in ARTIFACTS_DIR."""
    return {path.parent.parent.name: read_json(path) for path in artifacts_dir.glob("runs/*/resume/state.json")}


def copy_outputs(workdir, destination):
    """ARTIFACTS_DIR and RESULTS_DIR as they are now (links kept)."""
    for name in ("model_artifacts", "results"):
        if (workdir / name).exists():
            shutil.copytree(workdir / name, destination / name, symlinks=True)
    return destination


@contextlib.contextmanager
def copies_at_each_boundary(monkeypatch, workdir, into):
    """While active, every stage (console.stage) that ends while a run is
    trained but not done, or once every run is done (the mode's closing
    stages), leaves a copy of the outputs in `into`/NN. Yields the list of
    (stage name, copy) it fills."""
    original, taken = console.stage, []

    @contextlib.contextmanager
    def stage(name):
        with original(name):
            yield
        phases = [state.get("phase") for state in run_states(workdir / "model_artifacts").values()]
        runs = list((workdir / "model_artifacts").glob("runs/*"))
        if resume.TRAINED in phases or (runs and phases.count(resume.FINISHED) == len(runs)):
            taken.append((name, copy_outputs(workdir, into / f"{len(taken):02d}")))

    monkeypatch.setattr(console, "stage", stage)
    yield taken
    monkeypatch.setattr(console, "stage", original)


def kill_at_stage(args, workdir, stage):
    """Runs main.py as a real process and SIGKILLs it as soon as it prints
    that `stage` starts. Returns what it printed."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=workdir, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"},
    )
    printed = []
    for line in process.stdout:
        printed.append(line)
        if line.startswith(f"==> {stage}"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(printed[-20:])
    return "".join(printed)


def assert_finished_and_published(artifacts_dir, stamp):
    """Run `stamp` is done, published, and its published model is the one
    its run config names (what evaluate.py and predict.py check)."""
    folder = artifacts_dir / "runs" / stamp
    assert read_json(folder / "resume" / "state.json") == {"phase": resume.FINISHED}
    saved = read_json(folder / "run_config.json")
    assert saved["status"] == "finished"
    assert saved["model_sha256"] == artifacts.file_sha256(folder / "best_model.keras")
    assert artifacts.published_run(str(artifacts_dir)) == stamp
    assert artifacts.file_sha256(artifacts_dir / "best_model.keras") == saved["model_sha256"]
    assert not (folder / run_lock.LOCK_FILE).exists()


def resume_copy(copy, monkeypatch, capsys):
    """--resume in the copied outputs `copy`; returns (exit code, printed)."""
    monkeypatch.chdir(copy)
    capsys.readouterr()
    code = main_script.main(["--resume"])
    return code, capsys.readouterr()


def kept_state(copy):
    """What a resumed run reads of the copied outputs `copy` (then the same
    --resume does the same): every file of ARTIFACTS_DIR (the run folders,
    their states, models and run configs, the published links; a
    cross-validation's state) by content, and the history, but not the
    figures, metrics and reports, which a resumed run writes anew."""
    artifacts_dir = copy / "model_artifacts"
    kept = {}
    for path in sorted(artifacts_dir.rglob("*")):
        name = str(path.relative_to(copy))
        if path.is_symlink():
            kept[name] = os.readlink(path)
        elif path.is_file() and path.name != run_lock.LOCK_FILE:
            kept[name] = artifacts.file_sha256(path)
    for path in sorted((copy / "results" / "training_curves").rglob("history.csv")):
        kept[str(path.relative_to(copy))] = artifacts.file_sha256(path)
    return tuple(kept.items())


def one_per_kept_state(boundaries):
    """The first boundary of each distinct `kept_state`, in order: every
    boundary with the same state (the stages that only write figures,
    metrics or the report) is resumed the same way, so one resume each
    keeps the sweep cheap."""
    seen = set()
    for name, copy in boundaries:
        state = kept_state(copy)
        if state not in seen:
            seen.add(state)
            yield name, copy


def unfinished_runs(artifacts_dir):
    return [stamp for stamp, state in run_states(artifacts_dir).items() if state.get("phase") != resume.FINISHED]


def with_export(copy, formats):
    """The copied run as if started with --export `formats` (the options
    only matter to the stages after training): one export checked, not
    one per boundary, keeps the sweep cheap."""
    (folder,) = (copy / "model_artifacts" / "runs").iterdir()
    saved = read_json(folder / "run_config.json")
    artifacts.write_json(str(folder / "run_config.json"), {**saved, "options": {**saved["options"], "export": formats}})
    return copy


@pytest.mark.slow
@pytest.mark.heavy
def test_a_run_killed_at_any_stage_after_training_is_finished_by_resume(workdir, tmp_path, monkeypatch, capsys):
    import evaluate

    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=8)
    printed = kill_at_stage(["--image_dir", data, *QUICK_RUN], workdir, "Calibrating the confidences")
    assert "==> Training" in printed and "==> Publishing" not in printed
    artifacts_dir = workdir / "model_artifacts"
    (stamp,) = run_states(artifacts_dir)
    # What the review found: trained, not published, nothing for evaluate.py.
    assert run_states(artifacts_dir)[stamp]["phase"] == resume.TRAINED
    assert read_json(artifacts_dir / "runs" / stamp / "run_config.json")["status"] == "training"
    assert artifacts.published_run(str(artifacts_dir)) is None

    with copies_at_each_boundary(monkeypatch, workdir, tmp_path / "copies") as boundaries:
        assert main_script.main(["--resume"]) == 0
    out = capsys.readouterr().out
    assert f"Resuming run {stamp} (model_artifacts/runs/{stamp}) after training: calibrating, publishing, " \
           "evaluating." in out
    assert "every epoch was done before the interruption" in out and "Epoch 1" not in out
    assert_finished_and_published(artifacts_dir, stamp)
    assert read_json(artifacts_dir / "runs" / stamp / "run_config.json")["calibration"]["temperature"] > 0
    assert evaluate.main(["--image_dir", data, "--show", "0"]) == 0

    # Every later boundary: the end of each stage from calibration on, the last one's included.
    names = [name for name, _ in boundaries]
    later = boundaries[names.index("Training") + 1:]
    assert later[0][0] == "Calibrating the confidences" and later[-1][0] == "Writing the report"
    assert len(later) >= 10
    resumed = list(one_per_kept_state(later))
    # Calibrated; published; evaluated (its reliability bins).
    assert [name for name, _ in resumed] == [
        "Calibrating the confidences", "Publishing the model", "Evaluating the best model on the test split"]
    # And with --export, killed where the export starts.
    exported = with_export(copy_outputs(resumed[-1][1], tmp_path / "exported"), ["saved_model"])
    for name, copy in [*resumed, ("Evaluating, with --export", exported)]:
        code, said = resume_copy(copy, monkeypatch, capsys)
        assert code == 0, (name, said.err)
        assert "after training:" in said.out, name
        assert_finished_and_published(copy / "model_artifacts", stamp)
        assert os.path.isfile(copy / "results" / "report" / stamp / "report.html"), name
    assert "after training: calibrating, publishing, evaluating, exporting." in said.out
    assert read_json(exported / "model_artifacts" / "runs" / stamp / "export_report.json")["passed"]


def read_rows(path):
    """A CSV file's rows as dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_summary_page(results, runs, printed):
    """The cross-validation summary's report.html: announced where the
    summary is, in the run report's theme, with the summary's numbers,
    every fold's run and every figure drawn beside it, each link resolving."""
    import report

    page = results / report.REPORT_FILE
    assert f"report: {page} (summary.md" in printed
    text = page.read_text(encoding="utf-8")
    assert report.STYLE in text and "<h2>Over the folds</h2>" in text and all(run in text for run in runs)
    accuracy = next(row for row in read_rows(results / "summary.csv") if row["metric"] == "accuracy")
    assert f"{float(accuracy['mean']):.4f} ± " in text
    figures = re.findall(r'<img src="([^"]+)"', text)
    assert sorted(figures) == sorted(name for name in os.listdir(results) if name.endswith(".png"))
    assert all((results / figure).is_file() for figure in figures)


def assert_two_folds_end_to_end(artifacts_dir, results_dir, printed):
    """A finished --folds 2 run: each fold's own manifest, the out-of-fold
    predictions, a fold's run published, the summary's files and page.
    Returns (cross-validation id, its state, its fold runs)."""
    (cv_id,) = os.listdir(artifacts_dir / cross_validation.FOLDER)
    state = cross_validation.read_state(str(artifacts_dir), cv_id, unfinished=False)
    runs = state["runs"]["mobilenet_v2"]
    assert len(runs) == 2 and all(runs)
    folds = read_rows(artifacts_dir / cross_validation.FOLDER / cv_id / "folds.csv")
    # Each fold's own manifest: its validation split is its fold, its test split the common one.
    for number, run in enumerate(runs, start=1):
        manifest = {row["path"]: row["split"] for row in read_rows(artifacts_dir / "runs" / run / "split_manifest.csv")}
        for row in folds:
            expected = "test" if row["fold"] == "test" else ("val" if row["fold"] == str(number) else "train")
            assert manifest[row["path"]] == expected
    results = results_dir / cross_validation.FOLDER / cv_id
    oof = read_rows(results / "oof_predictions.csv")
    assert sorted(row["path"] for row in oof) == sorted(row["path"] for row in folds if row["fold"] != "test")
    assert artifacts.published_run(str(artifacts_dir)) in runs
    for name in ("summary.csv", "summary.md", "per_fold.csv", "label_suspects.csv", "cross_validation.png",
                 "label_suspects.png", "confusion_matrix.png"):
        assert (results / name).is_file(), name
    assert_summary_page(results, runs, printed)
    return cv_id, state, runs


@pytest.mark.slow
@pytest.mark.heavy
def test_folds_end_to_end_rescored_and_killed_after_a_fold_trained_are_finished_by_resume(
        workdir, tmp_path, monkeypatch, capsys):
    """--folds 2 end to end (one training for both halves): its summary,
    rescored by evaluate.py --cross_validation, and --resume with other
    options refused. Then the last fold's run killed at each boundary after
    its training, and in the cross-validation's own closing stages:
    --resume finishes the fold run and the cross-validation, and publishes."""
    import evaluate

    data = make_flat_dataset(tmp_path / "data", per_class=14)
    with copies_at_each_boundary(monkeypatch, workdir, tmp_path / "folds") as boundaries:
        assert main_script.main(["--image_dir", data, "--folds", "2", "--seed", "3", *QUICK_RUN, "--calibrate", "0"]) == 0

    # End to end, in the outputs the run left (relative: as it printed them).
    artifacts_dir, results_dir = pathlib.Path("model_artifacts"), pathlib.Path("results")
    cv_id, state, runs = assert_two_folds_end_to_end(artifacts_dir, results_dir, capsys.readouterr().out)
    assert evaluate.main(["--cross_validation", "--show", "0"]) == 0
    again, = [name for name in os.listdir(results_dir / cross_validation.FOLDER) if name != cv_id]
    assert_summary_page(results_dir / cross_validation.FOLDER / again, runs, capsys.readouterr().out)
    first, second = (read_rows(results_dir / cross_validation.FOLDER / name / "per_fold.csv") for name in (cv_id, again))
    assert [row["run"] for row in first] == [row["run"] for row in second]
    for one, other in zip(first, second):
        assert float(one["accuracy"]) == pytest.approx(float(other["accuracy"]), abs=1e-6)
    # An unfinished cross-validation resumed with other options is refused, as --resume refuses.
    state["status"] = "running"
    artifacts.write_json(str(artifacts_dir / cross_validation.FOLDER / cv_id / cross_validation.STATE_FILE), state)
    assert main_script.main(["--resume", cv_id, "--epochs", "3"]) == 2
    assert "this run used epochs=1" in one_line_error(capsys)

    # Killed at each boundary: the copies taken while it ran.
    names = [name for name, _ in boundaries]
    assert "Publishing the model" in names and names[-1] == "Writing the cross-validation summary"
    # The last fold's boundaries after its training, and the cross-validation's closing ones.
    last_fold = len(names) - 1 - names[::-1].index("Training")
    distinct = list(one_per_kept_state(boundaries[last_fold:-1]))  # after the last stage: nothing left
    assert [name for name, _ in distinct] == [
        "Training", "Publishing the model", "Evaluating the best model on the test split",
        "Scoring every fold's model on its validation fold and the test split"]
    # Before publishing and after evaluating, a fold run resumes as the run
    # of the test above does; what is the folds' own: a fold run published
    # but not done (continued, not skipped), and the closing stages.
    for name, copy in distinct[1:4:2]:
        code, said = resume_copy(copy, monkeypatch, capsys)
        assert code == 0, (name, said.err)
        (cv,) = os.listdir(copy / "model_artifacts" / cross_validation.FOLDER)
        cv_state = copy / "model_artifacts" / cross_validation.FOLDER / cv / cross_validation.STATE_FILE
        assert read_json(cv_state)["status"] == "finished", name
        assert not unfinished_runs(copy / "model_artifacts"), name
        published = artifacts.published_run(str(copy / "model_artifacts"))
        assert read_json(copy / "model_artifacts" / "runs" / published / "run_config.json")["status"] == "finished"


def test_a_run_killed_after_training_is_found_by_resume_and_ctrl_c_says_how_to_finish_it(tmp_path):
    """Its state names the run's best model: --resume finds it while that
    model is there (and says so when it is not), and Ctrl-C's line says
    how to finish the run, not that it finished."""
    artifacts_dir = tmp_path / "artifacts"
    folder = artifacts_dir / "runs" / "20000101-000000"
    (folder / "resume").mkdir(parents=True)
    history = os.path.join("results", "training_curves", folder.name, "history.csv")
    state = {"stamp": folder.name, "history_path": history, "phase": resume.TRAINED, "epoch": 1,
             "best_val_loss": 0.5, "model_file": artifacts.MODEL_FILE, "finetune_start": None,
             "training_seconds": 12.5}
    artifacts.write_json(str(folder / "resume" / resume.RESUME_STATE), state)

    with pytest.raises(errors.UserError, match="has no trained model"):
        resume.find_interrupted_run(str(artifacts_dir))
    (folder / artifacts.MODEL_FILE).write_bytes(b"a model")
    stamp, found, point = resume.find_interrupted_run(str(artifacts_dir))

    assert (stamp, found) == (folder.name, str(folder))
    assert point.trained and point.training_seconds == 12.5 and point.model_path(found) == str(folder / "best_model.keras")
    line = resume.interrupted_line(str(folder), folder.name, str(artifacts_dir))
    assert line.startswith("after training: ") and f"finish it with: python main.py --resume {folder.name}" in line
