"""The training recipe's options: --schedule cosine with --warmup_epochs,
--weight_decay (AdamW), --ema (the averaged weights validated, saved,
published and resumed exactly) and --time (a training budget)."""

import csv
import os

import numpy as np
import pytest

import config
import main as main_script
import resume
import runs
import train_utils
from conftest import TINY, make_flat_dataset, one_line_error, read_json
from errors import UserError


def tiny_plan(tmp_path, **fields):
    """A TrainPlan for a two-input Dense model, from scratch, no fine-tuning."""
    values = dict(
        epochs=4, fine_tune_epochs=0, fine_tune_layers=0, learning_rate=1e-2, patience=50, pretrained=False,
        jit_compile=False, best_model_path=str(tmp_path / "best_model.keras"),
        history_path=str(tmp_path / "history.csv"), resume_folder=str(tmp_path / "resume"), epoch_steps=4,
    )
    return train_utils.TrainPlan(**{**values, **fields})


# ---------------------------------------------------------------- the optimizer and its schedule


def test_weight_decay_gives_adamw_and_none_gives_adam():
    import keras

    decayed = train_utils.make_optimizer(1e-3, recipe=train_utils.Recipe(weight_decay=0.05))
    assert isinstance(decayed, keras.optimizers.AdamW) and decayed.weight_decay == pytest.approx(0.05)
    plain = train_utils.make_optimizer(1e-3)
    assert type(plain) is keras.optimizers.Adam and not plain.use_ema
    averaged = train_utils.make_optimizer(1e-3, epoch_steps=50, recipe=train_utils.Recipe(ema=True))
    assert averaged.use_ema and averaged.ema_momentum == pytest.approx(0.99)  # about the last 2 epochs


def test_the_ema_momentum_spans_about_two_epochs_within_bounds():
    assert train_utils.ema_momentum(5) == pytest.approx(0.9)
    assert train_utils.ema_momentum(1) == pytest.approx(0.9)  # never a shorter memory than 10 steps
    assert train_utils.ema_momentum(500) == pytest.approx(0.999)
    assert train_utils.ema_momentum(10**6) == pytest.approx(0.9999)


def test_cosine_warms_up_linearly_then_decays_to_zero_over_the_phase():
    recipe = train_utils.Recipe(schedule="cosine", warmup_epochs=2)
    schedule = train_utils.make_optimizer(1e-3, epochs=10, epoch_steps=5, recipe=recipe).learning_rate
    assert not isinstance(schedule, float)  # a schedule, not a fixed rate
    rate = train_utils.make_optimizer(1e-3, epochs=10, epoch_steps=5, recipe=recipe)._learning_rate

    def at(step):
        return float(rate(step))

    assert at(0) == pytest.approx(0.0)
    assert at(5) == pytest.approx(5e-4)  # halfway through the 10 warm-up steps
    assert at(10) == pytest.approx(1e-3)  # the top, then the cosine over the other 40 steps
    assert at(30) == pytest.approx(5e-4, rel=1e-4)  # halfway down
    assert at(50) == pytest.approx(0.0, abs=1e-9)
    without = train_utils.make_optimizer(1e-3, epochs=10, epoch_steps=5, recipe=train_utils.Recipe("cosine"))
    assert float(without._learning_rate(0)) == pytest.approx(1e-3)


