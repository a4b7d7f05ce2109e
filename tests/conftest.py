"""Shared test helpers: tiny synthetic image folders made in tmp_path."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

# The smallest real model main.py trains: MobileNetV2 at width 0.35 on
# 32 px images, figures never shown. TINY also trains from scratch (no
# ImageNet download in tests).
TINY_MODEL = ["--alpha", "0.35", "--image_size", "32", "--batch_size", "8", "--show", "0"]
TINY = ["--weights", "none", *TINY_MODEL]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# Distinct, learnable classes: each class is a colour with a pattern.
CLASS_COLOURS = [
    (220, 40, 40),
    (40, 180, 60),
    (40, 70, 220),
    (230, 200, 40),
    (160, 60, 200),
    (40, 200, 200),
]


def class_image(class_number, variant, size=32, rng=None):
    """A small RGB image recognisable as class `class_number`: a coloured
    square whose stripe direction also depends on the class, with noise."""
    rng = rng or np.random.default_rng(class_number * 1000 + variant)
    colour = np.array(CLASS_COLOURS[class_number % len(CLASS_COLOURS)], dtype=np.float32)
    pixels = np.ones((size, size, 3), np.float32) * colour
    stripes = (np.arange(size) // 4) % 2
    if class_number % 2:
        pixels[stripes == 1, :, :] *= 0.5
    else:
        pixels[:, stripes == 1, :] *= 0.5
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_class_folder(folder, class_number, count, size=32, extension="png", start=0):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for variant in range(start, start + count):
        path = os.path.join(folder, f"img_{variant:03d}.{extension}")
        image = class_image(class_number, variant, size)
        image.save(path, format="JPEG" if extension.lower() in ("jpg", "jpeg") else None)
        paths.append(path)
    return paths


def make_flat_dataset(root, classes=("cat", "dog"), per_class=10, size=32):
    """root/<class>/img_NNN.png for each class; returns root."""
    for number, name in enumerate(classes):
        write_class_folder(os.path.join(root, name), number, per_class, size)
    return str(root)


def make_presplit_dataset(root, classes=("cat", "dog"), counts=None, size=32, splits=("train", "val", "test")):
    """root/<split>/<class>/... with counts {split: per class}; returns root."""
    counts = counts or {"train": 8, "val": 3, "test": 3}
    offset = 0
    for split in splits:
        for number, name in enumerate(classes):
            write_class_folder(os.path.join(root, split, name), number, counts[split], size, start=offset)
        offset += counts[split]
    return str(root)


def make_digit_folder(root, classes=5, per_class=60):
    """root/<digit>/<n>.png: scikit-learn's real 8x8 digit scans (dark
    ink on white), for tests that must show a network really learns."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(classes):
        folder = os.path.join(root, str(label))
        os.makedirs(folder)
        for number, image in enumerate(digits.images[digits.target == label][:per_class]):
            Image.fromarray((255 - image * 255 / 16).astype(np.uint8)).save(os.path.join(folder, f"{number}.png"))
    return root


@pytest.fixture
def flat_dataset(tmp_path):
    return make_flat_dataset(tmp_path / "data", classes=("alpha", "beta", "gamma"), per_class=10)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Runs the test from an empty folder, so model_artifacts/ and results/
    land in tmp_path."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder
