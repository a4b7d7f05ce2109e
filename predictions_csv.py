"""predictions.csv's rows: each image's top classes (a single-label run)
or its predicted labels with a probability per label (multi-label), then
how often the test split's predictions at that confidence were right, from
the run's saved reliability bins (inference.saved_test_reliability).
predict.py writes them, app.py shows and offers them.
"""

import numpy as np

import calibration
import inference
import label_metrics
import tasks

# predictions.csv's last two columns: how often the test split's predictions
# at the row's confidence were right (TOO_FEW when fewer than
# calibration.MIN_TRUST_IMAGES were there, empty when the run saved no test
# evaluation), and how many there were.
TRUST_COLUMNS = ("test_accuracy_at_confidence", "test_images_at_confidence")
# A trust cell with too few test images at that confidence to say: a word,
# not a blank, so that a reader of the CSV sees why.
TOO_FEW = "too few"


def top_classes(probabilities, class_names, top_k):
    """[(class, probability)] * k per row, best first."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    return [[(class_names[i], float(row[i])) for i in ranks] for row, ranks in zip(probabilities, order)]


def trusts_of(bins, confidences):
    """calibration.trust_at of each of many `confidences` (one
    predictions.csv's), from a test split's saved `bins`: trust_at checks
    the bins and finds one confidence's bin at each call, which a big folder
    paid for at every image (about 0.1 ms each, most of the rows' time);
    here the bins of all are found at once by calibration.confidence_bin,
    trust_at's own rule, and each bin's Trust is made once."""
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    numbers = calibration.confidence_bin(confidences, len(bins)).tolist()
    made = {}
    for number, confidence in zip(numbers, confidences.tolist()):
        if number not in made:
            made[number] = calibration.trust_at(bins, confidence)
    return [made[number] for number in numbers]


def trust_cells(bins, confidence, trust=None):
    """The TRUST_COLUMNS of one prediction with top-1 `confidence`, from a
    test split's saved bins (None: the run saved none); `trust`, when
    given, is its calibration.Trust, already looked up (trusts_of)."""
    if bins is None:
        return ["", ""]
    trust = calibration.trust_at(bins, confidence) if trust is None else trust
    return [TOO_FEW if trust.accuracy is None else f"{trust.accuracy:.4f}", str(trust.images)]


def prediction_rows(paths, probabilities, class_names, top_k, true_labels=None, bins=None,
                    task=tasks.SINGLE_LABEL, thresholds=None, separator=";"):
    """predictions.csv rows, header first: path, [true_class,]
    predicted_class, confidence, the next best classes up to top_k, then
    TRUST_COLUMNS from the test split's saved reliability `bins` (see
    saved_test_reliability; None leaves them empty). A multi-label `task`
    has label_rows instead (`thresholds`, `separator`). predict.py writes
    them; app.py shows and offers the same rows."""
    if task.multi_label:
        return label_rows(paths, probabilities, class_names, thresholds, separator, true_labels, bins)
    top_k = min(top_k, len(class_names))
    header = ["path"] + (["true_class"] if true_labels is not None else [])
    header += ["predicted_class", "confidence"]
    for rank in range(2, top_k + 1):
        header += [f"top{rank}_class", f"top{rank}_confidence"]
    rows = [header + list(TRUST_COLUMNS)]
    probabilities = np.asarray(probabilities)
    trusts = [None] * len(probabilities) if bins is None else trusts_of(bins, probabilities.max(axis=1, initial=0.0))
    for number, (path, ranked) in enumerate(zip(paths, top_classes(probabilities, class_names, top_k))):
        row = [path] + ([class_names[int(true_labels[number])]] if true_labels is not None else [])
        for name, probability in ranked:
            row += [name, f"{probability:.6f}"]
        rows.append(row + trust_cells(bins, ranked[0][1], trusts[number]))
    return rows


# A multi-label predictions.csv's last two columns, one value per predicted
# label (in predicted_labels' order, joined the same way): how often the
# test split's (image, label) pairs at that label's probability had the
# label (TOO_FEW when too few pairs were there, empty when the run saved no
# test evaluation), and how many pairs there were.
LABEL_TRUST_COLUMNS = ("test_present_at_probability", "test_pairs_at_probability")


def probability_column(name):
    """A multi-label predictions.csv's column of one label's probability."""
    return f"probability_{name}"


def label_trust(bins, probability, trust=None):
    """(how often the test split's (image, label) pairs at `probability`
    had the label, or None when too few pairs were there; the
    calibration.Trust of their bin). A multi-label run's bins are over its
    (image, label) pairs as yes/no answers (metrics.Evaluation.reliability),
    binned by the answer's confidence, max(p, 1 - p): a pair at p < 0.5 was
    a "no" answer, right when the label was absent. `trust`, when given, is
    that bin's Trust, already looked up (trusts_of)."""
    if trust is None:
        trust = calibration.trust_at(bins, max(probability, 1.0 - probability))
    if trust.accuracy is None:
        return None, trust
    return (trust.accuracy if probability >= 0.5 else 1.0 - trust.accuracy), trust


def predicted_names(row, class_names, thresholds):
    """The labels of one image's probabilities `row` at or above their
    thresholds, most probable first: [(label, probability)]."""
    return [(name, probability) for name, probability, _ in label_metrics.label_marks(None, row, class_names, thresholds)]


def label_rows(paths, probabilities, class_names, thresholds, separator, true_labels=None, bins=None):
    """A multi-label model's predictions.csv rows, header first: path,
    [true_labels,] predicted_labels (the labels at or above their
    thresholds, most probable first, joined by `separator`; empty for
    none), one probability column per label (probability_column), then
    LABEL_TRUST_COLUMNS for the predicted labels from the test split's
    saved `bins` (None leaves them empty)."""
    thresholds = np.full(len(class_names), 0.5) if thresholds is None else np.asarray(thresholds)
    header = ["path"] + (["true_labels"] if true_labels is not None else []) + ["predicted_labels"]
    rows = [header + [probability_column(name) for name in class_names] + list(LABEL_TRUST_COLUMNS)]
    probabilities = np.asarray(probabilities, dtype=np.float64)
    # Each (image, label) pair's Trust, by position in the flattened
    # (images, labels) matrix, looked up at once (trusts_of).
    trusts = None if bins is None else trusts_of(bins, np.maximum(probabilities, 1.0 - probabilities))
    column = {name: number for number, name in enumerate(class_names)}
    for number, (path, row) in enumerate(zip(paths, probabilities)):
        predicted = predicted_names(row, class_names, thresholds)
        cells = [path]
        if true_labels is not None:
            cells.append(separator.join(label_metrics.label_sets([true_labels[number] > 0.5], class_names)[0]))
        cells.append(separator.join(name for name, _ in predicted))
        cells += [f"{value:.6f}" for value in row]
        trusted = [
            label_trust(bins, probability, trusts[number * len(class_names) + column[name]])
            for name, probability in predicted
        ] if bins is not None else []
        cells += [separator.join(TOO_FEW if rate is None else f"{rate:.4f}" for rate, _ in trusted),
                  separator.join(str(trust.images) for _, trust in trusted)]
        rows.append(cells)
    return rows


def rows_of(trained, paths, probabilities, top_k, true_labels=None, bins=None):
    """prediction_rows of a TrainedModel's predictions (its task, its
    thresholds and its run's label delimiter)."""
    return prediction_rows(paths, probabilities, trained.class_names, top_k, true_labels, bins,
                           task=trained.task, thresholds=trained.thresholds,
                           separator=inference.saved_reading(trained).separator)
