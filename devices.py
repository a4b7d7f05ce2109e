"""Which machines and devices train, and how: the GPU or the CPU, the
tf.distribute strategy (several GPUs, several workers), mixed precision
and XLA, and, with TF_CONFIG, the workers themselves: where each is, the
wait until all have started, and the collective steps they take together.

`make_strategy` comes first, before anything else starts TensorFlow;
`configure_device` then sets the precision policy and says in one line
(`DeviceSetup.describe`) what was chosen. A run on several machines is
this process's `Cluster` (from TF_CONFIG, `cluster_from_environment`) and
its `Workers` (MultiWorkerMirroredStrategy and the collectives besides
training steps); the DeviceSetup carries them, and the few places that
differ on several machines ask it (train_utils' WorkerMachine, the
worker's share of the files in data_loader, opening a run in runs.py).
"""

import contextlib
import dataclasses
import json
import os
import re

import numpy as np

import option_types
from errors import Interrupted, Stop, UserError


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
    workers: object = None  # the Workers of a run on several machines; None: one machine

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

    @property
    def replicas(self):
        """Replicas in sync: over every GPU (or logical CPU) and worker."""
        return self.strategy.num_replicas_in_sync

    def global_batch(self, batch_size):
        """The images of one training step over every replica, for a
        per-replica `batch_size`."""
        return batch_size * self.replicas

    def batch_text(self, batch_size):
        """'16 (8 per replica x 2)': the global batch, and how it is made."""
        if self.replicas == 1:
            return str(batch_size)
        return f"{self.global_batch(batch_size)} ({batch_size} per replica x {self.replicas})"

    def describe(self, batch_size=None):
        """One line: strategy, workers and replicas, device, precision, XLA
        and, given the per-replica `batch_size`, the global batch."""
        replicas = self.replicas
        where = f"{self.num_gpus} GPU(s)" if self.num_gpus else "no GPU found: training on the CPU"
        precision = "mixed_float16" if self.mixed_precision and self.num_gpus else (
            "mixed_bfloat16" if self.mixed_precision else "float32"
        )
        line = f"{where} ({precision}, XLA {'on' if self.jit_compile else 'off'})"
        if self.cluster is not None:
            workers = self.cluster.num_workers
            line = (
                f"MultiWorkerMirroredStrategy, {workers} workers x {replicas // workers} replica(s) "
                f"= {replicas} replicas, this is {self.cluster.name} "
                f"({'the chief' if self.cluster.is_chief else 'not the chief'}); {line}"
            )
        elif replicas > 1:
            line = f"{line}, MirroredStrategy over {replicas} replicas"
        if batch_size is not None:
            line += f"; global batch {self.batch_text(batch_size)}"
        return line


def configure_device(precision="auto", jit="auto", strategy=None, workers=None):
    """Picks the device, precision and XLA for training.

    With a GPU: memory growth on, mixed_float16 and XLA by default. On the
    CPU: float32 and no XLA by default (measured on 2 cores: mixed_bfloat16
    2x and XLA 7x slower). `strategy`: from `make_strategy`, made here when
    not given; `workers`: the Workers of a run on several machines. Sets
    Keras' global dtype policy, so call it before building. Returns a
    DeviceSetup.
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


# ---------------------------------------------------------------- several machines (TF_CONFIG)


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
        if not isinstance(address, str) or not host or not port.isdigit() or not 1 <= int(port) <= option_types.MAX_PORT:
            raise UserError(
                f"TF_CONFIG: each worker's address must be host:port with a port in 1-{option_types.MAX_PORT}. "
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


def start(cluster=None, wait_seconds=600):
    """(strategy, Workers or None): the tf.distribute strategy this process
    trains with (`make_strategy`) and, for a Cluster, its Workers, once
    every other worker answers (`wait_for_workers`, up to `wait_seconds`:
    TensorFlow's own wait in MultiWorkerMirroredStrategy stops for nothing,
    so ours comes first). Raises UserError, Interrupted."""
    if cluster is None:
        return make_strategy(None), None
    print(
        f"Waiting up to {wait_seconds:g} s for all {cluster.num_workers} workers of TF_CONFIG to start "
        f"(this is {cluster.name}, {cluster.addresses[cluster.worker_index]})...",
        flush=True,
    )
    wait_for_workers(cluster, wait_seconds)
    strategy = make_strategy(cluster)
    return strategy, Workers(strategy, cluster)


def answers(address, timeout=0.5):
    """Whether something accepts a TCP connection at host:port."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError:
        return False
    return True


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
