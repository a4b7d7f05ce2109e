"""From a folder of images to tf.data pipelines.

Two steps, kept apart so each can be tested and reused:
1. `index_dataset` finds the classes and image files, works out the layout
   (pre-split or flat) and the train/val/test split. It returns plain data
   (relative paths, class names) and never writes anything.
2. `make_dataset` turns a list of files into a tf.data pipeline: shuffle
   (train only), parallel read + decode + resize, batch, augment (train
   only), prefetch. Only file paths live in memory; images are read as the
   pipeline runs. Images stay uint8 all the way: the model normalizes them
   itself, so the saved model takes raw 0-255 pixels.
"""

import dataclasses
import math
import os

import numpy as np

from config import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
SPLIT_FOLDER_NAMES = {
    "train": ("train",),
    "val": ("val", "validation", "valid"),
    "test": ("test",),
}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image: its path relative to the dataset root, class and split."""

    path: str
    label: str
    split: str


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """What `index_dataset` found: the classes and every image's split."""

    root: str
    layout: str
    class_names: tuple
    samples: tuple
    notes: tuple = ()

    def split(self, name):
        """(absolute paths, integer labels) of one split, in manifest order."""
        class_ids = {name: index for index, name in enumerate(self.class_names)}
        chosen = [sample for sample in self.samples if sample.split == name]
        paths = [os.path.join(self.root, sample.path) for sample in chosen]
        labels = np.array([class_ids[sample.label] for sample in chosen], dtype=np.int32)
        return paths, labels

    def counts(self):
        """{split: {class: number of images}}, every class in every split."""
        table = {split: {name: 0 for name in self.class_names} for split in SPLITS}
        for sample in self.samples:
            table[sample.split][sample.label] += 1
        return table


def is_hidden(name):
    return name.startswith(".")


def is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder, root):
    """Image files under `folder` (nested subfolders included, hidden ones
    skipped), as sorted paths relative to `root` with forward slashes."""
    found = []
    for current, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = sorted(name for name in subfolders if not is_hidden(name))
        for name in files:
            if not is_hidden(name) and is_image_file(name):
                relative = os.path.relpath(os.path.join(current, name), root)
                found.append(relative.replace(os.sep, "/"))
    return sorted(found)


def class_folders(folder):
    """Sorted names of the visible subfolders of `folder`."""
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not is_hidden(entry.name)
    )


def find_split_folders(image_dir):
    """{split: folder name} for the split folders present in `image_dir`."""
    present = {name.lower(): name for name in class_folders(image_dir)}
    found = {}
    for split, aliases in SPLIT_FOLDER_NAMES.items():
        for alias in aliases:
            if alias in present:
                found[split] = present[alias]
                break
    return found


