"""k-fold cross-validation: the folds and groups (splits.py), the
confident-learning rule and the bad inputs (one --folds 2 run end to end:
test_resume_stages.py)."""

import collections
import json
import os

import numpy as np
import pytest
from conftest import make_flat_dataset, one_line_error

import config
import cross_validation
import dataset_files
import main
import runs
import splits
from errors import UserError


def made_up_index(per_class=(24, 18, 30), groups_per_class=6, test_every=5):
    """A DatasetIndex without files: classes a, b, c; each image in group
    <class><n>; every `test_every`-th group's images are test."""
    samples = []
    for number, count in enumerate(per_class):
        name = "abc"[number]
        for image in range(count):
            group = f"{name}{image % groups_per_class}"
            split = "test" if image % groups_per_class == 0 else "train"
            samples.append(splits.Sample(f"{name}/{image}.png", name, split, group=group))
    return splits.DatasetIndex(root="/nowhere", layout="flat", class_names=("a", "b", "c"),
                               samples=tuple(samples), grouped=True)


# ---------------------------------------------------------------- the folds


@pytest.mark.parametrize("seed", [0, 7])
def test_folds_keep_the_test_split_out_groups_whole_and_cover_every_other_image_once(seed):
    index = made_up_index()
    fold_of, _ = splits.assign_folds(index, 3, seed)
    pool = [sample for sample in index.samples if sample.split != "test"]
    assert sorted(fold_of) == sorted(sample.path for sample in pool)  # each non-test image exactly once
    assert set(fold_of.values()) == {0, 1, 2}
    folds_of_group = collections.defaultdict(set)
    for sample in pool:
        folds_of_group[sample.group].add(fold_of[sample.path])
    assert all(len(folds) == 1 for folds in folds_of_group.values()), "a group straddles two folds"
    test = {sample.path for sample in index.samples if sample.split == "test"}
    validated = []
    for fold in range(3):
        this = splits.fold_index(index, fold_of, fold)
        by_split = collections.defaultdict(set)
        for sample in this.samples:
            by_split[sample.split].add(sample.path)
        assert by_split["test"] == test and not test & by_split["train"]
        assert {sample.label for sample in this.samples if sample.split == "train"} == {"a", "b", "c"}
        groups = {split: {s.group for s in this.samples if s.split == split} for split in ("train", "val", "test")}
        assert not groups["train"] & groups["val"] and not groups["test"] & (groups["train"] | groups["val"])
        validated += by_split["val"]
    assert sorted(validated) == sorted(fold_of)  # out-of-fold: every non-test image validated once
    assert splits.assign_folds(index, 3, seed)[0] == fold_of  # the same seed, the same folds


def test_folds_without_groups_keep_identical_files_together():
    samples = tuple(splits.Sample(f"{name}/{n}.png", name, "train") for name in "ab" for n in range(6))
    index = splits.DatasetIndex("/nowhere", "flat", ("a", "b"), samples,
                                contents={s.path: ("same" if s.path in ("a/0.png", "a/1.png") else s.path)
                                          for s in samples})
    fold_of, _ = splits.assign_folds(index, 3, 1)
    assert fold_of["a/0.png"] == fold_of["a/1.png"]


def test_too_many_folds_name_the_smallest_class_and_its_count():
    with pytest.raises(UserError, match=r"--folds 16 is more than class 'b' has non-test images \(15\)"):
        splits.assign_folds(made_up_index(), 16, 0)


def test_fewer_groups_than_folds_is_a_warning():
    _, warnings = splits.assign_folds(made_up_index(groups_per_class=4, per_class=(24, 24, 24)), 4, 0)
    assert warnings and "fewer than --folds 4" in warnings[0]


def candidates(paths):
    return [dataset_files.Candidate(path, path.split("/")[0], None) for path in paths]


def test_group_by_takes_the_first_group_of_each_path():
    keys = splits.group_keys(candidates(["a/P1_x.png", "a/P2_y.png", "b/P1_z.png", "b/P3_z.png"]), r"/([^_/]+)_")
    assert keys == {"a/P1_x.png": "P1", "a/P2_y.png": "P2", "b/P1_z.png": "P1", "b/P3_z.png": "P3"}


def test_group_by_help_example_and_a_file_name_pattern_work_in_class_folders():
    paths = ["brick/P0042_slice3.png", "brick/P0043_slice1.png", "grass/P0042_slice5.png", "grass/P0044_slice2.png"]
    groups = {"brick/P0042_slice3.png": "P0042", "brick/P0043_slice1.png": "P0043",
              "grass/P0042_slice5.png": "P0042", "grass/P0044_slice2.png": "P0044"}
    # The help's example, and a pattern anchored at the file name's start
    # (it matches no path, which begins with the class folder).
    assert splits.group_keys(candidates(paths), "(P[0-9]+)_") == groups
    assert splits.group_keys(candidates(paths), "^([^_/]+)_") == groups
    assert "'(P[0-9]+)_'" in config.options_of("main")["group_by"].help


