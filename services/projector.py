"""`casetrail serve projector --db PATH`: follows the log into DuckDB and answers queries.

The projector is the only process that opens its DuckDB file. It reads the log
from its checkpoint + 1 (an ordered consumer needs no acks), applies each batch in
one transaction with the checkpoint (`projections.store`), and answers
`casetrail.query.<name>` itself on separate cursors (`projections.queries`).

The log is read by a child process (`services.logfeed`), which hands raw batches
over a pipe, so that nats-py's per-message work does not share this process's GIL
with applying them. Threads here: the event loop answers requests; a fold thread
prepares each batch (decoding, folding, building rows) while a writer thread
commits the one before (DuckDB works outside the GIL); a few reader threads run
queries on their own cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import queue
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.msg import Msg

from projections import case_status
from projections import sql as projection_sql
from projections.queries import Filters, Reader
from projections.store import ProjectionStore
from schemas.dates import utc_today
from services import subjects
from services.connection import close_connection, connect
from services.log import stream_state
from services.logfeed import ChildFeed
from services.pipeline import Pipeline
from services.queries import (
    NAMES,
    QUEUE,
    CasesRequest,
    QueryError,
    SqlRequest,
    StatusRequest,
    TimelineRequest,
    decode_request,
    error_reply,
)
from services.runtime import YOUNG_CATCHING_UP, tune_gc, tune_switching
from services.settings import Settings

log = logging.getLogger("casetrail.projector")

READERS = 4
# DuckDB's threads: a projector's statements are small (a batch, a case), and each
# extra thread costs more in scheduling than it saves (measured: ~30% more CPU per
# commit with 2 threads on 2 cores, no faster queries).
THREADS = 1
# DuckDB's memory: what it caches of the file for queries and the history reads of
# cases walked again. Catch-up writes whole row groups straight into the file and
# does not hold them in memory; 160MB against 320MB changed no rate measurably.
MEMORY_LIMIT = "160MB"
MAX_CONCURRENT_QUERIES = 64
RETRY_S = 1.0
_encoder = msgspec.json.Encoder()


class Watermark:
    """A seq that moves forward on the event loop, and waiting until it reaches one."""

    def __init__(self) -> None:
        self.seq = 0
        self._moved = asyncio.Event()

    def advance(self, seq: int) -> None:
        if seq > self.seq:
            self.seq = seq
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()

    async def wait(self, seq: int, timeout: float) -> bool:
        """Until it reaches `seq`; False if that took longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while self.seq < seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), remaining)
        return True


