"""How a model is exported, checked and run outside Keras: ONNX, LiteRT
(TensorFlow Lite) and TensorFlow SavedModel.

    python evaluate.py --image_dir DIR --export onnx,litert,saved_model
    python evaluate.py --image_dir DIR --export litert --quantize int8
    python main.py --image_dir DIR ... --export onnx,litert,saved_model
    python predict.py --model model_artifacts/latest/best_model.onnx --images photos/

Exports go into the model's own folder, beside the .keras file and its
companions (class_index.json, run_config.json, split_manifest.csv), which
the exported files use as they are:

    best_model.onnx           ONNX (tf2onnx), run with onnxruntime
    best_model.tflite         LiteRT flatbuffer, run with ai-edge-litert
    best_model_int8.tflite    the same, quantized (--quantize float16|int8)
    saved_model/              TensorFlow SavedModel (serving_default signature)
    export_report.json        what the parity check measured, and every
                              export's sha256 with its model's (check_tied)

Each takes what the .keras model takes: uint8 RGB images (N, S, S, 3),
0-255, the normalization inside. `export_and_check` writes them, runs each
beside the Keras model on the same batches and judges parity: a float
export whose top-1 agreement with Keras is below MIN_AGREEMENT or whose
largest absolute probability difference is above MAX_DIFFERENCE fails, and
its file is renamed to NAME.failed so it never looks fine. Quantized
exports are not judged: the report gives their accuracy change.

Exported models run through a "runner" (`load_runner`): an object with
`predict_on_batch(uint8 images) -> probabilities`, `input_shape` and
`output_shape`, which is all inference.predict_batches needs from a Keras
model, so evaluation, prediction, the CSV and the figures are the same code
for every format. A file that is not a model exported here (random bytes,
another input shape or type) is a UserError.
"""

import dataclasses
import hashlib
import importlib.metadata
import os
import shutil
import time
import warnings

import numpy as np

import artifacts
import config
import image_io
import tasks
from errors import UserError

FORMATS = config.EXPORT_FORMATS  # ("onnx", "litert", "saved_model")
SAVED_MODEL_FOLDER = "saved_model"
EXPORT_REPORT_FILE = "export_report.json"
FAILED_SUFFIX = ".failed"

# The parity rule for float exports: they compute the same function in
# float32, so any visible difference is a conversion bug, not rounding.
MIN_AGREEMENT = 0.999
MAX_DIFFERENCE = 1e-4

# Images of the train split that calibrate int8 quantization's activation
# ranges (TensorFlow's guide: a few hundred representative samples).
CALIBRATION_IMAGES = 300

KERAS_FORMAT_NAMES = {"onnx": "onnx", "litert": "litert", "saved_model": "tf_saved_model"}


# ---------------------------------------------------------------- file names


def model_format(path):
    """"keras", "onnx", "litert" or "saved_model", from the path: a .onnx or
    .tflite file, a folder (SavedModel), anything else a Keras file."""
    if os.path.isdir(path):
        return "saved_model"
    return {".onnx": "onnx", ".tflite": "litert"}.get(os.path.splitext(path)[1].lower(), "keras")


def export_path(model_path, export_format, quantize=None):
    """Where `export_format` of the model at `model_path` goes: its own
    folder, named after it (best_model.onnx, best_model_int8.tflite, ...);
    the SavedModel is the folder saved_model/."""
    # Links resolved: ARTIFACTS_DIR/best_model.keras exports into its run folder.
    folder = os.path.dirname(os.path.realpath(model_path))
    stem = os.path.splitext(os.path.basename(model_path))[0]
    if export_format == "onnx":
        return os.path.join(folder, f"{stem}.onnx")
    if export_format == "litert":
        return os.path.join(folder, f"{stem}{'_' + quantize if quantize else ''}.tflite")
    return os.path.join(folder, SAVED_MODEL_FOLDER)


def report_path(model_path):
    """export_report.json beside the model."""
    return os.path.join(os.path.dirname(os.path.realpath(model_path)), EXPORT_REPORT_FILE)


def export_sha256(path):
    """The sha256 of an export: of its file, or of a SavedModel folder's
    files (their relative names and contents, in sorted order)."""
    if os.path.isfile(path):
        return artifacts.file_sha256(path)
    digest = hashlib.sha256()
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        for name in sorted(names):
            file = os.path.join(folder, name)
            digest.update(os.path.relpath(file, path).encode("utf-8") + b"\0")
            digest.update(artifacts.file_sha256(file).encode("ascii"))
    return digest.hexdigest()


