"""How a model is trained, on one machine or several: Keras' callbacks, the
two phases (head, then fine-tuning), the per-epoch history, and the machine
that compiles, unfreezes and fits.

`train` runs the phases with Keras' own callbacks (ModelCheckpoint,
EarlyStopping, ReduceLROnPlateau, CSVLogger, TensorBoard, TerminateOnNaN)
plus a resume point after every epoch (resume.py), on a machine
(`machine_for`): `OneMachine` fits with model.fit; `WorkerMachine`, for a
run whose TF_CONFIG names several workers, fits with a step of our own
under `strategy.run`, because Keras 3.15's model.fit fails under
MultiWorkerMirroredStrategy on TF 2.21 (keras-team/keras#20585,
"...PerReplica... unsupported type"), driving the same callbacks through
keras.callbacks.CallbackList as the Keras guide "Writing a training loop
from scratch" does. Every worker runs every step and every save, in the
same order (each step is a collective, and saving may read variables that
sync across workers), and takes the same decisions from the same
all-reduced numbers; whether to stop is agreed by all. The machine also
says where a run's model and batches come from (a resumed model, a
worker's share of the files). Evaluation and prediction live in
inference.py and metrics.py; file names and safe writes in artifacts.py.
"""

import csv
import dataclasses
import os
import sys
import time

import numpy as np

import artifacts
import data_loader
import model_builder
import resume
from errors import UserError


# --ema's average spans about this many epochs: momentum 1 - 1/(2 x the
# steps of an epoch), between 0.9 and 0.9999. A fixed 0.99 (a memory of
# about 100 steps) spans 20 epochs of a 160-image folder at batch 32, and
# the average lagged so far behind that test accuracy fell from 0.50
# without it to 0.26 (25 epochs, 32 px, from scratch); timm's 0.9998 suits
# ImageNet's ~10,000 steps per epoch, not these.
EMA_EPOCHS = 2


