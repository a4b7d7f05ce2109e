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

    python evaluate.py --image_dir DIR --compare [RUN ...] [--external resnet.onnx ...]

compares trained runs (and models from other frameworks, each an .onnx
file with its sidecar resnet.json: external.py) on the same test images
instead (compare.py); --cross_validation [ID] re-scores a finished
cross-validation of main.py --folds K (cross_validation.py). --model resnet.onnx evaluates such a model alone, on
every image of --image_dir.

The command only: loading the model, predicting and the metrics are
inference.py's and metrics.py's, the figures figures.py's.
"""

import contextlib
import dataclasses
import os
import sys

import artifacts
import compare
import config
import console
import cross_validation
import data_loader
import errors
import export
import figures
import inference
import metrics
import option_types
import report
import run_lock
import theme
from errors import UserError

DESCRIPTION = "Evaluate a trained classifier on a labelled folder of images."

EXAMPLES = """\
  python evaluate.py --image_dir photos/ --rows 2 --cols 5      # the test split of the folder it trained on
  python evaluate.py --image_dir other_photos/                  # every image of a folder it never saw
  python evaluate.py --image_dir photos/ --export onnx,litert    # export and check each export
  python evaluate.py --image_dir photos/ --compare               # compare every finished run on photos/
"""


def build_parser():
    """evaluate.py's command line (config.build_parser, from the one option table)."""
    return config.build_parser("evaluate", DESCRIPTION, EXAMPLES)


def parse_arguments(argv):
    """The options as a Config. Raises UserError on a bad value."""
    options = config.validate(config.config_from_args(build_parser().parse_args(argv)), "evaluate")
    if options.export and options.model and export.model_format(options.model) != "keras":
        raise UserError(
            f"--export exports a Keras model: pass its .keras file. Received: model={options.model}"
        )
    return options


def int8_calibration(trained, options, readers=None):
    """--quantize int8: the training images it calibrates on, loaded before
    anything is evaluated (a folder that moved stops the command at once),
    from --image_dir when it holds the split manifest's training files,
    else from the folder the model was trained on; None without int8.
    Raises UserError."""
    if options.quantize != "int8" or not options.export:
        return None
    trained_dir = trained.run_config.get("image_dir")
    where, paths = export.manifest_training_paths(trained.folder, [options.image_dir, trained_dir], trained_dir)
    images = export.load_images(export.calibration_paths(paths, seed=options.seed), trained.image_size, readers)
    print(f"    int8 calibration on {len(images)} training images of {where}")
    return images


def export_evaluated(trained, evaluation, options, readers=None, calibration_images=None):
    """--export: exports the evaluated Keras model into its folder (the run
    folder it was loaded from: trained.file) and checks each export on the
    same images (export.export_and_check). Returns the report and its path."""
    dataset = data_loader.prediction_dataset(
        evaluation.paths, trained.image_size, options.batch_size, readers, tags=evaluation.true_labels
    )
    report = export.export_and_check(
        trained.model, trained.file, options.export, dataset, options.quantize, calibration_images,
        description=evaluation.description, thresholds=trained.thresholds,
    )
    report_path = export.report_path(trained.file)
    for line in export.report_lines(report):
        print(f"    {line}")
    print(f"    export report: {report_path}")
    return report, report_path


def save_test_reliability(trained, image_dir, evaluation, scores, options):
    """This evaluation's reliability bins and scores, saved beside the model
    (artifacts.TEST_RELIABILITY_FILE) when it is the run's own test
    evaluation (the folder the model was trained on, its saved test split,
    every class, no test-time augmentation, the .keras model) and the run
    has none yet: a run trained before main.py saved them then gets the
    trust sentences of app.py and predict.py. The file is written under the
    run's lock (run_lock.py): a run another process trains or exports into
    gets nothing, and one line says so. Returns the path written, or None."""
    path = os.path.join(trained.folder, artifacts.TEST_RELIABILITY_FILE)
    own_test = (
        options.split == "test" and not options.classes and options.tta == 1
        and trained.path.endswith(".keras") and artifacts.has_manifest(trained.folder)
        and inference.is_training_folder(image_dir, trained)
    )
    if not own_test:
        return None
    with run_locked_for_writing(trained.folder, already_held=bool(options.export)) as locked:
        if not locked or os.path.exists(path):
            return None
        record = {"run": trained.run_config.get("run"), "model_sha256": artifacts.file_sha256(trained.file),
                  **metrics.test_reliability(evaluation, scores)}
        try:
            return artifacts.write_json(path, record)
        except OSError as error:  # a run folder this user may only read
            print(f"    note: the reliability bins could not be saved beside the model: {error}")
            return None


