"""Models from other frameworks (external.py): an .onnx file with its
sidecar, loaded, run, matched by name and compared like a run of ours.

The PyTorch export tests/fixtures/colour_cnn.onnx (made by
make_colour_cnn.py; no torch needed here) tells apart the trained run's
red, green and blue classes, its outputs in the order gamma, alpha, beta.
Small ONNX graphs built here with the onnx package (a tf2onnx dependency)
give every other input: each layout, size, type, output and sidecar that
must be refused.
"""

import json
import os
import shutil

import numpy as np
import pytest

import app
import artifacts
import compare
import errors
import evaluate
import external
import inference
import predict
from conftest import ROOT, TRAINED_CLASSES, class_image, make_flat_dataset, one_line_error, read_csv, read_json

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "colour_cnn.onnx")
SIDECAR = {"classes": ["a", "b", "c"], "preprocessing": "raw", "output": "logits"}


# ---------------------------------------------------------------- ONNX graphs


def save_graph(path, nodes, inputs, outputs, initializers=()):
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # what onnxruntime reads for opset 13
    onnx.save(model, str(path))
    return str(path)


def value(name, element_type, shape):
    from onnx import TensorProto, helper

    types = {"float": TensorProto.FLOAT, "uint8": TensorProto.UINT8, "int64": TensorProto.INT64,
             "double": TensorProto.DOUBLE}
    return helper.make_tensor_value_info(name, types[element_type], shape)


def channel_means(path, layout="nchw", size=(32, 32), batch="N", input_type="float", softmax=False, classes=3):
    """A classifier whose logits are the mean of each channel (times an
    identity, or a 3 x `classes` matrix of ones beyond the identity), so its
    output shows exactly what it was fed."""
    from onnx import TensorProto, helper, numpy_helper

    shape = [batch, 3, *size] if layout == "nchw" else [batch, *size, 3]
    weight = np.eye(3, classes, dtype=np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels"], ["means"], axes=[2, 3] if layout == "nchw" else [1, 2], keepdims=0),
        helper.make_node("MatMul", ["means", "weight"], ["logits" if not softmax else "scores"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], axis=1))
    return save_graph(
        path, nodes, [value("image", input_type, shape)], [value("logits", "float", [batch, classes])],
        [numpy_helper.from_array(weight, "weight")],
    )


def any_input(path, shape, input_type="float", classes=3, output_shape=None, inputs=1, outputs=1):
    """A graph of any input `shape`: all its values averaged, times a 1 x
    `classes` row; with more inputs (added) or outputs (copies) on request.
    Only loaded, never run: for what must be refused."""
    from onnx import TensorProto, helper, numpy_helper

    rank = len(shape)
    names = ["image"] + [f"image{number}" for number in range(2, inputs + 1)]
    nodes = [helper.make_node("Cast", [names[0]], ["pixels"], to=TensorProto.FLOAT)]
    for name in names[1:]:
        nodes.append(helper.make_node("Add", ["pixels", name], ["pixels2"]))
    last = "pixels2" if inputs > 1 else "pixels"
    if output_shape is not None and len(output_shape) == 4:
        nodes.append(helper.make_node("ReduceMean", [last], ["logits"], axes=[2, 3], keepdims=1))
    else:
        nodes += [
            helper.make_node("ReduceMean", [last], ["mean"], axes=list(range(1, rank)), keepdims=1),
            helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weight"], ["logits"]),
        ]
    results = [value("logits", "float", output_shape or ["N", classes])]
    for number in range(2, outputs + 1):
        nodes.append(helper.make_node("Identity", ["logits"], [f"logits{number}"]))
        results.append(value(f"logits{number}", "float", output_shape or ["N", classes]))
    declared = [value(name, input_type if name == "image" else "float", shape) for name in names]
    return save_graph(path, nodes, declared, results, [numpy_helper.from_array(np.ones((1, classes), np.float32), "weight")])


def with_sidecar(model_path, sidecar=SIDECAR, text=None):
    """Writes the sidecar of `model_path` (a dict, or raw `text`)."""
    with open(external.sidecar_path(model_path), "w", encoding="utf-8") as handle:
        handle.write(text if text is not None else json.dumps(sidecar))
    return model_path


def colour_images(classes=TRAINED_CLASSES, per_class=4, size=48):
    """uint8 (N, size, size, 3) of conftest's class images and their names."""
    images, names = [], []
    for number, name in enumerate(classes):
        for variant in range(per_class):
            images.append(np.asarray(class_image(number, variant).resize((size, size))))
            names.append(name)
    return np.stack(images), names


