"""The paired design the speed benchmarks report (benchmarks/pairs.py, and
loader_bench.py's per-epoch pairs): the alternating order, which side each
measurement is filed under when the order flips, and the median and spread
printed."""

import os
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import loader_bench  # noqa: E402  (benchmarks/ is not a package)
import pairs  # noqa: E402


def test_the_sides_alternate_pair_by_pair():
    assert [pairs.side_order(number, ("a", "b")) for number in range(4)] == [
        ("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]


def test_each_measurement_is_filed_under_its_side_whatever_the_order():
    calls, said = [], []
    clocks = {"ours": iter([10.0, 11.0, 12.0]), "plain": iter([20.0, 21.0, 22.0])}

    def measure(side):
        calls.append(side)
        return next(clocks[side])

    measured = pairs.run_pairs(3, measure, ("ours", "plain"), lambda *said_now: said.append(said_now))

    assert calls == ["ours", "plain", "plain", "ours", "ours", "plain"]
    assert measured == [{"ours": 10.0, "plain": 20.0}, {"plain": 21.0, "ours": 11.0}, {"ours": 12.0, "plain": 22.0}]
    assert [(number, order) for number, order, _ in said] == [
        (0, ("ours", "plain")), (1, ("plain", "ours")), (2, ("ours", "plain"))]


def test_the_spread_is_the_median_quartiles_and_range():
    assert pairs.spread([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, 2.0, 4.0, 1.0, 5.0)
    assert pairs.spread([2.5]) == (2.5,) * 5
    assert pairs.describe([1.0, 2.0, 3.0, 4.0, 5.0]) == "x3.00 (IQR 2.00-4.00, min-max 1.00-5.00)"


def test_the_loader_pairs_time_both_pipelines_in_turn_and_report_ours_over_the_peers(monkeypatch, capsys):
    """Fake epochs (ours 300 images/s on 1.5 cores, the peer 100 on 1): the
    ratios are 3.0 by the clock and 2.0 per CPU second in every pair,
    whichever side ran first, and the comparisons take their turns."""
    ran = []

    def epoch(name, rates):
        def run():
            ran.append(name)
            return rates
        return run

    monkeypatch.setattr(loader_bench, "time_epoch", lambda run_epoch: run_epoch())
    augment, cache, peer, _, _ = loader_bench.COMPARISONS["augmented"]
    plain_augment, plain_cache, plain_peer, _, _ = loader_bench.COMPARISONS["plain"]
    epochs = {
        (augment, cache): epoch("ours augmented", (300.0, 200.0)), peer: epoch(peer, (100.0, 100.0)),
        (plain_augment, plain_cache): epoch("ours plain", (100.0, 100.0)), plain_peer: epoch(plain_peer, (100.0, 100.0)),
    }

    rates = loader_bench.paired_rates(epochs, ["augmented", "plain"], 2)
    summary = loader_bench.report_pairs(rates)

    assert ran == ["ours augmented", peer, "ours plain", plain_peer, peer, "ours augmented", plain_peer, "ours plain"]
    assert summary["augmented"]["ratios"] == [3.0, 3.0] and summary["augmented"]["cpu_ratios"] == [2.0, 2.0]
    assert summary["augmented"]["median_ratio"] == 3.0 and summary["plain"]["median_cpu_ratio"] == 1.0
    printed = capsys.readouterr().out
    assert "images/s     x3.00 (IQR 3.00-3.00, min-max 3.00-3.00)  ours 300, idfd_aug 100" in printed
    assert "cores busy: ours 1.50, idfd_aug 1.00" in printed


@pytest.mark.parametrize("text, chosen", [
    ("augmented,cached", ["augmented", "cached"]), (" plain ", ["plain"]), ("plain,fast", None), ("", None)])
def test_an_unknown_comparison_is_refused(text, chosen):
    assert loader_bench.chosen_comparisons(text) == chosen
