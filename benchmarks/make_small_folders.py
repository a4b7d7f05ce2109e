"""Writes small real-image folders for the measurements of the small-data
issues, without any download: scikit-image's bundled photographs
(`pip install scikit-image`; a benchmark dependency, not the tool's).

    python benchmarks/make_small_folders.py --kind textures --out /tmp/tex --counts 120,36,12
    python benchmarks/make_small_folders.py --kind objects --out /tmp/obj --counts 60,60,60,60
    python benchmarks/make_small_folders.py --kind faces --out /tmp/faces
    python benchmarks/make_small_folders.py --kind textures --out /tmp/grouped --flat --groups 6

Kinds:
- textures: brick, grass and gravel (512x512 grayscale photos of real
  surfaces). Each image is a random crop (96-256 px, a random quarter turn
  and flip) resized to --size. Test crops come from the bottom quarter of
  each photo only, training and validation crops from the rest, so a test
  image never overlaps a training one.
- objects: four colour photographs (astronaut, coffee, chelsea the cat,
  rocket), cut the same way: crops of one photo are one class (test crops
  of a short photo are smaller, down to its bottom quarter's height).
- faces: scikit-image's lfw_subset, 100 faces and 100 non-faces at 25x25
  (the set of the issue's logistic-regression baseline); --counts and
  --size do not apply.

Layout: OUT/train|val|test/<class>/NNNN.png with --counts training images
per class and --val / --test images per class (balanced, so that every
class counts). With --flat, OUT/<class>/... with every image in one folder
per class (the tool carves the splits). With --groups G (textures and
objects, --flat only), each class has G groups of near-identical crops
(one location, jittered by a few pixels): files g<NN>_<k>.png, for
`--group_by '(g[0-9]+)_'`.
"""

import argparse
import os
import sys

import numpy as np

SOURCES = {
    "textures": ("brick", "grass", "gravel"),
    "objects": ("astronaut", "coffee", "chelsea", "rocket"),
}


def source_images(kind):
    """{class name: HxWx3 uint8 photo} for a kind."""
    import skimage.data

    photos = {}
    for name in SOURCES[kind]:
        pixels = getattr(skimage.data, name)()
        photos[name] = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    return photos


def random_crop(photo, rng, size, rows, jitter_of=None):
    """One crop of `photo` within the row range `rows` (top, bottom),
    turned, flipped and resized to size x size. With `jitter_of` (top,
    left, side), a crop a few pixels from that one instead."""
    from PIL import Image

    top_limit, bottom_limit = rows
    height = bottom_limit - top_limit
    if jitter_of is None:
        largest = min(256, height, photo.shape[1])
        side = int(rng.integers(min(96, largest), largest + 1))
        top = int(rng.integers(top_limit, bottom_limit - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
    else:
        top, left, side = jitter_of
        top = int(np.clip(top + rng.integers(-4, 5), top_limit, bottom_limit - side))
        left = int(np.clip(left + rng.integers(-4, 5), 0, photo.shape[1] - side))
    crop = np.rot90(photo[top:top + side, left:left + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    image = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR)
    return image, (top, left, side)


def write_cropped(out, kind, counts, val, test, size, flat, groups, seed):
    rng = np.random.default_rng(seed)
    photos = source_images(kind)
    if len(counts) != len(photos):
        raise SystemExit(f"--counts needs {len(photos)} numbers for {kind}, got {len(counts)}")
    for (name, photo), count in zip(photos.items(), counts):
        test_top = photo.shape[0] * 3 // 4
        plan = [("train", count, (0, test_top)), ("val", val, (0, test_top)), ("test", test, (test_top, photo.shape[0]))]
        if flat:
            plan = [(None, count + val + test, (0, photo.shape[0]))]
        for split, number, rows in plan:
            folder = os.path.join(out, *([split] if split else []), name)
            os.makedirs(folder, exist_ok=True)
            if groups:
                per_group = -(-number // groups)
                anchors = [random_crop(photo, rng, size, rows)[1] for _ in range(groups)]
                for index in range(number):
                    image, _ = random_crop(photo, rng, size, rows, jitter_of=anchors[index // per_group])
                    image.save(os.path.join(folder, f"g{index // per_group:02d}_{index % per_group}.png"))
            else:
                for index in range(number):
                    random_crop(photo, rng, size, rows)[0].save(os.path.join(folder, f"{index:04d}.png"))


def write_faces(out):
    from PIL import Image
    import skimage.data

    images = skimage.data.lfw_subset()  # 100 faces, then 100 non-faces
    for index, pixels in enumerate(images):
        folder = os.path.join(out, "face" if index < 100 else "non_face")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L").save(
            os.path.join(folder, f"{index % 100:03d}.png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("textures", "objects", "faces"), required=True)
    parser.add_argument("--out", required=True, help="Folder to write (must not exist)")
    parser.add_argument("--counts", default="", help="Training images per class, comma-separated")
    parser.add_argument("--val", type=int, default=12, help="Validation images per class (default: %(default)s)")
    parser.add_argument("--test", type=int, default=20, help="Test images per class (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="Side of each image in px (default: %(default)s)")
    parser.add_argument("--flat", action="store_true", help="One folder per class, no split folders")
    parser.add_argument("--groups", type=int, default=0, help="Groups of near-identical crops per class (--flat)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        raise SystemExit(f"{args.out} exists; give a new folder")
    if args.kind == "faces":
        write_faces(args.out)
    else:
        if args.groups and not args.flat:
            raise SystemExit("--groups needs --flat")
        counts = [int(part) for part in args.counts.split(",")] if args.counts else [60] * len(SOURCES[args.kind])
        write_cropped(args.out, args.kind, counts, args.val, args.test, args.size, args.flat, args.groups, args.seed)
    total = sum(len(files) for _, _, files in os.walk(args.out))
    print(f"{total} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