def softmax(values):
    values = np.asarray(values, np.float64)
    exponentials = np.exp(values - values.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- the PyTorch fixture


def test_the_pytorch_fixture_reads_its_layout_and_size_from_the_graph():
    runner = external.load_external(FIXTURE)
    assert (runner.layout, runner.image_size, runner.fixed_batch) == ("nchw", 48, None)
    assert runner.input_shape == (None, 48, 48, 3) and runner.output_shape == (None, 3)
    sidecar = runner.sidecar
    assert sidecar.classes == ("gamma", "alpha", "beta") and sidecar.classes != TRAINED_CLASSES
    assert (sidecar.layout, sidecar.image_size) == (None, None)  # not in its sidecar: from the graph
    assert sidecar.preprocessing is external.PREPROCESSING["torch"] and sidecar.label == "colour CNN (PyTorch)"
    assert os.path.getsize(FIXTURE) < 10_000 and external.parameter_count(FIXTURE) == 9 + 9  # the zero biases are folded away


def test_the_pytorch_fixture_is_right_by_name_and_wrong_by_position():
    images, names = colour_images()
    probabilities = external.load_external(FIXTURE).predict_on_batch(images)
    classes = external.read_sidecar(FIXTURE).classes
    assert probabilities.shape == (12, 3) and np.allclose(probabilities.sum(axis=1), 1)
    assert [classes[i] for i in probabilities.argmax(axis=1)] == names
    assert not any(TRAINED_CLASSES[i] == name for i, name in zip(probabilities.argmax(axis=1), names))


# ---------------------------------------------------------------- what the model is fed


MODES = {
    "torch": lambda x: (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
    "tf": lambda x: x / 127.5 - 1,
    "caffe": lambda x: x[..., ::-1] - [103.939, 116.779, 123.68],
    "raw": lambda x: x,
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize(
    "preprocessing, expected",
    [(name, MODES[name]) for name in MODES]
    + [
        ({"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}, lambda x: (x / 255 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]),
        ({"mean": [100, 110, 120], "std": [50, 60, 70], "range": 255, "channels": "bgr"},
         lambda x: (x[..., ::-1] - [100, 110, 120]) / [50, 60, 70]),
    ],
    ids=["torch", "tf", "caffe", "raw", "mean-std", "mean-std-bgr-255"],
)
def test_each_preprocessing_reaches_the_model_as_declared(preprocessing, expected, layout, tmp_path):
    path = with_sidecar(channel_means(tmp_path / "means.onnx", layout),
                        {**SIDECAR, "preprocessing": preprocessing, "image_size": 32})
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    runner = external.load_external(path)
    assert runner.layout == layout
    means = expected(images.astype(np.float64)).mean(axis=(1, 2))
    np.testing.assert_allclose(runner.predict_on_batch(images), softmax(means), atol=1e-5)


def test_a_fixed_batch_is_fed_in_chunks_of_its_size(tmp_path):
    free = external.load_external(with_sidecar(channel_means(tmp_path / "free.onnx")))
    fixed = external.load_external(with_sidecar(channel_means(tmp_path / "four.onnx", batch=4)))
    images = np.random.default_rng(1).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    assert fixed.fixed_batch == 4 and free.fixed_batch is None
    np.testing.assert_allclose(fixed.predict_on_batch(images), free.predict_on_batch(images), atol=1e-6)
    np.testing.assert_allclose(fixed.predict_on_batch(images[:1]), free.predict_on_batch(images[:1]), atol=1e-6)


def test_probabilities_are_used_as_they_are_and_logits_called_probabilities_are_refused(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    path = with_sidecar(channel_means(tmp_path / "soft.onnx", softmax=True), {**SIDECAR, "output": "probabilities"})
    means = images.astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(external.load_external(path).predict_on_batch(images), softmax(means), atol=1e-5)

    path = with_sidecar(channel_means(tmp_path / "logits.onnx"), {**SIDECAR, "output": "probabilities"})
    with pytest.raises(errors.UserError, match=r'logits\.json: field "output" says probabilities, but the outputs'):
        external.load_external(path).predict_on_batch(images)


def test_probabilities_called_logits_are_refused_not_softmaxed_twice(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    path = with_sidecar(channel_means(tmp_path / "soft.onnx", softmax=True), SIDECAR)
    with pytest.raises(errors.UserError, match=r'soft\.json: field "output" says logits, but the outputs .* are '
                                               r'already probabilities .*say "probabilities"'):
        external.load_external(path).predict_on_batch(images)


def test_evaluate_refuses_probabilities_called_logits_in_one_line(tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=2)
    path = with_sidecar(channel_means(tmp_path / "probs_as_logits.onnx", softmax=True), SIDECAR)
    code = evaluate.main(["--model", path, "--image_dir", data, "--results_dir", str(tmp_path / "results"),
                          "--show", "0"])
    assert code == 2
    assert 'probs_as_logits.json: field "output" says logits, but the outputs' in one_line_error(capsys)
    assert not (tmp_path / "results" / "metrics").exists()


def test_a_uint8_model_takes_the_pixels_as_they_are(tmp_path):
    path = with_sidecar(channel_means(tmp_path / "bytes.onnx", layout="nhwc", input_type="uint8"))
    images = np.full((2, 32, 32, 3), (10, 20, 30), np.uint8)
    np.testing.assert_allclose(external.load_external(path).predict_on_batch(images), softmax([[10, 20, 30]] * 2), atol=1e-6)
    with_sidecar(path, {**SIDECAR, "preprocessing": "torch"})
    with pytest.raises(errors.UserError, match=r'field "preprocessing" is torch, but the model .* takes uint8 pixels'):
        external.load_external(path)


# ---------------------------------------------------------------- bad sidecars


# (sidecar text, None: no sidecar; the field named; what the line says)
BAD_SIDECARS = [
    (None, None, "no sidecar"),
    ("{not json", None, "not valid JSON (Expecting property name"),
    ('["a", "b"]', None, "expected a JSON object"),
    (json.dumps({"preprocessing": "raw", "output": "logits"}), "classes", "is missing"),
    (json.dumps({**SIDECAR, "classes": "a,b,c"}), "classes", "must be a list of at least two distinct"),
    (json.dumps({**SIDECAR, "classes": ["a", "a", "c"]}), "classes", "must be a list of at least two distinct"),
    (json.dumps({**SIDECAR, "classes": ["a", 2, "c"]}), "classes", "must be a list"),
    (json.dumps({**SIDECAR, "classes": None}), "classes", "Received: classes=null"),
    (json.dumps({**SIDECAR, "preprocessing": "imagenet"}), "preprocessing", "must be one of torch, tf, caffe, raw"),
    (json.dumps({**SIDECAR, "preprocessing": 255}), "preprocessing", "must be one of torch, tf, caffe, raw"),
    (json.dumps({**SIDECAR, "preprocessing": {"mean": [0.5, 0.5]}}), "preprocessing.std", "is missing"),
    (json.dumps({**SIDECAR, "preprocessing": {"mean": [0.5, 0.5], "std": [1, 1, 1]}}), "preprocessing.mean",
     "must be a list of three numbers"),
    (json.dumps({**SIDECAR, "preprocessing": {"mean": [0, 0, 0], "std": [1, 0, 1]}}), "preprocessing.std",
     "must be a list of three positive numbers"),
    (json.dumps({**SIDECAR, "preprocessing": {"mean": [0, 0, 0], "std": [1, 1, 1], "range": 100}}),
     "preprocessing.range", "must be 1"),
    (json.dumps({**SIDECAR, "preprocessing": {"mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1}}),
     "preprocessing.scale", "is not a preprocessing field"),
    (json.dumps({**SIDECAR, "output": "softmax"}), "output", "must be one of logits, probabilities"),
    (json.dumps({**SIDECAR, "layout": "chw"}), "layout", "must be one of nchw, nhwc"),
    (json.dumps({**SIDECAR, "image_size": "32"}), "image_size", "must be a positive whole number"),
    (json.dumps({**SIDECAR, "image_size": True}), "image_size", "must be a positive whole number"),
    (json.dumps({**SIDECAR, "name": 7}), "name", "must be a non-empty string"),
    (json.dumps({**SIDECAR, "clases": ["a", "b"]}), "clases", "is not a sidecar field"),
]


@pytest.mark.parametrize(
    "text, field, message", BAD_SIDECARS,
    ids=[f"{field or message.split()[0]}-{number}" for number, (_, field, message) in enumerate(BAD_SIDECARS)],
)
def test_a_bad_sidecar_is_one_line_naming_the_file_and_the_field(text, field, message, tmp_path):
    path = channel_means(tmp_path / "model.onnx")
    if text is not None:
        with_sidecar(path, text=text)
    with pytest.raises(errors.UserError) as raised:
        external.load_external(path)
    line = str(raised.value)
    assert "\n" not in line and str(tmp_path / "model.json") in line and message in line, line
    if field:
        assert f'field "{field}"' in line, line


# ---------------------------------------------------------------- models that contradict their sidecar


@pytest.mark.parametrize(
    "make, sidecar, message",
    [
        (lambda path: any_input(path, ["N", 32, 32]), {}, "(rank 3); expected images of rank 4"),
        (lambda path: any_input(path, ["N", 3, 32, 32, 1]), {}, "(rank 5); expected images of rank 4"),
        (lambda path: channel_means(path, "nchw"), {"layout": "nhwc"},
         'field "layout" says nhwc, but the model'),
        (lambda path: channel_means(path, "nhwc"), {"layout": "nchw"},
         'field "layout" says nchw, but the model'),
        (lambda path: channel_means(path, "nchw"), {"image_size": 64},
         'field "image_size" says 64, but the model'),
        (lambda path: channel_means(path, "nchw", size=("H", "W")), {},
         'field "image_size" is needed: the input [N, 3, H, W]'),
        (lambda path: any_input(path, ["N", "C", "H", "W"]), {"image_size": 32},
         'field "layout" is needed: the input [N, C, H, W]'),
        (lambda path: any_input(path, ["N", 3, 32, 3]), {},
         'field "layout" is needed'),
        (lambda path: channel_means(path, "nchw", size=(32, 48)), {}, "is 32x48; only square inputs"),
        (lambda path: any_input(path, ["N", 1, 28, 28]), {}, "has no axis of 3 channels"),
        (lambda path: channel_means(path, classes=4), {}, 'field "classes" names 3 classes, but the model'),
        (lambda path: channel_means(path, classes=2), {}, "has 2 outputs ([N, 2])"),
        (lambda path: any_input(path, ["N", 3, 32, 32], outputs=2), {}, "it has 2 outputs (logits, logits2)"),
        (lambda path: any_input(path, ["N", 3, 32, 32], inputs=2), {}, "it has 2 inputs (image, image2)"),
        (lambda path: any_input(path, ["N", 3, 32, 32], output_shape=["N", 3, 1, 1]), {},
         'its output "logits" is [N, 3, 1, 1]; expected [N, classes]'),
        (lambda path: any_input(path, ["N", 3, 32, 32], input_type="int64"), {}, "its input is tensor(int64)"),
        (lambda path: path.write_bytes(np.random.default_rng(0).bytes(2048)) and str(path), {},
         "could not load"),
    ],
    ids=["rank-3", "rank-5", "nchw-said-nhwc", "nhwc-said-nchw", "size", "free-size", "free-layout",
         "3x3-layout", "not-square", "grey", "more-outputs", "fewer-outputs", "two-outputs", "two-inputs",
         "output-rank-4", "int64", "not-onnx"],
)
def test_a_model_that_contradicts_its_sidecar_is_one_line_naming_it(make, sidecar, message, tmp_path):
    path = make(tmp_path / "model.onnx")
    with_sidecar(str(path), {**SIDECAR, **sidecar})
    with pytest.raises(errors.UserError) as raised:
        external.load_external(str(path))
    line = str(raised.value)
    assert "\n" not in line and message in line, line
    assert str(tmp_path / "model.onnx") in line or str(tmp_path / "model.json") in line, line
    if "field" in message:
        assert line.startswith(f"{tmp_path / 'model.json'}: field "), line


def test_a_free_layout_and_size_are_taken_from_the_sidecar(tmp_path):
    path = with_sidecar(channel_means(tmp_path / "free.onnx", "nhwc", size=("H", "W")),
                        {**SIDECAR, "layout": "nhwc", "image_size": 40})
    runner = external.load_external(path)
    assert (runner.layout, runner.image_size, runner.input_shape) == ("nhwc", 40, (None, 40, 40, 3))
    assert runner.predict_on_batch(np.zeros((2, 40, 40, 3), np.uint8)).shape == (2, 3)


# ---------------------------------------------------------------- classes by name


def test_classes_in_another_order_match_by_name():
    sidecar = external.read_sidecar(FIXTURE)
    external.check_classes(sidecar, TRAINED_CLASSES, "the folder DIR")  # no error


@pytest.mark.parametrize(
    "classes, message",
    [
        (["alpha", "beta"], 'field "classes" misses gamma, which the folder DIR has'),
        (["alpha", "beta", "gamma", "delta"], 'field "classes" names delta, which the folder DIR lacks'),
        (["alpha", "beta", "delta"], "names delta, which the folder DIR lacks and misses gamma, which the folder DIR has"),
        (["background", "alpha", "beta", "gamma"], 'field "classes" has background, a background-style class the folder DIR'),
        (["alpha", "beta", "gamma", "__Other__"], "has __Other__, a background-style class"),
    ],
)
def test_classes_the_dataset_lacks_or_misses_are_named(classes, message, tmp_path):
    path = with_sidecar(channel_means(tmp_path / "model.onnx", classes=len(classes)), {**SIDECAR, "classes": classes})
    with pytest.raises(errors.UserError, match="^" + str(tmp_path / "model.json")) as raised:
        external.check_classes(external.read_sidecar(path), TRAINED_CLASSES, "the folder DIR")
    assert message in str(raised.value) and "\n" not in str(raised.value)


# ---------------------------------------------------------------- loading through inference.py


def test_load_trained_model_takes_an_onnx_file_with_a_sidecar_as_a_foreign_model(tmp_path):
    trained = inference.load_trained_model(FIXTURE)
    assert isinstance(trained.model, external.ExternalRunner) and trained.sidecar.path.endswith("colour_cnn.json")
    assert (trained.class_names, trained.image_size, trained.run_config) == (("gamma", "alpha", "beta"), 48, {})
    assert trained.temperature is None
    with pytest.raises(errors.UserError, match=r"image_size is fixed by the model \(48"):
        inference.load_trained_model(FIXTURE, image_size=32)
    # Without a sidecar and without companions, the line says what is missing.
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(FIXTURE, bare)
    with pytest.raises(errors.UserError, match=f"needs its sidecar {bare.with_suffix('.json')} instead"):
        inference.load_trained_model(str(bare))
    with pytest.raises(errors.UserError, match="no sidecar"):
        inference.load_external_model(str(bare))


def test_a_foreign_models_classes_must_be_the_folders(tmp_path):
    trained = inference.load_trained_model(FIXTURE)
    data = make_flat_dataset(tmp_path / "data", classes=("alpha", "beta"), per_class=2)
    with pytest.raises(errors.UserError, match=f'field "classes" names gamma, which the folder {data} lacks'):
        inference.labelled_images(data, trained, "test")
    images = inference.labelled_images(make_flat_dataset(tmp_path / "all", classes=TRAINED_CLASSES, per_class=2),
                                       trained, "test")
    # Labels are the model's own class numbers of each folder's name.
    assert images.labels.tolist() == [1, 1, 2, 2, 0, 0] and images.description == "all images"


def test_tta_is_refused_for_a_foreign_model():
    with pytest.raises(errors.UserError, match="how the model .* from another framework was trained is unknown"):
        inference.test_time_augmentation(inference.load_trained_model(FIXTURE), 4, seed=0)


# ---------------------------------------------------------------- the commands


def outputs(trained_run, results):
    return ["--artifacts_dir", str(trained_run["artifacts"]), "--results_dir", str(results), "--show", "0"]


def read_rows(path):
    rows = read_csv(path)
    return [dict(zip(rows[0], row)) for row in rows[1:]]


@pytest.mark.slow
def test_compare_external_scores_the_pytorch_export_on_the_runs_test_images(trained_run, tmp_path, monkeypatch):
    scored = {}
    real = inference.evaluate_images

    def spy(trained, images, *args, **kwargs):
        scored[os.path.basename(trained.path)] = (sorted(images.paths), trained.class_names, images.labels.tolist())
        return real(trained, images, *args, **kwargs)

    monkeypatch.setattr(inference, "evaluate_images", spy)
    run = trained_run["run"].name
    code = evaluate.main(["--image_dir", trained_run["data"], "--compare", run, "--external", FIXTURE,
                          *outputs(trained_run, tmp_path / "results")])
    assert code == 0
    (folder,) = (tmp_path / "results" / compare.COMPARISON_FOLDER).iterdir()
    rows = {row["source"]: row for row in read_rows(folder / "model_comparison.csv")}
    ours, theirs = rows[compare.OURS], rows[compare.EXTERNAL]
    test_images = sorted(os.path.join(trained_run["data"], row.path)
                         for row in artifacts.read_manifest(trained_run["run"]) if row.split == "test")
    # The same images for both, each labelled in the model's own class order.
    assert scored["best_model.keras"][0] == scored["colour_cnn.onnx"][0] == test_images
    assert scored["colour_cnn.onnx"][1] == ("gamma", "alpha", "beta")
    assert int(theirs["test_images"]) == int(ours["test_images"]) == len(test_images)
    assert float(theirs["test_accuracy"]) == 1.0 and theirs["rank"] == "1"  # every colour right, by name
    assert (theirs["backbone"], theirs["run"], theirs["image_size"]) == ("colour CNN (PyTorch)", "colour_cnn.onnx", "48")
    assert theirs["weights"] == theirs["training_seconds"] == theirs["epochs"] == "n/a"
    assert int(theirs["parameters"]) == 18 and float(theirs["inference_ms_per_image"]) > 0
    metrics = read_json(trained_run["results"] / "metrics" / run / "metrics.json")
    assert float(ours["test_accuracy"]) == pytest.approx(metrics["accuracy"], abs=1e-6)
    markdown = (folder / "model_comparison.md").read_text(encoding="utf-8")
    assert "| external |" in markdown and "The images it was trained on are unknown" in markdown
    assert "preprocessing torch, output logits, fed 48 px nchw" in markdown
    assert (folder / "model_comparison.png").stat().st_size > 10_000


def run_folder_without_a_model(root):
    """A finished run's folder as compare.py reads it before scoring (its
    companions; an empty model file, never loaded), on a folder of
    alpha/beta/gamma: for refusals that come before any model is run.
    Returns (data folder, ARTIFACTS_DIR, run id)."""
    data = make_flat_dataset(root / "data", classes=TRAINED_CLASSES, per_class=2)
    run_id = "20990101-000000"
    folder = root / "artifacts" / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / artifacts.MODEL_FILE).write_bytes(b"")
    manifest = [artifacts.ManifestRow(f"{name}/img_00{number}.png", name, "test" if number else "train")
                for name in TRAINED_CLASSES for number in range(2)]
    artifacts.write_companions(folder, TRAINED_CLASSES, manifest,
                               {"status": "finished", "image_dir": data, "image_size": 32, "run": run_id})
    return data, str(root / "artifacts"), run_id


@pytest.mark.parametrize(
    "classes, message",
    [
        (["gamma", "alpha"], 'colour.json: field "classes" misses beta, which the compared runs\' dataset has'),
        (["gamma", "alpha", "beta", "background"], 'colour.json: field "classes" has background, a background-style'),
    ],
)
def test_compare_refuses_an_external_model_of_other_classes(classes, message, tmp_path, capsys):
    data, artifacts_dir, run_id = run_folder_without_a_model(tmp_path)
    path = with_sidecar(channel_means(tmp_path / "colour.onnx", classes=len(classes)), {**SIDECAR, "classes": classes})
    code = evaluate.main(["--compare", run_id, "--external", path, "--artifacts_dir", artifacts_dir,
                          "--results_dir", str(tmp_path / "results"), "--show", "0"])
    assert code == 2 and message in one_line_error(capsys)


def test_compare_external_needs_a_run_and_compare(tmp_path, capsys):
    data = make_flat_dataset(tmp_path / "data", classes=TRAINED_CLASSES, per_class=2)
    empty = ["--artifacts_dir", str(tmp_path / "none"), "--results_dir", str(tmp_path / "results")]
    assert evaluate.main(["--image_dir", data, "--compare", "--external", FIXTURE, *empty]) == 2
    assert "--compare --external needs at least one finished run" in one_line_error(capsys)
    assert evaluate.main(["--image_dir", data, "--external", FIXTURE, *empty]) == 2
    assert "add --compare" in one_line_error(capsys)
    assert evaluate.main(["--compare", "--external", str(tmp_path / "missing.onnx"), *empty]) == 2
    assert "external must be an existing .onnx file" in one_line_error(capsys)


def test_foreign_model_mistakes_in_the_commands_are_one_line(tmp_path, capsys):
    where = ["--results_dir", str(tmp_path / "results"), "--show", "0"]
    data = make_flat_dataset(tmp_path / "data", classes=TRAINED_CLASSES, per_class=2)
    assert evaluate.main(["--model", FIXTURE, *where]) == 2
    assert "has no training folder: pass --image_dir" in one_line_error(capsys)
    assert evaluate.main(["--model", FIXTURE, "--image_dir", data, "--tta", "2", *where]) == 2
    assert "from another framework was trained is unknown" in one_line_error(capsys)
    assert evaluate.main(["--model", FIXTURE, "--image_dir", data, "--image_size", "64", *where]) == 2
    assert "image_size is fixed by the model (48" in one_line_error(capsys)
    pets = make_flat_dataset(tmp_path / "pets", classes=("cat", "dog"), per_class=2)
    assert predict.main(["--model", FIXTURE, "--image_dir", pets, *where]) == 2
    assert 'colour_cnn.json: field "classes" names gamma, alpha, beta, which the folder' in one_line_error(capsys)
    assert predict.main(["--model", FIXTURE, "--images", pets, "--gradcam", "1", *where]) == 2
    assert "--gradcam 1 needs the Keras model" in one_line_error(capsys)


@pytest.mark.slow
def test_evaluate_model_foreign_onnx_scores_every_image_of_the_folder(trained_run, tmp_path):
    results = tmp_path / "results"
    code = evaluate.main(["--model", FIXTURE, "--image_dir", trained_run["data"], "--rows", "1", "--cols", "3",
                          *outputs(trained_run, results)])
    assert code == 0
    (stamp,) = os.listdir(results / "metrics")
    metrics = read_json(results / "metrics" / stamp / "metrics.json")
    # No split manifest: all 36 images, the model's training images unknown.
    assert metrics["evaluated"] == "all images" and metrics["num_samples"] == 36
    assert metrics["accuracy"] == 1.0 and metrics["sidecar"].endswith("colour_cnn.json")
    assert metrics["calibration"]["temperature"] is None
    for category, name in [("confusion_matrix", "confusion_matrix.png"), ("calibration", "reliability.png"),
                           ("prediction_gallery", "prediction_gallery.png")]:
        assert (results / category / stamp / name).is_file()


@pytest.mark.slow
def test_predict_model_foreign_onnx_labels_with_the_sidecars_names(trained_run, tmp_path):
    results = tmp_path / "results"
    code = predict.main(["--model", FIXTURE, "--images", trained_run["data"], "--top_k", "2",
                         *outputs(trained_run, results)])
    assert code == 0
    (stamp,) = os.listdir(results / "predictions")
    rows = read_rows(results / "predictions" / stamp / "predictions.csv")
    assert len(rows) == 36
    assert all(row["predicted_class"] == os.path.basename(os.path.dirname(row["path"])) for row in rows)
    assert {row["top2_class"] for row in rows} <= set(TRAINED_CLASSES)



def test_the_readmes_sidecar_example_is_a_complete_sidecar(tmp_path):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("## Models from other frameworks"):]
    example = section[section.index("```json\n") + len("```json\n"):section.index("\n```\n")]
    assert set(json.loads(example)) == set(external.FIELDS)
    path = with_sidecar(channel_means(tmp_path / "readme.onnx", size=(64, 64), classes=4), text=example)
    runner = external.load_external(path)
    assert (runner.layout, runner.image_size, runner.sidecar.label) == ("nchw", 64, "PyTorch CNN")


def test_the_web_page_answers_with_a_foreign_model_and_says_what_it_cannot_know(tmp_path):
    red, green = str(tmp_path / "red.png"), str(tmp_path / "green.png")
    class_image(0, 0).save(red)  # the trained run's alpha
    class_image(1, 0).save(green)  # its beta
    served = app.load_served(app.MODEL_KEY, FIXTURE)

    result = app.answer_files(served, [red, green], top_k=2)

    assert [answer.top[0][0] for answer in result.answers] == ["alpha", "beta"]  # the sidecar's names
    assert all(answer.gradcam is None for answer in result.answers)
    assert all(answer.trust.startswith("A model from another framework: its test images are not known here")
               for answer in result.answers)
    card = app.model_card(served, str(tmp_path / "artifacts"))
    for shown in ("| run | none: a model from another framework, colour CNN (PyTorch) (sidecar ",
                  "| classes (3) | gamma, alpha, beta |", "| dataset | unknown (trained elsewhere) |",
                  "48x48 px, preprocessing torch, output logits", "| published | no |"):
        assert shown in card, card
    assert "| run | ? |" not in card and "?," not in card

