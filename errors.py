"""How a script ends when it cannot go on: one line on stderr, no traceback.

A mistake in what the user asked for is a `UserError` (exit code 2); a run
that cannot go on for another reason (a lost worker, an export that does not
match its model) is a `Stop` with its own exit code. `run_cli` turns either
into its one line. Bugs are neither: they still raise with their traceback.
A disk that refuses a write (read-only, full, over quota, no permission)
is not a bug either: `run_cli` reports that OSError as one line, exit 2
(files are written to a temporary name first, so none is left half-written).
Ctrl-C is one line and exit 130 (`Interrupted` says what was kept).
Imports nothing from the project, so every file may use it.
"""

import errno
import io
import sys

# What the OS answers when it refuses to write, and what to do about it.
UNWRITABLE = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


class Stop(Exception):
    """Ends a script with one line on stderr and `exit_code`, no traceback:
    for a run that cannot go on though nothing was the user's mistake."""

    exit_code = 1
    prefix = "error"


class UserError(Stop):
    """A mistake in the user's input: reported as one line, exit code 2."""

    exit_code = 2


class Interrupted(Stop):
    """Ctrl-C (or SIGTERM): one line saying what was kept, exit code 130."""

    exit_code = 130
    prefix = "interrupted"


def _name_if_written(value):
    """The path of `value` when it is a file object open for writing, else None."""
    if not isinstance(value, io.IOBase):
        return None
    name, mode = getattr(value, "name", None), getattr(value, "mode", None)
    if isinstance(name, str) and isinstance(mode, str) and any(letter in mode for letter in "wax+"):
        return name
    return None


def written_file(traceback):
    """The file a write was filling when it raised without naming it (a
    file object's write or flush never names its file): an open-for-writing
    file among the locals of the innermost frame that has one, or among
    the attributes of that frame's `self` (a logger's handle). None when no
    frame holds one."""
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        values = list(frame.f_locals.values())
        owner = frame.f_locals.get("self")
        values += list(getattr(owner, "__dict__", {}).values())
        for value in values:
            name = _name_if_written(value)
            if name:
                return name
    return None


def unwritable_line(error):
    """The one line for an OSError the disk raised on a write (`UNWRITABLE`),
    naming the file (from the error, or else from the traceback:
    written_file), or None for any other OSError (a bug: it keeps its
    traceback)."""
    if error.errno not in UNWRITABLE:
        return None
    filename = error.filename or written_file(error.__traceback__)
    where = f" {filename}" if filename else ""
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"cannot open{where}: {UNWRITABLE[error.errno]}"
    return (f"cannot write{where}: {UNWRITABLE[error.errno]}. Nothing half-written is left (each file is "
            "written under a temporary name first); free some space or give a folder you can write to "
            "(--results_dir, --artifacts_dir, --mlflow)")


class CheckFailed(Stop):
    """A check of the program's own output failed (an export that does not
    match its model): not the user's mistake, so one line and exit code 1."""


def run_cli(main_function, argv=None):
    """Runs `main_function(argv)`; a UserError becomes one line and exit 2
    (any other Stop: one line and its own exit code), a write the disk
    refused one line and exit 2, Ctrl-C one line and exit 130.

    Returns the function's exit code (0 on success) so tests can call
    `main([...])` in-process. Bugs still raise with their traceback.
    """
    try:
        main_function(argv)
    except Stop as error:
        print(f"{error.prefix}: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: files written so far are complete (each is written under a temporary name "
              "first); nothing else was kept", file=sys.stderr)
        return Interrupted.exit_code
    except OSError as error:
        line = unwritable_line(error)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return UserError.exit_code
    return 0
