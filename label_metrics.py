"""How good are multi-label predictions: each label's threshold, the
per-label and overall scores, what a model must beat, and calibration.

A multi-label model answers a yes/no question per label (one sigmoid
each). Its decision is a threshold per label, chosen on the validation
split to maximize that label's F1 (`choose_thresholds`, saved in the run
config; --threshold overrides it for every label). Its scores
(`evaluation_metrics`) are scikit-learn's: per-label precision, recall, F1,
support, average precision and ROC AUC; micro-, macro- and
weighted-averaged F1; mAP (the mean of the labels' average precisions);
subset accuracy (the exact label set) and Hamming loss (the share of wrong
yes/no answers). `baselines` are what a model with no eyes gets: always
answering each label's more common value, and ranking every image the same
(mAP = each label's prevalence).

Calibration treats every (image, label) pair as one yes/no prediction
(`as_binary`), so calibration.py's reliability bins, ECE, Brier score and
top losses apply unchanged.

Plain NumPy and scikit-learn in, plain values out, like metrics.py.
"""

import numpy as np

import theme

# Thresholds are chosen among the validation probabilities, never outside
# this range: a threshold of 0 answers "yes" to every image.
LOWEST_THRESHOLD, HIGHEST_THRESHOLD = 0.05, 0.95


def as_binary(true_labels, probabilities):
    """Every (image, label) pair as one binary prediction: (labels (N*L,)
    int, probabilities (N*L, 2) of [absent, present]), the form
    calibration.py's single-label functions take."""
    present = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    truth = np.asarray(true_labels).reshape(-1).astype(np.int64)
    return truth, np.stack([1.0 - present, present], axis=1)


def f1_at_thresholds(truth, scores):
    """(candidate thresholds, F1 at each) of one label: every distinct
    score within [LOWEST, HIGHEST] and 0.5."""
    candidates = np.unique(np.concatenate([np.clip(scores, LOWEST_THRESHOLD, HIGHEST_THRESHOLD), [0.5]]))
    predicted = scores[None, :] >= candidates[:, None]
    true_positive = (predicted & truth[None, :]).sum(axis=1)
    denominator = predicted.sum(axis=1) + truth.sum()
    f1 = np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0)
    return candidates, f1


def choose_thresholds(true_labels, probabilities):
    """One threshold per label: the one that maximizes the label's F1 on
    these (validation) images; of equal F1, the one nearest 0.5. A label
    with no positive image here keeps 0.5. Returns a float array (labels,)."""
    true_labels = np.asarray(true_labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.full(true_labels.shape[1], 0.5)
    for label in range(true_labels.shape[1]):
        truth = true_labels[:, label]
        if not truth.any():
            continue
        candidates, f1 = f1_at_thresholds(truth, probabilities[:, label])
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        thresholds[label] = candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]]
    return thresholds


def thresholds_of(class_names, saved=None, threshold=None):
    """The thresholds a multi-label model decides with: `threshold` (the
    --threshold option) for every label when given, else the run's `saved`
    ({label: threshold}, run_config.json's "thresholds"), else 0.5."""
    if threshold is not None:
        return np.full(len(class_names), float(threshold))
    saved = saved or {}
    return np.array([float(saved.get(name, 0.5)) for name in class_names])


def pair_losses(true_labels, probabilities):
    """The binary cross-entropy of every (image, label) pair (N, labels),
    clipped as Keras clips it."""
    truth = np.asarray(true_labels, dtype=np.float64)
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    return -(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped))


def binary_cross_entropy(true_labels, probabilities):
    """The mean binary cross-entropy over every image and label."""
    return float(np.mean(pair_losses(true_labels, probabilities))) + 0.0


def _row(precision, recall, f1, support):
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


