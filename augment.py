"""How training images are randomly transformed (--augment 1, --augment_policy,
--erasing, --mixup, --cutmix).

Flip, rotation, zoom, shear and translation are composed into one affine
transform per image and applied with contrast and brightness in one
XLA-compiled bilinear pass (`augment_batch`), so each pixel is
interpolated once; pixels from outside the image are filled by
--fill_mode. Used by the training pipeline (data_loader.make_dataset),
main.py's augmentation preview and test-time augmentation: one
implementation everywhere. --augment_policy randaugment or augmix replaces
that pass (after the --flip flips) by the operations of Keras' RandAugment
or AugMix, drawn per image (`policy_batch`); --erasing (Keras'
RandomErasing) comes after either. MixUp and CutMix (`mix_batch`) are
Keras' own layers, applied to whole training batches after that, each batch
mixed from a seed of its own so the pipeline stays parallel.
"""

import dataclasses
import functools
import math

import config


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the random augmentation (what they mean: config.Config,
    which also holds their defaults; each field the option of that name, so
    main.py fills it with config.picked)."""

    flip: str = config.DEFAULTS.flip
    rotation: float = config.DEFAULTS.rotation
    zoom: float = config.DEFAULTS.zoom
    translation: float = config.DEFAULTS.translation
    contrast: float = config.DEFAULTS.contrast
    brightness: tuple | None = config.DEFAULTS.brightness
    shear: float = config.DEFAULTS.shear
    fill_mode: str = config.DEFAULTS.fill_mode
    augment_policy: str = config.DEFAULTS.augment_policy
    erasing: float = config.DEFAULTS.erasing


def _flip_signs(flip, batch, seed):
    """Per-image -1 (flip) or +1 for the horizontal and vertical axes."""
    import tensorflow as tf

    draws = tf.random.stateless_uniform([batch, 2], seed=seed) < 0.5
    signs = tf.where(draws, -1.0, 1.0)
    horizontal = signs[:, 0] if flip in ("horizontal", "both") else tf.ones([batch])
    vertical = signs[:, 1] if flip in ("vertical", "both") else tf.ones([batch])
    return horizontal, vertical


def augmentation_transforms(batch, height, width, strengths, seed):
    """Random flip + shear + rotation + zoom + translation as one projective
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
    # Its own seed, folded in: the draws above stay those of runs without shear.
    shear = tf.random.stateless_uniform(
        [batch], seed=tf.random.experimental.stateless_fold_in(seed, 5), minval=-1.0, maxval=1.0
    ) * (strengths.shear * math.pi / 180.0)

    # Output point p maps to input point c + R(angle) S(1/scale) H F (p - c) - shift,
    # with c the image centre, F the flips and H the shear [[1, tan], [0, 1]]
    # (horizontal lines stay horizontal, vertical ones lean by the angle).
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin, tan = tf.cos(angle) / scale, tf.sin(angle) / scale, tf.tan(shear)
    a0, a1 = cos * flip_x, (cos * tan - sin) * flip_y
    b0, b1 = sin * flip_x, (sin * tan + cos) * flip_y
    a2 = center_x - a0 * center_x - a1 * center_y - shift[:, 0]
    b2 = center_y - b0 * center_x - b1 * center_y - shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1), seeds[4]


def _floormod(coordinates, period):
    """coordinates mod period, in [0, period]: those already inside are
    returned as they are, the others folded as x - period * floor(x / period).

    Why not tf.math.floormod: XLA compiles a float remainder to a scalar
    library call per pixel; this form vectorizes, and the whole warp takes
    0.66x the CPU time at 224 px (1.05 -> 0.70 ms an image on 2 CPU cores,
    docs/performance.md). It gives the same values for every coordinate
    inside one period (all of them at the default strengths) and differs
    by float rounding only further out."""
    import tensorflow as tf

    folded = coordinates - period * tf.floor(coordinates / period)
    inside = (coordinates >= 0.0) & (coordinates < period)
    return tf.where(inside, coordinates, folded)


