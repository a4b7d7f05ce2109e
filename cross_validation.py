"""How good is training on this folder, give or take: k-fold cross-validation
(one run per fold, resumable, tied by one id), its summary with error bars,
the out-of-fold predictions and the images whose label the models doubt.

    python main.py --image_dir DIR --folds 5 [--group_by REGEX] [--backbone a,b]
    python evaluate.py --cross_validation [ID]      # re-score, write the summary again

The test split stays out of every fold; the other images (train and val
pooled) are split by splits.assign_folds. Fold k is an ordinary run whose
validation split is fold k: runs.py plans the fold runs and opens each the
way it opens any run, and main.py trains them. What ties the folds
together lives in ARTIFACTS_DIR/cross_validation/<id>/ (cross_validation.json:
the options and each fold's run; folds.csv: each image's fold and group),
kept by `CrossValidation`; the summary goes to
RESULTS_DIR/cross_validation/<id>/.
"""

import dataclasses
import os

import numpy as np

import artifacts
import audit
import compare
import config
import figures
import inference
import label_metrics
import metrics
import report
import resume
import safe_text
import splits
import visualize
from errors import UserError

FOLDER = "cross_validation"  # ARTIFACTS_DIR/<FOLDER>/<id>/ and RESULTS_DIR/<FOLDER>/<id>/
STATE_FILE = "cross_validation.json"
FOLDS_FILE = "folds.csv"
FOLDS_HEADER = ("path", "class", "group", "fold")  # fold: 1..K, or "test"
# The summary's metrics: (key, label, lower is better).
METRICS = (
    ("accuracy", "accuracy", False),
    ("macro_f1", "macro F1", False),
    ("macro_auc", "macro AUC", False),
    ("log_loss", "log loss", True),
    ("ece", "ECE", True),
)
# A multi-label cross-validation's metrics (label_metrics' scores).
LABEL_METRICS = (
    ("micro_f1", "micro F1", False),
    ("macro_f1", "macro F1", False),
    ("mAP", "mAP", False),
    ("subset_accuracy", "exact-set accuracy", False),
    ("log_loss", "log loss", True),
    ("ece", "ECE", True),
)
# The metrics the printed summary leads with, of each kind.
HEADLINE = {False: ("accuracy", "macro F1"), True: ("micro F1", "mAP")}
SUSPECT_GALLERY = (4, 6)  # rows, cols of the suspects' gallery
SUSPECTS_ON_PAGE = 20  # multi-label: the most doubted (image, label) pairs listed on report.html


def metrics_of(task):
    """The summary's metrics (key, label, lower is better) for a tasks.Task."""
    return LABEL_METRICS if task.multi_label else METRICS


# ---------------------------------------------------------------- label errors


def class_thresholds(labels, probabilities):
    """Confident learning's per-class thresholds (Northcutt et al., 2021):
    t_j, the mean out-of-fold probability of class j over the images
    labelled j."""
    labels = np.asarray(labels)
    return np.array([
        probabilities[labels == j, j].mean() if np.any(labels == j) else 1.0
        for j in range(probabilities.shape[1])
    ])


def label_suspects(labels, probabilities):
    """The images whose given label the out-of-fold models doubt.

    An image labelled i is suspect when some other class j has
    p_j > t_j (strictly: a model at chance, all probabilities equal, doubts nothing) (class_thresholds), and its likely class is the most
    probable such j (the off-diagonal of the confident joint). Returns
    (ranking: every image's position, the most doubtful first, by the
    probability of its given label minus that class's threshold;
    suspect: bool per image; likely: class number per image)."""
    labels = np.asarray(labels)
    thresholds = class_thresholds(labels, probabilities)
    above = probabilities > thresholds[None, :]
    above[np.arange(len(labels)), labels] = False
    suspect = above.any(axis=1)
    likely = np.where(suspect, np.where(above, probabilities, -1.0).argmax(axis=1), labels)
    margin = probabilities[np.arange(len(labels)), labels] - thresholds[labels]
    # Suspects first, then the rest, each by how far below its class's typical confidence.
    ranking = np.lexsort((margin, ~suspect))
    return ranking, suspect, likely


