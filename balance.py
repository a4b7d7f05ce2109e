"""How does training handle imbalanced classes (--balance): class weights, oversampling or focal loss, and which one a run uses?

`resolve` turns --balance (and its old spelling --class_weights) and the
training labels into a `Balance`: the mode, the class weights model.fit
takes (weights, `class_weights`: balanced, the one computation of them),
the per-class alpha of the focal loss (focal), and the line the run prints
to say which it used and why. `for_run` adds what the training stream and
the loss need for it and for --label_smoothing, --mixup and --cutmix
(one-hot labels). Oversampling itself is data_loader.oversampled_stream;
the losses are train_utils.training_loss.
"""

import dataclasses

import numpy as np

import data_loader
import train_utils
from errors import UserError

# auto balances when the largest class has more than this many times the
# images of the smallest (as --class_weights auto always did).
AUTO_RATIO = 1.5


@dataclasses.dataclass(frozen=True)
class Balance:
    """How one run balances its classes."""

    mode: str  # none, weights, oversample or focal
    line: str  # what the run prints
    class_weight: dict | None = None  # {class index: weight}, for model.fit (weights)
    alpha: tuple | None = None  # per-class alpha of the focal loss (focal)
    loss: object = "sparse_categorical_crossentropy"  # train_utils.training_loss
    one_hot: int = 0  # the number of classes when labels are one-hot, else 0
    mix: tuple = (0.0, 0.0)  # --mixup, --cutmix
    steps_per_epoch: int | None = None  # oversampled: the endless stream's epoch

    @property
    def loader_settings(self):
        """data_loader.make_dataset's settings for the training split (none
        when nothing is on, so several workers' pipelines stay as they are)."""
        settings = {"oversample": self.oversample, "one_hot": self.one_hot, "mix": self.mix}
        return settings if self.oversample or self.one_hot or any(self.mix) else {}

    @property
    def oversample(self):
        return self.mode == "oversample"


def requested_mode(balance, class_weights_option=None):
    """--balance, with the old --class_weights auto|none standing for
    --balance auto|none (config.check_balance refuses both at once)."""
    return class_weights_option if class_weights_option is not None and balance == "auto" else balance


