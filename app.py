"""Serve a trained model on a web page: drop images, read the answers.

    python app.py                                 # the published model on http://127.0.0.1:7860
    python app.py --run 20261122-031500 --port 8000
    python app.py --model exports/best_model.onnx  # an export, its companions beside it
    python app.py --host 0.0.0.0                  # anyone on the network (a warning says so)

The page (Gradio): drop or pick one image or several; each gets its top-k
classes with calibrated probabilities as bars, how far to trust it (how
often the run's test images at that confidence were right, from
artifacts.TEST_RELIABILITY_FILE) and, for a Keras model, a Grad-CAM overlay;
a table and predictions.csv with predict.py's columns; a model card, and a
drop-down of every finished run to switch model without restarting. A
multi-label model's answer is every label at or above its threshold
(--threshold: one for all), each with its percentage and how often the
test split's image-label pairs at that probability had the label; the
labels below their thresholds are listed, dimmed.

Uploads are checked as the audit checks a dataset's files (audit.check_file),
decoded by image_io.load_images (load_image, the decode function of
training and of predict.py) and predicted by inference.predict_images, so
the page and predict.py give the same probabilities for a file; no answer
builds a tf.data pipeline or traces a graph, each of which TensorFlow
keeps a little of until the process ends. A file that cannot be used is one message on the page; the server
keeps serving, and nothing on disk changes: uploads and the page's files
live in a private temporary folder, removed when the server stops. Private
and offline by default: 127.0.0.1, no share link, no analytics, no font or
script from the internet. Each model is loaded once, when first chosen;
requests wait in one queue and are answered one at a time.

Gradio is imported only once the options are checked and the model loads:
a mistake is one line and exit code 2 before any server starts.
"""

import contextlib
import dataclasses
import html
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

import numpy as np

import artifacts
import audit
import calibration
import config
import console
import errors
import export
import figures
import image_io
import inference
import predictions_csv
import safe_text
import theme
import visualize
from errors import UserError

DESCRIPTION = "Serve a trained image classifier on a web page."
TITLE = "Image classifier"
# The drop-down's key of a --model file that is not a run's own model.
MODEL_KEY = "model"
# Images per predict_on_batch call.
BATCH_SIZE = 32
# Cards (image, bars, trust, Grad-CAM) for at most this many images of one
# request; the table and the CSV hold every image. Fifty Grad-CAMs are slow
# to compute and nobody reads them.
MAX_CARDS = 12
# Requests waiting beyond this many are refused with Gradio's "queue full".
QUEUE_SIZE = 64
# Entries kept in the private folder: Gradio makes a folder per uploaded
# file (and leaves an empty temporary file per upload), each answer's
# predictions.csv has a folder of ours. After each answer all but the
# newest this many are removed (never the request's own; a file being
# uploaded is among the newest), so a server that runs for days keeps a
# bounded number of files: a download link or a model switch works for the
# last requests' files, an older one asks for the images again.
KEPT_ENTRIES = 2 * QUEUE_SIZE
GONE_UPLOADS = (
    "the dropped images are no longer on the server (it keeps the files of the last requests only): "
    "drop them again"
)
# Cards show images at least this many pixels wide (enlarged, bicubic): a
# 64 px model input is a stamp on a screen. The model still sees its size.
DISPLAY_SIZE = 224
# Classes named in the model card (the rest counted).
CARD_CLASSES = 20
# System fonts only: a Gradio theme's Google fonts would be fetched from the
# internet. DejaVu Sans is the figures' font.
FONTS = ("DejaVu Sans", "system-ui", "sans-serif")
MONO_FONTS = ("DejaVu Sans Mono", "ui-monospace", "monospace")
EMPTY_SUBMIT = "Drop or pick one or more images first."
NO_GRADCAM = (
    "it needs the Keras model (.keras): an export (ONNX, LiteRT, SavedModel) is a graph that can "
    "be run but not differentiated; serve the run's best_model.keras to see it"
)
HOST_WARNING = (
    "warning: --host {host} serves the page to every machine that can reach this one on port "
    "{port}: anyone on the network can upload images and use the model (there is no login)"
)
CSS = """
.answer {border-top: 1px solid var(--border-color-primary); padding-top: 0.6rem;}
.trust {color: var(--body-text-color-subdued);}
#card td:first-child, #card th:first-child {white-space: nowrap;}
#card td {overflow-wrap: anywhere;}
#model input {text-overflow: ellipsis;}
"""
# Below this spread a Grad-CAM map is flat: every spot weighed the same
# (as visualize's figure says under such a map).
FLAT_HEAT = 0.05


# ---------------------------------------------------------------- the models


@dataclasses.dataclass(frozen=True)
class Choice:
    """One model the drop-down offers: its key (a run id, or MODEL_KEY),
    what the drop-down says, and the model file."""

    key: str
    label: str
    path: str


