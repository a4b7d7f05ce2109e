"""app.py, the web page of a trained model: its answers called directly
(the probabilities predict.py gives for the same odd files, the trust
sentences against the saved test bins, one message per bad upload), the
refusals at start, then the real server in a subprocess (gradio_client:
bad inputs, then good ones; switching runs; queued requests; nothing left
on disk) and one real browser (Chromium through Playwright)."""

import dataclasses
import io
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import app
import artifacts
import calibration
import data_loader
import errors
import figures
import image_io
import inference
import predict
import predictions_csv
import visualize
from conftest import ROOT, TRAINED_CLASSES, class_image, free_ports, one_line_error, png_bytes, read_csv, read_json

CHROMIUM = "/usr/bin/chromium"
# What the README's browser arguments say: headless, and nothing fetched
# by the browser itself.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
SERVER_START_SECONDS = 180


# ---------------------------------------------------------------- files


def write_odd_formats(folder, class_number=0):
    """The four files the issue names, each read by another branch of
    image_io: a CMYK JPEG, a 16-bit RGB PNG, a JPEG stored on its side with
    EXIF orientation 6, a palette GIF; all a class picture of 48x40 px.
    Returns their paths."""
    os.makedirs(folder, exist_ok=True)
    picture = np.asarray(class_image(class_number, 5, size=48))[:40]
    names = ("cmyk.jpg", "sixteen.png", "rotated.jpg", "palette.gif")
    paths = {name: os.path.join(folder, name) for name in names}
    Image.fromarray(picture).convert("CMYK").save(paths["cmyk.jpg"], quality=95)
    sixteen = picture.astype(">u2") * 257
    with open(paths["sixteen.png"], "wb") as handle:
        handle.write(png_bytes(48, 40, 16, 2, [row.tobytes() for row in sixteen]))
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION] = 6  # "turn 90 degrees clockwise to display"
    Image.fromarray(picture).transpose(Image.Transpose.ROTATE_90).save(
        paths["rotated.jpg"], exif=exif.tobytes(), quality=95
    )
    Image.fromarray(picture).quantize(colors=32).save(paths["palette.gif"])
    return list(paths.values())


def write_bad_files(folder, good):
    """{path: what the page's message must say} for every bad upload the
    issue lists that is a file; `good` (an image) is truncated for one."""
    os.makedirs(folder, exist_ok=True)
    files = {
        "notes.jpg": (b"shopping list: milk, eggs\n", "notes.jpg: not an image: text file"),
        "empty.jpg": (b"", "empty.jpg: empty file (0 bytes)"),
        "bomb.png": (png_bytes(20000, 20000, 8, 0, [b"\x00" * 10]), "bomb.png: too large: 400,000,000 pixels"),
    }
    buffer = io.BytesIO()
    Image.open(good).convert("RGB").resize((64, 64)).save(buffer, format="JPEG", quality=95)
    half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    files["truncated.jpg"] = (half, "truncated.jpg: truncated or corrupt JPEG")
    expected = {}
    for name, (data, message) in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        expected[path] = message
    return expected


def tree(folder):
    """{relative path: (size, mtime)} of every file under `folder`: to see
    that nothing changed."""
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            status = os.lstat(path)
            found[os.path.relpath(path, folder)] = (status.st_size, status.st_mtime_ns)
    return found


def copy_run(source_run, artifacts_dir):
    """A run folder copied into `artifacts_dir`/runs (model and companions,
    test_reliability.json when there is one); returns the copy's id."""
    target = os.path.join(artifacts.runs_folder(artifacts_dir), os.path.basename(source_run))
    os.makedirs(target)
    for name in (artifacts.MODEL_FILE, *artifacts.COMPANION_FILES, artifacts.TEST_RELIABILITY_FILE):
        if os.path.exists(os.path.join(source_run, name)):
            shutil.copy2(os.path.join(source_run, name), target)
    return os.path.basename(target)


@pytest.fixture(scope="module")
def served(trained_run):
    """The trained run's Keras model, loaded as the page loads it."""
    return app.load_served(os.path.basename(trained_run["run"]), str(trained_run["run"] / artifacts.MODEL_FILE))


