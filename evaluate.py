"""Evaluate a trained model on a labelled folder of images.

    python evaluate.py --image_dir DIR --rows 2 --cols 5
    python evaluate.py --image_dir OTHER_DIR --model PATH/best_model.keras

On the folder the model was trained on, the split saved in
split_manifest.csv is evaluated (--split, default test), so the numbers
match main.py's. On any other folder every image is, its class folders
matched by name to the model's class index. Writes
RESULTS_DIR/metrics/<stamp>/metrics.json and the confusion matrix,
classification report, ROC, reliability diagram, prediction gallery and
top-losses figures, one timestamp for the whole invocation. --tta N
averages each image's probabilities over N test-time versions.

    python evaluate.py --image_dir DIR --compare [RUN ...]

compares trained runs on the same test images instead (compare.py).

Also the library of evaluation, as timm's validate.py is: loading a model
with its companions (`load_trained_model`), the one prediction loop
(`predict_batches`, test-time augmentation included), and the metrics
(accuracy, loss, per-class report, confusion matrix, ROC, calibration)
that main.py's test stage and predict.py use too.
"""

import dataclasses
import os
import sys

import numpy as np

import artifacts
import augment
import calibration
import config
import data_loader
import export
import image_io
import visualize

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
        raise config.UserError(
            f"cannot use the model {model_path}: {error} (main.py saves the companions next "
            "to the model; keep them together)"
        ) from None
    index_file = os.path.join(folder, artifacts.CLASS_INDEX_FILE)
    config_file = os.path.join(folder, artifacts.RUN_CONFIG_FILE)
    saved_names = run_config.get("class_names")
    if saved_names is not None and tuple(saved_names) != class_names:
        raise config.UserError(
            f"{index_file} and {config_file} name different classes: they come from "
            "different runs"
        )
    # The hash is of the .keras file; exports are checked by their parity
    # report instead (export.py).
    expected = run_config.get("model_sha256")
    if expected and os.path.isfile(model_path) and model_path.endswith(".keras") \
            and artifacts.file_sha256(model_path) != expected:
        raise config.UserError(
            f"the model {model_path} is not the one its companions were saved with "
            f"({config_file}, run {run_config.get('run', '?')}, records another file hash): "
            "a model and companions of different runs"
        )
    return folder, class_names, run_config


def load_trained_model(model_path, image_size=None):
    """Loads the model at `model_path` with its class index and run config
    from beside it (`read_companions`). A .keras file loads into Keras; an
    export (.onnx, .tflite, a SavedModel folder) into an export runner,
    used the same way. `image_size`, when given, must be the model's.
    Raises UserError when something is missing or does not match."""
    if not os.path.exists(model_path):
        raise config.UserError(
            f"no model at {model_path}: train one first with main.py, or pass --model PATH"
        )
    if export.model_format(model_path) == "keras" and not model_path.endswith(".keras"):
        raise config.UserError(
            "model must be a .keras file saved by main.py or an export of one (.onnx, "
            f".tflite, a SavedModel folder). Received: model={model_path}"
        )
    folder, class_names, run_config = read_companions(model_path)
    model = load_model_file(model_path)
    outputs = model.output_shape[-1]
    if outputs != len(class_names):
        raise config.UserError(
            f"{os.path.join(folder, artifacts.CLASS_INDEX_FILE)} names {len(class_names)} "
            f"classes but the model {model_path} predicts {outputs}: they come from different runs"
        )
    model_size = int(run_config.get("image_size") or model.input_shape[1])
    if model.input_shape[1] != model_size:
        raise config.UserError(
            f"the model {model_path} takes {model.input_shape[1]} px images but its "
            f"{artifacts.RUN_CONFIG_FILE} says {model_size}: they come from different runs"
        )
    if image_size not in (None, model_size):
        raise config.UserError(
            f"image_size is fixed by the model ({model_size}); leave it out. "
            f"Received: image_size={image_size}"
        )
    return TrainedModel(model, model_path, class_names, model_size, run_config, folder)


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
        raise config.UserError(f"could not load the model {model_path}: {reason}") from None


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


