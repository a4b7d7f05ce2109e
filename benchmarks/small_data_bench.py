"""Small data from scratch: does training with the default stopping rules
learn a small real folder, or stop before the model does? Median test
accuracy of several seeds per folder and setting, with when each run
stopped and which epoch it kept.

    python benchmarks/small_data_bench.py --work /tmp/small_bench \
        --setting "today=" --setting "patience30=--patience 30"

Three folders are made once under WORK by make_small_folders.py (under
200 training images each): textures 120/36/12 (imbalanced, pre-split),
objects 40/40/40/40 (pre-split) and faces (flat, 200 images, the tool
splits them). Every run is `main.py --weights none --image_size 64
--epochs 20 --batch_size 16 --seed S` plus the setting's options, in its
own process. Results are appended to WORK/results.jsonl, so a rerun skips
the runs already done (delete the file to measure again); --table only
prints the table of what is there. Accuracy numbers do not depend on the
machine's load; the minutes printed do.
"""

import argparse
import csv
import glob
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {
    "textures 120/36/12": ["--kind", "textures", "--counts", "120,36,12"],
    "objects 4x40": ["--kind", "objects", "--counts", "40,40,40,40"],
    "faces flat 200": ["--kind", "faces", "--flat"],
}
COMMON = ["--weights", "none", "--image_size", "64", "--epochs", "20", "--batch_size", "16",
          "--show", "0", "--calibrate", "1"]


def folder_path(work, name):
    return os.path.join(work, "data", name.split()[0])


def make_folders(work):
    for name, arguments in FOLDERS.items():
        path = folder_path(work, name)
        if not os.path.isdir(path):
            subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "make_small_folders.py"),
                            *arguments, "--out", path], check=True)


def read_history(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def one_run(work, folder, setting, extra, seed):
    """Trains once; returns the row recorded for it."""
    out = os.path.join(work, "runs", f"{folder.split()[0]}-{setting}-{seed}")
    arguments = [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", folder_path(work, folder),
                 *COMMON, "--seed", str(seed), "--artifacts_dir", os.path.join(out, "artifacts"),
                 "--results_dir", os.path.join(out, "results"), *shlex.split(extra)]
    start = time.time()
    finished = subprocess.run(arguments, capture_output=True, text=True, cwd=ROOT)
    row = {"folder": folder, "setting": setting, "extra": extra, "seed": seed,
           "rc": finished.returncode, "minutes": round((time.time() - start) / 60, 2)}
    results = os.path.join(out, "results")
    metrics_files = sorted(glob.glob(os.path.join(results, "metrics", "*", "metrics.json")))
    history_files = sorted(glob.glob(os.path.join(results, "training_curves", "*", "history.csv")))
    if finished.returncode != 0 or not metrics_files or not history_files:
        row["error"] = (finished.stdout + finished.stderr).strip().splitlines()[-3:]
        return row
    with open(metrics_files[-1], encoding="utf-8") as handle:
        test = json.load(handle)
    history = read_history(history_files[-1])
    val_loss = [float(epoch["val_loss"]) for epoch in history]
    row.update(
        test_accuracy=test["accuracy"],
        majority=test["baselines"]["majority_accuracy"],
        epochs_run=len(history),
        kept_epoch=1 + val_loss.index(min(val_loss)),
        val_accuracy=[round(float(epoch["val_accuracy"]), 3) for epoch in history],
        learning_rate=[float(epoch["learning_rate"]) for epoch in history if "learning_rate" in epoch],
        warned="WARNING" in finished.stdout + finished.stderr,
    )
    return row


def read_results(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def print_table(rows, settings):
    print(f"\n{'folder':22} {'setting':14} {'median test acc':>15}  per seed (acc / epochs run / kept epoch)")
    for folder in FOLDERS:
        for setting in settings:
            mine = [row for row in rows if row["folder"] == folder and row["setting"] == setting
                    and "test_accuracy" in row]
            if not mine:
                continue
            median = statistics.median(row["test_accuracy"] for row in mine)
            seeds = "  ".join(f"s{row['seed']}: {row['test_accuracy']:.3f}/{row['epochs_run']}/{row['kept_epoch']}"
                              for row in sorted(mine, key=lambda row: row["seed"]))
            print(f"{folder:22} {setting:14} {median:15.3f}  {seeds}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="Folder for the data, the runs and results.jsonl")
    parser.add_argument("--setting", action="append", default=[],
                        help="NAME=EXTRA OPTIONS (repeatable); e.g. 'today=' or 'p30=--patience 30'")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--folders", default=",".join(name.split()[0] for name in FOLDERS),
                        help="Which folders, by first word: textures,objects,faces")
    parser.add_argument("--table", action="store_true", help="Only print the table of results.jsonl")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.setting) or {"today": ""}
    results_path = os.path.join(args.work, "results.jsonl")
    if not args.table:
        os.makedirs(args.work, exist_ok=True)
        make_folders(args.work)
        chosen = [name for name in FOLDERS if name.split()[0] in args.folders.split(",")]
        for setting, extra in settings.items():
            for folder in chosen:
                for seed in (int(seed) for seed in args.seeds.split(",")):
                    done = read_results(results_path)
                    if any(row["folder"] == folder and row["setting"] == setting and row["seed"] == seed
                           and row["extra"] == extra for row in done):
                        continue
                    row = one_run(args.work, folder, setting, extra, seed)
                    print(json.dumps(row), flush=True)
                    with open(results_path, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row) + "\n")
    rows = read_results(results_path)
    print_table(rows, list(settings) if args.setting else sorted({row["setting"] for row in rows}))


if __name__ == "__main__":
    main()
