"""Which files are the dataset, how they are split, and how batches flow.

Three steps, kept apart so each can be tested and reused:
1. `index_dataset` finds the candidate files (`scan_dataset`: class
   folders, pre-split folders or a labels CSV), has every one audited
   (audit.py: is it really an image, which decoder reads it) and splits the
   usable ones into train/val/test. It returns plain data, a DatasetIndex.
   The only thing it writes is the audit's cache, which lives outside the
   dataset folder; the user's files are only ever opened for reading.
2. `make_dataset` turns a list of files into a tf.data pipeline: shuffle
   (train only), parallel read + decode + resize (image_io.load_image, the
   one decode path of training, evaluation and prediction), batch, augment
   (train only, `augment_batch`), prefetch. Only file paths live in memory;
   images are read as the pipeline runs. Images stay uint8 all the way: the
   model normalizes them itself, so the saved model takes raw 0-255 pixels.
   With several workers, train_utils.worker_dataset_fn gives each its
   share of the files.
3. `python data_loader.py --image_dir DIR [--json]` runs step 1 and prints
   what it found, without training.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import sys

import numpy as np

import artifacts
import audit
import augment as augmentation  # make_dataset has an `augment` parameter
import config
import image_io
from config import UserError

SPLITS = ("train", "val", "test")
# Split folder names (and a labels CSV's split values), matched in any
# case: Kaggle's sets ship Training/ and Testing/, others dev/ or valid/.
SPLIT_FOLDER_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test", "testing"),
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
    skipped: tuple = ()  # audit.SkippedFile, paths relative to root
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
    """The split manifest of an index: one artifacts.ManifestRow per image."""
    return [
        artifacts.ManifestRow(sample.path, sample.label, sample.split) for sample in index.samples
    ]


# ---------------------------------------------------------------- finding files


def is_hidden(name):
    return name.startswith(".")


def is_image_file(name, extensions=IMAGE_EXTENSIONS):
    return image_io.file_extension(name) in extensions


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
    skipped: list = dataclasses.field(default_factory=list)  # audit.SkippedFile
    ignored: list = dataclasses.field(default_factory=list)  # (path, kind)
    warnings: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    fixed_splits: bool = False
    problems: list = dataclasses.field(default_factory=list)  # WalkProblem


@dataclasses.dataclass(frozen=True)
class WalkProblem:
    """A folder that could not be listed ("unreadable") or a link that was
    not followed because it leads back up the tree ("link_up"), with the
    reason or the link's target."""

    kind: str
    path: str
    detail: str


def _classify_name(name, is_folder, extensions):
    """None for a file or folder to use, else why it is ignored."""
    if name.lower() in (OS_JUNK_FOLDERS if is_folder else OS_JUNK_FILES):
        return "os_junk"
    if is_hidden(name):
        return "hidden"
    if not is_folder and not is_image_file(name, extensions):
        return "other_extension"
    return None


def _entry_type(entry):
    """"folder" or "file" (a regular file), links followed; "broken" for a
    link to nothing or a loop of links (the audit reports it as unreadable);
    "special" for a FIFO, socket or device, which is never opened: reading a
    FIFO waits for a writer forever."""
    try:
        if entry.is_dir():
            return "folder"
        if entry.is_file():
            return "file"
    except OSError:  # a loop of links: ELOOP
        return "broken"
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "broken"
    return "special"


def _leads_up(path, real_folder, real_root):
    """Whether the link `path` resolves to `real_root`, `real_folder` or a
    folder above either: following it would walk folders (other classes)
    again under this one."""
    target = os.path.realpath(path)
    return any(os.path.commonpath([target, real]) == target for real in (real_folder, real_root))


def _sorted_entries(folder):
    """The entries of `folder` sorted by name. Raises OSError."""
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda entry: entry.name)


