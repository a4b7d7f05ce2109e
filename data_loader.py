"""From a folder of images to tf.data pipelines, auditing every file first.

Three steps, kept apart so each can be tested and reused:
1. `index_dataset` finds the candidate files (class folders, pre-split
   folders or a labels CSV), audits every one of them (`audit_files`: is it
   really an image, is it complete, is it a decompression bomb, which decoder
   reads it) and splits the usable ones into train/val/test. It returns plain
   data. The only thing it writes is its cache, which lives outside the
   dataset folder; the user's files are only ever opened for reading.
2. `make_dataset` turns a list of files into a tf.data pipeline: shuffle
   (train only), parallel read + decode + resize, batch, augment (train
   only), prefetch. Only file paths live in memory; images are read as the
   pipeline runs. Images stay uint8 all the way: the model normalizes them
   itself, so the saved model takes raw 0-255 pixels.
3. `python data_loader.py --image_dir DIR [--json]` runs step 1 and prints
   what it found, without training.

One decode function, `load_image`, serves training, evaluation and
prediction, so an image looks the same to the model in all three:
- JPEG, PNG, GIF and BMP files that TensorFlow decodes correctly take the
  fast native path (tf.io.decode_image).
- Everything else is read in Python by Pillow, in parallel inside tf.data:
  TIFF, WebP and other formats; CMYK JPEGs; images with an EXIF orientation
  (turned upright); images with transparency (composited on white,
  ALPHA_BACKGROUND); 16-bit TIFFs (scaled by bit depth: 65535 -> 255);
  the palette and 1-bit BMPs TensorFlow gets wrong.
- Custom readers, {extension: function(path) -> uint8 HxWxC array}, read
  formats nobody else does (.npy arrays, DICOM, ...); see `load_readers`.
"""

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import math
import os
import re
import sys
import time
import types
import warnings

import numpy as np

import config
from config import UserError

SPLITS = ("train", "val", "test")
SPLIT_FOLDER_NAMES = {
    "train": ("train",),
    "val": ("val", "validation", "valid"),
    "test": ("test",),
}
# Files with these extensions (any case) are audited. The content, not the
# extension, decides the format; formats nothing here can decode (HEIC, JPEG
# XL) are listed so that they are reported, not silently ignored.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".bmp",
    ".dib",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".avif",
    ".heic",
    ".heif",
    ".jxl",
    ".jp2",
    ".j2k",
    ".psd",
    ".ico",
    ".tga",
)
# Files and folders that operating systems and tools leave behind.
OS_JUNK_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
OS_JUNK_FOLDERS = frozenset(
    {"__macosx", "@eadir", "$recycle.bin", "system volume information", "lost+found"}
)
# Transparent pixels are composited on this colour (white): most transparent
# images in classification data are cut-outs, logos and icons meant for a
# light page. A documented constant, so training and prediction agree.
ALPHA_BACKGROUND = (255, 255, 255)
# (format, Pillow mode) pairs whose tf.io.decode_image result was checked
# against Pillow (see tests/test_audit.py): e.g. TensorFlow turns 8-bit
# palette BMPs black and ignores alpha, so those stay in Python.
NATIVE_MODES = {
    "JPEG": ("L", "RGB"),
    "MPO": ("L", "RGB"),  # multi-picture JPEGs from cameras: TF reads the first
    "PNG": ("1", "L", "P", "RGB", "I;16", "I;16B", "I"),
    "GIF": ("L", "P"),
    "BMP": ("RGB",),
}
# The raster formats Pillow may open. Leaves out those whose reading runs
# other programs (EPS runs Ghostscript) or that are not images (MPEG, WMF).
PILLOW_FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "BMP",
    "DIB",
    "WEBP",
    "TIFF",
    "AVIF",
    "JPEG2000",
    "PSD",
    "ICO",
    "CUR",
    "ICNS",
    "TGA",
    "PPM",
    "SGI",
    "QOI",
    "DDS",
    "PCX",
)
EXIF_ORIENTATION = 0x0112
AUDIT_CACHE_FOLDER = "audit_cache"
AUDIT_CACHE_VERSION = 1
IGNORED_KINDS = {
    "hidden": "hidden",
    "os_junk": "OS junk",
    "other_extension": "not an image extension",
    "outside_class_folder": "outside any class folder",
    "other_folder": "folder that is not train/val/test",
    "not_in_classes": "class not in --classes",
}


# ---------------------------------------------------------------- the index


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image: its path relative to the dataset root, class and split,
    and the decoder the audit chose for it ("native", "pillow" or a custom
    reader's extension)."""

    path: str
    label: str
    split: str
    decoder: str = "native"


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """What `index_dataset` found: the classes, every usable image's split,
    and the audit (skipped files with reasons, warnings, statistics)."""

    root: str
    layout: str
    class_names: tuple
    samples: tuple
    notes: tuple = ()
    skipped: tuple = ()  # (relative path, reason) pairs
    ignored: int = 0
    warnings: tuple = ()
    audit: dict = dataclasses.field(default=None, compare=False)
    readers: dict = dataclasses.field(default=None, compare=False)

    def _chosen(self, name):
        return [sample for sample in self.samples if sample.split == name]

    def split(self, name):
        """(absolute paths, integer labels) of one split, in manifest order."""
        class_ids = {name: index for index, name in enumerate(self.class_names)}
        chosen = self._chosen(name)
        paths = [os.path.join(self.root, sample.path) for sample in chosen]
        labels = np.array([class_ids[sample.label] for sample in chosen], dtype=np.int32)
        return paths, labels

    def decoders(self, name):
        """The decoder of every file of `split(name)`, in the same order."""
        return [sample.decoder for sample in self._chosen(name)]

    def counts(self):
        """{split: {class: number of images}}, every class in every split."""
        table = {split: {name: 0 for name in self.class_names} for split in SPLITS}
        for sample in self.samples:
            table[sample.split][sample.label] += 1
        return table


def manifest_rows(index):
    """Rows (path, class, split) of the split manifest, header first."""
    return [("path", "class", "split")] + [
        (sample.path, sample.label, sample.split) for sample in index.samples
    ]


# ---------------------------------------------------------------- finding files


def is_hidden(name):
    return name.startswith(".")


def file_extension(name):
    return os.path.splitext(name)[1].lower()


def is_image_file(name, extensions=IMAGE_EXTENSIONS):
    return file_extension(name) in extensions


def display_path(path):
    """`path` printable as UTF-8 even when the file name is not valid UTF-8."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_inside(path, folder):
    """Whether `path` is `folder` or inside it, links resolved (realpath +
    commonpath, never string prefixes: /data2 is not inside /data)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _relative(path, root):
    return os.path.relpath(path, root).replace(os.sep, "/")


@dataclasses.dataclass
class Candidate:
    """A file to audit: path relative to the root, its class, and its split
    when the layout or the CSV fixes it (None: split automatically)."""

    path: str
    label: str
    split: str | None


@dataclasses.dataclass
class Scan:
    """What scanning a dataset found, before any file is opened."""

    layout: str
    candidates: list = dataclasses.field(default_factory=list)
    classes: dict = dataclasses.field(default_factory=dict)  # name -> folders or "labels_csv"
    skipped: list = dataclasses.field(default_factory=list)  # (path, reason, label)
    ignored: list = dataclasses.field(default_factory=list)  # (path, kind)
    warnings: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    fixed_splits: bool = False


def _classify_name(name, is_folder, extensions):
    """None for a file or folder to use, else why it is ignored."""
    if name.lower() in (OS_JUNK_FOLDERS if is_folder else OS_JUNK_FILES):
        return "os_junk"
    if is_hidden(name):
        return "hidden"
    if not is_folder and not is_image_file(name, extensions):
        return "other_extension"
    return None


def walk_images(folder, root, extensions=IMAGE_EXTENSIONS, ignored=None):
    """Yields the image files under `folder` (nested subfolders included,
    links followed, each real folder once) as sorted paths relative to
    `root`; appends (path, kind) for everything ignored to `ignored`."""
    ignored = [] if ignored is None else ignored
    seen = set()
    for current, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree
            subfolders[:] = []
            continue
        seen.add(real)
        kept = []
        for name in sorted(subfolders):
            kind = _classify_name(name, True, extensions)
            if kind:
                ignored.append((_relative(os.path.join(current, name), root) + "/", kind))
            else:
                kept.append(name)
        subfolders[:] = kept
        for name in sorted(files):
            relative = _relative(os.path.join(current, name), root)
            kind = _classify_name(name, False, extensions)
            if kind:
                ignored.append((relative, kind))
            else:
                yield relative


def list_images(folder, root, extensions=IMAGE_EXTENSIONS):
    """Image files under `folder` (nested subfolders included, hidden ones
    skipped), as sorted paths relative to `root` with forward slashes."""
    return sorted(walk_images(folder, root, extensions))


def class_folders(folder):
    """Sorted names of the visible, non-junk subfolders of `folder`."""
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and _classify_name(entry.name, True, ()) is None
    )


