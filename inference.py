"""How a trained model predicts: loading it with its companions, the images
it is scored on, the one prediction loop and test-time augmentation.

`load_trained_model` reads a model (.keras, or an export: .onnx, .tflite, a
SavedModel folder) with the class index, run config and split manifest
saved beside it, refusing a model and companions of different runs; an
.onnx file from another framework comes with its sidecar instead
(`load_external_model`, external.py), and is then used the same way.
`labelled_images` picks the images to score: the saved split of the folder
the model was trained on, or every image of any other labelled folder.
`predict_batches` is the one prediction loop (test-time augmentation
included) that evaluate.py, predict.py, main.py's test stage, the model
comparison and calibration all use; `evaluate_images` turns its output
into a metrics.Evaluation. `saved_test_reliability` reads how often the
test split's predictions at each confidence were right, which
predictions.csv's rows (predictions_csv.py) quote.
"""

import dataclasses
import os

import numpy as np

import artifacts
import audit
import augment
import calibration
import config
import data_loader
import dataset_files
import export
import external
import image_io
import label_metrics
import metrics
import near_duplicates
import option_types
import run_lock
import tasks
from errors import UserError

# ---------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A saved model and what main.py saved beside it."""

    model: object
    path: str
    class_names: tuple
    image_size: int
    run_config: dict
    folder: str  # where the model and its companions are (its run folder)
    # A model from another framework: its external.Sidecar (it has no run
    # config and no split manifest); None for ours.
    sidecar: object = None
    # The model file itself, links resolved once, when it was loaded: the
    # file that was loaded, and where its exports go, even if
    # ARTIFACTS_DIR/latest is switched to another run meanwhile.
    file: str = ""
    # The kind of task it was trained for (tasks.saved_task, read when it
    # was loaded; a model from another framework: multi-label when its
    # sidecar says so, else one class per image).
    task: tasks.Task = tasks.SINGLE_LABEL
    # Multi-label: each label's threshold, in class order (decision_thresholds:
    # --threshold, else the run's or the sidecar's, else 0.5); None for one
    # class per image.
    thresholds: np.ndarray | None = None

    @property
    def temperature(self):
        """The temperature inside the model (calibration.model_temperature):
        None for a model saved before temperature scaling existed."""
        return calibration.model_temperature(self.model)


def read_companions(model_path):
    """(folder, class names, run config) of the model at `model_path`, read
    from beside it (links resolved: ARTIFACTS_DIR/best_model.keras leads to
    its run's folder), never from another folder. Refuses a model and
    companions of different runs: the run config records the model file's
    sha256 and the class names. Raises UserError."""
    folder = artifacts.companions_folder(model_path)
    try:
        class_names = artifacts.read_class_names(folder)
        run_config = artifacts.read_run_config(folder)
    except artifacts.CompanionError as error:
        foreign = (
            f"; a model from another framework needs its sidecar {external.sidecar_path(model_path)} instead"
            if export.model_format(model_path) == "onnx" else ""
        )
        raise UserError(
            f"cannot use the model {model_path}: {error} (main.py saves the companions next "
            f"to the model; keep them together{foreign})"
        ) from None
    index_file = os.path.join(folder, artifacts.CLASS_INDEX_FILE)
    config_file = os.path.join(folder, artifacts.RUN_CONFIG_FILE)
    saved_names = run_config.get("class_names")
    if saved_names is not None and tuple(saved_names) != class_names:
        raise UserError(
            f"{index_file} and {config_file} name different classes: they come from "
            "different runs"
        )
    # The hash is of the .keras file; exports are checked by their parity
    # report instead (export.py).
    expected = run_config.get("model_sha256")
    if expected and os.path.isfile(model_path) and model_path.endswith(".keras") \
            and artifacts.file_sha256(model_path) != expected:
        raise UserError(
            f"the model {model_path} is not the one its companions were saved with "
            f"({config_file}, run {run_config.get('run', '?')}, records another file hash): "
            "a model and companions of different runs"
        )
    return folder, class_names, run_config


