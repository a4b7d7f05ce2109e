"""Peak memory of the streaming input pipeline vs the number of files.

    python benchmarks/memory_bench.py --image_dir DIR --multiplier 4

Runs one full training epoch (shuffle, decode, augment) through
data_loader.make_dataset over the folder's files, and again over
`multiplier` times as many files (hard links to the same images under a
temporary folder, so each is a separate file to open and decode), each in
its own process, and compares the peak resident memory. A generator-style
pipeline holds only paths, so the ratio should stay near 1.0.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def list_files(folder):
    return sorted(
        os.path.join(current, name)
        for current, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith((".jpg", ".jpeg", ".png"))
    )


def one_epoch(folder, image_size, batch_size, cache):
    """Peak RSS in MiB after one epoch over every image under `folder`."""
    import augment
    import data_loader

    files = list_files(folder)
    kwargs = {"cache": cache} if cache != "none" else {}
    dataset = data_loader.make_dataset(
        files, [0] * len(files), image_size, batch_size, training=True,
        augmentation=augment.AugmentConfig(), seed=0, **kwargs,
    )
    count = sum(int(images.shape[0]) for images, _ in dataset)
    assert count == len(files)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def linked_copy(folder, multiplier, target):
    """`multiplier` hard-linked copies of every file of `folder` in `target`."""
    for number, path in enumerate(list_files(folder)):
        extension = os.path.splitext(path)[1]
        for copy in range(multiplier):
            link = os.path.join(target, f"copy{copy}", f"{number:06d}{extension}")
            os.makedirs(os.path.dirname(link), exist_ok=True)
            try:
                os.link(path, link)
            except OSError:  # another file system: fall back to a symlink
                os.symlink(path, link)
    return target


def measure_in_subprocess(folder, args):
    command = [
        sys.executable, os.path.abspath(__file__), "--image_dir", folder, "--only",
        "--image_size", str(args.image_size), "--batch_size", str(args.batch_size), "--cache", args.cache,
    ]
    output = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in output.stdout.splitlines() if line.startswith("peak_rss_mib:")]
    if output.returncode != 0 or not lines:
        raise RuntimeError(output.stderr[-2000:])
    return float(lines[-1].split(":")[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Peak RSS of an epoch vs number of files.")
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--multiplier", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--cache", choices=("none", "memory", "auto"), default="none")
    parser.add_argument("--only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.only:
        print(f"peak_rss_mib: {one_epoch(args.image_dir, args.image_size, args.batch_size, args.cache):.1f}")
        return 0
    count = len(list_files(args.image_dir))
    base = measure_in_subprocess(args.image_dir, args)
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as folder:
        many = measure_in_subprocess(linked_copy(args.image_dir, args.multiplier, folder), args)
    print(f"{count:7d} files: peak RSS {base:8.1f} MiB")
    print(f"{count * args.multiplier:7d} files: peak RSS {many:8.1f} MiB")
    print(f"ratio ({args.multiplier}x files, cache={args.cache}): x{many / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
