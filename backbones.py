"""Which backbones exist and what each expects: the one table of the
keras.applications families (`BACKBONES`: constructor, preprocessing,
smallest input, width multiplier, Grad-CAM layer, ImageNet file name, the
activations its layers hold), the checks of --backbone, --image_size and
--alpha against it, and the least memory a training batch takes.

Imports only errors.py and memory.py and no TensorFlow, so config.py can
check options with it before anything heavy starts (also whether a
training batch fits in memory); model_builder.py builds from it.
"""

import os

import memory
from errors import UserError

# How each family wants its 0-255 RGB pixels (keras.applications'
# preprocess_input modes, read in Keras' source):
#   "tf":     x / 127.5 - 1, in [-1, 1]
#   "caffe":  RGB -> BGR, minus the ImageNet channel means, no scaling
#   "torch":  x / 255, minus the ImageNet mean, divided by the ImageNet std
#   "inside": the backbone's own first layers normalize 0-255 pixels
#             (include_preprocessing, or always for EfficientNet B0); our
#             layer only casts uint8 to float.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

# Per backbone:
#   constructor      keras.applications function
#   module           keras.applications.<module> (its preprocess_input)
#   preprocessing    one of the modes above
#   options          extra constructor arguments
#   min_size         smallest image_size its constructor accepts
#   native_size      the image size its ImageNet weights were trained at
#                    (keras.applications' default input): --image_size auto
#                    with pretrained weights
#   activations      floats every layer's outputs hold per input pixel of one
#                    image, at alpha 1.0 (the sum over its layers of
#                    output size / 224^2, counted on the model built at 224 px):
#                    what training every layer keeps for the backward pass
#   largest_activation  the largest single layer output per input pixel: what
#                    a forward pass through the frozen backbone holds at once
#   alpha            whether --alpha (width multiplier) exists for it
#   last_conv_layer  Grad-CAM's layer; None: the backbone's output layer,
#                    whose name Keras numbers per process ("activation_17")
#   weights_file     the ImageNet file Keras downloads (include_top=False),
#                    with {alpha} and {size} filled in by keras_cache_hint
BACKBONES = {
    "mobilenet_v2": {
        "constructor": "MobileNetV2",
        "module": "mobilenet_v2",
        "preprocessing": "tf",
        "options": {},
        "min_size": 32,
        "native_size": 224,
        "activations": 435,
        "largest_activation": 24.4,
        "alpha": True,
        "last_conv_layer": "out_relu",
        "weights_file": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5",
    },
    "mobilenet_v3_small": {
        "constructor": "MobileNetV3Small",
        "module": "mobilenet_v3",
        "preprocessing": "inside",
        "options": {"include_preprocessing": True},
        "min_size": 32,
        "native_size": 224,
        "activations": 107,
        "largest_activation": 4.7,
        "alpha": True,
        "last_conv_layer": None,
        "weights_file": "weights_mobilenet_v3_small_224_{alpha}_float_no_top_v2.h5",
    },
    "mobilenet_v3_large": {
        "constructor": "MobileNetV3Large",
        "module": "mobilenet_v3",
        "preprocessing": "inside",
        "options": {"include_preprocessing": True},
        "min_size": 32,
        "native_size": 224,
        "activations": 307,
        "largest_activation": 16.3,
        "alpha": True,
        "last_conv_layer": None,
        "weights_file": "weights_mobilenet_v3_large_224_{alpha}_float_no_top_v2.h5",
    },
    "efficientnet_b0": {
        "constructor": "EfficientNetB0",
        "module": "efficientnet",
        "preprocessing": "inside",
        "options": {},
        "min_size": 32,
        "native_size": 224,
        "activations": 501,
        "largest_activation": 24.4,
        "alpha": False,
        "last_conv_layer": "top_activation",
        "weights_file": "efficientnetb0_notop.h5",
    },
    "efficientnetv2_b0": {
        "constructor": "EfficientNetV2B0",
        "module": "efficientnet_v2",
        "preprocessing": "inside",
        "options": {"include_preprocessing": True},
        "min_size": 32,
        "native_size": 224,
        "activations": 322,
        "largest_activation": 8.0,
        "alpha": False,
        "last_conv_layer": "top_activation",
        "weights_file": "efficientnetv2-b0_notop.h5",
    },
    "efficientnetv2_s": {
        "constructor": "EfficientNetV2S",
        "module": "efficientnet_v2",
        "preprocessing": "inside",
        "options": {"include_preprocessing": True},
        "min_size": 32,
        "native_size": 384,
        "activations": 837,
        "largest_activation": 12.0,
        "alpha": False,
        "last_conv_layer": "top_activation",
        "weights_file": "efficientnetv2-s_notop.h5",
    },
    "resnet50": {
        "constructor": "ResNet50",
        "module": "resnet50",
        "preprocessing": "caffe",
        "options": {},
        "min_size": 32,
        "native_size": 224,
        "activations": 740,
        "largest_activation": 16.6,
        "alpha": False,
        "last_conv_layer": "conv5_block3_out",
        "weights_file": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    },
    "resnet50_v2": {
        "constructor": "ResNet50V2",
        "module": "resnet_v2",
        "preprocessing": "tf",
        "options": {},
        "min_size": 32,
        "native_size": 224,
        "activations": 625,
        "largest_activation": 16.6,
        "alpha": False,
        "last_conv_layer": "post_relu",
        "weights_file": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    },
    "densenet121": {
        "constructor": "DenseNet121",
        "module": "densenet",
        "preprocessing": "torch",
        "options": {},
        "min_size": 32,
        "native_size": 224,
        "activations": 995,
        "largest_activation": 16.6,
        "alpha": False,
        "last_conv_layer": "relu",
        "weights_file": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    },
    "inception_v3": {
        "constructor": "InceptionV3",
        "module": "inception_v3",
        "preprocessing": "tf",
        "options": {},
        "min_size": 75,
        "native_size": 299,
        "activations": 334,
        "largest_activation": 15.2,
        "alpha": False,
        "last_conv_layer": "mixed10",
        "weights_file": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    },
    "xception": {
        "constructor": "Xception",
        "module": "xception",
        "preprocessing": "tf",
        "options": {},
        "min_size": 71,
        "native_size": 299,
        "activations": 689,
        "largest_activation": 30.3,
        "alpha": False,
        "last_conv_layer": "block14_sepconv2_act",
        "weights_file": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    },
    "convnext_tiny": {
        "constructor": "ConvNeXtTiny",
        "module": "convnext",
        "preprocessing": "inside",
        "options": {"include_preprocessing": True},
        "min_size": 32,
        "native_size": 224,
        "activations": 574,
        "largest_activation": 24.0,
        "alpha": False,
        # The output layer: the LayerNormalization after the last block.
        "last_conv_layer": None,
        "weights_file": "convnext_tiny_notop.h5",
    },
    "vgg19": {
        "constructor": "VGG19",
        "module": "vgg19",
        "preprocessing": "caffe",
        "options": {},
        "min_size": 32,
        "native_size": 224,
        "activations": 330,
        "largest_activation": 64.0,
        "alpha": False,
        # The last convolution, before block5_pool: twice the resolution.
        "last_conv_layer": "block5_conv4",
        "weights_file": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    },
}

