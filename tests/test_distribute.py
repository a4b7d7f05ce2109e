"""Several machines and several devices: TF_CONFIG, the multi-worker loop's
rules, each worker's share of the files, two real worker processes on
localhost (trained, killed, resumed), MirroredStrategy on two logical CPUs,
and the GPU defaults (mixed precision + XLA) run on the CPU."""

import csv
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import data_loader
import export
import main as main_script
import train_utils
from config import UserError
from conftest import ROOT, TINY, make_flat_dataset, read_json

# ---------------------------------------------------------------- TF_CONFIG


def tf_config(cluster, task_type="worker", index=0):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_tf_config_places_this_process_among_the_workers():
    workers = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    first = train_utils.cluster_from_environment(tf_config(workers, "worker", 0))
    second = train_utils.cluster_from_environment(tf_config(workers, "worker", 1))
    with_chief = {"chief": ["10.0.0.9:2222"], **workers}
    chief = train_utils.cluster_from_environment(tf_config(with_chief, "chief", 0))
    last = train_utils.cluster_from_environment(tf_config(with_chief, "worker", 1))

    assert (first.num_workers, first.worker_index, first.is_chief) == (2, 0, True)
    assert (second.worker_index, second.is_chief, second.name) == (1, False, "worker 1")
    # With a chief, worker 0 is not the chief: it comes second.
    assert chief.is_chief and chief.addresses == ("10.0.0.9:2222", "10.0.0.1:2222", "10.0.0.2:2222")
    assert (last.worker_index, last.is_chief) == (2, False)
    # No TF_CONFIG, or one worker: one machine, model.fit's path.
    assert train_utils.cluster_from_environment({}) is None
    assert train_utils.cluster_from_environment(tf_config({"worker": ["localhost:1"]})) is None


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
        train_utils.cluster_from_environment(environment)


def test_the_device_line_names_strategy_workers_replicas_and_global_batch():
    class Strategy:
        num_replicas_in_sync = 4

    class Workers:
        cluster = train_utils.Cluster("worker", 1, 1, ("a:1", "b:1"))

    several = train_utils.DeviceSetup(Strategy(), 2, True, True, Workers())
    one = train_utils.DeviceSetup(type("Default", (), {"num_replicas_in_sync": 1})(), 0, False, False)

    assert several.describe(16) == (
        "MultiWorkerMirroredStrategy, 2 workers x 2 replica(s) = 4 replicas, this is worker 1 "
        "(not the chief); 2 GPU(s), mixed_float16, XLA on; global batch 64 (16 per replica x 4)"
    )
    assert one.describe(32) == "one device, no distribution strategy; CPU, float32, XLA off; global batch 32"
    assert not several.is_chief and one.is_chief and one.num_workers == 1


# ---------------------------------------------------------------- the loop's rules