@dataclasses.dataclass(frozen=True)
class Served:
    """A loaded model the page answers with: the TrainedModel, the test
    evaluation saved beside it (None: its run saved none) and its compiled
    Grad-CAM (figures.gradcam_step; None for an export)."""

    key: str
    trained: inference.TrainedModel
    saved: dict | None
    gradcam_step: object = None

    @property
    def bins(self):
        return None if self.saved is None else self.saved["bins"]

    @property
    def gradcam(self):
        """Whether Grad-CAM can be drawn: only a Keras model is differentiated."""
        return self.gradcam_step is not None


def run_model_path(artifacts_dir, run_id):
    return os.path.join(artifacts.runs_folder(artifacts_dir), run_id, artifacts.MODEL_FILE)


def key_of(path, artifacts_dir):
    """The drop-down key of a model file: the run id when it is a run's own
    best_model.keras in ARTIFACTS_DIR (also through the published links),
    else MODEL_KEY."""
    folder = artifacts.companions_folder(path)
    runs = os.path.realpath(artifacts.runs_folder(artifacts_dir))
    own = os.path.basename(os.path.realpath(path)) == artifacts.MODEL_FILE
    return os.path.basename(folder) if own and os.path.dirname(folder) == runs else MODEL_KEY


def run_label(run_id, saved, published):
    """'20261122-031500 · published · photos · mobilenet_v2 · 3 classes'
    ('3 labels' for a multi-label run): what tells runs apart first, so
    that a narrow drop-down cuts the least telling part."""
    kind = "labels" if saved.get("task") == "multi_label" else "classes"
    parts = [run_id, *(["published"] if run_id == published else [])]
    if saved.get("image_dir"):
        parts.append(os.path.basename(os.path.normpath(saved["image_dir"])))
    return " · ".join(parts + [saved.get("backbone", "?"), f"{len(saved.get('class_names') or ())} {kind}"])


def run_choices(artifacts_dir):
    """A Choice for every finished run of ARTIFACTS_DIR, oldest first."""
    published = artifacts.published_run(artifacts_dir)
    return [
        Choice(run_id, run_label(run_id, saved, published), run_model_path(artifacts_dir, run_id))
        for run_id, saved in artifacts.finished_runs(artifacts_dir)
    ]


def starting_model(artifacts_dir, model=None, run=None):
    """The model file to serve first: --model, --run's model, or the
    published one (ARTIFACTS_DIR/best_model.keras). Raises UserError for a
    run that is not there or did not finish training."""
    if model:
        return model
    if not run:
        return artifacts.model_path(artifacts_dir)
    known = artifacts.run_ids(artifacts_dir)
    if run not in known:
        raise UserError(
            f"no run {run} in {artifacts.runs_folder(artifacts_dir)} (runs there: "
            f"{', '.join(known[-8:]) or 'none'}). Received: run={run}"
        )
    if run not in dict(artifacts.finished_runs(artifacts_dir)):
        raise UserError(
            f"run {run} did not finish training: only a finished run can be served. Received: run={run}"
        )
    return run_model_path(artifacts_dir, run)


class Models:
    """The models the page can answer with: every finished run of
    ARTIFACTS_DIR, and the starting model file `start` when it is none of
    them (a --model export, say). Each is loaded once, the first time it is
    chosen, and kept: a request never loads a model. A lock, so two
    requests for a model not yet loaded load it once."""

    def __init__(self, artifacts_dir, start, threshold=None):
        self.artifacts_dir = artifacts_dir
        self.threshold = threshold  # --threshold: every multi-label model's labels at it
        self.start = key_of(start, artifacts_dir)
        self.extra = [Choice(MODEL_KEY, f"{start} (--model)", start)] if self.start == MODEL_KEY else []
        self.choices = {}
        self.loaded = {}
        self.lock = threading.Lock()
        self.refresh()

    def refresh(self):
        """Lists the finished runs again (one may have finished since the
        server started); returns the Choices, in the drop-down's order."""
        choices = self.extra + run_choices(self.artifacts_dir)
        if self.start not in {choice.key for choice in choices}:
            # A run being served that no longer reads as finished stays.
            choices.insert(0, Choice(self.start, self.start, run_model_path(self.artifacts_dir, self.start)))
        with self.lock:
            self.choices = {choice.key: choice for choice in choices}
        return choices

    def get(self, key):
        """The Served model of a choice's key, loaded on first use. Raises
        UserError for an unknown key or a model that cannot be used."""
        with self.lock:
            if key not in self.loaded:
                if key not in self.choices:
                    raise UserError(f"no model {key} to choose: reload the page to see the runs there are now")
                self.loaded[key] = load_served(key, self.choices[key].path, self.threshold)
            return self.loaded[key]


