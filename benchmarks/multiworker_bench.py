"""Training images/s with one and two workers on this machine.

    python benchmarks/multiworker_bench.py --image_dir DIR --image_size 96 \
        --batch_size 16 --steps 40 --repeats 3

Three settings, each in its own processes, over the same files and the
same per-replica batch (--batch_size, as in main.py):

- fit: one process, model.fit on the default strategy (the standard way,
  main.py on one machine);
- loop x1: one process, MultiWorkerMirroredStrategy without a cluster and
  the hand-written step main.py uses with several workers (its overhead
  against model.fit);
- loop x2: two worker processes on 127.0.0.1 (TF_CONFIG), each reading its
  share of the files; a step trains on twice the images.

Images/s count every replica's images over the timed steps, after a
warm-up that traces the step. Two workers on one machine share its cores,
so this measures the overhead of the collectives, not a speed-up; on two
machines each worker has its own. Random weights: the speed does not
depend on their values, and nothing is downloaded.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SETTINGS = ("fit", "loop x1", "loop x2")


def training_files(args):
    import artifacts
    import splits

    cache_dir = artifacts.audit_cache_dir(os.path.join(ROOT, "model_artifacts"))
    index = splits.index_dataset(args.image_dir, 0.15, 0.15, args.seed, cache_dir=cache_dir)
    paths, labels = index.split("train")
    return index, paths, labels


def build_model(args, num_classes, strategy):
    import model_builder
    import train_utils

    with strategy.scope():
        model = model_builder.build_classifier(num_classes, image_size=args.image_size, alpha=args.alpha, weights="none")
        train_utils.compile_model(model, 1e-3, False)
        model.optimizer.build(model.trainable_variables)
    return model


def measure_fit(args):
    """images/s of model.fit, one process, the default strategy."""
    import data_loader
    import tensorflow as tf

    index, paths, labels = training_files(args)
    dataset = data_loader.make_dataset(
        paths, labels, args.image_size, args.batch_size, training=True, seed=args.seed,
        decoders=index.decoders("train"), cache=args.cache,
    ).repeat()
    model = build_model(args, len(index.class_names), tf.distribute.get_strategy())
    model.fit(dataset, steps_per_epoch=args.warmup, epochs=1, verbose=0)  # traces the step
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    return args.steps * args.batch_size / (time.perf_counter() - start)


def measure_loop(args):
    """images/s of main.py's multi-worker step under MultiWorkerMirroredStrategy
    (a cluster from TF_CONFIG, or this process alone)."""
    import data_loader
    import devices
    import tensorflow as tf
    import train_utils

    # Without TF_CONFIG: this process alone, as worker 0 of 1.
    cluster = devices.cluster_from_environment() or devices.Cluster("worker", 0, 0, ("localhost",))
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    setup = devices.DeviceSetup(strategy, 0, False, False, devices.Workers(strategy, cluster))
    index, paths, labels = training_files(args)
    global_batch_size = setup.global_batch(args.batch_size)
    data = data_loader.worker_data(
        paths, labels, global_batch_size, cluster.worker_index, cluster.num_workers, setup.replicas,
        image_size=args.image_size, training=True, seed=args.seed, decoders=index.decoders("train"), cache=args.cache,
    )
    model = build_model(args, len(index.class_names), strategy)
    train_step, _ = train_utils.step_functions(model, setup, global_batch_size, None, False)
    iterator = iter(data.dataset)
    for _ in range(args.warmup):
        train_step(iterator).numpy()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(iterator).numpy()  # as the training loop: one result per step
    return args.steps * global_batch_size / (time.perf_counter() - start)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def run_setting(args, setting):
    """images/s of one setting, measured in fresh processes (the chief's)."""
    command = [
        sys.executable, os.path.abspath(__file__), "--image_dir", args.image_dir,
        "--image_size", str(args.image_size), "--alpha", str(args.alpha), "--batch_size", str(args.batch_size),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--cache", args.cache,
        "--only", "fit" if setting == "fit" else "loop",
    ]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("TF_CONFIG", None)
    workers = 2 if setting == "loop x2" else 1
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes = []
    try:
        for index in range(workers):
            if workers > 1:
                environment["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
            processes.append(subprocess.Popen(command, env=dict(environment), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [process.communicate(timeout=1800) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = [line for line in outputs[0][0].splitlines() if line.startswith("images/s:")]
    if any(process.returncode for process in processes) or not lines:
        raise RuntimeError(f"{setting} failed:\n{outputs[0][1][-2000:]}")
    return float(lines[-1].split(":")[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Training images/s with one and two workers on this machine.")
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--batch_size", type=int, default=16, help="Per replica, as main.py's (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cache", choices=("auto", "memory", "none"), default="memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", help="Also write the figures to this JSON file")
    parser.add_argument("--only", choices=("fit", "loop"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.only:
        speed = measure_fit(args) if args.only == "fit" else measure_loop(args)
        print(f"images/s: {speed:.2f}", flush=True)
        return 0

    runs = {setting: [] for setting in SETTINGS}
    for repeat in range(args.repeats):  # interleaved, so a slow spell hits every setting
        for setting in SETTINGS:
            runs[setting].append(run_setting(args, setting))
            print(f"run {repeat + 1}: {setting:8s} {runs[setting][-1]:8.1f} images/s", flush=True)
    medians = {setting: statistics.median(values) for setting, values in runs.items()}
    print(f"\nmedian of {args.repeats} runs, images/s (per replica batch {args.batch_size}, {args.image_size} px):")
    for setting in SETTINGS:
        print(f"  {setting:8s} {medians[setting]:8.1f}   x{medians[setting] / medians['fit']:.2f} of model.fit")
    print(f"  two workers / one (same loop): x{medians['loop x2'] / medians['loop x1']:.2f}")
    if args.json:
        import artifacts

        artifacts.write_json(args.json, {"runs": runs, "medians": medians, "settings": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
