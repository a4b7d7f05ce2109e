"""Labelling a big folder: `predict.py --images DIR` against the plain Keras
way with the same saved model, each a whole process timed from outside,
with the ratio and the peak resident memory.

    python benchmarks/make_photos.py --out /tmp/photos --count 2000
    python main.py --image_dir /tmp/photos --weights none --image_size 224 --epochs 1 \
        --artifacts_dir /tmp/pred_art --results_dir /tmp/pred_res --show 0
    python benchmarks/predict_bench.py --images /tmp/photos --artifacts_dir /tmp/pred_art --pairs 3
    python benchmarks/predict_bench.py --images /tmp/photos --artifacts_dir /tmp/pred_art --rss --multiplier 4
    python benchmarks/predict_bench.py --images /tmp/photos --artifacts_dir /tmp/pred_art --profile

ours:  python predict.py --images DIR --artifacts_dir ART --results_dir TMP --show 0
       (the audit of the files, calibrated confidences, --top_k columns,
       the trust columns, a table, the gallery and the report)
plain: this script with --only plain: keras.models.load_model of the same
       best_model.keras, keras.utils.image_dataset_from_directory(DIR,
       labels=None, shuffle=False, batch_size=32), model.predict, and a CSV
       of path and top-1 class name

The runs are interleaved pairs (ours, plain, plain, ours, ...), so a
change of the machine's speed falls on both; each pair's ratio is ours /
plain wall time, and the line to read is the median ratio with the spread
of the pairs. Peak RSS is each process's own (os.wait4's ru_maxrss).
--rss measures both at the folder's files and at `--multiplier` times as
many (hard links under a temporary folder, as memory_bench.py makes
them): a program that streams holds about the same at both. --profile
runs each once more, with a clock around each stage (ours: its STAGES'
functions; plain: each step), and prints where the seconds go.
"""

import argparse
import csv
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import memory_bench  # noqa: E402  (benchmarks/ is this script's folder: linked_copy)
import pairs  # noqa: E402


def plain_predict(images, model_path, image_size, batch_size, out):
    """The plain Keras way: load the model, read the folder with
    image_dataset_from_directory (no labels, no shuffle), model.predict,
    and a CSV of path and top-1 class name (class_index.json beside the
    model, as main.py saves it). Returns [(stage, seconds)]."""
    start = time.perf_counter()
    stages = []

    def done(stage):
        nonlocal start
        stages.append((stage, time.perf_counter() - start))
        start = time.perf_counter()

    import keras
    import numpy as np

    done("import keras")
    model = keras.models.load_model(model_path)
    with open(os.path.join(os.path.dirname(os.path.realpath(model_path)), "class_index.json"), encoding="utf-8") as handle:
        index = json.load(handle)
    class_names = [index[str(number)] for number in range(len(index))]
    done("load the model")
    dataset = keras.utils.image_dataset_from_directory(
        images, labels=None, shuffle=False, image_size=(image_size, image_size), batch_size=batch_size, verbose=False,
    )
    done("list the files, build the dataset")
    probabilities = model.predict(dataset, verbose=0)
    done("model.predict (tracing included)")
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "predicted_class"])
        writer.writerows(zip(dataset.file_paths, (class_names[i] for i in np.argmax(probabilities, axis=1))))
    done("the CSV")
    return stages


# Where predict.py's seconds go: (stage, module, function) whose time a
# clock around each call adds up. The loop's row is predict_batches less
# the trace it starts with (trace_for_any_batch_size).
STAGES = (
    ("start-up: TensorFlow and Keras imported", "console", "start_tensorflow"),
    ("the files listed (--images, collect_images)", "predict", "collect_images"),
    ("the model loaded, companions checked", "inference", "load_trained_model"),
    ("the input pipeline built (load_image traced)", "data_loader", "prediction_dataset"),
    ("the predict function traced", "inference", "trace_for_any_batch_size"),
    ("the prediction loop (read, decode, predict)", "inference", "predict_batches"),
    ("the rows (top-k, trust columns)", "predictions_csv", "rows_of"),
    ("the CSV written", "artifacts", "write_csv"),
    ("the table printed", "predict", "print_table"),
    ("the gallery's images read", "figures", "gallery_items"),
    ("the gallery drawn", "visualize", "plot_prediction_gallery"),
    ("the report written", "predict", "write_report"),
)


