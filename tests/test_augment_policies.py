"""--augment_policy (randaugment, augmix) and --erasing: uint8 batches of the
same shape, drawn from the batch's seed (the same seed, the same batch; in
the tf.data pipeline the same --seed, the same epoch), erasing off changing
nothing and erasing 1 changing every image in one rectangle, multi-label
labels left alone, test-time augmentation staying basic, the preview's
columns, bad input as one line with exit code 2, and one tiny training."""

import dataclasses
import os
import types

import numpy as np
import pytest
from conftest import TINY, make_flat_dataset, make_multi_label_dataset, one_line_error

import augment
import data_loader
import figures
import inference
import main as main_script

POLICIES = ("basic", "randaugment", "augmix")
# No flip and no warp: what is left changes nothing but the policy and erasing.
STILL = augment.AugmentConfig(flip="none", rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0)


def photo_batch(batch=16, side=32, seed=0):
    """uint8 images with structure (a gradient and a square of noise), so
    that every operation (equalize, autocontrast, shear...) changes them."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, side, dtype=np.float32)
    images = np.empty((batch, side, side, 3), np.float32)
    images[...] = ramp[None, None, :, None]
    images[:, side // 4 : side // 2, side // 4 : side // 2] = rng.uniform(0, 255, (batch, side // 4, side // 4, 3))
    return images.astype(np.uint8)


def run(images, strengths, seed=(3, 4)):
    import tensorflow as tf

    return augment.augment_batch(tf.constant(images), tf.constant(seed, tf.int64), strengths).numpy()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("erasing", [0.0, 0.5])
def test_each_policy_gives_uint8_batches_of_the_same_shape_the_same_for_a_seed(policy, erasing):
    images = photo_batch()
    strengths = dataclasses.replace(augment.AugmentConfig(), augment_policy=policy, erasing=erasing)

    first, again, other = run(images, strengths), run(images, strengths), run(images, strengths, seed=(3, 5))

    assert first.shape == images.shape and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # Changed, but not wholly: most images still look like themselves.
    changed = np.mean(first != images, axis=(1, 2, 3))
    assert changed.mean() > 0.2
    assert first.min() >= 0 and first.max() <= 255


@pytest.mark.parametrize("policy", ["randaugment", "augmix"])
def test_a_policy_keeps_only_the_flip_of_the_warp_and_changes_pixels_not_just_places(policy):
    images = photo_batch()
    flipped_only = run(images, dataclasses.replace(STILL, flip="horizontal"))
    policy_run = run(images, dataclasses.replace(STILL, augment_policy=policy))

    # The flips alone are exact mirror images (no resampling blur).
    assert all(np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
               for out, image in zip(flipped_only, images))
    # The policy changes the colours of some images (not only moves them):
    # their sorted pixel values differ.
    recoloured = [not np.array_equal(np.sort(out, axis=None), np.sort(image, axis=None))
                  for out, image in zip(policy_run, images)]
    assert sum(recoloured) >= len(images) // 2


def test_randaugment_draws_its_operations_per_image_not_per_batch():
    """Keras' RandAugment gives a whole batch the same two operations; ours
    draws them per image: in a batch of one image repeated, the images
    come out in many different ways, not the same way."""
    images = np.repeat(photo_batch(batch=1), 32, axis=0)
    out = run(images, dataclasses.replace(STILL, augment_policy="randaugment"))
    # The operations without a random amount (equalize, autocontrast) give
    # identical copies: with two of them for the whole batch all would agree.
    distinct = {out[i].tobytes() for i in range(len(out))}
    assert len(distinct) > 16


def test_erasing_zero_changes_nothing_and_one_erases_one_rectangle_of_every_image():
    images = photo_batch(batch=32)
    assert np.array_equal(run(images, STILL), images)

    erased = run(images, dataclasses.replace(STILL, erasing=1.0))

    for out, image in zip(erased, images):
        rows, columns = np.nonzero(np.any(out != image, axis=2))
        assert len(rows), "every image is erased"
        # The changes lie in one rectangle of 1/50 to 1/3 of the image
        # (noise that happens to equal a pixel leaves holes in it).
        area = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
        assert 0.01 <= area / (32 * 32) <= 0.34
        outside = np.ones((32, 32), bool)
        outside[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1] = False
        assert np.array_equal(out[outside], image[outside])


def test_erasing_half_erases_about_half_the_images():
    images = photo_batch(batch=64)
    erased = run(images, dataclasses.replace(STILL, erasing=0.5))
    count = int(np.sum(np.any(erased != images, axis=(1, 2, 3))))
    assert 16 <= count <= 48


def training_batches(paths, labels, strengths, seed=7, epochs=1):
    """Each epoch's (images, labels) batches of make_dataset's training stream."""
    dataset = data_loader.make_dataset(paths, labels, 32, 8, training=True, augmentation=strengths, seed=seed,
                                       cache=True)
    return [[(images.numpy(), numbers.numpy()) for images, numbers in dataset] for _ in range(epochs)]


def flat_files(root):
    """(paths, class numbers) of a make_flat_dataset folder."""
    classes = sorted(os.listdir(root))
    paths = [os.path.join(root, name, file) for name in classes for file in sorted(os.listdir(os.path.join(root, name)))]
    return paths, [classes.index(os.path.basename(os.path.dirname(path))) for path in paths]


def test_the_pipeline_gives_the_same_batches_for_the_same_seed_and_others_each_epoch(tmp_path):
    data = make_flat_dataset(tmp_path / "data", per_class=8)
    paths, labels = flat_files(data)
    strengths = dataclasses.replace(augment.AugmentConfig(), augment_policy="randaugment", erasing=0.5)

    first, second = training_batches(paths, labels, strengths, epochs=2)
    (again,) = training_batches(paths, labels, strengths)

    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, second))


def test_multi_label_batches_keep_their_labels(tmp_path):
    names = ("cat", "dog", "fox")
    root, _, sets = make_multi_label_dataset(tmp_path / "data", labels=names, count=12)
    paths = [os.path.join(root, "images", f"img_{number:03d}.png") for number in range(len(sets))]
    labels = np.array([[float(name in chosen) for name in names] for chosen in sets], np.float32)
    strengths = dataclasses.replace(augment.AugmentConfig(), augment_policy="randaugment", erasing=1.0)

    (plain,) = training_batches(paths, labels, None)
    (augmented,) = training_batches(paths, labels, strengths)

    assert np.array_equal(np.concatenate([b[1] for b in plain]), np.concatenate([b[1] for b in augmented]))
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(plain, augmented))


def test_test_time_augmentation_stays_basic_flips_and_shifts_whatever_the_policy():
    trained = types.SimpleNamespace(
        sidecar=None, path="model.keras",
        run_config={"options": {"augment": 1, "flip": "horizontal", "translation": 0.1,
                                "augment_policy": "augmix", "erasing": 1.0}},
    )
    tta = inference.test_time_augmentation(trained, 4, seed=0)
    assert tta.augment.augment_policy == "basic" and tta.augment.erasing == 0
    assert (tta.augment.rotation, tta.augment.zoom, tta.augment.contrast) == (0, 0, 0)


def test_the_preview_names_the_policy_and_shows_erasing_alone():
    strengths = dataclasses.replace(augment.AugmentConfig(), augment_policy="randaugment", erasing=0.3)
    titles = [title for title, _ in figures.preview_singles(strengths)]
    assert titles == ["erasing (every image)"]
    (_, alone), = figures.preview_singles(strengths)
    assert alone.erasing == 1.0 and alone.augment_policy == "basic" and alone.flip == "none"
    assert augment.summary(strengths) == "randaugment after flip horizontal, random erasing p=0.3"
    assert augment.summary(augment.AugmentConfig()) == "on" and augment.summary(None) == "off"


@pytest.mark.parametrize("arguments, message", [
    (["--augment_policy", "autoaugment"], "argument --augment_policy: invalid choice: 'autoaugment'"),
    (["--erasing", "-0.1"], "erasing must be between 0 and 1. Received: erasing=-0.1"),
    (["--erasing", "1.5"], "erasing must be between 0 and 1. Received: erasing=1.5"),
    (["--erasing", "nan"], "erasing must be a finite number. Received: erasing=nan"),
    (["--erasing", "half"], "erasing must be a number. Received: erasing=half"),
    (["--augment", "0", "--erasing", "0.25"], "--erasing 0.25 acts on augmented training batches, which --augment 0"),
    (["--augment", "0", "--augment_policy", "augmix"], "--augment_policy augmix acts on augmented training"),
    (["--augment_policy", "randaugment", "--rotation", "30"],
     "--rotation sets the basic policy's warp, which --augment_policy randaugment replaces"),
    (["--augment_policy", "augmix", "--fill_mode", "wrap"], "Received: fill_mode=wrap, augment_policy=augmix"),
])
def test_each_bad_input_is_one_line_and_exit_2(tmp_path, workdir, capsys, arguments, message):
    data = make_flat_dataset(tmp_path / "data", per_class=3)
    assert main_script.main(["--image_dir", data, *arguments, *TINY]) == 2
    assert message in one_line_error(capsys)
