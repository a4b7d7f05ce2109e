"""One report per command: RESULTS_DIR/report/<stamp>/report.html.

Every figure the command drew (linked relatively, so the results folder can
be zipped and mailed), the headline metrics next to the majority-class
baseline, what the confidences mean, the per-class numbers, the dataset
summary and the skipped files, and the options: one page, readable offline
in any browser (no script, no font or file from the internet), in the
figures' blush colours. A cross-validation's page is written the same way,
beside its summary (`write_page`).
"""

import dataclasses
import html
import os

import artifacts
import audit
import calibration
import config
import metrics
import theme

REPORT_FOLDER = "report"
REPORT_FILE = "report.html"


@dataclasses.dataclass(frozen=True)
class Section:
    """A heading and what goes under it: (name, value) rows, text lines,
    figure paths, a table (header, rows)."""

    heading: str
    rows: tuple = ()
    lines: tuple = ()
    figures: tuple = ()
    table: tuple = ()  # (header, rows)
    folded: tuple = ()  # (summary, rows): more (name, value) rows, closed until clicked


def report_path(results_dir, stamp):
    return os.path.join(results_dir, REPORT_FOLDER, stamp, REPORT_FILE)


STYLE = f"""
body {{ font-family: "DejaVu Sans", Verdana, sans-serif; color: {theme.INK}; background: {theme.WHITE};
       margin: 2em auto; max-width: 1100px; padding: 0 1em; }}
h1 {{ color: {theme.WINE}; border-bottom: 3px solid {theme.BLUSH}; padding-bottom: .3em; }}
h2 {{ color: {theme.DEEP_ROSE}; margin-top: 1.6em; }}
table {{ border-collapse: collapse; margin: .5em 0; }}
.scroll {{ max-width: 100%; overflow-x: auto; }}
td, th {{ border: 1px solid {theme.GRID}; padding: .3em .7em; text-align: left; vertical-align: top; }}
td {{ overflow-wrap: break-word; max-width: 32em; }}
details summary {{ cursor: pointer; color: {theme.DEEP_ROSE}; margin: .4em 0; }}
th {{ background: {theme.PETAL}; }}
td.number {{ text-align: right; font-variant-numeric: tabular-nums; }}
.warning {{ background: #fde8ea; border-left: 5px solid {theme.WRONG}; padding: .6em 1em; }}
figure {{ display: inline-block; margin: .6em; vertical-align: top; width: 46%; }}
figure img {{ max-width: 100%; border: 1px solid {theme.GRID}; }}
figcaption {{ color: {theme.MUTED}; font-size: .9em; }}
pre {{ background: {theme.PETAL}; padding: .6em; overflow-x: auto; }}
"""


def _cell(value):
    if isinstance(value, float):
        return f'<td class="number">{theme.score(value)}</td>'
    if isinstance(value, int):
        return f'<td class="number">{value:,}</td>'
    return f"<td>{_breakable(value)}</td>"


def _breakable(value):
    """`value` as HTML that may wrap after a / or _ (a long path or
    snake_case name wraps there when the table needs room, not anywhere)."""
    return html.escape(str(value)).replace("/", "/<wbr>").replace("_", "_<wbr>")


def _rows_html(rows):
    return "<table>" + "".join(
        f"<tr><th>{html.escape(str(name))}</th>{_cell(value)}</tr>" for name, value in rows
    ) + "</table>"


