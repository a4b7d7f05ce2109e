"""Training, and only training: the device, class weights, callbacks, the
two phases and resuming an interrupted run.

main.py is its one user. Evaluation metrics and prediction live in
evaluate.py; file names and safe writes in artifacts.py.
"""

import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import sys

import numpy as np

import artifacts
import data_loader
from config import Stop, UserError

RESUME_STATE = "state.json"


# ---------------------------------------------------------------- device

# The TF_CONFIG jobs that train: MultiWorkerMirroredStrategy's. Parameter
# servers and evaluators belong to other strategies.
WORKER_JOBS = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place among the workers TF_CONFIG names."""

    task_type: str  # "chief" or "worker", as in TF_CONFIG
    task_index: int
    worker_index: int  # 0 for the chief (or worker 0 when there is none)
    addresses: tuple  # every worker's host:port, chief first

    @property
    def num_workers(self):
        return len(self.addresses)

    @property
    def is_chief(self):
        return self.worker_index == 0

    @property
    def name(self):
        return f"{self.task_type} {self.task_index}"


def cluster_from_environment(environ=None):
    """This process's Cluster from the standard TF_CONFIG variable, or None
    when it names at most one worker (one machine: model.fit's path).
    Raises UserError for a TF_CONFIG this project cannot train with."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise UserError(f"TF_CONFIG is not JSON ({error}). Received: TF_CONFIG={text}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(tasks, list) for tasks in cluster.values()):
        raise UserError(
            'TF_CONFIG needs a "cluster" object mapping "chief"/"worker" to lists of '
            f'"host:port". Received: TF_CONFIG={text}'
        )
    others = sorted(set(cluster) - set(WORKER_JOBS))
    if others or len(cluster.get("chief", [])) > 1:
        raise UserError(
            "TF_CONFIG: only one chief and workers train here (MultiWorkerMirroredStrategy); "
            f"remove {', '.join(others) or 'the extra chiefs'}. Received: TF_CONFIG={text}"
        )
    chiefs = len(cluster.get("chief", []))
    addresses = tuple(cluster.get("chief", [])) + tuple(cluster.get("worker", []))
    if len(addresses) <= 1:
        return None
    task = spec.get("task")
    task_type = task.get("type") if isinstance(task, dict) else None
    task_index = task.get("index") if isinstance(task, dict) else None
    if task_type not in WORKER_JOBS or not isinstance(task_index, int) or not 0 <= task_index < len(
        cluster.get(task_type, [])
    ):
        raise UserError(
            'TF_CONFIG: "task" must name this process among the cluster\'s tasks, e.g. '
            f'{{"type": "worker", "index": 0}}. Received: task={json.dumps(task)}'
        )
    worker_index = task_index if task_type == "chief" else chiefs + task_index
    return Cluster(task_type, task_index, worker_index, addresses)


def make_strategy(cluster=None):
    """The run's tf.distribute strategy. Call it before anything else starts
    TensorFlow: MultiWorkerMirroredStrategy sets up its collectives at
    start-up, and GPU memory growth is set before the GPUs are used.

    MultiWorkerMirroredStrategy for a Cluster (it waits here until every
    worker has started); MirroredStrategy over this machine's GPUs when it
    has several, or over several logical CPUs a caller set up (as the tests
    do); otherwise TensorFlow's default strategy (one device).
    """
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialized
            tf.config.experimental.set_memory_growth(gpu, True)
    if cluster is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