def load_served(key, path, threshold=None):
    """Loads a model with its companions (inference.load_trained_model, as
    predict.py --model does) and its saved test evaluation; a multi-label
    model decides every label at `threshold` (--threshold) when given, else
    at each label's own (a model of one class per image ignores it: the
    drop-down may hold both kinds). Raises UserError: companions missing or
    of another run, not a model."""
    trained = inference.load_trained_model(path)
    if threshold is not None and trained.task.multi_label:
        trained = inference.at_threshold(trained, threshold)
    # Compiled once per model: each answer's Grad-CAM then takes ~20 ms
    # instead of ~0.5 s eager (2 cores, 64 px MobileNetV2).
    step = figures.gradcam_step(trained, compiled=True) if export.model_format(path) == "keras" else None
    return Served(key, trained, inference.saved_test_reliability(trained), step)


# ---------------------------------------------------------------- the answers


# eq=False: Gradio hashes what a gr.State holds to see if it changed; an
# identity hash is right (each request makes new Answers), a field hash is
# impossible (lists and arrays).
@dataclasses.dataclass(frozen=True, eq=False)
class Answer:
    """One image's answer: its name, the top classes [(class, probability)],
    the trust sentence, the image as the model sees it (enlarged for the
    eye) and the Grad-CAM overlay (None: an export, or beyond MAX_CARDS),
    and the model's input size."""

    name: str
    top: list
    trust: str
    image: object  # uint8 HxWx3, or None beyond MAX_CARDS
    gradcam: object = None
    size: int = 0
    flat: bool = False  # the Grad-CAM map weighs every spot the same
    # A multi-label model's answer: a LabelAnswer per label, most probable
    # first (None for one class per image).
    labels: list | None = None


@dataclasses.dataclass(frozen=True)
class LabelAnswer:
    """One label of a multi-label answer: its probability, its threshold,
    whether it is given (at or above the threshold) and, for a given
    label, its trust sentence (label_trust_sentence)."""

    name: str
    probability: float
    threshold: float
    given: bool
    trust: str = ""


@dataclasses.dataclass(frozen=True)
class Answers:
    """What one request gets: an Answer per readable file (in upload
    order), predictions.csv's rows (header first), the probabilities and
    the files refused (audit.SkippedFile, named as uploaded)."""

    answers: list
    rows: list
    probabilities: object
    refused: list


def trust_sentence(bins, confidence, path, foreign=False):
    """The sentence next to an answer: calibration.Trust's, or why there is
    none (the run saved no test evaluation; a model from another framework
    has no test split of ours)."""
    if foreign:
        return (
            "A model from another framework: its test images are not known here, so there is nothing to say "
            "how often predictions like this are right; `python evaluate.py --compare --external "
            f"{path}` scores it beside your runs on their test images."
        )
    if bins is None:
        return (
            "No test evaluation was saved with this model, so there is nothing to say how often "
            f"predictions like this are right: `python evaluate.py --model {path}` saves one."
        )
    return calibration.trust_at(bins, confidence).sentence()


def label_trust_sentence(bins, probability):
    """The sentence next to a given label of a multi-label answer, from the
    run's test bins over (image, label) pairs (predictions_csv.label_trust):
    "When it says 83% for a label, the label was there 71% of the time on
    the test split (412 image-label pairs at 80-90%)", or that too few
    pairs were there to say."""
    rate, trust = predictions_csv.label_trust(bins, probability)
    low, high = (trust.lower, trust.upper) if probability >= 0.5 else (1.0 - trust.upper, 1.0 - trust.lower)
    span = f"{100 * low:.0f}\u2013{100 * high:.0f}%"
    if rate is None:
        return (
            f"Only {trust.images} test image-label pair{'s' * (trust.images != 1)} had a probability of {span}: "
            f"too few to say how often such a label is there (at least {trust.needed} needed)."
        )
    return (
        f"When it says {probability:.0%} for a label, the label was there {rate:.0%} of the time on the test "
        f"split ({trust.images} image-label pairs at {span})."
    )


def label_answers(served, probabilities):
    """The LabelAnswers of one image's probabilities (a multi-label model):
    every label, most probable first; the given ones (at or above their
    thresholds) with their trust sentence when the run saved test bins."""
    trained = served.trained
    order = np.argsort(-probabilities, kind="stable")
    answers = []
    for number in order:
        probability, threshold = float(probabilities[number]), float(trained.thresholds[number])
        given = probability >= threshold
        trust = label_trust_sentence(served.bins, probability) if given and served.bins is not None else ""
        answers.append(LabelAnswer(trained.class_names[number], probability, threshold, given, trust))
    return answers