def evaluation_metrics(true_labels, probabilities, class_names, thresholds):
    """Every multi-label score, JSON-ready: "accuracy" (subset accuracy, the
    exact set right), "subset_accuracy", "hamming_loss", "loss" (binary
    cross-entropy), "num_samples", "mAP", "micro_avg"/"macro_avg"/
    "weighted_avg" ({precision, recall, f1, support}), "per_class"
    ({label: precision, recall, f1, support, average_precision, roc_auc,
    threshold}), "roc_auc" (per class, micro, macro, absent_classes, as
    single-label runs report it) and "thresholds". A label with no
    positive (or no negative) image has no AP/AUC (None, listed absent)."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    truth = np.asarray(true_labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities >= np.asarray(thresholds)[None, :]
    per_label = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0)
    per_class, absent = {}, []
    for number, name in enumerate(class_names):
        column = truth[:, number]
        defined = 0 < column.sum() < len(column)
        if not defined:
            absent.append(name)
        per_class[name] = {
            **_row(*(values[number] for values in per_label)),
            "average_precision": float(average_precision_score(column, probabilities[:, number])) if column.any() else None,
            "roc_auc": float(roc_auc_score(column, probabilities[:, number])) if defined else None,
            "threshold": float(thresholds[number]),
        }
    averages = {
        f"{kind}_avg": _row(*precision_recall_fscore_support(truth, predicted, average=kind, zero_division=0)[:3],
                            truth.sum())
        for kind in ("micro", "macro", "weighted")
    }
    precisions = [row["average_precision"] for row in per_class.values() if row["average_precision"] is not None]
    aucs = [row["roc_auc"] for row in per_class.values() if row["roc_auc"] is not None]
    micro_auc = float(roc_auc_score(truth.ravel(), probabilities.ravel())) if 0 < truth.sum() < truth.size else None
    subset = float(np.mean((predicted == truth).all(axis=1))) if len(truth) else float("nan")
    return {
        "task": "multi_label",
        "accuracy": subset,
        "subset_accuracy": subset,
        "hamming_loss": float(np.mean(predicted != truth)) if len(truth) else float("nan"),
        "loss": binary_cross_entropy(truth, probabilities),
        "num_samples": int(len(truth)),
        "mAP": float(np.mean(precisions)) if precisions else None,
        **averages,
        "per_class": per_class,
        "roc_auc": {
            "per_class": {name: row["roc_auc"] for name, row in per_class.items()},
            "micro": micro_auc,
            "macro": float(np.mean(aucs)) if aucs else None,
            "absent_classes": absent,
        },
        "thresholds": {name: float(value) for name, value in zip(class_names, thresholds)},
    }


def baselines(true_labels, class_names):
    """What a model with no eyes gets on these images: answering each
    label's more common value ("majority"), as subset accuracy, Hamming
    loss and micro-F1, and ranking every image the same (each label's AP
    is then its prevalence: "prevalence_map")."""
    truth = np.asarray(true_labels) > 0.5
    prevalence = truth.mean(axis=0) if len(truth) else np.zeros(len(class_names))
    constant = prevalence > 0.5
    answered = np.broadcast_to(constant, truth.shape)
    true_positive = (answered & truth).sum()
    denominator = answered.sum() + truth.sum()
    present = prevalence[truth.any(axis=0)] if len(truth) else prevalence
    return {
        "majority_labels": [name for name, value in zip(class_names, constant) if value],
        "majority_subset_accuracy": float(np.mean((answered == truth).all(axis=1))) if len(truth) else 0.0,
        "majority_hamming_loss": float(np.mean(answered != truth)) if len(truth) else 0.0,
        "majority_micro_f1": float(2 * true_positive / denominator) if denominator else 0.0,
        "prevalence_map": float(np.mean(present)) if len(present) else 0.0,
        "prevalence": {name: float(value) for name, value in zip(class_names, prevalence)},
    }


def _map_text(scores):
    return "n/a" if scores["mAP"] is None else theme.score(scores['mAP'])


def headline(scores):
    """'micro-F1 0.912, macro-F1 0.897, mAP 0.951, exact set 0.803, Hamming
    loss 0.041, loss 0.132 on 120 images' for the printed summary."""
    map_text = _map_text(scores)
    return (
        f"micro-F1 {theme.score(scores['micro_avg']['f1'])}, macro-F1 {theme.score(scores['macro_avg']['f1'])}, mAP {map_text}, "
        f"exact set {theme.score(scores['subset_accuracy'])}, Hamming loss {theme.score(scores['hamming_loss'])}, "
        f"loss {theme.score(scores['loss'])} on {scores['num_samples']} images"
    )


