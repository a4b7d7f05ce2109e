"""How good are a model's predictions: accuracy, loss, the per-class
report, the confusion matrix, ROC curves and their AUCs, and the
calibration summary, from true labels and probabilities.

`Evaluation` holds the predictions on labelled images (what inference.py
produces) and computes everything metrics.json and the figures report.
Plain NumPy and scikit-learn in, plain values out: nothing here loads a
model or reads an image.
"""

import dataclasses

import numpy as np

import calibration
import label_metrics
import tasks
import theme

@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Predictions on labelled images (unreadable files left out), and the
    metrics and figures' data computed from them."""

    paths: tuple
    true_labels: np.ndarray
    probabilities: np.ndarray
    class_names: tuple
    image_size: int
    description: str
    skipped: tuple = ()  # audit.SkippedFile
    readers: dict | None = None
    temperature: float | None = None  # the model's (None: it has no temperature layer)
    tta: int = 1  # versions averaged per image (1: no test-time augmentation)
    task: tasks.Task = tasks.SINGLE_LABEL  # the model's kind of task
    # Multi-label: each label's threshold (label_metrics.thresholds_of);
    # None: 0.5 for every label.
    thresholds: np.ndarray | None = None

    def without(self, paths, description):
        """The same evaluation with the images of `paths` left out (those of
        them it has), described as `description`."""
        left_out = set(paths)
        keep = np.array([path not in left_out for path in self.paths], dtype=bool)
        return dataclasses.replace(
            self,
            paths=tuple(path for path, kept in zip(self.paths, keep) if kept),
            true_labels=self.true_labels[keep],
            probabilities=self.probabilities[keep],
            description=description,
        )

    def scored_without(self, paths, description):
        """(how many of its images `paths` leaves out, the evaluation
        without them, its metrics()), or None when it leaves out none, or
        all."""
        rest = self.without(paths, description)
        left_out = len(self.paths) - len(rest.paths)
        if not left_out or not len(rest.paths):
            return None
        return left_out, rest, rest.metrics()

    @property
    def predicted(self):
        """The predicted labels, by the task's rule: the most probable class
        (N,), or for a multi-label model each label at or above its
        threshold (N, labels) booleans."""
        return self.task.predicted(self.probabilities, self.label_thresholds)

    @property
    def label_thresholds(self):
        """Multi-label: the threshold of each label (0.5 when none was
        given); None for one class per image."""
        if not self.task.multi_label:
            return None
        return np.full(len(self.class_names), 0.5) if self.thresholds is None else np.asarray(self.thresholds)

    def metrics(self):
        """evaluation_metrics (label_metrics' for a multi-label model), the
        baselines, the calibration summary and the number of test-time
        versions: what metrics.json holds."""
        if self.task.multi_label:
            scores = label_metrics.evaluation_metrics(
                self.true_labels, self.probabilities, self.class_names, self.label_thresholds)
            base = label_metrics.baselines(self.true_labels, self.class_names)
        else:
            scores = evaluation_metrics(self.true_labels, self.probabilities, self.class_names)
            base = baselines(self.true_labels, self.class_names)
        return {**scores, "baselines": base, "calibration": self.calibration(), "tta": self.tta}

    def _binary(self):
        """(labels, probabilities) for calibration.py: a multi-label
        model's (image, label) pairs as yes/no predictions
        (label_metrics.as_binary), else as they are."""
        if self.task.multi_label:
            return label_metrics.as_binary(self.true_labels, self.probabilities)
        return self.true_labels, self.probabilities

    def calibration(self):
        summary = calibration.calibration_summary(*self._binary(), self.temperature, averaged=self.tta > 1)
        return {**summary, "nll": without_negative_zero(summary["nll"])}

    @property
    def reliability_units(self):
        """What reliability()'s bins count, in words."""
        return "yes/no answers (one per image and label)" if self.task.multi_label else "images"

    def reliability(self):
        return calibration.reliability_bins(*self._binary())

    def top_losses(self, count=None):
        """Positions of the most confidently wrong images, worst first (a
        multi-label image by its summed binary cross-entropy)."""
        if self.task.multi_label:
            losses = label_metrics.image_losses(self.true_labels, self.probabilities)
            wrong = np.flatnonzero((self.predicted != (np.asarray(self.true_labels) > 0.5)).any(axis=1))
            order = wrong[np.argsort(-losses[wrong], kind="stable")]
            return order if count is None else order[:count]
        return calibration.top_losses(self.true_labels, self.probabilities, count)

    def most_confused(self, limit=10):
        if self.task.multi_label:
            return label_metrics.most_confused(
                self.true_labels, self.probabilities, self.class_names, self.label_thresholds, limit)
        return calibration.most_confused(self.confusion_matrix(), self.class_names, limit)

    def headline(self, scores):
        """The one line that says how good it is, from its metrics()."""
        if self.task.multi_label:
            return label_metrics.headline(scores)
        return (f"accuracy {theme.score(scores['accuracy'])} (balanced {theme.score(scores['balanced_accuracy'])}), "
                f"loss {theme.score(scores['loss'])} on {scores['num_samples']} images")

    def report(self):
        return classification_metrics(self.true_labels, self.probabilities, self.class_names)

    def report_text(self):
        return classification_report_text(self.true_labels, self.probabilities, self.class_names)

    def confusion_matrix(self):
        return confusion_counts(self.true_labels, self.probabilities, len(self.class_names))

    def roc(self):
        """ROC curves and AUCs: one-vs-rest per class (roc_analysis), or
        per label for a multi-label model (label_metrics.roc_curves)."""
        if self.task.multi_label:
            return label_metrics.roc_curves(self.true_labels, self.probabilities, self.class_names)
        return roc_analysis(self.true_labels, self.probabilities, self.class_names)

    def confusion_grids(self):
        """Multi-label: each label's 2x2 table at its threshold
        (label_metrics.confusion_grids)."""
        return label_metrics.confusion_grids(self.true_labels, self.probabilities, self.label_thresholds)

    def precision_recall(self):
        """Multi-label: each label's precision-recall curve, with its
        threshold's point (label_metrics.precision_recall_curves)."""
        return label_metrics.precision_recall_curves(
            self.true_labels, self.probabilities, self.class_names, self.label_thresholds)



