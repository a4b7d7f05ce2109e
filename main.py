"""Train an image classifier on a folder of images.

    python main.py --image_dir DIR --epochs 10 --batch_size 32 --augment 1
    python main.py            # the built-in demo (handwritten digits)
    python main.py --image_dir DIR --backbone mobilenet_v2,resnet50   # one run each, compared

Stages run in order (see STAGES); each takes the Run and adds to it, so a
new stage is one function and one line in the list.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import artifacts
import audit
import augment
import calibration
import compare
import config
import data_loader
import evaluate
import export
import image_io
import model_builder
import train_utils
import visualize


@dataclasses.dataclass
class Run:
    """Everything one invocation of main.py works out, stage by stage."""

    options: config.Config
    stamp: str  # the run id: its folder ARTIFACTS_DIR/runs/<stamp>, its results' stamp
    folder: str  # the run folder: model, companions, resume points
    resume: dict | None = None  # the saved state of the run --resume continues
    index: data_loader.DatasetIndex | None = None
    device: train_utils.DeviceSetup | None = None
    model: object = None
    datasets: dict = dataclasses.field(default_factory=dict)
    history_path: str | None = None
    finetune_start: int | None = None  # first fine-tuning epoch (0-based), if any
    # The best model's predictions on the test split, built once by
    # evaluate_stage and handed to every figure stage after it.
    evaluation: evaluate.Evaluation | None = None
    metrics: dict | None = None
    export_report: dict | None = None  # with --export, see export_stage
    figures: list = dataclasses.field(default_factory=list)
    tracked: object = None  # the MLflow run (tracking.TrackedRun) with --mlflow
    # With several backbones: the first run, whose scan, split and dataset
    # figures this one shares (None: this run made its own).
    shared_from: str | None = None

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


# ---------------------------------------------------------------- demo


def write_demo_dataset(folder):
    """Writes scikit-learn's 1,797 bundled 8x8 digit scans as PNG class
    folders (dark ink on white), once. Returns the folder."""
    import tempfile

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if os.path.isfile(os.path.join(folder, ".complete")):
        return folder
    if os.path.exists(folder):  # never delete a folder we did not finish writing
        raise config.UserError(
            f"{folder} exists but is not a complete demo dataset; move it away "
            "to let the demo write it again, or pass --image_dir"
        )
    print(f"Writing the demo dataset (scikit-learn digits) to {folder}", flush=True)
    digits = load_digits()
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".demo-", dir=parent)
    for number, (image, label) in enumerate(zip(digits.images, digits.target)):
        pixels = (255 - image * (255 / 16)).round().astype(np.uint8)
        class_folder = os.path.join(staging, str(label))
        os.makedirs(class_folder, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(os.path.join(class_folder, f"{number:04d}.png"))
    open(os.path.join(staging, ".complete"), "w").close()
    try:
        os.replace(staging, folder)  # all or nothing: an interrupted write leaves only the hidden staging folder
    except OSError:
        if not os.path.isfile(os.path.join(folder, ".complete")):
            raise
        shutil.rmtree(staging)  # another process (a second worker on this machine) wrote it first
    return folder


# ---------------------------------------------------------------- arguments


def build_parser():
    parser = config.ArgumentParser(
        description="Train a MobileNetV2 image classifier on a folder of images."
    )
    config.add_shared_arguments(parser)
    config.add_split_arguments(parser)
    config.add_training_arguments(parser)
    config.add_figure_arguments(parser, training=True)
    config.add_export_arguments(parser)
    config.add_calibration_arguments(parser)
    config.add_tracking_arguments(parser)
    return parser


def parse_arguments(argv):
    """Parses and checks main.py's options into a Config; without
    --image_dir (and without --resume), sets up the demo with the demo's
    defaults (any option given on the command line still wins). Raises
    UserError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_dir is None and args.resume is None:
        parser.set_defaults(image_dir=config.DEMO_DIR, demo=True, **config.DEMO_OVERRIDES)
        args = parser.parse_args(argv)
    config.validate_training_args(args)
    config.validate_figure_args(args)
    config.validate_export_args(args)
    options = config.config_from_args(args)
    if options.image_dir is not None:
        check_outputs_outside(options)
    return options


def check_outputs_outside(options):
    """Nothing is ever written inside the user's dataset folder."""
    for name in ("artifacts_dir", "results_dir"):
        config.check_outside(name, getattr(options, name), options.image_dir)


def given_options(argv):
    """The options given on the command line, with their parsed values
    (defaults left out). Options are spelled in full (config.ArgumentParser
    allows no abbreviations), so the names come from the tokens."""
    values = vars(build_parser().parse_args(argv))
    tokens = sys.argv[1:] if argv is None else argv
    names = {token[2:].partition("=")[0] for token in tokens if token.startswith("--")}
    return {name: values[name] for name in names if name in values}


# Options that change what is shown, not what is trained: a resumed run
# takes them from its command line. Every other option is the run's own.
DISPLAY_OPTIONS = ("show", "rows", "cols", "gallery", "grid_per_class")


