"""Class weights: when `auto` uses them, their values, and the line a run prints."""

import numpy as np
import pytest

import train_utils


def labels_with_counts(*counts, seed=0):
    """Shuffled training labels with `counts[i]` images of class i."""
    labels = np.concatenate([np.full(count, number) for number, count in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("counts", [(10, 10), (10, 15), (15, 10), (20, 25, 30), (8, 12, 9, 11)])
def test_auto_gives_no_weights_up_to_one_and_a_half_times(counts):
    assert train_utils.class_weights(labels_with_counts(*counts), len(counts), "auto") is None


@pytest.mark.parametrize(
    "counts, expected",
    [
        # n_samples / (n_classes * count), by hand.
        ((10, 16), {0: 26 / 20, 1: 26 / 32}),
        ((16, 10), {0: 26 / 32, 1: 26 / 20}),
        ((5, 10, 20), {0: 35 / 15, 1: 35 / 30, 2: 35 / 60}),
        ((30, 30, 30, 19), {0: 109 / 120, 1: 109 / 120, 2: 109 / 120, 3: 109 / 76}),
    ],
)
def test_auto_gives_balanced_weights_above_one_and_a_half_times(counts, expected):
    weights = train_utils.class_weights(labels_with_counts(*counts), len(counts), "auto")

    assert weights is not None and sorted(weights) == list(range(len(counts)))
    assert all(type(index) is int and type(weight) is float for index, weight in weights.items())
    assert weights == pytest.approx(expected, rel=1e-12)


def test_auto_is_the_default_mode():
    assert train_utils.class_weights(labels_with_counts(10, 16), 2) == pytest.approx({0: 1.3, 1: 0.8125})
    assert train_utils.class_weights(labels_with_counts(10, 15), 2) is None


@pytest.mark.parametrize("counts", [(10, 10), (10, 16), (1, 100), (3, 50, 7)])
def test_none_never_gives_weights(counts):
    assert train_utils.class_weights(labels_with_counts(*counts), len(counts), "none") is None


def test_balanced_weights_give_every_class_the_same_total_weight():
    counts = (3, 17, 40, 8, 25)
    labels = labels_with_counts(*counts, seed=4)

    weights = train_utils.class_weights(labels, len(counts), "auto")

    totals = [weights[number] * count for number, count in enumerate(counts)]
    np.testing.assert_allclose(totals, len(labels) / len(counts), rtol=1e-12)
    # So the loss keeps its scale: the mean weight over the images is 1.
    assert np.mean([weights[label] for label in labels]) == pytest.approx(1.0, rel=1e-12)


def test_class_weights_line_names_each_class_in_index_order():
    weights = train_utils.class_weights(labels_with_counts(5, 10, 20), 3, "auto")

    line = train_utils.class_weights_line(weights, ["cat", "dog", "owl"], "auto")

    assert line == "class weights: cat=2.333, dog=1.167, owl=0.583"


def test_class_weights_line_without_weights_says_why():
    assert train_utils.class_weights_line(None, ["cat", "dog"], "auto") == (
        "class weights: none (classes are balanced enough)"
    )
    assert train_utils.class_weights_line(None, ["cat", "dog"], "none") == "class weights: none"
