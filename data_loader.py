"""How batches flow: the tf.data pipeline, the seeds' "custom generator".

`make_dataset` turns a list of files into (uint8 images, int32 labels)
batches: shuffle (train only), parallel read + decode + resize
(image_io.load_image, the one decode path of training, evaluation and
prediction), optional in-memory cache, batch, augment (train only,
augment.augment_batch), prefetch. Only file paths live in memory; images
are read as the pipeline runs. Images stay uint8 all the way: the model
normalizes them itself, so the saved model takes raw 0-255 pixels.
`prediction_dataset` is the same read for files to predict, unreadable ones
dropped (and test-time versions made). With several workers, each reads
only its share of a split through the same make_dataset (`worker_data`).
"""

import concurrent.futures
import dataclasses
import math
import os

import numpy as np

import augment
import image_io
from errors import UserError

# ---------------------------------------------------------------- tf.data


def plan_decoders(paths, readers=None, workers=None):
    """The decoder of every file from its header (`image_io.probe_decoder`), in
    parallel. Raises UserError naming a file that is not a readable image."""

    def probe(path):
        try:
            return image_io.probe_decoder(path, readers)
        except Exception as error:  # the user's file, not a bug
            raise UserError(f"cannot read {image_io.display_path(path)}: {image_io.error_text(error)}")

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(probe, paths))


