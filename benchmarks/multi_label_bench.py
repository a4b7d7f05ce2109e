"""Multi-label from scratch: this tool against the standard Keras way, on the
same files and the same split.

Builds a multi-label folder of real-photo mosaics (make_multi_label.py),
trains it with `main.py` (weights none, --image_size SIZE, its defaults
otherwise), then trains the standard Keras way on exactly the run's
train/val/test files (its split_manifest.csv): MobileNetV2(weights=None,
classifier_activation="sigmoid") at the same size, Adam, binary
cross-entropy, EarlyStopping(val_loss, patience 5, best weights restored),
thresholds at 0.5. Both are scored on the test split with scikit-learn:
micro-F1, macro-F1, mAP, exact-set accuracy, next to the prevalence
baseline (mAP of ranking every image the same).

    python benchmarks/multi_label_bench.py --out /tmp/ml_bench --count 600 --size 96 --epochs 40

Prints one table (markdown) and the wall time of each way.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import make_multi_label  # noqa: E402


def ours(folder, size, epochs, work, seed):
    """Runs main.py; returns (metrics.json, run folder, seconds)."""
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", folder,
               "--labels_csv", os.path.join(folder, "labels.csv"), "--weights", "none", "--image_size", str(size),
               "--epochs", str(epochs), "--augment", "1", "--seed", str(seed), "--show", "0",
               "--artifacts_dir", os.path.join(work, "artifacts"), "--results_dir", os.path.join(work, "results")]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    runs = os.path.join(work, "artifacts", "runs")
    run = os.path.join(runs, sorted(os.listdir(runs))[-1])
    metrics_root = os.path.join(work, "results", "metrics")
    stamp = sorted(os.listdir(metrics_root))[-1]
    with open(os.path.join(metrics_root, stamp, "metrics.json")) as handle:
        return json.load(handle), run, seconds


def manifest(run, delimiter=";"):
    """{split: [(path, labels)]} from a run's split_manifest.csv, and the
    run's label names."""
    with open(os.path.join(run, "run_config.json")) as handle:
        names = json.load(handle)["class_names"]
    splits = {"train": [], "val": [], "test": []}
    with open(os.path.join(run, "split_manifest.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            labels = [label for label in row["class"].split(delimiter) if label]
            splits[row["split"]].append((row["path"], labels))
    return splits, names


def keras_way(folder, splits, names, size, epochs, seed):
    """The standard Keras way on the same files; returns (test truth,
    test probabilities, seconds)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)

    def dataset(rows, shuffle):
        paths = [os.path.join(folder, path) for path, _ in rows]
        targets = np.array([[1.0 if name in labels else 0.0 for name in names] for _, labels in rows], np.float32)

        def load(path, target):
            image = tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            return tf.image.resize(image, (size, size)), target

        data = tf.data.Dataset.from_tensor_slices((paths, targets))
        if shuffle:
            data = data.shuffle(len(paths), seed=seed)
        return data.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(32).prefetch(tf.data.AUTOTUNE), targets

    train, _ = dataset(splits["train"], True)
    val, _ = dataset(splits["val"], False)
    test, truth = dataset(splits["test"], False)
    inputs = keras.Input((size, size, 3))
    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), weights=None, classes=len(names), classifier_activation="sigmoid")
    model = keras.Model(inputs, backbone(keras.applications.mobilenet_v2.preprocess_input(inputs)))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=[keras.metrics.AUC(multi_label=True)])
    start = time.perf_counter()
    model.fit(train, validation_data=val, epochs=epochs, verbose=2, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)])
    probabilities = model.predict(test, verbose=0)
    return truth, probabilities, time.perf_counter() - start


def scores(truth, probabilities, threshold=0.5):
    from sklearn.metrics import average_precision_score, f1_score

    predicted = probabilities >= threshold
    present = truth.sum(axis=0) > 0
    return {
        "micro_f1": f1_score(truth, predicted, average="micro", zero_division=0),
        "macro_f1": f1_score(truth, predicted, average="macro", zero_division=0),
        "mAP": float(np.mean([average_precision_score(truth[:, i], probabilities[:, i])
                              for i in np.flatnonzero(present)])),
        "exact_set": float(np.mean((predicted == (truth > 0.5)).all(axis=1))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Work folder (the dataset goes in OUT/data)")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    folder = os.path.join(args.out, "data")
    if not os.path.isdir(folder):
        make_multi_label.write(folder, args.count, args.size, seed=0)
    metrics, run, our_seconds = ours(folder, args.size, args.epochs, os.path.join(args.out, "ours"), args.seed)
    splits, names = manifest(run)
    truth, probabilities, keras_seconds = keras_way(folder, splits, names, args.size, args.epochs, args.seed)
    theirs = scores(truth, probabilities)
    prevalence = float(np.mean(truth.mean(axis=0)[truth.sum(axis=0) > 0]))
    print(f"\n{len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])} images (train/val/test), "
          f"{len(names)} labels, {args.size} px, from scratch, up to {args.epochs} epochs\n")
    print("| way | micro-F1 | macro-F1 | mAP | exact set | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| this tool (`main.py`, thresholds from validation) | {metrics['micro_avg']['f1']:.3f} | "
          f"{metrics['macro_avg']['f1']:.3f} | {metrics['mAP']:.3f} | {metrics['subset_accuracy']:.3f} | "
          f"{our_seconds:.0f} |")
    print(f"| standard Keras (MobileNetV2, sigmoid + BCE, EarlyStopping, 0.5) | {theirs['micro_f1']:.3f} | "
          f"{theirs['macro_f1']:.3f} | {theirs['mAP']:.3f} | {theirs['exact_set']:.3f} | {keras_seconds:.0f} |")
    print(f"| prevalence baseline (every image ranked the same) | | | {prevalence:.3f} | "
          f"{metrics['baselines']['majority_subset_accuracy']:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