def baseline_line(scores):
    """'micro-F1 0.91 · mAP 0.95 · answering each label's more common value: micro-F1 0.00, exact set 0.12 · prevalence mAP 0.33'."""
    base = scores["baselines"]
    map_text = _map_text(scores)
    return (
        f"micro-F1 {theme.score(scores['micro_avg']['f1'])} · mAP {map_text} · answering each label's more common value: "
        f"micro-F1 {theme.score(base['majority_micro_f1'])}, exact set {theme.score(base['majority_subset_accuracy'])} · "
        f"prevalence mAP {theme.score(base['prevalence_map'])}"
    )


def baseline_warning(scores):
    """A warning that cannot be missed when the model ranks images no
    better than their labels' prevalence (mAP) or decides no better than
    the constant answer (micro-F1), else None."""
    base = scores["baselines"]
    ranks_badly = scores["mAP"] is not None and scores["mAP"] <= base["prevalence_map"] + 0.02
    decides_badly = scores["micro_avg"]["f1"] <= base["majority_micro_f1"]
    if not (ranks_badly or decides_badly):
        return None
    return (
        f"WARNING: the model is no better than a constant answer on these {scores['num_samples']} images: "
        + (f"mAP {theme.score(scores['mAP'])} vs {theme.score(base['prevalence_map'])} for ranking every image the same"
           if ranks_badly else
           f"micro-F1 {theme.score(scores['micro_avg']['f1'])} vs {theme.score(base['majority_micro_f1'])} for answering each label's "
           "more common value")
        + ". It has not learned the labels: train longer (--epochs, --patience), use pretrained weights, or add images."
    )


def most_confused(true_labels, probabilities, class_names, thresholds, limit=10):
    """The labels the model gets wrong most often: [(label, missed
    (false negatives), added (false positives))], most errors first,
    labels without any error left out."""
    truth = np.asarray(true_labels) > 0.5
    predicted = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    missed = (truth & ~predicted).sum(axis=0)
    added = (~truth & predicted).sum(axis=0)
    order = np.argsort(-(missed + added), kind="stable")
    return [(class_names[i], int(missed[i]), int(added[i])) for i in order[:limit] if missed[i] + added[i]]


def confused_lines(rows):
    """'coffee: missed 4, added 1' lines of most_confused's rows."""
    if not rows:
        return ["none: every label of every image right"]
    return [f"{name}: missed on {missed} image(s), wrongly added to {added}" for name, missed, added in rows]


def image_losses(true_labels, probabilities):
    """Each image's binary cross-entropy summed over its labels (N,): how
    wrong the model is about it, for the top-losses figure."""
    return pair_losses(true_labels, probabilities).sum(axis=1)


def label_sets(rows, class_names):
    """The label names of each row of booleans (N, labels): [(names...)]."""
    return [tuple(name for name, on in zip(class_names, row) if on) for row in np.asarray(rows)]


# ---------------------------------------------------------------- the figures' data


def cooccurrence(true_labels):
    """How many images have both labels of each pair: an int (labels,
    labels) table whose diagonal is each label's number of images."""
    truth = (np.asarray(true_labels) > 0.5).astype(np.int64)
    return truth.T @ truth


def without_labels(true_labels):
    """How many images have no label at all."""
    return int(np.sum(~(np.asarray(true_labels) > 0.5).any(axis=1))) if len(true_labels) else 0


