"""--balance (class weights: when `auto` uses them, their values and line; oversampling, focal loss), --label_smoothing,
--mixup/--cutmix and --brightness/--shear/--fill_mode: unit tests on tiny
synthetic data, and each bad input as one line with exit code 2."""

import dataclasses
import math

import numpy as np
import pytest
from conftest import TINY, make_flat_dataset, one_line_error, write_class_folder

import augment
import balance
import data_loader
import main as main_script
import metrics
import train_utils


# ---------------------------------------------------------------- which balance a run uses


def labels_with_counts(*counts):
    return np.repeat(np.arange(len(counts)), counts)


def shuffled_labels(*counts, seed=0):
    """Shuffled training labels with `counts[i]` images of class i."""
    labels = np.concatenate([np.full(count, number) for number, count in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("counts", [(10, 10), (10, 15), (15, 10), (20, 25, 30), (8, 12, 9, 11)])
def test_auto_gives_no_weights_up_to_one_and_a_half_times(counts):
    assert balance.class_weights(shuffled_labels(*counts), len(counts), "auto") is None


@pytest.mark.parametrize(
    "counts, expected",
    [
        # n_samples / (n_classes * count), by hand.
        ((10, 16), {0: 26 / 20, 1: 26 / 32}),
        ((16, 10), {0: 26 / 32, 1: 26 / 20}),
        ((5, 10, 20), {0: 35 / 15, 1: 35 / 30, 2: 35 / 60}),
        ((30, 30, 30, 19), {0: 109 / 120, 1: 109 / 120, 2: 109 / 120, 3: 109 / 76}),
    ],
)
def test_auto_gives_balanced_weights_above_one_and_a_half_times(counts, expected):
    weights = balance.class_weights(shuffled_labels(*counts), len(counts), "auto")

    assert weights is not None and sorted(weights) == list(range(len(counts)))
    assert all(type(index) is int and type(weight) is float for index, weight in weights.items())
    assert weights == pytest.approx(expected, rel=1e-12)


def test_auto_is_the_default_mode():
    assert balance.class_weights(shuffled_labels(10, 16), 2) == pytest.approx({0: 1.3, 1: 0.8125})
    assert balance.class_weights(shuffled_labels(10, 15), 2) is None


@pytest.mark.parametrize("counts", [(10, 10), (10, 16), (1, 100), (3, 50, 7)])
def test_none_never_gives_weights(counts):
    assert balance.class_weights(shuffled_labels(*counts), len(counts), "none") is None


def test_balanced_weights_give_every_class_the_same_total_weight():
    counts = (3, 17, 40, 8, 25)
    labels = shuffled_labels(*counts, seed=4)

    weights = balance.class_weights(labels, len(counts), "auto")

    totals = [weights[number] * count for number, count in enumerate(counts)]
    np.testing.assert_allclose(totals, len(labels) / len(counts), rtol=1e-12)
    # So the loss keeps its scale: the mean weight over the images is 1.
    assert np.mean([weights[label] for label in labels]) == pytest.approx(1.0, rel=1e-12)


def test_class_weights_line_names_each_class_in_index_order():
    weights = balance.class_weights(shuffled_labels(5, 10, 20), 3, "auto")

    line = balance.class_weights_line(weights, ["cat", "dog", "owl"], "auto")

    assert line == "class weights: cat=2.333, dog=1.167, owl=0.583"


def test_class_weights_line_without_weights_says_why():
    assert balance.class_weights_line(None, ["cat", "dog"], "auto") == (
        "class weights: none (classes are balanced enough)"
    )
    assert balance.class_weights_line(None, ["cat", "dog"], "none") == "class weights: none"


def test_auto_weights_above_1_5x_and_none_below_as_class_weights_auto_did():
    names = ["cat", "dog"]
    chosen = balance.resolve("auto", None, labels_with_counts(10, 16), names)
    assert chosen.mode == "weights" and chosen.class_weight == pytest.approx({0: 1.3, 1: 0.8125})
    assert "1.60 > 1.5, --balance auto" in chosen.line and "cat=1.300" in chosen.line
    assert balance.resolve("auto", None, labels_with_counts(10, 15), names).mode == "none"
    # The old spelling still works.
    assert balance.resolve("auto", "none", labels_with_counts(10, 50), names).mode == "none"
    assert "--class_weights auto" in balance.resolve("auto", "auto", labels_with_counts(10, 50), names).line


def test_focal_alpha_is_inverse_class_frequency_and_the_loss_is_keras_focal():
    chosen = balance.for_run("focal", None, labels_with_counts(40, 10), ["a", "b"], batch_size=8)
    assert chosen.alpha == pytest.approx((0.625, 2.5))
    assert type(chosen.loss).__name__ == "CategoricalFocalCrossentropy" and chosen.loss.alpha == [0.625, 2.5]
    assert chosen.one_hot == 2 and chosen.loader_settings["one_hot"] == 2 and "focal loss" in chosen.line


def test_losses_stay_sparse_by_default_and_one_hot_with_smoothing_or_mixing():
    assert train_utils.training_loss(3) == ("sparse_categorical_crossentropy", 0)
    smoothed, one_hot = train_utils.training_loss(3, label_smoothing=0.1)
    assert type(smoothed).__name__ == "CategoricalCrossentropy" and smoothed.label_smoothing == 0.1 and one_hot == 3
    assert train_utils.training_loss(3, mixing=True)[1] == 3
    plain = balance.for_run("none", None, labels_with_counts(5, 5), ["a", "b"], batch_size=4)
    assert plain.loader_settings == {} and plain.steps_per_epoch is None


def test_oversampling_a_class_of_one_image_works_and_says_how_often_it_comes_round():
    chosen = balance.for_run("oversample", None, labels_with_counts(29, 1), ["many", "one"], batch_size=8)
    assert chosen.oversample and chosen.steps_per_epoch == 4  # 30 images an epoch, in batches of 8
    assert "one 1 images x15.00" in chosen.line and "many 29 images x0.52" in chosen.line


def test_several_workers_refuse_what_their_loop_cannot_do_in_one_line():
    with pytest.raises(balance.UserError, match=r"^--balance oversample, --mixup 0.2: not available with several"):
        balance.for_run("oversample", None, labels_with_counts(5, 5), ["a", "b"], 4, mix=(0.2, 0.0), workers=2)
    assert balance.for_run("weights", None, labels_with_counts(5, 50), ["a", "b"], 4, workers=2).class_weight


# ---------------------------------------------------------------- the oversampled stream


def test_an_oversampled_stream_draws_the_classes_about_equally_seeded(tmp_path):
    counts = (40, 8, 2)
    paths, labels = [], []
    for number, count in enumerate(counts):
        paths += write_class_folder(str(tmp_path / f"c{number}"), number, count, size=8)
        labels += [number] * count

    def stream(seed):
        return data_loader.make_dataset(paths, labels, 8, 16, training=True, seed=seed, cache=True, oversample=True)

    drawn = np.concatenate([batch_labels.numpy() for _, batch_labels in stream(3).take(300)])
    frequencies = np.bincount(drawn, minlength=3) / len(drawn)
    assert len(drawn) == 4800 and np.all(np.abs(frequencies - 1 / 3) < 0.03), frequencies
    first = [batch_labels.numpy().tolist() for _, batch_labels in stream(3).take(3)]
    assert first == [batch_labels.numpy().tolist() for _, batch_labels in stream(3).take(3)]
    assert first != [batch_labels.numpy().tolist() for _, batch_labels in stream(4).take(3)]
    assert data_loader.epoch_steps(50, 16) == 4


# ---------------------------------------------------------------- brightness, shear, fill


def still(**values):
    return dataclasses.replace(
        augment.AugmentConfig(), flip="none", rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0, **values
    )


def resample(images, transform, fill_mode, brightness=1.0):
    import tensorflow as tf

    batch = len(images)
    transforms = tf.constant([transform] * batch, tf.float32)
    ones = tf.ones([batch])
    return augment._resample(tf.constant(images), transforms, ones, ones * brightness, fill_mode).numpy()


def test_brightness_multiplies_every_pixel_by_its_factor_and_clips():
    import tensorflow as tf

    images = np.full((2, 8, 8, 3), 100, np.uint8)
    images[1] = 200
    out = augment.augment_batch(tf.constant(images), tf.constant([1, 2], tf.int64), still(brightness=(1.5, 1.5)))
    assert np.all(out.numpy()[0] == 150) and np.all(out.numpy()[1] == 255)
    low, high = 0.5, 0.9
    out = augment.augment_batch(tf.constant(images[:1]), tf.constant([1, 2], tf.int64), still(brightness=(low, high)))
    assert 50 <= out.numpy().min() == out.numpy().max() <= 90


def test_each_fill_mode_fills_a_shift_from_where_it_should():
    row = np.arange(8, dtype=np.uint8) * 10 + 10  # columns 10, 20, ..., 80
    images = np.tile(row[None, None, :, None], (1, 8, 1, 3))
    shift = [1, 0, 3, 0, 1, 0, 0, 0]  # output column x reads input column x + 3
    expected_tail = {
        "constant": [0, 0, 0],
        "nearest": [80, 80, 80],
        "wrap": [10, 20, 30],
        "reflect": [70, 60, 50],
    }
    for fill_mode, tail in expected_tail.items():
        out = resample(images, shift, fill_mode)[0, 4, :, 0]
        assert out[:5].tolist() == [40, 50, 60, 70, 80], fill_mode
        assert out[5:].tolist() == tail, fill_mode


def test_shear_leans_columns_about_the_centre_and_leaves_other_draws_alone():
    import tensorflow as tf

    images = np.zeros((1, 33, 33, 3), np.uint8)
    images[0, 20, 16] = 255  # 4 rows below the centre row 16
    # x_in = x_out + 0.5 (y - 16): the pixel lands 2 columns left of 16.
    out = resample(images, [1, 0.5, -8, 0, 1, 0, 0, 0], "constant")
    assert out[0, 20, 14, 0] == 255 and out[0, 20, 16, 0] == 0 and out[0, 16, 16, 0] == 0
    seed = tf.constant([5, 6], tf.int64)
    plain, _ = augment.augmentation_transforms(4, 32, 32, augment.AugmentConfig(), seed)
    sheared, _ = augment.augmentation_transforms(4, 32, 32, dataclasses.replace(augment.AugmentConfig(), shear=30), seed)
    plain, sheared = plain.numpy(), sheared.numpy()
    assert np.allclose(plain[:, [0, 3]], sheared[:, [0, 3]]) and not np.allclose(plain[:, 1], sheared[:, 1])
    only, _ = augment.augmentation_transforms(64, 32, 32, still(shear=30), seed)
    tangents = only.numpy()[:, 1]
    assert np.all(np.abs(tangents) <= math.tan(math.radians(30)) + 1e-6) and tangents.std() > 0.1
    assert np.allclose(only.numpy()[:, [0, 4]], 1) and np.allclose(only.numpy()[:, 3], 0)


# ---------------------------------------------------------------- mixup and cutmix


@pytest.mark.parametrize("mix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_batches_keep_uint8_images_and_labels_that_sum_to_one(mix):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (16, 12, 12, 3)).astype(np.uint8))
    labels = tf.one_hot(np.arange(16) % 4, 4)
    layers = augment.mix_layers(*mix, seed=1)
    for choice in (0, 1):
        mixed, mixed_labels = augment.mix_batch(images, labels, layers, choice=tf.constant(choice, tf.int64))
        mixed_labels = mixed_labels.numpy()
        assert mixed.dtype == tf.uint8 and mixed.shape == images.shape
        assert np.allclose(mixed_labels.sum(axis=1), 1, atol=1e-5) and mixed_labels.min() >= 0
        assert (mixed_labels.max(axis=1) < 0.999).any()  # some labels really are mixed


# ---------------------------------------------------------------- balanced accuracy


def test_balanced_accuracy_is_the_mean_recall_and_the_imbalance_is_named():
    true = np.array([0] * 8 + [1] * 2)
    predicted = np.zeros(10, int)  # always the majority class
    assert metrics.balanced_accuracy(true, predicted) == 0.5
    assert metrics.imbalance_text(true, 2) == "imbalanced: 2 to 8 images a class (4.0x)"
    assert metrics.imbalance_text([0, 0, 1, 1], 2) == "classes balanced, 2 images each"
    probabilities = np.eye(2)[predicted]
    assert metrics.classification_metrics(true, probabilities, ["a", "b"])["balanced_accuracy"] == 0.5
    assert "balanced accuracy 0.500 " in metrics.classification_report_text(true, probabilities, ["a", "b"])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("arguments, message", [
    (["--mixup", "-1"], "mixup must be between 0 and 1. Received: mixup=-1"),
    (["--label_smoothing", "1.5"], "label_smoothing must be between 0 and 0.3. Received: label_smoothing=1.5"),
    (["--brightness", "2,1"], "brightness must be MIN,MAX with 0 <= MIN <= MAX. Received: brightness=2,1"),
    (["--brightness", "1.2"], "brightness must be two numbers MIN,MAX"),
    (["--brightness", "nan,1"], "brightness must be a finite number"),
    (["--shear", "nan"], "shear must be a finite number. Received: shear=nan"),
    (["--cutmix", "inf"], "cutmix must be a finite number"),
    (["--fill_mode", "mirror"], "argument --fill_mode: invalid choice"),
    (["--balance", "focal", "--class_weights", "none"], "--class_weights is the old spelling of --balance"),
    (["--balance", "oversample", "--class_weights", "auto"], "choose one. Received: balance=oversample"),
])
def test_each_bad_input_is_one_line_and_exit_2(tmp_path, workdir, capsys, arguments, message):
    data = make_flat_dataset(tmp_path / "data", per_class=3)
    assert main_script.main(["--image_dir", data, *arguments, *TINY]) == 2
    assert message in one_line_error(capsys)


# ---------------------------------------------------------------- one real run


def test_a_model_compiled_with_the_focal_loss_loads_back_with_it_as_resume_does(tmp_path):
    import keras

    loss, _ = train_utils.training_loss(2, alpha=(0.625, 2.5), label_smoothing=0.1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    train_utils.compile_model(model, 1e-3, False, loss)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.loss).__name__ == "CategoricalFocalCrossentropy"
    assert loaded.loss.alpha == [0.625, 2.5] and loaded.loss.label_smoothing == 0.1
