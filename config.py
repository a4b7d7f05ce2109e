"""What are the options: each one declared once, and everything built from it.

Every option is one field of the frozen dataclass `Config`: its default and
an `option(...)` entry with its help, how its text is parsed, its check,
which scripts take it, its group in --help and its tags. From that one table
come every script's parser (`build_parser`), the checks of what was parsed
(`validate`), the options a run saves (`saved_options`), which options a
resumed run or another worker may set for itself (`first_different`, by
tag, and `continued_options`) and the options tables of README.md and
docs/options.md (`options_markdown`, kept in step by tests/test_config.py).

Scripts turn what they parsed into a Config at their edge and pass plain
values on, or a lower file's small value object of the options it needs
(`picked`): the parsed command line stops at the script that parsed it
and at runs.py, which opens its runs. A mistake is an errors.UserError
(one line, exit code 2).

Tags:
    display       what is shown, not what is trained: a resumed run and every
                  worker take it from their own command line
    path          compared as real paths (links resolved) when runs compare options
    worker_local  a worker of several may give its own (its own mount of the
                  dataset, its own weights file)
    run_locator   where this process finds or puts runs, not part of a run:
                  never compared
    output        where the chief writes; another worker writes into a
                  scratch folder instead
    common        listed in README.md's short options table
"""

import argparse
import dataclasses
import difflib
import os
import re
import sys

import artifacts
import backbones
import near_duplicates
import option_types
from errors import UserError

SCRIPTS = ("main", "evaluate", "predict", "inspect", "app")
TRAINING = ("main",)
# The scripts that read image folders (app.py reads only what is uploaded).
FOLDERS = ("main", "evaluate", "predict", "inspect")
# The scripts that use a trained model (and the figures of its predictions).
USING_A_MODEL = ("evaluate", "predict")
FIGURES = ("main", "evaluate", "predict")
# What --export accepts (export.py writes and checks them).
EXPORT_FORMATS = ("onnx", "litert", "saved_model")
# A gallery bigger than this is unreadable and slow to draw.
MAX_GALLERY_SIDE = 20
# --tta beyond this is slow for what it adds.
MAX_TTA = 32
# The order of the groups in --help: what a user needs first, first.
GROUPS = (
    "data and outputs",
    "prediction",
    "evaluation",
    "training",
    "model",
    "split",
    "augmentation (training batches only)",
    "calibration and tracking",
    "figures",
    "export",
    "inspection",
    "serving",
)


# ---------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Option:
    """How one Config field appears on the command line (see `option`)."""

    help: str
    scripts: tuple
    group: str
    parse: object = None  # a function of the option's name -> text parser (integer, number, ...)
    check: object = None  # check(name, value), raises UserError
    choices: tuple | None = None
    nargs: str | None = None
    const: object = None
    action: str | None = None
    metavar: str | None = None
    # Other spellings on the command line (("lr",) for --lr): argparse
    # aliases, shown in --help and the tables.
    aliases: tuple = ()
    tags: frozenset = frozenset()
    # Other defaults in some scripts ({"evaluate": None}), and other help.
    defaults: dict = dataclasses.field(default_factory=dict)
    helps: dict = dataclasses.field(default_factory=dict)
    # How --help and the tables name the default: a text, or {script: text}.
    shown_default: object = None
    # The value that gives the old behaviour to a run saved before the
    # option existed (None: its default does).
    saved_before: object = None

    def help_for(self, script):
        return self.helps.get(script, self.help)


def option(default, help, scripts, group, tags=(), **details):
    """A Config field that is also a command-line option: `default`, and the
    rest as Option's fields."""
    details["tags"] = frozenset(tags)
    return dataclasses.field(
        default=default,
        metadata={"option": Option(help=help, scripts=tuple(scripts), group=group, **details)},
    )


