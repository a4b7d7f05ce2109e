"""The paired design the speed benchmarks share (loader_bench.py,
predict_bench.py, command_bench.py): two sides timed in alternating order,
pair by pair (A B, B A, A B, ...), so a drift in the machine's speed falls
on both alike; each pair gives one ratio, and what is reported is the
median ratio with its spread, never one pair.
"""

import statistics


def side_order(number, sides=("ours", "peer")):
    """The order of the two `sides` in pair `number` (from 0): as given
    when it is even, reversed when odd."""
    return tuple(sides) if number % 2 == 0 else tuple(reversed(sides))


def run_pairs(count, measure, sides=("ours", "peer"), on_pair=None):
    """[{side: measure(side)}, one per pair] for `count` pairs, each pair's
    sides measured in side_order; `on_pair(number, order, pair)` is called
    after each (to print it as it comes)."""
    measured = []
    for number in range(count):
        order = side_order(number, sides)
        pair = {side: measure(side) for side in order}
        measured.append(pair)
        if on_pair:
            on_pair(number, order, pair)
    return measured


def spread(values):
    """(median, first quartile, third quartile, min, max) of `values`."""
    values = list(values)
    if len(values) < 2:
        return (values[0],) * 5
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), quartiles[0], quartiles[2], min(values), max(values)


def describe(ratios):
    """'x1.23 (IQR 1.20-1.25, min-max 1.10-1.30)' of per-pair ratios."""
    median, low, high, smallest, largest = spread(ratios)
    return f"x{median:.2f} (IQR {low:.2f}-{high:.2f}, min-max {smallest:.2f}-{largest:.2f})"
