"""The model comparison: finished runs scored on the same test images.

    python main.py --image_dir DIR --backbone mobilenet_v2,efficientnet_b0,resnet50   # then compared (runs.py)
    python evaluate.py --image_dir DIR --compare            # every finished run on DIR
    python evaluate.py --image_dir DIR --compare RUN RUN    # chosen runs
    python evaluate.py --image_dir DIR --compare RUN --external resnet.onnx

Each run is scored on the images in every compared run's test split, so
no model is ever scored on an image it trained or validated on, even when
the runs were split differently (another --seed or split fractions): an
image in any compared run's train or val split is left out for all.
Models from other frameworks (--external: an .onnx file with its sidecar,
external.py) are scored on the same images, their classes matched by
name; what they were trained on is unknown, and the notes say so. Writes
RESULTS_DIR/model_comparison/<stamp>/model_comparison.csv, .md (the table
to paste into a report, best first) and .png (visualize.py).
"""

import dataclasses
import os
import time

import numpy as np

import artifacts
import external
import image_io
import inference
import label_metrics
import safe_text
import tasks
import theme
import visualize
from errors import UserError

COMPARISON_FOLDER = "model_comparison"
# Inference is timed on batches of this many images, after warm-up calls.
TIMING_BATCH = 32
TIMING_WARMUP = 2
TIMING_REPEATS = 5
# Below this many common test images a comparison warns that its ranking
# may be chance: with 30, one image moves an accuracy by 3.3 points.
MIN_COMMON_IMAGES = 30

# The source column: a run trained here, or a model from another framework.
OURS, EXTERNAL = "this tool", "external"
# (CSV column, markdown header) in table order.
COLUMNS = (
    ("rank", "#"),
    ("backbone", "backbone"),
    ("source", "source"),
    ("run", "run"),
    ("weights", "weights"),
    ("image_size", "image size"),
    ("parameters", "parameters"),
    ("model_mb", "model MB"),
    ("training_seconds", "training s"),
    ("epochs", "epochs"),
    ("best_epoch", "best epoch"),
    ("test_accuracy", "test accuracy"),
    ("test_loss", "loss"),
    ("macro_f1", "macro F1"),
    ("macro_roc_auc", "macro ROC AUC"),
    ("inference_ms_per_image", f"inference ms/image (batch {TIMING_BATCH})"),
    ("published", "published"),
)
# A multi-label comparison's columns: micro-F1 and mAP lead; test_accuracy
# is the exact-set (subset) accuracy, as label_metrics calls "accuracy".
LABEL_COLUMNS = (
    *COLUMNS[:11],
    ("micro_f1", "micro F1"),
    ("mAP", "mAP"),
    ("macro_f1", "macro F1"),
    ("test_accuracy", "exact-set accuracy"),
    ("hamming_loss", "Hamming loss"),
    ("test_loss", "loss (BCE)"),
    *COLUMNS[-2:],
)


def columns_of(task):
    """The comparison's (CSV column, markdown header) pairs for runs of `task` (tasks.Task)."""
    return LABEL_COLUMNS if task.multi_label else COLUMNS


# ---------------------------------------------------------------- which runs


def finished_runs(artifacts_dir, image_dir, chosen=None, at_least=2):
    """The run folders to compare: the `chosen` run ids (each must have
    finished training), or every finished run of ARTIFACTS_DIR trained on
    `image_dir`, oldest first. Raises UserError when fewer than `at_least`
    are left (1 when models from elsewhere join the comparison), or a
    chosen run is unknown, unfinished or of another folder."""
    known = artifacts.run_ids(artifacts_dir)
    wanted = list(dict.fromkeys(chosen)) if chosen else known
    folders = []
    for run_id in wanted:
        if run_id not in known:
            raise UserError(
                f"no run {run_id} in {artifacts.runs_folder(artifacts_dir)} "
                f"(runs there: {', '.join(known[-8:]) or 'none'}). Received: compare={run_id}"
            )
        folder = os.path.join(artifacts.runs_folder(artifacts_dir), run_id)
        saved = artifacts.run_config_or_empty(folder)
        same_folder = image_dir is None or (
            bool(saved.get("image_dir"))
            and os.path.realpath(saved["image_dir"]) == os.path.realpath(image_dir)
        )
        finished = artifacts.is_finished(folder, saved)
        if chosen and not finished:
            raise UserError(
                f"run {run_id} did not finish training (status {saved.get('status', 'unknown')}): "
                f"only finished runs can be compared. Received: compare={run_id}"
            )
        if chosen and not same_folder:
            raise UserError(
                f"run {run_id} was trained on {saved.get('image_dir')}, not on {image_dir}: runs are "
                f"compared on the test images of one folder. Received: compare={run_id}"
            )
        if finished and same_folder:
            folders.append(folder)
    if len(folders) < at_least:
        where = f" trained on {image_dir}" if image_dir else ""
        if at_least == 1:
            raise UserError(
                f"--compare --external needs at least one finished run{where}, whose test split the models "
                f"are scored on; found none in {artifacts.runs_folder(artifacts_dir)} (train one with main.py)"
            )
        raise UserError(
            f"--compare needs at least two finished runs{where}; found {len(folders)} in "
            f"{artifacts.runs_folder(artifacts_dir)} (train several with main.py --backbone A,B)"
        )
    return folders