def labels_markdown(answer):
    """A multi-label answer's labels as markdown: each given label with its
    percentage, its threshold and its trust sentence; then the others,
    below their thresholds, in one line (names escaped: safe_text)."""
    given = [label for label in answer.labels if label.given]
    lines = ["**Labels found** (at or above each label's threshold):" if given else
             "**No label** is at or above its threshold."]
    lines += [f"- **{safe_text.markdown(label.name)}** {label.probability:.0%} "
              f"(threshold {label.threshold:.0%}). {label.trust}".rstrip() for label in given]
    return "\n".join(lines)


def below_markdown(answer):
    """The labels of a multi-label answer below their thresholds, one line."""
    below = [label for label in answer.labels if not label.given]
    if not below:
        return "Every label is at or above its threshold."
    listed = ", ".join(f"{safe_text.markdown(label.name)} {label.probability:.0%} "
                       f"(threshold {label.threshold:.0%})" for label in below)
    return f"Below their thresholds, not given: {listed}."


def refusal_line(refused):
    """One line naming the files that cannot be used, and why."""
    listed = "; ".join(f"{item.path}: {item.reason}" for item in refused[:5])
    more = f"; and {len(refused) - 5} more" if len(refused) > 5 else ""
    return f"{listed}{more}"


def check_uploads(paths, names, max_bytes=None, readers=None):
    """(usable positions, refused audit.SkippedFile) of uploaded files, each
    checked as the audit checks a dataset's files (audit.check_file: not an
    image, empty, truncated, too large to decode) and against `max_bytes`."""
    usable, refused = [], []
    for position, (path, name) in enumerate(zip(paths, names)):
        if max_bytes is not None and os.path.getsize(path) > max_bytes:
            refused.append(audit.SkippedFile(name, f"over the upload limit of {max_bytes / 1e6:g} MB"))
            continue
        check = audit.check_file(os.path.dirname(path), os.path.basename(path), readers)
        if check.usable:
            usable.append(position)
        else:
            refused.append(audit.SkippedFile(name, check.reason))
    return usable, refused


def answer_files(served, paths, top_k, names=None, readers=None, max_bytes=None, max_cards=MAX_CARDS):
    """Answers for image files: each checked (check_uploads), the readable
    ones decoded by image_io.load_images (the one decode function) and
    predicted by inference.predict_images, the
    first `max_cards` with the image as the model sees it and Grad-CAM.
    `names` (default: the file names) name them in the answers and rows.
    Returns Answers; raises UserError when no file is given or none can be
    used."""
    if not paths:
        raise UserError(EMPTY_SUBMIT)
    names = list(names or [os.path.basename(path) for path in paths])
    trained = served.trained
    usable, refused = check_uploads(paths, names, max_bytes, readers)
    # Decoded eagerly by the training pipeline's decode function, not
    # through inference.predict_files: a tf.data pipeline built per answer
    # traces the decode anew and TensorFlow keeps ~20 KB of each trace, a
    # server that never stops growing (docs/performance.md).
    positions, images = image_io.load_images([paths[i] for i in usable], trained.image_size, readers)
    probabilities = inference.predict_images(trained.model, images, BATCH_SIZE)
    kept = [usable[int(position)] for position in positions]
    # Checked files the decoder still could not read (the audit and the
    # decoder agree on every file known; this is the net under them).
    refused += [audit.SkippedFile(names[i], "not a readable image") for i in usable if i not in kept]
    if not kept:
        raise UserError(
            refusal_line(refused) if len(paths) == 1
            else f"none of the {len(paths)} files can be used: {refusal_line(refused)}"
        )
    rows = predictions_csv.rows_of(trained, [names[i] for i in kept], probabilities, top_k, bins=served.bins)
    # A multi-label answer names every label (each is its own yes/no).
    shown = len(trained.class_names) if trained.task.multi_label else min(top_k, len(trained.class_names))
    tops = predictions_csv.top_classes(probabilities, trained.class_names, shown)
    carded = [paths[i] for i in kept[:max_cards]]
    views, overlays, flat = card_images(served, carded, probabilities[:max_cards], images=images[:max_cards])
    multi_label = trained.task.multi_label
    answers = [
        Answer(
            name=names[i],
            top=tops[number],
            # A multi-label answer's sentences are its given labels'; the
            # image's own sentence only says why there are none.
            trust="" if multi_label and served.bins is not None else trust_sentence(
                served.bins, tops[number][0][1], trained.path, trained.sidecar is not None),
            image=views[number] if number < len(views) else None,
            gradcam=overlays[number] if number < len(overlays) else None,
            size=trained.image_size,
            flat=number < len(flat) and flat[number],
            labels=label_answers(served, probabilities[number]) if multi_label else None,
        )
        for number, i in enumerate(kept)
    ]
    return Answers(answers, rows, probabilities, refused)