@dataclasses.dataclass(frozen=True)
class Config:
    """Every option, with its default. The command line overrides them."""

    # Data and outputs.
    image_dir: str | None = option(
        None, "Dataset folder: DIR/<class>/... or DIR/{train,val,test}/<class>/...", FOLDERS,
        "data and outputs", tags=("path", "worker_local", "common"),
        shown_default={"main": "the built-in demo", "evaluate": "the folder the model was trained on",
                       "predict": "none", "inspect": "none (required)"},
        helps={
            "evaluate": "A labelled folder: the one the model was trained on (its saved split is used) "
            "or any other with the same class folders",
            "predict": "A labelled folder to predict and compare with its labels (use --images for new, "
            "unlabelled images)",
            "inspect": "Dataset folder: DIR/<class>/... or DIR/{train,val,test}/<class>/...",
        },
    )
    image_size: int | str | None = option(
        option_types.AUTO, f"Images are resized to SIZE x SIZE (32 to {backbones.MAX_IMAGE_SIZE}); auto: the "
        "size pretrained weights were trained at (224 for most), or from scratch the training images' median "
        "size as a multiple of 32 (32-224), printed with the reason. A batch must fit in memory", FOLDERS,
        "data and outputs", tags=("common",), parse=option_types.or_word(option_types.integer, kind="an integer"),
        check=option_types.unless_auto(option_types.at_least_and_at_most(
            32, "the smallest input of any backbone", backbones.MAX_IMAGE_SIZE,
            "beyond it one image alone needs over 5 GiB of activations to train from scratch",
        )), metavar="SIZE|auto",
        defaults={"evaluate": None, "predict": None},
        helps={script: "Fixed by the model; give it only to check that it is this size"
               for script in USING_A_MODEL},
    )
    batch_size: int = option(
        32, "Images per batch; in training, per replica: with several GPUs or workers each step "
        "takes batch_size x replicas images", FOLDERS, "data and outputs", tags=("common",),
        parse=option_types.integer, check=option_types.at_least(1),
        helps={script: "Images per batch" for script in ("evaluate", "predict", "inspect")},
    )
    val_split: float = option(
        0.15, "Fraction of each class held out for validation when the folder has no val split",
        ("main", "inspect"), "split", tags=("common",), parse=option_types.number, check=option_types.fraction,
    )
    test_split: float = option(
        0.15, "Fraction of each class held out for testing when the folder has no test split",
        ("main", "inspect"), "split", tags=("common",), parse=option_types.number, check=option_types.fraction,
    )
    seed: int = option(
        42, "Seeds the split, the shuffle, augmentation and weight init", FOLDERS, "data and outputs",
        tags=("common",), parse=option_types.seed_number,
        helps={script: "Seeds the gallery's choice of images and test-time augmentation"
               for script in USING_A_MODEL},
    )
    labels_csv: str | None = option(
        None, "CSV with the columns filename,label[,split] (file names relative to IMAGE_DIR; a split "
        "column overrides the automatic split) instead of class folders", FOLDERS, "data and outputs",
        tags=("path", "worker_local"), shown_default="class folders",
        helps={script: "CSV with the columns filename,label (file names relative to IMAGE_DIR) for a folder "
               "the model never saw; on the training folder its saved split is used" for script in USING_A_MODEL},
    )
    path_column: str | None = option(
        None, "The labels CSV's column of file names, when it is not filename (or file, path, image), "
        "e.g. 'Image Index'", FOLDERS, "data and outputs", check=option_types.non_empty, metavar="NAME",
        shown_default="filename",
    )
    label_column: str | None = option(
        None, "The labels CSV's column of labels, when it is not label (or labels, class), e.g. "
        "'Finding Labels'; without one, columns of 1/0 (one per label, CheXpert style) are the labels",
        FOLDERS, "data and outputs", check=option_types.non_empty, metavar="NAME", shown_default="label",
    )
    label_delimiter: str = option(
        ";", "What separates several labels in one label cell of a labels CSV ('|' for NIH ChestX-ray14, "
        "' ' for Planet's tags, '\\t' for a tab): a cell with several makes the run multi-label",
        FOLDERS, "data and outputs", check=option_types.one_character_or_more, metavar="TEXT",
    )
    multi_label: int | None = option(
        None, "1: several labels per image (sigmoid outputs, a threshold per label) even when every row holds "
        "one; 0: one class per image, refusing a labels CSV with several", ("main", "inspect"),
        "data and outputs", parse=lambda name: int, choices=(0, 1), shown_default="from the labels CSV",
    )
    no_label: str | None = option(
        None, "The label value that means none of the labels (an all-negative image), e.g. 'No Finding'; "
        "an empty label cell means the same in a multi-label CSV", FOLDERS, "data and outputs",
        check=option_types.non_empty, metavar="LABEL", shown_default="an empty cell",
    )
    classes: tuple | None = option(
        None, "Comma-separated class names: only these classes, in this order (class index 0, 1, ...)",
        FOLDERS, "data and outputs", parse=option_types.name_list, shown_default="every class, sorted",
        helps={script: "Comma-separated class names: only the images of these classes" for script in USING_A_MODEL},
    )
    reader: tuple | None = option(
        None, "Read files with extension EXT with FUNCTION(path) -> uint8 HxWxC numpy array from "
        "FILE.py (or an importable MODULE); repeatable, e.g. --reader npy=my_readers.py:read_npy",
        (*FOLDERS, "app"), "data and outputs", action="append", metavar="EXT=FILE.py:FUNCTION",
        tags=("worker_local",), shown_default="built-in decoders only",
    )
    artifacts_dir: str = option(
        "model_artifacts", "Where run folders go (runs/<run>/) and the last finished run is published",
        (*FOLDERS, "app"), "data and outputs", check=option_types.output_folder,
        tags=("run_locator", "output", "common"),
        helps={
            **{script: "Where the published model is read from (ARTIFACTS_DIR/best_model.keras) when --model "
               "is not given" for script in USING_A_MODEL},
            "inspect": "The audit's cache goes to ARTIFACTS_DIR/audit_cache/",
            "app": "Where the runs are (runs/<run>/): the published one is served, the drop-down lists every "
            "finished one",
        },
    )
    results_dir: str = option(
        "results", "Figures and reports go to RESULTS_DIR/<category>/<timestamp>/", FOLDERS,
        "data and outputs", check=option_types.writable_folder, tags=("path", "output", "common"),
    )
    model: str | None = option(
        None, "The model file; its class_index.json, run_config.json and split_manifest.csv are read "
        "from beside it (a model from another framework: an .onnx file with its sidecar NAME.json)",
        (*USING_A_MODEL, "app"), "data and outputs", tags=("common",),
        shown_default="ARTIFACTS_DIR/best_model.keras, the last run that finished training",
        helps={"app": "The model to serve: a .keras file or an export of one (.onnx, .tflite, a "
               "SavedModel folder), with its class_index.json, run_config.json and split_manifest.csv "
               "beside it, as predict.py --model reads them"},
    )
    verbose: int = option(
        0, "1: also show TensorFlow's own start-up lines (hidden by default: they are not errors)", SCRIPTS,
        "data and outputs", parse=lambda name: int, choices=(0, 1), tags=("display",),
    )
    # Augmentation (training batches only). Rotation in degrees, the others
    # as fractions: zoom 0.1 = scale in [0.9, 1.1], translation 0.1 = up to
    # 10% of the image side, contrast 0.2 = factor in [0.8, 1.2].
    cache: str = option(
        "auto", "memory: decode and resize every training/validation image once and keep the uint8 "
        "result in RAM (augmentation still runs every epoch); none: stream from disk every epoch; "
        "auto: memory when it fits the RAM budget printed at start", TRAINING,
        "data and outputs", choices=("auto", "memory", "none"),
    )
    augment: int = option(
        1, "1: random flip, rotation, zoom, translation and contrast on training batches", TRAINING,
        "augmentation (training batches only)", parse=lambda name: int, choices=(0, 1), tags=("common",),
    )
    flip: str = option(
        "horizontal", "Random flips", TRAINING, "augmentation (training batches only)",
        choices=("horizontal", "vertical", "both", "none"),
    )
    rotation: float = option(
        15.0, "Maximum rotation in degrees, either way", TRAINING, "augmentation (training batches only)",
        parse=option_types.number, check=option_types.non_negative,
    )
    zoom: float = option(
        0.1, "Zoom range: scale in [1-Z, 1+Z]", TRAINING, "augmentation (training batches only)",
        parse=option_types.number, check=option_types.below_one,
    )
    translation: float = option(
        0.1, "Maximum shift as a fraction of the side", TRAINING, "augmentation (training batches only)",
        parse=option_types.number, check=option_types.below_one,
    )
    contrast: float = option(
        0.2, "Contrast factor in [1-C, 1+C]", TRAINING, "augmentation (training batches only)",
        parse=option_types.number, check=option_types.below_one,
    )
    brightness: tuple | None = option(
        None, "Brightness factor range MIN,MAX, e.g. 0.8,1.2 (pixels times a factor drawn in it)", TRAINING,
        "augmentation (training batches only)", parse=option_types.number_range, metavar="MIN,MAX",
        shown_default="off",
    )
    shear: float = option(
        0.0, "Maximum shear angle in degrees, either way", TRAINING, "augmentation (training batches only)",
        parse=option_types.number, check=option_types.between(0, 45),
    )
    fill_mode: str = option(
        "reflect", "How pixels moved in from outside the image are filled (constant: black)", TRAINING,
        "augmentation (training batches only)", choices=("reflect", "nearest", "wrap", "constant"),
    )
    augment_policy: str = option(
        "basic", "basic: the one-pass warp of --flip, --rotation, --zoom, --translation, --contrast, --brightness "
        "and --shear; randaugment (keras.layers.RandAugment's 11 operations, 2 per image at magnitude 0.5) or "
        "augmix (keras.layers.AugMix's operations in 3 chains, mixed back with the image): the --flip flips, "
        "then the policy instead of the warp (its other options then stay at their defaults); with --augment 1 "
        "only", TRAINING, "augmentation (training batches only)", choices=("basic", "randaugment", "augmix"),
    )
    erasing: float = option(
        0.0, "Random erasing (keras.layers.RandomErasing): the probability that a training image gets a "
        "rectangle of 1/50 to 1/3 of it filled with noise, after the policy; 0: off; with --augment 1 only", TRAINING,
        "augmentation (training batches only)", parse=option_types.number, check=option_types.between(0, 1),
        metavar="P",
    )
    mixup: float = option(
        0.0, "MixUp (keras.layers.MixUp): blend pairs of training images and their labels, weights from "
        "Beta(A, A); 0: off", TRAINING, "augmentation (training batches only)",
        parse=option_types.number, check=option_types.between(0, 1), metavar="A",
    )
    cutmix: float = option(
        0.0, "CutMix (keras.layers.CutMix): paste a patch of another training image, labels mixed by "
        "area, Beta(A, A); 0: off (with --mixup too, each batch gets one of them)", TRAINING,
        "augmentation (training batches only)", parse=option_types.number, check=option_types.between(0, 1),
        metavar="A",
    )
    # Model.
    backbone: str = option(
        "mobilenet_v2", "Feature extractor from keras.applications, one of "
        f"{', '.join(backbones.BACKBONES)}; each takes raw 0-255 images, its own preprocessing is "
        "inside the saved model. Several, separated by commas: one run each on the same split, then "
        "a model comparison", TRAINING, "model", parse=option_types.backbone_text, metavar="NAME[,NAME...]",
        tags=("common",),
    )
    alpha: float = option(
        1.0, f"Width multiplier of the backbone, for {', '.join(backbones.ALPHA_BACKBONES)} only",
        TRAINING, "model", parse=option_types.number, check=option_types.positive,
    )
    weights: str = option(
        "imagenet", "imagenet, none (train from scratch) or PATH to a local weights file for the "
        "backbone", TRAINING, "model", check=option_types.weights_source, tags=("path", "worker_local", "common"),
    )
    dropout: float = option(
        0.2, "Dropout before the classifier", TRAINING, "model",
        parse=option_types.number, check=option_types.dropout_rate,
    )
    # Training.
    epochs: int = option(
        10, "Epochs with the backbone frozen (or all epochs from scratch)", TRAINING, "training",
        parse=option_types.integer, check=option_types.at_least(1), tags=("common",),
    )
    learning_rate: float | str = option(
        1e-3, "Adam learning rate; auto: found by a learning-rate range test before training (fastai's "
        "lr_find: ~100 steps, the rate growing from 1e-7 to 10, the 'valley' suggestion; its curve in "
        "RESULTS_DIR/lr_finder/<run>/)", TRAINING, "training", parse=option_types.or_word(option_types.number),
        check=option_types.unless_auto(option_types.positive), aliases=("lr",), metavar="RATE|auto", tags=("common",),
    )
    lr_find: bool = option(
        False, "Only run the learning-rate range test (as --learning_rate auto does) on the training images: "
        "draw its curve, print the suggested rate and the command that uses it, and stop (nothing is "
        "trained or published)", TRAINING, "training", action="store_true", shown_default="off",
    )
    fine_tune_epochs: int = option(
        10, "Epochs with the last layers unfrozen at a 10x lower learning rate; pretrained weights "
        "only, 0 skips", TRAINING, "training",
        parse=option_types.integer, check=option_types.non_negative, tags=("common",),
    )
    fine_tune_layers: int = option(
        30, "How many of the backbone's last layers to unfreeze", TRAINING, "training",
        parse=option_types.integer, check=option_types.at_least(1),
    )
    patience: int = option(
        5, "Early stopping patience in epochs, on val_loss", TRAINING, "training",
        parse=option_types.integer, check=option_types.at_least(1),
    )
    balance: str = option(
        "auto", "Imbalanced classes: weights (balanced class weights in the loss), oversample (every class "
        "drawn equally often, minority images repeated, each time freshly augmented), focal (focal loss, "
        "per-class alpha from the class frequencies), none; auto: weights when the largest class has over "
        "1.5x the images of the smallest", TRAINING, "training",
        choices=("auto", "none", "weights", "oversample", "focal"),
    )
    class_weights: str | None = option(
        None, "The old spelling of --balance auto|none (use one or the other)", TRAINING, "training",
        choices=("auto", "none"), shown_default="auto",
    )
    label_smoothing: float = option(
        0.0, "Label smoothing of the training loss: targets 1-S+S/K and S/K (0: off)", TRAINING, "training",
        parse=option_types.number, check=option_types.between(0, 0.3),
    )
    schedule: str = option(
        "plateau", "The learning rate: plateau (cut 5x when val_loss stops improving, Keras' ReduceLROnPlateau); "
        "cosine (Keras' CosineDecay to 0 over each phase, after --warmup_epochs of linear warm-up)", TRAINING,
        "training", choices=("plateau", "cosine"),
    )
    warmup_epochs: int = option(
        0, "With --schedule cosine: epochs of linear warm-up from 0 to the learning rate at the start of each "
        "phase", TRAINING, "training", parse=option_types.integer, check=option_types.non_negative, metavar="N",
    )
    weight_decay: float = option(
        0.0, "Decoupled weight decay (Keras' AdamW) on every weight, e.g. 0.05; 0: plain Adam", TRAINING,
        "training", parse=option_types.number, check=option_types.between(0, 1), metavar="W",
    )
    ema: int = option(
        0, "1: keep an exponential moving average of the weights (Keras' use_ema, over about the last 2 epochs) "
        "and validate, checkpoint and publish the averaged weights; one machine only", TRAINING, "training",
        parse=lambda name: int, choices=(0, 1),
    )
    time: float | None = option(
        None, "Training budget in minutes: training stops at the first epoch end after it is spent (no "
        "fine-tuning starts after it) and the best model so far is published; --epochs stays the most. "
        "--resume spends what is left of it; with --folds each fold gets all of it; one machine only", TRAINING, "training",
        parse=option_types.number, check=option_types.positive, metavar="MINUTES", shown_default="off",
    )
    tensorboard: int = option(
        0, "1: write TensorBoard logs to RESULTS_DIR/tensorboard/<run>/", TRAINING,
        "calibration and tracking", parse=lambda name: int, choices=(0, 1),
    )
    worker_wait: float = option(
        600, "With several workers (TF_CONFIG): seconds to wait for all of them to start before stopping, "
        "naming the missing ones", TRAINING, "training", parse=option_types.number, check=option_types.positive,
        tags=("display",),
    )
    resume: str | None = option(
        None, "Continue an interrupted run (the most recent one, or the run id RUN under "
        "ARTIFACTS_DIR/runs) from its last completed epoch, with its own saved options", TRAINING,
        "training", nargs="?", const="last", metavar="RUN", tags=("run_locator", "common"),
        shown_default="off",
    )
    publish: str = option(
        "auto", "Whether this run becomes the published model evaluate.py, predict.py and app.py use: auto, unless "
        "it scores worse than the published one on the same test images (it is kept, and the summary says how to "
        "publish it anyway); always; never. --publish RUN publishes the finished run RUN again and trains nothing",
        TRAINING, "training", metavar="auto|always|never|RUN", tags=("run_locator", "common"),
    )
    folds: int | None = option(
        None, "K-fold cross-validation: K stratified folds of the non-test images (seeded by --seed), one "
        "run per fold trained on the other K-1 and checked on its own; summary in RESULTS_DIR/"
        "cross_validation/<id>/, with the out-of-fold predictions and suspected label errors", TRAINING,
        "training", parse=option_types.integer, check=option_types.at_least(2, "one fold to check, the others to train"), metavar="K",
        shown_default="off",
    )
    group_by: str | None = option(
        None, "Regular expression whose first group, searched in each image's path relative to IMAGE_DIR "
        "(brick/P0042_slice3.png; in the file names when it matches no path), is its group (patient, "
        "specimen): a group is never split between train, val, test or folds, e.g. '(P[0-9]+)_' for "
        "P0042_slice3.png (a labels CSV's group column does the same)", ("main", "inspect"),
        "split", check=lambda name, value: check_pattern(name, value), metavar="REGEX",
        shown_default="identical files kept together",
    )
    near_duplicate_distance: int = option(
        near_duplicates.DEFAULT_DISTANCE, "How many of the 64 bits of the perceptual hash two near-copies "
        "may differ by (and a pair joins only when it is also much closer than the images around it; "
        "see docs/data.md)", ("main", "inspect"), "split", parse=option_types.integer,
        check=option_types.between(0, 32), metavar="BITS",
    )
    near_duplicates: str = option(
        "group", "Near-copies (the same picture re-saved, resized, re-cropped a few pixels off or "
        "brightened, under any name; found by perceptual hash in the audit): group keeps each group of "
        "them in one split and one fold, like --group_by; warn only names the groups that straddle "
        "splits; off does neither", ("main", "inspect"), "split", choices=near_duplicates.MODES,
        saved_before="off",  # a run interrupted before near-copies were found resumes on its own split
    )
    cross_validation: str | None = option(
        None, "Re-score a finished cross-validation (the last one, or the id ID under "
        "ARTIFACTS_DIR/cross_validation) and write its summary again", ("evaluate",), "evaluation",
        nargs="?", const="last", metavar="ID", tags=("run_locator",), shown_default="off",
    )
    deterministic: int = option(
        1, "1: the same seed gives the same model and metrics on the same machine and software "
        "(TensorFlow's deterministic kernels); 0: allow faster non-deterministic ones", TRAINING, "training",
        parse=lambda name: int, choices=(0, 1),
    )
    precision: str = option(
        "auto", "auto: mixed_float16 on a GPU, float32 on the CPU", TRAINING, "training",
        choices=("auto", "float32", "mixed"),
    )
    jit: str = option(
        "auto", "XLA compilation; auto: on with a GPU, off on the CPU", TRAINING, "training",
        choices=("auto", "0", "1"),
    )
    # Calibration and tracking.
    calibrate: int = option(
        1, "1: after training, fit a temperature on the validation split so the model's confidences "
        "match its accuracy; it is saved inside the model and never changes the predicted class",
        TRAINING, "calibration and tracking", parse=lambda name: int, choices=(0, 1),
    )
    mlflow: str | None = option(
        None, "Log the run (options, per-epoch and final metrics, figures, model) to MLflow: a local "
        "folder such as ./mlruns, or a tracking server http://HOST:PORT", TRAINING,
        "calibration and tracking", metavar="URI", shown_default="not logged", check=option_types.non_empty,
    )
    # Evaluation and prediction.
    split: str = option(
        "test", "On the folder the model was trained on: which split of its split_manifest.csv to use. "
        "Any other folder: all its images", USING_A_MODEL, "evaluation",
        choices=("train", "val", "test", "all"),
    )
    threshold: float | None = option(
        None, "Multi-label: one probability threshold for every label (0 to 1) instead of each label's own, "
        "chosen on the validation split to maximize its F1 and saved beside the model",
        ("main", "evaluate", "predict", "app"), "evaluation", parse=option_types.number,
        check=option_types.between(0, 1), shown_default="per label, from validation",
    )
    tta: int = option(
        1, "Test-time augmentation: average the probabilities of each image and N-1 flipped/shifted "
        f"versions made by the training augmentation (1 = off, at most {MAX_TTA})", USING_A_MODEL,
        "evaluation", parse=option_types.integer, check=option_types.between(1, MAX_TTA),
    )
    compare: tuple | None = option(
        None, "Compare trained runs on the same test images (those in every run's test split) instead "
        "of evaluating one model: every finished run trained on --image_dir, or the RUN ids given; "
        "writes RESULTS_DIR/model_comparison/<stamp>/", ("evaluate",), "evaluation", nargs="*",
        metavar="RUN", shown_default="off",
    )
    external: tuple | None = option(
        None, "With --compare: also score this model from another framework (an .onnx file with its "
        "sidecar PATH.json: classes, preprocessing, output) on the runs' common test images; repeatable",
        ("evaluate",), "evaluation", action="append", metavar="PATH.onnx", check=option_types.onnx_files,
        shown_default="none",
    )
    images: tuple | None = option(
        None, "Image files and/or folders (searched with their subfolders) to classify; no labels needed",
        ("predict",), "prediction", nargs="+", metavar="PATH", tags=("common",), shown_default="none",
    )
    top_k: int = option(
        3, "How many best classes predictions.csv lists per image", ("predict", "app"), "prediction",
        parse=option_types.integer, check=option_types.at_least(1),
        helps={"app": "How many best classes each answer shows (and the table and CSV list)"},
    )
    gradcam: int = option(
        0, "1: also draw Grad-CAM heatmaps of the gallery's images", ("predict",), "prediction",
        parse=lambda name: int, choices=(0, 1),
    )
    # Figures.
    rows: int = option(
        2, "Rows of the prediction gallery", FIGURES, "figures", parse=option_types.integer,
        check=option_types.between(1, MAX_GALLERY_SIDE), tags=("display", "common"),
    )
    cols: int = option(
        5, "Columns of the prediction gallery", FIGURES, "figures", parse=option_types.integer,
        check=option_types.between(1, MAX_GALLERY_SIDE), tags=("display", "common"),
    )
    gallery: str = option(
        "mixed", "Which images the gallery shows: mixed (mistakes first, then correct ones), "
        "misclassified only, or random", FIGURES, "figures", choices=("mixed", "misclassified", "random"),
        tags=("display",),
    )
    show: str = option(
        "auto", "Open the saved figures one after another (close one to see the next). auto: only when "
        "a screen is present; headless runs never block", FIGURES, "figures", choices=("auto", "1", "0"),
        tags=("display", "common"),
    )
    grid_per_class: int = option(
        5, "Images per class in the class grid", TRAINING, "figures", parse=option_types.integer,
        check=option_types.between(1, MAX_GALLERY_SIDE), tags=("display",),
    )
    # Exports (see export.py): formats and LiteRT quantization.
    export: tuple | None = option(
        None, "Also export the model into its folder and check each export against it on the evaluated "
        f"images (export_report.json): any of {','.join(EXPORT_FORMATS)}", ("main", "evaluate"), "export",
        parse=option_types.choice_list(EXPORT_FORMATS), metavar="FORMATS", shown_default="none",
    )
    quantize: str | None = option(
        None, "Quantize the LiteRT export (int8: calibrated on training images); reports the accuracy "
        "change instead of judging parity", ("main", "evaluate"), "export", choices=("float16", "int8"),
        shown_default="none, float32",
    )
    # The inspection command.
    json: bool = option(
        False, "Print exactly one JSON object to stdout: layout, classes, splits, skipped, ignored, "
        "warnings", ("inspect",), "inspection", action="store_true", shown_default="off",
    )
    # Serving the page (app.py).
    run: str | None = option(
        None, "Serve this run of ARTIFACTS_DIR/runs (its best_model.keras) instead of the published one",
        ("app",), "serving", metavar="RUN_ID", shown_default="the published run",
    )
    host: str = option(
        "127.0.0.1", "Address the page listens on: 127.0.0.1 is this machine only; 0.0.0.0 lets anyone "
        "who can reach this machine use the model (there is no login; a warning is printed)",
        ("app",), "serving",
    )
    port: int = option(
        7860, "Port the page listens on", ("app",), "serving",
        parse=option_types.integer, check=option_types.between(1, option_types.MAX_PORT),
    )
    max_upload_mb: float = option(
        50.0, "Largest file the page accepts, in MB (larger uploads are refused before they are read)",
        ("app",), "serving", parse=option_types.number, check=option_types.positive,
    )
    # Not an option: set by main.py when no --image_dir is given.
    demo: bool = False