def keras_rules(values, patience):
    """What Keras' ReduceLROnPlateau and EarlyStopping (as phase_callbacks
    sets them up) do with a sequence of val_loss values: per epoch, the
    learning rate afterwards and whether training stops."""
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    reduce = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=max(1, patience // 2), min_lr=1e-7)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    seen = []
    for callback in (reduce, stop):
        callback.set_model(model)
        callback.on_train_begin()
    for epoch, value in enumerate(values):
        reduce.on_epoch_end(epoch, {"val_loss": value})
        stop.on_epoch_end(epoch, {"val_loss": value})
        seen.append((float(model.optimizer.learning_rate), bool(model.stop_training)))
        if model.stop_training:
            break
    return seen, stop.best_epoch


def our_rules(values, patience):
    plateau = train_utils.Plateau(patience, max(1, patience // 2))
    rate, seen = 1e-3, []
    for epoch, value in enumerate(values):
        _, new_rate, stop = plateau.update(epoch, value, rate)
        rate = rate if new_rate is None else new_rate
        seen.append((rate, stop))
        if stop:
            break
    return seen, plateau.best_epoch


@pytest.mark.parametrize(
    "values, patience",
    [
        ([1.0, 0.9, 0.8, 0.85, 0.86, 0.87, 0.88, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75], 4),
        ([1.0, 0.99995, 0.9999, 0.99985, 1.1, 0.5, 0.50005, 0.6, 0.7, 0.8], 2),  # below min_delta
        ([float("nan"), 1.0, 0.9, 0.95, 0.97], 3),  # a NaN first epoch is "best"
        ([2.0, 1.0] + [1.5] * 30, 40),  # the learning rate bottoms out at min_lr
    ],
)
def test_plateau_follows_keras_reduce_lr_and_early_stopping(values, patience):
    theirs, their_best = keras_rules(values, patience)
    ours, our_best = our_rules(values, patience)

    assert len(ours) == len(theirs)
    assert [stop for _, stop in ours] == [stop for _, stop in theirs]
    np.testing.assert_allclose([rate for rate, _ in ours], [rate for rate, _ in theirs], rtol=1e-6)
    assert our_best == their_best


def test_history_rows_have_csvloggers_columns(tmp_path):
    import keras

    logs = {"val_loss": 0.5, "loss": 0.7, "learning_rate": 0.001, "accuracy": 0.6, "val_accuracy": 0.8}
    logger = keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"))
    logger.on_train_begin()
    logger.on_epoch_end(0, dict(logs))
    logger.on_train_end()

    train_utils.append_history(str(tmp_path / "ours.csv"), 0, logs)
    train_utils.append_history(str(tmp_path / "ours.csv"), 1, {**logs, "loss": 0.6})

    with open(tmp_path / "keras.csv", newline="") as theirs, open(tmp_path / "ours.csv", newline="") as ours:
        keras_rows, our_rows = list(csv.reader(theirs)), list(csv.reader(ours))
    assert our_rows[0] == keras_rows[0] == list(train_utils.HISTORY_COLUMNS)
    assert [float(value) for value in our_rows[1]] == [float(value) for value in keras_rows[1]]
    assert our_rows[2][0] == "1" and float(our_rows[2][3]) == 0.6
    assert train_utils.read_history(str(tmp_path / "ours.csv"))["epoch"].tolist() == [0, 1]


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
    paths, labels = data_loader.index_dataset(data, 0.2, 0.2, seed=1).split("train")  # 9 files
    steps = train_utils.worker_steps(len(paths), 2, global_batch_size=4)

    validation = train_utils.worker_dataset_fn(paths, labels, 32, global_batch_size=4)
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
    training = train_utils.worker_dataset_fn(paths, labels, 32, global_batch_size=4, training=True)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    seen = np.concatenate([batch.numpy() for _, batch in training(context).take(4 * steps)])
    share = sorted(labels[1::2].tolist())
    assert len(seen) == 4 * steps * 2
    assert [sorted(seen[start : start + 4].tolist()) for start in range(0, 20, 4)] == [share] * 5


def test_workers_take_the_chiefs_options_and_keep_their_own_paths():
    chief = main_script.main_options(main_script.parse_arguments(["--image_dir", "/chief/data", "--epochs", "7", "--seed", "3"]))
    mine = main_script.parse_arguments(["--image_dir", "/here/data", "--rows", "1"])

    options = main_script.worker_options(mine, {"image_dir": "/here/data", "rows": 1}, chief)

    assert options.image_dir == "/here/data" and options.epochs == 7 and options.seed == 3
    with pytest.raises(UserError, match="the chief has epochs=7.*Received: epochs=5"):
        main_script.worker_options(mine, {"epochs": 5}, chief)


# ---------------------------------------------------------------- worker processes


def free_ports(count):
    """Ports free on 127.0.0.1 now (the workers bind them a moment later)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


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
def test_two_workers_train_one_model_and_resume_after_one_is_killed(tmp_path):
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=100)
    work, logs, scratch = tmp_path / "work", tmp_path / "logs", tmp_path / "scratch"
    for folder in (work, logs, scratch):
        folder.mkdir()
    args = ["--image_dir", data, *TINY, "--epochs", "6", "--patience", "10", "--augment", "0", "--learning_rate", "0.002"]
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

# Runs main.py with two logical CPU devices, set up before TensorFlow
# starts (as Keras' own distribute tests do): make_strategy then mirrors
# over them, as it would over two GPUs.
TWO_DEVICES = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import main
sys.exit(main.main(sys.argv[1:]))
"""


def history_of(results):
    (run,) = os.listdir(results / "training_curves")
    return train_utils.read_history(str(results / "training_curves" / run / "history.csv"))


@pytest.mark.slow
def test_mirrored_strategy_on_two_devices_scales_the_batch_and_trains_like_one_device(tmp_path, monkeypatch):
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=100)
    common = ["--image_dir", data, *TINY, "--epochs", "4", "--augment", "0", "--learning_rate", "0.002"]
    mirrored, single = tmp_path / "mirrored", tmp_path / "single"
    mirrored.mkdir()
    single.mkdir()

    finished = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES, *common, "--batch_size", "8"],
        cwd=mirrored, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=400,
    )
    monkeypatch.chdir(single)
    assert main_script.main([*common, "--batch_size", "16"]) == 0

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "device: MirroredStrategy, 2 replicas; CPU, float32" in finished.stdout
    assert "global batch 16 (8 per replica x 2)" in finished.stdout
    (run,) = (mirrored / "model_artifacts" / "runs").iterdir()
    assert read_json(run / "run_config.json")["distribution"] == {"workers": 1, "replicas": 2, "global_batch_size": 16}
    # The same global batch, the same data order and initial weights: the
    # two runs differ only by BatchNorm's per-replica batches and dropout's
    # draws. Both learn (chance is 1/3), and alike.
    ours, theirs = history_of(mirrored / "results"), history_of(single / "results")
    assert len(ours["epoch"]) == len(theirs["epoch"]) == 4
    assert ours["accuracy"][-1] >= 0.6 and theirs["accuracy"][-1] >= 0.6, (ours, theirs)
    assert abs(ours["accuracy"][-1] - theirs["accuracy"][-1]) <= 0.2, (ours, theirs)
    assert ours["loss"].mean() == pytest.approx(theirs["loss"].mean(), rel=0.35)
    assert ours["loss"][0] == pytest.approx(theirs["loss"][0], rel=0.25)
    (metrics,) = (mirrored / "results" / "metrics").iterdir()
    assert read_json(metrics / "metrics.json")["num_samples"] == 45


