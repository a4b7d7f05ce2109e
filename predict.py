"""Predict classes with a trained model.

    python predict.py --images photo.jpg more_photos/           # files and/or folders, no labels
    python predict.py --image_dir DIR --rows 2 --cols 5 --gradcam 1

--images writes RESULTS_DIR/predictions/<stamp>/predictions.csv (path,
predicted class, confidence, the --top_k best classes, and how often the
test split's predictions at that confidence were right), prints a short
table and draws a gallery; unreadable files are skipped and listed.
--image_dir (a labelled folder) draws the gallery with true vs predicted
classes, the same images evaluate.py would use. --gradcam 1 adds a Grad-CAM
figure of the gallery's images.
"""

import dataclasses
import difflib
import errno
import os
import sys

import numpy as np

import artifacts
import audit
import calibration
import config
import console
import dataset_files
import errors
import export
import figures
import image_io
import inference
import option_types
import predictions_csv
import report
import theme
import visualize
from errors import UserError


# ---------------------------------------------------------------- image lists


def collect_images(arguments, readers=None):
    """Files from --images: files as given, folders searched (subfolders
    too, dataset_files.list_images) for image files (custom readers'
    extensions included). Returns (paths, skipped): skipped
    (audit.SkippedFile) are arguments that name nothing, files that are not
    regular files (a FIFO would block the reader forever), file names that
    are not UTF-8 and folders that cannot be read."""
    extensions = tuple(set(dataset_files.IMAGE_EXTENSIONS) | set(readers or {}))
    found, skipped = [], []
    for argument in arguments:
        if os.path.isdir(argument):
            ignored, problems = [], []
            names = dataset_files.list_images(argument, argument, extensions, ignored, problems)
            found += [os.path.join(argument, name) for name in names]
            skipped += [
                audit.SkippedFile(os.path.join(argument, path), "not a regular file")
                for path, kind in ignored
                if kind == "not_regular_file"
            ] + [
                audit.SkippedFile(
                    os.path.join(argument, problem.path), f"cannot read the folder: {problem.detail}"
                )
                for problem in problems
                if problem.kind == "unreadable"
            ]
        elif os.path.isfile(argument):
            found.append(argument)
        elif os.path.exists(argument):
            skipped.append(audit.SkippedFile(argument, "not a regular file"))
        else:
            skipped.append(audit.SkippedFile(argument, missing_reason(argument)))
    paths = [path for path in found if audit.is_utf8(path)]
    skipped += [
        audit.SkippedFile(path, audit.NOT_UTF8) for path in found if not audit.is_utf8(path)
    ]
    return paths, [dataclasses.replace(item, path=image_io.display_path(item.path)) for item in skipped]


def check_images_exist(arguments):
    """Refuses, before TensorFlow starts, --images that can only be a typo:
    a path that names nothing and is no file's name (no extension, or a
    trailing /: a folder mistyped), or nothing named at all. A missing file
    (photo.jpg) among others is skipped and listed instead (collect_images),
    like an unreadable one. Raises UserError naming the path and, where
    one is close, the file or folder beside it that was meant."""
    missing = [path for path in arguments if not os.path.lexists(path)]
    typos = [path for path in missing if path.endswith(("/", os.sep)) or not os.path.splitext(path)[1]]
    if not typos and len(missing) < len(arguments) or not missing:
        return
    path = (typos or missing)[0]
    parent = os.path.dirname(os.path.normpath(path)) or "."
    try:
        near = difflib.get_close_matches(os.path.basename(os.path.normpath(path)), os.listdir(parent), n=1)
    except OSError:
        near = []
    guess = f" (did you mean {os.path.join(os.path.dirname(os.path.normpath(path)), near[0])}?)" if near else ""
    raise UserError(f"--images: no such file or folder{guess}. Received: images={image_io.display_path(path)}")


def missing_reason(argument):
    """Why an --images argument that os.path.exists calls absent names no
    file: a symbolic link loop, a link to nothing, a folder on the way that
    cannot be searched, or nothing there at all."""
    try:
        os.stat(argument)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop: it leads back to itself, never to a file"
        if os.path.islink(argument):
            return f"a broken symbolic link: its target {image_io.display_path(os.readlink(argument))} does not exist"
        if error.errno != errno.ENOENT:
            return f"cannot reach it: {error.strerror}"
    return "no such file or folder"


