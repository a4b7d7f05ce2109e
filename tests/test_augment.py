"""Random augmentation: where each transform puts a pixel, and contrast.

The expected positions are worked out here from the geometry (rotation
about the image centre, zoom about the centre, shift by a fraction of the
side, mirror), never from augment.py's matrix. The random amounts are
re-drawn from the seed the way augment.py documents its draws: the seed is
split in five (rotation, zoom, translation, flips, contrast), each a
stateless uniform draw.
"""

import math

import numpy as np
import pytest

import augment
from conftest import read_json

SIDE = 33  # odd, so the centre (16, 16) is a pixel
CENTRE = (SIDE - 1) / 2.0
SEED = (3, 4)


def strengths(flip="none", rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0):
    return augment.AugmentConfig(flip=flip, rotation=rotation, zoom=zoom, translation=translation, contrast=contrast)


def seed_tensor(seed=SEED):
    import tensorflow as tf

    return tf.constant(seed, tf.int64)


def drawn(seed, batch, config):
    """The amounts the seed draws, re-drawn here: angle (radians), scale,
    shift (x, y in pixels of a SIDE-wide, SIDE-high image unless the caller
    rescales), flip draws (< 0.5: flipped) and contrast factors."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed_tensor(seed), num=5)
    unit = tf.random.stateless_uniform([batch], seed=seeds[0], minval=-1.0, maxval=1.0).numpy()
    scale = tf.random.stateless_uniform(
        [batch], seed=seeds[1], minval=1.0 - config.zoom, maxval=1.0 + config.zoom
    ).numpy()
    shift_fraction = tf.random.stateless_uniform(
        [batch, 2], seed=seeds[2], minval=-config.translation, maxval=config.translation
    ).numpy()
    flip_draws = tf.random.stateless_uniform([batch, 2], seed=seeds[3]).numpy()
    factors = tf.random.stateless_uniform(
        [batch], seed=seeds[4], minval=1.0 - config.contrast, maxval=1.0 + config.contrast
    ).numpy()
    return {
        "angle": unit.astype(np.float64) * math.radians(config.rotation),
        "scale": scale.astype(np.float64),
        "shift_fraction": shift_fraction.astype(np.float64),
        "flipped": flip_draws < 0.5,
        "contrast": factors.astype(np.float64),
    }


def square_images(batch, centre_x, centre_y, height=SIDE, width=SIDE):
    """A dark batch with a bright 3x3 square centred on (centre_x, centre_y)."""
    images = np.zeros((batch, height, width, 3), np.uint8)
    images[:, centre_y - 1 : centre_y + 2, centre_x - 1 : centre_x + 2] = 255
    return images


def run(images, config, seed=SEED):
    import tensorflow as tf

    return augment.augment_batch(tf.constant(images), seed_tensor(seed), config).numpy()


def bright_centre(image, around_x, around_y, radius=4):
    """(x, y) of the brightness-weighted centre of one image within
    `radius` px of (around_x, around_y), and the brightness there in units
    of the 3x3 square's. The window leaves out the copies that reflecting
    at the borders brings in when the image zooms out."""
    weights = image[..., 0].astype(np.float64)
    rows, columns = np.mgrid[: image.shape[0], : image.shape[1]]
    weights = weights * ((np.abs(columns - around_x) <= radius) & (np.abs(rows - around_y) <= radius))
    total = weights.sum()
    if total == 0:
        return math.nan, math.nan, 0.0
    return (weights * columns).sum() / total, (weights * rows).sum() / total, total / (9 * 255)


def assert_square_at(image, expected_x, expected_y, scale=1.0):
    """The bright square is centred on (expected_x, expected_y), its area
    scaled by scale**2 (bilinear sampling keeps brightness per area)."""
    x, y, squares = bright_centre(image, expected_x, expected_y)
    assert squares == pytest.approx(scale**2, rel=0.15), f"not one whole square there: {squares:.2f}"
    assert abs(x - expected_x) < 0.2 and abs(y - expected_y) < 0.2, (x, y, expected_x, expected_y)


def rotated_on_screen(x, y, angle, centre_x=CENTRE, centre_y=CENTRE):
    """(x, y) in image coordinates (y down) turned counterclockwise as seen
    on screen by `angle` radians about the centre (Keras' RandomRotation
    convention: a positive angle turns counterclockwise)."""
    right, up = x - centre_x, centre_y - y
    turned_right = right * math.cos(angle) - up * math.sin(angle)
    turned_up = right * math.sin(angle) + up * math.cos(angle)
    return centre_x + turned_right, centre_y - turned_up


def test_rotation_turns_a_point_about_the_centre_by_the_drawn_angle():
    config = strengths(rotation=90.0)
    batch = 8
    angles = drawn(SEED, batch, config)["angle"]
    assert np.abs(angles).max() > math.radians(30)  # big enough that a wrong centre or sign shows
    assert (angles > 0).any() and (angles < 0).any()

    outputs = run(square_images(batch, 23, 12), config)

    for image, angle in zip(outputs, angles, strict=True):
        expected_x, expected_y = rotated_on_screen(23, 12, angle)
        assert_square_at(image, expected_x, expected_y)
        # A rotation keeps the distance to the centre.
        x, y, _ = bright_centre(image, expected_x, expected_y)
        assert math.hypot(x - CENTRE, y - CENTRE) == pytest.approx(math.hypot(7, 4), abs=0.2)


def test_the_transform_maps_output_points_back_to_the_input_point():
    """ImageProjectiveTransformV3's convention: the 8 numbers map an output
    pixel (x, y) to the input pixel it is read from."""
    config = strengths(rotation=60.0)
    batch = 6
    transforms, _ = augment.augmentation_transforms(batch, SIDE, SIDE, config, seed_tensor())
    transforms = transforms.numpy().astype(np.float64)
    assert transforms.shape == (batch, 8)

    for row, angle in zip(transforms, drawn(SEED, batch, config)["angle"], strict=True):
        a0, a1, a2, b0, b1, b2, c0, c1 = row
        for input_x, input_y in [(23, 12), (5, 30), (CENTRE, CENTRE)]:
            output_x, output_y = rotated_on_screen(input_x, input_y, angle)
            denominator = c0 * output_x + c1 * output_y + 1
            assert (a0 * output_x + a1 * output_y + a2) / denominator == pytest.approx(input_x, abs=1e-4)
            assert (b0 * output_x + b1 * output_y + b2) / denominator == pytest.approx(input_y, abs=1e-4)


def test_resampling_matches_tensorflows_projective_transform_of_the_same_matrix():
    import tensorflow as tf

    config = strengths(flip="both", rotation=30.0, zoom=0.2, translation=0.1)
    images = square_images(4, 20, 14)
    transforms, _ = augment.augmentation_transforms(4, SIDE, SIDE, config, seed_tensor())

    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(images), transforms=transforms, output_shape=[SIDE, SIDE],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
    ).numpy()
    ours = run(images, config)

    assert reference.max() == 255 and not np.array_equal(reference, images)
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1  # rounding only


def test_zoom_moves_a_point_from_the_centre_by_the_drawn_scale():
    config = strengths(zoom=0.4)
    batch = 6
    scales = drawn(SEED, batch, config)["scale"]
    assert scales.min() < 0.9 and scales.max() > 1.1  # both zooming out and in

    outputs = run(square_images(batch, 23, 11), config)

    for image, scale in zip(outputs, scales, strict=True):
        assert_square_at(image, CENTRE + scale * 7, CENTRE + scale * -5, scale)


def test_rotation_and_zoom_together_turn_and_scale_about_the_centre():
    config = strengths(rotation=45.0, zoom=0.3)
    batch = 4
    amounts = drawn(SEED, batch, config)

    outputs = run(square_images(batch, 22, 13), config)

    for image, angle, scale in zip(outputs, amounts["angle"], amounts["scale"], strict=True):
        turned_x, turned_y = rotated_on_screen(22, 13, angle)
        assert_square_at(image, CENTRE + scale * (turned_x - CENTRE), CENTRE + scale * (turned_y - CENTRE), scale)


def test_translation_shifts_by_the_drawn_fraction_of_each_side():
    height, width = SIDE, 45  # not square: x shifts by a fraction of the width, y of the height
    config = strengths(translation=0.2)
    batch = 6
    fractions = drawn(SEED, batch, config)["shift_fraction"]
    assert np.abs(fractions).max() > 0.1

    outputs = run(square_images(batch, 22, 16, height=height, width=width), config)

    for image, (fraction_x, fraction_y) in zip(outputs, fractions, strict=True):
        assert_square_at(image, 22 + fraction_x * width, 16 + fraction_y * height)


@pytest.mark.parametrize("flip", ["horizontal", "vertical", "both", "none"])
def test_flips_mirror_exactly_the_images_the_seed_flips(flip):
    batch = 32
    image = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE + 4, 3)).astype(np.uint8)
    images = np.repeat(image[None], batch, axis=0)
    flipped = drawn(SEED, batch, strengths(flip=flip))["flipped"]
    horizontal = flipped[:, 0] if flip in ("horizontal", "both") else np.zeros(batch, bool)
    vertical = flipped[:, 1] if flip in ("vertical", "both") else np.zeros(batch, bool)

    outputs = run(images, strengths(flip=flip))

    seen = set()
    for output, mirror_x, mirror_y in zip(outputs, horizontal, vertical, strict=True):
        expected = image[:, ::-1] if mirror_x else image
        expected = expected[::-1] if mirror_y else expected
        np.testing.assert_array_equal(output, expected)
        seen.add((bool(mirror_x), bool(mirror_y)))
    wanted = {
        "horizontal": {(False, False), (True, False)},
        "vertical": {(False, False), (False, True)},
        "both": {(False, False), (True, False), (False, True), (True, True)},
        "none": {(False, False)},
    }
    assert seen == wanted[flip]


def test_no_contrast_and_no_geometry_return_the_images_unchanged():
    images = np.random.default_rng(1).integers(0, 256, (5, SIDE, 40, 3)).astype(np.uint8)
    for seed in [(0, 0), (3, 4), (123, 9)]:
        np.testing.assert_array_equal(run(images, strengths(), seed=seed), images)


def test_contrast_scales_deviations_from_the_image_mean_by_the_drawn_factor():
    config = strengths(contrast=0.5)
    batch = 4
    rng = np.random.default_rng(2)
    images = rng.integers(60, 200, (batch, SIDE, SIDE, 3)).astype(np.uint8)
    images[0, :4] = 255  # some pixels that a factor above 1 pushes past 255: clipped
    factors = drawn(SEED, batch, config)["contrast"]
    assert np.abs(factors - 1).max() > 0.2  # far enough from 1 to show

    outputs = run(images, config)

    for output, image, factor in zip(outputs, images, factors, strict=True):
        pixels = image.astype(np.float64)
        mean = pixels.mean()  # one mean over all pixels and channels
        expected = np.clip((pixels - mean) * factor + mean, 0, 255)
        assert np.abs(output.astype(np.float64) - expected).max() <= 0.5 + 1e-3
    assert len(set(np.round(factors, 6))) == batch  # each image its own factor


def test_same_seed_same_output_other_seed_other_output_uint8_shape_kept():
    config = strengths(flip="both", rotation=30.0, zoom=0.2, translation=0.1, contrast=0.3)
    images = np.random.default_rng(3).integers(0, 256, (3, SIDE, 40, 3)).astype(np.uint8)

    first, again, other = run(images, config, (5, 6)), run(images, config, (5, 6)), run(images, config, (5, 7))

    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, images, strict=True))


def test_drawn_amounts_stay_within_the_configured_ranges():
    """Read back from the matrices of a large batch: with rotation and zoom
    only, the matrix is R(angle) / scale, so atan2 and hypot recover them;
    with translation only, its offset is minus the shift."""
    batch = 512
    transforms, _ = augment.augmentation_transforms(
        batch, SIDE, 45, strengths(rotation=20.0, zoom=0.25), seed_tensor()
    )
    a0, b0 = transforms.numpy()[:, 0].astype(np.float64), transforms.numpy()[:, 3].astype(np.float64)
    angles, scales = np.degrees(np.arctan2(b0, a0)), 1 / np.hypot(a0, b0)
    assert np.abs(angles).max() <= 20 + 1e-3 and angles.min() < -18 and angles.max() > 18
    assert scales.min() >= 0.75 - 1e-4 and scales.max() <= 1.25 + 1e-4
    assert scales.min() < 0.78 and scales.max() > 1.22

    transforms, _ = augment.augmentation_transforms(batch, SIDE, 45, strengths(translation=0.1), seed_tensor())
    shift_x, shift_y = -transforms.numpy()[:, 2], -transforms.numpy()[:, 5]
    assert np.abs(shift_x).max() <= 4.5 + 1e-4 and np.abs(shift_x).max() > 4.0  # 10% of 45 px
    assert np.abs(shift_y).max() <= 3.3 + 1e-4 and np.abs(shift_y).max() > 2.9  # 10% of 33 px


@pytest.mark.slow
def test_a_mixup_training_keeps_its_pipeline_parallel_and_prints_no_nodedef_line(mixing_run):
    """With --deterministic 1, tf.data makes every parallel map sequential
    (and turns prefetching off) as soon as one dataset function holds a
    stateful op, printing "NodeDef mentions attribute
    use_unbounded_threadpool" for each map it rewrites: the mixing drew
    from Keras' seed generators, a variable assigned at every draw. Drawn
    from each batch's own seed, nothing is rewritten."""
    errors = mixing_run["errors"]
    assert "use_unbounded_threadpool" not in errors and "NodeDef" not in errors, errors[-2000:]


# mixing_run's balance part is checked here, beside its mixing check: in another
# file, a second test process would sit waiting for the one building it.
@pytest.mark.slow
def test_a_focal_mixed_run_trains_and_reports_balanced_accuracy(mixing_run):
    printed = mixing_run["printed"]
    assert "balance: focal loss (gamma 2), alpha a=" in printed and "(balanced " in printed
    scores = read_json(mixing_run["results"] / "metrics" / mixing_run["run"] / "metrics.json")
    assert 0 <= scores["balanced_accuracy"] <= 1 and math.isfinite(scores["loss"])
    preview = mixing_run["results"] / "augmentation_preview" / mixing_run["run"] / "augmentation_preview.png"
    assert preview.stat().st_size > 10_000
