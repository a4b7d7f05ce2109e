"""How several machines train one model: TF_CONFIG, MultiWorkerMirroredStrategy,
each worker's share of the files, and the training loop every worker runs.

Keras 3.15's model.fit fails under MultiWorkerMirroredStrategy on TF 2.21
(keras-team/keras#20585, "...PerReplica... unsupported type"), so a run
whose TF_CONFIG names several workers trains through train_utils.train with
`WorkerMachine` in place of model.fit: a step of our own under
`strategy.run`, driving Keras' own callbacks (ModelCheckpoint, EarlyStopping,
ReduceLROnPlateau, CSVLogger, TensorBoard, TerminateOnNaN, the resume point)
through keras.callbacks.CallbackList, as the Keras guide "Writing a training
loop from scratch" does. Every worker runs every step and every save, in the
same order (each step is a collective, and saving may read variables that
sync across workers), and takes the same decisions from the same all-reduced
numbers; whether to stop is agreed by all. Only the chief's files count: the
other workers' paths point into a scratch folder (`open_worker_run`),
deleted at the end.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile

import numpy as np

import artifacts
import config
import data_loader
import model_builder
import resume
import splits
import train_utils
from errors import Interrupted, Stop, UserError


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
    names: tuple = ()  # their tasks' names ("chief 0", "worker 1"), in the same order

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
    check_addresses(addresses, text)
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
    names = tuple(f"chief {i}" for i in range(chiefs)) + tuple(
        f"worker {i}" for i in range(len(addresses) - chiefs))
    return Cluster(task_type, task_index, worker_index, addresses, names)


def check_addresses(addresses, text):
    """Raises UserError unless every address is host:port with a port in
    1-65535 and no two tasks share one (TensorFlow would wait forever for
    the second, or fail with a traceback)."""
    for address in addresses:
        host, _, port = str(address).rpartition(":")
        if not isinstance(address, str) or not host or not port.isdigit() or not 1 <= int(port) <= config.MAX_PORT:
            raise UserError(
                f"TF_CONFIG: each worker's address must be host:port with a port in 1-{config.MAX_PORT}. "
                f"Received: {json.dumps(address)} in TF_CONFIG={text}"
            )
    repeated = sorted({address for address in addresses if addresses.count(address) > 1})
    if repeated:
        raise UserError(
            f"TF_CONFIG names {', '.join(repeated)} for more than one task: each worker needs its own "
            f"host:port. Received: TF_CONFIG={text}"
        )


def wait_for_workers(cluster, seconds, poll_seconds=0.2):
    """Waits until every other worker of `cluster` answers at its address,
    in Python: TensorFlow's own wait (in MultiWorkerMirroredStrategy) holds
    the interpreter, so neither Ctrl-C nor SIGTERM stops it, and it has no
    time limit. A worker answers while it waits here (listening on its
    port) and once TensorFlow's server has it. Raises UserError when this
    worker's port is taken or `seconds` pass with workers missing (naming
    them), Interrupted on Ctrl-C or SIGTERM; nothing is written."""
    import signal
    import socket
    import time

    own = cluster.addresses[cluster.worker_index]
    listener = socket.socket(socket.AF_INET6 if own.startswith("[") else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(own.rpartition(":")[2])))
    except OSError as error:
        listener.close()
        raise UserError(f"{cluster.name}'s address {own} cannot be used here ({error.strerror}): "
                        "another process has its port, or TF_CONFIG names the wrong task") from None
    listener.listen(16)
    names = dict(zip(cluster.addresses, cluster.names or cluster.addresses))
    missing = [address for address in cluster.addresses if address != own]

    def still_missing():
        return ", ".join(f"{names[address]} ({address})" for address in missing)

    def stop(signal_number, frame):
        raise Interrupted(f"stopped by {signal.Signals(signal_number).name} while waiting for the workers "
                          f"of TF_CONFIG (missing: {still_missing()}); nothing was written")

    previous = signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + seconds
    try:
        while missing:
            missing = [address for address in missing if not answers(address)]
            if missing and time.monotonic() > deadline:
                raise UserError(
                    f"waited {seconds:g} s for the workers of TF_CONFIG; not started: {still_missing()}. "
                    "Start each with the same TF_CONFIG and its own task (or allow longer: --worker_wait)"
                )
            if missing:
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
        listener.close()


def check_then_wait(options, cluster):
    """Before waiting for the other workers, what this worker can check
    alone: the chief's ARTIFACTS_DIR can be published into and the run
    --resume names can be continued (raises UserError, as open_run would
    after the wait). Then `wait_for_workers`, --worker_wait seconds."""
    if cluster.is_chief:
        try:
            artifacts.check_publishable(options.artifacts_dir)
        except artifacts.CompanionError as error:
            raise UserError(str(error)) from None
        if options.resume:
            resume.find_interrupted_run(options.artifacts_dir, options.resume)
    print(
        f"Waiting up to {options.worker_wait:g} s for all {cluster.num_workers} workers of TF_CONFIG to start "
        f"(this is {cluster.name}, {cluster.addresses[cluster.worker_index]})...",
        flush=True,
    )
    wait_for_workers(cluster, options.worker_wait)


def answers(address, timeout=0.5):
    """Whether something accepts a TCP connection at host:port."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError:
        return False
    return True




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
    augmentation=None,
    seed=42,
    decoders=None,
    readers=None,
    cache=False,
):
    """A dataset function for `strategy.distribute_datasets_from_function`:
    each input pipeline (one per worker) reads only its share of the files,
    paths[i::n], through data_loader.make_dataset at the per-replica batch
    size.

    The files are split before anything is read; tf.data's auto-sharding of
    a file-list dataset would read every file on every worker and drop most.
    Every worker must run `worker_steps` steps per epoch with full batches:
    a training share repeats endlessly (reshuffled and augmented afresh each
    pass, seeded per worker); a validation share is padded with blank images
    labelled -1, which the training loop leaves out of its metrics.
    Arguments as data_loader.make_dataset.
    """
    paths, labels = list(paths), list(labels)
    decoders = list(decoders) if decoders is not None else data_loader.plan_decoders(paths, readers)

    def dataset_fn(input_context):
        import tensorflow as tf

        worker, workers = input_context.input_pipeline_id, input_context.num_input_pipelines
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        replicas_here = input_context.num_replicas_in_sync // workers
        share = data_loader.make_dataset(
            paths[worker::workers],
            labels[worker::workers],
            image_size,
            batch_size,
            training=training,
            augmentation=augmentation,
            seed=seed + worker,  # different shuffles and augmentations per worker
            decoders=decoders[worker::workers],
            readers=readers,
            cache=cache,
        )
        # Regrouped into full batches: passes follow each other (training)
        # or blanks follow the files (validation) within a batch.
        images = share.unbatch()
        if training:
            return images.repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE)
        padding = worker_steps(len(paths), workers, global_batch_size) * replicas_here * batch_size
        padding -= len(paths[worker::workers])
        blank = (tf.zeros([image_size, image_size, 3], tf.uint8), tf.constant(-1, tf.int32))
        images = images.concatenate(tf.data.Dataset.from_tensors(blank).repeat(max(0, padding)))
        return images.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return dataset_fn




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
    """How train_utils.train compiles, unfreezes and fits on several
    workers: the same phases and callbacks as model.fit on one machine,
    with WorkerData for the training and validation data."""

    def __init__(self, device):
        self.device = device

    def start(self, model, plan, point):
        """Compiles the freshly built `model` under the strategy (the
        optimizer's variables are the strategy's too), unfrozen as in the
        phase of `point`; resuming, every worker then takes the chief's
        saved weights and optimizer state."""
        finetune = point is not None and point.phase == "finetune"
        with self.device.strategy.scope():
            if finetune:
                model_builder.unfreeze_top_layers(model, plan.fine_tune_layers)
            train_utils.compile_model(model, plan.learning_rate / (10 if finetune else 1), plan.jit_compile)
            model.optimizer.build(model.trainable_variables)
        if point is not None:
            restore_on_workers(model, self.device, os.path.join(plan.resume_folder, point.model_file))
            print(f"    resuming after epoch {point.epoch + 1} ({point.phase}), the chief's saved state")

    def unfreeze(self, model, plan):
        with self.device.strategy.scope():
            unfrozen = train_utils.OneMachine().unfreeze(model, plan)
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