DEFAULTS = Config()


def options_of(script):
    """{name: Option} of the options `script` takes, in Config's order."""
    return {
        field.name: field.metadata["option"]
        for field in dataclasses.fields(Config)
        if "option" in field.metadata and script in field.metadata["option"].scripts
    }


def names_tagged(tag, script="main"):
    """The names of `script`'s options with `tag`."""
    return tuple(name for name, spec in options_of(script).items() if tag in spec.tags)


def default_of(name, script):
    spec = options_of(script)[name]
    return spec.defaults.get(script, getattr(DEFAULTS, name))


def shown_default(name, script):
    """The default as --help and the tables say it."""
    spec = options_of(script)[name]
    text = spec.shown_default.get(script) if isinstance(spec.shown_default, dict) else spec.shown_default
    if text is not None and script not in spec.defaults:
        return text
    value = default_of(name, script)
    if value is None:
        return "fixed by the model" if name == "image_size" else "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- parsers


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors (unknown option, bad choice, bad number)
    raised as a UserError: one line and exit code 2 through run_cli, like
    every other mistake, instead of the usage block."""

    def __init__(self, *args, **kwargs):
        # Options are spelled in full (or by an alias the table declares):
        # `--learn` never silently means --learning_rate, and main.py
        # --resume can tell which were given.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self.spelled_out(args), namespace)

    def spelled_out(self, args):
        """`args` with --image-dir written --image_dir: the dash spellings
        people type (as in most tools) name the same options."""
        args = sys.argv[1:] if args is None else list(args)
        known = {option for action in self._actions for option in action.option_strings}
        spelled = []
        for token in args:
            name, equals, value = token.partition("=")
            underscored = "--" + name[2:].replace("-", "_")
            if token.startswith("--") and name not in known and underscored in known:
                token = underscored + equals + value
            spelled.append(token)
        return spelled

    def error(self, message):
        unknown = re.findall(r"(--[\w-]+)", message) if "unrecognized arguments" in message else []
        known = [option for action in self._actions for option in action.option_strings if option.startswith("--")]
        hints = []
        for name in unknown:
            guesses = option_guesses(name, known)
            if guesses:
                hints.append(f"did you mean {' or '.join(guesses)}?")
        hint = "; ".join(hints)
        raise UserError(f"{message}{' (' + hint + ')' if hint else ''} (see --help)")


def option_guesses(typed, known, most=3):
    """The options of `known` (--names) that the unknown option `typed` most
    likely meant, best first, at most `most`; () when none is close. In
    order of trust: options that `typed` begins (--learn: --learning_rate),
    options whose words' initials it spells (--lr: --learning_rate, --fine_epochs:
    --fine_tune_epochs), then close spellings (--learning_rat). A guess is
    only made from one of these, never from a far spelling (--lr is not
    --gallery)."""
    word = typed.split("=")[0][2:].lower().replace("-", "_")
    names = {option[2:]: option for option in known}
    begun = [option for name, option in names.items() if name.startswith(word)]
    if word and begun:
        return tuple(sorted(begun, key=len)[:most])
    initials = [option for name, option in names.items() if _initials_match(word, name.split("_"))]
    if initials:
        return tuple(initials[:most])
    close = difflib.get_close_matches(word, list(names), n=most, cutoff=0.75)
    return tuple(names[name] for name in close)


def _initials_match(word, parts):
    """Whether `word` is the words `parts` abbreviated: each part of `word`
    (split at _) the start of one part in turn, or without _ each letter the
    first of one part ('lr' for learning_rate, 'fine_epochs' for
    fine_tune_epochs)."""
    pieces = word.split("_") if "_" in word else list(word)
    if len(pieces) < 2 or len(pieces) > len(parts):
        return False
    rest = iter(parts)
    return all(any(part.startswith(piece) for part in rest) for piece in pieces)


def build_parser(script, description, examples=""):
    """The argparse parser of `script` (one of SCRIPTS): every option of the table it takes, grouped, with its
    script's default and help. --help leads with a one-line usage, the description and `examples` (lines of
    commands), which a newcomer reads first; the groups of options follow."""
    parser = ArgumentParser(
        usage="%(prog)s [--option VALUE ...]   (every option below, by group)",
        description=f"{description}\n\nexamples:\n{examples}" if examples else description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    specs = options_of(script)
    groups = {}
    for group in GROUPS:
        if any(spec.group == group for spec in specs.values()):
            groups[group] = parser.add_argument_group(group)
    for name, spec in specs.items():
        arguments = {"default": default_of(name, script), "dest": name}
        arguments["help"] = f"{spec.help_for(script)} (default: {shown_default(name, script)})".replace("%", "%%")
        if spec.action:
            arguments["action"] = spec.action
        if spec.parse:
            arguments["type"] = spec.parse(name)
        for key in ("choices", "nargs", "const", "metavar"):
            if getattr(spec, key) is not None:
                arguments[key] = getattr(spec, key)
        groups[spec.group].add_argument(f"--{name}", *(f"--{alias}" for alias in spec.aliases), **arguments)
    return parser


def given_options(parser, argv):
    """The options given on the command line `argv` (parsed by a script's
    `parser`), with their parsed values (defaults left out). Options are
    spelled in full (ArgumentParser allows no abbreviations), so the names
    come from the tokens."""
    values = vars(parser.parse_args(argv))
    # An alias (--lr) names its option (learning_rate).
    names_of = {string: action.dest for action in parser._actions for string in action.option_strings}
    names = {names_of.get(token.partition("=")[0]) for token in parser.spelled_out(argv) if token.startswith("--")}
    return {name: values[name] for name in names if name in values}


# ---------------------------------------------------------------- checks


def check_backbones(options):
    """--backbone (one name or several) with --image_size and --alpha
    (--image_size auto is never below a backbone's smallest input)."""
    size = None if options.image_size == option_types.AUTO else options.image_size
    backbones.validate_backbone_list(options.backbone, size, options.alpha)


def check_quantize(options):
    if options.quantize and "litert" not in (options.export or ()):
        raise UserError(
            "quantize applies to the LiteRT export: add litert to --export. "
            f"Received: quantize={options.quantize}, export={','.join(options.export or ()) or 'none'}"
        )


def check_external(options):
    if options.external and options.compare is None:
        raise UserError(
            "--external adds a model from another framework to a comparison: add --compare [RUN ...] "
            f"(or evaluate it alone with --model). Received: external={shown(options.external)}"
        )


def check_splits_leave_training(options):
    if options.val_split + options.test_split >= 1:
        raise UserError(
            "val_split + test_split must be below 1 to leave images for training. "
            f"Received: val_split={options.val_split}, test_split={options.test_split}"
        )


def check_image_dir(options):
    """--image_dir names an existing folder (the demo's is written later),
    checked before TensorFlow starts and before a run is announced."""
    path = options.image_dir
    if path is None or options.demo:
        return
    if not os.path.exists(path):
        raise UserError(f"image_dir does not exist. Received: image_dir={path}")
    if not os.path.isdir(path):
        raise UserError(f"image_dir is a file, not a folder of images. Received: image_dir={path}")


def check_balance(options):
    """--class_weights is the old spelling of --balance auto|none: not both."""
    if options.class_weights is not None and options.balance != "auto":
        raise UserError(
            "--class_weights is the old spelling of --balance auto|none: choose one. "
            f"Received: balance={options.balance}, class_weights={options.class_weights}"
        )


# The basic policy's own options: a policy replaces their warp (see --augment_policy).
WARP_OPTIONS = ("rotation", "zoom", "translation", "contrast", "brightness", "shear", "fill_mode")


def check_augment_policy(options):
    """--augment_policy and --erasing act on augmented batches (--augment 1),
    and a policy other than basic replaces the warp of WARP_OPTIONS, so
    those must stay at their defaults with it."""
    if not options.augment:
        given = [f"--{name} {getattr(options, name)}" for name in ("augment_policy", "erasing")
                 if getattr(options, name) != getattr(DEFAULTS, name)]
        if given:
            raise UserError(f"{' and '.join(given)} {'act' if len(given) > 1 else 'acts'} on augmented training "
                            "batches, which --augment 0 turns off: leave {'them' if len(given) > 1 else 'it'} out or use --augment 1. Received: augment=0")
    if options.augment_policy != "basic":
        changed = [name for name in WARP_OPTIONS if getattr(options, name) != getattr(DEFAULTS, name)]
        if changed:
            raise UserError(
                f"--{changed[0]} sets the basic policy's warp, which --augment_policy {options.augment_policy} "
                f"replaces (only --flip is kept): leave it out or use --augment_policy basic. Received: "
                f"{changed[0]}={shown(getattr(options, changed[0]))}, augment_policy={options.augment_policy}"
            )


def check_training_memory(options):
    """A batch of --batch_size images of --image_size px must fit in the
    memory this process can still take, for every backbone of --backbone
    (backbones.batch_memory_refusal), so a run too big for the machine
    stops in one line before a run folder exists instead of in an
    out-of-memory traceback or a kill. A resumed run was checked when it
    started (its options are its own)."""
    if options.resume:
        return
    pretrained = options.weights != "none"
    for name in backbones.backbone_names(options.backbone):
        size = options.image_size
        if size == option_types.AUTO:
            if not pretrained:
                continue  # from the training images: main.py checks it once they are scanned
            size, _ = backbones.automatic_image_size(name, pretrained, None)
        refusal = backbones.batch_memory_refusal(
            (name,), options.alpha, size, options.batch_size, from_scratch=not pretrained
        )
        if refusal:
            raise UserError(refusal)


def check_lr_find(options):
    """--lr_find looks at one new run's training images and stops: not
    with --resume, --folds or several backbones."""
    if not options.lr_find:
        return
    several = len(backbones.backbone_names(options.backbone)) > 1
    for given, value, why in (
        (options.resume, "resume", "a resumed run keeps its own learning rate"),
        (options.folds, "folds", "with --learning_rate auto each fold run finds its own rate"),
        (several, "backbone", "each backbone has its own curve: give one --backbone"),
    ):
        if given:
            raise UserError(f"--lr_find tests one new run's training images and stops; {why}. "
                            f"Received: lr_find=True, {value}={shown(getattr(options, value))}")


def check_schedule(options):
    """--warmup_epochs is the cosine schedule's, and must leave it epochs to decay over."""
    if options.warmup_epochs and options.schedule != "cosine":
        raise UserError(
            "--warmup_epochs warms up the cosine schedule: add --schedule cosine (or leave it out). "
            f"Received: warmup_epochs={options.warmup_epochs}, schedule={options.schedule}"
        )
    if options.warmup_epochs >= options.epochs:
        raise UserError(
            "--warmup_epochs must be below --epochs, to leave epochs for the cosine to decay over. "
            f"Received: warmup_epochs={options.warmup_epochs}, epochs={options.epochs}"
        )


# Checks of several options together: (the scripts, the check).
RULES = (
    (SCRIPTS, check_image_dir),
    (("main", "inspect"), check_splits_leave_training),
    (("main",), check_backbones),
    (("main",), check_training_memory),
    (("main",), check_balance),
    (("main",), check_lr_find),
    (("main",), check_augment_policy),
    (("main",), check_schedule),
    (("main", "evaluate"), check_quantize),
    (("evaluate",), check_external),
)


def validate(options, script):
    """Checks `script`'s options in a Config, each by its own check, then
    the RULES of several together. Raises UserError on the first bad one."""
    for name, spec in options_of(script).items():
        value = getattr(options, name)
        if spec.check is not None and value is not None:
            spec.check(name, value)
    for scripts, rule in RULES:
        if script in scripts:
            rule(options)
    return options


def config_from_args(args):
    """A frozen Config from parsed arguments (options a script lacks keep
    their defaults)."""
    return config_from_dict(vars(args))


def check_pattern(name, value):
    """--group_by must be a regular expression."""
    try:
        re.compile(value)
    except re.error as error:
        raise UserError(f"{name} is not a regular expression ({error}). Received: {name}={value}") from None


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


def saved_options(options):
    """The options a training run saves (main.py's, and `demo`), with the
    values this run used."""
    names = set(options_of("main")) | {"demo"}
    return {name: value for name, value in dataclasses.asdict(options).items() if name in names}


def same_value(name, given, saved):
    """Whether two values of option `name` are the same (paths as real paths)."""
    if name in names_tagged("path") and given and saved:
        return os.path.realpath(str(given)) == os.path.realpath(str(saved))
    return given == saved


def first_different(given, saved, ignored_tags):
    """(name, given value, saved value) of the first option given on the
    command line (`given`, from given_options) with another value than in
    `saved` (a run's saved options), leaving out options with one of
    `ignored_tags` and names not saved; None when they all agree."""
    ignored = {name for tag in ignored_tags for name in names_tagged(tag)}
    saved_config, given_config = config_from_dict(saved), config_from_dict(given)
    for name in given:
        if name in ignored or name not in saved:
            continue
        ours, theirs = getattr(given_config, name), getattr(saved_config, name)
        if not same_value(name, ours, theirs):
            return name, ours, theirs
    return None


def continued_options(options, given, saved, ignored_tags, kept, refusal):
    """The options of a run that goes on from `saved` (the options it was
    started with, as saved): a resumed run's, or another worker's (the
    chief's). Those, with this command line's values (`options`) of the
    names in `kept`. An option given on the command line (`given`) with
    another value than saved, and none of `ignored_tags`, is refused:
    UserError(refusal(name, value given, value saved), values as typed)."""
    different = first_different(given, saved, ignored_tags)
    if different:
        name, ours, theirs = different
        raise UserError(refusal(name, shown(ours), shown(theirs)))
    older = {field.name: field.metadata["option"].saved_before for field in dataclasses.fields(Config)
             if "option" in field.metadata and field.metadata["option"].saved_before is not None}
    return dataclasses.replace(config_from_dict({**older, **saved}), **{name: getattr(options, name) for name in kept})


def picked(options, value_class, **others):
    """A `value_class` (a dataclass whose fields are option names) holding
    those options' values, and `others` for its other fields: how a script
    hands a lower file what it needs of the options, and only that."""
    names = [field.name for field in dataclasses.fields(value_class) if field.name not in others]
    return value_class(**{name: getattr(options, name) for name in names}, **others)


def shown(value):
    """An option's value as the user would type it: a,b for lists."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return value


# ---------------------------------------------------------------- readers


def load_readers(specs):
    """The custom readers of `--reader` specs ({".ext": function}, see
    image_io.load_readers); a spec that cannot be loaded is a UserError."""
    import image_io

    try:
        return image_io.load_readers(specs)
    except image_io.ReaderError as error:
        raise UserError(str(error)) from None


# ---------------------------------------------------------------- the tables in the docs


def options_markdown(script, tag=None):
    """The markdown table of `script`'s options (only those with `tag`,
    when given): option, default, what. README.md and docs/options.md hold
    these tables between markers; tests/test_config.py checks they match."""
    lines = ["| option | default | what |", "|---|---|---|"]
    for name, spec in options_of(script).items():
        if tag and tag not in spec.tags:
            continue
        choices = f" ({'/'.join(str(choice) for choice in spec.choices)})" if spec.choices else ""
        what = spec.help_for(script).replace("|", "\\|")
        aliases = "".join(f" (`--{alias}`)" for alias in spec.aliases)
        lines.append(f"| `--{name}`{aliases}{choices} | {shown_default(name, script)} | {what} |")
    return "\n".join(lines)


OPTION_TABLE = re.compile(r"(<!-- options:(\w+)(?::(\w+))? -->\n).*?(<!-- /options -->)", re.S)


def fill_option_tables(text):
    """`text` (a markdown page) with every block between
    `<!-- options:SCRIPT[:TAG] -->` and `<!-- /options -->` replaced by
    options_markdown(SCRIPT, TAG): the tables of README.md and
    docs/options.md come from the one option table."""
    return OPTION_TABLE.sub(
        lambda found: f"{found.group(1)}{options_markdown(found.group(2), found.group(3))}\n{found.group(4)}", text
    )


def refresh_option_tables(paths):
    """Rewrites the option tables of the markdown files `paths` (README.md,
    docs/options.md) from the table (fill_option_tables)."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        artifacts.write_text(path, fill_option_tables(text))
