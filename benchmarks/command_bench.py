"""The fixed cost of a run: main.py's whole process vs the plain Keras
script doing the same training, on the same pre-split folder.

    python benchmarks/command_bench.py --split_from /tmp/photos --per_class 150 \
        --epochs 5 --image_size 64 --batch_size 32 --pairs 3
    python benchmarks/command_bench.py --image_dir /tmp/photos-split --pairs 3

The folder holds train/, val/ and test/, each with one subfolder per class;
--split_from makes one (hard links, or copies, in a temporary folder) from
a folder of class folders (make_photos.py's): of each class's first
--per_class files in name order, 2/3 train, 1/6 val and 1/6 test.
Both sides train MobileNetV2 from random weights (nothing is downloaded)
with the same batch size, epochs and head, validate every epoch, evaluate on
the test split and save the model. Plain: image_dataset_from_directory
(.cache().prefetch(), as TensorFlow's tutorial writes it; main.py's --cache
auto keeps this folder's decoded images in memory too),
keras.applications.MobileNetV2(weights=None) + GlobalAveragePooling +
Dropout + a softmax Dense, compile, fit, evaluate, model.save. Ours:
`main.py --weights none --augment 0 --show 0`, with everything else main.py
does by default (the audit, calibration, evaluation, figures, the report).

Each side runs as a whole process, timed from outside, in interleaved pairs
(ours, plain, plain, ours, ...) because the machine's speed drifts. Prints
each pair, the per-pair ratios (ours / plain), their median and spread, and
the median time of each of main.py's stages (from its stage log) and of the
plain script's steps (printed the same way), each with its start-up before
its first line (imports) and the rest (between and after the stages, exit).
"""

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import pairs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL = 1.10


@contextlib.contextmanager
def step(name):
    """The plain script's steps in main.py's stage-log format, so both
    sides' times are read the same way."""
    print(f"==> {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - start:.1f}s", flush=True)


