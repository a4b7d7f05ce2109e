"""Calibration: ECE, Brier and NLL against hand-computed values, temperature
scaling (fitted, inside the saved model, argmax untouched), top losses,
the most confused pairs, and test-time augmentation."""

import math

import numpy as np
import pytest

import augment
import calibration
import errors
import gradcam
import inference
from conftest import head_model

# Five two-class predictions, true classes, and what they give by hand:
# top-1 confidences 0.9 (right), 0.75 (wrong), 0.7 (right), 0.72 (wrong),
# 0.55 (right). With 15 bins of width 1/15 they fall in bins 13, 11, 10,
# 10 and 8: bin 10 holds two images, accuracy 0.5, mean confidence 0.71.
PROBABILITIES = np.array([[0.9, 0.1], [0.25, 0.75], [0.3, 0.7], [0.28, 0.72], [0.55, 0.45]])
LABELS = np.array([0, 0, 1, 0, 0])
# ECE = (|1 - .9| + |0 - .75| + 2 * |.5 - .71| + |1 - .55|) / 5
HAND_ECE = (0.1 + 0.75 + 2 * 0.21 + 0.45) / 5
# Brier: sum over both classes of (p - onehot)^2, averaged over images.
HAND_BRIER = (0.02 + 1.125 + 0.18 + 1.0368 + 0.405) / 5
HAND_NLL = -(math.log(0.9) + math.log(0.25) + math.log(0.7) + math.log(0.28) + math.log(0.55)) / 5


def test_ece_brier_and_nll_match_hand_computed_values():
    assert calibration.expected_calibration_error(LABELS, PROBABILITIES) == pytest.approx(HAND_ECE)
    assert calibration.brier_score(LABELS, PROBABILITIES) == pytest.approx(HAND_BRIER)
    assert calibration.negative_log_likelihood(LABELS, PROBABILITIES) == pytest.approx(HAND_NLL)


def test_brier_sums_over_every_class_not_only_the_top_one():
    # (0.5 - 0)^2 + (0.3 - 0)^2 + (0.2 - 1)^2 = 0.98
    assert calibration.brier_score([2], [[0.5, 0.3, 0.2]]) == pytest.approx(0.98)
    assert calibration.brier_score([0], [[1.0, 0.0, 0.0]]) == 0.0
    assert calibration.brier_score([0], [[0.0, 1.0, 0.0]]) == pytest.approx(2.0)


def test_reliability_bins_hold_count_accuracy_and_mean_confidence_per_bin():
    bins = calibration.reliability_bins(LABELS, PROBABILITIES)

    assert len(bins["count"]) == calibration.NUM_BINS == 15
    np.testing.assert_allclose(bins["lower"][[8, 10, 11, 13]], np.array([8, 10, 11, 13]) / 15)
    assert {int(b): int(n) for b, n in enumerate(bins["count"]) if n} == {8: 1, 10: 2, 11: 1, 13: 1}
    assert bins["accuracy"][10] == 0.5 and bins["confidence"][10] == pytest.approx(0.71)
    assert bins["accuracy"][11] == 0.0 and bins["accuracy"][13] == 1.0
    assert np.isnan(bins["accuracy"][0])  # empty bins have no accuracy
    # A confidence of exactly 1 belongs to the last bin, not past it.
    assert calibration.reliability_bins([0], [[1.0, 0.0]])["count"][-1] == 1


def test_saved_bins_are_json_and_a_confidence_finds_the_bin_it_was_counted_in():
    import json

    rows = json.loads(json.dumps(calibration.saved_bins(calibration.reliability_bins(LABELS, PROBABILITIES))))
    assert [row["count"] for row in rows] == [0] * 8 + [1, 0, 2, 1, 0, 1, 0]
    assert rows[10]["accuracy"] == 0.5 and rows[0]["accuracy"] is None and rows[0]["confidence"] is None
    # Each image's own confidence looks up the bin reliability_bins put it in,
    # edges included (8/15 is the top of bin 7, not the bottom of bin 8).
    for confidence in [*PROBABILITIES.max(axis=1), 8 / 15, 0.5, 1.0]:
        counted = calibration.reliability_bins([0], [[confidence, 1 - confidence]])["count"]
        trust = calibration.trust_at(rows, confidence, needed=1)
        assert (trust.lower, trust.upper) == (rows[int(np.argmax(counted))]["lower"], rows[int(np.argmax(counted))]["upper"])