def size_bytes(path):
    """A file's size, or the total of a folder's files."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )


def mark_failed(path):
    """Renames an export that failed its check to PATH.failed (replacing an
    earlier .failed), so no loader picks it up by its name. Returns the new
    path."""
    failed = path.rstrip(os.sep) + FAILED_SUFFIX
    if os.path.isdir(failed):
        shutil.rmtree(failed)
    elif os.path.exists(failed):
        os.remove(failed)
    os.replace(path, failed)
    return failed


# ---------------------------------------------------------------- the tie to the model


def read_report(folder):
    """export_report.json in `folder` as a dict; {} when there is none or
    it is not readable JSON holding one."""
    try:
        report = artifacts.read_json(os.path.join(folder, EXPORT_REPORT_FILE))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def recorded_exports(folder, model_path, model_sha256, rows):
    """export_report.json's "exports": every export in `folder` with the
    sha256 of the .keras model it was made from and its own, so a loader
    can tell an export of this model from a stale or foreign file
    (check_tied). The earlier report's entries are kept for the files that
    are still there; `rows` (this check's) replace theirs."""
    recorded = {
        name: entry for name, entry in (read_report(folder).get("exports") or {}).items()
        if isinstance(entry, dict) and os.path.exists(os.path.join(folder, name))
    }
    for row in rows:
        if row["format"].startswith("keras") or row["parity"] == "failed":
            continue
        name = row["file"].rstrip(os.sep)
        recorded[name] = {
            "format": row["format"], "quantization": row.get("quantization"),
            "model": os.path.basename(model_path), "model_sha256": model_sha256,
            "sha256": export_sha256(os.path.join(folder, name)), "parity": row["parity"],
            "exported": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    return dict(sorted(recorded.items()))


def check_tied(path, run_config):
    """Refuses an export (`path`, links resolved) that export_report.json
    beside it does not record as made from the model of its companions:
    the model whose sha256 `run_config` records (or, for a run that did not
    finish, the best_model.keras beside it), and as this very file. A
    foreign file placed beside a run's companions, or an old export left
    beside a model that --resume replaced since, is never used with them.
    Companions that name no model (no hash, no .keras beside them) have
    nothing to be tied to. Raises UserError naming both files."""
    folder = os.path.dirname(os.path.normpath(path))
    name = os.path.basename(os.path.normpath(path))
    keras_file = os.path.join(folder, artifacts.MODEL_FILE)
    expected, source = run_config.get("model_sha256"), os.path.join(folder, artifacts.RUN_CONFIG_FILE)
    if not expected and os.path.isfile(keras_file):
        expected, source = artifacts.file_sha256(keras_file), keras_file
    if not expected:
        return
    report_file = os.path.join(folder, EXPORT_REPORT_FILE)
    again = f"export it again: python evaluate.py --model {keras_file} --export {model_format(path)}"
    entry = (read_report(folder).get("exports") or {}).get(name)
    if not isinstance(entry, dict):
        raise UserError(
            f"the model {path} is not recorded as an export of {keras_file} ({report_file} has no entry "
            f"for {name}), so its companions may not describe it: {again} (a model from another "
            f"framework needs its sidecar {os.path.splitext(path)[0]}.json instead)"
        )
    if entry.get("model_sha256") != expected:
        raise UserError(
            f"the model {path} was exported from another model than {keras_file}: {report_file} records "
            f"model sha256 {str(entry.get('model_sha256'))[:12]}…, {source} says {expected[:12]}… "
            f"(the model was replaced after the export): {again}"
        )
    if entry.get("sha256") != export_sha256(path):
        raise UserError(
            f"the model {path} is not the file exported from {keras_file}: its sha256 is not the one "
            f"{report_file} records (replaced after the export): {again}"
        )


# ---------------------------------------------------------------- runners


def _shape_text(shape):
    return "[" + ", ".join("N" if size in (None, -1) or isinstance(size, str) else str(size) for size in shape) + "]"


def check_signature(path, input_type, input_shape, output_shape):
    """Checks that an exported model takes what ours take: one uint8 input
    (N, S, S, 3) and one (N, classes) output. Returns (input_shape,
    output_shape) with None for the batch. Raises UserError."""
    spatial = list(input_shape[1:])
    if (
        input_type != "uint8"
        or len(input_shape) != 4
        or spatial[2] != 3
        or not all(isinstance(size, (int, np.integer)) and size > 0 for size in spatial)
        or spatial[0] != spatial[1]
    ):
        raise UserError(
            f"{path} is not a model exported by this project: its input is {input_type} "
            f"{_shape_text(input_shape)}, expected uint8 [N, S, S, 3] (raw RGB images)"
        )
    if len(output_shape) != 2 or not isinstance(output_shape[1], (int, np.integer)):
        raise UserError(
            f"{path} is not a model exported by this project: its output is "
            f"{_shape_text(output_shape)}, expected [N, classes]"
        )
    return (None, *(int(size) for size in spatial)), (None, int(output_shape[1]))


def _load_failure(path, kind, error):
    reason = " ".join(str(error).split())[:200]
    return UserError(f"could not load {path} as {kind}: {reason}")


def open_onnx_session(path):
    """An onnxruntime session of the ONNX file `path` on the CPU (ours, or a
    model from another framework: external.py). Raises UserError for a file
    that is not ONNX or that onnxruntime cannot run."""
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
        raise _load_failure(path, "an ONNX model", error) from None


class OnnxRunner:
    """An ONNX model exported here, run by onnxruntime on the CPU."""

    format = "onnx"

    def __init__(self, path):
        self.session = open_onnx_session(path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"{path} is not a model exported by this project: it has {len(inputs)} "
                f"input(s) and {len(outputs)} output(s), expected one of each"
            )
        self.input_name = inputs[0].name
        # onnxruntime names types "tensor(uint8)", "tensor(float)".
        input_type = inputs[0].type.removeprefix("tensor(").removesuffix(")")
        input_type = {"float": "float32", "double": "float64"}.get(input_type, input_type)
        self.input_shape, self.output_shape = check_signature(
            path, input_type, inputs[0].shape, outputs[0].shape
        )

    def predict_on_batch(self, images):
        return self.session.run(None, {self.input_name: np.asarray(images, np.uint8)})[0]


class LiteRTRunner:
    """A .tflite model run by ai-edge-litert's interpreter on every core
    (tf.lite.Interpreter is deprecated in favour of it)."""

    format = "litert"

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
        except Exception as error:  # noqa: BLE001 - a bad flatbuffer raises ValueError or RuntimeError
            raise _load_failure(path, "a LiteRT model", error) from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"{path} is not a model exported by this project: it has {len(inputs)} "
                f"input(s) and {len(outputs)} output(s), expected one of each"
            )
        self.input, self.output = inputs[0], outputs[0]
        self.input_shape, self.output_shape = check_signature(
            path,
            np.dtype(self.input["dtype"]).name,
            list(self.input["shape_signature"]),
            list(self.output["shape_signature"]),
        )
        self.batch_shape = None

    def predict_on_batch(self, images):
        images = np.asarray(images, np.uint8)
        if images.shape != self.batch_shape:
            # The batch dimension is dynamic (-1) in our exports; the
            # interpreter is sized to each new batch shape once.
            self.interpreter.resize_tensor_input(self.input["index"], images.shape, strict=False)
            self.interpreter.allocate_tensors()
            self.batch_shape = images.shape
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        outputs = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if scale:  # an integer output (full int8 quantization): back to probabilities
            outputs = (outputs.astype(np.float32) - zero_point) * scale
        return outputs


class SavedModelRunner:
    """A TensorFlow SavedModel run through its serving_default signature.
    A SavedModel is a TensorFlow program: load only ones you trust."""

    format = "saved_model"

    def __init__(self, path):
        import tensorflow as tf

        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise UserError(
                f"{path} is not a SavedModel folder: it has no saved_model.pb "
                "(export one with evaluate.py --export saved_model)"
            )
        try:
            self.loaded = tf.saved_model.load(path)
        except Exception as error:  # noqa: BLE001 - TensorFlow raises many types for a bad folder
            raise _load_failure(path, "a SavedModel", error) from None
        signature = self.loaded.signatures.get("serving_default")
        if signature is None:
            raise UserError(f"{path} has no serving_default signature to run")
        _, inputs = signature.structured_input_signature
        outputs = signature.structured_outputs
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"{path} is not a model exported by this project: its signature has "
                f"{len(inputs)} input(s) and {len(outputs)} output(s), expected one of each"
            )
        (self.input_name, spec), (output_spec,) = next(iter(inputs.items())), outputs.values()
        self.signature = signature
        self.input_shape, self.output_shape = check_signature(
            path, spec.dtype.name, list(spec.shape), list(output_spec.shape)
        )

    def predict_on_batch(self, images):
        import tensorflow as tf

        result = self.signature(**{self.input_name: tf.convert_to_tensor(np.asarray(images, np.uint8))})
        return next(iter(result.values())).numpy()


