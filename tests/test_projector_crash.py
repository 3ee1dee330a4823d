"""kill -9 the projector again and again while it catches up with 50,000 events.

Each kill lands at a seeded random moment: while it opens its file, reads, folds or
commits. Started again each time on the same file, it must end with exactly the
tables a clean rebuild from the log gives: no event lost, none applied twice.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import duckdb
import pytest

from benchmarks.workload import generate
from projections.store import ProjectionStore
from services.client import Publisher
from services.log import read_log
from services.queries import QueryClient, QueryError

pytestmark = pytest.mark.slow

EVENTS = 50_000
KILLS = 8
TABLES = ("case_status", "timeline", "charges", "recognitions")


def tables(path: Path) -> dict[str, list]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        found = {name: con.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall() for name in TABLES}
        found["checkpoint"] = con.execute("SELECT last_seq FROM checkpoint").fetchall()
        return found
    finally:
        con.close()


async def position(queries: QueryClient) -> int:
    try:
        return (await queries.stats())["as_of_seq"]
    except QueryError:
        return -1  # killed, or still starting


async def test_kill_9_during_catch_up_leaves_exactly_a_clean_rebuild(
    nats_server, nc, recorder, spawn, tmp_path
) -> None:
    events = generate(EVENTS, seed=11)
    results = await Publisher(nc, "bulk", batch_size=1000).submit_many(events)
    assert all(r.ok for r in results)
    last = max(r.seq for r in results)

    db = tmp_path / "projection.duckdb"
    url = ("--nats", nats_server.url)
    queries = QueryClient(nc, timeout=5)
    rng = random.Random(7)
    projector = spawn("projector", "--db", str(db), *url)
    seen: list[int] = []
    for _ in range(KILLS):
        # Anywhere from start-up (file opening, WAL replay) to the middle of a batch.
        await asyncio.sleep(rng.uniform(0.3, 2.5))
        seen.append(await position(queries))
        projector.kill()
        projector = spawn("projector", "--db", str(db), *url)
    async with asyncio.timeout(120):
        while True:
            try:
                await queries.stats(min_seq=last)
                break
            except QueryError:
                await asyncio.sleep(0.2)
    await asyncio.to_thread(projector.stop)
    during = [p for p in seen if 0 < p < last]
    assert len(during) >= 2, f"too few kills landed in the middle of the catch-up: {seen}"

    rebuilt = ProjectionStore(tmp_path / "rebuilt.duckdb")
    async for batch in read_log(nc.jetstream(), 1, last):
        await asyncio.to_thread(rebuilt.apply, batch)
    rebuilt.close()

    live, clean = tables(db), tables(tmp_path / "rebuilt.duckdb")
    assert live["checkpoint"] == clean["checkpoint"] == [(last,)]
    assert len(live["timeline"]) == last  # one row per record: nothing applied twice
    for name in TABLES:
        assert live[name] == clean[name], name