def same_option(name, given, saved):
    if name in ("image_dir", "results_dir", "labels_csv", "weights") and given and saved:
        return os.path.realpath(str(given)) == os.path.realpath(str(saved))
    return given == saved


def first_different_option(given, saved, ignored):
    """(name, given value, saved value) of the first option given on the
    command line with another value than the saved one, leaving out
    `ignored` names and names not saved; None when they all agree."""
    saved_config = config.config_from_dict(saved)
    given_config = config.config_from_dict(given)
    for name in given:
        if name in ignored or name not in saved:
            continue
        ours, theirs = getattr(given_config, name), getattr(saved_config, name)
        if not same_option(name, ours, theirs):
            return name, ours, theirs
    return None


def resumed_options(options, given, saved):
    """The options of a resumed run: the ones saved with it, plus the
    display options given now. An option given now that differs from the
    saved one is refused, naming it: a run trains with one set of options.
    Raises UserError."""
    different = first_different_option(given, saved, (*DISPLAY_OPTIONS, "resume", "artifacts_dir"))
    if different:
        name, ours, theirs = different
        raise config.UserError(
            f"--resume continues a run with its own options, and this run used "
            f"{name}={theirs}; leave --{name} out (or start a new run). "
            f"Received: {name}={ours}"
        )
    display = {name: getattr(options, name) for name in DISPLAY_OPTIONS}
    return dataclasses.replace(
        config.config_from_dict(saved), resume=options.resume, artifacts_dir=options.artifacts_dir, **display
    )


# ---------------------------------------------------------------- stages


def scan_stage(run):
    options = run.options
    if run.shared_from:
        # Several backbones: one scan and split for all, so every run trains
        # and tests on the same images.
        artifacts.write_json(run.results_path("audit", "audit.json"), run.index.audit)
        print(f"    the same files and split as run {run.shared_from} (scanned and audited once)")
        return
    if options.demo:
        write_demo_dataset(options.image_dir)
    # Every file is audited before anything trains; the audit's cache lives
    # with the artifacts, never inside the dataset.
    run.index = data_loader.index_dataset(
        options.image_dir,
        val_split=options.val_split,
        test_split=options.test_split,
        seed=options.seed,
        labels_csv=options.labels_csv,
        classes=options.classes,
        readers=config.load_readers(options.reader),
        cache_dir=artifacts.audit_cache_dir(options.artifacts_dir),
        progress=audit.ProgressLine(),
    )
    audit_path = None
    if run.device.is_chief:
        audit_path = artifacts.write_json(run.results_path("audit", "audit.json"), run.index.audit)
    for line in audit.summary_lines(run.index, where=audit_path or "the chief's audit.json"):
        print(f"    {line}")
    if audit_path:
        print(f"    audit: {audit_path}")
    if run.resume and run.device.is_chief:
        check_same_split(run)
    if run.device.cluster is not None:
        check_workers_agree(run)


def check_same_split(run):
    """A resumed run must train on exactly the split it started with."""
    try:
        saved = artifacts.read_manifest(run.folder)
    except artifacts.CompanionError as error:
        raise config.UserError(f"--resume: {error}; start a new run") from None
    if saved != data_loader.manifest_rows(run.index):
        raise config.UserError(
            "--resume: the dataset or split differs from the interrupted run's "
            f"{run.artifact_path(artifacts.SPLIT_MANIFEST_FILE)}; use the same "
            "--image_dir, --seed and split options"
        )


def check_workers_agree(run):
    """Every worker must have found the same split (the chief's is the one
    saved); all of them stop, naming the ones that differ, otherwise."""
    rows = [dataclasses.astuple(row) for row in data_loader.manifest_rows(run.index)]
    digest = hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()
    digests = run.device.workers.exchange(digest)
    differ = [str(number) for number, theirs in enumerate(digests) if theirs != digests[0]]
    if differ:
        raise config.UserError(
            f"the workers found different datasets: worker(s) {', '.join(differ)} (in TF_CONFIG order, "
            "chief first) split their files differently from the chief; every worker needs the same "
            "files under --image_dir and the same --seed, split, --classes and --labels_csv options"
        )


