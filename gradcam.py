"""Where did the model look: Grad-CAM (Selvaraju et al., 2017) heatmaps of
a classifier built by model_builder.py, for the classes given.

A class is a number: for a softmax model one of its classes (usually the
predicted one), for a multi-label (sigmoid) model one of its labels, so a
caller can ask where the model looked for label X whether or not it
answered yes. Either way the score differentiated is that output's logit.

The same function serves predict.py --gradcam 1 and anything else that
shows one (figures.render_gradcam). It differentiates through the Keras
model's layers, so it needs the .keras model, not an export.
"""

import numpy as np

import model_builder


def split_at_backbone(model):
    """(layers before the backbone, the backbone, layers after it) of a
    classifier built by model_builder (a straight chain of layers)."""
    import keras

    backbone = model_builder.backbone_of(model)
    position = model.layers.index(backbone)
    before = [layer for layer in model.layers[:position] if not isinstance(layer, keras.layers.InputLayer)]
    return before, backbone, model.layers[position + 1 :]


def split_at_classifier(after):
    """(layers between the backbone and the classifier, the classifier
    Dense layer) of the layers after the backbone: the classifier is the
    "logits" Dense (models with a temperature), or the last Dense (older
    models, whose Dense has the softmax built in)."""
    import keras

    dense = [position for position, layer in enumerate(after) if isinstance(layer, keras.layers.Dense)]
    named = [position for position, layer in enumerate(after) if layer.name == model_builder.LOGITS_LAYER]
    position = (named or dense)[-1]
    return after[:position], after[position]


def heatmap_step(model, last_conv_layer, compiled=False):
    """Grad-CAM (Selvaraju et al., 2017) of one batch as a function:
    (uint8 images (N, H, W, 3), int32 class ids (N,)) -> float32 heatmaps
    (N, H, W) in [0, 1], tensors in and out.

    The class score is the classifier Dense layer's logit, before the
    temperature and softmax or sigmoid (they saturate near 100% and would
    flatten the gradients; the temperature only scales them); for a
    multi-label model a class id is a label's number; the
    heatmap is the ReLU of the feature maps of the backbone's
    `last_conv_layer` weighted by their mean gradients, scaled to [0, 1]
    per image and resized to the image (bicubic, clipped to [0, 1]); all
    zeros where no feature map pushes towards the class.

    `compiled`: a tf.function for the model's own input size, the same
    numbers about 20x faster once traced (a few seconds, once): for a
    caller that draws many (app.py). Plain eager is quicker for one batch.
    """
    import keras
    import tensorflow as tf

    before, backbone, after = split_at_backbone(model)
    head, classifier = split_at_classifier(after)
    conv_model = keras.Model(
        backbone.inputs, [backbone.get_layer(last_conv_layer).output, backbone.output]
    )

    def step(images, class_ids):
        inputs = images
        for layer in before:
            inputs = layer(inputs)
        with tf.GradientTape() as tape:
            # Watching the backbone's input records every operation after
            # it, frozen layers included, so the intermediate feature maps
            # get gradients.
            tape.watch(inputs)
            features, outputs = conv_model(inputs, training=False)
            for layer in head:
                outputs = layer(outputs, training=False)
            logits = tf.matmul(tf.cast(outputs, tf.float32), classifier.kernel) + classifier.bias
            scores = tf.gather(logits, class_ids, batch_dims=1)
        gradients = tf.cast(tape.gradient(scores, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
        peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        maps = tf.math.divide_no_nan(maps, peak)
        # Bicubic: bilinear leaves a visible cross at each feature-map cell.
        maps = tf.image.resize(maps[..., None], tf.shape(images)[1:3], method="bicubic")[..., 0]
        return tf.clip_by_value(maps, 0.0, 1.0)

    if not compiled:
        return step
    height, width = model.input_shape[1:3]
    signature = [tf.TensorSpec([None, height, width, 3], tf.uint8), tf.TensorSpec([None], tf.int32)]
    return tf.function(step, input_signature=signature)


def gradcam_heatmaps(model, images, class_ids, last_conv_layer, batch_size=16, step=None):
    """Grad-CAM of `class_ids` (one class or label number per image, or
    one number for every image) for uint8 images (N, H, W, 3),
    `batch_size` at a time, by `step` (default: heatmap_step's plain
    function; see there what the heatmaps are). Returns float32 (N, H, W)
    in [0, 1]."""
    import tensorflow as tf

    class_ids = np.broadcast_to(np.asarray(class_ids, dtype=np.int32), (len(images),))
    step = step or heatmap_step(model, last_conv_layer)
    heatmaps = []
    for start in range(0, len(images), batch_size):
        inputs = tf.convert_to_tensor(np.asarray(images[start : start + batch_size], np.uint8))
        targets = tf.constant(np.asarray(class_ids[start : start + batch_size]), tf.int32)
        heatmaps.append(step(inputs, targets).numpy())
    return np.concatenate(heatmaps).astype(np.float32)


def feature_map_size(model, last_conv_layer):
    return tuple(model_builder.backbone_of(model).get_layer(last_conv_layer).output.shape[1:3])
