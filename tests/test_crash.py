"""Crashes on one machine: kill -9 the recorder, the projector, the nats-server mid-ingest.

Each test kills its process at ten random points of one ingest (positions in the log,
or in the projection, drawn from a seeded generator) and starts it again at once (the
server on the same store and port). Afterwards: every acknowledged event is in the
log exactly once, where its reply said, the chain verifies, and the projection the
crashes went through equals a clean rebuild from the log (nothing lost, nothing
applied twice).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest

from services.client import Publisher
from services.connection import connect, quiet
from services.log import stream_state
from services.natsserver import NatsServer
from services.queries import QueryClient, QueryError
from services.settings import Settings
from tests.faults import (
    assert_acknowledged_exactly_once,
    assert_projection_is_a_clean_rebuild,
    log_contents,
    wait_for_projection,
    workload,
)
from tests.helpers import ServiceProcess, wait_for_recorder

pytestmark = pytest.mark.slow

EVENTS = 15_000
CRASHES = 10
CHUNK = 300


async def client(server: NatsServer, name: str) -> nats.NATS:
    return await connect(
        Settings(nats_url=server.url), name, error_cb=quiet, reconnect_time_wait=0.1
    )


def crash_points(seed: int, low: int, high: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(low, high), CRASHES))


async def paced_ingest(publisher: Publisher, events: list[dict], pause: float) -> list:
    """The workload in chunks with pauses between them, so that crashes fall all along it."""
    results = []
    for i in range(0, len(events), CHUNK):
        results += await publisher.submit_many(events[i : i + CHUNK])
        await asyncio.sleep(pause)
    return results


async def crash_at(
    points: list[int], position: Callable[[], Awaitable[int]], crash: Callable[[], Awaitable[None]]
) -> list[int]:
    """Crash once each time `position()` reaches the next point; the positions crashed at."""
    crashed = []
    pending = list(points)
    async with asyncio.timeout(400):
        while pending:
            try:
                at = await position()
            except (OSError, nats.errors.Error, QueryError, LookupError):  # down, or restarting
                at = -1
            if at >= pending[0]:
                await crash()
                crashed.append(at)
                pending.pop(0)
            await asyncio.sleep(0.02)
    return crashed


async def check_everything(
    nc: nats.NATS, events: list[dict], results: list, projector: ServiceProcess, db: Path, tmp: Path
) -> None:
    raw = await log_contents(nc)
    assert_acknowledged_exactly_once(events, results, raw)
    await wait_for_projection(nc, raw[-1][0])
    projector.stop()
    assert_projection_is_a_clean_rebuild(db, raw, tmp / "rebuild.duckdb")


class System:
    """The recorder and the projector as processes, and a publisher feeding them the
    workload in paced chunks; each test kills one of them, or the server, on the way."""

    def __init__(
        self, nats_server: NatsServer, spawn: Callable, tmp_path: Path, **recorder_env: str
    ) -> None:
        self.server, self.spawn, self.tmp = nats_server, spawn, tmp_path
        self.url = ("--nats", nats_server.url)
        self.db = tmp_path / "projection.duckdb"
        self.recorder_env = recorder_env or None

    async def start(self, seed: int, *, timeout: float, attempts: int, pause: float) -> None:
        self.nc = await client(self.server, "casetrail-test")
        self.start_recorder()
        self.start_projector()
        await wait_for_recorder(self.nc)
        self.events = workload(150, EVENTS, seed=seed)
        publisher = Publisher(self.nc, "bulk", timeout=timeout, attempts=attempts, batch_size=100)
        self.ingest = asyncio.create_task(paced_ingest(publisher, self.events, pause=pause))

    def start_recorder(self) -> None:
        self.recorder = self.spawn("recorder", *self.url, env=self.recorder_env)

    def start_projector(self) -> None:
        self.projector = self.spawn("projector", "--db", str(self.db), *self.url)

    async def log_position(self) -> int:
        return (await stream_state(self.nc)).last_seq

    async def finish(self, crashed: list[int], *, during_ingest: bool) -> None:
        """Every crash happened (all while events were still coming, if `during_ingest`);
        then `check_everything`."""
        results = await asyncio.wait_for(self.ingest, timeout=400)
        assert len(crashed) == CRASHES
        if during_ingest:
            assert max(crashed) < EVENTS
        await check_everything(self.nc, self.events, results, self.projector, self.db, self.tmp)
        await self.nc.close()


async def test_kill_9_the_recorder_at_ten_random_points(
    nats_server, streams, spawn, tmp_path
) -> None:
    system = System(nats_server, spawn, tmp_path)
    await system.start(21, timeout=1.5, attempts=100, pause=0.1)

    async def crash() -> None:
        system.recorder.kill()
        system.start_recorder()

    crashed = await crash_at(crash_points(21, 300, EVENTS - 300), system.log_position, crash)
    await system.finish(crashed, during_ingest=True)


async def test_kill_9_the_projector_at_ten_random_points(
    nats_server, streams, spawn, tmp_path
) -> None:
    system = System(nats_server, spawn, tmp_path)
    await system.start(22, timeout=5, attempts=20, pause=0.3)
    queries = QueryClient(system.nc, timeout=1)

    async def projection_position() -> int:
        return (await queries.stats())["as_of_seq"]

    async def crash() -> None:
        system.projector.kill()
        system.start_projector()

    # Points in the projection: each kill lands while the projector works through the log.
    crashed = await crash_at(crash_points(22, 200, EVENTS - 200), projection_position, crash)
    await system.finish(crashed, during_ingest=False)


async def test_kill_9_the_nats_server_at_ten_random_points(
    nats_server, streams, spawn, tmp_path
) -> None:
    # An append whose ack died with the server is retried after this (10 s by default).
    system = System(nats_server, spawn, tmp_path, CASETRAIL_REQUEST_TIMEOUT="2")
    await system.start(23, timeout=2, attempts=100, pause=0.1)

    async def crash() -> None:
        nats_server.kill()  # kill -9: what JetStream has written and synced is all there is
        nats_server.start()  # the same store, the same port
        await nats_server.wait_ready()

    crashed = await crash_at(crash_points(23, 300, EVENTS - 300), system.log_position, crash)
    await system.finish(crashed, during_ingest=True)