def test_the_trust_sentence_gives_the_bins_numbers_or_says_there_are_too_few():
    # 12 images at 0.9 confidence, 9 right; 3 at 0.65, all right.
    probabilities = np.array([[0.9, 0.1]] * 12 + [[0.65, 0.35]] * 3)
    labels = np.array([0] * 9 + [1] * 3 + [0] * 3)
    rows = calibration.saved_bins(calibration.reliability_bins(labels, probabilities))

    many = calibration.trust_at(rows, 0.91)
    assert (many.images, many.accuracy) == (12, 0.75)
    assert many.sentence() == (
        "On the test split, predictions at this confidence (87\u201393%) were right 75% of the time (12 images)."
    )
    few = calibration.trust_at(rows, 0.62)
    assert (few.images, few.accuracy) == (3, None)
    assert few.sentence().startswith("Only 3 test images had a confidence of 60\u201367%: too few")
    assert "at least 10 needed" in few.sentence()
    assert calibration.trust_at(rows, 0.62, needed=3).accuracy == 1.0
    assert calibration.trust_at(rows, 0.3).sentence().startswith("No test image had a confidence of 27\u201333%")
    with pytest.raises(ValueError, match="equal-width bins"):
        calibration.trust_at(rows[:-1], 0.5)


def test_a_perfectly_calibrated_model_has_zero_ece():
    # Every image at 75% confidence, 3 of 4 right.
    probabilities = np.tile([0.75, 0.25], (4, 1))
    assert calibration.expected_calibration_error([0, 0, 0, 1], probabilities) == pytest.approx(0.0)


