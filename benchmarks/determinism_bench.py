"""What --deterministic 1 (TensorFlow's deterministic kernels, the default)
costs: main.py with it and without, in turn on the same folder, each a
fresh process; prints wall and CPU seconds of each and the median ratio.

    python benchmarks/make_photos.py --out /tmp/photos300 --count 300
    python benchmarks/determinism_bench.py --image_dir /tmp/photos300 --repeats 3
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(args, deterministic, scratch):
    """(wall seconds, CPU seconds) of one main.py process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", args.image_dir, "--weights", "none",
         "--image_size", str(args.image_size), "--epochs", str(args.epochs), "--show", "0",
         "--artifacts_dir", os.path.join(scratch, "artifacts"), "--results_dir", os.path.join(scratch, "results"),
         "--deterministic", str(deterministic)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ratios = {"wall": [], "cpu": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            on = timed_run(args, 1, scratch)  # in turn: the machine's drift hits both alike
            off = timed_run(args, 0, scratch)
            ratios["wall"].append(on[0] / off[0])
            ratios["cpu"].append(on[1] / off[1])
            print(f"pair {repeat + 1}: deterministic {on[0]:.1f} s wall {on[1]:.1f} s CPU, "
                  f"not {off[0]:.1f} s wall {off[1]:.1f} s CPU", flush=True)
    print(f"deterministic / not, median of {args.repeats} pairs: wall x{statistics.median(ratios['wall']):.3f}, "
          f"CPU x{statistics.median(ratios['cpu']):.3f}")


if __name__ == "__main__":
    main()