@pytest.fixture(scope="module")
def untrained(saved_model):
    """conftest.saved_model's model (no test evaluation saved), as the page
    loads it but without Grad-CAM: compiling it takes seconds and is not
    what these tests are about (the trained run's tests check it)."""
    loaded = app.load_served(os.path.basename(saved_model["run"]), str(saved_model["run"] / artifacts.MODEL_FILE))
    return dataclasses.replace(loaded, gradcam_step=None)


# ---------------------------------------------------------------- the answers


@pytest.mark.slow
def test_the_page_gives_the_probabilities_predict_py_gives_for_odd_formats(served, trained_run, tmp_path):
    paths = write_odd_formats(tmp_path / "odd")
    # They really take different roads through image_io.
    assert [image_io.probe_decoder(path) for path in paths] == ["pillow", "native", "pillow", "native"]
    code = predict.main(["--images", *paths, "--artifacts_dir", str(trained_run["artifacts"]),
                         "--results_dir", str(tmp_path / "results"), "--show", "0"])
    assert code == 0
    (stamp,) = os.listdir(tmp_path / "results" / "predictions")
    written = read_csv(tmp_path / "results" / "predictions" / stamp / "predictions.csv")

    result = app.answer_files(served, paths, top_k=3)

    # Row for row what predict.py wrote: classes, probabilities to 6
    # decimals, trust columns; the names are the uploads' file names.
    assert result.rows[0] == written[0]
    assert [row[1:] for row in result.rows[1:]] == [row[1:] for row in written[1:]]
    assert [row[0] for row in result.rows[1:]] == [os.path.basename(path) for path in paths]
    by_class = {name: float(row[row.index(name) + 1]) for row in written[1:2] for name in TRAINED_CLASSES}
    assert dict(result.answers[0].top) == pytest.approx(by_class, abs=1e-6)
    # The probabilities themselves, unrounded, against the model on the
    # same decode: equal.
    images = np.stack([image_io.load_image(path, served.trained.image_size).numpy() for path in paths])
    np.testing.assert_allclose(result.probabilities, served.trained.model.predict_on_batch(images), atol=1e-6)
    # The card shows the image upright, as the model saw it, and the
    # Grad-CAM predict.py --gradcam 1 draws (compiled here, the same maps).
    upright = image_io.load_image(paths[2], served.trained.image_size).numpy()
    np.testing.assert_array_equal(result.answers[2].image, app.enlarged(upright))
    items = figures.gallery_items(paths, None, result.probabilities, served.trained.class_names,
                                  served.trained.image_size, range(len(paths)))
    (plain, _), (compiled, _) = figures.gradcam_of(served.trained, items), figures.gradcam_of(
        served.trained, items, step=served.gradcam_step)
    np.testing.assert_allclose(compiled, plain, atol=1e-5)
    for answer, item, heat in zip(result.answers, items, plain):
        np.testing.assert_array_equal(answer.gradcam, app.enlarged(visualize.gradcam_overlay(item.image, heat)))


@pytest.mark.slow
def test_trust_sentences_are_the_saved_test_bins_at_each_answers_confidence(served, trained_run, tmp_path):
    saved = read_json(trained_run["run"] / artifacts.TEST_RELIABILITY_FILE)
    # What main.py saved is the test split's reliability, recomputed here.
    images = inference.labelled_images(trained_run["data"], served.trained, "test")
    evaluation = inference.evaluate_images(served.trained, images, batch_size=8)
    assert saved["images"] == len(images.paths) and saved["run"] == os.path.basename(trained_run["run"])
    assert saved["bins"] == calibration.saved_bins(evaluation.reliability())
    assert saved["accuracy"] == pytest.approx(float(np.mean(evaluation.predicted == evaluation.true_labels)))

    paths = write_odd_formats(tmp_path / "odd", class_number=2)
    for answer in app.answer_files(served, paths, top_k=3).answers:
        confidence = answer.top[0][1]
        (row,) = [row for row in saved["bins"] if row["lower"] < confidence <= row["upper"]]
        if row["count"] >= calibration.MIN_TRUST_IMAGES:
            assert f"right {row['accuracy']:.0%} of the time ({row['count']} images)" in answer.trust
        else:
            assert answer.trust.startswith("Only" if row["count"] else "No test image")
            assert f"{100 * row['lower']:.0f}\u2013{100 * row['upper']:.0f}%" in answer.trust


