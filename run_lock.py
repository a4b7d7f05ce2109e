"""Is a run folder in use by another process (the run lock)?

A process that trains a run (main.py, `--resume` too) or exports into it
(evaluate.py --export) holds an exclusive lock on RUN/run.lock for as long
as it works there (`held`). The lock is fcntl.flock's: the kernel releases
it when the process ends, however it ends (a crash, kill -9, a power cut
ends the process and the lock with it), so a killed run can be resumed at
once and there is never a stale lock to remove by hand. The file says who
holds it (process id, host, what it does, since when); a second process
that wants the run is refused with one line naming that process (exit 2).
A process that ends normally removes the file.

flock locks hold between the processes of one machine; on a network file
system whether they also hold between machines depends on the server (NFS
on Linux: yes, emulated with fcntl locks).
"""

import contextlib
import errno
import fcntl
import os
import socket
import time

from errors import UserError

LOCK_FILE = "run.lock"


def lock_path(folder):
    return os.path.join(folder, LOCK_FILE)


def _holder_text(path):
    """Who holds the lock at `path`, as its file says ("process 123 on
    host, training since 04:05:35"); the holder writes it just after
    locking, so an empty file is read again briefly."""
    for _ in range(20):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.05)
    return "another process"


def _refusal(folder, path, wanted):
    return UserError(
        f"{wanted}: run {os.path.basename(os.path.normpath(folder))} is in use by {_holder_text(path)} "
        f"(it holds {path}): wait until it ends, or stop it (a stopped run can be resumed)"
    )


def _lock_soon(handle, tries=5):
    """flock(LOCK_EX) without waiting for a process that holds the run, but
    past one that only looks for a moment (`holder`'s shared lock)."""
    for attempt in range(tries):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


def acquire(folder, doing, wanted):
    """Locks the run in `folder` for this process: `doing` says what it
    does there ("training", "exporting"), `wanted` starts the refusal
    ("--resume", "--export"). Returns the open lock file (see `release`).
    Raises UserError when another process holds the lock, naming it, or
    when the folder cannot hold a lock file."""
    path = lock_path(folder)
    for _ in range(100):
        try:
            # "a": created when missing, never truncated while another holds it.
            handle = open(path, "a", encoding="utf-8")
        except OSError as error:
            raise UserError(f"{wanted}: cannot lock the run folder {folder}: {error.strerror}") from None
        try:
            _lock_soon(handle)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _refusal(folder, path, wanted) from None
            raise UserError(f"{wanted}: cannot lock the run folder {folder}: {error.strerror}") from None
        # The holder removes the file before it unlocks: a lock taken on a
        # file removed meanwhile locks nothing anyone else sees, so retry.
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            handle.truncate(0)
            handle.write(
                f"process {os.getpid()} on {socket.gethostname()}, {doing} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            )
            handle.flush()
            return handle
        handle.close()
    raise UserError(f"{wanted}: could not lock {path}: it keeps being replaced")


def release(handle):
    """Removes the lock file, then unlocks it (in that order, see acquire)."""
    with contextlib.suppress(OSError):
        os.remove(handle.name)
    handle.close()


@contextlib.contextmanager
def held(folder, doing, wanted):
    """The run in `folder` locked for the `with` block (see acquire)."""
    handle = acquire(folder, doing, wanted)
    try:
        yield handle
    finally:
        release(handle)


def holder(folder):
    """Who holds the lock of the run in `folder` (the lock file's text), or
    None when no process does. Creates nothing."""
    path = lock_path(folder)
    try:
        handle = open(path, encoding="utf-8")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder_text(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
