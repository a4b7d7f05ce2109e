"""Near-copies: the perceptual hashes, the rule that joins a pair, the
groups kept in one split and one fold, the pre-split folder's report, and
evaluate.py on a folder that holds copies of the training images."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from conftest import ROOT, make_flat_dataset, read_json
from PIL import Image

import audit
import evaluate
import inspect_dataset
import near_duplicates
import splits

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import make_near_duplicates  # noqa: E402  (benchmarks/ is not a package)


@pytest.fixture(scope="module")
def copies_folder(tmp_path_factory):
    """Real photos: 2 classes x 8 spots, each spot saved 4 times (the first
    as cut, then 3 of: re-encoded, resized and back, cut 3 px off,
    brightness +-4%) under random names, 64 px. Keys: root, spot_of."""
    root = tmp_path_factory.mktemp("near") / "photos"
    truth = make_near_duplicates.make_near_duplicates(str(root), kind="photos", spots=8, copies=4, size=64)
    spot_of = {path: entry["spot"] for path, entry in read_json(truth).items()}
    return {"root": str(root), "spot_of": spot_of}


def hashes_of(root, paths):
    return np.array([near_duplicates.image_hashes(Image.open(os.path.join(root, path))) for path in paths],
                    dtype=np.uint64)


def spots_straddling(index, spot_of):
    splits_of = {}
    for sample in index.samples:
        splits_of.setdefault(spot_of[sample.path], set()).add(sample.split)
    return sorted(spot for spot, where in splits_of.items() if len(where) > 1)


# ---------------------------------------------------------------- the rule


def test_every_copy_joins_its_spot_and_no_two_spots_join(copies_folder):
    paths = sorted(copies_folder["spot_of"])
    groups = near_duplicates.near_duplicate_groups(hashes_of(copies_folder["root"], paths))
    found = sorted(sorted(paths[member] for member in group) for group in groups)
    by_spot = {}
    for path in paths:
        by_spot.setdefault(copies_folder["spot_of"][path], []).append(path)
    assert found == sorted(sorted(members) for members in by_spot.values())


def test_a_copy_cut_3_px_off_is_closer_aligned_than_the_whole_picture_hash_says(copies_folder, tmp_path):
    photo = Image.open(os.path.join(copies_folder["root"], sorted(copies_folder["spot_of"])[0])).convert("RGB")
    pixels = np.asarray(photo)
    shifted = Image.fromarray(np.pad(pixels, ((3, 0), (3, 0), (0, 0)), mode="edge")[:64, :64])
    mine, theirs = (np.array(near_duplicates.image_hashes(image), dtype=np.uint64) for image in (photo, shifted))
    aligned = int(np.bitwise_count(mine[near_duplicates.CENTER] ^ theirs).min())
    whole = int(np.bitwise_count(mine[near_duplicates.CENTER] ^ theirs[near_duplicates.CENTER]))
    assert aligned <= near_duplicates.DEFAULT_DISTANCE and aligned <= whole


def test_a_folder_without_copies_has_no_group(tmp_path):
    truth = make_near_duplicates.make_near_duplicates(str(tmp_path / "distinct"), kind="photos", spots=20,
                                                      copies=1, size=64)
    paths = sorted(read_json(truth))
    assert near_duplicates.near_duplicate_groups(hashes_of(str(tmp_path / "distinct"), paths)) == []


def test_a_flat_picture_has_no_hash_and_joins_nothing():
    assert near_duplicates.image_hashes(np.full((40, 40, 3), 200, np.uint8)) == ()
    assert near_duplicates.to_text(()) == ""


def test_the_hash_tables_of_a_large_folder_find_the_planted_copies():
    rng = np.random.default_rng(0)
    count = 4000  # above EXACT_LIMIT: the table search
    centers = rng.integers(0, 2**63, size=count, dtype=np.int64).view(np.uint64)
    hashes = np.repeat(centers[:, None], near_duplicates.WINDOWS, axis=1)
    planted = 200
    flips = rng.integers(0, 64, size=(planted, 3)).astype(np.uint64)
    copies = hashes[:planted].copy()
    for bits in flips.T:
        copies ^= (np.uint64(1) << bits)[:, None]
    hashes[-planted:] = copies
    assert count > near_duplicates.EXACT_LIMIT
    groups = near_duplicates.near_duplicate_groups(hashes)
    joined = {tuple(group) for group in groups}
    found = sum((number, count - planted + number) in joined for number in range(planted))
    assert found >= 0.95 * planted and len(groups) <= planted + 5


def test_the_table_search_agrees_with_all_pairs_on_real_copies(copies_folder, monkeypatch):
    paths = sorted(copies_folder["spot_of"])
    hashes = hashes_of(copies_folder["root"], paths)
    every_pair = near_duplicates.near_duplicate_groups(hashes)
    monkeypatch.setattr(near_duplicates, "EXACT_LIMIT", 4)
    assert near_duplicates.near_duplicate_groups(hashes) == every_pair


# ---------------------------------------------------------------- the split


def test_the_split_keeps_each_spot_whole_and_the_test_split_its_share(copies_folder, tmp_path):
    index = splits.index_dataset(copies_folder["root"], 0.25, 0.25, 0, cache_dir=str(tmp_path / "cache"))
    assert spots_straddling(index, copies_folder["spot_of"]) == []
    assert len(index.near_groups) == 16
    counts = {split: sum(classes.values()) for split, classes in index.counts().items()}
    assert counts["test"] >= 8 and counts["val"] >= 8
    assert any("16 group(s) of near-copies (64 images)" in note and "each kept in one split" in note
               for note in index.notes)
    assert len(index.audit["near_duplicates"]["groups"]) == 16


def test_without_grouping_spots_straddle_and_warn_says_so(copies_folder, tmp_path):
    cache = str(tmp_path / "cache")
    off = splits.index_dataset(copies_folder["root"], 0.25, 0.25, 0, cache_dir=cache, near_duplicates_mode="off")
    assert spots_straddling(off, copies_folder["spot_of"]) and off.near_groups == ()
    warned = splits.index_dataset(copies_folder["root"], 0.25, 0.25, 0, cache_dir=cache,
                                  near_duplicates_mode="warn")
    assert spots_straddling(warned, copies_folder["spot_of"])
    assert any("group(s) of near-copies are in more than one split" in line for line in warned.warnings)


def test_a_second_audit_takes_the_hashes_from_its_cache(copies_folder, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = splits.index_dataset(copies_folder["root"], 0.25, 0.25, 0, cache_dir=cache)
    monkeypatch.setattr(near_duplicates, "image_hashes", lambda pixels: pytest.fail("hashed again"))
    again = splits.index_dataset(copies_folder["root"], 0.25, 0.25, 0, cache_dir=cache)
    assert again.audit["files"]["from_cache"] == 64 and again.near_groups == first.near_groups


def test_near_copy_groups_and_user_groups_are_joined():
    units = splits.join_units(["a", "b", "c", "d", "e"], {"a": "P1", "b": "P1"}, {"c": "x", "d": "y"},
                              {"b": 0, "c": 0})
    assert units["a"] == units["b"] == units["c"] and units["d"] == "d" and units["e"] == "e"


def test_folds_keep_each_spot_in_one_fold(copies_folder, tmp_path):
    index = splits.index_dataset(copies_folder["root"], 0.15, 0.25, 0, cache_dir=str(tmp_path / "cache"))
    fold_of, _ = splits.assign_folds(index, 3, 0)
    folds_of_spot = {}
    for path, fold in fold_of.items():
        folds_of_spot.setdefault(copies_folder["spot_of"][path], set()).add(fold)
    assert all(len(folds) == 1 for folds in folds_of_spot.values())


def presplit_with_copies(copies_folder, target):
    """Per class: train/ holds spots 0-3 (spots 0 and 1 have one copy in
    test/), val/ spots 4-5, test/ spots 6-7: 4 of the 20 test images have a
    near-copy in train."""
    for path, spot in copies_folder["spot_of"].items():
        number = int(spot.rsplit("-", 1)[1])
        first = path == min(other for other, its in copies_folder["spot_of"].items() if its == spot)
        split = "test" if number >= 6 or (number < 2 and first) else "val" if number >= 4 else "train"
        folder = os.path.join(target, split, os.path.dirname(path))
        os.makedirs(folder, exist_ok=True)
        shutil.copy(os.path.join(copies_folder["root"], path), folder)
    return target


def test_a_presplit_folder_names_its_test_images_with_a_near_copy_in_train(copies_folder, tmp_path):
    root = presplit_with_copies(copies_folder, str(tmp_path / "presplit"))
    index = splits.index_dataset(root, 0.25, 0.25, 0, cache_dir=str(tmp_path / "cache"))
    leaked = audit.test_near_train(index)
    assert len(leaked) == 4 and all(path.startswith("test/") for path in leaked)
    assert any(line.startswith("4 of 20 test images have a near-copy in training: the test score is optimistic")
               for line in index.warnings)
    assert index.audit["near_duplicates"]["test_with_copy_in_train"] == leaked


def test_a_presplit_run_scores_its_test_split_without_the_near_copies_too(copies_folder, tmp_path):
    import types

    import main
    import metrics

    root = presplit_with_copies(copies_folder, str(tmp_path / "presplit"))
    index = splits.index_dataset(root, 0.25, 0.25, 0, cache_dir=str(tmp_path / "cache"))
    paths, labels = index.split("test")
    leaked = {os.path.join(root, path) for path in audit.test_near_train(index)}
    # Right on every clean image, wrong on every leaked one: the clean score is 1.
    right = np.array([path not in leaked for path in paths])
    probabilities = np.eye(2)[np.where(right, labels, 1 - labels)] * 0.9 + 0.05
    evaluation = metrics.Evaluation(tuple(paths), labels, probabilities, index.class_names, 64, "test split")
    count, clean, scores = main.clean_test(types.SimpleNamespace(index=index, evaluation=evaluation))
    assert count == 4 and len(clean.paths) == 16 and scores["accuracy"] == 1.0
    assert evaluation.metrics()["accuracy"] == 0.8


def test_a_run_interrupted_before_near_copies_existed_resumes_without_them():
    import config

    saved = config.saved_options(config.DEFAULTS)
    del saved["near_duplicates"]
    resumed = config.continued_options(config.DEFAULTS, {}, saved, (), (), lambda *values: "refused")
    assert resumed.near_duplicates == "off"
    assert config.continued_options(config.DEFAULTS, {}, {**saved, "near_duplicates": "group"}, (), (),
                                    lambda *values: "refused").near_duplicates == "group"


def test_inspect_lists_the_groups_as_text(copies_folder, tmp_path, capsys):
    assert inspect_dataset.main(["--image_dir", copies_folder["root"], "--artifacts_dir", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "16 group(s) of near-copies (64 images) found by perceptual hash, each kept in one split" in printed
    assert printed.count("  group ") == 10 and "... and 6 more: see --json" in printed


def test_inspect_json_lists_the_groups(copies_folder, tmp_path, capsys):
    assert inspect_dataset.main(["--image_dir", copies_folder["root"], "--artifacts_dir", str(tmp_path / "a"),
                                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    groups = summary["near_duplicates"]["groups"]
    assert len(groups) == 16 and {len(group) for group in groups} == {4}
    assert {"path", "class", "split"} == set(groups[0][0])


def test_an_evaluation_without_the_left_out_images():
    import metrics

    evaluation = metrics.Evaluation(paths=("a", "b", "c"), true_labels=np.array([0, 1, 1]),
                                    probabilities=np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]),
                                    class_names=("x", "y"), image_size=32, description="all")
    clean = evaluation.without({"c"}, "clean")
    assert clean.paths == ("a", "b") and clean.metrics()["accuracy"] == 1.0 and clean.description == "clean"


# ---------------------------------------------------------------- evaluate.py on a copy


@pytest.mark.slow
def test_evaluating_a_copy_of_the_training_folder_scores_the_seen_images_apart(trained_run, tmp_path, capsys):
    copy = shutil.copytree(trained_run["data"], tmp_path / "copy")
    manifest = [line.split(",") for line in (trained_run["run"] / "split_manifest.csv").read_text().splitlines()[1:]]
    seen = sum(1 for row in manifest if row[2] != "test")
    code = evaluate.main(["--image_dir", str(copy), "--artifacts_dir", str(trained_run["artifacts"]),
                          "--results_dir", str(tmp_path / "results"), "--show", "0"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"{seen} of {len(manifest)} images are copies or near-copies of images the run trained or validated on" \
        in printed
    (metrics_path,) = (tmp_path / "results" / "metrics").glob("*/metrics.json")
    scores = read_json(metrics_path)
    assert list(scores).index("unseen") < list(scores).index("accuracy")
    assert scores["seen_in_training"]["count"] == seen
    assert scores["unseen"]["num_samples"] == len(manifest) - seen