def model_stage(run):
    import keras

    from model_builder import build_classifier

    options = run.options
    print(f"    device: {run.device.describe(options.batch_size)}")
    with run.device.strategy.scope():
        # Several workers all build the model afresh (creating variables is
        # a collective step); resuming, training gives them the chief's state.
        if run.resume and run.device.cluster is None:
            path = run.artifact_path(artifacts.RESUME_FOLDER, run.resume["model_file"])
            run.model = keras.models.load_model(path)
            print(f"    resuming after epoch {run.resume['epoch'] + 1} ({run.resume['phase']}) from {path}")
        else:
            run.model = build_classifier(
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
    return {
        "image_size": options.image_size,
        "input": "uint8 RGB, 0-255, resized to image_size x image_size; "
        "normalization is inside the model",
        "backbone": options.backbone,
        "alpha": options.alpha,
        "weights": options.weights,
        "seed": options.seed,
        "image_dir": index.root,
        "layout": index.layout,
        "class_names": list(index.class_names),
        "split_sizes": {split: sum(counts[split].values()) for split in data_loader.SPLITS},
        "split_counts": counts,
        "val_split": options.val_split,
        "test_split": options.test_split,
        "run": run.stamp,
        "status": "training",
        "distribution": {
            "workers": run.device.num_workers,
            "replicas": run.device.strategy.num_replicas_in_sync,
            "global_batch_size": options.batch_size * run.device.strategy.num_replicas_in_sync,
        },
        "options": main_options(options),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def main_options(options):
    """The options main.py takes, with the values this run used."""
    names = set(vars(build_parser().parse_args([]))) | {"demo"}
    return {name: value for name, value in dataclasses.asdict(options).items() if name in names}


def companions_stage(run):
    """class_index.json, split_manifest.csv and run_config.json, in the run
    folder next to where the model will be, so evaluate.py and predict.py
    rebuild exactly what was trained."""
    if run.resume:
        print(f"    kept from the interrupted run: {run.folder}")
        return
    artifacts.write_companions(
        run.folder, run.index.class_names, data_loader.manifest_rows(run.index), run_config(run)
    )
    print(f"    class index, split manifest and run config: {run.folder}")


def augment_config(options):
    """The AugmentConfig training uses, or None with --augment 0 (the
    augmentation preview uses the same one)."""
    if not options.augment:
        return None
    return augment.AugmentConfig(
        flip=options.flip,
        rotation=options.rotation,
        zoom=options.zoom,
        translation=options.translation,
        contrast=options.contrast,
    )


def data_stage(run):
    options, workers = run.options, run.device.num_workers
    replicas = run.device.strategy.num_replicas_in_sync
    batch_size = options.batch_size * replicas  # global batch over all GPUs and workers
    augment = augment_config(options)
    # Train and val are read every epoch: cache both or neither (each worker
    # its share). Test is read once, so it always streams.
    reread = sum(len(run.index.split(split)[0]) for split in ("train", "val")) // workers
    cache, cache_note = data_loader.decide_cache(options.cache, reread, options.image_size)
    if len(run.index.split("train")[0]) < workers:
        raise config.UserError(
            f"{workers} workers need at least one training image each; the training split has "
            f"{len(run.index.split('train')[0])}"
        )
    for split in data_loader.SPLITS:
        paths, labels = run.index.split(split)
        settings = dict(
            image_size=options.image_size,
            training=split == "train",
            augment=augment,
            seed=options.seed,
            decoders=run.index.decoders(split),  # chosen by the audit
            readers=run.index.readers,
            cache=cache and split != "test",
        )
        if workers > 1 and split != "test":  # the chief evaluates the test split alone
            steps = train_utils.worker_steps(len(paths), workers, batch_size)
            dataset_fn = train_utils.worker_dataset_fn(paths, labels, global_batch_size=batch_size, **settings)
            run.datasets[split] = train_utils.distribute(run.device, dataset_fn, steps, batch_size)
        else:
            run.datasets[split] = data_loader.make_dataset(paths, labels, batch_size=batch_size, **settings)
    per_replica = f" ({options.batch_size} per replica x {replicas})" if replicas > 1 else ""
    print(f"    batch size {batch_size}{per_replica}, augmentation {'on' if augment else 'off'}, {cache_note}")
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
    if not isinstance(dataset, train_utils.WorkerData):
        return dataset
    paths, labels = run.index.split(split)
    return data_loader.make_dataset(
        paths,
        labels,
        image_size=run.options.image_size,
        batch_size=dataset.global_batch_size,
        training=False,
        seed=run.options.seed,
        decoders=run.index.decoders(split),
        readers=run.index.readers,
    )


def print_class_weights(weights, class_names, mode):
    if weights:
        print("    class weights: " + ", ".join(f"{class_names[i]}={w:.3f}" for i, w in weights.items()))
    elif mode == "auto":
        print("    class weights: none (classes are balanced enough)")
    else:
        print("    class weights: none")


def train_stage(run):
    options = run.options
    _, train_labels = run.index.split("train")
    weights = train_utils.class_weights(train_labels, len(run.index.class_names), options.class_weights)
    print_class_weights(weights, run.index.class_names, options.class_weights)
    history_path = (
        run.resume["history_path"] if run.resume else run.results_path("training_curves", "history.csv")
    )
    os.makedirs(os.path.dirname(history_path), exist_ok=True)
    if run.resume:
        train_utils.trim_history(history_path, run.resume["epoch"])
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
        tensorboard_dir=run.results_path("tensorboard") if options.tensorboard else None,
        class_weight=weights,
    )
    state = {"stamp": run.stamp, "history_path": history_path}
    if run.resume and "finetune_start" in run.resume:
        state["finetune_start"] = run.resume["finetune_start"]
    start = time.perf_counter()
    train_utils.train(
        run.model, run.datasets["train"], run.datasets["val"], plan, state, resume=run.resume, device=run.device
    )
    seconds = time.perf_counter() - start
    run.history_path = history_path
    run.finetune_start = train_utils.finetune_start(plan.resume_folder)
    train_utils.finish_resume_points(plan.resume_folder)
    if run.device.is_chief:
        record_training(run, seconds)
        print(f"    history: {history_path}")


def record_training(run, seconds):
    """run_config.json's "training": seconds of this invocation's training
    (a resumed run: since it resumed), epochs, the best epoch (1-based,
    lowest val_loss, the saved model's) and its val_loss, for the model
    comparison."""
    import numpy as np

    history = train_utils.read_history(run.history_path)
    losses = history["val_loss"]
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else None
    training = {
        "seconds": round(seconds, 1),
        "epochs": int(len(losses)),
        "best_epoch": None if best is None else best + 1,
        "best_val_loss": None if best is None else float(losses[best]),
        "resumed": bool(run.resume),
    }
    saved = artifacts.read_run_config(run.folder)
    artifacts.write_json(run.artifact_path(artifacts.RUN_CONFIG_FILE), {**saved, "training": training})


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
    if calibration.logits_layer(best) is None:
        print("    not applicable: this model was begun before calibration existed (no temperature layer)")
        return
    logits, labels = evaluate.predict_batches(calibration.logits_model(best), whole_split(run, "val"))
    temperature = calibration.fit_temperature(logits, labels)
    fitted = {"temperature": temperature, "fitted_on": "val", "images": int(len(labels))}
    for name, value in (("before", 1.0), ("after", temperature)):
        probabilities = calibration.softmax(logits, value)
        fitted[f"val_nll_{name}"] = calibration.temperature_nll(logits, labels, value)
        fitted[f"val_ece_{name}"] = calibration.expected_calibration_error(labels, probabilities)
    artifacts.save_model(calibration.with_temperature(best, temperature), run.model_path)
    saved = artifacts.read_run_config(run.folder)
    artifacts.write_json(run.artifact_path(artifacts.RUN_CONFIG_FILE), {**saved, "calibration": fitted})
    print(
        f"    temperature {temperature:.3f} fitted on {len(labels)} validation images: "
        f"NLL {fitted['val_nll_before']:.3f} -> {fitted['val_nll_after']:.3f}, "
        f"ECE {fitted['val_ece_before']:.1%} -> {fitted['val_ece_after']:.1%}"
    )
    if temperature > 0.99 * calibration.MAX_TEMPERATURE:
        print("    note: T is at its upper bound: on the validation split the model does about as well as "
              "chance, so its calibrated probabilities are nearly uniform")
    elif temperature < 1.01 * calibration.MIN_TEMPERATURE:
        print("    note: T is at its lower bound: the model gets (nearly) every validation image right, "
              "so the validation split cannot say how confident it should be")


def publish_stage(run):
    """Only now, with training finished, does this run's model become what
    evaluate.py and predict.py use by default; the run config records the
    model file's hash so a model and companions of different runs are
    never used together."""
    if not os.path.isfile(run.model_path):
        raise config.UserError(
            "training produced no usable model: val_loss was never finite (the "
            f"loss diverged); nothing was published. Lower --learning_rate. Run folder: {run.folder}"
        )
    saved = artifacts.read_run_config(run.folder)
    artifacts.write_json(
        run.artifact_path(artifacts.RUN_CONFIG_FILE),
        {**saved, "status": "finished", "model_sha256": artifacts.file_sha256(run.model_path)},
    )
    published = artifacts.publish(run.options.artifacts_dir, run.folder)
    print(f"    published: {published} -> run {run.stamp} ({run.folder})")


def evaluate_stage(run):
    import keras

    best = keras.models.load_model(run.model_path)
    probabilities, true_labels = evaluate.predict_batches(best, run.datasets["test"])
    paths, _ = run.index.split("test")
    run.evaluation = evaluate.Evaluation(
        paths=tuple(paths),
        true_labels=true_labels,
        probabilities=probabilities,
        class_names=tuple(run.index.class_names),
        image_size=run.options.image_size,
        description="test split",
        readers=run.index.readers,
        temperature=calibration.model_temperature(best),
    )
    run.metrics = run.evaluation.metrics()
    metrics_path = artifacts.write_json(
        run.results_path("metrics", "metrics.json"),
        {"model": run.model_path, "split": "test", **run.metrics},
    )
    print(
        f"    test accuracy {run.metrics['accuracy']:.4f}, loss {run.metrics['loss']:.4f} "
        f"on {run.metrics['num_samples']} images"
    )
    print(f"    {evaluate.calibration_line(run.metrics['calibration'])}")
    print(f"    metrics: {metrics_path}")


def export_stage(run):
    """--export: the best model exported into its folder, each export
    checked against it on the test split (export.export_and_check)."""
    import keras

    options = run.options
    if not options.export:
        print("    not asked for (--export onnx,litert,saved_model)")
        return
    calibration = None
    if options.quantize == "int8":
        paths, _ = run.index.split("train")
        chosen = export.calibration_paths(paths, seed=options.seed)
        calibration = export.load_images(chosen, options.image_size, run.index.readers)
        print(f"    int8 calibration on {len(calibration)} training images")
    best = keras.models.load_model(run.model_path)
    run.export_report = export.export_and_check(
        best, run.model_path, options.export, run.datasets["test"], options.quantize, calibration,
        description="test split",
    )
    for line in export.report_lines(run.export_report):
        print(f"    {line}")
    print(f"    export report: {export.report_path(run.model_path)}")


# ---------------------------------------------------------------- figures

# The augmentation preview: this many training images, each this many times.
PREVIEW_IMAGES = 4
PREVIEW_VERSIONS = 5


def add_figures(run, *paths):
    """Records saved figures, in stage order, for show_stage."""
    for path in paths:
        run.figures.append(path)
        print(f"    figure: {path}")


def drawn_by_first_run(run):
    """With several backbones, the dataset figures are the first run's:
    says so and returns True for the others."""
    if run.shared_from:
        print(f"    the same images as run {run.shared_from}: see its figure")
    return bool(run.shared_from)


def distribution_stage(run):
    if drawn_by_first_run(run):
        return
    add_figures(
        run,
        visualize.plot_dataset_distribution(
            run.index.counts(),
            run.index.class_names,
            run.results_path("dataset_distribution", "dataset_distribution.png"),
            skipped=len(run.index.skipped),
        ),
    )


def pick_training_images(labels, num_classes, per_class, seed):
    """Up to `per_class` random training images of each class: a list of
    index arrays, one per class number."""
    import numpy as np

    rng = np.random.default_rng(seed)
    picks = []
    for number in range(num_classes):
        members = np.flatnonzero(labels == number)
        picks.append(np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)))
    return picks