def plain_run(args):
    """The plain Keras script: what a user writes by hand for the same job."""
    import keras

    import tensorflow as tf

    def folder(split, shuffle):
        dataset = keras.utils.image_dataset_from_directory(
            os.path.join(args.image_dir, split), image_size=(args.image_size, args.image_size),
            batch_size=args.batch_size, shuffle=shuffle, seed=args.seed, verbose=False,
        )
        # As TensorFlow's image-loading tutorial writes it (and as main.py's
        # --cache auto does for a folder this small): decoded once, then
        # read from memory, so both sides train at the same speed and the
        # difference is what main.py does around training.
        return dataset.cache().prefetch(tf.data.AUTOTUNE), dataset.class_names

    with step("Listing the folders (image_dataset_from_directory)"):
        (train, class_names), (val, _), (test, _) = folder("train", True), folder("val", False), folder("test", False)
    with step("Building the model"):
        keras.utils.set_random_seed(args.seed)
        inputs = keras.Input(shape=(args.image_size, args.image_size, 3))
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
        x = keras.applications.MobileNetV2(
            input_shape=(args.image_size, args.image_size, 3), include_top=False, weights=None
        )(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        x = keras.layers.Dropout(0.2)(x)
        outputs = keras.layers.Dense(len(class_names), activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    with step("Training"):
        model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)
    with step("Evaluating on the test split"):
        loss, accuracy = model.evaluate(test, verbose=0)
        print(f"test accuracy {accuracy:.3f}, loss {loss:.3f}")
    with step("Saving the model"):
        model.save(os.path.join(args.out, "model.keras"))


def make_split(source, per_class, work):
    """A pre-split folder under `work` from `source`'s class folders: of
    each class's first `per_class` files (name order), 2/3 train, 1/6 val,
    the rest test; hard links where the file system allows, else copies.
    Returns its path."""
    root = os.path.join(work, "split")
    for name in sorted(os.listdir(source)):
        folder = os.path.join(source, name)
        if not os.path.isdir(folder):
            continue
        files = sorted(os.listdir(folder))[:per_class]
        train, val = len(files) * 2 // 3, len(files) // 6
        for position, file_name in enumerate(files):
            split = "train" if position < train else "val" if position < train + val else "test"
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            target = os.path.join(root, split, name, file_name)
            try:
                os.link(os.path.join(folder, file_name), target)
            except OSError:
                shutil.copyfile(os.path.join(folder, file_name), target)
    return root


def ours_command(args, out):
    return [
        sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", args.image_dir,
        "--epochs", str(args.epochs), "--image_size", str(args.image_size),
        "--batch_size", str(args.batch_size), "--seed", str(args.seed), "--weights", "none",
        "--augment", "0", "--show", "0",
        "--artifacts_dir", os.path.join(out, "artifacts"), "--results_dir", os.path.join(out, "results"),
    ]


def plain_command(args, out):
    return [
        sys.executable, os.path.abspath(__file__), "--image_dir", args.image_dir,
        "--epochs", str(args.epochs), "--image_size", str(args.image_size),
        "--batch_size", str(args.batch_size), "--seed", str(args.seed), "--only", "plain", "--out", out,
    ]


def timed_process(command):
    """Runs `command`; returns (wall seconds, stage seconds). The stage
    seconds come from its stage log ('==> NAME' ... 'done in X.Xs'), with
    'start-up' (until its first line) and 'rest' (what no stage covers)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    stages, first_line, name = {}, None, None
    for line in process.stdout:
        if first_line is None:
            first_line = time.perf_counter() - start
        if line.startswith("==> "):
            name = line[4:].strip()
        elif line.startswith("    done in ") and name:
            stages[name] = stages.get(name, 0.0) + float(line.split()[-1].rstrip("s"))
            name = None
    error = process.stderr.read()
    process.wait()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{command[1]} failed ({process.returncode}):\n{error[-3000:]}")
    if stages:
        stages = {"start-up (before the first line)": first_line, **stages,
                  "rest (between and after the stages, exit)": wall - first_line - sum(stages.values())}
    return wall, stages


def one_side(args, side, work):
    out = tempfile.mkdtemp(prefix=f"{side}-", dir=work)
    try:
        return timed_process((ours_command if side == "ours" else plain_command)(args, out))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def stage_table(stage_runs):
    """Lines: each stage's median seconds over the runs, in log order."""
    names = list(dict.fromkeys(name for stages in stage_runs for name in stages))
    lines = []
    for name in names:
        values = [stages.get(name, 0.0) for stages in stage_runs]
        lines.append(f"  {name:58s} {statistics.median(values):6.1f} s  ({min(values):.1f}-{max(values):.1f})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description="main.py's whole run vs the plain Keras script, in interleaved pairs.")
    parser.add_argument("--image_dir", help="A pre-split folder: train/, val/, test/ of class folders")
    parser.add_argument("--split_from", help="Instead: make the pre-split folder from this folder of class folders")
    parser.add_argument("--per_class", type=int, default=150, help="With --split_from: files of each class used")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--json", help="Also write the figures to this JSON file")
    parser.add_argument("--only", choices=("plain",), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.image_dir is None) == (args.split_from is None):
        print("command_bench: give --image_dir (a pre-split folder) or --split_from (a folder of class folders). "
              f"Received: image_dir={args.image_dir}, split_from={args.split_from}", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="command_bench-")
    try:
        if args.split_from:
            args.image_dir = make_split(args.split_from, args.per_class, work)
        return run_bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_bench(args, work):
    """The plain side alone (--only plain), or the interleaved pairs."""
    for split in ("train", "val", "test"):
        if not os.path.isdir(os.path.join(args.image_dir, split)):
            print(f"command_bench: --image_dir needs train/, val/ and test/ folders. Received: "
                  f"image_dir={args.image_dir}", file=sys.stderr)
            return 2
    if args.only:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        plain_run(args)
        return 0

    stage_runs = {"ours": [], "plain": []}

    def measure(side):
        wall, stages = one_side(args, side, work)
        stage_runs[side].append(stages)
        return wall

    def say(number, order, walls):
        print(f"pair {number + 1} ({order[0]} first): ours {walls['ours']:6.1f} s, plain {walls['plain']:6.1f} s, "
              f"ours / plain x{walls['ours'] / walls['plain']:.3f}", flush=True)

    measured = pairs.run_pairs(args.pairs, measure, ("ours", "plain"), say)
    ratios = [walls["ours"] / walls["plain"] for walls in measured]
    median = statistics.median(ratios)
    print(f"ours / plain, per pair: {', '.join(f'x{ratio:.3f}' for ratio in ratios)}")
    print(f"median x{median:.3f} (spread x{min(ratios):.3f} to x{max(ratios):.3f}); goal <= x{GOAL:.2f}: "
          f"{'met' if median <= GOAL else 'not met'}")
    print(f"median wall: ours {statistics.median(w['ours'] for w in measured):.1f} s, "
          f"plain {statistics.median(w['plain'] for w in measured):.1f} s")
    for side, title in (("ours", "main.py's stages"), ("plain", "the plain script's steps")):
        print(f"{title} (median seconds over its runs, min-max):")
        for line in stage_table(stage_runs[side]):
            print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"pairs": measured, "ratios": ratios, "median": median, "stages": stage_runs}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