ALPHA_BACKBONES = tuple(name for name, family in BACKBONES.items() if family["alpha"])

# The largest --image_size: one 2048 px image trained from scratch through
# the default backbone (mobilenet_v2) already keeps over 5 GiB of
# activations (training_memory_bytes), and 4096 px would keep 20 GiB; the
# ImageNet weights were trained at 224-600 px.
MAX_IMAGE_SIZE = 2048

# Bytes of a float32 activation.
FLOAT_BYTES = 4

# The part of every layer's outputs a from-scratch training step really
# keeps: TensorFlow fuses some layers (batch normalization into the
# convolution, ReLU in place). Measured on 2 CPU cores, mobilenet_v2 at 128
# px from scratch: peak memory grew 22.6 MB per image of the batch (batch 4
# to 24), against 28.7 MB of layer outputs counted, 0.79 of them; 0.75 keeps
# the estimate below what a run takes.
KEPT_FRACTION = 0.75


def training_memory_bytes(backbone, alpha, image_size, batch_size, whole_backbone_trains):
    """The least memory one training step of `backbone` takes for a batch of
    `batch_size` images of `image_size` px: the float input batch, plus
    the layer outputs kept for the backward pass when `whole_backbone_trains`
    (from scratch; KEPT_FRACTION of them all), else the largest layer's input
    and output (the frozen pretrained backbone's forward pass). A lower bound: the
    weights, gradients, the optimizer and TensorFlow's own buffers come on
    top. A width multiplier below 1 thins most layers, not all, so the
    count is scaled by it (never up: that would stop being a lower bound)."""
    family = BACKBONES[backbone]
    if whole_backbone_trains:
        per_pixel = KEPT_FRACTION * family["activations"]
    else:
        per_pixel = 2 * family["largest_activation"]
    width = min(1.0, alpha) if family["alpha"] else 1.0
    return int(batch_size * image_size**2 * (per_pixel * width + 3) * FLOAT_BYTES)


