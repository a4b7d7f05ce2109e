"""How an interrupted run continues: the resume point saved after every
epoch, finding the run `--resume` means, and the options it continues with.

After every epoch the whole model (optimizer included) goes to the run's
resume/ folder with a small state file, state.json, that names it
(`ResumePoint`); a killed run continues from its last completed epoch with
the options saved in its run_config.json (`open_resumed_run`, merged with
the command line's by config.continued_options). After the last epoch its
resume models are dropped and state.json says "trained" (`finish_training`):
a run killed then, while it calibrates, evaluates or publishes, continues
with those stages, from its best model; once every stage is done
state.json says "done" (`finish_resume_points`).
"""

import csv
import dataclasses
import os
import shutil

import artifacts
import config
from errors import UserError

RESUME_STATE = "state.json"
PHASES = ("head", "finetune")
TRAINED = "trained"  # every epoch done; the stages after training (calibrating, publishing, ...) not yet
FINISHED = "done"


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run stands after its last completed epoch."""

    stamp: str  # the run id
    history_path: str  # its history.csv
    phase: str  # "head" or "finetune"
    epoch: int  # the last completed epoch, 0-based, counted across both phases
    best_val_loss: float  # the saved best model's
    model_file: str  # the resume model, in the run's resume/ folder (once TRAINED: the run's best model)
    finetune_start: int | None = None  # the first fine-tuning epoch, once known
    training_seconds: float | None = None  # once TRAINED: how long training took
    spent_seconds: float | None = None  # training seconds up to this point, over every invocation (--time)
    stopped: str | None = None  # once TRAINED: how the --time budget stopped it (train_utils.TimeBudget.line)

    @property
    def trained(self):
        """Whether every epoch is done (only the stages after training are left)."""
        return self.phase == TRAINED

    def model_path(self, run_folder):
        """The model the run continues from: its last resume model, or once
        trained its best model (beside the companions)."""
        if self.trained:
            return os.path.join(run_folder, self.model_file)
        return os.path.join(run_folder, artifacts.RESUME_FOLDER, self.model_file)

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, values, path="state.json"):
        """A ResumePoint from state.json's dict. Raises UserError when a
        field is missing or of the wrong kind, or the model file is not a
        plain name inside resume/."""
        names = {field.name for field in dataclasses.fields(cls)}
        required = names - {"finetune_start", "training_seconds", "spent_seconds", "stopped"}
        if not isinstance(values, dict) or not required <= set(values):
            missing = sorted(required - set(values)) if isinstance(values, dict) else ["all"]
            raise UserError(f"--resume: {path} is damaged (missing {', '.join(missing)}); start a new run")
        point = cls(**{name: value for name, value in values.items() if name in names})
        def number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if (
            not isinstance(point.stamp, str) or not isinstance(point.history_path, str)
            or not number(point.best_val_loss)
            or not (point.finetune_start is None or isinstance(point.finetune_start, int))
            or not (point.training_seconds is None or number(point.training_seconds))
            or not (point.spent_seconds is None or number(point.spent_seconds))
            or not (point.stopped is None or isinstance(point.stopped, str))
            or isinstance(point.epoch, bool)
        ):
            raise UserError(f"--resume: {path} is damaged (stamp, history or best val_loss); start a new run")
        if (
            point.phase not in (*PHASES, TRAINED)
            or not isinstance(point.epoch, int)
            or not isinstance(point.model_file, str)
            or os.path.basename(point.model_file) != point.model_file
            or point.model_file in ("", ".", "..")
        ):
            raise UserError(f"--resume: {path} is damaged (phase, epoch or model file); start a new run")
        return point


def model_file_name(epoch, phase):
    return f"epoch-{epoch + 1:04d}-{phase}.keras"


def save_resume_point(folder, model, point, saved_copy=None):
    """Saves `model` and the ResumePoint `point` (its model_file is filled
    in here) so that the state always names a complete model file: the
    model goes to a new file first, then the state is replaced, then older
    model files are removed (they are ours, never user data). `saved_copy`:
    a .keras file of this very model in this very state (optimizer
    included), which is copied instead of serialising the model again."""
    os.makedirs(folder, exist_ok=True)
    name = model_file_name(point.epoch, point.phase)
    path = os.path.join(folder, name)
    if saved_copy is None:
        artifacts.save_model(model, path)
    else:
        artifacts.atomic_write(path, lambda temp_path: shutil.copyfile(saved_copy, temp_path))
    artifacts.write_json(os.path.join(folder, RESUME_STATE), dataclasses.replace(point, model_file=name).to_json())
    drop_resume_models(folder, keep=name)


def resume_callback(folder, model, point, checkpoint, swap=None, spent=None, best_model_path=None):
    """A Keras callback that saves a resume point after every epoch: the
    fields of `point` with that epoch, the best val_loss so far of the
    ModelCheckpoint `checkpoint` and the training seconds `spent()`.
    `swap`: --ema's SwapEMAWeights(swap_on_epoch=True), which put the
    averaged weights in the model at the epoch's end and the raw ones in
    the optimizer's place for them; the point is saved the way training
    goes on (raw weights in the model, the averages in the optimizer), so
    a resumed run continues exactly as an uninterrupted one.
    `best_model_path`: where the checkpoint's file is promoted to
    (train_utils.promote_checkpoint, a callback before this one). At an
    epoch whose val_loss improved, that file is this model as it is now
    (nothing between the two callbacks changes the model or its
    optimizer), so the point copies it: one serialisation of the model
    per improved epoch instead of two (~0.5 s each for the tests' tiny
    model, ~0.6 s for MobileNetV2 at 224 px; a copy takes milliseconds).
    Not with --ema: the checkpoint holds the averages, the point the raw
    weights."""
    import keras

    last_best = [checkpoint.best]

    def save(epoch, logs=None):
        best = float(checkpoint.best) if checkpoint.best is not None else float("inf")
        seconds = None if spent is None else spent()
        improved = checkpoint.best is not None and checkpoint.best != last_best[0]
        last_best[0] = checkpoint.best
        point_now = dataclasses.replace(point, epoch=epoch, best_val_loss=best, spent_seconds=seconds)
        if swap is None and improved and best_model_path is not None and os.path.isfile(best_model_path):
            save_resume_point(folder, model, point_now, saved_copy=best_model_path)
            return
        if swap is not None:
            swap.on_epoch_begin(epoch)  # what the next epoch would do first: the raw weights back
        save_resume_point(folder, model, point_now)
        if swap is not None:
            swap.on_epoch_end(epoch)  # the averages in the model again, for the callbacks after this one

    return keras.callbacks.LambdaCallback(on_epoch_end=save)


def drop_resume_models(folder, keep=None):
    """Removes the resume model files save_resume_point wrote in `folder`
    (only ours: epoch-NNNN-<phase>.keras), except `keep`."""
    for entry in os.scandir(folder):
        if entry.name.startswith("epoch-") and entry.name.endswith(".keras") and entry.name != keep:
            os.remove(entry.path)


def finish_training(folder, training_seconds, stopped=None):
    """After the last epoch: the run whose resume/ folder is `folder` is
    marked TRAINED (its last ResumePoint, now naming the run's best model,
    how long training took and `stopped`, how --time stopped it), then its
    resume model files are dropped.
    A run killed after this continues with the stages after training.
    Returns the TRAINED point (None when no epoch left a point)."""
    progress = read_progress(os.path.dirname(folder))
    if progress.point is None:
        return None
    point = dataclasses.replace(progress.point, phase=TRAINED, model_file=artifacts.MODEL_FILE,
                                training_seconds=training_seconds, stopped=stopped)
    # The state first: it never names a model file that is gone.
    artifacts.write_json(os.path.join(folder, RESUME_STATE), point.to_json())
    drop_resume_models(folder)
    return point


def finish_resume_points(folder):
    """Marks the run finished (every stage done) and drops its resume model
    files."""
    if not os.path.isdir(folder):
        return
    drop_resume_models(folder)
    artifacts.write_json(os.path.join(folder, RESUME_STATE), {"phase": FINISHED})


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a run got: "interrupted" (with its ResumePoint; a TRAINED
    one when only the stages after training are left), "finished" (every
    stage done), or "not started" (no epoch completed)."""

    status: str
    point: ResumePoint | None = None