def label_thresholds(true_labels, probabilities):
    """Confident learning's thresholds for multi-label predictions, each
    label a yes/no question: (t_yes, t_no), each (labels,): t_yes the mean
    out-of-fold probability over the pairs given 1, t_no the mean of
    1 - probability over the pairs given 0 (1.0 where a label has no such
    pair: it doubts nothing)."""
    truth = np.asarray(true_labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    given = truth.sum(axis=0)
    t_yes = np.where(given > 0, (probabilities * truth).sum(axis=0) / np.maximum(given, 1), 1.0)
    not_given = (~truth).sum(axis=0)
    t_no = np.where(not_given > 0, ((1 - probabilities) * ~truth).sum(axis=0) / np.maximum(not_given, 1), 1.0)
    return t_yes, t_no


def label_pair_suspects(true_labels, probabilities):
    """The (image, label) pairs whose given value the out-of-fold models
    doubt: confident learning (Northcutt et al., 2021) on each label as a
    yes/no question, as cleanlab treats multi-label data. A pair given 0
    is suspect when its probability is above t_yes (label_thresholds) and
    the "yes" is the more likely answer (probability > 0.5 or 1 -
    probability below t_no); a pair given 1 likewise when 1 - probability
    is above t_no. Strict: a model at chance doubts nothing.

    Returns (order: (image, label) index pairs (M, 2), the suspects first,
    each group by self-confidence, the probability of its given value,
    lowest first; suspect: (N, L) booleans; self_confidence: (N, L))."""
    truth = np.asarray(true_labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    t_yes, t_no = label_thresholds(truth, probabilities)
    yes, no = probabilities, 1.0 - probabilities
    doubt_no = ~truth & (yes > t_yes[None, :]) & ((no < t_no[None, :]) | (yes > no))
    doubt_yes = truth & (no > t_no[None, :]) & ((yes < t_yes[None, :]) | (no > yes))
    suspect = doubt_no | doubt_yes
    self_confidence = np.where(truth, yes, no)
    flat = np.lexsort((self_confidence.ravel(), ~suspect.ravel()))
    order = np.stack(np.unravel_index(flat, truth.shape), axis=1)
    return order, suspect, self_confidence


# ---------------------------------------------------------------- the summary


def fold_scores(evaluation):
    """The summary's metrics of one Evaluation (metrics_of its task)."""
    scores = evaluation.metrics()
    if evaluation.task.multi_label:
        return {
            "micro_f1": scores["micro_avg"]["f1"],
            "macro_f1": scores["macro_avg"]["f1"],
            "mAP": scores["mAP"],
            "subset_accuracy": scores["subset_accuracy"],
            "log_loss": scores["loss"],
            "ece": scores["calibration"]["ece"],
        }
    return {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_avg"]["f1"],
        "macro_auc": compare.macro_auc(scores["roc_auc"]),
        "log_loss": scores["loss"],
        "ece": scores["calibration"]["ece"],
    }


def spread(values):
    """(mean, standard deviation, 95% interval low, high) of per-fold
    values, the interval from Student's t with K-1 degrees of freedom."""
    from scipy import stats

    values = np.asarray([value for value in values if value is not None], dtype=float)
    if not len(values):
        return None, None, None, None
    mean = float(values.mean())
    if len(values) < 2:
        return mean, None, None, None
    deviation = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * deviation / np.sqrt(len(values))
    return mean, deviation, mean - half, mean + half


def summary_rows(per_fold, metric_list=METRICS):
    """One row per backbone, split ("validation folds", "test split") and
    metric of `metric_list` (metrics_of): mean, std and the 95% interval
    over the folds. `per_fold` is fold_table's rows."""
    rows = []
    keys = sorted({(row["backbone"], row["split"]) for row in per_fold}, key=lambda key: (key[0], key[1] != "val"))
    for backbone, split in keys:
        chosen = [row for row in per_fold if row["backbone"] == backbone and row["split"] == split]
        for key, label, _ in metric_list:
            mean, deviation, low, high = spread(row[key] for row in chosen)
            rows.append({"backbone": backbone, "split": split, "metric": label, "folds": len(chosen),
                         "mean": mean, "std": deviation, "ci95_low": low, "ci95_high": high})
    return rows


def shown(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def markdown_row(cells):
    """One markdown table row, each cell escaped (safe_text.markdown): a
    backbone or run name never adds a column, a tag or a link."""
    return "| " + " | ".join(safe_text.markdown(cell) for cell in cells) + " |"


def markdown_summary(rows, per_fold, chosen, notes, metric_list=METRICS):
    """summary.md: the notes, the run chosen to publish, the summary table and the
    per-fold table (`metric_list`: metrics_of), every text escaped for
    markdown."""
    lines = ["| backbone | split | metric | mean ± std | 95% interval (t) | folds |", "|---|---|---|---|---|---:|"]
    for row in rows:
        interval = f"{shown(row['ci95_low'])} – {shown(row['ci95_high'])}" if row["std"] is not None else ""
        lines.append(markdown_row([row["backbone"], row["split"], row["metric"],
                                   f"{shown(row['mean'])} ± {shown(row['std'])}", interval, row["folds"]]))
    lines += ["", markdown_row(["backbone", "fold", "run", "split", "images", *(label for _, label, _ in metric_list)]),
              "|---|---:|---|---|---:|" + "---:|" * len(metric_list)]
    for row in per_fold:
        lines.append(markdown_row([row["backbone"], row["fold"], row["run"], row["split"], row["images"],
                                   *(shown(row[key]) for key, _, _ in metric_list)]))
    notes = [safe_text.markdown(note) for note in notes]
    return "\n".join(["# Cross-validation", "", *notes, "", f"Chosen to publish (main.py --publish decides): {safe_text.markdown(chosen)}", "", *lines, ""])


def report_sections(rows, per_fold, chosen, notes, drawn, lines, options, metric_list=METRICS, suspects=()):
    """The sections of the summary's report.html, from what summary.md says
    (`rows`, `per_fold`, `chosen`, `notes`, `metric_list`), the figures
    `drawn` beside it, the suspects' `lines`, tables of them (`suspects`:
    (heading, (header, rows)) each) and the cross-validation's
    `options`."""
    summary = (
        ("backbone", "split", "metric", "mean ± std", "95% interval (t)", "folds"),
        [(row["backbone"], row["split"], row["metric"], f"{shown(row['mean'])} ± {shown(row['std'])}",
          f"{shown(row['ci95_low'])} – {shown(row['ci95_high'])}" if row["std"] is not None else "", row["folds"])
         for row in rows],
    )
    folds = (
        ("backbone", "fold", "run", "split", "images", *(label for _, label, _ in metric_list)),
        [(row["backbone"], row["fold"], row["run"], row["split"], row["images"],
          *("" if row[key] is None else row[key] for key, _, _ in metric_list)) for row in per_fold],
    )
    return [
        report.Section("The cross-validation", lines=(*notes, f"Chosen to publish (main.py --publish decides): {chosen}")),
        report.Section("Over the folds", table=summary),
        report.Section("Per fold", table=folds),
        report.Section("Figures", figures=tuple(drawn)),
        report.Section("Suspected label errors", lines=tuple(line.strip() for line in lines)),
        *(report.Section(heading, table=table) for heading, table in suspects),
        report.options_section(config.saved_options(options), "main"),
    ]


# ---------------------------------------------------------------- state


@dataclasses.dataclass
class CrossValidation:
    """One cross-validation: its id, options, folds and each fold's run
    ({backbone: [run id or None per fold]})."""

    id: str
    options: config.Config
    backbones: tuple
    fold_of: dict  # {path: fold, 0-based}, the non-test images
    runs: dict
    status: str = "running"

    @property
    def folds(self):
        return self.options.folds

    def folder(self):
        return os.path.join(self.options.artifacts_dir, FOLDER, self.id)

    def results_folder(self):
        return os.path.join(self.options.results_dir, FOLDER, self.id)

    def save(self):
        artifacts.write_json(os.path.join(self.folder(), STATE_FILE), {
            "id": self.id, "status": self.status, "folds": self.folds, "backbones": list(self.backbones),
            "runs": self.runs, "options": config.saved_options(self.options),
        })

    def folds_path(self):
        return os.path.join(self.folder(), FOLDS_FILE)

    def write_folds(self, index):
        """folds.csv of `index` (this cross-validation's folds), then the state."""
        artifacts.write_csv(self.folds_path(), folds_rows(index, self.fold_of))
        self.save()

    def same_folds(self, index):
        """Whether `index`, split into this cross-validation's folds, is what
        its folds.csv holds (the same images, classes, groups and folds)."""
        return read_folds(self.folder()) == folds_rows(index, self.fold_of)

    def run_folder(self, name, fold):
        """The run folder of fold `fold` (0-based) of backbone `name`, or None."""
        run_id = self.runs[name][fold]
        return os.path.join(artifacts.runs_folder(self.options.artifacts_dir), run_id) if run_id else None


def folds_rows(index, fold_of):
    """folds.csv: every image's class, group and fold (1..K, or test)."""
    return [FOLDS_HEADER] + [
        (sample.path, sample.label, sample.group,
         "test" if sample.split == "test" else str(fold_of[sample.path] + 1))
        for sample in index.samples
    ]


def read_folds(folder):
    return [tuple(row) for row in artifacts.read_csv(os.path.join(folder, FOLDS_FILE))]


def ids(artifacts_dir):
    parent = os.path.join(artifacts_dir, FOLDER)
    return sorted(entry.name for entry in os.scandir(parent) if entry.is_dir()) if os.path.isdir(parent) else []


def read_state(artifacts_dir, wanted, unfinished):
    """The saved state (dict) of cross-validation `wanted` ("last": the
    newest, among the unfinished ones when `unfinished`). Raises
    UserError."""
    known = ids(artifacts_dir)
    candidates = known if wanted == "last" else [wanted]
    for name in reversed(candidates):
        path = os.path.join(artifacts_dir, FOLDER, name, STATE_FILE)
        if not os.path.isfile(path):
            if wanted != "last":
                raise UserError(f"no cross-validation {name} in {os.path.join(artifacts_dir, FOLDER)} "
                                f"(there: {', '.join(known[-5:]) or 'none'}). Received: {name}")
            continue
        state = artifacts.read_json(path)
        if unfinished and state.get("status") == "finished":
            if wanted != "last":
                raise UserError(f"--resume: cross-validation {name} finished; nothing to resume")
            continue
        if not unfinished and state.get("status") != "finished":
            if wanted != "last":
                raise UserError(f"cross-validation {name} is not finished: continue it with main.py --resume {name}")
            continue
        return state
    raise UserError(f"no {'unfinished' if unfinished else 'finished'} cross-validation in "
                    f"{os.path.join(artifacts_dir, FOLDER)}")


def wants_folds(artifacts_dir, resume_id, folds):
    """Whether main.py trains folds: --folds K, or a --resume that continues
    a cross-validation: it names one, or names nothing ("last") and the
    newest unfinished one is newer than the last interrupted run outside it
    (or --folds is given). Raises UserError for --folds with a plain run."""
    if not resume_id:
        return bool(folds)
    if resume_id in ids(artifacts_dir):
        return True
    try:
        state = read_state(artifacts_dir, "last", unfinished=True)
    except UserError:
        state = None
    if resume_id != "last":
        inside = state and any(resume_id in runs for runs in state["runs"].values())
        if folds and not inside:
            raise UserError(f"--folds continues a cross-validation, and run {resume_id} is a plain run: "
                            "leave --folds out to resume it")
        return bool(inside)
    if state is None:
        if folds:
            raise UserError(f"--resume --folds: no unfinished cross-validation in "
                            f"{os.path.join(artifacts_dir, FOLDER)}")
        return False
    fold_runs = {run for runs in state["runs"].values() for run in runs if run}
    interrupted = [run for run in artifacts.run_ids(artifacts_dir)
                   if run not in fold_runs and resume.read_progress(
                       os.path.join(artifacts.runs_folder(artifacts_dir), run)).status == "interrupted"]
    return bool(folds) or not interrupted or interrupted[-1] < state["id"]


# ---------------------------------------------------------------- the folds


def opening_lines(index, fold_of, warnings):
    """What a cross-validation says of its dataset and folds when it opens:
    the audit's summary, the val split pooled, the folds' `warnings` and
    groups."""
    lines = audit.summary_lines(index, where="each fold's audit.json")
    if any(sample.split == "val" for sample in index.samples) and index.layout != "flat":
        lines.append("the val split is pooled with train into the folds; the test split stays out of every fold")
    return [*lines, *warnings, *splits.group_lines(index, fold_of)]


def is_finished(folder):
    """Whether a fold's run finished (calibrated and published once): its
    run config says so and its model is there."""
    return artifacts.is_finished(folder, artifacts.run_config_or_empty(folder))


def fold_evaluations(cv, index, batch_size):
    """{backbone: [(run id, Evaluation of its validation fold, Evaluation of
    the test split)] per fold}: each fold's published-to-be model loaded
    with its companions and scored again."""
    scored = {}
    for name in cv.backbones:
        scored[name] = []
        for fold, run_id in enumerate(cv.runs[name]):
            folder = cv.run_folder(name, fold)
            if not folder or not is_finished(folder):
                raise UserError(f"cross-validation {cv.id}: fold {fold + 1} ({name}) has no finished run; "
                                f"continue it with main.py --resume {cv.id}")
            trained = inference.load_trained_model(os.path.join(folder, artifacts.MODEL_FILE))
            this = splits.fold_index(index, cv.fold_of, fold)
            pair = []
            for split, description in (("val", f"validation fold {fold + 1}"), ("test", "test split")):
                paths, labels = this.split(split)
                images = inference.LabelledImages(paths=paths, labels=labels, description=description)
                pair.append(compare.with_saved_thresholds(
                    trained, inference.evaluate_images(trained, images, batch_size, index.readers)))
            scored[name].append((run_id, *pair))
    return scored


def fold_table(scored):
    """Per-fold rows: backbone, fold, run, split (val or test), images and the metrics."""
    return [
        {"backbone": name, "fold": fold, "run": run_id, "split": split, "images": len(evaluation.paths),
         **fold_scores(evaluation)}
        for name, folds in scored.items()
        for fold, (run_id, val, test) in enumerate(folds, start=1)
        for split, evaluation in (("val", val), ("test", test))
    ]


def suspects_caveat(evaluation):
    """[a line] when the out-of-fold predictions do not beat always
    answering the largest class (multi-label: the constant answer's
    micro-F1, or the prevalence's mAP): such models doubt most labels, and
    their list of suspects says little about the labels. Else []."""
    if evaluation.task.multi_label:
        scores = evaluation.metrics()
        if label_metrics.baseline_warning(scores) is None:
            return []
        return [f"    the out-of-fold predictions are no better than a constant answer ({label_metrics.baseline_line(scores)}): "
                "these models have not learned the labels, so their suspects say little about the labels; train longer first"]
    accuracy = float(np.mean(np.argmax(evaluation.probabilities, axis=1) == evaluation.true_labels))
    base = metrics.baselines(evaluation.true_labels, evaluation.class_names)
    if accuracy > base["majority_accuracy"]:
        return []
    return [f"    the out-of-fold accuracy, {accuracy:.3f}, is no better than always answering "
            f"\"{base['majority_class']}\" ({base['majority_accuracy']:.3f}): these models have not learned "
            "the classes, so their suspects say little about the labels; train longer first"]


def out_of_fold(cv, folds):
    """One backbone's folds [(run, val Evaluation, test Evaluation)] as one
    metrics.Evaluation of every non-test image (each predicted by the model
    that never trained on it) and each image's fold."""
    first = folds[0][1]
    evaluation = dataclasses.replace(
        first,
        paths=tuple(path for _, val, _ in folds for path in val.paths),
        true_labels=np.concatenate([val.true_labels for _, val, _ in folds]),
        probabilities=np.concatenate([val.probabilities for _, val, _ in folds]),
        description="out-of-fold predictions, every non-test image",
        skipped=(),
        # Multi-label: each fold's model has its own thresholds; the pooled
        # predictions decide with their mean.
        thresholds=np.mean([val.label_thresholds for _, val, _ in folds], axis=0)
        if first.task.multi_label else first.thresholds,
    )
    fold_numbers = [fold for fold, (_, val, _) in enumerate(folds, start=1) for _ in val.paths]
    return evaluation, fold_numbers


def choose_published(cv, scored):
    """The fold run with the lowest validation-fold log loss: chosen by
    validation data only, never by the test split. Returns (run id, text)."""
    candidates = [(val.metrics()["loss"], run_id, name, fold)
                  for name, folds in scored.items() for fold, (run_id, val, _) in enumerate(folds, start=1)]
    loss, run_id, name, fold = min(candidates)
    return run_id, (f"run {run_id} (fold {fold}{', ' + name if len(scored) > 1 else ''}): the lowest "
                    f"validation-fold log loss, {loss:.4f}; chosen on validation data only")


# ---------------------------------------------------------------- writing it


def write_label_suspects(evaluation, fold_numbers, root, folder):
    """oof_predictions.csv (every non-test image) and label_suspects.csv
    (the confident-learning suspects, most doubtful first), and the
    suspects' gallery. Returns (figure path, number of suspects)."""
    labels, probabilities, names = evaluation.true_labels, evaluation.probabilities, evaluation.class_names
    ranking, suspect, likely = label_suspects(labels, probabilities)
    given = probabilities[np.arange(len(labels)), labels]
    thresholds = class_thresholds(labels, probabilities)
    relative = [os.path.relpath(path, root) for path in evaluation.paths]
    header = ("path", "given_label", "predicted", "probability_of_given", "fold")
    artifacts.write_csv(os.path.join(folder, "oof_predictions.csv"), [header] + [
        (relative[i], names[labels[i]], names[int(probabilities[i].argmax())], f"{given[i]:.6f}", fold_numbers[i])
        for i in range(len(labels))
    ])
    chosen = [int(i) for i in ranking if suspect[i]]
    artifacts.write_csv(os.path.join(folder, "label_suspects.csv"), [
        ("rank", *header[:2], "likely_label", "probability_of_likely", "probability_of_given",
         "threshold_of_given", "fold")
    ] + [
        (rank, relative[i], names[labels[i]], names[likely[i]], f"{probabilities[i, likely[i]]:.6f}",
         f"{given[i]:.6f}", f"{thresholds[labels[i]]:.6f}", fold_numbers[i])
        for rank, i in enumerate(chosen, start=1)
    ])
    rows, cols = SUSPECT_GALLERY
    shown_ones = chosen[: rows * cols]
    captions = [f"p(given) {given[i]:.0%} · fold {fold_numbers[i]}" for i in range(len(labels))]
    items = figures.gallery_items(evaluation.paths, labels, probabilities, names, evaluation.image_size,
                                  shown_ones, captions=captions, readers=evaluation.readers)
    path = visualize.plot_prediction_gallery(
        items, rows, cols, os.path.join(folder, "label_suspects.png"), title="Suspected label errors",
        subtitle=f"{len(shown_ones)} of {len(chosen)} suspects of {len(labels)} out-of-fold images, most doubtful "
                 "first · true: the label given in the folder · pred: what the model that never trained on it says",
    )
    return path, len(chosen)


def fold_thresholds(folds):
    """Multi-label: each out-of-fold image's decision thresholds (N, L),
    those of the fold model that predicted it (in out_of_fold's order)."""
    return np.concatenate([np.broadcast_to(val.label_thresholds, val.probabilities.shape) for _, val, _ in folds])


def write_label_pair_suspects(evaluation, fold_numbers, decision, root, folder):
    """Multi-label: oof_predictions.csv (every non-test image: its given
    and predicted labels, fold and each label's probability) and
    label_suspects.csv (the (image, label) pairs label_pair_suspects
    doubts, most doubtful first: image, label, given value, probability,
    the confident-learning threshold the probability crossed, the fold
    model's decision threshold (`decision`, fold_thresholds), fold).
    Returns (the table of the first SUSPECTS_ON_PAGE for the page (header,
    rows), number of suspects)."""
    labels, probabilities, names = np.asarray(evaluation.true_labels) > 0.5, evaluation.probabilities, evaluation.class_names
    order, suspect, _ = label_pair_suspects(labels, probabilities)
    t_yes, t_no = label_thresholds(labels, probabilities)
    relative = [os.path.relpath(path, root) for path in evaluation.paths]
    predicted = probabilities >= decision
    joined = ";".join
    artifacts.write_csv(os.path.join(folder, "oof_predictions.csv"), [
        ("path", "given_labels", "predicted_labels", "fold", *(f"p_{name}" for name in names))
    ] + [
        (relative[i], joined(label_metrics.label_sets(labels[i:i + 1], names)[0]),
         joined(label_metrics.label_sets(predicted[i:i + 1], names)[0]), fold_numbers[i],
         *(f"{value:.6f}" for value in probabilities[i]))
        for i in range(len(labels))
    ])
    chosen = [(int(i), int(j)) for i, j in order if suspect[i, j]]
    header = ("rank", "image", "label", "given_value", "probability", "confident_threshold", "decision_threshold",
              "fold")
    rows = [
        (rank, relative[i], names[j], int(labels[i, j]), float(probabilities[i, j]),
         # given 1: doubted when p fell below 1 - t_no; given 0: when p rose above t_yes
         float(1 - t_no[j] if labels[i, j] else t_yes[j]), float(decision[i, j]), fold_numbers[i])
        for rank, (i, j) in enumerate(chosen, start=1)
    ]
    artifacts.write_csv(os.path.join(folder, "label_suspects.csv"), [header] + [
        (*row[:4], *(f"{value:.6f}" for value in row[4:7]), row[7]) for row in rows
    ])
    page = (("rank", "image", "label", "given", "probability", "confident-learning threshold", "fold"),
            [(*row[:6], row[7]) for row in rows[:SUSPECTS_ON_PAGE]])
    return page, len(chosen)


def write_suspects(evaluation, folds, fold_numbers, root, place):
    """The out-of-fold predictions and suspects of one backbone's `folds`
    in `place`, by the task: (figures drawn, [(heading, table)] for the
    page, number of suspects, what a suspect is)."""
    if evaluation.task.multi_label:
        table, count = write_label_pair_suspects(evaluation, fold_numbers, fold_thresholds(folds), root, place)
        heading = f"The {min(count, SUSPECTS_ON_PAGE)} most doubted (image, label) pairs"
        return [], [(heading, table)] if count else [], count, "suspected (image, label) error(s) of"
    drawn = figures.render_confusion(evaluation, place)
    gallery, count = write_label_suspects(evaluation, fold_numbers, root, place)
    return [*drawn, gallery], [], count, "suspected label error(s) of"


def write_summary(cv, index, scored, folder):
    """The summary of a scored cross-validation in `folder`: per_fold.csv,
    summary.csv, summary.md, the chart, per backbone the out-of-fold
    predictions, confusion matrix and label suspects, and report.html
    showing them all. Returns (figure
    paths, published run id, lines to print)."""
    task = next(iter(scored.values()))[0][1].task
    metric_list = metrics_of(task)
    per_fold = fold_table(scored)
    rows = summary_rows(per_fold, metric_list)
    chosen, why = choose_published(cv, scored)
    columns = ["backbone", "fold", "run", "split", "images", *(key for key, _, _ in metric_list)]
    artifacts.write_csv(os.path.join(folder, "per_fold.csv"),
                        [columns] + [[row[name] for name in columns] for row in per_fold])
    summary_columns = list(rows[0])
    artifacts.write_csv(os.path.join(folder, "summary.csv"),
                        [summary_columns] + [[row[name] for name in summary_columns] for row in rows])
    notes = [(f"Cross-validation {cv.id} of {index.root}: {cv.folds} folds, seed {cv.options.seed}; "
              "val = each fold's model on its own validation fold (the cross-validation estimate), "
              "test = each fold's model on the held-out test split.")]
    drawn = [visualize.plot_cross_validation(rows, [label for _, label, _ in metric_list],
                                             os.path.join(folder, "cross_validation.png"),
                                             subtitle=f"{cv.folds} folds · mean ± std · {cv.id}")]
    lines, tables = [], []
    for name, folds in scored.items():
        place = folder if len(scored) == 1 else os.path.join(folder, name)
        evaluation, fold_numbers = out_of_fold(cv, folds)
        figures_drawn, suspect_tables, suspects, what = write_suspects(evaluation, folds, fold_numbers, index.root, place)
        drawn += figures_drawn
        tables += [(f"{heading} ({name})" if len(scored) > 1 else heading, table) for heading, table in suspect_tables]
        lines.append(f"{name}: {suspects} {what} {len(evaluation.paths)} images: "
                     f"{os.path.join(place, 'label_suspects.csv')} (nothing in the folder was changed)")
        lines += suspects_caveat(evaluation)
    artifacts.write_text(os.path.join(folder, "summary.md"), markdown_summary(rows, per_fold, why, notes, metric_list))
    page = report.write_page(os.path.join(folder, report.REPORT_FILE), f"Cross-validation {cv.id}",
                             report_sections(rows, per_fold, why, notes, drawn, lines, cv.options, metric_list,
                                             tables))
    headline = [
        f"{row['backbone']} {'validation folds' if row['split'] == 'val' else 'test split'} {row['metric']}: "
        f"{shown(row['mean'], 3)} ± {shown(row['std'], 3)}"
        + (f" (95% interval {shown(row['ci95_low'], 3)} to {shown(row['ci95_high'], 3)})" if row["std"] else "")
        for row in rows if row["metric"] in HEADLINE[task.multi_label]
    ]
    return drawn, chosen, [*headline, *lines, f"chosen to publish: {why}",
                           f"report: {page} (summary.md, summary.csv and the figures beside it)"]


def summarize(cv, index, batch_size):
    """Scores every fold's model on its validation fold and the test
    split, and writes the summary (write_summary) to
    RESULTS_DIR/cross_validation/<id>/. Returns (figure paths, the fold
    run to publish, lines to print)."""
    scored = fold_evaluations(cv, index, batch_size)
    return write_summary(cv, index, scored, cv.results_folder())


def rescore(artifacts_dir, results_dir, wanted, batch_size):
    """evaluate.py --cross_validation [ID]: the finished cross-validation
    `wanted` ("last" or its id) of ARTIFACTS_DIR scored again with its
    saved options and folds, its summary written to
    RESULTS_DIR/cross_validation/<new stamp>/. Returns (folder, figure
    paths, lines)."""
    state = read_state(artifacts_dir, wanted, unfinished=False)
    saved = dataclasses.replace(config.config_from_dict(state["options"]), artifacts_dir=artifacts_dir,
                                results_dir=results_dir)
    index = splits.index_source(config.picked(saved, splits.Source))
    fold_of, _ = splits.assign_folds(index, saved.folds, saved.seed)
    cv = CrossValidation(state["id"], saved, tuple(state["backbones"]), fold_of, state["runs"], "finished")
    if not cv.same_folds(index):
        raise UserError(f"the dataset differs from {cv.folds_path()}: cannot re-score "
                        f"cross-validation {cv.id} on the same folds")
    stamp = artifacts.new_run_stamp(results_dir)
    folder = os.path.join(results_dir, FOLDER, stamp)
    scored = fold_evaluations(cv, index, batch_size)
    drawn, _, lines = write_summary(cv, index, scored, folder)
    return folder, drawn, [f"cross-validation {cv.id} re-scored", *lines]