def validate_backbone_options(backbone, image_size, alpha):
    """Checks the backbone, its smallest input and --alpha.

    Raises UserError (one line) when the backbone is unknown, when
    `image_size` (None: not known yet) is below what the backbone accepts, or when `alpha` is not
    1.0 for a backbone without a width multiplier.
    """
    if backbone not in BACKBONES:
        raise UserError(
            f"backbone must be one of {', '.join(BACKBONES)}. Received: backbone={backbone}"
        )
    family = BACKBONES[backbone]
    if image_size is not None and image_size < family["min_size"]:
        raise UserError(
            f"image_size must be at least {family['min_size']} for {backbone} "
            f"(its smallest input). Received: image_size={image_size}"
        )
    if alpha != 1.0 and not family["alpha"]:
        raise UserError(
            f"alpha (a width multiplier) exists only for {', '.join(ALPHA_BACKBONES)}; "
            f"leave it at 1.0 for {backbone}. Received: alpha={alpha}"
        )


# --image_size auto from scratch: the training images' own size, as a
# multiple of 32 (every backbone's total stride) within these bounds; above
# 224 from scratch costs compute that a few hundred images cannot use.
AUTO_SIZE_STEP = 32
AUTO_SIZE_RANGE = (32, 224)


def automatic_image_size(backbone, pretrained, train_size):
    """(size, reason) for --image_size auto: with pretrained weights the
    size they were trained at (`native_size`); from scratch the median
    shorter side of the training images, `train_size` (the audit's
    "train_image_size": median width, height and shorter side), rounded to
    a multiple of 32 between 32 and 224 (and at least the backbone's
    smallest input). Training 64x64 scans at 224 px costs about 12x the
    compute for no more detail than the files hold."""
    family = BACKBONES[backbone]
    if pretrained:
        size = family["native_size"]
        return size, f"the {backbone} ImageNet weights were trained at {size} px"
    if not train_size:
        return 224, "no training image size was recorded: the largest automatic size"
    low, high = AUTO_SIZE_RANGE
    rounded = int(round(train_size["short_side"] / AUTO_SIZE_STEP)) * AUTO_SIZE_STEP
    size = max(min(max(rounded, low), high), family["min_size"])
    width, height = (f"{train_size[side]:g}" for side in ("width", "height"))
    shape = f"{width}x{height}" if width != height else f"{width}x{width}"
    bounded = "" if size == rounded else f" (within {low}-{high} px and {backbone}'s smallest input)"
    # Measured (docs/training.md): faster, not always as accurate as larger.
    larger = "" if size >= high else ("; a larger --image_size can be more accurate from scratch at several "
                                      "times the time (docs/training.md)")
    return size, f"the training images are {shape} px (median), from scratch: training at {size} px{bounded}{larger}"


