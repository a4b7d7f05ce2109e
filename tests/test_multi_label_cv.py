"""Multi-label runs in the folds, the suspects, the report, the comparison
and MLflow: splits.assign_folds over label sets, the (image, label) pairs
the out-of-fold models doubt, the report's multi-label sections, compare.py
refusing a mix of tasks (one --folds 2 multi-label training end to end,
shared by the slow tests)."""

import collections
import dataclasses
import os
import types

import numpy as np
import pytest
from conftest import TINY, one_line_error, read_csv, read_json

import artifacts
import compare
import config
import cross_validation
import main
import metrics
import report
import splits
import tasks
import tracking
from errors import UserError

LABELS = ("a", "b", "c", "d")


def made_up_label_index(images=60, units_of=3, test_every=6, seed=0, rare=None):
    """A multi-label DatasetIndex without files: labels a-d, each image in
    unit u<n> (`units_of` images each, the user's group); every
    `test_every`-th unit is test. `rare`: (label, units) that label is
    limited to."""
    rng = np.random.default_rng(seed)
    samples = []
    for number in range(images):
        unit = number // units_of
        names = tuple(name for name, p in zip(LABELS, (0.5, 0.4, 0.3, 0.25)) if rng.random() < p)
        if rare is not None:
            name, count = rare
            names = tuple(label for label in names if label != name) + ((name,) if unit < count else ())
            names = tuple(sorted(names))
        split = "test" if unit % test_every == test_every - 1 else "train"
        samples.append(splits.Sample(f"img/{number}.png", ";".join(names), split, group=f"u{unit}", labels=names))
    return splits.DatasetIndex(root="/nowhere", layout="csv", class_names=LABELS, samples=tuple(samples),
                               grouped=True, task=tasks.MULTI_LABEL)


# ---------------------------------------------------------------- the folds


@pytest.mark.parametrize("seed", [0, 5])
def test_label_folds_keep_groups_whole_test_out_and_every_label_in_each_fold(seed):
    index = made_up_label_index(seed=seed)
    fold_of, warnings = splits.assign_folds(index, 3, seed)
    pool = [sample for sample in index.samples if sample.split != "test"]
    assert sorted(fold_of) == sorted(sample.path for sample in pool) and set(fold_of.values()) == {0, 1, 2}
    folds_of_group = collections.defaultdict(set)
    for sample in pool:
        folds_of_group[sample.group].add(fold_of[sample.path])
    assert all(len(folds) == 1 for folds in folds_of_group.values()), "a group straddles two folds"
    assert warnings == []
    per_fold = collections.Counter((fold_of[sample.path], name) for sample in pool for name in sample.names)
    totals = collections.Counter(name for sample in pool for name in sample.names)
    for name in LABELS:
        counts = [per_fold[(fold, name)] for fold in range(3)]
        assert all(counts), f"label {name} missing from a validation fold: {counts}"
        # iterative stratification: each fold near a third of the label's images (whole units of 3 images)
        assert max(counts) - min(counts) <= 6, (name, counts)
        for fold in range(3):
            assert totals[name] - per_fold[(fold, name)] > 0  # in the fold's training
    for fold in range(3):
        this = splits.fold_index(index, fold_of, fold)
        assert {s.path for s in this.samples if s.split == "test"} == {s.path for s in index.samples if s.split == "test"}
    assert splits.assign_folds(index, 3, seed)[0] == fold_of  # the same seed, the same folds


def test_label_folds_keep_identical_files_together_without_groups():
    index = dataclasses.replace(made_up_label_index(units_of=1), grouped=False,
                                contents={f"img/{n}.png": "same" if n in (0, 1) else str(n) for n in range(60)})
    index = dataclasses.replace(index, samples=tuple(dataclasses.replace(s, group="") for s in index.samples))
    fold_of, _ = splits.assign_folds(index, 4, 2)
    assert fold_of["img/0.png"] == fold_of["img/1.png"]