def ema_momentum(epoch_steps):
    """--ema's momentum for epochs of `epoch_steps` steps (EMA_EPOCHS)."""
    return float(min(0.9999, max(0.9, 1 - 1 / (EMA_EPOCHS * epoch_steps))))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the optimizer steps (--schedule, --warmup_epochs, --weight_decay,
    --ema); the defaults are plain Adam at a rate ReduceLROnPlateau lowers."""

    schedule: str = "plateau"  # or "cosine": CosineDecay over each phase, after a linear warm-up
    warmup_epochs: int = 0
    weight_decay: float = 0.0  # > 0: AdamW
    ema: bool = False  # the weights' moving average validated, saved and published


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
    # The loss (training_loss): with one-hot labels (its number of classes,
    # 0: integer labels), validation batches are one-hot too.
    loss: object = "sparse_categorical_crossentropy"
    one_hot: int = 0
    steps_per_epoch: int | None = None  # an endless (oversampled) training stream's epoch
    chance_accuracy: float | None = None  # val accuracy of always answering its largest class
    recipe: Recipe = Recipe()
    epoch_steps: int = 1  # training steps in one epoch: the cosine schedule's unit

    @property
    def fine_tunes(self):
        return self.pretrained and self.fine_tune_epochs > 0


def training_loss(num_classes, alpha=None, label_smoothing=0.0, mixing=False, multi_label=False):
    """(loss, one_hot) for model.compile: Keras' sparse categorical
    crossentropy on integer labels when nothing needs more; otherwise
    one-hot labels (one_hot = num_classes) and CategoricalCrossentropy with
    `label_smoothing`, or with `alpha` (per-class weights, --balance focal)
    CategoricalFocalCrossentropy (gamma 2). Mixed labels (--mixup,
    --cutmix) are one-hot too. `multi_label`: the labels are multi-hot
    already (one_hot 0) and the loss is Keras' binary cross-entropy, each
    label its own sigmoid (BinaryFocalCrossentropy, gamma 2, with `alpha`
    given: --balance focal)."""
    import keras

    if multi_label:
        if alpha is not None:
            return keras.losses.BinaryFocalCrossentropy(gamma=2.0, label_smoothing=label_smoothing), 0
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing), 0
    if alpha is not None:
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=[float(value) for value in alpha], gamma=2.0, label_smoothing=label_smoothing
        ), num_classes
    if label_smoothing or mixing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing), num_classes
    return "sparse_categorical_crossentropy", 0


def make_optimizer(learning_rate, epochs=1, epoch_steps=1, recipe=Recipe()):
    """The optimizer of one phase of `epochs` epochs of `epoch_steps` steps:
    Adam, or with recipe.weight_decay > 0 AdamW (Keras' decoupled weight
    decay, on every weight); with recipe.ema Keras' own moving average of
    the weights (use_ema, at ema_momentum(epoch_steps); SwapEMAWeights puts
    it in the model for validation and saving). With the cosine schedule the rate is
    Keras' CosineDecay: from 0 up to `learning_rate` linearly over
    recipe.warmup_epochs (at most the phase's epochs less one), then down to
    0 over the phase's other epochs; it is part of the optimizer's saved
    config and counts its saved `iterations`, so a resumed run continues
    it where it was."""
    import keras

    rate = learning_rate
    if recipe.schedule == "cosine":
        warmup = min(recipe.warmup_epochs, max(0, epochs - 1)) * epoch_steps
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else learning_rate,
            decay_steps=max(1, epochs * epoch_steps - warmup),
            warmup_target=learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    averaging = {"use_ema": True, "ema_momentum": ema_momentum(epoch_steps)} if recipe.ema else {}
    if recipe.weight_decay > 0:
        return keras.optimizers.AdamW(rate, weight_decay=recipe.weight_decay, **averaging)
    return keras.optimizers.Adam(rate, **averaging)


def phase_optimizer(plan, finetune=False):
    """make_optimizer for a phase of `plan`: the head's at the learning
    rate over plan.epochs, fine-tuning's at a tenth of it over
    plan.fine_tune_epochs (its own warm-up and cosine)."""
    if finetune:
        return make_optimizer(plan.learning_rate / 10, plan.fine_tune_epochs, plan.epoch_steps, plan.recipe)
    return make_optimizer(plan.learning_rate, plan.epochs, plan.epoch_steps, plan.recipe)


def compile_model(model, learning_rate, jit_compile, loss="sparse_categorical_crossentropy", new_optimizer=None):
    """Compiles `model` with the optimizer `new_optimizer()` returns (None:
    Adam at `learning_rate`), made under the model's strategy, and builds
    its training state now (build_training_state)."""
    import keras

    # The optimizer belongs to the strategy it is created under, and
    # MirroredStrategy refuses a model and optimizer of different ones.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=new_optimizer() if new_optimizer else keras.optimizers.Adam(learning_rate),
            loss=loss,
            metrics=[accuracy_metric(loss)],
            jit_compile=jit_compile,
        )
        build_training_state(model, one_hot=not isinstance(loss, str))


def accuracy_metric(loss):
    """The "accuracy" a run logs: with a binary loss (multi-label), Keras'
    BinaryAccuracy (the share of right yes/no answers over every image and
    label; Keras would pick categorical accuracy for multi-hot labels),
    else the accuracy Keras picks from the labels."""
    import keras

    if isinstance(loss, (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)):
        return keras.metrics.BinaryAccuracy(name="accuracy")
    return "accuracy"


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
    when there are none): what a model must beat to have learned anything.
    Multi-hot labels: the binary accuracy of answering each label's more
    common value (absent, as a rule)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if not len(labels):
            return None
        present = labels.mean(axis=0)
        return float(np.mean(np.maximum(present, 1 - present)))
    counts = np.bincount(labels.astype(np.int64))
    return float(counts.max() / counts.sum()) if counts.size else None


# Keras' accuracy is a float32: 12 right of 36 logs 0.33333334, above the
# float64 share 1/3. Beating chance takes at least one more right image.
CHANCE_TOLERANCE = 1e-6


def at_chance(accuracy, chance):
    """Whether a val_accuracy is no better than `chance` (majority_share)."""
    return accuracy is not None and chance is not None and accuracy <= chance + CHANCE_TOLERANCE


def epochs_at_chance(val_accuracy, chance):
    """How many of the first epochs (val_accuracy, in order) were at chance
    before one beat it: what the training curves mark."""
    count = 0
    while count < len(val_accuracy) and at_chance(val_accuracy[count], chance):
        count += 1
    return count


def chance_lines(epoch, accuracy, chance, held):
    """The run's log line when validation first sits at chance (`held` 0)
    or first leaves it after `held` epochs there: once each, so that the
    first epochs from scratch do not look broken."""
    if not held:
        return (f"Epoch {epoch + 1}: val_accuracy {accuracy:.4f} is no better than always answering the largest "
                f"class ({chance:.4f}): normal from scratch while BatchNorm's statistics settle (val_loss may climb "
                "meanwhile); epochs at chance count neither for early stopping nor for the learning-rate drop")
    return (f"Epoch {epoch + 1}: val_accuracy {accuracy:.4f} beats chance ({chance:.4f}) after {held} epoch(s) "
            "at it: early stopping and the learning-rate drop count from here")


def until_above_chance(chance, early_stopping, reduce_lr):
    """A callback, before EarlyStopping and ReduceLROnPlateau: epochs whose
    val_accuracy is no better than `chance` (always answering the largest
    class) count for neither of them, until one epoch beats it. From
    scratch on a small folder, validation sits at chance for the first
    epochs while BatchNorm's moving statistics settle (measured: epochs
    1-6 of a 168-image texture set, benchmarks/small_data_bench.py) and its
    val_loss says nothing yet; counting those epochs stopped training
    before the model had learned anything. A model that beats chance from
    its first epoch (pretrained weights, as a rule) stops exactly as before.
    `reduce_lr` is None with the cosine schedule (nothing to hold then)."""
    import keras

    state = {"above": False, "held": 0}

    def hold(epoch, logs=None):
        if state["above"]:
            return
        accuracy = (logs or {}).get("val_accuracy")
        if not at_chance(accuracy, chance):
            state["above"] = True
            if state["held"] and reduce_lr is not None:
                # Both count from this epoch on, its val_loss the one to beat
                # (EarlyStopping's best is still None: it skipped the others).
                reduce_lr.best = None
                if accuracy is not None:
                    print(chance_lines(epoch, accuracy, chance, state["held"]), flush=True)
            return
        if not state["held"]:
            print(chance_lines(epoch, accuracy, chance, 0), flush=True)
        state["held"] += 1
        # EarlyStopping skips the epochs before start_from_epoch; a
        # ReduceLROnPlateau in cooldown does not count an epoch as waiting.
        early_stopping.start_from_epoch = epoch + 1
        if reduce_lr is not None:
            reduce_lr.cooldown_counter = max(reduce_lr.cooldown_counter, 2)

    return keras.callbacks.LambdaCallback(on_epoch_end=hold)


def record_learning_rate(model):
    """A callback that adds the optimizer's learning rate (a schedule's,
    where the epoch ended) to the epoch's logs, as ReduceLROnPlateau does,
    so the history CSV has its learning_rate column with the cosine
    schedule too."""
    import keras

    def record(epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))

    return keras.callbacks.LambdaCallback(on_epoch_end=record)


class TimeBudget:
    """--time: training stops at the first epoch end after `seconds` of
    training (None: never), counted over both phases and, resuming, on top
    of `spent_before` (the seconds the run had trained before it was
    interrupted, saved with its resume point). `clock`: seconds, monotonic
    (tests give a fake one). `stopped_epoch` (0-based) and
    `stopped_seconds` are set once it stopped training."""

    def __init__(self, seconds=None, spent_before=0.0, clock=time.monotonic):
        self.seconds, self.spent_before, self.clock = seconds, spent_before, clock
        self.started = clock()
        self.stopped_epoch = self.stopped_seconds = None

    def spent(self):
        """Seconds of training so far, the interrupted ones included."""
        return self.spent_before + self.clock() - self.started

    def ends_at(self, epoch):
        """Whether the budget is spent at the end of `epoch` (then recorded
        as the epoch training stopped at)."""
        if self.seconds is None or self.spent() < self.seconds:
            return False
        if self.stopped_epoch is None:
            self.stopped_epoch, self.stopped_seconds = epoch, self.spent()
        return True

    def callback(self, model, announce=True):
        """The Keras callback that stops `model` training once spent."""
        import keras

        def check(epoch, logs=None):
            if self.ends_at(epoch):
                model.stop_training = True
                if announce:
                    print(f"\nEpoch {epoch + 1}: the --time budget of {self.seconds / 60:g} min is spent "
                          f"({self.stopped_seconds / 60:.1f} min): training stops", flush=True)

        return keras.callbacks.LambdaCallback(on_epoch_end=check)

    def line(self, epochs):
        """What the run's summary and training record say when the budget
        stopped training (None when it did not), `epochs` the most it had."""
        if self.stopped_epoch is None:
            return None
        return (f"stopped by --time {self.seconds / 60:g} after {self.stopped_seconds / 60:.1f} min "
                f"at epoch {self.stopped_epoch + 1} of {epochs}")


def phase_callbacks(plan, checkpoint, point, model, announce=True, budget=None):
    """Keras' callbacks of one training phase (fresh each phase and on
    resume, as model.fit would have them; `checkpoint` carries the best
    val_loss across both phases), then the resume point of `point`'s phase
    after every epoch; `announce`: whether they say what they do (a
    worker other than the chief keeps quiet); `budget`: the run's
    TimeBudget. Order matters: with --ema, SwapEMAWeights comes first, so
    validation, the checkpoint and early stopping's best weights are the
    averaged ones (the resume point puts the raw ones back while it saves);
    ReduceLROnPlateau (or, with the cosine schedule, record_learning_rate)
    adds the learning rate to the logs the CSV records; the resume point
    comes last, once all is written."""
    import keras

    budget = budget or TimeBudget()
    cosine = plan.recipe.schedule == "cosine"
    reduce_lr = None if cosine else keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.2, patience=max(1, plan.patience // 2), min_lr=1e-7,
        verbose=1 if announce else 0,
    )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=plan.patience, restore_best_weights=True, verbose=1 if announce else 0
    )
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True) if plan.recipe.ema else None
    callbacks = [
        *([swap] if swap else []),
        until_above_chance(plan.chance_accuracy, early_stopping, reduce_lr),
        record_learning_rate(model) if cosine else reduce_lr,
        keras.callbacks.CSVLogger(plan.history_path, append=True),
        checkpoint,
        promote_checkpoint(plan.best_model_path, announce=announce),
        early_stopping,
        # A diverged run (NaN loss) stops at once; it never becomes the
        # published model (main.py checks that a best model was saved).
        keras.callbacks.TerminateOnNaN(),
        budget.callback(model, announce),
        resume.resume_callback(plan.resume_folder, model, point, checkpoint, swap, budget.spent, plan.best_model_path),
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
    """How a run trains on one machine: its model (built, or the resumed
    one loaded), its batches (data_loader.make_dataset) and how `train`
    compiles, unfreezes and fits (model.fit). `device`: the
    devices.DeviceSetup, whose strategy the model is built under (None:
    TensorFlow's default). WorkerMachine does the same on several workers."""

    announces = True  # this process says what training does and saves

    def __init__(self, device=None):
        self.device = device

    def scope(self):
        """The strategy scope a model is built or loaded under."""
        import tensorflow as tf

        return (self.device.strategy if self.device else tf.distribute.get_strategy()).scope()

    def starting_model(self, build, resume_folder=None, point=None):
        """The model to train: `build()`, or resuming (`point`, the
        resume.ResumePoint) the model saved after its last epoch, loaded
        compiled with its optimizer state."""
        import keras

        with self.scope():
            if point is None:
                return build()
            path = os.path.join(resume_folder, point.model_file)
            model = keras.models.load_model(path)
        print(f"    resuming after epoch {point.epoch + 1} ({point.phase}) from {path}")
        return model

    def dataset(self, paths, labels, batch_size, **settings):
        """A split's batches for this machine (data_loader.make_dataset's
        keyword `settings`), `batch_size` over every replica."""
        return data_loader.make_dataset(paths, labels, batch_size=batch_size, **settings)

    def data_lines(self, train_data):
        """What the run prints about how its training batches are shared."""
        return []

    def start(self, model, plan, point):
        """Readies `model` for the phase of `point` (None: a new run). A
        resumed model was loaded compiled, optimizer state included."""
        if point is None:
            compile_model(model, plan.learning_rate, plan.jit_compile, plan.loss, lambda: phase_optimizer(plan))
        else:
            build_training_state(model, one_hot=bool(plan.one_hot))

    def unfreeze(self, model, plan):
        """Unfreezes the backbone's top layers and recompiles at lr / 10;
        returns how many layers became trainable."""
        unfrozen = model_builder.unfreeze_top_layers(model, plan.fine_tune_layers)
        compile_model(model, plan.learning_rate / 10, plan.jit_compile, plan.loss, lambda: phase_optimizer(plan, True))
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


def train(model, train_data, val_data, plan, point=None, machine=None, budget=None):
    """Trains in up to two phases and returns the model.

    Phase "head": the head (or, from scratch, the whole network) for
    `plan.epochs`. Phase "finetune" (pretrained only): the backbone's last
    `plan.fine_tune_layers` layers unfrozen at a 10x lower learning rate for
    `plan.fine_tune_epochs`. Epochs are numbered across both phases, so the
    history CSV is one continuous table. `point` is the resume.ResumePoint
    of an interrupted run (None: a new one); `machine` compiles, unfreezes
    and fits (OneMachine, or WorkerMachine on several workers); `budget`,
    the run's TimeBudget (--time), may stop it at any epoch end: no
    fine-tuning starts once it is spent.
    """
    machine = machine or OneMachine()
    budget = budget or TimeBudget()
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
        callbacks = phase_callbacks(plan, checkpoint, point, model, machine.announces, budget)
        next_epoch += machine.fit(model, train_data, val_data, plan, callbacks, next_epoch, plan.epochs)
        if not plan.fine_tunes or budget.ends_at(next_epoch - 1):
            return model
        unfrozen = machine.unfreeze(model, plan)
        if machine.announces:
            announce_fine_tuning(next_epoch, unfrozen, plan)
        point = dataclasses.replace(point, phase="finetune", finetune_start=next_epoch)
        # The phase boundary is a resume point too: it holds the best head
        # weights that fine-tuning starts from.
        resume.save_resume_point(
            plan.resume_folder, model,
            dataclasses.replace(point, epoch=next_epoch - 1, best_val_loss=float(checkpoint.best),
                                spent_seconds=budget.spent()),
        )
    callbacks = phase_callbacks(plan, checkpoint, point, model, machine.announces, budget)
    machine.fit(model, train_data, val_data, plan, callbacks, next_epoch, point.finetune_start + plan.fine_tune_epochs)
    return model


# ---------------------------------------------------------------- several workers


# BatchNormalization's moving statistics (Keras' variable names).
BATCHNORM_STATISTICS = ("moving_mean", "moving_variance")


def average_batchnorm(workers, model):
    """Each replica updates BatchNormalization's moving statistics from its
    own batches (Keras does not sync them); their mean, after every epoch,
    gives every worker the same model, so validation measures exactly the
    model the chief saves."""
    variables = [weight for weight in model.non_trainable_weights if weight.name in BATCHNORM_STATISTICS]
    if variables:
        workers.average(variables)


def restore_on_workers(model, device, path):
    """Resuming: the chief loads the resume model it saved at `path`
    (outside the strategy: plain variables, no collective), copies its
    weights and optimizer state into `model`, then every worker takes the
    chief's values. The other workers never read the file."""
    import keras

    if device.is_chief:
        saved = keras.models.load_model(path)
        model.set_weights(saved.get_weights())
        if len(saved.optimizer.variables) != len(model.optimizer.variables):
            raise RuntimeError(f"the optimizer saved in {path} does not match the model's")
        for variable, value in zip(model.optimizer.variables, saved.optimizer.variables):
            variable.assign(value)
    device.workers.broadcast_from_chief(model.weights + model.optimizer.variables)


def _correct(labels, probabilities, mask=None):
    import tensorflow as tf

    hits = tf.cast(tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels), tf.float32)
    return tf.reduce_sum(hits if mask is None else hits * mask)