def test_fine_tuning_gets_its_own_cosine_at_a_tenth_of_the_rate(tmp_path):
    plan = tiny_plan(tmp_path, epochs=6, fine_tune_epochs=3, pretrained=True, epoch_steps=2,
                     recipe=train_utils.Recipe("cosine", warmup_epochs=1, weight_decay=0.01))
    finetune = train_utils.phase_optimizer(plan, finetune=True)._learning_rate
    assert float(finetune(2)) == pytest.approx(1e-3)  # the top after one epoch's warm-up: lr / 10
    assert float(finetune(6)) == pytest.approx(0.0, abs=1e-9)  # down to 0 after 3 epochs
    head = train_utils.phase_optimizer(plan)._learning_rate
    assert float(head(2)) == pytest.approx(1e-2) and float(head(12)) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- the time budget


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_time_budget_stops_at_the_first_epoch_end_after_it_is_spent():
    import keras

    clock = FakeClock()
    budget = train_utils.TimeBudget(60, spent_before=15, clock=clock)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.stop_training = False
    callback = budget.callback(model, announce=False)
    for epoch, seconds in enumerate((20, 20)):  # 15 + 40 s: not yet
        clock.now += seconds
        callback.on_epoch_end(epoch, {})
        assert not model.stop_training
    clock.now += 20  # 75 s of a 60 s budget
    callback.on_epoch_end(2, {})
    assert model.stop_training and budget.stopped_epoch == 2
    assert budget.line(50) == "stopped by --time 1 after 1.2 min at epoch 3 of 50"
    assert train_utils.TimeBudget(None, clock=clock).line(50) is None
    unlimited = train_utils.TimeBudget(None, clock=clock)
    clock.now += 1e9
    assert not unlimited.ends_at(7)


# ---------------------------------------------------------------- the options


@pytest.mark.parametrize("extra, message", [
    (["--weight_decay", "1.5"], "weight_decay must be between 0 and 1. Received: weight_decay=1.5"),
    (["--weight_decay", "-0.1"], "weight_decay must be between 0 and 1"),
    (["--weight_decay", "nan"], "weight_decay must be a finite number"),
    (["--time", "0"], "time must be positive. Received: time=0"),
    (["--time", "-3"], "time must be positive"),
    (["--time", "inf"], "time must be a finite number"),
    (["--time", "soon"], "time must be a number. Received: time=soon"),
    (["--warmup_epochs", "-1"], "warmup_epochs must be 0 or more"),
    (["--warmup_epochs", "2"], "--warmup_epochs warms up the cosine schedule: add --schedule cosine"),
    (["--schedule", "cosine", "--warmup_epochs", "10"], "--warmup_epochs must be below --epochs"),
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--ema", "2"], "argument --ema: invalid choice: 2"),
])
def test_bad_recipe_options_are_one_line_and_exit_2(tmp_path, capsys, extra, message):
    folder = make_flat_dataset(tmp_path / "data", per_class=2)
    code = main_script.main(["--image_dir", str(folder), *TINY, "--epochs", "10", *extra])
    assert code == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("given", [{"ema": 1}, {"time": 5.0}])
def test_ema_and_time_are_refused_on_several_workers(given):
    options = config.Config(image_dir="photos", **given)
    with pytest.raises(UserError, match="--ema and --time train on one machine, not with TF_CONFIG workers"):
        runs.plan_runs(options, given, cluster=object())


def test_the_recipe_options_are_in_help_with_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main_script.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--schedule {plateau,cosine}", "--warmup_epochs N", "--weight_decay W", "--ema {0,1}",
                  "--time MINUTES", "(default: plateau)", "(default: off)"):
        assert shown in text


# ---------------------------------------------------------------- training


def dense_model(seed=3):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    return model


def tiny_data():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 4)).astype(np.float32)
    labels = (images[:, 0] + 0.5 * images[:, 1] > 0).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # 4 steps, never shuffled


