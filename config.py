"""Defaults and command-line options shared by every script.

One frozen dataclass, `Config`, holds every default; `add_shared_arguments`
adds the options every script understands, and each script adds only its
own on top (`add_split_arguments`, `add_training_arguments`,
`add_figure_arguments`). Scripts validate what they parsed, turn it into a
Config (`config_from_args`) and pass plain values on: the parsed command
line stops at the script that parsed it. A mistake in what the user asked
for is a `UserError`: `run_cli` prints its one line and exits with code 2
(a run that cannot go on for another reason, such as a lost worker, raises
a `Stop` with exit code 1 the same way).
"""

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time

import artifacts


class Stop(Exception):
    """Ends a script with one line on stderr and `exit_code`, no traceback:
    for a run that cannot go on though nothing was the user's mistake."""

    exit_code = 1


class UserError(Stop):
    """A mistake in the user's input: reported as one line, exit code 2."""

    exit_code = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors (unknown option, bad choice, bad number)
    raised as a UserError: one line and exit code 2 through run_cli, like
    every other mistake, instead of the usage block."""

    def __init__(self, *args, **kwargs):
        # Options are spelled in full: `--lr` never silently means
        # --learning_rate, and main.py --resume can tell which were given.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def add_model_argument(parser):
    """--model, for the scripts that load a trained model."""
    parser.add_argument(
        "--model",
        default=DEFAULTS.model,
        help="The model file; its class_index.json, run_config.json and "
        "split_manifest.csv are read from beside it (default: "
        "ARTIFACTS_DIR/best_model.keras, the last run that finished training)",
    )
    return parser


class CheckFailed(Stop):
    """A check of the program's own output failed (an export that does not
    match its model): not the user's mistake, so one line and exit code 1."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults for every option. The command line overrides them."""

    # Data.
    image_dir: str | None = None
    image_size: int = 224
    batch_size: int = 32
    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 42
    # Augmentation (training batches only). Rotation in degrees, the others
    # as fractions: zoom 0.1 = scale in [0.9, 1.1], translation 0.1 = up to
    # 10% of the image side, contrast 0.2 = factor in [0.8, 1.2].
    augment: int = 1
    cache: str = "auto"
    flip: str = "horizontal"
    rotation: float = 15.0
    zoom: float = 0.1
    translation: float = 0.1
    contrast: float = 0.2
    # Model.
    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    weights: str = "imagenet"
    dropout: float = 0.2
    # Training.
    epochs: int = 10
    learning_rate: float = 1e-3
    fine_tune_epochs: int = 10
    fine_tune_layers: int = 30
    patience: int = 5
    class_weights: str = "auto"
    tensorboard: int = 0
    resume: str | None = None  # "last" or a run id
    precision: str = "auto"
    jit: str = "auto"
    # Where things go.
    artifacts_dir: str = "model_artifacts"
    results_dir: str = "results"
    model: str | None = None
    # Which files are the dataset (see data_loader.index_dataset).
    labels_csv: str | None = None
    classes: tuple | None = None
    reader: tuple | None = None
    # Figures (see add_figure_arguments) and predict.py.
    rows: int = 2
    cols: int = 5
    gallery: str = "mixed"
    show: str = "auto"
    grid_per_class: int = 5
    split: str = "test"
    gradcam: int = 0
    top_k: int = 3
    images: tuple | None = None
    # Exports (see export.py): formats and LiteRT quantization.
    export: tuple | None = None
    quantize: str | None = None
    # Set by main.py when no --image_dir is given: the built-in demo.
    demo: bool = False
    # Calibration, test-time augmentation and tracking (see
    # add_calibration_arguments, add_tta_argument, add_tracking_arguments).
    calibrate: int = 1
    tta: int = 1
    mlflow: str | None = None
    # evaluate.py --compare [RUN ...]: () compares every finished run on --image_dir.
    compare: tuple | None = None


DEFAULTS = Config()

# What --export accepts (export.py writes and checks them).
EXPORT_FORMATS = ("onnx", "litert", "saved_model")

