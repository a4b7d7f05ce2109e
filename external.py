"""How is a model from another framework used: an ONNX file and the sidecar beside it.

A model trained elsewhere (PyTorch, timm, another tool) and exported to
ONNX is used like a run of ours once its sidecar is written beside it: the
same name with .json (resnet.onnx + resnet.json), saying what the ONNX
file cannot:

    {
      "classes": ["cat", "dog", "fox"],
      "preprocessing": "torch",
      "output": "logits",
      "layout": "nchw",
      "image_size": 224,
      "name": "resnet18 (Ana's)"
    }

classes (required) the class names in the model's output order;
preprocessing (required) how our uint8 RGB pixels become its input (see
PREPROCESSING); output (required) "logits" or "probabilities"; layout
"nchw"/"nhwc" and image_size, needed only when the model's input does not
tell (a fixed channel axis of 3, a fixed square size); name, its name in a
comparison (default: the file name).

A multi-label model (several labels per image, one sigmoid each) says
"multi_label": true; its outputs are then per-label logits (a sigmoid
makes them probabilities) or per-label probabilities (each in [0, 1], rows
need not sum to 1), and "thresholds": {"label": 0.4, ...} may give each
label's decision threshold (0.5 for a label it leaves out; --threshold
overrides them all). Without "multi_label" a model gives one class per
image.

`read_sidecar` reads and checks the sidecar (`Sidecar`); `input_geometry`
reads layout and size from the model's input, against the sidecar;
`ExternalRunner` runs the model as export.py's runners run ours:
`predict_on_batch(uint8 (N, S, S, 3) images) -> probabilities (N,
classes)`, `input_shape`, `output_shape`, so the prediction loop, the
metrics, the figures and the comparison need nothing special.
`load_external` puts them together; `check_classes` matches the model's
classes to a dataset's by name. Every mistake is one line naming the file
and the field (errors.UserError, exit code 2).
"""

import dataclasses
import json
import math
import os
import re

import numpy as np

import calibration
import export
from errors import UserError

FIELDS = ("classes", "preprocessing", "output", "layout", "image_size", "name")
# A multi-label model's two more fields: "multi_label": true, and its
# labels' thresholds (optional).
MULTI_LABEL_FIELDS = ("multi_label", "thresholds")
REQUIRED = ("classes", "preprocessing", "output")
MISSING = {
    "classes": "the class names in the model's output order, e.g. [\"cat\", \"dog\"]",
    "preprocessing": "torch, tf, caffe, raw or {\"mean\": [...], \"std\": [...]}",
    "output": "logits or probabilities",
}
LAYOUTS = ("nchw", "nhwc")
OUTPUTS = ("logits", "probabilities")
EXPLICIT_FIELDS = ("mean", "std", "range", "channels")

# Probabilities must sum to 1 within this (float32 softmax rounding), and
# be no lower than -this; "logits" whose rows all do are probabilities.
PROBABILITY_TOLERANCE = 1e-3

# Class names that usually mean "none of the others" (detection-style
# models, "other" buckets): a dataset's folders never hold them, so they
# get their own message.
BACKGROUND_NAMES = frozenset({
    "background", "bg", "other", "others", "unknown", "none", "void", "negative", "noobject",
    "nothing", "rest", "misc", "ignore", "unlabeled", "unlabelled",
})

# onnxruntime's input types -> the NumPy type fed to the model.
INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
               "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