def load_trained_model(model_path, image_size=None, threshold=None):
    """Loads the model at `model_path` with its class index and run config
    from beside it (`read_companions`). A .keras file loads into Keras; an
    export (.onnx, .tflite, a SavedModel folder) into an export runner,
    used the same way; an .onnx file with a sidecar beside it is a model
    from another framework (load_external_model). `image_size`, when given,
    must be the model's. A multi-label model decides with each label's
    saved threshold, or `threshold` (--threshold) for every label
    (decision_thresholds). Raises UserError when something is missing or
    does not match."""
    if not os.path.exists(model_path):
        raise UserError(f"no model at {model_path}: {missing_model_hint(model_path)}")
    if external.has_sidecar(model_path):
        return load_external_model(model_path, image_size, threshold)
    if export.model_format(model_path) == "keras" and not model_path.endswith(".keras"):
        raise UserError(
            "model must be a .keras file saved by main.py or an export of one (.onnx, "
            f".tflite, a SavedModel folder). Received: model={model_path}"
        )
    # Links resolved once: the companions, the hash and the model all come
    # from one run folder, also when another run is published meanwhile.
    real_path = os.path.realpath(model_path)
    folder, class_names, run_config = read_companions(real_path)
    task = tasks.saved_task(run_config, os.path.join(folder, artifacts.RUN_CONFIG_FILE))  # a kind this version knows
    if export.model_format(real_path) != "keras":
        export.check_tied(real_path, run_config)
    model = load_model_file(real_path)
    outputs = model.output_shape[-1]
    if outputs != len(class_names):
        raise UserError(
            f"{os.path.join(folder, artifacts.CLASS_INDEX_FILE)} names {len(class_names)} "
            f"classes but the model {model_path} predicts {outputs}: they come from different runs"
        )
    model_size = int(run_config.get("image_size") or model.input_shape[1])
    if model.input_shape[1] != model_size:
        raise UserError(
            f"the model {model_path} takes {model.input_shape[1]} px images but its "
            f"{artifacts.RUN_CONFIG_FILE} says {model_size}: they come from different runs"
        )
    if image_size not in (None, option_types.AUTO, model_size):
        raise UserError(
            f"image_size is fixed by the model ({model_size}); leave it out. "
            f"Received: image_size={image_size}"
        )
    thresholds = decision_thresholds(task, class_names, run_config.get("thresholds"), threshold, model_path)
    return TrainedModel(model, model_path, class_names, model_size, run_config, folder, file=real_path, task=task,
                        thresholds=thresholds)


def decision_thresholds(task, class_names, saved, threshold, model_path):
    """The thresholds a multi-label model decides with, one per label in
    class order (label_metrics.thresholds_of: `threshold`, the --threshold
    option, for every label; else the `saved` {label: threshold}; else
    0.5); None for a model of one class per image, which takes no
    --threshold (UserError: its answer is the most probable class)."""
    if task.multi_label:
        return label_metrics.thresholds_of(class_names, saved, threshold)
    if threshold is not None:
        raise UserError(
            f"--threshold decides which labels a multi-label model gives; the model {model_path} gives one "
            f"class per image (the most probable), so leave --threshold out. Received: threshold={threshold}"
        )
    return None


def at_threshold(trained, threshold):
    """A multi-label TrainedModel deciding every label at `threshold`."""
    return dataclasses.replace(trained, thresholds=label_metrics.thresholds_of(trained.class_names, None, threshold))


def missing_model_hint(model_path):
    """What to do when there is no model at `model_path`: for an export,
    where exports are (their run's folder; ARTIFACTS_DIR/latest/ is the
    published run's)."""
    name = os.path.basename(os.path.normpath(model_path))
    if export.model_format(model_path) == "keras" and name != export.SAVED_MODEL_FOLDER:
        return "train one first with main.py, or pass --model PATH"
    published = os.path.join(os.path.dirname(os.path.normpath(model_path)), artifacts.LATEST_LINK, name)
    if os.path.exists(published):
        return f"exports are in their run's folder: the published run's is {published}"
    return (
        "exports are written into their run's folder, ARTIFACTS_DIR/runs/<run>/ "
        "(ARTIFACTS_DIR/latest/ for the published run), by evaluate.py --export or main.py --export"
    )