def test_more_label_folds_than_units_is_one_line():
    index = made_up_label_index(images=30, units_of=5)  # 6 units, 5 outside test
    with pytest.raises(UserError, match=r"^--folds 6 is more than the 5 units outside the test split") as raised:
        splits.assign_folds(index, 6, 0)
    assert "\n" not in str(raised.value)


def test_a_label_in_fewer_units_than_folds_is_a_warning_and_in_one_unit_a_refusal():
    _, warnings = splits.assign_folds(made_up_label_index(rare=("d", 2)), 3, 0)
    assert warnings == ["label 'd' is in 2 unit(s), fewer than --folds 3: some validation folds have none of it"]
    with pytest.raises(UserError, match=r"label 'd' is in 1 unit\(s\) outside the test split, so some fold's "
                                        r"training would have no image of it"):
        splits.assign_folds(made_up_label_index(rare=("d", 1)), 3, 0)


def test_single_label_folds_are_unchanged_by_the_label_folds():
    samples = tuple(splits.Sample(f"{name}/{n}.png", name, "train") for name in "ab" for n in range(9))
    index = splits.DatasetIndex("/nowhere", "flat", ("a", "b"), samples)
    fold_of, _ = splits.assign_folds(index, 3, 1)
    assert collections.Counter((fold_of[s.path], s.label) for s in samples) == {
        (fold, name): 3 for fold in range(3) for name in "ab"}


# ---------------------------------------------------------------- the suspects


def confident_model(seed=0, images=120, flips=((3, 1), (10, 2), (50, 0), (77, 3), (90, 1))):
    """(given labels with `flips` (image, label) flipped, probabilities of a
    model that knows the true ones, the flips)."""
    rng = np.random.default_rng(seed)
    truth = rng.random((images, len(LABELS))) < 0.35
    probabilities = np.where(truth, rng.uniform(0.65, 0.97, truth.shape), rng.uniform(0.02, 0.35, truth.shape))
    given = truth.copy()
    flips = {(image, label) for image, label in flips if image < images}
    for image, label in flips:
        given[image, label] = not given[image, label]
    return given.astype(np.float32), probabilities, flips


def test_the_flipped_pairs_are_ranked_first():
    given, probabilities, flips = confident_model()
    order, suspect, self_confidence = cross_validation.label_pair_suspects(given, probabilities)
    assert {tuple(int(x) for x in pair) for pair in order[:len(flips)]} == flips
    assert len(order) == given.size  # every pair ranked once
    assert suspect.sum() <= len(flips) and all(suspect[i, j] for i, j in order[: suspect.sum()])
    # self-confidence: the probability of the given value
    assert self_confidence[3, 1] == pytest.approx(1 - probabilities[3, 1] if not given[3, 1] else probabilities[3, 1])


def test_a_pair_is_suspect_on_the_other_side_of_its_label_s_confident_threshold():
    given = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]], np.float32)
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.95, 0.9], [0.1, 0.2], [0.2, 0.05]])
    t_yes, t_no = cross_validation.label_thresholds(given, probabilities)
    np.testing.assert_allclose(t_yes, [0.85, 0.475])  # mean p of the pairs given 1
    np.testing.assert_allclose(t_no, [(0.05 + 0.9 + 0.8) / 3, (0.9 + 0.8 + 0.8) / 3])  # mean 1 - p of those given 0
    _, suspect, _ = cross_validation.label_pair_suspects(given, probabilities)
    # image 2, label a: given 0, p 0.95 > t_yes 0.85: doubted; image 4, label b: given 1, 1 - p 0.95 > t_no
    assert {tuple(int(x) for x in pair) for pair in np.argwhere(suspect)} == {(2, 0), (4, 1)}


def test_a_model_at_chance_doubts_no_pair():
    given, _, _ = confident_model()
    _, suspect, _ = cross_validation.label_pair_suspects(given, np.full(given.shape, 0.3))
    assert not suspect.any()


