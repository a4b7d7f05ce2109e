"""Custom readers: the .npy example of docs/data.md, registered from the command
line and from Python, audited, and run inside the tf.data pipeline."""

import json
import os
import re

import numpy as np
import pytest

import audit
import config
import data_loader
import errors
import inspect_dataset
import splits
from conftest import QUICK, ROOT, class_image


def readme_reader_source():
    """The `read_npy` example exactly as docs/data.md shows it."""
    with open(os.path.join(ROOT, "docs", "data.md"), encoding="utf-8") as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    (block,) = [block for block in blocks if "def read_npy" in block]
    return block


@pytest.fixture
def npy_dataset(tmp_path):
    """root/a: 8 float arrays (gradients), root/b: 8 uint16 arrays (stripes)
    and a PNG, plus a broken .npy; and my_readers.py from docs/data.md."""
    root = tmp_path / "scans"
    rng = np.random.default_rng(0)
    for number in range(8):
        (root / "a").mkdir(parents=True, exist_ok=True)
        (root / "b").mkdir(parents=True, exist_ok=True)
        # Each scan its own picture (a copy would be grouped with its
        # original as a near-copy): a gradient, or stripes, plus a texture.
        gradient = np.linspace(0.0, 1.0 + number, 24 * 24).reshape(24, 24) + rng.random((24, 24)) * (1 + number)
        np.save(root / "a" / f"g{number}.npy", gradient)
        stripes = rng.integers(0, 400, size=(24, 24)).astype(np.uint16)
        stripes[::2] += np.uint16(1000 + number)
        np.save(root / "b" / f"s{number}.npy", stripes)
    class_image(1, 0).save(root / "b" / "photo.png")
    (root / "a" / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    module = tmp_path / "my_readers.py"
    module.write_text(readme_reader_source(), encoding="utf-8")
    return {"root": str(root), "spec": f"npy={module}:read_npy", "module": str(module)}


def test_readme_npy_reader_is_used_by_the_audit(npy_dataset, tmp_path, capsys):
    arguments = [
        "--image_dir",
        npy_dataset["root"],
        "--artifacts_dir",
        str(tmp_path / "art"),
        "--json",
    ]
    assert inspect_dataset.main(arguments + ["--reader", npy_dataset["spec"]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["a", "b"]
    assert sum(sum(counts.values()) for counts in summary["splits"].values()) == 17
    assert [item["path"] for item in summary["skipped"]] == ["a/broken.npy"]
    assert summary["skipped"][0]["reason"].startswith("reader failed (")
    assert "read_npy" in summary["skipped"][0]["reason"]
    # Without the reader, .npy files are not images: ignored, and counted.
    assert inspect_dataset.main(arguments) == 2
    assert "need at least 2 classes" in capsys.readouterr().err


def test_readers_run_inside_the_pipeline(npy_dataset):
    ((extension, read_npy),) = config.load_readers([npy_dataset["spec"]]).items()
    assert extension == ".npy"
    index = splits.index_dataset(npy_dataset["root"], 0.2, 0.2, 1, readers={"npy": read_npy})
    assert index.audit["decoders"] == {".npy": 16, "native": 1}
    paths = [os.path.join(index.root, sample.path) for sample in index.samples]
    labels = np.arange(len(paths))
    decoders = [sample.decoder for sample in index.samples]
    dataset = data_loader.make_dataset(
        paths, labels, 24, 5, training=True, decoders=decoders, readers=index.readers
    )
    seen = {}
    for images, batch_labels in dataset:
        assert images.dtype == np.uint8 and images.shape[1:] == (24, 24, 3)
        for image, label in zip(images.numpy(), batch_labels.numpy()):
            seen[int(label)] = image
    assert sorted(seen) == list(labels)  # every sample once, partial last batch included
    for label, path in enumerate(paths):
        if path.endswith(".npy"):
            expected = np.repeat(read_npy(path)[:, :, None], 3, axis=2)
            np.testing.assert_array_equal(seen[label], expected)
    # Without decoders they are worked out from the files: the same images.
    again = data_loader.make_dataset(paths, labels, 24, 5, readers={".npy": read_npy})
    for images, batch_labels in again:
        for image, label in zip(images.numpy(), batch_labels.numpy()):
            np.testing.assert_array_equal(image, seen[int(label)])


def test_a_reader_must_return_uint8_images(tmp_path):
    root = tmp_path / "data"
    for offset, name in ((0, "a"), (100, "b")):
        (root / name).mkdir(parents=True)
        for number in range(5):
            np.save(root / name / f"{number}.npy", np.full((4, 4), offset + number, np.float64))

    def index_with(reader):
        return splits.index_dataset(str(root), 0.2, 0.2, 1, readers={".npy": reader})

    with pytest.raises(errors.UserError, match="need at least 2 classes"):
        index_with(np.load)  # float64: every file skipped, no class left
    (check,), _ = audit.audit_files(str(root), ["a/0.npy"], {".npy": np.load})
    assert not check.usable and "returned dtype float64, expected uint8" in check.reason
    index = index_with(lambda path: np.load(path).astype(np.uint8))
    assert len(index.samples) == 10


@pytest.mark.parametrize(
    "spec, message",
    [
        ("npy", "reader must be EXT=FILE.py:FUNCTION"),
        ("npy=missing.py:read", "reader file not found"),
        ("npy=MODULE_NOT_THERE_X:read", "cannot load reader"),
    ],
)
def test_bad_reader_specs_exit_2(npy_dataset, spec, message, capsys):
    assert inspect_dataset.main(["--image_dir", npy_dataset["root"], "--reader", spec]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(errors.UserError, match="has no function nope"):
        config.load_readers([f"npy={npy_dataset['module']}:nope"])


@pytest.mark.slow
def test_main_trains_with_a_custom_reader(npy_dataset, tmp_path, monkeypatch):
    import main

    monkeypatch.chdir(tmp_path)
    code = main.main(["--image_dir", npy_dataset["root"], "--reader", npy_dataset["spec"], *QUICK])
    assert code == 0
    with open(tmp_path / "model_artifacts" / "run_config.json", encoding="utf-8") as handle:
        assert json.load(handle)["options"]["reader"] == [npy_dataset["spec"]]
    (audit_folder,) = (tmp_path / "results" / "audit").iterdir()
    with open(audit_folder / "audit.json", encoding="utf-8") as handle:
        assert json.load(handle)["decoders"] == {".npy": 16, "native": 1}