def _reflect(coordinates, size):
    """Mirrors coordinates that fall outside [0, size - 1] back inside."""
    import tensorflow as tf

    period = 2.0 * (size - 1)
    coordinates = _floormod(tf.abs(coordinates), period)
    return tf.where(coordinates > size - 1, period - coordinates, coordinates)


def _source(coordinates, size, fill_mode):
    """Source coordinates inside [0, size - 1] by `fill_mode` (constant:
    clamped here, blanked by the caller)."""
    import tensorflow as tf

    if fill_mode == "reflect":
        coordinates = _reflect(coordinates, size)
    elif fill_mode == "wrap":  # the last column blends with the first (_resample)
        return _floormod(coordinates, float(size))
    # Rounding far outside the image can land a hair outside: clamp, so no
    # gather index ever leaves the image.
    return tf.clip_by_value(coordinates, 0.0, size - 1.0)


def _resample(images, transforms, contrast_factors, brightness_factors, fill_mode="reflect"):
    """Bilinear resampling of a uint8 batch through per-image affine
    transforms, then contrast and brightness, in one pass: four gathers and
    a blend in float32, rounded back to uint8. Pixels from outside the image
    come from `fill_mode`: reflect (mirrored), nearest (the edge pixel), wrap
    (the opposite side) or constant (black). Compiled with XLA (see
    augment_batch)."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    rows, columns = tf.meshgrid(
        tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
    )
    rows, columns = tf.reshape(rows, [1, -1]), tf.reshape(columns, [1, -1])
    a0, a1, a2, b0, b1, b2 = (transforms[:, i : i + 1] for i in range(6))
    raw_x, raw_y = a0 * columns + a1 * rows + a2, b0 * columns + b1 * rows + b2
    source_x, source_y = _source(raw_x, width, fill_mode), _source(raw_y, height, fill_mode)
    left, top = tf.floor(source_x), tf.floor(source_y)
    weight_x, weight_y = (source_x - left)[..., None], (source_y - top)[..., None]
    left, top = tf.cast(left, tf.int32), tf.cast(top, tf.int32)
    if fill_mode == "wrap":  # the pixel right of the last column is the first one
        right, bottom = (left + 1) % width, (top + 1) % height
    else:
        right, bottom = tf.minimum(left + 1, width - 1), tf.minimum(top + 1, height - 1)
    pixels = tf.reshape(images, [-1, images.shape[3]])
    offsets = tf.reshape(tf.range(batch) * height * width, [-1, 1])

    def at(y, x):
        return tf.cast(tf.gather(pixels, offsets + y * width + x), tf.float32)

    upper = at(top, left) * (1 - weight_x) + at(top, right) * weight_x
    lower = at(bottom, left) * (1 - weight_x) + at(bottom, right) * weight_x
    blended = upper * (1 - weight_y) + lower * weight_y
    mean = tf.reduce_mean(blended, axis=[1, 2], keepdims=True)
    blended = (blended - mean) * contrast_factors[:, None, None] + mean
    blended = blended * brightness_factors[:, None, None]
    if fill_mode == "constant":  # half a pixel of grace: edge pixels stay whole
        inside = (raw_x > -0.5) & (raw_x < width - 0.5) & (raw_y > -0.5) & (raw_y < height - 0.5)
        blended = blended * tf.cast(inside, tf.float32)[..., None]
    blended = tf.clip_by_value(tf.floor(blended + 0.5), 0, 255)
    return tf.reshape(tf.cast(blended, tf.uint8), tf.shape(images))


@functools.lru_cache(maxsize=None)
def _compiled_resample(fill_mode):
    import tensorflow as tf

    return tf.function(functools.partial(_resample, fill_mode=fill_mode), jit_compile=True)


def augment_batch(images, seed, strengths):
    """Randomly augments a uint8 batch (B, H, W, 3); returns uint8.

    basic policy: flip, shear, rotation, zoom and translation are one affine
    transform per image, and contrast and brightness are applied in the same
    pass, so each pixel is interpolated once (randaugment, augmix: the
    flips, then `policy_batch`; then, for both, `erase_batch`). The pass is XLA-compiled: measured on 2 CPU cores it
    is about 3x faster than tf.raw_ops.ImageProjectiveTransformV3 (which
    Keras' RandomRotation/RandomZoom use) at 224 px. `seed` is a shape-[2]
    integer tensor: the same seed gives the same augmentation, so runs are
    reproducible, and each batch gets its own.
    """
    import tensorflow as tf

    if strengths.augment_policy == "basic":
        images = warp_batch(images, seed, strengths)
    else:
        images = warp_batch(images, seed, flips_only(strengths))
        images = policy_batch(images, tf.random.experimental.stateless_fold_in(seed, POLICY_STREAM),
                              strengths.augment_policy)
    if strengths.erasing:
        images = erase_batch(images, tf.random.experimental.stateless_fold_in(seed, ERASING_STREAM),
                             strengths.erasing)
    return images


def summary(strengths):
    """How the run's data line names its augmentation (`strengths`: an
    AugmentConfig, or None with --augment 0)."""
    if strengths is None:
        return "off"
    text = "on" if strengths.augment_policy == "basic" else f"{strengths.augment_policy} after flip {strengths.flip}"
    return text + (f", random erasing p={strengths.erasing:g}" if strengths.erasing else "")

def flips_only(strengths):
    """`strengths` with only its --flip left: what a policy keeps of the
    basic warp (a flip moves whole pixels, so the pass copies them as they
    are)."""
    return dataclasses.replace(strengths, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0,
                               brightness=None, shear=0.0)


def warp_batch(images, seed, strengths):
    """The basic policy's one XLA-compiled pass (see augment_batch)."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    transforms, contrast_seed = augmentation_transforms(
        batch, height, width, strengths, seed
    )
    factors = tf.random.stateless_uniform(
        [batch],
        seed=contrast_seed,
        minval=1.0 - strengths.contrast,
        maxval=1.0 + strengths.contrast,
    )
    low, high = strengths.brightness or (1.0, 1.0)
    brightness = tf.random.stateless_uniform(
        [batch], seed=tf.random.experimental.stateless_fold_in(seed, 6), minval=low, maxval=high
    )
    return _compiled_resample(strengths.fill_mode)(images, transforms, factors, brightness)