def training_images(run, positions):
    """Training images (by position in the train split) as the model gets
    them: uint8 tensors, decoded the way the audit chose for each."""
    paths, _ = run.index.split("train")
    decoders = run.index.decoders("train")
    return [
        image_io.load_image(
            paths[i], run.options.image_size, decoder=decoders[i], readers=run.index.readers
        )
        for i in positions
    ]


def class_grid_stage(run):
    if drawn_by_first_run(run):
        return
    options = run.options
    _, labels = run.index.split("train")
    picks = pick_training_images(labels, len(run.index.class_names), options.grid_per_class, options.seed)
    examples = [
        (name, [image.numpy() for image in training_images(run, chosen)])
        for name, chosen in zip(run.index.class_names, picks)
    ]
    note = (
        f"{options.grid_per_class} random training images per class, as the model gets "
        f"them ({options.image_size} x {options.image_size} px)"
    )
    add_figures(
        run,
        visualize.plot_class_grid(examples, run.results_path("class_grid", "class_grid.png"), note=note),
    )


def augmentation_stage(run):
    """The same training images, then augmented by augment.augment_batch
    with the training run's settings: the training pipeline's own code."""
    import numpy as np
    import tensorflow as tf

    options = run.options
    strengths = augment_config(options)
    if strengths is None:
        print("    augmentation is off (--augment 0): nothing to preview")
        return
    if drawn_by_first_run(run):
        return
    paths, labels = run.index.split("train")
    # Images of different classes (random ones), then any, if too few classes.
    rng = np.random.default_rng(options.seed)
    picks = pick_training_images(labels, len(run.index.class_names), 1, options.seed)
    firsts = [int(chosen[0]) for chosen in picks if len(chosen)]
    firsts = [firsts[i] for i in rng.permutation(len(firsts))]
    rest = [int(i) for i in rng.permutation(len(paths)) if i not in firsts]
    chosen = (firsts + rest)[:PREVIEW_IMAGES]
    images = tf.stack(training_images(run, chosen))
    versions = [
        augment.augment_batch(images, tf.constant([options.seed, version], tf.int64), strengths).numpy()
        for version in range(1, PREVIEW_VERSIONS + 1)
    ]
    note = (
        f"{PREVIEW_VERSIONS} random draws of the training augmentation per image · flip "
        f"{strengths.flip} · rotation ±{strengths.rotation:g}° · zoom ±{strengths.zoom:.0%} · "
        f"shift ±{strengths.translation:.0%} · contrast ±{strengths.contrast:.0%}"
    )
    path = visualize.plot_augmentation_preview(
        images.numpy(),
        versions,
        run.results_path("augmentation_preview", "augmentation_preview.png"),
        note=note,
        row_labels=[run.index.class_names[labels[i]] for i in chosen],
    )
    add_figures(run, path)