# ---------------------------------------------------------------- preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB pixels become the model's input: channels reversed to
    BGR when `bgr`, then (pixels / scale - mean) / std, per channel in the
    model's channel order."""

    name: str
    scale: float
    mean: tuple
    std: tuple
    bgr: bool = False

    def apply(self, images):
        """float32 (N, H, W, 3) from uint8 (N, H, W, 3) `images`."""
        pixels = np.asarray(images, np.float32)
        if self.bgr:
            pixels = pixels[..., ::-1]
        # The order of PyTorch's ToTensor + Normalize (divide, subtract,
        # divide), in float32, so the model sees the same numbers.
        return (pixels / np.float32(self.scale) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def describe(self):
        if self.name != "explicit":
            return self.name
        order = "BGR " if self.bgr else ""
        return f"{order}mean {list(self.mean)} std {list(self.std)} on 0-{255 / self.scale:g}"


# The named modes, as keras.applications' imagenet_utils.preprocess_input
# defines them: torch = 0-1 then ImageNet mean/std; tf = -1..1; caffe = BGR,
# ImageNet mean subtracted on 0-255; raw = 0-255 unchanged.
PREPROCESSING = {
    "torch": Preprocessing("torch", 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": Preprocessing("tf", 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "caffe": Preprocessing("caffe", 1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True),
    "raw": Preprocessing("raw", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


# ---------------------------------------------------------------- the sidecar


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """A checked sidecar: `path` (the .json), `model_path` (the .onnx), the
    class names in output order, Preprocessing, "logits"/"probabilities",
    and the optional layout, image size and name (None when not given)."""

    path: str
    model_path: str
    classes: tuple
    preprocessing: Preprocessing
    output: str
    layout: str | None = None
    image_size: int | None = None
    name: str | None = None
    multi_label: bool = False  # several labels per image: one sigmoid per label
    thresholds: dict | None = None  # multi-label: {label: threshold} (None: 0.5 each)

    @property
    def label(self):
        """The model's name in a comparison: `name`, or the file's."""
        return self.name or os.path.splitext(os.path.basename(self.model_path))[0]

    def describe(self):
        kind = ", multi-label (a sigmoid per label)" if self.multi_label else ""
        return f"preprocessing {self.preprocessing.describe()}, output {self.output}{kind}"


def sidecar_path(model_path):
    """The sidecar of `model_path`: the same path with .json for .onnx."""
    return os.path.splitext(model_path)[0] + ".json"


def has_sidecar(model_path):
    """Whether `model_path` is an .onnx file with a sidecar beside it (a
    model from another framework, not an export of ours)."""
    return export.model_format(model_path) == "onnx" and os.path.isfile(sidecar_path(model_path))


NOT_GIVEN = object()


def field_error(path, field, problem, value=NOT_GIVEN):
    """The one line for a bad field: file, field, what is wrong, and the
    value received (house style)."""
    received = "" if value is NOT_GIVEN else f" Received: {field}={json.dumps(value)[:120]}"
    return UserError(f"{path}: field \"{field}\" {problem}.{received}")


def read_sidecar(model_path):
    """Reads and checks the sidecar of the .onnx file `model_path`. Returns
    a Sidecar; raises UserError naming the file and the field for a missing
    or unreadable file, a missing, unknown or mistyped field."""
    path = sidecar_path(model_path)
    if not os.path.isfile(path):
        raise UserError(
            f"no sidecar {path} beside the model {model_path}: a model from another framework needs "
            f"one, with its {', '.join(REQUIRED)} (README.md, Models from other frameworks)"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot be read ({error})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a JSON object with the fields {', '.join(FIELDS)}")
    unknown = [name for name in values if name not in FIELDS + MULTI_LABEL_FIELDS]
    if unknown:
        raise field_error(
            path, unknown[0], f"is not a sidecar field (the fields: {', '.join(FIELDS + MULTI_LABEL_FIELDS)})")
    for name in REQUIRED:
        if name not in values:
            raise field_error(path, name, f"is missing: {MISSING[name]}")
    classes = class_names(path, values["classes"])
    multi_label = is_multi_label(path, values.get("multi_label", False))
    return Sidecar(
        path=path,
        model_path=model_path,
        classes=classes,
        preprocessing=preprocessing(path, values["preprocessing"]),
        output=one_of(path, "output", values["output"], OUTPUTS),
        layout=None if values.get("layout") is None else one_of(path, "layout", values["layout"], LAYOUTS),
        image_size=None if values.get("image_size") is None else image_size(path, values["image_size"]),
        name=None if values.get("name") is None else text(path, "name", values["name"]),
        multi_label=multi_label,
        thresholds=None if values.get("thresholds") is None else label_thresholds(
            path, values["thresholds"], classes, multi_label),
    )


def is_multi_label(path, value):
    if not isinstance(value, bool):
        raise field_error(path, "multi_label", "must be true (several labels per image) or false", value)
    return value


def label_thresholds(path, value, classes, multi_label):
    """The "thresholds" field: {label: threshold in [0, 1]} of a
    multi-label model's own labels."""
    if not multi_label:
        raise field_error(path, "thresholds", "is for a multi-label model: add \"multi_label\": true, or leave it out")
    if not isinstance(value, dict) or not all(
        isinstance(number, (int, float)) and not isinstance(number, bool) and 0 <= number <= 1
        for number in value.values()
    ):
        raise field_error(path, "thresholds", "must map labels to numbers from 0 to 1, e.g. {\"cat\": 0.4}", value)
    unknown = [name for name in value if name not in classes]
    if unknown:
        raise field_error(path, "thresholds", f"names {names_text(unknown)}, not in its classes", value)
    return {name: float(number) for name, number in value.items()}


def class_names(path, value):
    if (
        not isinstance(value, list)
        or len(value) < 2
        or not all(isinstance(name, str) and name.strip() for name in value)
        or len(set(value)) != len(value)
    ):
        raise field_error(
            path, "classes", "must be a list of at least two distinct, non-empty class names, in the "
            "model's output order", value,
        )
    return tuple(value)


def one_of(path, field, value, choices):
    if value not in choices:
        raise field_error(path, field, f"must be one of {', '.join(choices)}", value)
    return value


def image_size(path, value):
    # bool is an int in Python: true is not a size.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise field_error(path, "image_size", "must be a positive whole number of pixels (the side of the square input)", value)
    return value


def text(path, field, value):
    if not isinstance(value, str) or not value.strip():
        raise field_error(path, field, "must be a non-empty string", value)
    return value


def three_numbers(path, field, value, positive=False):
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item) for item in value)
        or (positive and not all(item > 0 for item in value))
    ):
        kind = "positive numbers" if positive else "numbers"
        raise field_error(path, field, f"must be a list of three {kind}, one per channel", value)
    return tuple(float(item) for item in value)


def preprocessing(path, value):
    """A named mode (PREPROCESSING) or an explicit {"mean": [3], "std": [3],
    "range": 1 (pixels 0-1, the default) or 255, "channels": "rgb" (the
    default) or "bgr"}: (pixels - mean) / std per channel."""
    if isinstance(value, str):
        if value not in PREPROCESSING:
            raise field_error(
                path, "preprocessing", f"must be one of {', '.join(PREPROCESSING)} or an object with mean "
                "and std", value,
            )
        return PREPROCESSING[value]
    if not isinstance(value, dict):
        raise field_error(
            path, "preprocessing", f"must be one of {', '.join(PREPROCESSING)} or an object with mean and std",
            value,
        )
    unknown = [name for name in value if name not in EXPLICIT_FIELDS]
    if unknown:
        raise field_error(path, f"preprocessing.{unknown[0]}",
                          f"is not a preprocessing field (the fields: {', '.join(EXPLICIT_FIELDS)})")
    for name in ("mean", "std"):
        if name not in value:
            raise field_error(path, f"preprocessing.{name}", "is missing")
    pixel_range = value.get("range", 1)
    if pixel_range not in (1, 255) or isinstance(pixel_range, bool):
        raise field_error(path, "preprocessing.range", "must be 1 (pixels scaled to 0-1 first) or 255 (left 0-255)",
                          pixel_range)
    channels = one_of(path, "preprocessing.channels", value.get("channels", "rgb"), ("rgb", "bgr"))
    return Preprocessing(
        name="explicit",
        scale=255.0 if pixel_range == 1 else 1.0,
        mean=three_numbers(path, "preprocessing.mean", value["mean"]),
        std=three_numbers(path, "preprocessing.std", value["std"], positive=True),
        bgr=channels == "bgr",
    )


# ---------------------------------------------------------------- the model's input and output


def shape_text(shape):
    """[N, 3, 224, 224]: symbolic sizes (names, None) as their name or ?."""
    return "[" + ", ".join(str(size) if is_fixed(size) else (str(size) if size else "?") for size in shape) + "]"


def is_fixed(size):
    return isinstance(size, (int, np.integer)) and size > 0


def input_geometry(shape, sidecar):
    """(layout, image size) of a model whose input has `shape` (onnxruntime's:
    ints for fixed sizes, names or None for free ones), read from the shape
    where it tells and checked against the sidecar's layout and image_size.
    Raises UserError naming the field that is missing or contradicts the
    model."""
    if len(shape) != 4:
        raise UserError(
            f"{sidecar.model_path}: its input is {shape_text(shape)} (rank {len(shape)}); expected images of "
            "rank 4, [N, 3, H, W] (nchw) or [N, H, W, 3] (nhwc)"
        )
    layout = input_layout(shape, sidecar)
    return layout, input_size(shape, layout, sidecar)


def input_layout(shape, sidecar):
    """"nchw" or "nhwc" of a rank-4 input `shape`: the sidecar's, checked,
    or the one the shape tells. Raises UserError."""
    model, path = sidecar.model_path, sidecar.path
    # Where the 3 channels can be: an axis of size 3, or a free one.
    channels = {"nchw": shape[1], "nhwc": shape[3]}
    fits = {name: size == 3 or not is_fixed(size) for name, size in channels.items()}
    if not any(fits.values()):
        raise UserError(
            f"{model}: its input {shape_text(shape)} has no axis of 3 channels: only RGB models can be used"
        )
    if sidecar.layout is not None:
        if not fits[sidecar.layout]:
            other = "nhwc" if sidecar.layout == "nchw" else "nchw"
            raise field_error(
                path, "layout", f"says {sidecar.layout}, but the model {model} takes {shape_text(shape)}: "
                f"channels {'last' if other == 'nhwc' else 'first'} ({other})", sidecar.layout,
            )
        return sidecar.layout
    known = [name for name in LAYOUTS if fits[name]]
    if len(known) == 2:  # both could be: the one whose axis is fixed at 3, if only one is
        known = [name for name in LAYOUTS if channels[name] == 3]
    if len(known) != 1:
        raise field_error(
            path, "layout", f"is needed: the input {shape_text(shape)} of {model} does not tell channels "
            "first from channels last; add \"layout\": \"nchw\" (PyTorch) or \"nhwc\" (TensorFlow)",
        )
    return known[0]


def input_size(shape, layout, sidecar):
    """The side S of a rank-4 input `shape` in `layout`: fixed in the graph
    (square, and the sidecar's image_size if given) or the sidecar's for a
    free one. Raises UserError."""
    model, path = sidecar.model_path, sidecar.path
    sides = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    fixed = [int(side) for side in sides if is_fixed(side)]
    if len(set(fixed)) > 1:
        raise UserError(
            f"{model}: its input {shape_text(shape)} is {fixed[0]}x{fixed[1]}; only square inputs can be "
            "fed (images are resized to S x S)"
        )
    if fixed and sidecar.image_size not in (None, fixed[0]):
        raise field_error(
            path, "image_size", f"says {sidecar.image_size}, but the model {model} takes "
            f"{fixed[0]} px images ({shape_text(shape)})", sidecar.image_size,
        )
    if not fixed and sidecar.image_size is None:
        raise field_error(
            path, "image_size", f"is needed: the input {shape_text(shape)} of {model} takes any size; add the "
            "size it was trained at, e.g. \"image_size\": 224",
        )
    return fixed[0] if fixed else sidecar.image_size


def check_output(shape, sidecar, name="output"):
    """The model's one output must be [N, classes] with the sidecar's
    number of classes (when fixed). Raises UserError."""
    if len(shape) != 2:
        raise UserError(
            f"{sidecar.model_path}: its output \"{name}\" is {shape_text(shape)}; expected [N, classes] "
            "(one score per class)"
        )
    if is_fixed(shape[1]) and shape[1] != len(sidecar.classes):
        raise field_error(
            sidecar.path, "classes", f"names {len(sidecar.classes)} classes, but the model "
            f"{sidecar.model_path} has {shape[1]} outputs ({shape_text(shape)})",
        )


# ---------------------------------------------------------------- running it


class ExternalRunner:
    """A model from another framework as a runner (export.py): it takes the
    uint8 RGB (N, S, S, 3) images our pipeline decodes (image_io), applies
    the sidecar's preprocessing, feeds them in the model's layout and type
    (in chunks of its batch size when that is fixed) and returns class
    probabilities (softmax of logits)."""

    format = "onnx"

    def __init__(self, session, sidecar):
        inputs, outputs = session.get_inputs(), session.get_outputs()
        model = sidecar.model_path
        if len(inputs) != 1:
            raise UserError(
                f"{model}: it has {len(inputs)} inputs ({', '.join(item.name for item in inputs)}); "
                "expected one, the images"
            )
        if len(outputs) != 1:
            raise UserError(
                f"{model}: it has {len(outputs)} outputs ({', '.join(item.name for item in outputs)}); "
                "expected one, the class scores (export the model without its auxiliary outputs)"
            )
        if inputs[0].type not in INPUT_TYPES:
            raise UserError(
                f"{model}: its input is {inputs[0].type}; expected float, double, float16 or uint8 pixels"
            )
        self.input_type = INPUT_TYPES[inputs[0].type]
        if self.input_type is np.uint8 and sidecar.preprocessing.name != "raw":
            raise field_error(
                sidecar.path, "preprocessing", f"is {sidecar.preprocessing.describe()}, but the model {model} "
                "takes uint8 pixels: only \"raw\" fits", sidecar.preprocessing.name,
            )
        self.layout, size = input_geometry(list(inputs[0].shape), sidecar)
        check_output(list(outputs[0].shape), sidecar, outputs[0].name)
        batch = inputs[0].shape[0]
        self.fixed_batch = int(batch) if is_fixed(batch) else None
        self.session, self.sidecar, self.input_name = session, sidecar, inputs[0].name
        self.image_size = size
        self.input_shape = (None, size, size, 3)
        self.output_shape = (None, len(sidecar.classes))

    def model_input(self, images):
        """The model's input for uint8 (N, S, S, 3) images."""
        if self.input_type is np.uint8:
            pixels = np.asarray(images, np.uint8)
        else:
            pixels = self.sidecar.preprocessing.apply(images)
        if self.layout == "nchw":
            pixels = pixels.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(pixels, dtype=self.input_type)

    def raw_outputs(self, pixels):
        """The model's output for `pixels`, run in chunks of its fixed
        batch size (the last one padded by repeating its last image)."""
        if self.fixed_batch is None or len(pixels) == self.fixed_batch:
            return self.session.run(None, {self.input_name: pixels})[0]
        parts = []
        for start in range(0, len(pixels), self.fixed_batch):
            chunk = pixels[start:start + self.fixed_batch]
            padding = self.fixed_batch - len(chunk)
            if padding:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], padding, axis=0)])
            parts.append(self.session.run(None, {self.input_name: chunk})[0][: self.fixed_batch - padding])
        return np.concatenate(parts)

    def predict_on_batch(self, images):
        """Class probabilities (N, classes) float64 for uint8 (N, S, S, 3)
        images. Raises UserError when the outputs are not what the sidecar
        says (another number of classes, non-finite values, probabilities
        that are not, logits that are already probabilities)."""
        outputs = np.asarray(self.raw_outputs(self.model_input(images)), np.float64)
        sidecar = self.sidecar
        if outputs.ndim != 2 or outputs.shape[1] != len(sidecar.classes):
            raise field_error(
                sidecar.path, "classes", f"names {len(sidecar.classes)} classes, but the model "
                f"{sidecar.model_path} gave outputs of shape {list(outputs.shape)}",
            )
        if not np.all(np.isfinite(outputs)):
            raise field_error(
                sidecar.path, "preprocessing", f"gives the model {sidecar.model_path} inputs it answers with "
                "NaN or infinity; check it", sidecar.preprocessing.name,
            )
        if sidecar.multi_label:
            return self.label_probabilities(outputs)
        sums = outputs.sum(axis=1)
        are_probabilities = (
            outputs.min() >= -PROBABILITY_TOLERANCE and outputs.max() <= 1 + PROBABILITY_TOLERANCE
            and np.max(np.abs(sums - 1)) <= PROBABILITY_TOLERANCE
        )
        if sidecar.output == "logits":
            if are_probabilities:
                # A softmax over probabilities squeezes every row towards
                # uniform: accuracy survives, but the confidences, ECE and
                # NLL would be silently wrong.
                raise field_error(
                    sidecar.path, "output", f"says logits, but the outputs of {sidecar.model_path} are "
                    f"already probabilities (every row in [0, 1], summing to {sums.min():.3g}..{sums.max():.3g}): "
                    "say \"probabilities\"", "logits",
                )
            return calibration.softmax(outputs)
        if not are_probabilities:
            raise field_error(
                sidecar.path, "output", f"says probabilities, but the outputs of {sidecar.model_path} are not "
                f"(rows sum to {sums.min():.3g}..{sums.max():.3g}, smallest {outputs.min():.3g}): if they "
                "are logits, say \"logits\"", "probabilities",
            )
        return outputs


    def label_probabilities(self, outputs):
        """A multi-label model's outputs as per-label probabilities: a
        sigmoid of logits, or probabilities as they are (each in [0, 1]).
        Logits that all fall in [0, 1] are not refused as a single-label
        model's are: a barely trained model's logits may."""
        sidecar = self.sidecar
        if sidecar.output == "logits":
            return 1.0 / (1.0 + np.exp(-outputs))
        if outputs.min() < -PROBABILITY_TOLERANCE or outputs.max() > 1 + PROBABILITY_TOLERANCE:
            raise field_error(
                sidecar.path, "output", f"says probabilities, but the outputs of {sidecar.model_path} are not "
                f"(from {outputs.min():.3g} to {outputs.max():.3g}): if they are logits, say \"logits\"",
                "probabilities",
            )
        return np.clip(outputs, 0.0, 1.0)


