"""Writes a multi-label folder of real-photo mosaics, without any download.

Each image is a 2x2 mosaic of --size px whose four cells are crops of
scikit-image's bundled photographs (`pip install scikit-image`; a benchmark
dependency, not the tool's): the labels (brick, grass, gravel, coffee,
chelsea) present in an image are the photos some cell was cut from; the
other cells are crops of a sixth photo (the moon's surface) that no label
names. An image holds 0 to 3 labels (label sets drawn at random, each
label in about a third of the images), so a label can only be told by
looking at every cell: a real multi-label task, learnable from scratch.
Test crops come from the bottom quarter of each photo, training crops from
the rest, so a test cell never overlaps a training one.

    python benchmarks/make_multi_label.py --out /tmp/ml --count 600
    python benchmarks/make_multi_label.py --out /tmp/nih --count 300 --nih

Layout: OUT/images/NNNNN.png and OUT/labels.csv (filename,labels,split with
labels joined by ';', an empty cell for an image with none). With --nih,
the NIH ChestX-ray14 shape instead: OUT/Data_Entry.csv with the columns
`Image Index`, `Finding Labels` (joined by '|', `No Finding` for none) and
`Patient ID` (two to four images per patient, sharing their label set),
no split column. With --wide, OUT/labels_wide.csv too: one 1/0 column per
label (CheXpert style).
"""

import argparse
import csv
import os
import sys

import numpy as np

LABELS = ("brick", "grass", "gravel", "coffee", "chelsea")
BACKGROUND = "moon"


def photos():
    """{name: HxWx3 uint8} for the labels and the background."""
    import skimage.data

    result = {}
    for name in (*LABELS, BACKGROUND):
        pixels = getattr(skimage.data, name)()
        result[name] = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    return result


def crop(photo, rng, side, test):
    """A random square crop of `photo` (the bottom quarter for test, the
    rest otherwise), resized to side x side, turned and maybe flipped."""
    from PIL import Image

    top_limit, bottom_limit = (photo.shape[0] * 3 // 4, photo.shape[0]) if test else (0, photo.shape[0] * 3 // 4)
    largest = min(160, bottom_limit - top_limit, photo.shape[1])
    size = int(rng.integers(min(64, largest), largest + 1))
    top = int(rng.integers(top_limit, bottom_limit - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    piece = np.rot90(photo[top:top + size, left:left + size], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        piece = piece[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(piece)).resize((side, side), Image.BILINEAR))


def label_set(rng):
    """0 to 3 labels, each label in about a third of the images."""
    count = int(rng.choice([0, 1, 2, 3], p=[0.12, 0.38, 0.35, 0.15]))
    return tuple(sorted(rng.choice(LABELS, size=count, replace=False).tolist()))


def mosaic(labels, sources, rng, size, test):
    """A size x size image of four cells: one per label (at random cells),
    the rest background."""
    half = size // 2
    cells = list(labels) + [BACKGROUND] * (4 - len(labels))
    order = rng.permutation(4)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    for position, cell in zip(order, cells):
        row, column = divmod(int(position), 2)
        image[row * half:(row + 1) * half, column * half:(column + 1) * half] = crop(sources[cell], rng, half, test)
    return image


def write(out, count, size, seed, nih=False, wide=False, test_share=0.2):
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = photos()
    os.makedirs(os.path.join(out, "images"))
    rows = []
    patient = 0
    number = 0
    while number < count:
        labels = label_set(rng)
        test = rng.random() < test_share
        repeats = int(rng.integers(2, 5)) if nih else 1  # a patient's several images share findings
        for _ in range(min(repeats, count - number)):
            name = f"{number:05d}.png"
            Image.fromarray(mosaic(labels, sources, rng, size, test)).save(os.path.join(out, "images", name))
            rows.append((f"images/{name}", labels, "test" if test else "", f"P{patient:05d}"))
            number += 1
        patient += 1
    if nih:
        with open(os.path.join(out, "Data_Entry.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
            for path, labels, _, group in rows:
                writer.writerow([path, "|".join(labels) or "No Finding", 0, group])
        return
    with open(os.path.join(out, "labels.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels", "split"])
        for path, labels, split, _ in rows:
            writer.writerow([path, ";".join(labels), split])
    if wide:
        with open(os.path.join(out, "labels_wide.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", *LABELS])
            for path, labels, _, _ in rows:
                writer.writerow([path, *(1 if name in labels else 0 for name in LABELS)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Folder to write (must not exist)")
    parser.add_argument("--count", type=int, default=600, help="Images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=96, help="Side of each image in px (default: %(default)s)")
    parser.add_argument("--nih", action="store_true", help="NIH ChestX-ray14's CSV shape, patients as groups")
    parser.add_argument("--wide", action="store_true", help="Also a one-column-per-label CSV")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; give a new folder")
    write(args.out, args.count, args.size, args.seed, nih=args.nih, wide=args.wide)
    print(f"{args.count} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
