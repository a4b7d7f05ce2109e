"""How well the out-of-fold suspects of a multi-label cross-validation find
(image, label) values flipped on purpose (docs/cross_validation.md,
"Multi-label suspects").

    python benchmarks/multi_label_suspects_bench.py --work /tmp/mlsuspects

1. A multi-label folder of real-photo mosaics (make_multi_label.py: 5
   labels, 0 to 3 per image, a fixed test split).
2. --flip of the (image, label) pairs outside the test split flipped in a
   copy of its labels CSV (a 1 made 0: a label dropped; a 0 made 1: one
   added), chosen at random by --seed; the flipped pairs are kept aside.
3. `main.py --folds K` on the flipped CSV, trained from scratch (--weights
   none, --image_size, --epochs): each image predicted by the fold model
   that never trained on it (oof_predictions.csv).
4. The out-of-fold scores against the given labels, beside the
   constant-answer baselines (does it learn?), and the suspects
   (cross_validation.label_pair_suspects, the same ranking as
   label_suspects.csv) against the flipped pairs: precision and recall of
   the top k pairs for k = flipped/2, flipped, 2 x flipped, of the pairs
   confident learning calls suspect, and what picking pairs at random
   would find.
"""

import argparse
import csv
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cross_validation  # noqa: E402
import label_metrics  # noqa: E402


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def flip_pairs(rows, labels, fraction, rng):
    """The labels CSV `rows` (header, then filename,labels,split) with
    `fraction` of the non-test (image, label) pairs flipped. Returns (new
    rows, {(filename, label)} flipped)."""
    pool = [(number, label) for number, row in enumerate(rows[1:], start=1) if row[2] != "test" for label in labels]
    count = int(round(fraction * len(pool)))
    chosen = [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]
    sets = {number: set(filter(None, rows[number][1].split(";"))) for number in range(1, len(rows))}
    for number, label in chosen:
        sets[number] ^= {label}
    flipped = [rows[0]] + [[row[0], ";".join(sorted(sets[number])), row[2]] for number, row in enumerate(rows[1:], start=1)]
    return flipped, {(rows[number][0], label) for number, label in chosen}


def newest(folder):
    return os.path.join(folder, sorted(os.listdir(folder))[-1])


def out_of_fold(folder):
    """(paths, class names, given (N, L) booleans, probabilities (N, L)) of
    oof_predictions.csv in `folder`."""
    rows = read_rows(os.path.join(folder, "oof_predictions.csv"))
    names = [column[2:] for column in rows[0][4:]]
    paths = [row[0] for row in rows[1:]]
    given = np.array([[name in row[1].split(";") for name in names] for row in rows[1:]])
    probabilities = np.array([[float(value) for value in row[4:]] for row in rows[1:]])
    return paths, names, given, probabilities


def precision_recall(found, flipped):
    hits = len(found & flipped)
    return (hits / len(found) if found else 0.0), hits / len(flipped)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/multi_label_suspects_bench")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="more main.py options, one string")
    args = parser.parse_args(argv)

    data = os.path.join(args.work, "data")
    if not os.path.isfile(os.path.join(data, "labels.csv")):
        subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "make_multi_label.py"), "--out", data,
                        "--count", str(args.count), "--size", str(args.size)], check=True)
    rows = read_rows(os.path.join(data, "labels.csv"))
    labels = sorted({name for row in rows[1:] for name in row[1].split(";") if name})
    flipped_rows, flipped = flip_pairs(rows, labels, args.flip, np.random.default_rng(args.seed))
    flipped_csv = os.path.join(args.work, "labels_flipped.csv")
    with open(flipped_csv, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(flipped_rows)
    pairs = sum(1 for row in rows[1:] if row[2] != "test") * len(labels)
    print(f"{len(rows) - 1} images, {len(labels)} labels; flipped {len(flipped)} of {pairs} non-test (image, label) "
          f"pairs ({sum(1 for f, l in flipped if l in dict(((r[0], r[1]) for r in rows[1:]))[f].split(';'))} "
          "labels dropped, the others added)")

    artifacts_dir, results_dir = os.path.join(args.work, "artifacts"), os.path.join(args.work, "results")
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", data, "--labels_csv", flipped_csv,
               "--folds", str(args.folds), "--weights", "none", "--image_size", str(args.size),
               "--epochs", str(args.epochs), "--artifacts_dir", artifacts_dir, "--results_dir", results_dir,
               "--show", "0", "--seed", str(args.seed), *args.extra.split()]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    with open(os.path.join(args.work, "main.log"), "w", encoding="utf-8") as handle:
        handle.write(done.stdout + done.stderr)
    if done.returncode:
        print((done.stdout + done.stderr)[-3000:])
        raise SystemExit(f"main.py --folds failed (exit {done.returncode}); log: {os.path.join(args.work, 'main.log')}")
    folder = newest(os.path.join(results_dir, cross_validation.FOLDER))
    print(f"main.py --folds {args.folds}, {args.epochs} epochs at {args.size} px from scratch: {seconds:.0f} s; "
          f"summary {folder}")

    paths, names, given, probabilities = out_of_fold(folder)
    scores = label_metrics.evaluation_metrics(given, probabilities, names, np.full(len(names), 0.5))
    base = label_metrics.baselines(given, names)
    print(f"out-of-fold vs the given (flipped) labels, threshold 0.5: micro-F1 {scores['micro_avg']['f1']:.3f} "
          f"(constant answer {base['majority_micro_f1']:.3f}), mAP {scores['mAP']:.3f} (prevalence "
          f"{base['prevalence_map']:.3f}), exact set {scores['subset_accuracy']:.3f} "
          f"(constant answer {base['majority_subset_accuracy']:.3f})")
    for row in read_rows(os.path.join(folder, "summary.csv"))[1:]:
        if row[1] == "val":
            print(f"    validation folds {row[2]}: {float(row[4]):.3f} ± {float(row[5]):.3f}")

    order, suspect, _ = cross_validation.label_pair_suspects(given, probabilities)
    ranked = [(paths[i], names[j]) for i, j in order]
    flipped = {(path, label) for path, label in flipped if path in set(paths)}
    print(f"\n{len(flipped)} flipped pairs among {len(ranked)} out-of-fold pairs "
          f"(random picking: precision {len(flipped) / len(ranked):.3f})")
    print("| suspects | pairs | precision | recall |")
    print("|---|---:|---:|---:|")
    for k in sorted({max(1, len(flipped) // 2), len(flipped), 2 * len(flipped)}):
        precision, recall = precision_recall(set(ranked[:k]), flipped)
        print(f"| top {k} | {k} | {precision:.3f} | {recall:.3f} |")
    chosen = {(paths[i], names[j]) for i, j in np.argwhere(suspect)}
    precision, recall = precision_recall(chosen, flipped)
    print(f"| confident learning's suspects (label_suspects.csv) | {len(chosen)} | {precision:.3f} | {recall:.3f} |")
    listed = len(read_rows(os.path.join(folder, "label_suspects.csv"))) - 1
    assert listed == len(chosen), (listed, len(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