# ---------------------------------------------------------------- policies and erasing


# Folded into a batch's seed for the policy and for erasing, so their draws
# stay apart from the warp's (folds 5 and 6) and from each other.
POLICY_STREAM, ERASING_STREAM = 8, 9


@functools.lru_cache(maxsize=None)
def policy_layer(policy):
    """Keras' RandAugment or AugMix at their defaults (RandAugment: 2 of
    its 11 operations at magnitude 0.5; AugMix: 3 chains of up to 3
    operations at 0.3, mixed by Dirichlet(1) weights, Beta(1, 1) back with
    the image), for uint8 values: the layer whose operations
    policy_batch draws from. Made once per process, outside any traced
    function (a Keras layer makes a seed variable, which a tf.data function
    may not)."""
    import keras
    import tensorflow as tf

    with tf.init_scope():
        if policy == "randaugment":
            return keras.layers.RandAugment(value_range=(0, 255))
        return keras.layers.AugMix(value_range=(0, 255))


@functools.lru_cache(maxsize=None)
def erasing_layer(probability):
    """Keras' RandomErasing erasing each image with exactly `probability`
    (its factor (P, P)): a rectangle of 2% to 33% of the image filled with
    noise. Made once per process, as policy_layer."""
    import keras
    import tensorflow as tf

    with tf.init_scope():
        return keras.layers.RandomErasing(factor=(probability, probability), value_range=(0, 255))