def over_confident(scale, size=3000, classes=4, seed=0):
    """Logits of a calibrated model (labels drawn from its own softmax) and
    the same logits multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (size, classes))
    probabilities = calibration.softmax(logits)
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return logits * scale, labels


def test_temperature_scaling_undoes_over_confidence_and_never_changes_argmax():
    logits, labels = over_confident(scale=4.0)

    temperature = calibration.fit_temperature(logits, labels)

    assert temperature == pytest.approx(4.0, rel=0.1)
    before, after = calibration.softmax(logits), calibration.softmax(logits, temperature)
    assert calibration.temperature_nll(logits, labels, temperature) < calibration.temperature_nll(logits, labels, 1.0) - 0.1
    assert calibration.expected_calibration_error(labels, after) < 0.3 * calibration.expected_calibration_error(labels, before)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    # The search found the minimum: nearby temperatures are worse.
    for nearby in (temperature * 0.9, temperature * 1.1):
        assert calibration.temperature_nll(logits, labels, nearby) > calibration.temperature_nll(logits, labels, temperature)


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = over_confident(scale=1 / 3)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(1 / 3, rel=0.1)


def test_a_split_the_model_gets_all_right_stops_at_the_lower_bound():
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [4.0, 1.0]])
    temperature = calibration.fit_temperature(logits, [0, 1, 0])
    assert temperature == pytest.approx(calibration.MIN_TEMPERATURE, rel=1e-3)


def test_a_validation_split_all_right_keeps_the_raw_softmax_and_says_why():
    """fit_temperature alone would sharpen to its bound (above); the run
    keeps T = 1 instead, since such a split gives no evidence for any T."""
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [4.0, 1.0]])

    fitted = calibration.fit_on(logits, [0, 1, 0])

    assert fitted["temperature"] == 1.0 and fitted["every_image_right"] is True
    assert fitted["val_nll_after"] == fitted["val_nll_before"]
    assert any("every validation image right" in line and "T kept at 1" in line
               for line in calibration.fitted_lines(fitted))
    # One wrong image is evidence: T is fitted as before.
    fitted = calibration.fit_on(logits, [0, 1, 1])
    assert fitted["every_image_right"] is False
    assert fitted["temperature"] == calibration.fit_temperature(logits, [0, 1, 1]) != 1.0


def test_rescaled_probabilities_are_those_of_the_logits_at_temperature_one():
    logits, _ = over_confident(scale=1.0, size=20)
    calibrated = calibration.softmax(logits, 2.5)
    np.testing.assert_allclose(calibration.rescale_probabilities(calibrated, 2.5), calibration.softmax(logits), atol=1e-12)


def test_calibration_summary_reports_ece_before_temperature_scaling():
    logits, labels = over_confident(scale=3.0, size=500)
    temperature = calibration.fit_temperature(logits, labels)

    summary = calibration.calibration_summary(labels, calibration.softmax(logits, temperature), temperature)

    assert summary["temperature"] == temperature
    assert summary["ece_uncalibrated"] == pytest.approx(
        calibration.expected_calibration_error(labels, calibration.softmax(logits))
    )
    assert summary["ece"] < summary["ece_uncalibrated"]
    legacy = calibration.calibration_summary(LABELS, PROBABILITIES, None)
    assert legacy["temperature"] is None and legacy["ece"] == legacy["ece_uncalibrated"]


def test_the_calibration_line_says_when_the_temperature_made_the_test_split_worse():
    import metrics

    summary = {"temperature": 0.701, "ece": 0.075, "ece_uncalibrated": 0.039, "brier": 0.2, "nll": 0.4}
    worse = metrics.calibration_line(summary)
    better = metrics.calibration_line({**summary, "ece": 0.02})

    assert worse.startswith("calibration error (ECE) 7.5%: its confidence is 7.5 points off its accuracy on average "
                            "(3.9% before temperature scaling, T = 0.701) · Brier 0.200 · NLL 0.400")
    assert "made the confidences on these images worse" in worse and "--calibrate 0" in worse
    assert "worse" not in better


def test_calibration_at_chance_is_said_to_mean_nothing_in_the_terminal_and_the_report():
    import metrics
    import report

    summary = {"temperature": 20.0, "ece": 0.003, "ece_uncalibrated": 0.02, "brier": 0.75, "nll": 1.386}
    assert "meaningless here" in metrics.calibration_line(summary, at_chance=True)
    assert "meaningless" not in metrics.calibration_line(summary)
    scores = {"accuracy": 0.25, "baselines": {"majority_accuracy": 0.25, "majority_class": "a", "chance": 0.25}}
    assert metrics.at_chance(scores) and not metrics.at_chance({**scores, "accuracy": 0.26})
    assert report.confidences(None, scores).startswith("they mean nothing yet")


def test_top_losses_are_the_mistakes_most_confident_first():
    probabilities = np.array([
        [0.6, 0.3, 0.1],   # 0: right
        [0.2, 0.7, 0.1],   # 1: wrong at 0.7
        [0.1, 0.1, 0.8],   # 2: wrong at 0.8, p(true) 0.1
        [0.05, 0.15, 0.8], # 3: wrong at 0.8, p(true) 0.05: the worst
        [0.4, 0.35, 0.25], # 4: wrong at 0.4
        [0.1, 0.9, 0.0],   # 5: right
    ])
    labels = np.array([0, 0, 0, 0, 1, 1])

    assert calibration.top_losses(labels, probabilities) == [3, 2, 1, 4]
    assert calibration.top_losses(labels, probabilities, count=2) == [3, 2]
    assert calibration.top_losses([0, 1], [[0.9, 0.1], [0.2, 0.8]]) == []


def test_most_confused_pairs_come_largest_first_without_the_diagonal():
    matrix = np.array([[5, 2, 0], [7, 9, 1], [2, 0, 4]])

    pairs = calibration.most_confused(matrix, ("brick", "grass", "moon"))

    assert pairs == [
        {"true": "grass", "predicted": "brick", "count": 7},
        {"true": "brick", "predicted": "grass", "count": 2},
        {"true": "moon", "predicted": "brick", "count": 2},
        {"true": "grass", "predicted": "moon", "count": 1},
    ]
    assert calibration.most_confused(matrix, ("brick", "grass", "moon"), limit=1) == pairs[:1]
    assert calibration.confused_lines(pairs[:2]) == ["grass -> brick  7", "brick -> grass  2"]
    assert calibration.confused_lines([]) == ["no misclassified images"]


def test_grad_cam_finds_the_logits_layer_in_new_and_old_heads():
    import keras


    pool, dropout = keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2)
    logits = keras.layers.Dense(3, name="logits")
    new_head = [pool, dropout, logits, keras.layers.Rescaling(0.5, name="temperature"),
                keras.layers.Activation("softmax", name="predictions")]
    old_dense = keras.layers.Dense(3, activation="softmax", name="predictions")

    assert gradcam.split_at_classifier(new_head) == ([pool, dropout], logits)
    assert gradcam.split_at_classifier([pool, dropout, old_dense]) == ([pool, dropout], old_dense)


# ---------------------------------------------------------------- the model


def old_head_model(num_classes=3, image_size=32):
    """A classifier as model_builder built them before temperature scaling:
    the softmax inside the last Dense."""
    import keras

    import model_builder

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="normalize")(inputs)
    x = model_builder.build_backbone("mobilenet_v2", image_size, 0.35, "none")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.slow
def test_the_saved_model_outputs_calibrated_probabilities_after_reload(tmp_path):
    import keras

    import artifacts
    import model_builder

    model = model_builder.build_classifier(3, image_size=32, alpha=0.35, weights="none")
    rng = np.random.default_rng(1)
    # Untrained from scratch, the features (and so the logits) are ~1e-11:
    # a bias makes the classes distinct, so the probabilities mean something.
    calibration.logits_layer(model).bias.assign(np.array([1.5, -0.5, 0.3], np.float32))
    images = rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    logits = np.asarray(calibration.logits_model(model).predict(images, verbose=0), np.float64)
    assert calibration.model_temperature(model) == 1.0

    path = artifacts.save_model(calibration.with_temperature(model, 2.5), str(tmp_path / "calibrated.keras"))
    reloaded = keras.models.load_model(path)  # safe mode: built-in layers only

    probabilities = reloaded.predict(images, verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, calibration.softmax(logits, 2.5), atol=1e-6)
    assert not np.allclose(probabilities, calibration.softmax(logits), atol=0.05)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), logits.argmax(axis=1))
    assert calibration.model_temperature(reloaded) == pytest.approx(2.5)
    assert [layer.name for layer in reloaded.layers][-3:] == ["logits", "temperature", "predictions"]
    # Calibrating again starts from the same logits, not from the old T.
    again = calibration.with_temperature(reloaded, 0.5)
    np.testing.assert_allclose(again.predict(images, verbose=0), calibration.softmax(logits, 0.5), atol=1e-6)

    old = old_head_model()
    assert calibration.model_temperature(old) is None and calibration.logits_layer(old) is None
    with pytest.raises(ValueError, match="no 'logits' layer"):
        calibration.with_temperature(old, 2.0)


# ---------------------------------------------------------------- test-time augmentation


def tiny_model(num_classes=3, image_size=32):
    """A small uint8-in softmax-out model: enough to check averaging."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def fake_trained(run_options, model=None, path="model.keras"):
    return inference.TrainedModel(model, path, ("a", "b", "c"), 32, {"options": run_options}, ".")