@pytest.mark.parametrize("pattern, message", [
    (r"^(zzz)", r"does not match any file \(e.g. a/P1_x.png"),
    (r"^(a/P\d)_", r"does not match 2 of 4 files \(e.g. b/P1_z.png"),
    (r"^([ab])/", r"class 'a': all its images are one group \(a\)"),
])
def test_group_by_refuses_patterns_that_leave_files_without_a_group_or_a_class_in_one(pattern, message):
    with pytest.raises(UserError, match=message):
        splits.group_keys(candidates(["a/P1_x.png", "a/P2_y.png", "b/P1_z.png", "b/P3_z.png"]), pattern)


def test_the_ordinary_split_keeps_groups_whole(tmp_path):
    root = make_flat_dataset(tmp_path / "data", per_class=12)
    for name in ("cat", "dog"):
        for number, file in enumerate(sorted(os.listdir(os.path.join(root, name)))):
            os.rename(os.path.join(root, name, file), os.path.join(root, name, f"P{number // 3}_{file}"))
    index = splits.index_dataset(root, 0.25, 0.25, 3, group_by=r"/(P\d+)_", cache_dir=str(tmp_path / "cache"))
    where = collections.defaultdict(set)
    for sample in index.samples:
        where[sample.group].add(sample.split)
    assert len(where) == 4 and all(len(places) == 1 for places in where.values())
    assert {row.group for row in splits.manifest_rows(index)} == set(where)


def test_a_labels_csv_group_column_keeps_groups_whole_in_the_split(tmp_path):
    root = make_flat_dataset(tmp_path / "data", per_class=12)
    rows = ["filename,label,group"]
    for name in ("cat", "dog"):
        for number, file in enumerate(sorted(os.listdir(os.path.join(root, name)))):
            rows.append(f"{name}/{file},{name},{name}-patient{number // 3}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    index = splits.index_dataset(root, 0.25, 0.25, 3, labels_csv=str(labels), cache_dir=str(tmp_path / "cache"))
    where = collections.defaultdict(set)
    for sample in index.samples:
        where[sample.group].add(sample.split)
    assert len(where) == 8 and all(len(places) == 1 for places in where.values()), where
    assert {"train", "val", "test"} == {split for places in where.values() for split in places}
    assert {row.group for row in splits.manifest_rows(index)} == set(where)
    # A row without a group, when others have one, is refused.
    labels.write_text("\n".join(rows[:-1] + [rows[-1].rsplit(",", 1)[0] + ","]) + "\n")
    with pytest.raises(UserError, match="have an empty group"):
        splits.index_dataset(root, 0.25, 0.25, 3, labels_csv=str(labels), cache_dir=str(tmp_path / "cache"))


def test_suspects_of_models_no_better_than_the_majority_class_come_with_a_caveat():
    import metrics

    def evaluation(probabilities):
        return metrics.Evaluation(paths=("a", "b", "c", "d"), true_labels=np.array([0, 0, 0, 1]),
                                  probabilities=np.array(probabilities), class_names=("x", "y"),
                                  image_size=32, description="out of fold")

    (line,) = cross_validation.suspects_caveat(evaluation([[0.6, 0.4]] * 4))  # always "x": 0.75, the majority
    assert "no better than always answering \"x\" (0.750)" in line
    assert cross_validation.suspects_caveat(evaluation([[0.9, 0.1]] * 3 + [[0.2, 0.8]])) == []


# ---------------------------------------------------------------- label errors


def test_confident_learning_flags_an_image_another_class_claims_above_its_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([
        [0.9, 0.1], [0.8, 0.2], [0.3, 0.7],  # the third "0" looks like a 1
        [0.4, 0.6], [0.2, 0.8], [0.1, 0.9],
    ])
    # thresholds: t0 = mean(0.9, 0.8, 0.3) = 0.667, t1 = mean(0.6, 0.8, 0.9) = 0.767
    np.testing.assert_allclose(cross_validation.class_thresholds(labels, probabilities), [2 / 3, 2.3 / 3])
    ranking, suspect, likely = cross_validation.label_suspects(labels, probabilities)
    # Image 3 (labelled 1, p1 = 0.6 < t1) is doubtful but no class claims it: p0 = 0.4 < t0.
    assert suspect.tolist() == [False, False, False, False, False, False]
    probabilities[2] = [0.1, 0.9]  # now p1 = 0.9 > t1 = 0.767
    ranking, suspect, likely = cross_validation.label_suspects(labels, probabilities)
    assert suspect.tolist() == [False, False, True, False, False, False]
    assert likely[2] == 1 and ranking[0] == 2
    assert ranking[1] == 3  # then the rest, the lowest probability of the given label below its class's first


def test_a_model_at_chance_doubts_nothing():
    _, suspect, _ = cross_validation.label_suspects(np.array([0, 1, 2]), np.full((3, 3), 1 / 3))
    assert not suspect.any()


def test_the_spread_is_mean_std_and_a_t_interval():
    mean, deviation, low, high = cross_validation.spread([0.8, 0.9, 1.0])
    assert mean - low == pytest.approx(high - mean)
    assert mean == pytest.approx(0.9) and deviation == pytest.approx(0.1)
    assert (high - mean) == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, message", [
    (["--folds", "1"], "folds must be at least 2"),
    (["--folds", "0"], "folds must be at least 2"),
    (["--group_by", "(P"], "group_by is not a regular expression"),
])
def test_bad_fold_and_group_options_are_one_line(argv, message, capsys):
    assert main.main(["--image_dir", "anywhere", *argv]) == 2
    assert message in one_line_error(capsys)


