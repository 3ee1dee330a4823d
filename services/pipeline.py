"""Fold batch N+1 while batch N commits: the loop of the projector and of a replay.

`ProjectionStore.prepare` (decoding, folding, building Arrow rows: Python) runs on
a fold thread while `commit` of the batch before (DuckDB, which releases the GIL)
runs on a writer thread. One batch is in hand at a time: the next commit starts
when the one before has ended, so commits stay in log order.

Catching up, batches are added with `hold=True`: the store holds them and writes
them in one transaction once they make a row group (`ProjectionStore.commit`), or
at `flush` (and at `close`).

Following the head, the projector hands the writer thread a way to take batches
(`follow`): it folds and commits each in turn, on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from projections.store import Prepared, ProjectionStore
from services.health import APPLY

log = logging.getLogger("casetrail.pipeline")

FREEZE_AFTER = 1000  # records in a batch after which what survives it is frozen (gc.freeze)


class Pipeline:
    """Batches in, commits out.

    On the event loop, `committed(position)` runs as each commit ends, and
    `written(last_seq)` as each batch is written or held (progress to show);
    following the head, `published(last_seq)` as each batch's status rows are
    answered from memory, before its commit (`ProjectionStore.prepare`'s `publish`).
    """

    def __init__(
        self,
        store: ProjectionStore,
        folder: ThreadPoolExecutor,
        writer: ThreadPoolExecutor,
        committed: Callable[[int], None] | None = None,
        written: Callable[[int], None] | None = None,
        published: Callable[[int], None] | None = None,
    ) -> None:
        self.store, self.folder, self.writer = store, folder, writer
        self.committed, self.written, self.published = committed, written, published
        self._committing: asyncio.Future[int] | None = None
        self._position = store.position  # the last checkpoint `committed` was told of

    async def add(
        self,
        batch: Sequence[tuple[int, bytes]],
        *,
        freeze: bool = False,
        hold: bool = False,
    ) -> None:
        """Fold `batch` (while the commit before goes on), then start its commit.

        `hold`: its transaction may stay open for the batches after it (catching up).
        """
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        prepared = await loop.run_in_executor(self.folder, self.store.prepare, batch)
        _freeze_after(batch, freeze)
        await self.drain()
        if prepared is not None:
            self._start(loop.run_in_executor(self.writer, _commit, self.store, prepared, hold), prepared.last_seq)
        log.debug("folded %d records in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    async def follow(self, take: Callable[[], tuple[Sequence[tuple[int, bytes]], bool] | None]) -> None:
        """Following the head: on the writer thread, fold and commit each batch `take()`
        hands over, until one comes from behind the head or `take()` gives None.

        Batches are small here and their commits cost far more than their folds: each
        is folded just before its commit, and the next taken as the commit ends, with
        no hand-over between threads. `committed` is told of each commit.
        """
        loop = asyncio.get_running_loop()
        publish = None if self.published is None else functools.partial(loop.call_soon_threadsafe, self.published)

        def run() -> int:
            while (taken := take()) is not None:
                batch, at_head = taken
                position = _fold_and_commit(self.store, batch, publish)
                _freeze_after(batch, False)
                loop.call_soon_threadsafe(self._advanced, position)
                if not at_head:
                    break
            return self.store.position

        await self.drain()
        self._start(loop.run_in_executor(self.writer, run))
        await self.drain()

    def _start(self, committing: asyncio.Future[int], last_seq: int | None = None) -> None:
        """A commit in hand; `written(last_seq)` once it ended well (by default, its checkpoint)."""
        self._committing = committing
        committing.add_done_callback(self._done)
        if self.written is not None:
            written = self.written
            committing.add_done_callback(
                lambda done: _if_ended_well(done) and written(done.result() if last_seq is None else last_seq)
            )

    async def drain(self) -> None:
        """Until the commit in hand has ended; its failure is raised here."""
        if self._committing is not None:
            await self._committing  # cancelled or failed: still in hand, for `close`
            self._committing = None

    async def flush(self) -> None:
        """Until every batch added is committed, those the store holds too."""
        await self.drain()
        self._flush()
        await self.drain()

    async def close(self) -> None:
        """On the way out (stopped, failed): the commit in hand ends before the store is
        touched, and what the store holds is committed (unless a commit failed)."""
        await self._ended()
        if not self.store.broken:
            self._flush()
            await self._ended()

    async def _ended(self) -> None:
        """Until the commit in hand has ended, whatever its outcome (even if cancelled meanwhile)."""
        if self._committing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._committing)
            self._committing = None

    def _flush(self) -> None:
        if self.store.holding:
            self._committing = asyncio.get_running_loop().run_in_executor(self.writer, self.store.flush)
            self._committing.add_done_callback(self._done)

    def _done(self, done: asyncio.Future[int]) -> None:
        if _if_ended_well(done):
            self._advanced(done.result())

    def _advanced(self, position: int) -> None:
        if position != self._position:
            self._position = position
            if self.committed is not None:
                self.committed(position)


def _if_ended_well(done: asyncio.Future[int]) -> bool:
    return not done.cancelled() and done.exception() is None


def _freeze_after(batch: Sequence[tuple[int, bytes]], freeze: bool) -> None:
    """What survives a large batch (the folds above all) lives long: out of the
    collector's sight, so that it is not scanned again (at 1M events a full
    collection took 1.8 s). Frozen objects are still freed with their last
    reference; only cycles would stay."""
    if freeze or len(batch) >= FREEZE_AFTER:
        gc.freeze()


def _fold_and_commit(
    store: ProjectionStore, batch: Sequence[tuple[int, bytes]], published: Callable[[int], None] | None = None
) -> int:
    """Fold and commit; `published(last_seq)` in between, if the batch's status rows
    are answered before its commit (`ProjectionStore.prepare`'s `publish`)."""
    prepared = store.prepare(batch, publish=published is not None)
    if prepared is None:
        return store.position
    if published is not None and store.published >= prepared.last_seq:
        published(prepared.last_seq)
    return _commit(store, prepared, False)


def _commit(store: ProjectionStore, prepared: Prepared, hold: bool) -> int:
    started = time.perf_counter()
    position = store.commit(prepared, hold=hold)
    APPLY.observe(prepared.records, time.perf_counter() - started)  # for /metrics
    log.debug("wrote %d records in %.1f ms", prepared.records, (time.perf_counter() - started) * 1000)
    return position