def manifest_images(image_dir, split, trained):
    """(absolute paths, labels) of one split ("all": every split) of the
    split_manifest.csv saved with the model."""
    try:
        rows = artifacts.read_manifest(trained.folder)
    except artifacts.CompanionError as error:
        raise config.UserError(f"cannot use the saved split: {error}") from None
    class_ids = {name: number for number, name in enumerate(trained.class_names)}
    chosen = [row for row in rows if split == "all" or row.split == split]
    paths = [os.path.join(os.path.abspath(image_dir), row.path) for row in chosen]
    labels = np.array([class_ids[row.label] for row in chosen], dtype=np.int32)
    return paths, labels


def folder_images(image_dir, class_names, labels_csv=None, readers=None):
    """Every image of a labelled folder (class folders, split folders of
    class folders, or --labels_csv), listed the way main.py lists them
    (data_loader.scan_dataset).

    Returns (absolute paths, labels, skipped). Raises UserError when there
    is no image or naming classes the model does not know.
    """
    import audit

    root = os.path.abspath(image_dir)
    scan = data_loader.scan_dataset(root, labels_csv, readers)
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
        raise config.UserError(
            f"no labelled images in {image_dir}: expected class folders or --labels_csv"
        )
    unknown = sorted({candidate.label for candidate in scan.candidates} - set(class_names))
    if unknown:
        known = ", ".join(class_names[:20]) + (" …" if len(class_names) > 20 else "")
        raise config.UserError(
            f"class(es) not in the model's class index: {', '.join(unknown)} "
            f"(the model knows: {known})"
        )
    class_ids = {name: number for number, name in enumerate(class_names)}
    paths = [os.path.join(root, candidate.path) for candidate in scan.candidates]
    labels = np.array([class_ids[candidate.label] for candidate in scan.candidates], dtype=np.int32)
    return paths, labels, tuple(scan.skipped)


def labelled_images(image_dir, trained, split, labels_csv=None, classes=None, readers=None):
    """The images evaluate.py and predict.py --image_dir use: the saved
    `split` ("all": every split) of the folder the model was trained on, or
    every image of any other folder; `classes` keeps only those classes.
    Returns LabelledImages; raises UserError."""
    if not os.path.isdir(image_dir):
        raise config.UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    skipped = ()
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
        paths, labels, skipped = folder_images(image_dir, trained.class_names, labels_csv, readers)
        description = "all images"
    if classes:
        unknown = [name for name in classes if name not in trained.class_names]
        if unknown:
            raise config.UserError(
                f"class(es) not in the model's class index: {', '.join(unknown)}"
            )
        wanted = {trained.class_names.index(name) for name in classes}
        keep = [number for number, label in enumerate(labels) if label in wanted]
        paths, labels = [paths[i] for i in keep], labels[keep]
        description += f", classes {', '.join(classes)}"
    if not paths:
        raise config.UserError(f"no images in the {description} of {image_dir}")
    return LabelledImages(paths, labels, description, skipped)


# ---------------------------------------------------------------- prediction


def predict_batches(model, dataset, versions=1):
    """The one prediction loop: class probabilities for a dataset of
    (uint8 images, tags) batches. Tags ride along (true labels, or file
    positions) so the caller knows what each row is. With `versions` > 1
    each image comes as a stack of versions, (batch, versions, H, W, 3),
    and its probabilities are their mean (test-time augmentation). Returns
    (probabilities (N, classes) float64, tags (N,))."""
    probabilities, tags = [], []
    for images, batch_tags in dataset:
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