def test_folds_with_resume_of_a_plain_run_is_refused(tmp_path):
    options = config.Config(resume="20260101-000000", folds=3, artifacts_dir=str(tmp_path))
    with pytest.raises(UserError, match="run 20260101-000000 is a plain run"):
        cross_validation.wants_folds(options.artifacts_dir, options.resume, options.folds)


def test_folds_with_tf_config_workers_are_refused_before_any_wait(tmp_path, monkeypatch, capsys):
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    data = make_flat_dataset(tmp_path / "data", per_class=4)
    assert main.main(["--image_dir", data, "--folds", "2", "--artifacts_dir", str(tmp_path / "art"),
                      "--results_dir", str(tmp_path / "res")]) == 2
    assert "the folds on one machine, not with TF_CONFIG workers" in one_line_error(capsys)
    assert not (tmp_path / "art").exists()


# ---------------------------------------------------------------- end to end
# One --folds 2 run end to end, rescored, and its resume with other options
# refused: test_resume_stages.py, whose run killed at each boundary is the
# same --folds 2 run (one training for both).


def test_resuming_trains_only_the_unfinished_folds_and_continues_the_interrupted_one(tmp_path):
    import artifacts
    import resume

    options = config.Config(folds=3, artifacts_dir=str(tmp_path / "art"), results_dir=str(tmp_path / "res"))
    runs_dir = artifacts.runs_folder(options.artifacts_dir)
    finished, interrupted = os.path.join(runs_dir, "20260101-000001"), os.path.join(runs_dir, "20260101-000002")
    artifacts.write_json(os.path.join(finished, artifacts.RUN_CONFIG_FILE), {"status": "finished"})
    open(os.path.join(finished, artifacts.MODEL_FILE), "wb").close()
    # A finished run's state says so (a fold run published but not done is continued).
    artifacts.write_json(os.path.join(finished, artifacts.RESUME_FOLDER, resume.RESUME_STATE), {"phase": resume.FINISHED})
    point = resume.ResumePoint("20260101-000002", "history.csv", "head", 3, 0.5, "epoch_004_head.keras")
    artifacts.write_json(os.path.join(interrupted, artifacts.RESUME_FOLDER, resume.RESUME_STATE), point.to_json())
    index = made_up_index()
    fold_of, _ = splits.assign_folds(index, 3, 0)
    cv = cross_validation.CrossValidation("20260101-000000", options, ("mobilenet_v2",), fold_of,
                                          {"mobilenet_v2": ["20260101-000001", "20260101-000002", None]})
    # Each planned fold run as runs.opened reserves it: the interrupted one continued, a new one made.
    calls = [(planned.title, runs.reserve(planned, cv)) for planned in runs.fold_runs(cv, index)]
    assert [title for title, _ in calls] == ["fold 2/3", "fold 3/3"]
    assert calls[0][1] == ("20260101-000002", interrupted, point)
    new_run, _, no_point = calls[1][1]
    assert no_point is None and new_run not in ("20260101-000001", "20260101-000002")
    saved = artifacts.read_json(os.path.join(cv.folder(), cross_validation.STATE_FILE))
    assert saved["runs"]["mobilenet_v2"] == ["20260101-000001", "20260101-000002", new_run]
