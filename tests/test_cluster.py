"""A three-node JetStream cluster on loopback (the shipped cluster.conf), R3 streams.

kill -9 the stream leader during a 20,000-event ingest; cut a node off with SIGSTOP
and resume it. Publishers retry; recorders and the projector run as processes.
"""

from __future__ import annotations

import asyncio
import signal
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import ServiceUnavailableError

from services import subjects
from services.client import Publisher
from services.connection import connect, quiet
from services.log import stream_state
from services.settings import Settings
from services.streams import ensure_streams
from tests.faults import (
    Cluster,
    assert_acknowledged_exactly_once,
    assert_projection_is_a_clean_rebuild,
    log_contents,
    wait_for_projection,
    workload,
)
from tests.helpers import wait_for_recorder

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    nodes = Cluster(tmp_path / "cluster")
    try:
        await nodes.start()
        yield nodes
    finally:
        nodes.stop()


async def client(urls: list[str] | str, name: str) -> nats.NATS:
    url = urls if isinstance(urls, str) else ",".join(urls)
    return await connect(Settings(nats_url=url), name, error_cb=quiet, dont_randomize=True)


def rotated(urls: list[str], first: int) -> list[str]:
    return urls[first:] + urls[:first]


async def r3_streams(cluster: Cluster) -> nats.NATS:
    nc = await client(cluster.urls, "casetrail-test")
    await ensure_streams(nc.jetstream(), Settings(nats_url=cluster.url, replicas=3))
    for stream in (subjects.LOG_STREAM, subjects.REJECTS_STREAM):
        info = await nc.jetstream().stream_info(stream)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2  # type: ignore[union-attr]
    return nc


def by_lane(events: list[dict], lanes: int) -> list[list[dict]]:
    """Split the workload among publishers; a case's events stay together and in order."""
    groups: list[list[dict]] = [[] for _ in range(lanes)]
    for e in events:
        groups[zlib.crc32(e["case_id"].encode()) % lanes].append(e)
    return groups


async def wait_for_records(nc: nats.NATS, at_least: int, timeout: float = 120) -> int:
    """Until the log holds `at_least` records (no answer while no node leads the stream)."""
    deadline = asyncio.get_running_loop().time() + timeout
    seq = 0
    while seq < at_least:
        assert asyncio.get_running_loop().time() < deadline, f"the log stayed at {seq}"
        try:
            seq = (await stream_state(nc)).last_seq
        except (NatsTimeout, LookupError):  # electing a leader
            pass
        await asyncio.sleep(0.05)
    return seq


async def test_kill_the_stream_leader_during_a_20000_event_ingest(cluster, spawn, tmp_path) -> None:
    nc = await r3_streams(cluster)
    for i in range(2):
        spawn("recorder", "--nats", ",".join(rotated(cluster.urls, i)))
    db = tmp_path / "projection.duckdb"
    projector = spawn("projector", "--db", str(db), "--nats", ",".join(rotated(cluster.urls, 2)))
    await wait_for_recorder(nc)

    groups = by_lane(workload(200, 20_000, seed=11), 4)
    publishers = [
        Publisher(await client(rotated(cluster.urls, i % 3), f"pub{i}"), f"bulk{i}",
                  timeout=2.0, attempts=80, batch_size=250)
        for i in range(4)
    ]  # fmt: skip
    ingest = [asyncio.create_task(p.submit_many(g)) for p, g in zip(publishers, groups)]

    at_kill = await wait_for_records(nc, 5_000)
    leader = await cluster.leader(nc)
    victim = cluster.node(leader)
    victim.kill()
    survivor = await client([n.url for n in cluster.nodes if n is not victim], "survivor")
    results = await asyncio.wait_for(asyncio.gather(*ingest), timeout=400)
    assert at_kill < 20_000 and not victim.running
    assert await cluster.leader(survivor) != leader  # another node leads the stream now

    raw = await log_contents(survivor)
    events = [e for g in groups for e in g]
    assert_acknowledged_exactly_once(events, [r for rs in results for r in rs], raw)

    # The killed node starts again on its own store and catches up with what it missed.
    victim.start()
    await victim.wait_ready(timeout=90)
    await cluster.wait_caught_up(victim, len(raw), raw[-1][0])

    await wait_for_projection(survivor, raw[-1][0])
    projector.stop()
    assert_projection_is_a_clean_rebuild(db, raw, tmp_path / "rebuild.duckdb")
    for p in publishers:
        await p.nc.close()
    await nc.close()
    await survivor.close()


async def test_a_node_cut_off_by_sigstop_catches_up_when_resumed(cluster, spawn, tmp_path) -> None:
    nc = await r3_streams(cluster)
    # One recorder and one publisher per node, so that two of each keep working.
    for url in cluster.urls:
        spawn("recorder", "--nats", url)
    await wait_for_recorder(nc)
    groups = by_lane(workload(90, 9_000, seed=12), 3)
    publishers = [
        Publisher(await client(rotated(cluster.urls, i), f"pub{i}"), f"lane{i}",
                  timeout=2.0, attempts=100, batch_size=100)
        for i in range(3)
    ]  # fmt: skip
    ingest = [asyncio.create_task(p.submit_many(g)) for p, g in zip(publishers, groups)]

    await wait_for_records(nc, 1_500)
    leader = await cluster.leader(nc)
    victim = cluster.node(leader)
    survivor = await client([n.url for n in cluster.nodes if n is not victim], "survivor")
    stopped_at = (await stream_state(survivor)).last_seq
    victim.signal(signal.SIGSTOP)
    try:
        # Without it, the other two elect a leader and record the whole ingest: clients
        # of the frozen node give up on it (pings) and go to another.
        await wait_for_records(survivor, stopped_at + 1_000, timeout=90)
        assert await cluster.leader(survivor) != leader
        results = await asyncio.wait_for(asyncio.gather(*ingest), timeout=400)
        assert victim.running  # still frozen, not dead
        raw = await log_contents(survivor)
    finally:
        victim.signal(signal.SIGCONT)
    events = [e for g in groups for e in g]
    assert_acknowledged_exactly_once(events, [r for rs in results for r in rs], raw)

    # Resumed, the old leader steps down and catches up; the log is what it was.
    await cluster.wait_caught_up(victim, len(raw), raw[-1][0])
    async with asyncio.timeout(60):
        while True:
            try:
                assert await log_contents(survivor) == raw
                break
            except (ServiceUnavailableError, NatsTimeout):  # 503 or no answer while the cluster settles
                await asyncio.sleep(0.5)
    for p in publishers:
        await p.nc.close()
    await nc.close()
    await survivor.close()
