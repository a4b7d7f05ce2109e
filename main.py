"""Train an image classifier on a folder of images.

    python main.py --image_dir DIR --epochs 10 --batch_size 32 --augment 1
    python main.py            # the built-in demo (handwritten digits)
    python main.py --image_dir DIR --backbone mobilenet_v2,resnet50   # one run each, compared

Options in, stages run in order (STAGES); each takes the Run and adds to
it, so a new stage is one function and one line in the list.
"""

import contextlib
import dataclasses
import os
import shutil
import sys
import time

import artifacts
import audit
import augment
import backbones
import balance
import calibration
import compare
import config
import console
import cross_validation
import data_loader
import dataset_files
import demo
import devices
import errors
import export
import figures
import inference
import metrics
import model_builder
import multiworker
import report
import resume
import run_lock
import show
import splits
import train_utils
import visualize
from errors import UserError

DESCRIPTION = "Train an image classifier on a folder of images."

EXAMPLES = """\
  python main.py                                      # the built-in demo (handwritten digits)
  python main.py --image_dir photos/ --epochs 10 --batch_size 32 --augment 1
  python main.py --image_dir photos/ --weights none   # offline: train from scratch, no download
  python main.py --resume                             # continue the last interrupted run
  python main.py --image_dir photos/ --backbone mobilenet_v2,efficientnet_b0   # train two, compare them
"""


def build_parser():
    """main.py's command line (config.build_parser, from the one option table)."""
    return config.build_parser("main", DESCRIPTION, EXAMPLES)


@dataclasses.dataclass
class Run:
    """Everything one invocation of main.py works out, stage by stage."""

    options: config.Config
    stamp: str  # the run id: its folder ARTIFACTS_DIR/runs/<stamp>, its results' stamp
    folder: str  # the run folder: model, companions, resume points
    point: resume.ResumePoint | None = None  # where the run --resume continues stands
    index: splits.DatasetIndex | None = None
    device: devices.DeviceSetup | None = None
    model: object = None
    datasets: dict = dataclasses.field(default_factory=dict)
    history_path: str | None = None
    finetune_start: int | None = None  # first fine-tuning epoch (0-based), if any
    # The best model's predictions on the test split, built once by
    # evaluate_stage and handed to every figure stage after it.
    evaluation: metrics.Evaluation | None = None
    scores: dict | None = None
    export_report: dict | None = None  # with --export, see export_stage
    drawn: list = dataclasses.field(default_factory=list)  # figure paths, in stage order
    tracked: object = None  # the MLflow run (tracking.TrackedRun) with --mlflow
    # With several backbones: the first run, whose scan, split and dataset
    # figures this one shares (None: this run made its own).
    shared_from: str | None = None
    report_path: str | None = None  # results/report/<run>/report.html
    balancing: balance.Balance | None = None  # how training balances its classes (data_stage)

    def results_path(self, category, *names):
        """RESULTS_DIR/<category>/<stamp>/<names...>."""
        return os.path.join(self.options.results_dir, category, self.stamp, *names)

    def artifact_path(self, *names):
        """A path inside this run's own folder."""
        return os.path.join(self.folder, *names)

    @property
    def model_path(self):
        """This run's best model (published only once training finished)."""
        return self.artifact_path(artifacts.MODEL_FILE)

    def update_run_config(self, **entries):
        """Adds `entries` to this run's run_config.json."""
        saved = artifacts.read_run_config(self.folder)
        artifacts.write_json(self.artifact_path(artifacts.RUN_CONFIG_FILE), {**saved, **entries})


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
    if options.image_dir is not None:
        check_outputs_outside(options)
    return options


def check_outputs_outside(options):
    """Nothing is ever written inside the user's dataset folder."""
    for name in ("artifacts_dir", "results_dir"):
        config.check_outside(name, getattr(options, name), options.image_dir)


def given_options(argv):
    """The options on main.py's command line, with their parsed values."""
    return config.given_options(build_parser(), sys.argv[1:] if argv is None else argv)


# ---------------------------------------------------------------- stages


def scan_stage(run):
    options = run.options
    if run.shared_from:
        # Several backbones: one scan and split for all, so every run trains
        # and tests on the same images.
        artifacts.write_json(run.results_path("audit", "audit.json"), run.index.audit)
        print(f"    the files of {run.shared_from} (scanned and audited once)")
        return
    if options.demo:
        demo.write_demo_dataset(options.image_dir)
    # Every file is audited before anything trains; the audit's cache lives
    # with the artifacts, never inside the dataset.
    run.index = splits.index_of_options(options, progress=audit.ProgressLine())
    audit_path = None
    if run.device.is_chief:
        audit_path = artifacts.write_json(run.results_path("audit", "audit.json"), run.index.audit)
    for line in audit.summary_lines(run.index, where=audit_path or "the chief's audit.json"):
        print(f"    {line}")
    if audit_path:
        print(f"    audit: {audit_path}")
    if run.point and run.device.is_chief:
        check_same_split(run)
    if run.device.cluster is not None:
        multiworker.check_workers_agree(run.device.workers, run.index)


def check_same_split(run):
    """A resumed run must train on exactly the split it started with."""
    try:
        saved = artifacts.read_manifest(run.folder)
    except artifacts.CompanionError as error:
        raise UserError(f"--resume: {error}; start a new run") from None
    if saved != splits.manifest_rows(run.index):
        raise UserError(
            "--resume: the dataset or split differs from the interrupted run's "
            f"{run.artifact_path(artifacts.SPLIT_MANIFEST_FILE)}; use the same "
            "--image_dir, --seed and split options"
        )


def model_stage(run):
    import keras

    options = run.options
    print(f"    device: {run.device.describe(options.batch_size)}")
    with run.device.strategy.scope():
        # Several workers all build the model afresh (creating variables is
        # a collective step); resuming, training gives them the chief's state.
        if run.point and run.device.cluster is None:
            path = run.artifact_path(artifacts.RESUME_FOLDER, run.point.model_file)
            run.model = keras.models.load_model(path)
            print(f"    resuming after epoch {run.point.epoch + 1} ({run.point.phase}) from {path}")
        else:
            run.model = model_builder.build_classifier(
                num_classes=len(run.index.class_names),
                image_size=options.image_size,
                backbone=options.backbone,
                alpha=options.alpha,
                weights=options.weights,
                dropout=options.dropout,
            )
    trainable = sum(int(weight.numpy().size) for weight in run.model.trainable_weights)
    print(f"    {run.model.name}: {run.model.count_params():,} parameters, {trainable:,} trainable")


