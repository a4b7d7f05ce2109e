"""Bad input through the scripts as a user runs them: one line on stderr,
exit code 2, no traceback, and nothing of the user's changed; odd files
(FIFOs, non-UTF-8 names, huge non-images) skipped with a reason, never a
hang or a crash."""

import contextlib
import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest

import artifacts
import audit
import evaluate
import main as main_script
import predict
import inference
import inspect_dataset
from conftest import ROOT, TINY, make_flat_dataset, one_line_error, read_json, write_class_folder

SCRIPTS = {"main": main_script, "inspect_dataset": inspect_dataset, "evaluate": evaluate, "predict": predict}


def snapshot(root):
    """Every entry under `root` (links not followed): its kind and content
    hash or link target, to show that nothing of the user's changed."""
    state = {}
    for current, folders, files in os.walk(os.fsencode(root)):
        for name in folders + files:
            path = os.path.join(current, name)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[path] = ("folder", os.stat(path).st_mtime_ns)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    state[path] = ("file", hashlib.sha256(handle.read()).hexdigest())
            else:
                state[path] = ("special", os.stat(path).st_mode)
    return state


@contextlib.contextmanager
def no_hang(fifos, seconds=60):
    """Fails the test instead of hanging forever on a FIFO being read: when
    time is up, each FIFO is opened for writing and closed, which gives its
    readers (in any thread) an end of file, then the test fails."""

    def expire(signum, frame):
        for fifo in fifos:
            with contextlib.suppress(OSError):  # no reader waiting
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"still running after {seconds}s: a FIFO was read")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def data(tmp_path, workdir):
    """A small flat dataset (cat, dog), run from an empty working folder."""
    return make_flat_dataset(tmp_path / "data", per_class=5)


# ---------------------------------------------------------------- options


FLOAT_OPTIONS = [
    "--rotation", "--zoom", "--translation", "--contrast", "--learning_rate",
    "--alpha", "--dropout", "--val_split", "--test_split",
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("option", FLOAT_OPTIONS)
def test_non_finite_numbers_are_one_line_and_exit_2(data, capsys, option, value):
    before = snapshot(data)

    assert main_script.main(["--image_dir", data, f"{option}={value}", *TINY]) == 2

    error = one_line_error(capsys)
    assert f"{option[2:]} must be a finite number. Received: {option[2:]}={value}" in error
    assert snapshot(data) == before and not os.listdir(".")


@pytest.mark.parametrize("option", ["--val_split", "--test_split"])
def test_non_finite_splits_in_the_inspection_cli(data, capsys, option):
    assert inspect_dataset.main(["--image_dir", data, option, "nan"]) == 2
    assert "must be a finite number" in one_line_error(capsys)


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_seed_outside_32_bits_is_one_line_and_exit_2(data, capsys, script, seed):
    assert SCRIPTS[script].main(["--image_dir", data, "--seed", seed]) == 2
    error = one_line_error(capsys)
    assert f"seed must be between 0 and 4294967295. Received: seed={seed}" in error


def test_seed_limits_that_are_fine(data, capsys):
    for seed in ("0", str(2**32 - 1)):
        assert inspect_dataset.main(["--image_dir", data, "--seed", seed, "--json"]) == 0
    capsys.readouterr()


def test_a_number_that_is_no_number_is_one_line_too(data, capsys):
    assert main_script.main(["--image_dir", data, "--epochs", "ten"]) == 2
    assert "epochs must be an integer. Received: epochs=ten" in one_line_error(capsys)
    assert main_script.main(["--image_dir", data, "--zoom", "a lot"]) == 2
    assert "zoom must be a number. Received: zoom=a lot" in one_line_error(capsys)


# ---------------------------------------------------------------- output folders


@pytest.mark.parametrize("name", ["--results_dir", "--artifacts_dir"])
def test_an_output_folder_holding_the_dataset_is_refused(tmp_path, workdir, capsys, name):
    # A dataset named like a results category: results/metrics/<stamp>/
    # would have become a new class folder in it.
    data = make_flat_dataset(tmp_path / "results" / "metrics", per_class=5)
    before = snapshot(tmp_path / "results")

    for output in (tmp_path / "results", tmp_path, data):
        assert main_script.main(["--image_dir", data, name, str(output), *TINY]) == 2
        error = one_line_error(capsys)
        assert f"Received: {name[2:]}={output}" in error
        assert ("must not hold image_dir" if output != data else "must be outside image_dir") in error
    assert snapshot(tmp_path / "results") == before


def test_predict_and_the_inspection_cli_refuse_a_parent_output_too(tmp_path, workdir, capsys):
    data = make_flat_dataset(tmp_path / "work" / "shots", per_class=3)
    before = snapshot(data)
    assert predict.main(["--image_dir", data, "--results_dir", str(tmp_path)]) == 2
    assert "results_dir must not hold image_dir" in one_line_error(capsys)
    assert predict.main(["--images", data, "--results_dir", "."]) == 2
    assert "results_dir must not hold image_dir" in one_line_error(capsys)
    assert inspect_dataset.main(["--image_dir", data, "--artifacts_dir", "."]) == 2
    assert "artifacts_dir must not hold image_dir" in one_line_error(capsys)
    assert snapshot(data) == before


@pytest.mark.parametrize("script", ["main", "inspect_dataset"])
@pytest.mark.parametrize("under", [False, True])
def test_artifacts_dir_that_is_a_file_is_one_line(data, tmp_path, capsys, script, under):
    existing = tmp_path / "notes.txt"
    existing.write_text("my notes")
    path = existing / "sub" if under else existing

    assert SCRIPTS[script].main(["--image_dir", data, "--artifacts_dir", str(path), *(
        TINY if script == "main" else [])]) == 2

    error = one_line_error(capsys)
    assert "artifacts_dir must be a folder" in error and f"Received: artifacts_dir={path}" in error
    assert existing.read_text() == "my notes"


# ---------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_umask_mode_not_0600(data, tmp_path, capsys, umask, mode):
    previous = os.umask(umask)
    try:
        assert inspect_dataset.main(["--image_dir", data, "--artifacts_dir", str(tmp_path / "art")]) == 0
        (cache,) = (tmp_path / "art" / "audit_cache").iterdir()
        written = artifacts.write_json(str(tmp_path / "out" / "x.json"), {"a": 1})
    finally:
        os.umask(previous)
    assert os.stat(cache).st_mode & 0o777 == mode
    assert os.stat(written).st_mode & 0o777 == mode
    capsys.readouterr()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750), (0o002, 0o775)])