def training_curves_stage(run):
    history = train_utils.read_history(run.history_path)
    path = os.path.join(os.path.dirname(run.history_path), "training_curves.png")
    add_figures(run, visualize.plot_training_curves(history, path, finetune_start=run.finetune_start))


def confusion_matrix_stage(run):
    add_figures(run, *visualize.render_confusion(run.evaluation, run.results_path("confusion_matrix")))


def classification_report_stage(run):
    folder = run.results_path("classification_report")
    add_figures(run, visualize.render_report(run.evaluation, folder))
    evaluate.print_most_confused(run.evaluation.most_confused(limit=5))


def roc_auc_stage(run):
    add_figures(run, visualize.render_roc(run.evaluation, run.results_path("roc_auc")))


def reliability_stage(run):
    add_figures(run, visualize.render_reliability(run.evaluation, run.results_path("calibration")))


def prediction_gallery_stage(run):
    options = run.options
    path, _ = visualize.render_gallery(
        run.evaluation,
        options.rows,
        options.cols,
        options.gallery,
        options.seed,
        run.results_path("prediction_gallery"),
    )
    add_figures(run, path)


def top_losses_stage(run):
    options = run.options
    folder = run.results_path("top_losses")
    add_figures(run, visualize.render_top_losses(run.evaluation, options.rows, options.cols, folder))