class Projector:
    """The store, the log it follows, and the queries it answers."""

    def __init__(
        self,
        settings: Settings,
        db_path: str | Path,
        *,
        memory_limit: str = MEMORY_LIMIT,
        threads: int = THREADS,
        readers: int = READERS,
        snapshot_every_s: float = 0.0,
        snapshot_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.db_path = Path(db_path)
        self.memory_limit = memory_limit
        self.threads = threads
        self.applied = Watermark()  # the checkpoint: what every question sees
        self.published = Watermark()  # what a current status sees (`ProjectionStore.published`)
        self._readers_wanted = readers
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="projector-writer")
        self._folder = ThreadPoolExecutor(1, thread_name_prefix="projector-fold")
        self._query_threads = ThreadPoolExecutor(readers, thread_name_prefix="projector-query")
        self._readers: queue.SimpleQueue[Reader] = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
        self._follow_task: asyncio.Task[None] | None = None
        self._answering: set[asyncio.Task[None]] = set()
        self.store: ProjectionStore | None = None
        self.nc: Any = None
        # Replays, snapshots and health (services.admin), attached once connected.
        self.snapshot_every_s, self.snapshot_dir = snapshot_every_s, snapshot_dir
        self.admin: Any = None

    # -- life cycle

    async def start(self) -> None:
        from services.replay import rebuild_if_outdated

        loop = asyncio.get_running_loop()
        # A file of other projection versions is rebuilt beside it, then swapped in.
        await rebuild_if_outdated(self.settings, self.db_path, memory_limit=self.memory_limit)
        self.store = await loop.run_in_executor(self._writer, self._open)
        self._restart_at(self.store.position)
        log.info("projection %s at seq %d (%d cases)", self.db_path, self.position, len(self.store.seqs))
        self.nc = await connect(self.settings, "casetrail-projector")
        await self._check_log()
        for name in NAMES:
            await self.nc.subscribe(subjects.query(name), queue=QUEUE, cb=self._on_query)
        from services.admin import Admin

        self.admin = Admin(self, snapshot_dir=self.snapshot_dir, snapshot_every_s=self.snapshot_every_s)
        await self.admin.start()
        self._follow_task = asyncio.create_task(self._follow(), name="projector-follow")

    async def _check_log(self) -> None:
        """A projection ahead of the log was built from another log: refuse to mix them."""
        try:
            head = (await stream_state(self.nc)).last_seq
        except LookupError:
            return  # no log yet: it will be created, and read from its start
        if self.position > head:
            raise RuntimeError(
                f"{self.db_path} has applied the log up to seq {self.position}, but the log "
                f"ends at seq {head}: it was built from another log; move it aside to rebuild"
            )

    def _open(self) -> ProjectionStore:
        store = ProjectionStore(self.db_path, memory_limit=self.memory_limit, threads=self.threads)
        for _ in range(self._readers_wanted):
            self._readers.put(Reader(store))
        return store

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()  # a replay's child is stopped; its file stays for the next one
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        if self.nc is not None:
            await close_connection(self.nc)  # bounded: the server may be gone
        for task in list(self._answering):
            task.cancel()
        self._query_threads.shutdown(wait=True)
        self._folder.shutdown(wait=True)  # a batch being folded is dropped: it is read again
        if self.store is not None:
            # The writer thread may still be applying a batch: close after it.
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.close)
        self._writer.shutdown(wait=True)

    # -- following the log

    async def _follow(self) -> None:
        while True:
            try:
                await self._pipeline()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the log failed at seq %d; starting again", self.position)
                assert self.store is not None
                await asyncio.get_running_loop().run_in_executor(self._writer, self.store.reset)
                await asyncio.sleep(RETRY_S)

    async def _pipeline(self) -> None:
        """Catching up, fold batch N+1 (Python) while batch N commits (DuckDB, outside
        the GIL); following the head, fold and commit on the writer thread alone.

        Catching up keeps both threads busy: batches after the first are held in one
        transaction until it holds a row group (`ProjectionStore.commit`). Following
        the head, batches are small and their commits cost far more than their folds:
        each is taken (`ChildFeed.take`) as the commit before it ends, so that what
        arrived meanwhile is committed next, and no thread but the writer takes part
        (measured at 1,000 events/s over 1M: ack to visible p50 ~40 -> ~18 ms for
        taking the next batch after the commit rather than before it).

        Catching up, the garbage collector leaves young objects alone within a batch
        (what survives it is frozen after it); following the head, it collects them
        as usual, in smaller and shorter collections (`services.runtime.tune_gc`).
        """
        assert self.store is not None
        store = self.store
        loop = asyncio.get_running_loop()
        pipeline = Pipeline(store, self._folder, self._writer, self._committed, published=self.published.advance)
        first = True
        try:
            async with ChildFeed(self.settings, self.position + 1) as feed:
                async for batch in feed.batches():
                    if not feed.at_head:
                        tune_gc(YOUNG_CATCHING_UP)
                        await pipeline.add(batch, hold=not first)
                        first = False
                        continue
                    # Caught up: this batch commits what is held with it, and the
                    # catch-up's WAL is written into the file now, rather than at some
                    # later commit that readers would wait for.
                    await pipeline.add(batch, freeze=True)
                    await pipeline.drain()
                    await loop.run_in_executor(self._writer, store.checkpoint)
                    first = False
                    tune_gc()
                    # Until the reader falls behind the head again.
                    await pipeline.follow(feed.take)
        finally:
            await pipeline.close()

    @property
    def position(self) -> int:
        """The checkpoint: the last seq the projection has applied."""
        return self.applied.seq

    def _restart_at(self, position: int) -> None:
        """The store (re)opened or reset at `position`: both marks go there."""
        self.applied.seq = self.published.seq = position

    def _committed(self, position: int) -> None:
        self.applied.advance(position)
        self.published.advance(position)

    # -- swapping the file under a running projector (services.replay)

    async def pause(self) -> None:
        """Stop following the log once the batch in hand is committed; queries are still answered."""
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
            self._follow_task = None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._folder, lambda: None)  # a batch being folded is dropped
        await loop.run_in_executor(self._writer, lambda: None)

    async def resume(self) -> None:
        """Follow the log again from what the store has committed."""
        assert self.store is not None
        await asyncio.get_running_loop().run_in_executor(self._writer, self.store.reset)
        self._restart_at(self.store.position)
        self._follow_task = asyncio.create_task(self._follow(), name="projector-follow")

    async def swap_file(self, replace_file: Any) -> None:
        """Close the store, let `replace_file()` put another file at its path, open that.

        Paused first. Queries wait meanwhile (every reader is taken back first), so
        each answer comes from the old file or from the new one.
        """

        def swap() -> None:
            assert self.store is not None
            for _ in range(self._readers_wanted):
                self._readers.get()  # queries in flight finish; new ones wait for a reader
            self.store.close()
            try:
                replace_file()
            finally:
                self.store = self._open()
                self._restart_at(self.store.position)

        await asyncio.get_running_loop().run_in_executor(self._writer, swap)

    async def with_reader(self, read: Any) -> Any:
        """`read(reader)` on a query thread (snapshots)."""

        def run() -> Any:
            reader = self._readers.get()
            try:
                return read(reader)
            finally:
                self._readers.put(reader)

        return await asyncio.get_running_loop().run_in_executor(self._query_threads, run)

    # -- answering queries

    async def _on_query(self, msg: Msg) -> None:
        # Answer concurrently: a slow question must not hold up the next one.
        task = asyncio.create_task(self._answer(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Msg) -> None:
        name = subjects.last_token(msg.subject)
        try:
            async with self._slots:
                reply = await self._ask(name, msg.data)
        except QueryError as exc:
            if exc.as_of_seq is None:
                exc.as_of_seq = self.position
            reply = error_reply(exc)
        except Exception as exc:  # a bug must still answer, not leave the caller waiting
            log.exception("query %s failed", name)
            reply = error_reply(QueryError("unavailable", f"the query failed: {exc}", self.position))
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply)

    async def _ask(self, name: str, body: bytes) -> bytes:
        request = decode_request(name, body)
        deadline = time.monotonic() + request.wait_bound()
        if name == "status" and request.on is None and request.known_at is None:
            # A case a recent batch wrote is answered here, without a statement or a
            # thread, from the row its commit writes, as soon as it is folded (most
            # status questions right after a submission are such).
            assert self.store is not None
            if request.min_seq is not None and not await self.published.wait(
                request.min_seq, deadline - time.monotonic()
            ):
                raise _not_caught_up(self.published.seq, request.min_seq)
            recent = self.store.recent_status(request.case_id)
            # (Behind `min_seq` only if the store started again meanwhile: then ask the file.)
            if recent is not None and (request.min_seq is None or recent[0] >= request.min_seq):
                as_of_seq, row = recent
                return _encoder.encode(case_status.from_row(row, utc_today(), as_of_seq))
        if request.min_seq is not None and not await self.applied.wait(request.min_seq, deadline - time.monotonic()):
            raise _not_caught_up(self.position, request.min_seq)
        answer = await asyncio.get_running_loop().run_in_executor(
            self._query_threads, self._read, name, request
        )
        return _encoder.encode(answer)

    def _read(self, name: str, request: Any) -> Any:
        reader = self._readers.get()
        try:
            return _READS[name](reader, request, utc_today())
        finally:
            self._readers.put(reader)


