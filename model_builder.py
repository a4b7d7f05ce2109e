"""The classifier: a keras.applications backbone and a small head.

The model takes raw uint8 0-255 images; the normalization the backbone
expects is inside the model (our `normalize` layer, and for some families
the backbone's own first layers), so nothing has to be repeated at
inference and the saved model is all a user needs besides the class names.
Every family is described in one place, backbones.BACKBONES.
"""

import backbones
import config
import tasks
from errors import UserError

BACKBONE_LAYER_NAME = "backbone"


# keras.applications' BatchNormalization momentum (0.999 in MobileNetV2 and
# V3, 0.99 in most others) makes the moving averages used at inference lag
# far behind the batch statistics for the few hundred steps a small dataset
# gives: a network trained from scratch then scores at chance in evaluation
# while training accuracy looks fine. 0.9 catches up in tens of steps.
SCRATCH_BATCHNORM_MOMENTUM = 0.9

# EfficientNet B0's ImageNet file stores the ImageNet standard deviations
# where its Normalization layer expects variances (tensorflow#49930). Keras
# corrects that with an extra Rescaling layer only when it downloads the
# file itself (weights="imagenet"); see build_backbone for a local file.
EFFICIENTNET_STORED_VARIANCE = backbones.TORCH_STD_RGB


def build_backbone(backbone, image_size, alpha, weights):
    """The feature extractor without its top, weights loaded, named
    BACKBONE_LAYER_NAME.

    `weights` is "imagenet", "none" or a file path. Raises UserError when
    the weights cannot be loaded: never falls back to random weights.
    """
    import keras

    backbones.validate_backbone_options(backbone, image_size, alpha)
    family = backbones.BACKBONES[backbone]
    constructor = getattr(keras.applications, family["constructor"])
    options = dict(family["options"])
    if family["alpha"]:
        options["alpha"] = alpha
    source = None if weights == "none" else weights
    try:
        # Keras' default name matters: EfficientNet(V2) and ConvNeXt derive
        # the ImageNet file name from it, and EfficientNetV2 its
        # preprocessing (B0: ImageNet mean/std; S: x / 128 - 1). Renamed
        # below, once built.
        model = constructor(
            input_shape=(image_size, image_size, 3),
            include_top=False,
            weights=source,
            **options,
        )
    except Exception as error:  # noqa: BLE001 - any failure here is the user's to fix
        if weights == "none":
            raise
        reason = " ".join(str(error).split())[:300]
        alpha_note = f"alpha={alpha}, " if family["alpha"] else ""
        raise UserError(
            f"could not load --weights {weights} for {backbone} "
            f"({alpha_note}image_size={image_size}): {reason}. Ways out: "
            "--weights none trains from scratch; --weights PATH loads a local "
            "weights file; or put the ImageNet file where Keras looks for it: "
            f"{backbones.keras_cache_hint(backbone, alpha, image_size)}"
        ) from None
    if backbone == "efficientnet_b0" and weights not in ("imagenet", "none"):
        fix_efficientnet_stored_variance(model)
    model.name = BACKBONE_LAYER_NAME
    return model


def fix_efficientnet_stored_variance(model):
    """After loading EfficientNet B0's ImageNet file from a path: squares
    the variances it stores as standard deviations, so the network sees
    (x/255 - mean) / std as it does with weights="imagenet". Files that do
    not carry that signature are left alone. Returns whether it changed."""
    import keras
    import numpy as np

    layer = next(l for l in model.layers if isinstance(l, keras.layers.Normalization))
    stored = np.asarray(layer.adapt_variance)
    if not np.allclose(stored, EFFICIENTNET_STORED_VARIANCE, atol=1e-6):
        return False
    layer.adapt_variance.assign(np.square(stored))
    layer.finalize_state()
    return True


def normalize_layer(backbone):
    """The model's first layer: uint8 0-255 pixels to what `backbone`'s
    ImageNet weights expect, as a plain Keras layer (no Lambda, so the
    saved model reloads with safe_mode on)."""
    import keras
    import numpy as np

    mode = backbones.BACKBONES[backbone]["preprocessing"]
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")
    if mode == "torch":
        # (x/255 - mean) / std == x * 1/(255 std) - mean/std, per channel.
        return keras.layers.Rescaling(
            [1.0 / (255.0 * std) for std in backbones.TORCH_STD_RGB],
            offset=[-mean / std for mean, std in zip(backbones.TORCH_MEAN_RGB, backbones.TORCH_STD_RGB)],
            name="normalize",
        )
    if mode == "caffe":
        # A fixed 3x3 matrix on the channel axis swaps R and B (exactly:
        # its entries are 0 and 1) and the bias subtracts the BGR means.
        layer = keras.layers.Dense(3, trainable=False, name="normalize")
        layer.build((None, None, None, 3))
        swap = np.eye(3, dtype=np.float32)[::-1]
        layer.set_weights([swap, -np.asarray(backbones.CAFFE_MEAN_BGR, np.float32)])
        return layer
    # "inside": the cast to float the backbone's own layers need.
    return keras.layers.Rescaling(1.0, name="normalize")


