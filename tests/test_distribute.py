"""Several machines and several devices: TF_CONFIG, the multi-worker loop's
rules, each worker's share of the files, two real worker processes on
localhost (trained, killed, resumed), one MirroredStrategy step on two
logical CPUs against one device, and a two-GPU machine's defaults
(MirroredStrategy, mixed precision, XLA) run end to end on two logical CPUs."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import data_loader
import export
import main as main_script
import train_utils
import config
import devices
import runs
import splits
from errors import UserError
from conftest import ROOT, TINY, free_ports, make_flat_dataset, read_json

# ---------------------------------------------------------------- TF_CONFIG


def tf_config(cluster, task_type="worker", index=0):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_tf_config_places_this_process_among_the_workers():
    workers = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    first = devices.cluster_from_environment(tf_config(workers, "worker", 0))
    second = devices.cluster_from_environment(tf_config(workers, "worker", 1))
    with_chief = {"chief": ["10.0.0.9:2222"], **workers}
    chief = devices.cluster_from_environment(tf_config(with_chief, "chief", 0))
    last = devices.cluster_from_environment(tf_config(with_chief, "worker", 1))

    assert (first.num_workers, first.worker_index, first.is_chief) == (2, 0, True)
    assert (second.worker_index, second.is_chief, second.name) == (1, False, "worker 1")
    # With a chief, worker 0 is not the chief: it comes second.
    assert chief.is_chief and chief.addresses == ("10.0.0.9:2222", "10.0.0.1:2222", "10.0.0.2:2222")
    assert (last.worker_index, last.is_chief) == (2, False)
    # No TF_CONFIG, or one worker: one machine, model.fit's path.
    assert devices.cluster_from_environment({}) is None
    assert devices.cluster_from_environment(tf_config({"worker": ["localhost:1"]})) is None


@pytest.mark.parametrize(
    "environment, message",
    [
        ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not JSON"),
        ({"TF_CONFIG": '{"cluster": ["a:1", "b:1"]}'}, 'needs a "cluster" object'),
        (tf_config({"worker": ["a:1", "b:1"], "ps": ["c:1"]}), "remove ps"),
        (tf_config({"worker": ["a:1", "b:1"]}, "worker", 2), '"task" must name this process'),
        (tf_config({"worker": ["a:1", "b:1"]}, "evaluator", 0), '"task" must name this process'),
    ],
)
def test_a_tf_config_we_cannot_train_with_is_one_clear_error(environment, message):
    with pytest.raises(UserError, match=message):
        devices.cluster_from_environment(environment)


def test_the_device_line_names_strategy_workers_replicas_and_global_batch():
    class Strategy:
        num_replicas_in_sync = 4

    class Workers:
        cluster = devices.Cluster("worker", 1, 1, ("a:1", "b:1"))

    several = devices.DeviceSetup(Strategy(), 2, True, True, Workers())
    one = devices.DeviceSetup(type("Default", (), {"num_replicas_in_sync": 1})(), 0, False, False)

    assert several.describe(16) == (
        "MultiWorkerMirroredStrategy, 2 workers x 2 replica(s) = 4 replicas, this is worker 1 "
        "(not the chief); 2 GPU(s) (mixed_float16, XLA on); global batch 64 (16 per replica x 4)"
    )
    assert one.describe(32) == "no GPU found: training on the CPU (float32, XLA off); global batch 32"
    assert not several.is_chief and one.is_chief and one.num_workers == 1


# ---------------------------------------------------------------- the loop drives Keras' callbacks


class OneWorker:
    """Workers of a one-process "cluster": the collectives are the identity."""

    cluster = devices.Cluster("worker", 0, 0, ("localhost:1",))

    def exchange(self, value):
        return [value]

    def average(self, variables):
        pass


def constant_loss_run(tmp_path, name, fit_with):
    """Trains a tiny model whose loss cannot change (its trainable weights
    reach the output multiplied by 0) through train_utils.train, with
    model.fit or the worker loop; returns the history rows."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(12, dtype=np.int32) % 2
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    features = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    frozen = keras.layers.Dense(2, trainable=False)(features)
    learning = keras.layers.Rescaling(0.0)(keras.layers.Dense(2)(features))
    outputs = keras.layers.Softmax()(keras.layers.Add()([frozen, learning]))
    model = keras.Model(inputs, outputs)
    folder = tmp_path / name
    plan = train_utils.TrainPlan(
        epochs=12, fine_tune_epochs=0, fine_tune_layers=1, learning_rate=1e-3, patience=4, pretrained=False,
        jit_compile=False, best_model_path=str(folder / "best.keras"), history_path=str(folder / "history.csv"),
        resume_folder=str(folder / "resume"), stamp=name,
    )
    folder.mkdir()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    if fit_with == "model.fit":
        train_utils.train(model, dataset, dataset, plan)
    else:
        setup = devices.DeviceSetup(tf.distribute.get_strategy(), 0, False, False, OneWorker())
        data = data_loader.WorkerData(dataset.repeat(), 3, 4)
        once = data_loader.WorkerData(dataset, 3, 4)
        train_utils.train(model, data, once, plan, machine=train_utils.WorkerMachine(setup))
    with open(folder / "history.csv", newline="") as handle:
        return list(csv.reader(handle))