def file_batches(paths, image_size, batch_size, readers=None, tags=None):
    """A dataset of (uint8 images, tags) batches of image files, read in
    parallel by image_io.load_image, the one decode function of training
    (custom `readers` included). `tags` ride along (default: each file's
    position in `paths`); files that cannot be read are dropped."""
    import tensorflow as tf

    tags = tf.range(len(paths)) if tags is None else tf.constant(np.asarray(tags))
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(list(paths), tf.string), tags))
    dataset = dataset.map(
        lambda path, tag: (image_io.load_image(path, image_size, readers=readers), tag),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # A file that cannot be read or decoded is dropped, not fatal: the
    # tags that come through tell which ones were.
    return dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
    options = trained.run_config.get("options") or {}
    flip = options.get("flip", config.DEFAULTS.flip)
    translation = float(options.get("translation", config.DEFAULTS.translation))
    if not options.get("augment", config.DEFAULTS.augment) or (flip == "none" and translation == 0):
        raise config.UserError(
            "--tta needs a model trained with flips or shifts (--augment 1): the model "
            f"{trained.path} never saw augmented images, so their predictions would not "
            f"average to a better one. Received: tta={versions}"
        )
    strengths = augment.AugmentConfig(flip=flip, rotation=0.0, zoom=0.0, translation=translation, contrast=0.0)
    return TestTimeAugmentation(versions=versions, augment=strengths, seed=seed)


def _tta_versions(image, position, tta):
    """(versions, H, W, 3) uint8: the image, then tta.versions - 1 augmented
    copies, seeded by tta.seed and the image's position."""
    import tensorflow as tf

    copies = tf.repeat(image[None], tta.versions - 1, axis=0)
    seed = tf.stack([tf.constant(tta.seed, tf.int64), tf.cast(position, tf.int64)])
    augmented = augment.augment_batch(copies, seed, tta.augment)
    return tf.concat([image[None], augmented], axis=0)


def predict_files(model, paths, image_size, batch_size, readers=None, tta=None):
    """Class probabilities for image files, skipping unreadable ones.

    Returns (positions of the readable files in `paths`, probabilities
    (readable, classes) float64, list of unreadable paths). Images are read
    in parallel by image_io.load_image, the one decode function of training
    (custom `readers` included). `tta` (a TestTimeAugmentation, or None)
    averages each image's probabilities over augmented versions; the model
    then sees about `batch_size` images per step.
    """
    if not paths:
        return np.zeros(0, int), np.zeros((0, model.output_shape[-1])), []
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths), tf.string), tf.range(len(paths)))
    )
    dataset = dataset.map(
        lambda path, position: (
            image_io.load_image(path, image_size, readers=readers),
            position,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # A file that cannot be read or decoded is dropped, not fatal: the
    # positions that come through tell which ones were.
    dataset = dataset.ignore_errors()
    versions = 1
    if tta is not None:
        versions = tta.versions
        dataset = dataset.map(
            lambda image, position: (_tta_versions(image, position, tta), position),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        batch_size = max(1, batch_size // versions)
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    probabilities, positions = predict_batches(model, dataset, versions)
    unreadable = sorted(set(range(len(paths))) - set(positions.tolist()))
    return positions, probabilities, [paths[i] for i in unreadable]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Predictions on labelled images (unreadable files left out), and the
    metrics and figures' data computed from them."""

    paths: tuple
    true_labels: np.ndarray
    probabilities: np.ndarray
    class_names: tuple
    image_size: int
    description: str
    skipped: tuple = ()  # audit.SkippedFile
    readers: dict | None = None
    temperature: float | None = None  # the model's (None: it has no temperature layer)
    tta: int = 1  # versions averaged per image (1: no test-time augmentation)

    @property
    def predicted(self):
        return self.probabilities.argmax(axis=1)

    def metrics(self):
        """evaluation_metrics, the calibration summary and the number of
        test-time versions: what metrics.json holds."""
        return {
            **evaluation_metrics(self.true_labels, self.probabilities, self.class_names),
            "calibration": self.calibration(),
            "tta": self.tta,
        }

    def calibration(self):
        return calibration.calibration_summary(
            self.true_labels, self.probabilities, self.temperature, averaged=self.tta > 1
        )

    def reliability(self):
        return calibration.reliability_bins(self.true_labels, self.probabilities)

    def top_losses(self, count=None):
        """Positions of the most confidently wrong images, worst first."""
        return calibration.top_losses(self.true_labels, self.probabilities, count)

    def most_confused(self, limit=10):
        return calibration.most_confused(self.confusion_matrix(), self.class_names, limit)

    def report(self):
        return classification_metrics(self.true_labels, self.probabilities, self.class_names)

    def report_text(self):
        return classification_report_text(self.true_labels, self.probabilities, self.class_names)

    def confusion_matrix(self):
        return confusion_counts(self.true_labels, self.probabilities, len(self.class_names))

    def roc(self):
        return roc_analysis(self.true_labels, self.probabilities, self.class_names)


def evaluate_images(trained, images, batch_size, readers=None, tta=None):
    """Predicts every readable image of a LabelledImages (averaged over
    test-time versions with a TestTimeAugmentation `tta`); returns an
    Evaluation. Raises UserError when none can be read."""
    import audit

    positions, probabilities, unreadable = predict_files(
        trained.model, images.paths, trained.image_size, batch_size, readers, tta
    )
    if not len(positions):
        raise config.UserError(f"none of the {len(images.paths)} images could be read")
    return Evaluation(
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


# ---------------------------------------------------------------- metrics


def classification_metrics(true_labels, probabilities, class_names):
    """Accuracy, cross-entropy loss and scikit-learn's per-class report.

    Returns a JSON-ready dict: accuracy, loss, num_samples, per_class
    {name: precision/recall/f1/support}, macro_avg and weighted_avg.
    """
    from sklearn.metrics import classification_report

    predicted = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(true_labels)), true_labels]
    report = classification_report(
        true_labels,
        predicted,
        labels=np.arange(len(class_names)),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )

    def rename(row):
        return {
            "precision": row["precision"],
            "recall": row["recall"],
            "f1": row["f1-score"],
            "support": int(row["support"]),
        }

    return {
        "accuracy": float(np.mean(predicted == true_labels)),
        # The same clipping as Keras' cross-entropy.
        "loss": float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0)))),
        "num_samples": int(len(true_labels)),
        "per_class": {name: rename(report[name]) for name in class_names},
        "macro_avg": rename(report["macro avg"]),
        "weighted_avg": rename(report["weighted avg"]),
    }