def unfinished_note(trained):
    """A line saying that the model's run did not finish training (its
    run_config.json's status), so the model is its best checkpoint so far,
    never calibrated nor published, and whether a process still trains it
    or it can be resumed; None for a finished run (or one that records no
    status, or a model from another framework)."""
    status = trained.run_config.get("status")
    if trained.sidecar is not None or status in (None, "finished"):
        return None
    run = os.path.basename(trained.folder)  # the run id --resume takes
    training = run_lock.holder(trained.folder)
    state = f"still being trained ({training})" if training else (
        f"interrupted; continue it with python main.py --resume {run} "
        f"--artifacts_dir {os.path.dirname(os.path.dirname(trained.folder))}"
    )
    return (
        f"run {run} did not finish training (its {artifacts.RUN_CONFIG_FILE} says {status}): this model is "
        f"its best checkpoint so far, {'calibrated' if trained.run_config.get('calibration') else 'uncalibrated'} "
        f"and never published; the run is {state}"
    )


def load_external_model(model_path, image_size=None, threshold=None):
    """A model from another framework: the .onnx file `model_path` with its
    sidecar (external.load_external), as a TrainedModel whose model is an
    external.ExternalRunner: its class names, size and preprocessing are
    the sidecar's (and the ONNX graph's), its run config is empty and it has
    no split manifest, so every image of a folder is evaluated. A sidecar
    that says "multi_label" makes it a multi-label model, deciding with the
    sidecar's "thresholds" (or `threshold`, or 0.5).
    `image_size`, when given, must be the model's. Raises UserError."""
    if export.model_format(model_path) != "onnx" or not os.path.isfile(model_path):
        raise UserError(
            f"a model from another framework must be an .onnx file (with its sidecar .json beside it). "
            f"Received: model={model_path}"
        )
    runner = external.load_external(model_path)
    if image_size not in (None, option_types.AUTO, runner.image_size):
        raise UserError(
            f"image_size is fixed by the model ({runner.image_size}, {runner.sidecar.path}); leave it out. "
            f"Received: image_size={image_size}"
        )
    folder = os.path.dirname(os.path.abspath(model_path))
    sidecar = runner.sidecar
    task = tasks.MULTI_LABEL if sidecar.multi_label else tasks.SINGLE_LABEL
    thresholds = decision_thresholds(task, sidecar.classes, sidecar.thresholds, threshold, model_path)
    return TrainedModel(runner, model_path, sidecar.classes, runner.image_size, {}, folder, sidecar, task=task,
                        thresholds=thresholds)


def load_model_file(model_path):
    """A Keras model, or an export runner (export.load_runner) for .onnx,
    .tflite and SavedModel folders. Raises UserError when it cannot load."""
    if export.model_format(model_path) != "keras":
        return export.load_runner(model_path)
    import keras

    try:
        # safe_mode (the default) refuses to deserialize arbitrary code.
        return keras.models.load_model(model_path)
    except (ValueError, OSError) as error:
        reason = " ".join(str(error).split())[:200]
        raise UserError(f"could not load the model {model_path}: {reason}") from None


def saved_test_reliability(trained):
    """The test evaluation saved beside a TrainedModel
    (artifacts.TEST_RELIABILITY_FILE: its reliability bins and scores), or
    None when its run has none, or one made with another model file (its
    hash is not the run config's), or for a model from another framework.
    Raises UserError when the file cannot be read or its bins are not
    equal-width bins of [0, 1]."""
    if trained.sidecar is not None:
        return None  # a model from another framework has no test split of ours
    where = os.path.join(trained.folder, artifacts.TEST_RELIABILITY_FILE)
    try:
        saved = artifacts.read_test_reliability(trained.folder)
        if saved is not None:
            calibration.trust_at(saved["bins"], 1.0)  # a check: bins that work
    except artifacts.CompanionError as error:
        raise UserError(f"cannot use the model {trained.path}: {error}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot use the model {trained.path}: {where}: {error}") from None
    expected = trained.run_config.get("model_sha256")
    if saved is None or (expected and saved.get("model_sha256") != expected):
        return None
    return saved


# ---------------------------------------------------------------- images