def test_a_written_folder_gets_the_umask_mode_not_0700(tmp_path, umask, mode):
    """A SavedModel export is written as a folder (atomic_write_folder):
    it follows the umask as the files do."""
    previous = os.umask(umask)
    try:
        folder = artifacts.atomic_write_folder(str(tmp_path / "saved_model"), lambda temp: os.mkdir(f"{temp}/variables"))
    finally:
        os.umask(previous)
    assert os.stat(folder).st_mode & 0o777 == mode
    assert os.listdir(tmp_path) == ["saved_model"]


def test_stale_temp_files_of_ours_are_removed_and_nothing_else(data, tmp_path, capsys):
    folder = tmp_path / "art" / "audit_cache"
    folder.mkdir(parents=True)
    hour_ago = time.time() - 3600
    names = {
        ".0123abcd.q1w2e3r4.tmp.json": True,  # ours, an hour old: a killed save
        ".best_model.ab_cd_12.tmp.keras": True,
        ".history.zzzzzzzz.tmp": True,
        ".fresh.a1b2c3d4.tmp.json": False,  # ours but recent: maybe being written
        ".notes.tmp.json": False,  # not our pattern
        "keep.a1b2c3d4.tmp.json": False,  # not hidden: not ours
        ".mine.A1B2C3D4.tmp.json": False,  # capitals: not ours
    }
    for name in names:
        (folder / name).write_text("x")
        if name != ".fresh.a1b2c3d4.tmp.json":
            os.utime(folder / name, (hour_ago, hour_ago))
    target = tmp_path / "elsewhere.txt"
    target.write_text("a user's file")
    os.symlink(target, folder / ".link.a1b2c3d4.tmp.json")  # a link, even named as ours
    os.utime(folder / ".link.a1b2c3d4.tmp.json", (hour_ago, hour_ago), follow_symlinks=False)

    assert inspect_dataset.main(["--image_dir", data, "--artifacts_dir", str(tmp_path / "art")]) == 0

    left = set(os.listdir(folder))
    assert {name for name, removed in names.items() if removed}.isdisjoint(left)
    assert {name for name, removed in names.items() if not removed} <= left
    assert ".link.a1b2c3d4.tmp.json" in left and target.read_text() == "a user's file"
    assert left - set(names) - {".link.a1b2c3d4.tmp.json"} == {
        os.path.basename(audit.audit_cache_path(str(folder), data))
    }  # the cache written, and no temporary file of its own left
    capsys.readouterr()