@pytest.fixture
def float32_afterwards():
    """main.py sets Keras' global dtype policy; later tests expect float32."""
    import keras

    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_the_gpu_defaults_mixed_precision_and_xla_run_end_to_end_on_the_cpu(workdir, tmp_path, capsys, float32_afterwards):
    import keras

    data = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=6)

    code = main_script.main([
        "--image_dir", data, *TINY, "--epochs", "1", "--augment", "0", "--precision", "mixed", "--jit", "1",
        "--export", "onnx",
    ])

    assert code == 0
    out = capsys.readouterr().out
    assert "CPU, mixed_bfloat16, XLA on" in out and "test accuracy" in out
    # The export is rebuilt in float32 and checked against that rebuild.
    report = read_json(workdir / "model_artifacts" / "latest" / export.EXPORT_REPORT_FILE)
    rows = {row["format"]: row for row in report["formats"]}
    assert "rebuilt in float32" in report["reference"] and "rebuilt in float32" in out
    assert rows["keras_float32"]["parity"] == "reference" and rows["onnx"]["parity"] == "passed" and report["passed"]
    session = export.load_runner(str(workdir / "model_artifacts" / "latest" / "best_model.onnx")).session
    assert session.get_inputs()[0].type == "tensor(uint8)"
    model = keras.models.load_model(workdir / "model_artifacts" / "best_model.keras")
    assert model.get_layer("backbone").dtype_policy.name == "mixed_bfloat16"
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    options = read_json(workdir / "model_artifacts" / "run_config.json")["options"]
    assert options["precision"] == "mixed" and options["jit"] == "1"
    (metrics,) = (workdir / "results" / "metrics").iterdir()
    assert read_json(metrics / "metrics.json")["num_samples"] == 2