# The built-in demo: scikit-learn's 8x8 digit scans, trained from scratch.
# These settings were measured to finish in under 5 minutes on 2 CPU cores
# with test accuracy >= 0.95 (see README).
DEMO_DIR = os.path.join("data", "demo_digits")
DEMO_OVERRIDES = {
    "weights": "none",
    "image_size": 32,
    "epochs": 30,
    "batch_size": 32,
    "augment": 0,
    "patience": 8,
    "learning_rate": 2e-3,
}


# The type functions below raise UserError, not argparse.ArgumentTypeError:
# argparse turns the latter into its usage text plus an error line, while a
# UserError passes through parse_args to run_cli, which prints one line.


def _integer(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise UserError(f"{name} must be an integer. Received: {name}={text}") from None
        return value

    return parse


def _number(name):
    """A float option; NaN and infinity are refused (a NaN rotation turns
    every augmented image black, a NaN learning rate fails mid-training)."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{name} must be a number. Received: {name}={text}") from None
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number. Received: {name}={text}")
        return value

    return parse


# NumPy and TensorFlow seeds are unsigned 32-bit integers.
MAX_SEED = 2**32


def _seed(text):
    value = _integer("seed")(text)
    if not 0 <= value < MAX_SEED:
        raise UserError(f"seed must be between 0 and {MAX_SEED - 1}. Received: seed={text}")
    return value


def add_shared_arguments(parser):
    """Adds the options every script understands (data, model location)."""
    group = parser.add_argument_group("data and outputs")
    group.add_argument(
        "--image_dir",
        default=DEFAULTS.image_dir,
        help="Dataset folder: DIR/<class>/... or DIR/{train,val,test}/<class>/... "
        "(default: the built-in demo for main.py)",
    )
    group.add_argument(
        "--image_size",
        type=_integer("image_size"),
        default=DEFAULTS.image_size,
        help="Images are resized to SIZE x SIZE (default: %(default)s)",
    )
    group.add_argument(
        "--batch_size",
        type=_integer("batch_size"),
        default=DEFAULTS.batch_size,
        help="Images per batch; in training, per replica: with several GPUs "
        "or workers each step takes batch_size x replicas images "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=_seed,
        default=DEFAULTS.seed,
        help="Seeds the split, the shuffle, augmentation and weight init "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--artifacts_dir",
        default=DEFAULTS.artifacts_dir,
        help="Where the model and what it needs are saved (default: %(default)s)",
    )
    group.add_argument(
        "--results_dir",
        default=DEFAULTS.results_dir,
        help="Figures and reports go to RESULTS_DIR/<category>/<timestamp>/ "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--labels_csv",
        default=DEFAULTS.labels_csv,
        help="CSV with the columns filename,label[,split] (file names relative "
        "to IMAGE_DIR; a split column overrides the automatic split) instead "
        "of class folders (default: class folders)",
    )
    group.add_argument(
        "--classes",
        type=_name_list,
        default=DEFAULTS.classes,
        help="Comma-separated class names: only these classes, in this order "
        "(class index 0, 1, ...) (default: every class, sorted)",
    )
    group.add_argument(
        "--reader",
        action="append",
        default=DEFAULTS.reader,
        metavar="EXT=FILE.py:FUNCTION",
        help="Read files with extension EXT with FUNCTION(path) -> uint8 "
        "HxWxC numpy array from FILE.py (or an importable MODULE); "
        "repeatable, e.g. --reader npy=my_readers.py:read_npy "
        "(default: built-in decoders only)",
    )
    return parser


def add_split_arguments(parser):
    """Adds the split options of main.py and the inspection CLI (evaluate.py
    and predict.py reuse the split saved with the model)."""
    group = parser.add_argument_group("split")
    group.add_argument(
        "--val_split",
        type=_number("val_split"),
        default=DEFAULTS.val_split,
        help="Fraction of each class held out for validation when the folder "
        "has no val split (default: %(default)s)",
    )
    group.add_argument(
        "--test_split",
        type=_number("test_split"),
        default=DEFAULTS.test_split,
        help="Fraction of each class held out for testing when the folder "
        "has no test split (default: %(default)s)",
    )
    return parser


def _name_list(text):
    """`a,b,c` -> ("a", "b", "c"), for --classes."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise UserError(
            "classes must be distinct, non-empty names separated by commas. "
            f"Received: classes={text}"
        )
    return names