def card_images(served, paths, probabilities, readers=None, images=None):
    """(the images as the model sees them, Grad-CAM overlays, whether each
    map is flat) of the files `paths` predicted with `probabilities`: read
    by image_io.load_image (figures.gallery_items) unless `images` holds
    them already decoded, Grad-CAM by figures.gradcam_of, the function
    predict.py --gradcam 1 draws with, overlaid as its figure overlays it.
    No overlays for an export."""
    trained = served.trained
    items = figures.gallery_items(
        paths, None, probabilities, trained.class_names, trained.image_size, range(len(paths)),
        readers=readers, images=images,
    )
    views = [enlarged(item.image) for item in items]
    if not served.gradcam or not items:
        return views, [], []
    heatmaps, _ = figures.gradcam_of(trained, items, step=served.gradcam_step)
    overlays = [enlarged(visualize.gradcam_overlay(item.image, heat)) for item, heat in zip(items, heatmaps)]
    return views, overlays, [bool(np.ptp(heat) < FLAT_HEAT) for heat in heatmaps]


def enlarged(image, size=DISPLAY_SIZE):
    """A uint8 image at least `size` pixels on its side, for the eye only."""
    from PIL import Image

    if image.shape[0] >= size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def status_line(served, result):
    """What the page says above the answers (markdown: the upload names in
    it escaped by safe_text.markdown)."""
    count = len(result.answers)
    line = f"{count} image{'s' * (count != 1)} classified by {describe(served)}."
    if count > MAX_CARDS:
        line += f" Cards for the first {MAX_CARDS}; the table and the CSV hold all {count}."
    if result.refused:
        line += f" Skipped {len(result.refused)}: {refusal_line(result.refused)}"
    return safe_text.markdown(line)


def describe(served):
    run = served.trained.run_config.get("run")
    return f"run {run}" if served.key != MODEL_KEY and run else os.path.basename(served.trained.path)


# ---------------------------------------------------------------- the model card


def run_date(run_id, path):
    """When the run started, from its id (a timestamp), else the model file's time."""
    with contextlib.suppress(ValueError, TypeError):
        return time.strftime("%Y-%m-%d %H:%M", time.strptime(str(run_id)[:15], "%Y%m%d-%H%M%S"))
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))


def dataset_text(run_config):
    """The model card's dataset: its folder and how many images each split
    had ('/data/scans (288 images: train 160, val 48, test 80)'), or the
    built-in demo's."""
    folder = run_config.get("image_dir")
    if not folder:
        return "unknown"
    sizes = run_config.get("split_sizes") or {}
    shown = "the built-in demo" if (run_config.get("options") or {}).get("demo") else image_io.display_path(folder)
    if not sizes:
        return shown
    return (f"{shown} ({sum(sizes.values()):,} images: "
            + ", ".join(f"{split} {count:,}" for split, count in sizes.items()) + ")")


def model_card(served, artifacts_dir):
    """The model card (markdown): run, date, backbone, image size, classes,
    the test split's accuracy, macro F1 and ECE, the temperature, the
    dataset (dataset_text), and whether it is the published model."""
    trained, saved = served.trained, served.saved or {}
    run_config = trained.run_config
    names = trained.class_names
    classes = ", ".join(names[:CARD_CLASSES])
    if len(names) > CARD_CLASSES:
        classes += f" and {len(names) - CARD_CLASSES} more"
    latest = os.path.join(artifacts_dir, artifacts.LATEST_LINK)
    published = os.path.realpath(latest) == os.path.realpath(trained.folder)
    temperature = saved.get("temperature", (run_config.get("calibration") or {}).get("temperature"))
    test = f"{theme.score(saved['accuracy'])} on {saved['images']} test images" if saved else "not saved with this run"
    lines = [
        ("run", run_config.get("run", "?")),
        ("trained", run_date(run_config.get("run"), trained.path)),
        ("backbone", f"{run_config.get('backbone', '?')}, {trained.image_size}x{trained.image_size} px"),
        (f"classes ({len(names)})", classes),
        ("test accuracy", test),
        ("macro F1", theme.score(saved.get("macro_f1"))),
        ("ECE", theme.percent(saved.get("ece"))),
        ("temperature", "none (not calibrated)" if temperature is None else f"{temperature:.3g}"),
        ("dataset", dataset_text(run_config)),
        ("published", f"yes: {artifacts_dir}/{artifacts.MODEL_FILE} is this model" if published else "no"),
        ("file", f"{trained.path} ({export.model_format(trained.path)})"),
        ("Grad-CAM", "on" if served.gradcam else f"off: {NO_GRADCAM}"),
    ]
    if trained.sidecar is not None:
        lines = foreign_card_lines(trained, lines)
    if trained.task.multi_label:
        lines = multi_label_card_lines(trained, lines)
    # Every value through safe_text.markdown: a class named "a | b" or
    # "[x](javascript:...)" is shown as its text, never as new cells or a link.
    rows = "\n".join(f"| {name} | {safe_text.markdown(value)} |" for name, value in lines)
    return f"| model card | |\n|---|---|\n{rows}"