def run_config(run):
    """run_config.json: everything needed to use the model again."""
    import keras
    import tensorflow as tf

    options, index = run.options, run.index
    counts = index.counts()
    replicas = run.device.strategy.num_replicas_in_sync
    return {
        "image_size": options.image_size,
        "input": "uint8 RGB, 0-255, resized to image_size x image_size; normalization is inside the model",
        "backbone": options.backbone,
        "alpha": options.alpha,
        "weights": options.weights,
        "seed": options.seed,
        "image_dir": index.root,
        "layout": index.layout,
        "class_names": list(index.class_names),
        "split_sizes": {split: sum(counts[split].values()) for split in dataset_files.SPLITS},
        "split_counts": counts,
        "val_split": options.val_split,
        "test_split": options.test_split,
        "run": run.stamp,
        "status": "training",
        "distribution": {
            "workers": run.device.num_workers,
            "replicas": replicas,
            "global_batch_size": options.batch_size * replicas,
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
    print(f"    class index, split manifest and run config: {run.folder}")


def data_stage(run):
    options, workers = run.options, run.device.num_workers
    replicas = run.device.strategy.num_replicas_in_sync
    batch_size = options.batch_size * replicas  # global batch over all GPUs and workers
    strengths = augment.strengths_of(options)
    # Train and val are read every epoch: cache both or neither (each worker
    # its share). Test is read once, so it always streams.
    reread = sum(len(run.index.split(split)[0]) for split in ("train", "val")) // workers
    cache, cache_note = data_loader.decide_cache(options.cache, reread, options.image_size)
    run.balancing = balance.for_run(options, run.index.split("train")[1], run.index.class_names, batch_size, workers)
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
        if workers > 1 and split != "test":  # the chief evaluates the test split alone
            run.datasets[split] = multiworker.worker_datasets(run.device, run.index, split, batch_size, settings)
        else:
            run.datasets[split] = data_loader.make_dataset(paths, labels, batch_size=batch_size, **settings)
    per_replica = f" ({options.batch_size} per replica x {replicas})" if replicas > 1 else ""
    print(f"    batch size {batch_size}{per_replica}, augmentation {'on' if strengths else 'off'}, {cache_note}")
    if workers > 1:
        print(
            f"    each worker reads its share of the files: about {-(-len(run.index.split('train')[0]) // workers)} "
            f"training images, {run.datasets['train'].steps} steps per epoch"
        )


def whole_split(run, split):
    """All of a split as one tf.data dataset in this process. With several
    workers run.datasets holds only this worker's share of train and val,
    while the chief calibrates on the whole validation split."""
    dataset = run.datasets[split]
    if not isinstance(dataset, multiworker.WorkerData):
        return dataset
    paths, labels = run.index.split(split)
    return data_loader.make_dataset(
        paths,
        labels,
        image_size=run.options.image_size,
        batch_size=dataset.global_batch_size,
        seed=run.options.seed,
        decoders=run.index.decoders(split),
        readers=run.index.readers,
    )


def train_stage(run):
    options = run.options
    print(f"    {run.balancing.line}")
    history_path = run.point.history_path if run.point else run.results_path("training_curves", "history.csv")
    os.makedirs(os.path.dirname(history_path), exist_ok=True)
    if run.point:
        resume.trim_history(history_path, run.point.epoch)
    plan = train_utils.TrainPlan(
        epochs=options.epochs,
        fine_tune_epochs=options.fine_tune_epochs,
        fine_tune_layers=options.fine_tune_layers,
        learning_rate=options.learning_rate,
        patience=options.patience,
        pretrained=options.weights != "none",
        jit_compile=run.device.jit_compile,
        best_model_path=run.model_path,
        history_path=history_path,
        resume_folder=run.artifact_path(artifacts.RESUME_FOLDER),
        stamp=run.stamp,
        tensorboard_dir=run.results_path("tensorboard") if options.tensorboard else None,
        class_weight=run.balancing.class_weight,
        chief=run.device.is_chief,
        loss=run.balancing.loss, one_hot=run.balancing.one_hot, steps_per_epoch=run.balancing.steps_per_epoch,
        chance_accuracy=train_utils.majority_share(run.index.split("val")[1]),
    )
    machine = None if run.device.cluster is None else multiworker.WorkerMachine(run.device)
    start = time.perf_counter()
    train_utils.train(run.model, run.datasets["train"], run.datasets["val"], plan, run.point, machine)
    seconds = time.perf_counter() - start
    run.history_path = history_path
    run.finetune_start = resume.finetune_start(plan.resume_folder)
    resume.finish_resume_points(plan.resume_folder)
    if run.device.is_chief:
        record_training(run, seconds)
        print(f"    history: {history_path}")


def record_training(run, seconds):
    """run_config.json's "training" (train_utils.training_record), for the model comparison."""
    run.update_run_config(training=train_utils.training_record(run.history_path, seconds, resumed=bool(run.point)))


def calibrate_stage(run):
    """Temperature scaling (calibration.py): one T fitted on the validation
    split's logits to minimize NLL, saved inside the run's model before it
    is published, so every consumer gets calibrated probabilities. The
    predicted class never changes."""
    import keras

    if not run.options.calibrate:
        print("    skipped (--calibrate 0): confidences are the raw softmax")
        return
    if not os.path.isfile(run.model_path):
        return  # training diverged: publish_stage says so
    best = keras.models.load_model(run.model_path)
    logits, labels = inference.predict_batches(calibration.logits_model(best), whole_split(run, "val"))
    fitted = calibration.fit_on(logits, labels)
    artifacts.save_model(calibration.with_temperature(best, fitted["temperature"]), run.model_path)
    run.update_run_config(calibration=fitted)
    for line in calibration.fitted_lines(fitted):
        print(f"    {line}")


def publish_stage(run):
    """Only now, with training finished, does this run's model become what
    evaluate.py and predict.py use by default; the run config records the
    model file's hash so a model and companions of different runs are
    never used together."""
    if not os.path.isfile(run.model_path):
        raise UserError(
            "training produced no usable model: val_loss was never finite (the "
            f"loss diverged); nothing was published. Lower --learning_rate. Run folder: {run.folder}"
        )
    run.update_run_config(status="finished", model_sha256=artifacts.file_sha256(run.model_path))
    published = artifacts.publish(run.options.artifacts_dir, run.folder)
    print(f"    published: {published} -> run {run.stamp} ({run.folder})")


def evaluate_stage(run):
    import keras

    best = keras.models.load_model(run.model_path)
    probabilities, true_labels = inference.predict_batches(best, run.datasets["test"])
    paths, _ = run.index.split("test")
    run.evaluation = metrics.Evaluation(
        paths=tuple(paths),
        true_labels=true_labels,
        probabilities=probabilities,
        class_names=tuple(run.index.class_names),
        image_size=run.options.image_size,
        description="test split",
        readers=run.index.readers,
        temperature=calibration.model_temperature(best),
    )
    run.scores = run.evaluation.metrics()
    metrics_path = artifacts.write_json(
        run.results_path("metrics", "metrics.json"),
        {"model": run.model_path, "split": "test", **run.scores},
    )
    print(
        f"    test accuracy {run.scores['accuracy']:.4f} (balanced {run.scores['balanced_accuracy']:.4f}), "
        f"loss {run.scores['loss']:.4f} "
        f"on {run.scores['num_samples']} images"
    )
    print(f"    {metrics.calibration_line(run.scores['calibration'])}")
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


def export_stage(run):
    """--export: the best model exported into its folder, each export
    checked against it on the test split (export.export_and_check)."""
    import keras

    options = run.options
    calibration_images = None
    if options.quantize == "int8":
        paths, _ = run.index.split("train")
        chosen = export.calibration_paths(paths, seed=options.seed)
        calibration_images = export.load_images(chosen, options.image_size, run.index.readers)
        print(f"    int8 calibration on {len(calibration_images)} training images")
    best = keras.models.load_model(run.model_path)
    run.export_report = export.export_and_check(
        best, run.model_path, options.export, run.datasets["test"], options.quantize, calibration_images,
        description="test split",
    )
    for line in export.report_lines(run.export_report):
        print(f"    {line}")
    print(f"    export report: {export.report_path(run.model_path)}")


# ---------------------------------------------------------------- figures


def add_figures(run, *paths):
    """Records saved figures, in stage order, for show_stage."""
    for path in paths:
        run.drawn.append(path)
        print(f"    figure: {path}")


def drawn_by_first_run(run):
    """With several backbones, the dataset figures are the first run's:
    says so and returns True for the others."""
    if run.shared_from:
        print(f"    the same images as run {run.shared_from}: see its figure")
    return bool(run.shared_from)


def distribution_stage(run):
    if not drawn_by_first_run(run):
        add_figures(run, figures.render_distribution(run.index, run.results_path("dataset_distribution")))


def class_grid_stage(run):
    if not drawn_by_first_run(run):
        options = run.options
        add_figures(run, figures.render_class_grid(
            run.index, options.image_size, options.grid_per_class, options.seed, run.results_path("class_grid")
        ))


def augmentation_stage(run):
    """The same training images, then augmented by augment.augment_batch
    with the training run's settings: the training pipeline's own code."""
    strengths = augment.strengths_of(run.options)
    if not drawn_by_first_run(run):
        add_figures(run, figures.render_augmentation_preview(
            run.index, run.options.image_size, strengths, run.options.seed,
            run.results_path("augmentation_preview"), mix=(run.options.mixup, run.options.cutmix),
        ))


def training_curves_stage(run):
    history = train_utils.read_history(run.history_path)
    path = os.path.join(os.path.dirname(run.history_path), "training_curves.png")
    add_figures(run, visualize.plot_training_curves(history, path, finetune_start=run.finetune_start))


def confusion_matrix_stage(run):
    add_figures(run, *figures.render_confusion(run.evaluation, run.results_path("confusion_matrix")))


def classification_report_stage(run):
    add_figures(run, figures.render_report(run.evaluation, run.results_path("classification_report")))
    metrics.print_most_confused(run.evaluation.most_confused(limit=5))


def roc_auc_stage(run):
    add_figures(run, figures.render_roc(run.evaluation, run.results_path("roc_auc")))


def reliability_stage(run):
    add_figures(run, figures.render_reliability(run.evaluation, run.results_path("calibration")))


def prediction_gallery_stage(run):
    options = run.options
    path, _ = figures.render_gallery(
        run.evaluation, options.rows, options.cols, options.gallery, options.seed,
        run.results_path("prediction_gallery"),
    )
    add_figures(run, path)


def top_losses_stage(run):
    options = run.options
    add_figures(run, figures.render_top_losses(
        run.evaluation, options.rows, options.cols, run.results_path("top_losses")
    ))


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


def report_stage(run):
    """results/report/<run>/report.html: the run on one page."""
    run.report_path = report.write_report(
        run.options.results_dir, run.stamp, f"Run {run.stamp}", report.training_sections(run)
    )
    print(f"    report: {run.report_path}")


def show_stage(run):
    """Every figure is saved by now; show them in stage order."""
    show.show_figures(run.drawn, run.options.show)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: object  # function(Run)
    # With several workers: every worker runs it (training and what it
    # needs); the others (figures, publishing, evaluation, anything that
    # writes) are the chief's alone.
    every_worker: bool = False
    # Whether the run asked for it (function(Options)); a stage that is not
    # asked for says nothing.
    when: object = None


STAGES = [
    Stage("Scanning and splitting the dataset", scan_stage, every_worker=True),
    # Before the figures: weights that cannot be loaded stop the run at once.
    Stage("Building the model", model_stage, every_worker=True),
    Stage("Saving the class index, split manifest and run config", companions_stage),
    Stage("Starting the MLflow run", start_tracking_stage, when=lambda options: options.mlflow),
    Stage("Plotting the dataset distribution", distribution_stage),
    Stage("Plotting example images per class", class_grid_stage),
    Stage("Previewing the augmentation", augmentation_stage, when=lambda options: options.augment),
    Stage("Preparing the input pipeline", data_stage, every_worker=True),
    Stage("Training", train_stage, every_worker=True),
    # Before publishing: the published file is the calibrated one, and its
    # hash in run_config.json is that file's.
    Stage("Calibrating the confidences", calibrate_stage),
    Stage("Publishing the model", publish_stage),
    Stage("Plotting the training curves", training_curves_stage),
    Stage("Evaluating the best model on the test split", evaluate_stage),
    Stage("Exporting the model and checking each export", export_stage, when=lambda options: options.export),
    Stage("Plotting the confusion matrix", confusion_matrix_stage),
    Stage("Plotting the classification report", classification_report_stage),
    Stage("Plotting the ROC curves", roc_auc_stage),
    Stage("Plotting the reliability diagram", reliability_stage),
    Stage("Plotting the prediction gallery", prediction_gallery_stage),
    Stage("Plotting the top losses", top_losses_stage),
    Stage("Logging the run to MLflow", finish_tracking_stage, when=lambda options: options.mlflow),
    Stage("Writing the report", report_stage),
    Stage("Showing the figures", show_stage, when=lambda options: show.should_show(options.show)[0]),
]


def run_stages(run):
    """Runs STAGES in order (on a worker other than the chief, only those
    every worker runs); with several workers, they all end together."""
    try:
        for stage in STAGES:
            wanted = stage.when is None or stage.when(run.options)
            if wanted and (run.device.is_chief or stage.every_worker):
                with console.stage(stage.name):
                    stage.run(run)
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
    if run.device.cluster is not None:
        # Every worker waits for the chief's evaluation and figures, so that
        # none leaves while the others still count on it.
        what = "Waiting for every worker to finish" if run.device.is_chief else (
            "Waiting for the chief to evaluate the model and write the results"
        )
        with console.stage(what):
            run.device.workers.exchange(None)


# ---------------------------------------------------------------- runs


def open_run(options, given, held):
    """This invocation's run: a new one, or the interrupted run --resume
    continues, with its own saved options, locked for this process until
    `held` (an ExitStack) closes (run_lock.py). Returns (options, run id,
    run folder, resume.ResumePoint or None). Raises UserError."""
    try:  # before training, not after it
        artifacts.check_publishable(options.artifacts_dir)
    except artifacts.CompanionError as error:
        raise UserError(str(error)) from None
    if not options.resume:
        stamp, folder = artifacts.new_run(options.artifacts_dir, options.results_dir)
        held.enter_context(run_lock.held(folder, "training", "main.py"))
        print(f"Run {stamp}: {folder}")
        print(f"Training plan: {train_utils.training_plan_line(options)}")
        return options, stamp, folder, None
    options, stamp, folder, point = resume.open_resumed_run(options, given)
    held.enter_context(run_lock.held(folder, "training", "--resume"))  # a live run is never joined
    check_outputs_outside(options)
    print(f"Resuming run {stamp} ({folder}) with its own options.")
    return options, stamp, folder, point


def run_training(argv=None):
    # Options first: a mistake there is one line, before TensorFlow starts
    # (and prints its own start-up lines).
    options = parse_arguments(argv)
    cluster = multiworker.cluster_from_environment()
    names = backbones.backbone_names(options.backbone)
    console.start_tensorflow(options.verbose)
    if cross_validation.resumes_one(options):  # --folds K, or --resume of one
        return cross_validation.cross_validate(options, given_options(argv), names, train_function(options))
    if len(names) > 1:
        return train_several(options, names, cluster)
    if cluster is not None:  # TensorFlow's own wait below stops for nothing: ours first
        multiworker.check_then_wait(options, cluster)
    # Before anything else starts TensorFlow (see make_strategy).
    strategy = devices.make_strategy(cluster)
    workers = None if cluster is None else multiworker.Workers(strategy, cluster)
    given = given_options(argv)
    scratch = folder = None
    try:
        with multiworker.worker_errors(cluster), contextlib.ExitStack() as held:
            if cluster is None:
                options, stamp, folder, point = open_run(options, given, held)
            else:
                options, stamp, folder, point, scratch = multiworker.open_worker_run(
                    options, given, workers, lambda chief_options: open_run(chief_options, given, held)
                )
            device = devices.configure_device(options.precision, options.jit, strategy, workers)
            if options.demo:
                print(f"No --image_dir given: training on the built-in demo ({options.image_dir}).")
            train_utils.seed_everything(options)
            run = Run(options=options, stamp=stamp, folder=folder, point=point, device=device)
            run_stages(run)
            if run.device.is_chief:
                console.summary(report.training_summary(run))
    except BaseException:
        if folder:  # no half-written model, no run left "training" with nothing to resume
            artifacts.discard_failed_run(folder, new_run=not options.resume)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return run


def train_several(options, names, cluster):
    """--backbone A,B,...: one run per backbone (compare.train_series), each
    through this script's stages in its own run folder, all on the same
    split (scanned once, one --seed). Returns the runs."""
    if options.resume:
        raise UserError(
            "--resume continues one run: leave --backbone out (the run keeps its own). "
            f"Received: backbone={options.backbone}"
        )
    if cluster is not None:
        raise UserError(
            "several backbones train on one machine, not with TF_CONFIG workers: give one "
            f"--backbone per multi-worker run. Received: backbone={options.backbone}"
        )
    train = train_function(options)
    return compare.train_series(options, names, lambda run_options, first, title: train(
        run_options, first.index if first else None, title, shared_from=first and f"run {first.stamp}"))


def train_function(options):
    """train(options, index, title, opened=(run id, folder, point)): one of several runs, through STAGES."""
    import keras

    device = devices.configure_device(options.precision, options.jit, devices.make_strategy(None))
    if options.demo:
        print(f"No --image_dir given: training on the built-in demo ({options.image_dir}).")

    def train(run_options, index, title, opened=None, shared_from="the cross-validation"):
        stamp, folder, point = opened or (*artifacts.new_run(options.artifacts_dir, options.results_dir), None)
        print(f"\n#### {title} · run {stamp}: {folder}")
        run = Run(options=run_options, stamp=stamp, folder=folder, device=device, index=index, point=point,
                  shared_from=shared_from if index else None)
        train_utils.seed_everything(options)  # each run as if trained alone
        with run_lock.held(folder, "training", "main.py"):
            run_stages(run)
        run.model, run.datasets, run.evaluation = None, {}, None  # only what a summary needs stays
        keras.backend.clear_session()
        return run

    return train


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return errors.run_cli(run_training, argv)


if __name__ == "__main__":
    sys.exit(main())
