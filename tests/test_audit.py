"""The audit of messy folders: what is skipped and why, odd formats read
right, duplicates and leakage, the CSV labels, the inspection CLI, and a full
main.py run that leaves every file of the dataset untouched."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import audit
import data_loader
import image_io
import errors
import inspect_dataset
import splits
from conftest import TINY, class_image, png_bytes, write_class_folder

# ---------------------------------------------------------------- the messy folder

RED, BLUE = (220, 30, 30), (30, 30, 220)
# A full main.py run, as small as it gets.


def left_red_right_blue(width, height):
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = RED
    pixels[:, width // 2 :] = BLUE
    return pixels


def gradient(size=32):
    """Smooth colours, so JPEG round trips stay close to the original."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return (np.stack([x, y, 1 - x], axis=2) * 200 + 30).astype(np.uint8)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def write_odd_images(folder):
    """Every odd-but-usable kind of file; returns {name: expected HxWx3
    uint8 image at full size} for the ones whose pixels are checked."""
    expected = {}
    rgb = gradient()
    Image.fromarray(rgb).convert("CMYK").save(os.path.join(folder, "cmyk.jpg"), quality=95)
    expected["cmyk.jpg"] = rgb
    write(os.path.join(folder, "white16.png"), png_bytes(8, 8, 16, 0, [b"\xff\xff" * 8] * 8))
    expected["white16.png"] = np.full((8, 8, 3), 255, np.uint8)
    half = np.full((8, 8), 32768, np.uint16)
    Image.fromarray(half).save(os.path.join(folder, "half16.tif"))
    expected["half16.tif"] = np.full((8, 8, 3), 128, np.uint8)
    white = np.full((8, 8), 65535, np.uint16)
    Image.fromarray(white).save(os.path.join(folder, "white16.tif"))
    expected["white16.tif"] = np.full((8, 8, 3), 255, np.uint8)
    rgb16 = np.zeros((8, 8, 3), ">u2")
    rgb16[..., 0] = 65535
    write(
        os.path.join(folder, "red16.png"), png_bytes(8, 8, 16, 2, [row.tobytes() for row in rgb16])
    )
    expected["red16.png"] = np.stack(
        [np.full((8, 8), 255), np.zeros((8, 8)), np.zeros((8, 8))], 2
    ).astype(np.uint8)
    Image.fromarray(rgb).convert("L").save(os.path.join(folder, "gray.png"))
    expected["gray.png"] = np.repeat(
        np.asarray(Image.fromarray(rgb).convert("L"))[:, :, None], 3, axis=2
    )
    # Left half opaque red, right half fully transparent: white there.
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :4, 3] = 255
    Image.fromarray(rgba).save(os.path.join(folder, "rgba.png"))
    on_white = np.full((8, 8, 3), 255, np.uint8)
    on_white[:, :4] = (255, 0, 0)
    expected["rgba.png"] = on_white
    la = np.zeros((8, 8, 2), np.uint8)
    la[:, :4, 1] = 255  # left half opaque black
    Image.fromarray(la, mode="LA").save(os.path.join(folder, "la.png"))
    expected["la.png"] = (
        np.where(np.arange(8)[None, :, None] < 4, 0, 255).repeat(8, 0).repeat(3, 2).astype(np.uint8)
    )
    two = Image.fromarray(left_red_right_blue(8, 8)).quantize(colors=2)
    two.save(os.path.join(folder, "palette.gif"))
    two.save(os.path.join(folder, "palette8.bmp"))  # TensorFlow decodes these black
    expected["palette.gif"] = expected["palette8.bmp"] = np.asarray(two.convert("RGB"))
    transparent = two.copy()
    transparent.save(os.path.join(folder, "palette_transparent.png"), transparency=1)
    expected["palette_transparent.png"] = np.where(
        np.asarray(two)[:, :, None] == 1, 255, np.asarray(two.convert("RGB"))
    )
    Image.fromarray(rgb).save(os.path.join(folder, "rgb24.bmp"))
    expected["rgb24.bmp"] = rgb
    Image.fromarray(rgb).save(os.path.join(folder, "lossless.webp"), lossless=True)
    expected["lossless.webp"] = rgb
    Image.fromarray(rgb).save(os.path.join(folder, "rgb.tiff"))
    expected["rgb.tiff"] = rgb
    # Stored turned 90 degrees counter-clockwise, with EXIF orientation 6
    # ("rotate 90 clockwise to display"): upright it is red left, blue right.
    upright = left_red_right_blue(48, 32)
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        os.path.join(folder, "rotated.jpg"), exif=exif.tobytes(), quality=95
    )
    expected["rotated.jpg"] = upright
    class_image(0, 900).save(os.path.join(folder, "UPPER.JPG"), format="JPEG")
    class_image(0, 901).save(os.path.join(folder, "café_ü.png"))
    class_image(0, 902).save(os.path.join(folder, "a png named jpg.jpg"), format="PNG")
    os.makedirs(os.path.join(folder, "nested", "deeper"))
    class_image(0, 903).save(os.path.join(folder, "nested", "deeper", "inner.png"))
    return expected