def _backbone_text(text):
    """`mobilenet_v2, resnet50` -> "mobilenet_v2,resnet50": one or several
    backbone names, spaces around the commas dropped (the names are
    checked in validate_training_args)."""
    return ",".join(name.strip() for name in text.split(","))


def _export_list(text):
    """`onnx,litert` -> ("onnx", "litert"), for --export."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    if not names or not set(names) <= set(EXPORT_FORMATS):
        raise argparse.ArgumentTypeError(
            f"export takes one or more of {','.join(EXPORT_FORMATS)}, separated by "
            f"commas. Received: export={text}"
        )
    return names


def add_export_arguments(parser):
    """Adds --export and --quantize (main.py after training, evaluate.py)."""
    group = parser.add_argument_group("export")
    group.add_argument(
        "--export",
        type=_export_list,
        default=DEFAULTS.export,
        metavar="FORMATS",
        help="Also export the model into its folder and check each export "
        "against it on the evaluated images (export_report.json): any of "
        f"{','.join(EXPORT_FORMATS)} (default: none)",
    )
    group.add_argument(
        "--quantize",
        choices=("float16", "int8"),
        default=DEFAULTS.quantize,
        help="Quantize the LiteRT export (int8: calibrated on training "
        "images); reports the accuracy change instead of judging parity "
        "(default: none, float32)",
    )
    return parser


def validate_export_args(args):
    """Checks --export and --quantize. Raises UserError."""
    if args.quantize and "litert" not in (args.export or ()):
        raise UserError(
            "quantize applies to the LiteRT export: add litert to --export. "
            f"Received: quantize={args.quantize}, export={','.join(args.export or ()) or 'none'}"
        )


def add_training_arguments(parser):
    """Adds main.py's options: augmentation, model and training."""
    aug = parser.add_argument_group("augmentation (training batches only)")
    aug.add_argument(
        "--cache",
        choices=("auto", "memory", "none"),
        default=DEFAULTS.cache,
        help="memory: decode and resize every training/validation image once "
        "and keep the uint8 result in RAM (augmentation still runs every "
        "epoch); none: stream from disk every epoch; auto: memory when it "
        "fits the RAM budget printed at start (default: %(default)s)",
    )
    aug.add_argument(
        "--augment",
        type=int,
        choices=(0, 1),
        default=DEFAULTS.augment,
        help="1: random flip, rotation, zoom, translation and contrast on "
        "training batches (default: %(default)s)",
    )
    aug.add_argument(
        "--flip",
        choices=("horizontal", "vertical", "both", "none"),
        default=DEFAULTS.flip,
        help="Random flips (default: %(default)s)",
    )
    aug.add_argument(
        "--rotation",
        type=_number("rotation"),
        default=DEFAULTS.rotation,
        help="Maximum rotation in degrees, either way (default: %(default)s)",
    )
    aug.add_argument(
        "--zoom",
        type=_number("zoom"),
        default=DEFAULTS.zoom,
        help="Zoom range: scale in [1-Z, 1+Z] (default: %(default)s)",
    )
    aug.add_argument(
        "--translation",
        type=_number("translation"),
        default=DEFAULTS.translation,
        help="Maximum shift as a fraction of the side (default: %(default)s)",
    )
    aug.add_argument(
        "--contrast",
        type=_number("contrast"),
        default=DEFAULTS.contrast,
        help="Contrast factor in [1-C, 1+C] (default: %(default)s)",
    )

    # model_builder.BACKBONES is the one table of backbone families; it
    # imports only this module, so importing it here (not at the top, which
    # would be circular) is cheap.
    import model_builder

    model = parser.add_argument_group("model")
    model.add_argument(
        "--backbone",
        type=_backbone_text,
        default=DEFAULTS.backbone,
        metavar="NAME[,NAME...]",
        help="Feature extractor from keras.applications, one of "
        f"{', '.join(model_builder.BACKBONES)}; each takes raw 0-255 images, "
        "its own preprocessing is inside the saved model. Several, separated "
        "by commas: one run each on the same split, then a model comparison "
        "(default: %(default)s)",
    )
    model.add_argument(
        "--alpha",
        type=_number("alpha"),
        default=DEFAULTS.alpha,
        help="Width multiplier of the backbone, for "
        f"{', '.join(model_builder.ALPHA_BACKBONES)} only (default: %(default)s)",
    )
    model.add_argument(
        "--weights",
        default=DEFAULTS.weights,
        help="imagenet, none (train from scratch) or PATH to a local weights "
        "file for the backbone (default: %(default)s)",
    )
    model.add_argument(
        "--dropout",
        type=_number("dropout"),
        default=DEFAULTS.dropout,
        help="Dropout before the classifier (default: %(default)s)",
    )

    train = parser.add_argument_group("training")
    train.add_argument(
        "--epochs",
        type=_integer("epochs"),
        default=DEFAULTS.epochs,
        help="Epochs with the backbone frozen (or all epochs from scratch) "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--learning_rate",
        type=_number("learning_rate"),
        default=DEFAULTS.learning_rate,
        help="Adam learning rate (default: %(default)s)",
    )
    train.add_argument(
        "--fine_tune_epochs",
        type=_integer("fine_tune_epochs"),
        default=DEFAULTS.fine_tune_epochs,
        help="Epochs with the last layers unfrozen at a 10x lower learning "
        "rate; pretrained weights only, 0 skips (default: %(default)s)",
    )
    train.add_argument(
        "--fine_tune_layers",
        type=_integer("fine_tune_layers"),
        default=DEFAULTS.fine_tune_layers,
        help="How many of the backbone's last layers to unfreeze "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--patience",
        type=_integer("patience"),
        default=DEFAULTS.patience,
        help="Early stopping patience in epochs, on val_loss "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--class_weights",
        choices=("auto", "none"),
        default=DEFAULTS.class_weights,
        help="auto: balanced class weights when the largest class has over "
        "1.5x the images of the smallest (default: %(default)s)",
    )
    train.add_argument(
        "--tensorboard",
        type=int,
        choices=(0, 1),
        default=DEFAULTS.tensorboard,
        help="1: write TensorBoard logs to RESULTS_DIR/tensorboard/<timestamp> "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=DEFAULTS.resume,
        metavar="RUN",
        help="Continue an interrupted run (the most recent one, or the run "
        "id RUN under ARTIFACTS_DIR/runs) from its last completed epoch, "
        "with its own saved options",
    )
    train.add_argument(
        "--precision",
        choices=("auto", "float32", "mixed"),
        default=DEFAULTS.precision,
        help="auto: mixed_float16 on a GPU, float32 on the CPU "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--jit",
        choices=("auto", "0", "1"),
        default=DEFAULTS.jit,
        help="XLA compilation; auto: on with a GPU, off on the CPU "
        "(default: %(default)s)",
    )
    return parser