# ---------------------------------------------------------------- metrics


def without_negative_zero(value):
    """`value`, with -0.0 made 0.0: a loss of images all predicted with
    certainty is -mean(log 1) = -0.0, which would print as "-0.000"."""
    return value + 0.0  # -0.0 + 0.0 is 0.0; every other number is unchanged


def classification_metrics(true_labels, probabilities, class_names):
    """Accuracy, cross-entropy loss and scikit-learn's per-class report.

    Returns a JSON-ready dict: accuracy, loss, num_samples, per_class
    {name: precision/recall/f1/support}, macro_avg and weighted_avg.
    """
    from sklearn.metrics import classification_report

    predicted = probabilities.argmax(axis=1)
    picked = probabilities[np.arange(len(true_labels)), true_labels]
    report = classification_report(
        true_labels,
        predicted,
        labels=np.arange(len(class_names)),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )

    def rename(row):
        return {
            "precision": row["precision"],
            "recall": row["recall"],
            "f1": row["f1-score"],
            "support": int(row["support"]),
        }

    return {
        "accuracy": float(np.mean(predicted == true_labels)),
        "balanced_accuracy": balanced_accuracy(true_labels, predicted),
        # The same clipping as Keras' cross-entropy.
        "loss": without_negative_zero(float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))),
        "num_samples": int(len(true_labels)),
        "per_class": {name: rename(report[name]) for name in class_names},
        "macro_avg": rename(report["macro avg"]),
        "weighted_avg": rename(report["weighted avg"]),
    }


def balanced_accuracy(true_labels, predicted):
    """The mean recall of the classes present in `true_labels` (scikit-learn's
    balanced_accuracy_score): every class counts the same however many
    images it has; NaN without labels."""
    true_labels, predicted = np.asarray(true_labels), np.asarray(predicted)
    recalls = [np.mean(predicted[true_labels == number] == number) for number in np.unique(true_labels)]
    return float(np.mean(recalls)) if recalls else float("nan")


