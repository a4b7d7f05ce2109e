"""What kind of task is this: which labels an image has, and what that changes.

Today there is one kind, SINGLE_LABEL: exactly one class per image (a
softmax over the classes, cross-entropy, the most probable class is the
answer). The kind is decided once, where the labels are read
(splits.index_dataset puts it in the DatasetIndex as `task`), saved in the
run's run_config.json ("task") and read back with the model
(`saved_task`, through inference.load_trained_model), and carried as a
`Task` value. The few places that differ from one kind to another ask it,
and only they:

- the head's output activation (model_builder.build_classifier);
- the rule that turns probabilities into predicted labels
  (metrics.Evaluation.predicted);
- a saved model of a kind this version does not know is refused in one
  line (`saved_task`).

A second kind (several labels per image: sigmoid outputs, binary
cross-entropy, a threshold per label, per-label metrics) is a second Task
here, decided in splits.index_dataset from a labels CSV whose cells hold
several labels; its loss is then chosen beside train_utils.training_loss
and its metrics beside metrics.evaluation_metrics, asking the same value.
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

    def predicted(self, probabilities):
        """The predicted labels of (N, classes) probabilities: for one class
        per image, the most probable class of each image."""
        return np.asarray(probabilities).argmax(axis=-1)


SINGLE_LABEL = Task("single_label", "one class per image", "softmax")

# Every kind this version knows, by its saved name.
TASKS = {task.name: task for task in (SINGLE_LABEL,)}


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