def build_classifier(
    num_classes,
    image_size=config.DEFAULTS.image_size,
    backbone=config.DEFAULTS.backbone,
    alpha=config.DEFAULTS.alpha,
    weights=config.DEFAULTS.weights,
    dropout=config.DEFAULTS.dropout,
    batchnorm_momentum=None,
    task=tasks.SINGLE_LABEL,
):
    """Builds the uint8-in classifier of `task` (tasks.Task: the activation
    of its output, softmax for one class per image).

    With pretrained weights the backbone starts frozen and is always called
    in inference mode, so its BatchNorm statistics are never overwritten by
    a small dataset's (even once layers are unfrozen for fine-tuning, as in
    the Keras transfer-learning guide). From scratch (`weights="none"`) the
    whole network trains, with BatchNorm momentum `batchnorm_momentum`
    (default SCRATCH_BATCHNORM_MOMENTUM; None keeps Keras' value only when
    pretrained). The output layer is float32 even under mixed precision.
    Returns the keras.Model; raises UserError for options the backbone
    does not take (validate_backbone_options) or weights it cannot load.
    """
    import keras

    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2. Received: num_classes={num_classes}")
    pretrained = weights != "none"
    features = build_backbone(backbone, image_size, alpha, weights)
    if pretrained:
        features.trainable = False
    else:
        momentum = SCRATCH_BATCHNORM_MOMENTUM if batchnorm_momentum is None else batchnorm_momentum
        set_batchnorm_momentum(features, momentum)

    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
    x = normalize_layer(backbone)(inputs)
    x = features(x, training=False) if pretrained else features(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)(x)
    outputs = temperature_and_activation(logits, activation=task.activation)
    return keras.Model(inputs, outputs, name=f"{backbone}_classifier")


# The head ends Dense "logits" -> Rescaling(1/T) "temperature" -> the
# task's activation (softmax) "predictions", T = 1 until
# calibration.with_temperature sets the fitted one: built-in layers only,
# so the .keras file reloads in safe mode and exports as it is, and every
# consumer gets calibrated probabilities.
LOGITS_LAYER = "logits"
TEMPERATURE_LAYER = "temperature"
PREDICTIONS_LAYER = "predictions"


def temperature_and_activation(logits, temperature=1.0, activation="softmax"):
    """activation(logits / temperature) as two float32 layers (even under
    mixed precision); returns the probabilities tensor."""
    import keras

    scaled = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name=TEMPERATURE_LAYER)(logits)
    return keras.layers.Activation(activation, dtype="float32", name=PREDICTIONS_LAYER)(scaled)


def output_activation(model):
    """The name of the activation of a model's "predictions" layer."""
    import keras

    return keras.activations.serialize(model.get_layer(PREDICTIONS_LAYER).activation)


def all_layers(model):
    """Every layer of `model`, nested models' layers included (ConvNeXt
    keeps its stem and downsampling blocks in Sequential models)."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(all_layers(layer))
    return layers


def set_batchnorm_momentum(model, momentum):
    """Sets the moving-average momentum of every BatchNormalization layer."""
    import keras

    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def backbone_of(model):
    """The backbone sub-model of a classifier built here."""
    return model.get_layer(BACKBONE_LAYER_NAME)


def gradcam_layer(model, backbone):
    """The name of the backbone layer Grad-CAM reads in a classifier built
    here: backbones.BACKBONES[backbone]["last_conv_layer"], or the backbone's output
    layer where Keras numbers that layer's name."""
    return backbones.BACKBONES[backbone]["last_conv_layer"] or backbone_of(model).layers[-1].name


def unfreeze_top_layers(model, num_layers):
    """Makes the backbone's last `num_layers` layers trainable for
    fine-tuning, BatchNormalization layers excepted: they stay frozen, and
    in inference mode, so their moving statistics are kept. The same rule
    holds for every family. LayerNormalization (ConvNeXt's only
    normalization) has no moving statistics and computes the same in
    training and inference, so it trains with its block like any other
    weights. Returns how many layers became trainable (those with weights
    that train)."""
    import keras

    features = backbone_of(model)
    features.trainable = True
    cutoff = max(0, len(features.layers) - num_layers)
    for position, layer in enumerate(features.layers):
        layer.trainable = position >= cutoff
    for layer in all_layers(features):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return sum(1 for layer in features.layers if layer.trainable and layer.trainable_weights)