def clocked(function, stage, spent):
    """`function`, adding the seconds of each call to spent[stage]."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - start

    return call


def profile_ours(arguments):
    """Runs predict.py's main with its command-line `arguments` in this
    process, a clock around each of the STAGES' functions (no profiler:
    cProfile slows the Python-heavy stages, imports and tracing, by up to
    2x); returns [(stage, seconds)], with the import of predict.py and
    everything else."""
    start = time.perf_counter()
    import predict

    imported = time.perf_counter() - start
    spent = {}
    for stage, module_name, name in STAGES:
        module = importlib.import_module(module_name)
        setattr(module, name, clocked(getattr(module, name), stage, spent))
    start = time.perf_counter()
    predict.main(arguments)
    total = time.perf_counter() - start
    trace = spent.get(STAGES[4][0], 0.0)
    stages = [(stage, spent.get(stage, 0.0) - (trace if "loop" in stage else 0.0)) for stage, _, _ in STAGES]
    return [("import predict.py (matplotlib included)", imported)] + stages + [
        ("everything else", total - sum(seconds for _, seconds in stages))
    ]


def profile(images, args, results_dir):
    """One profiled run of each (a subprocess each, not timed from
    outside): where the seconds go, stage by stage."""
    for name in ("ours", "plain"):
        command = commands(images, args, results_dir)[name]
        if name == "ours":  # predict.py's arguments, after --only profile
            command = [sys.executable, os.path.abspath(__file__), "--only", "profile", *command[2:]]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}, cwd=ROOT)
        stages = [printed.split("\t") for printed in done.stdout.splitlines() if printed.startswith("stage\t")]
        if done.returncode or not stages:
            sys.exit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        print(f"{name}: {sum(float(seconds) for _, _, seconds in stages):.1f} s")
        for _, stage, seconds in stages:
            print(f"  {float(seconds):7.2f} s  {stage}")


def timed(command):
    """Runs `command` (its output kept, printed only if it fails); returns
    (wall seconds, its peak RSS in MiB)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        # Reaped by wait4 (for the child's own rusage), so Popen is told.
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            log.seek(0)
            sys.exit(f"failed (exit {process.returncode}): {' '.join(command)}\n{log.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def commands(images, args, results_dir):
    """{"ours": predict.py's command line, "plain": this script's --only plain}."""
    ours = [sys.executable, os.path.join(ROOT, "predict.py"), "--images", images, "--artifacts_dir", args.artifacts_dir,
            "--results_dir", results_dir, "--show", "0", "--batch_size", str(args.batch_size)]
    plain = [sys.executable, os.path.abspath(__file__), "--only", "plain", "--images", images,
             "--artifacts_dir", args.artifacts_dir, "--batch_size", str(args.batch_size),
             "--out", os.path.join(results_dir, "plain.csv")]
    return {"ours": ours, "plain": plain}


def paired_runs(images, args, results_dir):
    """Interleaved pairs (ours, plain), (plain, ours), ...; returns
    [{"ours": (wall, rss), "plain": (wall, rss)}] per pair."""
    lines = commands(images, args, results_dir)

    def say(number, _, pair):
        print(f"pair {number + 1}: ours {pair['ours'][0]:6.1f} s ({pair['ours'][1]:6.0f} MiB)  "
              f"plain {pair['plain'][0]:6.1f} s ({pair['plain'][1]:6.0f} MiB)  "
              f"ratio x{pair['ours'][0] / pair['plain'][0]:.3f}", flush=True)

    return pairs.run_pairs(args.pairs, lambda side: timed(lines[side]), ("ours", "plain"), say)


def summary(measured, count):
    """The median wall times, the median of the pairs' ratios and their spread."""
    ratios = [pair["ours"][0] / pair["plain"][0] for pair in measured]
    ours = statistics.median(pair["ours"][0] for pair in measured)
    plain = statistics.median(pair["plain"][0] for pair in measured)
    print(f"{count} images, {len(measured)} pairs: ours {ours:.1f} s, plain {plain:.1f} s (medians)")
    print(f"ratio ours/plain: median x{statistics.median(ratios):.3f} (pairs x{min(ratios):.3f} to x{max(ratios):.3f}; "
          "goal <= x1.10)")


def rss(args, results_dir):
    """Peak RSS of one run each of ours and plain at the folder's files and
    at --multiplier times as many."""
    count = len(memory_bench.list_files(args.images))
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as folder:
        many = memory_bench.linked_copy(args.images, args.multiplier, folder)
        figures = {}
        for label, images in ((count, args.images), (count * args.multiplier, many)):
            lines = commands(images, args, results_dir)
            figures[label] = {name: timed(lines[name]) for name in ("ours", "plain")}
    for name in ("ours", "plain"):
        small, large = figures[count][name][1], figures[count * args.multiplier][name][1]
        print(f"peak RSS {name:5s}: {count} images {small:7.0f} MiB, {count * args.multiplier} images {large:7.0f} MiB "
              f"(x{large / small:.3f})")


def build_parser():
    parser = argparse.ArgumentParser(description="predict.py --images vs the plain Keras way, whole processes.")
    parser.add_argument("--images", required=True, help="a folder of images (subfolders searched)")
    parser.add_argument("--artifacts_dir", required=True, help="a main.py run's ARTIFACTS_DIR (its best_model.keras)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3, help="interleaved pairs of runs (ours, plain)")
    parser.add_argument("--rss", action="store_true", help="peak RSS at the folder's files and --multiplier times as many")
    parser.add_argument("--multiplier", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="where each one's seconds go, stage by stage (one run each)")
    parser.add_argument("--only", choices=("plain", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def print_stages(stages):
    for stage, seconds in stages:
        print(f"stage\t{stage}\t{seconds:.3f}")


def main(argv=None):
    if argv is None and sys.argv[1:3] == ["--only", "profile"]:
        # predict.py's own command line follows (see profile()).
        print_stages(profile_ours(sys.argv[3:]))
        return 0
    args = build_parser().parse_args(argv)
    if args.only == "plain":
        model_path = os.path.join(args.artifacts_dir, "best_model.keras")
        with open(os.path.join(os.path.dirname(os.path.realpath(model_path)), "run_config.json"), encoding="utf-8") as handle:
            image_size = int(json.load(handle)["image_size"])
        print_stages(plain_predict(args.images, model_path, image_size, args.batch_size, args.out))
        return 0
    with tempfile.TemporaryDirectory(prefix="predict-bench-results-") as results_dir:
        if args.profile:
            profile(args.images, args, results_dir)
        elif args.rss:
            rss(args, results_dir)
        else:
            summary(paired_runs(args.images, args, results_dir), len(memory_bench.list_files(args.images)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
