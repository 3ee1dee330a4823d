"""Fold batch N+1 while batch N commits: the loop of the projector and of a replay.

`ProjectionStore.prepare` (decoding, folding, building Arrow rows: Python) runs on
a fold thread while `commit` of the batch before (DuckDB, which releases the GIL)
runs on a writer thread. One batch is in hand at a time: the next commit starts
when the one before has ended, so commits stay in log order.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """Batches in, commits out; `committed(position)` runs on the event loop as each commit ends."""

    def __init__(
        self,
        store: ProjectionStore,
        folder: ThreadPoolExecutor,
        writer: ThreadPoolExecutor,
        committed: Callable[[int], None] | None = None,
    ) -> None:
        self.store, self.folder, self.writer = store, folder, writer
        self.committed = committed
        self._committing: asyncio.Future[int] | None = None

    async def add(self, batch: Sequence[tuple[int, bytes]], *, freeze: bool = False) -> None:
        """Fold `batch` (while the commit before goes on), then start its commit."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        prepared = await loop.run_in_executor(self.folder, self.store.prepare, batch)
        if freeze or len(batch) >= FREEZE_AFTER:
            # What survives a large batch (the folds above all) lives long: out of the
            # collector's sight, so that it is not scanned again (at 1M events a full
            # collection took 1.8 s). Frozen objects are still freed with their last
            # reference; only cycles would stay.
            gc.freeze()
        await self.drain()
        if prepared is not None:
            self._committing = loop.run_in_executor(self.writer, _commit, self.store, prepared)
            self._committing.add_done_callback(self._done)
        log.debug("folded %d records in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    async def drain(self) -> None:
        """Until the commit in hand has ended; its failure is raised here."""
        if self._committing is not None:
            await self._committing  # cancelled or failed: still in hand, for `close`
            self._committing = None

    async def close(self) -> None:
        """On the way out (stopped, failed): the commit in hand ends before the store is touched."""
        if self._committing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._committing)

    def _done(self, done: asyncio.Future[int]) -> None:
        if self.committed is not None and not done.cancelled() and done.exception() is None:
            self.committed(done.result())


def _commit(store: ProjectionStore, prepared: Prepared) -> int:
    started = time.perf_counter()
    position = store.commit(prepared)
    APPLY.observe(len(prepared.timeline), time.perf_counter() - started)  # for /metrics
    log.debug("committed %d records in %.1f ms", len(prepared.timeline), (time.perf_counter() - started) * 1000)
    return position