KILLED_WRITER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import artifacts

def write(temp_path):
    with open(temp_path, "w") as handle:
        handle.write("half")
    print("writing", flush=True)
    time.sleep(600)

artifacts.atomic_write(sys.argv[2], write)
"""


@pytest.mark.slow
def test_a_save_killed_midway_leaves_a_temp_file_that_a_later_write_removes(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, ROOT, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "writing\n"
    process.kill()
    process.wait()
    (temp,) = os.listdir(target.parent)
    assert re.fullmatch(r"\.metrics\.[a-z0-9_]{8}\.tmp\.json", temp) and not target.exists()

    artifacts.write_json(str(target.parent / "other.json"), {})
    assert temp in os.listdir(target.parent)  # too recent: it might still be written
    old = time.time() - artifacts.STALE_TEMP_SECONDS - 60
    os.utime(target.parent / temp, (old, old))
    artifacts.write_json(str(target.parent / "other.json"), {})
    assert sorted(os.listdir(target.parent)) == ["other.json"]


# ---------------------------------------------------------------- dataset folders


def test_a_loop_of_links_in_the_dataset_root_is_no_traceback(data, tmp_path, capsys):
    os.symlink("loop_b", os.path.join(data, "loop_a"))
    os.symlink("loop_a", os.path.join(data, "loop_b"))
    os.symlink(os.path.join(data, "self"), os.path.join(data, "self"))
    os.symlink("../loop_a", os.path.join(data, "cat", "photo.jpg"))
    before = snapshot(data)

    assert inspect_dataset.main(["--image_dir", data, "--json", "--artifacts_dir", str(tmp_path / "a")]) == 0

    summary = read_json_text(capsys.readouterr().out)
    assert summary["classes"] == ["cat", "dog"]
    assert summary["skipped"] == [
        {"path": "cat/photo.jpg", "reason": "cannot read the file: Too many levels of symbolic links"}
    ]
    assert snapshot(data) == before


def read_json_text(text):
    import json

    return json.loads(text)


def test_an_unreadable_dataset_root_is_one_line(data, capsys, monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.realpath(path) == os.path.realpath(data):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    for script in (main_script, inspect_dataset):
        assert script.main(["--image_dir", data, *(TINY if script is main_script else [])]) == 2
        error = one_line_error(capsys)
        assert f"cannot read {data}: Permission denied. Received: image_dir={data}" in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_an_unreadable_dataset_root_really_chmod_000(data, capsys):
    os.chmod(data, 0)
    try:
        assert inspect_dataset.main(["--image_dir", data]) == 2
    finally:
        os.chmod(data, 0o755)
    assert "Permission denied" in one_line_error(capsys)


def test_an_unreadable_class_subfolder_is_reported_not_silently_skipped(tmp_path, capsys, monkeypatch):
    data = make_flat_dataset(tmp_path / "data", classes=("cat", "dog", "owl"), per_class=6)
    write_class_folder(os.path.join(data, "dog", "locked"), 1, 4, start=40)
    locked = {os.path.realpath(os.path.join(data, "dog", "locked")), os.path.realpath(os.path.join(data, "owl"))}
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.realpath(path) in locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert inspect_dataset.main(["--image_dir", data, "--artifacts_dir", str(tmp_path / "a")]) == 0

    out = capsys.readouterr().out
    assert (
        "warning: 2 folder(s) could not be read, their images are left out: "
        "dog/locked/ (Permission denied), owl/ (Permission denied)" in out
    )
    assert "class 'owl' has no usable images" in out


def test_a_labels_csv_cell_over_128_kib_is_one_line(data, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    # An unclosed quote: the rest of the file becomes one cell.
    labels.write_text('filename,label\ncat/img_000.png,"cat\n' + "dog/img_000.png,dog\n" * 8000)

    for script in (inspect_dataset, main_script):
        assert script.main(["--image_dir", data, "--labels_csv", str(labels),
                            *(TINY if script is main_script else [])]) == 2
        error = one_line_error(capsys)
        assert "labels_csv line" in error and "field larger than field limit" in error
        assert "unclosed" in error and f"Received: labels_csv={labels}" in error


# ---------------------------------------------------------------- odd files


def test_a_fifo_with_an_image_name_never_hangs_the_audit(data, tmp_path, capsys):
    fifo = os.path.join(data, "cat", "pipe.jpg")
    os.mkfifo(fifo)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "filename,label\n" + "".join(f"{name}/img_{i:03d}.png,{name}\n" for name in ("cat", "dog") for i in range(5))
        + "cat/pipe.jpg,cat\n"
    )
    before = snapshot(data)

    with no_hang([fifo]):
        assert inspect_dataset.main(["--image_dir", data, "--json", "--artifacts_dir", str(tmp_path / "a")]) == 0
        summary = read_json_text(capsys.readouterr().out)
        assert inspect_dataset.main(["--image_dir", data, "--labels_csv", str(labels), "--json",
                                 "--artifacts_dir", str(tmp_path / "a")]) == 0
        from_csv = read_json_text(capsys.readouterr().out)
        check = audit.check_file(data, "cat/pipe.jpg")

    assert summary["ignored"] == 1 and summary["skipped"] == []
    assert sum(summary["splits"][split]["cat"] for split in summary["splits"]) == 5
    assert from_csv["skipped"][0]["path"] == "cat/pipe.jpg"
    assert from_csv["skipped"][0]["reason"].startswith("not a regular file")
    assert not check.usable and check.reason == "not a regular file (a FIFO): only regular files are read"
    assert snapshot(data) == before


def sparse_file(path, head, size):
    """A file of `size` bytes beginning with `head`, sparse: it takes no disk."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