def _seeded(layer, images, seed):
    """`layer`'s own transformation of float `images`, drawn statelessly
    from `seed` (a shape-[2] tensor; see _batch_seeds_class) instead of the
    layer's seed generator; float32 out."""
    import tensorflow as tf

    transformation = layer.get_random_transformation(images, training=True, seed=_batch_seeds_class()(seed))
    return tf.cast(layer.transform_images(images, transformation), tf.float32)


def _one_operation_each(layer, names, images, seed):
    """Each image of a float batch through one of `layer`'s operations
    `names` (its sublayers; None: unchanged), chosen per image from `seed`.
    The batch is split by operation (tf.dynamic_partition), so each image
    costs one operation, not all of them."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    choice = tf.random.stateless_uniform([batch], seed=seed, minval=0, maxval=len(names), dtype=tf.int32)
    parts = tf.dynamic_partition(images, choice, len(names))
    positions = tf.dynamic_partition(tf.range(batch), choice, len(names))
    done = []
    for number, (name, part) in enumerate(zip(names, parts)):
        if name is None:
            done.append(part)
            continue
        operation = functools.partial(_seeded, getattr(layer, name), part,
                                      tf.random.experimental.stateless_fold_in(seed, number + 1))
        # Some operations (Equalization) fail on an empty batch.
        done.append(tf.cond(tf.shape(part)[0] > 0, operation, lambda part=part: part))
    return tf.dynamic_stitch(positions, done)


def _rand_augment(layer, images, seed):
    """RandAugment: `layer.num_ops` operations in a row, each drawn per image."""
    import tensorflow as tf

    # Keras' own list of RandAugment's operations, in its own order.
    names = list(layer._AUGMENT_LAYERS)
    for step in range(layer.num_ops):
        images = _one_operation_each(layer, names, images, tf.random.experimental.stateless_fold_in(seed, step))
    return images


def _aug_mix(layer, images, seed):
    """AugMix: `layer.num_chains` chains of `layer.chain_depth` steps (each
    an operation drawn per image and chain, or none, as Keras draws them),
    mixed by per-image Dirichlet(alpha) weights, then blended with the image
    by a per-image Beta(alpha, alpha) weight. The chains run side by side as
    one stacked batch: a graph a third the size of one chain after another,
    which tf.data takes minutes less to prepare."""
    import tensorflow as tf

    batch, chains = tf.shape(images)[0], layer.num_chains
    names = list(layer._augment_layers) + [None]  # Keras' own list, and none
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    gammas = tf.random.stateless_gamma([batch, chains], seed=seeds[0], alpha=layer.alpha)
    weights = gammas / tf.reduce_sum(gammas, axis=1, keepdims=True)
    pair = tf.random.stateless_gamma([batch, 2], seed=seeds[1], alpha=layer.alpha)
    kept = (pair[:, 0] / tf.reduce_sum(pair, axis=1))[:, None, None, None]
    chained = tf.tile(images, [chains, 1, 1, 1])  # chain c's images at rows c * batch ...
    for step in range(layer.chain_depth):
        chained = _one_operation_each(layer, names, chained, tf.random.experimental.stateless_fold_in(seeds[2], step))
    chained = tf.reshape(chained, tf.concat([[chains, batch], tf.shape(images)[1:]], axis=0))
    mixed = tf.einsum("cbhwk,bc->bhwk", chained, weights)
    return kept * images + (1.0 - kept) * mixed


def _to_uint8(images):
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)


def policy_batch(images, seed, policy):
    """A uint8 batch through --augment_policy randaugment or augmix, drawn
    from `seed` (a shape-[2] integer tensor); uint8 out.

    The operations are Keras' own (the sublayers of policy_layer, at its
    magnitudes); which ones each image gets is drawn here, per image and
    from the batch's seed, because Keras' layers draw it otherwise:
    RandAugment picks the same operations for a whole batch, and AugMix
    picks its chains with Python's random module, which in a tf.data
    function runs once, when the function is traced, so every batch of a
    run would get the same chains. Drawn from the batch's seed, the same
    --seed gives the same batches, in parallel."""
    import tensorflow as tf

    layer = policy_layer(policy)
    run = _rand_augment if policy == "randaugment" else _aug_mix
    return _to_uint8(run(layer, tf.cast(images, tf.float32), seed))


def erase_batch(images, seed, probability):
    """A uint8 batch with a random rectangle of each image, with
    `probability`, filled with noise (Keras' RandomErasing, erasing_layer),
    drawn from `seed` (a shape-[2] integer tensor); uint8 out. Labels are
    unchanged (timm's and the paper's choice)."""
    import tensorflow as tf

    return _to_uint8(_seeded(erasing_layer(probability), tf.cast(images, tf.float32), seed))


# ---------------------------------------------------------------- mixing whole batches


def mix_layers(mixup, cutmix, seed):
    """Keras' MixUp (Beta(mixup, mixup)) and CutMix (Beta(cutmix, cutmix)
    patches) layers for the strengths given (0: not used), seeded."""
    import keras

    layers = []
    if mixup:
        layers.append(keras.layers.MixUp(alpha=mixup, seed=seed))
    if cutmix:
        layers.append(keras.layers.CutMix(factor=(cutmix, cutmix), seed=seed + 1))
    return layers


# Folded into a batch's seed before mixing, so the mix draws apart from the
# same batch's augmentation (both come from one seed stream).
MIX_STREAM = 7


@functools.lru_cache(maxsize=None)
def _batch_seeds_class():
    import keras
    import tensorflow as tf

    class BatchSeeds(keras.random.SeedGenerator):
        """Keras seeds drawn from one batch's own seed, statelessly: the
        n-th draw is stateless_fold_in(seed, n). A SeedGenerator keeps its
        state in a variable that every draw assigns; in a tf.data function
        that assignment is a stateful op, and with TensorFlow's op
        determinism on (--deterministic 1) tf.data then runs the whole
        pipeline sequentially (parallel maps made plain maps, prefetch
        turned off), printing "NodeDef mentions attribute
        use_unbounded_threadpool" for each map it rewrites."""

        def __init__(self, seed):  # no state variable, by design
            self.seed = seed
            self.draws = 0

        def next(self, ordered=True):
            self.draws += 1
            return tf.random.experimental.stateless_fold_in(self.seed, self.draws)

    return BatchSeeds