def test_the_worker_loop_drives_keras_callbacks_as_model_fit_does(tmp_path):
    fit = constant_loss_run(tmp_path, "fit", "model.fit")
    loop = constant_loss_run(tmp_path, "loop", "worker loop")

    # The same columns (CSVLogger's), the same epochs before EarlyStopping
    # (patience 4 from the first epoch), the learning rate cut by
    # ReduceLROnPlateau at the same epochs, and the same losses.
    assert loop[0] == fit[0] == ["epoch", "accuracy", "learning_rate", "loss", "val_accuracy", "val_loss"]
    assert len(loop) == len(fit) == 1 + 5
    column = fit[0].index
    for ours, theirs in zip(loop[1:], fit[1:]):
        assert ours[0] == theirs[0]
        assert float(ours[column("learning_rate")]) == pytest.approx(float(theirs[column("learning_rate")]))
        for name in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert float(ours[column(name)]) == pytest.approx(float(theirs[column(name)]), rel=1e-5)
    rates = [float(row[column("learning_rate")]) for row in fit[1:]]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(2e-4)
    # ModelCheckpoint kept the first epoch's model, moved into place.
    assert (tmp_path / "loop" / "best.keras").is_file() and not (tmp_path / "loop" / ".best.saving.keras").exists()


# ---------------------------------------------------------------- each worker's share


def worker_batches(dataset_fn, worker, workers, replicas_per_worker=1):
    import tensorflow as tf

    context = tf.distribute.InputContext(
        num_input_pipelines=workers, input_pipeline_id=worker, num_replicas_in_sync=workers * replicas_per_worker
    )
    return [(images.numpy(), labels.numpy()) for images, labels in dataset_fn(context)]


def test_each_worker_reads_only_its_share_of_the_files(tmp_path):
    import image_io
    import tensorflow as tf

    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=5)
    paths, labels = splits.index_dataset(data, 0.2, 0.2, seed=1).split("train")  # 9 files
    steps = data_loader.worker_steps(len(paths), 2, global_batch_size=4)

    validation = data_loader.worker_dataset_fn(paths, labels, 32, global_batch_size=4)
    shares = [worker_batches(validation, worker, 2) for worker in range(2)]

    # Validation: worker i gets files i, i+2, ... (5 and 4 files), each read
    # once, padded with blank images labelled -1 to the same full batches.
    assert steps == 3 and [len(share) for share in shares] == [steps, steps]
    for worker, share in enumerate(shares):
        images = np.concatenate([batch_images for batch_images, _ in share])
        seen = np.concatenate([batch_labels for _, batch_labels in share])
        assert all(len(batch_labels) == 2 for _, batch_labels in share)
        np.testing.assert_array_equal(seen[seen >= 0], labels[worker::2])
        expected = np.stack([image_io.load_image(path, 32).numpy() for path in paths[worker::2]])
        np.testing.assert_array_equal(images[seen >= 0], expected)
        assert (images[seen < 0] == 0).all() and (seen < 0).sum() == steps * 2 - len(expected)

    # Training: each worker repeats its own share endlessly, in full
    # batches, every pass a new permutation of it.
    training = data_loader.worker_dataset_fn(paths, labels, 32, global_batch_size=4, training=True)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    seen = np.concatenate([batch.numpy() for _, batch in training(context).take(4 * steps)])
    share = sorted(labels[1::2].tolist())
    assert len(seen) == 4 * steps * 2
    assert [sorted(seen[start : start + 4].tolist()) for start in range(0, 20, 4)] == [share] * 5


def test_workers_take_the_chiefs_options_and_keep_their_own_paths(tmp_path):
    theirs, here = tmp_path / "chief" / "data", tmp_path / "here" / "data"
    theirs.mkdir(parents=True)
    here.mkdir(parents=True)
    chief = config.saved_options(main_script.parse_arguments(["--image_dir", str(theirs), "--epochs", "7", "--seed", "3"]))
    mine = main_script.parse_arguments(["--image_dir", str(here), "--rows", "1"])

    options = runs.worker_options(mine, {"image_dir": str(here), "rows": 1}, chief)

    assert options.image_dir == str(here) and options.epochs == 7 and options.seed == 3
    with pytest.raises(UserError, match="the chief has epochs=7.*Received: epochs=5"):
        runs.worker_options(mine, {"epochs": 5}, chief)