def test_without_saved_bins_the_sentence_says_how_to_get_them(untrained, saved_model):
    result = app.answer_files(untrained, [os.path.join(saved_model["data"], "cat", "img_000.png")], top_k=5)

    (answer,) = result.answers
    assert answer.trust.startswith("No test evaluation was saved with this model")
    assert "python evaluate.py --model" in answer.trust
    assert result.rows[0][-2:] == list(predictions_csv.TRUST_COLUMNS) and result.rows[1][-2:] == ["", ""]
    assert [name for name, _ in answer.top] in (["cat", "dog"], ["dog", "cat"])  # top_k 5 of 2 classes


@pytest.mark.slow
def test_evaluate_py_saves_the_bins_for_a_run_trained_without_them(saved_model, tmp_path, capsys):
    import evaluate

    artifacts_dir = str(tmp_path / "artifacts")
    run = copy_run(str(saved_model["run"]), artifacts_dir)
    artifacts.publish(artifacts_dir, os.path.join(artifacts.runs_folder(artifacts_dir), run))
    saved = os.path.join(artifacts.runs_folder(artifacts_dir), run, artifacts.TEST_RELIABILITY_FILE)
    common = ["--artifacts_dir", artifacts_dir, "--show", "0"]

    assert evaluate.main([*common, "--split", "val", "--results_dir", str(tmp_path / "val")]) == 0
    assert not os.path.exists(saved)  # not the test split
    assert evaluate.main([*common, "--results_dir", str(tmp_path / "results")]) == 0

    assert f"reliability bins (the run had none): {saved}" in capsys.readouterr().out
    record = read_json(saved)
    (stamp,) = os.listdir(tmp_path / "results" / "metrics")
    scores = read_json(tmp_path / "results" / "metrics" / stamp / "metrics.json")
    assert record["images"] == scores["num_samples"] and record["ece"] == scores["calibration"]["ece"]
    assert sum(row["count"] for row in record["bins"]) == scores["num_samples"] and record["run"] == run
    served = app.load_served(run, os.path.join(artifacts.runs_folder(artifacts_dir), run, artifacts.MODEL_FILE))
    assert served.saved == record  # the page now has trust sentences for it
    before = os.stat(saved).st_mtime_ns
    assert evaluate.main([*common, "--results_dir", str(tmp_path / "again")]) == 0
    assert os.stat(saved).st_mtime_ns == before  # never rewritten


def test_each_bad_upload_is_one_message_and_good_ones_still_answer(untrained, saved_model, tmp_path):
    good = os.path.join(saved_model["data"], "dog", "img_001.png")
    bad = write_bad_files(tmp_path / "bad", good)
    before = tree(saved_model["root"])

    for path, message in bad.items():
        with pytest.raises(errors.UserError) as raised:
            app.answer_files(untrained, [path], top_k=2)
        assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    with pytest.raises(errors.UserError, match=f"^{app.EMPTY_SUBMIT}$"):
        app.answer_files(untrained, [], top_k=2)
    with pytest.raises(errors.UserError, match=r"^img_001.png: over the upload limit of 0.0001 MB$"):
        app.answer_files(untrained, [good], top_k=2, max_bytes=100)
    with pytest.raises(errors.UserError, match=r"^none of the 4 files can be used: .*notes.jpg: not an image"):
        app.answer_files(untrained, list(bad), top_k=2)
    # Among good ones, bad files are listed and the rest answered.
    result = app.answer_files(untrained, [good, *bad], top_k=2)
    assert [answer.name for answer in result.answers] == ["img_001.png"]
    assert [item.path for item in result.refused] == [os.path.basename(path) for path in bad]
    assert "Skipped 4: notes.jpg: not an image: text file" in app.status_line(untrained, result)
    assert tree(saved_model["root"]) == before  # nothing on disk changed


