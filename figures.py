"""What each figure shows, which figures a command draws, and when they are
shown: each figure's images, numbers and titles, written under
RESULTS_DIR/<category>/<stamp>/, declared once in `FIGURES`.

The dataset's figures take a splits.DatasetIndex; the training curves a
run's history; an evaluation's (main.py's test stage, evaluate.py,
predict.py) a metrics.Evaluation (true labels, probabilities, class names).
Each picks its images and subtitles, draws with visualize.py (how a figure
looks) and returns the PNG's path. Grad-CAM's heat comes from gradcam.py.

A multi-label run (tasks.MULTI_LABEL) draws the figures that fit it
(`Figure.multi_label`): label frequency and co-occurrence instead of the
images per class, each label's 2x2 table instead of the confusion matrix,
precision-recall curves; the class grid, augmentation preview, report,
ROC, reliability diagram, gallery and top losses ask the task where they
differ (an image under each of its labels; per-label rows; (image, label)
pairs; tiles whose labels are right, wrong or missed: LabelSetItem).

A new figure is two things: its plot in visualize.py and its `render_`
function with one `Figure` line in FIGURES here. main.py's figure stages
and evaluate.py's figures come from FIGURES, and every saved figure is
shown by `show_figures`, one window after another when a screen is there
(headless runs, CI and --show 0 never open one, never block).
"""

import dataclasses
import os
import sys

import numpy as np

import artifacts
import augment
import calibration
import gradcam
import image_io
import label_metrics
import lr_finder
import metrics
import model_builder
import theme
import visualize

# The augmentation preview: this many training images, each this many times.
PREVIEW_IMAGES = 4
PREVIEW_VERSIONS = 5


# ---------------------------------------------------------------- the dataset


def render_distribution(index, folder):
    """Images per class and split, and how many files the audit skipped."""
    return visualize.plot_dataset_distribution(
        index.counts(), index.class_names, os.path.join(folder, "dataset_distribution.png"),
        skipped=len(index.skipped),
    )


def render_label_distribution(index, folder):
    """A multi-label dataset: images per label and split, and how often
    each two labels go together (and how many images have none)."""
    no_label = {split: sum(1 for sample in index.samples if sample.split == split and not sample.names)
                for split in index.sizes()}
    labels = np.concatenate([index.split(split)[1] for split in index.sizes()])
    sizes = index.sizes()
    per_image = labels.sum(axis=1).mean() if len(labels) else 0.0
    subtitle = (
        f"{sum(sizes.values()):,} images ({', '.join(f'{split} {size:,}' for split, size in sizes.items())}) · "
        f"{per_image:.2f} labels per image on average · {sum(no_label.values()):,} with no label · "
        f"{len(index.skipped)} unreadable file{'s' if len(index.skipped) != 1 else ''} skipped by the audit"
    )
    return visualize.plot_label_distribution(
        index.counts(), index.class_names, label_metrics.cooccurrence(labels),
        os.path.join(folder, "label_distribution.png"), no_label=no_label, subtitle=subtitle,
    )


