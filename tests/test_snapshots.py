"""Snapshots on a schedule: complete directories at known seqs, readable while the projector writes."""

from __future__ import annotations

import asyncio

import duckdb

from projections import snapshot
from services.client import Publisher
from services.queries import QueryClient
from tests.helpers import event, opened


async def test_the_projector_snapshots_on_a_schedule_and_keeps_the_newest(nats_server, nc, recorder, spawn, tmp_path) -> None:
    directory = tmp_path / "snaps"
    queries = QueryClient(nc, timeout=15)
    spawn("projector", "--db", str(tmp_path / "p.duckdb"), "--nats", nats_server.url,
          "--snapshot-every", "0.5", "--snapshots", str(directory))
    publisher = Publisher(nc, "memorial")
    seqs = []
    for n in range(5):
        (result,) = await publisher.submit_many([opened(f"ru-2024-s{n}")] if n == 0 else
                                                [event("detained", "ru-2024-s0", f"d{n}", "2024-01-0%d" % (n + 1))])
        async with asyncio.timeout(30):
            while (found := snapshot.latest(directory)) is None or found.seq < result.seq:
                await asyncio.sleep(0.2)
        seqs.append(found.seq)
        assert found.seq == result.seq  # nothing newer was recorded: the snapshot is exactly at it
        con = duckdb.connect(found.duckdb, read_only=True)
        assert con.execute("SELECT last_seq FROM checkpoint").fetchall() == [(result.seq,)]
        assert con.execute("SELECT events FROM case_status").fetchall() == [(n + 1,)]
        con.close()
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    await asyncio.sleep(1.5)  # nothing new: no new snapshot
    kept = snapshot.snapshots(directory)
    assert [snapshot.read(p).seq for p in kept] == seqs[-3:]  # the three newest
    assert not any(p.name.endswith(".tmp") for p in directory.iterdir())
    assert (await queries.stats())["as_of_seq"] == seqs[-1]  # and it answers as ever
