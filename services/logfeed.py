"""The log, read from a position on, as batches of `(seq, bytes)`: in this process or a child.

Reading NATS costs nats-py about as much Python time per message as applying it
to the projections costs the projector, and both would share one GIL. So the
projector reads through `ChildFeed`: a child process follows the log with
`LogReader` and hands raw batches over a pipe, and the projector's process only
applies them. `InlineFeed` does the same in this process (tests, small setups).

Both read the same way: far behind the head of the log, bounded windows (so what
is buffered stays bounded, however long the log); near it, they follow it. A
window is only read once the one before has been handed on, and the pipe blocks
when the projector is busy: the child never holds more than a window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.connection import connect
from services.log import LogReader, stream_state
from services.settings import Settings

log = logging.getLogger("casetrail.logfeed")

Batch = list[tuple[int, bytes]]

WINDOW = 100_000  # records read per window while far behind
MAX_BATCH = 20_000  # records handed on (and committed) at once
RETRY_S = 1.0


class HandOnFailed(Exception):
    """Whoever takes the batches is gone: stop reading (reading errors are retried)."""


async def follow(
    nc: Any, start_seq: int, hand_on: Callable[[Batch], Awaitable[None]], *, window: int = WINDOW
) -> None:
    """Read the log from `start_seq` for ever, handing each batch on before reading further."""
    position = start_seq - 1
    js = nc.jetstream()
    while True:
        try:
            head = (await stream_state(nc)).last_seq
            start = position + 1
            stop = min(head, start + window - 1) if head - start >= MAX_BATCH else None
            started = time.monotonic()
            async with LogReader(js, start, stop) as reader:
                async for batch in reader.batches(max_batch=MAX_BATCH):
                    try:
                        await hand_on(batch)
                    except Exception as exc:
                        raise HandOnFailed(str(exc)) from exc
                    position = batch[-1][0]
                    if stop is None and len(batch) >= MAX_BATCH:
                        break  # fallen behind while following: back to bounded windows
            if stop is not None:
                rate = (position - start + 1) / max(time.monotonic() - started, 1e-6)
                log.info("read the log to seq %d of %d (%.0f records/s)", position, head, rate)
        except (asyncio.CancelledError, HandOnFailed):
            raise
        except Exception:
            log.exception("reading the log failed after seq %d; retrying", position)
            await asyncio.sleep(RETRY_S)


class InlineFeed:
    """The log read in this process."""

    def __init__(self, settings: Settings, start_seq: int, *, window: int = WINDOW) -> None:
        self.settings = settings
        self.start_seq = start_seq
        self.window = window
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._task: asyncio.Task[None] | None = None
        self._nc: Any = None

    async def __aenter__(self) -> InlineFeed:
        self._nc = await connect(self.settings, "casetrail-projector-log")
        self._task = asyncio.create_task(follow(self._nc, self.start_seq, self._queue.put, window=self.window))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None:
            await self._nc.close()

    async def batches(self) -> AsyncIterator[Batch]:
        while True:
            yield await self._queue.get()


class ChildFeed:
    """The log read by a child process; batches arrive over a pipe, pickled."""

    def __init__(self, settings: Settings, start_seq: int, *, window: int = WINDOW) -> None:
        self.settings = settings
        self.start_seq = start_seq
        self.window = window
        self._process: Any = None
        self._conn: Any = None
        # recv blocks outside the GIL; unpickling a batch is one C call.
        self._receiver = ThreadPoolExecutor(1, thread_name_prefix="logfeed-recv")

    async def __aenter__(self) -> ChildFeed:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        parent, child = context.Pipe(duplex=False)
        self._conn = parent
        self._process = context.Process(
            target=_child_main,
            args=(self.settings, self.start_seq, self.window, child),
            name="casetrail-projector-log",
            daemon=True,
        )
        self._process.start()
        child.close()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            await asyncio.get_running_loop().run_in_executor(None, self._process.join, 10)
            if self._process.is_alive():
                self._process.kill()
        if self._conn is not None:
            self._conn.close()
        self._receiver.shutdown(wait=False, cancel_futures=True)

    def _receive(self) -> Batch:
        return pickle.loads(self._conn.recv_bytes())

    async def batches(self) -> AsyncIterator[Batch]:
        loop = asyncio.get_running_loop()
        # One batch is received while the one before is applied.
        pending = loop.run_in_executor(self._receiver, self._receive)
        while True:
            try:
                batch = await pending
            except (EOFError, OSError):
                code = self._process.exitcode if self._process is not None else None
                raise ConnectionError(f"the log reader process ended (exit code {code})") from None
            pending = loop.run_in_executor(self._receiver, self._receive)
            yield batch


def _child_main(settings: Settings, start_seq: int, window: int, conn: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the projector's to handle
    try:
        asyncio.run(_child(settings, start_seq, window, conn, os.getppid()))
    except HandOnFailed:
        pass  # the projector closed the pipe: it is stopping or gone


async def _child(settings: Settings, start_seq: int, window: int, conn: Any, parent: int) -> None:
    nc = await connect(settings, "casetrail-projector-log")
    sender = ThreadPoolExecutor(1, thread_name_prefix="logfeed-send")
    loop = asyncio.get_running_loop()

    async def hand_on(batch: Batch) -> None:
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        # Blocks (in the thread) while the projector is busy: that is the back-pressure.
        await loop.run_in_executor(sender, conn.send_bytes, data)

    async def orphaned() -> None:
        # A projector killed with -9 closes no pipe we are not writing to: look.
        while os.getppid() == parent:
            await asyncio.sleep(0.5)

    reading = asyncio.create_task(follow(nc, start_seq, hand_on, window=window))
    watching = asyncio.create_task(orphaned())
    try:
        done, _ = await asyncio.wait({reading, watching}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in (reading, watching):
            task.cancel()
        with contextlib.suppress(Exception):
            await nc.close()
        sender.shutdown(wait=False, cancel_futures=True)
