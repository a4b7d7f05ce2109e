"""Does the demo still do what README.md says? Runs README.md's demo command,
`python main.py`, in a fresh working folder (its own data/,
model_artifacts/ and results/, as on a fresh clone), reads what the run
saved, and checks its test accuracy against the range stated once in
benchmarks/demo_bench.json, which README.md quotes.

    python benchmarks/demo_bench.py            # exit 1 when the accuracy is outside the range
    python benchmarks/demo_bench.py --record   # also records the run as demo_bench.json's "last_run"

demo_bench.json holds the range (set by hand from the runs measured so
far, each named in "range_from") and the last recorded run; README.md's
demo paragraph quotes both, and tests/test_readme_numbers.py checks that it
quotes them exactly, so a new recording without the README (or the
other way round) fails the fast tests. Not in the test suite: the demo
trains for 3-9 minutes on 2 CPU cores (30 epochs at most, 1,259 training
images), and the suite is over its time budget. Accuracy does not depend
on the machine's load (the same seed gives the same numbers on the same
machine and software); the minutes do.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "benchmarks", "demo_bench.json")
COMMAND = ["main.py"]  # README.md's demo command: python main.py


def read_record(path=RECORD):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def minutes(seconds):
    return f"{seconds // 60} min {seconds % 60:02d} s"


def readme_sentence(record):
    """The sentence of README.md's demo paragraph that quotes `record` (the
    range and the last recorded run): written here once, so that the test
    can check README.md says exactly this."""
    low, high = record["accuracy_range"]
    run = record["last_run"]
    return (
        f"`benchmarks/demo_bench.py` runs this command in a fresh folder and fails when the test accuracy "
        f"leaves {low:.2f}-{high:.2f}, the range `benchmarks/demo_bench.json` states; its last recorded run "
        f"({run['date']}, commit {run['commit']}, {run['cpu_cores']} CPU cores, {run['conditions']}): test accuracy "
        f"{run['test_accuracy']:.4f} on {run['test_images']} test images, early stopping at epoch {run['epochs']} "
        f"with the best epoch, {run['best_epoch']}, restored, in {minutes(run['wall_seconds'])} "
        f"({minutes(run['cpu_seconds'])} of CPU time)."
    )


def commit():
    """The checkout's short commit id, with "+changes" when it has uncommitted ones."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True)
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def run_demo(work, conditions):
    """Runs the demo in the folder `work` (`conditions`: what else ran on
    the machine meanwhile); returns what it measured."""
    checkout = commit()  # before: files edited while it runs are not what it ran
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, os.path.join(ROOT, *COMMAND)], cwd=work, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(work, "main.log"), "w", encoding="utf-8") as handle:  # what a user would have seen
        handle.write(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(f"python main.py failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    (run,) = os.listdir(os.path.join(work, "model_artifacts", "runs"))
    with open(os.path.join(work, "model_artifacts", "runs", run, "run_config.json"), encoding="utf-8") as handle:
        training = json.load(handle)["training"]
    with open(os.path.join(work, "results", "metrics", run, "metrics.json"), encoding="utf-8") as handle:
        scores = json.load(handle)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "date": datetime.date.today().isoformat(),
        "commit": checkout,
        "test_accuracy": round(scores["accuracy"], 4),
        "test_images": scores["num_samples"],
        "epochs": training["epochs"],
        "best_epoch": training["best_epoch"],
        "wall_seconds": round(wall),
        "cpu_seconds": round(cpu),
        "cpu_cores": os.cpu_count(),
        "conditions": conditions,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="record the run as demo_bench.json's last_run")
    parser.add_argument("--conditions", default="free cores",
                        help="what else ran on the machine, recorded with the run (the minutes depend on it)")
    parser.add_argument("--work", help="the working folder (default: a new temporary one, removed after)")
    args = parser.parse_args(argv)
    record = read_record()
    low, high = record["accuracy_range"]
    if args.work:
        os.makedirs(args.work, exist_ok=True)
        measured = run_demo(args.work, args.conditions)
    else:
        with tempfile.TemporaryDirectory(prefix="demo_bench-") as work:
            measured = run_demo(work, args.conditions)
    print(json.dumps(measured, indent=2))
    inside = low <= measured["test_accuracy"] <= high
    print(f"test accuracy {measured['test_accuracy']:.4f}: {'inside' if inside else 'OUTSIDE'} the range "
          f"{low:.2f}-{high:.2f} README.md states (benchmarks/demo_bench.json); last recorded: "
          f"{record['last_run']['test_accuracy']:.4f} on {record['last_run']['date']}")
    if args.record:
        with open(RECORD, "w", encoding="utf-8") as handle:
            json.dump({**record, "last_run": measured}, handle, indent=2)
            handle.write("\n")
        print(f"recorded in {RECORD}; README.md's demo paragraph must now say (tests/test_readme_numbers.py "
              f"checks it):\n{readme_sentence({**record, 'last_run': measured})}")
    return 0 if inside else 1


if __name__ == "__main__":
    sys.exit(main())