def mix_batch(images, labels, layers, choice=None, seed=None):
    """A uint8 batch and its one-hot float labels, mixed by one of `layers`
    (mix_layers; `choice`, a scalar int tensor, picks which: a different
    one each batch with both). Labels stay sums of 1, mixed in the same
    proportion as the pixels. `seed` (a shape-[2] integer tensor, the
    batch's own) draws the mix statelessly, as the training pipeline
    needs (see _batch_seeds_class); without it each layer draws from its
    own seed generator. Returns (uint8 images, float32 labels)."""
    import tensorflow as tf

    def by(layer):
        def mixed():
            data = {"images": images, "labels": labels}
            if seed is None:
                out = layer(data)
            else:
                seeds = _batch_seeds_class()(tf.random.experimental.stateless_fold_in(seed, MIX_STREAM))
                # The layer's own call, with the seed it takes no argument for.
                transformation = layer.get_random_transformation(data, training=True, seed=seeds)
                out = {"images": layer.transform_images(tf.convert_to_tensor(images), transformation),
                       "labels": layer.transform_labels(labels, transformation)}
            pixels = tf.clip_by_value(tf.round(out["images"]), 0, 255)
            return tf.cast(pixels, tf.uint8), tf.cast(out["labels"], tf.float32)

        return mixed

    if len(layers) == 1 or choice is None:
        return by(layers[0])()
    return tf.cond(tf.equal(choice % 2, 0), by(layers[0]), by(layers[1]))