@dataclasses.dataclass(frozen=True)
class DeviceSetup:
    strategy: object
    num_gpus: int
    mixed_precision: bool
    jit_compile: bool
    workers: object = None  # Workers of a multi-worker run; None: one machine

    @property
    def cluster(self):
        """This process's Cluster, or None on one machine."""
        return None if self.workers is None else self.workers.cluster

    @property
    def is_chief(self):
        """Whether this process writes the run's files (always, on one machine)."""
        return self.cluster is None or self.cluster.is_chief

    @property
    def num_workers(self):
        return 1 if self.cluster is None else self.cluster.num_workers

    def describe(self, batch_size=None):
        """One line: strategy, workers and replicas, device, precision, XLA
        and, given the per-replica `batch_size`, the global batch."""
        replicas = self.strategy.num_replicas_in_sync
        where = f"{self.num_gpus} GPU(s)" if self.num_gpus else "CPU"
        precision = "mixed_float16" if self.mixed_precision and self.num_gpus else (
            "mixed_bfloat16" if self.mixed_precision else "float32"
        )
        line = f"{where}, {precision}, XLA {'on' if self.jit_compile else 'off'}"
        if self.cluster is not None:
            workers = self.cluster.num_workers
            line = (
                f"MultiWorkerMirroredStrategy, {workers} workers x {replicas // workers} replica(s) "
                f"= {replicas} replicas, this is {self.cluster.name} "
                f"({'the chief' if self.cluster.is_chief else 'not the chief'}); {line}"
            )
        elif replicas > 1:
            line = f"MirroredStrategy, {replicas} replicas; {line}"
        else:
            line = f"one device, no distribution strategy; {line}"
        if batch_size is not None:
            line += f"; global batch {batch_size * replicas}"
            if replicas > 1:
                line += f" ({batch_size} per replica x {replicas})"
        return line


