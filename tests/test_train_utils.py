"""Training's stopping rules (the until-above-chance gate before EarlyStopping and
ReduceLROnPlateau), the chance baseline, and the phase callbacks."""

import os

import numpy as np
import pytest

import train_utils


def stopping_trace(chance, epochs, patience=4):
    """(epoch training stopped at or None, learning rates after each epoch)
    for train_utils' phase callbacks' stopping rules fed these
    (val_accuracy, val_loss) epochs, with the until-above-chance gate
    before them as in phase_callbacks."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2, patience=patience // 2)
    early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    callbacks = keras.callbacks.CallbackList(
        [train_utils.until_above_chance(chance, early_stopping, reduce_lr), reduce_lr, early_stopping], model=model
    )
    callbacks.on_train_begin()
    rates = []
    for epoch, (accuracy, loss) in enumerate(epochs):
        callbacks.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
        rates.append(float(model.optimizer.learning_rate))
        if model.stop_training:
            return epoch, rates
    return None, rates


def test_epochs_at_chance_neither_stop_training_nor_cut_the_learning_rate():
    # Six epochs at chance whose val_loss only grows (BatchNorm settling,
    # as measured from scratch on a small folder), then learning.
    at_chance = [(float(np.float32(12 / 36)), 1.1 + epoch) for epoch in range(6)]  # as Keras logs it
    learning = [(0.7, 3.0), (0.8, 2.0), (0.9, 1.0), (0.9, 1.5), (0.9, 1.6), (0.9, 1.7), (0.9, 1.8)]
    stopped, rates = stopping_trace(1 / 3, at_chance + learning)

    assert rates[:8] == pytest.approx([1e-3] * 8)  # no cut at chance, nor at the first epochs above it
    assert stopped == 12  # four epochs without a better val_loss than epoch 9's
    stopped_today, rates_today = stopping_trace(None, at_chance + learning)
    assert stopped_today == 4 and rates_today[2] == pytest.approx(2e-4)


def test_the_log_says_once_that_epochs_at_chance_are_normal_and_once_when_they_end(capsys):
    at_chance = [(float(np.float32(12 / 36)), 1.1 + epoch) for epoch in range(6)]
    stopping_trace(1 / 3, at_chance + [(0.7, 3.0), (0.8, 2.0)])

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "Epoch 1: val_accuracy 0.3333 is no better than always answering the largest class (0.3333): normal from "
        "scratch while BatchNorm's statistics settle (val_loss may climb meanwhile); epochs at chance count neither "
        "for early stopping nor for the learning-rate drop",
        "Epoch 7: val_accuracy 0.7000 beats chance (0.3333) after 6 epoch(s) at it: early stopping and the "
        "learning-rate drop count from here",
    ]
    assert train_utils.epochs_at_chance([a for a, _ in at_chance] + [0.7, 0.3], 1 / 3) == 6


def test_a_model_above_chance_from_the_start_says_nothing_of_chance(capsys):
    stopping_trace(0.5, [(0.8, 1.0), (0.4, 0.9)])
    assert capsys.readouterr().out == ""
    assert train_utils.epochs_at_chance([0.8, 0.4], 0.5) == 0 and train_utils.epochs_at_chance([0.4], None) == 0


def test_a_model_above_chance_from_the_start_stops_as_without_the_gate():
    epochs = [(0.8, 1.0), (0.85, 0.8), (0.85, 0.9), (0.85, 0.9), (0.8, 1.0), (0.86, 1.1), (0.9, 0.7)]
    assert stopping_trace(0.5, epochs) == stopping_trace(None, epochs)
    assert stopping_trace(0.5, epochs)[0] == 5


def test_the_gate_opens_once_and_later_epochs_at_chance_count():
    # Above chance at epoch 1, back at chance after: those epochs count.
    epochs = [(0.5, 1.0), (0.7, 0.5), (0.5, 2.0), (0.5, 2.0), (0.5, 2.0), (0.5, 2.0)]
    assert stopping_trace(0.5, epochs)[0] == 5


def test_majority_share_is_the_largest_class_fraction():
    assert train_utils.majority_share([0, 1, 1, 2]) == 0.5
    assert train_utils.majority_share(np.array([3, 3, 3])) == 1.0
    assert train_utils.majority_share([]) is None


def test_phase_callbacks_hold_early_stopping_and_the_learning_rate_at_chance(tmp_path):
    import keras

    plan = train_utils.TrainPlan(
        epochs=20, fine_tune_epochs=0, fine_tune_layers=0, learning_rate=1e-3, patience=2, pretrained=False,
        jit_compile=False, best_model_path=str(tmp_path / "best.keras"), history_path=str(tmp_path / "h.csv"),
        resume_folder=str(tmp_path / "resume"), chance_accuracy=0.5,
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    callbacks = train_utils.phase_callbacks(plan, train_utils.best_checkpoint(plan.best_model_path), None, model)
    rules = [c for c in callbacks if isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau))]
    stopping = keras.callbacks.CallbackList([callbacks[0], *rules], model=model)
    stopping.on_train_begin()
    for epoch in range(8):
        stopping.on_epoch_end(epoch, {"val_accuracy": 0.5, "val_loss": 1.0 + epoch})
    assert not model.stop_training and float(model.optimizer.learning_rate) == pytest.approx(1e-3)


def test_a_half_written_checkpoint_left_by_a_killed_process_is_never_published(tmp_path):
    """SIGKILL while Keras wrote the staged checkpoint leaves it half
    written (measured: 0 bytes). A resumed run whose first epoch does not
    beat the saved best must keep the saved best model, not promote that
    leftover (it published an unreadable best_model.keras), and removes it."""
    import keras
    import tensorflow as tf

    import artifacts
    import resume

    best = tmp_path / "best_model.keras"
    best.write_bytes(b"the best model so far")
    staged = tmp_path / os.path.basename(artifacts.staging_path(str(best)))
    staged.write_bytes(b"")
    plan = train_utils.TrainPlan(
        epochs=2, fine_tune_epochs=0, fine_tune_layers=0, learning_rate=1e-3, patience=5, pretrained=False,
        jit_compile=False, best_model_path=str(best), history_path=str(tmp_path / "history.csv"),
        resume_folder=str(tmp_path / "resume"),
    )
    # The saved best's val_loss, 0, cannot be beaten by a cross-entropy.
    point = resume.ResumePoint(stamp="run", history_path=plan.history_path, phase="head", epoch=0,
                               best_val_loss=0.0, model_file="")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    train_utils.compile_model(model, 1e-3, jit_compile=False)
    data = tf.data.Dataset.from_tensor_slices((np.eye(2, dtype=np.float32), np.array([0, 1]))).batch(2)

    train_utils.train(model, data, data, plan, point)

    assert best.read_bytes() == b"the best model so far"
    assert not staged.exists()


def test_the_training_plan_names_early_stopping_only_when_it_can_stop_a_phase():
    assert train_utils.training_plan_line(2, 5, False, 0, 0) == "up to 2 epochs from scratch"
    assert train_utils.training_plan_line(5, 5, False, 0, 0) == "up to 5 epochs from scratch"
    assert train_utils.training_plan_line(6, 5, False, 0, 0).endswith(
        "(early stopping after 5 epochs without a better val_loss)")
    # A short frozen phase, a long fine-tuning one: it can stop the latter.
    assert "early stopping" in train_utils.training_plan_line(3, 5, True, 10, 20)
    assert "early stopping" not in train_utils.training_plan_line(3, 5, True, 0, 20)
    # Fine-tuning epochs do not count without pretrained weights (none run).
    assert "early stopping" not in train_utils.training_plan_line(3, 5, False, 10, 20)


def test_the_resume_point_copies_the_checkpoint_of_an_improved_epoch_and_saves_the_model_otherwise(tmp_path, monkeypatch):
    """After an epoch whose val_loss improved, the promoted checkpoint is
    this model as it is (weights and optimizer): the resume point copies
    it rather than serialising the model again. After any other epoch,
    it saves the model (and always with --ema, whose checkpoint holds the
    averages: test_recipe_training's resumed EMA run checks that one)."""
    import keras

    import artifacts
    import resume

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    train_utils.compile_model(model, 1e-3, jit_compile=False)
    model.train_on_batch(np.eye(2, dtype=np.float32), np.array([0, 1]))
    best = tmp_path / "best_model.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True)
    checkpoint.set_model(model)
    point = resume.ResumePoint(stamp="run", history_path="h.csv", phase="head", epoch=0, best_val_loss=0.0,
                               model_file="")
    folder = tmp_path / "resume"

    def read_state():
        return artifacts.read_json(folder / resume.RESUME_STATE)

    def saved_point():
        return folder / read_state()["model_file"]

    serialised = []
    save_model = artifacts.save_model
    monkeypatch.setattr(artifacts, "save_model", lambda model, path: serialised.append(path) or save_model(model, path))
    callback = resume.resume_callback(str(folder), model, point, checkpoint, best_model_path=str(best))
    callback.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 0.5})  # improved: the checkpoint writes the model
    callback.on_epoch_end(0, {"val_loss": 0.5})
    assert serialised == [] and saved_point().read_bytes() == best.read_bytes()
    reloaded = keras.models.load_model(saved_point())
    assert int(reloaded.optimizer.iterations) == int(model.optimizer.iterations) == 1
    for ours, theirs in zip(reloaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)

    # Not improved: the file there is an older model (here not even one).
    best.write_bytes(b"an older best model")
    checkpoint.on_epoch_end(1, {"val_loss": 0.7})
    callback.on_epoch_end(1, {"val_loss": 0.7})
    assert serialised == [str(saved_point())]
    assert read_state()["epoch"] == 1 and read_state()["best_val_loss"] == 0.5
    assert int(keras.models.load_model(saved_point()).optimizer.iterations) == 1