def unreadable_reason(path, readers=None):
    """Why the prediction pipeline could not read the file `path`: the
    audit's reason (not an image, truncated, too large for Pillow's pixel
    limit...), asked again only for the few files that failed."""
    check = audit.check_file(os.path.dirname(path) or ".", os.path.basename(path), readers)
    return "not a readable image" if check.usable else check.reason


# The columns print_table shows, those a predictions.csv has, in this order:
# one class per image, or a multi-label model's label sets.
TABLE_COLUMNS = ("path", "true_class", "true_labels", "predicted_class", "predicted_labels", "confidence")


def shown_value(column, text):
    """A predictions.csv cell as the terminal and the report show it: a
    confidence as a percentage (73.7%), the test accuracy at that
    confidence as a score (theme.score); other cells, and empty ones, as
    written."""
    accuracy, images = predictions_csv.TRUST_COLUMNS
    try:
        if column == accuracy:
            return theme.score(float(text))
        if column.endswith("confidence") and column != images:
            return f"{float(text):.1%}"
    except ValueError:  # "" or predictions_csv.TOO_FEW
        pass
    return text


def print_table(rows, limit=15):
    """The first rows of predictions.csv as an aligned table."""
    header = rows[0]
    columns = [header.index(name) for name in TABLE_COLUMNS if name in header]
    shown = rows[1 : limit + 1]
    width = min(50, max(len(row[0]) for row in rows))

    def cell(row, column):
        text = row[column] if row is header else shown_value(header[column], row[column])
        # A path keeps its beginning (the folder) and its end (the file
        # name's last characters, where names differ); a label set its
        # beginning (the most probable labels).
        if header[column].endswith("_labels"):
            return text if len(text) <= 50 else text[:49] + "…"
        return theme.short_middle(text, width)

    widths = [max(len(cell(row, column)) for row in [header] + shown) for column in columns]
    for row in [header] + shown:
        cells = (cell(row, column).ljust(size) for column, size in zip(columns, widths))
        print(("    " + "  ".join(cells)).rstrip())
    if len(rows) - 1 > limit:
        print(f"    ... {len(rows) - 1 - limit} more in predictions.csv")


# ---------------------------------------------------------------- the two modes


@dataclasses.dataclass(frozen=True)
class Output:
    """What one invocation writes where, and how it draws: values taken
    from the command line at its edge (run_prediction)."""

    results_dir: str
    stamp: str
    image_dir: str | None
    batch_size: int
    top_k: int
    rows: int
    cols: int
    gallery: str
    seed: int
    gradcam: int
    tta: object = None  # inference.TestTimeAugmentation, or None
    # What was written, for the report and the summary: csv, rows, skipped.
    written: dict = dataclasses.field(default_factory=dict)

    def path(self, category, *names):
        """RESULTS_DIR/<category>/<stamp>/<names...>."""
        return os.path.join(self.results_dir, category, self.stamp, *names)