def history(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def averages(optimizer):
    """The optimizer's moving averages of the weights (Keras' "average" variables)."""
    return [variable.numpy() for variable in optimizer.variables if "average" in variable.path]


@pytest.mark.slow
def test_ema_checkpoints_the_averages_and_a_resumed_run_goes_on_exactly(tmp_path):
    """A run stopped after epoch 2 (a fake clock's budget: the same resume
    point a kill leaves) and resumed ends with the same history, to the
    last digit, as one that was never stopped: the resume point held the
    raw weights in the model and the averages in the optimizer. Its best
    checkpoint holds the averaged weights, not the raw ones. The cosine's
    learning rate is in the history at every epoch."""
    import keras

    recipe = train_utils.Recipe("cosine", warmup_epochs=1, weight_decay=0.01, ema=True)
    whole = tiny_plan(tmp_path / "whole", recipe=recipe)
    os.makedirs(tmp_path / "whole")
    data = tiny_data()
    train_utils.train(dense_model(), data, data, whole)

    parted = tiny_plan(tmp_path / "parted", recipe=recipe)
    os.makedirs(tmp_path / "parted")
    clock = FakeClock()
    budget = train_utils.TimeBudget(1.0, clock=clock)
    seconds = iter([0.0, 2.0])  # the budget is spent at the end of the second epoch

    original_ends_at = budget.ends_at

    def ends_at(epoch):  # each epoch end, the clock moves on
        clock.now += next(seconds, 0.0)
        return original_ends_at(epoch)

    budget.ends_at = ends_at
    train_utils.train(dense_model(), data, data, parted, budget=budget)
    assert budget.stopped_epoch == 1 and len(history(parted.history_path)) == 2

    point = resume.read_progress(str(tmp_path / "parted")).point
    assert point.epoch == 1 and point.spent_seconds == pytest.approx(2.0)
    saved = keras.models.load_model(point.model_path(str(tmp_path / "parted")))
    best = keras.models.load_model(parted.best_model_path)
    # The checkpoint holds the averages (an epoch that was not the run's
    # last: raw and averaged weights differ), the resume point the raw
    # weights in the model and the averages in its optimizer.
    checkpointed, raw, averaged = best.get_weights(), saved.get_weights(), averages(saved.optimizer)
    assert len(averaged) == len(raw)
    assert not all(np.allclose(a, b) for a, b in zip(checkpointed, raw))
    losses = [float(row["val_loss"]) for row in history(parted.history_path)]
    assert losses[1] < losses[0]  # the checkpoint is epoch 2's
    assert all(np.allclose(a, b) for a, b in zip(checkpointed, averaged))

    train_utils.train(saved, data, data, parted, point)

    rows, again = history(whole.history_path), history(parted.history_path)
    assert len(rows) == len(again) == 4
    for row, other in zip(rows, again):
        for column in ("loss", "val_loss", "learning_rate"):
            assert float(other[column]) == pytest.approx(float(row[column]), rel=1e-5), (column, row, other)
    rates = [float(row["learning_rate"]) for row in rows]
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(0.0, abs=1e-9)
    assert rates == sorted(rates, reverse=True)


@pytest.mark.slow
def test_time_stops_a_real_run_which_publishes_its_best_model_and_says_so(recipe_run):
    out = recipe_run["printed"]
    published = read_json(recipe_run["artifacts"] / "run_config.json")
    assert published["options"]["time"] == 0.001 and published["options"]["ema"] == 1
    assert published["options"]["schedule"] == "cosine" and published["options"]["weight_decay"] == 0.05
    record = published["training"]
    assert record["epochs"] == 1 and record["stopped"].startswith("stopped by --time 0.001 after ")
    assert record["stopped"].endswith("at epoch 1 of 30")
    assert "training stopped by --time 0.001" in out and "the model is its best epoch so far" in out
    assert (recipe_run["artifacts"] / "best_model.keras").is_file()
    rows = history(recipe_run["results"] / "training_curves" / recipe_run["run"] / "history.csv")
    # The warm-up's top, end of epoch 1: the rate the range test found.
    assert float(rows[0]["learning_rate"]) == pytest.approx(published["learning_rate_found"]["rate"], rel=1e-5)


# recipe_run's RandAugment part is checked here, beside the other recipe checks on
# the same run: in another file, a second test process would sit waiting for the
# one building it (a minute of one core).
@pytest.mark.slow
def test_a_randaugment_run_with_erasing_trains_saves_its_options_and_previews_them(recipe_run):
    assert "augmentation randaugment after flip horizontal, random erasing p=0.5" in recipe_run["printed"]
    options = read_json(recipe_run["artifacts"] / "runs" / recipe_run["run"] / "run_config.json")["options"]
    assert (options["augment_policy"], options["erasing"]) == ("randaugment", 0.5)
    history = recipe_run["results"] / "training_curves" / recipe_run["run"] / "history.csv"
    assert len(history.read_text().splitlines()) == 2  # a header and the one epoch --time allowed
    preview = recipe_run["results"] / "augmentation_preview" / recipe_run["run"] / "augmentation_preview.png"
    assert preview.stat().st_size > 10_000