def step_functions(model, device, global_batch_size, class_weight, jit_compile):
    """(train_step, val_step): tf.functions that take a distributed iterator,
    run one step on every replica and return [loss sum, correct, examples]
    summed over all replicas of all workers. Losses as model.fit's: class
    weights in training, averaged over the global batch; none in validation."""
    import keras
    import tensorflow as tf

    strategy = device.strategy
    weights = None
    if class_weight:
        weights = tf.constant([class_weight[number] for number in range(len(class_weight))], tf.float32)
    # A LossScaleOptimizer (mixed_float16 on GPUs) checks each replica's own
    # gradients for inf/NaN before they are all-reduced: summing them first
    # (divided, as the optimizer sums them again) makes every worker agree.
    aggregate_first = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

    def gradients_of(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            if weights is not None:
                per_example = per_example * tf.gather(weights, labels)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = model.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        count = tf.cast(tf.size(labels), tf.float32)
        return gradients, tf.stack([tf.reduce_sum(per_example), _correct(labels, probabilities), count])

    if jit_compile:
        gradients_of = tf.function(gradients_of, jit_compile=True)

    def train_replica(images, labels):
        gradients, totals = gradients_of(images, labels)
        if aggregate_first:
            context = tf.distribute.get_replica_context()
            gradients = context.all_reduce("sum", [g / context.num_replicas_in_sync for g in gradients])
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return totals

    def val_replica(images, labels):
        probabilities = model(images, training=False)
        mask = tf.cast(labels >= 0, tf.float32)  # -1: padding (worker_dataset_fn)
        labels = tf.maximum(labels, 0)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities) * mask
        return tf.stack([tf.reduce_sum(per_example), _correct(labels, probabilities, mask), tf.reduce_sum(mask)])

    here = strategy.num_replicas_in_sync // device.num_workers

    def next_batches(iterator):
        """One batch from this worker's share for each of its replicas."""
        batches = [next(iterator) for _ in range(here)]
        if here == 1:
            return batches[0]
        return strategy.experimental_distribute_values_from_function(
            lambda context: batches[context.replica_id_in_sync_group % here]
        )

    @tf.function
    def train_step(iterator):
        return strategy.reduce("sum", strategy.run(train_replica, args=next_batches(iterator)), axis=None)

    @tf.function
    def val_step(iterator):
        return strategy.reduce("sum", strategy.run(val_replica, args=next_batches(iterator)), axis=None)

    return train_step, val_step