def label_evaluation(given, probabilities, description="validation fold", thresholds=None, paths=None):
    return metrics.Evaluation(
        paths=tuple(paths or (f"/data/img/{n}.png" for n in range(len(given)))), true_labels=given,
        probabilities=probabilities, class_names=LABELS, image_size=32, description=description,
        task=tasks.MULTI_LABEL, thresholds=np.full(len(LABELS), 0.5) if thresholds is None else thresholds,
    )


def test_the_suspects_csv_has_the_pairs_most_doubtful_first(tmp_path):
    given, probabilities, flips = confident_model()
    evaluation = label_evaluation(given, probabilities)
    decision = np.full(given.shape, 0.5)
    table, count = cross_validation.write_label_pair_suspects(evaluation, [1] * len(given), decision, "/data",
                                                              str(tmp_path))
    rows = read_csv(tmp_path / "label_suspects.csv")
    assert rows[0] == ["rank", "image", "label", "given_value", "probability", "confident_threshold",
                       "decision_threshold", "fold"]
    assert count == len(rows) - 1 >= 3
    found = {(int(row[1].split("/")[1].split(".")[0]), LABELS.index(row[2])) for row in rows[1:]}
    assert found <= flips
    assert [row[0] for row in rows[1:]] == [str(n) for n in range(1, count + 1)]
    image, label = int(rows[1][1].split("/")[1].split(".")[0]), LABELS.index(rows[1][2])
    assert rows[1][3] == str(int(given[image, label])) and float(rows[1][4]) == pytest.approx(
        probabilities[image, label], abs=1e-6)
    oof = read_csv(tmp_path / "oof_predictions.csv")
    assert oof[0] == ["path", "given_labels", "predicted_labels", "fold", "p_a", "p_b", "p_c", "p_d"]
    assert len(oof) == len(given) + 1
    assert table[0][0] == "rank" and len(table[1]) == count


def test_a_multi_label_cross_validation_summary_from_hand_made_folds(tmp_path):
    given, probabilities, _ = confident_model(images=90)
    folds = []
    for fold in range(3):
        part = slice(30 * fold, 30 * fold + 30)
        val = label_evaluation(given[part], probabilities[part], paths=[f"/data/img/{n}.png" for n in range(90)][part],
                               thresholds=np.full(len(LABELS), 0.4 + 0.05 * fold))
        test = label_evaluation(given[:20], probabilities[:20], "test split")
        folds.append((f"run{fold + 1}", val, test))
    options = dataclasses.replace(config.DEFAULTS, folds=3, results_dir=str(tmp_path / "results"))
    cv = cross_validation.CrossValidation("cv1", options, ("mobilenet_v2",), {}, {"mobilenet_v2": ["run1", "run2", "run3"]})
    index = types.SimpleNamespace(root="/data")
    folder = str(tmp_path / "summary")
    drawn, chosen, lines = cross_validation.write_summary(cv, index, {"mobilenet_v2": folds}, folder)
    summary = read_csv(os.path.join(folder, "summary.csv"))
    assert [row[2] for row in summary[1:7]] == ["micro F1", "macro F1", "mAP", "exact-set accuracy", "log loss", "ECE"]
    assert float(summary[1][4]) > 0.9  # the mean micro-F1 over the folds
    assert any(line.startswith("mobilenet_v2 validation folds micro F1: ") for line in lines)
    assert any("suspected (image, label) error(s) of 90 images" in line for line in lines)
    assert chosen in ("run1", "run2", "run3") and drawn[0].endswith("cross_validation.png")
    page = open(os.path.join(folder, "report.html"), encoding="utf-8").read()
    assert "most doubted (image, label) pairs" in page and "exact-set accuracy" in page
    oof = read_csv(os.path.join(folder, "oof_predictions.csv"))
    assert [row[3] for row in oof[1:]] == ["1"] * 30 + ["2"] * 30 + ["3"] * 30
    suspects = read_csv(os.path.join(folder, "label_suspects.csv"))
    fold_of_row = {row[1]: row for row in suspects[1:]}
    for row in fold_of_row.values():  # the decision threshold of the fold model that predicted it
        assert float(row[6]) == pytest.approx(0.4 + 0.05 * (int(row[7]) - 1))


