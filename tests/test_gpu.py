"""The GPU path: benchmarks/gpu_check.sh at tiny sizes on any machine, and
the tests it runs on a GPU machine (marked gpu, skipped without a GPU)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY, make_flat_dataset, read_json

import main


@pytest.fixture
def gpu():
    """Skips the test on a machine without a GPU."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU on this machine")


@pytest.mark.slow
def test_the_gpu_check_runs_at_tiny_sizes_on_any_machine():
    """The script a GPU machine runs: both precisions train through the real
    loader and print images/s and the input wait, then the GPU tests run
    (--tiny leaves XLA off: compiling costs ~25 s of a CPU)."""
    finished = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--tiny"],
        capture_output=True, text=True, timeout=400, env={**os.environ, "PYTHON": sys.executable, "TESTS": __file__},
    )
    out = finished.stdout
    assert finished.returncode == 0, out[-3000:] + finished.stderr[-3000:]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(row["precision"], row["jit"]) for row in rows] == [("mixed", "0"), ("float32", "0")]
    for row in rows:
        assert row["images_per_second"] > 0 and 0 <= row["input_wait_share"] < 1
        assert row["steps"] == 3 and row["image_size"] == 32
    assert "(mixed_bfloat16, XLA off)" in rows[0]["device"] and "(float32, XLA off)" in rows[1]["device"]
    assert "mixed (XLA off) / float32: x" in out and "gpu_check: done" in out


@pytest.mark.slow
@pytest.mark.gpu
def test_main_trains_with_the_gpu_defaults_mixed_float16_and_xla(tmp_path, gpu, monkeypatch, capsys):
    """With a GPU and no precision options, main.py trains in mixed_float16
    with XLA, says so, and saves a model that answers float32 probabilities."""
    import keras

    monkeypatch.chdir(tmp_path)
    data = make_flat_dataset(tmp_path / "data", classes=("a", "b"), per_class=12)
    assert main.main(["--image_dir", data, *TINY, "--epochs", "1", "--export", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "GPU(s) (mixed_float16, XLA on)" in out and "test accuracy" in out
    saved = read_json(tmp_path / "model_artifacts" / "latest" / "run_config.json")
    assert saved["options"]["precision"] == "auto" and saved["options"]["jit"] == "auto"
    model = keras.models.load_model(tmp_path / "model_artifacts" / "best_model.keras")
    probabilities = model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0)
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    export_report = read_json(tmp_path / "model_artifacts" / "latest" / "export_report.json")
    assert export_report["passed"], export_report
