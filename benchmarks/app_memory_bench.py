"""Does the web page stay flat under many requests: the server's resident
memory and the files it keeps in its private temporary folder.

    python benchmarks/app_memory_bench.py --artifacts_dir model_artifacts --requests 500

Starts `python app.py` on a free localhost port with a temporary folder of
its own (TMPDIR), sends --requests classify requests through
gradio_client (each uploads --images distinct small PNGs, so Gradio's
upload cache cannot share one file between requests), and prints the
server's resident memory (VmRSS), the entries directly under its private
folder and the files in it at any depth after the first --warm_up requests and then every --every
requests, and the growth from the warm-up to the end.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import app_bench  # noqa: E402


def resident_mb(pid):
    """The resident memory of process `pid` in MB (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def entries(temp):
    """(entries directly under the server's private folder, files in it at
    every depth); the private folder is the one app.py made in `temp`."""
    private = [os.path.join(temp, name) for name in os.listdir(temp) if name.startswith("image-classifier-app-")]
    if not private:
        return 0, 0
    files = sum(len(names) for _, _, names in os.walk(private[0]))
    return len(os.listdir(private[0])), files


def write_images(folder, count, size):
    """`count` distinct PNGs of size x size pixels; returns their paths."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    paths = []
    for number in range(count):
        path = os.path.join(folder, f"upload_{number:04d}.png")
        Image.fromarray(generator.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts_dir", default="model_artifacts")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warm_up", type=int, default=20)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--size", type=int, default=48)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    with tempfile.TemporaryDirectory(prefix="app-memory-bench-") as work:
        server_temp = os.path.join(work, "server_temp")
        os.makedirs(server_temp)
        uploads = write_images(work, args.requests * args.images, args.size)
        port = app_bench.free_port()
        saved_temp = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = server_temp  # the server's private folder goes here
        try:
            process = app_bench.start_server(["--artifacts_dir", args.artifacts_dir], port)
        finally:
            if saved_temp is None:
                os.environ.pop("TMPDIR")
            else:
                os.environ["TMPDIR"] = saved_temp
        try:
            from gradio_client import Client, handle_file

            client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False,
                            download_files=os.path.join(work, "downloads"))
            import app
            import artifacts

            model_path = artifacts.model_path(args.artifacts_dir)
            key = app.key_of(model_path, args.artifacts_dir)
            print(f"{'requests':>8} {'RSS MB':>8} {'entries':>8} {'files':>8} {'s/request':>10}")
            start, mark = None, time.perf_counter()
            for number in range(1, args.requests + 1):
                shared = uploads[(number - 1) * args.images:number * args.images]
                client.predict(files=[handle_file(path) for path in shared], key=key, api_name="/classify")
                if number == args.warm_up or number % args.every == 0 or number == args.requests:
                    now = time.perf_counter()
                    rss = resident_mb(process.pid)
                    folders, files = entries(server_temp)
                    print(f"{number:>8} {rss:>8.1f} {folders:>8} {files:>8} {(now - mark) / max(1, number):>10.3f}",
                          flush=True)
                    if number == args.warm_up:
                        start = (rss, folders, files)
            rss, folders, files = resident_mb(process.pid), *entries(server_temp)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print(f"\nafter {args.warm_up} warm-up requests -> after {args.requests}: RSS {start[0]:.1f} -> {rss:.1f} MB "
          f"({rss - start[0]:+.1f} MB); the private folder's entries {start[1]} -> {folders}, "
          f"files in it {start[2]} -> {files}")


if __name__ == "__main__":
    main()