# ---------------------------------------------------------------- the report


def hand_built_run(tmp_path):
    given, probabilities, _ = confident_model(images=40)
    evaluation = label_evaluation(given, probabilities, "test split", thresholds=np.array([0.5, 0.4, 0.6, 0.5]))
    samples = tuple(splits.Sample(f"img/{n}.png", "a", "train", labels=("a",)) for n in range(8))
    index = splits.DatasetIndex(root="/data", layout="csv", class_names=LABELS, samples=samples,
                                task=tasks.MULTI_LABEL)
    options = dataclasses.replace(config.DEFAULTS, image_dir="/data", artifacts_dir=str(tmp_path / "a"))
    return types.SimpleNamespace(
        options=options, scores=evaluation.metrics(), evaluation=evaluation, index=index, clean_test=None,
        drawn=[], stamp="20260101-000000", folder=str(tmp_path / "a" / "runs" / "x"),
        report_path=str(tmp_path / "report.html"), stopped=None, publishing=None, chosen_later=False,
    )


def test_the_report_page_of_a_multi_label_run_shows_its_metrics_beside_the_baselines(tmp_path, monkeypatch):
    import audit

    monkeypatch.setattr(audit, "summary_lines", lambda index, **kwargs: ["the dataset's audit"])  # no files here
    monkeypatch.setattr(audit, "split_table", lambda index: (("label", "train"), [("grass", 3)]))
    run = hand_built_run(tmp_path)
    sections = report.training_sections(run)
    scores_section = next(section for section in sections if section.heading == "On the test split")
    header, rows = scores_section.table
    assert header == ("metric", "this model", "constant answer (baseline)")
    by_name = {row[0].split(" (")[0]: row[1:] for row in rows}
    base = run.scores["baselines"]
    assert by_name["micro F1"] == (run.scores["micro_avg"]["f1"], base["majority_micro_f1"])
    assert by_name["mAP"] == (run.scores["mAP"], base["prevalence_map"])
    assert by_name["exact-set accuracy"] == (run.scores["subset_accuracy"], base["majority_subset_accuracy"])
    assert by_name["Hamming loss"] == (run.scores["hamming_loss"], base["majority_hamming_loss"])
    assert by_name["macro F1"][0] == run.scores["macro_avg"]["f1"] and by_name["loss"][0] == run.scores["loss"]
    per_label = next(section for section in sections if section.heading == "Per label")
    header, rows = per_label.table
    assert header == ("label", "precision", "recall", "F1", "images with it", "average precision", "ROC AUC",
                      "threshold")
    assert [row[0] for row in rows] == list(LABELS) and [row[-1] for row in rows] == [0.5, 0.4, 0.6, 0.5]
    page = open(report.write_page(str(tmp_path / "page" / "report.html"), "Run", sections), encoding="utf-8").read()
    assert "micro F1 (every image-label pair)" in page and "average precision" in page
    assert "multi-label" in page and "majority-class baseline" not in page


def test_the_report_warns_when_the_model_is_no_better_than_a_constant_answer(tmp_path):
    run = hand_built_run(tmp_path)
    given = run.evaluation.true_labels
    flat = dataclasses.replace(run.evaluation, probabilities=np.full(given.shape, 0.3))
    section = report.scores_section("On the test split", flat, flat.metrics())
    assert any(line.startswith("WARNING: the model is no better than a constant answer") for line in section.lines)


def test_the_closing_summary_of_a_multi_label_run(tmp_path):
    run = hand_built_run(tmp_path)
    lines = report.training_summary(run)
    assert lines[0].startswith("run 20260101-000000: 4 labels (multi-label) of /data")
    assert lines[1].startswith("test split: micro-F1") and "Hamming loss" in lines[1] and "exact set" in lines[1]
    assert lines[2].startswith(f"test split: micro-F1 {run.scores['micro_avg']['f1']:.3f} · mAP ")
    assert "prevalence mAP" in lines[2]


# ---------------------------------------------------------------- the comparison and MLflow


