"""Layouts, the split and the tf.data pipeline."""

import os

import numpy as np
import pytest

import augment
import data_loader
import image_io
import dataset_files
import splits
from errors import UserError
from conftest import make_flat_dataset, make_presplit_dataset, write_class_folder


def test_flat_layout_finds_classes_nested_and_uppercase_and_ignores_junk(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("b_class", "a_class"), per_class=10)
    write_class_folder(os.path.join(root, "a_class", "nested", "deeper"), 0, 2, start=50)
    write_class_folder(os.path.join(root, "b_class"), 1, 1, extension="JPG", start=60)
    write_class_folder(os.path.join(root, ".hidden_class"), 0, 3)
    write_class_folder(os.path.join(root, "a_class", ".cache"), 0, 2, start=70)
    (tmp_path / "data" / "a_class" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "a_class" / ".secret.png").write_bytes(b"hidden")

    index = splits.index_dataset(root, 0.2, 0.2, seed=1)

    assert index.layout == "flat"
    assert index.class_names == ("a_class", "b_class")
    paths = {sample.path for sample in index.samples}
    assert "a_class/nested/deeper/img_050.png" in paths
    assert "b_class/img_060.JPG" in paths
    assert not any(".hidden" in path or ".cache" in path or path.endswith(".txt") for path in paths)
    assert len(paths) == len(index.samples) == 12 + 11


def test_split_is_stratified_disjoint_and_deterministic(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("x", "y", "z"), per_class=20)

    first = splits.index_dataset(root, 0.15, 0.25, seed=7)
    again = splits.index_dataset(root, 0.15, 0.25, seed=7)
    other = splits.index_dataset(root, 0.15, 0.25, seed=8)

    counts = first.counts()
    for name in ("x", "y", "z"):
        assert counts["val"][name] == 3  # round(20 * 0.15)
        assert counts["test"][name] == 5
        assert counts["train"][name] == 12
    by_split = {split: {s.path for s in first.samples if s.split == split} for split in dataset_files.SPLITS}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    assert sum(len(paths) for paths in by_split.values()) == 60
    assert splits.manifest_rows(first) == splits.manifest_rows(again)
    assert splits.manifest_rows(first) != splits.manifest_rows(other)


def test_presplit_layout_with_validation_alias(tmp_path):
    root = make_presplit_dataset(tmp_path / "data", classes=("cat", "dog"))
    os.rename(os.path.join(root, "val"), os.path.join(root, "validation"))

    index = splits.index_dataset(root, 0.15, 0.15, seed=0)

    assert index.layout == "presplit"
    assert index.notes == ()
    counts = index.counts()
    assert counts["train"] == {"cat": 8, "dog": 8}
    assert counts["val"] == {"cat": 3, "dog": 3}
    assert all(sample.path.startswith(f"{ {'val': 'validation'}.get(sample.split, sample.split)}/") for sample in index.samples)


def test_presplit_without_val_and_test_carves_them_from_train_and_says_so(tmp_path):
    root = make_presplit_dataset(tmp_path / "data", counts={"train": 20}, splits=("train",))

    index = splits.index_dataset(root, 0.2, 0.1, seed=0)

    counts = index.counts()
    assert counts["val"] == {"cat": 4, "dog": 4}
    assert counts["test"] == {"cat": 2, "dog": 2}
    assert counts["train"] == {"cat": 14, "dog": 14}
    assert len(index.notes) == 1 and "carved" in index.notes[0] and "val" in index.notes[0]


def test_class_missing_from_a_split_names_class_and_split(tmp_path):
    root = make_presplit_dataset(tmp_path / "data", classes=("cat", "dog", "owl"))
    for name in os.listdir(os.path.join(root, "test", "owl")):
        os.remove(os.path.join(root, "test", "owl", name))
    os.rmdir(os.path.join(root, "test", "owl"))

    with pytest.raises(UserError, match=r"class 'owl' has no images in the test split \(2 vs 3 classes\)"):
        splits.index_dataset(root, 0.15, 0.15, seed=0)


def test_too_few_classes_and_missing_folder(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("only",), per_class=5)
    with pytest.raises(UserError, match="at least 2"):
        splits.index_dataset(root, 0.15, 0.15, seed=0)
    with pytest.raises(UserError, match="not a folder"):
        splits.index_dataset(str(tmp_path / "nope"), 0.15, 0.15, seed=0)


