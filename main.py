"""Train an image classifier on a folder of images.

    python main.py --image_dir DIR --epochs 10 --batch_size 32 --augment 1
    python main.py            # the built-in demo (handwritten digits)
    python main.py --image_dir DIR --backbone mobilenet_v2,resnet50   # one run each, compared

Options in, the runs they ask for planned (runs.plan_runs: one run, a
backbone series, K folds, a worker's share), then each run opened
(runs.opened) and trained through STAGES in order; each stage takes the
runs.Run and adds to it, so a new stage is one function and one line in the
list. The figure stages come from figures.FIGURES.
"""

import dataclasses
import os
import sys
import time

import numpy as np

import artifacts
import audit
import augment
import backbones
import balance
import calibration
import config
import console
import data_loader
import dataset_files
import demo
import devices
import errors
import export
import figures
import inference
import label_metrics
import lr_finder
import metrics
import model_builder
import option_types
import publishing
import report
import resume
import runs
import splits
import train_utils
from errors import UserError

DESCRIPTION = "Train an image classifier on a folder of images."

EXAMPLES = """\
  python main.py                                      # the built-in demo (handwritten digits)
  python main.py --image_dir photos/                  # your images: photos/<class>/*.jpg (--weights none offline)
  python main.py --resume                             # continue the last interrupted run
  python main.py --image_dir photos/ --backbone mobilenet_v2,efficientnet_b0   # train two, compare them
"""


def build_parser():
    """main.py's command line (config.build_parser, from the one option table)."""
    return config.build_parser("main", DESCRIPTION, EXAMPLES)


# ---------------------------------------------------------------- options


def parse_arguments(argv):
    """Parses and checks main.py's options into a Config; without
    --image_dir (and without --resume), sets up the demo with the demo's
    defaults (any option given on the command line still wins). Raises
    UserError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_dir is None and args.resume is None:
        parser.set_defaults(image_dir=demo.DEMO_DIR, demo=True, **demo.DEMO_OVERRIDES)
        args = parser.parse_args(argv)
    options = config.validate(config.config_from_args(args), "main")
    check_outputs_outside(options)
    return options


def check_outputs_outside(options):
    """Nothing is ever written inside the user's dataset folder, and the
    folder has labels (dataset_files.check_labelled_folder)."""
    if options.image_dir is None:
        return
    for name in ("artifacts_dir", "results_dir"):
        option_types.check_outside(name, getattr(options, name), options.image_dir)
    if not options.demo and not options.labels_csv:
        dataset_files.check_labelled_folder(options.image_dir)


def given_options(argv):
    """The options on main.py's command line, with their parsed values."""
    return config.given_options(build_parser(), sys.argv[1:] if argv is None else argv)


def augmentation(options):
    """The run's augment.AugmentConfig, or None with --augment 0: what
    training and the augmentation preview both use."""
    return config.picked(options, augment.AugmentConfig) if options.augment else None


def figure_look(options):
    """What the run's options say about its figures (figures.Look)."""
    return config.picked(options, figures.Look, augmentation=augmentation(options))


# ---------------------------------------------------------------- stages


def scan_stage(run):
    options = run.options
    if run.shared_from:
        # Several backbones or folds: one scan and split for all, so every
        # run trains and tests on the same images.
        artifacts.write_json(run.results_path("audit", "audit.json"), run.index.audit)
        print(f"    the files of {run.shared_from} (scanned and audited once)")
        choose_image_size(run)
        return
    if options.demo:
        demo.write_demo_dataset(options.image_dir)
    # Every file is audited before anything trains; the audit's cache lives
    # with the artifacts, never inside the dataset.
    run.index = splits.index_source(config.picked(options, splits.Source), progress=audit.ProgressLine())
    audit_path = artifacts.write_json(run.results_path("audit", "audit.json"), run.index.audit)
    for line in audit.summary_lines(run.index, where=audit_path):
        print(f"    {line}")
    print(f"    audit: {audit_path}")
    runs.check_same_split(run)
    choose_image_size(run)