@contextlib.contextmanager
def run_locked_for_writing(folder, already_held):
    """The run in `folder` locked for a write into it (run_lock.py), unless
    this process holds it already (`already_held`: --export). Yields
    whether the block may write: False, after one line saying why, when
    another process holds the run (a run still training, or one another
    evaluate.py exports into) or the folder cannot hold a lock."""
    if already_held:
        yield True
        return
    try:
        handle = run_lock.acquire(folder, "saving its reliability bins", "reliability bins not saved")
    except UserError as refusal:
        print(f"    note: {refusal}")
        yield False
        return
    try:
        yield True
    finally:
        run_lock.release(handle)


def run_comparison(options):
    """--compare: the finished runs on --image_dir (or the chosen ones)
    scored on their common test images, with the --external models
    (compare.py). Returns the paths of the CSV, markdown table and chart."""
    for name, given in (("model", options.model), ("export", options.export), ("tta", options.tta != 1)):
        if given:
            raise UserError(
                f"--compare scores each run's own best_model.keras as trained; leave --{name} out. "
                f"Received: {name}={config.shown(getattr(options, name))}"
            )
    image_dir = options.image_dir
    if image_dir is None:
        if not options.compare:
            raise UserError("--compare needs --image_dir (the folder the runs were trained on) or run ids")
        first = os.path.join(artifacts.runs_folder(options.artifacts_dir), options.compare[0])
        image_dir = artifacts.run_config_or_empty(first).get("image_dir")
    externals = tuple(dict.fromkeys(options.external or ()))
    # With a model from elsewhere, one run is a comparison: its test split
    # is what both are scored on.
    folders = compare.finished_runs(
        options.artifacts_dir, image_dir, options.compare, at_least=1 if externals else 2
    )
    if not image_dir:
        raise UserError(f"run {options.compare[0]}'s run_config.json names no image folder: pass --image_dir")
    if not os.path.isdir(image_dir):
        raise UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    option_types.check_outside("results_dir", options.results_dir, image_dir)
    runs = ", ".join(os.path.basename(folder) for folder in folders)
    models = f"{len(folders)} run(s) and {len(externals)} external model(s)" if externals else f"{len(folders)} runs"
    with console.stage(f"Comparing {models} on the same test images of {image_dir} ({runs})"):
        _, _, paths = compare.compare_runs(
            folders, image_dir, options.results_dir, options.batch_size,
            readers=config.load_readers(options.reader),
            published=artifacts.published_run(options.artifacts_dir),
            externals=externals,
        )
    with console.stage("Showing the comparison"):
        figures.show_figures(paths[-1:], options.show)
    return paths


def run_evaluation(argv=None):
    options = parse_arguments(argv)
    console.start_tensorflow(options.verbose)
    if options.compare is not None:
        return run_comparison(options)
    if options.cross_validation is not None:
        with console.stage("Re-scoring the cross-validation's folds"):
            folder, drawn, lines = cross_validation.rescore(
                options.artifacts_dir, options.results_dir, options.cross_validation, options.batch_size
            )
            print("\n".join(f"    {line}" for line in lines))
        figures.show_figures(drawn[:1], options.show)
        return folder
    readers = config.load_readers(options.reader)
    trained = inference.load_trained_model(
        artifacts.model_path(options.artifacts_dir, options.model), image_size=options.image_size,
        threshold=options.threshold,
    )
    # Two exports into one run at once, or one into a run being trained: refused (run_lock.py).
    with run_lock.held(trained.folder, "exporting", "--export") if options.export else contextlib.nullcontext():
        return evaluate_trained(options, trained, readers)


