"""How is one option's text read, and its value checked?

The parsers (`integer`, `number`, `name_list`, ...) are functions of the
option's name that return the text parser argparse calls; the checks
(`at_least`, `between`, `fraction`, ..., `output_folder`) are
check(name, value). Both raise errors.UserError naming the option and the
value received. config.py's table names them for each option.
"""

import math
import os

import artifacts
from errors import UserError

# NumPy and TensorFlow seeds are unsigned 32-bit integers.
MAX_SEED = 2**32
# The value of an option chosen from the data (--image_size auto).
AUTO = "auto"
# A port number: 1-65535 (0 would let the system pick one nobody was told).
MAX_PORT = 65535


# ---------------------------------------------------------------- parsing option text
# These raise UserError, not argparse.ArgumentTypeError: argparse turns the
# latter into its usage text plus an error line, while a UserError passes
# through parse_args to errors.run_cli, which prints one line.


def integer(name):
    def parse(text):
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{name} must be an integer. Received: {name}={text}") from None

    return parse


def number(name):
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


def or_word(parser, word=None, kind="a number"):
    """A parser factory taking what `parser` (integer, number) takes or the
    word `word` (AUTO: --image_size auto, --learning_rate auto: chosen
    later), as the word itself. Text that is neither is refused naming
    both; what `parser` refuses of a number (NaN, infinity) it refuses."""
    word = word or AUTO

    def for_option(name):
        def parse(text):
            if text.strip().lower() == word:
                return word
            try:
                float(text)
            except ValueError:
                raise UserError(f"{name} must be {kind} or {word}. Received: {name}={text}") from None
            return parser(name)(text)

        return parse

    return for_option


def number_range(name):
    """`0.8,1.2` -> (0.8, 1.2): two finite numbers, 0 <= MIN <= MAX."""

    def parse(text):
        parts = text.split(",")
        if len(parts) != 2:
            raise UserError(f"{name} must be two numbers MIN,MAX, e.g. 0.8,1.2. Received: {name}={text}")
        low, high = (number(name)(part.strip()) for part in parts)
        if low < 0 or low > high:
            raise UserError(f"{name} must be MIN,MAX with 0 <= MIN <= MAX. Received: {name}={text}")
        return low, high

    return parse


def seed_number(name):
    def parse(text):
        value = integer(name)(text)
        if not 0 <= value < MAX_SEED:
            raise UserError(f"{name} must be between 0 and {MAX_SEED - 1}. Received: {name}={text}")
        return value

    return parse


def name_list(name):
    """`a,b,c` -> ("a", "b", "c"): distinct, non-empty names."""

    def parse(text):
        names = tuple(part.strip() for part in text.split(","))
        if not all(names) or len(set(names)) != len(names):
            raise UserError(
                f"{name} must be distinct, non-empty names separated by commas. Received: {name}={text}"
            )
        return names

    return parse


def backbone_text(name):
    """`mobilenet_v2, resnet50` -> "mobilenet_v2,resnet50": one or several
    backbone names, spaces around the commas dropped (checked by
    `check_backbones`)."""
    return lambda text: ",".join(part.strip() for part in text.split(","))


def choice_list(allowed):
    """A parser factory for `a,b` -> ("a", "b"): one or more of `allowed`,
    repeats dropped (--export onnx,litert)."""

    def for_option(name):
        def parse(text):
            names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
            if not names or not set(names) <= set(allowed):
                raise UserError(
                    f"{name} takes one or more of {','.join(allowed)}, separated by "
                    f"commas. Received: {name}={text}"
                )
            return names

        return parse

    return for_option


# ---------------------------------------------------------------- checking one value
# check(name, value) raises UserError; None (an option not given whose
# default is None) is never checked.


def unless_auto(check):
    """`check`, except for the word auto (which the option's user resolves:
    or_word's options)."""

    def checked(name, value):
        if value != AUTO:
            check(name, value)

    return checked


def at_least(low, why=""):
    def check(name, value):
        if value < low:
            because = f" ({why})" if why else ""
            raise UserError(f"{name} must be at least {low}{because}. Received: {name}={value}")

    return check


def at_least_and_at_most(low, low_why, high, high_why):
    """A check of a number in [low, high] whose refusal says which end was
    passed and why that end is there."""

    def check(name, value):
        if value < low:
            raise UserError(f"{name} must be at least {low} ({low_why}). Received: {name}={value}")
        if value > high:
            raise UserError(f"{name} must be at most {high} ({high_why}). Received: {name}={value}")

    return check


def between(low, high):
    def check(name, value):
        if not low <= value <= high:
            raise UserError(f"{name} must be between {low} and {high}. Received: {name}={value}")

    return check


def fraction(name, value):
    if not 0 < value < 1:
        raise UserError(f"{name} must be between 0 and 1 (exclusive). Received: {name}={value}")


def positive(name, value):
    if value <= 0:
        raise UserError(f"{name} must be positive. Received: {name}={value}")


def below_one(name, value):
    """0 <= value < 1, for zoom, translation and contrast."""
    if value < 0:
        raise UserError(f"{name} must be 0 or more. Received: {name}={value}")
    if value >= 1:
        raise UserError(f"{name} must be below 1. Received: {name}={value}")


def non_negative(name, value):
    if value < 0:
        raise UserError(f"{name} must be 0 or more. Received: {name}={value}")


def dropout_rate(name, value):
    if not 0 <= value < 1:
        raise UserError(f"{name} must be in [0, 1). Received: {name}={value}")


def output_folder(name, value):
    """A folder the script writes into: not a file, nor under one."""
    check_folder_path(name, value)


def writable_folder(name, value):
    """An output folder (`output_folder`) on a disk this process can write:
    every script writes its results there, so a read-only one is refused
    before anything starts."""
    check_folder_path(name, value)
    existing = os.path.abspath(value)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{name} must be a folder you can write to; {existing} is read-only. Received: {name}={value}")


def one_character_or_more(name, value):
    """Any text of at least one character (a space is a delimiter too)."""
    if not value:
        raise UserError(f"{name} must not be empty. Received: {name}={value!r}")


def non_empty(name, value):
    if not value.strip():
        raise UserError(f"{name} must not be empty. Received: {name}={value!r}")


def check_folder_path(name, path):
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
    check_folder_path(name, path)
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


def onnx_files(name, value):
    """Each of the paths (an append option's tuple) an existing .onnx file.
    Their sidecars are read and checked when the models load (external.py)."""
    for path in value:
        if not path.lower().endswith(".onnx") or not os.path.isfile(path):
            raise UserError(
                f"{name} must be an existing .onnx file, a model from another framework with its sidecar "
                f"(the same name with .json) beside it. Received: {name}={path}"
            )


def weights_source(name, value):
    if value not in ("imagenet", "none") and not os.path.isfile(value):
        raise UserError(
            f"{name} must be imagenet, none or the path of a weights file; no such file. Received: {name}={value}"
        )