RUNNERS = {"onnx": OnnxRunner, "litert": LiteRTRunner, "saved_model": SavedModelRunner}


def load_runner(path):
    """The runner of an exported model (`model_format(path)` other than
    "keras"). Raises UserError for a corrupt or foreign file."""
    return RUNNERS[model_format(path)](path)


# ---------------------------------------------------------------- exporting


def _float32_policy(policy):
    """A serialized DTypePolicy, mixed precision made float32."""
    name = policy.get("config", {}).get("name", "")
    if policy.get("class_name") == "DTypePolicy" and name.startswith("mixed_"):
        return {**policy, "config": {**policy["config"], "name": "float32"}}
    return policy


def _float32_config(value):
    if isinstance(value, dict):
        value = {key: _float32_config(item) for key, item in value.items()}
        return _float32_policy(value)
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def is_mixed(model):
    """Whether any layer of `model` (nested ones too) computes in mixed
    precision."""
    return any(layer.dtype_policy.name.startswith("mixed_") for layer in model._flatten_layers())


def float32_model(model):
    """`model` itself when it computes in float32; otherwise (trained under
    mixed precision) the same architecture rebuilt in float32 with the same
    weights. tf2onnx cannot convert bfloat16/float16 graphs, and every
    export is checked against the float32 function it holds."""
    if not is_mixed(model):
        return model
    rebuilt = model.__class__.from_config(_float32_config(model.get_config()))
    # Mixed precision keeps variables in float32: nothing is rounded here.
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def converter_options(quantize, calibration):
    """LiteRT converter options for `quantize` (None, "float16", "int8");
    `calibration` is a uint8 array of training images for int8."""
    import tensorflow as tf

    if quantize is None:
        return {}
    if quantize == "float16":
        return {
            "optimizations": [tf.lite.Optimize.DEFAULT],
            "target_spec": {"supported_types": [tf.float16]},
        }

    def representative_dataset():
        for image in calibration:
            yield [image[None]]

    # Weights and activations in int8; the uint8 input and the float32
    # probabilities stay as they are, so the runner and the caller do not
    # change.
    return {"optimizations": [tf.lite.Optimize.DEFAULT], "representative_dataset": representative_dataset}