# ---------------------------------------------------------------- which images


@dataclasses.dataclass(frozen=True)
class CommonImages:
    """The test images every compared run may be scored on.

    paths: relative to the dataset, sorted; labels: their class names;
    same_split: whether every run saved the same split manifest;
    left_out: {relative path: why} for images in some run's test split
    that are not scored."""

    paths: tuple
    labels: tuple
    same_split: bool
    left_out: dict

    def describe(self):
        """One to three lines for the printout and the markdown notes."""
        few = [] if len(self.paths) >= MIN_COMMON_IMAGES else [
            f"warning: only {len(self.paths)} common test image(s) (fewer than {MIN_COMMON_IMAGES}): one image "
            f"moves an accuracy by {1 / len(self.paths):.1%}, so the ranking may be chance"
            + ("" if self.same_split else "; compare runs trained with the same --seed and split options")
        ]
        if self.same_split:
            return [f"{len(self.paths)} test images: every run has the same split", *few]
        lines = [
            f"{len(self.paths)} test images in every run's test split: the runs were split "
            f"differently (another --seed, split fractions or files), so {len(self.left_out)} "
            "test image(s) of some run are left out for all"
        ]
        trained = sum(1 for why in self.left_out.values() if why.startswith("in the train"))
        if trained:
            lines.append(
                f"{trained} of them because another compared run trained or validated on them"
            )
        return lines + few


def common_test_images(manifests):
    """The images to score every run on, from `manifests` ({run id: list of
    artifacts.ManifestRow}): those in every run's test split, with the same
    class in every manifest. An image in any run's train or val split is
    never among them. Returns CommonImages; raises UserError when none is
    left."""
    splits = {}  # path -> {run: (split, class)}
    for run_id, rows in manifests.items():
        for row in rows:
            splits.setdefault(row.path, {})[run_id] = (row.split, row.label)
    chosen, left_out = [], {}
    for path in sorted(splits):
        seen = splits[path]
        if not any(split == "test" for split, _ in seen.values()):
            continue
        trained_on = sorted(run for run, (split, _) in seen.items() if split != "test")
        missing = sorted(set(manifests) - set(seen))
        if trained_on:
            left_out[path] = f"in the train/val split of run(s) {', '.join(trained_on)}"
        elif missing:
            left_out[path] = f"not in the split of run(s) {', '.join(missing)}"
        elif len({label for _, label in seen.values()}) > 1:
            left_out[path] = "a different class in different runs' manifests"
        else:
            chosen.append((path, next(iter(seen.values()))[1]))
    first = next(iter(manifests.values()))
    same = all(rows == first for rows in manifests.values())
    if not chosen:
        raise UserError(
            f"no test image is in every compared run's test split ({len(left_out)} test images "
            "were in another run's train/val split or missing from it): compare runs trained "
            "with the same --seed and split options"
        )
    return CommonImages(
        paths=tuple(path for path, _ in chosen),
        labels=tuple(label for _, label in chosen),
        same_split=same,
        left_out=left_out,
    )


# ---------------------------------------------------------------- scoring one run


def inference_ms_per_image(model, images, batch_size=TIMING_BATCH, warmup=TIMING_WARMUP, repeats=TIMING_REPEATS):
    """Milliseconds per image of model.predict_on_batch (the call the
    prediction loop makes) on one batch of `batch_size` uint8 images made
    from `images` (repeated to fill it): the median of `repeats` timed
    calls after `warmup` untimed ones, which trace and warm the caches."""
    batch = np.stack([images[i % len(images)] for i in range(batch_size)])
    inference.trace_for_any_batch_size(model, batch)  # the scoring's trace serves this batch too
    for _ in range(warmup):
        model.predict_on_batch(batch)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings)) * 1000 / batch_size


