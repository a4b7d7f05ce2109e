"""Which files are the dataset: the layouts, the walk, split folder names
and a labels CSV, before any file is opened.

`scan_dataset` lists the labelled candidate files of a dataset folder:
class folders (flat), split folders of class folders (pre-split, with the
usual aliases in any case: Training/, valid/, dev/...), either one possibly
inside the one folder an unpacked archive left (`find_dataset_folder`), or
the rows of a `--labels_csv`. It returns a Scan (candidates, what was
ignored and why, warnings, notes) and opens no file: whether each one is a
usable image is audit.py's question, how the usable ones are split is
splits.py's. The walk follows links (each real folder once, never back up
the tree), reads only regular files and never writes anything.
"""

import collections
import csv
import dataclasses
import os
import re

import audit
import image_io
from errors import UserError

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
    group: str = ""  # a labels CSV's group column (images that must share a split)
    # Multi-label: the image's labels (a tuple of names, maybe empty); None
    # for one class per image. `label` is then the set as the CSV wrote it.
    labels: tuple | None = None


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
    multi_label: bool = False  # a labels CSV with several labels per image (candidates' `labels`)
    grouped_by_column: bool = False  # --group_by named a column of the labels CSV


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


def check_labelled_folder(image_dir):
    """Refuses a folder of unlabelled images only (no class folder): said
    before TensorFlow starts, with the way to predict such images, instead
    of "need at least 2 classes" after the scan. Raises UserError."""
    loose = loose_images_only(image_dir)
    if loose:
        raise UserError(
            f"image_dir holds {loose} image(s) and no class folders, so it has no labels: a labelled folder is "
            f"DIR/<class>/... (or give --labels_csv); to predict new, unlabelled images, use "
            f"python predict.py --images {image_dir}. Received: image_dir={image_dir}"
        )


def loose_images_only(folder):
    """How many image files lie directly in `folder` when it has no class
    folder at all: a folder of new, unlabelled images, which cannot train
    or be scored (0 when it has a subfolder, no image, or cannot be
    read). Looks at one level only, so it is quick enough to check before
    TensorFlow starts."""
    try:
        if class_folders(folder):
            return 0
        entries = _sorted_entries(folder)
    except OSError:
        return 0
    return sum(1 for entry in entries if _entry_type(entry) == "file"
               and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)


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


def scan_dataset(root, labels_csv=None, readers=None, reading=None):
    """The labelled candidate files of a dataset, before any is opened: from
    `labels_csv` when given, else from the folder layout (pre-split or
    flat), custom readers' extensions included. The one way of listing
    labelled files, for training (index_dataset) and evaluation. Returns a
    Scan; raises UserError for a CSV that cannot be used or a folder that
    cannot be read."""
    if labels_csv:
        return scan_csv(root, labels_csv, reading or LabelReading())
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
    "label": ("label", "labels", "class"),
    "split": ("split",),
    "group": ("group",),
}

# The values of a one-column-per-label CSV (CheXpert style): 1 present;
# 0, an empty cell and -1 ("uncertain") absent, as CheXpert's "U-Zeros"
# policy reads them (a label a radiologist was unsure of is not trained as
# present).
WIDE_VALUES = {"1": True, "1.0": True, "0": False, "0.0": False, "": False, "-1": False, "-1.0": False}


@dataclasses.dataclass(frozen=True)
class LabelReading:
    """How a labels CSV's labels are read (the options of the same names):
    which columns, what separates several labels in a cell, whether the
    task is multi-label (None: decided from the labels) and which label
    value means "none of them". `group_column`: a column whose value is
    each image's group (--group_by naming a column)."""

    path_column: str | None = None
    label_column: str | None = None
    delimiter: str = ";"
    multi_label: int | None = None
    no_label: str | None = None
    group_column: str | None = None

    @property
    def separator(self):
        """The delimiter, with a typed backslash-t read as a tab."""
        return "\t" if self.delimiter == "\\t" else self.delimiter


def _named_column(names, header, wanted, option, csv_path):
    if wanted.strip().lower() not in names:
        raise UserError(
            f"labels_csv has no column '{wanted}' (--{option}); its columns are "
            f"{', '.join(header)}. Received: {option}={wanted} in {csv_path}"
        )
    return names.index(wanted.strip().lower())


