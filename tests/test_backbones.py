"""Every backbone of backbones.BACKBONES: preprocessing against Keras'
own, smallest sizes, --alpha, one training step, reloading, Grad-CAM,
fine-tuning and BatchNorm from scratch."""

import os

import numpy as np
import pytest

import config
import data_loader
import main as main_script
import model_builder
import train_utils
import backbones
import gradcam
import splits
from errors import UserError
from conftest import make_digit_folder, make_flat_dataset

BACKBONES = list(backbones.BACKBONES)


def random_pixels(size, count=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.uint8)


def keras_preprocess(backbone, pixels):
    """keras.applications.<family>.preprocess_input on the same pixels."""
    import keras

    module = getattr(keras.applications, backbones.BACKBONES[backbone]["module"])
    return np.asarray(module.preprocess_input(pixels.astype(np.float32)))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_normalize_layer_matches_keras_preprocess_input(backbone):
    """Our first layer does what the family's preprocess_input does (for
    the "inside" families both leave 0-255 pixels as they are)."""
    pixels = random_pixels(8)
    ours = np.asarray(model_builder.normalize_layer(backbone)(pixels))
    expected = keras_preprocess(backbone, pixels)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_the_three_modes_map_pixels_as_documented():
    """Independent of Keras: the formulas the README gives."""
    pixel = np.array([[[[0, 128, 255]]]], np.uint8)
    tf_mode = np.asarray(model_builder.normalize_layer("xception")(pixel))[0, 0, 0]
    caffe = np.asarray(model_builder.normalize_layer("vgg19")(pixel))[0, 0, 0]
    torch = np.asarray(model_builder.normalize_layer("densenet121")(pixel))[0, 0, 0]
    np.testing.assert_allclose(tf_mode, [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)
    np.testing.assert_allclose(caffe, [255 - 103.939, 128 - 116.779, 0 - 123.68], atol=1e-4)
    np.testing.assert_allclose(torch, [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225], atol=1e-5)


def leading_preprocessing(features):
    """A model of the backbone's own first Rescaling/Normalization layers."""
    import keras

    layers = []
    for layer in features.layers[1:]:
        if not isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            break
        layers.append(layer)
    assert layers, f"{features.name} has no preprocessing layers of its own"
    return keras.Model(features.inputs, layers[-1].output)


def torch_mode(pixels):
    from keras.applications import imagenet_utils

    return imagenet_utils.preprocess_input(pixels.astype(np.float32), mode="torch")


# What the "inside" families do with 0-255 pixels, per Keras' source.
INSIDE = {
    "mobilenet_v3_small": lambda x: x / 127.5 - 1,
    "mobilenet_v3_large": lambda x: x / 127.5 - 1,
    "efficientnetv2_b0": torch_mode,
    "efficientnetv2_s": lambda x: x / 128.0 - 1,
    "convnext_tiny": torch_mode,
    # From scratch its Normalization is not adapted: only x / 255, as in
    # Keras; with ImageNet weights, torch mode (next test).
    "efficientnet_b0": lambda x: x / 255.0,
}


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(INSIDE))
def test_inside_families_normalize_raw_pixels_themselves(backbone):
    assert backbones.BACKBONES[backbone]["preprocessing"] == "inside"
    features = model_builder.build_backbone(backbone, 32, 1.0, "none")
    pixels = random_pixels(32, count=2)

    got = np.asarray(leading_preprocessing(features)(pixels.astype(np.float32)))

    np.testing.assert_allclose(got, INSIDE[backbone](pixels.astype(np.float32)), atol=1e-4)