def fake_run(artifacts_dir, results_dir, task):
    run_id, folder = artifacts.new_run(str(artifacts_dir), str(results_dir))
    os.makedirs(folder, exist_ok=True)
    rows = [artifacts.ManifestRow("img/0.png", "a;b" if task else "a", "test")]
    run_config = {"image_dir": "/data", "status": "finished", "run": run_id,
                  **({"task": "multi_label"} if task else {})}
    artifacts.write_companions(folder, ("a", "b"), rows, run_config)
    return folder


def test_a_comparison_of_multi_label_and_single_label_runs_is_refused_in_one_line(tmp_path):
    folders = [fake_run(tmp_path / "a", tmp_path / "r", task) for task in (True, False, True)]
    with pytest.raises(UserError) as raised:
        compare.run_companions(folders)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("multi-label run(s) ")
    assert "single-label run(s) " + os.path.basename(folders[1]) in message
    _, names, task = compare.run_companions([folders[0], folders[2]])
    assert task is tasks.MULTI_LABEL and names == ("a", "b")


def test_a_multi_label_comparison_table_has_micro_f1_and_map_columns(tmp_path):
    row = {"backbone": "m", "source": compare.OURS, "run": "r1", "test_accuracy": 0.5, "test_loss": 0.3,
           "macro_f1": 0.7, "micro_f1": 0.8, "mAP": 0.9, "hamming_loss": 0.1, "inference_ms_per_image": 1.0}
    ranked = compare.ranked([row, {**row, "run": "r2", "micro_f1": 0.85, "mAP": None}])
    assert [r["run"] for r in ranked] == ["r2", "r1"]  # by micro-F1 first
    table = compare.markdown_table(ranked, compare.columns_of(tasks.MULTI_LABEL))
    header = table.splitlines()[0]
    assert "| micro F1 | mAP | macro F1 | exact-set accuracy | Hamming loss |" in header
    assert "| 0.850 | n/a |" in table.splitlines()[2]
    assert compare.columns_of(tasks.SINGLE_LABEL) is compare.COLUMNS


def test_mlflow_gets_the_multi_label_metrics(tmp_path):
    given, probabilities, _ = confident_model()
    scores = label_evaluation(given, probabilities).metrics()
    values = tracking.final_metrics(scores, prefix="test_")
    assert values["test_micro_f1"] == scores["micro_avg"]["f1"] and values["test_mAP"] == scores["mAP"]
    assert values["test_subset_accuracy"] == scores["subset_accuracy"]
    assert values["test_hamming_loss"] == scores["hamming_loss"]
    assert tracking.final_metrics({**scores, "mAP": None}).get("mAP") is None  # undefined: left out


# ---------------------------------------------------------------- one multi-label cross-validation, trained


def write_label_folder(root, images=42, size=32):
    """root/img/NNN.png with labels red/green/blue: each label a coloured
    band, so a label set is visible; root/labels.csv (filename,labels)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    os.makedirs(root / "img")
    rows = ["filename,labels"]
    for number in range(images):
        names = [name for name in ("red", "green", "blue") if rng.random() < 0.45] or []
        pixels = np.full((size, size, 3), 40, np.uint8)
        for band, name in enumerate(("red", "green", "blue")):
            if name in names:
                pixels[:, band * size // 3:(band + 1) * size // 3, band] = 230
        pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{number:03d}.png")
        rows.append(f"img/{number:03d}.png,{';'.join(names)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def label_folds(tmp_path_factory):
    """One multi-label --folds 2 cross-validation, 1 epoch, trained once for
    this file's slow tests."""
    root = tmp_path_factory.mktemp("label_folds")
    data = write_label_folder(root / "data")
    code = main.main([
        "--image_dir", str(data), "--labels_csv", str(data / "labels.csv"), "--folds", "2", "--epochs", "1",
        *TINY, "--artifacts_dir", str(root / "artifacts"), "--results_dir", str(root / "results"),
    ])
    assert code == 0
    return {"root": root, "data": data, "artifacts": root / "artifacts", "results": root / "results"}


