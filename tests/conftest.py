"""Shared test helpers: tiny synthetic image folders made in tmp_path, the
one-line error check, and the trained run and saved model that tests
share (built once per session)."""

import contextlib
import csv
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import artifacts  # noqa: E402  (the project's modules, once ROOT is on the path)

# The smallest real model main.py trains: MobileNetV2 at width 0.35 on
# 32 px images, figures never shown.
TINY_MODEL = ["--alpha", "0.35", "--image_size", "32", "--batch_size", "8", "--show", "0"]

# The users' default path without a download: PRETRAINED is a backbone
# weights file standing in for ImageNet's (tests/fixtures/pretrain_backbone.py,
# written once per session by the pretrained_backbone fixture), so the
# backbone stays frozen and only the head trains; no fine-tuning unless a
# test asks. The folder is made by the first process that loads this file
# (pytest-xdist's workers inherit its path) and removed at the end.
MADE_PRETRAINED_DIR = "TESTS_PRETRAINED_DIR" not in os.environ
if MADE_PRETRAINED_DIR:
    os.environ["TESTS_PRETRAINED_DIR"] = tempfile.mkdtemp(prefix="tests-pretrained-")
PRETRAINED_DIR = os.environ["TESTS_PRETRAINED_DIR"]
PRETRAINED = os.path.join(PRETRAINED_DIR, "mobilenet_v2_0.35.weights.h5")
TINY = ["--weights", PRETRAINED, "--fine_tune_epochs", "0", *TINY_MODEL]
# Every layer trained from random weights: for what is about training from
# scratch (BatchNorm settling, every variable synced, "it learns").
SCRATCH = ["--weights", "none", *TINY_MODEL]


# Tests read the JSON files the tool wrote as the tool reads them.
read_json = artifacts.read_json


# Distinct, learnable classes: each class is a colour with a pattern.
CLASS_COLOURS = [
    (220, 40, 40),
    (40, 180, 60),
    (40, 70, 220),
    (230, 200, 40),
    (160, 60, 200),
    (40, 200, 200),
]