def test_class_too_small_for_every_split_is_named(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("big", "tiny"), per_class=10)
    for name in sorted(os.listdir(os.path.join(root, "tiny")))[2:]:
        os.remove(os.path.join(root, "tiny", name))
    with pytest.raises(UserError, match="class 'tiny' has 2 image"):
        splits.index_dataset(root, 0.15, 0.15, seed=0)


# ---------------------------------------------------------------- layouts real downloads have


@pytest.mark.parametrize(
    "names",
    [
        {"train": "Training", "test": "Testing"},  # the Kaggle brain-tumour MRI set
        {"train": "TRAIN", "val": "Valid", "test": "TEST"},
        {"train": "training", "val": "dev", "test": "testing"},
        {"train": "Train", "val": "Validation"},
    ],
)
def test_split_folders_match_in_any_case_with_aliases(tmp_path, names):
    root = tmp_path / "data"
    counts = {"train": 10, "val": 3, "test": 3}
    for split, folder in names.items():
        for number, name in enumerate(("glioma", "meningioma")):
            write_class_folder(root / folder / name, number, counts[split], start=100 * len(split))

    index = splits.index_dataset(str(root), 0.2, 0.2, seed=0)

    assert index.layout == "presplit" and index.class_names == ("glioma", "meningioma")
    table = index.counts()
    carved = [split for split in ("val", "test") if split not in names]
    for split, folder in names.items():
        # A missing val or test split is carved out of train's images.
        expected = counts[split] - sum(table[other]["glioma"] for other in carved if split == "train")
        assert table[split] == {"glioma": expected, "meningioma": expected}
        assert all(
            sample.path.startswith(folder + "/") for sample in index.samples if sample.split == split
        )
    assert all(table[split]["glioma"] == 2 for split in carved)  # 20% of 10
    assert ("carved" in " ".join(index.notes)) == bool(carved)


def test_two_folders_for_one_split_are_refused(tmp_path):
    root = make_presplit_dataset(tmp_path / "data")
    make_presplit_dataset(tmp_path / "data", splits=("val",), counts={"val": 2})
    os.rename(os.path.join(root, "val"), os.path.join(root, "Validation"))
    make_presplit_dataset(tmp_path / "data", splits=("val",), counts={"val": 2})

    with pytest.raises(UserError, match=r"two folders are the val split: Validation/ and val/"):
        splits.index_dataset(root, 0.15, 0.15, seed=0)


@pytest.mark.parametrize("inner", ["brain_tumor", "archive/brain_tumor"])
def test_an_unpacked_archive_folder_is_used_and_said(tmp_path, inner):
    root = tmp_path / "download"
    make_presplit_dataset(root / inner, classes=("glioma", "pituitary"))
    write_class_folder(root / "__MACOSX" / "brain_tumor" / "train" / "glioma", 0, 2)
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "README.txt").write_text("from kaggle")

    index = splits.index_dataset(str(root), 0.15, 0.15, seed=0)

    assert index.layout == "presplit" and index.class_names == ("glioma", "pituitary")
    assert len(index.samples) == 2 * (8 + 3 + 3)
    assert all(sample.path.startswith(inner + "/") for sample in index.samples)  # relative to DIR
    assert index.notes[0].startswith(f"the dataset folder holds only {inner}/ (besides junk")
    assert index.ignored == 3  # __MACOSX/, .DS_Store, README.txt


def test_an_unpacked_flat_archive_and_a_single_class_folder(tmp_path):
    flat = tmp_path / "flowers_zip"
    make_flat_dataset(flat / "flowers", classes=("daisy", "rose"), per_class=6)
    index = splits.index_dataset(str(flat), 0.2, 0.2, seed=0)
    assert index.layout == "flat" and index.class_names == ("daisy", "rose")
    assert "flowers/" in index.notes[0]

    # One folder of images only is no archive of a dataset: one class, said so.
    single = tmp_path / "single"
    make_flat_dataset(single, classes=("cats",), per_class=6)
    with pytest.raises(UserError, match=r"at least 2 classes .* found 1 \(cats\)"):
        splits.index_dataset(str(single), 0.2, 0.2, seed=0)


