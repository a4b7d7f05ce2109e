"""Are the confidences right? Calibration metrics, temperature scaling, and
the mistakes that matter.

A model is calibrated when, of the images it labels with 80% confidence,
about 80% are right. Networks trained with cross-entropy are usually
over-confident; temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", 2017) fixes most of it with one number: the logits are
divided by T > 0 before the softmax, with T fitted on the validation split
to minimize the negative log-likelihood. Dividing by a positive number
never changes which class is largest, so accuracy is untouched.

The temperature lives inside the saved model (model_builder's head:
Dense "logits" -> Rescaling(1/T) "temperature" -> softmax "predictions"),
so every consumer of the .keras file, and every file exported from it,
gets calibrated probabilities. `with_temperature` rebuilds that head with
a fitted T around the same trained weights.

Everything else here takes NumPy arrays (true labels, probabilities) and
returns plain values: expected calibration error, the Brier score, NLL,
reliability-diagram data, the most confidently wrong images (top losses)
and the most confused class pairs. A run saves its test split's reliability
bins (`saved_bins`); `trust_at` looks a new prediction's confidence up in
them: how often the test images at that confidence were right.
"""

import dataclasses
import math

import numpy as np

import model_builder

# Guo et al.'s number of equal-width confidence bins for ECE.
NUM_BINS = 15
# The fitted temperature stays within these bounds: a validation split the
# model gets entirely right would otherwise push T towards 0 (ever more
# confident), one it gets entirely wrong towards infinity.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
# The same clipping as Keras' cross-entropy (and evaluate's "loss").
EPSILON = 1e-7
# A trust sentence gives a percentage only from at least this many test
# images at the prediction's confidence: "right 100% of the time" from 3
# images says little (a 95% interval of 10 images is still about +-25 points).
MIN_TRUST_IMAGES = 10


# ---------------------------------------------------------------- metrics


def _check(true_labels, probabilities):
    true_labels = np.asarray(true_labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(true_labels):
        raise ValueError(
            "probabilities must be (samples, classes) with one row per label. Received: "
            f"probabilities.shape={probabilities.shape}, labels={len(true_labels)}"
        )
    return true_labels, probabilities


def negative_log_likelihood(true_labels, probabilities):
    """Mean of -log p(true class), probabilities clipped at 1e-7 as Keras'
    cross-entropy does (so it equals evaluate's "loss")."""
    true_labels, probabilities = _check(true_labels, probabilities)
    picked = probabilities[np.arange(len(true_labels)), true_labels]
    return float(-np.mean(np.log(np.clip(picked, EPSILON, 1.0))))


def brier_score(true_labels, probabilities):
    """The multi-class Brier score (Brier, 1950): the mean over images of
    the sum over classes of (p_c - onehot_c)^2. 0 is perfect, 2 the worst
    (all probability on a wrong class); not divided by the number of
    classes, so scores of models with different class counts differ in
    scale."""
    true_labels, probabilities = _check(true_labels, probabilities)
    one_hot = np.eye(probabilities.shape[1])[true_labels]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def confidence_bin(confidence, num_bins=NUM_BINS):
    """The reliability bin (0-based) of top-1 confidence(s) among
    `num_bins` equal-width bins: bin b holds edges[b] < confidence <=
    edges[b + 1], and 0 falls in the first. One rule for making the bins and
    for looking a new prediction up in saved ones (`trust_at`)."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)


def reliability_bins(true_labels, probabilities, num_bins=NUM_BINS):
    """The data of a reliability diagram: the images binned by their top-1
    confidence into `num_bins` equal-width bins (lower, upper], upper
    included.

    Returns a dict of arrays, one entry per bin: "lower", "upper",
    "count", "accuracy" and "confidence" (the mean top-1 confidence), the
    last two NaN for an empty bin.
    """
    true_labels, probabilities = _check(true_labels, probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == true_labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = confidence_bin(confidence, num_bins)
    count = np.bincount(which, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, weights=correct, minlength=num_bins) / count
        mean_confidence = np.bincount(which, weights=confidence, minlength=num_bins) / count
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count,
        "accuracy": accuracy,
        "confidence": mean_confidence,
    }


def expected_calibration_error(true_labels, probabilities, num_bins=NUM_BINS):
    """ECE (Naeini et al., 2015; Guo et al., 2017): the gap between accuracy
    and mean top-1 confidence in each of `num_bins` equal-width confidence
    bins, averaged weighted by the images per bin. 0 is perfect; 0.2 means
    the confidences are off by 20 points on average."""
    bins = reliability_bins(true_labels, probabilities, num_bins)
    filled = bins["count"] > 0
    if not filled.any():
        return 0.0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(gaps * bins["count"][filled]) / bins["count"].sum())


def rescale_probabilities(probabilities, temperature):
    """softmax(log(p) * temperature): the probabilities the same logits give
    at temperature 1 when `probabilities` were made at `temperature`
    (log p is the logits up to a constant per row). Used to report the ECE
    a calibrated model had before calibration."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore"):
        scaled = np.log(probabilities) * temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def calibration_summary(true_labels, probabilities, temperature=None, averaged=False):
    """What metrics.json's "calibration" holds: the model's `temperature`
    (None: the model has no temperature layer), ECE, the ECE the same
    model had before temperature scaling (at T = 1), the Brier score and
    NLL, all of `probabilities` (what the model outputs). `averaged`: the
    probabilities are means over test-time versions, from which the ones
    at T = 1 cannot be recovered: ece_uncalibrated is then None."""
    if averaged and temperature not in (None, 1.0):
        ece_uncalibrated = None
    else:
        uncalibrated = (
            probabilities
            if temperature in (None, 1.0)
            else rescale_probabilities(probabilities, temperature)
        )
        ece_uncalibrated = expected_calibration_error(true_labels, uncalibrated)
    return {
        "temperature": None if temperature is None else float(temperature),
        "ece": expected_calibration_error(true_labels, probabilities),
        "ece_uncalibrated": ece_uncalibrated,
        "brier": brier_score(true_labels, probabilities),
        "nll": negative_log_likelihood(true_labels, probabilities),
        "bins": NUM_BINS,
    }