def is_training_folder(image_dir, trained):
    trained_dir = trained.run_config.get("image_dir")
    return bool(trained_dir) and os.path.realpath(image_dir) == os.path.realpath(trained_dir)


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Images to evaluate: absolute paths, class numbers of the model's
    class index, what they are ("test split", "all images") and the files
    left out while listing them (audit.SkippedFile)."""

    paths: list
    labels: np.ndarray
    description: str
    skipped: tuple = ()
    other_folder: bool = False  # not the folder the model was trained on


def manifest_images(image_dir, split, trained):
    """(absolute paths, labels) of one split ("all": every split) of the
    split_manifest.csv saved with the model: class numbers, or for a
    multi-label model multi-hot labels (`manifest_label_sets`)."""
    try:
        rows = artifacts.read_manifest(trained.folder)
    except artifacts.CompanionError as error:
        raise UserError(f"cannot use the saved split: {error}") from None
    chosen = [row for row in rows if split == "all" or row.split == split]
    paths = [os.path.join(os.path.abspath(image_dir), row.path) for row in chosen]
    label_sets = manifest_label_sets(chosen, trained) if trained.task.multi_label else [(row.label,) for row in chosen]
    return paths, trained.task.encode(label_sets, trained.class_names)


def saved_reading(trained):
    """How the run read its labels CSV (dataset_files.LabelReading of its
    saved --label_delimiter and --no_label; the defaults for a run that saved
    none)."""
    options = trained.run_config.get("options") or {}
    return dataset_files.LabelReading(
        delimiter=options.get("label_delimiter") or config.DEFAULTS.label_delimiter,
        no_label=options.get("no_label"),
    )


def manifest_label_sets(rows, trained):
    """The label set of each split_manifest.csv row of a multi-label run:
    its label cell split by the run's --label_delimiter (the manifest holds
    the labels joined by it; an empty cell is an image with no label).
    Raises UserError for a label the model does not know (a manifest of
    another run)."""
    label_sets = label_sets_of([row.label for row in rows], trained)
    unknown = sorted({name for labels in label_sets for name in labels} - set(trained.class_names))
    if unknown:
        raise UserError(
            f"cannot use the saved split: {os.path.join(trained.folder, artifacts.SPLIT_MANIFEST_FILE)} names "
            f"label(s) the model does not know ({', '.join(unknown[:10])}): it comes from another run"
        )
    return label_sets


def label_sets_of(texts, trained):
    """The label set of each saved label cell of a multi-label run (the
    labels joined by its --label_delimiter; an empty cell: no label)."""
    separator = saved_reading(trained).separator
    return [tuple(name for name in text.split(separator) if name) for text in texts]


def csv_reading(trained, path_column=None, label_column=None, delimiter=None, no_label=None):
    """How another folder's labels CSV is read for `trained` (the options
    --path_column, --label_column, --label_delimiter, --no_label): as a
    multi-label CSV for a multi-label model, every row a label set. The
    delimiter and the no-label value default to the run's own
    (`saved_reading`) when left at their defaults."""
    saved = saved_reading(trained)
    if delimiter in (None, config.DEFAULTS.label_delimiter):
        delimiter = saved.delimiter
    return dataset_files.LabelReading(
        path_column=path_column,
        label_column=label_column,
        delimiter=delimiter,
        multi_label=1 if trained.task.multi_label else None,
        no_label=no_label if no_label is not None else saved.no_label,
    )


def folder_images(image_dir, class_names, labels_csv=None, readers=None, sidecar=None, task=tasks.SINGLE_LABEL,
                  reading=None):
    """Every image of a labelled folder (class folders, split folders of
    class folders, or --labels_csv read as `reading` says,
    dataset_files.LabelReading), listed the way main.py lists them
    (dataset_files.scan_dataset). With the `sidecar` of a single-label
    model from another framework, the folder's classes must be exactly
    the model's (external.check_classes); a run of ours may be scored on
    some of its. For a multi-label `task` the labels are multi-hot, from
    the CSV's label sets (a class folder is a set of one label).

    Returns (absolute paths, labels, skipped). Raises UserError when there
    is no image, naming classes the model does not know, or for a CSV with
    several labels per image given to a model of one class per image.
    """
    root = os.path.abspath(image_dir)
    scan = dataset_files.scan_dataset(root, labels_csv, readers, reading)
    for note in scan.notes:
        print(f"    note: {note}")
    for warning in scan.warnings:
        print(f"    warning: {warning}")
    # TensorFlow takes file names as UTF-8 strings: others are skipped.
    named = [candidate for candidate in scan.candidates if audit.is_utf8(candidate.path)]
    scan.skipped += [
        audit.SkippedFile(image_io.display_path(candidate.path), audit.NOT_UTF8, candidate.label)
        for candidate in scan.candidates
        if not audit.is_utf8(candidate.path)
    ]
    scan.candidates = named
    if not scan.candidates:
        raise UserError(
            f"no labelled images in {image_dir}: expected class folders or --labels_csv "
            "(to predict new, unlabelled images, use predict.py --images DIR)"
        )
    if scan.multi_label and not task.multi_label:
        raise UserError(
            f"the labels CSV {labels_csv} gives several labels per image, but the model gives one class per "
            "image: evaluate it on a CSV of one label per row, or train a multi-label model on this one"
        )
    label_sets = [candidate.labels if candidate.labels is not None else (candidate.label,)
                  for candidate in scan.candidates]
    folder_classes = sorted({name for labels in label_sets for name in labels})
    if sidecar is not None and not task.multi_label:
        external.check_classes(sidecar, folder_classes, f"the folder {image_dir}")
    unknown = sorted(set(folder_classes) - set(class_names))
    if unknown:
        known = ", ".join(class_names[:20]) + (" …" if len(class_names) > 20 else "")
        kind = "label" if task.multi_label else "class"
        raise UserError(
            f"{kind}(s) not in the model's class index: {', '.join(unknown)} "
            f"(the model knows: {known})"
        )
    paths = [os.path.join(root, candidate.path) for candidate in scan.candidates]
    return paths, task.encode(label_sets, class_names), tuple(scan.skipped)


def seen_in_training(image_dir, paths, trained, readers=None, cache_dir=None):
    """The images of `paths` (absolute, in `image_dir`, a folder that is
    not the training folder) that are copies or near-copies of an image the
    run trained or validated on (its artifacts.SEEN_IMAGES_FILE): a sorted
    tuple, or None when the run kept no hashes (a model from another
    framework, or a run from before they were kept). The files are audited
    (cached in `cache_dir`) for their hashes; near-copies are judged by
    near_duplicates' rule over the seen images and these together, with
    the run's --near_duplicate_distance."""
    if trained.sidecar is not None:
        return None
    try:
        seen = artifacts.read_seen_images(trained.folder)
    except artifacts.CompanionError as error:
        raise UserError(f"cannot use the model {trained.path}: {error}") from None
    if seen is None or not paths:
        return None if seen is None else ()
    root = os.path.abspath(image_dir)
    checks, _ = audit.audit_files(root, [os.path.relpath(path, root) for path in paths], readers, cache_dir)
    known = set(seen["sha256"])
    copies = {path for path, check in zip(paths, checks) if check.usable and check.sha256 in known}
    hashed = [(path, check.phash) for path, check in zip(paths, checks)
              if check.usable and check.phash and path not in copies]
    if hashed and seen["phash"]:
        distance = (trained.run_config.get("options") or {}).get(
            "near_duplicate_distance", near_duplicates.DEFAULT_DISTANCE)
        hashes = near_duplicates.from_texts(list(seen["phash"]) + [text for _, text in hashed])
        count = len(seen["phash"])
        for group in near_duplicates.near_duplicate_groups(hashes, distance):
            if min(group) < count:
                copies.update(hashed[member - count][0] for member in group if member >= count)
    return tuple(sorted(copies))