def imbalance_text(true_labels, num_classes):
    """How imbalanced a set of labels is: 'classes balanced, 20 images each'
    or 'imbalanced: 5 to 50 images a class (10x)'."""
    counts = np.bincount(np.asarray(true_labels, dtype=int), minlength=num_classes)
    present = counts[counts > 0]
    if not len(present):
        return "no images"
    low, high = int(present.min()), int(present.max())
    if low == high:
        return f"classes balanced, {low} images each"
    return f"{'imbalanced' if high > 1.5 * low else 'about balanced'}: {low} to {high} images a class ({high / low:.1f}x)"


def classification_report_text(true_labels, probabilities, class_names):
    """scikit-learn's text classification report (3 digits), every class
    listed even when absent from the labels."""
    from sklearn.metrics import classification_report

    text = classification_report(
        true_labels,
        probabilities.argmax(axis=1),
        labels=np.arange(len(class_names)),
        target_names=list(class_names),
        digits=3,
        zero_division=0,
    )
    balanced = balanced_accuracy(true_labels, probabilities.argmax(axis=1))
    return (f"{text}\nbalanced accuracy {theme.score(balanced)} (the mean recall of the classes; "
            f"{imbalance_text(true_labels, len(class_names))})\n")


def confusion_counts(true_labels, probabilities, num_classes):
    """(num_classes, num_classes) int array: rows true, columns predicted."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(
        true_labels, probabilities.argmax(axis=1), labels=np.arange(num_classes)
    )


def roc_analysis(true_labels, probabilities, class_names):
    """One-vs-rest ROC curves and their AUCs.

    Returns {"per_class": {name: {"fpr", "tpr", "auc"} or None}, "micro",
    "macro" (the same form, or None), "absent": [names], "binary": bool}.
    A class with no image in `true_labels` (or with every image) has no ROC:
    its entry is None and it is listed in "absent", never an error. Macro AUC
    is the mean of the per-class AUCs (scikit-learn's definition); its curve
    is the mean TPR on the union of the per-class FPR points. One-vs-rest is
    each class as a yes/no question, so the curves are label_metrics'
    per-label ones of the one-hot labels; two classes have no averages.
    """
    true_labels = np.asarray(true_labels, dtype=np.int64)
    num_classes = len(class_names)
    one_hot = np.eye(num_classes, dtype=bool)[true_labels]
    roc = label_metrics.roc_curves(one_hot, probabilities, class_names)
    if num_classes <= 2:
        roc.update(micro=None, macro=None)
    return {**roc, "binary": num_classes == 2}


def evaluation_metrics(true_labels, probabilities, class_names):
    """`classification_metrics` plus ROC AUC (per class, micro, macro) and
    the confusion matrix, JSON-ready (null for an AUC that is undefined)."""
    metrics = classification_metrics(true_labels, probabilities, class_names)
    roc = roc_analysis(true_labels, probabilities, class_names)

    def area(curve):
        return None if curve is None else curve["auc"]

    metrics["roc_auc"] = {
        "per_class": {name: area(curve) for name, curve in roc["per_class"].items()},
        "micro": area(roc["micro"]),
        "macro": area(roc["macro"]),
        "absent_classes": roc["absent"],
    }
    metrics["confusion_matrix"] = {
        "rows": "true class",
        "columns": "predicted class",
        "labels": list(class_names),
        "counts": confusion_counts(true_labels, probabilities, len(class_names)).tolist(),
    }
    return metrics


def test_reliability(evaluation, scores):
    """What a run saves beside its model about its test evaluation
    (artifacts.TEST_RELIABILITY_FILE), from an Evaluation and its
    `metrics()` scores: the reliability bins the trust sentences come from
    (calibration.saved_bins) and the scores the model card shows."""
    summary = scores["calibration"]
    return {
        "evaluated": evaluation.description,
        "images": scores["num_samples"],
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_avg"]["f1"],
        "ece": summary["ece"],
        "temperature": summary["temperature"],
        "bins": calibration.saved_bins(evaluation.reliability()),
    }


def calibration_line(summary, at_chance=False):
    """How far the confidences are from the truth, in plain words, for the
    printed summary: 'calibration error (ECE) 3.1%: its confidence is
    3.1 points off its accuracy on average (12.4% before temperature
    scaling softened it, T = 1.84) · Brier 0.211 · NLL 0.402'; when the
    scaling made these images worse, that and the way out; with
    `at_chance` (the model does no better than a constant answer,
    `at_chance`), that calibration means nothing for it: a model at
    chance scores a low ECE by saying about 1/classes for every image."""
    temperature = summary["temperature"]
    ece = theme.percent(summary["ece"])
    line = f"calibration error (ECE) {ece}: its confidence is {ece[:-1]} points off its accuracy on average"
    if temperature is None:
        line += " (no temperature to read: an export, another framework's model or one saved before calibration)"
    elif temperature == 1.0:
        line += " (not calibrated, T = 1)"
    elif summary["ece_uncalibrated"] is None:
        line += f" (temperature T = {temperature:.3g})"
    else:
        line += f" ({theme.percent(summary['ece_uncalibrated'])} before temperature scaling, T = {temperature:.3g})"
    line += f" · Brier {theme.score(summary['brier'])} · NLL {theme.score(summary['nll'])}"
    if at_chance:
        return line + (
            "; meaningless here: the model does no better than a constant answer, so its confidences "
            "say nothing about its answers, whatever this number (a model at chance can score a low ECE by "
            "giving every image about 1/classes)"
        )
    if temperature not in (None, 1.0) and summary["ece_uncalibrated"] is not None and (
        summary["ece"] > summary["ece_uncalibrated"]
    ):
        line += (
            "; the temperature (fitted on the validation split) made the confidences on these images worse, "
            "not better: with few validation images it is noisy, and --calibrate 0 keeps the raw ones"
        )
    return line


def print_most_confused(evaluation, limit=10):
    """An Evaluation's most confused class pairs (a multi-label model's
    most often missed or wrongly added labels), as main.py and evaluate.py
    print them."""
    if evaluation.task.multi_label:
        print("    labels most often wrong (test images):")
        lines = label_metrics.confused_lines(evaluation.most_confused(limit=limit))
    else:
        print("    most confused (true -> predicted, images):")
        lines = calibration.confused_lines(evaluation.most_confused(limit=limit))
    for line in lines:
        print(f"      {line}")


def format_auc(roc_auc):
    """The macro AUC, or the binary one, as text."""
    value = roc_auc["macro"]
    if value is None:
        values = [auc for auc in roc_auc["per_class"].values() if auc is not None]
        value = values[0] if values else None
    return "n/a" if value is None else theme.score(value)


def baselines(true_labels, class_names):
    """What a model must beat on these images: always answering their most
    common class (the majority-class baseline, the best constant answer
    here) and guessing uniformly (chance)."""
    counts = np.bincount(np.asarray(true_labels, dtype=np.int64), minlength=len(class_names))
    majority = int(np.argmax(counts))
    return {
        "majority_class": class_names[majority],
        "majority_accuracy": float(counts[majority] / max(1, counts.sum())),
        "chance": 1.0 / len(class_names),
    }


def baseline_line(scores):
    """'accuracy 0.9665 · majority-class baseline 0.1004 (always "1") · chance 0.1000'
    (label_metrics' line for a multi-label model)."""
    if scores.get("task") == "multi_label":
        return label_metrics.baseline_line(scores)
    base = scores["baselines"]
    return (
        f"accuracy {theme.score(scores['accuracy'])} · majority-class baseline {theme.score(base['majority_accuracy'])} "
        f"(always \"{base['majority_class']}\") · chance {theme.score(base['chance'])}"
    )


def at_chance(scores):
    """Whether the model does no better than a constant answer on these
    images (what `baseline_warning` warns of): its calibration then means
    nothing."""
    if scores.get("task") == "multi_label":
        return label_metrics.baseline_warning(scores) is not None
    return scores["accuracy"] <= scores["baselines"]["majority_accuracy"]


def baseline_warning(scores):
    """A warning that cannot be missed when the model does no better than
    always answering the most common class (label_metrics' for a
    multi-label model), else None."""
    if scores.get("task") == "multi_label":
        return label_metrics.baseline_warning(scores)
    base = scores["baselines"]
    if not at_chance(scores):
        return None
    return (
        f"WARNING: the model is no better than always answering \"{base['majority_class']}\": accuracy "
        f"{theme.score(scores['accuracy'])} vs {theme.score(base['majority_accuracy'])} for that constant answer on these "
        f"{scores['num_samples']} images. It has not learned to tell the classes apart: train longer "
        "(--epochs, --patience), use pretrained weights, or add images."
    )