def _section_html(section, folder):
    parts = [f"<h2>{html.escape(section.heading)}</h2>"]
    if section.rows:
        parts.append(_rows_html(section.rows))
    if section.folded:
        summary, rows = section.folded
        parts.append(f"<details><summary>{html.escape(summary)}</summary>{_rows_html(rows)}</details>")
    for line in section.lines:
        kind = ' class="warning"' if str(line).startswith("WARNING") else ""
        parts.append(f"<p{kind}>{html.escape(str(line))}</p>")
    if section.table:
        header, rows = section.table
        # A wide table (long paths, many columns) scrolls inside the page
        # instead of running off its edge; long cells wrap.
        parts.append(
            '<div class="scroll"><table><tr>'
            + "".join(f"<th>{_breakable(name)}</th>" for name in header)
            + "</tr>" + "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
            + "</table></div>"
        )
    for path in section.figures:
        link = os.path.relpath(os.path.abspath(path), os.path.abspath(folder)).replace(os.sep, "/")
        # results/<category>/<stamp>/file.png seen from results/report/<stamp>/
        # is captioned category/file.png; a figure beside the page by its own path.
        caption = "/".join(link.split("/")[-3::2]) if link.startswith("../") else link
        parts.append(f'<figure><a href="{html.escape(link)}"><img src="{html.escape(link)}" alt="{html.escape(caption)}">'
                     f"</a><figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(parts)


def write_report(results_dir, stamp, title, sections):
    """Writes report.html for one command's `sections` (Section); returns
    its path."""
    return write_page(report_path(results_dir, stamp), title, sections)


def write_page(path, title, sections):
    """Writes the page of `sections` (Section) with `title` to `path`, its
    figures linked relative to it; returns the path."""
    folder = os.path.dirname(path)
    body = "\n".join(_section_html(section, folder) for section in sections)
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
    return artifacts.write_text(path, page)


# ---------------------------------------------------------------- sections of an evaluation


def headline_rows(scores):
    """The headline numbers of metrics.json's dict, next to what they must beat."""
    base = scores["baselines"]
    return (
        ("accuracy", scores["accuracy"]),
        (f"majority-class baseline (always \"{base['majority_class']}\")", base["majority_accuracy"]),
        ("chance", base["chance"]),
        ("macro F1", scores["macro_avg"]["f1"]),
        ("macro ROC AUC", scores["roc_auc"]["macro"] if scores["roc_auc"]["macro"] is not None else "n/a"),
        ("loss (cross-entropy)", scores["loss"]),
        ("expected calibration error", theme.percent(scores["calibration"]["ece"])),
        ("images", scores["num_samples"]),
    )


def _number(value):
    return "n/a" if value is None else value


def label_headline_table(scores):
    """A multi-label evaluation's headline numbers (label_metrics'
    metrics.json dict) as a table (header, rows): each number next to what
    a model with no eyes gets on the same images (label_metrics.baselines:
    answering each label's more common value; ranking every image the
    same for mAP); "" where no baseline applies."""
    base = scores["baselines"]
    header = ("metric", "this model", "constant answer (baseline)")
    rows = [
        ("micro F1 (every image-label pair)", scores["micro_avg"]["f1"], base["majority_micro_f1"]),
        ("macro F1 (mean over labels)", scores["macro_avg"]["f1"], ""),
        ("mAP (mean average precision)", _number(scores["mAP"]), base["prevalence_map"]),
        ("exact-set accuracy (every label right)", scores["subset_accuracy"], base["majority_subset_accuracy"]),
        ("Hamming loss (wrong yes/no answers, lower is better)", scores["hamming_loss"],
         base["majority_hamming_loss"]),
        ("loss (binary cross-entropy)", scores["loss"], ""),
        ("expected calibration error (every yes/no answer)", theme.percent(scores["calibration"]["ece"]), ""),
        ("images", scores["num_samples"], ""),
    ]
    return header, rows


def scores_section(heading, evaluation, scores):
    """The headline numbers (`headline_rows`; a multi-label evaluation's as
    `label_headline_table`), what the confidences mean and the baseline
    warning, if any: one evaluation's scores on the page (`evaluation`:
    metrics.Evaluation, `scores`: its metrics())."""
    lines = [f"Confidences: {confidences(evaluation, scores)}.", metrics.baseline_warning(scores)]
    if evaluation.task.multi_label:
        base = scores["baselines"]
        always = ", ".join(base["majority_labels"]) or "no label"
        lines.insert(0, f"The constant answer gives every image the same labels: {always} "
                        "(each label's more common value on these images); mAP's baseline ranks every image the "
                        "same, so each label's average precision is its prevalence.")
        return Section(heading, table=label_headline_table(scores), lines=tuple(line for line in lines if line))
    return Section(heading, rows=headline_rows(scores), lines=tuple(line for line in lines if line))


def confidences(evaluation, scores):
    """What the confidences mean in words (calibration.confidence_sentence),
    or, for a model no better than a constant answer (metrics.at_chance),
    that they mean nothing yet."""
    if metrics.at_chance(scores):
        return ("they mean nothing yet: the model does no better than a constant answer, so how sure it is "
                "says nothing about whether it is right")
    return calibration.confidence_sentence(evaluation.reliability(), evaluation.reliability_units)


def score_lines(what, evaluation, scores):
    """The same for a closing summary: "`what`: accuracy ... · baseline ...",
    the confidences in words and the baseline warning, if any."""
    lines = [
        *([f"{what}: {evaluation.headline(scores)}"] if evaluation.task.multi_label else []),
        f"{what}: {metrics.baseline_line(scores)} ({scores['num_samples']} images)",
        f"confidences: {confidences(evaluation, scores)}",
        metrics.baseline_warning(scores),
    ]
    return [line for line in lines if line]


def per_class_table(scores):
    """The per-class numbers (header, rows); a multi-label evaluation's per
    label, with its average precision, ROC AUC and decision threshold."""
    if scores.get("task") == "multi_label":
        header = ("label", "precision", "recall", "F1", "images with it", "average precision", "ROC AUC",
                  "threshold")
        rows = [
            (name, row["precision"], row["recall"], row["f1"], row["support"], _number(row["average_precision"]),
             _number(row["roc_auc"]), row["threshold"])
            for name, row in scores["per_class"].items()
        ]
        return header, rows
    header = ("class", "precision", "recall", "F1", "images")
    rows = [
        (name, row["precision"], row["recall"], row["f1"], row["support"])
        for name, row in scores["per_class"].items()
    ]
    return header, rows


def options_section(values, script):
    """The options of `script` ({name: value}, e.g. config.saved_options'
    dict) as the page shows them: those set to other than the script's
    default, and those every reader needs (tagged common, not display),
    as rows; the rest folded below them; options without a value left
    out, and values as typed (--images a/ b.png, --backbone x,y)."""
    specs = config.options_of(script)
    shown, folded = [], []
    for name, value in values.items():
        if name not in specs or value is None:
            continue
        spec = specs[name]
        text = " ".join(map(str, value)) if spec.nargs in ("+", "*") and isinstance(value, (tuple, list)) \
            else str(config.shown(value))
        matters = value != config.default_of(name, script) or ("common" in spec.tags and "display" not in spec.tags)
        (shown if matters else folded).append((f"--{name}", text))
    return Section("Options", rows=tuple(shown),
                   folded=(f"{len(folded)} more options at their defaults", tuple(folded)) if folded else ())


# ---------------------------------------------------------------- a training run


def training_sections(run):
    """The sections of a main.py run's page (`run`: runs.Run, after its
    test evaluation and figures)."""
    options, scores = run.options, run.scores
    return [
        Section("The run", rows=(
            ("run", run.stamp), ("dataset", run.index.root),
            *((("task", "multi-label: several labels per image, a threshold per label"),
               ("labels", ", ".join(run.index.class_names))) if run.index.task.multi_label
              else (("classes", ", ".join(run.index.class_names)),)),
            ("backbone", options.backbone), ("weights", options.weights), ("image size", options.image_size),
            *((("learning rate", f"{run.learning_rate:.3g}, found by the range test (--learning_rate auto)"),)
              if options.learning_rate == "auto" and run.learning_rate else ()),
            ("published", " · ".join(model_lines(run))),
        )),
        scores_section("On the test split", run.evaluation, scores),
        *([scores_section(
            f"On the test split without the {run.clean_test[0]} images that have a near-copy in training "
            "(the score above is optimistic)", run.clean_test[1], run.clean_test[2])] if run.clean_test else []),
        Section("Per label" if run.index.task.multi_label else "Per class", table=per_class_table(scores)),
        Section("Figures", figures=tuple(run.drawn)),
        Section("The dataset", lines=tuple(audit.summary_lines(run.index, max_skipped=200, table=False)),
                table=audit.split_table(run.index)),
        options_section(config.saved_options(options), "main"),
    ]


def training_summary(run):
    """The closing summary: the headline numbers next to the baseline, what
    the confidences mean, where the run, the model and the report are, and
    what to run next."""
    options, scores = run.options, run.scores
    # A run kept but not published: the next commands name its model (they use the published one by default).
    chosen = "" if run.publishing is None or run.publishing.published else f" --model {run.model_path}"
    return [
        f"run {run.stamp}: {len(run.index.class_names)} "
        f"{'labels (multi-label)' if run.index.task.multi_label else 'classes'} of {run.index.root}, "
        f"{len(run.index.split('train')[0]):,} training images",
        *score_lines("test split", run.evaluation, scores),
        *(score_lines(f"warning: {run.clean_test[0]} of {scores['num_samples']} test images have a near-copy in "
                      "training: the test score is optimistic; without them", run.clean_test[1], run.clean_test[2])[:1]
          if run.clean_test else []),
        *([f"training {run.stopped}: the model is its best epoch so far"] if run.stopped else []),
        *model_lines(run),
        f"report: {run.report_path} (every figure in results/<category>/{run.stamp}/)",
        f"next: python evaluate.py --image_dir {options.image_dir}{chosen}   or   python predict.py --images "
        f"NEW_IMAGES/{chosen}",
    ]


def model_lines(run):
    """Where the run's model is, and whether it was published (its
    publishing.Decision's lines, both scores side by side, when not)."""
    if run.publishing is None and run.chosen_later:
        return [f"model: {run.model_path} (with several runs, the chosen one is published once all are trained)"]
    if run.publishing is None or run.publishing.published:
        return [f"model: {os.path.join(run.options.artifacts_dir, artifacts.MODEL_FILE)} (published; run folder "
                f"{run.folder})"]
    return [f"model: {run.model_path} (kept, not published)", *run.publishing.lines]