def balanced_weights(labels, num_classes):
    """{class index: n / (k n_c)} for the classes that have training images
    (sklearn's "balanced" weights; a class without any gets 1)."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return {index: float(weight) for index, weight in enumerate(weights)}


def imbalance(counts):
    """Images of the largest class over the smallest, among those with any."""
    present = np.asarray(counts)[np.asarray(counts) > 0]
    return present.max() / present.min()


def class_weights(labels, num_classes, mode="auto"):
    """Balanced class weights {index: weight} (`balanced_weights`) from the
    training labels, or None: always with mode "always", never with "none";
    "auto" uses them when the largest class has more than AUTO_RATIO times
    the images of the smallest."""
    labels = np.asarray(labels, dtype=int)
    if mode == "none" or (mode == "auto" and imbalance(np.bincount(labels, minlength=num_classes)) <= AUTO_RATIO):
        return None
    return balanced_weights(labels, num_classes)


def class_weights_line(weights, class_names, mode):
    """What a run prints about its class weights (class_weights' result)."""
    if weights:
        return "class weights: " + ", ".join(f"{class_names[i]}={w:.3f}" for i, w in weights.items())
    return "class weights: none (classes are balanced enough)" if mode == "auto" else "class weights: none"


def resolve(balance, class_weights_option, labels, class_names):
    """The Balance of a run from its --balance and --class_weights and its
    training labels (ints). auto means weights when the largest class has
    more than AUTO_RATIO times the images of the smallest, else none."""
    labels = np.asarray(labels, dtype=int)
    num_classes = len(class_names)
    counts = np.bincount(labels, minlength=num_classes)
    ratio = imbalance(counts)
    mode = requested_mode(balance, class_weights_option)
    spelled = "--class_weights" if class_weights_option is not None and balance == "auto" else "--balance"
    if mode == "auto":
        if class_weights(labels, num_classes, "auto") is None:
            return Balance("none", f"balance: none (classes are balanced enough: largest/smallest {ratio:.2f} "
                           f"<= {AUTO_RATIO}, {spelled} auto)")
        mode, why = "weights", f"largest/smallest {ratio:.2f} > {AUTO_RATIO}, {spelled} auto"
    else:
        why = f"{spelled} {mode}"
    if mode == "none":
        return Balance("none", f"balance: none ({why})")
    if mode == "weights":
        weights = class_weights(labels, num_classes, "always")
        return Balance("weights", f"balance: {class_weights_line(weights, class_names, mode)} ({why})",
                       class_weight=weights)
    if mode == "focal":
        alpha = balanced_weights(labels, num_classes)
        shown = ", ".join(f"{class_names[i]}={value:.3f}" for i, value in alpha.items())
        return Balance("focal", f"balance: focal loss (gamma 2), alpha {shown} ({why})",
                       alpha=tuple(alpha.values()))
    return Balance("oversample", oversample_line(counts, class_names, why))


def oversample_line(counts, class_names, why):
    """What an oversampled run prints: each class's share of an epoch and
    how often each of its images comes round per epoch."""
    present = [i for i in range(len(counts)) if counts[i]]
    per_class = counts.sum() / len(present)  # images drawn from each class per epoch
    parts = [f"{class_names[i]} {counts[i]} images x{per_class / counts[i]:.2f}" for i in present]
    return (f"balance: oversampling, every class 1/{len(present)} of each epoch of {counts.sum()} images, "
            f"each image seen on average per epoch: {', '.join(parts)} (freshly augmented each time; {why})")


def for_run(balance, class_weights_option, labels, class_names, batch_size, label_smoothing=0.0, mix=(0.0, 0.0),
            workers=1):
    """The Balance of a run (resolve: --balance, --class_weights) with its
    loss (--label_smoothing), label format (one-hot with the --mixup and
    --cutmix strengths `mix`) and epoch length (oversampling: as many
    images as the training split). Raises UserError for what several
    workers cannot do yet: their training step (train_utils.step_functions)
    takes integer labels and resamples nothing."""
    if np.ndim(labels) == 2:
        return for_multi_label(balance, class_weights_option, labels, class_names, label_smoothing, mix, workers)
    chosen = resolve(balance, class_weights_option, labels, class_names)
    if workers > 1:
        given = [f"--{name} {value:g}" for name, value in
                 (("label_smoothing", label_smoothing), ("mixup", mix[0]), ("cutmix", mix[1])) if value]
        if chosen.mode in ("oversample", "focal"):
            given.insert(0, f"--balance {chosen.mode}")
        if given:
            raise UserError(f"{', '.join(given)}: not available with several workers yet; train on one machine "
                            f"or use --balance weights. Received: workers={workers}")
    mix = tuple(mix)
    loss, one_hot = train_utils.training_loss(len(class_names), chosen.alpha, label_smoothing, any(mix))
    steps = data_loader.epoch_steps(len(labels), batch_size) if chosen.oversample else None
    return dataclasses.replace(chosen, loss=loss, one_hot=one_hot, mix=mix, steps_per_epoch=steps)


def for_multi_label(balance, class_weights_option, labels, class_names, label_smoothing=0.0, mix=(0.0, 0.0),
                    workers=1):
    """The Balance of a multi-label run (multi-hot `labels`): each label is
    its own yes/no question under binary cross-entropy, so there is no
    class to weigh or oversample; --balance focal (binary focal
    cross-entropy, gamma 2) turns the loss towards the images a label is
    hard on, which helps rare labels; auto and none train with plain
    binary cross-entropy. Raises UserError for weights and oversample, and
    for several workers (their training step takes one class per image)."""
    mode = requested_mode(balance, class_weights_option)
    if workers > 1:
        raise UserError(f"a multi-label run cannot train on several workers yet: train on one machine. "
                        f"Received: workers={workers}")
    if mode in ("weights", "oversample"):
        raise UserError(
            f"--balance {mode} is for one class per image; in a multi-label run every label is its own yes/no "
            "question: use --balance focal (binary focal cross-entropy) for rare labels, or auto. "
            f"Received: balance={mode}"
        )
    present = np.asarray(labels).mean(axis=0) if len(labels) else np.zeros(len(class_names))
    rarest = int(np.argmin(present))
    share = f"rarest label {class_names[rarest]} in {present[rarest]:.0%} of the training images"
    mix = tuple(mix)
    if mode == "focal":
        loss, _ = train_utils.training_loss(len(class_names), (), label_smoothing, any(mix), multi_label=True)
        return Balance("focal", f"balance: binary focal loss (gamma 2) for every label ({share}; --balance focal)",
                       loss=loss, mix=mix)
    loss, _ = train_utils.training_loss(len(class_names), None, label_smoothing, any(mix), multi_label=True)
    return Balance("none", f"balance: none, binary cross-entropy per label ({share}; --balance focal "
                   f"for rare labels; --balance {mode})", loss=loss, mix=mix)