@pytest.mark.parametrize(
    "subfolders, advice",
    [(("part1", "part2"), "if they are splits, name them"), (("test", "train"), "belong above the class")],
)
def test_class_folders_holding_the_same_subfolders_are_warned_about(tmp_path, subfolders, advice):
    root = tmp_path / "data"
    for number, name in enumerate(("a", "b")):
        for offset, subfolder in enumerate(subfolders):
            write_class_folder(root / name / subfolder, number, 5, start=10 * offset)

    index = splits.index_dataset(str(root), 0.2, 0.2, seed=0)

    assert index.layout == "flat" and index.class_names == ("a", "b")
    (warning,) = [warning for warning in index.warnings if "same subfolders" in warning]
    assert f"({', '.join(subfolders)})" in warning and advice in warning


def test_classes_with_different_or_single_subfolders_are_not_warned_about(tmp_path):
    root = tmp_path / "data"
    write_class_folder(root / "a" / "x", 0, 5)
    write_class_folder(root / "a" / "y", 0, 5, start=10)
    write_class_folder(root / "b" / "x", 1, 5)
    write_class_folder(root / "b" / "z", 1, 5, start=10)
    write_class_folder(root / "c" / "images", 0, 5)
    write_class_folder(root / "d" / "images", 1, 5)
    index = splits.index_dataset(str(root), 0.2, 0.2, seed=0)
    assert not [warning for warning in index.warnings if "same subfolders" in warning]


def test_a_link_back_up_the_tree_pulls_no_other_class_in(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=6)
    os.symlink("..", os.path.join(root, "b", "up"))  # b/up/a/... would be a's images as b
    os.symlink(".", os.path.join(root, "c"))  # a class folder that is the dataset itself
    os.makedirs(os.path.join(tmp_path, "elsewhere"))
    write_class_folder(os.path.join(tmp_path, "elsewhere", "more"), 1, 2, start=50)
    os.symlink(os.path.join(tmp_path, "elsewhere"), os.path.join(root, "b", "linked"))

    index = splits.index_dataset(root, 0.2, 0.2, seed=0)

    assert index.class_names == ("a", "b")
    labels = {sample.path: sample.label for sample in index.samples}
    assert sorted(path for path, label in labels.items() if label == "b") == sorted(
        [f"b/img_{i:03d}.png" for i in range(6)] + ["b/linked/more/img_050.png", "b/linked/more/img_051.png"]
    )  # links elsewhere are still followed
    (warning,) = [warning for warning in index.warnings if "link" in warning]
    assert "b/up -> .." in warning and "c -> ." in warning


def _collect(dataset):
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return images, labels


def test_dataset_shapes_dtype_labels_and_every_image_once(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("a", "b", "c"), per_class=10)
    index = splits.index_dataset(root, 0.2, 0.2, seed=0)
    paths, labels = index.split("train")
    assert len(paths) == 18

    dataset = data_loader.make_dataset(paths, labels, image_size=40, batch_size=4, training=True, seed=3)
    images, batch_labels = _collect(dataset)

    assert [len(batch) for batch in images] == [4, 4, 4, 4, 2]  # partial last batch kept
    assert all(batch.dtype == np.uint8 and batch.shape[1:] == (40, 40, 3) for batch in images)
    # Each class's images are dominated by its colour: red, green, blue.
    for batch, batch_label in zip(images, batch_labels):
        for image, label in zip(batch, batch_label):
            assert int(np.argmax(image.reshape(-1, 3).mean(axis=0))) == int(label)
    # Every image exactly once: compare sorted image fingerprints with a plain read.
    plain_images, _ = _collect(data_loader.make_dataset(paths, labels, 40, 4, training=False))
    fingerprints = sorted(image.tobytes() for batch in images for image in batch)
    assert fingerprints == sorted(image.tobytes() for batch in plain_images for image in batch)


def test_training_shuffles_each_epoch_reproducibly_and_eval_keeps_order(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=20)
    paths, labels = splits.index_dataset(root, 0.2, 0.2, seed=0).split("train")

    def epoch_orders(dataset, epochs=2):
        return [np.concatenate([batch_labels.numpy() for _, batch_labels in dataset]).tolist() for _ in range(epochs)]

    train = epoch_orders(data_loader.make_dataset(paths, labels, 32, 5, training=True, seed=11))
    train_again = epoch_orders(data_loader.make_dataset(paths, labels, 32, 5, training=True, seed=11))
    evaluation = epoch_orders(data_loader.make_dataset(paths, labels, 32, 5, training=False))

    assert train == train_again
    images_epoch = [np.concatenate([b.numpy() for b, _ in data_loader.make_dataset(paths, labels, 32, 5, training=True, seed=11)])]
    assert images_epoch[0].shape[0] == len(paths)
    assert evaluation[0] == evaluation[1] == labels.tolist()
    assert train[0] != labels.tolist()
    assert train[0] != train[1]  # reshuffled every epoch


