"""How a model is trained on one machine: class weights, Keras' callbacks,
the two phases (head, then fine-tuning) and the per-epoch history.

`train` runs the phases with `model.fit` and Keras' own callbacks
(ModelCheckpoint, EarlyStopping, ReduceLROnPlateau, CSVLogger, TensorBoard,
TerminateOnNaN) plus a resume point after every epoch (resume.py). Several
workers train through the same `train` with their own loop in place of
model.fit (multiworker.py); evaluation and prediction live in inference.py
and metrics.py; file names and safe writes in artifacts.py.
"""

import csv
import dataclasses
import os
import sys

import numpy as np

import artifacts
import model_builder
import resume
from errors import UserError


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


def class_weights_line(weights, class_names, mode):
    """What a run prints about its class weights (class_weights' result)."""
    if weights:
        return "class weights: " + ", ".join(f"{class_names[i]}={w:.3f}" for i, w in weights.items())
    return "class weights: none (classes are balanced enough)" if mode == "auto" else "class weights: none"


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
    stamp: str = ""  # the run id, saved with each resume point
    tensorboard_dir: str | None = None
    class_weight: dict | None = None
    chief: bool = True  # whether this process says what it saves (one machine: always)
    # The loss (training_loss): with one-hot labels (its number of classes,
    # 0: integer labels), validation batches are one-hot too.
    loss: object = "sparse_categorical_crossentropy"
    one_hot: int = 0
    steps_per_epoch: int | None = None  # an endless (oversampled) training stream's epoch
    chance_accuracy: float | None = None  # val accuracy of always answering its largest class

    @property
    def fine_tunes(self):
        return self.pretrained and self.fine_tune_epochs > 0


def training_loss(num_classes, alpha=None, label_smoothing=0.0, mixing=False):
    """(loss, one_hot) for model.compile: Keras' sparse categorical
    crossentropy on integer labels when nothing needs more; otherwise
    one-hot labels (one_hot = num_classes) and CategoricalCrossentropy with
    `label_smoothing`, or with `alpha` (per-class weights, --balance focal)
    CategoricalFocalCrossentropy (gamma 2). Mixed labels (--mixup,
    --cutmix) are one-hot too."""
    import keras

    if alpha is not None:
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=[float(value) for value in alpha], gamma=2.0, label_smoothing=label_smoothing
        ), num_classes
    if label_smoothing or mixing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing), num_classes
    return "sparse_categorical_crossentropy", 0


def compile_model(model, learning_rate, jit_compile, loss="sparse_categorical_crossentropy"):
    import keras

    # The optimizer belongs to the strategy it is created under, and
    # MirroredStrategy refuses a model and optimizer of different ones.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=loss,
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
        build_training_state(model, one_hot=not isinstance(loss, str))


def build_training_state(model, one_hot=False):
    """Creates the optimizer's and the compiled metrics' variables now, not
    inside the first training step: a tf.function that creates variables
    on its first call is traced twice, and tracing MobileNetV2's training
    step takes about 15 s on 2 CPU cores (measured: the first epoch of a
    tiny run went from 36 s to 17 s). The metrics' state from the dummy
    batch is reset; fit resets them every epoch anyway. `one_hot`: the
    labels will be one-hot (the accuracy Keras picks depends on it)."""
    with model.distribute_strategy.scope():
        model.optimizer.build(model.trainable_variables)
        classes = model.output_shape[-1]
        labels = np.eye(classes, dtype=np.float32)[:1] if one_hot else np.zeros((1,), np.int32)
        model.compute_metrics(None, labels, np.full((1, classes), 1 / classes, np.float32), None)
    model.reset_metrics()


def best_checkpoint(path, best=float("inf")):
    """Keras' ModelCheckpoint of the lowest val_loss, starting from `best`
    (a resumed run's): a non-finite val_loss never counts as better. It
    writes beside `path` (staging_path); `promote_checkpoint` then moves
    the file into place in one step, so a crash mid-save keeps the previous
    best model loadable."""
    import keras

    return keras.callbacks.ModelCheckpoint(
        artifacts.staging_path(path), monitor="val_loss", save_best_only=True, initial_value_threshold=best
    )


def promote_checkpoint(path, announce=True):
    """A callback, after the checkpoint's: a model it just wrote replaces
    `path` (os.replace, atomic), and the epoch says so. (`train` first
    removes a staged file a killed process left, so one found here was
    written this epoch.)"""
    import keras

    def promote(epoch, logs=None):
        staged = artifacts.staging_path(path)
        if not os.path.exists(staged):
            return
        os.replace(staged, path)
        if announce:
            print(f"\nEpoch {epoch + 1}: val_loss improved to {(logs or {}).get('val_loss', float('nan')):.4f}, "
                  f"saved {path}")

    return keras.callbacks.LambdaCallback(on_epoch_end=promote)