def write_bad_files(folder):
    """Every kind of file the audit must skip: {name: reason prefix}."""
    write(os.path.join(folder, "empty.jpg"), b"")
    write(os.path.join(folder, "notes.jpg"), b"shopping list: milk, eggs\n")
    write(
        os.path.join(folder, "download.png"), b"<!DOCTYPE html><html><body>Not Found</body></html>"
    )
    buffer = io.BytesIO()
    Image.fromarray(gradient(64)).save(buffer, format="JPEG", quality=95)
    write(os.path.join(folder, "truncated.jpg"), buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    class_image(0, 950, size=64).save(buffer, format="PNG")
    write(os.path.join(folder, "truncated.png"), buffer.getvalue()[: len(buffer.getvalue()) // 2])
    write(
        os.path.join(folder, "iphone.heic"),
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200),
    )
    # A 20000 x 20000 header with (bogus) data: refused from the header,
    # so the reason is its size, not the broken data behind it.
    write(os.path.join(folder, "bomb.png"), png_bytes(20000, 20000, 8, 0, [b"\x00" * 10]))
    write(os.path.join(folder, "bomb_small.png"), png_bytes(10000, 10000, 8, 0, [b"\x00" * 10]))
    write(
        os.fsencode(os.path.join(folder, "")) + b"latin1_caf\xe9.png",
        png_bytes(1, 1, 8, 0, [b"\x00"]),
    )
    return {
        "empty.jpg": "empty file (0 bytes)",
        "notes.jpg": "not an image: text file",
        "download.png": "not an image: HTML page",
        "truncated.jpg": "truncated or corrupt JPEG",
        "truncated.png": "truncated or corrupt PNG",
        "iphone.heic": "unreadable format: HEIF",
        "bomb.png": "too large: 400,000,000 pixels",
        "bomb_small.png": "too large: 10000x10000 = 100,000,000 pixels",
        "latin1_caf\ufffd.png": "file name is not valid UTF-8",
    }


def write_ignored_files(folder):
    """Hidden files and folders, OS junk, other extensions: how many."""
    class_image(0, 960).save(os.path.join(folder, ".hidden.png"))
    os.makedirs(os.path.join(folder, ".thumbnails"))
    class_image(0, 961).save(os.path.join(folder, ".thumbnails", "t.png"))
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "readme.txt", "labels.xlsx"):
        write(os.path.join(folder, name), b"junk")
    return 7


def make_messy_dataset(root):
    """root/cat (good, odd and bad files), root/dog (good), an empty class,
    __MACOSX junk, a loose image and a link loop. Returns a description."""
    cat, dog = os.path.join(root, "cat"), os.path.join(root, "dog")
    write_class_folder(cat, 0, 10)
    write_class_folder(dog, 1, 12)
    expected = write_odd_images(cat)
    bad = write_bad_files(cat)
    ignored = write_ignored_files(cat)
    os.makedirs(os.path.join(root, "empty_class"))
    write(os.path.join(root, "empty_class", ".DS_Store"), b"junk")
    os.makedirs(os.path.join(root, "__MACOSX", "cat"))
    write(os.path.join(root, "__MACOSX", "cat", "._img_000.png"), b"apple double")
    class_image(1, 970).save(os.path.join(root, "loose.png"))
    os.symlink(cat, os.path.join(cat, "loop"))  # a link back up: walked once
    usable = 10 + len(expected) + 4 + 12  # good cat, odd, 4 plain odd-named, dog
    return {
        "root": str(root),
        "expected": expected,
        "skipped": {f"cat/{name}": reason for name, reason in bad.items()},
        "usable": usable,
        # cat's 7, empty_class/.DS_Store, __MACOSX/, loose.png
        "ignored": ignored + 3,
    }


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_dataset(tmp_path_factory.mktemp("messy") / "photos")


def index_of(root, **options):
    return splits.index_dataset(root, 0.15, 0.15, 42, **options)


# ---------------------------------------------------------------- the audit


def test_audit_skips_exactly_the_bad_files_with_their_reasons(messy):
    index = index_of(messy["root"])
    skipped = {item.path: item.reason for item in index.skipped}
    assert set(skipped) == set(messy["skipped"])
    for path, prefix in messy["skipped"].items():
        assert skipped[path].startswith(prefix), (path, skipped[path])
    assert len(index.samples) == messy["usable"]
    assert index.ignored == messy["ignored"]
    assert index.layout == "flat" and index.class_names == ("cat", "dog")
    paths = {sample.path for sample in index.samples}
    assert "cat/nested/deeper/inner.png" in paths and "cat/café_ü.png" in paths
    assert not any("/loop/" in path for path in paths)  # the link loop, walked once
    assert len(paths) == len(index.samples)
    warnings = "\n".join(index.warnings)
    assert "class 'empty_class' has no usable images" in warnings and "excluded" in warnings
    assert "loose.png" in warnings
    ignored = index.audit["ignored_files"]
    assert ignored["hidden"]["count"] == 2 and ignored["OS junk"]["count"] == 5
    assert ignored["not an image extension"]["count"] == 2
    assert ignored["outside any class folder"]["examples"] == ["loose.png"]


def test_odd_files_are_decoded_right(messy):
    index = index_of(messy["root"])
    decoders = {sample.path: sample.decoder for sample in index.samples}
    # The fast native path where TensorFlow is right, Python where it is not.
    assert (
        decoders["cat/white16.png"]
        == decoders["cat/rgb24.bmp"]
        == decoders["cat/palette.gif"]
        == "native"
    )
    for name in (
        "cmyk.jpg",
        "rotated.jpg",
        "rgba.png",
        "la.png",
        "palette_transparent.png",
        "palette8.bmp",
        "white16.tif",
        "lossless.webp",
        "rgb.tiff",
    ):
        assert decoders[f"cat/{name}"] == "pillow", name
    for name, expected in messy["expected"].items():
        path = os.path.join(messy["root"], "cat", name)
        image = image_io.decode_file(path, decoders[f"cat/{name}"]).numpy()
        assert image.dtype == np.uint8 and image.shape == expected.shape, name
        tolerance = 8 if name.endswith(".jpg") else 1
        difference = np.abs(image.astype(int) - expected.astype(int))
        assert difference.mean() <= tolerance, (name, difference.mean())
    rotated = image_io.load_image(os.path.join(messy["root"], "cat", "rotated.jpg"), 32).numpy()
    assert rotated[:, :12, 0].mean() > 180 and rotated[:, :12, 2].mean() < 80  # red on the left
    assert rotated[:, -12:, 2].mean() > 180 and rotated[:, -12:, 0].mean() < 80  # blue on the right


def test_decoding_is_the_same_in_training_and_prediction(messy):
    """The training pipeline (decoders from the audit), load_image as
    predict.py calls it (eager, no decoder) and inside a graph (as
    evaluate.py maps it) give identical pixels, for native and Python files."""
    import tensorflow as tf

    names = ["rotated.jpg", "cmyk.jpg", "rgba.png", "white16.tif", "UPPER.JPG", "gray.png"]
    paths = [os.path.join(messy["root"], "cat", name) for name in names]
    index = index_of(messy["root"])
    by_path = {sample.path: sample.decoder for sample in index.samples}
    decoders = [by_path[f"cat/{name}"] for name in names]
    dataset = data_loader.make_dataset(paths, np.arange(len(paths)), 32, 2, decoders=decoders)
    training = np.concatenate([images.numpy() for images, _ in dataset])
    eager = np.stack([image_io.load_image(path, 32).numpy() for path in paths])
    graph = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: image_io.load_image(path, 32)
    )
    in_graph = np.stack([image.numpy() for image in graph])
    np.testing.assert_array_equal(training, eager)
    np.testing.assert_array_equal(training, in_graph)


