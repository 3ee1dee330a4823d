"""The projector's operator requests (`casetrail.admin.<name>`) and its health answer.

| subject | request | answer |
|---|---|---|
| `casetrail.admin.replay` | `to_seq` (a historical copy), `projection` | the job's status (below) |
| `casetrail.admin.replay_status` | | the status of the running or last job |
| `casetrail.admin.replay_cancel` | | the status, `cancelled` |
| `casetrail.admin.snapshot` | | the snapshot's manifest (`projections.snapshot`) |
| `casetrail.query.health` | | `services.health` |

A replay job's status: `{"state", "path", "to_seq", "position", "target", "rate",
"started_at", "finished_at", "problem"}`, state `building` (the child builds the new
file), `switching` (the swap of `services.replay`), `done`, `failed` or
`cancelled`. One job at a time; asking while one runs answers its status.
Refusals are `{"error": {"code", "message"}}` as for queries. Only the operator
role may publish on `casetrail.admin.*` (services.access).

Snapshots are also taken every `snapshot_every_s` seconds when the projection
has moved on since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.msg import Msg

from projections import snapshot
from projections.store import PROJECTIONS
from services import replay, subjects
from services.health import Health
from services.log import stream_state
from services.queries import QUEUE, QueryError, error_reply

if TYPE_CHECKING:
    from services.projector import Projector

log = logging.getLogger("casetrail.admin")

ADMIN = ("replay", "replay_status", "replay_cancel", "snapshot")
REBUILD_ROUNDS = 3  # child builds before the swap takes whatever tail is left
_encoder = msgspec.json.Encoder()


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    to_seq: int | None = None
    projection: str | None = None


class ReplayStatus(msgspec.Struct, kw_only=True):
    state: str = "none"
    path: str | None = None
    to_seq: int | None = None
    position: int = 0
    target: int = 0
    rate: float = 0.0
    started_at: str | None = None
    finished_at: str | None = None
    problem: str | None = None  # why it failed


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class Admin:
    """Attached to a running projector: its replays, snapshots and health."""

    def __init__(
        self,
        projector: Projector,
        snapshot_dir: Path | None = None,
        snapshot_every_s: float = 0.0,
        snapshot_keep: int = 3,
    ) -> None:
        self.projector = projector
        self.snapshot_dir = snapshot_dir or projector.db_path.parent / "snapshots"
        self.snapshot_every_s = snapshot_every_s
        self.snapshot_keep = snapshot_keep
        self.status = ReplayStatus()
        self.health = Health(projector.nc, lambda: projector.position)
        self._job: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._schedule: asyncio.Task[None] | None = None
        self._first_position = 0
        self._started = 0.0

    async def start(self) -> None:
        nc = self.projector.nc
        for name in ADMIN:
            await nc.subscribe(subjects.admin(name), queue=QUEUE, cb=self._on_admin)
        await nc.subscribe(subjects.query("health"), queue=QUEUE, cb=self._on_health)
        self.health.start()
        if self.snapshot_every_s > 0:
            self._schedule = asyncio.create_task(self._snapshots(), name="projector-snapshots")

    async def stop(self) -> None:
        for task in (self._schedule, self._job):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.health.stop()

    # -- requests

    async def _on_health(self, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(_encoder.encode(self.health.answer()))

    async def _on_admin(self, msg: Msg) -> None:
        name = subjects.last_token(msg.subject)
        try:
            answer: Any = await getattr(self, f"_{name}")(msg.data)
            reply = _encoder.encode(answer)
        except QueryError as exc:
            reply = error_reply(exc)
        except Exception as exc:
            log.exception("admin %s failed", name)
            reply = error_reply(QueryError("unavailable", f"{name} failed: {exc}"))
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply)

    async def _replay(self, body: bytes) -> ReplayStatus:
        try:
            request = msgspec.json.decode(body or b"{}", type=ReplayRequest)
        except msgspec.DecodeError as exc:
            raise QueryError("bad_request", str(exc)) from None
        names = [p.NAME for p in PROJECTIONS]
        if request.projection is not None and request.projection not in names:
            raise QueryError("bad_request", f"`projection`: {request.projection!r} is none of {', '.join(names)}")
        if self._job is not None and not self._job.done():
            return self.status
        head = (await stream_state(self.projector.nc)).last_seq
        if request.to_seq is not None and not 1 <= request.to_seq <= head:
            raise QueryError("bad_request", f"`to_seq`: {request.to_seq} is not a seq of the log (1 to {head})")
        live = self.projector.db_path
        path = replay.rebuild_path(live) if request.to_seq is None else replay.historical_path(live, request.to_seq)
        self.status = ReplayStatus(
            state="building", path=str(path), to_seq=request.to_seq, target=request.to_seq or head,
            started_at=_now(),
        )
        self._job = asyncio.create_task(self._run(path, request.to_seq), name="projector-replay")
        return self.status

    async def _replay_status(self, body: bytes) -> ReplayStatus:
        return self.status

    async def _replay_cancel(self, body: bytes) -> ReplayStatus:
        if self._job is not None and not self._job.done():
            self._job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._job
        return self.status

    async def _snapshot(self, body: bytes) -> snapshot.Manifest:
        return await self.take_snapshot()

    # -- replay

    def _progress(self, position: int, target: int) -> None:
        status = self.status
        if not self._started:
            self._started, self._first_position = time.monotonic(), position
        status.position, status.target = position, max(target, status.target)
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            status.rate = round((position - self._first_position) / elapsed, 1)

    def _running(self, child: asyncio.subprocess.Process) -> None:
        self._child = child

    async def _run(self, path: Path, to_seq: int | None) -> None:
        status, projector = self.status, self.projector
        self._started = 0.0
        settings = projector.settings
        try:
            if to_seq is not None:
                await replay.build_in_child(settings, path, to_seq, self._progress, self._running)
            else:
                for _ in range(REBUILD_ROUNDS):
                    head = (await stream_state(projector.nc)).last_seq
                    built = await replay.build_in_child(settings, path, head, self._progress, self._running)
                    newest = (await stream_state(projector.nc)).last_seq
                    if newest - built <= replay.MAX_TAIL:
                        break
                status.state = "switching"
                status.position = await replay.swap_in(projector, path, settings)
            status.state = "done"
            log.info("replay into %s done at seq %d", path, status.position)
        except asyncio.CancelledError:
            status.state = "cancelled"
            raise
        except Exception as exc:
            log.exception("replay into %s failed", path)
            status.state, status.problem = "failed", str(exc)
        finally:
            status.finished_at = _now()
            self._child = None

    # -- snapshots

    async def take_snapshot(self) -> snapshot.Manifest:
        manifest = await self.projector.with_reader(
            lambda reader: snapshot.take(reader.cur, self.snapshot_dir, self.snapshot_keep)
        )
        log.info("snapshot at seq %d in %s", manifest.seq, manifest.path)
        return manifest

    async def _snapshots(self) -> None:
        while True:
            await asyncio.sleep(self.snapshot_every_s)
            try:
                done = snapshot.latest(self.snapshot_dir)
                if done is None or done.seq != self.projector.position:
                    await self.take_snapshot()
            except Exception:
                log.exception("the scheduled snapshot failed")
