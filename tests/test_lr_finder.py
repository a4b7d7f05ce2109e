"""lr_finder.py and --learning_rate auto / --lr_find: the range test, fastai's
valley suggestion on synthetic loss curves, the options, the refusals, and
(slow) a real tiny run that finds its rate and a --lr_find that trains nothing."""

import json
import os
import shutil

import numpy as np
import pytest

import config
import lr_finder
import main as main_script
from conftest import TINY, make_flat_dataset, one_line_error, read_json
from errors import UserError


def curve(seed=0, noise=0.0):
    """A synthetic range test of 100 steps, as one looks: flat at 2.3
    below 1e-5, falling steeply to 0.4 at 1e-2, then exploding; with
    `noise`, each step's loss jittered."""
    rates = np.array([lr_finder.exponential_rate(step) for step in range(lr_finder.STEPS)])
    position = np.log10(rates)
    losses = np.where(position < -5, 2.3, 2.3 - 1.9 * (position + 5) / 3)
    losses = np.where(position > -2, 0.4 + 6 * (position + 2) ** 2, losses)
    losses = losses + np.random.default_rng(seed).normal(0, noise, len(losses))
    return lr_finder.RangeTest(rates, losses, "all 100 steps run")


# ---------------------------------------------------------------- the suggestion


@pytest.mark.parametrize("seed, noise", [(0, 0.0), (1, 0.05), (2, 0.1), (3, 0.15)])
def test_the_suggestion_sits_on_the_steep_descent_before_the_minimum(seed, noise):
    test = curve(seed, noise)
    suggestion = lr_finder.suggest(test)
    smoothed = test.smoothed
    lowest = int(np.nanargmin(smoothed))

    # On the steep descent (1e-5 to 1e-2), before the smoothed minimum.
    assert 1e-5 < suggestion.rate < 1e-2 and suggestion.rate < test.rates[lowest] / 10
    assert suggestion.valley[0] < suggestion.step < suggestion.valley[1] <= lowest + 1
    # The smoothed loss falls there, and has fallen since the start.
    assert smoothed[suggestion.step + 1] < smoothed[suggestion.step - 1]
    assert smoothed[suggestion.step] < smoothed[0] - 0.1


def test_valley_is_fastais_longest_descent_and_its_middle():
    # Flat, a descent from position 3 to 8 (lds: 1 1 1 1 2 3 4 5 6), a rise.
    losses = [3, 3, 3, 3, 2.5, 2, 1.5, 1, 0.5, 1, 3]
    # start = end - lds[end] = 8 - 6 = 2; s = 2; 2 + int(2) + int(1) = 5.
    assert lr_finder.valley(np.array(losses)) == (5, 2, 8)
    # fastai's start of a descent from the first point is -1: kept at 0.
    assert lr_finder.valley(np.array([5.0, 4, 3, 2, 1, 2, 3])) == (0, 0, 4)


def test_a_flat_curve_is_said_to_say_little():
    steep = lr_finder.Finding(curve(), lr_finder.suggest(curve()))
    flat_test = lr_finder.RangeTest(curve().rates, 1.386 + np.random.default_rng(0).normal(0, 1e-4, 100), "")
    flat = lr_finder.Finding(flat_test, lr_finder.suggest(flat_test))
    assert not steep.flat and "before its minimum" in steep.lines()[1] and len(steep.lines()) == 2
    assert flat.flat and flat.lines()[-1].startswith("warning: the smoothed loss hardly falls")


def test_the_suggestion_leaves_out_the_first_tenth_and_the_last_five_steps():
    test = curve()
    # A dip in the first ten steps and in the last five would be the longest
    # descents' ends if they were read.
    losses = test.losses.copy()
    losses[:10] = np.linspace(9, 0.01, 10)
    suggestion = lr_finder.suggest(lr_finder.RangeTest(test.rates, losses, test.stopped))
    assert 10 <= suggestion.valley[0] and suggestion.valley[1] < len(losses) - 5


def test_a_curve_that_is_never_finite_is_one_line_asking_for_a_number():
    rates = np.array([lr_finder.exponential_rate(step) for step in range(20)])
    test = lr_finder.RangeTest(rates, np.full(20, np.nan), "stopped at step 1: the loss was no longer finite")
    with pytest.raises(UserError, match="give --learning_rate a number"):
        lr_finder.suggest(test)


def test_smoothing_is_debiased_and_the_test_stops_on_divergence_or_nan():
    assert lr_finder.smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert lr_finder.smoothed([1.0, 3.0])[1] == pytest.approx((0.98 * 0.02 * 1 + 0.02 * 3) / (1 - 0.98**2))
    assert lr_finder.stop_reason(np.array([2.0, 1.0, 3.9])) is None
    assert "4x its minimum" in lr_finder.stop_reason(np.array([2.0, 1.0, 4.1]))
    assert "no longer finite" in lr_finder.stop_reason(np.array([2.0, np.nan]))
    assert lr_finder.exponential_rate(0) == pytest.approx(1e-7)
    assert lr_finder.exponential_rate(50) == pytest.approx(1e-7 * 1e4)