def evaluate_trained(options, trained, readers):
    """The evaluation (figures, report, --export) of a loaded TrainedModel."""
    image_dir = options.image_dir or trained.run_config.get("image_dir")
    if not image_dir:
        raise UserError(
            f"a model from another framework ({trained.path}) has no training folder: pass --image_dir"
            if trained.sidecar else "no --image_dir given and the model's run_config.json names none"
        )
    option_types.check_outside("results_dir", options.results_dir, image_dir)
    tta = inference.test_time_augmentation(trained, options.tta, options.seed)
    calibration_images = int8_calibration(trained, options, readers)
    unfinished = inference.unfinished_note(trained)
    stamp = artifacts.new_run_stamp(options.results_dir)
    with console.stage(f"Evaluating {trained.path} on {image_dir}"):
        if unfinished:
            print(f"    note: {unfinished}")
        images = inference.labelled_images(
            image_dir, trained, options.split, options.labels_csv, options.classes, readers,
            reading=inference.csv_reading(trained, options.path_column, options.label_column,
                                          options.label_delimiter, options.no_label),
        )
        if trained.task.multi_label:
            print(f"    {thresholds_line(trained, options.threshold)}")
        # Another folder may hold copies of the images the run learned from.
        seen = inference.seen_in_training(
            image_dir, images.paths, trained, readers, artifacts.audit_cache_dir(options.artifacts_dir)
        ) if images.other_folder else ()
        if tta:
            print(f"    {tta.describe()}")
        evaluation = inference.evaluate_images(trained, images, options.batch_size, readers, tta)
        inference.report_skipped(evaluation.skipped)
        scores = evaluation.metrics()
        unseen = unseen_evaluation(evaluation, seen)
        metrics_path = artifacts.write_json(
            os.path.join(options.results_dir, "metrics", stamp, "metrics.json"),
            {
                "model": trained.path,
                **({"note": unfinished} if unfinished else {}),
                **({"sidecar": trained.sidecar.path} if trained.sidecar else {}),
                "image_dir": os.path.abspath(image_dir),
                "evaluated": evaluation.description,
                "skipped": [str(item) for item in evaluation.skipped],
                # The clean score first: the images the run never trained or validated on.
                **({"unseen": unseen[2]} if unseen else {}),
                **({"seen_in_training": seen_entry(seen, image_dir)} if seen else {}),
                **scores,
                "tta_augmentation": dataclasses.asdict(tta.augment) if tta else None,
            },
        )
        for line in seen_lines(seen, unseen, len(evaluation.paths)):
            print(f"    {line}")
        print(f"    {score_line(evaluation, scores)} ({evaluation.description})")
        print(f"    {metrics.calibration_line(scores['calibration'], metrics.at_chance(scores))}")
        metrics.print_most_confused(evaluation, limit=5)
        print(f"    metrics: {metrics_path}")
        saved = save_test_reliability(trained, image_dir, evaluation, scores, options)
        if saved:
            print(f"    reliability bins (the run had none): {saved}")
    with console.stage("Drawing the figures"):
        look = config.picked(options, figures.Look, augmentation=None)
        drawn = figures.render_evaluation(evaluation, options.results_dir, stamp, look)
    exported = None
    if options.export:
        with console.stage("Exporting the model and checking each export"):
            try:
                exported, exported_path = export_evaluated(trained, evaluation, options, readers, calibration_images)
            except KeyboardInterrupt:
                raise errors.Interrupted(
                    f"during the export: the metrics and figures are kept in {options.results_dir}, the exports "
                    f"finished before it beside {trained.path}, nothing half-written; run the same command again "
                    "to export") from None
    page = write_report(options, trained, image_dir, evaluation, scores, drawn, stamp, unseen)
    if figures.should_show(options.show)[0]:
        with console.stage("Showing the figures"):
            figures.show_figures(drawn, options.show)
    console.summary([
        *(report.score_lines(f"{unseen[1].description} of {image_dir}", unseen[1], unseen[2])[:1] if unseen else []),
        *report.score_lines(f"{evaluation.description} of {image_dir}", evaluation, scores),
        f"model: {trained.path}" + (f" (note: {unfinished})" if unfinished else ""),
        f"report: {page} (metrics: {metrics_path})",
        *([f"exports: {os.path.dirname(exported_path)} (beside the model; {export.EXPORT_REPORT_FILE})"] if exported else []),
        "next: python predict.py --images NEW_IMAGES/ to label new images with it",
    ])
    if exported and not exported["passed"]:
        raise errors.CheckFailed(export.failure_message(exported, exported_path))
    return drawn