def predict_labelled(trained, images, output, readers=None, bins=None):
    """--image_dir: predictions of LabelledImages `images` (relative to
    `output.image_dir`), predictions.csv (its trust columns from the test
    split's saved reliability `bins`, or empty), the gallery and (with
    gradcam) Grad-CAM. Returns the figure paths."""
    evaluation = inference.evaluate_images(trained, images, output.batch_size, readers, output.tta)
    inference.report_skipped(evaluation.skipped)
    root = os.path.abspath(output.image_dir)
    rows = predictions_csv.rows_of(
        trained,
        [os.path.relpath(path, root) for path in evaluation.paths],
        evaluation.probabilities,
        output.top_k,
        evaluation.true_labels,
        bins,
    )
    csv_path = artifacts.write_csv(output.path("predictions", "predictions.csv"), rows)
    output.written.update(csv=csv_path, rows=rows, skipped=evaluation.skipped)
    if trained.task.multi_label:
        output.written.update(labels=label_counts_line(trained, evaluation.probabilities))
        print(f"    {len(evaluation.paths)} images ({evaluation.description}): "
              f"{evaluation.headline(evaluation.metrics())}")
        print(f"    {output.written['labels']}")
    else:
        accuracy = float(np.mean(evaluation.true_labels == evaluation.predicted))
        print(f"    {len(evaluation.paths)} images ({evaluation.description}), accuracy {theme.score(accuracy)}")
    print(f"    predictions: {csv_path} (paths relative to {output.image_dir})")
    gallery, indices = figures.render_gallery(
        evaluation, output.rows, output.cols, output.gallery, output.seed,
        output.path("prediction_gallery"),
    )
    drawn = [gallery]
    if output.gradcam:
        items = figures.gallery_items(
            evaluation.paths, evaluation.true_labels, evaluation.probabilities,
            trained.class_names, trained.image_size, indices, readers=readers,
        )
        drawn.append(figures.render_gradcam(trained, items, output.rows, output.cols, output.path("gradcam")))
    return drawn


def write_skipped(folder, skipped):
    """skipped.csv (path, reason) beside predictions.csv; returns its path."""
    return artifacts.write_csv(
        os.path.join(folder, "skipped.csv"),
        [["path", "reason"]] + [[item.path, item.reason] for item in skipped],
    )


def predict_unlabelled(trained, arguments, output, readers=None, bins=None):
    """--images: predictions.csv (trust columns from `bins`, as in
    predict_labelled), a table, the gallery and (with gradcam) Grad-CAM for
    the files and folders in `arguments`. Unreadable files are skipped and
    listed. Returns the figure paths."""
    paths, skipped = collect_images(arguments, readers)
    # Found: every file with an image's name, also a FIFO or a name that is
    # not UTF-8 (skipped by collect_images); not a path that names nothing.
    found = len(paths) + sum(1 for item in skipped if item.reason in ("not a regular file", audit.NOT_UTF8))
    positions, probabilities, unreadable = inference.predict_files(
        trained.model, paths, trained.image_size, output.batch_size, readers, output.tta
    )
    skipped += [audit.SkippedFile(path, unreadable_reason(path, readers)) for path in unreadable]
    inference.report_skipped(skipped)
    if not len(positions):
        raise UserError(f"no readable images among --images ({found} image file(s) found, {len(skipped)} skipped)")
    kept = [paths[i] for i in positions]
    rows = predictions_csv.rows_of(trained, kept, probabilities, output.top_k, bins=bins)
    csv_path = artifacts.write_csv(output.path("predictions", "predictions.csv"), rows)
    output.written.update(csv=csv_path, rows=rows, skipped=skipped)
    print_table(rows)
    if trained.task.multi_label:
        output.written.update(labels=label_counts_line(trained, probabilities))
        print(f"    {output.written['labels']}")
    print(f"    predictions: {csv_path}")
    if skipped:
        print(f"    skipped: {write_skipped(output.path('predictions'), skipped)}")
    indices = figures.gallery_indices(
        None, probabilities.argmax(axis=1), output.rows * output.cols, output.gallery, output.seed
    )
    items = figures.gallery_items(
        kept, None, probabilities, trained.class_names, trained.image_size, indices,
        captions=gallery_captions(trained, kept, rows), readers=readers,
    )
    if trained.task.multi_label:
        items = given_label_items(trained, items, [probabilities[i] for i in indices])
    subtitle = f"{len(items)} of {len(kept)} images"
    if skipped:
        subtitle += f" · {len(skipped)} skipped (see skipped.csv)"
    gallery_path = output.path("prediction_gallery", "prediction_gallery.png")
    drawn = [
        visualize.plot_prediction_gallery(
            items, output.rows, output.cols, gallery_path, title="Predictions", subtitle=subtitle
        )
    ]
    if output.gradcam:
        drawn.append(figures.render_gradcam(trained, items, output.rows, output.cols, output.path("gradcam")))
    return drawn