# ---------------------------------------------------------------- opening a run on every worker


def worker_options(options, given, chief):
    """The options a worker other than the chief trains with: the chief's
    (`chief`, as saved in run_config.json), with the worker_local options
    given on this worker's command line (`given`). Any other option given
    with another value than the chief's is refused, naming it. Raises
    UserError."""
    different = config.first_different(given, chief, ("display", "worker_local", "run_locator", "output"))
    if different:
        name, ours, theirs = different
        raise UserError(
            f"every worker trains with the chief's options, and the chief has {name}={config.shown(theirs)}; "
            f"give --{name} the same value here or leave it out. Received: {name}={config.shown(ours)}"
        )
    mine = {name: getattr(options, name) for name in config.names_tagged("worker_local") if name in given}
    return dataclasses.replace(config.config_from_dict(chief), resume=options.resume, **mine)


def open_worker_run(options, given, workers, open_run):
    """Several workers: the chief opens the run (`open_run(options)` ->
    (options, run id, folder, resume.ResumePoint or None)) and every worker
    learns its id, options and resume point from it. The others write
    nothing in ARTIFACTS_DIR or RESULTS_DIR: their files (the saves every
    worker makes) go to a scratch folder of their own, deleted at the end.
    Returns open_run's tuple and the scratch folder (None on the chief).
    Raises UserError on every worker when the chief cannot open the run."""
    cluster = workers.cluster
    if cluster.is_chief:
        try:
            opened = open_run(options)
        except UserError as error:
            workers.exchange({"error": str(error)})
            raise
        options, stamp, folder, point = opened
        workers.exchange({
            "stamp": stamp, "options": config.saved_options(options),
            "resume": None if point is None else point.to_json(),
        })
        return (*opened, None)
    chief = workers.exchange(None)[0]
    if "error" in chief:
        raise UserError(f"the chief stopped: {chief['error']}")
    options = worker_options(options, given, chief["options"])
    scratch = tempfile.mkdtemp(prefix=f"image-classifier-{cluster.task_type}{cluster.task_index}-")
    for name in ("artifacts_dir", "results_dir", "image_dir"):
        if artifacts.is_inside(scratch, getattr(options, name)):
            shutil.rmtree(scratch)
            raise UserError(
                f"this worker's scratch folder would be inside --{name}; set TMPDIR to a folder "
                f"outside it. Received: {name}={getattr(options, name)}"
            )
    stamp = chief["stamp"]
    options = dataclasses.replace(
        options, artifacts_dir=os.path.join(scratch, "model_artifacts"), results_dir=os.path.join(scratch, "results")
    )
    folder = os.path.join(artifacts.runs_folder(options.artifacts_dir), stamp)
    os.makedirs(folder)
    point = None
    if chief["resume"]:  # the chief's history stays the chief's
        point = resume.ResumePoint.from_json(chief["resume"])
        point = dataclasses.replace(
            point, history_path=os.path.join(options.results_dir, "training_curves", stamp, "history.csv")
        )
    print(
        f"Run {stamp}, {cluster.name} of {cluster.num_workers} workers: the chief writes the model "
        f"and results; this worker writes nothing there (scratch: {scratch})."
    )
    return options, stamp, folder, point, scratch


