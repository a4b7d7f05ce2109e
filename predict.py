"""Predict classes with a trained model.

    python predict.py --images photo.jpg more_photos/           # files and/or folders, no labels
    python predict.py --image_dir DIR --rows 2 --cols 5 --gradcam 1

--images writes RESULTS_DIR/predictions/<stamp>/predictions.csv (path,
predicted class, confidence and the --top_k best classes), prints a short
table and draws a gallery; unreadable files are skipped and listed.
--image_dir (a labelled folder) draws the gallery with true vs predicted
classes, the same images evaluate.py would use. --gradcam 1 adds a Grad-CAM
figure of the gallery's images.
"""

import dataclasses
import os
import sys

import numpy as np

import artifacts
import audit
import config
import data_loader
import evaluate
import export
import image_io
import visualize

# ---------------------------------------------------------------- Grad-CAM


def split_at_backbone(model):
    """(layers before the backbone, the backbone, layers after it) of a
    classifier built by model_builder (a straight chain of layers)."""
    import keras

    from model_builder import backbone_of

    backbone = backbone_of(model)
    position = model.layers.index(backbone)
    before = [layer for layer in model.layers[:position] if not isinstance(layer, keras.layers.InputLayer)]
    return before, backbone, model.layers[position + 1 :]


def split_at_classifier(after):
    """(layers between the backbone and the classifier, the classifier
    Dense layer) of the layers after the backbone: the classifier is the
    "logits" Dense (models with a temperature), or the last Dense (older
    models, whose Dense has the softmax built in)."""
    import keras

    from model_builder import LOGITS_LAYER

    dense = [position for position, layer in enumerate(after) if isinstance(layer, keras.layers.Dense)]
    named = [position for position, layer in enumerate(after) if layer.name == LOGITS_LAYER]
    position = (named or dense)[-1]
    return after[:position], after[position]


def gradcam_heatmaps(model, images, class_ids, last_conv_layer, batch_size=16):
    """Grad-CAM (Selvaraju et al., 2017) of `class_ids` for uint8 images.

    The class score is the classifier Dense layer's logit, before the
    temperature and softmax (the softmax saturates near 100% and would
    flatten the gradients; the temperature only scales them); the
    heatmap is the ReLU of the feature maps of the backbone's
    `last_conv_layer` weighted by their mean gradients, scaled to [0, 1]
    per image and resized to the image (bicubic, clipped to [0, 1]).
    Returns float32 (N, H, W); all zeros where no feature map pushes
    towards the class.
    """
    import keras
    import tensorflow as tf

    before, backbone, after = split_at_backbone(model)
    head, classifier = split_at_classifier(after)
    conv_model = keras.Model(
        backbone.inputs, [backbone.get_layer(last_conv_layer).output, backbone.output]
    )
    height, width = images.shape[1:3]
    heatmaps = []
    for start in range(0, len(images), batch_size):
        inputs = tf.convert_to_tensor(images[start : start + batch_size])
        targets = tf.constant(np.asarray(class_ids[start : start + batch_size]), tf.int32)
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
            scores = tf.gather(logits, targets, batch_dims=1)
        gradients = tf.cast(tape.gradient(scores, features), tf.float32)
        features = tf.cast(features, tf.float32)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        maps = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
        peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
        maps = tf.math.divide_no_nan(maps, peak)
        # Bicubic: bilinear leaves a visible cross at each feature-map cell.
        maps = tf.image.resize(maps[..., None], [height, width], method="bicubic")[..., 0]
        heatmaps.append(tf.clip_by_value(maps, 0.0, 1.0).numpy())
    return np.concatenate(heatmaps).astype(np.float32)


def feature_map_size(model, last_conv_layer):
    from model_builder import backbone_of

    return tuple(backbone_of(model).get_layer(last_conv_layer).output.shape[1:3])


def render_gradcam(trained, items, rows, cols, folder):
    """Grad-CAM of the gallery's items for their predicted classes; returns
    the PNG path."""
    from model_builder import gradcam_layer

    backbone = trained.run_config.get("backbone", "mobilenet_v2")
    layer = gradcam_layer(trained.model, backbone)
    images = np.stack([item.image for item in items]) if items else np.zeros((0, 1, 1, 3), np.uint8)
    class_ids = [trained.class_names.index(item.predicted) for item in items]
    heatmaps = gradcam_heatmaps(trained.model, images, class_ids, layer) if items else []
    map_height, map_width = feature_map_size(trained.model, layer)
    subtitle = (
        f"left: the image · right: Grad-CAM for the predicted class on {backbone}'s "
        f"'{layer}' layer ({map_height}x{map_width} feature map), faint = ignored, deep rose = decisive"
    )
    if min(map_height, map_width) < 4:
        subtitle += f" · coarse at image_size {trained.image_size}: a larger image size localizes better"
    path = os.path.join(folder, "gradcam.png")
    return visualize.plot_gradcam(items, heatmaps, rows, cols, path, subtitle=subtitle)


# ---------------------------------------------------------------- image lists


