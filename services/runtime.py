"""Running one service in a process: start, wait for SIGINT/SIGTERM, stop within a grace period."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

log = logging.getLogger("casetrail.runtime")

GRACE_S = 10.0


# Net new objects after which the young ones are collected (the default is 700).
YOUNG = 50_000
# Catching up: more than a batch makes, so that no collection runs within one. What a
# batch leaves is frozen after it (`services.pipeline`), which restarts the count.
YOUNG_CATCHING_UP = 500_000


def tune_gc(young: int = YOUNG) -> None:
    """Collect young objects less often, for a service that makes many and keeps many.

    The projector's batches and the recorder's index each hold hundreds of thousands
    of objects. With the default thresholds the collector ran so often, and walked
    so much at each full collection, that the projector folded about half as fast
    and the recorder ingested 1M events 20-25% slower (23,100-25,400 against
    29,100-30,600 events/s, measured). Catching up, `YOUNG_CATCHING_UP`: the
    projector caught up with 1.2M events 5.6% faster (four alternating pairs, +14% to
    -4%) with 7% less CPU, at the same peak memory. Following the head it goes back to
    `YOUNG`: a collection of 50,000 young objects there took up to 69 ms, which a
    status query waited for.
    """
    gc.set_threshold(young, 20, 100)


# How long a thread running Python keeps the GIL while another waits for it (default 5 ms).
SWITCH_INTERVAL_S = 0.0005


def tune_switching() -> None:
    """Hand the GIL on sooner, in a process whose threads mostly wait on DuckDB.

    DuckDB 2.0.1's Python layer takes the GIL back several times per statement, and
    each time waits out whatever thread holds it, up to the switch interval: beside
    a thread spinning in Python, a loop of small transactions took 43-71 ms each
    instead of ~4 ms (13 ms at 0.2 ms). In the projector following the head at
    1,000 events/s, five alternating pairs of runs gave ack-to-visible p99 87-122 ms
    at 0.5 ms against 77-198 ms at 5 ms (medians 116 and 150). Catching up, where
    the fold thread runs Python all the time, it made no measurable difference.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


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