def _csv_columns(header, csv_path, reading=LabelReading()):
    """{column: index} from the CSV header, and the columns of a
    one-column-per-label CSV ({label name: index}, empty otherwise).
    Raises UserError."""
    names = [name.strip().lower() for name in header]
    columns = {}
    for column, aliases in CSV_COLUMNS.items():
        for alias in aliases:
            if alias in names:
                columns[column] = names.index(alias)
                break
    for column, wanted, option in (("filename", reading.path_column, "path_column"),
                                   ("label", reading.label_column, "label_column")):
        if wanted:
            columns[column] = _named_column(names, header, wanted, option, csv_path)
    if reading.group_column and reading.group_column.strip().lower() in names:
        # --group_by names a column (NIH's "Patient ID"), not a pattern of paths
        columns["group"] = names.index(reading.group_column.strip().lower())
    if "filename" not in columns:
        raise UserError(
            "labels_csv needs a header row with the columns filename,label (and optionally split), "
            "or --path_column naming its column of file names. "
            f"Received: header={','.join(header)} in {csv_path}"
        )
    return columns


def _wide_columns(rows, columns):
    """{label: index} of the columns that hold only 1/0/-1/empty (one
    column per label), when the CSV has no label column."""
    taken = set(columns.values())
    wide = {}
    for position, name in enumerate(rows[0]):
        values = {row[position].strip() if position < len(row) else "" for row in rows[1:]}
        if position not in taken and name.strip() and values <= set(WIDE_VALUES) and values & {"1", "1.0"}:
            wide[name.strip()] = position
    return wide


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
    labels = [label for row in rows for label in row[2]]
    if labels and all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        for row in rows:
            row[2] = tuple(str(int(label)) for label in row[2])


def _cell_labels(cell, reading):
    """The labels of one label cell: split by the delimiter, blanks and the
    --no_label value dropped, each once, in the order given."""
    parts = [part.strip() for part in cell.split(reading.separator)] if cell.strip() else []
    return tuple(dict.fromkeys(part for part in parts if part and part != reading.no_label))


def _is_multi_label(parsed, reading, wide, csv_path):
    """Whether the CSV makes a multi-label run: --multi_label when given
    (0 refuses a row with several labels), else a one-column-per-label CSV,
    a --no_label value, or any row with several labels."""
    several = next(((number, labels) for number, _, labels, *_ in parsed if len(labels) > 1), None)
    if reading.multi_label == 0:
        if several or wide:
            number, labels = several or (2, tuple(wide))
            raise UserError(
                f"--multi_label 0, but labels_csv row {number} holds several labels "
                f"({reading.separator.join(labels)}): drop --multi_label 0 to train a multi-label model. "
                f"Received: labels_csv={csv_path}"
            )
        return False
    return bool(reading.multi_label or wide or reading.no_label or several)


def _parsed_rows(rows, columns, wide, reading, csv_path):
    """[row number, filename, labels (tuple), split, group] of every row
    with any content."""
    parsed = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        filename, label, split, group = (_csv_cell(row, columns, name) for name in CSV_COLUMNS)
        if wide:
            labels = tuple(name for name, position in wide.items()
                           if WIDE_VALUES[row[position].strip() if position < len(row) else ""])
        else:
            labels = _cell_labels(label, reading)
        parsed.append([number, filename, labels, _csv_split(split, number, csv_path), group])
    return parsed