def export_model(model, export_format, path, quantize=None, calibration=None):
    """Writes `model` (float32, see float32_model) as `export_format` to
    `path`, atomically: a crash never leaves a half-written export.
    Returns the path."""
    options = converter_options(quantize, calibration) if export_format == "litert" else {}

    def write(temp_path):
        with warnings.catch_warnings():
            # Keras' tf2onnx shim probes np.object, which NumPy 2 warns about.
            warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
            model.export(temp_path, format=KERAS_FORMAT_NAMES[export_format], verbose=False, **options)

    if export_format == "saved_model":
        return artifacts.atomic_write_folder(path, write)
    return artifacts.atomic_write(path, write)


def check_replaceable(path):
    """A SavedModel folder is replaced only when it is one of ours (or
    empty); anything else at that path is the user's. Raises UserError."""
    if not os.path.exists(path):
        return
    ours = os.path.isdir(path) and (
        not os.listdir(path) or os.path.isfile(os.path.join(path, "saved_model.pb"))
    )
    if not ours:
        raise UserError(
            f"{path} exists and is not a SavedModel: move it away to export saved_model there"
        )


def calibration_paths(paths, count=CALIBRATION_IMAGES, seed=0):
    """Up to `count` of the training images `paths`, picked at random
    (seeded), for int8 calibration."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
    return [paths[i] for i in sorted(chosen)]


def manifest_training_paths(folder, image_dirs, trained_dir=None):
    """(folder, absolute paths) of the train split in `folder`'s
    split_manifest.csv, under the first of `image_dirs` (None entries skipped: --image_dir, then
    the folder the model was trained on, `trained_dir`) that holds every
    one of those files, so a dataset that moved is used where it is now.
    Raises UserError when there is no manifest or no such folder."""
    if not artifacts.has_manifest(folder):
        raise UserError(
            "--quantize int8 calibrates on the training images: it needs the model's "
            f"{artifacts.SPLIT_MANIFEST_FILE} (in {folder})"
        )
    rows = [row for row in artifacts.read_manifest(folder) if row.split == "train"]
    looked = []
    for image_dir in dict.fromkeys(path for path in image_dirs if path):
        paths = [os.path.join(os.path.abspath(image_dir), row.path) for row in rows]
        missing = [path for path in paths if not os.path.isfile(path)]
        if paths and not missing:
            return image_dir, paths
        looked.append(f"{image_dir} ({len(missing)} of {len(paths)} missing, e.g. {missing[0] if missing else '-'})")
    raise UserError(
        "--quantize int8 calibrates on the model's training images (the train split of its "
        f"{artifacts.SPLIT_MANIFEST_FILE}, trained on {trained_dir or 'an unknown folder'}), and no folder "
        f"holds them: {'; '.join(looked) or 'no folder given'}. Pass --image_dir of the folder that holds them"
    )


def load_images(paths, image_size, readers=None):
    """uint8 (N, S, S, 3) of the readable files among `paths`, decoded as
    for training (image_io.load_image). Raises UserError when none is."""
    images = []
    for path in paths:
        try:
            images.append(image_io.load_image(path, image_size, readers=readers).numpy())
        except Exception:  # noqa: BLE001 - an unreadable image is left out, as in prediction
            continue
    if not images:
        raise UserError(f"none of the {len(paths)} calibration images could be read")
    return np.stack(images)


# ---------------------------------------------------------------- checking


def run_side_by_side(runners, dataset):
    """Runs every runner (name -> object with predict_on_batch) on each batch
    of `dataset` ((uint8 images, labels) batches), one after the other, so
    they see the same images and share the machine's ups and downs.

    Returns (probabilities {name: (N, classes) float64}, labels (N,),
    milliseconds per image {name}: the median over full batches, the batch
    size). Timing leaves out a warm-up call on the first batch (tracing,
    allocation) and batches smaller than the first (Keras retraces for a
    new shape).
    """
    outputs = {name: [] for name in runners}
    timings = {name: [] for name in runners}  # ms per image, one per full batch
    labels, full = [], None
    for images, batch_labels in dataset:
        images = np.asarray(images)
        if full is None:
            full = len(images)
            for runner in runners.values():
                runner.predict_on_batch(images)
        for name, runner in runners.items():
            start = time.perf_counter()
            outputs[name].append(np.asarray(runner.predict_on_batch(images), np.float64))
            if len(images) == full:
                timings[name].append(1000 * (time.perf_counter() - start) / full)
        labels.append(np.asarray(batch_labels))
    if not labels:
        raise UserError("no readable image to check the exports on")
    probabilities = {name: np.concatenate(parts) for name, parts in outputs.items()}
    # The median batch: one slow batch (another process, a page fault)
    # does not move it.
    milliseconds = {name: float(np.median(values)) for name, values in timings.items()}
    return probabilities, np.concatenate(labels), milliseconds, full


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How far one model's predictions agree with the reference's."""

    accuracy: float
    top1_agreement: float
    max_abs_difference: float