def walk_images(folder, root, extensions=IMAGE_EXTENSIONS, ignored=None, problems=None):
    """Yields the image files under `folder` (nested subfolders included)
    as paths relative to `root`, sorted within each folder.

    Only regular files are yielded, and links that resolve to nothing (the
    audit reports them). Links are followed, each real folder once, except
    links back up the tree (to `root`, or to the folder being walked or one
    above it), which would pull other folders' images in. Appends (path,
    kind) for everything ignored to `ignored`, and a WalkProblem for each
    folder that cannot be read or link not followed to `problems`.
    """
    ignored = [] if ignored is None else ignored
    problems = [] if problems is None else problems
    real_root = os.path.realpath(root)
    seen = set()
    pending = [folder]  # depth first, each folder's files before its subfolders
    while pending:
        current = pending.pop()
        real = os.path.realpath(current)
        if real in seen:  # reached again through another link
            continue
        seen.add(real)
        try:
            entries = _sorted_entries(current)
        except OSError as error:
            problems.append(
                WalkProblem("unreadable", _relative(current, root) + "/", error.strerror or str(error))
            )
            continue
        subfolders = []
        for entry in entries:
            relative = _relative(entry.path, root)
            entry_type = _entry_type(entry)
            kind = _classify_name(entry.name, entry_type == "folder", extensions)
            if kind:
                ignored.append((relative + ("/" if entry_type == "folder" else ""), kind))
            elif entry_type == "special":
                ignored.append((relative, "not_regular_file"))
            elif entry_type != "folder":
                yield relative
            elif entry.is_symlink() and _leads_up(entry.path, real, real_root):
                problems.append(WalkProblem("link_up", relative, os.readlink(entry.path)))
            else:
                subfolders.append(entry.path)
        pending.extend(reversed(subfolders))


def list_images(folder, root, extensions=IMAGE_EXTENSIONS, ignored=None, problems=None):
    """Image files under `folder` (nested subfolders included, hidden ones
    skipped), as sorted paths relative to `root` with forward slashes;
    `ignored` and `problems` as in walk_images."""
    return sorted(walk_images(folder, root, extensions, ignored, problems))


def class_folders(folder):
    """Sorted names of the visible, non-junk subfolders of `folder` (links
    back up the tree left out). Raises OSError when it cannot be read."""
    real = os.path.realpath(folder)
    return [
        entry.name
        for entry in _sorted_entries(folder)
        if _entry_type(entry) == "folder"
        and _classify_name(entry.name, True, ()) is None
        and not (entry.is_symlink() and _leads_up(entry.path, real, real))
    ]


def _split_of(name):
    """"train", "val" or "test" for a split folder name (any case), else None."""
    return next(
        (split for split, aliases in SPLIT_FOLDER_NAMES.items() if name.lower() in aliases), None
    )


def find_split_folders(image_dir):
    """{split: folder name} for the split folders present in `image_dir`,
    names matched case-insensitively to SPLIT_FOLDER_NAMES' aliases
    (`Training/` is train). Raises UserError when there is a train folder
    and two folders are the same split (`val/` and `validation/`): which to
    use cannot be guessed. Raises OSError when `image_dir` cannot be read."""
    matches = collections.defaultdict(list)
    for name in class_folders(image_dir):
        if _split_of(name):
            matches[_split_of(name)].append(name)
    twice = [names for names in matches.values() if len(names) > 1]
    if "train" in matches and twice:
        raise UserError(
            f"two folders are the {_split_of(twice[0][0])} split: "
            + " and ".join(f"{image_io.display_path(name)}/" for name in twice[0])
            + "; merge them or rename one. "
            f"Received: image_dir={image_io.display_path(image_dir)}"
        )
    return {split: names[0] for split, names in matches.items()}


def _looks_like_dataset(folder):
    """Whether `folder` holds a train folder or at least 2 class folders."""
    return "train" in find_split_folders(folder) or len(class_folders(folder)) >= 2