# ---------------------------------------------------------------- tracking


def start_tracking_stage(run):
    """With --mlflow: an MLflow run (a resumed run continues its own) with
    every option, started before training so a wrong URI stops the run at
    once. tracking.py is imported only then."""
    if not run.options.mlflow:
        print("    not tracked (no --mlflow)")
        return
    import tracking

    saved = artifacts.read_run_config(run.folder)
    previous = saved.get("mlflow") or {}
    same_store = previous.get("uri") == tracking.resolved_uri(run.options.mlflow)
    resumed = previous.get("run_id") if run.resume and same_store else None
    counts = run.index.counts()
    run.tracked = tracking.start_run(
        run.options.mlflow,
        experiment=os.path.basename(os.path.normpath(run.index.root)),
        run_name=run.stamp,
        params={
            **main_options(run.options),
            "num_classes": len(run.index.class_names),
            **{f"{split}_images": sum(counts[split].values()) for split in data_loader.SPLITS},
        },
        tags={"run": run.stamp, "run_folder": os.path.abspath(run.folder), "image_dir": run.index.root},
        resume_run_id=resumed,
    )
    artifacts.write_json(
        run.artifact_path(artifacts.RUN_CONFIG_FILE),
        {**saved, "mlflow": {"uri": run.tracked.uri, "run_id": run.tracked.run_id}},
    )
    print(f"    {'continuing' if resumed else 'started'} {run.tracked.describe()}")


def finish_tracking_stage(run):
    """With --mlflow: the per-epoch history, the test metrics, the figures,
    reports and the published model go to the MLflow run, which ends."""
    if run.tracked is None:
        print("    not tracked (no --mlflow)")
        return
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
        metrics=run.metrics,
        figures=run.figures,
        reports=[path for path in reports if os.path.isfile(path)],
        model_files=[run.artifact_path(name) for name in (artifacts.MODEL_FILE, *artifacts.COMPANION_FILES)],
    )
    print(f"    logged to {run.tracked.describe()}")
    hint = tracking.viewing_hint(run.options.mlflow)
    if hint:
        print(f"    {hint}")
    run.tracked = None  # ended: nothing left to mark failed


def show_stage(run):
    """Every figure is saved by now; show them in stage order."""
    visualize.show_figures(run.figures, run.options.show)


STAGES = [
    ("Scanning and splitting the dataset", scan_stage),
    # Before the figures: weights that cannot be loaded stop the run at once.
    ("Building the model", model_stage),
    ("Saving the class index, split manifest and run config", companions_stage),
    ("Starting the MLflow run", start_tracking_stage),
    ("Plotting the dataset distribution", distribution_stage),
    ("Plotting example images per class", class_grid_stage),
    ("Previewing the augmentation", augmentation_stage),
    ("Preparing the input pipeline", data_stage),
    ("Training", train_stage),
    # Before publishing: the published file is the calibrated one, and its
    # hash in run_config.json is that file's.
    ("Calibrating the confidences", calibrate_stage),
    ("Publishing the model", publish_stage),
    ("Plotting the training curves", training_curves_stage),
    ("Evaluating the best model on the test split", evaluate_stage),
    ("Exporting the model and checking each export", export_stage),
    ("Plotting the confusion matrix", confusion_matrix_stage),
    ("Plotting the classification report", classification_report_stage),
    ("Plotting the ROC curves", roc_auc_stage),
    ("Plotting the reliability diagram", reliability_stage),
    ("Plotting the prediction gallery", prediction_gallery_stage),
    ("Plotting the top losses", top_losses_stage),
    ("Logging the run to MLflow", finish_tracking_stage),
    ("Showing the figures", show_stage),
]


def open_run(options, argv):
    """This invocation's run: a new one, or the interrupted run --resume
    continues, with its own saved options. Returns (options, run id, run
    folder, resume state or None). Raises UserError."""
    if not options.resume:
        stamp, folder = artifacts.new_run(options.artifacts_dir, options.results_dir)
        print(f"Run {stamp}: {folder}")
        return options, stamp, folder, None
    stamp, folder, resume = train_utils.find_interrupted_run(options.artifacts_dir, options.resume)
    try:
        saved = artifacts.read_run_config(folder).get("options")
    except artifacts.CompanionError as error:
        raise config.UserError(f"--resume: {error}; start a new run") from None
    if not isinstance(saved, dict):
        raise config.UserError(f"--resume: the run config in {folder} has no options; start a new run")
    options = resumed_options(options, given_options(argv), saved)
    check_outputs_outside(options)
    try:  # checked before anything is written; compared after the scan
        artifacts.read_manifest(folder)
    except artifacts.CompanionError as error:
        raise config.UserError(f"--resume: {error}; start a new run") from None
    print(f"Resuming run {stamp} ({folder}) with its own options.")
    return options, stamp, folder, resume