@pytest.mark.slow
def test_efficientnet_b0_from_a_local_imagenet_file_normalizes_like_keras(tmp_path):
    """Its ImageNet file stores standard deviations as variances; loaded
    from a path (no extra Rescaling from Keras) we square them, so the
    network sees torch-mode pixels as with weights="imagenet"."""
    import keras

    reference = keras.applications.EfficientNetB0(input_shape=(32, 32, 3), include_top=False, weights=None)
    norm = next(l for l in reference.layers if isinstance(l, keras.layers.Normalization))
    norm.adapt_mean.assign(np.array([0.485, 0.456, 0.406], np.float32))
    norm.adapt_variance.assign(np.array([0.229, 0.224, 0.225], np.float32))
    path = str(tmp_path / "efficientnetb0_notop.weights.h5")
    reference.save_weights(path)
    pixels = random_pixels(32, count=2)

    features = model_builder.build_backbone("efficientnet_b0", 32, 1.0, path)
    got = np.asarray(leading_preprocessing(features)(pixels.astype(np.float32)))

    np.testing.assert_allclose(got, torch_mode(pixels), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_reloads_trains_a_step_and_explains(backbone, tmp_path):
    """At its smallest size, from scratch: uint8 in, the input path equals
    Keras' preprocessing, BatchNorm gets the fast momentum, the .keras file
    reloads (safe mode) with identical outputs, one optimizer step of the
    reloaded model changes every trainable weight, and Grad-CAM runs on
    its layer."""
    import keras

    size = backbones.BACKBONES[backbone]["min_size"]
    model = model_builder.build_classifier(3, image_size=size, backbone=backbone, weights="none")
    pixels = random_pixels(size)

    assert model.input.dtype == "uint8"
    input_path = keras.Model(model.input, model.get_layer("normalize").output)
    np.testing.assert_allclose(np.asarray(input_path(pixels)), keras_preprocess(backbone, pixels), atol=1e-5)
    norms = [l for l in model_builder.all_layers(model_builder.backbone_of(model)) if isinstance(l, keras.layers.BatchNormalization)]
    assert bool(norms) == (backbone not in ("convnext_tiny", "vgg19"))
    assert {layer.momentum for layer in norms} <= {model_builder.SCRATCH_BATCHNORM_MOMENTUM}

    # Saved before compiling: the file holds no optimizer state, a third
    # of the bytes to write and read for the big ones.
    path = str(tmp_path / f"{backbone}.keras")
    model.save(path)
    reloaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        np.asarray(reloaded(pixels, training=False)), np.asarray(model(pixels, training=False))
    )

    # Eager: tracing a training step costs 5-80 s per backbone here;
    # main.py's compiled path is exercised by the end-to-end tests.
    train_utils.compile_model(reloaded, 1e-3, jit_compile=False)
    reloaded.run_eagerly = True
    before = [np.array(weight.numpy()) for weight in reloaded.trainable_weights]
    reloaded.train_on_batch(pixels, np.array([0, 1, 2, 0]))
    changed = [not np.array_equal(old, weight.numpy()) for old, weight in zip(before, reloaded.trainable_weights)]
    assert before and all(changed), f"{changed.count(False)} of {len(changed)} weights did not train"

    layer = model_builder.gradcam_layer(reloaded, backbone)
    heatmaps = gradcam.gradcam_heatmaps(reloaded, pixels, [0, 1, 2, 0], layer)
    assert heatmaps.shape == (4, size, size) and np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert len(gradcam.feature_map_size(reloaded, layer)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_offline_message_names_the_file_keras_asks_for(backbone, monkeypatch):
    """keras_cache_hint must name the very file keras.applications
    requests, for each family (checked by intercepting the download)."""
    from keras.src.utils import file_utils

    requested = []

    def offline(fname, *args, **kwargs):
        requested.append(fname)
        raise OSError("no internet")

    monkeypatch.setattr(file_utils, "get_file", offline)
    size = max(backbones.BACKBONES[backbone]["min_size"], 96 if backbone == "mobilenet_v2" else 0)
    alpha = {"mobilenet_v2": 0.35, "mobilenet_v3_small": 0.75}.get(backbone, 1.0)

    with pytest.raises(UserError) as error:
        model_builder.build_backbone(backbone, size, alpha, "imagenet")

    hint = backbones.keras_cache_hint(backbone, alpha, size)
    assert requested and os.path.basename(hint) == requested[0]
    assert hint in str(error.value) and "--weights none" in str(error.value)


def test_smallest_sizes_and_alpha_are_checked():
    check = backbones.validate_backbone_options
    check("inception_v3", 75, 1.0)
    check("xception", 71, 1.0)
    check("convnext_tiny", 32, 1.0)
    check("mobilenet_v3_small", 32, 0.75)
    with pytest.raises(UserError, match="at least 75 for inception_v3.*Received: image_size=74"):
        check("inception_v3", 74, 1.0)
    with pytest.raises(UserError, match="at least 71 for xception.*Received: image_size=70"):
        check("xception", 70, 1.0)
    with pytest.raises(UserError, match="leave it at 1.0 for resnet50. Received: alpha=0.5"):
        check("resnet50", 224, 0.5)
    with pytest.raises(UserError, match="backbone must be one of"):
        check("resnet18", 224, 1.0)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--backbone", "inception_v3", "--image_size", "64"], "image_size must be at least 75 for inception_v3"),
        (["--backbone", "xception", "--image_size", "70"], "image_size must be at least 71 for xception"),
        (["--backbone", "densenet121", "--image_size", "32", "--alpha", "0.5"], "alpha (a width multiplier) exists only for"),
    ],
)
def test_main_refuses_with_one_line_and_exit_2(options, message, tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data")
    code = main_script.main([
        "--image_dir", data, "--artifacts_dir", str(tmp_path / "a"), "--results_dir", str(tmp_path / "r"),
        "--weights", "none", "--show", "0", *options,
    ])
    error = capsys.readouterr().err
    assert code == 2
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "a").exists() and not (tmp_path / "r").exists()