def multi_label_card_lines(trained, lines):
    """A multi-label model's card: its labels and their thresholds, and the
    exact label set's share where a single-label card has the accuracy."""
    thresholds = ", ".join(f"{name} {value:.2f}" for name, value in zip(trained.class_names, trained.thresholds))
    renamed = {"test accuracy": "test exact label set", f"classes ({len(trained.class_names)})":
               f"labels ({len(trained.class_names)}, several per image)"}
    lines = [(renamed.get(name, name), value) for name, value in lines]
    at = [number for number, (name, _) in enumerate(lines) if name.startswith("labels (")][0] + 1
    return lines[:at] + [("thresholds", thresholds)] + lines[at:]


def foreign_card_lines(trained, lines):
    """A model from another framework's card: what its sidecar says in
    place of a run's rows (it has no run, backbone, test split or dataset
    of ours)."""
    sidecar = trained.sidecar
    replaced = {
        "run": f"none: a model from another framework, {sidecar.label} (sidecar {sidecar.path})",
        "backbone": f"unknown (ONNX), {trained.image_size}x{trained.image_size} px, {sidecar.describe()}",
        "test accuracy": "unknown here: evaluate.py --compare --external scores it on your runs' test images",
        "dataset": "unknown (trained elsewhere)",
        "trained": f"elsewhere (the file is dated {dict(lines)['trained']})",
        "Grad-CAM": "off: a model from another framework is an ONNX graph that can be run here, not differentiated",
    }
    return [(name, replaced.get(name, value)) for name, value in lines]


# ---------------------------------------------------------------- the page


def blush_theme(gr):
    """A Gradio theme in the figures' blush palette (theme.py), with
    system fonts only."""
    blush = gr.themes.Color(*visualize.blush_scale(11), name="blush")
    page_theme = gr.themes.Base(
        primary_hue=blush, secondary_hue=blush, neutral_hue=gr.themes.colors.stone,
        font=FONTS, font_mono=MONO_FONTS,
    )
    return page_theme.set(
        body_text_color=theme.INK,
        body_text_color_subdued=theme.MUTED,
        background_fill_secondary=theme.PETAL,
        block_title_text_color=theme.DEEP_ROSE,
        block_label_text_color=theme.DEEP_ROSE,
        color_accent=theme.ROSE,
        color_accent_soft=theme.PETAL,
        border_color_accent=theme.PINK,
        link_text_color=theme.DEEP_ROSE,
        loader_color=theme.ROSE,
        button_primary_background_fill=theme.DEEP_ROSE,
        button_primary_background_fill_hover=theme.ROSE,
        button_primary_text_color=theme.WHITE,
    )


def user_error(gr, error):
    """A UserError as the page's one message (Gradio renders it as HTML)."""
    return gr.Error(html.escape(str(error)), duration=None, print_exception=False)


def table_value(rows):
    """predictions.csv's rows as the page's table."""
    import pandas

    return pandas.DataFrame(rows[1:], columns=rows[0])


def write_csv(rows, folder):
    """predictions.csv in a new folder under the private `folder`; returns its path."""
    return artifacts.write_csv(os.path.join(tempfile.mkdtemp(dir=folder), "predictions.csv"), rows)


def prune(folder, keep, in_use=()):
    """Removes all but the newest `keep` entries (folders and files)
    directly under the private `folder`, newest by modification time,
    never one that holds a path of `in_use` (the request's uploads and
    CSV). Returns how many it removed. Raises ValueError for a folder that
    is not one private_folder made: nothing else is ever pruned."""
    if not is_private_folder(folder):
        raise ValueError(f"prune only empties the server's own private folder, not {folder}")
    in_use = {os.path.relpath(path, folder).split(os.sep)[0] for path in in_use}
    found = []
    with os.scandir(folder) as listing:
        for entry in listing:
            # Another request's upload may add or remove one meanwhile.
            with contextlib.suppress(OSError):
                if entry.name not in in_use:
                    modified = entry.stat(follow_symlinks=False).st_mtime_ns
                    found.append((modified, entry.path, entry.is_dir(follow_symlinks=False)))
    found.sort(reverse=True)
    removed = found[max(0, keep - len(in_use)):]
    for _, path, is_folder in removed:
        if is_folder:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
    return len(removed)