def labelled_images(image_dir, trained, split, labels_csv=None, classes=None, readers=None, reading=None):
    """The images evaluate.py and predict.py --image_dir use: the saved
    `split` ("all": every split) of the folder the model was trained on, or
    every image of any other folder (its labels CSV read as `reading` says:
    csv_reading); `classes` keeps only the images of those classes (of a
    multi-label model: the images with any of those labels).
    Returns LabelledImages; raises UserError."""
    if not os.path.isdir(image_dir):
        raise UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    skipped, other_folder = (), False
    if is_training_folder(image_dir, trained) and artifacts.has_manifest(trained.folder):
        # The folder the model was trained on: its saved split, always, so
        # training images are never scored as test images (also when a
        # labels CSV is given: the manifest already holds the CSV's labels).
        if labels_csv:
            print(f"    note: {image_dir} is the training folder: its saved {split} split is "
                  "used, and --labels_csv only for folders the model never saw")
        paths, labels = manifest_images(image_dir, split, trained)
        description = "all splits" if split == "all" else f"{split} split"
    else:
        paths, labels, skipped = folder_images(
            image_dir, trained.class_names, labels_csv, readers, sidecar=trained.sidecar, task=trained.task,
            reading=reading if reading is not None else csv_reading(trained),
        )
        description = "all images"
        other_folder = True
    if classes:
        unknown = [name for name in classes if name not in trained.class_names]
        if unknown:
            raise UserError(
                f"class(es) not in the model's class index: {', '.join(unknown)}"
            )
        wanted = [trained.class_names.index(name) for name in classes]
        if trained.task.multi_label:
            keep = [number for number, label in enumerate(labels) if label[wanted].any()]
        else:
            keep = [number for number, label in enumerate(labels) if label in wanted]
        paths, labels = [paths[i] for i in keep], labels[keep]
        description += f", classes {', '.join(classes)}"
    if not paths:
        raise UserError(f"no images in the {description} of {image_dir}")
    return LabelledImages(paths, labels, description, skipped, other_folder)