def test_answers_build_no_pipeline_and_trace_nothing_new_per_request(untrained, tmp_path, monkeypatch):
    # TensorFlow keeps part of every tf.data pipeline and graph traced until
    # the process ends: one per answer made the server grow by ~4 MB per
    # 100 requests (docs/performance.md, "The web page under many requests").
    paths = write_odd_formats(tmp_path / "odd")  # native and Pillow decodes
    model = untrained.trained.model
    app.answer_files(untrained, paths[:1], top_k=2)  # the first answer may trace the model once
    traced = model.predict_function.experimental_get_tracing_count()

    def no_pipeline(*args, **kwargs):
        raise AssertionError("an answer built a tf.data pipeline")

    monkeypatch.setattr(data_loader, "prediction_dataset", no_pipeline)
    for count in (1, 4, 2, 3):
        result = app.answer_files(untrained, paths[:count], top_k=2)
        assert [answer.name for answer in result.answers] == [os.path.basename(path) for path in paths[:count]]
    assert model.predict_function.experimental_get_tracing_count() == traced


@pytest.mark.slow
def test_an_export_is_answered_like_its_model_without_gradcam(served, trained_run, tmp_path):
    onnx = trained_run["run"] / "best_model.onnx"
    exported = app.load_served(app.MODEL_KEY, str(onnx))
    paths = write_odd_formats(tmp_path / "odd")[:2]

    result = app.answer_files(exported, paths, top_k=3)

    assert not exported.gradcam and all(answer.gradcam is None for answer in result.answers)
    keras_answers = app.answer_files(served, paths, top_k=3)
    np.testing.assert_allclose(result.probabilities, keras_answers.probabilities, atol=1e-4)
    card = app.model_card(exported, str(trained_run["artifacts"]))
    assert "(onnx)" in card and "| Grad-CAM | off: it needs the Keras model (.keras)" in card


def test_the_model_card_and_the_drop_down_of_finished_runs(untrained, saved_model, tmp_path):
    artifacts_dir = str(tmp_path / "artifacts")
    first = copy_run(str(saved_model["run"]), artifacts_dir)
    artifacts.publish(artifacts_dir, os.path.join(artifacts.runs_folder(artifacts_dir), first))
    os.makedirs(os.path.join(artifacts.runs_folder(artifacts_dir), "20000101-000000"))  # killed: no model

    choices = app.run_choices(artifacts_dir)

    assert [choice.key for choice in choices] == [first]
    assert choices[0].label == f"{first} · published · data · mobilenet_v2 · 2 classes"
    models = app.Models(artifacts_dir, artifacts.model_path(artifacts_dir))
    assert models.start == first and models.get(first) is models.get(first)  # loaded once
    card = app.model_card(models.get(first), artifacts_dir)
    for shown in (f"| run | {first} |", "| classes (2) | cat, dog |", "32x32 px",
                  "| test accuracy | not saved with this run |",
                  f"| published | yes: {artifacts_dir}/best_model.keras is this model |"):
        assert shown in card, card
    # The dataset: its folder (and, where the run saved them, its split sizes), not only its last name.
    assert re.search(r"\| dataset \| /\S+/data \|", card), card
    assert app.dataset_text({"image_dir": "/data/scans", "split_sizes": {"train": 1600, "val": 48, "test": 80}}) == (
        "/data/scans (1,728 images: train 1,600, val 48, test 80)")
    assert app.dataset_text({"image_dir": "/x/demo", "options": {"demo": True}}) == "the built-in demo"
    assert "| published | no |" in app.model_card(untrained, artifacts_dir)  # another folder's run
    with pytest.raises(errors.UserError, match="no model elsewhere to choose"):
        models.get("elsewhere")