def _delimiter_hint(parsed):
    """A warning when a single-label CSV's labels look like several joined
    by '|' or ',' (NIH's "Cardiomegaly|Effusion"): [line] or []."""
    labels = [labels[0] for _, _, labels, *_ in parsed if labels]
    for delimiter in ("|", ","):
        joined = [label for label in labels if delimiter in label]
        if labels and len(joined) >= max(2, len(labels) // 20):
            return [f"{len(joined)} label(s) hold '{delimiter}' (e.g. {joined[0]}): if they are several labels per "
                    f"image, give --label_delimiter '{delimiter}' for a multi-label run"]
    return []


def scan_csv(root, csv_path, reading=LabelReading()):
    """Reads `--labels_csv` (filename,label[,split][,group], file names
    relative to `root`; the columns may be named by `reading`, and a CSV
    with one 1/0 column per label and no label column is multi-label).
    Rows pointing outside `root` (absolute paths, `..`, links out) are
    rejected, missing files skipped, each with its reason; duplicate rows
    are warned about. Returns a Scan (`multi_label` set when the labels
    make a multi-label task, its candidates' `labels` then the label sets).
    Raises UserError for a CSV that cannot be read or has no usable
    columns."""
    rows = _read_csv_rows(csv_path)
    columns = _csv_columns(rows[0], csv_path, reading)
    wide = {} if "label" in columns else _wide_columns(rows, columns)
    if "label" not in columns and not wide:
        raise UserError(
            "labels_csv needs a label column (label, labels or class; or --label_column NAME), or one "
            f"column of 1/0 per label. Received: header={','.join(rows[0])} in {csv_path}"
        )
    parsed = _parsed_rows(rows, columns, wide, reading, csv_path)
    if parsed and not any(labels for _, _, labels, *_ in parsed):
        raise UserError(
            f"labels_csv gives no label to any of its {len(parsed)} row(s) (every label cell is empty"
            + (f" or '{reading.no_label}'" if reading.no_label else "")
            + f"): there is nothing to learn. Received: labels_csv={csv_path}"
        )
    _normalize_labels(parsed)
    multi_label = _is_multi_label(parsed, reading, wide, csv_path)
    real_root = os.path.realpath(root)
    scan = Scan(layout="csv", multi_label=multi_label, grouped_by_column=bool(
        reading.group_column and reading.group_column.strip().lower() in [name.strip().lower() for name in rows[0]]))
    if wide:
        scan.notes.append(
            f"labels_csv: one column per label ({len(wide)}: {', '.join(list(wide)[:6])}"
            f"{', ...' if len(wide) > 6 else ''}); 1 is present, 0, empty and -1 (uncertain) are absent"
        )
    if multi_label and not wide:
        if not any(len(labels) > 1 for _, _, labels, *_ in parsed):
            scan.notes.append("labels_csv: every row holds one label, multi-label as --multi_label 1 asks")
        else:
            scan.notes.append(f"labels_csv: several labels per image (separated by '{reading.separator}'): "
                              "a multi-label run")
    elif not multi_label and reading.delimiter != ";":
        scan.warnings.append(
            f"--label_delimiter '{reading.separator}' splits no label cell: every image has one label, so this "
            "is a single-label run (--multi_label 1 makes it multi-label)"
        )
    elif not multi_label:
        scan.warnings.extend(_delimiter_hint(parsed))
    seen = {}
    duplicates = []
    for number, filename, labels, split, group in parsed:
        label = reading.separator.join(sorted(labels)) if multi_label else (labels[0] if labels else "")
        if not filename or not (label or multi_label):
            scan.skipped.append(
                audit.SkippedFile(
                    filename or f"(row {number})",
                    f"labels_csv row {number} has an empty "
                    + ("filename" if not filename else "label"),
                    label,
                )
            )
            continue
        for name in labels if multi_label else (label,):
            scan.classes.setdefault(name, "labels_csv")
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
        seen[relative] = (number, label, split, group, labels)
    _csv_duplicates(scan, seen, duplicates)
    scan.fixed_splits = any(split for _, _, split, _, _ in seen.values())
    for relative, (number, label, split, group, labels) in seen.items():
        scan.candidates.append(
            Candidate(relative, label, split or ("train" if scan.fixed_splits else None), group,
                      labels=tuple(sorted(labels)) if multi_label else None)
        )
    if multi_label and scan.candidates and not any(candidate.labels for candidate in scan.candidates):
        raise UserError(
            f"labels_csv gives no label to any of its {len(scan.candidates)} image(s) (every label cell is empty"
            + (f" or '{reading.no_label}'" if reading.no_label else "")
            + f"): there is nothing to learn. Received: labels_csv={csv_path}"
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