# ---------------------------------------------------------------- prediction


def trace_for_any_batch_size(model, images):
    """Traces the Keras `model`'s predict function once for batches of any
    size shaped like `images` (a batch, or one image's stack of test-time
    versions, whose first axis is left open just the same): Keras traces it on the first batch's exact shape and again,
    relaxed, on the next shape it sees (the short last batch, a timing
    batch), twice per model; TensorFlow counts those traces across every
    model loaded in the process and warns of "retracing" when several
    models are scored one after another (compare.py, cross_validation.py).
    Traced here with the batch size left open, each model traces once. An
    export runner or a model from another framework has no predict
    function to trace and is left as it is."""
    import tensorflow as tf

    if not hasattr(model, "make_predict_function") or getattr(model, "run_eagerly", False):
        return
    model.make_predict_function()
    spec = tf.TensorSpec((None, *images.shape[1:]), tf.as_dtype(images.dtype))
    # predict_on_batch calls predict_function([(images,)]): the same structure.
    model.predict_function.get_concrete_function([(spec,)])


def predict_batches(model, dataset, versions=1):
    """The one prediction loop: class probabilities for a dataset of
    (uint8 images, tags) batches. Tags ride along (true labels, or file
    positions) so the caller knows what each row is. With `versions` > 1
    each image comes as a stack of versions, (batch, versions, H, W, 3),
    and its probabilities are their mean (test-time augmentation). Returns
    (probabilities (N, classes) float64, tags (N,))."""
    probabilities, tags = [], []
    for images, batch_tags in dataset:
        if not tags:
            trace_for_any_batch_size(model, images[0] if versions > 1 else images)
        if versions > 1:
            flat = np.reshape(images, (-1, *images.shape[2:]))
            outputs = np.asarray(model.predict_on_batch(flat), dtype=np.float64)
            outputs = outputs.reshape(len(images), versions, -1).mean(axis=1)
        else:
            outputs = np.asarray(model.predict_on_batch(images), dtype=np.float64)
        probabilities.append(outputs)
        tags.append(np.asarray(batch_tags))
    if not tags:
        return np.zeros((0, model.output_shape[-1])), np.zeros(0, int)
    return np.concatenate(probabilities), np.concatenate(tags)




@dataclasses.dataclass(frozen=True)
class TestTimeAugmentation:
    """--tta N: each image is predicted as itself and N - 1 versions made by
    the training pipeline's augmentation (augment.augment_batch) with
    `augment`, and the probabilities are averaged. Version seeds come from
    `seed` and the image's position, so the same call gives the same
    versions at any batch size."""

    versions: int
    augment: object  # augment.AugmentConfig
    seed: int

    def describe(self):
        return (
            f"test-time augmentation: the image and {self.versions - 1} version(s) with flip "
            f"{self.augment.flip}, shift up to {self.augment.translation:.0%}, probabilities averaged"
        )