def choose_image_size(run):
    """--image_size auto becomes a number here, once the training images are
    known (backbones.automatic_image_size), and the run says why; the run
    config then saves the number, so a resumed run keeps it."""
    options = run.options
    if options.image_size != option_types.AUTO:
        return
    size, reason = backbones.automatic_image_size(
        options.backbone, options.weights != "none", run.index.audit.get("train_image_size")
    )
    run.options = dataclasses.replace(options, image_size=size)
    config.check_training_memory(run.options)
    print(f"    image size {size} px (--image_size auto): {reason}")


def model_stage(run):
    options = run.options
    if run.point and run.point.trained:  # the stages after training load the best model themselves
        print(f"    trained before the interruption: {run.model_path}")
        return
    print(f"    device: {run.device.describe(options.batch_size)}")

    def build():
        return model_builder.build_classifier(
            num_classes=len(run.index.class_names),
            image_size=options.image_size,
            backbone=options.backbone,
            alpha=options.alpha,
            weights=options.weights,
            dropout=options.dropout,
            task=run.index.task,
        )

    run.model = run.machine.starting_model(build, run.artifact_path(artifacts.RESUME_FOLDER), run.point)
    trainable = sum(int(weight.numpy().size) for weight in run.model.trainable_weights)
    print(f"    {run.model.name}: {run.model.count_params():,} parameters, {trainable:,} trainable")