# ---------------------------------------------------------------- worker processes


def start_workers(args, workdir, logs, scratch):
    """Two main.py worker processes on localhost, in one folder (a shared
    filesystem), each with its own TF_CONFIG. Returns the processes."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        environment = {
            **os.environ,
            "PYTHONPATH": ROOT,
            "TMPDIR": str(scratch),
            "MPLBACKEND": "Agg",
            **tf_config({"worker": addresses}, "worker", index),
        }
        log = open(logs / f"worker{index}-{len(os.listdir(logs))}.log", "w")
        processes.append(
            subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "main.py"), *args],
                cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        )
        log.close()
    return processes


def wait_for(condition, processes, timeout):
    """Waits (bounded) until condition() holds while every process runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert all(process.poll() is None for process in processes), "a worker ended early"
        time.sleep(0.2)
    raise AssertionError("timed out")


def log_text(logs, name):
    return (logs / name).read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.heavy
def test_two_workers_train_one_model_and_resume_after_one_is_killed(tmp_path):
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=100)
    work, logs, scratch = tmp_path / "work", tmp_path / "logs", tmp_path / "scratch"
    for folder in (work, logs, scratch):
        folder.mkdir()
    args = ["--image_dir", data, *TINY, "--epochs", "6", "--patience", "10", "--augment", "0", "--calibrate", "0",
            "--learning_rate", "0.002"]
    runs = work / "model_artifacts" / "runs"
    processes = start_workers(args, work, logs, scratch)
    try:
        state = lambda: next(runs.glob("*/resume/state.json"), None) if runs.is_dir() else None  # noqa: E731
        wait_for(lambda: state() is not None and read_json(state()).get("epoch", -1) >= 1, processes, 300)
        processes[1].kill()  # SIGKILL: no chance to clean up
        processes[1].wait(timeout=30)
        # The chief notices within seconds and stops with one line.
        assert processes[0].wait(timeout=120) == 1
        assert "error: worker 0 lost contact with another worker" in log_text(logs, "worker0-0.log")
        killed_at = read_json(state())["epoch"]
        assert 1 <= killed_at < 5 and not os.path.lexists(work / "model_artifacts" / "best_model.keras")

        # Both start again with --resume and finish the same run.
        processes = start_workers(args + ["--resume"], work, logs, scratch)
        assert [process.wait(timeout=400) for process in processes] == [0, 0], log_text(logs, "worker0-2.log")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    chief, other = log_text(logs, "worker0-2.log"), log_text(logs, "worker1-3.log")
    assert f"resuming after epoch {killed_at + 1}" in chief
    assert "global batch 16 (8 per replica x 2)" in chief and "this is worker 1 (not the chief)" in other
    assert "writes nothing there" in other
    # One run, written once: one run folder, one stamp per results category,
    # one audit cache, history continuous over the kill.
    (run,) = runs.iterdir()
    assert sorted(os.listdir(work)) == ["model_artifacts", "results"]
    assert len(os.listdir(work / "model_artifacts" / "audit_cache")) == 1
    for category in os.listdir(work / "results"):
        assert os.listdir(work / "results" / category) == [run.name], category
    with open(work / "results" / "training_curves" / run.name / "history.csv", newline="") as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == list(range(6))
    config = read_json(run / "run_config.json")
    assert config["status"] == "finished" and config["distribution"] == {"workers": 2, "replicas": 2, "global_batch_size": 16}
    assert os.path.realpath(work / "model_artifacts" / "best_model.keras") == str(run / "best_model.keras")
    # Learned: chance is 1/3.
    metrics = read_json(work / "results" / "metrics" / run.name / "metrics.json")
    assert metrics["accuracy"] >= 0.6, metrics["accuracy"]
    # Only the killed worker's scratch folder is left (in TMPDIR, outside
    # both folders); the finished one removed its own.
    ours = [name for name in os.listdir(scratch) if name.startswith("image-classifier-")]
    assert len(ours) == 1 and ours[0].startswith("image-classifier-worker1-"), ours


# ---------------------------------------------------------------- several devices, GPU defaults