def test_time_augmentation(trained, versions, seed):
    """The TestTimeAugmentation of `versions` for a trained model, or None
    for 1 (plain prediction). The versions are flipped and shifted as the
    model's own training run augmented its images (its --flip and
    --translation; no rotation, zoom or contrast change), so they are
    transformations it learned to ignore. Raises UserError for a model
    trained without augmentation."""
    if versions == 1:
        return None
    if trained.sidecar is not None:
        raise UserError(
            f"--tta averages over flips and shifts the model learned to ignore; how the model {trained.path} "
            f"from another framework was trained is unknown, so leave --tta out. Received: tta={versions}"
        )
    options = trained.run_config.get("options") or {}
    flip = options.get("flip", config.DEFAULTS.flip)
    translation = float(options.get("translation", config.DEFAULTS.translation))
    if not options.get("augment", config.DEFAULTS.augment) or (flip == "none" and translation == 0):
        raise UserError(
            "--tta needs a model trained with flips or shifts (--augment 1): the model "
            f"{trained.path} never saw augmented images, so their predictions would not "
            f"average to a better one. Received: tta={versions}"
        )
    strengths = augment.AugmentConfig(flip=flip, rotation=0.0, zoom=0.0, translation=translation, contrast=0.0)
    return TestTimeAugmentation(versions=versions, augment=strengths, seed=seed)




def predict_files(model, paths, image_size, batch_size, readers=None, tta=None):
    """Class probabilities for image files, skipping unreadable ones.

    Returns (positions of the readable files in `paths`, probabilities
    (readable, classes) float64, list of unreadable paths). Images are read
    by data_loader.prediction_dataset, the one decode function of training
    (custom `readers` included). `tta` (a TestTimeAugmentation, or None)
    averages each image's probabilities over augmented versions; the model
    then sees about `batch_size` images per step.
    """
    if not paths:
        return np.zeros(0, int), np.zeros((0, model.output_shape[-1])), []
    versions = 1 if tta is None else tta.versions
    dataset = data_loader.prediction_dataset(
        paths, image_size, batch_size, readers, versions=versions,
        strengths=None if tta is None else tta.augment, seed=0 if tta is None else tta.seed,
    )
    probabilities, positions = predict_batches(model, dataset, versions)
    unreadable = sorted(set(range(len(paths))) - set(positions.tolist()))
    return positions, probabilities, [paths[i] for i in unreadable]


def predict_images(model, images, batch_size):
    """Class probabilities (N, classes) float64 of uint8 images (N, H, W, 3)
    already decoded (image_io.load_images), `batch_size` a call, by the one
    prediction loop (predict_batches): no tf.data pipeline, and the
    model's predict function traced once for any batch size, so a caller
    that predicts a few images again and again (the web page) traces
    nothing new per call."""
    batches = (
        (images[start:start + batch_size], np.arange(start, min(start + batch_size, len(images))))
        for start in range(0, len(images), batch_size)
    )
    probabilities, _ = predict_batches(model, batches)
    return probabilities


def evaluate_images(trained, images, batch_size, readers=None, tta=None):
    """Predicts every readable image of a LabelledImages (averaged over
    test-time versions with a TestTimeAugmentation `tta`); returns an
    Evaluation. Raises UserError when none can be read."""
    positions, probabilities, unreadable = predict_files(
        trained.model, images.paths, trained.image_size, batch_size, readers, tta
    )
    if not len(positions):
        raise UserError(f"none of the {len(images.paths)} images could be read")
    return metrics.Evaluation(
        paths=tuple(images.paths[i] for i in positions),
        true_labels=np.asarray(images.labels)[positions],
        probabilities=probabilities,
        class_names=tuple(trained.class_names),
        image_size=trained.image_size,
        description=images.description,
        skipped=tuple(images.skipped)
        + tuple(audit.SkippedFile(path, "not a readable image") for path in unreadable),
        readers=readers,
        temperature=trained.temperature,
        tta=1 if tta is None else tta.versions,
        task=trained.task,
        thresholds=trained.thresholds,
    )


def report_skipped(skipped, limit=10):
    """Prints the skipped files (audit.SkippedFile, the first `limit`)."""
    if not skipped:
        return
    print(f"    skipped {len(skipped)} file(s) that could not be read:")
    for item in skipped[:limit]:
        print(f"      {item}")
    if len(skipped) > limit:
        print(f"      ... and {len(skipped) - limit} more")
