"""How are images with several labels each (a multi-label task) chosen and split?

A multi-label labels CSV (dataset_files.scan_csv) gives each candidate file
a label set, maybe empty (an all-negative image). Here: which labels the
run keeps (--classes, labels without a usable image), and the split of the
label sets into train/val/test by iterative stratification (Sechidis,
Tsoumakas and Vlahavas, 2011, the method scikit-multilearn and
iterative-stratification implement), on units rather than files: a
user's group, identical files and near-copies (splits.join_units) move
together, so they never straddle splits. Every label with enough images
lands in every split; the ones too rare to are named.
"""

import collections
import dataclasses
import re

import numpy as np

import image_io
from errors import UserError

SPLITS = ("train", "val", "test")


def keep_labels(scan, classes):
    """--classes on a multi-label scan: only these labels are kept (in this
    order), the others dropped from every image's set; an image left with
    none is an all-negative image. Raises UserError for a name that is not
    a label here."""
    if not classes:
        return
    for name in classes:
        if name not in scan.classes:
            raise UserError(
                f"--classes names '{name}', which is not a label here (found: "
                f"{', '.join(image_io.display_path(found) for found in ordered_labels(scan.classes))}). "
                f"Received: classes={','.join(classes)}"
            )
    others = sorted(name for name in scan.classes if name not in classes)
    if others:
        scan.notes.append("--classes: ignored the other label(s): "
                          + ", ".join(image_io.display_path(name) for name in others))


