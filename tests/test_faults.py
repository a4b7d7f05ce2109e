"""Faults that are not the program's: a disk that refuses a write (read-only,
full), Ctrl-C, a TF_CONFIG that would hang, each one line on stderr with its
exit code and nothing half-written."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import QUICK, ROOT, TINY, free_ports, make_flat_dataset, one_line_error

import artifacts
import errors
import main as main_script
import devices
from errors import UserError


def failing(error):
    def run(argv):
        raise error

    return run


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only"), (errno.ENOSPC, "the disk is full")])
def test_a_refused_write_is_one_line_and_exit_2(capsys, code, words):
    error = OSError(code, os.strerror(code), "/mnt/out/metrics.json")
    assert errors.run_cli(failing(error)) == 2
    line = one_line_error(capsys)
    assert line.startswith("error: cannot write /mnt/out/metrics.json: ") and words in line


class FullDiskLogger:
    """A logger that keeps its file open, as Keras' CSVLogger does; /dev/full
    answers every write with ENOSPC, naming no file."""

    def __init__(self):
        self.handle = open("/dev/full", "wb", buffering=0)

    def log(self, line):
        self.handle.write(line.encode("utf-8"))


def write_to_a_full_disk(argv):
    with open("/dev/full", "w") as handle:
        handle.write("epoch,loss\n")
        handle.flush()


def log_to_a_full_disk(argv):
    logger = FullDiskLogger()
    try:
        logger.log("epoch,loss\n")
    finally:
        logger.handle.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("command", [write_to_a_full_disk, log_to_a_full_disk])
def test_a_full_disk_names_the_file_even_when_the_failed_write_does_not(capsys, command):
    assert errors.run_cli(command) == 2
    assert one_line_error(capsys).startswith("error: cannot write /dev/full: the disk is full.")


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    assert errors.run_cli(failing(KeyboardInterrupt())) == 130
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("interrupted: ")


def test_other_os_errors_are_bugs_and_keep_their_traceback():
    with pytest.raises(FileNotFoundError):
        errors.run_cli(failing(FileNotFoundError(errno.ENOENT, "No such file", "x")))


def test_a_full_disk_mid_write_leaves_no_file_and_names_the_file(tmp_path):
    def write(temp_path):
        with open(temp_path, "w") as handle:
            handle.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")  # as zipfile raises it, no file name

    with pytest.raises(OSError) as raised:
        artifacts.atomic_write(str(tmp_path / "model.keras"), write)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "model.keras")
    assert os.listdir(tmp_path) == []


def test_a_failed_new_run_leaves_nothing_a_resumable_one_keeps_its_state(tmp_path):
    new, resumable = tmp_path / "new", tmp_path / "resumable"
    for folder in (new, resumable):
        (folder / "resume").mkdir(parents=True)
        for name in (*artifacts.COMPANION_FILES, artifacts.MODEL_FILE):
            (folder / name).write_text("x")
        (folder / os.path.basename(artifacts.staging_path(artifacts.MODEL_FILE))).write_text("half-written")
    (resumable / "resume" / "state.json").write_text("{}")
    (new / "someone's.txt").write_text("not ours")

    artifacts.discard_failed_run(str(new), new_run=True)
    artifacts.discard_failed_run(str(resumable), new_run=True)

    assert os.listdir(new) == ["someone's.txt"]  # ours gone, theirs kept (so the folder stays)
    assert sorted(os.listdir(resumable)) == sorted([*artifacts.COMPANION_FILES, artifacts.MODEL_FILE, "resume"])


def test_a_full_disk_before_training_is_one_line_and_no_run_left(tmp_path, monkeypatch, capsys):
    data = make_flat_dataset(tmp_path / "data", per_class=6)
    real = artifacts.write_csv

    def full(path, rows):
        if path.endswith("split_manifest.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, rows)

    monkeypatch.setattr(artifacts, "write_csv", full)
    code = main_script.main(["--image_dir", data, *QUICK, "--artifacts_dir", str(tmp_path / "art"),
                             "--results_dir", str(tmp_path / "res")])

    assert code == 2
    assert "the disk is full" in one_line_error(capsys)
    assert os.listdir(tmp_path / "art" / "runs") == []
    # Nor its audit: no result names a run that no longer exists.
    results = tmp_path / "res"
    assert (results / "audit").is_dir()
    assert {category.name: os.listdir(category) for category in results.iterdir() if not category.name.startswith(".")
            and os.listdir(category)} == {}


def test_a_discarded_runs_results_go_with_it_and_no_other_runs(tmp_path):
    for stamp in ("20261206-0700", "20261206-0701"):
        for category in ("audit", "near_copies"):
            (tmp_path / category / stamp).mkdir(parents=True)
            (tmp_path / category / stamp / "x.json").write_text("{}")
    (tmp_path / ".stamps" / "20261206-0700").mkdir(parents=True)

    artifacts.discard_run_results(str(tmp_path), "20261206-0700")

    assert os.listdir(tmp_path / "audit") == ["20261206-0701"] and os.listdir(tmp_path / "near_copies") == ["20261206-0701"]
    assert os.listdir(tmp_path / ".stamps") == ["20261206-0700"]  # never given again


# ---------------------------------------------------------------- TF_CONFIG


def tf_config(workers, index=0):
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}


@pytest.mark.parametrize("workers, message", [
    (["localhost:2222", "localhost:2222"], "names localhost:2222 for more than one task"),
    (["localhost:abc", "localhost:2223"], "must be host:port with a port in 1-65535"),
    (["localhost:0", "localhost:2223"], "must be host:port"),
    (["localhost", "localhost:2223"], "must be host:port"),
])
def test_a_tf_config_that_would_hang_or_trace_back_is_refused(workers, message):
    with pytest.raises(UserError, match=message):
        devices.cluster_from_environment(tf_config(workers))


def waiting_worker(tmp_path, *extra):
    """main.py as worker 0 of two, whose partner never starts."""
    ports = free_ports(2, host="localhost")
    environment = {**os.environ, **tf_config([f"localhost:{port}" for port in ports]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    data = make_flat_dataset(tmp_path / "data", per_class=4)
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--image_dir", data, *TINY,
               "--artifacts_dir", str(tmp_path / "art"), "--results_dir", str(tmp_path / "res"), *extra]
    process = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return process, ports


@pytest.mark.slow
def test_the_wait_for_workers_is_time_limited_and_names_the_missing_one(tmp_path):
    process, ports = waiting_worker(tmp_path, "--worker_wait", "1")
    _, err = process.communicate(timeout=120)

    assert process.returncode == 2
    assert f"not started: worker 1 (localhost:{ports[1]})" in err.strip().splitlines()[-1]
    assert not (tmp_path / "art").exists() and not (tmp_path / "res").exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_wait_for_workers(tmp_path):
    process, _ = waiting_worker(tmp_path)
    deadline = time.monotonic() + 120
    line = ""
    while "Waiting up to" not in line and time.monotonic() < deadline:
        line = process.stdout.readline()
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: stopped by SIGINT while waiting")


@pytest.mark.slow
def test_the_chief_checks_resume_before_waiting(tmp_path):
    process, _ = waiting_worker(tmp_path, "--resume", "nosuch")
    out, err = process.communicate(timeout=120)

    assert process.returncode == 2 and "Waiting" not in out
    assert "no run nosuch" in err.strip().splitlines()[-1]


# ---------------------------------------------------------------- Ctrl-C during training


@pytest.mark.slow
def test_ctrl_c_during_training_says_what_was_kept_and_how_to_resume(tmp_path):
    data = make_flat_dataset(tmp_path / "data", per_class=6)
    command = [sys.executable, "-u", os.path.join(ROOT, "main.py"), "--image_dir", data, *TINY, "--epochs", "200",
               "--patience", "200", "--augment", "0", "--artifacts_dir", str(tmp_path / "art"),
               "--results_dir", str(tmp_path / "res")]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 240
    line = ""
    while not line.startswith("Epoch 3/") and time.monotonic() < deadline:
        line = process.stdout.readline()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)

    assert process.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: after epoch ") and "python main.py --resume " in last
    assert "Traceback" not in err
    (run,) = os.listdir(tmp_path / "art" / "runs")
    assert os.path.isfile(tmp_path / "art" / "runs" / run / "resume" / "state.json")
