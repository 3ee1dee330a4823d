"""The projector's health: how far behind the log it is, how fast it applies, what was refused.

`casetrail.query.health` (asked by `/healthz` and `/metrics` of the HTTP API):

    {"as_of_seq", "log_last_seq", "records", "lag_events", "lag_seconds",
     "rejected_by_code", "batches_applied", "records_applied", "apply_seconds_sum",
     "last_apply_seconds", "since_advance_s", "stuck", "problem"}

`lag_seconds` is the age of the oldest record not yet applied (0 when caught up).
The projector is `stuck` when it is behind the log and has not applied anything for
`STUCK_AFTER_S` (30; `CASETRAIL_STUCK_AFTER` seconds), or when it has not been able
to look at the log for that long.
The log is looked at every `POLL_S` seconds, not per question.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
import time
from typing import Any

import msgspec

from schemas.dates import parse_rfc3339
from services import subjects
from services.log import stream_state

log = logging.getLogger("casetrail.health")

POLL_S = 2.0
STUCK_AFTER_S = 30.0


class ApplyTimes:
    """Batches written by this process and the time the writes took (a batch's commit; catching
    up, the part of a transaction it adds, `ProjectionStore.commit`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.records = 0
        self.seconds_sum = 0.0
        self.last_seconds = 0.0

    def observe(self, records: int, seconds: float) -> None:
        with self._lock:
            self.batches += 1
            self.records += records
            self.seconds_sum += seconds
            self.last_seconds = seconds


APPLY = ApplyTimes()  # the projector's batch writes (services.pipeline._commit)


class _RecordedAt(msgspec.Struct):
    recorded_at: str


_recorded_at = msgspec.json.Decoder(_RecordedAt)


class Health:
    """Watches the log's head beside a projector's position; answers `casetrail.query.health`."""

    def __init__(self, nc: Any, position: Any, stuck_after_s: float | None = None) -> None:
        self.nc = nc
        self.position = position  # () -> the projector's applied seq
        self.stuck_after_s = stuck_after_s or float(os.environ.get("CASETRAIL_STUCK_AFTER", STUCK_AFTER_S))
        self.log_last_seq = 0
        self.records = 0
        self.rejected: dict[str, int] = {}
        self.oldest_pending_at: dt.datetime | None = None
        self.seen_log_at = time.monotonic()
        self.problem: str | None = None
        self._last_position = -1
        self._advanced_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="projector-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.problem = f"cannot read the log's state: {exc}"
                log.warning("%s", self.problem)
            await asyncio.sleep(POLL_S)

    async def look(self) -> None:
        state = await stream_state(self.nc)
        self.log_last_seq, self.records = state.last_seq, state.messages
        position = self._note_position()
        self.oldest_pending_at = None
        if position < state.last_seq:
            msg = await self.nc.jetstream().get_msg(subjects.LOG_STREAM, seq=position + 1)
            self.oldest_pending_at = parse_rfc3339(_recorded_at.decode(msg.data).recorded_at)
        rejects = await stream_state(self.nc, subjects.REJECTS_STREAM, subjects_filter=subjects.REJECTS_ALL)
        by_code: dict[str, int] = {}
        for subject, count in (rejects.subjects or {}).items():
            code = subject.split(".")[2]
            by_code[code] = by_code.get(code, 0) + count
        self.rejected = dict(sorted(by_code.items()))
        self.seen_log_at = time.monotonic()
        self.problem = None

    def _note_position(self) -> int:
        position = self.position()
        if position != self._last_position:
            self._last_position, self._advanced_at = position, time.monotonic()
        return position

    def answer(self) -> dict[str, Any]:
        now = time.monotonic()
        position = self._note_position()
        lag = max(0, self.log_last_seq - position)
        lag_s = 0.0
        if lag and self.oldest_pending_at is not None:
            lag_s = max(0.0, (dt.datetime.now(dt.timezone.utc) - self.oldest_pending_at).total_seconds())
        since_advance = now - self._advanced_at
        unseen = now - self.seen_log_at
        problem = self.problem
        if unseen > self.stuck_after_s:
            problem = f"has not seen the log's state for {unseen:.0f} s ({self.problem})"
        elif lag and since_advance > self.stuck_after_s:
            problem = f"{lag} records behind the log and nothing applied for {since_advance:.0f} s"
        return {
            "as_of_seq": position,
            "log_last_seq": self.log_last_seq,
            "records": self.records,
            "lag_events": lag,
            "lag_seconds": round(lag_s, 3),
            "rejected_by_code": self.rejected,
            "batches_applied": APPLY.batches,
            "records_applied": APPLY.records,
            "apply_seconds_sum": round(APPLY.seconds_sum, 6),
            "last_apply_seconds": round(APPLY.last_seconds, 6),
            "since_advance_s": round(since_advance, 3),
            "stuck": unseen > self.stuck_after_s or bool(lag and since_advance > self.stuck_after_s),
            "problem": problem,
        }
