"""What the web page costs per image: its round trip through the HTTP API
against the model's own predict_on_batch, for the same image in one run.

    python benchmarks/app_bench.py --artifacts_dir /tmp/app_art --repeats 10

Starts `python app.py` on a free localhost port (the published model of
--artifacts_dir, or --model), then, for one image (--image, default the
first test image of the model's split):
- the model alone: `predict_on_batch` of the image decoded and resized as
  training does (image_io.load_image), in this process;
- the page's own work, in this process: app.answer_files (the upload's
  audit check, the tf.data read and decode, the prediction, the card's
  image read again, Grad-CAM), and its parts;
- the round trip: gradio_client uploads the file, asks /classify and reads
  the answer (table, CSV, status), through the real server.
Each figure is the median of --repeats timings after one untimed warm-up,
printed in ms and as ratios to predict_on_batch.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def median_ms(step, repeats):
    """Median milliseconds of `step()` over `repeats` calls, after one untimed call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(arguments, port, timeout=300):
    """`python app.py ARGUMENTS --port PORT`, once it prints its address."""
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "app.py"), *arguments, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
    deadline = time.monotonic() + timeout
    while not any(line.startswith("Open http") for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("app.py did not start:\n" + "".join(lines)[-2000:])
        time.sleep(0.2)
    return process


def first_test_image(trained):
    import artifacts

    rows = [row for row in artifacts.read_manifest(trained.folder) if row.split == "test"]
    return os.path.join(trained.run_config["image_dir"], rows[0].path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts_dir", default="model_artifacts")
    parser.add_argument("--model", default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import app
    import artifacts
    import image_io
    import inference

    model_path = artifacts.model_path(args.artifacts_dir, args.model)
    served = app.load_served(app.key_of(model_path, args.artifacts_dir), model_path)
    trained = served.trained
    image = args.image or first_test_image(trained)
    print(f"model {trained.path} ({trained.run_config.get('backbone')}, {trained.image_size} px); image {image}")

    pixels = image_io.load_image(image, trained.image_size).numpy()[None]
    model_ms = median_ms(lambda: trained.model.predict_on_batch(pixels), args.repeats)
    parts = {
        "check (audit.check_file)": lambda: app.check_uploads([image], [os.path.basename(image)]),
        # The page's way: eager decode, no tf.data pipeline per request.
        "read + predict (eager: load_images)": lambda: (
            inference.predict_images(
                trained.model, image_io.load_images([image], trained.image_size)[1], app.BATCH_SIZE)),
        # The way before: a tf.data pipeline built per request.
        "read + predict (tf.data: predict_files)": lambda: inference.predict_files(
            trained.model, [image], trained.image_size, app.BATCH_SIZE),
        "card image + Grad-CAM (app.card_images)": lambda: app.card_images(
            served, [image], [[1.0] * len(trained.class_names)]),
        "all of it (app.answer_files)": lambda: app.answer_files(served, [image], top_k=3),
    }
    page_ms = {name: median_ms(step, args.repeats) for name, step in parts.items()}

    port = free_port()
    serving = ["--artifacts_dir", args.artifacts_dir] + (["--model", args.model] if args.model else [])
    process = start_server(serving, port)
    try:
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        key = app.key_of(model_path, args.artifacts_dir)
        round_trip_ms = median_ms(
            lambda: client.predict(files=[handle_file(image)], key=key, api_name="/classify"), args.repeats
        )
    finally:
        process.terminate()
        process.wait(timeout=60)

    print(f"\nmedian of {args.repeats}, one image, ms (ratio to predict_on_batch):")
    print(f"  model.predict_on_batch                   {model_ms:8.1f}   x1.0")
    for name, value in page_ms.items():
        print(f"  {name:<40} {value:8.1f}   x{value / model_ms:.1f}")
    print(f"  round trip through the HTTP API          {round_trip_ms:8.1f}   x{round_trip_ms / model_ms:.1f}")
    rest = round_trip_ms - page_ms["all of it (app.answer_files)"]
    print(f"  of which Gradio, HTTP and the client     {rest:8.1f}")
    print(f"\nround trip / predict_on_batch: x{round_trip_ms / model_ms:.1f}")


if __name__ == "__main__":
    main()
