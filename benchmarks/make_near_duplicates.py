"""Writes a flat folder of near-duplicates from real photos, without any
download: the leak of merged and scraped sets, where the same picture was
saved again at another JPEG quality, resized and back, re-cropped a few
pixels off or brightened, under an unrelated name.

    python benchmarks/make_near_duplicates.py --out /tmp/near --spots 30 --copies 4

Kinds (--kind):
- textures (default): brick, grass and gravel, scikit-image's 512x512
  photos of real surfaces (`pip install scikit-image`, a benchmark
  dependency). A spot is a random 112 px crop of the photo or its
  quarter turn (spots overlap by at most 30% of a side), resized
  to --size; distinct
  spots of one class look alike, which is what makes them hard to tell
  from copies.
- photos: china and flower, scikit-learn's two photographs; classes are
  the two photos, a spot is a random crop.

Each spot is saved --copies times, each copy with one change: the spot
re-encoded at JPEG quality 70-95, resized to 60-80% and back, shifted by
3 px (a crop 3 px off), or brightness +-4%. The first copy is the spot as
cut. Files get random names, OUT/<class>/<random hex>.jpg, and the truth
(which file is a copy of which spot) goes to OUT/../<out name>-spots.json,
outside the dataset, so the tool cannot read it.

With --copies 1 the folder has no copies at all: the check that grouping
merges nothing.
"""

import argparse
import json
import os
import sys

import numpy as np

CHANGES = ("as cut", "re-encoded", "resized", "shifted", "brightness")


def _sources(kind):
    """{class name: uint8 RGB photo}."""
    if kind == "photos":
        from sklearn.datasets import load_sample_images

        photos = load_sample_images()
        return {
            os.path.splitext(os.path.basename(name))[0]: image
            for name, image in zip(photos.filenames, photos.images)
        }
    from skimage import data

    return {name: np.stack([getattr(data, name)()] * 3, axis=-1) for name in ("brick", "grass", "gravel")}


def _copy(photo, top, left, crop, size, change, rng):
    """One copy of the spot at (top, left): (PIL image, JPEG quality)."""
    from PIL import Image, ImageEnhance

    if change == "shifted":
        # 3 px of the saved image, whatever its size
        dy, dx = rng.choice([-1, 1], size=2) * round(3 * crop / size)
        top, left = int(np.clip(top + dy, 0, photo.shape[0] - crop)), int(np.clip(left + dx, 0, photo.shape[1] - crop))
    image = Image.fromarray(photo[top : top + crop, left : left + crop]).resize((size, size), Image.BICUBIC)
    quality = 90
    if change == "re-encoded":
        quality = int(rng.integers(70, 96))
    elif change == "resized":
        small = max(8, int(size * rng.uniform(0.6, 0.8)))
        image = image.resize((small, small), Image.BICUBIC).resize((size, size), Image.BICUBIC)
    elif change == "brightness":
        image = ImageEnhance.Brightness(image).enhance(1 + rng.choice([-0.04, 0.04]))
    return image, quality


def _places(shape, crop, count, rng, overlap=0.3):
    """`count` spots (quarter turns, top, left) that overlap each other by
    at most `overlap` of a side, so that distinct spots are really
    distinct: the photo and its quarter turn give room for twice as many."""
    places = []
    for _ in range(100000):
        if len(places) == count:
            return places
        turns = int(rng.integers(2))
        height, width = shape[:2] if turns == 0 else shape[1::-1]
        top, left = int(rng.integers(3, height - crop - 3)), int(rng.integers(3, width - crop - 3))
        apart = (1 - overlap) * crop
        if all(t != turns or max(abs(top - y), abs(left - x)) >= apart for t, y, x in places):
            places.append((turns, top, left))
    raise SystemExit(f"error: only {len(places)} spots of {crop} px fit; lower --spots")


def make_near_duplicates(out, kind="textures", spots=30, copies=4, size=128, crop=112, seed=0):
    """Writes `spots` spots per class, each saved `copies` times with a
    change, under random names. Returns the truth file's path."""
    rng = np.random.default_rng(seed)
    truth = {}
    for name, photo in _sources(kind).items():
        os.makedirs(os.path.join(out, name), exist_ok=True)
        for spot, (turns, top, left) in enumerate(_places(photo.shape, crop, spots, rng)):
            changes = [CHANGES[0], *rng.permutation(CHANGES[1:])][:copies]
            if copies > len(CHANGES):
                changes += list(rng.choice(CHANGES[1:], size=copies - len(CHANGES)))
            for change in changes:
                image, quality = _copy(np.rot90(photo, turns), top, left, crop, size, change, rng)
                file_name = f"{rng.integers(1 << 48):012x}.jpg"
                image.save(os.path.join(out, name, file_name), quality=quality)
                truth[f"{name}/{file_name}"] = {"spot": f"{name}-{spot:03d}", "change": change}
    truth_path = os.path.join(os.path.dirname(os.path.abspath(out)), os.path.basename(os.path.abspath(out)) + "-spots.json")
    with open(truth_path, "w") as handle:
        json.dump(truth, handle, indent=1)
    return truth_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--kind", choices=("textures", "photos"), default="textures")
    parser.add_argument("--spots", type=int, default=30, help="spots per class")
    parser.add_argument("--copies", type=int, default=4, help="files per spot")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    if os.path.exists(options.out):
        sys.exit(f"error: {options.out} exists; choose a new folder")
    truth = make_near_duplicates(options.out, options.kind, options.spots, options.copies, options.size, seed=options.seed)
    print(f"wrote {options.out} (truth: {truth})")


if __name__ == "__main__":
    main()