def discard_staged_checkpoint(path):
    """Removes the checkpoint's staging file beside `path` (our own name,
    artifacts.staging_path), which only a process killed while saving
    leaves behind: it is half written (measured: 0 bytes). Left in place,
    promote_checkpoint moved it over the good best model at the resumed
    run's first epoch, improved or not, and an unreadable model was published."""
    staged = artifacts.staging_path(path)
    if os.path.isfile(staged) and not os.path.islink(staged):
        os.remove(staged)


def majority_share(labels):
    """The accuracy of always answering the most common of `labels` (None
    when there are none): what a model must beat to have learned anything."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / counts.sum()) if counts.size else None


# Keras' accuracy is a float32: 12 right of 36 logs 0.33333334, above the
# float64 share 1/3. Beating chance takes at least one more right image.
CHANCE_TOLERANCE = 1e-6


def until_above_chance(chance, early_stopping, reduce_lr):
    """A callback, before EarlyStopping and ReduceLROnPlateau: epochs whose
    val_accuracy is no better than `chance` (always answering the largest
    class) count for neither of them, until one epoch beats it. From
    scratch on a small folder, validation sits at chance for the first
    epochs while BatchNorm's moving statistics settle (measured: epochs
    1-6 of a 168-image texture set, benchmarks/small_data_bench.py) and its
    val_loss says nothing yet; counting those epochs stopped training
    before the model had learned anything. A model that beats chance from
    its first epoch (pretrained weights, as a rule) stops exactly as before."""
    import keras

    state = {"above": False, "held": 0}

    def hold(epoch, logs=None):
        if state["above"]:
            return
        accuracy = (logs or {}).get("val_accuracy")
        if accuracy is None or chance is None or accuracy > chance + CHANCE_TOLERANCE:
            state["above"] = True
            if state["held"]:
                # Both count from this epoch on, its val_loss the one to beat
                # (EarlyStopping's best is still None: it skipped the others).
                reduce_lr.best = None
            return
        state["held"] += 1
        # EarlyStopping skips the epochs before start_from_epoch; a
        # ReduceLROnPlateau in cooldown does not count an epoch as waiting.
        early_stopping.start_from_epoch = epoch + 1
        reduce_lr.cooldown_counter = max(reduce_lr.cooldown_counter, 2)

    return keras.callbacks.LambdaCallback(on_epoch_end=hold)


def phase_callbacks(plan, checkpoint, point, model):
    """Keras' callbacks of one training phase (fresh each phase and on
    resume, as model.fit would have them; `checkpoint` carries the best
    val_loss across both phases), then the resume point of `point`'s phase
    after every epoch. Order matters: ReduceLROnPlateau adds the learning
    rate to the logs the CSV records; the resume point comes last, once
    all is written."""
    import keras

    reduce_lr = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.2, patience=max(1, plan.patience // 2), min_lr=1e-7,
        verbose=1 if plan.chief else 0,
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=plan.patience, restore_best_weights=True, verbose=1 if plan.chief else 0
    )
    callbacks = [
        until_above_chance(plan.chance_accuracy, early_stopping, reduce_lr),
        reduce_lr,
        keras.callbacks.CSVLogger(plan.history_path, append=True),
        checkpoint,
        promote_checkpoint(plan.best_model_path, announce=plan.chief),
        early_stopping,
        # A diverged run (NaN loss) stops at once; it never becomes the
        # published model (main.py checks that a best model was saved).
        keras.callbacks.TerminateOnNaN(),
        resume.resume_callback(plan.resume_folder, model, point, checkpoint),
    ]
    if plan.tensorboard_dir:
        # write_graph needs model.fit's train function, which a multi-worker loop has not.
        callbacks.append(keras.callbacks.TensorBoard(log_dir=plan.tensorboard_dir, write_graph=False))
    return callbacks


def announce_fine_tuning(next_epoch, unfrozen, plan):
    print(
        f"Fine-tuning from epoch {next_epoch + 1}: {unfrozen} backbone layers "
        f"unfrozen, learning rate {plan.learning_rate / 10:g}",
        flush=True,
    )


class OneMachine:
    """How `train` compiles, unfreezes and fits on one machine: model.fit.
    multiworker.Workers' training does the same three over several workers."""

    def start(self, model, plan, point):
        """Readies `model` for the phase of `point` (None: a new run). A
        resumed model was loaded compiled, optimizer state included."""
        if point is None:
            compile_model(model, plan.learning_rate, plan.jit_compile, plan.loss)
        else:
            build_training_state(model, one_hot=bool(plan.one_hot))

    def unfreeze(self, model, plan):
        """Unfreezes the backbone's top layers and recompiles at lr / 10;
        returns how many layers became trainable."""
        unfrozen = model_builder.unfreeze_top_layers(model, plan.fine_tune_layers)
        compile_model(model, plan.learning_rate / 10, plan.jit_compile, plan.loss)
        return unfrozen

    def fit(self, model, train_data, val_data, plan, callbacks, first_epoch, last_epoch):
        """Runs model.fit over epochs [first_epoch, last_epoch); returns the
        number of epochs actually run (early stopping may end it sooner)."""
        if first_epoch >= last_epoch:
            return 0
        if plan.one_hot:
            import tensorflow as tf

            val_data = val_data.map(lambda images, labels: (images, tf.one_hot(labels, plan.one_hot)))
        history = model.fit(
            train_data,
            validation_data=val_data,
            epochs=last_epoch,
            initial_epoch=first_epoch,
            steps_per_epoch=plan.steps_per_epoch,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            class_weight=plan.class_weight,
            callbacks=callbacks,
            # Live progress bars on a terminal, one line per epoch in logs.
            verbose=1 if sys.stdout.isatty() else 2,
        )
        return len(history.epoch)