def find_split_folders(image_dir):
    """{split: folder name} for the split folders present in `image_dir`."""
    present = {name.lower(): name for name in class_folders(image_dir)}
    found = {}
    for split, aliases in SPLIT_FOLDER_NAMES.items():
        for alias in aliases:
            if alias in present:
                found[split] = present[alias]
                break
    return found


def _scan_class_folders(scan, folder, root, split, extensions):
    """Adds the classes of `folder` (one subfolder per class) to `scan`;
    files lying in `folder` itself belong to no class and are ignored."""
    loose = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        relative = _relative(entry.path, root)
        kind = _classify_name(entry.name, entry.is_dir(), extensions)
        if kind:
            scan.ignored.append((relative + ("/" if entry.is_dir() else ""), kind))
        elif entry.is_dir():
            scan.classes.setdefault(entry.name, []).append(relative)
            for path in walk_images(entry.path, root, extensions, scan.ignored):
                scan.candidates.append(Candidate(path, entry.name, split))
        else:
            loose.append(relative)
    if loose:
        scan.ignored.extend((path, "outside_class_folder") for path in loose)
        where = _relative(folder, root) if folder != root else "the dataset folder"
        scan.warnings.append(
            f"{len(loose)} image(s) lie directly in {display_path(where)} (e.g. "
            f"{display_path(loose[0])}), outside any class folder: ignored; "
            "move each into its class folder to use it"
        )


def scan_folder(root, extensions=IMAGE_EXTENSIONS):
    """Scans a pre-split (train/val/test folders) or flat (class folders)
    dataset. Returns a Scan; opens no file."""
    split_folders = find_split_folders(root)
    if "train" not in split_folders:
        scan = Scan(layout="flat")
        _scan_class_folders(scan, root, root, None, extensions)
        return scan
    scan = Scan(layout="presplit", fixed_splits=True)
    used = set(split_folders.values())
    for entry in sorted(os.scandir(root), key=lambda entry: entry.name):
        kind = _classify_name(entry.name, entry.is_dir(), extensions)
        if entry.name in used:
            continue
        if kind is None and entry.is_dir():
            kind = "other_folder"
        elif kind is None:
            kind = "outside_class_folder"
        scan.ignored.append((entry.name + ("/" if entry.is_dir() else ""), kind))
    for split, folder in split_folders.items():
        _scan_class_folders(scan, os.path.join(root, folder), root, split, extensions)
    others = [path for path, kind in scan.ignored if kind == "other_folder"]
    if others:
        scan.notes.append(
            "pre-split layout: ignored folder(s) that are not train/val/test: "
            + ", ".join(display_path(path) for path in others)
        )
    return scan


# ---------------------------------------------------------------- labels CSV


CSV_COLUMNS = {
    "filename": ("filename", "file", "path", "image"),
    "label": ("label", "class"),
    "split": ("split",),
}


def _csv_columns(header, csv_path):
    """{column: index} from the CSV header. Raises UserError."""
    names = [name.strip().lower() for name in header]
    columns = {}
    for column, aliases in CSV_COLUMNS.items():
        for alias in aliases:
            if alias in names:
                columns[column] = names.index(alias)
                break
    if "filename" not in columns or "label" not in columns:
        raise UserError(
            "labels_csv needs a header row with the columns filename,label (and "
            f"optionally split). Received: header={','.join(header)} in {csv_path}"
        )
    return columns


def _csv_cell(row, columns, name):
    position = columns.get(name)
    return row[position].strip() if position is not None and position < len(row) else ""


def _csv_split(value, row_number, csv_path):
    value = value.strip().lower()
    if not value:
        return None
    for split, aliases in SPLIT_FOLDER_NAMES.items():
        if value in aliases:
            return split
    raise UserError(
        f"labels_csv row {row_number}: split must be train, val or test (or "
        f"empty). Received: split={value} in {csv_path}"
    )