@pytest.mark.slow
def test_tta_averages_the_image_and_its_training_augmented_versions(tmp_path):
    import keras
    import tensorflow as tf

    from conftest import write_class_folder

    keras.utils.set_random_seed(0)
    model = tiny_model()
    paths = write_class_folder(str(tmp_path / "images"), 0, 5) + write_class_folder(str(tmp_path / "more"), 1, 2)
    trained = fake_trained({"augment": 1, "flip": "horizontal", "translation": 0.2}, model)

    positions, plain, _ = inference.predict_files(model, paths, 32, batch_size=4)
    one = inference.test_time_augmentation(trained, 1, seed=7)
    _, with_one, _ = inference.predict_files(model, paths, 32, batch_size=4, tta=one)
    tta = inference.test_time_augmentation(trained, 3, seed=7)
    _, averaged, _ = inference.predict_files(model, paths, 32, batch_size=4, tta=tta)
    _, averaged_again, _ = inference.predict_files(model, paths, 32, batch_size=1, tta=tta)

    assert one is None
    np.testing.assert_array_equal(with_one, plain)  # N = 1 is exactly no TTA
    assert tta.augment == augment.AugmentConfig(flip="horizontal", rotation=0.0, zoom=0.0, translation=0.2, contrast=0.0)
    # By hand: the image and two versions from the training augmentation,
    # seeded by (seed, position).
    import image_io

    expected = []
    for position, path in zip(positions, paths):
        image = image_io.load_image(path, 32)
        copies = tf.repeat(image[None], 2, axis=0)
        versions = augment.augment_batch(copies, tf.constant([7, position], tf.int64), tta.augment)
        stack = np.concatenate([image.numpy()[None], versions.numpy()])
        assert not np.array_equal(stack[1], stack[0])  # really another version
        expected.append(model.predict(stack, verbose=0).astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(averaged, np.array(expected), atol=1e-6)
    np.testing.assert_allclose(averaged_again, averaged, atol=1e-6)  # any batch size, same versions
    assert not np.allclose(averaged, plain)


def test_tta_refuses_a_model_trained_without_augmentation():
    with pytest.raises(errors.UserError, match="--tta needs a model trained with flips or shifts"):
        inference.test_time_augmentation(fake_trained({"augment": 0}), 4, seed=1)
    with pytest.raises(errors.UserError, match="Received: tta=2"):
        inference.test_time_augmentation(fake_trained({"augment": 1, "flip": "none", "translation": 0}), 2, seed=1)


@pytest.mark.parametrize("script", ["evaluate", "predict"])
@pytest.mark.parametrize("value", ["0", "33"])
def test_tta_out_of_range_is_one_line_and_exit_2(script, value, tmp_path, capsys):
    import importlib

    module = importlib.import_module(script)
    extra = ["--image_dir", str(tmp_path)] if script == "evaluate" else ["--images", str(tmp_path)]

    code = module.main([*extra, "--tta", value, "--results_dir", str(tmp_path / "results")])

    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"Received: tta={value}" in error


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_the_head_turns_predicted_logits_into_the_models_own_probabilities_to_the_bit(activation):
    images = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
    model = calibration.with_temperature(head_model(activation), 0.4)
    logits = calibration.logits_model(model).predict_on_batch(images)

    probabilities = calibration.head_output(model, logits)

    assert probabilities.dtype == np.float64 and probabilities.shape == (5, 3)
    np.testing.assert_array_equal(probabilities, np.asarray(model.predict_on_batch(images), np.float64))
    assert not np.allclose(probabilities, calibration.head_output(head_model(activation), logits))
    with pytest.raises(ValueError, match="no 'temperature' and 'predictions' layers"):
        calibration.head_output(tiny_model(), logits)
