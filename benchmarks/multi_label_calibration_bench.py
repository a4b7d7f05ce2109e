"""Multi-label calibration: one temperature shared by every label's sigmoid,
or one temperature per label?

Takes a finished multi-label run (its model, its split manifest), reads
the logits of its validation and test images from the model before its
temperature (the "logits" layer), fits on validation (a) one shared T over
every (image, label) pair and (b) one T per label, and reports on the test
images the pooled ECE (every pair as a yes/no prediction), the mean of the
per-label ECEs and the binary NLL, for T = 1, shared and per label.

    python benchmarks/multi_label_calibration_bench.py --run ARTIFACTS/runs/<stamp>

Prints one markdown table.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import artifacts  # noqa: E402
import calibration  # noqa: E402
import data_loader  # noqa: E402
import inference  # noqa: E402
import label_metrics  # noqa: E402


def split_data(run, config, split):
    rows = [row for row in artifacts.read_manifest(run) if row.split == split]
    delimiter = config["options"].get("label_delimiter", ";")
    names = config["class_names"]
    paths = [os.path.join(config["image_dir"], row.path) for row in rows]
    labels = np.array([[1.0 if name in row.label.split(delimiter) else 0.0 for name in names] for row in rows],
                      np.float32)
    return paths, labels


def fit_binary(logits, labels):
    """The T minimizing the binary NLL of sigmoid(logits / T) over the pairs."""
    truth, pairs = label_metrics.as_binary(labels, logits)
    return calibration.fit_temperature(pairs[:, 1:] * np.array([[0.0, 1.0]]), truth)


def sigmoid(values):
    return 1.0 / (1.0 + np.exp(-values))


def report(labels, probabilities):
    truth, pairs = label_metrics.as_binary(labels, probabilities)
    per_label = [calibration.expected_calibration_error(*label_metrics.as_binary(labels[:, [i]], probabilities[:, [i]]))
                 for i in range(labels.shape[1])]
    return (calibration.expected_calibration_error(truth, pairs), float(np.mean(per_label)),
            label_metrics.binary_cross_entropy(labels, probabilities))


def main(argv=None):
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="A finished multi-label run folder")
    args = parser.parse_args(argv)
    config = artifacts.read_run_config(args.run)
    model = keras.models.load_model(os.path.join(args.run, artifacts.MODEL_FILE))
    logits_model = calibration.logits_model(model)
    logits = {}
    for split in ("val", "test"):
        paths, labels = split_data(args.run, config, split)
        data = data_loader.make_dataset(paths, labels, image_size=config["image_size"], batch_size=32)
        logits[split] = inference.predict_batches(logits_model, data)
    (val_logits, val_labels), (test_logits, test_labels) = logits["val"], logits["test"]
    shared = fit_binary(val_logits, val_labels)
    per_label = np.array([fit_binary(val_logits[:, [i]], val_labels[:, [i]]) for i in range(val_labels.shape[1])])
    print(f"{len(val_labels)} validation / {len(test_labels)} test images, {val_labels.shape[1]} labels; "
          f"shared T = {shared:.3f}; per-label T = {', '.join(f'{value:.2f}' for value in per_label)}\n")
    print("| temperature | test ECE (pooled pairs) | mean per-label ECE | test NLL (binary) |")
    print("|---|---:|---:|---:|")
    for name, temperature in (("none (T = 1)", 1.0), ("one shared T", shared), ("one T per label", per_label)):
        pooled, mean_label, nll = report(test_labels, sigmoid(test_logits / temperature))
        print(f"| {name} | {pooled:.2%} | {mean_label:.2%} | {nll:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