def classification_report_text(true_labels, probabilities, class_names):
    """scikit-learn's text classification report (4 digits), every class
    listed even when absent from the labels."""
    from sklearn.metrics import classification_report

    return classification_report(
        true_labels,
        probabilities.argmax(axis=1),
        labels=np.arange(len(class_names)),
        target_names=list(class_names),
        digits=4,
        zero_division=0,
    )


def confusion_counts(true_labels, probabilities, num_classes):
    """(num_classes, num_classes) int array: rows true, columns predicted."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(
        true_labels, probabilities.argmax(axis=1), labels=np.arange(num_classes)
    )


def roc_analysis(true_labels, probabilities, class_names):
    """One-vs-rest ROC curves and their AUCs.

    Returns {"per_class": {name: {"fpr", "tpr", "auc"} or None}, "micro",
    "macro" (the same form, or None), "absent": [names], "binary": bool}.
    A class with no image in `true_labels` (or with every image) has no ROC:
    its entry is None and it is listed in "absent", never an error. Macro AUC
    is the mean of the per-class AUCs (scikit-learn's definition); its curve
    is the mean TPR on the union of the per-class FPR points.
    """
    from sklearn.metrics import auc, roc_curve

    true_labels = np.asarray(true_labels)
    num_classes = len(class_names)
    per_class, absent = {}, []
    for number, name in enumerate(class_names):
        positives = true_labels == number
        if positives.all() or not positives.any():
            per_class[name] = None
            absent.append(name)
            continue
        fpr, tpr, _ = roc_curve(positives, probabilities[:, number])
        per_class[name] = {"fpr": fpr, "tpr": tpr, "auc": float(auc(fpr, tpr))}
    curves = [curve for curve in per_class.values() if curve is not None]
    micro = macro = None
    if num_classes > 2 and len(true_labels):
        one_hot = np.eye(num_classes, dtype=bool)[true_labels]
        fpr, tpr, _ = roc_curve(one_hot.ravel(), probabilities.ravel())
        micro = {"fpr": fpr, "tpr": tpr, "auc": float(auc(fpr, tpr))}
    if num_classes > 2 and curves:
        grid = np.unique(np.concatenate([curve["fpr"] for curve in curves]))
        mean_tpr = np.mean([np.interp(grid, curve["fpr"], curve["tpr"]) for curve in curves], axis=0)
        macro = {
            "fpr": grid,
            "tpr": mean_tpr,
            "auc": float(np.mean([curve["auc"] for curve in curves])),
        }
    return {
        "per_class": per_class,
        "micro": micro,
        "macro": macro,
        "absent": absent,
        "binary": num_classes == 2,
    }


def evaluation_metrics(true_labels, probabilities, class_names):
    """`classification_metrics` plus ROC AUC (per class, micro, macro) and
    the confusion matrix, JSON-ready (null for an AUC that is undefined)."""
    metrics = classification_metrics(true_labels, probabilities, class_names)
    roc = roc_analysis(true_labels, probabilities, class_names)

    def area(curve):
        return None if curve is None else curve["auc"]

    metrics["roc_auc"] = {
        "per_class": {name: area(curve) for name, curve in roc["per_class"].items()},
        "micro": area(roc["micro"]),
        "macro": area(roc["macro"]),
        "absent_classes": roc["absent"],
    }
    metrics["confusion_matrix"] = {
        "rows": "true class",
        "columns": "predicted class",
        "labels": list(class_names),
        "counts": confusion_counts(true_labels, probabilities, len(class_names)).tolist(),
    }
    return metrics


def calibration_line(summary):
    """'ECE 3.1% (12.4% before temperature scaling, T = 1.84), Brier 0.211,
    NLL 0.402' for the printed summary."""
    temperature = summary["temperature"]
    if temperature is None:
        scaling = "no temperature layer: a model saved before calibration existed"
    elif temperature == 1.0:
        scaling = "not calibrated, T = 1"
    elif summary["ece_uncalibrated"] is None:
        scaling = f"T = {temperature:.3g}"
    else:
        scaling = f"{summary['ece_uncalibrated']:.1%} before temperature scaling, T = {temperature:.3g}"
    return f"ECE {summary['ece']:.1%} ({scaling}), Brier {summary['brier']:.3f}, NLL {summary['nll']:.3f}"


def print_most_confused(pairs):
    """The most confused class pairs, as main.py and evaluate.py print them."""
    print("    most confused (true -> predicted, images):")
    for line in calibration.confused_lines(pairs):
        print(f"      {line}")


def format_auc(roc_auc):
    """The macro AUC, or the binary one, as text."""
    value = roc_auc["macro"]
    if value is None:
        values = [auc for auc in roc_auc["per_class"].values() if auc is not None]
        value = values[0] if values else None
    return "n/a" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------- command line


def render_evaluation(evaluation, results_dir, stamp, rows, cols, gallery, seed):
    """The confusion matrices, report, ROC, reliability diagram, gallery and
    top losses under RESULTS_DIR/<category>/<stamp>/; returns their paths
    in stage order."""

    def folder(category):
        return os.path.join(results_dir, category, stamp)

    figures = visualize.render_confusion(evaluation, folder("confusion_matrix"))
    figures.append(visualize.render_report(evaluation, folder("classification_report")))
    figures.append(visualize.render_roc(evaluation, folder("roc_auc")))
    figures.append(visualize.render_reliability(evaluation, folder("calibration")))
    path, _ = visualize.render_gallery(
        evaluation, rows, cols, gallery, seed, folder("prediction_gallery")
    )
    figures.append(path)
    figures.append(visualize.render_top_losses(evaluation, rows, cols, folder("top_losses")))
    for path in figures:
        print(f"    figure: {path}")
    return figures


def build_parser():
    parser = config.ArgumentParser(
        description="Evaluate a trained classifier on a labelled folder of images."
    )
    config.add_shared_arguments(parser)
    config.add_model_argument(parser)
    config.add_figure_arguments(parser)
    config.add_export_arguments(parser)
    config.add_tta_argument(parser)
    parser.add_argument(
        "--compare",
        nargs="*",
        metavar="RUN",
        default=config.DEFAULTS.compare,
        help="Compare trained runs on the same test images (those in every run's test split) "
        "instead of evaluating one model: every finished run trained on --image_dir, or the "
        "RUN ids given; writes RESULTS_DIR/model_comparison/<stamp>/",
    )
    # The model fixes the image size; an explicit different one is a mistake.
    parser.set_defaults(image_size=None)
    return parser


def parse_arguments(argv):
    """The options as a Config. Raises UserError on a bad value."""
    args = build_parser().parse_args(argv)
    config.validate_figure_args(args)
    config.validate_export_args(args)
    config.validate_tta_args(args)
    if args.batch_size < 1:
        raise config.UserError(f"batch_size must be at least 1. Received: batch_size={args.batch_size}")
    if args.export and args.model and export.model_format(args.model) != "keras":
        raise config.UserError(
            f"--export exports a Keras model: pass its .keras file. Received: model={args.model}"
        )
    return config.config_from_args(args)


def export_evaluated(trained, evaluation, options, readers=None):
    """--export: exports the evaluated Keras model into its folder and checks
    each export on the same images (export.export_and_check). Returns the
    report and its path."""
    calibration = None
    if options.quantize == "int8":
        paths = export.manifest_training_paths(trained.folder, trained.run_config.get("image_dir"))
        chosen = export.calibration_paths(paths, seed=options.seed)
        calibration = export.load_images(chosen, trained.image_size, readers)
        print(f"    int8 calibration on {len(calibration)} training images")
    dataset = file_batches(
        evaluation.paths, trained.image_size, options.batch_size, readers, tags=evaluation.true_labels
    )
    report = export.export_and_check(
        trained.model, trained.path, options.export, dataset, options.quantize, calibration,
        description=evaluation.description,
    )
    report_path = export.report_path(trained.path)
    for line in export.report_lines(report):
        print(f"    {line}")
    print(f"    export report: {report_path}")
    return report, report_path


def run_comparison(options):
    """--compare: the finished runs on --image_dir (or the chosen ones)
    scored on their common test images (compare.py). Returns the paths of
    the CSV, markdown table and chart."""
    import compare

    for name, given in (("model", options.model), ("export", options.export), ("tta", options.tta != 1)):
        if given:
            raise config.UserError(
                f"--compare scores each run's own best_model.keras as trained; leave --{name} out. "
                f"Received: {name}={getattr(options, name)}"
            )
    image_dir = options.image_dir
    if image_dir is None:
        if not options.compare:
            raise config.UserError("--compare needs --image_dir (the folder the runs were trained on) or run ids")
        first = os.path.join(artifacts.runs_folder(options.artifacts_dir), options.compare[0])
        try:
            image_dir = artifacts.read_run_config(first).get("image_dir")
        except artifacts.CompanionError:
            image_dir = None
    folders = compare.finished_runs(options.artifacts_dir, image_dir, options.compare)
    if not image_dir:
        raise config.UserError(f"run {options.compare[0]}'s run_config.json names no image folder: pass --image_dir")
    if not os.path.isdir(image_dir):
        raise config.UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    config.check_outside("results_dir", options.results_dir, image_dir)
    runs = ", ".join(os.path.basename(folder) for folder in folders)
    with config.stage(f"Comparing {len(folders)} runs on the same test images of {image_dir} ({runs})"):
        _, _, paths = compare.compare_runs(
            folders, image_dir, options.results_dir, options.batch_size,
            readers=config.load_readers(options.reader),
            published=artifacts.published_run(options.artifacts_dir),
        )
    with config.stage("Showing the comparison"):
        visualize.show_figures(paths[-1:], options.show)
    return paths


def run_evaluation(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options = parse_arguments(argv)
    if options.compare is not None:
        return run_comparison(options)
    readers = config.load_readers(options.reader)
    trained = load_trained_model(
        artifacts.model_path(options.artifacts_dir, options.model), image_size=options.image_size
    )
    image_dir = options.image_dir or trained.run_config.get("image_dir")
    if not image_dir:
        raise config.UserError("no --image_dir given and the model's run_config.json names none")
    config.check_outside("results_dir", options.results_dir, image_dir)
    tta = test_time_augmentation(trained, options.tta, options.seed)
    stamp = artifacts.new_run_stamp(options.results_dir)
    with config.stage(f"Evaluating {trained.path} on {image_dir}"):
        images = labelled_images(
            image_dir, trained, options.split, options.labels_csv, options.classes, readers
        )
        if tta:
            print(f"    {tta.describe()}")
        evaluation = evaluate_images(trained, images, options.batch_size, readers, tta)
        report_skipped(evaluation.skipped)
        metrics = evaluation.metrics()
        metrics_path = artifacts.write_json(
            os.path.join(options.results_dir, "metrics", stamp, "metrics.json"),
            {
                "model": trained.path,
                "image_dir": os.path.abspath(image_dir),
                "evaluated": evaluation.description,
                "skipped": [str(item) for item in evaluation.skipped],
                **metrics,
                "tta_augmentation": dataclasses.asdict(tta.augment) if tta else None,
            },
        )
        print(
            f"    accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
            f"macro ROC AUC {format_auc(metrics['roc_auc'])} on {metrics['num_samples']} "
            f"images ({evaluation.description})"
        )
        print(f"    {calibration_line(metrics['calibration'])}")
        print_most_confused(evaluation.most_confused(limit=5))
        print(f"    metrics: {metrics_path}")
    with config.stage("Drawing the figures"):
        figures = render_evaluation(
            evaluation, options.results_dir, stamp,
            options.rows, options.cols, options.gallery, options.seed,
        )
    report = None
    if options.export:
        with config.stage("Exporting the model and checking each export"):
            report, report_path = export_evaluated(trained, evaluation, options, readers)
    with config.stage("Showing the figures"):
        visualize.show_figures(figures, options.show)
    if report and not report["passed"]:
        raise config.CheckFailed(export.failure_message(report, report_path))
    return figures


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return config.run_cli(run_evaluation, argv)


if __name__ == "__main__":
    sys.exit(main())