def test_help_lists_every_backbone():
    parser = main_script.build_parser()
    action = next(action for action in parser._actions if action.dest == "backbone")
    # Not argparse choices: --backbone also takes several names, A,B,C.
    assert action.help.count(", ") >= len(BACKBONES) - 1
    assert all(name in " ".join(action.help.split()) for name in BACKBONES)
    assert action.default == config.DEFAULTS.backbone in BACKBONES


def test_unknown_backbone_is_one_line_and_exit_2(capsys):
    assert main_script.main(["--backbone", "resnet18"]) == 2
    error = capsys.readouterr().err
    assert "Received: backbone=resnet18" in error and error.count("\n") == 1
    assert all(name in error for name in BACKBONES)


@pytest.mark.slow
def test_fine_tuning_freezes_batchnorm_but_trains_layernorm():
    """ConvNeXt's LayerNorm has no moving statistics, so it trains with its
    block; BatchNorm (here EfficientNet's) stays frozen even when every
    layer is unfrozen; the count is of layers whose weights now train."""
    import keras

    convnext = model_builder.build_classifier(2, image_size=32, backbone="convnext_tiny", weights="none")
    features = model_builder.backbone_of(convnext)
    features.trainable = False
    unfrozen = model_builder.unfreeze_top_layers(convnext, 40)
    top = features.layers[-40:]
    assert all(layer.trainable for layer in top)
    assert any(isinstance(layer, keras.layers.LayerNormalization) for layer in top)
    assert not any(layer.trainable for layer in features.layers[:-40])
    assert unfrozen == sum(1 for layer in top if layer.trainable_weights)

    efficientnet = model_builder.build_classifier(2, image_size=32, backbone="efficientnet_b0", weights="none")
    unfrozen = model_builder.unfreeze_top_layers(efficientnet, 10_000)
    layers = model_builder.backbone_of(efficientnet).layers
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    # The Normalization layer has weights, but none that train.
    assert unfrozen == sum(1 for layer in layers if layer.trainable and layer.trainable_weights)
    assert unfrozen == sum(1 for layer in layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)))


def accuracy_from_scratch(index, backbone, epochs):
    """Trains `backbone` from scratch on the digit scans (model.fit: no
    checkpoint files to write) and returns the validation accuracy, in
    inference mode, of the epoch with the lowest validation loss (the one
    main.py's checkpoint keeps)."""
    import keras
    import tensorflow as tf

    # As main.py trains by default (--deterministic 1). The setting lasts
    # for the process: without it here, the numbers would depend on whether
    # a test before this one in the same pytest process ran main.py
    # (efficientnet_b0, 6 epochs: 0.87 without, 0.57 with).
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    model = model_builder.build_classifier(5, image_size=32, backbone=backbone, weights="none")
    train = data_loader.make_dataset(*index.split("train"), 32, 16, training=True, seed=0)
    val = data_loader.make_dataset(*index.split("val"), 32, 16)
    train_utils.compile_model(model, 2e-3, jit_compile=False)
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=0).history
    best = int(np.argmin(history["val_loss"]))
    return history["val_accuracy"][best]


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("backbone, epochs", [("mobilenet_v3_small", 8)])
def test_from_scratch_learns_with_other_families(backbone, epochs, tmp_path):
    """One more BatchNorm family (test_model.py has MobileNetV2), 300 real
    digit scans, 5 classes (chance 0.2): with the fast BatchNorm momentum
    it must learn within a few epochs. (EfficientNet-B0 learned here too,
    at 2.5x the time; that every backbone's BatchNorm gets the fast
    momentum is checked for all of them above, without training.)"""
    index = splits.index_dataset(make_digit_folder(str(tmp_path / "digits")), 0.2, 0.2, seed=0)

    accuracy = accuracy_from_scratch(index, backbone, epochs)

    assert accuracy >= 0.75, accuracy
