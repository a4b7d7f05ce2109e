"""Measures --balance and the training-batch options on small real folders
(issue 20): two tables, printed as markdown.

1. Imbalanced textures (brick/grass/gravel at 200/60/20 training images, 32 px,
   the test split balanced, 20 each): --balance none, weights, oversample
   and focal, the same options otherwise, 3 seeds each; the median
   balanced accuracy, macro F1 and the minority class's (gravel) recall.
2. Faces vs non-faces (scikit-image's lfw_subset, 100 + 100 at 25x25,
   read at 32 px) from scratch: today's defaults and with the new options,
   3 seeds each, median test accuracy; against logistic regression on the
   pixels (5-fold on all 200 images, and on the tool's own train/test split).

    python benchmarks/make_small_folders.py --kind textures --counts 200,60,20 --val 12 --test 20 --out /tmp/imb
    python benchmarks/make_small_folders.py --kind faces --out /tmp/faces
    python benchmarks/balance_bench.py --textures /tmp/imb --faces /tmp/faces --work /tmp/balance_bench

Each training is one main.py process (one at a time); its result is one
line of WORK/results.jsonl, so an interrupted measurement continues where
it stopped. Only the tables: `--tables`.
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (1, 2, 3)
# Small and from scratch (no download): MobileNetV2 at width 0.35.
COMMON = ["--weights", "none", "--alpha", "0.35", "--calibrate", "0", "--show", "0", "--batch_size", "32"]
# 32 px and 15-20 epochs: what 2 shared CPU cores could measure in the time
# there was (the machine was shared by five agents; a 64 px run took 11 min).
TEXTURES = ["--image_size", "32", "--epochs", "15", "--patience", "15"]
FACES = ["--image_size", "32", "--epochs", "20", "--patience", "20"]
BALANCE_MODES = ("none", "weights", "oversample", "focal")
FACE_SETTINGS = {
    "today's defaults": [],
    "--label_smoothing 0.1": ["--label_smoothing", "0.1"],
    "--mixup 0.2": ["--mixup", "0.2"],
    "--cutmix 1": ["--cutmix", "1"],
}


def trainings(textures, faces):
    """(table, setting, seed, image_dir, extra options) of every training,
    seed by seed: an interrupted measurement has every setting of a seed."""
    jobs = []
    for seed in SEEDS:
        for mode in BALANCE_MODES:
            jobs.append(("textures", mode, seed, textures, [*TEXTURES, "--balance", mode]))
        for name, extra in FACE_SETTINGS.items():
            jobs.append(("faces", name, seed, faces, [*FACES, *extra]))
    return jobs


def train_once(image_dir, extra, seed, work):
    """One main.py training; returns its metrics.json."""
    folder = os.path.join(work, f"run_{len(os.listdir(work))}")
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", image_dir, "--seed", str(seed),
               *COMMON, *extra, "--artifacts_dir", os.path.join(folder, "art"),
               "--results_dir", os.path.join(folder, "res")]
    with open(os.path.join(work, "log.txt"), "a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    metrics_root = os.path.join(folder, "res", "metrics")
    (stamp,) = os.listdir(metrics_root)
    with open(os.path.join(metrics_root, stamp, "metrics.json")) as handle:
        return json.load(handle)


def summary(metrics, minority):
    per_class = metrics["per_class"]
    recalls = [row["recall"] for row in per_class.values()]
    return {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": sum(recalls) / len(recalls),
        "macro_f1": metrics["macro_avg"]["f1"],
        "minority_recall": per_class[minority]["recall"] if minority in per_class else None,
    }


def logistic_regression(faces):
    """Logistic regression on the raw pixels: 5-fold accuracy on every
    image, and trained on the tool's train+val split, scored on its test
    split (from one of the faces runs' split_manifest.csv)."""
    import numpy as np
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = sorted(os.listdir(faces))
    paths, labels = [], []
    for number, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(faces, name))):
            paths.append(os.path.join(faces, name, file))
            labels.append(number)
    pixels = np.stack([np.asarray(Image.open(p).convert("L"), np.float32).ravel() for p in paths])
    labels = np.array(labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    folds = cross_val_score(model, pixels, labels, cv=5)
    return float(np.mean(folds)), pixels, labels, paths, model


def split_score(work, faces, pixels, labels, paths, model):
    """Logistic regression on a faces run's own split (train + val -> test):
    the first faces run's split_manifest.csv (paths relative to FACES)."""
    import numpy as np

    for name in sorted(os.listdir(work), key=lambda name: int(name.split("_")[-1]) if name.startswith("run_") else -1):
        runs = os.path.join(work, name, "art", "runs")
        if not name.startswith("run_") or not os.path.isdir(runs):
            continue
        with open(os.path.join(runs, os.listdir(runs)[0], "split_manifest.csv"), newline="") as handle:
            split_of = {os.path.join(faces, row["path"]): row["split"] for row in csv.DictReader(handle)}
        if not all(path in split_of for path in paths):
            continue  # a textures run
        test = np.array([split_of[path] == "test" for path in paths])
        model.fit(pixels[~test], labels[~test])
        return float(model.score(pixels[test], labels[test])), int(test.sum())
    return None, 0


def median(values):
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else float("nan")


def runs_of(rows, key):
    return ", ".join(f"{row[key]:.2f}" for row in rows)


def print_tables(results, faces, work):
    print("\n### Imbalanced textures (200/60/20 training images; test 20 per class), median over the "
          "runs measured (seeds " f"{', '.join(map(str, SEEDS))} when complete)\n")
    print("| --balance | balanced accuracy | macro F1 | gravel (minority) recall | runs (balanced accuracy each) |")
    print("|---|---:|---:|---:|---:|")
    for mode in BALANCE_MODES:
        rows = [row for row in results if row["table"] == "textures" and row["setting"] == mode]
        if rows:
            print(f"| {mode} | {median([r['balanced_accuracy'] for r in rows]):.3f} | "
                  f"{median([r['macro_f1'] for r in rows]):.3f} | {median([r['minority_recall'] for r in rows]):.3f} "
                  f"| {len(rows)} ({runs_of(rows, 'balanced_accuracy')}) |")
    print("\n### Faces vs non-faces (lfw_subset, 100 + 100, from scratch at 32 px), median over the "
          "runs measured (seeds " f"{', '.join(map(str, SEEDS))} when complete)\n")
    print("| options | test accuracy (30 images) | runs (accuracy each) |")
    print("|---|---:|---:|")
    for name in FACE_SETTINGS:
        rows = [row for row in results if row["table"] == "faces" and row["setting"] == name]
        if rows:
            print(f"| {name} | {median([r['accuracy'] for r in rows]):.3f} | "
                  f"{len(rows)} ({runs_of(rows, 'accuracy')}) |")
    if faces:
        folds, pixels, labels, paths, model = logistic_regression(faces)
        print(f"| logistic regression on the pixels, 5-fold (all 200) | {folds:.3f} | |")
        score, count = split_score(work, faces, pixels, labels, paths, model)
        if score is not None:
            print(f"| logistic regression on the pixels, the tool's split (train+val -> test) | {score:.3f} | "
                  f"{count} images |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", required=True)
    parser.add_argument("--faces", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--tables", action="store_true", help="only print the tables of what was measured")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    results_path = os.path.join(args.work, "results.jsonl")
    results = []
    if os.path.exists(results_path):
        with open(results_path) as handle:
            results = [json.loads(line) for line in handle if line.strip()]
    done = {(row["table"], row["setting"], row["seed"]) for row in results}
    if not args.tables:
        for table, setting, seed, image_dir, extra in trainings(args.textures, args.faces):
            if (table, setting, seed) in done:
                continue
            metrics = train_once(image_dir, extra, seed, args.work)
            row = {"table": table, "setting": setting, "seed": seed, **summary(metrics, "gravel")}
            results.append(row)
            with open(results_path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print_tables(results, args.faces, args.work)


if __name__ == "__main__":
    main()
