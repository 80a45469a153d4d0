"""SIGTERM unwinds the process like an exception, so `finally` blocks and `with` exits run.

`ray job stop` and Kubernetes (a pod eviction, a RayJob deleted) send SIGTERM, then SIGKILL after a
grace period (`ray job stop`: RAY_JOB_STOP_WAIT_TIME_S, 3 s by default; a pod: its
terminationGracePeriodSeconds, 30 s by default). Python's default SIGTERM action ends the process
at once, skipping every cleanup: remote.local_run_dir's copy-back of a mirrored run directory, the
stages' temporary files. `install()` makes SIGTERM raise `Terminated` in the main thread instead.

`ray.init` replaces the SIGTERM handler with its own (a driver's: sys.exit(15); a driver that started
a local Ray: kill Ray's processes, then sys.exit(1)); `runtime.init_ray` puts ours back (`keep`), so
the exit code stays 143 and Ray's processes are still stopped by its atexit hook.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM.

    A SystemExit: it passes `except Exception`, unwinds through `finally` and `with`, and, if nothing
    catches it, ends the process with exit code 128 + signal (143), as a shell reports a SIGTERM death.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM during the cleanup ends the process at once
    raise Terminated(signum)


_raise_terminated.syneg_terminates = True  # type: ignore[attr-defined]


def install() -> Callable | int | None:
    """Makes SIGTERM raise Terminated; returns the previous handler (for `restore`). A no-op outside
    the main thread, where Python cannot set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore(previous: Callable | int | None) -> None:
    """Puts back the handler `install` replaced (for a caller that ran the CLI in-process, e.g. a test)."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def installed() -> bool:
    """True when SIGTERM currently raises Terminated."""
    return bool(getattr(signal.getsignal(signal.SIGTERM), "syneg_terminates", False))


def keep(before: bool) -> None:
    """After a call that may have replaced the SIGTERM handler (ray.init): reinstall ours when it was
    installed `before` the call."""
    if before and not installed():
        install()