def training_summary(run_config):
    """(seconds, epochs, best epoch) of a run, from the "training" entry
    main.py records in run_config.json; None for what an older run did not
    record."""
    training = run_config.get("training") or {}
    return training.get("seconds"), training.get("epochs"), training.get("best_epoch")


def macro_auc(roc_auc):
    """The macro ROC AUC (for two classes the one AUC), or None."""
    if roc_auc["macro"] is not None:
        return roc_auc["macro"]
    values = [value for value in roc_auc["per_class"].values() if value is not None]
    return values[0] if values else None


def backbone_label(run_config):
    backbone = run_config.get("backbone", "?")
    alpha = run_config.get("alpha", 1.0)
    return backbone if alpha in (None, 1.0) else f"{backbone} (alpha {alpha:g})"


def weights_label(weights):
    if weights in (None, "imagenet", "none"):
        return weights or "?"
    return os.path.basename(str(weights))  # a local weights file


def common_images_of(trained, image_dir, common):
    """`common` (CommonImages of `image_dir`) as LabelledImages of the model
    `trained`: each label the number of its class name in the model's own
    class order, so a model whose classes are in another order is scored
    right."""
    paths = [os.path.join(os.path.abspath(image_dir), path) for path in common.paths]
    if trained.task.multi_label:
        # The manifest's label cell holds the label set, joined by the run's delimiter.
        label_sets = inference.label_sets_of(common.labels, trained)
        return inference.LabelledImages(paths=paths, labels=trained.task.encode(label_sets, trained.class_names),
                                        description="test images common to the compared runs")
    class_ids = {name: number for number, name in enumerate(trained.class_names)}
    return inference.LabelledImages(
        paths=paths,
        labels=np.array([class_ids[label] for label in common.labels], dtype=np.int32),
        description="test images common to the compared runs",
    )


def with_saved_thresholds(trained, evaluation):
    """A multi-label `evaluation` of the model `trained` deciding with the
    thresholds saved with it (run_config.json's "thresholds", chosen on its
    validation split); any other evaluation as it is."""
    if not trained.task.multi_label:
        return evaluation
    saved = (trained.run_config or {}).get("thresholds")
    return dataclasses.replace(evaluation, thresholds=label_metrics.thresholds_of(trained.class_names, saved))


def scored(trained, images, batch_size, readers, timing_images):
    """(the comparison row's metric and timing columns, the Evaluation) of
    the model `trained` on LabelledImages `images`."""
    evaluation = with_saved_thresholds(trained, inference.evaluate_images(trained, images, batch_size, readers))
    metrics = evaluation.metrics()
    if timing_images is None:
        timing_images = load_timing_images(images.paths, trained.image_size, readers)
    columns = {
        "test_accuracy": metrics["accuracy"],  # multi-label: the exact-set accuracy
        "test_loss": metrics["loss"],
        "macro_f1": metrics["macro_avg"]["f1"],
        "macro_roc_auc": macro_auc(metrics["roc_auc"]),
        "inference_ms_per_image": inference_ms_per_image(trained.model, timing_images),
        "test_images": metrics["num_samples"],
    }
    if trained.task.multi_label:
        columns.update(micro_f1=metrics["micro_avg"]["f1"], mAP=metrics["mAP"], hamming_loss=metrics["hamming_loss"])
    return columns, evaluation


def score_run(folder, image_dir, common, batch_size, readers=None, timing_images=None):
    """Scores the run in `folder` on `common` (CommonImages of `image_dir`)
    and times its inference. Returns (the comparison row as a dict, the
    Evaluation)."""
    model_path = os.path.join(folder, artifacts.MODEL_FILE)
    trained = inference.load_trained_model(model_path)
    own = artifacts.read_manifest(folder)
    seen = {row.path for row in own if row.split != "test"}
    if seen & set(common.paths):  # common_test_images never allows it: a bug if so
        raise AssertionError(f"run {folder} would be scored on images it trained on")
    images = common_images_of(trained, image_dir, common)
    columns, evaluation = scored(trained, images, batch_size, readers, timing_images)
    seconds, epochs, best_epoch = training_summary(trained.run_config)
    row = {
        "backbone": backbone_label(trained.run_config),
        "source": OURS,
        "run": os.path.basename(folder),
        "weights": weights_label(trained.run_config.get("weights")),
        "image_size": trained.image_size,
        "parameters": int(trained.model.count_params()),
        "model_mb": os.path.getsize(model_path) / 1e6,
        "training_seconds": seconds,
        "epochs": epochs,
        "best_epoch": best_epoch,
        **columns,
    }
    return row, evaluation


