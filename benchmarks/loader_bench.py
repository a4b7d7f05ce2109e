"""Input pipeline throughput: ours (exactly what main.py trains from)
against the standard Keras ways on the same files, as ratios that hold
from run to run.

    python benchmarks/loader_bench.py --image_dir /tmp/photos --image_size 224 \
        --batch_size 32 --pairs 7

The headline (the default): each comparison's two pipelines are built in
this one process and timed epoch by epoch, alternately (ours, peer, peer,
ours, ours, peer, ...), each epoch a fresh iterator over the whole folder
after one warm-up epoch each; the comparisons take their turns pair by
pair, so all of them see the same spells of the machine. Each adjacent
pair of epochs gives one ratio (our images/s over the peer's); printed are
the median ratio over `--pairs` pairs, its interquartile range and its
min-max, and the median images/s of each side; then the same ratio of
images per CPU second of this process, which holds where the clock's does
not (a machine shared with other jobs, or whose cores come and go), and
the cores each side kept busy. Both sides read through tf.data with
AUTOTUNE parallelism, in the same process, so they share the same
threads and the same machine state.

The comparisons (COMPARISONS): ours streaming with augmentation vs
image_dataset_from_directory + RandomFlip/RandomRotation/RandomZoom; ours
without augmentation vs image_dataset_from_directory; ours cached in
memory with augmentation (every epoch after the first, which fills the
cache) vs image_dataset_from_directory without augmentation.

With --processes, the older design: every pipeline (ours and, with
--peers, PEERS) in its own process, `--epochs` timed epochs after a
warm-up, the last one's images/s, median of --repeats processes. Figures
of separate processes swing with the machine's speed; prefer the pairs.
The last line is always `images/s: N` for our first setting.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pairs  # noqa: E402  (benchmarks/ is this script's folder)

PEERS = {
    "bare_tfdata": "bare tf.data: parallel decode + resize, nothing else",
    "idfd": "keras.utils.image_dataset_from_directory, no augmentation",
    "idfd_aug": "image_dataset_from_directory + RandomFlip/RandomRotation/RandomZoom",
    "pydataset": "keras.utils.PyDataset reading with PIL, 2 worker threads",
    "imagedatagenerator": "ImageDataGenerator.flow_from_directory, rotation/zoom/flip",
}


def time_epochs(iterate_epoch, epochs):
    """Runs one warm-up epoch, then `epochs`; returns images/s per timed epoch."""
    iterate_epoch()
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = iterate_epoch()
        rates.append(count / (time.perf_counter() - start))
    return rates


def tf_epoch(dataset):
    def run():
        count = 0
        for images, _ in dataset:
            count += int(images.shape[0])
        return count

    return run


def ours(args):
    import artifacts
    import augment
    import data_loader
    import splits

    # The audit runs here as in main.py (cached outside the dataset), but is
    # not timed: only the epochs are.
    index = splits.index_dataset(args.image_dir, 0.15, 0.15, args.seed, cache_dir=artifacts.audit_cache_dir(os.path.join(ROOT, "model_artifacts")))
    paths = [os.path.join(index.root, sample.path) for sample in index.samples]
    class_ids = {name: number for number, name in enumerate(index.class_names)}
    labels = [class_ids[sample.label] for sample in index.samples]
    strengths = augment.AugmentConfig() if args.augment else None
    dataset = data_loader.make_dataset(
        paths, labels, args.image_size, args.batch_size, training=True, augmentation=strengths,
        seed=args.seed, cache=args.cache, decoders=[sample.decoder for sample in index.samples],
    )
    return tf_epoch(dataset)


def jpeg_files(folder):
    """Every JPEG under `folder`, sorted (the peers' own file lists)."""
    return sorted(
        os.path.join(current, name)
        for current, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith((".jpg", ".jpeg"))
    )


def bare_tfdata(args):
    import tensorflow as tf

    files = jpeg_files(args.image_dir)

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, [args.image_size, args.image_size]), 0

    dataset = (
        tf.data.Dataset.from_tensor_slices(files)
        .shuffle(len(files), seed=args.seed)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return tf_epoch(dataset)


def idfd_dataset(args):
    import keras

    return keras.utils.image_dataset_from_directory(
        args.image_dir,
        image_size=(args.image_size, args.image_size),
        batch_size=args.batch_size,
        shuffle=True,
        seed=args.seed,
        verbose=False,
    )


def idfd(args):
    import tensorflow as tf

    return tf_epoch(idfd_dataset(args).prefetch(tf.data.AUTOTUNE))


def idfd_aug(args):
    import keras
    import tensorflow as tf

    augmentation = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(15 / 360),
            keras.layers.RandomZoom(0.1),
        ]
    )
    dataset = idfd_dataset(args).map(
        lambda images, labels: (augmentation(images, training=True), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return tf_epoch(dataset.prefetch(tf.data.AUTOTUNE))


def pydataset(args):
    import keras
    import numpy as np
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    from PIL import Image

    files = jpeg_files(args.image_dir)
    size, batch = args.image_size, args.batch_size

    class Files(keras.utils.PyDataset):
        def __len__(self):
            return (len(files) + batch - 1) // batch

        def __getitem__(self, number):
            chosen = files[number * batch : (number + 1) * batch]
            images = [np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)) for path in chosen]
            return np.stack(images), np.zeros(len(chosen), np.int32)

    adapter = PyDatasetAdapter(Files(workers=2, use_multiprocessing=False), shuffle=True)

    def run():
        count = 0
        for images, _ in adapter.get_numpy_iterator():
            count += len(images)
        adapter.on_epoch_end()
        return count

    return run