def find_dataset_folder(root, extensions=IMAGE_EXTENSIONS, max_depth=3):
    """The folder the dataset starts in: `root` itself, or, when `root`
    holds nothing but one folder (an archive unpacked as-is:
    DIR/flowers/<class>/..., perhaps beside __MACOSX/ and .DS_Store), that
    folder if it holds split folders or 2+ class folders, looked for up to
    `max_depth` levels down. Returns (folder, [(path, kind)] of what was
    passed over, relative to `root`). Raises OSError."""
    current, passed = root, []
    real_root = os.path.realpath(root)
    for _ in range(max_depth):
        if "train" in find_split_folders(current):
            break
        entries = _sorted_entries(current)
        types = {entry.name: _entry_type(entry) for entry in entries}
        kinds = {
            entry.name: _classify_name(entry.name, types[entry.name] == "folder", extensions)
            for entry in entries
        }
        visible = [entry for entry in entries if kinds[entry.name] is None]
        if len(visible) != 1 or types[visible[0].name] != "folder":
            break
        inner = visible[0]
        if inner.is_symlink() and _leads_up(inner.path, os.path.realpath(current), real_root):
            break
        passed += [
            (_relative(entry.path, root) + ("/" if types[entry.name] == "folder" else ""),
             kinds[entry.name])
            for entry in entries
            if entry is not inner
        ]
        current = inner.path
        if _looks_like_dataset(current):
            return current, passed
    return root, []


def _scan_class_folders(scan, folder, root, split, extensions):
    """Adds the classes of `folder` (one subfolder per class) to `scan`;
    files lying in `folder` itself belong to no class and are ignored."""
    loose = []
    real = os.path.realpath(folder)
    for entry in _sorted_entries(folder):
        relative = _relative(entry.path, root)
        entry_type = _entry_type(entry)
        kind = _classify_name(entry.name, entry_type == "folder", extensions)
        if kind:
            scan.ignored.append((relative + ("/" if entry_type == "folder" else ""), kind))
        elif entry_type == "special":
            scan.ignored.append((relative, "not_regular_file"))
        elif entry_type != "folder":
            loose.append(relative)
        elif entry.is_symlink() and _leads_up(entry.path, real, os.path.realpath(root)):
            scan.problems.append(WalkProblem("link_up", relative, os.readlink(entry.path)))
        else:
            scan.classes.setdefault(entry.name, []).append(relative)
            for path in walk_images(entry.path, root, extensions, scan.ignored, scan.problems):
                scan.candidates.append(Candidate(path, entry.name, split))
    if loose:
        scan.ignored.extend((path, "outside_class_folder") for path in loose)
        where = _relative(folder, root) if folder != root else "the dataset folder"
        scan.warnings.append(
            f"{len(loose)} image(s) lie directly in {image_io.display_path(where)} (e.g. "
            f"{image_io.display_path(loose[0])}), outside any class folder: ignored; "
            "move each into its class folder to use it"
        )


def _same_subfolders_warning(scan, root):
    """A warning when every class folder of a flat layout holds the same
    subfolders (DIR/a/{x,y}, DIR/b/{x,y}): most likely splits, under names
    that are not recognised or below the classes instead of above them;
    their images are read as nested images of each class."""
    if len(scan.classes) < 2:
        return
    try:
        subfolders = {
            tuple(class_folders(os.path.join(root, folders[0])))
            for folders in scan.classes.values()
        }
    except OSError:  # reported by the walk
        return
    names = next(iter(subfolders))
    splits = [name for name in names if _split_of(name)]
    if len(subfolders) != 1 or not (len(names) > 1 or splits):
        return
    listed = ", ".join(image_io.display_path(name) for name in names)
    if splits:
        advice = (
            "split folders belong above the class folders, DIR/<split>/<class>/..., "
            "to be used as splits"
        )
    else:
        advice = (
            "if they are splits, name them train/val/test (or training, validation, "
            "testing, dev; any case) with the classes inside, DIR/train/<class>/..."
        )
    scan.warnings.append(
        f"every class folder holds the same subfolders ({listed}): {advice}; "
        "for now their images count as nested images of each class, split automatically"
    )


def _problem_warnings(problems, limit=5):
    """One warning per kind of WalkProblem, naming the first few."""
    lines = []
    unreadable = [problem for problem in problems if problem.kind == "unreadable"]
    if unreadable:
        lines.append(
            f"{len(unreadable)} folder(s) could not be read, their images are left out: "
            + ", ".join(
                f"{image_io.display_path(problem.path)} ({problem.detail})"
                for problem in unreadable[:limit]
            )
            + (" ..." if len(unreadable) > limit else "")
        )
    links = [problem for problem in problems if problem.kind == "link_up"]
    if links:
        lines.append(
            f"{len(links)} link(s) back up the tree not followed (they would add "
            "other folders' images again): "
            + ", ".join(
                f"{image_io.display_path(problem.path)} -> {image_io.display_path(problem.detail)}"
                for problem in links[:limit]
            )
            + (" ..." if len(links) > limit else "")
        )
    return lines


