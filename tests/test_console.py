"""console.py: TensorFlow's start-up chatter hidden, real errors kept, and
every command's first line its own."""

import os
import shutil
import subprocess
import sys

import pytest

import console
from conftest import ROOT, TINY_MODEL, make_flat_dataset

# What TensorFlow 2.21 printed on this machine (2 CPU cores, no CUDA) for
# `import tensorflow` and the first device query, before our first line.
TENSORFLOW_START = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796163341.575450   12277 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796163341.575852   12277 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796163345.066949   12277 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796163345.067982   12277 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1796163347.612947   12277 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796163348.000001   12277 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",
]


def test_the_start_up_chatter_is_dropped_and_nothing_else():
    real = [
        "E0000 00:00:1796163349.1   12277 op_kernel.cc:1830] OP_REQUIRES failed: out of memory",
        "UserWarning: something the user should see",
    ]
    dropped, kept = console.start_up_noise(TENSORFLOW_START + real)

    assert dropped == TENSORFLOW_START and kept == real
    # With an NVIDIA device, a failed cuInit is a real problem and stays.
    _, kept = console.start_up_noise(TENSORFLOW_START, gpu_present=True)
    assert kept == [line for line in TENSORFLOW_START if "cuInit" in line]


def test_captured_stderr_sees_what_c_code_writes_to_descriptor_2():
    with console.captured_stderr() as lines:
        os.write(2, b"written below Python\n")
        os.write(2, "and a second line\n".encode())
    assert lines == ["written below Python", "and a second line"]


def start(script, *arguments, cwd):
    # One stream, unbuffered: the lines in the order a terminal shows them.
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, script), *arguments], cwd=cwd, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": ROOT, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"},
    )


def finish(process):
    output, _ = process.communicate(timeout=300)
    return process.returncode, output.splitlines()


@pytest.mark.slow
@pytest.mark.heavy
def test_every_command_starts_with_its_own_line_not_tensorflows(saved_model, tmp_path):
    def outputs(name):
        # A copy: evaluate.py saves the test split's bins into a run that has none.
        artifacts_dir = shutil.copytree(saved_model["artifacts"], tmp_path / name / "artifacts", symlinks=True)
        return ["--artifacts_dir", str(artifacts_dir), "--results_dir", str(tmp_path / name / "results"), "--show", "0"]

    models, verbose_models = outputs("quiet"), outputs("verbose")
    data = make_flat_dataset(tmp_path / "data", per_class=5)
    # All at once (each its own process, folders and output): the time of
    # the slowest, not of the five.
    started = {
        # Offline, ImageNet weights stop at "Building the model": after TensorFlow started.
        "main.py": start("main.py", "--image_dir", data, *TINY_MODEL, "--weights", "imagenet",
                         "--artifacts_dir", str(tmp_path / "art"), "--results_dir", str(tmp_path / "res"), cwd=tmp_path),
        "evaluate.py": start("evaluate.py", "--image_dir", saved_model["data"], *models, cwd=tmp_path),
        "predict.py": start("predict.py", "--images", os.path.join(saved_model["data"], "cat"), *models, cwd=tmp_path),
        "inspect_dataset.py": start("inspect_dataset.py", "--image_dir", data, "--artifacts_dir", str(tmp_path / "i"),
                                    cwd=tmp_path),
        # --verbose 1 shows them: the check below would see them.
        "evaluate.py --verbose 1": start("evaluate.py", "--image_dir", saved_model["data"], *verbose_models,
                                         "--verbose", "1", cwd=tmp_path),
    }
    try:
        runs = {script: finish(process) for script, process in started.items()}
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    code, lines = runs.pop("evaluate.py --verbose 1")
    assert code == 0 and any("absl::InitializeLog" in line for line in lines), lines[:3]
    firsts = {"main.py": "Run ", "evaluate.py": "==> Evaluating ", "predict.py": "==> Predicting with ",
              "inspect_dataset.py": "Dataset: "}
    for script, (code, lines) in runs.items():
        assert code == (2 if script == "main.py" else 0), (script, lines[-5:])
        assert lines[0].startswith(firsts[script]), (script, lines[:3])
        assert not [line for line in lines if "absl" in line or "cuInit" in line or "cudart" in line], script
    # The device line says it plainly.
    assert any("no GPU found: training on the CPU" in line for line in runs["main.py"][1])