# A worker's own machine may keep the dataset (and a weights file)
# elsewhere: these options are the worker's; every other one is the chief's.
WORKER_LOCAL_OPTIONS = ("image_dir", "labels_csv", "reader", "weights")


def worker_options(options, given, chief):
    """The options a worker other than the chief trains with: the chief's
    (`chief`, as saved in run_config.json), with the paths of
    WORKER_LOCAL_OPTIONS given on this worker's command line. Any other
    option given with another value than the chief's is refused, naming it.
    Raises UserError."""
    chief_config = config.config_from_dict(chief)
    ignored = (*DISPLAY_OPTIONS, *WORKER_LOCAL_OPTIONS, "resume", "artifacts_dir", "results_dir")
    different = first_different_option(given, chief, ignored)
    if different:
        name, ours, theirs = different
        raise config.UserError(
            f"every worker trains with the chief's options, and the chief has {name}={theirs}; "
            f"give --{name} the same value here or leave it out. Received: {name}={ours}"
        )
    mine = {name: getattr(options, name) for name in WORKER_LOCAL_OPTIONS if name in given}
    return dataclasses.replace(chief_config, resume=options.resume, **mine)


def open_worker_run(options, argv, workers):
    """Several workers: the chief opens the run (`open_run`) and every
    worker learns its id, options and resume point from it. The others
    write nothing in ARTIFACTS_DIR or RESULTS_DIR: their files (the saves
    every worker makes, see train_utils) go to a scratch folder of their
    own, deleted at the end. Returns open_run's tuple and the scratch
    folder (None on the chief). Raises UserError on every worker when the
    chief cannot open the run."""
    cluster = workers.cluster
    if cluster.is_chief:
        try:
            opened = open_run(options, argv)
        except config.UserError as error:
            workers.exchange({"error": str(error)})
            raise
        options, stamp, folder, resume = opened
        workers.exchange({"stamp": stamp, "options": main_options(options), "resume": resume})
        return (*opened, None)
    chief = workers.exchange(None)[0]
    if "error" in chief:
        raise config.UserError(f"the chief stopped: {chief['error']}")
    options = worker_options(options, given_options(argv), chief["options"])
    scratch = tempfile.mkdtemp(prefix=f"image-classifier-{cluster.task_type}{cluster.task_index}-")
    for name in ("artifacts_dir", "results_dir", "image_dir"):
        if artifacts.is_inside(scratch, getattr(options, name)):
            shutil.rmtree(scratch)
            raise config.UserError(
                f"this worker's scratch folder would be inside --{name}; set TMPDIR to a folder "
                f"outside it. Received: {name}={getattr(options, name)}"
            )
    stamp = chief["stamp"]
    options = dataclasses.replace(
        options, artifacts_dir=os.path.join(scratch, "model_artifacts"), results_dir=os.path.join(scratch, "results")
    )
    folder = os.path.join(artifacts.runs_folder(options.artifacts_dir), stamp)
    os.makedirs(folder)
    resume = chief["resume"]
    if resume:  # the chief's history stays the chief's
        resume = {**resume, "history_path": os.path.join(options.results_dir, "training_curves", stamp, "history.csv")}
    print(
        f"Run {stamp}, {cluster.name} of {cluster.num_workers} workers: the chief writes the model "
        f"and results; this worker writes nothing there (scratch: {scratch})."
    )
    return options, stamp, folder, resume, scratch


# What every worker of a multi-worker run does; the other stages (figures,
# publishing, evaluation, anything that writes) are the chief's alone.
WORKER_STAGES = ("scan_stage", "model_stage", "data_stage", "train_stage")


