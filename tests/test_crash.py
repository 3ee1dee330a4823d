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


async def test_kill_9_the_recorder_at_ten_random_points(
    nats_server, streams, spawn, tmp_path
) -> None:
    nc = await client(nats_server, "casetrail-test")
    url = ("--nats", nats_server.url)
    recorder = spawn("recorder", *url)
    db = tmp_path / "projection.duckdb"
    projector = spawn("projector", "--db", str(db), *url)
    await wait_for_recorder(nc)
    events = workload(150, EVENTS, seed=21)
    publisher = Publisher(nc, "bulk", timeout=1.5, attempts=100, batch_size=100)
    ingest = asyncio.create_task(paced_ingest(publisher, events, pause=0.1))

    async def log_position() -> int:
        return (await stream_state(nc)).last_seq

    async def crash() -> None:
        nonlocal recorder
        recorder.kill()
        recorder = spawn("recorder", *url)

    crashed = await crash_at(crash_points(21, 300, EVENTS - 300), log_position, crash)
    results = await asyncio.wait_for(ingest, timeout=400)
    assert len(crashed) == CRASHES and max(crashed) < EVENTS
    await check_everything(nc, events, results, projector, db, tmp_path)
    await nc.close()


async def test_kill_9_the_projector_at_ten_random_points(
    nats_server, streams, spawn, tmp_path
) -> None:
    nc = await client(nats_server, "casetrail-test")
    url = ("--nats", nats_server.url)
    spawn("recorder", *url)
    db = tmp_path / "projection.duckdb"
    projector = spawn("projector", "--db", str(db), *url)
    await wait_for_recorder(nc)
    events = workload(150, EVENTS, seed=22)
    publisher = Publisher(nc, "bulk", timeout=5, attempts=20, batch_size=100)
    ingest = asyncio.create_task(paced_ingest(publisher, events, pause=0.3))
    queries = QueryClient(nc, timeout=1)

    async def projection_position() -> int:
        return (await queries.stats())["as_of_seq"]

    async def crash() -> None:
        nonlocal projector
        projector.kill()
        projector = spawn("projector", "--db", str(db), *url)

    # Points in the projection: each kill lands while the projector works through the log.
    crashed = await crash_at(crash_points(22, 200, EVENTS - 200), projection_position, crash)
    results = await asyncio.wait_for(ingest, timeout=400)
    assert len(crashed) == CRASHES
    await check_everything(nc, events, results, projector, db, tmp_path)
    await nc.close()


async def test_kill_9_the_nats_server_at_ten_random_points(
    nats_server, streams, spawn, tmp_path
) -> None:
    nc = await client(nats_server, "casetrail-test")
    url = ("--nats", nats_server.url)
    # An append whose ack died with the server is retried after this (10 s by default).
    spawn("recorder", *url, env={"CASETRAIL_REQUEST_TIMEOUT": "2"})
    db = tmp_path / "projection.duckdb"
    projector = spawn("projector", "--db", str(db), *url)
    await wait_for_recorder(nc)
    events = workload(150, EVENTS, seed=23)
    publisher = Publisher(nc, "bulk", timeout=2, attempts=100, batch_size=100)
    ingest = asyncio.create_task(paced_ingest(publisher, events, pause=0.1))

    async def log_position() -> int:
        return (await stream_state(nc)).last_seq

    async def crash() -> None:
        nats_server.kill()  # kill -9: what JetStream has written and synced is all there is
        nats_server.start()  # the same store, the same port
        await nats_server.wait_ready()

    crashed = await crash_at(crash_points(23, 300, EVENTS - 300), log_position, crash)
    results = await asyncio.wait_for(ingest, timeout=400)
    assert len(crashed) == CRASHES and max(crashed) < EVENTS
    await check_everything(nc, events, results, projector, db, tmp_path)
    await nc.close()