def read_progress(run_folder):
    """The Progress of the run in `run_folder`. Raises UserError for a state
    file that cannot be read or is damaged."""
    path = os.path.join(run_folder, artifacts.RESUME_FOLDER, RESUME_STATE)
    if not os.path.isfile(path):
        return Progress("not started")
    try:
        values = artifacts.read_json(path)
    except (OSError, ValueError):
        raise UserError(f"--resume: {path} is damaged (not JSON); start a new run") from None
    if not isinstance(values, dict):
        raise UserError(f"--resume: {path} is damaged (not a state); start a new run")
    if values.get("phase") == FINISHED:
        return Progress("finished")
    return Progress("interrupted", ResumePoint.from_json(values, path))


def interrupted_line(run_folder, stamp, artifacts_dir):
    """What Ctrl-C kept of the run in `run_folder`, and how to go on."""
    try:
        progress = read_progress(run_folder)
    except UserError:
        progress = Progress("not started")
    if progress.status == "interrupted" and progress.point.trained:
        return (f"after training: run {stamp} is kept in {run_folder} (its trained model; the stages after "
                f"training are not all done); finish it with: python main.py --resume {stamp} "
                f"--artifacts_dir {artifacts_dir}")
    if progress.status == "interrupted":
        return (f"after epoch {progress.point.epoch + 1}: run {stamp} is kept in {run_folder} (its best model so "
                f"far and a resume point); continue it with: python main.py --resume {stamp} "
                f"--artifacts_dir {artifacts_dir}")
    if progress.status == "finished":
        published = artifacts.published_run(artifacts_dir) == stamp
        return (f"after training: run {stamp}'s model is kept in {run_folder}"
                + (" and published" if published else " (not published, and a finished run is not resumed)"))
    return f"before run {stamp} completed an epoch: nothing to resume was kept"