def configure_device(precision="auto", jit="auto", strategy=None, workers=None):
    """Picks the device, precision and XLA for training.

    With a GPU: memory growth on, mixed_float16 and XLA by default. On the
    CPU: float32 and no XLA by default (measured on 2 cores: mixed_bfloat16
    2x and XLA 7x slower). `strategy`: from `make_strategy`, made here when
    not given; `workers`: the Workers of a multi-worker run. Sets Keras' global dtype policy, so call it once,
    before building. Returns a DeviceSetup.
    """
    import keras
    import tensorflow as tf

    if strategy is None:
        strategy = make_strategy(None if workers is None else workers.cluster)
    gpus = tf.config.list_physical_devices("GPU")
    mixed = precision == "mixed" or (precision == "auto" and bool(gpus))
    jit_compile = jit == "1" or (jit == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy(
        ("mixed_float16" if gpus else "mixed_bfloat16") if mixed else "float32"
    )
    return DeviceSetup(strategy, len(gpus), mixed, jit_compile, workers)


# ---------------------------------------------------------------- each worker's share of the files


def worker_steps(num_files, num_workers, global_batch_size):
    """Steps per epoch when `num_workers` workers share `num_files` files
    (`worker_dataset_fn`): enough for the largest share to be read once.
    Every worker runs exactly this many, since each step is a collective."""
    per_worker_batch = global_batch_size // num_workers
    return max(1, math.ceil(math.ceil(num_files / num_workers) / per_worker_batch))


def worker_dataset_fn(
    paths,
    labels,
    image_size,
    global_batch_size,
    training=False,
    augment=None,
    seed=42,
    decoders=None,
    readers=None,
    cache=False,
):
    """A dataset function for `strategy.distribute_datasets_from_function`:
    each input pipeline (one per worker) reads only its share of the files,
    paths[i::n], through `make_dataset` at the per-replica batch size.

    The files are split before anything is read; tf.data's auto-sharding of
    a file-list dataset would read every file on every worker and drop most.
    Every worker must run `worker_steps` steps per epoch with full batches:
    a training share repeats (reshuffled each pass, seeded per worker); a
    validation share is padded with blank images labelled -1, which the
    training loop leaves out of its metrics. Arguments as data_loader.make_dataset.
    """
    paths, labels = list(paths), list(labels)
    decoders = list(decoders) if decoders is not None else data_loader.plan_decoders(paths, readers)

    def dataset_fn(input_context):
        worker, workers = input_context.input_pipeline_id, input_context.num_input_pipelines
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        replicas_here = input_context.num_replicas_in_sync // workers
        steps = worker_steps(len(paths), workers, global_batch_size)
        return data_loader.make_dataset(
            paths[worker::workers],
            labels[worker::workers],
            image_size,
            batch_size,
            training=training,
            augment=augment,
            seed=seed + worker,  # different shuffles and augmentations per worker
            decoders=decoders[worker::workers],
            readers=readers,
            cache=cache,
            repeat=training,
            pad_to=None if training else steps * replicas_here * batch_size,
        )

    return dataset_fn


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

    # The optimizer belongs to the strategy it is created under, and
    # MirroredStrategy refuses a model and optimizer of different ones.
    with model.distribute_strategy.scope():
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


def announce_fine_tuning(next_epoch, unfrozen, plan):
    print(
        f"Fine-tuning from epoch {next_epoch + 1}: {unfrozen} backbone layers "
        f"unfrozen, learning rate {plan.learning_rate / 10:g}",
        flush=True,
    )


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


def train(model, train_data, val_data, plan, state, resume=None, device=None):
    """Trains in up to two phases and returns the model.

    Phase "head": the head (or, from scratch, the whole network) for
    `plan.epochs`. Phase "finetune" (pretrained only): the backbone's last
    `plan.fine_tune_layers` layers unfrozen at a 10x lower learning rate for
    `plan.fine_tune_epochs`. Epochs are numbered across both phases, so the
    history CSV is one continuous table. `state` is saved with every resume
    point; `resume` is the state of an interrupted run whose model is
    already loaded (compiled, optimizer state included). With a `device`
    of several workers, `train_on_workers` does the same by hand.
    """
    if device is not None and device.cluster is not None:
        return train_on_workers(model, train_data, val_data, plan, state, device, resume)
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
        announce_fine_tuning(next_epoch, unfrozen, plan)
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


# ---------------------------------------------------------------- several workers
#
# Keras 3.15's model.fit fails under MultiWorkerMirroredStrategy on TF 2.21
# (keras-team/keras#20585, "...PerReplica... unsupported type"), so a run
# whose TF_CONFIG names several workers trains with the loop below: the
# phases, callback rules, checkpoints, history and resume points of the
# model.fit path above, by hand. Every worker runs every step and every
# save, in the same order (each step is a collective, and saving may read
# variables that sync across workers), and takes the same decisions from
# the same all-reduced numbers. Only the chief's files count: main.py
# points the other workers' paths into a scratch folder it deletes.


class WorkerLost(Stop):
    """Another worker of a multi-worker run stopped or cannot be reached."""


@contextlib.contextmanager
def worker_errors(cluster):
    """Turns the error TensorFlow raises on every worker when one of them
    stops (or cannot be reached) into one line, WorkerLost; the worker that
    stopped prints its own reason. Does nothing without a Cluster."""
    if cluster is None:
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.CancelledError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
    ) as error:
        text = str(error.message)
        found = re.search(r"aborted by: ([^\n]*)", text)
        reason = found.group(1) if found else " ".join(text.split())
        raise WorkerLost(
            f"{cluster.name} lost contact with another worker; the one that stopped "
            "says why in its own output. Once that is fixed, start every worker again (with "
            f"--resume once the run has completed an epoch). TensorFlow: {reason[:240]}"
        ) from None