def agreement(probabilities, reference, labels, thresholds=None):
    """Accuracy on `labels`, agreement with and largest absolute
    probability difference (over every output) from `reference` (both (N,
    classes)). With class numbers, accuracy and agreement are of the top-1
    class; with multi-hot labels (a multi-label model: tasks.of_labels),
    accuracy is the exact label set's and agreement the share of (image,
    label) yes/no answers the same as the reference's, each label at its
    threshold (`thresholds`; 0.5 when None)."""
    task = tasks.of_labels(labels)
    predicted = task.predicted(probabilities, thresholds)
    truth = np.asarray(labels) > 0.5 if task.multi_label else np.asarray(labels)
    right = predicted == truth
    agrees = predicted == task.predicted(reference, thresholds)
    if task.multi_label:
        # A threshold is one of the validation probabilities, so a model
        # that answers every image alike (one barely trained) sits on it:
        # a rounding-sized difference (within MAX_DIFFERENCE, which the
        # rule checks on its own) flips such an answer without any fault.
        at = 0.5 if thresholds is None else np.asarray(thresholds)[None, :]
        agrees |= np.abs(np.asarray(reference) - at) <= MAX_DIFFERENCE
    return Agreement(
        accuracy=float(np.mean(right.all(axis=1) if task.multi_label else right)),
        top1_agreement=float(np.mean(agrees)),
        max_abs_difference=float(np.max(np.abs(probabilities - reference))),
    )