# ---------------------------------------------------------------- trust in one prediction


def saved_bins(bins):
    """reliability_bins' arrays as JSON-ready rows, one per bin: lower,
    upper, count, confidence (the mean top-1 confidence) and accuracy, the
    last two None for an empty bin. What a run saves beside its model
    (artifacts.TEST_RELIABILITY_FILE) for `trust_at`."""

    def number(value):
        return None if not math.isfinite(value) else float(value)

    return [
        {
            "lower": float(bins["lower"][position]),
            "upper": float(bins["upper"][position]),
            "count": int(bins["count"][position]),
            "confidence": number(bins["confidence"][position]),
            "accuracy": number(bins["accuracy"][position]),
        }
        for position in range(len(bins["count"]))
    ]


@dataclasses.dataclass(frozen=True)
class Trust:
    """How often the test split's predictions at one confidence were right:
    the saved bin the confidence falls in, (lower, upper], its test images
    and their accuracy (None when they are fewer than `needed`)."""

    lower: float
    upper: float
    images: int
    accuracy: float | None
    needed: int

    def sentence(self):
        """The trust sentence the page shows next to an answer."""
        span = f"{100 * self.lower:.0f}\u2013{100 * self.upper:.0f}%"
        if self.accuracy is not None:
            return (
                f"On the test split, predictions at this confidence ({span}) were right "
                f"{self.accuracy:.0%} of the time ({self.images} images)."
            )
        few = "No test image" if not self.images else f"Only {self.images} test image{'s' * (self.images > 1)}"
        return (
            f"{few} had a confidence of {span}: too few to say how often predictions at this "
            f"confidence are right (at least {self.needed} needed)."
        )


def trust_at(rows, confidence, needed=MIN_TRUST_IMAGES):
    """The Trust of a prediction made with top-1 `confidence`, from a test
    split's saved bins (`saved_bins` rows): the bin it falls in, by the
    same rule the bins were made with (`confidence_bin`). Raises ValueError
    for rows that are not equal-width bins of [0, 1]."""
    edges = np.linspace(0.0, 1.0, len(rows) + 1)
    if not rows or not np.allclose([row["lower"] for row in rows], edges[:-1]) or not np.allclose(
        [row["upper"] for row in rows], edges[1:]
    ):
        raise ValueError(f"saved reliability bins must be equal-width bins of [0, 1]. Received: {len(rows)} rows")
    row = rows[int(confidence_bin(float(confidence), len(rows)))]
    images = int(row["count"])
    accuracy = row["accuracy"] if images >= needed else None
    return Trust(lower=row["lower"], upper=row["upper"], images=images, accuracy=accuracy, needed=needed)


def confidence_sentence(bins, units="images"):
    """What the confidences mean in words, from reliability_bins: the bin
    holding the most images, "when it says 97%, it is right 99% of the time
    (221 of 269 images are at that confidence)", or, with too few images at
    any confidence, that it cannot say. `units`: what the bins count (a
    multi-label model's bins count "yes/no answers", one per image and
    label)."""
    count = np.asarray(bins["count"])
    total = int(count.sum())
    fullest = int(np.argmax(count))
    if count[fullest] < MIN_TRUST_IMAGES:
        return f"too few {units} ({total}) to say how often its confidences are right"
    return (
        f"when it says {bins['confidence'][fullest]:.0%}, it is right {bins['accuracy'][fullest]:.0%} of the "
        f"time ({int(count[fullest])} of {total} {units} are at that confidence)"
    )