def train(model, train_data, val_data, plan, point=None, machine=None):
    """Trains in up to two phases and returns the model.

    Phase "head": the head (or, from scratch, the whole network) for
    `plan.epochs`. Phase "finetune" (pretrained only): the backbone's last
    `plan.fine_tune_layers` layers unfrozen at a 10x lower learning rate for
    `plan.fine_tune_epochs`. Epochs are numbered across both phases, so the
    history CSV is one continuous table. `point` is the resume.ResumePoint
    of an interrupted run (None: a new one); `machine` compiles, unfreezes
    and fits (OneMachine, or a multi-worker run's).
    """
    machine = machine or OneMachine()
    best = point.best_val_loss if point else float("inf")
    discard_staged_checkpoint(plan.best_model_path)
    checkpoint = best_checkpoint(plan.best_model_path, best)
    next_epoch = point.epoch + 1 if point else 0
    point = point or resume.ResumePoint(
        stamp=plan.stamp, history_path=plan.history_path, phase="head", epoch=-1,
        best_val_loss=best, model_file="",
    )
    machine.start(model, plan, None if next_epoch == 0 else point)
    if point.phase == "head":
        callbacks = phase_callbacks(plan, checkpoint, point, model)
        next_epoch += machine.fit(model, train_data, val_data, plan, callbacks, next_epoch, plan.epochs)
        if not plan.fine_tunes:
            return model
        unfrozen = machine.unfreeze(model, plan)
        if plan.chief:
            announce_fine_tuning(next_epoch, unfrozen, plan)
        point = dataclasses.replace(point, phase="finetune", finetune_start=next_epoch)
        # The phase boundary is a resume point too: it holds the best head
        # weights that fine-tuning starts from.
        resume.save_resume_point(
            plan.resume_folder, model,
            dataclasses.replace(point, epoch=next_epoch - 1, best_val_loss=float(checkpoint.best)),
        )
    callbacks = phase_callbacks(plan, checkpoint, point, model)
    machine.fit(model, train_data, val_data, plan, callbacks, next_epoch, point.finetune_start + plan.fine_tune_epochs)
    return model


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


# ---------------------------------------------------------------- the plan and the seed


def seed_everything(options):
    """Python's, NumPy's and TensorFlow's seeds from --seed, and with
    --deterministic 1 TensorFlow's deterministic kernels: the same seed then
    gives the same weights, batches, augmentation and metrics, to the last
    digit, on the same machine and software."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(options.seed)
    if options.deterministic:
        tf.config.experimental.enable_op_determinism()


def training_plan_line(options):
    """What --epochs means for this run, in its first lines: with pretrained
    weights the fine-tuning epochs come on top."""
    stopping = f"early stopping after {options.patience} epochs without a better val_loss"
    if options.weights == "none":
        return f"up to {options.epochs} epochs from scratch ({stopping})"
    if options.fine_tune_epochs:
        return (f"up to {options.epochs} epochs with the backbone frozen, then up to {options.fine_tune_epochs} "
                f"fine-tuning its last {options.fine_tune_layers} layers ({stopping})")
    return f"up to {options.epochs} epochs with the backbone frozen, no fine-tuning ({stopping})"


def training_record(history_path, seconds, resumed):
    """What a run config records of its training: seconds of this
    invocation's training (a resumed run: since it resumed), epochs, the
    best epoch (1-based, lowest val_loss, the saved model's) and its
    val_loss, and whether it was resumed."""
    losses = read_history(history_path)["val_loss"]
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else None
    return {
        "seconds": round(seconds, 1),
        "epochs": int(len(losses)),
        "best_epoch": None if best is None else best + 1,
        "best_val_loss": None if best is None else float(losses[best]),
        "resumed": resumed,
    }