def run_config(run):
    """run_config.json: everything needed to use the model again."""
    import keras
    import tensorflow as tf

    options, index = run.options, run.index
    counts = index.counts()
    return {
        "image_size": options.image_size,
        "input": "uint8 RGB, 0-255, resized to image_size x image_size; normalization is inside the model",
        "backbone": options.backbone,
        "alpha": options.alpha,
        "weights": options.weights,
        "seed": options.seed,
        "image_dir": index.root,
        "layout": index.layout,
        "task": index.task.name,
        "class_names": list(index.class_names),
        "split_sizes": index.sizes(),
        "split_counts": counts,
        "val_split": options.val_split,
        "test_split": options.test_split,
        "run": run.stamp,
        "status": "training",
        "distribution": {
            "workers": run.device.num_workers,
            "replicas": run.device.replicas,
            "global_batch_size": run.device.global_batch(options.batch_size),
        },
        "options": config.saved_options(options),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def companions_stage(run):
    """class_index.json, split_manifest.csv and run_config.json, in the run
    folder next to where the model will be, so evaluate.py and predict.py
    rebuild exactly what was trained."""
    if run.point:
        print(f"    kept from the interrupted run: {run.folder}")
        return
    artifacts.write_companions(
        run.folder, run.index.class_names, splits.manifest_rows(run.index), run_config(run)
    )
    artifacts.write_json(run.artifact_path(artifacts.SEEN_IMAGES_FILE), splits.seen_images(run.index))
    print(f"    class index, split manifest and run config: {run.folder}")


def data_stage(run):
    options, device = run.options, run.device
    batch_size = device.global_batch(options.batch_size)
    strengths = augmentation(options)
    # Train and val are read every epoch: cache both or neither (each worker
    # its share). Test is read once, so it always streams.
    reread = sum(len(run.index.split(split)[0]) for split in ("train", "val")) // device.num_workers
    cache, cache_note = data_loader.decide_cache(options.cache, reread, options.image_size)
    run.balancing = balance.for_run(
        options.balance, options.class_weights, run.index.split("train")[1], run.index.class_names, batch_size,
        label_smoothing=options.label_smoothing, mix=(options.mixup, options.cutmix), workers=device.num_workers,
    )
    for split in dataset_files.SPLITS:
        paths, labels = run.index.split(split)
        settings = dict(
            image_size=options.image_size,
            training=split == "train",
            augmentation=strengths,
            seed=options.seed,
            decoders=run.index.decoders(split),  # chosen by the audit
            readers=run.index.readers,
            cache=cache and split != "test",
            **(run.balancing.loader_settings if split == "train" else {}),
        )
        if split == "test":  # evaluated once, whole, by this process
            run.datasets[split] = data_loader.make_dataset(paths, labels, batch_size=batch_size, **settings)
        else:
            run.datasets[split] = run.machine.dataset(paths, labels, batch_size, **settings)
    print(f"    batch size {device.batch_text(options.batch_size)}, augmentation {augment.summary(strengths)}, "
          f"{cache_note}")
    for line in run.machine.data_lines(run.datasets["train"]):
        print(f"    {line}")


def find_rate_stage(run):
    """--learning_rate auto (and --lr_find): the learning-rate range test
    (lr_finder.py) on the freshly built model, with the run's training
    batches and loss, its weights put back afterwards; training starts at
    the suggested rate. A resumed run reuses the rate it found (saved in
    run_config.json), never tests again."""
    options = run.options
    if run.point:
        saved = artifacts.read_run_config(run.folder).get("learning_rate_found") or {}
        if not isinstance(saved.get("rate"), (int, float)):
            raise UserError(f"--resume: {run.artifact_path(artifacts.RUN_CONFIG_FILE)} has no learning_rate_found "
                            "(the rate --learning_rate auto found); start a new run")
        run.learning_rate = float(saved["rate"])
        print(f"    found before the interruption: {run.learning_rate:.3g}")
        return

    def compile_at(model, rate):  # as training compiles it (a fresh Adam)
        train_utils.compile_model(model, rate, run.device.jit_compile, run.balancing.loss)

    run.finding = lr_finder.found(run.model, run.datasets["train"], compile_at, run.balancing.class_weight)
    run.learning_rate = run.finding.rate
    # Training then starts from the same random state as without the test.
    train_utils.seed_everything(options.seed, options.deterministic)
    for line in run.finding.lines():
        print(f"    {line}")
    if options.lr_find:
        return
    if options.weights != "none" and options.fine_tune_epochs:
        print(f"    the head trains at {run.learning_rate:.3g}, fine-tuning at a tenth of it")
    run.update_run_config(learning_rate_found=run.finding.record())


def train_stage(run):
    options = run.options
    if run.point and run.point.trained:
        # Killed after its last epoch: what the later stages need of
        # training was saved with the point (resume.finish_training).
        run.history_path, run.finetune_start = run.point.history_path, run.point.finetune_start
        run.training_seconds = run.point.training_seconds or 0.0  # (a state written by hand)
        run.stopped = run.point.stopped
        print(f"    every epoch was done before the interruption; history: {run.history_path}")
        return
    print(f"    {run.balancing.line}")
    history_path = run.point.history_path if run.point else run.results_path("training_curves", "history.csv")
    os.makedirs(os.path.dirname(history_path), exist_ok=True)
    if run.point:
        resume.trim_history(history_path, run.point.epoch)
    plan = train_utils.TrainPlan(
        epochs=options.epochs,
        fine_tune_epochs=options.fine_tune_epochs,
        fine_tune_layers=options.fine_tune_layers,
        learning_rate=run.learning_rate or options.learning_rate,
        patience=options.patience,
        pretrained=options.weights != "none",
        jit_compile=run.device.jit_compile,
        best_model_path=run.model_path,
        history_path=history_path,
        resume_folder=run.artifact_path(artifacts.RESUME_FOLDER),
        stamp=run.stamp,
        tensorboard_dir=run.results_path("tensorboard") if options.tensorboard else None,
        class_weight=run.balancing.class_weight,
        loss=run.balancing.loss, one_hot=run.balancing.one_hot, steps_per_epoch=run.balancing.steps_per_epoch,
        chance_accuracy=train_utils.majority_share(run.index.split("val")[1]),
        recipe=train_utils.Recipe(options.schedule, options.warmup_epochs, options.weight_decay, bool(options.ema)),
        epoch_steps=run.balancing.steps_per_epoch or data_loader.epoch_steps(
            len(run.index.split("train")[0]), run.device.global_batch(options.batch_size)),
    )
    # --time counts the seconds an interrupted run had trained (saved with its resume point).
    budget = train_utils.TimeBudget(options.time and options.time * 60, (run.point and run.point.spent_seconds) or 0.0)
    start = time.perf_counter()
    train_utils.train(run.model, run.datasets["train"], run.datasets["val"], plan, run.point, run.machine, budget)
    run.training_seconds = time.perf_counter() - start
    run.stopped = budget.line(plan.epochs + (plan.fine_tune_epochs if plan.fine_tunes else 0))
    run.history_path = history_path
    run.finetune_start = resume.finetune_start(plan.resume_folder)
    # Not "done" yet: a run killed while it calibrates, evaluates or
    # publishes continues with those stages (run_stages marks it done).
    resume.finish_training(plan.resume_folder, run.training_seconds, run.stopped)
    print(f"    history: {history_path}" + (f"; {run.stopped}" if run.stopped else ""))


class BestModel:
    """The run's best model, loaded once for every stage after training
    (calibration, thresholds, evaluation, export): `model` as saved, with
    its fitted temperature once calibrated. Its logits come from one traced
    model (its layers up to "logits"), kept per split, and its
    probabilities from them through its own head (calibration.head_output):
    the validation images are predicted once for the temperature and the
    thresholds, the test images once, and the model is traced once."""

    def __init__(self, model):
        self.model = model
        self.logits_model = calibration.logits_model(model)
        self.predicted = {}  # split -> (logits, labels)

    def logits(self, split, dataset):
        """(logits (N, classes), labels) of the split `split` (`dataset`)."""
        if split not in self.predicted:
            self.predicted[split] = inference.predict_batches(self.logits_model, dataset)
        return self.predicted[split]

    def probabilities(self, split, dataset):
        """(probabilities (N, classes) float64, labels): what `model` predicts."""
        logits, labels = self.logits(split, dataset)
        return calibration.head_output(self.model, logits), labels

    def calibrated(self, temperature):
        """The model with `temperature` (calibration.with_temperature); the
        logits, unchanged by it, are kept."""
        self.model = calibration.with_temperature(self.model, temperature)
        return self.model


def best_model(run):
    """The run's BestModel (run.best), loaded from its checkpoint the first
    time a stage asks: uncompiled, since the stages only predict (and
    calibration saves a new head, without the optimizer)."""
    import keras

    if run.best is None:
        run.best = BestModel(keras.models.load_model(run.model_path, compile=False))
    return run.best


def calibrate_stage(run):
    """Temperature scaling (calibration.py): one T fitted on the validation
    split's logits to minimize NLL, saved inside the run's model before it
    is published, so every consumer gets calibrated probabilities. The
    predicted class never changes."""
    if not run.options.calibrate:
        print("    skipped (--calibrate 0): confidences are the raw softmax")
        return
    if not os.path.isfile(run.model_path):
        return  # training diverged: publish_stage says so
    best = best_model(run)
    # A worker's share: read whole here.
    logits, labels = best.logits("val", data_loader.whole_split(run.datasets["val"]))
    if run.index.task.multi_label:
        # One temperature shared by every label's sigmoid: sigmoid(z / T) is
        # softmax([0, z] / T), so each (image, label) pair is fitted as a
        # two-class prediction.
        images = len(labels)
        labels, logits = label_metrics.as_binary(labels, logits)
        fitted = {**calibration.fit_on(logits[:, 1:] * np.array([[0.0, 1.0]]), labels),
                  "images": images, "pairs": int(len(labels))}
    else:
        fitted = calibration.fit_on(logits, labels)
    artifacts.save_model(best.calibrated(fitted["temperature"]), run.model_path)
    run.update_run_config(calibration=fitted)
    for line in calibration.fitted_lines(fitted):
        print(f"    {line}")


def thresholds_stage(run):
    """Multi-label: each label's threshold, chosen on the validation split
    (the calibrated model's probabilities) to maximize its F1
    (label_metrics.choose_thresholds), saved in run_config.json where
    evaluate.py, predict.py and app.py read it; --threshold gives one for
    every label instead."""
    if not os.path.isfile(run.model_path):
        return  # training diverged: publish_stage says so
    names = run.index.class_names
    if run.options.threshold is not None:
        chosen = np.full(len(names), run.options.threshold)
        print(f"    {run.options.threshold:g} for every label (--threshold)")
    else:
        validation = data_loader.whole_split(run.datasets["val"])
        probabilities, labels = best_model(run).probabilities("val", validation)
        chosen = label_metrics.choose_thresholds(labels, probabilities)
        print(f"    chosen on {len(labels)} validation images, each label's best F1: "
              + ", ".join(f"{name} {value:.2f}" for name, value in zip(names, chosen)))
    run.update_run_config(thresholds={name: float(value) for name, value in zip(names, chosen)},
                          thresholds_from="--threshold" if run.options.threshold is not None else "validation F1")


def publish_stage(run):
    """Only now, with training finished, can this run's model become what
    evaluate.py and predict.py use by default, as --publish says
    (publishing.decide); the run config records the model file's hash so
    a model and companions of different runs are never used together."""
    if not os.path.isfile(run.model_path):
        raise UserError(
            "training produced no usable model: val_loss was never finite (the "
            f"loss diverged); nothing was published. Lower --learning_rate. Run folder: {run.folder}"
        )
    # The training record too (train_utils.training_record), for the model comparison.
    run.update_run_config(
        status="finished", model_sha256=artifacts.file_sha256(run.model_path),
        training=train_utils.training_record(run.history_path, run.training_seconds, resumed=bool(run.point),
                                             stopped=run.stopped),
    )
    policy = run.options.publish
    if run.chosen_later and policy != "always":  # runs.finish publishes the chosen run, as --publish says
        print(f"    with several runs, the chosen one is published once all are trained, as --publish {policy} says")
        return
    run.publishing = publishing.decide(policy, run.options.artifacts_dir, run.folder, run.index.root,
                                       run.options.batch_size, run.index.readers)
    for line in run.publishing.lines:
        print(f"    {line}")


def evaluate_stage(run):
    best = best_model(run)
    probabilities, true_labels = best.probabilities("test", run.datasets["test"])
    paths, _ = run.index.split("test")
    saved = artifacts.read_run_config(run.folder)
    run.evaluation = metrics.Evaluation(
        paths=tuple(paths),
        true_labels=true_labels,
        probabilities=probabilities,
        class_names=tuple(run.index.class_names),
        image_size=run.options.image_size,
        description="test split",
        readers=run.index.readers,
        temperature=calibration.model_temperature(best.model),
        task=run.index.task,
        thresholds=label_metrics.thresholds_of(run.index.class_names, saved.get("thresholds"))
        if run.index.task.multi_label else None,
    )
    run.scores = run.evaluation.metrics()
    run.clean_test = clean_test(run)
    metrics_path = artifacts.write_json(
        run.results_path("metrics", "metrics.json"),
        {"model": run.model_path, "split": "test", **run.scores,
         **({"test_without_near_copies": {"left_out": run.clean_test[0], **run.clean_test[2]}}
            if run.clean_test else {})},
    )
    print(f"    test {run.evaluation.headline(run.scores)}")
    print(f"    {metrics.calibration_line(run.scores['calibration'], metrics.at_chance(run.scores))}")
    if run.clean_test:
        count, clean, scores = run.clean_test
        print(f"    without the {count} test images that have a near-copy in training: {clean.headline(scores)}")
    print(f"    metrics: {metrics_path}")
    # Beside the model, where app.py and predict.py find them: how often
    # the test images at each confidence were right.
    reliability_path = artifacts.write_json(
        run.artifact_path(artifacts.TEST_RELIABILITY_FILE),
        {"run": run.stamp, "model_sha256": artifacts.file_sha256(run.model_path),
         **metrics.test_reliability(run.evaluation, run.scores)},
    )
    print(f"    reliability bins: {reliability_path}")
    warning = metrics.baseline_warning(run.scores)
    if warning:
        print(f"    {warning}")
    metrics.print_most_confused(run.evaluation, limit=5)


def clean_test(run):
    """(how many, Evaluation, scores) of the test split without its images
    that have a near-copy in training (a pre-split folder's test split may
    hold some: the tool never moves the user's split), or None."""
    leaked = audit.test_near_train(run.index)
    if not leaked:
        return None
    paths = {os.path.join(run.index.root, path) for path in leaked}
    clean = run.evaluation.scored_without(paths, "test split without near-copies of training images")
    if clean is None:
        print("    every test image has a near-copy in training: there is no clean test score")
    return clean


def export_stage(run):
    """--export: the best model exported into its folder, each export
    checked against it on the test split (export.export_and_check)."""
    options = run.options
    calibration_images = None
    if options.quantize == "int8":
        paths, _ = run.index.split("train")
        chosen = export.calibration_paths(paths, seed=options.seed)
        calibration_images = export.load_images(chosen, options.image_size, run.index.readers)
        print(f"    int8 calibration on {len(calibration_images)} training images")
    run.export_report = export.export_and_check(
        best_model(run).model, run.model_path, options.export, run.datasets["test"], options.quantize,
        calibration_images, description="test split",
    )
    for line in export.report_lines(run.export_report):
        print(f"    {line}")
    print(f"    export report: {export.report_path(run.model_path)}")


# ---------------------------------------------------------------- tracking


def start_tracking_stage(run):
    """With --mlflow: an MLflow run (a resumed run continues its own) with
    every option, started before training so a wrong URI stops the run at
    once. tracking.py is imported only then."""
    import tracking

    previous = artifacts.read_run_config(run.folder).get("mlflow") or {}
    same_store = previous.get("uri") == tracking.resolved_uri(run.options.mlflow)
    resumed = previous.get("run_id") if run.point and same_store else None
    counts = run.index.counts()
    run.tracked = tracking.start_run(
        run.options.mlflow,
        experiment=os.path.basename(os.path.normpath(run.index.root)),
        run_name=run.stamp,
        params={
            **config.saved_options(run.options),
            "num_classes": len(run.index.class_names),
            **{f"{split}_images": sum(counts[split].values()) for split in dataset_files.SPLITS},
        },
        tags={"run": run.stamp, "run_folder": os.path.abspath(run.folder), "image_dir": run.index.root},
        resume_run_id=resumed,
    )
    run.update_run_config(mlflow={"uri": run.tracked.uri, "run_id": run.tracked.run_id})
    print(f"    {'continuing' if resumed else 'started'} {run.tracked.describe()}")


def finish_tracking_stage(run):
    """With --mlflow: the per-epoch history, the test metrics, the figures,
    reports and the published model go to the MLflow run, which ends."""
    import tracking

    reports = [
        run.history_path,
        run.results_path("metrics", "metrics.json"),
        run.results_path("classification_report", "classification_report.txt"),
        run.results_path("classification_report", "classification_report.json"),
        run.results_path("audit", "audit.json"),
    ]
    tracking.log_finished_run(
        run.tracked,
        history=train_utils.read_history(run.history_path),
        metrics=run.scores,
        figures=run.drawn,
        reports=[path for path in reports if os.path.isfile(path)],
        model_files=[run.artifact_path(name) for name in (artifacts.MODEL_FILE, *artifacts.COMPANION_FILES)],
    )
    print(f"    logged to {run.tracked.describe()}")
    hint = tracking.viewing_hint(run.options.mlflow)
    if hint:
        print(f"    {hint}")
    run.tracked = None  # ended: nothing left to mark failed


# ---------------------------------------------------------------- figures


def add_figures(run, *paths):
    """Records saved figures, in stage order, for show_stage."""
    for path in paths:
        run.drawn.append(path)
        print(f"    figure: {path}")


def figure_stage(figure):
    """The Stage that draws one figure of figures.FIGURES from what the run
    has by then (its dataset, its history or its test evaluation)."""

    def draw(run):
        if figure.source == figures.DATASET and run.shared_from:
            print(f"    the same images as {run.shared_from}: see its figure")
            return
        source = {
            figures.DATASET: lambda: run.index,
            figures.HISTORY: lambda: history_of(run),
            figures.EVALUATION: lambda: run.evaluation,
            figures.LR_RANGE: lambda: run.finding,
        }[figure.source]()
        if source is None:  # a resumed run found its rate before: its figure was drawn then
            folder = run.results_path(figure.category)
            drawn = sorted(os.path.join(folder, name) for name in os.listdir(folder)) if os.path.isdir(folder) else []
            add_figures(run, *(path for path in drawn if path.endswith(".png")))
            return
        add_figures(run, *figures.draw(figure, source, run.options.results_dir, run.stamp, figure_look(run.options)))

    return Stage(figure.stage, draw, when=lambda options: figure.is_wanted(figure_look(options)), fits=figure.fits,
                 in_lr_find=figure.source == figures.LR_RANGE)


def history_of(run):
    """The run's figures.History: its epochs, and those at chance first."""
    columns = train_utils.read_history(run.history_path)
    chance = train_utils.majority_share(run.index.split("val")[1])
    return figures.History(columns, run.finetune_start, chance,
                           train_utils.epochs_at_chance(columns.get("val_accuracy", ()), chance))


def figure_stages(source):
    return [figure_stage(figure) for figure in figures.figures_of(source)]


def report_stage(run):
    """results/report/<run>/report.html: the run on one page."""
    run.report_path = report.write_report(
        run.options.results_dir, run.stamp, f"Run {run.stamp}", report.training_sections(run)
    )
    print(f"    report: {run.report_path}")


def show_stage(run):
    """Every figure is saved by now; show them in stage order."""
    figures.show_figures(run.drawn, run.options.show)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: object  # function(Run)
    # With several workers every worker runs it (training and what it
    # needs); the others (figures, publishing, evaluation, anything that
    # writes) only the process that writes the run's files.
    every_worker: bool = False
    # Whether the run asked for it (function(Options)); a stage that is not
    # asked for says nothing.
    when: object = None
    # Whether it applies to the run's kind of task (function(tasks.Task),
    # asked once the dataset is indexed; None: every kind).
    fits: object = None
    # Whether --lr_find (which stops after the range test) runs it too.
    in_lr_find: bool = False

    def wanted(self, run):
        if run.options.lr_find and not self.in_lr_find:
            return False
        if self.when is not None and not self.when(run.options):
            return False
        return self.fits is None or run.index is None or bool(self.fits(run.index.task))


STAGES = [
    Stage("Scanning and splitting the dataset", scan_stage, every_worker=True, in_lr_find=True),
    # Before the figures: weights that cannot be loaded stop the run at once.
    Stage("Building the model", model_stage, every_worker=True, in_lr_find=True),
    Stage("Saving the class index, split manifest and run config", companions_stage),
    Stage("Starting the MLflow run", start_tracking_stage, when=lambda options: options.mlflow),
    *figure_stages(figures.DATASET),
    Stage("Preparing the input pipeline", data_stage, every_worker=True, in_lr_find=True),
    # Several workers are refused the range test (runs.plan_runs).
    Stage("Finding the learning rate", find_rate_stage, in_lr_find=True,
          when=lambda options: lr_finder.is_asked(options.learning_rate, options.lr_find)),
    *figure_stages(figures.LR_RANGE),
    Stage("Training", train_stage, every_worker=True),
    # Before publishing: the published file is the calibrated one, and its
    # hash in run_config.json is that file's.
    Stage("Calibrating the confidences", calibrate_stage),
    Stage("Choosing each label's threshold", thresholds_stage, fits=lambda task: task.multi_label),
    Stage("Publishing the model", publish_stage),
    *figure_stages(figures.HISTORY),
    Stage("Evaluating the best model on the test split", evaluate_stage),
    Stage("Exporting the model and checking each export", export_stage, when=lambda options: options.export),
    *figure_stages(figures.EVALUATION),
    Stage("Logging the run to MLflow", finish_tracking_stage, when=lambda options: options.mlflow),
    Stage("Writing the report", report_stage),
    Stage("Showing the figures", show_stage, when=lambda options: figures.should_show(options.show)[0]),
]


def run_stages(run):
    """Runs STAGES in order (on a worker other than the chief, only those
    every worker runs), then marks the run done: a run killed before that
    (after its last epoch too) is continued by --resume."""
    try:
        for stage in STAGES:
            if stage.wanted(run) and (run.device.is_chief or stage.every_worker):
                with console.stage(stage.name):
                    stage.run(run)
        # Only now, every stage done, is there nothing left to resume.
        resume.finish_resume_points(run.artifact_path(artifacts.RESUME_FOLDER))
    except BaseException as error:
        if run.tracked is not None:  # an MLflow run never stays "running" after a failure
            import tracking

            tracking.end_failed_run(run.tracked, killed=isinstance(error, KeyboardInterrupt))
        if isinstance(error, KeyboardInterrupt):
            raise errors.Interrupted(resume.interrupted_line(run.folder, run.stamp, run.options.artifacts_dir)) from None
        raise
    if run.export_report and not run.export_report["passed"]:
        raise errors.CheckFailed(
            export.failure_message(run.export_report, export.report_path(run.model_path))
        )


# ---------------------------------------------------------------- runs


def run_training(argv=None):
    """Plans the runs main.py's options ask for, trains each through STAGES
    and finishes what the mode asks (runs.finish). Returns its result."""
    # Options first: a mistake there is one line, before TensorFlow starts
    # (and prints its own start-up lines).
    options = parse_arguments(argv)
    if options.publish not in publishing.POLICIES:
        return publish_only(options, given_options(argv))
    cluster = devices.cluster_from_environment()
    console.start_tensorflow(options.verbose)
    plan = runs.plan_runs(options, given_options(argv), cluster)
    with plan.lock:  # the run --resume continues was locked before its state and options were read
        check_outputs_outside(plan.options)  # a resumed run's own folders too
        for planned in plan.runs:
            with runs.opened(plan, planned) as run:
                run_stages(run)
    return runs.finish(plan)


def publish_only(options, given):
    """main.py --publish RUN: the finished run RUN published again (the
    model evaluate.py, predict.py and app.py use), nothing trained; any
    option but --artifacts_dir is refused, so that nobody expects a run.
    Raises UserError."""
    others = sorted(set(given) - {"publish", "artifacts_dir"})
    if others:
        raise UserError(
            f"--publish {options.publish} publishes a finished run and trains nothing: leave out --{others[0]} "
            f"(to train, give --publish auto, always or never). Received: {others[0]}={config.shown(given[others[0]])}"
        )
    console.summary(publishing.publish_again(options.artifacts_dir, options.publish))
    return options.publish


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return errors.run_cli(run_training, argv)


if __name__ == "__main__":
    sys.exit(main())
