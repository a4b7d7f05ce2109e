"""The classifier: a keras.applications backbone and a small head.

The model takes raw uint8 0-255 images; the normalization the backbone
expects is the first layer, so nothing has to be repeated at inference and
the saved model is all a user needs besides the class names.
"""

import os

from config import DEFAULTS, UserError

# Per backbone: the keras.applications constructor name, how to map 0-255
# pixels to the range its weights expect (scale, offset), and its last
# convolutional layer (for Grad-CAM).
BACKBONES = {
    "mobilenet_v2": {
        "constructor": "MobileNetV2",
        "rescale": (1.0 / 127.5, -1.0),
        "last_conv_layer": "out_relu",
        "weights_file": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
    },
}

BACKBONE_LAYER_NAME = "backbone"

# The BatchNormalization momentum keras.applications' MobileNetV2 uses
# (0.999) makes the moving averages used at
# inference lag far behind the batch statistics for the few hundred steps a
# small dataset gives: a network trained from scratch then scores at chance
# in evaluation while training accuracy looks fine. 0.9 catches up in tens
# of steps.
SCRATCH_BATCHNORM_MOMENTUM = 0.9


def keras_cache_hint(backbone, alpha, image_size):
    """Where Keras looks for cached ImageNet weights, for error messages."""
    cache = os.path.join(os.path.expanduser("~"), ".keras", "models")
    size = image_size if image_size in (96, 128, 160, 192, 224) else 224
    name = BACKBONES[backbone]["weights_file"].format(alpha=float(alpha), size=size)
    return os.path.join(cache, name)


def build_backbone(backbone, image_size, alpha, weights):
    """The feature extractor without its top, weights loaded.

    `weights` is "imagenet", "none" or a file path. Raises UserError when
    the weights cannot be loaded: never falls back to random weights.
    """
    import keras

    constructor = getattr(keras.applications, BACKBONES[backbone]["constructor"])
    source = None if weights == "none" else weights
    try:
        model = constructor(
            input_shape=(image_size, image_size, 3),
            alpha=alpha,
            include_top=False,
            weights=source,
            name=BACKBONE_LAYER_NAME,
        )
    except Exception as error:  # noqa: BLE001 - any failure here is the user's to fix
        if weights == "none":
            raise
        reason = " ".join(str(error).split())[:300]
        raise UserError(
            f"could not load --weights {weights} for {backbone} "
            f"(alpha={alpha}, image_size={image_size}): {reason}. Ways out: "
            "--weights none trains from scratch; --weights PATH loads a local "
            "weights file; or put the ImageNet file where Keras looks for it: "
            f"{keras_cache_hint(backbone, alpha, image_size)}"
        ) from None
    return model


def build_classifier(
    num_classes,
    image_size=DEFAULTS.image_size,
    backbone=DEFAULTS.backbone,
    alpha=DEFAULTS.alpha,
    weights=DEFAULTS.weights,
    dropout=DEFAULTS.dropout,
    batchnorm_momentum=None,
):
    """Builds the uint8-in, softmax-out classifier.

    With pretrained weights the backbone starts frozen and is always called
    in inference mode, so its BatchNorm statistics are never overwritten by
    a small dataset's (even once layers are unfrozen for fine-tuning, as in
    the Keras transfer-learning guide). From scratch (`weights="none"`) the
    whole network trains, with BatchNorm momentum `batchnorm_momentum`
    (default SCRATCH_BATCHNORM_MOMENTUM; None keeps Keras' value only when
    pretrained). The output layer is float32 even under mixed precision.
    Returns the keras.Model.
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

    scale, offset = BACKBONES[backbone]["rescale"]
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(scale, offset=offset, name="normalize")(inputs)
    x = features(x, training=False) if pretrained else features(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, dtype="float32", name=LOGITS_LAYER)(x)
    outputs = temperature_and_softmax(logits)
    return keras.Model(inputs, outputs, name=f"{backbone}_classifier")


# The head ends Dense "logits" -> Rescaling(1/T) "temperature" -> softmax
# "predictions", T = 1 until calibration.with_temperature sets the fitted
# one: built-in layers only, so the .keras file reloads in safe mode and
# exports as it is, and every consumer gets calibrated probabilities.
LOGITS_LAYER = "logits"
TEMPERATURE_LAYER = "temperature"
PREDICTIONS_LAYER = "predictions"


def temperature_and_softmax(logits, temperature=1.0):
    """softmax(logits / temperature) as two float32 layers (even under
    mixed precision); returns the probabilities tensor."""
    import keras

    scaled = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name=TEMPERATURE_LAYER)(logits)
    return keras.layers.Activation("softmax", dtype="float32", name=PREDICTIONS_LAYER)(scaled)


def set_batchnorm_momentum(model, momentum):
    """Sets the moving-average momentum of every BatchNormalization layer."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def backbone_of(model):
    """The backbone sub-model of a classifier built here."""
    return model.get_layer(BACKBONE_LAYER_NAME)


def unfreeze_top_layers(model, num_layers):
    """Makes the backbone's last `num_layers` layers trainable for
    fine-tuning, BatchNormalization layers excepted (they stay frozen, in
    inference mode, so their statistics are kept). Returns how many layers
    became trainable."""
    import keras

    features = backbone_of(model)
    features.trainable = True
    cutoff = max(0, len(features.layers) - num_layers)
    unfrozen = 0
    for position, layer in enumerate(features.layers):
        trainable = position >= cutoff and not isinstance(
            layer, keras.layers.BatchNormalization
        )
        layer.trainable = trainable
        unfrozen += int(trainable and bool(layer.weights))
    return unfrozen