def gallery_captions(trained, paths, rows):
    """Each image's caption in the unlabelled gallery: its file name, and
    after it a multi-label model's other given labels ('00005.png +gravel
    +brick': the title names the most probable given one,
    given_label_items; predictions.csv's `rows` hold the sets)."""
    names = [os.path.basename(path) for path in paths]
    if not trained.task.multi_label:
        return names
    column = rows[0].index("predicted_labels")
    separator = inference.saved_reading(trained).separator
    captions = []
    for name, row in zip(names, rows[1:]):
        given = [label for label in row[column].split(separator) if label] if row[column] else []
        captions.append(" ".join([name, *(f"+{label}" for label in given[1:])]) if given else f"{name}: no label")
    return captions


def given_label_items(trained, items, probabilities):
    """A multi-label model's unlabelled gallery tiles titled with the most
    probable label it gives (at or above its threshold), not merely the
    most probable one, which may be below its threshold; a tile with no
    label given keeps the most probable one (its caption says no label)."""
    titled = []
    for item, row in zip(items, probabilities):
        given = predictions_csv.predicted_names(row, trained.class_names, trained.thresholds)
        titled.append(dataclasses.replace(item, predicted=given[0][0], confidence=given[0][1]) if given else item)
    return titled


def label_counts_line(trained, probabilities):
    """How many images a multi-label model gave each label (at its
    threshold), most given first, and how many got none: 'labels given:
    grass 12, brick 9, coffee 0 · no label: 3 of 40 images'."""
    predicted = trained.task.predicted(probabilities, trained.thresholds)
    counts = predicted.sum(axis=0)
    order = np.argsort(-counts, kind="stable")
    given = ", ".join(f"{trained.class_names[i]} {int(counts[i])}" for i in order)
    return f"labels given: {given} · no label: {int((~predicted.any(axis=1)).sum())} of {len(predicted)} images"


def trust_note(saved, trained):
    """The line saying where predictions.csv's trust columns come from."""
    if saved is None:
        return (
            f"predictions.csv's last two columns (how often test images at each confidence were right) empty: "
            f"the run in {trained.folder} saved no test evaluation "
            "(evaluate.py on its training folder saves one)"
        )
    if trained.task.multi_label:
        return (
            f"predictions.csv's last two columns: for each predicted label, how often the (image, label) pairs of "
            f"the {saved['images']} test images at that probability had the label, and how many pairs "
            f"(\"{predictions_csv.TOO_FEW}\": under {calibration.MIN_TRUST_IMAGES} pairs there; {artifacts.TEST_RELIABILITY_FILE})"
        )
    return (
        f"predictions.csv's last two columns: how often the {saved['images']} test images at each confidence were "
        f"right, and how many (\"{predictions_csv.TOO_FEW}\": under {calibration.MIN_TRUST_IMAGES} there; "
        f"{artifacts.TEST_RELIABILITY_FILE})"
    )


# ---------------------------------------------------------------- command line


DESCRIPTION = "Predict classes with a trained image classifier."

EXAMPLES = """\
  python predict.py --images new_photos/ one_more.jpg          # label new images, no labels needed
  python predict.py --images new_photos/ --top_k 2 --gradcam 1
  python predict.py --image_dir photos/ --rows 2 --cols 5      # a labelled folder: true vs predicted
  python predict.py --model model_artifacts/runs/RUN/best_model.onnx --images new_photos/
"""


def build_parser():
    """predict.py's command line (config.build_parser, from the one option table)."""
    return config.build_parser("predict", DESCRIPTION, EXAMPLES)


def parse_arguments(argv):
    """The options as a Config. Raises UserError on a bad value."""
    options = config.validate(config.config_from_args(build_parser().parse_args(argv)), "predict")
    if (options.images is None) == (options.image_dir is None):
        raise UserError(
            "give either --images PATH [PATH ...] (files or folders) or --image_dir DIR "
            "(a labelled folder), not both"
            if options.images
            else "nothing to predict: give --images PATH [PATH ...] or --image_dir DIR"
        )
    if options.images and options.gallery == "misclassified":
        raise UserError("--gallery misclassified needs labels: use --image_dir DIR with class folders")
    if options.gradcam and options.model and export.model_format(options.model) != "keras":
        # Grad-CAM differentiates through the backbone's layers, which only
        # the Keras model has; exported graphs are run, not differentiated.
        raise UserError(
            "--gradcam 1 needs the Keras model (.keras): pass it with --model, or leave "
            f"--gradcam out to predict with the export. Received: model={options.model}"
        )
    check_images_exist(options.images or ())
    for folder in [options.image_dir] + [path for path in (options.images or ()) if os.path.isdir(path)]:
        if folder:
            option_types.check_outside("results_dir", options.results_dir, folder)
    return options