def show_answers(gr, answers, top_k):
    """The cards of a request's Answers (inside gr.render)."""
    for answer in answers:
        if answer.image is None:
            continue
        with gr.Row(elem_classes="answer"):
            gr.Image(answer.image, label=f"as the model sees it ({answer.size}x{answer.size})", format="png",
                     interactive=False, buttons=[], height=DISPLAY_SIZE + 16, min_width=180)
            if answer.gradcam is not None:
                where = "flat: no spot stands out" if answer.flat else "where it looked (deep rose)"
                gr.Image(answer.gradcam, label=f"Grad-CAM: {where}", format="png",
                         interactive=False, buttons=[], height=DISPLAY_SIZE + 16, min_width=180)
            with gr.Column(scale=2):
                if answer.labels is None:
                    gr.Label(dict(answer.top), num_top_classes=top_k, label=answer.name, elem_classes="answer-label")
                else:  # several labels: every one given, with its own sentence; the rest dimmed
                    gr.Markdown(f"**{safe_text.markdown(answer.name)}**\n\n{labels_markdown(answer)}",
                                elem_classes="answer-labels")
                    gr.Markdown(below_markdown(answer), elem_classes="trust labels-below")
                if answer.trust:
                    gr.Markdown(answer.trust, elem_classes="trust")


def build_page(models, start, options, folder):
    """The Gradio Blocks of the page, answering with `models` (start: the
    key of the first model shown); files it writes go under `folder`."""
    import gradio as gr

    max_bytes = int(options.max_upload_mb * 1e6)
    readers = config.load_readers(options.reader)

    def classify(files, key):
        files = list(files or [])
        try:
            if not all(os.path.isfile(path) for path in files):
                raise UserError(GONE_UPLOADS)  # removed by prune: a model switched long after the drop
            served = models.get(key)
            result = answer_files(served, files, options.top_k, readers=readers, max_bytes=max_bytes)
        except UserError as error:
            raise user_error(gr, error) from None
        if result.refused:
            gr.Warning(html.escape(f"Skipped {len(result.refused)}: {refusal_line(result.refused)}"))
        csv_path = write_csv(result.rows, folder)
        prune(folder, KEPT_ENTRIES, in_use=[*files, csv_path])
        return result.answers, table_value(result.rows), csv_path, status_line(served, result)

    def choose(key):
        try:
            return model_card(models.get(key), options.artifacts_dir)
        except UserError as error:
            raise user_error(gr, error) from None

    def again(files, key):
        """After switching model: the dropped files answered by the new one."""
        return classify(files, key) if files else (gr.skip(),) * 4

    def show_column():
        return gr.Column(visible=True)

    def cleared():
        return [], "", gr.Column(visible=False)

    def refused():
        """After a refused request: the refused files leave the drop box
        too, so that Classify does not send them again for a second, same
        message (the page shows one message for one bad file)."""
        return *cleared(), None

    def refreshed():
        return gr.Dropdown(choices=[(item.label, item.key) for item in models.refresh()])

    served = models.get(start)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        answers_what = ("every label it finds (each at or above its threshold)" if served.trained.task.multi_label
                        else "its best classes")
        gr.Markdown(f"## {TITLE}\nDrop or pick images: each gets {answers_what}, how far to trust the "
                    "answer, and where the model looked.")
        # The drop-down spans the page: a run's label (id, published,
        # dataset, backbone, classes) is read whole, not cut in a column.
        choice = gr.Dropdown(
            choices=[(item.label, item.key) for item in models.choices.values()], value=start,
            label="Model", elem_id="model",
        )
        with gr.Row():
            with gr.Column(scale=3):
                files = gr.File(label="Images", file_count="multiple", type="filepath", elem_id="images")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                card = gr.Markdown(model_card(served, options.artifacts_dir), elem_id="card")
        answers = gr.State([])

        @gr.render(inputs=answers)
        def cards(shown):
            if shown:
                show_answers(gr, shown, options.top_k)

        # Hidden until the first answer; shown by a second, private event so
        # that the API's answer is the values, not display updates.
        with gr.Column(visible=False) as every_image:
            table = gr.DataFrame(label="Every image: predictions.csv's rows", elem_id="table", interactive=False)
            download = gr.DownloadButton("Download predictions.csv", elem_id="download")
        outputs = [answers, table, download, status]
        answered = gr.on(
            [button.click, files.upload], classify, inputs=[files, choice], outputs=outputs, api_name="classify"
        )
        answered.success(show_column, outputs=every_image, api_visibility="private")
        # A refused request leaves no answers of earlier files on the page.
        answered.failure(refused, outputs=[answers, status, every_image, files], api_visibility="private")
        switched = choice.change(choose, inputs=choice, outputs=card, api_name="choose").success(
            again, inputs=[files, choice], outputs=outputs, api_visibility="private"
        )
        switched.failure(cleared, outputs=[answers, status, every_image], api_visibility="private")
        page.load(refreshed, outputs=choice, api_visibility="private")
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return page