def unseen_evaluation(evaluation, seen):
    """(how many were left out, Evaluation, scores) of the images the run
    never trained or validated on, when some of another folder's images
    were (`seen`, inference.seen_in_training); None when none were or it cannot
    be told."""
    if not seen:
        return None
    return evaluation.scored_without(seen, "images the run never trained or validated on")


def seen_entry(seen, image_dir):
    root = os.path.abspath(image_dir)
    return {"count": len(seen), "why": "copies or near-copies of images the run trained or validated on",
            "paths": [os.path.relpath(path, root) for path in seen]}


def seen_lines(seen, unseen, scored):
    """What the evaluation says about images the run had already seen."""
    if seen is None:
        return ["note: the run kept no hashes of its training images (a model from another framework, or an "
                "older run), so copies of them in this folder cannot be told apart"]
    if not seen:
        return []
    if unseen is None:
        return [f"warning: all {scored} scored images are copies or near-copies of images the run trained or "
                "validated on: this score says nothing about new images"]
    count, evaluation, scores = unseen
    return [
        f"{count} of {scored} images are copies or near-copies of images the run trained or validated on: "
        "scored apart (metrics.json: seen_in_training)",
        f"unseen images: {score_line(evaluation, scores, auc=False)}",
    ]


def score_line(evaluation, scores, auc=True):
    """The printed scores of an evaluation: a multi-label model's headline
    (metrics.Evaluation.headline: micro-/macro-F1, mAP, exact set, Hamming
    loss), else accuracy, loss and (with `auc`) the macro ROC AUC."""
    if evaluation.task.multi_label:
        return evaluation.headline(scores)
    roc = f", macro ROC AUC {metrics.format_auc(scores['roc_auc'])}" if auc else ""
    return f"accuracy {theme.score(scores['accuracy'])}, loss {theme.score(scores['loss'])}{roc} on {scores['num_samples']} images"


def thresholds_line(trained, threshold):
    """Where a multi-label model's thresholds come from, and their values."""
    if threshold is not None:
        source = "--threshold, for every label"
    elif trained.sidecar is not None:
        source = f"its sidecar {trained.sidecar.path}" if trained.sidecar.thresholds else "0.5 (its sidecar gives none)"
    elif trained.run_config.get("thresholds"):
        source = f"the run's, chosen by {trained.run_config.get('thresholds_from', 'validation F1')}"
    else:
        source = "0.5 (the run saved none)"
    values = ", ".join(f"{name} {value:.2f}" for name, value in zip(trained.class_names, trained.thresholds))
    return f"thresholds ({source}): {values}"


def write_report(options, trained, image_dir, evaluation, scores, drawn, stamp, unseen=None):
    """results/report/<stamp>/report.html of this evaluation; returns its path."""
    sections = [
        report.Section("The evaluation", rows=(
            ("model", trained.path), ("run", trained.run_config.get("run", "?")), ("folder", os.path.abspath(image_dir)),
            ("images", evaluation.description),
        )),
        *([report.scores_section(
            f"Scores on the images the run never trained or validated on ({unseen[0]} seen ones left out)",
            unseen[1], unseen[2])] if unseen else []),
        report.scores_section("Scores on all images" if unseen else "Scores", evaluation, scores),
        report.Section("Per label" if evaluation.task.multi_label else "Per class", table=report.per_class_table(scores)),
        report.Section("Figures", figures=tuple(drawn)),
        report.Section("Skipped files", lines=tuple(str(item) for item in evaluation.skipped) or ("none",)),
        report.options_section({name: getattr(options, name) for name in config.options_of("evaluate")}, "evaluate"),
    ]
    path = report.write_report(options.results_dir, stamp, f"Evaluation {stamp}", sections)
    print(f"    report: {path}")
    return path


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return errors.run_cli(run_evaluation, argv)


if __name__ == "__main__":
    sys.exit(main())