def validate_data_args(args):
    """Checks the data and split options (main.py, the inspection CLI).
    Raises UserError on a bad value."""
    if args.image_size < 32:
        raise UserError(
            "image_size must be at least 32 (the smallest input of any backbone). "
            f"Received: image_size={args.image_size}"
        )
    if args.batch_size < 1:
        raise UserError(
            f"batch_size must be at least 1. Received: batch_size={args.batch_size}"
        )
    for name in ("val_split", "test_split"):
        value = getattr(args, name)
        if not 0 < value < 1:
            raise UserError(
                f"{name} must be between 0 and 1 (exclusive). "
                f"Received: {name}={value}"
            )
    if args.val_split + args.test_split >= 1:
        raise UserError(
            "val_split + test_split must be below 1 to leave images for "
            f"training. Received: val_split={args.val_split}, "
            f"test_split={args.test_split}"
        )


def validate_training_args(args):
    """Checks main.py's options. Raises UserError on a bad value."""
    validate_data_args(args)
    if args.epochs < 1:
        raise UserError(f"epochs must be at least 1. Received: epochs={args.epochs}")
    if args.fine_tune_epochs < 0:
        raise UserError(
            "fine_tune_epochs must be 0 or more. "
            f"Received: fine_tune_epochs={args.fine_tune_epochs}"
        )
    if args.fine_tune_layers < 1:
        raise UserError(
            "fine_tune_layers must be at least 1. "
            f"Received: fine_tune_layers={args.fine_tune_layers}"
        )
    if args.patience < 1:
        raise UserError(f"patience must be at least 1. Received: patience={args.patience}")
    if args.learning_rate <= 0:
        raise UserError(
            f"learning_rate must be positive. Received: learning_rate={args.learning_rate}"
        )
    if not 0 <= args.dropout < 1:
        raise UserError(f"dropout must be in [0, 1). Received: dropout={args.dropout}")
    if args.alpha <= 0:
        raise UserError(f"alpha must be positive. Received: alpha={args.alpha}")
    import model_builder  # see add_training_arguments

    model_builder.validate_backbone_list(args.backbone, args.image_size, args.alpha)
    for name in ("rotation", "zoom", "translation", "contrast"):
        if getattr(args, name) < 0:
            raise UserError(
                f"{name} must be 0 or more. Received: {name}={getattr(args, name)}"
            )
    if args.zoom >= 1 or args.contrast >= 1 or args.translation >= 1:
        raise UserError(
            "zoom, translation and contrast must be below 1. Received: "
            f"zoom={args.zoom}, translation={args.translation}, "
            f"contrast={args.contrast}"
        )
    if args.weights not in ("imagenet", "none") and not os.path.isfile(args.weights):
        raise UserError(
            "weights must be imagenet, none or the path of a weights file; "
            f"no such file. Received: weights={args.weights}"
        )