def class_image(class_number, variant, size=32, rng=None):
    """A small RGB image recognisable as class `class_number`: a coloured
    square whose stripe direction also depends on the class, with noise."""
    rng = rng or np.random.default_rng(class_number * 1000 + variant)
    colour = np.array(CLASS_COLOURS[class_number % len(CLASS_COLOURS)], dtype=np.float32)
    pixels = np.ones((size, size, 3), np.float32) * colour
    stripes = (np.arange(size) // 4) % 2
    if class_number % 2:
        pixels[stripes == 1, :, :] *= 0.5
    else:
        pixels[:, stripes == 1, :] *= 0.5
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_class_folder(folder, class_number, count, size=32, extension="png", start=0):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for variant in range(start, start + count):
        path = os.path.join(folder, f"img_{variant:03d}.{extension}")
        image = class_image(class_number, variant, size)
        image.save(path, format="JPEG" if extension.lower() in ("jpg", "jpeg") else None)
        paths.append(path)
    return paths


def make_flat_dataset(root, classes=("cat", "dog"), per_class=10, size=32):
    """root/<class>/img_NNN.png for each class; returns root."""
    for number, name in enumerate(classes):
        write_class_folder(os.path.join(root, name), number, per_class, size)
    return str(root)


def make_presplit_dataset(root, classes=("cat", "dog"), counts=None, size=32, splits=("train", "val", "test")):
    """root/<split>/<class>/... with counts {split: per class}; returns root."""
    counts = counts or {"train": 8, "val": 3, "test": 3}
    offset = 0
    for split in splits:
        for number, name in enumerate(classes):
            write_class_folder(os.path.join(root, split, name), number, counts[split], size, start=offset)
        offset += counts[split]
    return str(root)


def multi_label_image(labels, all_labels, variant, size=32):
    """A mosaic of four cells: one class_image cell per label in `labels`
    (at cells chosen by `variant`), grey noise in the others."""
    rng = np.random.default_rng(variant)
    half = size // 2
    pixels = np.clip(rng.normal(128, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    for cell, label in zip(rng.permutation(4), labels):
        row, column = divmod(int(cell), 2)
        tile = np.asarray(class_image(all_labels.index(label), variant, half, rng))
        pixels[row * half:(row + 1) * half, column * half:(column + 1) * half] = tile
    return Image.fromarray(pixels)


def make_multi_label_dataset(root, labels=("cat", "dog", "fox"), count=30, size=32, delimiter=";", splits=None):
    """root/images/img_NNN.png and root/labels.csv (filename,labels[,split]):
    image n has the labels whose bit is set in n % 2**len(labels) (so
    every combination appears, the empty set too); `splits` (a function
    of n -> split name) adds a split column. Returns (root, csv path,
    [label tuples])."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows, sets = [], []
    for number in range(count):
        chosen = tuple(name for bit, name in enumerate(labels) if (number % 2 ** len(labels)) >> bit & 1)
        multi_label_image(chosen, list(labels), number, size).save(os.path.join(root, "images", f"img_{number:03d}.png"))
        rows.append([f"images/img_{number:03d}.png", delimiter.join(chosen)] + ([splits(number)] if splits else []))
        sets.append(chosen)
    csv_path = os.path.join(root, "labels.csv")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels"] + (["split"] if splits else []))
        writer.writerows(rows)
    return str(root), csv_path, sets


def make_digit_folder(root, classes=5, per_class=60):
    """root/<digit>/<n>.png: scikit-learn's real 8x8 digit scans (dark
    ink on white), for tests that must show a network really learns."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(classes):
        folder = os.path.join(root, str(label))
        os.makedirs(folder)
        for number, image in enumerate(digits.images[digits.target == label][:per_class]):
            Image.fromarray((255 - image * 255 / 16).astype(np.uint8)).save(os.path.join(folder, f"{number}.png"))
    return root


@pytest.fixture
def flat_dataset(tmp_path):
    return make_flat_dataset(tmp_path / "data", classes=("alpha", "beta", "gamma"), per_class=10)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Runs the test from an empty folder, so model_artifacts/ and results/
    land in tmp_path."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# ---------------------------------------------------------------- helpers


def one_line_error(capsys):
    """The one stderr line of a script that stopped (exit code 2 or 1)."""
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert error.startswith("error: ")
    return error


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def free_ports(count=1, host="127.0.0.1"):
    """Ports free on `host` now (a server or worker binds them a moment later)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind((host, 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def png_bytes(width, height, depth, colour_type, rows):
    """A PNG written by hand (16-bit colour, or a header no encoder would
    write): `rows` are the raw scanlines without their filter bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def head_model(activation="softmax", num_classes=3, image_size=16):
    """A small uint8-in model with model_builder's head: Dense "logits",
    then the temperature and the activation (what calibration and the
    stages after training read of a trained model)."""
    import keras

    import model_builder

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    logits = keras.layers.Dense(num_classes, name=model_builder.LOGITS_LAYER)(x)
    return keras.Model(inputs, model_builder.temperature_and_activation(logits, activation=activation))


# One epoch, nothing optional (no augmentation, no temperature scaling):
# for runs where training is not the point. QUICK: on the tiny model.
ONE_EPOCH = ["--epochs", "1", "--augment", "0", "--calibrate", "0"]
QUICK = [*TINY, *ONE_EPOCH]


# ---------------------------------------------------------------- built once per session


@pytest.fixture(scope="session", autouse=True)
def pretrained_backbone():
    """PRETRAINED, written by the first test process that needs it (the
    others wait on the lock and find it done)."""
    os.makedirs(PRETRAINED_DIR, exist_ok=True)  # TESTS_PRETRAINED_DIR may name a folder not made yet
    with open(os.path.join(PRETRAINED_DIR, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.isfile(PRETRAINED):
                script = os.path.join(ROOT, "tests", "fixtures", "pretrain_backbone.py")
                done = subprocess.run([sys.executable, script, PRETRAINED], capture_output=True, text=True)
                assert done.returncode == 0 and os.path.isfile(PRETRAINED), done.stderr[-3000:]
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return PRETRAINED


def pytest_unconfigure(config):
    """Removes PRETRAINED's folder in the process that made it (pytest-xdist's
    controller, after its workers)."""
    if MADE_PRETRAINED_DIR:
        import shutil

        shutil.rmtree(PRETRAINED_DIR, ignore_errors=True)


@contextlib.contextmanager
def built_once(tmp_path_factory, worker_id, name):
    """(folder, whether it still has to be built) for a fixture built once
    per test session, also across pytest-xdist's worker processes (the
    pattern of xdist's docs, with an OS file lock): the first process to
    take the lock builds `folder`, the others find it done."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent
    folder = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder, not (folder / "done.json").exists()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


TRAINED_CLASSES = ("alpha", "beta", "gamma")
# What trained_run's model was trained with, besides its output folders,
# --show, tracking and exports (none of which changes what is learned).
TRAINED_RUN_OPTIONS = [*TINY, "--epochs", "2", "--augment", "1", "--grid_per_class", "3", "--rows", "2", "--cols", "3"]


def trained_paths(folder):
    done = read_json(folder / "done.json")
    return {
        "root": folder, "data": str(folder / "data"), "artifacts": folder / "artifacts",
        "run": folder / "artifacts" / "runs" / done["run"], "results": folder / "results",
        "mlruns": folder / "mlruns", "shown": done["shown"], "printed": done["printed"],
    }


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, worker_id):
    """One tiny model trained by main.py for every test that needs a real
    training run: 3 classes of 12 images, 2 epochs with augmentation,
    tracked in MLflow, exported to every format, its figures recorded as
    they would be shown. Built once per session (across xdist workers too).
    Read-only: a test that changes a file copies the run first. Keys: data,
    artifacts (ARTIFACTS_DIR), run (its run folder), results, mlruns, shown
    (figure paths in the order shown), printed (what main.py printed)."""
    import io

    import main
    import figures
    import visualize

    with built_once(tmp_path_factory, worker_id, "trained_run") as (folder, build):
        if build:
            data = make_flat_dataset(folder / "data", classes=TRAINED_CLASSES, per_class=12)
            shown, printed = [], io.StringIO()

            def record(path):
                assert os.path.isfile(path), f"{path} shown before it was saved"
                shown.append(path)

            with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
                patch.setattr(figures, "should_show", lambda mode: (True, None))
                patch.setattr(visualize, "show_saved_figure", record)
                code = main.main([
                    "--image_dir", data, "--artifacts_dir", str(folder / "artifacts"),
                    "--results_dir", str(folder / "results"), *TRAINED_RUN_OPTIONS, "--show", "1",
                    "--mlflow", (folder / "mlruns").as_uri(), "--export", "onnx,litert,saved_model",
                ])
            assert code == 0, printed.getvalue()[-3000:]
            run = os.path.basename(os.readlink(folder / "artifacts" / "latest"))
            with open(folder / "done.json", "w", encoding="utf-8") as handle:
                json.dump({"run": run, "shown": shown, "printed": printed.getvalue()}, handle)
        return trained_paths(folder)


# The recipe options together on one run (issue 34's features, each test
# file asserting its own part): the range test picks the rate, cosine with
# a warm-up epoch, EMA, AdamW, RandAugment with erasing, the size from the
# 64 px files, and a --time budget spent after the first epoch of 30.
RECIPE_RUN_OPTIONS = [
    "--weights", "none", "--alpha", "0.35", "--batch_size", "8", "--show", "0", "--calibrate", "0",
    "--learning_rate", "auto", "--schedule", "cosine", "--warmup_epochs", "1", "--ema", "1",
    "--weight_decay", "0.05", "--augment_policy", "randaugment", "--erasing", "0.5",
    "--epochs", "30", "--patience", "30", "--time", "0.001",
    "--grid_per_class", "1", "--rows", "1", "--cols", "2",
]


def run_main_once(folder, data, arguments):
    """main.main on `data` with its outputs in `folder` (artifacts,
    results), for a fixture built once (built_once): asserts it succeeded
    and writes folder/done.json with the published run's stamp, what it
    printed and what reached the process's stderr (read at the file
    descriptor, so TensorFlow's C++ lines count); main_run_record reads it."""
    import io
    import tempfile

    import main

    printed = io.StringIO()
    with tempfile.TemporaryFile() as errors, contextlib.redirect_stdout(printed):
        sys.stderr.flush()
        kept = os.dup(2)
        os.dup2(errors.fileno(), 2)
        try:
            code = main.main(["--image_dir", data, "--artifacts_dir", str(folder / "artifacts"),
                              "--results_dir", str(folder / "results"), *arguments])
        finally:
            sys.stderr.flush()
            os.dup2(kept, 2)
            os.close(kept)
        errors.seek(0)
        written = errors.read().decode("utf-8", "replace")
    assert code == 0, printed.getvalue()[-3000:] + written[-3000:]
    run = os.path.basename(os.readlink(folder / "artifacts" / "latest"))
    with open(folder / "done.json", "w", encoding="utf-8") as handle:
        json.dump({"run": run, "printed": printed.getvalue(), "errors": written}, handle)


def main_run_record(folder):
    """What run_main_once left in `folder`. Keys: data, artifacts, results,
    run (its stamp), printed (stdout), errors (stderr)."""
    done = read_json(folder / "done.json")
    return {"data": str(folder / "data"), "artifacts": folder / "artifacts", "results": folder / "results",
            "run": done["run"], "printed": done["printed"], "errors": done["errors"]}


@pytest.fixture(scope="session")
def recipe_run(tmp_path_factory, worker_id):
    """One main.py run with every recipe option (RECIPE_RUN_OPTIONS) on 64
    px images of 3 classes (12 each), no --image_size. Built once per
    session; read-only (keys: main_run_record's)."""
    with built_once(tmp_path_factory, worker_id, "recipe_run") as (folder, build):
        if build:
            data = make_flat_dataset(folder / "data", classes=("cat", "dog", "fox"), per_class=12, size=64)
            run_main_once(folder, data, RECIPE_RUN_OPTIONS)
        return main_run_record(folder)


# Class imbalance and batch mixing together on one run: focal loss with
# label smoothing, MixUp and CutMix, brightness, shear and wrapped fill,
# deterministic (the default), on 3 classes of 24, 6 and 6 images.
MIXING_RUN_OPTIONS = [
    *TINY, "--epochs", "1", "--calibrate", "0", "--augment", "1", "--deterministic", "1",
    "--balance", "focal", "--label_smoothing", "0.1", "--mixup", "0.2", "--cutmix", "0.5",
    "--brightness", "0.8,1.2", "--shear", "10", "--fill_mode", "wrap",
]


@pytest.fixture(scope="session")
def mixing_run(tmp_path_factory, worker_id):
    """One main.py run with MIXING_RUN_OPTIONS. Built once per session;
    read-only (keys: main_run_record's; errors is what its stderr held)."""
    with built_once(tmp_path_factory, worker_id, "mixing_run") as (folder, build):
        if build:
            data = make_flat_dataset(folder / "data", classes=("a", "b", "c"), per_class=6)
            write_class_folder(str(folder / "data" / "a"), 0, 18, start=6)
            run_main_once(folder, data, MIXING_RUN_OPTIONS)
        return main_run_record(folder)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, worker_id):
    """An untrained tiny model saved with its companions and published, as
    main.py would leave it, for tests where training is not the point (the
    companions, unreadable files, odd folders): classes cat and dog of the
    flat folder `data` (8 each). Keys: data, artifacts, run."""
    with built_once(tmp_path_factory, worker_id, "saved_model") as (folder, build):
        if build:
            write_saved_model(folder)
        run = os.path.basename(os.readlink(folder / "artifacts" / "latest"))
        return {"root": folder, "data": str(folder / "data"), "artifacts": folder / "artifacts",
                "run": folder / "artifacts" / "runs" / run}


def write_saved_model(folder):
    import artifacts
    import config
    import model_builder
    import splits

    data = make_flat_dataset(folder / "data", classes=("cat", "dog"), per_class=8)
    index = splits.index_dataset(data, 0.15, 0.15, seed=42)
    run_id, run_folder = artifacts.new_run(str(folder / "artifacts"), str(folder / "results"))
    model = model_builder.build_classifier(2, image_size=32, alpha=0.35, weights="none")
    path = artifacts.save_model(model, os.path.join(run_folder, artifacts.MODEL_FILE))
    options = {**config.saved_options(config.DEFAULTS), "image_dir": index.root, "image_size": 32, "alpha": 0.35,
               "weights": "none", "augment": 0}
    run_config = {
        "image_size": 32, "backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "seed": 42,
        "image_dir": index.root, "class_names": list(index.class_names), "run": run_id, "status": "finished",
        "options": options, "model_sha256": artifacts.file_sha256(path),
    }
    artifacts.write_companions(run_folder, index.class_names, splits.manifest_rows(index), run_config)
    artifacts.publish(str(folder / "artifacts"), run_folder)
    with open(folder / "done.json", "w", encoding="utf-8") as handle:
        json.dump({"run": run_id}, handle)


def pytest_collection_modifyitems(session, config, items):
    """Files with the most heavy (then slow) tests first, each keeping its
    own order: pytest-xdist's --dist loadfile hands whole files to its two
    processes in collection order, and a long file last would leave one
    process waiting for the other at the end. (xdist's own default hands
    out the files with the most tests first, which put the three heaviest
    files last; pytest.ini's --no-loadscope-reorder keeps this order.)"""
    weight = {}
    for item in items:
        heavy, slow = weight.get(item.fspath, (0, 0))
        weight[item.fspath] = (heavy + bool(item.get_closest_marker("heavy")), slow + bool(item.get_closest_marker("slow")))
    order = sorted(weight, key=lambda path: (-weight[path][0], -weight[path][1], str(path)))
    rank = {path: position for position, path in enumerate(order)}
    items.sort(key=lambda item: rank[item.fspath])