def finetune_start(resume_folder):
    """The first fine-tuning epoch (0-based) of the run whose resume/ folder
    this is, or None when it did not fine-tune (a TRAINED point keeps
    it; `finish_resume_points` clears it)."""
    progress = read_progress(os.path.dirname(resume_folder))
    return None if progress.point is None else progress.point.finetune_start


def find_interrupted_run(artifacts_dir, run_id="last"):
    """(run id, run folder, ResumePoint) of the run `--resume` continues:
    `run_id`, or with "last" the most recent run in ARTIFACTS_DIR/runs that
    completed at least one epoch and did not finish every stage (one killed
    after training continues from its best model). Raises UserError when
    there is none, or its state or resume model is missing or damaged."""
    runs = artifacts.run_ids(artifacts_dir)
    if run_id != "last" and run_id not in runs:
        raise UserError(
            f"--resume: no run {run_id} in {artifacts.runs_folder(artifacts_dir)} "
            f"(runs: {', '.join(runs[-5:]) or 'none'}). Received: resume={run_id}"
        )
    for candidate in [run_id] if run_id != "last" else reversed(runs):
        folder = os.path.join(artifacts.runs_folder(artifacts_dir), candidate)
        progress = read_progress(folder)
        if progress.status != "interrupted":
            if run_id == "last":
                continue
            raise UserError(
                f"--resume: run {candidate} "
                + ("finished; nothing to resume" if progress.status == "finished"
                   else "never completed an epoch; start a new run")
            )
        model = progress.point.model_path(folder)
        if not os.path.isfile(model):
            kind = "trained model (training diverged?)" if progress.point.trained else "resume model"
            raise UserError(f"--resume: run {candidate} has no {kind} ({model} is missing); start a new run")
        return candidate, folder, progress.point
    raise UserError(
        f"--resume: no interrupted run in {artifacts.runs_folder(artifacts_dir)}; "
        "start a run without --resume"
    )


def trim_history(path, last_epoch):
    """Drops history rows after `last_epoch` (0-based), written by an epoch
    whose resume point was never saved, so a resumed run does not repeat
    them."""
    if not os.path.isfile(path):
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= last_epoch]
    artifacts.write_csv(path, kept)


# ---------------------------------------------------------------- the run to continue


def open_resumed_run(artifacts_dir, run_id="last"):
    """The interrupted run `run_id` ("last": the most recent) of
    ARTIFACTS_DIR that --resume continues: (run id, folder, ResumePoint,
    the options it was started with, as saved). Raises UserError when it
    cannot be continued; runs.py merges the options with the command
    line's (config.continued_options)."""
    stamp, folder, point = find_interrupted_run(artifacts_dir, run_id)
    try:
        saved = artifacts.read_run_config(folder).get("options")
    except artifacts.CompanionError as error:
        raise UserError(f"--resume: {error}; start a new run") from None
    if not isinstance(saved, dict):
        raise UserError(f"--resume: the run config in {folder} has no options; start a new run")
    try:  # checked before anything is written; compared after the scan
        artifacts.read_manifest(folder)
    except artifacts.CompanionError as error:
        raise UserError(f"--resume: {error}; start a new run") from None
    results_dir = saved.get("results_dir", config.DEFAULTS.results_dir)
    own_history = os.path.join(results_dir, "training_curves", stamp, "history.csv")
    if point.stamp != stamp or os.path.normpath(point.history_path) != os.path.normpath(own_history):
        raise UserError(
            f"--resume: {os.path.join(folder, artifacts.RESUME_FOLDER, RESUME_STATE)} is damaged: it names "
            f"run {point.stamp} and the history {point.history_path}, not this run's {stamp} and {own_history}; "
            "start a new run"
        )
    return stamp, folder, point, saved


def resumed_refusal(name, ours, theirs):
    """The line --resume refuses an option given with another value with."""
    return (f"--resume continues a run with its own options, and this run used {name}={theirs}; "
            f"leave --{name} out (or start a new run). Received: {name}={ours}")