def backbone_names(text):
    """`mobilenet_v2,resnet50` -> ("mobilenet_v2", "resnet50"): the
    backbones of --backbone, one run each. Raises UserError for an unknown,
    empty or repeated name."""
    names = tuple(name.strip() for name in str(text).split(","))
    for name in names:
        if name not in BACKBONES:
            raise UserError(
                f"backbone must be one of {', '.join(BACKBONES)}, or several of them separated by "
                f"commas. Received: backbone={text}"
            )
    if len(set(names)) != len(names):
        raise UserError(f"backbone names a backbone twice. Received: backbone={text}")
    return names


def backbone_alpha(backbone, alpha):
    """The width multiplier `backbone` is built with: `alpha` where it has
    one, else 1.0 (with several backbones, --alpha applies where it means
    something)."""
    return alpha if BACKBONES[backbone]["alpha"] else 1.0


def validate_backbone_list(text, image_size, alpha):
    """Checks --backbone (one name or several) with --image_size and
    --alpha: each backbone as validate_backbone_options does; with several,
    an --alpha other than 1.0 must fit at least one of them. Returns the
    names. Raises UserError."""
    names = backbone_names(text)
    if len(names) == 1:
        validate_backbone_options(names[0], image_size, alpha)
        return names
    if alpha != 1.0 and not any(BACKBONES[name]["alpha"] for name in names):
        raise UserError(
            f"alpha (a width multiplier) exists only for {', '.join(ALPHA_BACKBONES)}, and none of "
            f"{', '.join(names)} has one; leave it at 1.0. Received: alpha={alpha}"
        )
    for name in names:
        validate_backbone_options(name, image_size, backbone_alpha(name, alpha))
    return names


def keras_cache_hint(backbone, alpha, image_size):
    """Where Keras looks for the cached ImageNet weights of `backbone`
    (include_top=False), for error messages."""
    cache = os.path.join(os.path.expanduser("~"), ".keras", "models")
    # MobileNetV2 has files for these sizes and falls back to 224.
    size = image_size if image_size in (96, 128, 160, 192, 224) else 224
    name = BACKBONES[backbone]["weights_file"].format(alpha=float(alpha), size=size)
    return os.path.join(cache, name)


def batch_memory_refusal(names, alpha, image_size, batch_size, from_scratch):
    """None when a training batch of `batch_size` images of `image_size` px
    fits in the memory this process can still take (memory.available) for
    every backbone of `names` (training_memory_bytes, a lower bound), else
    the one line refusing it: the numbers, and the largest --batch_size and
    --image_size (a multiple of 32) that would fit. On a machine with an
    NVIDIA GPU the batch lives in the GPU's memory, which TensorFlow reports
    only once started: None there."""
    room, where = memory.available()
    if room is None or memory.has_nvidia_gpu():
        return None
    for name in names:
        width = backbone_alpha(name, alpha)

        def need(side, batch):
            return training_memory_bytes(name, width, side, batch, from_scratch)

        if need(image_size, batch_size) > room:
            return _memory_refusal(name, need, image_size, batch_size, from_scratch, room, where)
    return None


def _memory_refusal(backbone, need, size, batch, from_scratch, room, where):
    kept = "the layer outputs kept to train from scratch" if from_scratch else (
        "the largest layer's input and output in the frozen backbone")
    fitting_batch = next((number for number in range(batch - 1, 0, -1) if need(size, number) <= room), None)
    smallest = BACKBONES[backbone]["min_size"]
    fitting_size = next((side for side in range(size - size % 32, smallest - 1, -32) if need(side, batch) <= room),
                        None)
    lower = [f"--batch_size to {fitting_batch}" if fitting_batch else None,
             f"--image_size to {fitting_size}" if fitting_size else None]
    advice = " or ".join(item for item in lower if item) or "both --batch_size and --image_size"
    return (
        f"a batch of {batch} images of {size}x{size} px through {backbone} needs at least "
        f"{need(size, batch) / memory.GIB:.1f} GiB ({kept}), but this process has {room / memory.GIB:.1f} GiB "
        f"{where}: lower {advice}. Received: image_size={size}, batch_size={batch}"
    )