def test_the_model_card_and_status_show_hostile_names_as_text(untrained, saved_model, tmp_path):
    hostile = ("a | b | c", "[pwn](javascript:alert(1))", "two\nlines <img src=x onerror=alert(1)>")
    trained = dataclasses.replace(untrained.trained, class_names=hostile)
    served = dataclasses.replace(untrained, trained=trained)

    card = app.model_card(served, str(tmp_path))

    rows = card.splitlines()
    classes = next(row for row in rows if row.startswith("| classes (3)"))
    # Two cells: the pipes, the link and the tag are text inside the second.
    assert len(re.split(r"(?<!\\)\|", classes.strip())[1:-1]) == 2, classes
    assert r"a \| b \| c" in classes and r"\[pwn\](javascript" in classes and "&lt;img" in classes
    assert "[pwn](" not in card and "<img" not in card
    assert len(rows) == len(app.model_card(untrained, str(tmp_path)).splitlines())  # the newline made no row
    good = os.path.join(saved_model["data"], "dog", "img_001.png")
    bad = tmp_path / "[x](javascript:alert(1)) | <b>.png"
    bad.write_bytes(b"not an image")
    result = app.answer_files(untrained, [good, str(bad)], top_k=2)
    status = app.status_line(untrained, result)
    assert "[x](" not in status and "<b>" not in status and r"\[x\](javascript:alert(1)) \| &lt;b&gt;.png" in status


@pytest.fixture
def private(monkeypatch):
    """A private folder as the server makes it."""
    with app.private_folder() as folder:
        yield pathlib.Path(folder)
    assert not os.path.exists(folder)


def test_prune_keeps_the_newest_folders_and_the_requests_own(private):
    # The private folder gains entries with every request (uploads, the
    # CSV, Gradio's copy of it, an empty file): prune keeps the newest `keep`.
    tmp_path = private
    for number in range(10):
        (tmp_path / f"f{number}").mkdir()
        (tmp_path / f"f{number}" / "upload.png").write_bytes(b"x")
        os.utime(tmp_path / f"f{number}", ns=(number * 10**9, number * 10**9))
    (tmp_path / "tmp_left_by_an_upload").write_bytes(b"")
    os.utime(tmp_path / "tmp_left_by_an_upload", ns=(5 * 10**9 + 1, 5 * 10**9 + 1))
    in_use = [str(tmp_path / "f1" / "upload.png")]  # old, but the request being answered uses it

    assert app.prune(str(tmp_path), keep=4, in_use=in_use) == 7

    assert sorted(os.listdir(tmp_path)) == ["f1", "f7", "f8", "f9"]
    assert app.prune(str(tmp_path), keep=4, in_use=in_use) == 0


def test_prune_deletes_nothing_outside_the_servers_own_private_folder(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "img.png").write_bytes(b"x")
    link = tmp_path / "image-classifier-app-link"
    link.symlink_to(dataset)
    for folder in (dataset, link):
        with pytest.raises(ValueError, match="only empties the server's own private folder"):
            app.prune(str(folder), keep=0)
    assert os.listdir(dataset) == ["img.png"]


# ---------------------------------------------------------------- refused at start



def test_refusals_at_start_are_one_line_and_exit_2(saved_model, tmp_path, capsys):
    import model_builder

    artifacts_dir = str(tmp_path / "artifacts")
    run = copy_run(str(saved_model["run"]), artifacts_dir)
    folder = os.path.join(artifacts.runs_folder(artifacts_dir), run)
    base = ["--artifacts_dir", artifacts_dir, "--port", str(free_ports()[0])]

    def refused(*argv):
        assert app.main([*base, *argv]) == 2
        return one_line_error(capsys)

    assert "no run 19990101-000000 in" in refused("--run", "19990101-000000")
    assert "give --model PATH or --run RUN_ID, not both" in refused("--run", run, "--model", "x.keras")
    assert "no model at" in refused("--model", str(tmp_path / "none.keras"))
    (tmp_path / "text.keras").write_text("not a model")
    (tmp_path / "class_index.json").write_text('{"0": "a"}')
    (tmp_path / "run_config.json").write_text("{}")
    assert "could not load the model" in refused("--model", str(tmp_path / "text.keras"))
    # Another model among these companions (the same shape): its hash is not theirs.
    other = model_builder.build_classifier(2, image_size=32, alpha=0.35, weights="none")
    artifacts.save_model(other, os.path.join(folder, artifacts.MODEL_FILE))
    assert "a model and companions of different runs" in refused("--run", run)
    os.remove(os.path.join(folder, artifacts.CLASS_INDEX_FILE))
    model = os.path.join(folder, artifacts.MODEL_FILE)
    assert f"no {artifacts.CLASS_INDEX_FILE} beside the model" in refused("--model", model)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert refused("--port", str(port)) == (
            f"error: cannot serve on 127.0.0.1:{port}: Address already in use (another server may be using "
            f"the port: pick another with --port). Received: host=127.0.0.1, port={port}"
        )