class Workers:
    """The workers of a multi-worker run (a Cluster and its
    MultiWorkerMirroredStrategy) and the collective steps besides training
    steps: exchanging small values, giving every worker the chief's
    variables, averaging variables. Each is a collective step: every worker
    must make the same calls in the same order. Their tf.functions are kept
    here, so repeated calls (every epoch) do not trace again."""

    def __init__(self, strategy, cluster):
        self.strategy, self.cluster = strategy, cluster
        self._functions = {}

    def exchange(self, value):
        """Every worker's JSON-able `value`, in worker order (chief first)."""
        cluster = self.cluster
        mine = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8).astype(np.float32)
        lengths = np.zeros(cluster.num_workers, np.float32)
        lengths[cluster.worker_index] = len(mine)
        lengths = self._sum_over_workers(lengths).astype(int)
        ends = np.cumsum(lengths)
        buffer = np.zeros(int(ends[-1]), np.float32)  # float32 holds bytes exactly
        buffer[ends[cluster.worker_index] - len(mine) : ends[cluster.worker_index]] = mine
        data = self._sum_over_workers(buffer).astype(np.uint8).tobytes()
        return [json.loads(data[end - length : end].decode("utf-8")) for end, length in zip(ends, lengths)]

    def broadcast_from_chief(self, variables):
        """Gives every worker the chief's values of `variables`."""
        self._assign(variables, "sum", "chief")

    def average(self, variables):
        """Sets `variables` to their mean over every replica of every worker."""
        self._assign(variables, "mean", "all")

    def _sum_over_workers(self, array):
        """A float32 vector summed over the workers (one replica of each)."""
        import tensorflow as tf

        if "exchange" not in self._functions:
            per_worker = self.strategy.num_replicas_in_sync // self.cluster.num_workers

            def replica_fn(vector):
                context = tf.distribute.get_replica_context()
                first_here = context.replica_id_in_sync_group % per_worker == 0
                return context.all_reduce("sum", tf.where(first_here, vector, tf.zeros_like(vector)))

            self._functions["exchange"] = tf.function(
                lambda vector: self.strategy.run(replica_fn, args=(vector,)),
                input_signature=[tf.TensorSpec([None], tf.float32)],
            )
        result = self._functions["exchange"](tf.constant(array))
        return self.strategy.experimental_local_results(result)[0].numpy()

    def _assign(self, variables, op, source):
        """Sets `variables` to their `op` ("sum" or "mean") over the replicas:
        with source "chief", only the chief's first replica adds its values."""
        import tensorflow as tf

        key = (op, source, tuple(id(variable) for variable in variables))
        if key not in self._functions:

            def replica_fn():
                context = tf.distribute.get_replica_context()
                chosen = context.replica_id_in_sync_group == 0 if source == "chief" else True
                values = [tf.convert_to_tensor(variable) for variable in variables]
                values = [tf.where(chosen, value, tf.zeros_like(value)) for value in values]
                # One all-reduce per dtype: it packs its tensors into one.
                results = list(values)
                for dtype in dict.fromkeys(value.dtype for value in values):
                    positions = [i for i, value in enumerate(values) if value.dtype == dtype]
                    reduced = context.all_reduce(op, [values[i] for i in positions])
                    for position, value in zip(positions, reduced):
                        results[position] = value
                return results

            self._functions[key] = tf.function(lambda: self.strategy.run(replica_fn))
        results = self._functions[key]()
        for variable, result in zip(variables, results):
            variable.assign(self.strategy.experimental_local_results(result)[0])


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


@dataclasses.dataclass(frozen=True)
class WorkerData:
    """A split spread over the workers: this worker's share (a tf.data
    dataset of per-replica batches), the steps every worker runs per epoch
    (worker_steps) and the global batch size (images per step
    over all replicas)."""

    dataset: object
    steps: int
    global_batch_size: int


def distribute(device, dataset_fn, steps, global_batch_size):
    """WorkerData from a worker_dataset_fn function, called with
    this worker's InputContext as distribute_datasets_from_function would.

    The step functions feed its batches to the replicas themselves: on the
    CPU, the iterator of a distributed dataset under
    MultiWorkerMirroredStrategy halved training speed (measured here: 88 vs
    177 images/s, the same step fed by a plain tf.data iterator)."""
    import tensorflow as tf

    context = tf.distribute.InputContext(
        num_input_pipelines=device.num_workers,
        input_pipeline_id=device.cluster.worker_index,
        num_replicas_in_sync=device.strategy.num_replicas_in_sync,
    )
    return WorkerData(dataset_fn(context), steps, global_batch_size)


def _improves(value, best, min_delta):
    """Keras' test for a lower val_loss (MonitorCallback._is_improvement)."""
    return best is None or value + min_delta < best