def _not_caught_up(applied: int, wanted: int) -> QueryError:
    return QueryError(
        "not_caught_up", f"the projection has applied seq {applied}, not yet {wanted}; ask again shortly"
    )


def _status(reader: Reader, request: StatusRequest, today: dt.date) -> Any:
    as_of_seq, status = reader.status(
        request.case_id, today=today, on=request.on_date(), known_at=request.known_at_time()
    )
    if status is None:
        raise QueryError("not_found", _not_found(request), as_of_seq)
    return status


def _timeline(reader: Reader, request: TimelineRequest, today: dt.date) -> Any:
    as_of_seq, entries = reader.timeline(
        request.case_id, on=request.on_date(), known_at=request.known_at_time(), history=request.history
    )
    if entries is None:
        raise QueryError("not_found", _not_found(request), as_of_seq)
    return {"as_of_seq": as_of_seq, "case_id": request.case_id, "timeline": entries}


def _cases(reader: Reader, request: CasesRequest, today: dt.date) -> Any:
    if not 0 <= request.limit <= 1000 or request.offset < 0:
        raise QueryError("bad_request", "`limit` must be 0 to 1000 and `offset` at least 0")
    filters = Filters(
        custody=request.custody,
        stage=request.stage,
        recognized_by=request.recognized_by,
        article=request.article,
        jurisdiction=request.jurisdiction,
        region=request.region,
    )
    as_of_seq, total, found = reader.cases(
        filters,
        today=today,
        on=request.on_date(),
        known_at=request.known_at_time(),
        limit=request.limit,
        offset=request.offset,
    )
    return {"as_of_seq": as_of_seq, "total": total, "cases": found}