def collect_images(arguments, readers=None):
    """Files from --images: files as given, folders searched (subfolders
    too, data_loader.list_images) for image files (custom readers'
    extensions included). Returns (paths, skipped): skipped
    (audit.SkippedFile) are arguments that name nothing, files that are not
    regular files (a FIFO would block the reader forever), file names that
    are not UTF-8 and folders that cannot be read."""
    extensions = tuple(set(data_loader.IMAGE_EXTENSIONS) | set(readers or {}))
    found, skipped = [], []
    for argument in arguments:
        if os.path.isdir(argument):
            ignored, problems = [], []
            names = data_loader.list_images(argument, argument, extensions, ignored, problems)
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
            skipped.append(audit.SkippedFile(argument, "no such file or folder"))
    paths = [path for path in found if audit.is_utf8(path)]
    skipped += [
        audit.SkippedFile(path, audit.NOT_UTF8) for path in found if not audit.is_utf8(path)
    ]
    return paths, [dataclasses.replace(item, path=image_io.display_path(item.path)) for item in skipped]


def top_classes(probabilities, class_names, top_k):
    """[(class, probability)] * k per row, best first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[(class_names[i], float(row[i])) for i in ranks] for row, ranks in zip(probabilities, order)]


def prediction_rows(paths, probabilities, class_names, top_k, true_labels=None):
    """predictions.csv rows, header first: path, [true_class, correct,]
    predicted_class, confidence, then the next best classes up to top_k."""
    top_k = min(top_k, len(class_names))
    header = ["path"] + (["true_class"] if true_labels is not None else [])
    header += ["predicted_class", "confidence"]
    for rank in range(2, top_k + 1):
        header += [f"top{rank}_class", f"top{rank}_confidence"]
    rows = [header]
    for number, (path, ranked) in enumerate(zip(paths, top_classes(probabilities, class_names, top_k))):
        row = [path] + ([class_names[int(true_labels[number])]] if true_labels is not None else [])
        for name, probability in ranked:
            row += [name, f"{probability:.6f}"]
        rows.append(row)
    return rows


def print_table(rows, limit=15):
    """The first rows of predictions.csv as an aligned table."""
    header = rows[0]
    columns = [header.index("path"), header.index("predicted_class"), header.index("confidence")]
    if "true_class" in header:
        columns.insert(1, header.index("true_class"))
    shown = rows[1 : limit + 1]
    width = min(50, max(len(row[0]) for row in rows))

    def cell(row, column):
        text = row[column]
        if header[column] == "confidence" and row is not header:
            return f"{float(text):.1%}"
        return text if len(text) <= width else "…" + text[-(width - 1) :]

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
    tta: object = None  # evaluate.TestTimeAugmentation, or None

    def path(self, category, *names):
        """RESULTS_DIR/<category>/<stamp>/<names...>."""
        return os.path.join(self.results_dir, category, self.stamp, *names)


def predict_labelled(trained, images, output, readers=None):
    """--image_dir: predictions of LabelledImages `images` (relative to
    `output.image_dir`), predictions.csv, the gallery and (with gradcam)
    Grad-CAM. Returns the figure paths."""
    evaluation = evaluate.evaluate_images(trained, images, output.batch_size, readers, output.tta)
    evaluate.report_skipped(evaluation.skipped)
    root = os.path.abspath(output.image_dir)
    rows = prediction_rows(
        [os.path.relpath(path, root) for path in evaluation.paths],
        evaluation.probabilities,
        trained.class_names,
        output.top_k,
        evaluation.true_labels,
    )
    csv_path = artifacts.write_csv(output.path("predictions", "predictions.csv"), rows)
    accuracy = float(np.mean(evaluation.true_labels == evaluation.predicted))
    print(f"    {len(evaluation.paths)} images ({evaluation.description}), accuracy {accuracy:.1%}")
    print(f"    predictions: {csv_path} (paths relative to {output.image_dir})")
    gallery, indices = visualize.render_gallery(
        evaluation, output.rows, output.cols, output.gallery, output.seed,
        output.path("prediction_gallery"),
    )
    figures = [gallery]
    if output.gradcam:
        items = visualize.gallery_items(
            evaluation.paths, evaluation.true_labels, evaluation.probabilities,
            trained.class_names, trained.image_size, indices, readers=readers,
        )
        figures.append(render_gradcam(trained, items, output.rows, output.cols, output.path("gradcam")))
    return figures


def write_skipped(folder, skipped):
    """skipped.csv (path, reason) beside predictions.csv; returns its path."""
    return artifacts.write_csv(
        os.path.join(folder, "skipped.csv"),
        [["path", "reason"]] + [[item.path, item.reason] for item in skipped],
    )


def predict_unlabelled(trained, arguments, output, readers=None):
    """--images: predictions.csv, a table, the gallery and (with gradcam)
    Grad-CAM for the files and folders in `arguments`. Unreadable files are
    skipped and listed. Returns the figure paths."""
    paths, skipped = collect_images(arguments, readers)
    positions, probabilities, unreadable = evaluate.predict_files(
        trained.model, paths, trained.image_size, output.batch_size, readers, output.tta
    )
    skipped += [audit.SkippedFile(path, "not a readable image") for path in unreadable]
    evaluate.report_skipped(skipped)
    if not len(positions):
        raise config.UserError(
            f"no readable images among --images ({len(paths)} image file(s) found, "
            f"{len(skipped)} skipped)"
        )
    kept = [paths[i] for i in positions]
    rows = prediction_rows(kept, probabilities, trained.class_names, output.top_k)
    csv_path = artifacts.write_csv(output.path("predictions", "predictions.csv"), rows)
    print_table(rows)
    print(f"    predictions: {csv_path}")
    if skipped:
        print(f"    skipped: {write_skipped(output.path('predictions'), skipped)}")
    indices = visualize.gallery_indices(
        None, probabilities.argmax(axis=1), output.rows * output.cols, output.gallery, output.seed
    )
    items = visualize.gallery_items(
        kept, None, probabilities, trained.class_names, trained.image_size, indices,
        captions=[os.path.basename(path) for path in kept], readers=readers,
    )
    subtitle = f"{len(items)} of {len(kept)} images"
    if skipped:
        subtitle += f" · {len(skipped)} skipped (see skipped.csv)"
    gallery_path = output.path("prediction_gallery", "prediction_gallery.png")
    figures = [
        visualize.plot_prediction_gallery(
            items, output.rows, output.cols, gallery_path, title="Predictions", subtitle=subtitle
        )
    ]
    if output.gradcam:
        figures.append(render_gradcam(trained, items, output.rows, output.cols, output.path("gradcam")))
    return figures


# ---------------------------------------------------------------- command line


def build_parser():
    parser = config.ArgumentParser(description="Predict classes with a trained image classifier.")
    config.add_shared_arguments(parser)
    config.add_model_argument(parser)
    config.add_figure_arguments(parser)
    config.add_tta_argument(parser)
    parser.set_defaults(image_size=None)  # fixed by the model
    group = parser.add_argument_group("prediction")
    group.add_argument(
        "--images",
        nargs="+",
        metavar="PATH",
        help="Image files and/or folders (searched with their subfolders) to classify; no labels needed",
    )
    group.add_argument(
        "--top_k",
        type=int,
        default=config.DEFAULTS.top_k,
        help="How many best classes predictions.csv lists per image (default: %(default)s)",
    )
    group.add_argument(
        "--gradcam",
        type=int,
        choices=(0, 1),
        default=config.DEFAULTS.gradcam,
        help="1: also draw Grad-CAM heatmaps of the gallery's images (default: %(default)s)",
    )
    return parser


def parse_arguments(argv):
    args = build_parser().parse_args(argv)
    config.validate_figure_args(args)
    config.validate_tta_args(args)
    if (args.images is None) == (args.image_dir is None):
        raise config.UserError(
            "give either --images PATH [PATH ...] (files or folders) or --image_dir DIR "
            "(a labelled folder), not both"
            if args.images
            else "nothing to predict: give --images PATH [PATH ...] or --image_dir DIR"
        )
    if args.images and args.gallery == "misclassified":
        raise config.UserError(
            "--gallery misclassified needs labels: use --image_dir DIR with class folders"
        )
    if args.gradcam and args.model and export.model_format(args.model) != "keras":
        # Grad-CAM differentiates through the backbone's layers, which only
        # the Keras model has; exported graphs are run, not differentiated.
        raise config.UserError(
            "--gradcam 1 needs the Keras model (.keras): pass it with --model, or leave "
            f"--gradcam out to predict with the export. Received: model={args.model}"
        )
    if args.top_k < 1:
        raise config.UserError(f"top_k must be at least 1. Received: top_k={args.top_k}")
    if args.batch_size < 1:
        raise config.UserError(f"batch_size must be at least 1. Received: batch_size={args.batch_size}")
    for folder in [args.image_dir] + [path for path in (args.images or []) if os.path.isdir(path)]:
        if folder:
            config.check_outside("results_dir", args.results_dir, folder)
    return config.config_from_args(args)


def run_prediction(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options = parse_arguments(argv)
    readers = config.load_readers(options.reader)
    trained = evaluate.load_trained_model(
        artifacts.model_path(options.artifacts_dir, options.model), image_size=options.image_size
    )
    tta = evaluate.test_time_augmentation(trained, options.tta, options.seed)
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
    with config.stage(f"Predicting with {trained.path}"):
        if tta:
            print(f"    {tta.describe()}")
        if options.images:
            figures = predict_unlabelled(trained, options.images, output, readers)
        else:
            images = evaluate.labelled_images(
                options.image_dir, trained, options.split, options.labels_csv,
                options.classes, readers,
            )
            figures = predict_labelled(trained, images, output, readers)
        for path in figures:
            print(f"    figure: {path}")
    with config.stage("Showing the figures"):
        visualize.show_figures(figures, options.show)
    return figures


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return config.run_cli(run_prediction, argv)


if __name__ == "__main__":
    sys.exit(main())