class WorkerMachine:
    """How a run trains on several workers (`device`: a DeviceSetup with
    its Workers), as OneMachine on one: the same phases and callbacks as
    model.fit, with each worker's share of the training and validation
    files (data_loader.WorkerData) and a step of our own."""

    def __init__(self, device):
        self.device = device

    @property
    def announces(self):
        return self.device.is_chief

    def scope(self):
        return self.device.strategy.scope()

    def starting_model(self, build, resume_folder=None, point=None):
        """A freshly built model on every worker (creating variables is a
        collective step); resuming, `start` then gives every worker the
        chief's saved state."""
        with self.scope():
            return build()

    def dataset(self, paths, labels, batch_size, **settings):
        """This worker's share of a split (data_loader.worker_data)."""
        device = self.device
        return data_loader.worker_data(
            paths, labels, batch_size, device.cluster.worker_index, device.num_workers, device.replicas, **settings
        )

    def data_lines(self, train_data):
        return [train_data.describe(self.device.num_workers)]

    def start(self, model, plan, point):
        """Compiles the freshly built `model` under the strategy (the
        optimizer's variables are the strategy's too), unfrozen as in the
        phase of `point`; resuming, every worker then takes the chief's
        saved weights and optimizer state."""
        finetune = point is not None and point.phase == "finetune"
        with self.device.strategy.scope():
            if finetune:
                model_builder.unfreeze_top_layers(model, plan.fine_tune_layers)
            compile_model(model, plan.learning_rate / (10 if finetune else 1), plan.jit_compile,
                          new_optimizer=lambda: phase_optimizer(plan, finetune))
            model.optimizer.build(model.trainable_variables)
        if point is not None:
            restore_on_workers(model, self.device, os.path.join(plan.resume_folder, point.model_file))
            print(f"    resuming after epoch {point.epoch + 1} ({point.phase}), the chief's saved state")

    def unfreeze(self, model, plan):
        with self.device.strategy.scope():
            unfrozen = model_builder.unfreeze_top_layers(model, plan.fine_tune_layers)
            compile_model(model, plan.learning_rate / 10, plan.jit_compile, plan.loss,
                          lambda: phase_optimizer(plan, True))
            model.optimizer.build(model.trainable_variables)
        return unfrozen

    def fit(self, model, train_data, val_data, plan, callbacks, first_epoch, last_epoch):
        """Trains over epochs [first_epoch, last_epoch) with a step of our own
        under strategy.run, calling `callbacks` as model.fit does; returns
        the number of epochs run (early stopping or a non-finite loss may
        end it sooner: every worker agrees to stop)."""
        import keras

        if first_epoch >= last_epoch:
            return 0
        train_step, val_step = step_functions(
            model, self.device, train_data.global_batch_size, plan.class_weight, plan.jit_compile
        )
        iterator = iter(train_data.dataset)  # endless: each epoch takes its steps
        callback_list = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=True, model=model,
            epochs=last_epoch, steps=train_data.steps, verbose=1 if sys.stdout.isatty() else 2,
        )
        model.stop_training = False
        callback_list.on_train_begin()
        logs, epochs = {}, 0
        for epoch in range(first_epoch, last_epoch):
            callback_list.on_epoch_begin(epoch)
            totals = np.zeros(3)  # loss sum, correct, examples: over every replica of every worker
            for step in range(train_data.steps):
                callback_list.on_train_batch_begin(step)
                totals += train_step(iterator).numpy()
                callback_list.on_train_batch_end(step, {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]})
                if model.stop_training:  # TerminateOnNaN: the same all-reduced loss on every worker
                    break
            average_batchnorm(self.device.workers, model)
            validation = np.zeros(3)
            val_iterator = iter(val_data.dataset)
            for _ in range(val_data.steps):
                validation += val_step(val_iterator).numpy()
            logs = {
                "loss": totals[0] / totals[2],
                "accuracy": totals[1] / totals[2],
                "val_loss": validation[0] / validation[2],
                "val_accuracy": validation[1] / validation[2],
            }
            callback_list.on_epoch_end(epoch, logs)
            epochs += 1
            if any(self.device.workers.exchange(bool(model.stop_training))):
                break
        callback_list.on_train_end(logs)
        return epochs