def test_augmentation_only_on_training_batches(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=10)
    paths, labels = splits.index_dataset(root, 0.2, 0.2, seed=0).split("train")
    strengths = augment.AugmentConfig(flip="both", rotation=30, zoom=0.2, translation=0.1, contrast=0.3)

    plain, _ = _collect(data_loader.make_dataset(paths, labels, 32, 4, training=False))
    evaluated, _ = _collect(data_loader.make_dataset(paths, labels, 32, 4, training=False, augmentation=strengths))
    augmented, _ = _collect(data_loader.make_dataset(paths, labels, 32, 4, training=True, augmentation=strengths, seed=5))

    assert all(np.array_equal(a, b) for a, b in zip(plain, evaluated))
    plain_set = {image.tobytes() for batch in plain for image in batch}
    augmented_images = [image for batch in augmented for image in batch]
    assert len(augmented_images) == len(plain_set)
    assert all(image.dtype == np.uint8 for image in augmented_images)
    assert sum(image.tobytes() in plain_set for image in augmented_images) <= 1


def test_augment_batch_identity_and_flip_geometry():
    import tensorflow as tf

    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[0, :, :2] = 200  # a bright band on the left
    seed = tf.constant([1, 2], tf.int64)

    same = augment.augment_batch(
        tf.constant(image), seed, augment.AugmentConfig(flip="none", rotation=0, zoom=0, translation=0, contrast=0)
    ).numpy()
    assert np.array_equal(same, image)

    flipped = [
        augment.augment_batch(
            tf.constant(image), tf.constant([k, 0], tf.int64),
            augment.AugmentConfig(flip="horizontal", rotation=0, zoom=0, translation=0, contrast=0),
        ).numpy()
        for k in range(8)
    ]
    mirrored = image[:, :, ::-1]
    assert any(np.array_equal(result, mirrored) for result in flipped)
    assert all(np.array_equal(result, mirrored) or np.array_equal(result, image) for result in flipped)


def test_decodes_grayscale_rgba_bmp_and_gif_to_rgb(tmp_path):
    from PIL import Image

    pixels = np.full((10, 12), 77, np.uint8)
    files = {
        "gray.png": Image.fromarray(pixels, mode="L"),
        "rgba.png": Image.fromarray(np.dstack([pixels] * 3 + [np.full_like(pixels, 255)]), mode="RGBA"),
        "pic.bmp": Image.fromarray(np.dstack([pixels] * 3)),
        "anim.gif": Image.fromarray(pixels, mode="L").convert("P"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    for name in files:
        decoded = image_io.load_image(str(tmp_path / name), 32).numpy()
        assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8, name
        assert abs(int(decoded.mean()) - 77) <= 2, name


def test_cached_pipeline_matches_streaming_every_epoch(tmp_path):
    root = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=12)
    paths, labels = splits.index_dataset(root, 0.2, 0.2, seed=0).split("train")
    strengths = augment.AugmentConfig()

    def epochs(cache):
        dataset = data_loader.make_dataset(paths, labels, 32, 5, training=True, augmentation=strengths, seed=4, cache=cache)
        return [[(images.numpy(), batch_labels.numpy()) for images, batch_labels in dataset] for _ in range(3)]

    streamed, cached = epochs(False), epochs(True)
    for streamed_epoch, cached_epoch in zip(streamed, cached):
        assert len(streamed_epoch) == len(cached_epoch) == 4
        for (images_a, labels_a), (images_b, labels_b) in zip(streamed_epoch, cached_epoch):
            np.testing.assert_array_equal(labels_a, labels_b)
            np.testing.assert_array_equal(images_a, images_b)
    assert not np.array_equal(cached[0][0][0], cached[1][0][0])  # new shuffle and augmentation each epoch


def test_cache_decision_follows_the_memory_budget():
    one_image = 64 * 64 * 3
    assert data_loader.decide_cache("auto", 100, 64, budget=100 * one_image)[0] is True
    use, note = data_loader.decide_cache("auto", 101, 64, budget=100 * one_image)
    assert use is False and "over the" in note and "budget" in note
    assert data_loader.decide_cache("memory", 10**9, 224, budget=1)[0] is True
    assert data_loader.decide_cache("none", 1, 32, budget=10**12)[0] is False