# ---------------------------------------------------------------- serving


def check_port(host, port):
    """Raises UserError when nothing can listen on host:port (in use, or an
    address this machine does not have), before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server's own socket: a port left in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            reason = error.strerror or str(error)
            raise UserError(
                f"cannot serve on {host}:{port}: {reason} (another server may be using the port: "
                f"pick another with --port). Received: host={host}, port={port}"
            ) from None


PRIVATE_PREFIX = "image-classifier-app-"


def is_private_folder(folder):
    """Whether `folder` is one private_folder made: a folder of the system's
    temporary folder named PRIVATE_PREFIX..., not a link. The only folder
    this server ever deletes files in."""
    real = os.path.realpath(folder)
    return (os.path.basename(real).startswith(PRIVATE_PREFIX) and not os.path.islink(folder)
            and os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()))


@contextlib.contextmanager
def private_folder():
    """A temporary folder only this server writes into (Gradio's uploads
    and cache, the CSVs), removed when it stops: serving leaves nothing on
    disk."""
    folder = tempfile.mkdtemp(prefix=PRIVATE_PREFIX)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def warm_up(served, folder):
    """Answers one blank image once, so that TensorFlow's first-call work
    (tracing the model's predict function, the first gradient) is done before the
    address is printed, not while the first user waits (about 5 s on 2
    cores)."""
    from PIL import Image

    path = os.path.join(tempfile.mkdtemp(dir=folder), "warm_up.png")
    Image.new("RGB", (served.trained.image_size,) * 2, theme.PETAL).save(path)
    answer_files(served, [path], top_k=1)


def address(host, port):
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def launch(page, options, folder):
    """Starts the server (no share link, the blush theme, the upload limit)
    without blocking. Raises UserError when the port is taken after all."""
    import gradio as gr

    try:
        page.launch(
            server_name=options.host, server_port=options.port, share=False, prevent_thread_lock=True,
            quiet=True, max_file_size=int(options.max_upload_mb * 1e6), theme=blush_theme(gr), css=CSS,
            footer_links=[], run_history=False, enable_monitoring=False, mcp_server=False, ssr_mode=False,
            pwa=False, show_error=False, allowed_paths=[folder],
        )
    except OSError as error:
        raise UserError(f"cannot serve on {options.host}:{options.port}: {error}") from None


def interrupt(number, frame):
    raise KeyboardInterrupt


def wait_until_stopped(page):
    """Blocks until Ctrl+C or SIGTERM, then stops the server."""
    # SIGTERM as Ctrl+C, so that the private folder is removed then too.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        while page.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("Stopping the server.")
    finally:
        page.close(verbose=False)


def serve(argv=None):
    options = parse_arguments(argv)
    console.start_tensorflow(options.verbose)
    check_port(options.host, options.port)
    models = Models(options.artifacts_dir, starting_model(options.artifacts_dir, options.model, options.run),
                    options.threshold)
    start = models.start
    served = models.get(start)  # refusals (companions, not a model) before any server starts
    with private_folder() as folder:
        # Read by Gradio when it is imported: uploads and its cache go into
        # the private folder; no usage statistics are sent.
        os.environ["GRADIO_TEMP_DIR"] = folder
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        page = build_page(models, start, options, folder)
        warm_up(served, folder)
        launch(page, options, folder)
        print(f"Serving {describe(served)} ({served.trained.path}); "
              f"{len(models.choices)} model(s) in the drop-down.")
        if options.host not in ("127.0.0.1", "localhost", "::1"):
            print(HOST_WARNING.format(host=options.host, port=options.port), file=sys.stderr)
        print(f"Open {address(options.host, options.port)} in a browser (Ctrl+C stops the server).", flush=True)
        wait_until_stopped(page)


# ---------------------------------------------------------------- command line


EXAMPLES = """\
  python app.py                                   # the published model on http://127.0.0.1:7860
  python app.py --run 20261122-031500 --port 8000
  python app.py --model model_artifacts/runs/RUN/best_model.onnx
  python app.py --host 0.0.0.0                    # anyone on the network (no login)
"""


def build_parser():
    """app.py's command line (config.build_parser, from the one option table)."""
    return config.build_parser("app", DESCRIPTION, EXAMPLES)


def parse_arguments(argv):
    """The options as a Config. Raises UserError on a bad value."""
    options = config.validate(config.config_from_args(build_parser().parse_args(argv)), "app")
    if options.model and options.run:
        raise UserError(
            f"give --model PATH or --run RUN_ID, not both. Received: model={options.model}, run={options.run}"
        )
    return options


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return errors.run_cli(serve, argv)


if __name__ == "__main__":
    sys.exit(main())
