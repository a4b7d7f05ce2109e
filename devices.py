"""Which device trains, and how: the GPU or the CPU, the tf.distribute
strategy (several GPUs, several workers), mixed precision and XLA.

`make_strategy` comes first, before anything else starts TensorFlow;
`configure_device` then sets the precision policy and says in one line
(`DeviceSetup.describe`) what was chosen. Imports nothing from the project:
a multi-worker run passes its multiworker.Cluster and Workers in.
"""

import contextlib
import dataclasses


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
            line += f"; global batch {batch_size * replicas}"
            if replicas > 1:
                line += f" ({batch_size} per replica x {replicas})"
        return line


def configure_device(precision="auto", jit="auto", strategy=None, workers=None):
    """Picks the device, precision and XLA for training.

    With a GPU: memory growth on, mixed_float16 and XLA by default. On the
    CPU: float32 and no XLA by default (measured on 2 cores: mixed_bfloat16
    2x and XLA 7x slower). `strategy`: from `make_strategy`, made here when
    not given; `workers`: the multiworker.Workers of a multi-worker run. Sets Keras' global dtype policy, so call it once,
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