@pytest.mark.slow
def test_a_multi_label_cross_validation_writes_its_summary_and_suspects(label_folds):
    summaries = label_folds["results"] / cross_validation.FOLDER
    (stamp,) = os.listdir(summaries)
    folder = summaries / stamp
    summary = read_csv(folder / "summary.csv")
    assert {row[2] for row in summary[1:]} == {label for _, label, _ in cross_validation.LABEL_METRICS}
    assert read_csv(folder / "label_suspects.csv")[0][:5] == ["rank", "image", "label", "given_value", "probability"]
    oof = read_csv(folder / "oof_predictions.csv")
    assert oof[0][4:] == ["p_blue", "p_green", "p_red"] and {row[3] for row in oof[1:]} == {"1", "2"}
    assert os.path.isfile(folder / "report.html") and os.path.isfile(folder / "cross_validation.png")
    (cv_id,) = os.listdir(label_folds["artifacts"] / cross_validation.FOLDER)
    state = read_json(label_folds["artifacts"] / cross_validation.FOLDER / cv_id / cross_validation.STATE_FILE)
    assert state["status"] == "finished"
    folds = read_csv(label_folds["artifacts"] / cross_validation.FOLDER / cv_id / cross_validation.FOLDS_FILE)
    assert {row[3] for row in folds[1:]} == {"1", "2", "test"}


@pytest.mark.slow
def test_two_multi_label_fold_runs_are_compared_with_micro_f1_and_map(label_folds, capsys):
    import evaluate

    runs = artifacts.run_ids(str(label_folds["artifacts"]))
    code = evaluate.main(["--image_dir", str(label_folds["data"]), "--compare", *runs[:2],
                          "--artifacts_dir", str(label_folds["artifacts"]),
                          "--results_dir", str(label_folds["results"]), "--show", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "micro-F1" in printed and "mAP" in printed
    (stamp,) = os.listdir(label_folds["results"] / compare.COMPARISON_FOLDER)
    table = read_csv(label_folds["results"] / compare.COMPARISON_FOLDER / stamp / "model_comparison.csv")
    assert {"micro_f1", "mAP", "hamming_loss"} <= set(table[0]) and len(table) == 3


@pytest.mark.slow
def test_a_multi_label_run_beside_a_single_label_one_is_refused_by_compare(label_folds, tmp_path, capsys):
    import evaluate
    import shutil

    artifacts_dir = tmp_path / "artifacts"
    shutil.copytree(label_folds["artifacts"], artifacts_dir, symlinks=True)
    runs = artifacts.run_ids(str(artifacts_dir))
    single = os.path.join(artifacts.runs_folder(str(artifacts_dir)), runs[1])
    saved = artifacts.read_run_config(single)
    saved.pop("task")
    artifacts.write_json(os.path.join(single, artifacts.RUN_CONFIG_FILE), saved)
    code = evaluate.main(["--image_dir", str(label_folds["data"]), "--compare", *runs[:2],
                          "--artifacts_dir", str(artifacts_dir), "--results_dir", str(tmp_path / "r"), "--show", "0"])
    assert code == 2
    assert one_line_error(capsys).startswith(f"error: multi-label run(s) {runs[0]} and single-label run(s) {runs[1]}")


@pytest.mark.slow
def test_a_multi_label_cross_validation_is_re_scored_on_the_same_folds(label_folds, capsys):
    import evaluate

    code = evaluate.main(["--cross_validation", "--artifacts_dir", str(label_folds["artifacts"]),
                          "--results_dir", str(label_folds["results"]), "--show", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "re-scored" in printed and "validation folds micro F1: " in printed and "validation folds mAP: " in printed
    first, second = sorted(os.listdir(label_folds["results"] / cross_validation.FOLDER))[:2]
    summaries = [read_csv(label_folds["results"] / cross_validation.FOLDER / stamp / "summary.csv")
                 for stamp in (first, second)]
    assert summaries[0] == summaries[1]  # the same models on the same folds: the same numbers