# ---------------------------------------------------------------- fitting T


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits, temperature=1.0):
    """softmax(logits / temperature) per row, float64."""
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def temperature_nll(logits, true_labels, temperature):
    """The mean NLL of softmax(logits / temperature) (no clipping)."""
    logits = np.asarray(logits, dtype=np.float64)
    log_probabilities = _log_softmax(logits / temperature)
    return float(-np.mean(log_probabilities[np.arange(len(true_labels)), true_labels]))


def fit_temperature(logits, true_labels, low=MIN_TEMPERATURE, high=MAX_TEMPERATURE, tolerance=1e-4):
    """The temperature T in [low, high] minimizing the NLL of
    softmax(logits / T) on labelled `logits` (N, classes), by golden-section
    search on log T.

    The NLL is convex in 1/T (a log-sum-exp of a linear function minus a
    linear one), so it has one minimum along log T and the search finds it
    to `tolerance` (relative) in about 40 steps, without SciPy. Returns
    float T. Raises ValueError without logits.
    """
    logits = np.asarray(logits, dtype=np.float64)
    true_labels = np.asarray(true_labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(true_labels):
        raise ValueError(
            "fit_temperature needs (N, classes) logits with one label each, N > 0. "
            f"Received: logits.shape={logits.shape}, labels={len(true_labels)}"
        )
    ratio = (math.sqrt(5) - 1) / 2
    left, right = math.log(low), math.log(high)

    def loss(log_temperature):
        return temperature_nll(logits, true_labels, math.exp(log_temperature))

    inner_left = right - ratio * (right - left)
    inner_right = left + ratio * (right - left)
    loss_left, loss_right = loss(inner_left), loss(inner_right)
    while right - left > tolerance:
        if loss_left <= loss_right:
            right, inner_right, loss_right = inner_right, inner_left, loss_left
            inner_left = right - ratio * (right - left)
            loss_left = loss(inner_left)
        else:
            left, inner_left, loss_left = inner_left, inner_right, loss_right
            inner_right = left + ratio * (right - left)
            loss_right = loss(inner_right)
    return float(math.exp((left + right) / 2))


def fit_on(logits, labels):
    """Fits the temperature on a split's logits and true labels: {"temperature",
    "fitted_on", "images", "every_image_right", and the split's NLL and ECE
    before (T = 1) and after}, what run_config.json records as "calibration".

    A split the model gets entirely right says nothing about how confident
    it should be: its NLL keeps falling as T goes to 0, so the fit only finds
    the search's lower bound. T then stays 1 (the raw softmax). Measured
    (benchmarks/calibration_bench.py, objects 4x40, seeds 1-3, every
    validation image right): T = 0.05 raised the median test ECE from 0.212
    at T = 1 to 0.278 and the test NLL from 1.00 to 4.03."""
    logits = np.asarray(logits, dtype=np.float64)
    every_image_right = bool(len(labels)) and bool(np.all(logits.argmax(axis=1) == np.asarray(labels)))
    temperature = 1.0 if every_image_right else fit_temperature(logits, labels)
    fitted = {"temperature": temperature, "fitted_on": "val", "images": int(len(labels)),
              "every_image_right": every_image_right}
    for name, value in (("before", 1.0), ("after", temperature)):
        fitted[f"val_nll_{name}"] = temperature_nll(logits, labels, value)
        fitted[f"val_ece_{name}"] = expected_calibration_error(labels, softmax(logits, value))
    return fitted


def fitted_lines(fitted):
    """What a run prints about its fitted temperature (fit_on's dict)."""
    temperature = fitted["temperature"]
    lines = [
        f"temperature {temperature:.3f} fitted on {fitted['images']} validation images"
        + (f" ({fitted['pairs']} image-label pairs, one T shared by every label)" if fitted.get("pairs") else "")
        + ": "
        f"NLL {fitted['val_nll_before']:.3f} -> {fitted['val_nll_after']:.3f}, "
        f"ECE {fitted['val_ece_before']:.1%} -> {fitted['val_ece_after']:.1%}"
    ]
    if fitted.get("every_image_right"):
        lines.append("note: the model gets every validation image right, so the validation split cannot say "
                     "how confident it should be: T kept at 1 (the raw softmax)")
    elif temperature > 0.99 * MAX_TEMPERATURE:
        lines.append("note: T is at its upper bound: on the validation split the model does about as well "
                     "as chance, so its calibrated probabilities are nearly uniform")
    elif temperature < 1.01 * MIN_TEMPERATURE:
        lines.append("note: T is at its lower bound: the model gets (nearly) every validation image right, "
                     "so the validation split cannot say how confident it should be")
    return lines


# ---------------------------------------------------------------- the model


def logits_layer(model):
    """The Dense layer whose output are the logits: "logits" in models built
    since temperature scaling exists, None in older ones (their last Dense
    has the softmax built in)."""
    names = {layer.name for layer in getattr(model, "layers", ())}
    return model.get_layer(model_builder.LOGITS_LAYER) if model_builder.LOGITS_LAYER in names else None


def model_temperature(model):
    """The temperature inside a model built by model_builder (1.0 until
    calibrated), or None for a model without a temperature layer (saved
    before temperature scaling existed)."""
    # An export runner (export.py) has no Keras layers: its temperature is
    # baked into the graph; the run config records it.
    if not hasattr(model, "layers") or model_builder.TEMPERATURE_LAYER not in {layer.name for layer in model.layers}:
        return None
    return float(1.0 / model.get_layer(model_builder.TEMPERATURE_LAYER).scale)


def logits_model(model):
    """A model sharing `model`'s layers that outputs its logits. Raises
    ValueError for a model without a "logits" layer."""
    import keras

    layer = logits_layer(model)
    if layer is None:
        raise ValueError(f"the model {model.name} has no 'logits' layer")
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_logits")


def head_output(model, logits):
    """`model`'s output for the logits `logits` ((N, classes) array): its own
    layers after "logits" (the temperature, then the activation), run
    eagerly on the array. What predicting the images gives, from logits
    already predicted (logits_model), so a model whose logits were traced
    for one split is not traced again, whole, for its probabilities.
    Returns float64 (N, classes); raises ValueError for a model without
    those layers."""
    names = {layer.name for layer in getattr(model, "layers", ())}
    head = (model_builder.TEMPERATURE_LAYER, model_builder.PREDICTIONS_LAYER)
    if not set(head) <= names:
        raise ValueError(f"the model {model.name} has no '{head[0]}' and '{head[1]}' layers")
    outputs = np.asarray(logits, dtype=np.float32)
    for name in head:
        outputs = model.get_layer(name)(outputs)
    return np.asarray(outputs, dtype=np.float64)


def with_temperature(model, temperature):
    """A model sharing `model`'s trained layers up to the logits, with a new
    head that divides them by `temperature` before its own output
    activation (model_builder.temperature_and_activation, as in training).
    The argmax never changes. Raises ValueError for a model without a
    "logits" layer or a temperature that is not positive."""
    import keras

    if not temperature > 0:
        raise ValueError(f"temperature must be positive. Received: temperature={temperature}")
    layer = logits_layer(model)
    if layer is None:
        raise ValueError(f"the model {model.name} has no 'logits' layer")
    outputs = model_builder.temperature_and_activation(
        layer.output, temperature, activation=model_builder.output_activation(model)
    )
    return keras.Model(model.inputs, outputs, name=model.name)


# ---------------------------------------------------------------- the mistakes


def top_losses(true_labels, probabilities, count=None):
    """The misclassified images, most confidently wrong first: ordered by the
    probability of the (wrong) predicted class, highest first (ties: the
    lower probability of the true class first, then by position). Returns
    at most `count` (None: all) positions."""
    true_labels, probabilities = _check(true_labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != true_labels)
    confidence = probabilities[wrong, predicted[wrong]]
    true_probability = probabilities[wrong, true_labels[wrong]]
    # np.lexsort sorts by the last key first; all keys ascending.
    order = np.lexsort((wrong, true_probability, -confidence))
    chosen = wrong[order]
    return (chosen if count is None else chosen[:count]).astype(int).tolist()


def most_confused(matrix, class_names, limit=10):
    """The most frequent mistakes in a confusion matrix (rows true, columns
    predicted): [{"true", "predicted", "count"}], largest count first (ties
    in class order), at most `limit`, only pairs with a mistake."""
    matrix = np.asarray(matrix)
    off_diagonal = [
        (int(matrix[row, column]), row, column)
        for row in range(len(class_names))
        for column in range(len(class_names))
        if row != column and matrix[row, column] > 0
    ]
    off_diagonal.sort(key=lambda entry: (-entry[0], entry[1], entry[2]))
    return [
        {"true": class_names[row], "predicted": class_names[column], "count": count}
        for count, row, column in off_diagonal[:limit]
    ]


def confused_lines(pairs):
    """Text lines for most-confused pairs: '  brick -> gravel  7'."""
    if not pairs:
        return ["no misclassified images"]
    width = max(len(f"{pair['true']} -> {pair['predicted']}") for pair in pairs)
    return [f"{pair['true'] + ' -> ' + pair['predicted']:<{width}}  {pair['count']}" for pair in pairs]
