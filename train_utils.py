"""Training, and only training: the device, class weights, callbacks, the
two phases and resuming an interrupted run.

main.py is its one user. Evaluation metrics and prediction live in
evaluate.py; file names and safe writes in artifacts.py.
"""

import contextlib
import csv
import dataclasses
import os
import sys

import numpy as np

import artifacts
from config import UserError

RESUME_STATE = "state.json"


# ---------------------------------------------------------------- device


@dataclasses.dataclass(frozen=True)
class DeviceSetup:
    strategy: object
    num_gpus: int
    mixed_precision: bool
    jit_compile: bool

    def describe(self):
        where = f"{self.num_gpus} GPU(s)" if self.num_gpus else "CPU"
        precision = "mixed_float16" if self.mixed_precision else "float32"
        return f"{where}, {precision}, XLA {'on' if self.jit_compile else 'off'}"


def configure_device(precision="auto", jit="auto"):
    """Picks the device, precision and XLA for training.

    With a GPU: memory growth on, mixed_float16 and XLA by default, and
    MirroredStrategy over several GPUs. On the CPU: float32 and no XLA by
    default (measured on 2 cores: mixed_bfloat16 2x and XLA 7x slower).
    Sets Keras' global dtype policy, so call it once, before building.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialized
            tf.config.experimental.set_memory_growth(gpu, True)
    mixed = precision == "mixed" or (precision == "auto" and bool(gpus))
    jit_compile = jit == "1" or (jit == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy(
        ("mixed_float16" if gpus else "mixed_bfloat16") if mixed else "float32"
    )
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    return DeviceSetup(strategy, len(gpus), mixed, jit_compile)


# ---------------------------------------------------------------- data


def class_weights(labels, num_classes, mode="auto"):
    """Balanced class weights {index: weight} from the training labels, or
    None. `auto` uses them when the largest class has more than 1.5x the
    images of the smallest."""
    from sklearn.utils.class_weight import compute_class_weight

    counts = np.bincount(labels, minlength=num_classes)
    if mode == "none" or (mode == "auto" and counts.max() <= 1.5 * counts.min()):
        return None
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return {index: float(weight) for index, weight in enumerate(weights)}


# ---------------------------------------------------------------- callbacks


class BestModelCheckpoint:
    """Factory for a callback saving the model with the lowest val_loss,
    atomically, so a crash mid-save keeps the previous file loadable."""

    def __new__(cls, path, best=float("inf")):
        import keras

        class _Checkpoint(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.path = path
                self.best = best

            def on_epoch_end(self, epoch, logs=None):
                value = (logs or {}).get("val_loss")
                if value is None or not np.isfinite(value) or value >= self.best:
                    return
                print(
                    f"\nEpoch {epoch + 1}: val_loss improved from {self.best:.4f} "
                    f"to {value:.4f}, saving {self.path}"
                )
                self.best = float(value)
                artifacts.save_model(self.model, self.path)

        return _Checkpoint()


class ResumePoint:
    """Factory for a callback that, after every epoch, saves the whole model
    (optimizer included) and a small state file, so `--resume` can continue
    from the last completed epoch after the process is killed."""

    def __new__(cls, folder, phase, state, best_checkpoint):
        import keras

        class _Resume(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                save_resume_point(
                    folder,
                    self.model,
                    {**state, "phase": phase, "epoch": epoch, "best_val_loss": best_checkpoint.best},
                )

        return _Resume()


def save_resume_point(folder, model, state):
    """Saves model + state so that the state always names a complete model
    file: the model goes to a new file first, then the state is replaced,
    then older model files are removed (they are ours, never user data)."""
    os.makedirs(folder, exist_ok=True)
    name = f"epoch-{state['epoch'] + 1:04d}-{state['phase']}.keras"
    artifacts.save_model(model, os.path.join(folder, name))
    artifacts.write_json(os.path.join(folder, RESUME_STATE), {**state, "model_file": name})
    drop_resume_models(folder, keep=name)


def drop_resume_models(folder, keep=None):
    """Removes the resume model files save_resume_point wrote in `folder`
    (only ours: epoch-NNNN-<phase>.keras), except `keep`."""
    for entry in os.scandir(folder):
        if entry.name.startswith("epoch-") and entry.name.endswith(".keras") and entry.name != keep:
            os.remove(entry.path)


def _resume_state(run_folder):
    """The saved state of the run in `run_folder`: a dict, "done" for a
    finished run, None when no epoch completed. Raises UserError for a
    state file that cannot be read."""
    path = os.path.join(run_folder, artifacts.RESUME_FOLDER, RESUME_STATE)
    if not os.path.isfile(path):
        return None
    try:
        state = artifacts.read_json(path)
    except (OSError, ValueError):
        raise UserError(f"--resume: {path} is damaged (not JSON); start a new run") from None
    if not isinstance(state, dict):
        raise UserError(f"--resume: {path} is damaged (not a state); start a new run")
    return "done" if state.get("phase") == "done" else state


def find_interrupted_run(artifacts_dir, run_id="last"):
    """(run id, run folder, state) of the run `--resume` continues: `run_id`,
    or with "last" the most recent run in ARTIFACTS_DIR/runs that completed
    at least one epoch and did not finish. Raises UserError when there is
    none, or its state or resume model is missing or damaged."""
    runs = artifacts.run_ids(artifacts_dir)
    if run_id != "last" and run_id not in runs:
        raise UserError(
            f"--resume: no run {run_id} in {artifacts.runs_folder(artifacts_dir)} "
            f"(runs: {', '.join(runs[-5:]) or 'none'}). Received: resume={run_id}"
        )
    for candidate in [run_id] if run_id != "last" else reversed(runs):
        folder = os.path.join(artifacts.runs_folder(artifacts_dir), candidate)
        state = _resume_state(folder)
        if state == "done" or state is None:
            if run_id == "last":
                continue
            raise UserError(
                f"--resume: run {candidate} "
                + ("finished; nothing to resume" if state == "done" else "never completed an epoch; start a new run")
            )
        model = os.path.join(folder, artifacts.RESUME_FOLDER, str(state.get("model_file")))
        if "epoch" not in state or not os.path.isfile(model):
            raise UserError(
                f"--resume: run {candidate} has no resume model ({model} is missing); start a new run"
            )
        return candidate, folder, state
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


# ---------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """What `train` needs besides the model and data."""

    epochs: int
    fine_tune_epochs: int
    fine_tune_layers: int
    learning_rate: float
    patience: int
    pretrained: bool
    jit_compile: bool
    best_model_path: str
    history_path: str
    resume_folder: str
    tensorboard_dir: str | None = None
    class_weight: dict | None = None


def compile_model(model, learning_rate, jit_compile):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def phase_callbacks(plan, phase, best_checkpoint, state):
    import keras

    # Order matters: ReduceLROnPlateau adds the learning rate to the logs
    # the CSV records; the resume point comes last, once all is written.
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.2, patience=max(1, plan.patience // 2), min_lr=1e-7, verbose=1
        ),
        keras.callbacks.CSVLogger(plan.history_path, append=True),
        best_checkpoint,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=plan.patience, restore_best_weights=True, verbose=1
        ),
        # A diverged run (NaN loss) stops at once; it never becomes the
        # published model (main.py checks that a best model was saved).
        keras.callbacks.TerminateOnNaN(),
        ResumePoint(plan.resume_folder, phase, state, best_checkpoint),
    ]
    if plan.tensorboard_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=plan.tensorboard_dir))
    return callbacks


def unfreeze_for_fine_tuning(model, plan):
    """Unfreezes the backbone's top layers and recompiles at lr / 10."""
    from model_builder import unfreeze_top_layers

    unfrozen = unfreeze_top_layers(model, plan.fine_tune_layers)
    compile_model(model, plan.learning_rate / 10, plan.jit_compile)
    return unfrozen