def test_the_audit_is_cached_outside_the_dataset(messy, tmp_path):
    cache_dir = str(tmp_path / "artifacts" / "audit_cache")
    first = index_of(messy["root"], cache_dir=cache_dir)
    second = index_of(messy["root"], cache_dir=cache_dir)
    candidates = len(first.samples) + len(first.skipped)
    assert first.audit["files"]["checked"] == candidates
    assert second.audit["files"]["checked"] == 0
    assert second.audit["files"]["from_cache"] == candidates
    assert second.samples == first.samples and second.skipped == first.skipped
    assert os.listdir(cache_dir) == [
        os.path.basename(audit.audit_cache_path(cache_dir, messy["root"]))
    ]
    with pytest.raises(errors.UserError, match="outside image_dir"):
        index_of(messy["root"], cache_dir=os.path.join(messy["root"], "cache"))


def test_a_changed_file_is_checked_again(tmp_path):
    root = tmp_path / "data"
    write_class_folder(str(root / "a"), 0, 6)
    write_class_folder(str(root / "b"), 1, 6)
    cache_dir = str(tmp_path / "cache")
    index_of(str(root), cache_dir=cache_dir)
    broken = root / "a" / "img_002.png"
    broken.write_bytes(b"")
    index = index_of(str(root), cache_dir=cache_dir)
    assert index.audit["files"]["checked"] == 1
    assert {item.path: item.reason for item in index.skipped} == {"a/img_002.png": "empty file (0 bytes)"}