def run_training(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    # Options first: a mistake there is one line, before TensorFlow starts
    # (and prints its own start-up lines).
    options = parse_arguments(argv)
    check_artifacts_dir(options.artifacts_dir)
    cluster = train_utils.cluster_from_environment()
    backbones = model_builder.backbone_names(options.backbone)
    if len(backbones) > 1:
        return train_several(options, backbones, cluster)
    import keras

    if cluster is not None:
        print(
            f"Waiting for all {cluster.num_workers} workers of TF_CONFIG to start "
            f"(this is {cluster.name}, {cluster.addresses[cluster.worker_index]})...",
            flush=True,
        )
    # Before anything else starts TensorFlow (see make_strategy).
    strategy = train_utils.make_strategy(cluster)
    workers = None if cluster is None else train_utils.Workers(strategy, cluster)
    scratch = folder = None
    try:
        with train_utils.worker_errors(cluster):
            if cluster is None:
                options, stamp, folder, resume = open_run(options, argv)
            else:
                options, stamp, folder, resume, scratch = open_worker_run(options, argv, workers)
            device = train_utils.configure_device(options.precision, options.jit, strategy, workers)
            if options.demo:
                print(f"No --image_dir given: training on the built-in demo ({options.image_dir}).")
            keras.utils.set_random_seed(options.seed)
            run = Run(options=options, stamp=stamp, folder=folder, resume=resume, device=device)
            run_stages(run)
    except BaseException:
        if folder and not options.resume:
            # A run that stopped before writing anything (a missing folder,
            # no images) leaves no empty run folder behind; rmdir removes
            # nothing else.
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return run


def train_several(options, backbones, cluster):
    """--backbone A,B,...: one run per backbone, one after another, each in
    its own run folder with its own results stamp, all on the same split
    (scanned once, one --seed); then the one with the lowest validation
    loss is published and the runs are compared on their test images
    (compare.py). Returns the runs."""
    import keras

    if options.resume:
        raise config.UserError(
            "--resume continues one run: leave --backbone out (the run keeps its own). "
            f"Received: backbone={options.backbone}"
        )
    if cluster is not None:
        raise config.UserError(
            "several backbones train on one machine, not with TF_CONFIG workers: give one "
            f"--backbone per multi-worker run. Received: backbone={options.backbone}"
        )
    device = train_utils.configure_device(options.precision, options.jit, train_utils.make_strategy(None))
    if options.demo:
        print(f"No --image_dir given: training on the built-in demo ({options.image_dir}).")
    widths = [name for name in backbones if model_builder.BACKBONES[name]["alpha"]]
    if options.alpha != 1.0 and len(widths) < len(backbones):
        print(f"--alpha {options.alpha:g} applies to {', '.join(widths)}; the others have no width multiplier.")
    runs = []
    for number, backbone in enumerate(backbones, start=1):
        run_options = dataclasses.replace(
            options, backbone=backbone, alpha=model_builder.backbone_alpha(backbone, options.alpha)
        )
        stamp, folder = artifacts.new_run(options.artifacts_dir, options.results_dir)
        print(f"\n#### {backbone} ({number} of {len(backbones)}) · run {stamp}: {folder}")
        first = runs[0] if runs else None
        run = Run(
            options=run_options, stamp=stamp, folder=folder, device=device,
            index=first.index if first else None, shared_from=first.stamp if first else None,
        )
        keras.utils.set_random_seed(options.seed)  # each run as if trained alone
        run_stages(run)
        # Only what the comparison needs stays; the model and pipelines go.
        run.model, run.datasets, run.evaluation = None, {}, None
        keras.backend.clear_session()
        runs.append(run)
    with config.stage("Publishing the run with the lowest validation loss"):
        publish_best(options.artifacts_dir, runs)
    with config.stage(f"Comparing the {len(runs)} models on the same test images"):
        _, _, paths = compare.compare_runs(
            [run.folder for run in runs], options.image_dir, options.results_dir,
            options.batch_size, readers=runs[0].index.readers,
            published=artifacts.published_run(options.artifacts_dir),
        )
    with config.stage("Showing the comparison"):
        visualize.show_figures(paths[-1:], options.show)
    return runs


def publish_best(artifacts_dir, runs):
    """Publishes the run whose best epoch had the lowest val_loss (each run
    was published as it finished, so an interrupted series leaves the last
    finished one): the choice uses the validation split only, never the
    test images the comparison reports. Returns its run id."""
    def best_val_loss(run):
        value = (artifacts.read_run_config(run.folder).get("training") or {}).get("best_val_loss")
        return float("inf") if value is None else value

    best = min(runs, key=best_val_loss)
    published = artifacts.publish(artifacts_dir, best.folder)
    print(f"    published: {published} -> run {best.stamp} ({best.options.backbone}, "
          f"val_loss {best_val_loss(best):.4f}; the others stay in their run folders)")
    return best.stamp


def run_stages(run):
    """Runs STAGES in order (on a worker other than the chief, only
    WORKER_STAGES); with several workers, they all end together."""
    try:
        for name, stage_function in STAGES:
            if run.device.is_chief or stage_function.__name__ in WORKER_STAGES:
                with config.stage(name):
                    stage_function(run)
    except BaseException as error:
        if run.tracked is not None:  # an MLflow run never stays "running" after a failure
            import tracking

            tracking.end_failed_run(run.tracked, killed=isinstance(error, KeyboardInterrupt))
        raise
    if run.export_report and not run.export_report["passed"]:
        raise config.CheckFailed(
            export.failure_message(run.export_report, export.report_path(run.model_path))
        )
    if run.device.cluster is not None:
        # Every worker waits for the chief's evaluation and figures, so that
        # none leaves while the others still count on it.
        what = "Waiting for every worker to finish" if run.device.is_chief else (
            "Waiting for the chief to evaluate the model and write the results"
        )
        with config.stage(what):
            run.device.workers.exchange(None)


def check_artifacts_dir(artifacts_dir):
    """ARTIFACTS_DIR must be a folder (or not exist yet)."""
    if os.path.exists(artifacts_dir) and not os.path.isdir(artifacts_dir):
        raise config.UserError(
            f"artifacts_dir must be a folder; this is a file. Received: artifacts_dir={artifacts_dir}"
        )


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return config.run_cli(run_training, argv)


if __name__ == "__main__":
    sys.exit(main())
