"""How training images are randomly transformed (--augment 1, --mixup, --cutmix).

Flip, rotation, zoom, shear and translation are composed into one affine
transform per image and applied with contrast and brightness in one
XLA-compiled bilinear pass (`augment_batch`), so each pixel is
interpolated once; pixels from outside the image are filled by
--fill_mode. Used by the training pipeline (data_loader.make_dataset),
main.py's augmentation preview and test-time augmentation: one
implementation everywhere. MixUp and CutMix (`mix_batch`) are Keras' own
layers, applied to whole training batches after that pass, each batch mixed
from a seed of its own so the pipeline stays parallel.
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


def _reflect(coordinates, size):
    """Mirrors coordinates that fall outside [0, size - 1] back inside."""
    import tensorflow as tf

    period = 2.0 * (size - 1)
    coordinates = tf.math.floormod(tf.abs(coordinates), period)
    return tf.where(coordinates > size - 1, period - coordinates, coordinates)


def _source(coordinates, size, fill_mode):
    """Source coordinates inside [0, size - 1] by `fill_mode` (constant:
    clamped here, blanked by the caller)."""
    import tensorflow as tf

    if fill_mode == "reflect":
        return _reflect(coordinates, size)
    if fill_mode == "wrap":
        return tf.math.floormod(coordinates, float(size))
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

    Flip, shear, rotation, zoom and translation are one affine transform
    per image, and contrast and brightness are applied in the same pass, so
    each pixel is interpolated once. The pass is XLA-compiled: measured on 2 CPU cores it
    is about 3x faster than tf.raw_ops.ImageProjectiveTransformV3 (which
    Keras' RandomRotation/RandomZoom use) at 224 px. `seed` is a shape-[2]
    integer tensor: the same seed gives the same augmentation, so runs are
    reproducible, and each batch gets its own.
    """
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