def parity(measured, quantized):
    """"passed" or "failed" by the parity rule; quantized exports are
    "not judged" (they are meant to differ)."""
    if quantized:
        return "not judged"
    ok = measured.top1_agreement >= MIN_AGREEMENT and measured.max_abs_difference <= MAX_DIFFERENCE
    return "passed" if ok else "failed"


def versions():
    """The versions of what exports and runs the models, for the report."""
    names = ("tensorflow", "keras", "tf2onnx", "onnxruntime", "ai-edge-litert")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_exports(model, model_path, formats, quantize=None, calibration=None):
    """Exports `model` (float32) as each of `formats` beside `model_path`.
    Returns ({format: path} of the exports written, {format: (path, error
    text)} of those that could not be converted). An earlier file of a
    format that fails to convert is renamed to .failed, never left looking
    like this model's export."""
    written, errors = {}, {}
    # Keras' ONNX export refuses a model that was never called, as one
    # just loaded from a file is.
    model(np.zeros((1, *model.input_shape[1:]), np.uint8), training=False)
    for export_format in formats:
        path = export_path(model_path, export_format, quantize if export_format == "litert" else None)
        if export_format == "saved_model":
            check_replaceable(path)
        start = time.perf_counter()
        try:
            export_model(model, export_format, path, quantize if export_format == "litert" else None, calibration)
        except Exception as error:  # noqa: BLE001 - a converter's failure is reported, then judged failed
            if os.path.exists(path):
                mark_failed(path)
            errors[export_format] = (path, f"{type(error).__name__}: {' '.join(str(error).split())[:300]}")
            print(f"    {export_format}: conversion failed: {errors[export_format][1]}")
            continue
        written[export_format] = path
        print(f"    {export_format}: {path} ({time.perf_counter() - start:.1f}s)")
    return written, errors


def report_row(name, path, measured, keras_accuracy, milliseconds, verdict, quantize=None):
    """One format's entry of export_report.json."""
    return {
        "format": name,
        "quantization": quantize,
        "file": os.path.basename(path.rstrip(os.sep)) + (os.sep if os.path.isdir(path) else ""),
        "size_bytes": size_bytes(path),
        "accuracy": measured.accuracy,
        "accuracy_change": measured.accuracy - keras_accuracy,
        "top1_agreement": measured.top1_agreement,
        "max_abs_probability_difference": measured.max_abs_difference,
        "ms_per_image": milliseconds,
        "parity": verdict,
    }


def judge(probabilities, labels, milliseconds, model_path, written, quantize, reference_name, thresholds=None):
    """The report's rows: each runner's predictions (`probabilities`, by
    name: "keras", maybe "keras_float32", then the formats `written`)
    compared with `reference_name`'s (`agreement`, a multi-label model's
    labels at `thresholds`), judged, and failed files renamed."""
    reference = probabilities[reference_name]
    keras_accuracy = agreement(probabilities["keras"], reference, labels, thresholds).accuracy
    rows = []
    for name, predicted in probabilities.items():
        measured = agreement(predicted, reference, labels, thresholds)
        quantized = name == "litert" and quantize is not None
        if name.startswith("keras"):
            path, verdict = model_path, "reference" if name == reference_name else "not judged"
        else:
            path, verdict = written[name], parity(measured, quantized)
            if verdict == "failed":
                path = mark_failed(path)
        rows.append(
            report_row(name, path, measured, keras_accuracy, milliseconds[name], verdict,
                       quantize if quantized else None)
        )
    return rows


