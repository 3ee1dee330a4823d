"""The log, read from a position on by a child process, as batches of `(seq, bytes)`.

Reading NATS costs nats-py about as much Python time per message as applying it
to the projections costs the projector, and both would share one GIL. So the
projector reads through `ChildFeed`: a child process (`python -m services.logfeed`)
follows the log with `LogReader` and hands raw batches over a pipe, and the
projector's process only applies them.

Far behind the head of the log the child reads bounded windows (so what is
buffered stays bounded, however long the log); near it, it follows it. The next
window is read once the one before has arrived, while it is handed on: two
windows at most are held, and the projector never waits for a window to start.

Batches are asked for one at a time (a credit byte on the child's stdin), and the
child hands on what has arrived by then (up to MAX_BATCH records). Catching up,
`batches()` asks for the next as soon as one arrives, so that it crosses the pipe
while this one is folded, and the child hands it on whole (MAX_BATCH records, or
the rest of a window): every batch costs a commit. The first goes as soon as
anything has arrived: progress shows early.

Following the head, `take()` is fed by the receiving thread, which asks again as
soon as a batch arrives and holds what arrives (up to MAX_BATCH records) until it
is taken: what arrived during a commit is there when the commit ends, taken in
one go by the thread that committed, with no round trip through the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import msgspec

from services.connection import connect
from services.log import LogReader, headers_for_status_only, stream_state
from services.settings import Settings

log = logging.getLogger("casetrail.logfeed")

Batch = list[tuple[int, bytes]]

# Records handed on at once: a third of a DuckDB row group, so that three batches
# make one transaction of a catch-up (`ProjectionStore.commit`).
MAX_BATCH = 40_960
WINDOW = MAX_BATCH  # records read per window while far behind (the reader holds two at most)
RETRY_S = 1.0


class HandOnFailed(Exception):
    """Whoever takes the batches is gone: stop reading (reading errors are retried)."""


async def follow(
    nc: Any,
    start_seq: int,
    hand_on: Callable[[Batch, bool], Awaitable[None]],
    asked: Callable[[], Awaitable[None]],
    *,
    window: int | None = None,
    max_batch: int | None = None,
) -> None:
    """Read the log from `start_seq` for ever, handing on one batch each time `asked()` returns.

    The batch is what has arrived by then (up to `max_batch` records, MAX_BATCH by
    default; `window`: WINDOW). `hand_on(batch, at_head)`: at_head is True once the
    reader follows the head of the log rather than catching up with it.
    """
    window = window or WINDOW
    max_batch = max_batch or MAX_BATCH
    position = start_seq - 1
    js = nc.jetstream()
    owed = False  # asked for a batch not yet handed on (a window ended first)
    first = True  # the first batch goes as soon as anything has arrived: progress shows early
    while True:
        reader: LogReader | None = None
        ahead: LogReader | None = None  # the next window, read while this one is handed on
        try:
            reader = await _open(nc, js, position + 1, window, max_batch)
            started = time.monotonic()
            while True:
                if ahead is None and reader.received_all:
                    assert reader.stop_seq is not None
                    ahead = await _open(nc, js, reader.stop_seq + 1, window, max_batch)
                if not owed:
                    await _asked(asked)
                    owed = True
                # Far behind, whole batches: each costs a commit (and a read of history).
                batch = await reader.take(max_batch, full=reader.stop_seq is not None and not first)
                if batch is None:  # a window handed on: on to the next, already arriving
                    rate = (reader.position - reader.start_seq + 1) / max(time.monotonic() - started, 1e-6)
                    log.info("read the log to seq %d (%.0f records/s)", reader.position, rate)
                    await reader.close()
                    reader, ahead = ahead or await _open(nc, js, position + 1, window, max_batch), None
                    started = time.monotonic()
                    continue
                try:
                    await hand_on(batch, reader.stop_seq is None)
                except Exception as exc:
                    raise HandOnFailed(str(exc)) from exc
                owed = first = False
                position = batch[-1][0]
                if reader.stop_seq is None and len(batch) >= max_batch:
                    break  # fallen behind while following: back to bounded windows
        except (asyncio.CancelledError, HandOnFailed):
            raise
        except Exception:
            log.exception("reading the log failed after seq %d; retrying", position)
            await asyncio.sleep(RETRY_S)
        finally:
            for open_reader in (reader, ahead):
                if open_reader is not None:
                    await open_reader.close()


async def _reader_connection(settings: Settings) -> Any:
    """The connection a feed reads the log on, and nothing else (see headers_for_status_only)."""
    nc = await connect(settings, "casetrail-projector-log")
    headers_for_status_only(nc)
    return nc


async def _open(nc: Any, js: Any, start: int, window: int, max_batch: int) -> LogReader:
    """A reader from `start`: of one window while far behind the head; following it near it.

    A window ends short of the head: its last records are read by following the head,
    whose first batch commits what a catch-up holds (a batch from behind the head may
    be held for the next: nothing would commit it while the log stays quiet).
    """
    head = (await stream_state(nc)).last_seq
    stop = min(head - 1, start + window - 1) if head - start >= max_batch else None
    return await LogReader(js, start, stop).__aenter__()


async def _asked(asked: Callable[[], Awaitable[None]]) -> None:
    try:
        await asked()
    except (EOFError, OSError) as exc:
        raise HandOnFailed(str(exc)) from exc


class ChildFeed:
    """The log read by a child process (`python -m services.logfeed`), batches over its stdout.

    A batch is asked for with one byte on the child's stdin. A frame per batch: count,
    size and at_head (little-endian u64s), the seqs (i64 each), the record lengths
    (u32 each), then the records end to end: one write and one read per batch,
    nothing per record but a slice.

    Read either with `batches()` (on the event loop) or, following the head, with
    `take()` (on another thread); `batches()` goes on after `take()` has handed on a
    batch from behind the head.
    """

    def __init__(self, settings: Settings, start_seq: int, *, window: int | None = None) -> None:
        self.settings = settings
        self.start_seq = start_seq
        self.window = window or WINDOW
        self.max_batch = MAX_BATCH
        self._process: subprocess.Popen[bytes] | None = None
        self._pending: asyncio.Future[tuple[Batch, bool]] | None = None
        self.at_head = False  # whether the last batch came from following the head
        # Reads block outside the GIL.
        self._receiver = ThreadPoolExecutor(1, thread_name_prefix="logfeed-recv")
        # Following the head (`take`): what the receiving thread holds, and its state.
        self._held: list[tuple[Batch, bool]] = []
        self._streaming = False
        self._closed = False
        self._failed = False
        self._changed = threading.Condition()

    async def __aenter__(self) -> ChildFeed:
        env = {**os.environ, SETTINGS_ENV: msgspec.json.encode(self.settings).decode()}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services.logfeed", str(self.start_seq), str(self.window), str(self.max_batch)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        with self._changed:
            self._closed = True  # `take` hands on nothing more
            self._changed.notify_all()
        process = self._process
        if process is not None:
            process.terminate()
            try:
                await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._pending is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._pending  # ends with the pipe: nothing left to read
        self._receiver.shutdown(wait=False, cancel_futures=True)

    def _receive(self) -> tuple[Batch, bool]:
        """Ask for a batch and read it."""
        assert self._process is not None and self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(ASK)
        self._process.stdin.flush()
        return read_frame(self._process.stdout)

    def _ended(self) -> ConnectionError:
        code = self._process.poll() if self._process is not None else None
        return ConnectionError(f"the log reader process ended (exit code {code})")

    async def batches(self) -> AsyncIterator[Batch]:
        loop = asyncio.get_running_loop()
        while True:
            # Cancelled meanwhile, __aexit__ waits for the read in hand.
            if self._pending is None:
                self._pending = loop.run_in_executor(self._receiver, self._receive)
            try:
                batch, self.at_head = await self._pending
            except (EOFError, OSError, ValueError):
                self._pending = None
                raise self._ended() from None
            # Catching up: the next batch is read while this one is folded.
            self._pending = None if self.at_head else loop.run_in_executor(self._receiver, self._receive)
            yield batch

    def take(self) -> tuple[Batch, bool] | None:
        """The batches that have arrived, as one (up to MAX_BATCH records), and whether
        the last came from following the head; None once the feed is closed.

        Blocks until something has arrived. For one thread, between batches of
        `batches()` that came from following the head: the first call starts the
        receiving thread streaming (each batch asked for as soon as the one before
        arrived), which stops after a batch from behind the head.
        """
        with self._changed:
            if not (self._streaming or self._held or self._closed or self._failed):
                assert self._pending is None, "take() while batches() reads"
                self._streaming = True
                self._receiver.submit(self._stream)
            self._changed.wait_for(lambda: self._held or self._closed or self._failed or not self._streaming)
            if self._closed:
                return None
            if not self._held:
                raise self._ended()
            taken, records = 1, len(self._held[0][0])
            while taken < len(self._held) and records + len(self._held[taken][0]) <= self.max_batch:
                records += len(self._held[taken][0])
                taken += 1
            frames, self._held[:taken] = self._held[:taken], []
            self._changed.notify_all()
        self.at_head = frames[-1][1]
        batch = frames[0][0] if taken == 1 else [record for frame, _ in frames for record in frame]
        return batch, self.at_head

    def _held_records(self) -> int:
        return sum(len(batch) for batch, _ in self._held)

    def _stream(self) -> None:
        """On the receiving thread: ask for the next batch as soon as one arrives, and
        hold what arrives for `take` (up to MAX_BATCH records), until a batch comes
        from behind the head (or the feed closes or the child ends)."""
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._closed or self._held_records() < self.max_batch)
                    if self._closed:
                        return
                batch, at_head = self._receive()
                with self._changed:
                    self._held.append((batch, at_head))
                    self._changed.notify_all()
                if not at_head:
                    return
        except (EOFError, OSError, ValueError):
            with self._changed:
                self._failed = True
        finally:
            with self._changed:
                self._streaming = False
                self._changed.notify_all()


SETTINGS_ENV = "CASETRAIL_LOGFEED_SETTINGS"
ASK = b"\x01"  # one batch, please
_HEADER = struct.Struct("<QQQ")  # records, bytes, at_head


def write_frame(out: BinaryIO, batch: Batch, at_head: bool = False) -> None:
    seqs = array("q", [seq for seq, _ in batch])
    lengths = array("I", [len(data) for _, data in batch])
    blob = b"".join(data for _, data in batch)
    out.write(_HEADER.pack(len(batch), len(blob), at_head) + seqs.tobytes() + lengths.tobytes() + blob)
    out.flush()


def read_frame(source: BinaryIO) -> tuple[Batch, bool]:
    def exactly(n: int) -> bytes:
        data = source.read(n)
        if len(data) < n:
            raise EOFError("the log reader's output ended")
        return data

    count, size, at_head = _HEADER.unpack(exactly(_HEADER.size))
    seqs = array("q")
    seqs.frombytes(exactly(8 * count))
    lengths = array("I")
    lengths.frombytes(exactly(4 * count))
    blob = exactly(size)
    batch: Batch = []
    position = 0
    for seq, length in zip(seqs, lengths):
        batch.append((seq, blob[position : position + length]))
        position += length
    return batch, bool(at_head)


def main(argv: list[str] | None = None) -> None:
    """The child: read the log from START (argv: START WINDOW MAX_BATCH) and write frames to stdout until it closes."""
    start_seq, window, max_batch = (int(a) for a in (argv or sys.argv[1:])[:3])
    settings = msgspec.json.decode(os.environ[SETTINGS_ENV], type=Settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the projector's to handle
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    asks = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    try:
        asyncio.run(_child(settings, start_seq, window, max_batch, out, asks, os.getppid()))
    except HandOnFailed:
        pass  # the projector closed the pipe: it is stopping or gone


async def _child(
    settings: Settings, start_seq: int, window: int, max_batch: int, out: BinaryIO, asks: BinaryIO, parent: int
) -> None:
    nc = await _reader_connection(settings)
    sender = ThreadPoolExecutor(1, thread_name_prefix="logfeed-send")
    loop = asyncio.get_running_loop()

    async def hand_on(batch: Batch, at_head: bool) -> None:
        await loop.run_in_executor(sender, write_frame, out, batch, at_head)

    def wait_for_ask() -> None:
        if not asks.read(1):
            raise EOFError("the projector closed the pipe")

    async def asked() -> None:
        # Blocks (in the thread) until the projector asks: that is the back-pressure.
        await loop.run_in_executor(sender, wait_for_ask)

    async def orphaned() -> None:
        # A projector killed with -9 closes no pipe we are not writing to: look.
        while os.getppid() == parent:
            await asyncio.sleep(0.5)

    reading = asyncio.create_task(follow(nc, start_seq, hand_on, asked, window=window, max_batch=max_batch))
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


if __name__ == "__main__":
    main()
