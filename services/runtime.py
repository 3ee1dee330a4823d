"""Running one service in a process: start, wait for SIGINT/SIGTERM, stop within a grace period."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger("casetrail.runtime")

GRACE_S = 10.0


def _exit_if_stuck(grace: float) -> None:
    """A stop that hangs (a connection draining towards a dead server) must not keep the process."""

    def watchdog() -> None:
        log.error("did not stop within %.0f s; exiting", grace)
        os._exit(1)

    timer = threading.Timer(grace, watchdog)
    timer.daemon = True
    timer.start()


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    name: str,
    grace: float = GRACE_S,
) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    log.info("%s running", name)
    await stopping.wait()
    log.info("%s stopping", name)
    _exit_if_stuck(grace + 5)
    try:
        await asyncio.wait_for(stop(), grace)
    except TimeoutError:
        log.warning("%s: stop took longer than %.0f s", name, grace)
