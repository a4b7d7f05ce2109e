"""What learning rate should training start at: the learning-rate range test and its "valley" suggestion.

The range test (Smith, "Cyclical Learning Rates for Training Neural
Networks", 2015; fastai's `Learner.lr_find`): about STEPS training steps on
the run's own training batches, the learning rate growing exponentially
from START_RATE to END_RATE, each step's loss recorded and smoothed
(exponential moving average, beta 0.98, debiased as fastai's
AvgSmoothLoss); the test stops once the smoothed loss is over DIVERGENCE
times its minimum or is not finite. It trains the freshly built model and
then puts every weight back (`range_test`), so training starts from the
same weights with a fresh optimizer.

The suggestion is fastai's `valley` (`suggest`), reproduced step for step:
the first tenth of the steps and the last five are left out, the longest
descending run of the smoothed loss found (the longest decreasing
subsequence, by position), and the rate about half-way down it: on the
steep descent, before the minimum, where the loss falls fastest and
training is still stable.

`Finding` holds a test and its suggestion: what the run prints and saves
(`record`), and what figures.py draws and writes to lr_finder.csv.
"""

import dataclasses
import math

import numpy as np

from errors import UserError

START_RATE = 1e-7
END_RATE = 10.0
STEPS = 100
BETA = 0.98  # fastai's smoothing of the recorded loss
DIVERGENCE = 4.0  # stop once the smoothed loss is this many times its minimum
METHOD = "valley"
FLAT = 0.01  # a valley whose smoothed loss falls by less than this share of it says little


def is_asked(learning_rate, lr_find):
    """Whether a run runs the range test: --learning_rate auto, or --lr_find."""
    return learning_rate == "auto" or bool(lr_find)


def exponential_rate(step, steps=STEPS, start=START_RATE, end=END_RATE):
    """The rate of `step` (0-based) of `steps`: start * (end/start)^(step/steps),
    fastai's SchedExp at position step/steps."""
    return float(start * (end / start) ** (step / steps))


def smoothed(losses, beta=BETA):
    """The exponential moving average of `losses`, debiased (divided by
    1 - beta^n, so the first values are not pulled towards 0): fastai's
    AvgSmoothLoss. A non-finite loss makes every later value non-finite."""
    out = np.empty(len(losses))
    average = 0.0
    for number, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * float(loss)
        out[number - 1] = average / (1 - beta**number)
    return out


@dataclasses.dataclass(frozen=True)
class RangeTest:
    """A range test's steps: the rate of each step, its batch loss, and why
    it ended. `planned`: the steps it was asked for (the suggestion leaves
    out the first tenth of those)."""

    rates: np.ndarray
    losses: np.ndarray
    stopped: str
    planned: int = STEPS

    @property
    def smoothed(self):
        return smoothed(self.losses)


def stop_reason(smoothed_losses, divergence=DIVERGENCE):
    """Why a range test whose smoothed loss so far is `smoothed_losses`
    stops after its last step, or None to go on."""
    last = smoothed_losses[-1]
    if not math.isfinite(last):
        return "the loss was no longer finite"
    if last > divergence * np.min(smoothed_losses):
        return f"the smoothed loss passed {divergence:g}x its minimum"
    return None


def range_test(model, batches, compile_at, class_weight=None, steps=STEPS, start=START_RATE, end=END_RATE):
    """Runs the range test on `model` (freshly built; with pretrained
    weights its backbone frozen, so the test tunes the head phase) with
    training `batches` (the run's tf.data training pipeline, augmentation
    and balancing as the run has them; repeated when it has fewer than
    `steps` batches) and the run's `class_weight`, after `compile_at(model,
    rate)` (the run's loss and optimizer: train_utils.compile_model).
    Every weight is put back afterwards, even on an error: training then
    compiles the model again, with a fresh optimizer. Returns a RangeTest."""
    saved = model.get_weights()
    rates, losses = [], []
    stopped = f"all {steps} steps run"
    try:
        compile_at(model, start)
        iterator = iter(batches.repeat())
        for step in range(steps):
            rate = exponential_rate(step, steps, start, end)
            model.optimizer.learning_rate = rate
            images, labels = next(iterator)
            # train_on_batch resets the metrics first: its loss is this batch's alone.
            logs = model.train_on_batch(images, labels, class_weight=class_weight, return_dict=True)
            rates.append(rate)
            losses.append(float(logs["loss"]))
            reason = stop_reason(smoothed(losses))
            if reason:
                stopped = f"stopped at step {step + 1}: {reason}"
                break
    finally:
        model.set_weights(saved)
    return RangeTest(np.array(rates), np.array(losses), stopped, planned=steps)


