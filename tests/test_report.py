"""report.py and what the summary says: one offline page per command, the
majority-class baseline, and the confidences in words."""

import os
import re

import numpy as np
import pytest

import calibration
import config
import metrics
import report
from conftest import read_json


def links(page):
    return re.findall(r'(?:src|href)="([^"]+)"', page)


def test_the_report_links_its_figures_relatively_and_escapes_text(tmp_path):
    results = tmp_path / "results"
    figure = results / "roc_auc" / "20261201-000000" / "roc_auc.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"\x89PNG")
    sections = [
        report.Section("A <b>run</b>", rows=(("classes", "cat & dog"), ("accuracy", 0.5), ("images", 1200))),
        report.Section("Figures", figures=(str(figure),)),
        report.Section("Notes", lines=("WARNING: no better than the baseline", "fine")),
    ]

    path = report.write_report(str(results), "20261201-000000", "Run <x>", sections)

    assert path == str(results / "report" / "20261201-000000" / "report.html")
    page = open(path, encoding="utf-8").read()
    assert links(page) == ["../../roc_auc/20261201-000000/roc_auc.png"] * 2
    for link in links(page):
        assert os.path.isfile(os.path.join(os.path.dirname(path), link))
    assert "A &lt;b&gt;run&lt;/b&gt;" in page and "cat &amp; dog" in page and "<title>Run &lt;x&gt;</title>" in page
    assert '<td class="number">0.500</td>' in page and '<td class="number">1,200</td>' in page
    assert '<p class="warning">WARNING: no better' in page and "<p>fine</p>" in page
    assert "http" not in page  # nothing fetched: readable offline


def test_baselines_are_the_best_constant_answer_and_chance():
    labels = np.array([0, 0, 0, 1, 2, 2])
    base = metrics.baselines(labels, ("a", "b", "c"))
    assert base == {"majority_class": "a", "majority_accuracy": 0.5, "chance": pytest.approx(1 / 3)}
    scores = {"accuracy": 0.5, "num_samples": 6, "baselines": base}
    assert "no better than always answering \"a\"" in metrics.baseline_warning(scores)
    assert metrics.baseline_warning({**scores, "accuracy": 0.51}) is None
    assert metrics.baseline_line({**scores, "accuracy": 0.75}) == (
        'accuracy 0.750 · majority-class baseline 0.500 (always "a") · chance 0.333'
    )


def test_the_confidences_in_words_come_from_the_fullest_bin():
    rng = np.random.default_rng(0)
    # 40 images at 0.9 confidence, 36 of them right; 5 at 0.6.
    confident = np.tile([0.9, 0.05, 0.05], (40, 1))
    unsure = np.tile([0.6, 0.3, 0.1], (5, 1))
    probabilities = np.vstack([confident, unsure])
    labels = np.array([0] * 36 + [1] * 4 + list(rng.integers(0, 3, 5)))
    bins = calibration.reliability_bins(labels, probabilities)

    sentence = calibration.confidence_sentence(bins)

    assert sentence == "when it says 90%, it is right 90% of the time (40 of 45 images are at that confidence)"
    few = calibration.reliability_bins(labels[:5], probabilities[:5])
    assert calibration.confidence_sentence(few) == "too few images (5) to say how often its confidences are right"


@pytest.mark.slow
def test_main_writes_one_report_with_every_figure_it_drew(trained_run):
    (stamp,) = os.listdir(trained_run["results"] / "report")
    path = trained_run["results"] / "report" / stamp / "report.html"
    page = path.read_text(encoding="utf-8")
    figures = [link for link in links(page) if link.endswith(".png")]

    # Every figure main.py drew and showed, each linked relatively and there.
    assert sorted(set(figures)) == sorted(os.path.relpath(shown, path.parent) for shown in trained_run["shown"])
    assert all(os.path.isfile(path.parent / link) for link in figures)
    scores = read_json(trained_run["results"] / "metrics" / stamp / "metrics.json")
    assert f"{scores['accuracy']:.3f}" in page and f"{scores['baselines']['majority_accuracy']:.3f}" in page
    assert f"{scores['calibration']['ece']:.1%}" in page  # as the terminal writes it
    assert "majority-class baseline" in page and "Confidences:" in page and "--epochs" in page
    # The dataset's classes as a table, the options without --demo or empty values.
    assert "<th>class</th><th>train</th><th>val</th><th>test</th><th>skipped</th>" in page
    assert "--demo" not in page and "<td></td>" not in page and "more options at their defaults</summary>" in page
    assert "test split: accuracy" in trained_run["printed"] and "==> Summary" in trained_run["printed"]
    assert trained_run["printed"].rstrip().splitlines()[-1].startswith("    next: python evaluate.py")


def test_the_options_show_what_was_set_and_what_matters_and_fold_the_rest():
    values = {**{name: config.default_of(name, "predict") for name in config.options_of("predict")},
              "images": ("/photos/new/", "one more.jpg"), "top_k": 2, "model": None}
    section = report.options_section(values, "predict")
    shown = dict(section.rows)
    summary, folded = section.folded

    assert shown["--images"] == "/photos/new/ one more.jpg"  # as typed, not a Python tuple
    assert shown["--top_k"] == "2" and "--batch_size" in shown  # set; common
    assert "--model" not in shown and "--model" not in dict(folded)  # no value: not listed
    assert "--gallery" in dict(folded) and summary == f"{len(folded)} more options at their defaults"
    assert not {"--rows", "--cols", "--show"} & set(shown)  # common but display only: folded

    page = report._section_html(section, "/tmp")
    assert page.index("--top_k") < page.index("<details>") < page.index("--gallery")


def test_a_wide_table_scrolls_inside_the_page():
    header = ("path", "predicted_class")
    page = report._section_html(report.Section("Predictions", table=(header, [("a/" * 80 + "x.png", "cat")])), "/tmp")
    assert page.startswith("<h2>Predictions</h2>\n<div class=\"scroll\"><table>")
    assert ".scroll { max-width: 100%; overflow-x: auto; }" in report.STYLE