def load_external_model(model_path, class_names, task=tasks.SINGLE_LABEL):
    """The model from another framework at `model_path` (inference.
    load_external_model: the .onnx file and its sidecar), its classes
    checked by name against the compared runs' `class_names` and its task
    against theirs (`task`). Raises UserError naming the file and the
    field."""
    trained = inference.load_external_model(model_path)
    if trained.task != task:
        raise UserError(
            f"--external {model_path} is a {trained.task.name.replace('_', '-')} model and the compared runs are "
            f"{task.name.replace('_', '-')}: models of different tasks are not compared"
        )
    external.check_classes(trained.sidecar, class_names, "the compared runs' dataset")
    return trained


def score_external(trained, image_dir, common, batch_size, readers=None, timing_images=None):
    """Scores the model from another framework `trained` (load_external_model)
    on `common`, as score_run scores a run. Training columns are None: what
    it was trained on, and how long, is unknown. Returns (row, Evaluation)."""
    images = common_images_of(trained, image_dir, common)
    columns, evaluation = scored(trained, images, batch_size, readers, timing_images)
    row = {
        "backbone": trained.sidecar.label,
        "source": EXTERNAL,
        "run": os.path.basename(trained.path),
        "weights": None,
        "image_size": trained.image_size,
        "parameters": external.parameter_count(trained.path),
        "model_mb": os.path.getsize(trained.path) / 1e6,
        "training_seconds": None,
        "epochs": None,
        "best_epoch": None,
        "published": "",
        **columns,
    }
    return row, evaluation


def load_timing_images(paths, image_size, readers=None):
    """Up to TIMING_BATCH of `paths` as uint8 arrays of `image_size`."""
    return [
        image_io.load_image(path, image_size, readers=readers).numpy()
        for path in paths[:TIMING_BATCH]
    ]


# ---------------------------------------------------------------- the table


def ranked(rows):
    """Rows best first (test accuracy, then macro F1, then lower loss; rows
    of multi-label runs by micro-F1, then mAP, then lower loss), each
    given its rank."""
    def order_key(row):
        if "micro_f1" in row:
            return (-row["micro_f1"], -(row["mAP"] if row["mAP"] is not None else -1.0), row["test_loss"])
        return (-row["test_accuracy"], -row["macro_f1"], row["test_loss"])

    order = sorted(rows, key=order_key)
    return [{**row, "rank": rank} for rank, row in enumerate(order, start=1)]


def csv_value(value):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def markdown_value(name, value):
    """A table cell's markdown: a number formatted, a text (a sidecar's
    name, a backbone) escaped by safe_text.markdown, so `|`, a tag or a
    link in it is shown as text and never shifts the row."""
    return safe_text.markdown(_cell_text(name, value))