def test_an_empty_class_is_left_out_and_one_class_left_exits_2(tmp_path, capsys):
    root = tmp_path / "data"
    write_class_folder(str(root / "a"), 0, 6)
    write_class_folder(str(root / "b"), 1, 6)
    (root / "c").mkdir()
    index = index_of(str(root))
    assert index.class_names == ("a", "b")
    assert any(
        "class 'c' has no usable images (no image files)" in warning for warning in index.warnings
    )
    for path in (root / "b").iterdir():
        path.write_bytes(b"not an image")
    code = inspect_dataset.main(["--image_dir", str(root), "--artifacts_dir", str(tmp_path / "art")])
    assert code == 2
    error = capsys.readouterr().err
    assert "need at least 2 classes with usable images" in error and "b, c" in error


def test_classes_option_keeps_the_users_order_and_subset(tmp_path):
    root = tmp_path / "data"
    for number, name in enumerate(("ant", "bee", "cow")):
        write_class_folder(str(root / name), number, 6)
    index = index_of(str(root), classes=("cow", "ant"))
    assert index.class_names == ("cow", "ant")
    assert {sample.label for sample in index.samples} == {"cow", "ant"}
    assert index.ignored == 6 and any("bee" in note for note in index.notes)
    paths, labels = index.split("train")
    assert all(("cow/" in path) == (label == 0) for path, label in zip(paths, labels))
    with pytest.raises(errors.UserError, match="'cat', which is not a class"):
        index_of(str(root), classes=("cat", "ant"))


# ---------------------------------------------------------------- duplicates


def test_duplicates_stay_in_one_split_when_splitting_automatically(tmp_path):
    root = tmp_path / "data"
    write_class_folder(str(root / "a"), 0, 12)
    write_class_folder(str(root / "b"), 1, 12)
    for number in range(4):  # four images, each with two copies
        original = root / "a" / f"img_{number:03d}.png"
        for copy in range(2):
            (root / "a" / f"copy_{number}_{copy}.png").write_bytes(original.read_bytes())
    for seed in range(5):
        index = splits.index_dataset(str(root), 0.2, 0.2, seed)
        split_of = {sample.path: sample.split for sample in index.samples}
        for number in range(4):
            group = [f"a/img_{number:03d}.png", f"a/copy_{number}_0.png", f"a/copy_{number}_1.png"]
            assert len({split_of[path] for path in group}) == 1, (seed, group)
        assert len(index.audit["duplicates"]) == 4
        assert "4 group(s) of identical files (12 files)" in index.warnings[0]
        assert not any(warning.startswith("leakage") for warning in index.warnings)