@dataclasses.dataclass
class Plateau:
    """ReduceLROnPlateau's and EarlyStopping's rules on val_loss, as
    `phase_callbacks` sets them up, in plain Python for the multi-worker
    loop: one per phase, fresh on resume, like the callbacks."""

    patience: int  # EarlyStopping's
    lr_patience: int  # ReduceLROnPlateau's
    factor: float = 0.2
    min_lr: float = 1e-7
    lr_min_delta: float = 1e-4  # ReduceLROnPlateau's default; EarlyStopping's is 0
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0
    lr_best: float | None = None
    lr_wait: int = 0

    def update(self, epoch, val_loss, learning_rate):
        """After an epoch: (improved, new learning rate or None, stop).
        `improved`: a new best val_loss, whose weights early stopping
        restores at the end of the phase."""
        new_rate = None
        if _improves(val_loss, self.lr_best, self.lr_min_delta):
            self.lr_best, self.lr_wait = val_loss, 0
        else:
            self.lr_wait += 1
            if self.lr_wait >= self.lr_patience and learning_rate > np.float32(self.min_lr):
                new_rate = max(learning_rate * self.factor, self.min_lr)
                self.lr_wait = 0
        self.wait += 1
        improved = _improves(val_loss, self.best, 0.0)
        if improved:
            self.best, self.best_epoch, self.wait = val_loss, epoch, 0
        return improved, new_rate, not improved and self.wait >= self.patience and epoch > 0


# The columns of history.csv, as CSVLogger writes them: epoch, then the
# logs' names sorted.
HISTORY_COLUMNS = ("epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss")


def append_history(path, epoch, logs):
    """Adds one epoch's row to history.csv (written whole, atomically)."""
    rows = []
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if row]
    rows = rows or [list(HISTORY_COLUMNS)]
    rows.append([epoch] + [float(logs[name]) for name in HISTORY_COLUMNS[1:]])
    artifacts.write_csv(path, rows)


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


