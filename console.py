"""What a command prints besides its results: one line as each stage starts
and how long it took. Imports nothing from the project."""

import contextlib
import time


@contextlib.contextmanager
def stage(name):
    """Prints one line when a stage of a script starts and how long it took."""
    print(f"==> {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"    done in {time.perf_counter() - start:.1f}s", flush=True)
