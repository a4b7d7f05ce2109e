"""What kind of task is this: which labels an image has, and what that changes.

Two kinds: SINGLE_LABEL, exactly one class per image (a softmax over the
classes, cross-entropy, the most probable class is the answer), and
MULTI_LABEL, several labels per image, maybe none (a sigmoid per label,
binary cross-entropy, each label given when its probability reaches its
threshold). The kind is decided once, where the labels are read
(dataset_files.scan_csv: a labels CSV cell with several labels, one 1/0
column per label, --multi_label or --no_label; splits.index_dataset puts
it in the DatasetIndex as `task`), saved in the run's run_config.json
("task") and read back with the model (`saved_task`, through
inference.load_trained_model), and carried as a `Task` value. The places
that differ from one kind to another ask it:

- how labels are encoded (`Task.encode`: class numbers or multi-hot rows);
- the head's output activation (model_builder.build_classifier);
- the loss (train_utils.training_loss, balance.for_multi_label);
- the rule that turns probabilities into predicted labels
  (`Task.predicted`, with each label's threshold: label_metrics.py);
- the split (label_sets.py) and the scores (label_metrics.py, asked by
  metrics.Evaluation);
- the figures that fit one kind only (figures.Figure.multi_label);
- a saved model of a kind this version does not know is refused in one
  line (`saved_task`).
"""

import dataclasses

import numpy as np

from errors import UserError


@dataclasses.dataclass(frozen=True)
class Task:
    """One kind of task: its name (as saved in run_config.json), what it
    means in words, and the activation of the model's output layer."""

    name: str
    description: str
    activation: str
    multi_label: bool = False  # several labels per image: multi-hot labels, one sigmoid each

    def predicted(self, probabilities, thresholds=None):
        """The predicted labels of (N, classes) probabilities: for one class
        per image, the most probable class of each image (N,); for several,
        (N, classes) booleans, each probability at or above its label's
        threshold (`thresholds`: one per label, or one for all; 0.5 when
        None)."""
        probabilities = np.asarray(probabilities)
        if not self.multi_label:
            return probabilities.argmax(axis=-1)
        return probabilities >= (0.5 if thresholds is None else np.asarray(thresholds, dtype=probabilities.dtype))

    def encode(self, label_sets, class_names):
        """The training labels of images whose labels are `label_sets` (one
        tuple of names per image): int32 class numbers (N,) for one class
        per image, float32 multi-hot (N, classes) for several."""
        number = {name: position for position, name in enumerate(class_names)}
        if not self.multi_label:
            return np.array([number[labels[0]] for labels in label_sets], dtype=np.int32)
        encoded = np.zeros((len(label_sets), len(class_names)), dtype=np.float32)
        for row, labels in enumerate(label_sets):
            encoded[row, [number[name] for name in labels if name in number]] = 1.0
        return encoded


SINGLE_LABEL = Task("single_label", "one class per image", "softmax")
MULTI_LABEL = Task("multi_label", "several labels per image", "sigmoid", multi_label=True)

# Every kind this version knows, by its saved name.
TASKS = {task.name: task for task in (SINGLE_LABEL, MULTI_LABEL)}


def of_labels(labels):
    """The Task whose encoded labels `labels` are: multi-hot (2-D) labels
    are multi-label."""
    return MULTI_LABEL if np.ndim(labels) == 2 else SINGLE_LABEL


def saved_task(run_config, where="run_config.json"):
    """The Task a saved run was trained for (run_config.json's "task"; a run
    saved before tasks were recorded is single-label). Raises UserError
    naming `where` for a kind this version does not know."""
    name = run_config.get("task", SINGLE_LABEL.name)
    if name not in TASKS:
        raise UserError(
            f"{where} says the model was trained for the task '{name}', which this version does not know "
            f"(it knows {', '.join(TASKS)}): use the version that trained it"
        )
    return TASKS[name]