def confusion_grids(true_labels, probabilities, thresholds):
    """Each label's 2x2 confusion table at its threshold: int (labels, 2,
    2), rows the truth (has it, has it not), columns the answer (yes, no):
    [[true positives, false negatives], [false positives, true negatives]]."""
    truth = np.asarray(true_labels) > 0.5
    predicted = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    cells = [[truth & predicted, truth & ~predicted], [~truth & predicted, ~truth & ~predicted]]
    return np.moveaxis(np.array([[cell.sum(axis=0) for cell in row] for row in cells], dtype=np.int64), 2, 0)


def precision_recall_curves(true_labels, probabilities, class_names, thresholds):
    """Each label's precision-recall curve: {label: None (no positive
    image) or {"precision", "recall" (arrays), "average_precision",
    "prevalence" (the precision of answering yes to every image),
    "threshold", "point": (recall, precision) at the threshold}}."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    truth = np.asarray(true_labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    curves = {}
    for number, name in enumerate(class_names):
        column, scores = truth[:, number], probabilities[:, number]
        if not column.any():
            curves[name] = None
            continue
        precision, recall, _ = precision_recall_curve(column, scores)
        answered = scores >= thresholds[number]
        hits = int((answered & column).sum())
        point = (hits / column.sum(), hits / answered.sum() if answered.any() else 1.0)
        curves[name] = {
            "precision": precision, "recall": recall,
            "average_precision": float(average_precision_score(column, scores)),
            "prevalence": float(column.mean()), "threshold": float(thresholds[number]), "point": point,
        }
    return curves


def roc_curves(true_labels, probabilities, class_names):
    """Each label's ROC curve and the micro and macro averages, in the form
    of metrics.roc_analysis (so the same figure draws them): {"per_class":
    {label: {"fpr", "tpr", "auc"} or None}, "micro", "macro", "absent",
    "binary": False}. A label that every image has, or none, has no curve."""
    from sklearn.metrics import auc, roc_curve

    truth = np.asarray(true_labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    per_class, absent = {}, []
    for number, name in enumerate(class_names):
        column = truth[:, number]
        if column.all() or not column.any():
            per_class[name] = None
            absent.append(name)
            continue
        fpr, tpr, _ = roc_curve(column, probabilities[:, number])
        per_class[name] = {"fpr": fpr, "tpr": tpr, "auc": float(auc(fpr, tpr))}
    micro = macro = None
    if 0 < truth.sum() < truth.size:
        fpr, tpr, _ = roc_curve(truth.ravel(), probabilities.ravel())
        micro = {"fpr": fpr, "tpr": tpr, "auc": float(auc(fpr, tpr))}
    curves = [curve for curve in per_class.values() if curve is not None]
    if curves:
        grid = np.unique(np.concatenate([curve["fpr"] for curve in curves]))
        mean_tpr = np.mean([np.interp(grid, curve["fpr"], curve["tpr"]) for curve in curves], axis=0)
        macro = {"fpr": grid, "tpr": mean_tpr, "auc": float(np.mean([curve["auc"] for curve in curves]))}
    return {"per_class": per_class, "micro": micro, "macro": macro, "absent": absent, "binary": False}


def label_marks(true_row, probability_row, class_names, thresholds):
    """What one image's gallery tile says, label by label: [(label,
    probability, kind)], kind "right" (predicted and true), "wrong"
    (predicted, not true), "missed" (true, not predicted) or "predicted"
    (no truth known: `true_row` None); predicted labels first, most
    probable first, then the missed ones."""
    probability_row = np.asarray(probability_row, dtype=np.float64)
    predicted = probability_row >= np.asarray(thresholds)
    truth = None if true_row is None else np.asarray(true_row) > 0.5
    marks = []
    for number in np.argsort(-probability_row, kind="stable"):
        if predicted[number]:
            kind = "predicted" if truth is None else ("right" if truth[number] else "wrong")
        elif truth is not None and truth[number]:
            kind = "missed"
        else:
            continue
        marks.append((class_names[number], float(probability_row[number]), kind))
    return sorted(marks, key=lambda mark: mark[2] == "missed")