def export_and_check(model, model_path, formats, dataset, quantize=None, calibration=None, description="",
                     model_sha256=None, thresholds=None):
    """Exports the Keras `model` saved at `model_path` as `formats` into its
    folder, runs every export beside it on `dataset` ((uint8 images,
    labels) batches: the images the Keras model is evaluated on) and judges
    parity. Exports that fail are renamed to .failed.

    `quantize` (None, "float16", "int8") applies to LiteRT; int8 needs
    `calibration`, uint8 training images. Writes export_report.json beside
    the model, recording each export with the model's sha256
    (`model_sha256`, or the file's at `model_path`: recorded_exports), and
    returns the report (a dict; "passed" says whether every export passed
    or was not judged). A multi-label model (multi-hot labels in `dataset`)
    is judged on every label's probability and yes/no answer, each label
    at its `thresholds` (0.5 when None).
    """
    model_sha256 = model_sha256 or artifacts.file_sha256(model_path)
    reference_model = float32_model(model)
    rebuilt = reference_model is not model
    if rebuilt:
        print("    the model computes in mixed precision: exporting it rebuilt in float32 (same weights)")
    written, errors = write_exports(reference_model, model_path, formats, quantize, calibration)
    runners = {"keras": model}
    if rebuilt:
        runners["keras_float32"] = reference_model
    runners.update({name: load_runner(path) for name, path in written.items()})
    probabilities, labels, milliseconds, batch_size = run_side_by_side(runners, dataset)
    rows = judge(probabilities, labels, milliseconds, model_path, written, quantize,
                 reference_name="keras_float32" if rebuilt else "keras", thresholds=thresholds)
    task = tasks.of_labels(labels)
    for name, (path, error) in errors.items():
        rows.append({"format": name, "file": os.path.basename(path), "parity": "failed", "error": error})
    order = ["keras", "keras_float32", *formats]
    rows.sort(key=lambda row: order.index(row["format"]))
    report = {
        "model": os.path.abspath(model_path),
        "model_sha256": model_sha256,
        "evaluated": description,
        "images": int(len(labels)),
        "batch_size": batch_size,
        "reference": (
            "the .keras model rebuilt in float32 with its weights (it computes in mixed precision)"
            if rebuilt else "the .keras model"
        ),
        "task": task.name,
        "rule": {
            "agreement": "the share of (image, label) yes/no answers, each label at its threshold, the same as the "
            "reference's (or within max_abs_probability_difference of the threshold, a tie); accuracy is the "
            "exact label set's" if task.multi_label else "the share of top-1 classes "
            "the same as the reference's",
            "min_top1_agreement": MIN_AGREEMENT,
            "max_abs_probability_difference": MAX_DIFFERENCE,
            "judged": "float exports; quantized ones report their accuracy change instead",
            "on_failure": f"the file is renamed to NAME{FAILED_SUFFIX}",
        },
        "ms_per_image": "wall-clock milliseconds per image on this machine's CPU: the median "
        "over full batches, every format in the same process on the same batches in turn",
        "quantize": quantize,
        "calibration_images": 0 if calibration is None else int(len(calibration)),
        "formats": rows,
        "passed": all(row["parity"] != "failed" for row in rows),
        "versions": versions(),
        "exports": recorded_exports(os.path.dirname(report_path(model_path)), model_path, model_sha256, rows),
    }
    artifacts.write_json(report_path(model_path), report)
    return report


def _size_text(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024


def report_lines(report):
    """export_report.json as an aligned table (one line per format)."""
    header = ["format", "file", "size", "accuracy", "vs keras", "agreement", "max |dp|", "ms/image", "parity"]
    lines = [header]
    for row in report["formats"]:
        name = row["format"] + (f" ({row['quantization']})" if row.get("quantization") else "")
        if "error" in row:
            lines.append([name, row["file"], "-", "-", "-", "-", "-", "-", "failed (conversion)"])
            continue
        lines.append([
            name,
            row["file"],
            _size_text(row["size_bytes"]),
            f"{row['accuracy']:.4f}",
            f"{row['accuracy_change']:+.4f}",
            f"{row['top1_agreement']:.2%}",
            f"{row['max_abs_probability_difference']:.1e}",
            f"{row['ms_per_image']:.2f}",
            row["parity"],
        ])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]


def failure_message(report, report_path):
    """The one line a failed check ends with (exit code 1)."""
    reasons = []
    for row in report["formats"]:
        if row["parity"] != "failed":
            continue
        if "error" in row:
            reasons.append(f"{row['format']} could not be converted")
        else:
            answers = "(image, label) yes/no answers" if report.get("task") == tasks.MULTI_LABEL.name else "top-1 classes"
            reasons.append(
                f"{row['format']} agrees on {row['top1_agreement']:.2%} of {answers} (at least "
                f"{MIN_AGREEMENT:.1%} needed), largest probability difference "
                f"{row['max_abs_probability_difference']:.1e} (at most {MAX_DIFFERENCE:g}), "
                f"renamed to {row['file']}"
            )
    return f"export check failed: {'; '.join(reasons)}. See {report_path}"
