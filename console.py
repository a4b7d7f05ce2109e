"""What a command prints besides its results: one line as each stage starts
and how long it took, TensorFlow started without its start-up chatter, and
the closing summary. Imports nothing from the project but safe_text (a
summary line names the user's classes and files: printed as text, never
as terminal escape codes)."""

import contextlib
import os
import re
import sys
import tempfile
import time

import safe_text

# TensorFlow 2.21's start-up lines on a machine without CUDA: written by
# its C++ logging before absl's log is initialised, so TF_CPP_MIN_LOG_LEVEL
# (even 3) does not silence them, and printed once per TensorFlow library
# loaded. They say nothing a user can act on; a newcomer reads the cuInit
# one as a crash.
START_UP_LINES = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] "
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit"
)
# A C++ log line starts so; the lines after a dropped one that do not are
# its continuation ("To enable the following instructions: ...").
LOG_LINE = re.compile(r"[IWEF]\d{4} |WARNING: ")


@contextlib.contextmanager
def stage(name):
    """Prints one line when a stage of a script starts and how long it took."""
    print(f"==> {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - start:.1f}s", flush=True)


def has_gpu_device():
    """Whether this machine has an NVIDIA device node: then a failed cuInit
    is a real problem, not start-up chatter."""
    return any(os.path.exists(f"/dev/nvidia{number}") for number in range(8))


def start_up_noise(lines, gpu_present=False):
    """The lines of `lines` (what TensorFlow wrote to stderr while it
    started) that are known start-up chatter, and the others, in order:
    (dropped, kept). A failed cuInit is kept where a GPU device exists."""
    dropped, kept, continuing = [], [], False
    for line in lines:
        chatter = bool(START_UP_LINES.match(line)) and not ("cuInit" in line and gpu_present)
        if chatter or (continuing and not LOG_LINE.match(line)):
            dropped.append(line)
            continuing = True
            continue
        continuing = False
        kept.append(line)
    return dropped, kept


@contextlib.contextmanager
def captured_stderr():
    """Collects what this process writes to file descriptor 2 (C++ code
    included) into a temporary file; yields a list filled with its lines
    when the block ends."""
    lines = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode("utf-8", "replace").splitlines())


def start_tensorflow(verbose=False):
    """Imports TensorFlow and Keras and finds the devices, which is when
    TensorFlow prints its start-up lines: those are hidden (shown with
    `verbose`, --verbose 1), anything else it printed, a real error or
    warning, still goes to stderr. Call it before anything else imports
    TensorFlow; later imports are then free. Every command calls it, so
    its TF_CPP_MIN_LOG_LEVEL (2: TensorFlow's later info and warning lines
    hidden, errors shown; a value the user set is kept) holds for all."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with contextlib.nullcontext([]) if verbose else captured_stderr() as lines:
        import keras
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    _, kept = start_up_noise(lines, has_gpu_device())
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"this tool runs Keras on TensorFlow; KERAS_BACKEND is {keras.backend.backend()}")
    for line in kept:
        print(line, file=sys.stderr)


def summary(lines):
    """The closing block of a command: what it found and where to look
    next. Each line printed through safe_text.terminal: a class or file
    name in it shows its control characters as escapes."""
    print("==> Summary", flush=True)
    for line in lines:
        print(f"    {safe_text.terminal(line)}", flush=True)
