"""Writes a benchmark folder of real-photo JPEGs, without any download.

scikit-learn ships two real photographs (china.jpg and flower.jpg, 427x640).
Random crops of them (random scale, position and flip, slight colour
change), resized to 500x375 and saved as JPEG quality 90, give real photo
content at the size of a typical phone/dataset photo:

    python benchmarks/make_photos.py --out /tmp/photos --count 2000

Layout: OUT/<photo name>/NNNNN.jpg (two classes). With --halves each crop
is cut into its left and right half instead (unflipped, so a half keeps
its side), OUT/<photo name>_<left|right>/NNNNN.jpg: four classes, and a
harder task, since neighbouring crops share the middle of the photo:

    python benchmarks/make_photos.py --out /tmp/ext_photos --count 400 --halves
"""

import argparse
import os
import sys

import numpy as np


def make_photos(out, count, width=500, height=375, seed=0, halves=False):
    """Writes `count` JPEGs under `out` (with `halves`, 2 x `count` half
    crops in four classes); skips if already complete."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    marker = os.path.join(out, f".complete-{count}{'-halves' if halves else ''}")
    if os.path.isfile(marker):
        return out
    photos = load_sample_images()
    names = [os.path.splitext(os.path.basename(name))[0] for name in photos.filenames]
    rng = np.random.default_rng(seed)
    for number in range(count):
        which = number % len(names)
        source = Image.fromarray(photos.images[which])
        scale = rng.uniform(0.6, 1.0)
        crop_w, crop_h = int(source.width * scale), int(source.width * scale * height / width)
        crop_h = min(crop_h, source.height)
        left = rng.integers(0, source.width - crop_w + 1)
        top = rng.integers(0, source.height - crop_h + 1)
        image = source.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BILINEAR)
        # A flipped left half would look like a right one: halves are never flipped.
        if rng.random() < 0.5 and not halves:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32) * rng.uniform(0.85, 1.15, size=3)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if halves:
            parts = {"left": image.crop((0, 0, width // 2, height)), "right": image.crop((width // 2, 0, width, height))}
        else:
            parts = {None: image}
        for side, part in parts.items():
            folder = os.path.join(out, names[which] + (f"_{side}" if side else ""))
            os.makedirs(folder, exist_ok=True)
            part.save(os.path.join(folder, f"{number:05d}.jpg"), quality=90)
    open(marker, "w").close()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="Folder to write (outside the repository)")
    parser.add_argument("--count", type=int, default=2000, help="Number of JPEGs (default: %(default)s)")
    parser.add_argument("--halves", action="store_true",
                        help="Cut each crop into its left and right half: four classes")
    args = parser.parse_args(argv)
    make_photos(args.out, args.count, halves=args.halves)
    print(f"{args.count * (2 if args.halves else 1)} JPEGs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
