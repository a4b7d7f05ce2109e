"""How a script ends when it cannot go on: one line on stderr, no traceback.

A mistake in what the user asked for is a `UserError` (exit code 2); a run
that cannot go on for another reason (a lost worker, an export that does not
match its model) is a `Stop` with its own exit code. `run_cli` turns either
into its one line. Bugs are neither: they still raise with their traceback.
Imports nothing from the project, so every file may use it.
"""

import sys


class Stop(Exception):
    """Ends a script with one line on stderr and `exit_code`, no traceback:
    for a run that cannot go on though nothing was the user's mistake."""

    exit_code = 1


class UserError(Stop):
    """A mistake in the user's input: reported as one line, exit code 2."""

    exit_code = 2


class CheckFailed(Stop):
    """A check of the program's own output failed (an export that does not
    match its model): not the user's mistake, so one line and exit code 1."""


def run_cli(main_function, argv=None):
    """Runs `main_function(argv)`; a UserError becomes one line and exit 2
    (any other Stop: one line and its own exit code).

    Returns the function's exit code (0 on success) so tests can call
    `main([...])` in-process. Bugs still raise with their traceback.
    """
    try:
        main_function(argv)
    except Stop as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0