def test_host_0000_serves_and_warns_that_anyone_on_the_network_can_use_it(saved_model, monkeypatch, capsys):
    # serve() sets these for Gradio; set here first, monkeypatch puts them back.
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unset by this test")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "unset by this test")
    started = {}
    monkeypatch.setattr(app, "build_page",
                        lambda models, start, options, folder: started.setdefault("page", start))
    monkeypatch.setattr(app, "launch", lambda page, options, folder: started.update(host=options.host))
    monkeypatch.setattr(app, "wait_until_stopped", lambda page: None)
    monkeypatch.setattr(app, "warm_up", lambda served, folder: None)

    code = app.main(["--artifacts_dir", str(saved_model["artifacts"]), "--host", "0.0.0.0",
                     "--port", str(free_ports()[0])])

    out, err = capsys.readouterr()
    assert code == 0 and started == {"page": os.path.basename(saved_model["run"]), "host": "0.0.0.0"}
    assert err.strip().startswith("warning: --host 0.0.0.0 serves the page to every machine that can reach")
    assert "anyone on the network can upload images and use the model" in err
    assert "Open http://127.0.0.1:" in out


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def server(trained_run, saved_model, tmp_path_factory):
    """`python app.py` in a subprocess on a free port, serving copies of the
    trained run (published) and the untrained saved model's run, uploads
    limited to 1 MB, its temporary files in a folder of its own (TMPDIR).
    Stopped with SIGTERM at the end of the module. Keys: url, artifacts,
    trained, untrained (run ids), work, temp, output (lines printed)."""
    root = tmp_path_factory.mktemp("server")
    artifacts_dir = str(root / "artifacts")
    untrained = copy_run(str(saved_model["run"]), artifacts_dir)
    trained = copy_run(str(trained_run["run"]), artifacts_dir)
    artifacts.publish(artifacts_dir, os.path.join(artifacts.runs_folder(artifacts_dir), trained))
    (root / "work").mkdir()
    (root / "temp").mkdir()
    port = free_ports()[0]
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "app.py"), "--artifacts_dir", artifacts_dir, "--port", str(port),
         "--max_upload_mb", "1"],
        cwd=root / "work", env={**os.environ, "TMPDIR": str(root / "temp")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output = []
    reader = threading.Thread(target=lambda: output.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + SERVER_START_SECONDS
    while not any(line.startswith("Open http") for line in output):
        assert process.poll() is None and time.monotonic() < deadline, "".join(output)[-3000:]
        time.sleep(0.2)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "port": port, "artifacts": artifacts_dir, "trained": trained,
               "untrained": untrained, "work": root / "work", "temp": root / "temp", "output": output,
               "process": process}
    finally:
        process.terminate()
        process.wait(timeout=60)
        reader.join(timeout=10)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


def classify(client, paths, key):
    """(table rows with the header first, the CSV's path, the status line)."""
    from gradio_client import handle_file

    files = [handle_file(path) for path in paths]
    table, csv_path, status = client.predict(files=files, key=key, api_name="/classify")
    return [table["headers"], *table["data"]], csv_path, status


@pytest.mark.slow
def test_the_server_answers_each_bad_input_with_its_message_and_keeps_serving(server, client, trained_run,
                                                                            tmp_path):
    import httpx
    from gradio_client.exceptions import AppError

    good = os.path.join(trained_run["data"], "beta", "img_003.png")
    before = tree(server["artifacts"])
    for path, message in write_bad_files(tmp_path / "bad", good).items():
        with pytest.raises(AppError) as raised:
            classify(client, [path], server["trained"])
        assert str(raised.value).startswith(message)
        rows, _, _ = classify(client, [good], server["trained"])  # the next good one still works
        assert rows[1][1] in TRAINED_CLASSES
    with pytest.raises(AppError, match=f"^{app.EMPTY_SUBMIT}$"):
        classify(client, [], server["trained"])
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), np.uint8)).save(big)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1000000 bytes"):
        classify(client, [str(big)], server["trained"])  # the client knows the limit...
    with open(big, "rb") as handle:  # ...and the server refuses it whatever sends it
        response = httpx.post(f"{server['url']}gradio_api/upload",
                              files={"files": ("big.png", handle, "image/png")})
    assert response.status_code == 413 and "maximum allowed size of 1000000 bytes" in response.text

    rows, csv_path, status = classify(client, [good, os.path.join(trained_run["data"], "alpha", "img_001.png")],
                                      server["trained"])
    assert status == f"2 images classified by run {server['trained']}."
    assert read_csv(csv_path) == rows and rows[0][:3] == ["path", "predicted_class", "confidence"]
    assert [row[0] for row in rows[1:]] == ["img_003.png", "img_001.png"]
    assert tree(server["artifacts"]) == before and os.listdir(server["work"]) == []