# ---------------------------------------------------------------- the suggestion


def valley(losses):
    """fastai's `valley`, step for step: (suggested position, start, end)
    in `losses`. The longest decreasing subsequence of the losses (lds[i]:
    its length ending at i) whose end is the first to reach the longest
    length; its start is taken as end - lds[end] at that moment (as fastai
    does, even when lds[end] grows later in the same pass); the suggestion
    is start + int(s) + int(s/2), s = (end - start)/3: about half-way down
    the valley (fastai's docs say "2/3"; this is its code)."""
    count = len(losses)
    lds = np.ones(count, dtype=int)
    max_start = max_end = 0
    for i in range(1, count):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    # fastai's start may be -1 (a descent from the first point); so may the
    # position, on a curve of two points, where Python would wrap to the end.
    return max(0, max_start + int(sections) + int(sections / 2)), max(0, max_start), max_end


@dataclasses.dataclass(frozen=True)
class Suggestion:
    """The suggested rate, its step in the test, and the valley's first
    and last step (positions in RangeTest's arrays)."""

    rate: float
    step: int
    valley: tuple
    method: str = METHOD


def suggest(test):
    """fastai lr_find's suggestion from a RangeTest: the steps from a tenth
    of the planned ones to the last five left out, cut at the first
    non-finite smoothed loss, then `valley`. Raises UserError when no step
    is left (the loss was not finite from the first steps)."""
    first = test.planned // 10
    curve = test.smoothed[first:-5]
    finite = np.isfinite(curve)
    if not finite.all():
        curve = curve[: int(np.argmin(finite))]
    if not len(curve):
        raise UserError(
            f"the learning-rate range test found no rate: {test.stopped} after {len(test.losses)} of "
            f"{test.planned} steps, before its curve could be read; give --learning_rate a number"
        )
    position, start, end = valley(curve)
    return Suggestion(float(test.rates[first + position]), int(first + position), (int(first + start), int(first + end)))


@dataclasses.dataclass(frozen=True)
class Finding:
    """A range test and the rate suggested from it."""

    test: RangeTest
    suggestion: Suggestion

    @property
    def rate(self):
        return self.suggestion.rate

    def record(self):
        """What run_config.json keeps (learning_rate_found): the rate, the
        steps run and the method; a resumed run reads the rate back."""
        return {"rate": self.rate, "steps": int(len(self.test.losses)), "method": self.suggestion.method,
                "stopped": self.test.stopped}

    @property
    def flat(self):
        """Whether the valley is too shallow to mean anything: the smoothed
        loss falls by under FLAT of itself along it (a model that cannot
        learn from these batches, or features that do not change)."""
        smoothed = self.test.smoothed
        first, last = self.suggestion.valley
        return smoothed[first] - smoothed[last] < FLAT * abs(smoothed[first])

    def lines(self):
        """What the run prints about the test and its suggestion (with a
        warning when the curve is flat)."""
        test = self.test
        lowest = float(test.rates[int(np.nanargmin(test.smoothed))])
        where = "before" if self.rate < lowest else "not before"
        lines = [
            f"range test: {len(test.losses)} training steps, learning rate {test.rates[0]:.0e} to "
            f"{test.rates[-1]:.2g} ({test.stopped})",
            f"suggested learning rate: {self.rate:.3g} ({self.suggestion.method}: half-way down the longest descent "
            f"of the smoothed loss, {where} its minimum at {lowest:.3g})",
        ]
        if self.flat:
            lines.append(f"warning: the smoothed loss hardly falls along that descent (under {FLAT:.0%}): the curve "
                         "says little about the rate; look at the figure, or give --learning_rate a number")
        return lines

    def csv_text(self):
        """lr_finder.csv: each step's rate, batch loss and smoothed loss,
        and which step is the suggestion."""
        rows = ["step,learning_rate,loss,smoothed_loss,suggested"]
        for step, (rate, loss, smooth) in enumerate(zip(self.test.rates, self.test.losses, self.test.smoothed)):
            rows.append(f"{step + 1},{rate:.6g},{loss:.6g},{smooth:.6g},{int(step == self.suggestion.step)}")
        return "\n".join(rows) + "\n"


def found(model, batches, compile_at, class_weight=None, steps=STEPS):
    """The Finding of a range test on `model` (range_test, then suggest)."""
    test = range_test(model, batches, compile_at, class_weight=class_weight, steps=steps)
    return Finding(test, suggest(test))