def test_the_same_image_in_train_and_test_is_a_leakage_warning(tmp_path):
    root = tmp_path / "data"
    for split, count, start in (("train", 6, 0), ("val", 2, 50), ("test", 2, 70)):
        for number, name in enumerate(("a", "b")):
            write_class_folder(str(root / split / name), number, count, start=start)
    leaked = root / "test" / "a" / "leaked.png"
    leaked.write_bytes((root / "train" / "a" / "img_000.png").read_bytes())
    index = index_of(str(root))
    assert index.layout == "presplit"
    leaks = [warning for warning in index.warnings if warning.startswith("leakage")]
    assert len(leaks) == 1
    assert "train and test" in leaks[0]
    assert "train/a/img_000.png (train)" in leaks[0] and "test/a/leaked.png (test)" in leaks[0]


# ---------------------------------------------------------------- labels CSV


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_labels_csv_rows_outside_the_folder_are_rejected(tmp_path):
    root = tmp_path / "data"
    write_class_folder(str(root / "images"), 0, 8)
    write_class_folder(str(root / "more"), 1, 8)
    outside = tmp_path / "secret.png"
    class_image(0, 1).save(outside)
    (tmp_path / "data_other").mkdir()  # a sibling whose name starts like the root
    class_image(0, 2).save(tmp_path / "data_other" / "x.png")
    os.symlink(outside, root / "link_out.png")
    rows = [f"images/img_{i:03d}.png,{i % 2}" for i in range(8)] + [
        f"more/img_{i:03d}.png,1" for i in range(8)
    ]
    rows += [
        f"{outside},0",
        "../secret.png,0",
        "images/../../secret.png,1",
        "../data_other/x.png,1",
        "link_out.png,0",
        "images/missing.png,1",
        "images/img_000.png,0",
        "images/img_001.png,0",
        "images/../more/img_000.png,1",
    ]
    csv_path = write_csv(tmp_path / "labels.csv", "filename,label\n" + "\n".join(rows) + "\n")
    index = index_of(str(root), labels_csv=csv_path)
    skipped = {item.path: item.reason for item in index.skipped}
    for name in (
        str(outside),
        "../secret.png",
        "images/../../secret.png",
        "../data_other/x.png",
        "link_out.png",
    ):
        assert skipped[name].startswith("outside image_dir"), name
    assert skipped["images/missing.png"].startswith("not found")
    assert skipped["images/img_001.png"].startswith(
        "conflicting labels in labels_csv: 1 (row 3), 0 (row"
    )
    assert len(skipped) == 7
    assert index.layout == "csv" and index.class_names == ("0", "1")
    assert len(index.samples) == 15
    assert any("more than once" in warning for warning in index.warnings)
    assert {sample.path for sample in index.samples} >= {"images/img_000.png", "more/img_000.png"}


def test_labels_csv_split_column_overrides_the_split(tmp_path):
    root = tmp_path / "data"
    write_class_folder(str(root), 0, 10)
    write_class_folder(str(root / "sub"), 1, 10)
    rows = []
    for i in range(10):
        split = "test" if i < 2 else ""
        rows.append(f"img_{i:03d}.png,cat,{split}")
        rows.append(f"sub/img_{i:03d}.png,dog,{'test' if i < 2 else ''}")
    csv_path = write_csv(tmp_path / "labels.csv", "filename,label,split\n" + "\n".join(rows) + "\n")
    index = index_of(str(root), labels_csv=csv_path)
    test = {sample.path for sample in index.samples if sample.split == "test"}
    assert test == {"img_000.png", "img_001.png", "sub/img_000.png", "sub/img_001.png"}
    assert index.counts()["val"] == {"cat": 1, "dog": 1}  # carved out of train
    bad = write_csv(tmp_path / "bad.csv", "filename,label,split\nimg_000.png,cat,holdout\n")
    with pytest.raises(errors.UserError, match="row 2: split must be train, val or test"):
        index_of(str(root), labels_csv=bad)
    with pytest.raises(errors.UserError, match="columns filename,label"):
        index_of(str(root), labels_csv=write_csv(tmp_path / "nohead.csv", "img_000.png,cat\n"))


# ---------------------------------------------------------------- inspection CLI