def imagedatagenerator(args):
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    flow = ImageDataGenerator(rotation_range=15, zoom_range=0.1, horizontal_flip=True).flow_from_directory(
        args.image_dir,
        target_size=(args.image_size, args.image_size),
        batch_size=args.batch_size,
        class_mode="sparse",
        seed=args.seed,
    )

    def run():
        count = 0
        for _ in range(len(flow)):
            images, _ = next(flow)
            count += len(images)
        return count

    return run


PIPELINES = {"ours": ours, **{name: globals()[name] for name in PEERS}}

# name: (our augment, our cache, the peer, the target ratio, what it compares)
COMPARISONS = {
    "augmented": (1, "none", "idfd_aug", 3.0, "ours streaming, augment 1 / idfd + Keras augmentation layers"),
    "plain": (0, "none", "idfd", 1.0, "ours streaming, augment 0 / idfd"),
    "cached": (1, "memory", "idfd", 2.5, "ours cached, augment 1 / idfd without augmentation"),
}


def time_epoch(run_epoch):
    """(images per second, images per CPU second of this process) of one
    full epoch (a fresh iterator)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    count = run_epoch()
    return count / (time.perf_counter() - start), count / (time.process_time() - start_cpu)


def setting_args(args, augment, cache):
    """A copy of `args` with our augment and cache setting."""
    changed = argparse.Namespace(**vars(args))
    changed.augment, changed.cache = augment, cache
    return changed


def build_epochs(args, chosen):
    """{pipeline key: its epoch function} for the comparisons `chosen`, each
    pipeline built once and warmed up by one epoch (which fills a cache)."""
    epochs = {}
    for name in chosen:
        augment, cache, peer, _, _ = COMPARISONS[name]
        for key, make in (((augment, cache), lambda: ours(setting_args(args, augment, cache))),
                          (peer, lambda: PIPELINES[peer](args))):
            if key not in epochs:
                epochs[key] = make()
                epochs[key]()
    return epochs


def paired_rates(epochs, chosen, count):
    """{comparison: [(ours, the peer's), one per pair]}, each side a
    time_epoch pair (images/s, images per CPU second). Pair n runs
    ours first when n is even, the peer first when odd (ours, peer, peer,
    ours, ...: pairs.side_order), so a drift in the machine's speed falls
    on both sides alike; within a pair, the comparisons take their turns."""
    rates = {name: [] for name in chosen}
    for number in range(count):
        for name in chosen:
            augment, cache, peer, _, _ = COMPARISONS[name]
            timed = {key: time_epoch(epochs[key]) for key in pairs.side_order(number, [(augment, cache), peer])}
            rates[name].append((timed[(augment, cache)], timed[peer]))
    return rates


def report_pairs(rates):
    """Per comparison: the median per-pair ratio and its spread, by wall
    time (the headline) and by this process's CPU time (images per CPU
    second: what the loader costs, whatever else the machine runs), and
    the median images/s of each side."""
    print("ratio = ours / the peer's, per adjacent pair of epochs (median, IQR, min-max):")
    summary = {}
    for name, measured in rates.items():
        _, _, peer, target, label = COMPARISONS[name]
        wall = [ours[0] / theirs[0] for ours, theirs in measured]
        cpu = [ours[1] / theirs[1] for ours, theirs in measured]
        ours_median = statistics.median(ours[0] for ours, _ in measured)
        peer_median = statistics.median(theirs[0] for _, theirs in measured)
        # images/s over images per CPU second: the cores each side kept busy
        ours_cores = statistics.median(ours[0] / ours[1] for ours, _ in measured)
        peer_cores = statistics.median(theirs[0] / theirs[1] for _, theirs in measured)
        print(f"  {name} ({label}; target >= {target:g}x, {len(measured)} pairs):\n"
              f"    images/s     {pairs.describe(wall)}  ours {ours_median:.0f}, {peer} {peer_median:.0f}\n"
              f"    per CPU s    {pairs.describe(cpu)}  cores busy: ours {ours_cores:.2f}, {peer} {peer_cores:.2f}",
              flush=True)
        summary[name] = {"peer": peer, "target": target, "median_ratio": pairs.spread(wall)[0],
                         "median_cpu_ratio": pairs.spread(cpu)[0], "ratios": wall, "cpu_ratios": cpu,
                         "pairs": measured}
    return summary


def chosen_comparisons(text):
    """The comparison names of --compare, or None if one is not in COMPARISONS."""
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    return chosen if chosen and all(name in COMPARISONS for name in chosen) else None


def main_pairs(args):
    """The paired design (the module's docstring); returns the JSON figures
    and our first comparison's median images/s."""
    chosen = chosen_comparisons(args.compare)
    epochs = build_epochs(args, chosen)
    rates = paired_rates(epochs, chosen, args.pairs)
    summary = report_pairs(rates)
    first = chosen[0]
    return summary, statistics.median(ours[0] for ours, _ in rates[first])


def run_in_process(name, args):
    """Times one pipeline in this process; returns the last epoch's images/s."""
    rates = time_epochs(PIPELINES[name](args), args.epochs)
    return rates[-1]


def run_in_subprocess(name, args):
    command = [
        sys.executable, os.path.abspath(__file__), "--only", name,
        "--image_dir", args.image_dir, "--image_size", str(args.image_size),
        "--batch_size", str(args.batch_size), "--augment", str(args.augment),
        "--cache", args.cache, "--epochs", str(args.epochs), "--seed", str(args.seed),
    ]
    output = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in output.stdout.splitlines() if line.startswith("images/s:")]
    if output.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{output.stderr[-2000:]}")
    return float(lines[-1].split(":")[1])


def main_processes(args):
    """The older design: each pipeline in its own processes (--processes);
    returns the JSON figures and our first setting's images/s."""
    # Our settings: the one asked for, plus --also (e.g. "0:none,1:memory").
    settings = [(args.augment, args.cache)] + [
        (int(item.split(":")[0]), item.split(":")[1]) for item in args.also.split(",") if item
    ]
    jobs = [(name, PEERS[name], None) for name in (PEERS if args.peers else [])]
    jobs += [(f"ours augment={a} cache={c}", "ours", (a, c)) for a, c in settings]
    figures = {}
    for name, label, setting in jobs:
        job_args = setting_args(args, *setting) if setting else args
        rates = [run_in_subprocess("ours" if setting else name, job_args) for _ in range(args.repeats)]
        figures[name] = statistics.median(rates)
        print(f"{name:32s} {figures[name]:8.1f} images/s  (runs: {', '.join(f'{rate:.0f}' for rate in rates)})  {label}", flush=True)
    if args.peers:
        print(f"ratios (median images/s over median images/s), size={args.image_size} batch={args.batch_size}:")
        for name, _, setting in jobs:
            if setting:
                print(f"  {name}: " + ", ".join(f"x{figures[name] / figures[peer]:.2f} vs {peer}" for peer in PEERS))
    return figures, figures[f"ours augment={args.augment} cache={args.cache}"]


def build_parser():
    parser = argparse.ArgumentParser(description="Input pipeline throughput vs the Keras ways.")
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--pairs", type=int, default=7, help="Pairs of epochs per comparison (the paired design)")
    parser.add_argument("--compare", default=",".join(COMPARISONS), help=f"Comparisons to time, some of: {', '.join(COMPARISONS)}")
    parser.add_argument("--processes", action="store_true", help="The older design: each pipeline in its own processes")
    parser.add_argument("--augment", type=int, choices=(0, 1), default=1, help="--processes: our setting")
    parser.add_argument("--cache", choices=("none", "memory", "auto"), default="none", help="--processes: our setting")
    parser.add_argument("--epochs", type=int, default=2, help="--processes: timed epochs after one warm-up epoch")
    parser.add_argument("--peers", action="store_true", help="--processes: also time the Keras ways and print ratios")
    parser.add_argument("--repeats", type=int, default=1, help="--processes: runs per pipeline; the median is reported")
    parser.add_argument("--also", default="", help='--processes: more of our settings as AUGMENT:CACHE pairs, e.g. "0:none,1:memory"')
    parser.add_argument("--json", help="Also write the figures to this JSON file")
    parser.add_argument("--only", choices=sorted(PIPELINES), help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if chosen_comparisons(args.compare) is None:
        print(f"error: --compare takes some of {', '.join(COMPARISONS)}. Received: compare={args.compare}", file=sys.stderr)
        return 2
    if args.only:
        print(f"images/s: {run_in_process(args.only, args):.1f}", flush=True)
        return 0
    figures, ours_rate = main_processes(args) if args.processes else main_pairs(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"design": "processes" if args.processes else "pairs", "image_size": args.image_size,
                       "batch_size": args.batch_size, "cpu_count": os.cpu_count(), "figures": figures}, handle, indent=2)
    print(f"images/s: {ours_rate:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