def _cell_text(name, value):
    if value is None:
        return "n/a"
    if name in ("test_accuracy", "macro_f1", "macro_roc_auc", "test_loss", "micro_f1", "mAP", "hamming_loss"):
        return theme.score(value)
    if name == "parameters":
        return f"{value:,}"
    if name == "model_mb":
        return f"{value:.1f}"
    if name == "training_seconds":
        return f"{value:.0f}"
    if name == "inference_ms_per_image":
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows, columns=COLUMNS):
    """The comparison as a GitHub markdown table, numbers right-aligned;
    `columns`: (name, header) pairs (columns_of)."""
    text_columns = ("backbone", "source", "run", "weights", "published")
    lines = [
        "| " + " | ".join(header for _, header in columns) + " |",
        "|" + "|".join("---" if name in text_columns else "---:" for name, _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(markdown_value(name, row.get(name)) for name, _ in columns) + " |")
    return "\n".join(lines)


def write_comparison(rows, folder, notes, subtitle="", columns=COLUMNS):
    """model_comparison.csv, .md and .png in `folder` for ranked `rows`;
    `notes`: lines said under the markdown table; `columns`: columns_of
    the runs' task. Returns the three paths."""
    names = [name for name, _ in columns] + ["test_images"]
    csv_path = artifacts.write_csv(
        os.path.join(folder, "model_comparison.csv"),
        [names] + [[csv_value(row.get(name)) for name in names] for row in rows],
    )
    text = "\n".join(
        ["# Model comparison", "", markdown_table(rows, columns), ""]
        + [f"- {safe_text.markdown(line)}" for line in notes]
        + [""]
    )
    markdown_path = artifacts.write_text(os.path.join(folder, "model_comparison.md"), text)
    chart_path = visualize.plot_model_comparison(
        rows, os.path.join(folder, "model_comparison.png"), subtitle=subtitle
    )
    return csv_path, markdown_path, chart_path


# ---------------------------------------------------------------- the whole comparison


def timing_images_of_size(size, image_dir, common, readers, timing_images):
    """The timing images of `size` px, loaded once for every model of that
    size (`timing_images`: {size: images}, filled in here); None for no size."""
    if size and size not in timing_images:
        paths = [os.path.join(os.path.abspath(image_dir), path) for path in common.paths]
        timing_images[size] = load_timing_images(paths, size, readers)
    return timing_images.get(size)


def score_compared_run(folder, image_dir, common, batch_size, readers, timing_images):
    """score_run, with the timing images of the run's image size loaded once
    for all models of that size (`timing_images`, filled in here)."""
    size = int(artifacts.read_run_config(folder).get("image_size") or 0)
    images = timing_images_of_size(size, image_dir, common, readers, timing_images)
    row, _ = score_run(folder, image_dir, common, batch_size, readers, images)
    return row


def external_notes(models, common):
    """The markdown notes on the models from other frameworks (TrainedModel
    with a sidecar) in a comparison."""
    notes = []
    for trained in models:
        sidecar = trained.sidecar
        notes.append(
            f"external: {sidecar.label} ({os.path.abspath(trained.path)}) is a model from another framework, "
            f"described by {os.path.abspath(sidecar.path)} ({sidecar.describe()}, fed {trained.image_size} px "
            f"{trained.model.layout}); scored on the same {len(common.paths)} test images, its classes matched "
            "by name. The images it was trained on are unknown: unlike the runs, it may have trained on "
            "some of these test images"
        )
    if models:
        notes.append(
            "external models: weights, training s, epochs and best epoch are n/a (not recorded); parameters "
            "are the weights stored in the ONNX file; the pixels are decoded and resized as for the runs, "
            "then given the sidecar's preprocessing"
        )
    return notes


def run_companions(folders):
    """({run id: manifest rows}, the class names every run predicts, their
    tasks.Task) of the runs in `folders`. Raises UserError when a
    companion cannot be read, the runs are of different tasks (multi-label
    runs beside single-label ones) or predict different classes."""
    manifests, class_names, run_tasks = {}, {}, {}
    for folder in folders:
        run_id = os.path.basename(folder)
        try:
            manifests[run_id] = artifacts.read_manifest(folder)
            class_names[run_id] = artifacts.read_class_names(folder)
            run_tasks[run_id] = tasks.saved_task(artifacts.read_run_config(folder),
                                                 os.path.join(folder, artifacts.RUN_CONFIG_FILE))
        except artifacts.CompanionError as error:
            raise UserError(f"cannot compare run {run_id}: {error}") from None
    if len(set(run_tasks.values())) > 1:
        multi = [run for run, task in run_tasks.items() if task.multi_label]
        single = [run for run, task in run_tasks.items() if not task.multi_label]
        raise UserError(
            f"multi-label run(s) {', '.join(multi)} and single-label run(s) {', '.join(single)} cannot be compared "
            "on one table (different metrics): compare each kind on its own (evaluate.py --compare RUN RUN ...)"
        )
    if len(set(class_names.values())) > 1:
        described = "; ".join(f"{run}: {', '.join(names)}" for run, names in class_names.items())
        raise UserError(f"the runs predict different classes, so they cannot be compared ({described})")
    return manifests, next(iter(class_names.values())), next(iter(run_tasks.values()))


def print_row(row):
    """A scored model's line on the terminal (an external model's name is
    the user's sidecar text: printed by safe_text.terminal)."""
    where = f"external, {row['run']}" if row["source"] == EXTERNAL else f"run {row['run']}"
    if "micro_f1" in row:
        map_text = "n/a" if row["mAP"] is None else theme.score(row['mAP'])
        print(
            f"    {safe_text.terminal(row['backbone'])} ({safe_text.terminal(where)}): micro-F1 {theme.score(row['micro_f1'])}, "
            f"mAP {map_text}, exact set {theme.score(row['test_accuracy'])}, loss {theme.score(row['test_loss'])}, "
            f"{row['inference_ms_per_image']:.2f} ms/image"
        )
        return
    print(
        f"    {safe_text.terminal(row['backbone'])} ({safe_text.terminal(where)}): accuracy {theme.score(row['test_accuracy'])}, "
        f"loss {theme.score(row['test_loss'])}, macro F1 {theme.score(row['macro_f1'])}, "
        f"{row['inference_ms_per_image']:.2f} ms/image"
    )


def timing_repeats_note(images):
    """[the line saying what the timing batches hold] when there are fewer
    common test images than TIMING_BATCH (the same images, repeated to
    fill them); [] otherwise."""
    if images >= TIMING_BATCH:
        return []
    return [f"timing batches repeat images: the {images} common test image(s) fill each batch of {TIMING_BATCH}"]


def comparison_notes(common, image_dir, published, foreign, task=tasks.SINGLE_LABEL):
    """The lines under the markdown table."""
    order = (
        "multi-label runs, each deciding with the per-label thresholds chosen on its own validation split; best "
        "first: micro-F1, then mAP, then lower loss; loss is the binary cross-entropy of the "
        "(temperature-calibrated) probabilities; exact-set accuracy: every label of an image right "
        "(the chart's \"test accuracy\")"
        if task.multi_label else
        "best first: test accuracy, then macro F1, then lower loss; loss is the cross-entropy of the "
        "(temperature-calibrated) probabilities"
    )
    notes = [
        *common.describe(),
        f"image folder: {os.path.abspath(image_dir)}",
        order,
        f"inference: median of {TIMING_REPEATS} timed predict_on_batch calls on {TIMING_BATCH} images after "
        f"{TIMING_WARMUP} warm-up calls, one after another in one process on this machine "
        "(CPU unless a GPU was found)" + "".join(f"; {note}" for note in timing_repeats_note(len(common.paths))),
        "training s: the training stage of the invocation that finished the run (n/a: not recorded by the "
        "version that trained it); best epoch: the epoch of the lowest val_loss, whose model is saved",
    ]
    if published:
        notes.append(f"published (ARTIFACTS_DIR/best_model.keras): run {published}")
    return notes + external_notes(foreign, common)


def compare_runs(folders, image_dir, results_dir, batch_size, readers=None, published=None, externals=()):
    """Scores the runs in `folders` (all trained on `image_dir`) on their
    common test images and writes RESULTS_DIR/model_comparison/<stamp>/
    under a newly reserved stamp, printing where each file went.
    `published`: the run id ARTIFACTS_DIR/latest points at, marked in the
    table. `externals`: paths of models from other frameworks (.onnx files
    with their sidecars), scored on the same images. Returns (ranked rows,
    CommonImages, [csv, md, png paths]). Raises UserError when the runs
    cannot be compared or an external model cannot be used."""
    stamp = artifacts.new_run_stamp(results_dir)
    manifests, class_names, task = run_companions(folders)
    common = common_test_images(manifests)
    # Every external model is loaded and checked before any is scored: a
    # bad sidecar stops the command at once.
    foreign = [load_external_model(path, class_names, task) for path in externals]
    for line in common.describe():
        print(f"    {line}")
    for line in timing_repeats_note(len(common.paths)):
        print(f"    {line}")
    rows, timing_images = [], {}
    for folder in folders:
        row = score_compared_run(folder, image_dir, common, batch_size, readers, timing_images)
        row["published"] = "yes" if row["run"] == published else ""
        print_row(row)
        rows.append(row)
    for trained in foreign:
        images = timing_images_of_size(trained.image_size, image_dir, common, readers, timing_images)
        row, _ = score_external(trained, image_dir, common, batch_size, readers, images)
        print_row(row)
        rows.append(row)
    folder = os.path.join(results_dir, COMPARISON_FOLDER, stamp)
    subtitle = f"{len(common.paths)} common test images · {os.path.basename(os.path.normpath(image_dir))}"
    if foreign:
        subtitle += f" · {len(foreign)} external model{'s' if len(foreign) > 1 else ''}"
    rows = ranked(rows)
    paths = list(write_comparison(rows, folder, comparison_notes(common, image_dir, published, foreign, task), subtitle,
                                  columns_of(task)))
    for path in paths:
        print(f"    {'figure' if path.endswith('.png') else 'table'}: {path}")
    return rows, common, paths