def images_by_class(folder, root):
    """{class name: [relative image paths]} for the class folders of `folder`.

    Raises UserError naming a class folder that holds no images.
    """
    table = {}
    for name in class_folders(folder):
        files = list_images(os.path.join(folder, name), root)
        if not files:
            raise UserError(
                f"class folder '{os.path.relpath(os.path.join(folder, name), root)}' "
                f"has no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        table[name] = files
    return table


def split_counts(total, fractions):
    """How many of `total` items go to each held-out split.

    Every held-out split with a fraction above 0 gets at least one item, and
    at least one item is left for training. Raises ValueError if impossible.
    """
    counts = [max(1, round(total * fraction)) if fraction > 0 else 0 for fraction in fractions]
    if sum(counts) >= total:
        raise ValueError
    return counts


def stratified_split(files_by_class, held_out, seed):
    """Splits each class's files at random (seeded) into train + held out.

    `held_out` is {split name: fraction}. Returns {split: {class: [files]}}.
    Raises UserError naming a class too small to appear in every split.
    """
    rng = np.random.default_rng(seed)
    result = {"train": {}, **{split: {} for split in held_out}}
    for name in sorted(files_by_class):
        files = sorted(files_by_class[name])
        try:
            counts = split_counts(len(files), list(held_out.values()))
        except ValueError:
            raise UserError(
                f"class '{name}' has {len(files)} image(s), too few to put at "
                f"least one in train and in {' and '.join(held_out)}; add images "
                "or lower --val_split/--test_split"
            )
        order = rng.permutation(len(files))
        start = 0
        for split, count in zip(held_out, counts):
            result[split][name] = [files[i] for i in sorted(order[start : start + count])]
            start += count
        result["train"][name] = [files[i] for i in sorted(order[start:])]
    return result


def check_same_classes(table):
    """Raises UserError naming a class that is missing from some split."""
    all_classes = sorted(set().union(*(set(classes) for classes in table.values())))
    for split in SPLITS:
        missing = [name for name in all_classes if name not in table[split]]
        if missing:
            raise UserError(
                f"class '{missing[0]}' has no images in the {split} split "
                f"({len(table[split])} vs {len(all_classes)} classes); every "
                "split needs every class"
            )
    return all_classes


def index_dataset(image_dir, val_split, test_split, seed):
    """Finds the classes and images of `image_dir` and splits them.

    Layouts: pre-split (`train/`, `val|validation|valid/`, `test/`, each with
    class folders; a missing val or test split is carved out of train) or
    flat (class folders, split per class). Returns a DatasetIndex. Raises
    UserError for a missing folder, fewer than 2 classes, an empty class or
    a class missing from a split.
    """
    if not image_dir or not os.path.isdir(image_dir):
        raise UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    root = os.path.abspath(image_dir)
    split_folders = find_split_folders(root)
    notes = []
    if "train" in split_folders:
        layout = "presplit"
        table = {
            split: images_by_class(os.path.join(root, folder), root)
            for split, folder in split_folders.items()
        }
        carve = {}
        if "val" not in table:
            carve["val"] = val_split
        if "test" not in table:
            carve["test"] = test_split
        if carve:
            carved = stratified_split(table["train"], carve, seed)
            table.update(carved)
            notes.append(
                f"no {' or '.join(carve)} folder: carved "
                + ", ".join(f"{fraction:.0%} of train as {split}" for split, fraction in carve.items())
                + f" (stratified, seed {seed})"
            )
    else:
        layout = "flat"
        files_by_class = images_by_class(root, root)
        if len(files_by_class) < 2:
            raise UserError(
                f"need at least 2 class folders with images in {image_dir}, "
                f"found {len(files_by_class)}"
            )
        table = stratified_split(files_by_class, {"val": val_split, "test": test_split}, seed)
    class_names = check_same_classes(table)
    if len(class_names) < 2:
        raise UserError(
            f"need at least 2 classes in {image_dir}, found {len(class_names)}"
        )
    samples = tuple(
        Sample(path=path, label=name, split=split)
        for split in SPLITS
        for name in class_names
        for path in table[split][name]
    )
    return DatasetIndex(
        root=root,
        layout=layout,
        class_names=tuple(class_names),
        samples=samples,
        notes=tuple(notes),
    )


def manifest_rows(index):
    """Rows (path, class, split) of the split manifest, header first."""
    return [("path", "class", "split")] + [
        (sample.path, sample.label, sample.split) for sample in index.samples
    ]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the random augmentation; see config.Config."""

    flip: str = "horizontal"
    rotation: float = 15.0
    zoom: float = 0.1
    translation: float = 0.1
    contrast: float = 0.2


def load_image(path, image_size):
    """Reads and decodes one image file to a uint8 (size, size, 3) tensor.

    JPEG, PNG, BMP and GIF (first frame); grayscale and RGBA come out RGB.
    """
    import tensorflow as tf

    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _flip_signs(flip, batch, seed):
    """Per-image -1 (flip) or +1 for the horizontal and vertical axes."""
    import tensorflow as tf

    draws = tf.random.stateless_uniform([batch, 2], seed=seed) < 0.5
    signs = tf.where(draws, -1.0, 1.0)
    horizontal = signs[:, 0] if flip in ("horizontal", "both") else tf.ones([batch])
    vertical = signs[:, 1] if flip in ("vertical", "both") else tf.ones([batch])
    return horizontal, vertical


def augmentation_transforms(batch, height, width, strengths, seed):
    """Random flip + rotation + zoom + translation as one projective
    transform per image, in the 8-number form ImageProjectiveTransformV3
    takes (it maps output pixel coordinates to input coordinates).

    Composing them into one matrix means one interpolation pass per image
    instead of one per augmentation, which is both faster and sharper.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=5)
    angle = tf.random.stateless_uniform(
        [batch], seed=seeds[0], minval=-1.0, maxval=1.0
    ) * (strengths.rotation * math.pi / 180.0)
    scale = tf.random.stateless_uniform(
        [batch], seed=seeds[1], minval=1.0 - strengths.zoom, maxval=1.0 + strengths.zoom
    )
    shift = tf.random.stateless_uniform(
        [batch, 2], seed=seeds[2], minval=-strengths.translation, maxval=strengths.translation
    ) * tf.constant([width, height], tf.float32)
    flip_x, flip_y = _flip_signs(strengths.flip, batch, seeds[3])

    # Output point p maps to input point c + R(angle) S(1/scale) F (p - c) - shift,
    # with c the image centre and F the flips.
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = cos * flip_x, -sin * flip_y
    b0, b1 = sin * flip_x, cos * flip_y
    a2 = center_x - a0 * center_x - a1 * center_y - shift[:, 0]
    b2 = center_y - b0 * center_x - b1 * center_y - shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1), seeds[4]


def augment_batch(images, seed, strengths):
    """Randomly augments a uint8 batch (B, H, W, 3); returns uint8.

    `seed` is a shape-[2] integer tensor: the same seed gives the same
    augmentation, so runs are reproducible, and each batch gets its own.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    batch, height, width = shape[0], images.shape[1], images.shape[2]
    transforms, contrast_seed = augmentation_transforms(
        batch, height, width, strengths, seed
    )
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=[height, width],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    if strengths.contrast > 0:
        factor = tf.random.stateless_uniform(
            [batch, 1, 1, 1],
            seed=contrast_seed,
            minval=1.0 - strengths.contrast,
            maxval=1.0 + strengths.contrast,
        )
        pixels = tf.cast(images, tf.float32)
        mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
        pixels = (pixels - mean) * factor + mean
        images = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
    return images


def make_dataset(
    paths,
    labels,
    image_size,
    batch_size,
    training=False,
    augment=None,
    seed=42,
):
    """A tf.data pipeline of (uint8 images, int32 labels) batches.

    `training` shuffles (reshuffled every epoch, seeded); `augment` (an
    AugmentConfig or None) augments, and only when training: validation and
    test data are never shuffled or augmented. Every file appears exactly
    once per epoch, the last batch may be partial.
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths), tf.string), tf.constant(labels, tf.int32))
    )
    if training:
        dataset = dataset.shuffle(
            max(1, len(paths)), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.map(
        lambda path, label: (load_image(path, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.batch(batch_size)
    if training and augment is not None:
        # One seed pair per batch, drawn afresh every epoch from a seeded
        # stream: a different augmentation each epoch, the same ones per run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: (
                augment_batch(batch[0], batch_seed, augment),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