def ordered_labels(names):
    """Sorted label names; numerically when every one is an integer."""
    names = list(names)
    if names and all(re.fullmatch(r"-?\d+", name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def choose_labels(scan, usable, classes, image_dir):
    """The run's labels, in order: --classes, else every label sorted; a
    label none of whose images is usable is left out with a warning.
    Raises UserError when none is left."""
    counts = collections.Counter(name for candidate in usable for name in candidate.labels)
    order = list(classes) if classes else ordered_labels(scan.classes)
    kept = [name for name in order if counts[name]]
    for name in order:
        if not counts[name]:
            scan.warnings.append(
                f"label '{image_io.display_path(name)}' has no usable image (its files were skipped, see the "
                "audit): left out of the labels"
            )
    if not kept:
        raise UserError(f"no label has a usable image in {image_dir}: every labelled file was skipped (see the audit)")
    return kept


def only_labels(usable, class_names, separator):
    """The candidates with their label sets limited to `class_names` (and
    `label`, the set as text, written with `separator`)."""
    kept = set(class_names)
    result = []
    for candidate in usable:
        labels = tuple(name for name in candidate.labels if name in kept)
        result.append(dataclasses.replace(candidate, labels=labels, label=separator.join(labels)))
    return result


# ---------------------------------------------------------------- iterative stratification


def iterative_stratification(unit_counts, unit_sizes, fractions, rng):
    """The split (index into `fractions`) of each unit, by iterative
    stratification: labels are taken rarest first, and each unit holding
    the label goes to the split that still wants that label most (ties:
    the split that wants most images, then at random), so every split gets
    its share of every label as far as whole units allow. Units without
    any label fill the splits' remaining wants.

    `unit_counts`: (units, labels) positives per unit; `unit_sizes`:
    images per unit; `fractions`: each split's share (summing to 1).
    Returns an int array, one split per unit.
    """
    unit_counts = np.asarray(unit_counts, dtype=np.float64)
    sizes = np.asarray(unit_sizes, dtype=np.float64)
    fractions = np.asarray(fractions, dtype=np.float64)
    wanted_labels = np.outer(fractions, unit_counts.sum(axis=0))  # (splits, labels)
    wanted_images = fractions * sizes.sum()
    placed = np.full(len(sizes), -1, dtype=np.int64)
    left = unit_counts > 0
    while left.any():
        remaining = left.sum(axis=0)
        rarest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        label = int(rng.choice(rarest))
        for unit in rng.permutation(np.flatnonzero(left[:, label])):
            score = np.stack([wanted_labels[:, label], wanted_images, rng.random(len(fractions))], axis=1)
            split = int(np.lexsort(score.T[::-1])[-1])  # the most wanted label, then images, then chance
            placed[unit] = split
            wanted_labels[split] -= unit_counts[unit]
            wanted_images[split] -= sizes[unit]
            left[unit] = False
    for unit in rng.permutation(np.flatnonzero(placed < 0)):
        split = int(np.argmax(wanted_images + 1e-9 * rng.random(len(fractions))))
        placed[unit] = split
        wanted_images[split] -= sizes[unit]
    return placed


def _split_units(candidates, shares, seed, units):
    """{path: split} of `candidates` over `shares` ({split: fraction})."""
    grouped = collections.OrderedDict()
    for candidate in sorted(candidates, key=lambda candidate: candidate.path):
        grouped.setdefault(units.get(candidate.path, candidate.path), []).append(candidate)
    names = sorted({name for candidate in candidates for name in candidate.labels})
    column = {name: position for position, name in enumerate(names)}
    # The last column counts the images with no label: stratified like a
    # label, so every split gets its share of all-negative images too.
    counts = np.zeros((len(grouped), len(names) + 1))
    for row, members in enumerate(grouped.values()):
        for candidate in members:
            counts[row, [column[name] for name in candidate.labels] or [len(names)]] += 1
    sizes = [len(members) for members in grouped.values()]
    splits = list(shares)
    chosen = iterative_stratification(counts, sizes, [shares[split] for split in splits], np.random.default_rng(seed))
    placed = {}
    for split, members in zip(chosen, grouped.values()):
        for candidate in members:
            placed[candidate.path] = splits[split]
    for split in splits:
        if not any(value == split for value in placed.values()):
            raise UserError(
                f"{len(candidates)} image(s) in {len(grouped)} unit(s) (identical files, near-copies and groups "
                f"stay in one split) are too few to put any in {split}; add images or lower --val_split/--test_split"
            )
    return placed


def split_label_sets(usable, fixed_splits, val_split, test_split, seed, units):
    """({path: split}, notes) of the usable multi-label candidates: a
    labels CSV's split column kept (a missing val or test carved out of
    train), else all split by iterative stratification over `units`
    ({path: unit}, splits.join_units). Raises UserError when a split would
    be empty."""
    held_out = {"val": val_split, "test": test_split}
    if not fixed_splits:
        shares = {"train": 1 - val_split - test_split, **held_out}
        return _split_units(usable, shares, seed, units), []
    placed = {candidate.path: candidate.split for candidate in usable}
    carve = {split: fraction for split, fraction in held_out.items() if split not in placed.values()}
    if not carve:
        return placed, []
    training = [candidate for candidate in usable if candidate.split == "train"]
    placed.update(_split_units(training, {"train": 1 - sum(carve.values()), **carve}, seed, units))
    return placed, [
        f"no {' or '.join(carve)} split given: carved "
        + ", ".join(f"{fraction:.0%} of train as {split}" for split, fraction in carve.items())
        + f" (iterative stratification over the label sets, seed {seed})"
    ]


def check_label_splits(usable, placed, class_names):
    """Warning lines for the labels too rare to be in every split. Raises
    UserError for a label with no training image (it cannot be learned):
    a labels CSV's split column put all its images in val or test."""
    counts = {split: collections.Counter() for split in SPLITS}
    for candidate in usable:
        counts[placed[candidate.path]].update(candidate.labels)
    for name in class_names:
        if not counts["train"][name]:
            where = " and ".join(f"{counts[split][name]} in {split}" for split in ("val", "test") if counts[split][name])
            raise UserError(
                f"label '{image_io.display_path(name)}' has no image in the train split ({where}): the model "
                "cannot learn it; move some of its images to train in the labels CSV, or leave it out with --classes"
            )
    rare = [name for name in class_names if not (counts["val"][name] and counts["test"][name])]
    if not rare:
        return []
    shown = ", ".join(
        f"{image_io.display_path(name)} ({'/'.join(str(counts[split][name]) for split in SPLITS)})" for name in rare[:8]
    )
    return [
        f"{len(rare)} label(s) too rare to be in every split (train/val/test images): {shown}"
        + (", ..." if len(rare) > 8 else "")
        + "; their validation threshold or test score is missing or rests on very few images"
    ]