class WorkerTraining:
    """model.fit and the callbacks of `phase_callbacks`, by hand, on every
    worker: one instance for a run's phases (the best val_loss carries over
    from the head to fine-tuning, as BestModelCheckpoint's does)."""

    def __init__(self, model, train_data, val_data, plan, device, best_val_loss):
        self.model, self.plan, self.device = model, plan, device
        self.train_data, self.val_data = train_data, val_data
        self.best_val_loss = best_val_loss

    def phase(self, phase, state, first_epoch, last_epoch):
        """Trains over epochs [first_epoch, last_epoch); returns the number of
        epochs run (early stopping or a non-finite loss may end it sooner)."""
        if first_epoch >= last_epoch:
            return 0
        steps = step_functions(
            self.model, self.device, self.train_data.global_batch_size, self.plan.class_weight, self.plan.jit_compile
        )
        iterator = iter(self.train_data.dataset)  # endless: each epoch takes its steps
        plateau = Plateau(self.plan.patience, max(1, self.plan.patience // 2))
        best_weights, epochs = None, 0
        for epoch in range(first_epoch, last_epoch):
            logs, finite = self._epoch(epoch, last_epoch, steps, iterator)
            epochs += 1
            improved, new_rate, stop = plateau.update(epoch, logs["val_loss"], logs["learning_rate"])
            if new_rate is not None:
                self.model.optimizer.learning_rate = new_rate
                print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_rate}.")
            append_history(self.plan.history_path, epoch, logs)
            self._write_tensorboard(epoch, logs)
            self._checkpoint(epoch, logs["val_loss"])
            if improved:
                best_weights = self.model.get_weights()
            state_now = {**state, "phase": phase, "epoch": epoch, "best_val_loss": self.best_val_loss}
            save_resume_point(self.plan.resume_folder, self.model, state_now)
            if stop:
                print(f"Epoch {epoch + 1}: early stopping")
            if stop or not finite:
                break
        if best_weights is not None:
            print(f"Restoring model weights from the end of the best epoch: {plateau.best_epoch + 1}.")
            self.model.set_weights(best_weights)
        return epochs

    def _epoch(self, epoch, last_epoch, steps, iterator):
        """One epoch: the training steps, then validation. Returns (logs,
        whether the training loss stayed finite)."""
        import keras

        train_step, val_step = steps
        print(f"Epoch {epoch + 1}/{last_epoch}", flush=True)
        progress = keras.utils.Progbar(
            self.train_data.steps, verbose=1 if sys.stdout.isatty() else 2, stateful_metrics=HISTORY_COLUMNS
        )
        totals, finite = np.zeros(3), True
        for step in range(self.train_data.steps):
            batch = train_step(iterator).numpy()
            totals += batch
            if not np.isfinite(batch[0]):  # TerminateOnNaN's rule
                print(f"Batch {step}: Invalid loss, terminating training")
                finite = False
                break
            running = [("accuracy", totals[1] / totals[2]), ("loss", totals[0] / totals[2])]
            progress.update(step + 1, running, finalize=False)  # the line ends after validation
        average_batchnorm(self.device.workers, self.model)
        validation = np.zeros(3)
        val_iterator = iter(self.val_data.dataset)
        for _ in range(self.val_data.steps):
            validation += val_step(val_iterator).numpy()
        logs = {
            "accuracy": totals[1] / totals[2],
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "loss": totals[0] / totals[2],
            "val_accuracy": validation[1] / validation[2],
            "val_loss": validation[0] / validation[2],
        }
        progress.update(self.train_data.steps, list(logs.items()), finalize=True)
        return logs, finite

    def _checkpoint(self, epoch, value):
        """BestModelCheckpoint's rule. Every worker saves (see above); only
        the chief's path is the run's."""
        if not np.isfinite(value) or value >= self.best_val_loss:
            return
        if self.device.is_chief:
            print(
                f"\nEpoch {epoch + 1}: val_loss improved from {self.best_val_loss:.4f} "
                f"to {value:.4f}, saving {self.plan.best_model_path}"
            )
        self.best_val_loss = float(value)
        artifacts.save_model(self.model, self.plan.best_model_path)

    def _write_tensorboard(self, epoch, logs):
        """The epoch scalars Keras' TensorBoard callback writes."""
        if not self.plan.tensorboard_dir:
            return
        import tensorflow as tf

        for folder, prefix, names in (("train", "", ("accuracy", "loss", "learning_rate")), ("validation", "val_", ("accuracy", "loss"))):
            writer = tf.summary.create_file_writer(os.path.join(self.plan.tensorboard_dir, folder))
            with writer.as_default():
                for name in names:
                    tf.summary.scalar(f"epoch_{name}", logs[prefix + name], step=epoch)
            writer.close()


def train_on_workers(model, train_data, val_data, plan, state, device, resume=None):
    """`train` on several workers: the same phases, rules and files, with
    WorkerData for `train_data` and `val_data`. Every worker calls it with
    the same arguments, but a non-chief's plan points into its scratch
    folder. `model` is freshly built on every worker (creating variables is
    a collective step); resuming, it takes the chief's saved state."""
    strategy = device.strategy
    phase = resume["phase"] if resume else "head"
    next_epoch = resume["epoch"] + 1 if resume else 0
    with strategy.scope():  # the optimizer's variables are the strategy's too
        if phase == "finetune":
            from model_builder import unfreeze_top_layers

            unfreeze_top_layers(model, plan.fine_tune_layers)
        compile_model(model, plan.learning_rate / (10 if phase == "finetune" else 1), plan.jit_compile)
        model.optimizer.build(model.trainable_variables)
    if resume:
        restore_on_workers(model, device, os.path.join(plan.resume_folder, resume["model_file"]))
        print(f"    resuming after epoch {resume['epoch'] + 1} ({phase}), the chief's saved state")
    training = WorkerTraining(
        model, train_data, val_data, plan, device, resume["best_val_loss"] if resume else float("inf")
    )
    if phase == "head":
        next_epoch += training.phase("head", state, next_epoch, plan.epochs)
        if not (plan.pretrained and plan.fine_tune_epochs > 0):
            return model
        with strategy.scope():
            unfrozen = unfreeze_for_fine_tuning(model, plan)
            model.optimizer.build(model.trainable_variables)
        announce_fine_tuning(next_epoch, unfrozen, plan)
        state = {**state, "finetune_start": next_epoch}
        save_resume_point(
            plan.resume_folder,
            model,
            {**state, "phase": "finetune", "epoch": next_epoch - 1, "best_val_loss": training.best_val_loss},
        )
    training.phase("finetune", state, next_epoch, state["finetune_start"] + plan.fine_tune_epochs)
    return model


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
