"""What --augment_policy and --erasing cost: images per second of the
training stream (data_loader.make_dataset, cached, exactly what main.py
trains from) for each policy, with and without erasing, and Keras' own
RandAugment layer mapped over the same cached batches (the standard Keras
way: one call per batch), with the ratio to the basic warp.

    python benchmarks/make_small_folders.py --kind objects --counts 40,40,40,40 --out /tmp/objects
    python benchmarks/policy_bench.py --image_dir /tmp/objects/train --image_size 64 --epochs 3

Every stream runs one warm-up epoch, then `--epochs`; the figure is the
median epoch's images per second. All run in this one process, one after
another, on the same files.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

STREAMS = (
    ("basic", "basic", 0.0),
    ("basic + erasing 0.25", "basic", 0.25),
    ("randaugment", "randaugment", 0.0),
    ("randaugment + erasing 0.25", "randaugment", 0.25),
    ("augmix", "augmix", 0.0),
    ("augmix + erasing 0.25", "augmix", 0.25),
)


def rate(dataset, epochs):
    """Median images/s over `epochs` epochs after one warm-up epoch."""
    for _ in dataset:
        pass
    rates = []
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for images, _ in dataset:
            count += int(images.shape[0])
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def files(root):
    """(paths, class numbers) of ROOT/<class>/... image files."""
    classes = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
    paths, labels = [], []
    for number, name in enumerate(classes):
        for file in sorted(os.listdir(os.path.join(root, name))):
            paths.append(os.path.join(root, name, file))
            labels.append(number)
    return paths, labels


def keras_rand_augment(paths, labels, args):
    """The cached, unaugmented stream, then keras.layers.RandAugment called
    on each batch (it draws its operations per batch)."""
    import keras
    import tensorflow as tf

    import data_loader

    layer = keras.layers.RandAugment(value_range=(0, 255), seed=args.seed)
    plain = data_loader.make_dataset(paths, labels, args.image_size, args.batch_size, training=True, seed=args.seed,
                                     cache=True)
    return plain.map(lambda images, numbers: (tf.cast(tf.round(layer(images)), tf.uint8), numbers),
                     num_parallel_calls=tf.data.AUTOTUNE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_dir", required=True, help="a folder of class folders")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import augment
    import data_loader

    paths, labels = files(args.image_dir)
    print(f"{len(paths)} images at {args.image_size} px, batch {args.batch_size}, cached, "
          f"{args.epochs} timed epochs after a warm-up; {os.cpu_count()} CPU cores")
    results = {}
    for title, policy, erasing in STREAMS:
        strengths = dataclasses.replace(augment.AugmentConfig(), augment_policy=policy, erasing=erasing)
        dataset = data_loader.make_dataset(paths, labels, args.image_size, args.batch_size, training=True,
                                           augmentation=strengths, seed=args.seed, cache=True)
        results[title] = rate(dataset, args.epochs)
    results["keras.layers.RandAugment per batch"] = rate(keras_rand_augment(paths, labels, args), args.epochs)
    basic = results["basic"]
    for title, value in results.items():
        print(f"{title:36s} {value:8.0f} images/s  {value / basic:5.2f}x basic")


if __name__ == "__main__":
    main()