def check_workers_agree(workers, index):
    """Every worker must have found the same split (the chief's is the one
    saved); all of them stop, naming the ones that differ, otherwise."""
    rows = [dataclasses.astuple(row) for row in splits.manifest_rows(index)]
    digest = hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()
    digests = workers.exchange(digest)
    differ = [str(number) for number, theirs in enumerate(digests) if theirs != digests[0]]
    if differ:
        raise UserError(
            f"the workers found different datasets: worker(s) {', '.join(differ)} (in TF_CONFIG order, "
            "chief first) split their files differently from the chief; every worker needs the same "
            "files under --image_dir and the same --seed, split, --classes and --labels_csv options"
        )


def worker_datasets(device, index, split, batch_size, settings):
    """WorkerData of one split (train or val) for this worker: its share of
    the files, `worker_steps` steps per epoch. `settings`: make_dataset's
    keyword arguments. Raises UserError when a worker would have no
    training image."""
    paths, labels = index.split(split)
    workers = device.num_workers
    if split == "train" and len(paths) < workers:
        raise UserError(
            f"{workers} workers need at least one training image each; the training split has {len(paths)}"
        )
    steps = worker_steps(len(paths), workers, batch_size)
    dataset_fn = worker_dataset_fn(paths, labels, global_batch_size=batch_size, **settings)
    return distribute(device, dataset_fn, steps, batch_size)