def pick_training_images(labels, num_classes, per_class, seed):
    """Up to `per_class` random training images of each class (a
    multi-label image: of each of its labels): a list of index arrays, one
    per class number."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = []
    for number in range(num_classes):
        members = np.flatnonzero(labels[:, number] > 0.5 if labels.ndim == 2 else labels == number)
        picks.append(np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)))
    return picks


def training_images(index, image_size, positions):
    """Training images (by position in the train split) as the model gets
    them: uint8 tensors, decoded the way the audit chose for each."""
    paths, _ = index.split("train")
    decoders = index.decoders("train")
    return [
        image_io.load_image(paths[i], image_size, decoder=decoders[i], readers=index.readers)
        for i in positions
    ]


def render_class_grid(index, image_size, per_class, seed, folder):
    """`per_class` random training images of each class, as the model gets them."""
    _, labels = index.split("train")
    picks = pick_training_images(labels, len(index.class_names), per_class, seed)
    examples = [
        (name, [image.numpy() for image in training_images(index, image_size, chosen)])
        for name, chosen in zip(index.class_names, picks)
    ]
    if not index.task.multi_label:
        note = f"{per_class} random training images per class, as the model gets them ({image_size} x {image_size} px)"
        return visualize.plot_class_grid(examples, os.path.join(folder, "class_grid.png"), note=note)
    # An image shows under each of its labels; its caption is its whole set.
    captions = [[label_set_text(labels[i], index.class_names) for i in chosen] for chosen in picks]
    note = (f"{per_class} random training images with each label, as the model gets them "
            f"({image_size} x {image_size} px) · under each image: all its labels")
    return visualize.plot_class_grid(examples, os.path.join(folder, "class_grid.png"), note=note,
                                     captions=captions, title="Example images per label")


def label_set_text(row, class_names, width=18):
    """A multi-hot row's labels as tile text: 'a + b' (shortened to
    `width` characters a line, two lines at most), or '(no label)'."""
    names = label_metrics.label_sets([np.asarray(row) > 0.5], class_names)[0]
    return theme.short_label(" + ".join(names), width, 2) if names else "(no label)"


NEAR_COPY_ROWS, NEAR_COPY_COLUMNS = 6, 5


def render_near_copies(index, folder, rows=NEAR_COPY_ROWS, columns=NEAR_COPY_COLUMNS):
    """A few groups of near-copies (the largest first) side by side, as the
    files are (not resized to the model's input); [] when there are none."""
    if not index.near_groups:
        return []
    sample_of = {sample.path: sample for sample in index.samples}
    decoder_of = {sample.path: sample.decoder for sample in index.samples}
    groups = []
    for group in index.near_groups[:rows]:
        members = []
        for path in group[:columns]:
            image = image_io.load_image(os.path.join(index.root, path), 96, decoder=decoder_of[path],
                                        readers=index.readers)
            sample = sample_of[path]
            caption = f"{sample.split} · {theme.short_label(sample.label, width=10)}\n{theme.short_middle(os.path.basename(path), 16)}"
            members.append((np.asarray(image), caption))
        groups.append(members)
    shown = sum(len(group) for group in index.near_groups)
    note = (f"{len(groups)} of {len(index.near_groups)} group(s) ({shown} images in all); every group: the audit's "
            "near_duplicates")
    return [visualize.plot_near_copies(groups, os.path.join(folder, "near_copies.png"), note=note)]


def render_augmentation_preview(index, image_size, strengths, seed, folder, mix=(0.0, 0.0)):
    """PREVIEW_IMAGES training images (of different classes where there are
    enough), each then augmented PREVIEW_VERSIONS times by
    augment.augment_batch with `strengths`: the training pipeline's own code.
    Then, for each of --brightness, --shear, --fill_mode (other than
    reflect), --erasing, --mixup and --cutmix in use (`mix`: their
    strengths), one
    column of that alone (mixup and cutmix: on the first augmented column,
    mixing these images among themselves)."""
    import tensorflow as tf

    paths, labels = index.split("train")
    # Images of different classes (random ones), then any, if too few classes.
    rng = np.random.default_rng(seed)
    picks = pick_training_images(labels, len(index.class_names), 1, seed)
    firsts = [int(chosen[0]) for chosen in picks if len(chosen)]
    firsts = [firsts[i] for i in rng.permutation(len(firsts))]
    rest = [int(i) for i in rng.permutation(len(paths)) if i not in firsts]
    chosen = (firsts + rest)[:PREVIEW_IMAGES]
    images = tf.stack(training_images(index, image_size, chosen))
    versions = [
        augment.augment_batch(images, tf.constant([seed, version], tf.int64), strengths).numpy()
        for version in range(1, PREVIEW_VERSIONS + 1)
    ]
    titles = [f"augmented {number}" for number in range(1, PREVIEW_VERSIONS + 1)]
    for title, alone in preview_singles(strengths):
        versions.append(augment.augment_batch(images, tf.constant([seed, 0], tf.int64), alone).numpy())
        titles.append(title)
    if index.task.multi_label:
        one_hot = tf.constant(np.asarray(labels)[chosen], tf.float32)
        row_labels = [label_set_text(labels[i], index.class_names, width=16) for i in chosen]
    else:
        one_hot = tf.one_hot([labels[i] for i in chosen], len(index.class_names))
        row_labels = [index.class_names[labels[i]] for i in chosen]
    for title, layers in (("mixup", augment.mix_layers(mix[0], 0, seed)), ("cutmix", augment.mix_layers(0, mix[1], seed))):
        if layers:
            mixed, _ = augment.mix_batch(tf.constant(versions[0]), one_hot, layers)
            versions.append(mixed.numpy())
            titles.append(f"{title} {mix[0] if title == 'mixup' else mix[1]:g}")
    extra = "".join(
        f" · {name} {value}" for name, value in (
            ("brightness", strengths.brightness and "{:g}-{:g}".format(*strengths.brightness)),
            ("shear", strengths.shear and f"±{strengths.shear:g}°"), ("fill", strengths.fill_mode),
        ) if value
    )
    note = (
        f"{PREVIEW_VERSIONS} random draws of the training augmentation per image · flip "
        f"{strengths.flip} · rotation ±{strengths.rotation:g}° · zoom ±{strengths.zoom:.0%} · "
        f"shift ±{strengths.translation:.0%} · contrast ±{strengths.contrast:.0%}{extra}"
    ) if strengths.augment_policy == "basic" else (
        f"{PREVIEW_VERSIONS} random draws of the training augmentation per image · flip {strengths.flip}, then "
        f"{POLICY_NOTES[strengths.augment_policy]}"
    )
    if strengths.erasing:
        note += f" · random erasing p={strengths.erasing:g}"
    return visualize.plot_augmentation_preview(
        images.numpy(), versions, os.path.join(folder, "augmentation_preview.png"),
        note=note, row_labels=row_labels, column_titles=titles,
    )


# What the preview's note says a policy does (see augment.policy_layer).
POLICY_NOTES = {
    "randaugment": "RandAugment: 2 of its 11 operations per image (shear, shift, rotation, brightness, colour, "
    "contrast, sharpness, posterize, solarize, autocontrast, equalize), magnitude 0.5",
    "augmix": "AugMix: 3 chains of up to 3 operations, mixed back with the image",
}


def preview_singles(strengths):
    """(column title, AugmentConfig of that augmentation alone) for each of
    --brightness, --shear and a --fill_mode other than reflect that is in
    use (the fill shown under a 25% shift and a 20° turn, so that it shows),
    and --erasing (on every image, so that it shows)."""
    still = dataclasses.replace(
        augment.AugmentConfig(), flip="none", rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0,
        fill_mode=strengths.fill_mode,
    )
    singles = []
    if strengths.erasing:
        singles.append(("erasing (every image)", dataclasses.replace(still, erasing=1.0)))
    if strengths.brightness:
        title = "brightness {:g}-{:g}".format(*strengths.brightness)
        singles.append((title, dataclasses.replace(still, brightness=strengths.brightness)))
    if strengths.shear:
        singles.append((f"shear ±{strengths.shear:g}°", dataclasses.replace(still, shear=strengths.shear)))
    if strengths.fill_mode != "reflect":
        singles.append((f"fill {strengths.fill_mode}", dataclasses.replace(still, translation=0.25, rotation=20.0)))
    return singles


# ---------------------------------------------------------------- an evaluation


def gallery_indices(true_labels, predicted, count, mode, seed):
    """Which images the gallery shows, at most `count`.

    mixed: mistakes first, then correct ones, about half each when there
    are enough of both; misclassified: mistakes only; random: any. A
    mistake is the wrong class, or for multi-label labels any label wrong
    or missed (image_mistakes). Within
    each group the order is a seeded shuffle, so the gallery is not just the
    first class. With no labels (true_labels None) mixed keeps the given
    order.
    """
    rng = np.random.default_rng(seed)
    total = len(predicted)
    if true_labels is None:
        order = rng.permutation(total) if mode == "random" else np.arange(total)
        return order[:count].tolist()
    mistaken = image_mistakes(true_labels, predicted)
    wrong, right = np.flatnonzero(mistaken), np.flatnonzero(~mistaken)
    if mode == "random":
        order = rng.permutation(total)
    elif mode == "misclassified":
        order = rng.permutation(wrong)
    else:
        num_wrong = min(len(wrong), max(-(-count // 2), count - len(right)))
        num_right = min(len(right), count - num_wrong)
        order = np.concatenate([rng.permutation(wrong)[:num_wrong], rng.permutation(right)[:num_right]])
    return order[:count].astype(int).tolist()


def image_mistakes(true_labels, predicted):
    """Which images the model got wrong (N,) booleans: the wrong class, or
    for multi-label (2-D) labels any label wrong or missed."""
    true_labels, predicted = np.asarray(true_labels), np.asarray(predicted)
    if true_labels.ndim == 2:
        return ((true_labels > 0.5) != predicted).any(axis=1)
    return true_labels != predicted


@dataclasses.dataclass(frozen=True)
class GalleryItem:
    """One gallery tile: the image as the user knows it (uint8 RGB), the
    prediction, and the true class when known; visualize frames it in its
    verdict's colour under its title."""

    image: np.ndarray
    predicted: str
    confidence: float
    true: str | None = None
    caption: str = ""

    @property
    def verdict(self):
        """correct, wrong or unlabelled."""
        if self.true is None:
            return "unlabelled"
        return "correct" if self.true == self.predicted else "wrong"

    @property
    def title(self):
        """The tile's title: 'true: cat' and 'pred: dog (60%)' (the
        prediction alone when no label is known), then the caption."""
        short = theme.short_label
        if self.true is None:
            lines = [f"{short(self.predicted, 20, 1)} ({self.confidence:.0%})"]
        else:
            lines = [f"true: {short(self.true, 20, 1)}",
                     f"pred: {short(self.predicted, 17, 1)} ({self.confidence:.0%})"]
        if self.caption:
            lines.append(theme.short_middle(self.caption, 24))  # a file name: two must stay apart
        return "\n".join(lines)


def item_image(paths, index, image_size, readers=None, images=None):
    """The image at `index` as training reads it (uint8, original colours),
    or `images[index]` when the images were already read."""
    if images is None:
        return image_io.load_image(paths[index], image_size, readers=readers).numpy()
    return images[index]


def gallery_items(
    paths, true_labels, probabilities, class_names, image_size, indices, captions=None, readers=None, images=None
):
    """GalleryItems for the chosen images, read the way training reads them
    (uint8, original colours); `images` (by position in `paths`): already
    read by image_io.load_images, not read again."""
    items = []
    for index in indices:
        image = item_image(paths, index, image_size, readers, images)
        predicted = int(np.argmax(probabilities[index]))
        items.append(
            GalleryItem(
                image=image,
                predicted=class_names[predicted],
                confidence=float(probabilities[index][predicted]),
                true=None if true_labels is None else class_names[int(true_labels[index])],
                caption="" if captions is None else captions[index],
            )
        )
    return items


@dataclasses.dataclass(frozen=True)
class LabelSetItem:
    """One multi-label gallery tile: the image (uint8 RGB) and its labels
    as label_metrics.label_marks gives them, [(label, probability, kind)]
    with kind right, wrong, missed or predicted (no truth known);
    visualize frames it green when every label is right, red when any is
    wrong or missed, and writes each label in its kind's colour."""

    image: np.ndarray
    marks: tuple
    labelled: bool = True
    caption: str = ""

    @property
    def predicted(self):
        """The predicted labels, most probable first."""
        return tuple(name for name, _, kind in self.marks if kind != "missed")

    @property
    def verdict(self):
        """correct (the exact set), wrong or unlabelled."""
        if not self.labelled:
            return "unlabelled"
        return "wrong" if any(kind in ("wrong", "missed") for _, _, kind in self.marks) else "correct"

    @property
    def title(self):
        """Plain text of the tile (for a figure that writes one colour, like
        Grad-CAM's): the predicted labels with their probabilities, then the
        missed ones."""
        short = theme.short_label
        shown = [f"{short(name, 16, 1)} ({probability:.0%})" for name, probability, kind in self.marks if kind != "missed"]
        lines = [", ".join(shown[:2]) + (" …" if len(shown) > 2 else "") or "no label"]
        missed = [short(name, 16, 1) for name, _, kind in self.marks if kind == "missed"]
        if missed:
            lines.append("missed: " + ", ".join(missed[:2]) + (" …" if len(missed) > 2 else ""))
        if self.caption:
            lines.append(theme.short_middle(self.caption, 24))  # a file name: two must stay apart
        return "\n".join(lines)


def label_set_items(paths, true_labels, probabilities, class_names, thresholds, image_size, indices,
                    captions=None, readers=None, images=None):
    """LabelSetItems of a multi-label model's chosen images (each label at
    or above its `thresholds` entry predicted), read like gallery_items."""
    items = []
    for index in indices:
        image = item_image(paths, index, image_size, readers, images)
        truth = None if true_labels is None else true_labels[index]
        items.append(LabelSetItem(
            image=image, marks=tuple(label_metrics.label_marks(truth, probabilities[index], class_names, thresholds)),
            labelled=truth is not None, caption="" if captions is None else captions[index],
        ))
    return items


def evaluation_items(evaluation, indices, captions=None):
    """The gallery tiles of an Evaluation's images at `indices`:
    GalleryItems, or LabelSetItems for a multi-label model."""
    if evaluation.task.multi_label:
        return label_set_items(
            evaluation.paths, evaluation.true_labels, evaluation.probabilities, evaluation.class_names,
            evaluation.label_thresholds, evaluation.image_size, indices, captions=captions, readers=evaluation.readers,
        )
    return gallery_items(
        evaluation.paths, evaluation.true_labels, evaluation.probabilities, evaluation.class_names,
        evaluation.image_size, indices, captions=captions, readers=evaluation.readers,
    )


GALLERY_MODES = {
    "mixed": "mistakes first",
    "misclassified": "mistakes only",
    "random": "random sample",
}


def render_gallery(evaluation, rows, cols, mode, seed, folder):
    """The prediction gallery of an Evaluation; returns (path, indices)."""
    indices = gallery_indices(evaluation.true_labels, evaluation.predicted, rows * cols, mode, seed)
    items = evaluation_items(evaluation, indices)
    wrong = int(np.sum(image_mistakes(evaluation.true_labels, evaluation.predicted)))
    path = os.path.join(folder, "prediction_gallery.png")
    if evaluation.task.multi_label:
        subtitle = (
            f"{len(items)} of {len(evaluation.paths)} images ({evaluation.description}), "
            f"{GALLERY_MODES[mode]} · {wrong} with some label wrong or missed in all · "
            "each label with the model's probability; a label is answered yes at or above its threshold"
        )
        return visualize.plot_label_set_gallery(items, rows, cols, path, subtitle=subtitle), indices
    subtitle = (
        f"{len(items)} of {len(evaluation.paths)} images ({evaluation.description}), "
        f"{GALLERY_MODES[mode]} · {wrong} misclassified in all · green: correct, red: wrong"
    )
    path = visualize.plot_prediction_gallery(items, rows, cols, path, subtitle=subtitle)
    return path, indices


def summary_line(evaluation, accuracy=True):
    """'test split, 42 images · accuracy 0.952 · balanced accuracy 0.931 ·
    imbalanced: 4 to 20 images a class (5.0x)' for figure subtitles; for a
    multi-label model 'test split, 42 images · micro-F1 0.912 · macro-F1
    0.897 · mAP 0.951 · exact set 0.803 · 5-20 images a label' (the images
    a label left out when not `accuracy`: a narrow figure writes them
    elsewhere)."""
    line = f"{evaluation.description}, {len(evaluation.paths):,} images"
    if evaluation.task.multi_label:
        return f"{line} · {label_scores_text(evaluation, counts=accuracy)}"
    if accuracy:
        line += f" · accuracy {theme.score(np.mean(evaluation.true_labels == evaluation.predicted))}"
    balanced = metrics.balanced_accuracy(evaluation.true_labels, evaluation.predicted)
    return f"{line} · balanced accuracy {theme.score(balanced)} · {metrics.imbalance_text(evaluation.true_labels, len(evaluation.class_names))}"


def label_scores_text(evaluation, counts=True):
    """'micro-F1 0.912 · macro-F1 0.897 · mAP 0.951 · exact set 0.803 · 5
    -20 images a label' of a multi-label Evaluation (without the images a
    label when not `counts`)."""
    scores = label_metrics.evaluation_metrics(
        evaluation.true_labels, evaluation.probabilities, evaluation.class_names, evaluation.label_thresholds)
    map_text = theme.score(scores["mAP"])
    text = (f"micro-F1 {theme.score(scores['micro_avg']['f1'])} · macro-F1 {theme.score(scores['macro_avg']['f1'])} · "
            f"mAP {map_text} · exact set {theme.score(scores['subset_accuracy'])}")
    return f"{text} · {label_counts_text(evaluation)}" if counts else text


def label_counts_text(evaluation):
    """'5-20 images a label' of a multi-label Evaluation."""
    positives = (np.asarray(evaluation.true_labels) > 0.5).sum(axis=0)
    return f"{int(positives.min())}-{int(positives.max())} images a label"


def thresholds_text(evaluation):
    """Where a multi-label Evaluation's thresholds come from, in words."""
    thresholds = evaluation.label_thresholds
    if np.allclose(thresholds, thresholds[0]):
        return f"every label answered yes at p >= {thresholds[0]:.2f}"
    return f"each label's own threshold ({thresholds.min():.2f} to {thresholds.max():.2f})"


def render_label_confusion(evaluation, folder):
    """A multi-label model's 2x2 table per label at its threshold."""
    return visualize.plot_label_confusion(
        evaluation.confusion_grids(), evaluation.class_names, evaluation.label_thresholds,
        os.path.join(folder, "label_confusion.png"),
        subtitle=f"{summary_line(evaluation)}\n{thresholds_text(evaluation)} · missed: has the label, model "
                 "says no · false alarm: model says yes, it has not",
    )


def render_precision_recall(evaluation, folder):
    """A multi-label model's precision-recall curve per label."""
    return visualize.plot_precision_recall(
        evaluation.precision_recall(), os.path.join(folder, "precision_recall.png"),
        subtitle=f"{summary_line(evaluation)}\n{thresholds_text(evaluation)}\nAP: average precision, "
                 "1.0 = every image with the label ranked above every image without",
    )


def render_confusion(evaluation, folder):
    """Counts and row-normalized confusion matrices; returns both paths."""
    matrix = evaluation.confusion_matrix()
    return [
        visualize.plot_confusion_matrix(
            matrix, evaluation.class_names, os.path.join(folder, name),
            normalize=normalize, subtitle=summary_line(evaluation),
        )
        for name, normalize in (("confusion_matrix.png", False), ("confusion_matrix_normalized.png", True))
    ]


def report_rows(report):
    """The classification report's table rows, from classification_metrics'
    dict: (names, metric values (rows, 3) with NaN where undefined,
    supports), the classes, then accuracy, macro and weighted averages."""
    classes = list(report["per_class"].items())
    rows = classes + [("macro avg", report["macro_avg"]), ("weighted avg", report["weighted_avg"])]
    names = [name for name, _ in rows]
    values = [[row["precision"], row["recall"], row["f1"]] for _, row in rows]
    supports = [row["support"] for _, row in rows]
    # Accuracy between the classes and the averages: one number, over every image.
    names.insert(len(classes), "accuracy")
    values.insert(len(classes), [np.nan, np.nan, report["accuracy"]])
    supports.insert(len(classes), int(sum(supports[: len(classes)])))
    return names, np.array(values, dtype=float), supports


def render_report(evaluation, folder):
    """The classification report as a heat-table PNG, plus the same report
    as classification_report.txt (scikit-learn's) and .json; returns the
    PNG path."""
    if evaluation.task.multi_label:
        return render_label_report(evaluation, folder)
    metrics = evaluation.report()
    confused = evaluation.most_confused()
    text = evaluation.report_text() + "\nMost confused (true -> predicted, images):\n"
    text += "".join(f"  {line}\n" for line in calibration.confused_lines(confused))
    artifacts.write_text(os.path.join(folder, "classification_report.txt"), text)
    artifacts.write_json(os.path.join(folder, "classification_report.json"), {**metrics, "most_confused": confused})
    names, values, supports = report_rows(metrics)
    return visualize.plot_classification_report(
        names, values, supports, len(metrics["per_class"]), metrics["accuracy"],
        os.path.join(folder, "classification_report.png"),
        subtitle=summary_line(evaluation, accuracy=False),
    )


def label_report_rows(scores):
    """A multi-label report's table rows, from label_metrics.
    evaluation_metrics' dict: (names, values (rows, 4: precision, recall,
    F1, average precision; NaN where undefined), supports, thresholds (NaN
    on the average rows)): the labels, then micro, macro and weighted
    averages (mAP as the macro row's AP)."""
    def number(value):
        return np.nan if value is None else value

    names, values, supports, thresholds = [], [], [], []
    for name, row in scores["per_class"].items():
        names.append(name)
        values.append([row["precision"], row["recall"], row["f1"], number(row["average_precision"])])
        supports.append(row["support"])
        thresholds.append(row["threshold"])
    for kind in ("micro", "macro", "weighted"):
        row = scores[f"{kind}_avg"]
        names.append(f"{kind} avg")
        values.append([row["precision"], row["recall"], row["f1"], number(scores["mAP"]) if kind == "macro" else np.nan])
        supports.append(row["support"])
        thresholds.append(np.nan)
    return names, np.array(values, dtype=float), supports, np.array(thresholds, dtype=float)


def render_label_report(evaluation, folder):
    """A multi-label model's report: per label precision, recall, F1,
    support, average precision and threshold as a heat-table PNG, and the
    same as classification_report.txt and .json; returns the PNG path."""
    scores = label_metrics.evaluation_metrics(
        evaluation.true_labels, evaluation.probabilities, evaluation.class_names, evaluation.label_thresholds)
    confused = evaluation.most_confused()
    names, values, supports, thresholds = label_report_rows(scores)
    header = f"{'label':>24} {'precision':>9} {'recall':>9} {'f1':>9} {'AP':>9} {'support':>9} {'threshold':>9}\n"
    lines = "".join(
        f"{name:>24} " + " ".join("      n/a" if np.isnan(value) else f"{value:9.4f}" for value in row)
        + f" {support:9d} " + ("         " if np.isnan(threshold) else f"{threshold:9.2f}") + "\n"
        for name, row, support, threshold in zip(names, values, supports, thresholds)
    )
    text = (header + lines + f"\nexact set {theme.score(scores['subset_accuracy'])} · Hamming loss {theme.score(scores['hamming_loss'])}\n"
            "\nLabels most often wrong:\n" + "".join(f"  {line}\n" for line in label_metrics.confused_lines(confused)))
    artifacts.write_text(os.path.join(folder, "classification_report.txt"), text)
    artifacts.write_json(os.path.join(folder, "classification_report.json"), {**scores, "most_confused": confused})
    return visualize.plot_classification_report(
        names, values, supports, len(evaluation.class_names), scores["subset_accuracy"],
        os.path.join(folder, "classification_report.png"), subtitle=summary_line(evaluation),
        metric_names=("precision", "recall", "f1-score", "AP"), extra=("threshold", thresholds),
        title=f"Classification report · per label · exact set {theme.score(scores['subset_accuracy'])}", row_kind="Label",
    )


def render_roc(evaluation, folder):
    """ROC curves: one-vs-rest per class, or per label for a multi-label
    model (each label's yes/no; micro: every (image, label) pair)."""
    roc = evaluation.roc()
    path = os.path.join(folder, "roc_auc.png")
    if evaluation.task.multi_label:
        return visualize.plot_roc_curves(
            roc, evaluation.class_names, path, subtitle=summary_line(evaluation), title="ROC curves · per label",
            absent_note="label(s) that every image or none has")
    return visualize.plot_roc_curves(roc, evaluation.class_names, path, subtitle=summary_line(evaluation))


def calibration_note(summary):
    """What the reliability diagram's subtitle says about temperature."""
    temperature = summary["temperature"]
    if temperature is None:
        return "no temperature layer to read (an export, another framework's model, or one saved before calibration)"
    if temperature == 1.0:
        return "not calibrated (T = 1)"
    note = f"temperature T = {temperature:.3g} fitted on the validation split"
    if summary["ece_uncalibrated"] is not None:
        note += f" · ECE before it: {theme.percent(summary['ece_uncalibrated'])}"
    return note


def render_reliability(evaluation, folder):
    """The reliability diagram of an Evaluation; returns the path."""
    summary = evaluation.calibration()
    pairs, words, line = "", {}, summary_line(evaluation)
    if evaluation.task.multi_label:
        # The figure is narrow: the images a label go on the pairs' line.
        line = summary_line(evaluation, accuracy=False)
        pairs = (f"\n{np.size(evaluation.true_labels):,} (image, label) pairs, each one yes/no answer · "
                 f"{label_counts_text(evaluation)}")
        words = {"counted": "(image, label) pairs",
                 "confidence_label": "Confidence (probability of the yes/no answer given)"}
    subtitle = (
        f"{line}{pairs}\n{calibration_note(summary)}\n"
        + ("no better than a constant answer: its calibration means nothing yet\n"
           if metrics.at_chance(evaluation.metrics()) else "") +
        f"Brier {summary['brier']:.3f} · NLL {summary['nll']:.3f} · {summary['bins']} equal-width bins"
    )
    if evaluation.tta > 1:
        subtitle += f" · test-time augmentation: {evaluation.tta} versions averaged"
    return visualize.plot_reliability_diagram(
        evaluation.reliability(), summary["ece"], os.path.join(folder, "reliability.png"), subtitle=subtitle, **words
    )


def render_top_losses(evaluation, rows, cols, folder):
    """The top-losses gallery of an Evaluation (at most rows x cols of its
    misclassified images); returns the path."""
    indices = evaluation.top_losses(rows * cols)
    if evaluation.task.multi_label:
        return render_label_top_losses(evaluation, indices, rows, cols, folder)
    true_probability = evaluation.probabilities[np.arange(len(evaluation.paths)), evaluation.true_labels]
    captions = {index: f"p(true) {true_probability[index]:.0%}" for index in indices}
    items = gallery_items(
        evaluation.paths, evaluation.true_labels, evaluation.probabilities, evaluation.class_names,
        evaluation.image_size, indices, captions=captions, readers=evaluation.readers,
    )
    wrong = int(np.sum(evaluation.true_labels != evaluation.predicted))
    if wrong:
        subtitle = (
            f"{len(items)} of {wrong} misclassified images ({evaluation.description}), "
            "most confident first · p(true): the probability the model gave the true class"
        )
    else:
        subtitle = f"no misclassified images among the {len(evaluation.paths)} ({evaluation.description})"
    return visualize.plot_top_losses(items, rows, cols, os.path.join(folder, "top_losses.png"), subtitle=subtitle)


def render_label_top_losses(evaluation, indices, rows, cols, folder):
    """The top losses of a multi-label model: its images with some label
    wrong or missed, the largest summed binary cross-entropy first."""
    losses = label_metrics.image_losses(evaluation.true_labels, evaluation.probabilities)
    captions = {index: f"loss {losses[index]:.2f}" for index in indices}
    items = evaluation_items(evaluation, indices, captions=captions)
    wrong = int(np.sum(image_mistakes(evaluation.true_labels, evaluation.predicted)))
    if wrong:
        subtitle = (
            f"{len(items)} of {wrong} images with some label wrong or missed ({evaluation.description}), "
            "most confidently wrong first · loss: the image's binary cross-entropy summed over its labels"
        )
    else:
        subtitle = f"no image with a label wrong or missed among the {len(evaluation.paths)} ({evaluation.description})"
    return visualize.plot_label_set_gallery(
        items, rows, cols, os.path.join(folder, "top_losses.png"),
        title="Top losses · the most confidently wrong", subtitle=subtitle)


def gradcam_layer(trained):
    """The backbone layer Grad-CAM reads in a Keras TrainedModel."""
    return model_builder.gradcam_layer(trained.model, trained.run_config.get("backbone", "mobilenet_v2"))


def gradcam_step(trained, compiled=False):
    """gradcam.heatmap_step of a Keras TrainedModel on its Grad-CAM layer:
    made once by a caller that draws many (app.py, compiled)."""
    return gradcam.heatmap_step(trained.model, gradcam_layer(trained), compiled=compiled)


def gradcam_of(trained, items, step=None, labels=None):
    """Grad-CAM heatmaps of GalleryItems for their predicted classes, on
    the backbone's Grad-CAM layer of a Keras TrainedModel (by `step`, from
    gradcam_step; default a plain one), and the line that says what they
    show. What predict.py --gradcam 1 draws and app.py overlays.

    `labels` (one label name or number per item, or one for all) asks
    where the model looked for that label instead: "where did it look for
    label X" of a multi-label model (whose LabelSetItems otherwise get
    their most probable predicted label: gradcam_targets). Returns
    (heatmaps (N, H, W) in [0, 1], subtitle)."""
    backbone = trained.run_config.get("backbone", "mobilenet_v2")
    layer = gradcam_layer(trained)
    images = np.stack([item.image for item in items]) if items else np.zeros((0, 1, 1, 3), np.uint8)
    class_ids = gradcam_targets(trained.class_names, items, labels)
    heatmaps = gradcam.gradcam_heatmaps(trained.model, images, class_ids, layer, step=step) if items else []
    map_height, map_width = gradcam.feature_map_size(trained.model, layer)
    if labels is not None and len({int(number) for number in class_ids}) == 1:
        target = f"the label '{trained.class_names[class_ids[0]]}'"
    elif labels is not None:
        target = "the label named above each image"
    elif items and isinstance(items[0], LabelSetItem):
        target = "each image's most probable predicted label"
    else:
        target = "the predicted class"
    subtitle = (
        f"Grad-CAM for {target} on {backbone}'s '{layer}' layer "
        f"({map_height}x{map_width} feature map), faint = ignored, deep rose = decisive"
    )
    if min(map_height, map_width) < 4:
        subtitle += f" · coarse at image_size {trained.image_size}: a larger image size localizes better"
    return heatmaps, subtitle


def gradcam_targets(class_names, items, labels=None):
    """The class number Grad-CAM differentiates for each item: `labels`
    (names or numbers, one per item or one for all) when given, else the
    item's predicted class (a LabelSetItem: its most probable predicted
    label; with none, its first missed label, else the first label)."""
    if labels is not None:
        labels = [labels] * len(items) if isinstance(labels, (str, int, np.integer)) else list(labels)
        return [class_names.index(label) if isinstance(label, str) else int(label) for label in labels]
    targets = []
    for item in items:
        if isinstance(item, LabelSetItem):
            named = item.predicted or tuple(name for name, _, _ in item.marks)
            targets.append(class_names.index(named[0]) if named else 0)
        else:
            targets.append(class_names.index(item.predicted))
    return targets


def render_gradcam(trained, items, rows, cols, folder, labels=None):
    """Grad-CAM of the gallery's items for their predicted classes, or for
    `labels` (gradcam_of); returns the PNG path."""
    heatmaps, subtitle = gradcam_of(trained, items, labels=labels)
    path = os.path.join(folder, "gradcam.png")
    subtitle = f"left: the image · right: {subtitle}"
    return visualize.plot_gradcam(items, heatmaps, rows, cols, path, subtitle=subtitle)


def render_lr_finder(finding, folder):
    """The learning-rate range test's curve (an lr_finder.Finding) with its
    suggestion, and its steps as lr_finder.csv; returns the PNG path."""
    test, suggestion = finding.test, finding.suggestion
    artifacts.write_text(os.path.join(folder, "lr_finder.csv"), finding.csv_text())
    subtitle = (f"{len(test.losses)} training steps on the training images, the rate growing exponentially "
                f"({test.stopped}) · loss smoothed (moving average, beta {lr_finder.BETA:g}) · "
                f"suggestion: fastai's {suggestion.method}, half-way down the longest descent of the smoothed loss")
    return visualize.plot_lr_finder(
        test.rates, test.losses, test.smoothed, suggestion.step, suggestion.valley,
        os.path.join(folder, "lr_finder.png"), subtitle=subtitle,
    )


def render_training_curves(history, folder):
    """The training curves of a run's `history` (a History); returns the path."""
    return visualize.plot_training_curves(
        history.columns, os.path.join(folder, "training_curves.png"), finetune_start=history.finetune_start,
        chance=history.chance, chance_epochs=history.chance_epochs,
    )


# ---------------------------------------------------------------- which figures a command draws


# What a figure is drawn from: a splits.DatasetIndex, a run's History, a
# metrics.Evaluation, a learning-rate range test (lr_finder.Finding).
DATASET, HISTORY, EVALUATION, LR_RANGE = "dataset", "history", "evaluation", "lr_range"


@dataclasses.dataclass(frozen=True)
class History:
    """A run's per-epoch history (train_utils.read_history's columns), its
    first fine-tuning epoch (0-based), if any, the val accuracy of always
    answering the largest class (`chance`, None: unknown) and how many
    first epochs sat at it (train_utils.epochs_at_chance)."""

    columns: dict
    finetune_start: int | None = None
    chance: float | None = None
    chance_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class Look:
    """What a command's options say about its figures (each field the
    option of that name; `augmentation`: the run's augment.AugmentConfig,
    None with --augment 0)."""

    rows: int
    cols: int
    gallery: str
    seed: int
    grid_per_class: int
    image_size: int | None
    mixup: float
    cutmix: float
    augmentation: object = None
    learning_rate: object = None
    lr_find: bool = False


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure, declared once: the stage line that draws it, its
    category (RESULTS_DIR/<category>/<stamp>/), what it is drawn from
    (DATASET, HISTORY or EVALUATION), how (draw(source, folder, look) ->
    [paths]) and whether a command asks for it (wanted(look); None:
    always)."""

    stage: str
    category: str
    source: str
    draw: object
    wanted: object = None
    # Which kind of task it is drawn for: None both, True multi-label
    # only, False one class per image only.
    multi_label: bool | None = None

    def is_wanted(self, look):
        return self.wanted is None or bool(self.wanted(look))

    def fits(self, task):
        """Whether it is drawn for a run of `task` (tasks.Task)."""
        return self.multi_label is None or self.multi_label == task.multi_label


FIGURES = (
    Figure("Plotting the dataset distribution", "dataset_distribution", DATASET,
           lambda index, folder, look: [render_distribution(index, folder)], multi_label=False),
    Figure("Plotting the label frequency and co-occurrence", "label_distribution", DATASET,
           lambda index, folder, look: [render_label_distribution(index, folder)], multi_label=True),
    Figure("Plotting example images per class", "class_grid", DATASET,
           lambda index, folder, look: [render_class_grid(index, look.image_size, look.grid_per_class, look.seed,
                                                          folder)]),
    Figure("Showing the near-copies kept together", "near_copies", DATASET,
           lambda index, folder, look: render_near_copies(index, folder)),
    Figure("Previewing the augmentation", "augmentation_preview", DATASET,
           lambda index, folder, look: [render_augmentation_preview(
               index, look.image_size, look.augmentation, look.seed, folder, mix=(look.mixup, look.cutmix))],
           wanted=lambda look: look.augmentation is not None),
    Figure("Plotting the learning-rate range test", "lr_finder", LR_RANGE,
           lambda finding, folder, look: [render_lr_finder(finding, folder)],
           wanted=lambda look: lr_finder.is_asked(look.learning_rate, look.lr_find)),
    Figure("Plotting the training curves", "training_curves", HISTORY,
           lambda history, folder, look: [render_training_curves(history, folder)]),
    Figure("Plotting the confusion matrix", "confusion_matrix", EVALUATION,
           lambda evaluation, folder, look: render_confusion(evaluation, folder), multi_label=False),
    Figure("Plotting each label's 2x2 confusion table", "label_confusion", EVALUATION,
           lambda evaluation, folder, look: [render_label_confusion(evaluation, folder)], multi_label=True),
    Figure("Plotting the classification report", "classification_report", EVALUATION,
           lambda evaluation, folder, look: [render_report(evaluation, folder)]),
    Figure("Plotting the precision-recall curves", "precision_recall", EVALUATION,
           lambda evaluation, folder, look: [render_precision_recall(evaluation, folder)], multi_label=True),
    Figure("Plotting the ROC curves", "roc_auc", EVALUATION,
           lambda evaluation, folder, look: [render_roc(evaluation, folder)]),
    Figure("Plotting the reliability diagram", "calibration", EVALUATION,
           lambda evaluation, folder, look: [render_reliability(evaluation, folder)]),
    Figure("Plotting the prediction gallery", "prediction_gallery", EVALUATION,
           lambda evaluation, folder, look: [render_gallery(
               evaluation, look.rows, look.cols, look.gallery, look.seed, folder)[0]]),
    Figure("Plotting the top losses", "top_losses", EVALUATION,
           lambda evaluation, folder, look: [render_top_losses(evaluation, look.rows, look.cols, folder)]),
)


def figures_of(source):
    """The FIGURES drawn from `source`, in order."""
    return [figure for figure in FIGURES if figure.source == source]


def draw(figure, source, results_dir, stamp, look):
    """`figure` of `source` under RESULTS_DIR/<category>/<stamp>/; returns
    its paths."""
    return figure.draw(source, os.path.join(results_dir, figure.category, stamp), look)


def render_evaluation(evaluation, results_dir, stamp, look):
    """Every EVALUATION figure of an Evaluation (the confusion matrices,
    report, ROC, reliability diagram, gallery and top losses) under
    RESULTS_DIR/<category>/<stamp>/; prints and returns their paths in
    order."""
    drawn = [
        path for figure in figures_of(EVALUATION) if figure.is_wanted(look) and figure.fits(evaluation.task)
        for path in draw(figure, evaluation, results_dir, stamp, look)
    ]
    for path in drawn:
        print(f"    figure: {path}")
    return drawn


# ---------------------------------------------------------------- showing them


def has_display(environ=None, platform=None):
    """Whether windows can open: macOS and Windows always, elsewhere an X11
    or Wayland display must be set (SSH without forwarding has none)."""
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    if platform in ("darwin", "win32"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def should_show(mode, environ=None):
    """(show?, reason when not) for --show auto|1|0."""
    environ = os.environ if environ is None else environ
    if mode == "0":
        return False, None
    if not has_display(environ):
        return False, "no display: figures saved, not shown"
    if mode == "auto" and environ.get("CI"):
        return False, "CI run: figures saved, not shown (--show 1 to show)"
    if visualize.interactive_backend() is None:
        return False, (
            f"matplotlib backend '{visualize.backend_name()}' cannot open windows: "
            "figures saved, not shown"
        )
    return True, None


def show_figures(paths, mode):
    """Shows saved figures one at a time, in order: the next opens when the
    current window is closed, or when it was destroyed from outside (one
    line says so). Two windows in a row that cannot be shown end the
    showing: the window toolkit itself is gone. Never opens anything (or
    blocks) without a display or with --show 0. Returns the paths shown."""
    show, reason = should_show(mode)
    if not show:
        if reason and paths:
            print(f"    {reason}")
        return []
    print(f"    showing {len(paths)} figures one at a time: close each window to see the next")
    shown, failed_in_a_row = [], 0
    for path in paths:
        try:
            visualize.show_saved_figure(path)
        except visualize.WindowGone as error:
            failed_in_a_row += 1
            if failed_in_a_row == 2:
                print(f"    showing stopped: no figure window can be shown ({error}); "
                      "every figure is saved all the same")
                break
            print(f"    the window of {os.path.basename(path)} was destroyed from outside ({error}); "
                  "going on with the next figure")
            continue
        failed_in_a_row = 0
        shown.append(path)
    return shown
