"""What finding near-copies costs and how well it finds them (docs/data.md,
"Near-copies").

    python benchmarks/near_duplicates_bench.py --work /tmp/ndbench

1. Hashing: the audit of 2,000 real-photo JPEGs (500x375,
   make_photos.py) with the perceptual hashes and without them (the same
   audit, hashing switched off), alternated, median of --repeats; printed
   as the ratio.
2. Grouping: near_duplicates.near_duplicate_groups on 10,000 and 100,000
   generated hashes (random pictures, a tenth of them planted copies a
   few bits off), and how many planted copies it joined.
3. Recall: folders of near-copies from real photos (make_near_duplicates:
   textures at 64 and 128 px when scikit-image is installed, photos at
   64 px): spots whose copies all end in one group, and groups that join
   two spots.
4. False groups on sets of distinct real images: scikit-learn's 1,797
   digits (8x8 scans), and with scikit-image its 200 lfw_subset faces and
   non-faces and textures crops (make_small_folders.py), plus a folder of
   distinct photo spots.
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import audit  # noqa: E402
import near_duplicates  # noqa: E402


def audit_seconds(root, hashing):
    paths = sorted(os.path.relpath(path, root) for path in glob.glob(os.path.join(root, "*", "*.jpg")))
    original = audit._hashes
    if not hashing:
        audit._hashes = lambda pixels: ""
    try:
        start = time.perf_counter()
        checks, _ = audit.audit_files(root, paths)
        seconds = time.perf_counter() - start
    finally:
        audit._hashes = original
    assert all(check.usable for check in checks) and all(bool(check.phash) == hashing for check in checks)
    return seconds, len(paths)


def hashing_cost(work, repeats):
    import make_photos

    root = make_photos.make_photos(os.path.join(work, "photos"), 2000)
    audit_seconds(root, True)  # TensorFlow and the page cache warmed up
    times = {True: [], False: []}
    for _ in range(repeats):
        for hashing in (False, True):
            seconds, count = audit_seconds(root, hashing)
            times[hashing].append(seconds)
    plain, hashed = statistics.median(times[False]), statistics.median(times[True])
    print(f"1. audit of {count} JPEGs 500x375: {plain:.2f} s without hashes, {hashed:.2f} s with them "
          f"(median of {repeats}): x{hashed / plain:.2f}, {1000 * (hashed - plain) / count:.2f} ms per image")


def planted_hashes(count, seed=0):
    rng = np.random.default_rng(seed)
    hashes = np.repeat(rng.integers(0, 2**63, size=(count, 1), dtype=np.int64).view(np.uint64),
                       near_duplicates.WINDOWS, axis=1)
    for _ in range(3):  # the other windows a few bits off the middle one
        hashes ^= np.uint64(1) << rng.integers(0, 64, size=hashes.shape).astype(np.uint64)
    hashes[:, near_duplicates.CENTER] = hashes[:, 0]
    planted = count // 10
    copies = hashes[:planted].copy()
    for _ in range(2):
        copies ^= (np.uint64(1) << rng.integers(0, 64, size=(planted, 1)).astype(np.uint64))
    hashes[-planted:] = copies
    return hashes, planted


def grouping_time():
    for count in (10_000, 100_000):
        hashes, planted = planted_hashes(count)
        start = time.perf_counter()
        groups = near_duplicate_groups = near_duplicates.near_duplicate_groups(hashes)
        seconds = time.perf_counter() - start
        joined = {tuple(group) for group in near_duplicate_groups}
        found = sum((number, count - planted + number) in joined for number in range(planted))
        print(f"2. {count:,} hashes grouped in {seconds:.1f} s: {found:,} of {planted:,} planted copies joined, "
              f"{len(groups):,} groups")


def folder_hashes(root):
    from PIL import Image

    paths = sorted(os.path.relpath(path, root) for path in glob.glob(os.path.join(root, "**", "*.*"), recursive=True))
    return paths, np.array([near_duplicates.image_hashes(Image.open(os.path.join(root, p))) or (0,) * 9
                            for p in paths], dtype=np.uint64)


def recall(work):
    import make_near_duplicates

    kinds = [("photos", 64)]
    try:
        import skimage  # noqa: F401

        kinds = [("textures", 64), ("textures", 128), *kinds]
    except ImportError:
        print("3. (textures need scikit-image: pip install scikit-image)")
    for kind, size in kinds:
        root = os.path.join(work, f"near-{kind}-{size}")
        truth_path = root + "-spots.json"
        if not os.path.isfile(truth_path):
            make_near_duplicates.make_near_duplicates(root, kind=kind, spots=30, copies=4, size=size)
        truth = json.load(open(truth_path))
        paths, hashes = folder_hashes(root)
        spot = np.array([truth[path]["spot"] for path in paths])
        label = np.arange(len(paths))
        groups = near_duplicates.near_duplicate_groups(hashes)
        for group in groups:
            label[group] = group[0]
        whole = sum(len(set(label[spot == name])) == 1 for name in set(spot))
        false = sum(len(set(spot[group])) > 1 for group in groups)
        print(f"3. {kind} at {size} px, {len(set(spot))} spots x 4 copies: {whole} spots whole, "
              f"{false} group(s) joining two spots")


def false_groups(work):
    from PIL import Image
    from sklearn.datasets import load_digits

    def report(name, images):
        hashes = np.array([near_duplicates.image_hashes(image) or (0,) * 9 for image in images], dtype=np.uint64)
        groups = near_duplicates.near_duplicate_groups(hashes)
        print(f"4. {name}: {len(images)} distinct images, {len(groups)} false group(s) "
              f"({sum(len(group) for group in groups)} images)")

    digits = load_digits().images
    report("scikit-learn digits", [Image.fromarray((255 - d * 255 / 16).astype(np.uint8)) for d in digits])
    import make_near_duplicates

    root = os.path.join(work, "distinct-photos")
    if not os.path.isdir(root):
        make_near_duplicates.make_near_duplicates(root, kind="photos", spots=30, copies=1, size=64)
    report("photo spots (no copies)", [Image.open(os.path.join(root, p)) for p in folder_hashes(root)[0]])
    try:
        from skimage import data
    except ImportError:
        return
    report("scikit-image lfw_subset faces", [Image.fromarray((face * 255).astype(np.uint8)) for face in data.lfw_subset()])
    import make_small_folders

    root = os.path.join(work, "textures")
    if not os.path.isdir(root):
        make_small_folders.main(["--kind", "textures", "--out", root, "--counts", "120,36,12"])
    report("textures crops (make_small_folders)", [Image.open(os.path.join(root, p)) for p in folder_hashes(root)[0]])
    root = os.path.join(work, "near-textures-64")
    if os.path.isdir(root):
        truth = json.load(open(root + "-spots.json"))
        firsts = {}
        for path, entry in sorted(truth.items()):
            firsts.setdefault(entry["spot"], path)
        report("texture spots, one copy each", [Image.open(os.path.join(root, p)) for p in firsts.values()])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="a folder for the generated images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_hashing", action="store_true", help="skip the 2,000-photo audit timing")
    options = parser.parse_args(argv)
    os.makedirs(options.work, exist_ok=True)
    if not options.skip_hashing:
        hashing_cost(options.work, options.repeats)
    grouping_time()
    recall(options.work)
    false_groups(options.work)


if __name__ == "__main__":
    main()
