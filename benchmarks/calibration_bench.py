"""Does fitting the temperature on the validation split that also chose
the checkpoint cost test calibration? main.py fits T on that split; the
alternative is data the checkpoint choice never saw. First table: each
run's test split is cut in two stratified halves;
T is fitted once on the validation split (as main.py does) and once on
one test half, and both are scored on the other half (then the halves
swap, and the two scores are averaged). Both Ts are scored on the same
images, which neither fit saw.

    python benchmarks/calibration_bench.py --work /tmp/calibration_bench

Two real folders are made under WORK by make_small_folders.py (the
small-data benchmark's textures 120/36/12, imbalanced, and objects
4x40; 20 test images per class). Each run is small_data_bench.py's
`main.py --weights none --image_size 64 --epochs 20 --batch_size 16
--seed S`. Rows are appended to WORK/calibration.jsonl (a rerun skips
what is there); the table gives medians over the seeds of the test-half
ECE (15 bins) and NLL at T = 1, at the validation T and at the held-out T.

In these folders the test crops come from another part of each photo than
the training and validation crops (make_small_folders.py), so a T fitted
on test images also matches that shift. The second table takes it out:
the same folders with half of each class's validation images moved out of
the dataset ("-halfval"); the run chooses its checkpoint on the other half
(main.py fits T there, as always), and a second T is fitted on the moved
half, which the run never saw, from the same photos' same part. Both are
scored on the whole test split. (The table in docs/evaluation.md was
measured before calibration.fit_on kept T = 1 on a validation split the
model gets entirely right; a rerun shows T = 1 on those runs.)
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import small_data_bench  # noqa: E402

FOLDERS = ("textures 120/36/12", "objects 4x40")
SETTING = "calibration"


def logits_of(trained, paths_and_labels, image_size):
    """(logits before temperature, labels) of `trained` on (path, label index) pairs."""
    import calibration
    import image_io

    images = np.stack([image_io.load_image(path, image_size).numpy() for path, _ in paths_and_labels])
    logits = calibration.logits_model(trained.model).predict(images, verbose=0)
    return np.asarray(logits, np.float64), np.array([label for _, label in paths_and_labels])


def split_logits(trained, folder, image_size):
    """{split: (logits, labels)} of the validation and test splits of the run's manifest."""
    class_names = list(trained.class_names)
    with open(os.path.join(trained.folder, "split_manifest.csv"), newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {split: logits_of(trained, [(os.path.join(folder, row["path"]), class_names.index(row["class"]))
                                       for row in rows if row["split"] == split], image_size)
            for split in ("val", "test")}


def halves(labels, seed):
    """Two stratified halves of the indices of `labels`."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        first.extend(members[: len(members) // 2])
        second.extend(members[len(members) // 2:])
    return np.array(first), np.array(second)


def scores(logits, labels, temperature):
    import calibration

    probabilities = calibration.softmax(logits, temperature)
    return (calibration.expected_calibration_error(labels, probabilities),
            calibration.negative_log_likelihood(labels, probabilities))


def measure(found, seed):
    """The row of one run: Ts and the test-half scores, averaged over both directions."""
    import calibration

    val_logits, val_labels = found["val"]
    test_logits, test_labels = found["test"]
    t_val = calibration.fit_on(val_logits, val_labels)["temperature"]
    per_direction = []
    first, second = halves(test_labels, seed)
    for fit, score in ((first, second), (second, first)):
        t_held = calibration.fit_on(test_logits[fit], test_labels[fit])["temperature"]
        scored = (test_logits[score], test_labels[score])
        per_direction.append({"t_held": t_held, "raw": scores(*scored, 1.0), "val": scores(*scored, t_val),
                              "held": scores(*scored, t_held)})
    mean = lambda key, index: float(np.mean([row[key][index] for row in per_direction]))  # noqa: E731
    return {
        "t_val": t_val, "t_held": [row["t_held"] for row in per_direction],
        "val_images": len(val_labels), "test_half_images": [len(first), len(second)],
        **{f"ece_{key}": mean(key, 0) for key in ("raw", "val", "held")},
        **{f"nll_{key}": mean(key, 1) for key in ("raw", "val", "held")},
        "test_accuracy": float(np.mean(test_logits.argmax(axis=1) == test_labels)),
    }


def variant_name(folder):
    """The name of `folder`'s variant with half its validation images: "textures-halfval 120/36/12"."""
    kind, counts = folder.split(" ", 1)
    return f"{kind}-halfval {counts}"


def halve_validation(work, folder):
    """WORK/data/<name>-halfval: the folder with half of each class's
    validation images (every other file, sorted), the other half in
    WORK/data/<name>-heldout/<class>/, outside it. Returns the variant's name."""
    source = small_data_bench.folder_path(work, folder)
    name = variant_name(folder)
    target, heldout = small_data_bench.folder_path(work, name), source + "-heldout"
    if not os.path.isdir(target):
        shutil.copytree(source, target + ".partial")
        for label in sorted(os.listdir(os.path.join(target + ".partial", "val"))):
            files = sorted(os.listdir(os.path.join(target + ".partial", "val", label)))
            os.makedirs(os.path.join(heldout, label), exist_ok=True)
            for file in files[1::2]:
                shutil.move(os.path.join(target + ".partial", "val", label, file), os.path.join(heldout, label, file))
        os.rename(target + ".partial", target)
    return name


def heldout_logits(trained, heldout, image_size):
    """(logits, labels) of the held-out validation half (heldout/<class>/...)."""
    class_names = list(trained.class_names)
    return logits_of(trained, [(os.path.join(heldout, label, file), class_names.index(label))
                               for label in sorted(os.listdir(heldout))
                               for file in sorted(os.listdir(os.path.join(heldout, label)))], image_size)


def measure_heldout(found, heldout):
    """The row of one -halfval run: T on the checkpoint-choosing half (main.py's)
    and on the held-out half, both scored on the whole test split."""
    import calibration

    t_val = calibration.fit_on(*found["val"])["temperature"]
    t_held = calibration.fit_on(*heldout)["temperature"]
    test = found["test"]
    return {
        "t_val": t_val, "t_held": [t_held], "val_images": len(found["val"][1]), "heldout_images": len(heldout[1]),
        **{f"ece_{key}": scores(*test, t)[0] for key, t in (("raw", 1.0), ("val", t_val), ("held", t_held))},
        **{f"nll_{key}": scores(*test, t)[1] for key, t in (("raw", 1.0), ("val", t_val), ("held", t_held))},
        "test_accuracy": float(np.mean(test[0].argmax(axis=1) == test[1])),
    }


def print_table(rows):
    print(f"\n{'folder':20} {'seeds':>5} {'test acc':>8}  {'T val':>6} {'T held':>6}  "
          f"{'ECE T=1':>7} {'ECE val':>7} {'ECE held':>8}  {'NLL T=1':>7} {'NLL val':>7} {'NLL held':>8}")
    for folder in (*FOLDERS, *map(variant_name, FOLDERS)):
        mine = [row for row in rows if row["folder"] == folder and "ece_val" in row]
        if not mine:
            continue
        median = lambda key: statistics.median(row[key] for row in mine)  # noqa: E731
        held = statistics.median(t for row in mine for t in row["t_held"])
        print(f"{folder:20} {len(mine):5d} {median('test_accuracy'):8.3f}  {median('t_val'):6.2f} {held:6.2f}  "
              f"{median('ece_raw'):7.3f} {median('ece_val'):7.3f} {median('ece_held'):8.3f}  "
              f"{median('nll_raw'):7.3f} {median('nll_val'):7.3f} {median('nll_held'):8.3f}")
        for row in sorted(mine, key=lambda row: row["seed"]):
            held = "/".join(f"{t:.2f}" for t in row["t_held"])
            print(f"{'':20} s{row['seed']}: acc {row['test_accuracy']:.3f}, T val {row['t_val']:.2f}, "
                  f"T held {held}, ECE {row['ece_raw']:.3f} -> "
                  f"{row['ece_val']:.3f} (val T) / {row['ece_held']:.3f} (held-out T)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="Folder for the data, the runs and calibration.jsonl")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--table", action="store_true", help="Only print the table of calibration.jsonl")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = os.path.join(args.work, "calibration.jsonl")
    rows = small_data_bench.read_results(results)
    if not args.table:
        small_data_bench.make_folders(args.work)
        done = {(row["folder"], row["seed"]) for row in rows}
        variants = {halve_validation(args.work, folder): folder for folder in FOLDERS}
        for folder in (*FOLDERS, *variants):
            for seed in (int(seed) for seed in args.seeds.split(",")):
                if (folder, seed) in done:
                    continue
                row = small_data_bench.one_run(args.work, folder, SETTING, "", seed)
                if "error" not in row:
                    import inference

                    trained = inference.load_trained_model(os.path.join(
                        args.work, "runs", f"{folder.split()[0]}-{SETTING}-{seed}", "artifacts", "best_model.keras"))
                    found = split_logits(trained, small_data_bench.folder_path(args.work, folder), 64)
                    if folder in variants:
                        heldout = small_data_bench.folder_path(args.work, variants[folder]) + "-heldout"
                        row.update(measure_heldout(found, heldout_logits(trained, heldout, 64)))
                    else:
                        row.update(measure(found, seed))
                print(json.dumps(row), flush=True)
                with open(results, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()