def _stats(reader: Reader, request: Any, today: dt.date) -> Any:
    as_of_seq, stats = reader.stats()
    return {"as_of_seq": as_of_seq, **stats}


def _not_found(request: StatusRequest | TimelineRequest) -> str:
    when = []
    if request.on:
        when.append(f"on {request.on}")
    if request.known_at:
        when.append(f"as known at {request.known_at}")
    suffix = f" ({', '.join(when)})" if when else ""
    return f"no case {request.case_id!r} in the projection{suffix}"


def _sql(reader: Reader, request: SqlRequest, today: dt.date) -> Any:
    try:
        return projection_sql.run(reader.cur, request.query, limit=request.limit)
    except projection_sql.SqlRefused as exc:
        raise QueryError("bad_request", f"`query`: {exc}") from None


def _report(reader: Reader, request: Any, today: dt.date) -> Any:
    from projections.report import summary

    if request.known_at is not None:
        raise QueryError("bad_request", "`known_at`: the report is of a day; give `on` only")
    return summary(reader.cur, on=request.on_date(), today=today)


_READS = {"status": _status, "timeline": _timeline, "cases": _cases, "stats": _stats, "sql": _sql, "report": _report}


async def serve(
    settings: Settings,
    db_path: str | Path,
    *,
    memory_limit: str = MEMORY_LIMIT,
    threads: int = THREADS,
    snapshot_every_s: float = 0.0,
    snapshot_dir: Path | None = None,
) -> None:
    """Run until SIGINT or SIGTERM; the batch in hand is committed before it stops."""
    tune_gc()
    tune_switching()
    projector = Projector(
        settings,
        db_path,
        memory_limit=memory_limit,
        threads=threads,
        snapshot_every_s=snapshot_every_s,
        snapshot_dir=snapshot_dir,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await projector.start()
        await stop.wait()
    finally:
        await projector.stop()
        log.info("projector stopped at seq %d", projector.position)