def _scan_split_folders(scan, top, root, split_folders, extensions):
    """Adds the classes of each split folder of `top` to `scan`; whatever
    else `top` holds is ignored (other folders with a note)."""
    used = set(split_folders.values())
    for entry in _sorted_entries(top):
        if entry.name in used:
            continue
        entry_type = _entry_type(entry)
        kind = _classify_name(entry.name, entry_type == "folder", extensions)
        if kind is None and entry_type == "folder":
            kind = "other_folder"
        elif kind is None:
            kind = "outside_class_folder"
        relative = _relative(entry.path, root)
        scan.ignored.append((relative + ("/" if entry_type == "folder" else ""), kind))
    for split, folder in split_folders.items():
        _scan_class_folders(scan, os.path.join(top, folder), root, split, extensions)
    others = [path for path, kind in scan.ignored if kind == "other_folder"]
    if others:
        scan.notes.append(
            "pre-split layout: ignored folder(s) that are not train/val/test: "
            + ", ".join(image_io.display_path(path) for path in others)
        )


def scan_folder(root, extensions=IMAGE_EXTENSIONS):
    """Scans a pre-split (train/val/test folders, or their aliases) or flat
    (class folders) dataset, in `root` or in the one folder an unpacked
    archive left in it (find_dataset_folder). Returns a Scan; opens no
    file. Raises OSError when `root` or a split folder cannot be read."""
    top, passed = find_dataset_folder(root, extensions)
    split_folders = find_split_folders(top)
    if "train" not in split_folders:
        scan = Scan(layout="flat")
        _scan_class_folders(scan, top, root, None, extensions)
        _same_subfolders_warning(scan, root)
    else:
        scan = Scan(layout="presplit", fixed_splits=True)
        _scan_split_folders(scan, top, root, split_folders, extensions)
    if top != root:
        scan.ignored[:0] = passed
        scan.notes.insert(
            0,
            f"the dataset folder holds only {image_io.display_path(_relative(top, root))}/ "
            "(besides junk, hidden and non-image files, as an archive unpacks): using it as the dataset",
        )
    scan.warnings.extend(_problem_warnings(scan.problems))
    return scan


def scan_dataset(root, labels_csv=None, readers=None):
    """The labelled candidate files of a dataset, before any is opened: from
    `labels_csv` when given, else from the folder layout (pre-split or
    flat), custom readers' extensions included. The one way of listing
    labelled files, for training (index_dataset) and evaluation. Returns a
    Scan; raises UserError for a CSV that cannot be used or a folder that
    cannot be read."""
    if labels_csv:
        return scan_csv(root, labels_csv)
    extensions = tuple(set(IMAGE_EXTENSIONS) | set(image_io.normalize_readers(readers)))
    try:
        return scan_folder(root, extensions)
    except OSError as error:
        where = image_io.display_path(str(error.filename or root))
        raise UserError(
            f"cannot read {where}: {error.strerror or error}. "
            f"Received: image_dir={image_io.display_path(root)}"
        ) from None


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
        "training, valid, validation, dev, testing; any case), or empty. "
        f"Received: split={value} in {csv_path}"
    )