@pytest.mark.slow
def test_switching_runs_answers_with_that_runs_classes_and_requests_queue(server, client, trained_run):
    good = os.path.join(trained_run["data"], "gamma", "img_002.png")
    rows, _, status = classify(client, [good], server["untrained"])
    assert rows[1][1] in ("cat", "dog") and rows[1][3] in ("cat", "dog")
    assert status == f"1 image classified by run {server['untrained']}."
    card = client.predict(key=server["untrained"], api_name="/choose")
    assert f"| run | {server['untrained']} |" in card and "| published | no |" in card
    # Three at once, two models: queued, each answered by its own model.
    from gradio_client import handle_file

    jobs = [client.submit(files=[handle_file(good)], key=key, api_name="/classify")
            for key in (server["trained"], server["untrained"], server["trained"])]
    classes = [job.result(timeout=120)[0]["data"][0][1] for job in jobs]
    assert classes[0] in TRAINED_CLASSES and classes[2] == classes[0] and classes[1] == rows[1][1]


def browser():
    """Playwright's sync API, or a skip saying what is missing."""
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no playwright (pip install playwright; its own browser download is not needed)")
    return sync_playwright


@pytest.mark.slow
def test_the_page_in_a_real_browser_answers_a_dropped_image_offline(server, served, trained_run, tmp_path):
    sync_playwright = browser()
    photo = os.path.join(trained_run["data"], "alpha", "img_004.png")
    outside = []

    def only_this_server(route):
        # The network is cut: anything not from the server itself fails
        # (and is recorded), as it would on a machine without internet.
        if route.request.url.startswith(server["url"]) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1200, "height": 900})
            page.route("**/*", only_this_server)
            page.goto(server["url"])
            page.set_input_files("#images input[type=file]", [photo])
            page.wait_for_selector(".answer-label h2", timeout=60_000)
            page.wait_for_selector("#table", state="visible", timeout=30_000)
            predicted = page.inner_text(".answer-label h2").strip()
            trust = page.inner_text(".trust")
            status = page.inner_text("#status")
            card = page.inner_text("#card")
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            chromium.close()

    expected = app.answer_files(served, [photo], top_k=3).answers[0]
    assert predicted == expected.top[0][0] and trust.strip() == expected.trust
    assert status.strip() == f"1 image classified by run {server['trained']}."
    assert server["trained"] in card and "published" in card
    assert outside == []  # no font, script or beacon from the internet
    assert Image.open(shot).size[0] == 1200
    if os.environ.get("APP_SCREENSHOT"):  # refreshing the README's screenshot
        shutil.copy(shot, os.environ["APP_SCREENSHOT"])


@pytest.mark.slow
def test_one_bad_file_is_one_message_on_the_page_and_leaves_the_drop_box(server, tmp_path):
    sync_playwright = browser()
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server["url"], wait_until="load")
            page.wait_for_selector("#model", timeout=60_000)
            page.set_input_files("#images input[type=file]", [str(bad)])
            page.wait_for_selector(".toast-body", timeout=60_000)
            page.wait_for_function("!document.querySelector('#images').innerText.includes('notes.png')",
                                   timeout=30_000)
            messages = page.locator(".toast-body").all_inner_texts()
        finally:
            chromium.close()
    assert len(messages) == 1 and messages[0].count("notes.png: not an image") == 1, messages
