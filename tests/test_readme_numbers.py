"""README.md's numbers a newcomer can check: the demo's line quotes the
range and the last run that benchmarks/demo_bench.py recorded in
benchmarks/demo_bench.json, exactly (the benchmark itself, which trains
the demo for minutes, is not in the suite)."""

import json
import os
import re
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import demo_bench  # noqa: E402  (benchmarks/ is not a package)


def readme_text():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return " ".join(handle.read().split())  # wrapped lines read as one


def test_the_readme_quotes_the_demo_range_and_last_run_the_benchmark_recorded():
    record = demo_bench.read_record()

    assert demo_bench.readme_sentence(record) in readme_text()


def test_the_recorded_demo_run_lies_in_its_stated_range_and_the_sentence_changes_with_it(tmp_path):
    record = demo_bench.read_record()
    low, high = record["accuracy_range"]
    assert low <= record["last_run"]["test_accuracy"] <= high
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["last_run"]["date"])
    # Another recording (or a README left behind) no longer matches.
    changed = {**record, "last_run": {**record["last_run"], "test_accuracy": 0.5}}
    assert demo_bench.readme_sentence(changed) not in readme_text()
    json.dumps(record)  # plain JSON: what --record writes back