# Two logical CPU devices, set up before TensorFlow starts (as Keras' own
# distribute tests do): make_strategy then mirrors over them, as it would
# over two GPUs. TWO_DEVICES runs main.py on them; ONE_STEP compares one
# training step on the two replicas with the same step on one device
# (weights after it, printed as JSON). Two processes: collectives of two
# strategies in one process collide ("Restart your program to reset").
TWO_DEVICES = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import main
sys.exit(main.main(sys.argv[1:]))
"""
ONE_STEP = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import devices

def after_one_step(strategy, count=16):
    # Plain SGD: the step is proportional to the gradient, so a loss not
    # averaged over the global batch (or gradients not summed over the
    # replicas) would move the weights by another amount.
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((8, 8, 3), dtype="uint8"), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)[:count]
    labels = (np.arange(16, dtype=np.int32) % 3)[:count]
    model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(16), epochs=1, verbose=0, shuffle=False)
    return [weight.tolist() for weight in model.get_weights()]

mirrored = devices.make_strategy(None)
one = tf.distribute.OneDeviceStrategy("/cpu:0")
steps = {"replicas": mirrored.num_replicas_in_sync, "mirrored": after_one_step(mirrored),
         "one device": after_one_step(one), "half the batch": after_one_step(one, count=8)}
print(json.dumps(steps))
"""


def history_of(results):
    (run,) = os.listdir(results / "training_curves")
    return train_utils.read_history(str(results / "training_curves" / run / "history.csv"))


@pytest.mark.slow
def test_mirrored_strategy_on_two_devices_steps_exactly_as_one_device(tmp_path):
    step = subprocess.run(
        [sys.executable, "-c", ONE_STEP], env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=400,
    )
    assert step.returncode == 0, step.stderr[-3000:]

    # One step on the global batch of 16, split 8 + 8 over two replicas,
    # gives the weights one device gives on the 16 at once: the loss is
    # averaged over the global batch and the gradients summed over replicas.
    steps = json.loads(step.stdout.splitlines()[-1])
    assert steps["replicas"] == 2
    for ours, theirs in zip(steps["mirrored"], steps["one device"], strict=True):
        np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-6)
    # The comparison can tell steps apart: one device on half the batch moves elsewhere.
    moved = [np.abs(np.array(ours) - np.array(half)).max() for ours, half in zip(steps["mirrored"], steps["half the batch"])]
    assert max(moved) > 1e-3, moved


@pytest.mark.slow
@pytest.mark.heavy
def test_the_gpu_defaults_on_two_devices_mirrored_mixed_precision_and_xla_run_end_to_end(tmp_path):
    """What a machine with two GPUs gets: MirroredStrategy over both, mixed
    precision and XLA (here on two logical CPUs), through main.py to an
    ONNX export checked against the model rebuilt in float32."""
    import keras

    # 14 per class: validation and test hold 6 images, one even batch of 3 + 3.
    # (Keras 3.15's model.fit under MirroredStrategy fails when a batch splits
    # unevenly before any even one, or leaves a replica empty: keras-team/keras#19246.)
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=14)
    finished = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, "--image_dir", data, *TINY, "--epochs", "1", "--augment", "0",
         "--batch_size", "4", "--calibrate", "0", "--precision", "mixed", "--jit", "1", "--export", "onnx"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=400,
    )
    out = finished.stdout
    assert finished.returncode == 0, out[-3000:] + finished.stderr[-3000:]

    # The strategy, the global batch and the run config say so.
    assert "device: no GPU found: training on the CPU (mixed_bfloat16, XLA on), MirroredStrategy over 2 replicas" in out
    assert "global batch 8 (4 per replica x 2)" in out and "test accuracy" in out
    artifacts_dir = tmp_path / "model_artifacts"
    (run,) = (artifacts_dir / "runs").iterdir()
    saved = read_json(run / "run_config.json")
    assert saved["distribution"] == {"workers": 1, "replicas": 2, "global_batch_size": 8}
    assert saved["options"]["precision"] == "mixed" and saved["options"]["jit"] == "1"
    assert len(history_of(tmp_path / "results")["epoch"]) == 1
    (metrics,) = (tmp_path / "results" / "metrics").iterdir()
    assert read_json(metrics / "metrics.json")["num_samples"] == 6
    # The export is rebuilt in float32 and checked against that rebuild.
    report = read_json(artifacts_dir / "latest" / export.EXPORT_REPORT_FILE)
    rows = {row["format"]: row for row in report["formats"]}
    assert "rebuilt in float32" in report["reference"] and "rebuilt in float32" in out
    assert rows["keras_float32"]["parity"] == "reference" and rows["onnx"]["parity"] == "passed" and report["passed"]
    session = export.load_runner(str(artifacts_dir / "latest" / "best_model.onnx")).session
    assert session.get_inputs()[0].type == "tensor(uint8)"
    # The saved model computes in mixed precision and answers float32 probabilities.
    model = keras.models.load_model(artifacts_dir / "best_model.keras")
    # (Its layers do: the nested backbone model's own policy follows the
    # process's global one when loaded.)
    convolutions = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and {layer.dtype_policy.name for layer in convolutions} == {"mixed_bfloat16"}
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
