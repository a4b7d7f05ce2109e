"""How the dataset's usable files are split: the classes, the stratified
train/val/test split (identical files, near-copies and the user's groups
kept in one split) and what the split manifest records.

`index_dataset` is the whole way from a folder to a split: it lists the
candidate files (dataset_files.scan_dataset), has every one audited
(audit.audit_files: is it really an image, which decoder reads it), chooses
the classes and splits the usable files. It returns plain data, a
DatasetIndex; the only thing it writes is the audit's cache, which lives
outside the dataset folder.
"""

import collections
import dataclasses
import os
import re

import numpy as np

import artifacts
import audit
import config
import dataset_files
import image_io
import label_sets
import near_duplicates
import tasks
from errors import UserError

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
    group: str = ""  # with --group_by (or a labels CSV's group column): its group
    labels: tuple | None = None  # multi-label: its labels (maybe none); None: one class, `label`

    @property
    def names(self):
        """Its labels: the one class, or a multi-label image's labels."""
        return (self.label,) if self.labels is None else self.labels


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
    grouped: bool = False  # whether samples carry the user's groups (--group_by or a CSV group column)
    contents: dict = dataclasses.field(default=None, compare=False)  # {path: sha256}: identical files
    # {path: perceptual hashes (near_duplicates.to_text)} of the usable files
    perceptual: dict = dataclasses.field(default=None, compare=False)
    near_groups: tuple = ()  # tuples of paths: near-copies (near_duplicates), found unless --near_duplicates off
    # {path: unit}: files that must share a split and a fold (a user's
    # group, identical content or a near-copy group, joined)
    units: dict = dataclasses.field(default=None, compare=False)
    task: tasks.Task = tasks.SINGLE_LABEL  # what kind of task its labels make (tasks.py)

    def _chosen(self, name):
        return [sample for sample in self.samples if sample.split == name]

    def split(self, name):
        """(absolute paths, labels) of one split, in manifest order: int32
        class numbers, or multi-hot float32 (images, labels) for a
        multi-label index (tasks.Task.encode)."""
        chosen = self._chosen(name)
        paths = [os.path.join(self.root, sample.path) for sample in chosen]
        return paths, self.task.encode([sample.names for sample in chosen], self.class_names)

    def sizes(self):
        """{split: number of images}."""
        return {split: len(self._chosen(split)) for split in dataset_files.SPLITS}

    def decoders(self, name):
        """The decoder of every file of `split(name)`, in the same order."""
        return [sample.decoder for sample in self._chosen(name)]

    def counts(self):
        """{split: {class: number of images}}, every class in every split."""
        table = {split: {name: 0 for name in self.class_names} for split in dataset_files.SPLITS}
        for sample in self.samples:
            for name in sample.names:  # a multi-label image counts for each of its labels
                table[sample.split][name] += 1
        return table


def seen_images(index):
    """What a run keeps of the images it trains and validates on
    (artifacts.SEEN_IMAGES_FILE): their content hashes and perceptual
    hashes, sorted, no paths."""
    seen = [sample.path for sample in index.samples if sample.split != "test"]
    return {
        "sha256": sorted({(index.contents or {}).get(path, "") for path in seen} - {""}),
        "phash": sorted({(index.perceptual or {}).get(path, "") for path in seen} - {""}),
    }