def test_inspection_json_contract(messy, tmp_path, capsys):
    code = inspect_dataset.main(
        ["--image_dir", messy["root"], "--json", "--artifacts_dir", str(tmp_path / "art")]
    )
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)  # exactly one JSON object, nothing else
    assert list(summary) == ["layout", "task", "classes", "splits", "images", "skipped", "ignored", "warnings", "near_duplicates"]
    assert summary["layout"] == "flat" and summary["classes"] == ["cat", "dog"]
    assert set(summary["splits"]) == {"train", "val", "test"}
    assert sum(sum(counts.values()) for counts in summary["splits"].values()) == messy["usable"]
    assert all(set(counts) == {"cat", "dog"} for counts in summary["splits"].values())
    assert {item["path"] for item in summary["skipped"]} == set(messy["skipped"])
    assert all(set(item) == {"path", "reason"} for item in summary["skipped"])
    assert summary["ignored"] == messy["ignored"]


def test_inspection_text_and_errors(messy, tmp_path, capsys):
    code = inspect_dataset.main(
        ["--image_dir", messy["root"], "--artifacts_dir", str(tmp_path / "art")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "cat/truncated.jpg: truncated or corrupt JPEG" in out
    assert "flat layout, 2 classes" in out and "warning: class 'empty_class'" in out
    assert inspect_dataset.main(["--image_dir", str(tmp_path / "nowhere"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "image_dir does not exist" in captured.err
    assert (
        inspect_dataset.main(
            ["--image_dir", messy["root"], "--artifacts_dir", os.path.join(messy["root"], "art")]
        )
        == 2
    )
    assert "outside image_dir" in capsys.readouterr().err


def test_progress_line_on_big_folders():
    stream = io.StringIO()
    progress = audit.ProgressLine(stream=stream, min_total=100, quiet_seconds=0)
    for done in range(1, 251):
        progress(done, 250)
    lines = stream.getvalue().splitlines()
    assert lines[-1] == "    auditing: 250/250 files (100%)" and 10 <= len(lines) <= 11
    quiet = io.StringIO()
    small = audit.ProgressLine(stream=quiet, min_total=100, quiet_seconds=0)
    small(5, 50)
    assert quiet.getvalue() == ""
    fast = io.StringIO()  # a big folder audited within quiet_seconds: no lines in logs
    quick = audit.ProgressLine(stream=fast, min_total=100, quiet_seconds=60)
    for done in range(1, 251):
        quick(done, 250)
    assert fast.getvalue() == ""


# ---------------------------------------------------------------- a full run


def file_hashes(root):
    """{relative path (bytes): sha256} of every file and link under root,
    hidden ones included, links not followed; folders listed too."""
    table = {}
    root = os.fsencode(root)
    for current, folders, files in os.walk(root):
        for name in folders:
            table[os.path.relpath(os.path.join(current, name), root)] = "folder"
        for name in files:
            path = os.path.join(current, name)
            if os.path.islink(path):
                table[os.path.relpath(path, root)] = "link:" + os.fsdecode(os.readlink(path))
                continue
            with open(path, "rb") as handle:
                table[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return table


@pytest.mark.slow
def test_main_trains_on_a_messy_folder_and_changes_nothing_in_it(tmp_path, monkeypatch):
    import main

    dataset = make_messy_dataset(tmp_path / "photos")
    before = file_hashes(dataset["root"])
    stats = {
        path: os.stat(
            os.path.join(os.fsencode(dataset["root"]), path), follow_symlinks=False
        ).st_mtime_ns
        for path in before
    }
    monkeypatch.chdir(tmp_path)
    code = main.main(["--image_dir", dataset["root"], *TINY, "--epochs", "1", "--augment", "1", "--calibrate", "0"])
    assert code == 0
    assert file_hashes(dataset["root"]) == before
    assert all(
        os.stat(os.path.join(os.fsencode(dataset["root"]), path), follow_symlinks=False).st_mtime_ns
        == mtime
        for path, mtime in stats.items()
    )
    (audit_path,) = [
        os.path.join(folder, "audit.json") for folder in (tmp_path / "results" / "audit").iterdir()
    ]
    with open(audit_path, encoding="utf-8") as handle:
        audit = json.load(handle)
    assert {item["path"] for item in audit["skipped"]} == set(dataset["skipped"])
    assert audit["files"]["usable"] == dataset["usable"]
    assert os.listdir(tmp_path / "model_artifacts" / "audit_cache")
