"""Measures training options with cross-validation on small real folders
(issue 34): each setting is one `main.py --folds 5` on each folder, from
scratch, and the table gives the held-out test split's accuracy and
balanced accuracy as the mean +- std over the five fold models, the
training time per fold, and the difference from the first setting (the
baseline) next to the larger of the two spreads.

    python benchmarks/recipe_bench.py --work /tmp/recipe \
        --setting "defaults=" --setting "ema=--ema 1" --setting "cosine=--schedule cosine"
    python benchmarks/recipe_bench.py --work /tmp/recipe --folder textures --folder objects_imbalanced \
        --setting "auto=" --setting "none=--balance none" --setting "oversample=--balance oversample"
    python benchmarks/recipe_bench.py --work /tmp/recipe --table     # only print what is there

The folders are made once under WORK/data by make_small_folders.py
(scikit-image's photos, no download). Every test split is balanced (the
same number of images per class), so its accuracy is also its balanced
accuracy; the training splits of textures and objects_imbalanced are not.
Each result is one line of WORK/results.jsonl, keyed by folder, setting
and options, so an interrupted measurement continues where it stopped and
a changed setting is measured again. Accuracy does not depend on the
machine's load; seconds do, so compare times within one table (the
"time" column is the ratio to the baseline's time on the same folder).
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {
    "textures": ["--kind", "textures", "--counts", "120,36,12"],
    "objects": ["--kind", "objects", "--counts", "40,40,40,40"],
    "faces": ["--kind", "faces", "--flat"],
    "objects_imbalanced": ["--kind", "objects", "--counts", "80,40,20,10"],
}
DEFAULT_FOLDERS = ("objects", "faces", "textures")
FOLDER_TEXT = {
    "textures": "textures 120/36/12 (64 px files)",
    "objects": "objects 4x40 (64 px files)",
    "faces": "faces 100+100 (25 px files)",
    "objects_imbalanced": "objects 80/40/20/10 (64 px files)",
}
# From scratch and small, so that 2 CPU cores can measure the settings:
# MobileNetV2 at width 0.35, 15 epochs, each folder at the size
# --image_size auto gives it (textures and objects 64 px, faces 32 px; at
# 32 px the textures stayed at chance: 0.38 +- 0.05 in 15 epochs).
COMMON = ["--weights", "none", "--alpha", "0.35", "--epochs", "15", "--folds", "5", "--seed", "1", "--show", "0"]


def parse_setting(text):
    """'name=--option value ...' -> (name, [arguments])."""
    name, _, arguments = text.partition("=")
    if not name:
        raise SystemExit(f"--setting needs NAME=OPTIONS. Received: {text!r}")
    return name, shlex.split(arguments)


def make_folder(work, name):
    path = os.path.join(work, "data", name)
    if not os.path.isdir(path):
        subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "make_small_folders.py"),
                        *FOLDERS[name], "--out", path], check=True, stdout=subprocess.DEVNULL)
    return path


def fold_results(artifacts_dir, results_dir):
    """Each fold model's test accuracy, balanced accuracy and training
    seconds, read from the cross-validation's record and the fold runs'
    files."""
    [record_id] = os.listdir(os.path.join(artifacts_dir, "cross_validation"))
    with open(os.path.join(artifacts_dir, "cross_validation", record_id, "cross_validation.json")) as file:
        record = json.load(file)
    folds = []
    for runs in record["runs"].values():
        for run in runs:
            with open(os.path.join(results_dir, "metrics", run, "metrics.json")) as file:
                metrics = json.load(file)
            with open(os.path.join(artifacts_dir, "runs", run, "run_config.json")) as file:
                run_config = json.load(file)
            folds.append({
                "accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"],
                "seconds": run_config["training"]["seconds"], "epochs": run_config["training"]["epochs"],
                "learning_rate": (run_config.get("learning_rate_found") or {}).get("rate"),
                "image_size": run_config["image_size"],
            })
    return folds


def measure(work, folder, name, arguments):
    """Runs one cross-validation; returns its result line."""
    place = os.path.join(work, "runs", folder, name)
    if os.path.isdir(place):
        subprocess.run(["rm", "-rf", place], check=True)
    os.makedirs(place)
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", make_folder(work, folder),
               *COMMON, *arguments, "--artifacts_dir", os.path.join(place, "artifacts"),
               "--results_dir", os.path.join(place, "results")]
    start = time.perf_counter()
    with open(os.path.join(place, "log.txt"), "w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=place)
    wall = time.perf_counter() - start
    if finished.returncode:
        raise SystemExit(f"{folder} / {name} failed (exit {finished.returncode}): see {place}/log.txt")
    return {"folder": folder, "setting": name, "arguments": arguments, "wall_seconds": round(wall, 1),
            "folds": fold_results(os.path.join(place, "artifacts"), os.path.join(place, "results"))}


def read_results(path):
    if not os.path.isfile(path):
        return {}
    results = {}
    with open(path) as file:
        for line in file:
            result = json.loads(line)
            results[(result["folder"], result["setting"], tuple(result["arguments"]))] = result
    return results


def spread(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results, folders, settings):
    """The markdown table: one row per folder and setting."""
    lines = ["| folder | setting | test accuracy | balanced accuracy | vs first (spread) | s/fold | time |",
             "|---|---|---|---|---|---|---|"]
    for folder in folders:
        base = None
        for name, arguments in settings:
            result = results.get((folder, name, tuple(arguments)))
            if result is None:
                continue
            accuracy = spread([fold["accuracy"] for fold in result["folds"]])
            balanced = spread([fold["balanced_accuracy"] for fold in result["folds"]])
            seconds = statistics.mean(fold["seconds"] for fold in result["folds"])
            if base is None:
                base = (balanced, seconds)
                versus, ratio = "(baseline)", "1.00x"
            else:
                gain = balanced[0] - base[0][0]
                noise = max(balanced[1], base[0][1])
                verdict = "gain" if gain > noise else "loss" if -gain > noise else "within spread"
                versus, ratio = f"{gain:+.3f} ({noise:.3f}): {verdict}", f"{seconds / base[1]:.2f}x"
            lines.append(f"| {FOLDER_TEXT.get(folder, folder)} | {name} `{' '.join(arguments) or 'defaults'}` | "
                         f"{accuracy[0]:.3f} +- {accuracy[1]:.3f} | {balanced[0]:.3f} +- {balanced[1]:.3f} | "
                         f"{versus} | {seconds:.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--setting", action="append", default=[], help="NAME=OPTIONS; the first is the baseline")
    parser.add_argument("--folder", action="append", choices=sorted(FOLDERS), help="default: " + ", ".join(DEFAULT_FOLDERS))
    parser.add_argument("--table", action="store_true", help="only print the table of what was measured")
    args = parser.parse_args(argv)
    folders = args.folder or list(DEFAULT_FOLDERS)
    settings = [parse_setting(text) for text in args.setting] or [("defaults", [])]
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(args.work, "results.jsonl")
    results = read_results(path)
    if not args.table:
        for folder in folders:
            for name, arguments in settings:
                if (folder, name, tuple(arguments)) in results:
                    continue
                print(f"measuring {folder} / {name} {' '.join(arguments)}", flush=True)
                result = measure(args.work, folder, name, arguments)
                results[(folder, name, tuple(arguments))] = result
                with open(path, "a") as file:
                    file.write(json.dumps(result) + "\n")
    print(f"MobileNetV2 0.35 from scratch, --image_size auto, 15 epochs, 5 folds (seed 1); `{' '.join(COMMON)}`\n")
    print(table(results, folders, settings))


if __name__ == "__main__":
    main()