def fit_phase(model, train_data, val_data, plan, first_epoch, last_epoch, callbacks):
    """Runs model.fit over epochs [first_epoch, last_epoch); returns the
    number of epochs actually run (early stopping may end it sooner)."""
    if first_epoch >= last_epoch:
        return 0
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=last_epoch,
        initial_epoch=first_epoch,
        shuffle=False,  # the tf.data pipeline shuffles, seeded
        class_weight=plan.class_weight,
        callbacks=callbacks,
        # Live progress bars on a terminal, one line per epoch in logs.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return len(history.epoch)


def train(model, train_data, val_data, plan, state, resume=None):
    """Trains in up to two phases and returns the model.

    Phase "head": the head (or, from scratch, the whole network) for
    `plan.epochs`. Phase "finetune" (pretrained only): the backbone's last
    `plan.fine_tune_layers` layers unfrozen at a 10x lower learning rate for
    `plan.fine_tune_epochs`. Epochs are numbered across both phases, so the
    history CSV is one continuous table. `state` is saved with every resume
    point; `resume` is the state of an interrupted run whose model is
    already loaded (compiled, optimizer state included).
    """
    best_checkpoint = BestModelCheckpoint(
        plan.best_model_path, best=resume["best_val_loss"] if resume else float("inf")
    )
    phase = resume["phase"] if resume else "head"
    next_epoch = resume["epoch"] + 1 if resume else 0

    if phase == "head":
        if not resume:
            compile_model(model, plan.learning_rate, plan.jit_compile)
        callbacks = phase_callbacks(plan, "head", best_checkpoint, state)
        next_epoch += fit_phase(model, train_data, val_data, plan, next_epoch, plan.epochs, callbacks)
        if not (plan.pretrained and plan.fine_tune_epochs > 0):
            return model
        unfrozen = unfreeze_for_fine_tuning(model, plan)
        print(
            f"Fine-tuning from epoch {next_epoch + 1}: {unfrozen} backbone layers "
            f"unfrozen, learning rate {plan.learning_rate / 10:g}",
            flush=True,
        )
        state = {**state, "finetune_start": next_epoch}
        # The phase boundary is a resume point too: it holds the best head
        # weights that fine-tuning starts from.
        save_resume_point(
            plan.resume_folder,
            model,
            {**state, "phase": "finetune", "epoch": next_epoch - 1, "best_val_loss": best_checkpoint.best},
        )
    last_epoch = state["finetune_start"] + plan.fine_tune_epochs
    callbacks = phase_callbacks(plan, "finetune", best_checkpoint, state)
    fit_phase(model, train_data, val_data, plan, next_epoch, last_epoch, callbacks)
    return model


def finish_resume_points(folder):
    """Marks the run finished and drops its resume model files."""
    if not os.path.isdir(folder):
        return
    drop_resume_models(folder)
    artifacts.write_json(os.path.join(folder, RESUME_STATE), {"phase": "done"})


# ---------------------------------------------------------------- history


def read_history(path):
    """A CSVLogger history file as {column: numpy array}; `epoch` is 0-based
    and continuous across the head and fine-tuning phases."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UserError(f"the training history {path} has no epochs")
    return {
        column: np.array([float(row[column]) if row[column] != "" else np.nan for row in rows])
        for column in rows[0]
    }


def finetune_start(resume_folder):
    """The first fine-tuning epoch (0-based) saved in a run's resume state,
    or None when the run did not fine-tune. Read it before
    `finish_resume_points` clears the state."""
    path = os.path.join(resume_folder, RESUME_STATE)
    if not os.path.isfile(path):
        return None
    value = artifacts.read_json(path).get("finetune_start")
    return None if value is None else int(value)
