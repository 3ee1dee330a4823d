"""Child processes that do not outlive the process that started them (Linux).

`casetrail up` runs nats-server and the services as children in their own
sessions (so that Ctrl-C in a terminal reaches the supervisor only, which stops
them in order). Killed with -9, the supervisor can stop nothing: without this,
nats-server would keep its port and the services would reconnect to it for ever.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _find_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _find_prctl()  # looked up here: the child, between fork and exec, only calls it


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets SIGTERM when its parent dies, even by -9.

    The kernel ties this to the thread that starts the child: start children from a
    thread that lives as long as they should (the event loop's). None where the
    platform has no such thing.
    """
    prctl = _prctl
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return arm


def stop(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds; until it has ended."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
