"""Several backbones in one command, and the model comparison (compare.py).

One tiny two-backbone run (MobileNetV2 and MobileNetV3 Small at width 0.35,
32 px, one epoch, from scratch) is trained once for the module; the tests
check its run folders, the comparison files, that evaluate.py --compare
gives the same numbers, and, on copies of its runs given the splits of
other seeds, that no model is scored on an image any compared run trained
or validated on.
"""

import csv
import re
import os
import shutil

import pytest

import artifacts
import compare
import evaluate
import main as main_script
import errors
import inference
import splits
from conftest import ONE_EPOCH, SCRATCH, make_flat_dataset, one_line_error, read_json

BACKBONES = ("mobilenet_v2", "mobilenet_v3_small")
# From scratch: one stand-in weights file fits one backbone, not each.
FEW = [*SCRATCH, *ONE_EPOCH, "--rows", "1", "--cols", "3"]


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def comparison_folders(results):
    return sorted((results / compare.COMPARISON_FOLDER).iterdir())


@pytest.fixture(scope="module")
def several(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = make_flat_dataset(root / "data", classes=("alpha", "beta", "gamma"), per_class=8)
    artifacts_dir, results = root / "artifacts", root / "results"
    outputs = ["--artifacts_dir", str(artifacts_dir), "--results_dir", str(results)]
    # A space after the comma, as people type lists.
    code = main_script.main(["--image_dir", data, "--backbone", ", ".join(BACKBONES), *FEW, *outputs])
    assert code == 0
    runs = [artifacts_dir / "runs" / run for run in artifacts.run_ids(str(artifacts_dir))]
    return {"root": root, "data": data, "artifacts": artifacts_dir, "results": results, "runs": runs}


@pytest.mark.slow
@pytest.mark.heavy
def test_one_run_per_backbone_on_one_split_and_the_lowest_val_loss_published(several):
    runs, results = several["runs"], several["results"]
    assert len(runs) == 2
    configs = [read_json(folder / "run_config.json") for folder in runs]
    assert [saved["backbone"] for saved in configs] == list(BACKBONES)
    assert all(saved["status"] == "finished" and saved["alpha"] == 0.35 for saved in configs)
    assert all(saved["options"]["backbone"] == saved["backbone"] for saved in configs)  # resumable alone
    # The same split: one scan, one seed.
    assert artifacts.read_manifest(runs[0]) == artifacts.read_manifest(runs[1])
    for saved in configs:
        training = saved["training"]
        assert training["seconds"] > 0 and training["epochs"] == 1 and training["best_epoch"] == 1
    best = min(range(2), key=lambda i: configs[i]["training"]["best_val_loss"])
    assert artifacts.published_run(str(several["artifacts"])) == runs[best].name
    # Each run has its own results; the dataset figures are drawn once, with the first.
    for folder in runs:
        assert (results / "metrics" / folder.name / "metrics.json").is_file()
        assert (results / "confusion_matrix" / folder.name / "confusion_matrix.png").is_file()
    assert os.listdir(results / "dataset_distribution") == [runs[0].name]


@pytest.mark.slow
def test_the_comparison_files_match_each_runs_own_test_metrics(several):
    runs, results = several["runs"], several["results"]
    (folder,) = comparison_folders(results)
    names = sorted(os.listdir(folder))
    assert names == ["model_comparison.csv", "model_comparison.md", "model_comparison.png"]
    rows = read_rows(folder / "model_comparison.csv")
    assert [row["rank"] for row in rows] == ["1", "2"]
    assert sorted(row["run"] for row in rows) == sorted(folder.name for folder in runs)
    accuracies = [float(row["test_accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    published = artifacts.published_run(str(several["artifacts"]))
    assert [row["run"] for row in rows if row["published"] == "yes"] == [published]
    test_images = sum(row.split == "test" for row in artifacts.read_manifest(runs[0]))
    for row in rows:
        # Same split: the comparison scores exactly what main.py's test stage scored.
        metrics = read_json(results / "metrics" / row["run"] / "metrics.json")
        assert int(row["test_images"]) == metrics["num_samples"] == test_images
        assert float(row["test_accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)
        assert float(row["test_loss"]) == pytest.approx(metrics["loss"], rel=1e-5)
        assert float(row["macro_f1"]) == pytest.approx(metrics["macro_avg"]["f1"], rel=1e-5)
        assert float(row["inference_ms_per_image"]) > 0 and float(row["training_seconds"]) > 0
        assert int(row["parameters"]) > 0 and row["image_size"] == "32" and row["weights"] == "none"
    markdown = (folder / "model_comparison.md").read_text(encoding="utf-8")
    assert markdown.count("\n| ") == 3  # header and two models
    assert "every run has the same split" in markdown


@pytest.mark.slow
def test_evaluate_compare_reproduces_the_numbers(several, capsys):
    results = several["results"]
    outputs = ["--artifacts_dir", str(several["artifacts"]), "--results_dir", str(results)]
    assert evaluate.main(["--image_dir", several["data"], "--compare", "--show", "0", *outputs]) == 0
    first, second = comparison_folders(results)
    before, after = (read_rows(folder / "model_comparison.csv") for folder in (first, second))
    columns = ("rank", "run", "backbone", "parameters", "test_accuracy", "test_loss", "macro_f1",
               "macro_roc_auc", "training_seconds", "test_images", "published")
    assert [[row[name] for name in columns] for row in after] == [[row[name] for name in columns] for row in before]


def split_of(data, seed, cache):
    """The split manifest a run with this --seed would save (test 40%)."""
    index = splits.index_dataset(data, val_split=0.2, test_split=0.4, seed=seed, cache_dir=cache)
    return splits.manifest_rows(index)


def copy_as_run(folder, artifacts_dir, run_id, manifest, seed):
    """A copy of a trained run, given the split of another --seed."""
    copy = artifacts_dir / "runs" / run_id
    copy.mkdir(parents=True)
    for name in (artifacts.MODEL_FILE, *artifacts.COMPANION_FILES):
        shutil.copyfile(folder / name, copy / name)
    saved = read_json(copy / artifacts.RUN_CONFIG_FILE)
    artifacts.write_companions(copy, saved["class_names"], manifest, {**saved, "seed": seed, "run": run_id})
    return copy


@pytest.mark.slow
def test_runs_split_differently_are_scored_only_on_images_none_of_them_trained_on(several, tmp_path, monkeypatch, capsys):
    data, cache = several["data"], str(tmp_path / "cache")
    manifests = {"run-a": split_of(data, 1, cache), "run-b": split_of(data, 2, cache)}
    artifacts_dir = tmp_path / "artifacts"
    for (run_id, manifest), folder, seed in zip(manifests.items(), several["runs"], (1, 2)):
        copy_as_run(folder, artifacts_dir, run_id, manifest, seed)
    tests = [{row.path for row in manifest if row.split == "test"} for manifest in manifests.values()]
    seen = {row.path for manifest in manifests.values() for row in manifest if row.split != "test"}
    expected = tests[0] & tests[1]
    assert expected and expected < tests[0] and expected < tests[1]  # the seeds do split differently
    assert expected == (tests[0] | tests[1]) - seen

    scored = {}
    real = inference.evaluate_images

    def spy(trained, images, *args, **kwargs):
        scored[os.path.basename(trained.folder)] = {os.path.relpath(path, data) for path in images.paths}
        return real(trained, images, *args, **kwargs)

    monkeypatch.setattr(inference, "evaluate_images", spy)
    outputs = ["--artifacts_dir", str(artifacts_dir), "--results_dir", str(tmp_path / "results")]
    # Chosen runs (in any order); the folder is theirs.
    assert evaluate.main(["--compare", "run-b", "run-a", "--show", "0", *outputs]) == 0
    assert scored == {"run-a": expected, "run-b": expected}
    (folder,) = comparison_folders(tmp_path / "results")
    rows = read_rows(folder / "model_comparison.csv")
    assert {int(row["test_images"]) for row in rows} == {len(expected)}
    markdown = (folder / "model_comparison.md").read_text(encoding="utf-8")
    left_out = len((tests[0] | tests[1]) - expected)
    assert "the runs were split differently" in markdown and f"{left_out} test image(s)" in markdown
    assert f"warning: only {len(expected)} common test image(s) (fewer than 30)" in markdown
    assert f"timing batches repeat images: the {len(expected)} common test image(s) fill each batch of 32" in markdown
    printed = capsys.readouterr().out
    assert f"warning: only {len(expected)} common test image(s)" in printed and "timing batches repeat images" in printed


def test_common_test_images_leaves_out_every_image_another_run_saw():
    row = artifacts.ManifestRow
    manifests = {
        "a": [row("x/1.png", "x", "test"), row("x/2.png", "x", "test"), row("y/3.png", "y", "test"),
              row("y/4.png", "y", "train"), row("x/5.png", "x", "test")],
        "b": [row("x/1.png", "x", "test"), row("x/2.png", "x", "val"), row("y/3.png", "y", "test"),
              row("y/4.png", "y", "test")],
    }
    common = compare.common_test_images(manifests)
    assert common.paths == ("x/1.png", "y/3.png") and common.labels == ("x", "y")
    assert not common.same_split
    assert sorted(common.left_out) == ["x/2.png", "x/5.png", "y/4.png"]
    assert "run(s) b" in common.left_out["x/2.png"] and "run(s) a" in common.left_out["y/4.png"]
    assert "not in the split of run(s) b" in common.left_out["x/5.png"]
    same = compare.common_test_images({"a": manifests["a"], "b": list(manifests["a"])})
    assert same.same_split and same.paths == ("x/1.png", "x/2.png", "x/5.png", "y/3.png")


def test_few_common_test_images_are_a_warning_with_their_number():
    row = artifacts.ManifestRow
    few = [row(f"x/{number}.png", "x", "test") for number in range(6)]
    enough = [row(f"x/{number}.png", "x", "test") for number in range(compare.MIN_COMMON_IMAGES)]

    lines = compare.common_test_images({"a": few, "b": few}).describe()
    assert lines[0] == "6 test images: every run has the same split"
    assert lines[1].startswith("warning: only 6 common test image(s) (fewer than 30): one image moves an accuracy by 16.7%")
    assert compare.common_test_images({"a": enough, "b": enough}).describe() == ["30 test images: every run has the same split"]
    other_seed = compare.common_test_images({"a": few, "b": few[:1] + [row("x/1.png", "x", "train")]})
    assert other_seed.describe()[-1].endswith("compare runs trained with the same --seed and split options")
    assert "only 1 common test image(s)" in other_seed.describe()[-1]
    assert compare.timing_repeats_note(6) == [
        "timing batches repeat images: the 6 common test image(s) fill each batch of 32"
    ]
    assert compare.timing_repeats_note(compare.TIMING_BATCH) == []


def test_messages_show_a_list_option_as_typed_not_as_a_tuple(tmp_path, capsys):
    assert evaluate.main(["--compare", "--export", "onnx,litert", "--artifacts_dir", str(tmp_path)]) == 2

    error = one_line_error(capsys)
    assert "Received: export=onnx,litert" in error and "(" not in error.split("Received:")[1]


def test_runs_with_no_common_test_image_are_refused():
    row = artifacts.ManifestRow
    manifests = {
        "a": [row("x/1.png", "x", "test"), row("x/2.png", "x", "train")],
        "b": [row("x/1.png", "x", "train"), row("x/2.png", "x", "test")],
    }
    with pytest.raises(errors.UserError, match="no test image is in every compared run's test split"):
        compare.common_test_images(manifests)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--backbone", "mobilenet_v2,nonet"], "backbone must be one of"),
        (["--backbone", "mobilenet_v2,mobilenet_v2"], "names a backbone twice"),
        (["--backbone", "resnet50,vgg19", "--alpha", "0.5"], "none of resnet50, vgg19 has one"),
        (["--backbone", "mobilenet_v2,inception_v3", "--image_size", "64"], "at least 75 for inception_v3"),
        (["--backbone", "mobilenet_v2,resnet50", "--resume", "last"], "--resume continues one run"),
    ],
)
def test_bad_backbone_lists_are_one_line_errors(options, message, tmp_path, capsys):
    outputs = ["--artifacts_dir", str(tmp_path / "artifacts"), "--results_dir", str(tmp_path / "results")]
    data = make_flat_dataset(tmp_path / "data", per_class=2)
    assert main_script.main(["--image_dir", data, *options, *outputs]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "artifacts").exists()


def test_compare_needs_two_finished_runs_of_the_folder(tmp_path, capsys):
    outputs = ["--artifacts_dir", str(tmp_path / "artifacts"), "--results_dir", str(tmp_path / "results")]
    data = make_flat_dataset(tmp_path / "data", per_class=2)
    assert evaluate.main(["--image_dir", data, "--compare", *outputs]) == 2
    assert "needs at least two finished runs" in one_line_error(capsys)
    assert evaluate.main(["--image_dir", data, "--compare", "20990101-000000", *outputs]) == 2
    assert "no run 20990101-000000" in one_line_error(capsys)
    assert evaluate.main(["--compare", "--model", "m.keras", *outputs]) == 2
    assert "leave --model out" in one_line_error(capsys)


@pytest.mark.slow
def test_scoring_several_models_traces_each_once_and_never_warns_of_retracing(saved_model):
    """Each model is scored (a short last batch) and timed (another batch
    size) as compare.py does (compare.scored, with less timing): one trace each, so TensorFlow, which counts
    traces across models, has no retracing to warn of."""
    import glob
    import logging

    messages = []

    class Recorder(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    paths = sorted(glob.glob(os.path.join(saved_model["data"], "*", "*.png")))
    images = inference.LabelledImages(paths=paths, labels=[int("dog" in path) for path in paths], description="all")
    timing_images = compare.load_timing_images(paths[:3], 32)
    logger, recorder = logging.getLogger("tensorflow"), Recorder()
    logger.addHandler(recorder)
    try:
        traces = []
        for _ in range(3):
            trained = inference.load_trained_model(str(saved_model["run"] / artifacts.MODEL_FILE))
            evaluation = inference.evaluate_images(trained, images, 5)  # 16 images: batches of 5, 5, 5, 1
            assert len(evaluation.paths) == 16
            compare.inference_ms_per_image(trained.model, timing_images, batch_size=4, warmup=1, repeats=1)
            traces.append(trained.model.predict_function.experimental_get_tracing_count())
    finally:
        logger.removeHandler(recorder)
    assert traces == [1, 1, 1]
    assert not [message for message in messages if "retracing" in message], messages


HOSTILE_NAME = "<script>alert(1)</script> | [pwn](javascript:alert(1))\nx"


def markdown_cells(line):
    """The cells of a markdown table row: split on the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_a_hostile_sidecar_name_stays_in_its_cell_of_the_markdown_table(tmp_path):
    row = {name: None for name, _ in compare.COLUMNS}
    row.update(rank=1, backbone=HOSTILE_NAME, source=compare.EXTERNAL, run="=cmd|' -C calc'!A0", weights="n/a",
               test_accuracy=0.5, macro_f1=0.5, test_loss=0.7, inference_ms_per_image=1.0, test_images=4)
    notes = [f"external: {HOSTILE_NAME} is a model from another framework"]

    _, markdown_path, _ = compare.write_comparison([row], str(tmp_path), notes)

    lines = open(markdown_path, encoding="utf-8").read().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 3  # header, rule, one row: the newline did not start a row
    assert len(markdown_cells(table[2])) == len(compare.COLUMNS) == len(markdown_cells(table[0]))
    text = "\n".join(lines)
    assert "<script>" not in text and "[pwn](" not in text
    assert "&lt;script&gt;" in table[2] and r"\[pwn\]" in table[2]
    # The CSV: the formula is quoted for a spreadsheet, and read back as it was.
    csv_rows = artifacts.read_csv(str(tmp_path / "model_comparison.csv"))
    assert csv_rows[1][compare.COLUMNS.index(("run", "run"))] == "=cmd|' -C calc'!A0"
    with open(tmp_path / "model_comparison.csv", encoding="utf-8") as handle:
        assert "'=cmd|" in handle.read()


def test_a_scored_row_prints_a_hostile_sidecar_name_as_text(capsys):
    compare.print_row({"backbone": "net\x1b[2J", "source": compare.EXTERNAL, "run": "x\x07", "test_accuracy": 0.5,
                       "test_loss": 0.7, "macro_f1": 0.5, "inference_ms_per_image": 1.0})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and r"net\x1b[2J (external, x\x07)" in out
