"""Evaluate a trained model on a labelled folder of images.

    python evaluate.py --image_dir DIR --rows 2 --cols 5
    python evaluate.py --image_dir OTHER_DIR --model PATH/best_model.keras

On the folder the model was trained on, the split saved in
split_manifest.csv is evaluated (--split, default test), so the numbers
match main.py's. On any other folder every image is, its class folders
matched by name to the model's class index. Writes
RESULTS_DIR/metrics/<stamp>/metrics.json and the confusion matrix,
classification report, ROC and prediction gallery figures, one timestamp
for the whole invocation.
"""

import argparse
import csv
import dataclasses
import os
import sys

import numpy as np

import config
import data_loader
import train_utils
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
    artifacts_dir: str


def find_artifacts_dir(model_file, artifacts_dir):
    """The folder holding class_index.json: --artifacts_dir, or the model's
    own folder when the model was moved with its files."""
    for folder in (artifacts_dir, os.path.dirname(os.path.abspath(model_file))):
        if os.path.isfile(os.path.join(folder, "class_index.json")):
            return folder
    raise config.UserError(
        f"no class_index.json in {artifacts_dir} or beside {model_file}: main.py "
        "saves it next to the model; pass the --artifacts_dir it used"
    )


def load_trained_model(args):
    """Loads --model (default ARTIFACTS_DIR/best_model.keras) with its class
    index and run config. Raises UserError when something is missing."""
    import keras

    path = config.model_path(args)
    if not os.path.isfile(path):
        raise config.UserError(
            f"no model at {path}: train one first with main.py, or pass --model PATH"
        )
    folder = find_artifacts_dir(path, args.artifacts_dir)
    class_index = train_utils.read_json(os.path.join(folder, "class_index.json"))
    class_names = tuple(class_index[str(number)] for number in range(len(class_index)))
    run_config_path = os.path.join(folder, "run_config.json")
    run_config = train_utils.read_json(run_config_path) if os.path.isfile(run_config_path) else {}
    try:
        # safe_mode (the default) refuses to deserialize arbitrary code.
        model = keras.models.load_model(path)
    except (ValueError, OSError) as error:
        reason = " ".join(str(error).split())[:200]
        raise config.UserError(f"could not load the model {path}: {reason}") from None
    outputs = model.output_shape[-1]
    if outputs != len(class_names):
        raise config.UserError(
            f"{folder}/class_index.json names {len(class_names)} classes but the model "
            f"{path} predicts {outputs}: they come from different runs"
        )
    image_size = int(run_config.get("image_size") or model.input_shape[1])
    if getattr(args, "image_size", None) not in (None, image_size):
        raise config.UserError(
            f"image_size is fixed by the model ({image_size}); leave it out. "
            f"Received: image_size={args.image_size}"
        )
    return TrainedModel(model, path, class_names, image_size, run_config, folder)


# ---------------------------------------------------------------- images


def is_training_folder(image_dir, trained):
    trained_dir = trained.run_config.get("image_dir")
    return bool(trained_dir) and os.path.realpath(image_dir) == os.path.realpath(trained_dir)


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """Images to evaluate: absolute paths, class numbers of the model's
    class index, what they are ("test split", "all images") and the files
    left out while listing them ("path (reason)")."""

    paths: list
    labels: np.ndarray
    description: str
    skipped: tuple = ()