VIDEO_HEAD = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(64)


@pytest.mark.parametrize(
    "name, head, reason",
    [
        ("movie.jpg", VIDEO_HEAD, "not an image: unrecognised content"),
        ("notes.png", b"dear diary " * 50, "not an image: text file"),
    ],
)
def test_a_huge_file_is_refused_from_its_header_without_reading_it(tmp_path, name, head, reason):
    sparse_file(tmp_path / name, head, 3 * 2**30)

    tracemalloc.start()
    try:
        check = audit.check_file(str(tmp_path), name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert not check.usable and check.reason == reason
    assert peak < 16 * 2**20  # a 3 GiB file, never read whole


def test_a_decompression_bomb_with_a_huge_body_is_refused_from_its_header(tmp_path):
    from test_audit import png_bytes

    header = png_bytes(30000, 30000, 8, 0, [b"\x00" * 10])
    sparse_file(tmp_path / "bomb.png", header, 2 * 2**30)
    tracemalloc.start()
    try:
        check = audit.check_file(str(tmp_path), "bomb.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.reason.startswith("too large: 900,000,000 pixels") and peak < 16 * 2**20


MEASURE_RSS = """
import re, runpy, sys
sys.argv = ["inspect_dataset.py", *sys.argv[1:]]
sys.path.insert(0, ".")
try:
    runpy.run_path("inspect_dataset.py", run_name="__main__")
except SystemExit as exit:
    code = exit.code
# VmHWM is the peak of this program's own memory: ru_maxrss would also
# count the parent (pytest, grown by earlier tests) copied at fork time.
with open("/proc/self/status") as status:
    peak = re.search(r"VmHWM:\s*(\d+) kB", status.read()).group(1)
print("peak_kib", peak, "code", code, file=sys.stderr)
"""


@pytest.mark.slow
def test_the_inspection_cli_on_a_3_gib_non_image_stays_small(tmp_path):
    data = make_flat_dataset(tmp_path / "data", per_class=5)
    sparse_file(os.path.join(data, "cat", "clip.jpg"), VIDEO_HEAD, 3 * 2**30)

    result = subprocess.run(
        [sys.executable, "-c", MEASURE_RSS, "--image_dir", data, "--artifacts_dir", str(tmp_path / "a")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )

    assert "cat/clip.jpg: not an image: unrecognised content" in result.stdout
    rss = int(re.search(r"peak_kib (\d+) code 0", result.stderr).group(1)) * 1024
    # Reading the file whole takes over 3 GiB (3.64 GiB measured before the
    # header came first); TensorFlow alone takes 0.6-1.2 GiB.
    assert rss < 2 * 2**30, f"peak memory {rss / 2**30:.2f} GiB"


def test_predict_and_evaluate_list_fifos_and_non_utf8_names_as_skipped(tmp_path):
    folder = tmp_path / "photos"
    write_class_folder(folder / "cat", 0, 2)
    os.mkfifo(folder / "cat" / "pipe.jpg")
    bad_name = os.fsencode(folder / "cat") + b"/caf\xe9.png"
    with open(bad_name, "wb") as handle, open(folder / "cat" / "img_000.png", "rb") as good:
        handle.write(good.read())

    with no_hang([folder / "cat" / "pipe.jpg"]):
        paths, skipped = predict.collect_images([str(folder), str(folder / "cat" / "pipe.jpg"), "nowhere.png"])
        evaluated, labels, evaluate_skipped = inference.folder_images(str(folder), ("cat", "dog"))

    assert sorted(os.path.relpath(path, folder) for path in paths) == ["cat/img_000.png", "cat/img_001.png"]
    reasons = {item.path: item.reason for item in skipped}
    assert len(skipped) == 4  # the FIFO found in the folder and given by name
    assert reasons == {
        f"{folder}/cat/pipe.jpg": "not a regular file",
        "nowhere.png": "no such file or folder",
        f"{folder}/cat/caf\ufffd.png": audit.NOT_UTF8,
    }
    assert [os.path.relpath(path, folder) for path in evaluated] == ["cat/img_000.png", "cat/img_001.png"]
    assert [(item.path, item.reason) for item in evaluate_skipped] == [("cat/caf\ufffd.png", audit.NOT_UTF8)]


def test_predict_says_a_symlink_loop_or_a_dangling_link_is_one_and_not_missing(tmp_path):
    os.symlink(tmp_path / "loop_b.png", tmp_path / "loop_a.png")
    os.symlink(tmp_path / "loop_a.png", tmp_path / "loop_b.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")

    _, skipped = predict.collect_images([str(tmp_path / "loop_a.png"), str(tmp_path / "dangling.png"),
                                         str(tmp_path / "nowhere.png")])

    reasons = {os.path.basename(item.path): item.reason for item in skipped}
    assert reasons == {
        "loop_a.png": "a symbolic link loop: it leads back to itself, never to a file",
        "dangling.png": f"a broken symbolic link: its target {tmp_path / 'gone.png'} does not exist",
        "nowhere.png": "no such file or folder",
    }


def test_predict_says_an_image_over_the_pixel_limit_is_too_large_and_names_the_limit(tmp_path, monkeypatch):
    from PIL import Image

    (path,) = write_class_folder(tmp_path / "photos", 0, 1, size=48)
    # 48 x 48 = 2,304 pixels: over 2,000, under twice it (Pillow's own error).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert predict.unreadable_reason(path) == (
        "too large: 48x48 = 2,304 pixels, over Pillow's decompression-bomb limit of 2,000 (not decoded)"
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert predict.unreadable_reason(path).startswith("too large: 2,304 pixels, over Pillow's decompression-bomb "
                                                      "limit of 1,000")


# ---------------------------------------------------------------- with a trained model


@pytest.fixture(scope="module")
def trained(saved_model):
    """A model with its companions on cat/dog (conftest.saved_model: no
    training needed to read odd files)."""
    return {**saved_model, "artifacts": str(saved_model["artifacts"])}


def odd_folder(root):
    """A labelled folder the model never saw, with a non-UTF-8 file name
    and a FIFO named like an image."""
    folder = root / "new_photos"
    write_class_folder(folder / "cat", 0, 3, start=200)
    write_class_folder(folder / "dog", 1, 3, start=200)
    with open(os.fsencode(folder / "dog") + b"/ni\xf1o.png", "wb") as handle, open(
        folder / "dog" / "img_200.png", "rb"
    ) as good:
        handle.write(good.read())
    os.mkfifo(folder / "cat" / "pipe.jpg")
    return folder


@pytest.mark.slow
def test_predict_images_skips_non_utf8_names_and_fifos(trained, tmp_path, capsys):
    folder = odd_folder(tmp_path)
    before = snapshot(folder)

    with no_hang([folder / "cat" / "pipe.jpg"], 300):
        code = predict.main([
            "--images", str(folder), "--artifacts_dir", trained["artifacts"],
            "--results_dir", str(tmp_path / "results"), "--show", "0",
        ])

    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 2 file(s)" in out and "ni\ufffdo.png (file name is not valid UTF-8" in out
    assert "pipe.jpg (not a regular file)" in out
    (stamp,) = os.listdir(tmp_path / "results" / "predictions")
    with open(tmp_path / "results" / "predictions" / stamp / "predictions.csv", encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) == 1 + 6
    with open(tmp_path / "results" / "predictions" / stamp / "skipped.csv", encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) == 1 + 2
    assert snapshot(folder) == before


@pytest.mark.slow
def test_predict_counts_a_fifo_as_found_and_skipped(trained, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for number in range(3):
        (folder / f"bad_{number}.png").write_bytes(b"not an image")
    os.mkfifo(folder / "pipe.png")

    with no_hang([folder / "pipe.png"], 300):
        code = predict.main(["--images", str(folder), "--artifacts_dir", trained["artifacts"],
                             "--results_dir", str(tmp_path / "results"), "--show", "0"])

    assert code == 2
    assert "no readable images among --images (4 image file(s) found, 4 skipped)" in one_line_error(capsys)


@pytest.mark.slow
def test_evaluate_on_another_folder_skips_non_utf8_names_and_fifos(trained, tmp_path, capsys):
    folder = odd_folder(tmp_path)
    before = snapshot(folder)

    with no_hang([folder / "cat" / "pipe.jpg"], 300):
        code = evaluate.main([
            "--image_dir", str(folder), "--artifacts_dir", trained["artifacts"],
            "--results_dir", str(tmp_path / "results"), "--show", "0",
        ])

    out = capsys.readouterr().out
    assert code == 0
    assert "dog/ni\ufffdo.png (file name is not valid UTF-8" in out
    (stamp,) = os.listdir(tmp_path / "results" / "metrics")
    metrics = read_json(tmp_path / "results" / "metrics" / stamp / "metrics.json")
    assert metrics["num_samples"] == 6 and metrics["evaluated"] == "all images"
    assert metrics["skipped"] == [f"dog/ni\ufffdo.png ({audit.NOT_UTF8})"]
    assert snapshot(folder) == before


def test_escape_codes_in_file_and_class_names_print_as_text(tmp_path, capsys):
    # A file named ESC[2J... would clear the user's screen if printed raw;
    # a class name could recolour or rewrite the lines after it.
    data = make_flat_dataset(tmp_path / "data", classes=("cat\x1b[31m", "dog"), per_class=8)
    (tmp_path / "data" / "dog" / "\x1b[2Jclear.png").write_bytes(b"not an image")
    (tmp_path / "data" / "dog" / "img_001.png").rename(tmp_path / "data" / "dog" / "bell\x07.png")

    assert inspect_dataset.main(["--image_dir", data, "--artifacts_dir", str(tmp_path / "art")]) == 0

    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, out
    assert r"dog/\x1b[2Jclear.png: not an image" in out and r"cat\x1b[31m" in out


FORMULA_CLASS = "=cmd|' -C calc'!A0"


@pytest.mark.slow
def test_a_formula_class_name_is_guarded_in_every_csv_and_round_trips_through_evaluate(tmp_path, workdir, capsys):
    # split_manifest.csv is read back by evaluate.py (and --resume): the
    # guarded class name must come back exactly, or the manifest's classes
    # would no longer match the folder's.
    data = make_flat_dataset(tmp_path / "data", classes=(FORMULA_CLASS, "@dog"), per_class=10)
    assert main_script.main(["--image_dir", data, *TINY, "--epochs", "1", "--fine_tune_epochs", "0"]) == 0
    assert evaluate.main(["--image_dir", data, "--show", "0"]) == 0
    assert predict.main(["--images", os.path.join(data, "@dog"), "--show", "0"]) == 0
    capsys.readouterr()

    manifest = artifacts.read_manifest("model_artifacts")
    assert {row.label for row in manifest} == {FORMULA_CLASS, "@dog"}
    (predictions,) = [os.path.join(folder, name) for folder, _, names in os.walk("results")
                      for name in names if name == "predictions.csv"]
    for path in (os.path.join("model_artifacts", artifacts.SPLIT_MANIFEST_FILE), predictions):
        with open(path, newline="", encoding="utf-8") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
        assert not [cell for cell in cells if cell[:1] in ("=", "+", "@", "\t", "\r")], (path, cells)
