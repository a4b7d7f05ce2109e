"""When and in what order saved figures are shown: one after another, each
once the previous window is closed, and only when a screen is there.

Headless runs (no display, CI, --show 0, a backend that opens no windows)
never open anything and never block; the figures are saved either way.
The windows themselves are visualize.py's (the only file that touches
matplotlib).
"""

import os
import sys

import visualize


def has_display(environ=None, platform=None):
    """Whether windows can open: macOS and Windows always, elsewhere an X11
    or Wayland display must be set (SSH without forwarding has none)."""
    environ = os.environ if environ is None else environ
    platform = platform or sys.platform
    if platform in ("darwin", "win32"):
        return True
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def should_show(mode, environ=None):
    """(show?, reason when not) for --show auto|1|0."""
    environ = os.environ if environ is None else environ
    if mode == "0":
        return False, None
    if not has_display(environ):
        return False, "no display: figures saved, not shown"
    if mode == "auto" and environ.get("CI"):
        return False, "CI run: figures saved, not shown (--show 1 to show)"
    if visualize.interactive_backend() is None:
        return False, (
            f"matplotlib backend '{visualize.backend_name()}' cannot open windows: "
            "figures saved, not shown"
        )
    return True, None


def show_figures(paths, mode):
    """Shows saved figures one at a time, in order: the next opens when the
    current window is closed. Never opens anything (or blocks) without a
    display or with --show 0. Returns the paths shown."""
    show, reason = should_show(mode)
    if not show:
        if reason and paths:
            print(f"    {reason}")
        return []
    print(f"    showing {len(paths)} figures one at a time: close each window to see the next")
    shown = []
    for path in paths:
        try:
            visualize.show_saved_figure(path)
        except visualize.WindowGone as error:
            print(f"    showing stopped: a figure window was destroyed from outside ({error}); "
                  "every figure is saved all the same")
            break
        shown.append(path)
    return shown