def manifest_rows(index):
    """The split manifest of an index: one artifacts.ManifestRow per image."""
    return [
        artifacts.ManifestRow(sample.path, sample.label, sample.split, sample.group) for sample in index.samples
    ]


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
        # A unit goes to a held-out split that is empty, or that it
        # overfills by less than half its size (groups of several files).
        split = next((split for split in held_out if not chosen[split]
                      or len(chosen[split]) + len(members) / 2 < quota[split] + 0.5), "train")
        chosen[split].extend(members)
        placed[key] = split
    empty = [split for split, members in chosen.items() if not members]
    if empty:
        raise UserError(
            f"class '{name}' has {len(files)} image(s) but only {len(units)} "
            f"distinct one(s) (identical files and near-copies stay in one split), too few to "
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
    for split in dataset_files.SPLITS:
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
    table = {split: collections.defaultdict(list) for split in dataset_files.SPLITS}
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
    group_by=None,
    near_duplicates_mode="group",
    near_duplicate_distance=near_duplicates.DEFAULT_DISTANCE,
    reading=dataset_files.LabelReading(),
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
    with no usable image are excluded with a warning. `group_by` (a regular
    expression; its first group, searched in each path relative to the
    root, is the file's group) or a labels CSV's group column keeps every
    group whole in one split (check_groups). Near-copies (the audit's
    perceptual hashes, near_duplicates.py, within `near_duplicate_distance`
    bits) are found unless `near_duplicates_mode` is "off"; "group" keeps
    each group of them in one split too (joined with the groups above),
    "warn" only warns about the groups that straddle splits. A pre-split
    folder is never moved: its test images with a near-copy in train are
    named instead (`test_near_train`).

    Returns a DatasetIndex. Raises UserError for a missing folder, fewer
    than 2 usable classes, a class missing from a split or too small to
    split, a bad CSV or --classes name.

    `reading` (dataset_files.LabelReading) says how a labels CSV's labels
    are read; one whose cells hold several labels (or one column per
    label) makes a multi-label index (task tasks.MULTI_LABEL, each
    Sample's `labels`), split by label_sets.split_label_sets.
    """
    root = _check_image_dir(image_dir, cache_dir)
    readers = image_io.normalize_readers(readers)
    reading = dataclasses.replace(reading, group_column=group_by) if group_by and labels_csv else reading
    scan = dataset_files.scan_dataset(root, labels_csv, readers, reading)
    if scan.grouped_by_column:
        group_by = None  # --group_by named a column of the CSV: its values are the groups
    if scan.multi_label:
        label_sets.keep_labels(scan, classes)
    else:
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
    if scan.multi_label:
        class_names = label_sets.choose_labels(scan, usable, classes, image_dir)
        usable = label_sets.only_labels(usable, class_names, reading.separator)
    else:
        class_names = _choose_classes(scan, usable, classes, image_dir)
        usable = [c for c in usable if c.label in class_names]
    user_groups = group_keys(usable, group_by)
    contents = {c.path: checks[c.path].sha256 for c in usable}
    perceptual = {c.path: checks[c.path].phash for c in usable}
    near_groups = find_near_copies(perceptual, near_duplicates_mode, near_duplicate_distance)
    units = join_units(
        [c.path for c in usable],
        user_groups or {},
        contents,
        {path: number for number, group in enumerate(near_groups) for path in group}
        if near_duplicates_mode == "group" else {},
    )
    if scan.multi_label:
        placed, notes = label_sets.split_label_sets(usable, scan.fixed_splits, val_split, test_split, seed, units)
        scan.warnings.extend(label_sets.check_label_splits(usable, placed, class_names))
        samples = tuple(
            Sample(path=c.path, label=c.label, split=placed[c.path], decoder=checks[c.path].decoder,
                   group=user_groups.get(c.path, "") if user_groups else "", labels=c.labels)
            for split in dataset_files.SPLITS
            for c in sorted(usable, key=lambda c: c.path) if placed[c.path] == split
        )
    else:
        table, notes = _split_table(usable, scan.fixed_splits, val_split, test_split, seed, units)
        check_same_classes(table, class_names)
        samples = tuple(
            Sample(path=path, label=name, split=split, decoder=checks[path].decoder,
                   group=user_groups.get(path, "") if user_groups else "")
            for split in dataset_files.SPLITS
            for name in class_names
            for path in table[split][name]
        )
    duplicates = audit.duplicate_groups(samples, checks)
    scan.warnings.extend(
        audit.duplicate_warnings(duplicates, auto_split=not scan.fixed_splits or bool(notes))
    )
    split_of = {sample.path: sample.split for sample in samples}
    scan.warnings.extend(audit.near_copy_warnings(near_groups, split_of, near_duplicates_mode))
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
        grouped=bool(user_groups),
        contents=contents,
        perceptual=perceptual,
        near_groups=tuple(tuple(group) for group in near_groups),
        units=units,
        # The kind of task is decided here, from the labels read (a labels
        # CSV with several labels per image, or one column per label, makes
        # a multi-label index: dataset_files.scan_csv).
        task=tasks.MULTI_LABEL if scan.multi_label else tasks.SINGLE_LABEL,
    )
    index = dataclasses.replace(index, warnings=index.warnings + tuple(audit.test_leak_lines(index)))
    report = audit.audit_report(
        index, scan, checks, duplicates, stats, near_copies=(near_duplicates_mode, near_duplicate_distance)
    )
    notes = group_lines(index) + audit.near_copy_lines(index, near_duplicates_mode)
    return dataclasses.replace(index, audit=report, notes=index.notes + tuple(notes))


@dataclasses.dataclass(frozen=True)
class Source:
    """Which folder a command indexes and how it is split: the options
    index_dataset needs (each field is the option of that name; a script
    fills it with config.picked)."""

    image_dir: str
    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 42
    labels_csv: str | None = None
    classes: tuple | None = None
    reader: tuple | None = None  # --reader specs
    group_by: str | None = None
    # (the distance first: the field `near_duplicates` hides the module below it)
    near_duplicate_distance: int = near_duplicates.DEFAULT_DISTANCE
    near_duplicates: str = "group"
    path_column: str | None = None
    label_column: str | None = None
    label_delimiter: str = ";"
    multi_label: int | None = None
    no_label: str | None = None
    artifacts_dir: str = "model_artifacts"  # the audit's cache goes beside it, never inside the dataset


def index_source(source, progress=None):
    """index_dataset of a Source: its folder, split, labels and class
    options, its custom readers, and the audit's cache in ARTIFACTS_DIR."""
    return index_dataset(
        source.image_dir,
        val_split=source.val_split,
        test_split=source.test_split,
        seed=source.seed,
        labels_csv=source.labels_csv,
        classes=source.classes,
        readers=config.load_readers(source.reader),
        cache_dir=artifacts.audit_cache_dir(source.artifacts_dir),
        progress=progress,
        group_by=source.group_by,
        near_duplicates_mode=source.near_duplicates,
        near_duplicate_distance=source.near_duplicate_distance,
        reading=dataset_files.LabelReading(
            source.path_column, source.label_column, source.label_delimiter, source.multi_label, source.no_label
        ),
    )


# ---------------------------------------------------------------- near-copies


def find_near_copies(perceptual, mode, max_distance):
    """Groups (sorted lists of paths) of near-copies among the files of
    `perceptual` ({path: hashes text}); [] when `mode` is "off". Files
    without hashes (no structure to compare) are in none."""
    if mode == "off":
        return []
    paths = [path for path, text in perceptual.items() if text]
    hashes = near_duplicates.from_texts([perceptual[path] for path in paths])
    return [
        sorted(paths[number] for number in group)
        for group in near_duplicates.near_duplicate_groups(hashes, max_distance)
    ]


def join_units(paths, *keyings):
    """{path: unit}: files that share a key in any of `keyings` ({path:
    key} each: the user's groups, file contents, near-copy groups) share
    a unit, also through other files (a union of the groupings). A unit is
    named by its first path."""
    first, second = [], []
    for keys in keyings:
        first_of = {}
        for number, path in enumerate(paths):
            if path in keys:
                first.append(first_of.setdefault(keys[path], number))
                second.append(number)
    labels = near_duplicates.components(len(paths), np.array(first, dtype=np.int64), np.array(second, dtype=np.int64))
    named = {}
    for number, label in enumerate(labels.tolist()):
        named.setdefault(label, paths[number])
    return {path: named[label] for path, label in zip(paths, labels.tolist())}


# ---------------------------------------------------------------- groups and folds


def group_keys(candidates, group_by):
    """{path: group} of the usable candidates (dataset_files.Candidate):
    the first capture group of the regular expression `group_by` searched
    in each path (the whole match when it has no group; in the file names
    when it matches no path at all), else a labels
    CSV's group column; None when neither is given. Raises UserError naming
    a file the pattern does not match, with the count of such files."""
    if not group_by:
        given = {c.path: c.group for c in candidates if getattr(c, "group", "")}
        if given and len(given) < len(candidates):
            missing = next(c.path for c in candidates if not getattr(c, "group", ""))
            raise UserError(
                f"labels_csv: {len(candidates) - len(given)} usable file(s) have an empty group "
                f"(e.g. {image_io.display_path(missing)}); give every row a group or none"
            )
        return given or None
    pattern = re.compile(group_by)
    keys, unmatched = _searched_keys(pattern, candidates, lambda path: path)
    if not keys:
        # Matching no path, a pattern written for the file name ('^P[0-9]+_'
        # while the path begins with its class folder) is searched in the
        # file names: a pattern that matched some path never is.
        keys, unmatched = _searched_keys(pattern, candidates, os.path.basename)
    if unmatched:
        where = "any file" if not keys else f"{len(unmatched)} of {len(candidates)} files"
        raise UserError(
            f"--group_by does not match {where} (e.g. {image_io.display_path(unmatched[0])} has no group); "
            f"every file's path relative to image_dir needs one. Received: group_by={group_by}"
        )
    if not any(candidate.labels is not None for candidate in candidates):
        # (a multi-label image's rare labels are warned about after the split instead)
        check_groups(candidates, keys)
    return keys


def _searched_keys(pattern, candidates, part):
    """({path: group}, [paths with none]): `pattern` searched in `part`
    (a function of a path) of each candidate's path, forward slashes."""
    keys, unmatched = {}, []
    for candidate in candidates:
        found = pattern.search(part(candidate.path.replace(os.sep, "/")))
        key = (found.group(1) if pattern.groups else found.group(0)) if found else None
        if key:
            keys[candidate.path] = key
        else:
            unmatched.append(candidate.path)
    return keys, unmatched


def check_groups(candidates, keys):
    """Raises UserError naming a class whose images are all one group: it
    could not be in every split."""
    per_class = collections.defaultdict(set)
    for candidate in candidates:
        for name in (candidate.label,) if candidate.labels is None else candidate.labels:
            per_class[name].add(keys[candidate.path])
    for name, groups in sorted(per_class.items()):
        if len(groups) < 2:
            raise UserError(
                f"class '{image_io.display_path(name)}': all its images are one group "
                f"({next(iter(groups))}), so it cannot be in every split; add images of "
                "other groups or change --group_by"
            )


def group_lines(index, fold_of=None):
    """Lines for the run's output: how many groups each class has in each
    split (and fold, with `fold_of` {path: fold})."""
    if not index.grouped:
        return []
    where = collections.defaultdict(set)
    for sample in index.samples:
        place = sample.split if fold_of is None or sample.split == "test" else f"fold {fold_of[sample.path] + 1}"
        for name in sample.names:
            where[(name, place)].add(sample.group)
    order = {"train": 0, "val": 1, "test": 3}
    places = sorted({place for _, place in where}, key=lambda place: (order.get(place, 2), place))
    return [
        f"{len({sample.group for sample in index.samples})} groups, none split; per "
        + ("label" if index.task.multi_label else "class") + " in "
        + "/".join(place.replace("fold ", "f") for place in places) + ": "
        + ", ".join(f"{image_io.display_path(name)} " + "/".join(str(len(where[(name, place)])) for place in places)
                    for name in index.class_names)
    ]


def fold_units(index, pool):
    """{path: unit} of the non-test samples `pool`: a unit (the user's
    group, identical files, near-copies: `index.units`) shares a fold."""
    return index.units or join_units(
        [sample.path for sample in pool], {sample.path: sample.group for sample in pool if sample.group},
        index.contents or {},
    )


def assign_label_folds(index, pool, folds, seed):
    """assign_folds of a multi-label index: the units (fold_units) dealt
    into `folds` equal shares by iterative stratification of their label
    sets (label_sets.iterative_stratification, shuffled by `seed`), so each
    fold gets its share of every label as far as whole units allow.
    Returns ({path: fold}, warning lines: the labels with fewer positive
    units than folds). Raises UserError when `folds` is more than the
    units, or a fold's training would lack a label (a label in one unit)."""
    units = fold_units(index, pool)
    members = collections.OrderedDict()
    for sample in sorted(pool, key=lambda sample: sample.path):
        members.setdefault(units.get(sample.path, sample.path), []).append(sample)
    if len(members) < folds:
        raise UserError(
            f"--folds {folds} is more than the {len(members)} units outside the test split (a unit: a group, "
            f"identical files or near-copies, kept in one fold). Received: folds={folds}"
        )
    column = {name: number for number, name in enumerate(index.class_names)}
    counts = np.zeros((len(members), len(index.class_names)))
    for row, samples in enumerate(members.values()):
        for sample in samples:
            counts[row, [column[name] for name in sample.names]] += 1
    positive_units = (counts > 0).sum(axis=0)
    for name, number in column.items():
        if positive_units[number] < 2:
            raise UserError(
                f"--folds {folds}: label '{image_io.display_path(name)}' is in {int(positive_units[number])} unit(s) "
                "outside the test split, so some fold's training would have no image of it; add images of it, "
                "or leave it out with --classes"
            )
    warnings = [
        f"label '{image_io.display_path(name)}' is in {int(positive_units[number])} unit(s), fewer than --folds "
        f"{folds}: some validation folds have none of it"
        for name, number in column.items() if positive_units[number] < folds
    ]
    chosen = label_sets.iterative_stratification(
        counts, [len(samples) for samples in members.values()], np.full(folds, 1.0 / folds),
        np.random.default_rng(seed),
    )
    fold_of = {sample.path: int(fold) for fold, samples in zip(chosen, members.values()) for sample in samples}
    for fold in range(folds):
        if not np.any(chosen == fold):
            raise UserError(f"--folds {folds}: fold {fold + 1} would have no image (the units are too uneven); "
                            "lower --folds")
        trained = counts[chosen != fold].sum(axis=0)
        if not trained.all():
            missing = index.class_names[int(np.argmin(trained))]
            raise UserError(
                f"--folds {folds}: fold {fold + 1}'s training would have no image of label "
                f"'{image_io.display_path(missing)}' (its units are too few); lower --folds"
            )
    return fold_of, warnings


def assign_folds(index, folds, seed):
    """Each non-test image's fold (0-based), by scikit-learn's
    StratifiedGroupKFold (shuffled by `seed`): stratified by class, a group
    (the user's, identical files, near-copies: `index.units`) never in two folds;
    a multi-label index's by assign_label_folds. Returns
    ({path: fold}, warning lines). Raises UserError when a class has fewer
    non-test images (or groups) than `folds`, or a fold's training would
    lack a class."""
    from sklearn.model_selection import StratifiedGroupKFold

    pool = [sample for sample in index.samples if sample.split != "test"]
    if index.task.multi_label:
        return assign_label_folds(index, pool, folds, seed)
    counts = collections.Counter(sample.label for sample in pool)
    smallest = min(index.class_names, key=lambda name: counts[name])
    if counts[smallest] < folds:
        raise UserError(
            f"--folds {folds} is more than class '{image_io.display_path(smallest)}' has non-test images "
            f"({counts[smallest]}): each fold needs one of each class. Received: folds={folds}"
        )
    units = fold_units(index, pool)
    groups = [units.get(sample.path, sample.path) for sample in pool]
    warnings = []
    per_class = collections.defaultdict(set)
    for sample, group in zip(pool, groups):
        per_class[sample.label].add(group)
    for name in index.class_names:
        if len(per_class[name]) < folds:
            warnings.append(
                f"class '{image_io.display_path(name)}' has {len(per_class[name])} group(s), fewer than "
                f"--folds {folds}: some validation folds have none of it"
            )
    if len(set(groups)) < folds:
        raise UserError(
            f"--folds {folds} is more than the {len(set(groups))} groups outside the test split. "
            f"Received: folds={folds}"
        )
    labels = [index.class_names.index(sample.label) for sample in pool]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    fold_of = {}
    for fold, (_, chosen) in enumerate(splitter.split(np.zeros(len(pool)), labels, groups)):
        for position in chosen:
            fold_of[pool[position].path] = fold
    for fold in range(folds):
        trained = {sample.label for sample in pool if fold_of[sample.path] != fold}
        if len(trained) < len(index.class_names):
            missing = next(name for name in index.class_names if name not in trained)
            raise UserError(
                f"--folds {folds}: fold {fold + 1}'s training would have no image of class "
                f"'{image_io.display_path(missing)}' (its groups are too few); lower --folds"
            )
    return fold_of, warnings


def fold_index(index, fold_of, fold):
    """The DatasetIndex fold `fold` trains on: the test split as it is,
    fold `fold` as the validation split, the other folds as training."""
    samples = tuple(
        sample if sample.split == "test"
        else dataclasses.replace(sample, split="val" if fold_of[sample.path] == fold else "train")
        for sample in index.samples
    )
    order = {"train": 0, "val": 1, "test": 2}
    return dataclasses.replace(index, samples=tuple(sorted(samples, key=lambda sample: order[sample.split])))