def _read_csv_rows(csv_path):
    if not csv_path or not os.path.isfile(csv_path):
        raise UserError(f"labels_csv is not a file. Received: labels_csv={csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle)]
    except UnicodeDecodeError:
        raise UserError(f"labels_csv must be UTF-8 text. Received: labels_csv={csv_path}")
    if not rows:
        raise UserError(f"labels_csv is empty. Received: labels_csv={csv_path}")
    return rows


def _normalize_labels(rows):
    """When every label is an integer, spells each the same way (01 and 1
    are one class); `_ordered_classes` then sorts them by value."""
    labels = [row[2] for row in rows if row[2]]
    if labels and all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        for row in rows:
            row[2] = str(int(row[2])) if row[2] else row[2]


def scan_csv(root, csv_path):
    """Reads `--labels_csv` (filename,label[,split], file names relative to
    `root`). Rows pointing outside `root` (absolute paths, `..`, links out)
    are rejected, missing files skipped, each with its reason; duplicate
    rows are warned about. Returns a Scan. Raises UserError for a CSV that
    cannot be read or has no filename/label columns."""
    rows = _read_csv_rows(csv_path)
    columns = _csv_columns(rows[0], csv_path)
    real_root = os.path.realpath(root)
    scan = Scan(layout="csv")
    parsed = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        filename, label, split = (_csv_cell(row, columns, name) for name in CSV_COLUMNS)
        parsed.append([number, filename, label, _csv_split(split, number, csv_path)])
    _normalize_labels(parsed)
    seen = {}
    duplicates = []
    for number, filename, label, split in parsed:
        if not filename or not label:
            scan.skipped.append(
                (
                    filename or f"(row {number})",
                    f"labels_csv row {number} has an empty "
                    + ("filename" if not filename else "label"),
                    label,
                )
            )
            continue
        scan.classes.setdefault(label, "labels_csv")
        real = os.path.realpath(os.path.join(root, filename))
        if os.path.commonpath([real, real_root]) != real_root:
            scan.skipped.append(
                (
                    filename,
                    f"outside image_dir: labels_csv row {number} points outside the "
                    "dataset folder (rejected)",
                    label,
                )
            )
            continue
        if not os.path.isfile(real):
            scan.skipped.append(
                (
                    filename,
                    f"not found: labels_csv row {number} names a file that does not exist",
                    label,
                )
            )
            continue
        relative = _relative(real, real_root)
        if relative in seen:
            duplicates.append((number, relative, label))
            continue
        seen[relative] = (number, label, split)
    _csv_duplicates(scan, seen, duplicates)
    scan.fixed_splits = any(split for _, _, split in seen.values())
    for relative, (number, label, split) in seen.items():
        scan.candidates.append(
            Candidate(relative, label, split or ("train" if scan.fixed_splits else None))
        )
    return scan


def _csv_duplicates(scan, seen, duplicates):
    """Warns about files listed more than once; a file listed with two
    different labels is skipped (which one is right cannot be known)."""
    if not duplicates:
        return
    conflicts = {}
    for number, relative, label in duplicates:
        if label != seen[relative][1]:
            conflicts.setdefault(
                relative, [f"{seen[relative][1]} (row {seen[relative][0]})"]
            ).append(f"{label} (row {number})")
    for relative, labels in conflicts.items():
        scan.skipped.append(
            (
                relative,
                "conflicting labels in labels_csv: " + ", ".join(labels),
                seen.pop(relative)[1],
            )
        )
    number, relative, _ = duplicates[0]
    scan.warnings.append(
        f"labels_csv lists {len(duplicates)} file(s) more than once (e.g. "
        f"{display_path(relative)} again in row {number}); each file is used once"
        + (f", and {len(conflicts)} with conflicting labels are skipped" if conflicts else "")
    )


# ---------------------------------------------------------------- custom readers


def describe_reader(function):
    """'FILE_OR_MODULE:FUNCTION' naming a reader, for messages and the cache."""
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    where = getattr(module, "__file__", None) or getattr(function, "__module__", "?")
    return f"{where}:{getattr(function, '__qualname__', repr(function))}"


def _load_module_from_file(path):
    """Imports a Python file as a module without writing bytecode next to
    it (it may sit inside a dataset folder, which is never written)."""
    real = os.path.realpath(path)
    name = "reader_" + hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    with open(real, encoding="utf-8") as handle:
        source = handle.read()
    module = types.ModuleType(name)
    module.__file__ = real
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        exec(compile(source, real, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_reader(spec):
    extension, _, target = spec.partition("=")
    location, _, function_name = target.rpartition(":")
    extension = "." + extension.strip().lower().lstrip(".")
    if extension == "." or not location or not function_name:
        raise UserError(
            "reader must be EXT=FILE.py:FUNCTION or EXT=MODULE:FUNCTION, e.g. "
            f"npy=my_readers.py:read_npy. Received: reader={spec}"
        )
    try:
        if location.endswith(".py") or os.sep in location:
            if not os.path.isfile(location):
                raise UserError(f"reader file not found. Received: reader={spec}")
            module = _load_module_from_file(location)
        else:
            module = importlib.import_module(location)
    except UserError:
        raise
    except Exception as error:  # the user's code: report it in one line
        raise UserError(f"cannot load reader {spec}: {type(error).__name__}: {error}")
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"reader {spec}: {location} has no function {function_name}")
    return extension, function


def load_readers(specs):
    """Custom readers from command-line specs (`--reader`).

    Each spec is `EXT=FILE.py:FUNCTION` or `EXT=MODULE:FUNCTION`; the
    function takes a file path and returns a uint8 numpy array HxW or HxWxC
    (C = 1, 3 or 4). Returns {".ext": function}. A registered extension
    takes precedence over the built-in decoders. Raises UserError.
    """
    return dict(_load_reader(spec) for spec in specs or ())


def _normalize_readers(readers):
    return {
        "." + extension.lower().lstrip("."): function
        for extension, function in (readers or {}).items()
    }


def as_rgb_uint8(array, source="reader"):
    """A reader's output as a uint8 HxWx3 array: gray is repeated, alpha is
    composited on ALPHA_BACKGROUND. Raises ValueError for anything that is
    not a uint8 HxW or HxWxC (C = 1, 3, 4) array."""
    if not isinstance(array, np.ndarray):
        raise ValueError(
            f"{source} returned {type(array).__name__}, expected a uint8 numpy array HxWxC"
        )
    if array.dtype != np.uint8:
        raise ValueError(
            f"{source} returned dtype {array.dtype}, expected uint8 (scale to 0-255 in the reader)"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(
            f"{source} returned shape {array.shape}, expected HxW or HxWxC with C = 1, 3 or 4"
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = composite_on_background(array)
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------- reading images


class TooLargeError(ValueError):
    """An image over Pillow's decompression-bomb limit: never decoded."""


def sniff_format(head):
    """What the first bytes of a file say it is: ("image", Pillow format id
    or name), ("other", what it is), or (None, None) when unrecognised."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "GIF"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in (
        12,
        16,
        40,
        52,
        56,
        64,
        108,
        124,
    ):
        return "image", "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image", "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "image", "AVIF"
    if head[4:8] == b"ftyp" and head[8:12] in (
        b"heic",
        b"heix",
        b"hevc",
        b"hevx",
        b"heim",
        b"heis",
        b"mif1",
        b"msf1",
    ):
        return "image", "HEIF"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ")):
        return "image", "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "image", "JPEG XL"
    if head[:4] == b"8BPS":
        return "image", "PSD"
    if head[128:132] == b"DICM":
        return "image", "DICOM"
    return _sniff_other(head)


def _sniff_other(head):
    lowered = head.lstrip().lower()
    known = (
        (b"%PDF", "PDF document"),
        (b"PK\x03\x04", "ZIP archive"),
        (b"\x1f\x8b", "gzip archive"),
        (b"\x93NUMPY", "NumPy array (register a reader for it)"),
    )
    for magic, name in known:
        if head.startswith(magic):
            return "other", name
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered[:512]:
        return "other", "HTML page (often a failed download)"
    if b"<svg" in lowered[:512]:
        return "other", "SVG vector drawing"
    if head and b"\x00" not in head:
        printable = sum(byte >= 32 or byte in b"\t\n\r" for byte in head)
        if printable >= 0.95 * len(head):
            return "other", "text file"
    return None, None


def _pillow_can_open(format_name):
    from PIL import Image

    Image.init()
    return format_name in PILLOW_FORMATS and format_name in Image.OPEN


def open_image(source):
    """Opens an image with Pillow, reading only its header.

    Raises TooLargeError when width x height is over Pillow's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS), before any pixel is
    decoded; Pillow's own errors for files it cannot identify.
    """
    from PIL import Image

    Image.init()
    formats = [name for name in PILLOW_FORMATS if name in Image.OPEN]
    try:
        image = Image.open(source, formats=formats)
    except Image.DecompressionBombError as error:  # over twice the limit
        match = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(match.group(1)) if match else 0
        raise TooLargeError(_too_large_reason(pixels, Image.MAX_IMAGE_PIXELS, None))
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        raise TooLargeError(_too_large_reason(width * height, limit, image.size))
    return image


def _too_large_reason(pixels, limit, size):
    dimensions = f"{size[0]}x{size[1]} = " if size else ""
    return (
        f"too large: {dimensions}{pixels:,} pixels, over Pillow's decompression-bomb "
        f"limit of {limit:,} (not decoded)"
    )


def header_orientation(image):
    """The EXIF orientation (1-8) from an opened image's header, or None.

    Read before decoding, identically for routing and reading: a PNG's EXIF
    is only looked for ahead of the pixel data (finding a later one would
    mean decoding the whole file), so both always agree.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return None
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a damaged EXIF block: treat as no orientation
        return None


def has_transparency(image):
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _plain_bmp(head):
    """Whether a BMP is uncompressed 24- or 32-bit, the kind TensorFlow reads."""
    header_size = int.from_bytes(head[14:18], "little")
    if header_size == 12:
        return int.from_bytes(head[24:26], "little") == 24
    bits = int.from_bytes(head[28:30], "little")
    compression = int.from_bytes(head[30:34], "little")
    return bits in (24, 32) and compression == 0


def choose_decoder(image, head):
    """("native" or "pillow", why) for an image opened by `open_image`,
    from its header only. Native only where tf.io.decode_image is known to
    give the right pixels; `why` says what sends a file to Pillow."""
    orientation = header_orientation(image)
    if orientation not in (None, 1):
        return "pillow", "EXIF rotation"
    if has_transparency(image):
        return "pillow", "transparency"
    if image.format not in NATIVE_MODES:
        return "pillow", image.format
    if image.mode not in NATIVE_MODES[image.format]:
        return "pillow", f"{image.mode} {image.format}"
    if image.format == "BMP" and not _plain_bmp(head):
        return "pillow", "compressed or palette BMP"
    return "native", ""


def probe_decoder(path, readers=None):
    """The decoder for one file, from its extension (custom readers) or its
    header: what the audit would choose, without decoding anything. Raises
    OSError, TooLargeError or Pillow's errors for files that are not images."""
    readers = _normalize_readers(readers)
    extension = file_extension(path)
    if extension in readers:
        return extension
    with open(path, "rb") as handle:
        head = handle.read(64)
        handle.seek(0)
        return choose_decoder(open_image(handle), head)[0]


def composite_on_background(rgba, background=ALPHA_BACKGROUND):
    """uint8 HxWx4 -> HxWx3, each pixel blended with `background` by alpha."""
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    colour = rgba[:, :, :3].astype(np.uint32)
    back = np.array(background, np.uint32)
    return ((colour * alpha + back * (255 - alpha) + 127) // 255).astype(np.uint8)


def _bits_per_sample(image):
    if image.mode.startswith("I;16"):
        return 16
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0]
    return bits if bits in (8, 16, 32) else 16  # PNG/PPM high-bit gray is 16-bit


def scale_to_uint8(image):
    """A high-bit-depth gray image (I;16, I, F) as uint8, scaled by its bit
    depth so that the brightest value is 255 (65535 -> 255, not clipped);
    floating point images are taken as 0-1."""
    pixels = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0
    else:
        scaled = pixels.astype(np.float64) * (255.0 / (2 ** _bits_per_sample(image) - 1))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb_array(image):
    """Any decoded Pillow image as a uint8 HxWx3 array (see module doc)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.repeat(scale_to_uint8(image)[:, :, None], 3, axis=2)
    if has_transparency(image):
        return composite_on_background(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))


def _transposition(orientation):
    from PIL import Image

    return {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)


def decode_with_pillow(image):
    """Decodes an image opened by `open_image` to a uint8 HxWx3 array: the
    first frame, turned upright by its EXIF orientation, in RGB."""
    orientation = header_orientation(image)  # before load(), as when routing
    image.load()
    transposition = _transposition(orientation)
    if transposition is not None:
        image = image.transpose(transposition)
    return to_rgb_array(image)


def read_with_pillow(path):
    """The built-in Python reader: any format Pillow reads (TIFF, WebP, CMYK
    JPEG, 16-bit, palette, ...) as a uint8 HxWx3 array (see module doc).
    Raises TooLargeError for decompression bombs, Pillow's errors otherwise."""
    with open(path, "rb") as handle:
        return decode_with_pillow(open_image(handle))


def decode_native(data):
    """TensorFlow's decoder: encoded JPEG/PNG/GIF/BMP bytes (a string
    tensor) -> uint8 (height, width, 3), the first frame of a GIF."""
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False)


# ---------------------------------------------------------------- the audit


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """The audit of one file: usable, or skipped with a reason."""

    path: str
    usable: bool
    reason: str = ""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    decoder: str = ""
    decoder_note: str = ""  # why a file is decoded in Python
    sha256: str = ""


def _skip(path, reason, **details):
    return FileCheck(path=path, usable=False, reason=reason, **details)


def _error_text(error):
    """An exception as one short line (TensorFlow's op names removed)."""
    text = str(error).strip() or type(error).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]( name: )?$", "", text)
    return text.splitlines()[-1][:200] if text else type(error).__name__


def _native_decode_error(data):
    """None if TensorFlow decodes the bytes, else its error message."""
    import tensorflow as tf

    try:
        decode_native(data)
    except (
        tf.errors.InvalidArgumentError,
        tf.errors.OutOfRangeError,
        tf.errors.UnknownError,
    ) as error:
        return _error_text(error)
    return None


def _check_with_reader(relpath, path, extension, function, digest):
    name = describe_reader(function)
    try:
        array = as_rgb_uint8(function(path), f"reader {name}")
    except Exception as error:  # the user's reader on the user's file
        return _skip(
            relpath,
            f"reader failed ({name}): {type(error).__name__}: {_error_text(error)}",
            decoder=extension,
        )
    return FileCheck(
        path=relpath,
        usable=True,
        format=extension.lstrip(".").upper(),
        mode=f"{array.shape[2]}ch",
        width=int(array.shape[1]),
        height=int(array.shape[0]),
        decoder=extension,
        decoder_note=f"{extension} reader",
        sha256=digest,
    )


def _check_image(relpath, data, digest):
    """Audits the bytes of a file that has no custom reader."""
    kind, name = sniff_format(data[:512])
    if kind == "other":
        return _skip(relpath, f"not an image: {name}")
    try:
        image = open_image(io.BytesIO(data))
    except TooLargeError as error:
        return _skip(relpath, str(error), format=name or "")
    except Exception as error:  # Pillow on untrusted bytes raises many types
        if kind is None:
            return _skip(relpath, "not an image: unrecognised content")
        if not _pillow_can_open(name):
            return _skip(
                relpath,
                f"unreadable format: {name} (no decoder installed; convert the file "
                "to JPEG or PNG, or register a reader with --reader)",
                format=name,
            )
        return _skip(relpath, f"truncated or corrupt {name}: {_error_text(error)}", format=name)
    width, height = image.size
    if header_orientation(image) in (5, 6, 7, 8):  # stored on its side
        width, height = height, width
    details = dict(format=image.format, mode=image.mode, width=width, height=height, sha256=digest)
    decoder, note = choose_decoder(image, data[:64])
    if decoder == "native":
        # The audit runs the decoder training will run, so a file that
        # passes cannot fail mid-epoch (keras-team/keras#19508).
        native_error = _native_decode_error(data)
        if native_error is None:
            return FileCheck(path=relpath, usable=True, decoder=decoder, **details)
        pillow_error = _pillow_decode_error(image)
        detail = (
            pillow_error or f"{native_error} (TensorFlow refuses it; re-saving the file fixes it)"
        )
        return _skip(
            relpath, f"truncated or corrupt {image.format}: {detail}", decoder=decoder, **details
        )
    pillow_error = _pillow_decode_error(image)
    if pillow_error:
        return _skip(
            relpath,
            f"truncated or corrupt {image.format}: {pillow_error}",
            decoder=decoder,
            **details,
        )
    return FileCheck(path=relpath, usable=True, decoder=decoder, decoder_note=note, **details)


def _pillow_decode_error(image):
    try:
        decode_with_pillow(image)
    except Exception as error:  # Pillow on untrusted bytes raises many types
        return _error_text(error)
    return None


def check_file(root, relpath, readers=None):
    """Audits one file (`relpath` under `root`): reads it once, detects the
    format from its content, refuses decompression bombs from the header,
    and decodes it fully with the decoder training will use. Returns a
    FileCheck; problems with the file never raise."""
    readers = _normalize_readers(readers)
    try:
        relpath.encode("utf-8")
    except UnicodeEncodeError:
        return _skip(
            display_path(relpath), "file name is not valid UTF-8: rename the file to use it"
        )
    path = os.path.join(root, relpath)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        return _skip(relpath, f"cannot read the file: {error.strerror or error}")
    if not data:
        return _skip(relpath, "empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    extension = file_extension(relpath)
    if extension in readers:
        return _check_with_reader(relpath, path, extension, readers[extension], digest)
    return _check_image(relpath, data, digest)


def _package_version(name):
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cache_signature(readers):
    """What cached results depend on besides each file: if any of it
    changes, every file is checked again."""
    import PIL
    from PIL import Image

    described = {}
    for extension, function in sorted(readers.items()):
        name = describe_reader(function)
        source = name.rpartition(":")[0]
        described[extension] = [
            name,
            os.stat(source).st_mtime_ns if os.path.isfile(source) else None,
        ]
    return {
        "version": AUDIT_CACHE_VERSION,
        "pillow": PIL.__version__,
        "tensorflow": _package_version("tensorflow"),
        "max_image_pixels": Image.MAX_IMAGE_PIXELS,
        "readers": described,
    }


def audit_cache_path(cache_dir, root):
    """The cache file of one dataset folder inside `cache_dir`."""
    key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir, f"{key}.json")


def _load_cache(path, signature):
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):  # a damaged cache is just rebuilt
        return {}
    return data.get("files", {}) if data.get("signature") == signature else {}


def _save_cache(path, root, signature, entries):
    import train_utils

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as handle:
            json.dump({"image_dir": root, "signature": signature, "files": entries}, handle)

    train_utils.atomic_write(path, write)


def _file_key(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _check_all(root, todo, readers, workers, progress):
    """check_file over `todo` in a thread pool (decoders release the GIL)."""
    results = {}
    if not todo:
        return results
    if any(file_extension(path) not in readers for path in todo):
        import tensorflow  # noqa: F401  imported here, not in a worker thread
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    # Pillow warns about images between 1x and 2x its pixel limit before we
    # refuse them with a reason; the warning would only repeat that reason.
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(check_file, root, path, readers): path for path in todo}
            for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress:
                    progress(done, len(todo))
    return results


def audit_files(root, paths, readers=None, cache_dir=None, workers=None, progress=None):
    """Audits every file (paths relative to `root`) once, in parallel.

    Unchanged files (same path, size and modification time) come from the
    cache in `cache_dir`, which must be outside `root`; None disables it.
    `progress(done, total)` is called as files are checked. Returns
    (FileChecks in the order of `paths`, {"checked", "from_cache", "seconds"}).
    """
    start = time.perf_counter()
    readers = _normalize_readers(readers)
    signature = _cache_signature(readers)
    cache_path = audit_cache_path(cache_dir, root) if cache_dir else None
    cache = _load_cache(cache_path, signature)
    keys = {path: _file_key(os.path.join(root, path)) for path in paths}
    known = {}
    for path in paths:
        entry = cache.get(path)
        if entry and keys[path] is not None and entry["key"] == keys[path]:
            known[path] = FileCheck(path=path, **entry["check"])
    todo = [path for path in dict.fromkeys(paths) if path not in known]
    known.update(_check_all(root, todo, readers, workers, progress))
    if cache_path and todo:
        entries = {
            path: entry
            for path, entry in cache.items()
            if path not in keys and _file_key(os.path.join(root, path))
        }
        for path, check in known.items():
            if keys.get(path) is not None:
                fields = dataclasses.asdict(check)
                del fields["path"]
                entries[path] = {"key": keys[path], "check": fields}
        _save_cache(cache_path, root, signature, entries)
    stats = {
        "checked": len(todo),
        "from_cache": len(paths) - len(todo),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return [known[path] for path in paths], stats


class ProgressLine:
    """A progress callback for `audit_files` that prints one line to
    `stream` (stderr by default): rewritten in place on a terminal, every
    10% otherwise; silent below `min_total` files and, in logs, for audits
    that finish within `quiet_seconds` (ten lines for a one-second scan are
    noise)."""

    def __init__(self, label="auditing", stream=None, min_total=200, interval=0.25, quiet_seconds=2.0):
        self.label = label
        self.stream = stream
        self.min_total = min_total
        self.interval = interval
        self.quiet_seconds = quiet_seconds
        self.start_time = None
        self.last_time = 0.0
        self.last_tenth = 0

    def __call__(self, done, total):
        if total < self.min_total:
            return
        now = time.monotonic()
        self.start_time = now if self.start_time is None else self.start_time
        stream = self.stream or sys.stderr
        if not stream.isatty() and now - self.start_time < self.quiet_seconds:
            return
        line = f"    {self.label}: {done}/{total} files ({100 * done // total}%)"
        if stream.isatty():
            if done == total or now - self.last_time >= self.interval:
                self.last_time = now
                stream.write("\r" + line + ("\n" if done == total else ""))
                stream.flush()
        elif 10 * done // total > self.last_tenth:
            self.last_tenth = 10 * done // total
            stream.write(line + "\n")
            stream.flush()


# ---------------------------------------------------------------- splitting


def split_counts(total, fractions):
    """How many of `total` items go to each held-out split.

    Every held-out split with a fraction above 0 gets at least one item, and
    at least one item is left for training. Raises ValueError if impossible.
    """
    counts = [max(1, round(total * fraction)) if fraction > 0 else 0 for fraction in fractions]
    if sum(counts) >= total:
        raise ValueError
    return counts


def _units(files, groups):
    """Files grouped into units that must share a split (identical content),
    in order of their first file."""
    units = {}
    for path in files:
        key = groups.get(path, path) if groups else path
        units.setdefault(key, []).append(path)
    return list(units.items())


def _split_one_class(name, files, held_out, rng, groups, placed):
    """{split: files} for one class; `placed` ({group: split}) keeps a
    group's files in one split across classes, and is updated."""
    try:
        counts = split_counts(len(files), list(held_out.values()))
    except ValueError:
        raise UserError(
            f"class '{name}' has {len(files)} image(s), too few to put at "
            f"least one in train and in {' and '.join(held_out)}; add images "
            "or lower --val_split/--test_split"
        )
    units = _units(files, groups)
    quota = dict(zip(held_out, counts))
    chosen = {split: [] for split in ("train", *held_out)}
    pending = []
    for number in rng.permutation(len(units)):
        key, members = units[number]
        if key in placed:
            chosen[placed[key]].extend(members)
        else:
            pending.append((key, members))
    for key, members in pending:
        split = next((split for split in held_out if len(chosen[split]) < quota[split]), "train")
        chosen[split].extend(members)
        placed[key] = split
    empty = [split for split, members in chosen.items() if not members]
    if empty:
        raise UserError(
            f"class '{name}' has {len(files)} image(s) but only {len(units)} "
            f"distinct one(s) (identical files stay in one split), too few to "
            f"put one in {' and '.join(empty)}; add images or lower --val_split/--test_split"
        )
    return {split: sorted(members) for split, members in chosen.items()}


def stratified_split(files_by_class, held_out, seed, groups=None):
    """Splits each class's files at random (seeded) into train + held out.

    `held_out` is {split name: fraction}. `groups` ({path: key}, optional)
    keeps files with the same key (identical content) in one split, also
    across classes. Returns {split: {class: [files]}}. Raises UserError
    naming a class too small to appear in every split.
    """
    rng = np.random.default_rng(seed)
    result = {"train": {}, **{split: {} for split in held_out}}
    placed = {}
    for name in sorted(files_by_class):
        files = sorted(files_by_class[name])
        for split, members in _split_one_class(name, files, held_out, rng, groups, placed).items():
            result[split][name] = members
    return result


def check_same_classes(table, class_names=None):
    """Raises UserError naming a class that is missing from some split."""
    all_classes = class_names or sorted(set().union(*(set(classes) for classes in table.values())))
    for split in SPLITS:
        missing = [name for name in all_classes if not table[split].get(name)]
        if missing:
            present = len(all_classes) - len(missing)
            raise UserError(
                f"class '{missing[0]}' has no images in the {split} split "
                f"({present} vs {len(all_classes)} classes); every "
                "split needs every class"
            )
    return list(all_classes)


def _split_table(usable, layout_fixed, val_split, test_split, seed, groups):
    """{split: {class: [paths]}} from the usable candidates: fixed splits
    kept (missing val/test carved out of train), or a stratified split."""
    notes = []
    if not layout_fixed:
        pool = collections.defaultdict(list)
        for candidate in usable:
            pool[candidate.label].append(candidate.path)
        return stratified_split(pool, {"val": val_split, "test": test_split}, seed, groups), notes
    table = {split: collections.defaultdict(list) for split in SPLITS}
    for candidate in usable:
        table[candidate.split][candidate.label].append(candidate.path)
    carve = {}
    if not any(table["val"].values()):
        carve["val"] = val_split
    if not any(table["test"].values()):
        carve["test"] = test_split
    if carve:
        table.update(stratified_split(table["train"], carve, seed, groups))
        notes.append(
            f"no {' or '.join(carve)} split given: carved "
            + ", ".join(f"{fraction:.0%} of train as {split}" for split, fraction in carve.items())
            + f" (stratified, seed {seed})"
        )
    return {
        split: {name: sorted(paths) for name, paths in classes.items()}
        for split, classes in table.items()
    }, notes


# ---------------------------------------------------------------- classes


def _apply_classes(scan, classes):
    """Keeps the classes named by --classes (their order is the label
    order); the files of the others are ignored. Raises UserError for a
    name that is not a class."""
    if not classes:
        return
    for name in classes:
        if name not in scan.classes:
            raise UserError(
                f"--classes names '{name}', which is not a class here (found: "
                f"{', '.join(display_path(found) for found in _ordered_classes(scan))}). "
                f"Received: classes={','.join(classes)}"
            )
    others = [name for name in scan.classes if name not in classes]
    scan.ignored.extend(
        (candidate.path, "not_in_classes")
        for candidate in scan.candidates
        if candidate.label not in classes
    )
    scan.candidates = [candidate for candidate in scan.candidates if candidate.label in classes]
    scan.skipped = [item for item in scan.skipped if item[2] in classes]
    if others:
        scan.notes.append(
            "--classes: ignored the other class(es): "
            + ", ".join(display_path(name) for name in sorted(others))
        )


def _ordered_classes(scan):
    """Sorted class names; numerically when a CSV's labels are integers."""
    names = list(scan.classes)
    if scan.layout == "csv" and names and all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _choose_classes(scan, usable, classes, image_dir):
    """The final class order: classes with no usable image are excluded
    with a warning (an error when --classes named them). Raises UserError
    when fewer than 2 remain."""
    counts = collections.Counter(candidate.label for candidate in usable)
    skipped = collections.Counter(item[2] for item in scan.skipped)
    order = list(classes) if classes else _ordered_classes(scan)
    if not classes and order != sorted(order):
        scan.notes.append("labels_csv: the labels are integers, so classes are in numeric order")
    excluded = [name for name in order if not counts[name]]
    if classes and excluded:
        raise UserError(
            f"--classes names '{excluded[0]}', which has no usable images "
            f"({_emptiness(excluded[0], skipped)})"
        )
    kept = [name for name in order if counts[name]]
    for name in excluded:
        scan.warnings.append(
            f"class '{display_path(name)}' has no usable images ({_emptiness(name, skipped)}): "
            f"excluded; training on the other {len(kept)} class(es)"
        )
    if len(kept) < 2:
        detail = f" ({', '.join(display_path(name) for name in kept)})" if kept else ""
        if excluded:
            detail += "; without usable images: " + ", ".join(
                display_path(name) for name in excluded
            )
        loose = sum(1 for _, kind in scan.ignored if kind == "outside_class_folder")
        if loose:
            detail += f"; {loose} image(s) lie outside any class folder"
        raise UserError(
            f"need at least 2 classes with usable images in {image_dir}, found {len(kept)}{detail}"
        )
    return kept


def _emptiness(name, skipped):
    return (
        f"all {skipped[name]} file(s) skipped, see the audit" if skipped[name] else "no image files"
    )


# ---------------------------------------------------------------- duplicates


def _duplicate_groups(samples, checks):
    """Groups (lists of Samples) of usable files with identical content."""
    by_hash = collections.defaultdict(list)
    for sample in samples:
        by_hash[checks[sample.path].sha256].append(sample)
    return [group for group in by_hash.values() if len(group) > 1]


def _duplicate_warnings(groups, auto_split, limit=10):
    """Warnings about identical files: one summary line, then one line per
    group that crosses classes (conflicting labels) or splits (leakage)."""
    if not groups:
        return []
    files = sum(len(group) for group in groups)
    labels = [group for group in groups if len({sample.label for sample in group}) > 1]
    leaks = [group for group in groups if len({sample.split for sample in group}) > 1]
    lines = [
        f"{len(groups)} group(s) of identical files ({files} files), e.g. "
        + " = ".join(display_path(sample.path) for sample in groups[0][:3])
        + ("; each group was kept in one split" if auto_split and not leaks else "")
    ]
    for group in labels[:limit]:
        lines.append(
            "the same image has different labels: "
            + ", ".join(f"{display_path(sample.path)} ({sample.label})" for sample in group)
        )
    for group in leaks[:limit]:
        splits = sorted({sample.split for sample in group}, key=SPLITS.index)
        lines.append(
            f"leakage: the same image is in {' and '.join(splits)}, so "
            f"{splits[-1]} results will look better than they are: "
            + ", ".join(f"{display_path(sample.path)} ({sample.split})" for sample in group)
        )
    hidden = max(0, len(labels) - limit) + max(0, len(leaks) - limit)
    if hidden:
        lines.append(f"... and {hidden} more group(s) like these: see the audit's duplicates")
    return lines


# ---------------------------------------------------------------- index_dataset


def _check_image_dir(image_dir, cache_dir):
    if not image_dir or not os.path.isdir(image_dir):
        raise UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    if cache_dir and is_inside(cache_dir, image_dir):
        raise UserError(
            "the audit cache must be outside image_dir: nothing is written "
            f"inside the dataset. Received: cache_dir={cache_dir}"
        )
    return os.path.abspath(image_dir)


def index_dataset(
    image_dir,
    val_split,
    test_split,
    seed,
    labels_csv=None,
    classes=None,
    readers=None,
    cache_dir=None,
    workers=None,
    progress=None,
):
    """Finds, audits and splits the images of `image_dir`.

    Layouts: pre-split (`train/`, `val|validation|valid/`, `test/`, each with
    class folders; a missing val or test split is carved out of train),
    flat (class folders, split per class), or `labels_csv` (filename,label
    and an optional split column). `classes` (names) keeps those classes in
    that order. `readers` ({".ext": function}) adds custom readers. Every
    candidate file is audited (`audit_files`, cached in `cache_dir`); only
    usable files are split, and identical files stay in one split. Classes
    with no usable image are excluded with a warning.

    Returns a DatasetIndex. Raises UserError for a missing folder, fewer
    than 2 usable classes, a class missing from a split or too small to
    split, a bad CSV or --classes name.
    """
    root = _check_image_dir(image_dir, cache_dir)
    readers = _normalize_readers(readers)
    extensions = tuple(set(IMAGE_EXTENSIONS) | set(readers))
    scan = scan_csv(root, labels_csv) if labels_csv else scan_folder(root, extensions)
    _apply_classes(scan, classes)
    checks, stats = audit_files(
        root, [c.path for c in scan.candidates], readers, cache_dir, workers, progress
    )
    checks = dict(zip((c.path for c in scan.candidates), checks))
    for candidate in scan.candidates:
        if not checks[candidate.path].usable:
            scan.skipped.append(
                (checks[candidate.path].path, checks[candidate.path].reason, candidate.label)
            )
    usable = [c for c in scan.candidates if checks[c.path].usable]
    class_names = _choose_classes(scan, usable, classes, image_dir)
    usable = [c for c in usable if c.label in class_names]
    groups = {c.path: checks[c.path].sha256 for c in usable}
    table, notes = _split_table(usable, scan.fixed_splits, val_split, test_split, seed, groups)
    check_same_classes(table, class_names)
    samples = tuple(
        Sample(path=path, label=name, split=split, decoder=checks[path].decoder)
        for split in SPLITS
        for name in class_names
        for path in table[split][name]
    )
    duplicates = _duplicate_groups(samples, checks)
    scan.warnings.extend(
        _duplicate_warnings(duplicates, auto_split=not scan.fixed_splits or bool(notes))
    )
    index = DatasetIndex(
        root=root,
        layout="csv" if labels_csv else scan.layout,
        class_names=tuple(class_names),
        samples=samples,
        notes=tuple(scan.notes + notes),
        skipped=tuple((display_path(path), reason) for path, reason, _ in scan.skipped),
        ignored=len(scan.ignored),
        warnings=tuple(scan.warnings),
        readers=readers,
    )
    audit = audit_report(index, scan, checks, duplicates, stats)
    return dataclasses.replace(index, audit=audit)


# ---------------------------------------------------------------- reports


def _statistics(values):
    if not values:
        return None
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


def audit_report(index, scan, checks, duplicates, stats):
    """The audit as a JSON-ready dict (what audit.json holds): the
    inspection fields (`inspection_summary`) plus per-class counts, why
    files were ignored, image size/mode/format statistics, decoders,
    duplicates, the imbalance ratio and the audit's timing."""
    used = [checks[sample.path] for sample in index.samples]
    counts = index.counts()
    train = [count for count in counts["train"].values()]
    skipped_by_class = collections.Counter(label for _, _, label in scan.skipped)
    ignored = collections.defaultdict(list)
    for path, kind in scan.ignored:
        ignored[kind].append(display_path(path))
    return {
        **inspection_summary(index),
        "image_dir": index.root,
        "notes": list(index.notes),
        "files": {
            "usable": len(index.samples),
            "skipped": len(index.skipped),
            "ignored": index.ignored,
            "checked": stats["checked"],
            "from_cache": stats["from_cache"],
            "seconds": stats["seconds"],
        },
        "per_class": {
            name: {
                "usable": sum(counts[split][name] for split in SPLITS),
                "skipped": skipped_by_class[name],
            }
            for name in index.class_names
        },
        "ignored_files": {
            IGNORED_KINDS[kind]: {"count": len(paths), "examples": paths[:20]}
            for kind, paths in ignored.items()
        },
        "formats": dict(collections.Counter(check.format for check in used).most_common()),
        "modes": dict(collections.Counter(check.mode for check in used).most_common()),
        "decoders": dict(collections.Counter(check.decoder for check in used).most_common()),
        "decoded_in_python_because": dict(
            collections.Counter(
                check.decoder_note for check in used if check.decoder != "native"
            ).most_common()
        ),
        "alpha_background": list(ALPHA_BACKGROUND),
        "width": _statistics([check.width for check in used]),
        "height": _statistics([check.height for check in used]),
        "imbalance_ratio": round(max(train) / min(train), 3) if train and min(train) else None,
        "duplicates": [
            [
                {"path": display_path(sample.path), "class": sample.label, "split": sample.split}
                for sample in group
            ]
            for group in duplicates
        ],
        "readers": {
            extension: describe_reader(function) for extension, function in index.readers.items()
        },
    }


def inspection_summary(index):
    """The JSON object `python data_loader.py --json` prints, exactly:
    layout, classes, splits ({split: {class: n}}), skipped ([{path,
    reason}], paths relative to the dataset), ignored (a count), warnings."""
    return {
        "layout": index.layout,
        "classes": list(index.class_names),
        "splits": index.counts(),
        "skipped": [{"path": path, "reason": reason} for path, reason in index.skipped],
        "ignored": index.ignored,
        "warnings": list(index.warnings),
    }


def _count_phrase(counter):
    return ", ".join(f"{count} {name}" for name, count in counter.most_common())


def summary_lines(index, max_skipped=20, where="the audit"):
    """The audit and split as printable lines: what was checked, every
    skipped file with its reason (up to `max_skipped`), what was ignored,
    which files are decoded in Python and why, the split table, notes and
    warnings."""
    audit = index.audit
    files = audit["files"]
    if not files["from_cache"]:
        how = f"{files['checked']} files checked in {files['seconds']:.1f}s"
    elif not files["checked"]:
        how = f"{files['from_cache']} files unchanged since the last audit: results from its cache"
    else:
        how = (
            f"{files['checked']} new or changed files checked in {files['seconds']:.1f}s, "
            f"{files['from_cache']} unchanged from the cache"
        )
    lines = [
        f"audit: {files['usable']} files used, {files['skipped']} skipped, "
        f"{files['ignored']} ignored ({how})"
    ]
    if index.skipped:
        lines.append("skipped (not used for anything):")
        lines += [f"  {path}: {reason}" for path, reason in index.skipped[:max_skipped]]
        if len(index.skipped) > max_skipped:
            lines.append(f"  ... and {len(index.skipped) - max_skipped} more: see {where}")
    if audit["ignored_files"]:
        lines.append(
            "ignored: "
            + "; ".join(
                f"{entry['count']} {kind} (e.g. {entry['examples'][0]})"
                for kind, entry in audit["ignored_files"].items()
            )
        )
    python = collections.Counter(audit["decoded_in_python_because"])
    if python:
        how = "; transparent pixels are shown on white" if python["transparency"] else ""
        lines.append(f"decoded in Python: {sum(python.values())} ({_count_phrase(python)}){how}")
    lines += _split_lines(index)
    lines += [f"note: {note}" for note in index.notes]
    lines += [f"warning: {warning}" for warning in index.warnings]
    return lines


def _split_lines(index, max_classes=30):
    counts = index.counts()
    totals = {split: sum(counts[split].values()) for split in SPLITS}
    lines = [
        f"{index.layout} layout, {len(index.class_names)} classes, "
        + ", ".join(f"{split} {totals[split]}" for split in SPLITS)
        + " images"
    ]
    if len(index.class_names) > max_classes:
        return lines
    width = max(len("class"), *(len(name) for name in index.class_names))
    skipped = index.audit["per_class"]
    lines.append(f"  {'class':<{width}}  train    val   test  skipped")
    for name in index.class_names:
        lines.append(
            f"  {display_path(name):<{width}}  "
            + " ".join(f"{counts[split][name]:>6}" for split in SPLITS)
            + f" {skipped[name]['skipped']:>8}"
        )
    ratio = index.audit["imbalance_ratio"]
    if ratio and ratio > 1.5:
        lines.append(
            f"  imbalance: the largest class has {ratio:.1f}x the training images of the smallest"
        )
    return lines


# ---------------------------------------------------------------- tf.data


def _text(value):
    """A string from what tf.numpy_function passes (bytes, or a 0-d array)."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _probe_in_graph(path, readers):
    """numpy_function body: path -> its decoder's name as bytes."""
    return probe_decoder(_text(path), readers).encode("utf-8")


def _decode_in_python(path, decoder, readers):
    """numpy_function body: path + decoder name -> uint8 HxWx3."""
    path, decoder = _text(path), _text(decoder)
    if decoder == "pillow":
        return read_with_pillow(path)
    if decoder in readers:
        return as_rgb_uint8(readers[decoder](path), f"reader {describe_reader(readers[decoder])}")
    raise ValueError(f"no reader registered for {decoder} (file {path})")


def decode_in_python(path, decoder, readers=None):
    """A graph op reading one file in Python (Pillow or a custom reader):
    string tensors in, uint8 (height, width, 3) out. tf.data runs several
    at once (num_parallel_calls); Pillow and NumPy release the GIL while
    decoding."""
    import tensorflow as tf

    function = functools.partial(_decode_in_python, readers=_normalize_readers(readers))
    inputs = [tf.convert_to_tensor(path, tf.string), tf.convert_to_tensor(decoder, tf.string)]
    image = tf.numpy_function(function, inputs, tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def decode_file(path, decoder=None, readers=None):
    """Reads and decodes one image file to uint8 (height, width, 3).

    `decoder`: "native", "pillow" or a custom reader's extension (from the
    audit, see DatasetIndex.decoders), a string tensor of those, or None:
    the file's header decides (`probe_decoder`, as the audit would), read
    eagerly or, inside a graph, by a small Python op per file.
    """
    import tensorflow as tf

    if decoder is None:
        if tf.executing_eagerly():
            text = path.numpy().decode("utf-8") if hasattr(path, "numpy") else os.fspath(path)
            decoder = probe_decoder(text, readers)
        else:  # the header is read in Python, then the same branches
            probe = functools.partial(_probe_in_graph, readers=_normalize_readers(readers))
            decoder = tf.numpy_function(
                probe, [tf.convert_to_tensor(path, tf.string)], tf.string, stateful=False
            )
    if isinstance(decoder, str):
        if decoder == "native":
            return decode_native(tf.io.read_file(path))
        return decode_in_python(path, tf.constant(decoder), readers)
    return tf.cond(
        tf.equal(decoder, "native"),
        lambda: decode_native(tf.io.read_file(path)),
        lambda: decode_in_python(path, decoder, readers),
    )


def load_image(path, image_size, decoder=None, readers=None):
    """Reads one image file as the model sees it: uint8 (size, size, 3).

    The one decode function of training, evaluation and prediction, so an
    image looks the same in all three: the first frame, upright by its EXIF
    orientation, RGB, transparency on white, 16-bit scaled by bit depth,
    then resized (bilinear). `decoder` and `readers` as in `decode_file`.
    """
    import tensorflow as tf

    image = decode_file(path, decoder, readers)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def plan_decoders(paths, readers=None, workers=None):
    """The decoder of every file from its header (`probe_decoder`), in
    parallel. Raises UserError naming a file that is not a readable image."""

    def probe(path):
        try:
            return probe_decoder(path, readers)
        except Exception as error:  # the user's file, not a bug
            raise UserError(f"cannot read {display_path(path)}: {_error_text(error)}")

    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(probe, paths))


def memory_budget_bytes(fraction=0.25):
    """The RAM an in-memory image cache may take: a quarter of the memory
    available now (physical memory when that cannot be read)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 0
    if available <= 0:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 * 2**30
    return int(available * fraction)


def decide_cache(mode, num_images, image_size, budget=None):
    """Whether to keep decoded images in memory: (bool, one line saying why).

    `mode` is "memory", "none" or "auto" (memory only when the decoded,
    resized uint8 images fit `budget`, default memory_budget_bytes())."""
    needed = num_images * image_size * image_size * 3
    budget = memory_budget_bytes() if budget is None else budget
    gib = 2**30
    if mode == "none":
        return False, "streaming from disk (--cache none)"
    if mode == "memory":
        return True, f"decoded images cached in memory ({needed / gib:.2f} GiB, --cache memory)"
    if needed <= budget:
        return True, f"decoded images cached in memory: {needed / gib:.2f} GiB within the {budget / gib:.2f} GiB budget (--cache auto)"
    return False, f"streaming from disk: decoded images would take {needed / gib:.2f} GiB, over the {budget / gib:.2f} GiB budget (--cache auto)"


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the random augmentation; see config.Config."""

    flip: str = "horizontal"
    rotation: float = 15.0
    zoom: float = 0.1
    translation: float = 0.1
    contrast: float = 0.2


def _flip_signs(flip, batch, seed):
    """Per-image -1 (flip) or +1 for the horizontal and vertical axes."""
    import tensorflow as tf

    draws = tf.random.stateless_uniform([batch, 2], seed=seed) < 0.5
    signs = tf.where(draws, -1.0, 1.0)
    horizontal = signs[:, 0] if flip in ("horizontal", "both") else tf.ones([batch])
    vertical = signs[:, 1] if flip in ("vertical", "both") else tf.ones([batch])
    return horizontal, vertical


def augmentation_transforms(batch, height, width, strengths, seed):
    """Random flip + rotation + zoom + translation as one projective
    transform per image, in the 8-number form ImageProjectiveTransformV3
    takes (it maps output pixel coordinates to input coordinates).

    Composing them into one matrix means one interpolation pass per image
    instead of one per augmentation, which is both faster and sharper.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(seed, num=5)
    angle = tf.random.stateless_uniform(
        [batch], seed=seeds[0], minval=-1.0, maxval=1.0
    ) * (strengths.rotation * math.pi / 180.0)
    scale = tf.random.stateless_uniform(
        [batch], seed=seeds[1], minval=1.0 - strengths.zoom, maxval=1.0 + strengths.zoom
    )
    shift = tf.random.stateless_uniform(
        [batch, 2], seed=seeds[2], minval=-strengths.translation, maxval=strengths.translation
    ) * tf.constant([width, height], tf.float32)
    flip_x, flip_y = _flip_signs(strengths.flip, batch, seeds[3])

    # Output point p maps to input point c + R(angle) S(1/scale) F (p - c) - shift,
    # with c the image centre and F the flips.
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = cos * flip_x, -sin * flip_y
    b0, b1 = sin * flip_x, cos * flip_y
    a2 = center_x - a0 * center_x - a1 * center_y - shift[:, 0]
    b2 = center_y - b0 * center_x - b1 * center_y - shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1), seeds[4]


def _reflect(coordinates, size):
    """Mirrors coordinates that fall outside [0, size - 1] back inside."""
    import tensorflow as tf

    period = 2.0 * (size - 1)
    coordinates = tf.math.floormod(tf.abs(coordinates), period)
    return tf.where(coordinates > size - 1, period - coordinates, coordinates)


def _resample(images, transforms, contrast_factors):
    """Bilinear resampling of a uint8 batch through per-image affine
    transforms, then contrast, in one pass: four gathers and a blend in
    float32, rounded back to uint8. Compiled with XLA (see augment_batch)."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    rows, columns = tf.meshgrid(
        tf.range(height, dtype=tf.float32), tf.range(width, dtype=tf.float32), indexing="ij"
    )
    rows, columns = tf.reshape(rows, [1, -1]), tf.reshape(columns, [1, -1])
    a0, a1, a2, b0, b1, b2 = (transforms[:, i : i + 1] for i in range(6))
    source_x = _reflect(a0 * columns + a1 * rows + a2, width)
    source_y = _reflect(b0 * columns + b1 * rows + b2, height)
    left, top = tf.floor(source_x), tf.floor(source_y)
    weight_x, weight_y = (source_x - left)[..., None], (source_y - top)[..., None]
    left, top = tf.cast(left, tf.int32), tf.cast(top, tf.int32)
    right, bottom = tf.minimum(left + 1, width - 1), tf.minimum(top + 1, height - 1)
    pixels = tf.reshape(images, [-1, images.shape[3]])
    offsets = tf.reshape(tf.range(batch) * height * width, [-1, 1])

    def at(y, x):
        return tf.cast(tf.gather(pixels, offsets + y * width + x), tf.float32)

    upper = at(top, left) * (1 - weight_x) + at(top, right) * weight_x
    lower = at(bottom, left) * (1 - weight_x) + at(bottom, right) * weight_x
    blended = upper * (1 - weight_y) + lower * weight_y
    mean = tf.reduce_mean(blended, axis=[1, 2], keepdims=True)
    blended = (blended - mean) * contrast_factors[:, None, None] + mean
    blended = tf.clip_by_value(tf.floor(blended + 0.5), 0, 255)
    return tf.reshape(tf.cast(blended, tf.uint8), tf.shape(images))


@functools.lru_cache(maxsize=None)
def _compiled_resample():
    import tensorflow as tf

    return tf.function(_resample, jit_compile=True)


def augment_batch(images, seed, strengths):
    """Randomly augments a uint8 batch (B, H, W, 3); returns uint8.

    Flip, rotation, zoom and translation are one affine transform per
    image, and contrast is applied in the same pass, so each pixel is
    interpolated once. The pass is XLA-compiled: measured on 2 CPU cores it
    is about 3x faster than tf.raw_ops.ImageProjectiveTransformV3 (which
    Keras' RandomRotation/RandomZoom use) at 224 px. `seed` is a shape-[2]
    integer tensor: the same seed gives the same augmentation, so runs are
    reproducible, and each batch gets its own.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    transforms, contrast_seed = augmentation_transforms(
        batch, height, width, strengths, seed
    )
    factors = tf.random.stateless_uniform(
        [batch],
        seed=contrast_seed,
        minval=1.0 - strengths.contrast,
        maxval=1.0 + strengths.contrast,
    )
    return _compiled_resample()(images, transforms, factors)


def make_dataset(
    paths,
    labels,
    image_size,
    batch_size,
    training=False,
    augment=None,
    seed=42,
    decoders=None,
    readers=None,
    cache=False,
):
    """A tf.data pipeline of (uint8 images, int32 labels) batches.

    `training` shuffles (reshuffled every epoch, seeded); `augment` (an
    AugmentConfig or None) augments, and only when training: validation and
    test data are never shuffled or augmented. Every file appears exactly
    once per epoch, the last batch may be partial. `decoders` (one per
    path, from DatasetIndex.decoders; None: read from the files' headers)
    and `readers` (custom readers, {".ext": function}) choose how each file
    is decoded (see `load_image`); files TensorFlow decodes stay native.
    `cache` (True, or "memory"/"auto"/"none" resolved by `decide_cache`)
    keeps the decoded, resized uint8 images in memory after the first
    epoch: later epochs only shuffle, batch and augment.
    """
    import tensorflow as tf

    if isinstance(cache, str):
        cache, _ = decide_cache(cache, len(paths), image_size)
    paths = list(paths)
    decoders = list(decoders) if decoders is not None else plan_decoders(paths, readers)
    if len(decoders) != len(paths):
        raise ValueError(f"one decoder per path: {len(decoders)} decoders for {len(paths)} paths")
    dataset = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant(paths, tf.string),
            tf.constant(labels, tf.int32),
            tf.constant(decoders or [], tf.string),
        )
    )
    # Streaming shuffles the paths before decoding (only paths are held);
    # cached, the shuffle comes after the cache so each epoch is still
    # reshuffled (the shuffle buffer shares the cached tensors, no copy).
    # Both orders are the same permutation for the same seed.
    if training and not cache:
        dataset = dataset.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    # With one decoder for every file, no per-file branch: an all-native
    # dataset is a pure TensorFlow graph, as fast as it gets.
    single = decoders[0] if len(set(decoders)) == 1 else None
    dataset = dataset.map(
        lambda path, label, decoder: (
            load_image(path, image_size, single or decoder, readers),
            label,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if cache:
        dataset = dataset.cache()
        if training:
            dataset = dataset.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if training and augment is not None:
        # One seed pair per batch, drawn afresh every epoch from a seeded
        # stream: a different augmentation each epoch, the same ones per run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: (
                augment_batch(batch[0], batch_seed, augment),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        description="Inspect a dataset without training: layout detection, "
        "the audit of every file, and the train/val/test split."
    )
    config.add_shared_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print exactly one JSON object to stdout: layout, classes, "
        "splits, skipped, ignored, warnings",
    )
    return parser


def index_from_args(args):
    """`index_dataset` with the shared command-line options, the audit
    cached in ARTIFACTS_DIR (never inside the dataset)."""
    return index_dataset(
        args.image_dir,
        args.val_split,
        args.test_split,
        args.seed,
        labels_csv=args.labels_csv,
        classes=args.classes,
        readers=load_readers(args.reader),
        cache_dir=os.path.join(args.artifacts_dir, AUDIT_CACHE_FOLDER),
        progress=ProgressLine(),
    )


def check_outside(name, path, image_dir):
    """Raises UserError when an output folder `path` lies inside the
    dataset: nothing is ever written there."""
    if os.path.isdir(image_dir) and is_inside(path, image_dir):
        raise UserError(
            f"{name} must be outside image_dir: nothing is written inside "
            f"the dataset. Received: {name}={path}"
        )


def inspect_dataset(argv=None):
    """Runs the audit and split of `--image_dir` and prints them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    args = build_parser().parse_args(argv)
    if not args.image_dir:
        raise UserError("image_dir is required. Received: image_dir=None")
    config.validate_data_args(args)
    index = index_from_args(args)
    if args.json:
        print(json.dumps(inspection_summary(index), ensure_ascii=False))
        return index
    print(f"Dataset: {display_path(index.root)}")
    for line in summary_lines(index, max_skipped=50, where="--json"):
        print(f"    {line}")
    print(f"    audit cache: {audit_cache_path(os.path.join(args.artifacts_dir, AUDIT_CACHE_FOLDER), index.root)}")
    return index


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return config.run_cli(inspect_dataset, argv)


if __name__ == "__main__":
    sys.exit(main())