def manifest_images(image_dir, split, trained):
    """(absolute paths, labels) of one split ("all": every split) of the
    split_manifest.csv saved with the model."""
    path = os.path.join(trained.artifacts_dir, "split_manifest.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    class_ids = {name: number for number, name in enumerate(trained.class_names)}
    chosen = [row for row in rows if split == "all" or row["split"] == split]
    paths = [os.path.join(os.path.abspath(image_dir), row["path"]) for row in chosen]
    labels = np.array([class_ids[row["class"]] for row in chosen], dtype=np.int32)
    return paths, labels


def folder_images(image_dir, class_names, labels_csv=None, readers=None):
    """Every image of a labelled folder (class folders, split folders of
    class folders, or --labels_csv), found the way main.py finds them.

    Returns (absolute paths, labels, skipped). Raises UserError when there
    is no image or naming classes the model does not know.
    """
    root = os.path.abspath(image_dir)
    extensions = tuple(set(data_loader.IMAGE_EXTENSIONS) | set(readers or {}))
    if labels_csv:
        scan = data_loader.scan_csv(root, labels_csv)
    else:
        scan = data_loader.scan_folder(root, extensions)
    for warning in scan.warnings:
        print(f"    warning: {warning}")
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
    skipped = tuple(f"{path} ({reason})" for path, reason, _ in scan.skipped)
    return paths, labels, skipped


def labelled_images(args, trained):
    """The images evaluate.py and predict.py --image_dir use: the saved
    split (--split) of the folder the model was trained on, or every image
    of any other folder; --classes keeps only those classes. Returns
    LabelledImages; raises UserError."""
    image_dir = args.image_dir
    if not os.path.isdir(image_dir):
        raise config.UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    manifest = os.path.join(trained.artifacts_dir, "split_manifest.csv")
    skipped = ()
    if is_training_folder(image_dir, trained) and os.path.isfile(manifest) and not args.labels_csv:
        paths, labels = manifest_images(image_dir, args.split, trained)
        description = "all splits" if args.split == "all" else f"{args.split} split"
    else:
        readers = data_loader.load_readers(args.reader)
        paths, labels, skipped = folder_images(image_dir, trained.class_names, args.labels_csv, readers)
        description = "all images"
    if args.classes:
        unknown = [name for name in args.classes if name not in trained.class_names]
        if unknown:
            raise config.UserError(
                f"class(es) not in the model's class index: {', '.join(unknown)}"
            )
        wanted = {trained.class_names.index(name) for name in args.classes}
        keep = [number for number, label in enumerate(labels) if label in wanted]
        paths, labels = [paths[i] for i in keep], labels[keep]
        description += f", classes {', '.join(args.classes)}"
    if not paths:
        raise config.UserError(f"no images in the {description} of {image_dir}")
    return LabelledImages(paths, labels, description, skipped)


def predict_files(model, paths, image_size, batch_size, readers=None):
    """Class probabilities for image files, skipping unreadable ones.

    Returns (positions of the readable files in `paths`, probabilities
    (readable, classes) float64, list of unreadable paths). Images are read
    in parallel by data_loader.load_image, the one decode function of
    training (custom `readers` included).
    """
    import tensorflow as tf

    classes = model.output_shape[-1]
    if not paths:
        return np.zeros(0, int), np.zeros((0, classes)), []
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(list(paths), tf.string), tf.range(len(paths)))
    )
    dataset = dataset.map(
        lambda path, position: (
            data_loader.load_image(path, image_size, readers=readers),
            position,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # A file that cannot be read or decoded is dropped, not fatal: the
    # positions that come through tell which ones were.
    dataset = dataset.ignore_errors().batch(batch_size).prefetch(tf.data.AUTOTUNE)
    positions, probabilities = [], []
    for images, batch_positions in dataset:
        probabilities.append(np.asarray(model.predict_on_batch(images), dtype=np.float64))
        positions.append(batch_positions.numpy())
    if not positions:
        return np.zeros(0, int), np.zeros((0, classes)), list(paths)
    positions = np.concatenate(positions)
    unreadable = sorted(set(range(len(paths))) - set(positions.tolist()))
    return positions, np.concatenate(probabilities), [paths[i] for i in unreadable]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Predictions on labelled images (unreadable files left out)."""

    paths: tuple
    true_labels: np.ndarray
    probabilities: np.ndarray
    class_names: tuple
    image_size: int
    description: str
    skipped: tuple = ()
    readers: dict | None = None

    @property
    def predicted(self):
        return self.probabilities.argmax(axis=1)


def evaluate_images(trained, images, batch_size, readers=None):
    """Predicts every readable image of a LabelledImages; returns an
    Evaluation. Raises UserError when none can be read."""
    positions, probabilities, unreadable = predict_files(
        trained.model, images.paths, trained.image_size, batch_size, readers
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
        + tuple(f"{path} (not a readable image)" for path in unreadable),
        readers=readers,
    )


def report_skipped(skipped, limit=10):
    """Prints the skipped files (the first `limit` of them)."""
    if not skipped:
        return
    print(f"    skipped {len(skipped)} file(s) that could not be read:")
    for path in skipped[:limit]:
        print(f"      {path}")
    if len(skipped) > limit:
        print(f"      ... and {len(skipped) - limit} more")


# ---------------------------------------------------------------- figures


def gallery_indices(true_labels, predicted, count, mode, seed):
    """Which images the gallery shows, at most `count`.

    mixed: mistakes first, then correct ones, about half each when there
    are enough of both; misclassified: mistakes only; random: any. Within
    each group the order is a seeded shuffle, so the gallery is not just the
    first class. With no labels (true_labels None) mixed keeps the given
    order.
    """
    rng = np.random.default_rng(seed)
    total = len(predicted)
    if true_labels is None:
        order = rng.permutation(total) if mode == "random" else np.arange(total)
        return order[:count].tolist()
    wrong = np.flatnonzero(np.asarray(true_labels) != np.asarray(predicted))
    right = np.flatnonzero(np.asarray(true_labels) == np.asarray(predicted))
    if mode == "random":
        order = rng.permutation(total)
    elif mode == "misclassified":
        order = rng.permutation(wrong)
    else:
        num_wrong = min(len(wrong), max(-(-count // 2), count - len(right)))
        num_right = min(len(right), count - num_wrong)
        order = np.concatenate([rng.permutation(wrong)[:num_wrong], rng.permutation(right)[:num_right]])
    return order[:count].astype(int).tolist()


def gallery_items(
    paths, true_labels, probabilities, class_names, image_size, indices, captions=None, readers=None
):
    """GalleryItems for the chosen images, read the way training reads them
    (uint8, original colours)."""
    items = []
    for index in indices:
        image = data_loader.load_image(paths[index], image_size, readers=readers).numpy()
        predicted = int(np.argmax(probabilities[index]))
        items.append(
            visualize.GalleryItem(
                image=image,
                predicted=class_names[predicted],
                confidence=float(probabilities[index][predicted]),
                true=None if true_labels is None else class_names[int(true_labels[index])],
                caption="" if captions is None else captions[index],
            )
        )
    return items


GALLERY_MODES = {
    "mixed": "mistakes first",
    "misclassified": "mistakes only",
    "random": "random sample",
}


def render_gallery(evaluation, rows, cols, mode, seed, folder):
    """The prediction gallery of an Evaluation; returns (path, indices)."""
    indices = gallery_indices(evaluation.true_labels, evaluation.predicted, rows * cols, mode, seed)
    items = gallery_items(
        evaluation.paths, evaluation.true_labels, evaluation.probabilities,
        evaluation.class_names, evaluation.image_size, indices, readers=evaluation.readers,
    )
    wrong = int(np.sum(evaluation.true_labels != evaluation.predicted))
    subtitle = (
        f"{len(items)} of {len(evaluation.paths)} images ({evaluation.description}), "
        f"{GALLERY_MODES[mode]} · {wrong} misclassified in all · green: correct, red: wrong"
    )
    path = visualize.plot_prediction_gallery(
        items, rows, cols, os.path.join(folder, "prediction_gallery.png"), subtitle=subtitle
    )
    return path, indices


def summary_line(evaluation, accuracy=True):
    """'test split, 42 images · accuracy 95.2%' for figure subtitles."""
    line = f"{evaluation.description}, {len(evaluation.paths):,} images"
    if accuracy:
        line += f" · accuracy {np.mean(evaluation.true_labels == evaluation.predicted):.1%}"
    return line


def render_confusion(evaluation, folder):
    """Counts and row-normalized confusion matrices; returns both paths."""
    matrix = train_utils.confusion_counts(
        evaluation.true_labels, evaluation.probabilities, len(evaluation.class_names)
    )
    return [
        visualize.plot_confusion_matrix(
            matrix, evaluation.class_names, os.path.join(folder, name),
            normalize=normalize, subtitle=summary_line(evaluation),
        )
        for name, normalize in (("confusion_matrix.png", False), ("confusion_matrix_normalized.png", True))
    ]


def render_report(evaluation, folder):
    """The classification report as a heat-table PNG, plus the same report
    as classification_report.txt (scikit-learn's) and .json; returns the
    PNG path."""
    metrics = train_utils.classification_metrics(
        evaluation.true_labels, evaluation.probabilities, evaluation.class_names
    )
    text = train_utils.classification_report_text(
        evaluation.true_labels, evaluation.probabilities, evaluation.class_names
    )

    def write_text(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            handle.write(text)

    train_utils.atomic_write(os.path.join(folder, "classification_report.txt"), write_text)
    train_utils.write_json(os.path.join(folder, "classification_report.json"), metrics)
    return visualize.plot_classification_report(
        metrics, os.path.join(folder, "classification_report.png"),
        subtitle=summary_line(evaluation, accuracy=False),
    )


def render_roc(evaluation, folder):
    roc = train_utils.roc_analysis(
        evaluation.true_labels, evaluation.probabilities, evaluation.class_names
    )
    return visualize.plot_roc_curves(
        roc, evaluation.class_names, os.path.join(folder, "roc_auc.png"), subtitle=summary_line(evaluation)
    )


def print_figures(paths):
    for path in paths:
        print(f"    figure: {path}")


def render_evaluation(evaluation, args, stamp):
    """Figures 5-8 under RESULTS_DIR/<category>/<stamp>/; returns their
    paths in stage order."""

    def folder(category):
        return os.path.join(args.results_dir, category, stamp)

    figures = render_confusion(evaluation, folder("confusion_matrix"))
    figures.append(render_report(evaluation, folder("classification_report")))
    figures.append(render_roc(evaluation, folder("roc_auc")))
    gallery, _ = render_gallery(
        evaluation, args.rows, args.cols, args.gallery, args.seed, folder("prediction_gallery")
    )
    figures.append(gallery)
    print_figures(figures)
    return figures


# ---------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        description="Evaluate a trained classifier on a labelled folder of images."
    )
    config.add_shared_arguments(parser)
    config.add_figure_arguments(parser)
    # The model fixes the image size; an explicit different one is a mistake.
    parser.set_defaults(image_size=None)
    return parser


def parse_arguments(argv):
    args = build_parser().parse_args(argv)
    config.validate_figure_args(args)
    if args.batch_size < 1:
        raise config.UserError(f"batch_size must be at least 1. Received: batch_size={args.batch_size}")
    return args


def run_evaluation(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_arguments(argv)
    trained = load_trained_model(args)
    args.image_dir = args.image_dir or trained.run_config.get("image_dir")
    if not args.image_dir:
        raise config.UserError("no --image_dir given and the model's run_config.json names none")
    image_dir = args.image_dir
    data_loader.check_outside("results_dir", args.results_dir, image_dir)
    stamp = train_utils.new_run_stamp(args.results_dir)
    with train_utils.stage(f"Evaluating {trained.path} on {image_dir}"):
        images = labelled_images(args, trained)
        evaluation = evaluate_images(trained, images, args.batch_size, data_loader.load_readers(args.reader))
        report_skipped(evaluation.skipped)
        metrics = train_utils.evaluation_metrics(
            evaluation.true_labels, evaluation.probabilities, evaluation.class_names
        )
        metrics_path = train_utils.write_json(
            os.path.join(args.results_dir, "metrics", stamp, "metrics.json"),
            {
                "model": trained.path,
                "image_dir": os.path.abspath(image_dir),
                "evaluated": evaluation.description,
                "skipped": list(evaluation.skipped),
                **metrics,
            },
        )
        print(
            f"    accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, "
            f"macro ROC AUC {format_auc(metrics['roc_auc'])} on {metrics['num_samples']} "
            f"images ({evaluation.description})"
        )
        print(f"    metrics: {metrics_path}")
    with train_utils.stage("Drawing the figures"):
        figures = render_evaluation(evaluation, args, stamp)
    with train_utils.stage("Showing the figures"):
        visualize.show_figures(figures, args.show)
    return figures


def format_auc(roc_auc):
    """The macro AUC, or the binary one, as text."""
    value = roc_auc["macro"]
    if value is None:
        values = [auc for auc in roc_auc["per_class"].values() if auc is not None]
        value = values[0] if values else None
    return "n/a" if value is None else f"{value:.4f}"


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return config.run_cli(run_evaluation, argv)


if __name__ == "__main__":
    sys.exit(main())