def _read_csv_rows(csv_path):
    if not csv_path or not os.path.isfile(csv_path):
        raise UserError(f"labels_csv is not a file. Received: labels_csv={csv_path}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = [row for row in reader]
    except UnicodeDecodeError:
        raise UserError(f"labels_csv must be UTF-8 text. Received: labels_csv={csv_path}")
    except csv.Error as error:  # most often a quote never closed, swallowing the rest
        raise UserError(
            f"labels_csv line {reader.line_num} cannot be read: {error} (an unclosed "
            f'quote " makes one cell of the rest of the file). Received: labels_csv={csv_path}'
        ) from None
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
                audit.SkippedFile(
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
                audit.SkippedFile(
                    filename,
                    f"outside image_dir: labels_csv row {number} points outside the "
                    "dataset folder (rejected)",
                    label,
                )
            )
            continue
        if not os.path.isfile(real):
            reason = (
                "not a regular file (a folder, FIFO, socket or device)"
                if os.path.exists(real)
                else "not found"
            )
            scan.skipped.append(
                audit.SkippedFile(
                    filename,
                    f"{reason}: labels_csv row {number} names "
                    + ("it" if os.path.exists(real) else "a file that does not exist"),
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
            audit.SkippedFile(
                relative,
                "conflicting labels in labels_csv: " + ", ".join(labels),
                seen.pop(relative)[1],
            )
        )
    number, relative, _ = duplicates[0]
    scan.warnings.append(
        f"labels_csv lists {len(duplicates)} file(s) more than once (e.g. "
        f"{image_io.display_path(relative)} again in row {number}); each file is used once"
        + (f", and {len(conflicts)} with conflicting labels are skipped" if conflicts else "")
    )


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
                f"{', '.join(image_io.display_path(found) for found in _ordered_classes(scan))}). "
                f"Received: classes={','.join(classes)}"
            )
    others = [name for name in scan.classes if name not in classes]
    scan.ignored.extend(
        (candidate.path, "not_in_classes")
        for candidate in scan.candidates
        if candidate.label not in classes
    )
    scan.candidates = [candidate for candidate in scan.candidates if candidate.label in classes]
    scan.skipped = [item for item in scan.skipped if item.label in classes]
    if others:
        scan.notes.append(
            "--classes: ignored the other class(es): "
            + ", ".join(image_io.display_path(name) for name in sorted(others))
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
    skipped = collections.Counter(item.label for item in scan.skipped)
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
            f"class '{image_io.display_path(name)}' has no usable images ({_emptiness(name, skipped)}): "
            f"excluded; training on the other {len(kept)} class(es)"
        )
    if len(kept) < 2:
        detail = f" ({', '.join(image_io.display_path(name) for name in kept)})" if kept else ""
        if excluded:
            detail += "; without usable images: " + ", ".join(
                image_io.display_path(name) for name in excluded
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


# ---------------------------------------------------------------- index_dataset


def _check_image_dir(image_dir, cache_dir):
    if not image_dir or not os.path.isdir(image_dir):
        raise UserError(f"image_dir is not a folder. Received: image_dir={image_dir}")
    if cache_dir and artifacts.is_inside(cache_dir, image_dir):
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

    Layouts: pre-split (`train/`, `val/`, `test/` or their aliases in any
    case, SPLIT_FOLDER_NAMES, each with class folders; a missing val or
    test split is carved out of train), flat (class folders, split per
    class), either one possibly inside the one folder an unpacked archive
    left (find_dataset_folder), or `labels_csv` (filename,label and an
    optional split column). `classes` (names) keeps those classes in
    that order. `readers` ({".ext": function}) adds custom readers. Every
    candidate file is audited (`audit.audit_files`, cached in `cache_dir`); only
    usable files are split, and identical files stay in one split. Classes
    with no usable image are excluded with a warning.

    Returns a DatasetIndex. Raises UserError for a missing folder, fewer
    than 2 usable classes, a class missing from a split or too small to
    split, a bad CSV or --classes name.
    """
    root = _check_image_dir(image_dir, cache_dir)
    readers = image_io.normalize_readers(readers)
    scan = scan_dataset(root, labels_csv, readers)
    _apply_classes(scan, classes)
    checks, stats = audit.audit_files(
        root, [c.path for c in scan.candidates], readers, cache_dir, workers, progress
    )
    checks = dict(zip((c.path for c in scan.candidates), checks))
    for candidate in scan.candidates:
        if not checks[candidate.path].usable:
            check = checks[candidate.path]
            scan.skipped.append(audit.SkippedFile(check.path, check.reason, candidate.label))
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
    duplicates = audit.duplicate_groups(samples, checks)
    scan.warnings.extend(
        audit.duplicate_warnings(duplicates, auto_split=not scan.fixed_splits or bool(notes))
    )
    index = DatasetIndex(
        root=root,
        layout="csv" if labels_csv else scan.layout,
        class_names=tuple(class_names),
        samples=samples,
        notes=tuple(scan.notes + notes),
        skipped=tuple(
            dataclasses.replace(item, path=image_io.display_path(item.path)) for item in scan.skipped
        ),
        ignored=len(scan.ignored),
        warnings=tuple(scan.warnings),
        readers=readers,
    )
    report = audit.audit_report(index, scan, checks, duplicates, stats)
    return dataclasses.replace(index, audit=report)


# ---------------------------------------------------------------- tf.data


def plan_decoders(paths, readers=None, workers=None):
    """The decoder of every file from its header (`image_io.probe_decoder`), in
    parallel. Raises UserError naming a file that is not a readable image."""

    def probe(path):
        try:
            return image_io.probe_decoder(path, readers)
        except Exception as error:  # the user's file, not a bug
            raise UserError(f"cannot read {image_io.display_path(path)}: {image_io.error_text(error)}")

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
    repeat=False,
    pad_to=None,
):
    """A tf.data pipeline of (uint8 images, int32 labels) batches.

    `training` shuffles (reshuffled every epoch, seeded); `augment` (an
    AugmentConfig or None) augments, and only when training: validation and
    test data are never shuffled or augmented. Every file appears exactly
    once per epoch, the last batch may be partial; with `repeat` the files
    come round again endlessly, reshuffled each pass, so every batch is full
    (the caller counts the steps of an epoch). `pad_to` adds blank images
    labelled -1 after the files until there are `pad_to` examples (see
    train_utils.worker_dataset_fn). `decoders` (one per
    path, from DatasetIndex.decoders; None: read from the files' headers)
    and `readers` (custom readers, {".ext": function}) choose how each file
    is decoded (see `image_io.load_image`); files TensorFlow decodes stay native.
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
    if repeat and not cache:
        dataset = dataset.repeat()
    # With one decoder for every file, no per-file branch: an all-native
    # dataset is a pure TensorFlow graph, as fast as it gets.
    single = decoders[0] if len(set(decoders)) == 1 else None
    dataset = dataset.map(
        lambda path, label, decoder: (
            image_io.load_image(path, image_size, single or decoder, readers),
            label,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if cache:
        dataset = dataset.cache()
        if training:
            dataset = dataset.shuffle(max(1, len(paths)), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    if pad_to is not None and pad_to > len(paths):
        blank = (tf.zeros([image_size, image_size, 3], tf.uint8), tf.constant(-1, tf.int32))
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(blank).repeat(pad_to - len(paths)))
    dataset = dataset.batch(batch_size)
    if training and augment is not None:
        # One seed pair per batch, drawn afresh every epoch from a seeded
        # stream: a different augmentation each epoch, the same ones per run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda batch, batch_seed: (
                augmentation.augment_batch(batch[0], batch_seed, augment),
                batch[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- command line


def build_parser():
    parser = config.ArgumentParser(
        description="Inspect a dataset without training: layout detection, "
        "the audit of every file, and the train/val/test split."
    )
    config.add_shared_arguments(parser)
    config.add_split_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="Print exactly one JSON object to stdout: layout, classes, "
        "splits, skipped, ignored, warnings",
    )
    return parser


def inspect_dataset(argv=None):
    """Runs the audit and split of `--image_dir` and prints them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    args = build_parser().parse_args(argv)
    if not args.image_dir:
        raise UserError("image_dir is required. Received: image_dir=None")
    config.validate_data_args(args)
    config.check_outside("artifacts_dir", args.artifacts_dir, args.image_dir)
    cache_dir = artifacts.audit_cache_dir(args.artifacts_dir)
    index = index_dataset(
        args.image_dir,
        val_split=args.val_split,
        test_split=args.test_split,
        seed=args.seed,
        labels_csv=args.labels_csv,
        classes=args.classes,
        readers=config.load_readers(args.reader),
        cache_dir=cache_dir,
        progress=audit.ProgressLine(),
    )
    if args.json:
        print(json.dumps(audit.inspection_summary(index), ensure_ascii=False))
        return index
    print(f"Dataset: {image_io.display_path(index.root)}")
    for line in audit.summary_lines(index, max_skipped=50, where="--json"):
        print(f"    {line}")
    print(f"    audit cache: {audit.audit_cache_path(cache_dir, index.root)}")
    return index


def main(argv=None):
    """Entry point; returns the exit code (2 for a user mistake)."""
    return config.run_cli(inspect_dataset, argv)


if __name__ == "__main__":
    sys.exit(main())