def load_external(model_path):
    """The ExternalRunner of the .onnx file `model_path` with its sidecar
    (read_sidecar). Raises UserError for a missing or bad sidecar, a file
    that is not ONNX, or a model that contradicts its sidecar."""
    sidecar = read_sidecar(model_path)
    return ExternalRunner(export.open_onnx_session(model_path), sidecar)


def parameter_count(model_path):
    """The number of weights stored in the ONNX file (its floating-point
    initializers; integer ones are shapes and indices), or None when the
    onnx package cannot read it."""
    try:
        import onnx

        graph = onnx.load(model_path, load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a count for the table, never a reason to stop
        return None
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return int(sum(math.prod(item.dims) for item in graph.initializer if item.data_type in floats))


# ---------------------------------------------------------------- its classes and a dataset's


def names_text(names, limit=10):
    """a, b, c (the first `limit`, then how many more)."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_background(name):
    """Whether a class name means "none of the others" (BACKGROUND_NAMES)."""
    return re.sub(r"[^a-z]", "", name.lower()) in BACKGROUND_NAMES


def check_classes(sidecar, dataset_classes, dataset):
    """The model's classes must be exactly `dataset_classes` (the classes of
    `dataset`, a description for the message), in any order: they are
    matched by name. Raises UserError naming the classes the dataset lacks
    (background-style ones first) or the model misses."""
    extra = [name for name in sidecar.classes if name not in dataset_classes]
    missing = [name for name in dataset_classes if name not in sidecar.classes]
    background = [name for name in extra if is_background(name)]
    if background:
        raise field_error(
            sidecar.path, "classes", f"has {names_text(background)}, a background-style class {dataset} has "
            "no images of: the model must predict exactly the dataset's classes (export it without that "
            "output, or add the class to the dataset)",
        )
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"names {names_text(extra)}, which {dataset} lacks")
        if missing:
            parts.append(f"misses {names_text(missing)}, which {dataset} has")
        raise field_error(
            sidecar.path, "classes", f"{' and '.join(parts)}: the model must predict exactly the dataset's "
            f"classes ({names_text(list(dataset_classes))}), matched by name in any order",
        )