def memory_budget_bytes(fraction=0.25):
    """The RAM an in-memory image cache may take: a quarter of the memory
    available now (physical memory when that cannot be read)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 0
    if available <= 0:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 * 2**30
    return int(available * fraction)


def decide_cache(mode, num_images, image_size, budget=None):
    """Whether to keep decoded images in memory: (bool, one line saying why).

    `mode` is "memory", "none" or "auto" (memory only when the decoded,
    resized uint8 images fit `budget`, default memory_budget_bytes())."""
    needed = num_images * image_size * image_size * 3
    budget = memory_budget_bytes() if budget is None else budget
    gib = 2**30
    if mode == "none":
        return False, "streaming from disk (--cache none)"
    if mode == "memory":
        return True, f"decoded images cached in memory ({needed / gib:.2f} GiB, --cache memory)"
    if needed <= budget:
        return True, f"decoded images cached in memory: {needed / gib:.2f} GiB within the {budget / gib:.2f} GiB budget (--cache auto)"
    return False, f"streaming from disk: decoded images would take {needed / gib:.2f} GiB, over the {budget / gib:.2f} GiB budget (--cache auto)"


def make_dataset(
    paths,
    labels,
    image_size,
    batch_size,
    training=False,
    augmentation=None,
    seed=42,
    decoders=None,
    readers=None,
    cache=False,
    oversample=False,
    one_hot=0,
    mix=(0.0, 0.0),
):
    """A tf.data pipeline of (uint8 images, int32 labels) batches.

    `training` shuffles (reshuffled every epoch, seeded); `augmentation`
    (an augment.AugmentConfig or None) augments, and only when training:
    validation and test data are never shuffled or augmented. Every file
    appears exactly once per epoch; the last batch may be partial.
    `decoders` (one per path, from DatasetIndex.decoders; None: read from
    the files' headers) and `readers` (custom readers, {".ext": function})
    choose how each file is decoded (see `image_io.load_image`); files
    TensorFlow decodes stay native. `cache` (True, or "memory"/"auto"/"none"
    resolved by `decide_cache`) keeps the decoded, resized uint8 images in
    memory after the first epoch: later epochs only shuffle, batch and
    augment.

    Training only: `oversample` draws every class equally often
    (`oversampled_stream`: endless, so fit needs steps_per_epoch, see
    `epoch_steps`); `one_hot` (the number of classes, 0: off) gives float
    one-hot labels, which `mix` (the --mixup and --cutmix strengths)
    then mixes batch by batch with Keras' MixUp and CutMix.
    """
    import tensorflow as tf

    if isinstance(cache, str):
        cache, _ = decide_cache(cache, len(paths), image_size)
    paths = list(paths)
    decoders = list(decoders) if decoders is not None else plan_decoders(paths, readers)
    if len(decoders) != len(paths):
        raise ValueError(f"one decoder per path: {len(decoders)} decoders for {len(paths)} paths")
    if training and oversample:
        dataset = oversampled_stream(paths, labels, decoders, image_size, seed, readers, cache)
    else:
        dataset = decoded_images(paths, labels, decoders, image_size, training, seed, readers, cache)
    dataset = dataset.batch(batch_size)
    if training and one_hot:
        dataset = dataset.map(lambda images, numbers: (images, tf.one_hot(numbers, one_hot)))
    if training and augmentation is not None:
        # One seed pair per batch, drawn afresh every epoch from a seeded
        # stream: a different augmentation each epoch, the same ones per run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: (
                augment.augment_batch(batch[0], batch_seed, augmentation),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if training and any(mix):
        if not one_hot and np.ndim(labels) != 2:
            raise ValueError("mixing needs one-hot or multi-hot labels (one_hot=number of classes)")
        layers = augment.mix_layers(*mix, seed=seed)
        # Each batch mixed from a seed of its own, drawn as augmentation's
        # are: no state shared between batches, so the mixing runs in
        # parallel and the pipeline stays parallel (augment.mix_batch).
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset.enumerate(), seeds)).map(
            lambda numbered, batch_seed: augment.mix_batch(
                numbered[1][0], numbered[1][1], layers, choice=numbered[0], seed=batch_seed
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def epoch_steps(num_images, batch_size):
    """Batches per epoch of an endless (oversampled) training stream: as
    many images as the training split holds."""
    return max(1, -(-num_images // batch_size))


def decoded_images(paths, labels, decoders, image_size, training, seed, readers, cache):
    """(uint8 image, int32 label) examples of the files, each once (a
    training set reshuffled every epoch), decoded in parallel."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant(paths, tf.string),
            # integer classes, or a multi-label image's multi-hot floats
            tf.constant(labels, tf.float32 if np.ndim(labels) == 2 else tf.int32),
            tf.constant(decoders or [], tf.string),
        )
    )
    # Streaming shuffles the paths before decoding (only paths are held);
    # cached, the shuffle comes after the cache so each epoch is still
    # reshuffled (the shuffle buffer shares the cached tensors, no copy).
    # Both orders are the same permutation for the same seed.
    if training and not cache:
        dataset = dataset.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    # With one decoder for every file, no per-file branch: an all-native
    # dataset is a pure TensorFlow graph, as fast as it gets.
    single = decoders[0] if len(set(decoders)) == 1 else None
    dataset = dataset.map(
        lambda path, label, decoder: (
            image_io.load_image(path, image_size, single or decoder, readers),
            label,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if cache:
        dataset = dataset.cache()
        if training:
            dataset = dataset.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    return dataset


def oversampled_stream(paths, labels, decoders, image_size, seed, readers, cache):
    """An endless stream of (uint8 image, int32 label) examples that draws
    every class equally often: one stream per class (each its own files,
    reshuffled every pass, cached once when `cache`), interleaved by
    tf.data's sample_from_datasets with equal weights, seeded. Minority
    images come round more often; augmentation, after this, makes each
    repeat a new image. Endless, so that a cached class keeps its cache
    across epochs (fit takes epoch_steps batches per epoch)."""
    import numpy as np
    import tensorflow as tf

    labels = np.asarray(labels)
    streams = []
    for number in np.unique(labels):
        chosen = np.flatnonzero(labels == number)
        streams.append(decoded_images(
            [paths[i] for i in chosen], labels[chosen], [decoders[i] for i in chosen],
            image_size, True, seed + int(number), readers, cache,
        ).repeat())
    return tf.data.Dataset.sample_from_datasets(
        streams, weights=[1.0 / len(streams)] * len(streams), seed=seed, rerandomize_each_iteration=True
    )


def test_time_versions(image, position, versions, strengths, seed):
    """(versions, H, W, 3) uint8: the image, then versions - 1 copies
    augmented with `strengths`, seeded by `seed` and the image's position
    (so the same call gives the same versions at any batch size)."""
    import tensorflow as tf

    copies = tf.repeat(image[None], versions - 1, axis=0)
    pair = tf.stack([tf.constant(seed, tf.int64), tf.cast(position, tf.int64)])
    return tf.concat([image[None], augment.augment_batch(copies, pair, strengths)], axis=0)


def prediction_dataset(paths, image_size, batch_size, readers=None, tags=None, versions=1, strengths=None, seed=0):
    """(uint8 images, tags) batches of image files to predict, read in
    parallel by image_io.load_image, the one decode function of training
    (custom `readers` included). `tags` ride along (default: each file's
    position in `paths`), so a caller knows which files came through: one
    that cannot be read or decoded is dropped, not fatal. With `versions` > 1
    each element is the stack of test_time_versions of its image (augmented
    with `strengths`, seeded by `seed`), about `batch_size` images a batch."""
    import numpy as np
    import tensorflow as tf

    tags = tf.range(len(paths)) if tags is None else tf.constant(np.asarray(tags))
    positions = tf.range(len(paths))
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(paths), tf.string), tags, positions))
    dataset = dataset.map(
        lambda path, tag, position: (image_io.load_image(path, image_size, readers=readers), tag, position),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).ignore_errors()
    if versions > 1:
        dataset = dataset.map(
            lambda image, tag, position: (
                test_time_versions(image, position, versions, strengths, seed), tag, position
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        batch_size = max(1, batch_size // versions)
    dataset = dataset.map(lambda images, tag, position: (images, tag))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- each worker's share of the files


def worker_steps(num_files, num_workers, global_batch_size):
    """Steps per epoch when `num_workers` workers share `num_files` files
    (`worker_dataset_fn`): enough for the largest share to be read once.
    Every worker runs exactly this many, since each step is a collective."""
    per_worker_batch = global_batch_size // num_workers
    return max(1, math.ceil(math.ceil(num_files / num_workers) / per_worker_batch))


def worker_dataset_fn(paths, labels, image_size, global_batch_size, seed=42, decoders=None, readers=None, **settings):
    """A dataset function for `strategy.distribute_datasets_from_function`:
    each input pipeline (one per worker) reads only its share of the files,
    paths[i::n], through make_dataset at the per-replica batch size, with
    `settings` (make_dataset's other keyword arguments) as they are.

    The files are split before anything is read; tf.data's auto-sharding of
    a file-list dataset would read every file on every worker and drop most.
    Every worker must run `worker_steps` steps per epoch with full batches:
    a training share repeats endlessly (reshuffled and augmented afresh each
    pass, seeded per worker); a validation share is padded with blank images
    labelled -1, which the training loop leaves out of its metrics.
    """
    paths, labels = list(paths), list(labels)
    decoders = list(decoders) if decoders is not None else plan_decoders(paths, readers)

    def dataset_fn(input_context):
        import tensorflow as tf

        worker, workers = input_context.input_pipeline_id, input_context.num_input_pipelines
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        replicas_here = input_context.num_replicas_in_sync // workers
        share = make_dataset(
            paths[worker::workers], labels[worker::workers], image_size, batch_size,
            seed=seed + worker,  # different shuffles and augmentations per worker
            decoders=decoders[worker::workers], readers=readers, **settings,
        )
        # Regrouped into full batches: passes follow each other (training)
        # or blanks follow the files (validation) within a batch.
        images = share.unbatch()
        if settings.get("training"):
            return images.repeat().batch(batch_size).prefetch(tf.data.AUTOTUNE)
        padding = worker_steps(len(paths), workers, global_batch_size) * replicas_here * batch_size
        padding -= len(paths[worker::workers])
        blank = (tf.zeros([image_size, image_size, 3], tf.uint8), tf.constant(-1, tf.int32))
        images = images.concatenate(tf.data.Dataset.from_tensors(blank).repeat(max(0, padding)))
        return images.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return dataset_fn


@dataclasses.dataclass(frozen=True)
class WorkerData:
    """A split spread over the workers: this worker's share (a tf.data
    dataset of per-replica batches), the steps every worker runs per epoch
    (worker_steps) and the global batch size (images per step over all
    replicas); and the whole split's files and make_dataset settings, to
    read it whole in one process (`whole_split`)."""

    dataset: object
    steps: int
    global_batch_size: int
    paths: tuple = ()
    labels: tuple = ()
    settings: dict = dataclasses.field(default_factory=dict)

    def describe(self, num_workers):
        return (f"each worker reads its share of the files: about {-(-len(self.paths) // num_workers)} "
                f"training images, {self.steps} steps per epoch")


def whole_split(dataset):
    """All of a split as one tf.data dataset in this process: `dataset`
    itself, or for a worker's share (WorkerData) the whole split read again
    at the global batch size (the chief calibrates on the whole validation
    split)."""
    if not isinstance(dataset, WorkerData):
        return dataset
    settings = {**dataset.settings, "training": False, "cache": False}
    return make_dataset(dataset.paths, dataset.labels, batch_size=dataset.global_batch_size, **settings)


def worker_data(paths, labels, global_batch_size, worker, num_workers, num_replicas, **settings):
    """WorkerData of one split for worker number `worker` of `num_workers`
    (`num_replicas` over all of them): its share of the files, read by
    make_dataset with `settings`, `worker_steps` steps per epoch. Raises
    UserError when a worker would have no training image.

    The step functions feed its batches to the replicas themselves, so the
    dataset function is called here with this worker's InputContext, as
    distribute_datasets_from_function would: on the CPU, the iterator of a
    distributed dataset under MultiWorkerMirroredStrategy halved training
    speed (measured here: 88 vs 177 images/s, the same step fed by a plain
    tf.data iterator)."""
    import tensorflow as tf

    if settings.get("training") and len(paths) < num_workers:
        raise UserError(
            f"{num_workers} workers need at least one training image each; the training split has {len(paths)}"
        )
    context = tf.distribute.InputContext(
        num_input_pipelines=num_workers, input_pipeline_id=worker, num_replicas_in_sync=num_replicas,
    )
    dataset_fn = worker_dataset_fn(paths, labels, global_batch_size=global_batch_size, **settings)
    steps = worker_steps(len(paths), num_workers, global_batch_size)
    return WorkerData(dataset_fn(context), steps, global_batch_size, tuple(paths), tuple(labels), settings)