def run_prediction(argv=None):
    options = parse_arguments(argv)
    console.start_tensorflow(options.verbose)
    readers = config.load_readers(options.reader)
    trained = inference.load_trained_model(
        artifacts.model_path(options.artifacts_dir, options.model), image_size=options.image_size,
        threshold=options.threshold,
    )
    tta = inference.test_time_augmentation(trained, options.tta, options.seed)
    output = Output(
        results_dir=options.results_dir,
        stamp=artifacts.new_run_stamp(options.results_dir),
        image_dir=options.image_dir,
        batch_size=options.batch_size,
        top_k=options.top_k,
        rows=options.rows,
        cols=options.cols,
        gallery=options.gallery,
        seed=options.seed,
        gradcam=options.gradcam,
        tta=tta,
    )
    saved = inference.saved_test_reliability(trained)
    bins = None if saved is None else saved["bins"]
    with console.stage(f"Predicting with {trained.path}"):
        unfinished = inference.unfinished_note(trained)
        if unfinished:
            print(f"    note: {unfinished}")
        if tta:
            print(f"    {tta.describe()}")
        print(f"    {trust_note(saved, trained)}")
        if options.images:
            drawn = predict_unlabelled(trained, options.images, output, readers, bins)
        else:
            images = inference.labelled_images(
                options.image_dir, trained, options.split, options.labels_csv,
                options.classes, readers,
                reading=inference.csv_reading(trained, options.path_column, options.label_column,
                                              options.label_delimiter, options.no_label),
            )
            drawn = predict_labelled(trained, images, output, readers, bins)
        for path in drawn:
            print(f"    figure: {path}")
    page = write_report(options, trained, output, drawn)
    if figures.should_show(options.show)[0]:
        with console.stage("Showing the figures"):
            figures.show_figures(drawn, options.show)
    written = output.written
    console.summary([
        f"{len(written['rows']) - 1} image(s) labelled by {trained.path}"
        + (f", {len(written['skipped'])} skipped" if written["skipped"] else ""),
        *([written["labels"]] if "labels" in written else []),
        f"predictions: {written['csv']}",
        f"report: {page}",
        "next: open the report, or python evaluate.py --image_dir LABELLED_FOLDER/ to measure the model on labelled images",
    ])
    return drawn


# The report lists this many predictions; all of them are in predictions.csv.
REPORT_ROWS = 50


def write_report(options, trained, output, drawn):
    """results/report/<stamp>/report.html of this prediction; returns its path."""
    rows, skipped = output.written["rows"], output.written["skipped"]
    sections = [
        report.Section("The prediction", rows=(
            ("model", trained.path), ("run", trained.run_config.get("run", "?")),
            ("images", len(rows) - 1), ("skipped", len(skipped)), ("predictions", output.written["csv"]),
        )),
        report.Section(f"Predictions (the first {min(REPORT_ROWS, len(rows) - 1)}; all in predictions.csv)", table=(
            rows[0], [[shown_value(name, text) for name, text in zip(rows[0], row)] for row in rows[1 : REPORT_ROWS + 1]])),
        report.Section("Figures", figures=tuple(drawn)),
        report.Section("Skipped files", lines=tuple(str(item) for item in skipped) or ("none",)),
        report.options_section({name: getattr(options, name) for name in config.options_of("predict")}, "predict"),
    ]
    path = report.write_report(options.results_dir, output.stamp, f"Predictions {output.stamp}", sections)
    print(f"    report: {path}")
    return path


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return errors.run_cli(run_prediction, argv)


if __name__ == "__main__":
    sys.exit(main())