def test_the_range_test_grows_the_rate_and_puts_every_weight_back():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    before = [weight.copy() for weight in model.get_weights()]
    rng = np.random.default_rng(0)
    batches = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 3, 32))).batch(8)  # 4 batches, cycled

    def compile_at(model, rate):
        model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy")

    test = lr_finder.range_test(model, batches, compile_at, steps=40)

    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert len(test.losses) == len(test.rates) and 10 < len(test.losses) <= 40
    assert np.allclose(np.diff(np.log(test.rates)), np.log(1e8) / 40)
    assert np.isfinite(test.losses[:10]).all()


# ---------------------------------------------------------------- the options


def test_learning_rate_takes_a_number_or_auto_and_lr_is_its_short_spelling():
    parser = main_script.build_parser()
    assert parser.parse_args(["--learning_rate", "auto"]).learning_rate == "auto"
    assert parser.parse_args(["--lr", "AUTO"]).learning_rate == "auto"
    assert parser.parse_args(["--lr=0.01"]).learning_rate == 0.01
    assert parser.parse_args([]).learning_rate == 1e-3 and parser.parse_args([]).lr_find is False
    # --resume compares what was given under the option's own name.
    assert config.given_options(parser, ["--lr", "0.01", "--lr_find"]) == {"learning_rate": 0.01, "lr_find": True}
    assert config.first_different({"learning_rate": 0.01}, {"learning_rate": "auto"}, ()) == (
        "learning_rate", 0.01, "auto")
    assert "`--learning_rate` (`--lr`)" in config.options_markdown("main")
    assert "--learning_rate RATE|auto, --lr RATE|auto" in parser.format_help()


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-0.1"], "learning_rate must be positive. Received: learning_rate=-0.1"),
    (["--learning_rate", "0"], "learning_rate must be positive"),
    (["--lr", "fast"], "learning_rate must be a number or auto. Received: learning_rate=fast"),
    (["--lr", "nan"], "learning_rate must be a finite number. Received: learning_rate=nan"),
    (["--lr_find", "--folds", "3"], "each fold run finds its own rate. Received: lr_find=True, folds=3"),
    (["--lr_find", "--resume"], "a resumed run keeps its own learning rate"),
    (["--lr_find", "--backbone", "mobilenet_v2,resnet50"], "give one --backbone"),
])
def test_bad_learning_rate_options_are_one_line_and_exit_2(tmp_path, argv, message, capsys):
    data = make_flat_dataset(tmp_path / "data", per_class=2)
    assert main_script.main(["--image_dir", data, *argv, "--artifacts_dir", str(tmp_path / "art")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("given", [["--learning_rate", "auto"], ["--lr_find"]])
def test_several_workers_are_refused_the_range_test_before_any_wait(tmp_path, monkeypatch, capsys, given):
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    data = make_flat_dataset(tmp_path / "data", per_class=2)
    assert main_script.main(["--image_dir", data, *given, "--artifacts_dir", str(tmp_path / "art"),
                             "--results_dir", str(tmp_path / "res")]) == 2
    assert "the learning-rate range test runs on one machine, not with TF_CONFIG workers" in one_line_error(capsys)
    assert not (tmp_path / "art").exists()


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_a_run_finds_its_rate_and_lr_find_alone_trains_nothing(recipe_run, tmp_path, capsys):
    output, stamp, res = recipe_run["printed"], recipe_run["run"], recipe_run["results"]
    saved = read_json(recipe_run["artifacts"] / "run_config.json")
    found = saved["learning_rate_found"]
    assert saved["options"]["learning_rate"] == "auto" and found["method"] == "valley"
    assert np.isfinite(found["rate"]) and 1e-7 < found["rate"] < 10 and 15 < found["steps"] <= 100
    assert "==> Finding the learning rate" in output and f"suggested learning rate: {found['rate']:.3g}" in output
    folder = res / "lr_finder" / stamp
    rows = (folder / "lr_finder.csv").read_text().splitlines()
    assert rows[0] == "step,learning_rate,loss,smoothed_loss,suggested" and len(rows) == found["steps"] + 1
    assert sum(row.endswith(",1") for row in rows) == 1
    assert (folder / "lr_finder.png").read_bytes()[:4] == b"\x89PNG"
    assert "lr_finder.png" in (res / "report" / stamp / "report.html").read_text()
    # The first epoch's rate is the found one (the end of cosine's warm-up epoch).
    history = (res / "training_curves" / stamp / "history.csv").read_text().splitlines()
    column = history[0].split(",").index("learning_rate")
    assert float(history[1].split(",")[column]) == pytest.approx(found["rate"], rel=1e-5)

    # --lr_find alone, beside that run (a copy of its artifacts).
    art, res = tmp_path / "art", tmp_path / "res"
    shutil.copytree(recipe_run["artifacts"], art, symlinks=True)
    published = (art / "best_model.keras").read_bytes()
    common = ["--image_dir", recipe_run["data"], *TINY, "--artifacts_dir", str(art), "--results_dir", str(res)]
    assert main_script.run_training([*common, "--lr_find"]).finding is not None
    output = capsys.readouterr().out
    assert "==> Training" not in output and "to train with it: python main.py --image_dir" in output
    assert "--learning_rate " in output.splitlines()[-2]
    # Nothing trained, published or left for --resume: only its results stay.
    assert (art / "best_model.keras").read_bytes() == published
    assert sorted(os.listdir(art / "runs")) == [stamp]
    (only,) = os.listdir(res / "lr_finder")
    assert (res / "lr_finder" / only / "lr_finder.png").is_file()