def config_from_args(args):
    """A frozen Config from parsed arguments (options a script lacks keep
    their defaults)."""
    return config_from_dict(vars(args))


def config_from_dict(values):
    """A frozen Config from a dict of option values (as parsed, or as saved
    in run_config.json): unknown names are left out, lists become tuples."""
    names = {field.name for field in dataclasses.fields(Config)}
    return Config(
        **{
            name: tuple(value) if isinstance(value, list) else value
            for name, value in values.items()
            if name in names
        }
    )


def _check_folder_path(name, path):
    """Raises UserError when the output folder `path`, or the nearest part
    of it that exists, is a file: no folder can be made there."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        what = "is a file" if existing == os.path.abspath(path) else f"lies under a file ({existing})"
        raise UserError(f"{name} must be a folder, but it {what}. Received: {name}={path}")


def check_outside(name, path, image_dir):
    """Raises UserError when an output folder `path` cannot be used: a file,
    inside the dataset, or the dataset itself or a folder above it (results
    go to RESULTS_DIR/<category>/, so a dataset named like a category would
    get new folders). Nothing is ever written inside the dataset."""
    _check_folder_path(name, path)
    if not os.path.isdir(image_dir):
        return
    if artifacts.is_inside(path, image_dir):
        raise UserError(
            f"{name} must be outside image_dir: nothing is written inside "
            f"the dataset. Received: {name}={path}"
        )
    if artifacts.is_inside(image_dir, path):
        raise UserError(
            f"{name} must not hold image_dir: files written under it could land "
            f"inside the dataset. Received: {name}={path}, image_dir={image_dir}"
        )


def load_readers(specs):
    """The custom readers of `--reader` specs ({".ext": function}, see
    image_io.load_readers); a spec that cannot be loaded is a UserError."""
    import image_io

    try:
        return image_io.load_readers(specs)
    except image_io.ReaderError as error:
        raise UserError(str(error)) from None


@contextlib.contextmanager
def stage(name):
    """Prints one line when a stage of a script starts and how long it took."""
    print(f"==> {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - start:.1f}s", flush=True)


def run_cli(main_function, argv=None):
    """Runs `main_function(argv)`; a UserError becomes one line and exit 2
    (any other Stop: one line and its own exit code).

    Returns the function's exit code (0 on success) so tests can call
    `main([...])` in-process. Bugs still raise with their traceback.
    """
    try:
        main_function(argv)
    except Stop as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


# A gallery bigger than this is unreadable and slow to draw.
MAX_GALLERY_SIDE = 20


def add_figure_arguments(parser, training=False):
    """Adds the figure options of main.py, evaluate.py and predict.py.

    All three draw the prediction gallery and show figures; `training=True`
    (main.py) adds --grid_per_class for the class grid, otherwise (evaluate.py,
    predict.py) --split picks which saved split of the training folder to use.
    """
    group = parser.add_argument_group("figures")
    group.add_argument(
        "--rows",
        type=_integer("rows"),
        default=DEFAULTS.rows,
        help="Rows of the prediction gallery (default: %(default)s)",
    )
    group.add_argument(
        "--cols",
        type=_integer("cols"),
        default=DEFAULTS.cols,
        help="Columns of the prediction gallery (default: %(default)s)",
    )
    group.add_argument(
        "--gallery",
        choices=("mixed", "misclassified", "random"),
        default=DEFAULTS.gallery,
        help="Which images the gallery shows: mixed (mistakes first, then "
        "correct ones), misclassified only, or random (default: %(default)s)",
    )
    group.add_argument(
        "--show",
        choices=("auto", "1", "0"),
        default=DEFAULTS.show,
        help="Open the saved figures one after another (close one to see the "
        "next). auto: only when a screen is present; headless runs never "
        "block (default: %(default)s)",
    )
    if training:
        group.add_argument(
            "--grid_per_class",
            type=_integer("grid_per_class"),
            default=DEFAULTS.grid_per_class,
            help="Images per class in the class grid (default: %(default)s)",
        )
    else:
        group.add_argument(
            "--split",
            choices=("train", "val", "test", "all"),
            default=DEFAULTS.split,
            help="On the folder the model was trained on: which split of its "
            "split_manifest.csv to use. Any other folder: all its images "
            "(default: %(default)s)",
        )
    return parser


def validate_figure_args(args):
    """Checks the figure options. Raises UserError on a bad value."""
    names = ["rows", "cols"] + (["grid_per_class"] if hasattr(args, "grid_per_class") else [])
    for name in names:
        value = getattr(args, name)
        if not 1 <= value <= MAX_GALLERY_SIDE:
            raise UserError(
                f"{name} must be between 1 and {MAX_GALLERY_SIDE}. "
                f"Received: {name}={value}"
            )


# --tta beyond this is slow for what it adds.
MAX_TTA = 32


def add_calibration_arguments(parser):
    """main.py's --calibrate."""
    parser.add_argument(
        "--calibrate",
        type=int,
        choices=(0, 1),
        default=DEFAULTS.calibrate,
        help="1: after training, fit a temperature on the validation split so the "
        "model's confidences match its accuracy; it is saved inside the model "
        "and never changes the predicted class (default: %(default)s)",
    )
    return parser


def add_tracking_arguments(parser):
    """main.py's --mlflow (--tensorboard is a training option)."""
    parser.add_argument(
        "--mlflow",
        default=DEFAULTS.mlflow,
        metavar="URI",
        help="Log the run (options, per-epoch and final metrics, figures, model) "
        "to MLflow: a local folder such as ./mlruns, or a tracking server "
        "http://HOST:PORT (default: not logged)",
    )
    return parser


def add_tta_argument(parser):
    """--tta, for evaluate.py and predict.py."""
    parser.add_argument(
        "--tta",
        type=_integer("tta"),
        default=DEFAULTS.tta,
        help="Test-time augmentation: average the probabilities of each image and "
        "N-1 flipped/shifted versions made by the training augmentation "
        f"(1 = off, at most {MAX_TTA}) (default: %(default)s)",
    )
    return parser


def validate_tta_args(args):
    """Checks --tta. Raises UserError on a bad value."""
    if not 1 <= args.tta <= MAX_TTA:
        raise UserError(f"tta must be between 1 and {MAX_TTA}. Received: tta={args.tta}")