def machine_for(device):
    """The machine a run trains on (`device`: its devices.DeviceSetup):
    WorkerMachine when TF_CONFIG names several workers, else OneMachine."""
    return OneMachine(device) if device.workers is None else WorkerMachine(device)


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


def seed_everything(seed, deterministic=True):
    """Python's, NumPy's and TensorFlow's seeds from --seed, and with
    --deterministic 1 TensorFlow's deterministic kernels: the same seed then
    gives the same weights, batches, augmentation and metrics, to the last
    digit, on the same machine and software."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def training_plan_line(epochs, patience, pretrained, fine_tune_epochs, fine_tune_layers):
    """What --epochs means for this run, in its first lines: with pretrained
    weights the fine-tuning epochs come on top. Early stopping is named
    only when it can stop a phase: one longer than `patience` epochs."""
    longest = max(epochs, fine_tune_epochs if pretrained else 0)
    stopping = f" (early stopping after {patience} epochs without a better val_loss)" if longest > patience else ""
    if not pretrained:
        return f"up to {epochs} epochs from scratch{stopping}"
    if fine_tune_epochs:
        return (f"up to {epochs} epochs with the backbone frozen, then up to {fine_tune_epochs} "
                f"fine-tuning its last {fine_tune_layers} layers{stopping}")
    return f"up to {epochs} epochs with the backbone frozen, no fine-tuning{stopping}"


def training_record(history_path, seconds, resumed, stopped=None):
    """What a run config records of its training: seconds of this
    invocation's training (a resumed run: since it resumed), epochs, the
    best epoch (1-based, lowest val_loss, the saved model's) and its
    val_loss, whether it was resumed, and with `stopped` (TimeBudget.line)
    that the --time budget stopped it."""
    losses = read_history(history_path)["val_loss"]
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else None
    record = {
        "seconds": round(seconds, 1),
        "epochs": int(len(losses)),
        "best_epoch": None if best is None else best + 1,
        "best_val_loss": None if best is None else float(losses[best]),
        "resumed": resumed,
    }
    if stopped:
        record["stopped"] = stopped
    return record
